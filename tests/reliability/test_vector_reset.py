"""A vector-env reset that fails half-way leaves every sub-env as it was; an autoreset that fails inside
``step`` marks its sub-envs as needing a reset, and the next ``step`` raises instead of running half-reset."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from seqgym.env import ResetNeeded
from seqgym.sources.dyck import Dyck
from seqgym.vector import SequenceVectorEnv


class FlakySource:
    """Dyck whose ``sample`` raises on the calls listed in ``fail_on`` (1-based)."""

    def __init__(self, fail_on: set[int]) -> None:
        self.inner = Dyck(2, max_depth=3, max_length=8)
        self.vocab = self.inner.vocab
        self.fail_on = fail_on
        self.calls = 0

    def sample(self, rng: np.random.Generator) -> Any:
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError("source unavailable")
        return self.inner.sample(rng)


def snapshot(env: SequenceVectorEnv) -> dict[str, Any]:
    return {
        "obs": env._obs.copy(),
        "length": env._length.copy(),
        "prompt": env._prompt_length.copy(),
        "steps": env._steps.copy(),
        "needs_reset": env._needs_reset.copy(),
        "rngs": [None if r is None else r.bit_generator.state for r in env._rngs],
    }


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all((np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k]) for k in a)


def test_bad_prompt_in_the_middle_leaves_every_sub_env_as_it_was() -> None:
    env = SequenceVectorEnv(Dyck(2, max_depth=3, max_length=8), 4, max_length=9, max_steps=20)
    twin = SequenceVectorEnv(Dyck(2, max_depth=3, max_length=8), 4, max_length=9, max_steps=20)
    for e in (env, twin):
        e.reset(seed=0, options={"prompts": [[0], [1], [0, 0], []]})
        e.step(np.array([0, 1, 2, 0]))
    before = snapshot(env)
    eos = env.vocab.eos_id
    with pytest.raises(ValueError):
        env.reset(seed=5, options={"prompts": [[0], [1], [0, eos], [0]]})  # row 2 is invalid
    assert same(before, snapshot(env))
    with pytest.raises(ValueError):
        env.reset(options={"prompts": [[0], [0] * 50, [0], [0]]})  # too long
    assert same(before, snapshot(env))
    a = np.array([1, 0, 0, 2])
    assert all(np.array_equal(x, y) for x, y in zip(env.step(a)[:4], twin.step(a)[:4]))


def test_source_failure_during_reset_changes_nothing() -> None:
    src = FlakySource({3})
    env = SequenceVectorEnv(src, 4, max_length=9, max_steps=20)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="source unavailable"):
        env.reset(seed=0)
    with pytest.raises(ResetNeeded):  # never started: still needs a reset, not half-started
        env.step(np.zeros(4, dtype=np.int64))
    obs, _ = env.reset(seed=0)
    ok = SequenceVectorEnv(Dyck(2, max_depth=3, max_length=8), 4, max_length=9, max_steps=20)
    assert np.array_equal(obs, ok.reset(seed=0)[0])


def test_failed_autoreset_marks_the_sub_env_as_needing_reset() -> None:
    src = FlakySource({5})  # 4 prompts at reset, then the first autoreset fails
    env = SequenceVectorEnv(src, 4, max_length=9, max_steps=1)  # type: ignore[arg-type]
    env.reset(seed=0)
    env.step(np.zeros(4, dtype=np.int64))  # every sub-env truncates (max_steps=1)
    with pytest.raises(RuntimeError, match="source unavailable"):
        env.step(np.zeros(4, dtype=np.int64))  # NEXT_STEP autoreset of row 0 fails
    with pytest.raises(ResetNeeded, match=r"\[0, 1, 2, 3\]"):
        env.step(np.zeros(4, dtype=np.int64))
    env.reset(seed=1)
    env.step(np.zeros(4, dtype=np.int64))


def test_failed_same_step_autoreset_marks_the_sub_env_as_needing_reset() -> None:
    src = FlakySource({5})
    env = SequenceVectorEnv(src, 4, max_length=9, max_steps=1, autoreset_mode="SameStep")  # type: ignore[arg-type]
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="source unavailable"):
        env.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(ResetNeeded):
        env.step(np.zeros(4, dtype=np.int64))
