"""Generated files go to folders git ignores (``results/``, ``runs/``), never into tracked paths or the
repository root."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import env_throughput, policy_bench, sequencematch_bench, train_throughput
from experiments import arithmetic, compare, text

REPO = Path(__file__).resolve().parents[1]


def _ignored(path: str) -> bool:
    proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO, check=False)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def git() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the project's git checkout (checks .gitignore with git check-ignore)")


def default_outputs() -> dict[str, str]:
    return {
        "compare": str(compare.Config().out / "runs" / "x.json"),
        "arithmetic": str(arithmetic.Config().out / "table.md"),
        "text": str(text.Config().out / "corpus" / "emma.txt"),
        "env_throughput": env_throughput.Config().out,
        "policy_bench": policy_bench.Config().out,
        "sequencematch_bench": sequencematch_bench.Config().out,
        "train_throughput": train_throughput.Config().out,
    }


@pytest.mark.usefixtures("git")
@pytest.mark.parametrize("name", sorted(default_outputs()))
def test_studies_and_benchmarks_write_into_ignored_folders(name: str) -> None:
    path = default_outputs()[name]
    assert path.startswith("results/") and _ignored(path)


@pytest.mark.usefixtures("git")
def test_no_benchmark_result_is_tracked() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "benchmarks", "results", "runs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [p for p in tracked if p.endswith(".json")] == []


def test_the_readme_examples_write_under_ignored_folders() -> None:
    readme = (REPO / "README.md").read_text()
    written = re.findall(r"(?:save_demonstrations|\.save)\(\s*[\"']([^\"']+)[\"']", readme)
    assert written, "the README's examples save files; this test reads their paths"
    for path in written:
        assert path.split("/")[0] in ("runs", "results"), path
