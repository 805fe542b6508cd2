"""The MLE-vs-BC measurement: BC with <backspace> masked computes MLE's loss on BC's code path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import make_agent
from agents.mle import MLEBatch
from experiments import arithmetic_gap
from seqgym.data import collect
from seqgym.registration import make_env

SMALL = {"policy_kwargs": {"n_layer": 1, "n_embd": 16, "n_head": 2}, "batch_size": 8}


def test_masked_bc_has_mle_loss_and_bc_only_adds_the_backspace_logit() -> None:
    env = make_env("arithmetic", base=5, n_digits=1)
    demos = collect(env.source, 16, np.random.default_rng(0))
    mle = make_agent("mle", env=env, demonstrations=demos, seed=3, **SMALL)
    masked = arithmetic_gap.MaskedBC(env=env, demonstrations=demos, seed=3, p_noise=0.0, **SMALL)
    bc = make_agent("bc", env=env, demonstrations=demos, seed=3, p_noise=0.0, **SMALL)
    for a, b in zip(mle.policy.model.parameters(), masked.policy.model.parameters()):
        assert torch.equal(a, b)  # same seed, same initial model
    idx = np.arange(8)
    batch = MLEBatch(
        indices=idx, width=int(mle._row_lengths[idx].max()), n_tokens=int(mle._completion_lengths[idx].sum())
    )
    trajectories = [masked.train_trajectories[i] for i in idx]
    assert all(t.n_backspaces == 0 for t in trajectories)  # p_noise=0: the clean demonstrations
    loss_mle = mle._loss(batch)[0].detach()
    loss_masked = masked._loss(trajectories)[0].detach()
    loss_bc = bc._loss(trajectories)[0].detach()
    assert float(loss_masked) == pytest.approx(float(loss_mle), rel=1e-5)
    assert float(loss_bc) > float(loss_masked)  # the softmax over one more action only lowers log π


def test_gap_study_writes_paired_differences(tmp_path: Path) -> None:
    cfg = arithmetic_gap.Config(
        seeds=(5, 6),
        base=3,
        n_digits=1,
        budget=64,
        n_demonstrations=16,
        batch_size=8,
        n_layer=1,
        n_embd=16,
        n_eval=8,
        out=tmp_path,
        workers=1,
    )
    results = arithmetic_gap.main(cfg)
    assert {r["variant"] for r in results["runs"]} == set(arithmetic_gap.VARIANTS)
    assert set(results["differences"]) == {"bc - mle", "bc_masked - mle", "bc - bc_masked"}
    saved = json.loads((tmp_path / "results.json").read_text())
    acc = {(r["variant"], r["seed"]): r["accuracy"] for r in saved["runs"]}
    d = saved["differences"]["bc - mle"]
    assert d["mean"] == pytest.approx(np.mean([acc["bc", s] - acc["mle", s] for s in cfg.seeds]))
    assert "paired difference" in (tmp_path / "table.md").read_text()
