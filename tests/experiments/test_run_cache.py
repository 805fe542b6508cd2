"""The experiment run cache: keyed on the settings, the library's source and its version; stale or foreign
records are recomputed; an unreadable file is named with how to recover."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import agents
import experiments
import seqgym
from experiments import common, compare
from experiments.common import CacheError, RunCache, library_folders, source_digest


def tiny_compare(out: Path, **overrides: object) -> compare.Config:
    settings: dict[str, object] = {
        "agents": ("mle",),
        "seeds": (0,),
        "budget": 64,
        "n_demonstrations": 16,
        "noise_levels": (),
        "n_eval": 8,
        "n_curve": 1,
        "n_curve_samples": 4,
        "n_gallery": 2,
        "n_layer": 1,
        "n_embd": 16,
        "batch_size": 8,
        "out": out,
        "progress": False,
        "workers": 1,
        "recovery": False,
    }
    settings.update(overrides)
    return compare.Config(**settings)  # type: ignore[arg-type]


def trained(capsys: pytest.CaptureFixture[str]) -> bool:
    out = capsys.readouterr().out
    assert ("[compare] training mle" in out) != ("[compare] cached mle" in out)
    return "[compare] training mle" in out


def test_source_digest_changes_with_every_edit_of_a_python_file(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__pycache__").mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    first = source_digest([pkg])
    assert source_digest([pkg]) == first
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")  # compiled files and data do not count
    (pkg / "notes.txt").write_text("hello")
    assert source_digest([pkg]) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")  # an edit deep in the tree
    edited = source_digest([pkg])
    assert edited != first
    (pkg / "sub" / "b.py").rename(pkg / "sub" / "c.py")  # a renamed file
    assert source_digest([pkg]) not in {first, edited}
    (pkg / "sub" / "c.py").rename(pkg / "sub" / "b.py")
    assert source_digest([pkg]) == edited
    (pkg / "d.py").write_text("")  # an added (even empty) file
    assert source_digest([pkg]) != edited


def test_library_digest_hashes_the_imported_seqgym_agents_and_experiments() -> None:
    folders = library_folders()
    expected = [Path(m.__file__).parent for m in (seqgym, agents, experiments)]  # type: ignore[arg-type]
    assert folders == expected
    assert common.library_digest() == source_digest(expected)
    stamp = common.run_stamp(tiny_compare(Path("x")), ignore=compare.NOT_IN_RUN)
    assert stamp["code"] == common.library_digest() and stamp["version"] == seqgym.__version__


def test_edited_library_code_or_a_new_version_never_reuses_cached_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_compare(tmp_path)
    first = compare.main(cfg)
    assert trained(capsys)
    again = compare.main(cfg)
    assert not trained(capsys)  # same settings, same code: the cached run
    assert json.dumps(again["runs"]) == json.dumps(first["runs"])
    # a setting a run does not depend on (here: progress bars) keeps the cache
    compare.main(tiny_compare(tmp_path, progress=True))
    assert not trained(capsys)
    real = common.library_digest()
    monkeypatch.setattr(common, "library_digest", lambda: real[::-1])  # an edit of seqgym/, agents/, ...
    compare.main(cfg)
    assert trained(capsys)
    monkeypatch.setattr(common, "package_version", lambda: "99.0")  # a new release
    compare.main(cfg)
    assert trained(capsys)
    monkeypatch.undo()
    compare.main(cfg)  # back to the original code: its run is still there
    assert not trained(capsys)


def test_a_cached_run_under_another_stamp_is_recomputed_not_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_compare(tmp_path)
    compare.main(cfg)
    (path,) = (tmp_path / "runs").glob("*.json")
    data = json.loads(path.read_text())
    assert set(data) == {"stamp", "record"} and set(data["stamp"]) == {"config", "code", "version"}
    data["stamp"]["config"] = "0123456789"  # a record computed under other settings, under this name
    data["record"]["validity"] = 123.0
    path.write_text(json.dumps(data))
    capsys.readouterr()
    result = compare.main(cfg)
    out = capsys.readouterr().out
    assert "computed under other settings or code; recomputing it" in out and "[compare] training mle" in out
    assert 0.0 <= result["runs"][0]["validity"] <= 1.0
    assert json.loads(path.read_text())["stamp"]["config"] != "0123456789"  # replaced by the fresh run


@pytest.mark.parametrize(
    "content", ["{not json", '{"stamp": {}}', "[1, 2]", '{"stamp": {}, "record": 3}'], ids=str
)
def test_an_unreadable_cached_run_names_its_file_and_how_to_recover(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_compare(tmp_path)
    compare.main(cfg)
    (path,) = (tmp_path / "runs").glob("*.json")
    path.write_text(content)
    with pytest.raises(CacheError) as e:
        compare.main(cfg)
    assert str(path) in str(e.value) and "--no-resume" in str(e.value) and "delete" in str(e.value)
    capsys.readouterr()
    # on the command line: one line, no traceback, status 2
    with pytest.raises(SystemExit) as exit_:
        common.run_cli(
            compare.Config,
            compare.main,
            prog="python -m experiments.compare",
            args=["--agents", "mle", "--seeds", "0", "--budget", "64", "--n-demonstrations", "16",
                  "--noise-levels", "--n-eval", "8", "--n-curve", "1", "--n-curve-samples", "4",
                  "--n-gallery", "2", "--n-layer", "1", "--n-embd", "16", "--batch-size", "8",
                  "--no-progress", "--no-recovery", "--out", str(tmp_path)],
        )  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m experiments.compare: error: Cached run")
    assert "Traceback" not in err
    # the recovery the message names works: --no-resume recomputes (and rewrites) the run
    compare.main(tiny_compare(tmp_path, resume=False))
    assert RunCache(tmp_path / "runs", stamp=json.loads(path.read_text())["stamp"]).get(
        "dyck", "mle", "seed0", "noise0.1"
    )


def test_run_cache_keys_files_on_the_stamp(tmp_path: Path) -> None:
    a = RunCache(tmp_path, stamp={"config": "a", "code": "x", "version": "1"})
    b = RunCache(tmp_path, stamp={"config": "a", "code": "y", "version": "1"})
    a.put("mle", 0, {"validity": 0.5})
    assert a.get("mle", 0) == {"validity": 0.5}
    assert b.get("mle", 0) is None and a.path("mle", 0) != b.path("mle", 0)
    assert RunCache(tmp_path, enabled=False, stamp=a.stamp).get("mle", 0) is None
