"""Property-based tests: random valid inputs agree with the scalar reference of ``seqgym.dynamics``, random
invalid ones raise ``ValueError`` / ``TypeError`` with a message (never another exception, never silence).

Driven: ``SequenceEnv``, ``SequenceVectorEnv``, ``augment``, the masked forward
(``LMPolicy.trajectory_logits`` against the per-state ``state_logits``) and ``LMPolicy.generate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from seqgym.data import Trajectory, augment
from seqgym.dynamics import action_mask, replay, states
from seqgym.env import ResetNeeded, SequenceEnv
from seqgym.sources.dyck import Dyck
from seqgym.vector import SequenceVectorEnv
from seqgym.vocab import Vocabulary

SOURCE = Dyck(2, max_depth=3, max_length=8)
V = SOURCE.vocab
ORDINARY = [t for t in range(V.n_actions) if t not in (V.eos_id, V.backspace_id)]
MAX_LENGTH, MAX_STEPS = 9, 16
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

prompts = st.lists(st.sampled_from(ORDINARY), max_size=4)
# histories: ordinary tokens and backspaces, optionally ended by eos
bodies = st.lists(st.sampled_from([*ORDINARY, V.backspace_id, V.backspace_id]), max_size=12)
histories = st.tuples(bodies, st.booleans()).map(lambda x: x[0] + ([V.eos_id] if x[1] else []))
invalid_actions = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=V.n_actions),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=2),
    st.none(),
    st.lists(st.integers(0, 2), min_size=1, max_size=2),
)


def check_message(err: BaseException) -> None:
    assert isinstance(err, (ValueError, TypeError)), type(err)
    assert len(str(err)) > 10, f"no message: {err!r}"


def reference(prompt: list[int], actions: list[int]) -> list[tuple[list[int], bool, bool]]:
    """``(state, terminated, truncated)`` after each action, from the scalar reference."""
    out = []
    for i, s in enumerate(states(prompt, actions, V)[1:]):
        terminated = actions[i] == V.eos_id
        truncated = not terminated and (len(s) >= MAX_LENGTH or i + 1 >= MAX_STEPS)
        out.append((s, terminated, truncated))
        if terminated or truncated:
            break
    return out


# ------------------------------------------------------------------------------------------------------
@FUZZ
@given(prompt=prompts, actions=histories)
def test_env_follows_the_reference(prompt: list[int], actions: list[int]) -> None:
    env = SequenceEnv(SOURCE, max_length=MAX_LENGTH, max_steps=MAX_STEPS, reward="none")
    env.reset(seed=0, options={"prompt": prompt})
    for (state, term, trunc), a in zip(reference(prompt, actions), actions):
        expected_mask = action_mask(len(env.state), len(prompt), V)
        assert np.array_equal(env.action_masks(), expected_mask)
        obs, _, terminated, truncated, _ = env.step(a)
        assert list(env.state) == state and (terminated, truncated) == (term, trunc)
        assert obs[: len(state)].tolist() == state and (obs[len(state) :] == V.pad_id).all()
    assert list(env.state) == replay(prompt, env.history, V)


@FUZZ
@given(bad=invalid_actions)
def test_env_refuses_invalid_actions_with_a_message(bad: Any) -> None:
    env = SequenceEnv(SOURCE, max_length=MAX_LENGTH, max_steps=MAX_STEPS, reward="none")
    env.reset(seed=0)
    before = env.state
    with pytest.raises((ValueError, TypeError)) as err:
        env.step(bad)
    check_message(err.value)
    assert env.state == before and env.history == []


@FUZZ
@given(bad_prompt=st.lists(st.integers(-3, V.n_actions + 2), min_size=1, max_size=12))
def test_env_refuses_invalid_prompts_with_a_message(bad_prompt: list[int]) -> None:
    assume(any(t not in ORDINARY for t in bad_prompt) or len(bad_prompt) >= MAX_LENGTH)
    env = SequenceEnv(SOURCE, max_length=MAX_LENGTH, max_steps=MAX_STEPS, reward="none")
    with pytest.raises((ValueError, TypeError)) as err:
        env.reset(options={"prompt": bad_prompt})
    check_message(err.value)


# ------------------------------------------------------------------------------------------------------
@FUZZ
@given(rows=st.lists(st.tuples(prompts, histories), min_size=1, max_size=4))
def test_vector_env_follows_the_reference(rows: list[tuple[list[int], list[int]]]) -> None:
    n = len(rows)
    env = SequenceVectorEnv(
        SOURCE, n, max_length=MAX_LENGTH, max_steps=MAX_STEPS, reward="none", autoreset_mode="Disabled"
    )
    env.reset(seed=0, options={"prompts": [p for p, _ in rows]})
    refs = [reference(p, a) for p, a in rows]
    done = np.zeros(n, dtype=bool)
    for t in range(max(len(r) for r in refs)):
        if done.all() or any(t >= len(r) and not done[i] for i, r in enumerate(refs)):
            break  # a row whose history ended without ending its episode: stop stepping the batch
        if done.any():
            break  # Disabled mode: a finished sub-env cannot be stepped; the rest is covered by the env test
        actions = np.array([a[t] for _, a in rows], dtype=np.int64)
        obs, _, term, trunc, info = env.step(actions)
        for i in range(n):
            state, rt, rtr = refs[i][t]
            assert obs[i, : len(state)].tolist() == state and (obs[i, len(state) :] == V.pad_id).all()
            assert (bool(term[i]), bool(trunc[i])) == (rt, rtr)
            assert int(info["length"][i]) == len(state)
        done = term | trunc


@FUZZ
@given(
    bad=st.one_of(
        st.lists(st.integers(-2, V.n_actions + 2), min_size=2, max_size=2),
        st.lists(st.floats(0, 3), min_size=3, max_size=3),
        st.lists(st.integers(0, 3), min_size=1, max_size=1),
    )
)
def test_vector_env_refuses_invalid_actions_with_a_message(bad: list[Any]) -> None:
    a = np.asarray(bad)
    assume(not (a.shape == (3,) and a.dtype.kind in "iu" and ((a >= 0) & (a < V.n_actions)).all()))
    env = SequenceVectorEnv(SOURCE, 3, max_length=MAX_LENGTH, max_steps=MAX_STEPS, reward="none")
    obs, _ = env.reset(seed=0)
    with pytest.raises((ValueError, TypeError)) as err:
        env.step(a)
    check_message(err.value)
    assert np.array_equal(env.reset(seed=0)[0], obs)


def test_vector_env_before_reset_raises_reset_needed() -> None:
    env = SequenceVectorEnv(SOURCE, 2, max_length=MAX_LENGTH, max_steps=MAX_STEPS)
    with pytest.raises(ResetNeeded):
        env.step(np.zeros(2, dtype=np.int64))


# ------------------------------------------------------------------------------------------------------
@FUZZ
@given(
    prompt=prompts,
    body=st.lists(st.sampled_from(ORDINARY), max_size=6),
    p_noise=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_augment_replays_to_the_same_sequence(
    prompt: list[int], body: list[int], p_noise: float, seed: int
) -> None:
    clean = Trajectory.from_completion(prompt, [*body, V.eos_id], vocab=V)
    (noisy,) = augment([clean], p_noise, seed)
    assert replay(prompt, noisy.actions.tolist(), V) == replay(prompt, clean.actions.tolist(), V)
    acts, expert = noisy.actions.tolist(), noisy.expert.tolist()
    assert [a for a, e in zip(acts, expert) if e and a != V.backspace_id] == [*body, V.eos_id]
    for i, (a, e) in enumerate(zip(acts, expert)):
        if not e:  # an inserted mistake: an ordinary token, followed by the backspace that removes it
            assert a in ORDINARY and acts[i + 1] == V.backspace_id and expert[i + 1]


@FUZZ
@given(p_noise=st.one_of(st.floats(allow_nan=True).filter(lambda x: not 0 <= x <= 1), st.text(max_size=2)))
def test_augment_refuses_invalid_noise_with_a_message(p_noise: Any) -> None:
    clean = Trajectory.from_completion([], [0, 1, V.eos_id], vocab=V)
    with pytest.raises((ValueError, TypeError)) as err:
        augment([clean], p_noise, 0)
    check_message(err.value)


# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy() -> Any:
    from agents.policy import LMPolicy

    return LMPolicy.from_config(V, n_layer=2, n_embd=16, n_head=2, n_positions=64, seed=0)


@FUZZ
@given(rows=st.lists(st.tuples(prompts, histories), min_size=1, max_size=3))
def test_masked_forward_equals_the_per_state_forward(
    policy: Any, rows: list[tuple[list[int], list[int]]]
) -> None:
    ps, acts = [p for p, _ in rows], [a for _, a in rows]
    with torch.no_grad():
        out = policy.trajectory_logits(ps, acts)
        for b, (p, a) in enumerate(rows):
            visited = states(p, a, V)  # u_0 .. u_T from the reference
            ref = policy.state_logits(visited, [len(p)] * len(visited))  # (T+1, A)
            got = out.logits[b, : len(visited)]
            assert out.state_mask[b].sum() == len(visited)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@FUZZ
@given(
    prompt=st.lists(st.integers(-2, V.n_actions + 2), max_size=4),
    actions=st.lists(st.integers(-2, V.n_actions + 2), max_size=6),
)
def test_masked_forward_refuses_invalid_histories(policy: Any, prompt: list[int], actions: list[int]) -> None:
    try:
        states(prompt, actions, V)
        valid = all(0 <= t <= V.eos_id for t in prompt)
    except ValueError:
        valid = False
    assume(not valid)
    with pytest.raises((ValueError, TypeError)) as err:
        policy.trajectory_logits([prompt], [actions])
    check_message(err.value)


@FUZZ
@given(
    ps=st.lists(prompts, min_size=1, max_size=3),
    seed=st.integers(0, 2**31),
    max_steps=st.integers(1, 10),
    max_length=st.integers(5, 12),
)
def test_generate_follows_the_reference(
    policy: Any, ps: list[list[int]], seed: int, max_steps: int, max_length: int
) -> None:
    gen = policy.generate(
        ps, max_steps=max_steps, max_length=max_length, generator=torch.Generator().manual_seed(seed)
    )
    for p, seq, acts, term, trunc in zip(ps, gen.sequences, gen.actions, gen.terminated, gen.truncated):
        assert seq == replay(p, acts, V)
        assert 1 <= len(acts) <= max_steps and len(seq) <= max_length
        assert term == (acts[-1] == V.eos_id) and term != trunc
        for i, s in enumerate(states(p, acts, V)[:-1]):
            assert acts[i] != V.backspace_id or len(s) > len(p)  # never a masked backspace


@FUZZ
@given(
    ps=st.one_of(
        st.just([]),
        st.lists(st.lists(st.integers(-2, V.n_actions + 2), min_size=1, max_size=3), min_size=1, max_size=2),
    ),
    max_steps=st.one_of(st.integers(-2, 0), st.floats(), st.just(3)),
)
def test_generate_refuses_invalid_inputs(policy: Any, ps: list[list[int]], max_steps: Any) -> None:
    valid_prompts = bool(ps) and all(all(t in ORDINARY for t in p) for p in ps)
    assume(not (valid_prompts and max_steps == 3))
    with pytest.raises((ValueError, TypeError)) as err:
        policy.generate(ps, max_steps=max_steps, max_length=8)
    check_message(err.value)


def test_other_vocabularies_are_refused() -> None:
    other = Vocabulary(["x"])
    with pytest.raises(ValueError) as err:
        Trajectory.from_completion([], [0, V.eos_id], vocab=other)
    check_message(err.value)
