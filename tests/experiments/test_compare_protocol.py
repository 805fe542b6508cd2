"""The comparison's protocol: library defaults, fresh paired seeds, enough samples, bootstrap intervals of the
paired differences, recovery beside validity, and the temperature and length curves."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from recovery_spy import CALLS, spy_on_recovery

from experiments import compare
from experiments.common import SEQUENCEMATCH_FIELDS, AgentSettings
from experiments.stats import mean_interval, paired_differences
from seqgym.sources import Dyck, Mirror


def test_defaults_are_the_honest_protocol() -> None:
    cfg = compare.Config()
    assert len(cfg.seeds) >= 5
    assert all(10 <= s < 1000 for s in cfg.seeds)  # neither the old tables' 0-2 nor the sweep's 1000+
    assert cfg.n_eval >= 2000 and cfg.recovery
    assert cfg.sb3_reward == "valid" and "maskable_ppo" in cfg.agents
    assert set(compare.TASKS) == {"dyck", "markov", "arithmetic", "mirror"}
    cfg.check()


def test_sequencematch_runs_the_library_defaults_unless_overridden() -> None:
    kw = AgentSettings().agent_kwargs("sequencematch", p_noise=0.1)
    assert not set(kw) & set(SEQUENCEMATCH_FIELDS)  # nothing passed: the library's defaults apply
    over = AgentSettings(sm_chi2_coef=5.0, sm_alpha=0.5, sm_terminal="iq", sm_replay_refresh_interval=8)
    kw = over.agent_kwargs("sequencematch", p_noise=0.1)
    assert kw["chi2_coef"] == 5.0 and kw["alpha"] == 0.5 and kw["terminal"] == "iq"
    assert kw["replay_refresh_interval"] == 8
    assert "chi2_coef" not in over.agent_kwargs("bc", p_noise=0.1)


def test_paired_differences_match_scipy_and_handle_edge_cases() -> None:
    a = np.array([0.9, 0.7, 0.8, 0.95, 0.6])
    b = np.array([0.8, 0.72, 0.6, 0.9, 0.5])
    d = paired_differences(a, b)
    ref = scipy.stats.bootstrap(
        (a - b,), np.mean, method="BCa", n_resamples=10_000, rng=np.random.default_rng(0)
    ).confidence_interval
    assert d["mean"] == pytest.approx(float((a - b).mean()))
    assert (d["low"], d["high"]) == pytest.approx((ref.low, ref.high))
    assert d["low"] < d["mean"] < d["high"] and d["n"] == 5
    one = paired_differences([0.5], [0.4])
    assert one["mean"] == pytest.approx(0.1) and np.isnan(one["low"])
    same = paired_differences([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert same["low"] == pytest.approx(0.1) == same["high"]
    near = paired_differences(
        [100.0, 100.0005, 100.0009], [0.0, 0.0, 0.0]
    )  # close, not equal: a real interval
    assert near["low"] < near["high"]
    assert paired_differences([0.5, np.nan, 0.7, 0.2], [0.4, 0.3, np.nan, 0.1])["n"] == 2
    with pytest.raises(ValueError, match="paired"):
        paired_differences([1.0, 2.0], [1.0])
    m, lo, hi = mean_interval([0.2, 0.4, 0.3, 0.5])
    assert m == pytest.approx(0.35) and lo < m < hi


def test_long_prefixes_are_correct_and_longer_than_training() -> None:
    mirror = Mirror(3, max_half=4)
    prompts, judge, room = compare.long_prefixes("mirror", mirror, (2, 10), 10, 20, seed=1)
    assert room == 22 and all(len(p) == 11 and p[-1] == mirror.separator_id for p in prompts)
    w = prompts[0][:-1]
    assert judge.is_valid([*prompts[0], *w[::-1], judge.vocab.eos_id])
    assert not mirror.is_valid([*prompts[0], *w[::-1], mirror.vocab.eos_id])  # beyond the training language
    again, _, _ = compare.long_prefixes("mirror", mirror, (2, 10), 10, 20, seed=1)
    assert again == prompts  # same seed, same prefixes: every agent of a seed completes the same ones
    dyck = Dyck(2, max_depth=3, max_length=8)
    prompts, judge, room = compare.long_prefixes("dyck", dyck, (4, 20), 20, 30, seed=2)
    assert judge.max_length >= 26 and room == judge.max_sequence_length
    for p in prompts:
        assert len(p) == 20 and np.isfinite(judge.next_token_logprobs(p)).any()  # a valid unfinished prefix
    with pytest.raises(ValueError, match="No length curve"):
        compare.long_prefixes("markov", dyck, (4,), 4, 2, seed=0)


def tiny(out: Path, **overrides: object) -> compare.Config:
    settings: dict[str, object] = {
        "task": "mirror",
        "source_kwargs": {"n_symbols": 2, "max_half": 3},
        "agents": ("mle", "bc", "sequencematch"),
        "seeds": (10, 11),
        "budget": 96,
        "n_demonstrations": 16,
        "n_eval": 12,
        "n_curve": 1,
        "n_curve_samples": 4,
        "n_gallery": 0,
        "n_layer": 1,
        "n_embd": 16,
        "batch_size": 4,
        "sm_bc_warmup_steps": 1,
        "temperatures": (0.5, 1.5),
        "lengths": (2, 5),
        "out": out,
        "progress": False,
        "workers": 1,  # the spies count calls in this process
    }
    settings.update(overrides)
    return compare.Config(**settings)  # type: ignore[arg-type]


def test_compare_reports_paired_differences_recovery_and_curves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spy_on_recovery(monkeypatch)
    cfg = tiny(tmp_path)
    results = compare.main(cfg)
    printed = capsys.readouterr().out
    assert "backspace_first" in printed and "recovery" in printed and "Paired differences" in printed
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "compare.png").stat().st_size > 0
    for rec in saved["runs"]:
        for key in compare.RECOVERY_METRICS:
            assert 0.0 <= rec[key] or np.isnan(rec[key])
        assert [t for t, _ in rec["temperature_curve"]] == [0.5, 1.5]
        assert [n for n, _ in rec["length_curve"]] == [2, 5]
        assert all(0.0 <= v <= 1.0 for _, v in rec["temperature_curve"] + rec["length_curve"])
    diffs = results["differences"]
    assert set(diffs) == {"sequencematch − bc", "sequencematch − mle", "bc − mle"}
    by = {(r["agent"], r["seed"]): r for r in saved["runs"]}
    for metric in ("validity", "recovery", "false_deletions"):
        d = diffs["sequencematch − bc"][metric]
        per_seed = [by["sequencematch", s][metric] - by["bc", s][metric] for s in cfg.seeds]
        assert d["mean"] == pytest.approx(float(np.mean(per_seed))) and d["n"] == 2
        assert d["low"] <= d["mean"] <= d["high"]
    table = (tmp_path / "table.md").read_text()
    assert "Validity vs temperature" in table and "Validity vs prefix length" in table
    assert "Validity vs prefix length, paired differences" in table
    for name in ("temperature_curve", "length_curve"):
        points = saved["curve_differences"][name]["sequencematch − bc"]
        assert [x for x, _ in points] == [x for x, _ in saved["runs"][0][name]]
        for x, d in points:
            per_seed = [dict(by["sequencematch", s][name])[x] - dict(by["bc", s][name])[x] for s in cfg.seeds]
            assert d["mean"] == pytest.approx(float(np.mean(per_seed))) and d["n"] == 2
    # every agent of a seed was judged on the same recovery states, with n_eval of them
    seeds_by_agent = {a: sorted(s for name, n, s in CALLS if name == a) for a in cfg.agents}
    assert len(set(map(tuple, seeds_by_agent.values()))) == 1 and len(seeds_by_agent["bc"]) == 2
    assert all(n == cfg.n_eval for _, n, _ in CALLS)


def test_sb3_budget_and_reward_are_stated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy_on_recovery(monkeypatch)
    cfg = tiny(
        tmp_path,
        agents=("maskable_ppo",),
        seeds=(10,),
        sb3_budget=128,
        sb3_n_envs=2,
        sb3_n_steps=32,
        sb3_batch_size=32,
        sb3_n_epochs=1,
        temperatures=(),
        lengths=(),
    )
    compare.main(cfg)
    table = (tmp_path / "table.md").read_text()
    assert "maskable_ppo on the `valid` reward for 128 env steps" in table


def test_noise_margin_reaches_bc_and_sequencematch_and_is_stated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import experiments.compare as module

    spy_on_recovery(monkeypatch)
    seen: list[tuple[str, int | None]] = []
    real = module.make_agent

    def spy(agent: str, **kw: object) -> object:
        seen.append((agent, kw.get("noise_margin")))  # type: ignore[arg-type]
        return real(agent, **kw)

    monkeypatch.setattr(module, "make_agent", spy)
    cfg = tiny(tmp_path, seeds=(10,), noise_margin=2, temperatures=(), lengths=())
    compare.main(cfg)
    assert sorted(seen) == [("bc", 2), ("mle", None), ("sequencematch", 2)]
    assert "no inserted mistakes in the last 2 positions" in (tmp_path / "table.md").read_text()


def test_unseen_prompts_are_distinct_problems_no_demonstration_holds() -> None:
    from seqgym.data import collect
    from seqgym.sources.arithmetic import Arithmetic
    from seqgym.sources.dyck import Dyck

    source = Arithmetic(base=3, n_digits=2)  # 81 + 45 = 126 distinct problems
    demos = collect(source, 60, np.random.default_rng(0))
    seen = {tuple(d.prompt.tolist()) for d in demos}
    prompts = compare.unseen_prompts(source, demos, 200, seed=1, min_problems=20)
    assert prompts is not None and len(prompts) == 200
    asked = [tuple(p) for p in prompts]
    assert not seen & set(asked)
    counts = np.unique(asked, axis=0, return_counts=True)[1]
    assert len(counts) >= 20 and counts.max() - counts.min() <= 1  # each unseen problem asked equally often
    assert compare.unseen_prompts(source, demos, 200, seed=1) == prompts  # seeded
    everything = collect(source, 5000, np.random.default_rng(0))  # every problem seen
    assert compare.unseen_prompts(source, everything, 50, seed=1) is None
    assert compare.unseen_prompts(Dyck(2), collect(Dyck(2), 8, np.random.default_rng(0)), 5, seed=1) is None


def test_a_chunked_run_warns_of_the_bc_warmup_only_when_the_whole_run_stayed_in_it(tmp_path: Path) -> None:
    from agents.sequencematch import WarmupOnlyWarning

    def warned(warmup: int, n_curve: int) -> list[str]:
        out = tmp_path / f"{warmup}_{n_curve}"
        cfg = tiny(out, agents=("sequencematch",), seeds=(10,), n_curve=n_curve, temperatures=(), lengths=())
        cfg = dataclasses.replace(cfg, sm_bc_warmup_steps=warmup)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compare.main(cfg)
        return [str(w.message) for w in caught if issubclass(w.category, WarmupOnlyWarning)]

    # the first of four chunks ends inside a warm-up of 2 updates, the run does not: no warning
    assert warned(2, 4) == []
    # a run that never leaves the warm-up warns once, at its end; with chunks smaller than an update the
    # run's last chunk is one planned to end short of the budget that overshoots it
    for n_curve in (4, 12):
        (message,) = warned(1_000, n_curve)
        assert "all within bc_warmup_steps=1000" in message
