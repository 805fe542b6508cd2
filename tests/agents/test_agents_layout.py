"""The layout of ``agents``: shared plumbing in ``agents/common/`` (one concern a module), one module per
algorithm, no algorithm importing another, and every string option a ``Literal`` checked by the config."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Literal

import pytest

import agents
from agents.common.config import AgentConfig
from seqgym._options import check_option

ROOT = Path(agents.__file__).parent
ALGORITHMS = {"agents.mle", "agents.bc", "agents.sequencematch"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (``import x`` and ``from x import y``), at any depth of the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("module", sorted(ALGORITHMS))
def test_no_algorithm_imports_another(module: str):
    path = ROOT / f"{module.split('.')[-1]}.py"
    assert not (imported_modules(path) & (ALGORITHMS - {module}))


def test_common_imports_no_algorithm_and_keeps_modules_small():
    for path in sorted((ROOT / "common").glob("*.py")):
        assert not (imported_modules(path) & ALGORITHMS), path.name
        assert len(path.read_text().splitlines()) <= 450, path.name


def test_public_names_resolve_to_one_object():
    import agents.base
    import agents.common

    for name in agents.base.__all__:
        assert getattr(agents.base, name) is getattr(agents.common, name)
    assert agents.make_agent is agents.common.make_agent and agents.Agent is agents.common.Agent


def test_literal_options_are_checked_by_the_config():
    @dataclasses.dataclass(kw_only=True)
    class Cfg(AgentConfig):
        reduction: Literal["sum", "mean"] = "sum"

    assert Cfg(reduction="mean").reduction == "mean"
    with pytest.raises(ValueError, match=r"Unknown reduction 'max'; choose one of \['sum', 'mean'\]\."):
        Cfg(reduction="max")
    schedules = r"\['constant', 'linear', 'cosine'\]"
    with pytest.raises(ValueError, match=rf"Unknown lr_schedule 'step'; choose one of {schedules}"):
        AgentConfig(lr_schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown noise"):
        check_option("noise", 3, ("uniform", "model"))
