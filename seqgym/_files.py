"""Files written atomically (a temporary file beside the target, then ``os.replace``), and the permission bits
that folders made through :mod:`tempfile` (owner-only) should get."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from typing import IO

__all__ = ["atomic_write", "default_mode"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a fresh temporary file beside ``path`` (binary, created with the umask's permissions as
    ``open()`` would), fsync it and rename it over ``path``; the rename is made durable where the platform allows.
    An interruption or an error in ``write`` leaves ``path`` as it was and removes the temporary file.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> atomic_write(target, lambda f: f.write(b"hello"))
        >>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
        (b'hello', ['x.txt'])
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    while True:  # a fresh, unique temporary name next to the target (O_EXCL: never reuse an existing file)
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not possible on every platform (e.g. Windows), hence best effort.
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def default_mode(*, directory: bool) -> int:
    """The permission bits that ``open(..., "w")`` (``directory=False``) or ``os.mkdir`` (``True``) would give
    under the process's current umask: ``0o666 & ~umask`` or ``0o777 & ~umask``.

    Example:
        >>> old = os.umask(0o022)
        >>> oct(default_mode(directory=False)), oct(default_mode(directory=True))
        ('0o644', '0o755')
        >>> _ = os.umask(old)
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask
