"""The text study's default corpus: the six Austen novels shipped (xz-compressed, 1.2 MB) with the project.

:func:`bundled_corpus` decompresses them into a folder of ``.txt`` files (what :class:`seqgym.sources.Text`
reads) and checks each against the SHA-256 recorded in ``data/austen/SHA256SUMS``.

Example:
    >>> sorted(p.name for p in AUSTEN.glob("*.txt.xz"))[:2]
    ['emma.txt.xz', 'mansfieldpark.txt.xz']
"""

from __future__ import annotations

import hashlib
import lzma
import os
from pathlib import Path

from seqgym._files import atomic_write

__all__ = ["AUSTEN", "HELDOUT", "bundled_corpus", "checksums"]

AUSTEN = Path(__file__).parent / "data" / "austen"
"""The folder of the shipped novels (``<name>.txt.xz``, ``SHA256SUMS``, ``README.md``)."""
HELDOUT = "persuasion.txt"
"""The novel the text study holds out for evaluation (the smallest)."""


def checksums() -> dict[str, str]:
    """``{file name: SHA-256 hex digest}`` of the decompressed novels, from ``SHA256SUMS``."""
    out = {}
    for line in (AUSTEN / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            out[name] = digest
    return out


def bundled_corpus(folder: str | os.PathLike[str]) -> Path:
    """Decompress the shipped novels into ``folder`` (created) and return it.

    A file already there with the right checksum is kept as it is; any other is (re)written atomically.

    Raises:
        FileNotFoundError: the shipped data is missing (an installation without package data).
        ValueError: a decompressed novel does not match its recorded checksum (a damaged file).
    """
    sums = checksums() if (AUSTEN / "SHA256SUMS").exists() else {}
    if not sums:
        raise FileNotFoundError(f"The shipped Austen corpus is missing from {AUSTEN}; pass --corpus FOLDER.")
    dest = Path(folder)
    dest.mkdir(parents=True, exist_ok=True)
    for name, digest in sums.items():
        target = dest / name
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
            continue
        source = AUSTEN / f"{name}.xz"
        if not source.is_file():
            raise FileNotFoundError(f"The shipped Austen corpus is missing {source}; pass --corpus FOLDER.")
        data = lzma.decompress(source.read_bytes())
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(
                f"{source} does not decompress to the text recorded in SHA256SUMS; it is damaged."
            )
        _write(target, data)
    return dest


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))
