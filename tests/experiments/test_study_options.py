"""Every option of every study is checked before the first run starts: a bad one fails at once with one
clear line (no traceback), nothing trained, nothing written; ``--help`` explains every knob."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import arithmetic, arithmetic_gap, compare, finetune, probes, sweep, text
from experiments.common import AgentSettings, ConfigError, run_cli

STUDIES = {
    "compare": compare,
    "arithmetic": arithmetic,
    "text": text,
    "finetune": finetune,
    "sweep": sweep,
    "arithmetic_gap": arithmetic_gap,
    "probes": probes,
}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any training fail loudly: a rejected option must be caught before a run starts."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a run started although an option was invalid")

    monkeypatch.setattr(compare, "_run_one", refuse)
    monkeypatch.setattr(text, "_trained", refuse)
    monkeypatch.setattr(finetune, "run_seed", refuse)
    monkeypatch.setattr(sweep, "run_one", refuse)
    monkeypatch.setattr(arithmetic_gap, "run_one", refuse)


BAD = [
    ("compare", ["--p-noise", "1.5"], "--p-noise must be a number in [0.0, 1.0], got 1.5"),
    ("compare", ["--n-eval", "0"], "--n-eval must be an int >= 1, got 0"),
    ("compare", ["--noise-margin", "-1"], "--noise-margin must be an int >= 0, got -1"),
    (
        "compare",
        ["--task", "arithmetic", "--source-kwargs", "base", "5", "n_digits", "2", "--noise-margin", "3"],
        "--noise-margin: noise_margin=3 leaves no position for a mistake: with the length limit 10 and prompts of 6 "
        "tokens or more it must be at most 2.",
    ),
    ("probes", ["--noise-margin", "16"], "--noise-margin: noise_margin=16 leaves no position"),
    ("compare", ["--budget", "0"], "--budget must be an int >= 1"),
    ("compare", ["--noise-levels", "0.0", "-0.1"], "--noise-levels must be a number in [0.0, 1.0]"),
    ("compare", ["--noise-seeds", "6"], "--noise-seeds must be an int in [0, 5]"),
    ("compare", ["--task", "markov", "--lengths", "20"], "--lengths needs a task in"),
    ("compare", ["--temperatures", "0"], "--temperatures must be a number > 0.0"),
    ("compare", ["--seeds", "0", "0"], "--seeds lists a seed twice"),
    ("compare", ["--agents", "mle", "ppo2"], "Unknown agent 'ppo2'"),
    ("compare", ["--n-embd", "63"], "--n-embd (63) must be a multiple of --n-head (2)"),
    ("compare", ["--learning-rate", "0"], "--learning-rate must be a number > 0.0"),
    ("compare", ["--sm-chi2-coef", "-1"], "--sm-chi2-coef must be a number > 0.0"),
    ("compare", ["--threads", "0"], "--threads must be an int >= 1"),
    ("compare", ["--n-gallery", "-1"], "--n-gallery must be an int >= 0"),
    ("compare", ["--sb3-n-envs", "0"], "--sb3-n-envs must be an int >= 1"),
    ("compare", ["--task", "arithmetic", "--source-kwargs", "base", "1"], "task 'arithmetic' with source"),
    ("arithmetic", ["--base", "1"], "--base must be an int >= 2"),
    ("arithmetic", ["--noise-levels", "1.5"], "--noise-levels must be a number in [0.0, 1.0]"),
    ("arithmetic", ["--n-eval", "0"], "--n-eval must be an int >= 1"),
    ("arithmetic", ["--sm-bc-weight", "-1"], "--sm-bc-weight must be a number >= 0.0"),
    ("arithmetic", ["--agents", "maskable_ppo"], "Unknown agent 'maskable_ppo'"),
    ("text", ["--corpus", "no/such/folder"], "--corpus 'no/such/folder' is not a folder"),
    ("text", ["--heldout", "ulysses.txt"], "--heldout 'ulysses.txt' is not one of the shipped novels"),
    ("text", ["--p-noise", "1.5"], "--p-noise must be a number in [0.0, 1.0]"),
    ("text", ["--temperature", "0"], "--temperature must be a number > 0.0"),
    ("text", ["--top-p", "0"], "--top-p must be a number in (0.0, 1.0]"),
    ("text", ["--n-head", "5"], "--n-embd (192) must be a multiple of --n-head (5)"),
    ("text", ["--finetune-budget", "0"], "--finetune-budget must be an int >= 1"),
    ("finetune", ["--pretrain", "0"], "--pretrain must be an int >= 1"),
    ("finetune", ["--task", "markov"], "--task must be one of ['dyck', 'mirror']"),
    ("finetune", ["--seeds", "3", "3"], "--seeds lists a seed twice"),
    ("finetune", ["--p-noise", "2"], "--p-noise must be a number in [0.0, 1.0]"),
    ("finetune", ["--finetune-learning-rate", "0"], "--finetune-learning-rate must be a number > 0.0"),
    ("finetune", ["--n-embd", "63"], "--n-embd (63) must be a multiple of --n-head (2)"),
    ("sweep", ["--sm-alpha", "0.1"], "--sm-alpha does not apply: each sweep setting sets"),
    ("sweep", ["--settings", "nope"], "Unknown --settings ['nope']"),
    ("sweep", ["--batch-size", "0"], "--batch-size must be an int >= 1"),
    ("sweep", ["--n-recovery", "0"], "--n-recovery must be an int >= 1"),
    (
        "sweep",
        ["--architecture", "llama", "--n-embd", "6", "--n-head", "2"],
        "--architecture llama needs an even head size",
    ),
    (
        "arithmetic_gap",
        ["--sm-chi2-coef", "1", "--sm-terminal", "iq"],
        "--sm-chi2-coef, --sm-terminal do not",
    ),
    ("arithmetic_gap", ["--variants", "ppo"], "--variants must be among"),
    ("arithmetic_gap", ["--seeds"], "--seeds is empty"),
]


@pytest.mark.parametrize(("study", "args", "message"), BAD, ids=[f"{s}{' '.join(a)}" for s, a, _ in BAD])
@pytest.mark.usefixtures("nothing_runs")
def test_a_bad_option_fails_before_anything_runs_with_one_line(
    study: str, args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = STUDIES[study]
    out = tmp_path / "out"
    prog = f"python -m experiments.{study}"
    with pytest.raises(SystemExit) as e:
        run_cli(module.Config, module.main, prog=prog, args=[*args, "--out", str(out)])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"{prog}: error: ") and captured.err.count("\n") == 1
    assert message in captured.err and "Traceback" not in captured.err
    assert not out.exists()  # nothing cached, nothing written
    with pytest.raises(ConfigError):  # the Python API refuses it the same way
        module.main(module.Config(**{**_parsed(module, args).__dict__, "out": out}))


def _parsed(module: object, args: list[str]) -> object:
    import tyro

    return tyro.cli(module.Config, args=args)  # type: ignore[attr-defined]


def test_the_command_line_refuses_a_bad_option_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compare", "--p-noise", "1.5", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "python -m experiments.compare: error: --p-noise must be a number in [0.0, 1.0], got 1.5."
    )
    assert proc.stdout == "" and not out.exists()


@pytest.mark.parametrize("study", STUDIES)
def test_the_defaults_are_valid(study: str) -> None:
    STUDIES[study].Config().check()


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass and its bases (the nearest class wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
            ):
                docs[node.target.id] = str(nxt.value.value)
    return docs


@pytest.mark.parametrize("study", STUDIES)
def test_help_explains_every_option(
    study: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = STUDIES[study]
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as e:
        run_cli(module.Config, module.main, prog=f"python -m experiments.{study}", args=["--help"])
    assert e.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    docs = _field_docs(module.Config)
    for field in dataclasses.fields(module.Config):
        assert field.name in docs, f"{study}: field {field.name} has no docstring"
        assert "--" + field.name.replace("_", "-") in help_text
        first_words = " ".join(docs[field.name].split()[:3])
        assert first_words in help_text, f"{study}: --help does not explain {field.name}"


def test_the_studies_share_one_model_and_agent_config() -> None:
    shared = {f.name for f in dataclasses.fields(AgentSettings)}
    for module in STUDIES.values():
        assert issubclass(module.Config, AgentSettings)
        assert shared <= {f.name for f in dataclasses.fields(module.Config)}
    # a study overrides a default only where it needs another (the field stays the shared one)
    assert text.Config().n_layer == 4 and compare.Config().n_layer == AgentSettings().n_layer
    assert arithmetic.Config().compare_config().batch_size == arithmetic.Config().batch_size == 64


def test_the_studies_choices_are_the_librarys() -> None:
    """The studies spell the library's option types again (to stay importable without torch); they must agree."""
    import typing

    from agents import policy, sequencematch
    from experiments import common

    assert typing.get_args(common.Architecture) == policy.ARCHITECTURES
    assert typing.get_args(common.Divergence) == sequencematch.DIVERGENCES
    assert set(typing.get_args(common.Terminal)) == set(typing.get_args(sequencematch.TerminalMode))
    assert set(typing.get_args(common.InsertedSteps)) == set(typing.get_args(sequencematch.InsertedSteps))
