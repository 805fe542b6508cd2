"""Module-level run functions for tests of ``experiments.common.run_jobs`` (worker processes import them)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def square(x: int, *, bar: Any = None) -> dict[str, Any]:
    """A run whose record depends only on its argument."""
    return {"x": x, "square": x * x, "in_process_bar": bar is not None}


def fail_or_sleep(x: int, *, bar: Any = None) -> dict[str, Any]:
    """``x < 0`` sleeps ``-x`` seconds and raises; otherwise sleeps ``x`` seconds and returns."""
    if x < 0:
        time.sleep(-x)
        raise RuntimeError(f"run {x} failed")
    time.sleep(x)
    return {"x": x}


def write_pid_and_sleep(folder: str, *, bar: Any = None) -> dict[str, Any]:
    """Write this process's id to a file in ``folder``, then sleep for a minute (a run to be stopped)."""
    (Path(folder) / f"{os.getpid()}.pid").write_text(str(os.getpid()))
    time.sleep(60)
    return {}
