"""The experiment scripts run end to end on tiny budgets and write their tables, JSON and figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from recovery_spy import spy_on_recovery

from experiments import arithmetic, compare, text
from experiments.common import write_json_atomic

TINY_SM = {"sm_bc_warmup_steps": 1}


def test_compare_runs_end_to_end_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = compare.Config(
        agents=("mle", "bc", "sequencematch", "maskable_ppo"),
        seeds=(0,),
        budget=256,
        n_demonstrations=32,
        noise_levels=(0.0,),
        n_eval=16,
        n_curve=2,
        n_curve_samples=8,
        n_layer=1,
        n_embd=16,
        batch_size=8,
        sb3_n_envs=2,
        sb3_n_steps=64,
        sb3_batch_size=32,
        sb3_n_epochs=1,
        out=tmp_path,
        progress=False,
        recovery=False,
        **TINY_SM,
    )
    results = compare.main(cfg)
    for name in ("results.json", "table.md", "compare.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["summary"]) == {"mle", "bc", "sequencematch", "maskable_ppo"}
    for rec in saved["runs"]:
        assert 0.0 <= rec["validity"] <= 1.0
        assert len(rec["curve"]) == 2
        if rec["agent"] == "sequencematch":  # it got past its one BC warm-up update
            assert rec["updates"] > TINY_SM["sm_bc_warmup_steps"]
    # the noise study adds BC and SequenceMatch at p_noise=0 to the main runs at 0.1
    assert sorted((r["agent"], r["p_noise"]) for r in saved["noise_study"]) == [
        ("bc", 0.0),
        ("bc", 0.1),
        ("sequencematch", 0.0),
        ("sequencematch", 0.1),
    ]
    table = (tmp_path / "table.md").read_text()
    assert "| sequencematch |" in table and "±" not in table  # one seed: no spread to report
    # a rerun finds every run in the cache: nothing is trained again, and the numbers are the same
    capsys.readouterr()
    again = compare.main(cfg)
    assert "[compare] training" not in capsys.readouterr().out
    assert json.dumps(again["runs"]) == json.dumps(results["runs"])  # (NaN-safe comparison)
    # changing a hyperparameter that a run depends on never reuses the cached runs
    changed = compare.main(compare.Config(**{**cfg.__dict__, "agents": ("mle",), "learning_rate": 1e-2}))
    assert "[compare] training mle" in capsys.readouterr().out
    assert changed["runs"][0]["validity"] is not None


def test_worker_processes_give_the_records_of_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compare.Config(
        agents=("mle", "bc"),
        seeds=(3, 4),
        budget=128,
        n_demonstrations=16,
        n_eval=16,
        n_curve=2,
        n_curve_samples=8,
        n_layer=1,
        n_embd=16,
        batch_size=8,
        out=tmp_path / "two",
        progress=False,
        workers=2,
    )
    two = compare.main(cfg)
    assert "training 4 runs in 2 worker processes" in capsys.readouterr().out
    one = compare.main(dataclasses.replace(cfg, workers=1, out=tmp_path / "one"))
    assert "worker processes" not in capsys.readouterr().out

    def measured(runs: list[dict[str, object]]) -> str:  # everything but wall times
        return json.dumps([{k: v for k, v in r.items() if "seconds" not in k} for r in runs])

    assert len(two["runs"]) == 4
    assert measured(two["runs"]) == measured(one["runs"])


def test_compare_rejects_unknown_agents(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown agent 'ppo2'"):
        compare.main(compare.Config(agents=("ppo2",), out=tmp_path))


def test_arithmetic_study_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy_on_recovery(monkeypatch)
    cfg = arithmetic.Config(
        noise_levels=(0.0, 0.2),
        seeds=(0,),
        budget=128,
        n_demonstrations=32,
        n_eval=8,
        n_layer=1,
        n_embd=16,
        batch_size=8,
        out=tmp_path,
        progress=False,
        workers=1,
        **TINY_SM,
    )
    results = arithmetic.main(cfg)
    assert (tmp_path / "arithmetic.png").stat().st_size > 0
    sm_runs = [r for r in results["runs"] if r["agent"] == "sequencematch"]
    assert sm_runs and all(r["updates"] > TINY_SM["sm_bc_warmup_steps"] for r in sm_runs)
    labels = set(results["summary"])
    assert labels == {"mle", "bc p=0.0", "bc p=0.2", "sequencematch p=0.0", "sequencematch p=0.2"}


def test_text_study_runs_on_a_small_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "the cat sat on the mat while a dog ran in the park and birds sang over the old house".split()
    for k, name in enumerate(["a.txt", "b.txt", "held.txt"]):
        (corpus / name).write_text(" ".join(words[(i * 7 + k) % len(words)] for i in range(3000)) + "\n")
    cfg = text.Config(
        corpus=corpus,
        heldout="held.txt",
        vocab_size=300,
        prompt_length=4,
        completion_length=8,
        n_layer=1,
        n_embd=16,
        n_demonstrations=32,
        pretrain_budget=128,
        finetune_budget=400,
        batch_size=8,
        n_eval=24,
        out=tmp_path / "out",
        progress=False,
        checkpoint_every=2,
        sm_bc_warmup_steps=1,
    )
    results = text.main(cfg)
    assert {r["agent"] for r in results["runs"]} == {
        "pretrained",
        "mle",
        "bc",
        "sequencematch",
        "human (held-out)",
    }
    assert len(results["prompts"]) == 24
    for r in results["runs"][:-1]:
        assert 0.0 < r["mauve"] <= 1.0 and r["perplexity"] > 1.0
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    assert (run_dir / "agents" / "finetuned_sequencematch" / "agent.json").exists()
    assert (run_dir / "tokenizer.json").exists()
    # an interrupted fine-tuning run resumes from its newest checkpoint instead of starting again
    import shutil

    shutil.rmtree(run_dir / "agents" / "finetuned_bc")
    capsys.readouterr()
    again = text.main(cfg)
    out = capsys.readouterr().out
    assert "[text] resuming finetuned_bc from" in out and "[text] loading pretrained_mle" in out
    assert [r["agent"] for r in again["runs"]] == [r["agent"] for r in results["runs"]]
    # a loaded agent still reports how long its training took
    assert again["train_seconds"]["pretrain"] == results["train_seconds"]["pretrain"] > 0
    # a setting that changes training never reuses those agents; one that only changes evaluation does
    capsys.readouterr()
    text.main(dataclasses.replace(cfg, learning_rate=3e-3, agents=("mle",)))
    assert "[text] training pretrained_mle" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 2
    text.main(dataclasses.replace(cfg, n_eval=12, agents=("mle",)))
    assert "[text] training" not in capsys.readouterr().out


def test_write_json_atomic_replaces_whole_files_with_plain_permissions(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    with pytest.raises(TypeError, match="Cannot write object"):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 2}  # a failed write leaves the old file, and no temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    reference = tmp_path / "plain"
    reference.write_text("")
    assert path.stat().st_mode == reference.stat().st_mode


def test_finetune_runs_every_arm_from_one_mle_model_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments import finetune

    cfg = finetune.Config(
        seeds=(0,),
        pretrain=96,
        finetune=64,
        n_demonstrations=16,
        n_eval=8,
        n_layer=1,
        n_embd=16,
        batch_size=4,
        workers=1,
        out=tmp_path,
        **TINY_SM,
    )
    summary = finetune.main(cfg)
    assert set(summary) == set(finetune.ARMS)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["arm"] for r in saved["runs"]] == list(finetune.ARMS)
    for rec in saved["runs"]:
        assert 0.0 <= rec["validity"] <= 1.0 and rec["seed"] == 0
        if rec["arm"] == "mle (continued)":
            assert rec["backspace_first"] == 0.0  # MLE never backspaces
    out = capsys.readouterr().out
    assert "| sequencematch from mle |" in (tmp_path / "table.md").read_text()
    # one bar follows every arm of the seed, 96 + 3 * 64 fine-tuning + 2 * 160 from scratch steps, each arm's
    # steps counted after those of the arms before it (without the offsets it would stop at 160)
    lines = [line.split(": ", 1)[1].rsplit(",", 1)[0] for line in out.splitlines() if "steps (" in line]
    assert lines == [
        "188 / 608 steps (30%)",
        "324 / 608 steps (53%)",
        "467 / 608 steps (76%)",
        "608 / 608 steps (100%)",
    ]
    again = finetune.main(cfg)  # every seed comes from the cache
    assert again == summary
    assert "[finetune] cached seed 0" in capsys.readouterr().out


def test_sweep_trains_each_setting_with_its_own_sequencematch_hyperparameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents import make_agent
    from experiments import sweep

    built: list[tuple[str, dict[str, object]]] = []

    def spy(name: str, **kwargs: object) -> object:
        built.append((name, kwargs))
        return make_agent(name, **kwargs)

    monkeypatch.setattr("agents.make_agent", spy)
    chosen, iq = "α=0.01 (c/α=50): chosen", "terminal=iq (α=0.1)"
    cfg = sweep.Config(
        settings=("bc", chosen, iq),
        seeds=(0,),
        budget=64,
        n_demonstrations=8,
        n_eval=8,
        n_recovery=6,
        architecture="llama",
        n_layer=1,
        n_embd=16,
        batch_size=4,
        workers=1,
        progress=False,
        out=tmp_path,
    )
    sweep.main(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["setting"] for r in saved["runs"]] == ["bc", chosen, iq]
    assert all(0.0 <= r["validity"] <= 1.0 for r in saved["runs"])
    for r in saved["runs"]:
        assert 0.0 <= r["backspace_first"] <= 1.0 and 0.0 <= r["false_deletions"] <= 1.0
        assert r["deliberate_mistakes"] >= 0.0
    kinds = {name for name, _ in built}
    assert kinds == {"bc", "sequencematch"}
    sm = [kw for name, kw in built if name == "sequencematch"]
    assert [(kw["alpha"], kw["terminal"]) for kw in sm] == [(0.01, "absorbing"), (0.1, "iq")]
    assert all(
        kw["batch_size"] == 4
        and kw["policy_kwargs"] == {"architecture": "llama", "n_layer": 1, "n_embd": 16, "n_head": 2}
        for _, kw in built
    )
    assert "backspace_first" in (tmp_path / "table.md").read_text()
