"""The project installs three top-level packages, ``seqgym``, ``agents`` and ``experiments``: ``import agents``
and ``import experiments`` must give this project's code, and no other installed distribution may claim those
names (``agents`` and ``experiments`` are generic; pip would let another package shadow them silently)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("seqgym", "agents", "experiments")


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_imports_resolve_to_this_repository(name: str) -> None:
    module = __import__(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve() == REPO / name / "__init__.py"


@pytest.fixture(scope="module")
def distribution() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution("seqgym")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the project is not installed (pip install -e .): no installed names to check")


def test_the_installed_distribution_declares_exactly_the_three_names(
    distribution: importlib.metadata.Distribution,
) -> None:
    top_level = distribution.read_text("top_level.txt")
    if top_level is not None:  # setuptools writes it; other installers may not
        assert sorted(top_level.split()) == sorted(TOP_LEVEL)
    owners = importlib.metadata.packages_distributions()
    for name in TOP_LEVEL:
        # no other installed distribution provides a top-level package of the same name (an editable install
        # may list the project once per file it installed)
        assert set(owners.get(name, [])) == {"seqgym"}, f"{name!r} is provided by {owners.get(name)}"


def test_an_installed_import_gives_the_installed_projects_files(
    distribution: importlib.metadata.Distribution, tmp_path: Path
) -> None:
    # Outside the repository and without PYTHONPATH, `import agents` must find the installed project.
    code = (
        "import json, agents, experiments, seqgym; "
        "print(json.dumps([m.__file__ for m in (seqgym, agents, experiments)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env={}
    )
    assert proc.returncode == 0, proc.stderr
    files = [Path(f).resolve() for f in json.loads(proc.stdout)]
    direct_url = distribution.read_text("direct_url.json")
    info = json.loads(direct_url) if direct_url else {}
    if info.get("dir_info", {}).get("editable"):  # pip install -e: the checkout it was installed from
        root = Path(unquote(urlparse(info["url"]).path)).resolve()
    else:  # a regular install: the files recorded for the distribution
        root = Path(str(distribution.locate_file(""))).resolve()
    for name, file in zip(TOP_LEVEL, files):
        assert file == root / name / "__init__.py", f"import {name} gave {file}, not {root / name}"
