"""Sampling (``sample_actions``, ``predict``, ``generate``): a bad temperature, NaN or +inf logits, or a row
with no allowed action is a ``ValueError`` naming the cause, never an ``IndexError`` or a masked action;
numpy scalars are accepted where a float is."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from agents import make_agent
from agents.policy import sample_actions
from seqgym.env import SequenceEnv
from seqgym.sources.dyck import Dyck

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}
INF = float("inf")
NAN = float("nan")


@pytest.fixture(scope="module")
def agent() -> Any:
    env = SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=9, max_steps=27)
    return make_agent("bc", env=env, seed=0, n_demonstrations=4, policy_kwargs=dict(TINY))


@pytest.mark.parametrize("temperature", [0.0, -1.0, INF, NAN, np.float64(NAN), np.float32(-0.5)])
def test_bad_temperature_is_a_value_error(temperature: Any, agent: Any) -> None:
    logits = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        sample_actions(logits, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        agent.generate(2, seed=0, temperature=temperature)


@pytest.mark.parametrize("temperature", ["1.0", None, True])
def test_temperature_of_another_type_is_a_type_error(temperature: Any) -> None:
    with pytest.raises(TypeError, match="temperature must be a number"):
        sample_actions(torch.zeros(1, 3), temperature=temperature)


def test_numpy_scalars_are_accepted(agent: Any) -> None:
    logits = torch.tensor([[0.0, 1.0, -INF], [2.0, -INF, 0.0]])
    g = torch.Generator().manual_seed(0)
    a = sample_actions(
        logits, temperature=np.float32(0.7), top_k=np.int64(2), top_p=np.float32(0.9), generator=g
    )
    g = torch.Generator().manual_seed(0)
    b = sample_actions(logits, temperature=0.7, top_k=2, top_p=float(np.float32(0.9)), generator=g)
    assert torch.equal(a, b)
    gen = agent.generate(3, seed=0, temperature=np.float32(1.0), top_k=np.int64(3))
    assert gen.sequences == agent.generate(3, seed=0, temperature=1.0, top_k=3).sequences


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ([NAN, 0.0, 0.0], "Row 1 .* NaN"),
        ([INF, 0.0, 0.0], r"Row 1 .* \+inf"),
        ([-INF, -INF, -INF], "Row 1 .* no allowed action"),
        ([NAN, -INF, -INF], "Row 1 .* NaN"),
    ],
)
@pytest.mark.parametrize("deterministic", [False, True])
def test_unsampleable_rows_are_value_errors(row: list[float], pattern: str, deterministic: bool) -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0], row])
    with pytest.raises(ValueError, match=pattern):
        sample_actions(logits, deterministic=deterministic)


def test_tiny_temperature_never_picks_a_masked_action() -> None:
    logits = torch.tensor([[1000.0, -INF, 999.0], [-INF, -5.0, -INF]])
    for seed in range(20):
        a = sample_actions(logits, temperature=1e-300, generator=torch.Generator().manual_seed(seed))
        assert a.tolist() == [0, 1]


def test_predict_with_nan_logits_names_the_cause(agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    obs = np.full((2, agent.max_length), agent.vocab.pad_id, dtype=np.int64)
    out = torch.zeros(2, agent.vocab.n_actions)
    out[1, :] = NAN
    monkeypatch.setattr(agent.policy, "state_logits", lambda *a, **k: out.clone())
    with pytest.raises(ValueError, match=r"Row 1 .* NaN"):
        agent.predict(obs)
    out[1, :] = 0.0
    out[1, 0] = NAN  # NaN only on an action the mask forbids: not sampled, no error
    mask = np.ones((2, agent.vocab.n_actions), dtype=bool)
    mask[1, 0] = False
    actions, _ = agent.predict(obs, action_masks=mask)
    assert actions[1] != 0
    assert math.isfinite(float(actions.sum()))


def test_generate_with_a_blown_up_model_names_the_cause(agent: Any) -> None:
    import copy

    broken = copy.deepcopy(agent)
    with torch.no_grad():
        broken.policy.model.lm_head.weight.fill_(NAN)
    with pytest.raises(ValueError, match="NaN"):
        broken.generate(2, seed=0)
