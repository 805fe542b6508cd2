"""``experiments.common.run_jobs``: cached runs skipped, the rest in this process or in worker processes, records
in the study's order, and a failing run reported at once with every finished run kept."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobs_helper import fail_or_sleep, square

from experiments.common import Job, RunCache, StudyTerminated, run_jobs
from experiments.progress import StudyLog


def _log(n: int) -> tuple[StudyLog, io.StringIO]:
    out = io.StringIO()
    return StudyLog("t", n, progress=False, stream=out, bar_stream=out, timed=False), out


def test_records_keep_the_study_order_and_cached_runs_are_skipped(tmp_path: Path) -> None:
    cache = RunCache(tmp_path, stamp={"v": "1"})
    cache.put(
        "x", 2, {"x": 2, "square": -1, "in_process_bar": False}
    )  # a cached record is returned as stored
    jobs = [Job(key=("x", x), label=f"x={x}", args=(x,), cost=float(x)) for x in (1, 2, 3, 4)]
    log, out = _log(len(jobs))
    records = run_jobs(square, jobs, cache=cache, log=log, workers=2)
    assert [r["x"] for r in records] == [1, 2, 3, 4] and records[1]["square"] == -1
    assert [r["square"] for r in records if r["x"] != 2] == [1, 9, 16]
    assert not any(r["in_process_bar"] for r in records)  # worker processes draw no bars
    printed = out.getvalue()
    assert "cached x=2" in printed and "in 2 worker processes" in printed
    assert cache.get("x", 3) == {"x": 3, "square": 9, "in_process_bar": False}  # stored as it finished
    log, out = _log(len(jobs))
    again = run_jobs(square, jobs, cache=cache, log=log, workers=2)  # everything cached: nothing runs
    assert again == records and "worker processes" not in out.getvalue()


def test_one_worker_runs_in_this_process_with_a_bar(tmp_path: Path) -> None:
    log, out = _log(2)
    records = run_jobs(
        square, [Job(("a",), "a", (5,)), Job(("b",), "b", (6,))], cache=RunCache(tmp_path), log=log
    )
    assert [r["square"] for r in records] == [25, 36] and all(r["in_process_bar"] for r in records)
    assert "training a (run 1 of 2)" in out.getvalue()
    assert run_jobs(square, [], cache=RunCache(tmp_path), log=log, workers=2) == []


def test_a_failing_run_is_reported_at_once_and_finished_runs_stay_cached(tmp_path: Path) -> None:
    cache = RunCache(tmp_path)
    # costliest first: the 0-second run and the failing run (1 s) start at once; the 30-second ones never finish
    jobs = [
        Job(("ok",), "ok", (0,), cost=3.0),
        Job(("bad",), "bad", (-1,), cost=2.0),
        Job(("slow1",), "slow1", (30,), cost=1.0),
        Job(("slow2",), "slow2", (30,), cost=1.0),
    ]
    log, _ = _log(len(jobs))
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="run -1 failed"):
        run_jobs(fail_or_sleep, jobs, cache=cache, log=log, workers=2)
    assert time.perf_counter() - start < 25  # it did not wait for the slow runs
    assert cache.get("ok") == {"x": 0} and cache.get("slow1") is None and cache.get("bad") is None


def test_workers_must_be_a_positive_int(tmp_path: Path) -> None:
    log, _ = _log(0)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="workers must be an int >= 1"):
            run_jobs(square, [], cache=RunCache(tmp_path), log=log, workers=bad)  # type: ignore[arg-type]


STUDY = """
import sys
from experiments.common import Job, RunCache, StudyTerminated, run_jobs
from experiments.progress import StudyLog
from jobs_helper import write_pid_and_sleep

if __name__ == "__main__":
    folder = sys.argv[1]
    log = StudyLog("t", 2, progress=False, timed=False)
    jobs = [Job(("a",), "a", (folder,)), Job(("b",), "b", (folder,))]
    try:
        run_jobs(write_pid_and_sleep, jobs, cache=RunCache(folder + "/cache"), log=log, workers=2)
    except StudyTerminated:
        sys.exit(99)  # the handler turned SIGTERM into an interruption
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has stopped


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_a_study_stopped_with_sigterm_stops_its_worker_processes(tmp_path: Path) -> None:
    script = tmp_path / "study.py"
    script.write_text(STUDY)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    study = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("*.pid"))) < 2:  # both runs under way
            assert time.monotonic() < deadline and study.poll() is None, "the workers never started"
            time.sleep(0.2)
        workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
        study.send_signal(signal.SIGTERM)
        assert study.wait(timeout=30) == 99
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "a worker outlived the study"
    finally:  # leave nothing behind, whatever failed
        if study.poll() is None:
            study.kill()
            study.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_the_command_line_exits_128_plus_the_signal_and_says_the_finished_runs_are_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import dataclasses

    from experiments.common import run_cli

    @dataclasses.dataclass
    class Config:
        """A study with nothing to set."""

    def interrupted(cfg: Config) -> None:
        raise KeyboardInterrupt

    def terminated(cfg: Config) -> None:
        raise StudyTerminated

    for main, code in ((interrupted, 130), (terminated, 128 + signal.SIGTERM)):
        with pytest.raises(SystemExit) as exit_:
            run_cli(Config, main, prog="study", args=[])
        assert exit_.value.code == code
        assert "finished runs are kept" in capsys.readouterr().err


def test_a_difference_without_any_pair_reads_n_a() -> None:
    from experiments.compare import _interval

    assert _interval({"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0.0}) == "n/a"
    assert (
        _interval({"mean": 0.5, "low": float("nan"), "high": float("nan"), "n": 1.0}) == "+0.500 (one seed)"
    )


def test_a_difference_over_fewer_seeds_than_the_study_says_so() -> None:
    from experiments.compare import format_differences, paired_table

    nan = float("nan")
    records = [
        {"agent": a, "seed": s, "validity": v}
        for a, vals in (("sequencematch", [0.9, 0.8, nan, 0.7, 0.95]), ("bc", [0.6, nan, 0.5, 0.6, 0.7]))
        for s, v in zip(range(1, 6), vals)
    ]
    d = paired_table(records, (1, 2, 3, 4, 5))
    assert d["sequencematch − bc"]["validity"]["n"] == 3.0
    assert "] (n=3)" in format_differences(d, 5).splitlines()[2]
    full = [r for r in records if r["seed"] in (1, 4, 5)]
    assert "(n=" not in format_differences(paired_table(full, (1, 4, 5)), 3)
