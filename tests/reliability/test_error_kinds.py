"""Errors of one kind: a non-finite loss is always ``NonFiniteLossError``; a failing reward leaves the env as
it was; summaries keep NaN visible with the number of seeds; a wrong tokenizer file names what is missing.

The experiment run cache (a corrupt cache file names itself and how to recover; a stale config hash is
recomputed, never reused) is tested in ``tests/experiments/test_run_cache.py``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from experiments.common import format_table, summarize
from seqgym.sources.tokenizers import CharTokenizer, tokenizer_from_json


# ------------------------------------------------------------------------------------------------------
def test_summarize_keeps_nan_visible_and_counts_seeds() -> None:
    nan = float("nan")
    records = [
        {"agent": "bc", "v": 0.5, "w": nan},
        {"agent": "bc", "v": 0.7, "w": nan},
        {"agent": "bc", "v": nan, "w": nan},
        {"agent": "mle", "v": 0.2, "w": 1.0},
    ]
    s = summarize(records, ["v", "w"])
    mean, std, n, n_nan = s["bc"]["v"]
    assert math.isclose(mean, 0.6) and n == 2 and n_nan == 1 and math.isclose(std, 0.1414213, rel_tol=1e-5)
    assert math.isnan(s["bc"]["w"][0]) and s["bc"]["w"][2:] == [0.0, 3.0]  # all NaN: kept, not dropped
    assert s["mle"]["v"] == [0.2, 0.0, 1.0, 0.0]
    table = format_table(s, ["v", "w"])
    assert "| bc | 0.600 ± 0.141 (n=2, 1 NaN) | NaN (n=0, 3 NaN) | 3 |" in table
    assert "| mle | 0.200 | 1.000 | 1 |" in table


# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"chars": ["a"]}', r"lacks 'type'.*\['chars'\]"),
        ('{"type": "char"}', "lacks 'chars'"),
        ('{"type": "char", "chars": "ab"}', "'chars' of type str"),
        ('{"type": "char", "chars": ["a"], "unk_token": 3}', "unk_token"),
        ('{"type": "bpe"}', "lacks 'tokenizer'"),
        ('{"type": "bpe", "tokenizer": {"model": 1}}', "not a valid tokenizers JSON"),
        ('{"type": "wordpiece"}', "Unknown tokenizer description"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_tokenizer_from_json_names_what_is_wrong(text: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        tokenizer_from_json(text)


def test_tokenizer_from_json_round_trip_and_type() -> None:
    tok = CharTokenizer(list("ab"), unk_token="<unk>")
    back = tokenizer_from_json(tok.to_json())
    assert json.loads(back.to_json()) == json.loads(tok.to_json())
    with pytest.raises(TypeError, match="JSON text"):
        tokenizer_from_json({"type": "char"})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------
def _sequencematch(**kw: object) -> Any:
    from agents import make_agent
    from seqgym.env import SequenceEnv
    from seqgym.sources.dyck import Dyck

    env = SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=9, max_steps=27)
    kw.setdefault("bc_warmup_steps", 2)
    return make_agent(
        "sequencematch",
        env=env,
        seed=0,
        n_demonstrations=8,
        batch_size=4,
        replay_refresh_interval=1,
        policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2},
        **kw,
    )


@pytest.mark.parametrize("divergence", ["chi2", "kl"])
def test_sequencematch_blow_up_is_a_nonfinite_loss(divergence: str) -> None:
    from agents import NonFiniteLossError

    agent = _sequencematch(divergence=divergence)
    with torch.no_grad():
        agent.policy.model.lm_head.weight.fill_(float("nan"))  # a blown-up model: NaN logits
    with pytest.raises(NonFiniteLossError, match="update 1"):
        agent.learn(10_000)
    assert agent.n_updates == 0


# ------------------------------------------------------------------------------------------------------
def test_a_reward_that_raises_leaves_the_env_as_it_was() -> None:
    import numpy as np

    from seqgym.env import SequenceEnv
    from seqgym.sources.dyck import Dyck

    calls = {"n": 0}

    def reward(state: Any, action: int, next_state: Any, terminated: bool) -> float:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("reward service down")
        return 0.0

    env = SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=9, max_steps=27, reward=reward)
    twin = SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=9, max_steps=27, reward="none")
    for e in (env, twin):
        e.reset(seed=0)
        e.step(0)
        e.step(0)
    for action in (env.vocab.backspace_id, 1):  # a deletion and an append, each failing once
        before = (list(env.state), list(env.history), env._obs.copy(), env._steps)
        calls["n"] = 2
        with pytest.raises(RuntimeError, match="reward service down"):
            env.step(action)
        assert (list(env.state), list(env.history), env._steps) == (*before[:2], before[3])
        assert np.array_equal(env._obs, before[2])
        calls["n"] = 10
        a = env.step(action)
        b = twin.step(action)
        assert np.array_equal(a[0], b[0]) and a[2:4] == b[2:4]
