"""Plumbing shared by the experiment scripts: run caching (resume after an interruption), atomic JSON,
mean ± std tables and figures. The logic being compared lives in ``seqgym`` and ``agents``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqgym._files import atomic_write

__all__ = ["RunCache", "config_digest", "format_table", "summarize", "torch_threads", "write_json_atomic"]


def config_digest(config: Any, *, ignore: Sequence[str] = ()) -> str:
    """Short hash of a config dataclass's fields (minus ``ignore``): runs cached under another digest are
    never reused, so changing a hyperparameter can never silently mix old and new results.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = 1e-3
        ...     out: str = "a"
        >>> config_digest(C(), ignore=["out"]) == config_digest(C(out="b"), ignore=["out"])
        True
        >>> config_digest(C()) == config_digest(C(lr=0.1))
        False
    """
    import hashlib

    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in set(ignore)}
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` (folders created) through :func:`seqgym._files.atomic_write`:
    an interrupted or failed write leaves the previous file in place. Raises ``TypeError`` for an object JSON
    cannot hold (before anything is written)."""
    data = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable).encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"Cannot write {type(x).__name__} to JSON.")


class RunCache:
    """One JSON file per finished run under ``folder``; a rerun skips what is already there.

    Example:
        >>> import tempfile
        >>> cache = RunCache(tempfile.mkdtemp())
        >>> cache.get("mle", 0) is None
        True
        >>> cache.put("mle", 0, {"validity": 0.5})
        >>> cache.get("mle", 0)
        {'validity': 0.5}
    """

    def __init__(self, folder: str | os.PathLike[str], *, enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = enabled

    def _path(self, *key: object) -> Path:
        name = "_".join(str(k).replace("/", "-") for k in key)
        return self.folder / f"{name}.json"

    def get(self, *key: object) -> dict[str, Any] | None:
        """The stored record of ``key``, or ``None`` (also when caching is disabled)."""
        p = self._path(*key)
        if not self.enabled or not p.exists():
            return None
        with open(p) as f:
            out: dict[str, Any] = json.load(f)
        return out

    def put(self, *key_and_record: Any) -> None:
        """``put(*key, record)``: store ``record`` atomically."""
        *key, record = key_and_record
        write_json_atomic(self._path(*key), record)


def summarize(
    records: Iterable[Mapping[str, Any]], metrics: Sequence[str]
) -> dict[str, dict[str, list[float]]]:
    """Group run records by ``record["agent"]`` and return ``{agent: {metric: [mean, std, n]}}`` over seeds.

    The standard deviation is the sample one (``ddof=1``; 0 for a single seed). NaN values are skipped.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r["agent"]), []).append(r)
    out: dict[str, dict[str, list[float]]] = {}
    for agent, rs in groups.items():
        out[agent] = {}
        for m in metrics:
            vals = np.array([float(r[m]) for r in rs if m in r and r[m] is not None], dtype=float)
            vals = vals[~np.isnan(vals)]
            if len(vals) == 0:
                continue
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            out[agent][m] = [float(vals.mean()), std, float(len(vals))]
    return out


def _fmt(mean: float, std: float, n: float) -> str:
    if math.isinf(mean):
        return "-inf" if mean < 0 else "inf"
    digits = 3 if abs(mean) < 100 else 1
    if n < 2:  # one run: no spread to report
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(summary: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str]) -> str:
    """A Markdown table: one row per agent, one column per metric, cells ``mean ± std`` (just the value where a
    metric comes from a single run).

    Example:
        >>> print(format_table({"mle": {"validity": [0.5, 0.1, 3]}, "bc": {"validity": [0.7, 0.0, 1]}}, ["validity"]))
        | agent | validity |
        |---|---|
        | mle | 0.500 ± 0.100 |
        | bc | 0.700 |
    """
    lines = ["| agent | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for agent, row in summary.items():
        cells = [_fmt(*row[m][:3]) if m in row else "n/a" for m in metrics]
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous count.

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an int >= 1, got {n!r}.")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
