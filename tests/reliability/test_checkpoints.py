"""Checkpoints and atomic writes: durable before the rename, newest good one found by step number, stale
temporaries cleaned, permissions kept, symlinks refused, nothing left behind on failure, clear load errors.

Resume equality (a run resumed from a checkpoint ends bitwise equal to the uninterrupted one) is tested in
``tests/test_agents_base.py::test_checkpoint_resume_reproduces_the_uninterrupted_run``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agents import Agent, AgentLoadError, make_agent
from agents.bc import BC
from agents.mle import MLE
from seqgym._files import atomic_write
from seqgym.env import SequenceEnv
from seqgym.sources.dyck import Dyck

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}


def small_env() -> SequenceEnv:
    return SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=9, max_steps=27)


def small(name: str = "bc", **kw: Any) -> Agent:
    kw.setdefault("seed", 0)
    kw.setdefault("n_demonstrations", 8)
    kw.setdefault("batch_size", 4)
    kw.setdefault("policy_kwargs", dict(TINY))
    return make_agent(name, env=small_env(), **kw)


@pytest.fixture(scope="module")
def agent() -> Agent:
    return small()


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


# ------------------------------------------------------------------------------------------------------
def test_every_file_and_folder_is_fsynced_before_the_rename(
    agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(src: Any, dst: Any) -> None:
        events.append(f"rename {Path(src).name}")
        real_rename(src, dst)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsynced files")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    agent.save(tmp_path / "ck")
    tmp = next(Path(p) for p in synced if Path(p).name.startswith(".ck.tmp-"))
    names = {Path(p).relative_to(tmp).as_posix() for p in synced if Path(p).is_relative_to(tmp)}
    weights = {p.relative_to(tmp_path / "ck").as_posix() for p in (tmp_path / "ck").rglob("*") if p.is_file()}
    assert weights <= names, f"not fsynced before the rename: {weights - names}"
    assert {".", "policy"} <= names  # the folders too
    assert "training_state.pt" in names and any(n.endswith(".safetensors") for n in names)
    assert events == [f"rename {tmp.name}"]


def test_latest_checkpoint_orders_by_step_and_skips_broken(agent: Agent, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    agent.save(ck / "step_99999999")
    agent.save(ck / "step_100000000")
    assert Agent.latest_checkpoint(ck) == ck / "step_100000000"  # by number, not by name

    weights = next((ck / "step_100000000" / "policy").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a partial newest checkpoint
    with pytest.warns(UserWarning, match=r"Skipping the checkpoint .*step_100000000.*truncated"):
        assert Agent.latest_checkpoint(ck) == ck / "step_99999999"

    (ck / "step_100000001").mkdir()  # killed before agent.json was written
    (ck / "step_100000002").mkdir()
    (ck / "step_100000002" / "agent.json").write_text("{")  # corrupt
    with pytest.warns(UserWarning):
        assert Agent.latest_checkpoint(ck) == ck / "step_99999999"
    shutil.rmtree(ck / "step_99999999")
    with pytest.warns(UserWarning):
        assert Agent.latest_checkpoint(ck) is None


def test_stale_temporaries_are_cleaned_by_the_next_save(agent: Agent, tmp_path: Path) -> None:
    pid = dead_pid()
    stale = tmp_path / f".step_00000004.tmp-{pid}-abc123"
    stale.mkdir()
    (stale / "training_state.pt").write_bytes(b"partial")
    live = tmp_path / f".step_00000008.tmp-{os.getppid()}-def456"  # a save in progress elsewhere
    live.mkdir()
    agent.save(tmp_path / "step_00000012")
    assert not stale.exists()
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "step_00000012"])


def test_agent_json_with_missing_or_wrong_fields(agent: Agent, tmp_path: Path) -> None:
    agent.save(tmp_path / "ok")

    def edited(name: str, edit: Any) -> Path:
        d = tmp_path / name
        shutil.copytree(tmp_path / "ok", d)
        meta = json.loads((d / "agent.json").read_text())
        edit(meta)
        (d / "agent.json").write_text(json.dumps(meta))
        return d

    cases = [
        ("no_seed", lambda m: m.pop("seed"), "lacks the entry 'seed'"),
        ("str_seed", lambda m: m.update(seed="0"), r"seed='0' \(str\); expected int"),
        ("no_files", lambda m: m.pop("files"), "lacks or garbles the entry 'files'"),
        ("bad_schedule", lambda m: m.update(schedule=[1]), "schedule"),
        ("hp_list", lambda m: m.update(hyperparameters=[]), "hyperparameters=.*expected dict"),
        (
            "bad_hp",
            lambda m: m["hyperparameters"].update(lr_schedule="no"),
            "bad hyperparameters.*lr_schedule",
        ),
    ]
    for name, edit, pattern in cases:
        with pytest.raises(AgentLoadError, match=pattern):
            Agent.load(edited(name, edit), env=small_env())
    with pytest.raises(AgentLoadError, match=r"'bc' agent .*not a MLE"):
        MLE.load(tmp_path / "ok")
    assert isinstance(BC.load(tmp_path / "ok", env=small_env()), BC)


# ------------------------------------------------------------------------------------------------------
def test_atomic_write_keeps_permissions(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.write_text("old")
    target.chmod(0o600)
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_write_refuses_an_unexpected_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with pytest.raises(ValueError, match="symbolic link"):
        atomic_write(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and real.read_text() == "keep"
    atomic_write(link, lambda f: f.write(b"new"), follow_symlinks=True)
    assert link.is_symlink() and real.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "real.txt"]


def test_atomic_write_leaves_nothing_behind_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def boom(f: Any) -> None:
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, boom)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
        with pytest.raises(OSError, match="rename failed"):
            atomic_write(target, lambda f: f.write(b"new"))
    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
        with pytest.raises(MemoryError):
            atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, lambda f: f.write(b"x"))
