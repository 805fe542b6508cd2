"""What a study prints while it runs: one line per run with "run k of N", and one progress bar per run.

On a terminal the bar is a ``tqdm`` bar on stderr; when the output goes to a file or a pipe it is a plain line
at each quarter of the run instead, so logs hold no bar redraws. The bar follows a run's whole budget, however
many ``learn`` calls it takes (the learning-curve studies train in chunks).

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> log = StudyLog("demo", n_runs=2, stream=out, bar_stream=out, timed=False)
    >>> log.run("training mle (seed 0)")
    >>> with log.bar("mle seed 0", total=100) as bar:
    ...     bar.update(50); bar.update(100)
    >>> log.run("mle (seed 1)", cached=True)
    >>> print(out.getvalue(), end="")
    [demo] training mle (seed 0) (run 1 of 2)
    [demo]   mle seed 0: 50 / 100 steps (50%)
    [demo]   mle seed 0: 100 / 100 steps (100%)
    [demo] cached mle (seed 1) (run 2 of 2)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["ProgressCallback", "RunBar", "StudyLog"]


class RunBar:
    """Progress of one run towards ``total`` steps: a tqdm bar on a terminal, else a plain line per quarter.

    Args:
        label: what runs (shown before the counts).
        total: the run's budget (>= 1).
        prefix: the study's name, in brackets before plain lines.
        enabled: False shows nothing.
        stream: where plain lines go (default stdout).
        bar_stream: where a tqdm bar goes (default stderr); a bar is drawn only when it is a terminal.
        timed: add the elapsed seconds to plain lines.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        prefix: str,
        enabled: bool = True,
        stream: TextIO | None = None,
        bar_stream: TextIO | None = None,
        timed: bool = True,
    ) -> None:
        if total < 1:
            raise ValueError(f"total must be >= 1, got {total}.")
        self.label, self.total, self.prefix = label, int(total), prefix
        self.stream = stream if stream is not None else sys.stdout
        self.timed = timed
        self.done = 0
        self._quarter = 0
        self._start = time.perf_counter()
        bar_stream = bar_stream if bar_stream is not None else sys.stderr
        self._bar: Any = None
        self.enabled = enabled
        if enabled and _isatty(bar_stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=label, unit="step", unit_scale=True, file=bar_stream)

    def update(self, done: int) -> None:
        """The run has now done ``done`` steps in all (capped at ``total``; never goes back)."""
        done = min(int(done), self.total)
        if not self.enabled or done <= self.done:
            return
        if self._bar is not None:
            self._bar.update(done - self.done)
        self.done = done
        if self._bar is None:
            quarter = 4 * done // self.total
            if quarter > self._quarter:
                self._quarter = quarter
                seconds = f", {time.perf_counter() - self._start:.0f} s" if self.timed else ""
                print(
                    f"[{self.prefix}]   {self.label}: {_count(done)} / {_count(self.total)} steps "
                    f"({100 * done // self.total}%){seconds}",
                    file=self.stream,
                    flush=True,
                )

    def callback(self, offset: int = 0) -> ProgressCallback:
        """An SB3 callback (for an agent's or an SB3 model's ``learn``) that reports ``offset + num_timesteps``
        here (``offset``: the steps of earlier runs this bar follows too)."""
        return ProgressCallback(self, offset)

    def close(self) -> None:
        """Close the bar (a plain-line run prints nothing more)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ProgressCallback(BaseCallback):
    """Reports ``offset`` + the model's ``num_timesteps`` to a :class:`RunBar` after every step (an update of an
    imitation agent, an env step of an SB3 algorithm)."""

    def __init__(self, bar: RunBar, offset: int = 0) -> None:
        super().__init__()
        self.bar, self.offset = bar, int(offset)

    def _on_step(self) -> bool:
        self.bar.update(self.offset + self.num_timesteps)
        return True


class StudyLog:
    """The lines a study prints: ``[name] <what> (run k of N)`` before each run, and the run's progress bar.

    Args:
        name: the study (``compare``, ``arithmetic``, ``text``).
        n_runs: runs in the study, cached ones included (>= 0).
        progress: False draws no bars (the run lines are still printed).
        stream, bar_stream: as in :class:`RunBar`.
        timed: add elapsed seconds to plain progress lines.
    """

    def __init__(
        self,
        name: str,
        n_runs: int,
        *,
        progress: bool = True,
        stream: TextIO | None = None,
        bar_stream: TextIO | None = None,
        timed: bool = True,
    ) -> None:
        self.name, self.n_runs, self.progress = name, int(n_runs), progress
        self.stream, self.bar_stream, self.timed = stream, bar_stream, timed
        self.k = 0

    def run(self, what: str, *, cached: bool = False) -> None:
        """Announce the next run (``cached``: found in the cache, nothing to train)."""
        self.k += 1
        text = f"cached {what}" if cached else what
        print(
            f"[{self.name}] {text} (run {self.k} of {self.n_runs})",
            file=self.stream or sys.stdout,
            flush=True,
        )

    @contextmanager
    def bar(self, label: str, total: int) -> Iterator[RunBar]:
        """A :class:`RunBar` for the current run, closed at the end of the block."""
        bar = RunBar(
            label,
            total,
            prefix=self.name,
            enabled=self.progress,
            stream=self.stream,
            bar_stream=self.bar_stream,
            timed=self.timed,
        )
        try:
            yield bar
        finally:
            bar.close()

    def note(self, text: str) -> None:
        """Print one line of the study's log."""
        print(f"[{self.name}] {text}", file=self.stream or sys.stdout, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _count(n: int) -> str:
    """``1234`` -> ``"1234"``, ``50000`` -> ``"50.0k"``, ``2_000_000`` -> ``"2.0M"``."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return str(n)
