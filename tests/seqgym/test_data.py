from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqgym import dynamics
from seqgym.data import (
    FORMAT_VERSION,
    DemonstrationFileError,
    Trajectory,
    Transitions,
    augment,
    collect,
    load_demonstrations,
    save_demonstrations,
    to_transitions,
    uniform_noise,
)
from seqgym.env import SequenceEnv
from seqgym.sources.arithmetic import Arithmetic
from seqgym.sources.dyck import Dyck
from seqgym.sources.markov import Markov
from seqgym.vocab import Vocabulary

V = Vocabulary(["a", "b", "c"])  # a=0 b=1 c=2 eos=3 bksp=4 pad=5
EOS, BK, PAD = V.eos_id, V.backspace_id, V.pad_id


class Tiny:
    """A source in a few lines: a prompt of 0-2 tokens, then 0-5 random tokens and eos."""

    name = "tiny"
    max_sequence_length = 8

    def __init__(self, vocab: Vocabulary = V) -> None:
        self.vocab = vocab

    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        n = self.vocab.n_tokens
        prompt = [int(t) for t in rng.integers(0, n, size=int(rng.integers(0, 3)))]
        completion = [int(t) for t in rng.integers(0, n, size=int(rng.integers(0, 6)))]
        return prompt, [*completion, self.vocab.eos_id]


def traj(
    prompt: list[int], actions: list[int], expert: list[bool] | None = None, vocab: Vocabulary = V
) -> Trajectory:
    return Trajectory(
        prompt=prompt,
        actions=actions,
        terminal=bool(actions) and actions[-1] == vocab.eos_id,
        expert=[True] * len(actions) if expert is None else expert,
        vocab=vocab,
    )


# ---------------------------------------------------------------------------------------------------------
# strategies
prompts = st.lists(st.integers(0, V.n_tokens - 1), max_size=3)


@st.composite
def clean_trajectories(draw, vocab=V):
    prompt = draw(st.lists(st.integers(0, vocab.n_tokens - 1), max_size=3))
    completion = draw(st.lists(st.integers(0, vocab.n_tokens - 1), max_size=8))
    if draw(st.booleans()):
        completion.append(vocab.eos_id)
    return Trajectory.from_completion(prompt, completion, vocab=vocab)


@st.composite
def valid_histories(draw):
    """A random valid demonstration: tokens and backspaces (never at the prompt boundary), maybe eos last."""
    prompt = draw(prompts)
    length = len(prompt)
    actions: list[int] = []
    for _ in range(draw(st.integers(0, 12))):
        if length > len(prompt) and draw(st.booleans()):
            actions.append(BK)
            length -= 1
        else:
            actions.append(draw(st.integers(0, V.n_tokens - 1)))
            length += 1
    if draw(st.booleans()):
        actions.append(EOS)
    expert = draw(st.lists(st.booleans(), min_size=len(actions), max_size=len(actions)))
    return traj(prompt, actions, expert)


# ---------------------------------------------------------------------------------------------------------
# Trajectory
def test_trajectory_converts_copies_and_freezes():
    prompt, actions = np.array([0, 1], dtype=np.int32), [2, BK, 1, EOS]
    t = Trajectory(prompt=prompt, actions=actions, terminal=True, expert=[True] * 4, vocab=V)
    assert t.prompt.dtype == np.int64 and t.actions.dtype == np.int64 and t.expert.dtype == np.bool_
    prompt[0] = 2  # the trajectory holds its own copy
    assert t.prompt.tolist() == [0, 1]
    for arr in (t.prompt, t.actions, t.expert):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.terminal = False  # type: ignore[misc]
    assert prompt.flags.writeable  # the caller's array is left writable
    assert len(t) == 4 and t.prompt_length == 2 and t.n_backspaces == 1 and t.n_mistakes == 0
    assert t.final() == [0, 1, 1, EOS]
    empty = Trajectory(prompt=[], actions=[], terminal=False, expert=[], vocab=V)
    assert len(empty) == 0 and empty.final() == [] and empty.prompt.dtype == np.int64
    assert "vocab" not in repr(t)
    replaced = dataclasses.replace(
        t, actions=np.array([2, EOS]), expert=np.array([False, True])
    )  # validated again
    assert replaced.final() == [0, 1, 2, EOS] and replaced.vocab is V and not replaced.actions.flags.writeable
    with pytest.raises(ValueError, match="terminal=True but"):
        dataclasses.replace(t, actions=np.array([2]), expert=np.array([True]))


def test_trajectory_equality_compares_arrays_not_vocab():
    a = traj([0], [1, EOS])
    assert a == traj([0], [1, EOS])
    assert a != traj([0], [1, EOS], expert=[False, True])
    assert a != traj([0], [2, EOS])
    assert a != traj([], [0, 1, EOS])
    assert a != traj([0], [1])
    assert a == traj([0], [1, EOS], vocab=Vocabulary(["x", "y", "z"]))  # vocab has compare=False
    assert a != "not a trajectory"
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompt": [0, EOS]}, ValueError, r"prompt\[1\] is the eos id 3"),
        ({"prompt": [BK]}, ValueError, "prompt.* is the backspace id"),
        ({"prompt": [PAD]}, ValueError, "prompt.* is the pad id"),
        ({"prompt": [-1]}, ValueError, r"prompt\[0\] is unknown id -1; a prompt holds only ordinary"),
        ({"actions": [0, PAD], "expert": [True, True]}, ValueError, r"actions\[1\] = 5 .*pad id"),
        ({"actions": [9], "expert": [True]}, ValueError, r"out of range: valid actions are 0\.\.4"),
        ({"actions": [-1], "expert": [True]}, ValueError, "out of range"),
        ({"actions": [0, EOS, 1], "expert": [True] * 3, "terminal": False}, ValueError, "follows eos"),
        ({"actions": [EOS, EOS], "expert": [True] * 2}, ValueError, "follows eos"),
        ({"actions": [0, 1], "expert": [True] * 2, "terminal": True}, ValueError, "terminal=True but"),
        ({"actions": [0, EOS], "expert": [True] * 2, "terminal": False}, ValueError, "terminal=False but"),
        ({"actions": [], "expert": [], "terminal": True}, ValueError, "terminal=True"),
        (
            {"actions": [BK], "expert": [True], "terminal": False},
            ValueError,
            r"actions\[0\].*prompt boundary",
        ),
        (
            {"actions": [1, BK, BK], "expert": [True] * 3, "terminal": False},
            ValueError,
            r"actions\[2\].*boundary",
        ),
        ({"actions": [0, 1], "expert": [True]}, ValueError, r"one flag per action, shape \(2,\)"),
        ({"actions": [0, 1], "expert": [1, 1]}, TypeError, "expert must hold booleans"),
        ({"actions": [0.0, 1.0]}, TypeError, "actions must hold integer ids"),
        ({"actions": [True, False]}, TypeError, "actions must hold integer ids"),
        ({"actions": ["a"]}, TypeError, "integer ids"),
        ({"prompt": [[0, 1]]}, ValueError, "prompt must be a 1-D sequence"),
        ({"terminal": 1}, TypeError, "terminal must be a bool"),
        ({"vocab": ["a", "b"]}, TypeError, "vocab must be a seqgym.vocab.Vocabulary"),
    ],
)
def test_trajectory_validation_errors(kwargs, error, match):
    base = {"prompt": [0], "actions": [1, EOS], "terminal": True, "expert": [True, True], "vocab": V}
    if "actions" in kwargs and "expert" not in kwargs:
        base["expert"] = [True] * len(kwargs["actions"])
    if "actions" in kwargs and "terminal" not in kwargs:
        base["terminal"] = False
    with pytest.raises(error, match=match):
        Trajectory(**{**base, **kwargs})


def test_backspace_that_deletes_back_to_the_prompt_is_allowed():
    t = traj([0], [1, 2, BK, BK, 2, EOS])
    assert t.final() == [0, 2, EOS]
    assert t.visible_lengths().tolist() == [1, 2, 3, 2, 1, 2, 3]


@settings(deadline=None)
@given(valid_histories())
def test_trajectory_helpers_agree_with_dynamics(t):
    p, a = t.prompt.tolist(), t.actions.tolist()
    assert t.states() == dynamics.states(p, a, V)
    assert t.final() == dynamics.replay(p, a, V)
    assert t.visible_lengths().tolist() == [len(s) for s in dynamics.states(p, a, V)]
    assert t.n_backspaces == a.count(BK)
    clean = t.clean()
    assert BK not in clean.actions.tolist()
    assert clean.final() == t.final() and clean.terminal == t.terminal
    assert clean.clean() == clean


def test_from_completion_rejects_backspace():
    with pytest.raises(ValueError, match="completion holds the backspace id"):
        Trajectory.from_completion([], [0, BK, 1, EOS], vocab=V)
    t = Trajectory.from_completion([2], [0, EOS], vocab=V)
    assert t.terminal and t.expert.all() and t.final() == [2, 0, EOS]


# ---------------------------------------------------------------------------------------------------------
# collect
def test_collect_is_seeded_and_clean():
    a = collect(Tiny(), 20, 7)
    b = collect(Tiny(), 20, np.random.default_rng(7))
    assert a == b and len(a) == 20
    rng = np.random.default_rng(7)
    for t in a:
        prompt, completion = Tiny().sample(rng)
        assert t.prompt.tolist() == prompt and t.actions.tolist() == completion
        assert t.terminal and t.expert.all() and t.n_backspaces == 0
    assert collect(Tiny(), 0, 0) == []
    assert collect(Tiny(), 5, 1) != collect(Tiny(), 5, 2)


def test_collect_errors():
    with pytest.raises(ValueError, match="non-negative int"):
        collect(Tiny(), -1, 0)
    with pytest.raises(ValueError, match="non-negative int"):
        collect(Tiny(), 2.5, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator or an int seed"):
        collect(Tiny(), 1, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must follow seqgym\.sources\.Source"):
        collect(object(), 1, 0)

    class Bad(Tiny):
        def __init__(self, sample):
            super().__init__()
            self._sample = sample

        def sample(self, rng):
            return self._sample

    with pytest.raises(ValueError, match=r"source 'tiny' .*number 0.*does not end with eos"):
        collect(Bad(([], [0, 1])), 1, 0)
    with pytest.raises(ValueError, match="completion holds the backspace id"):
        collect(Bad(([], [0, BK, EOS])), 1, 0)
    with pytest.raises(ValueError, match=r"prompt.*eos id"):
        collect(Bad(([EOS], [0, EOS])), 1, 0)
    with pytest.raises(ValueError, match="invalid sample"):
        collect(Bad([0, 1, 2]), 1, 0)


SOURCES: dict[str, Callable[[], Any]] = {
    "dyck": lambda: Dyck(2, max_length=10),
    "markov": lambda: Markov(6, max_length=10, seed=0),
    "arithmetic": lambda: Arithmetic(base=10, n_digits=2),
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_collect_from_the_builtin_sources_gives_valid_sequences(name):
    source = SOURCES[name]()
    demos = collect(source, 50, 0)
    assert all(source.is_valid(t.final()) and t.terminal and t.expert.all() for t in demos)
    assert max(len(t.final()) for t in demos) <= source.max_sequence_length
    assert all(t.prompt_length == source.prompt_length(t.final()) for t in demos)


# ---------------------------------------------------------------------------------------------------------
# augment
def check_augmented(clean: Trajectory, noisy: Trajectory) -> int:
    """Assert the structure of an augmented trajectory; return the number of inserted pairs."""
    a, e = noisy.actions.tolist(), noisy.expert.tolist()
    noisy_states, clean_states = noisy.states(), clean.states()
    n_tok = clean.vocab.n_tokens
    i, j, pairs = 0, 0, 0  # i: index in noisy, j: index in clean
    while i < len(a):
        assert noisy_states[i] == clean_states[j]  # every pair leaves the state unchanged
        if not e[i]:  # an inserted mistake: a token, then an expert backspace, then the expert action
            assert 0 <= a[i] < n_tok and a[i] != clean.actions[j]
            assert a[i + 1] == clean.vocab.backspace_id and e[i + 1]
            assert noisy_states[i + 1] == clean_states[j] + [a[i]]
            pairs += 1
            i += 2
        else:
            assert a[i] == clean.actions[j] and e[i] == clean.expert[j]
            i += 1
            j += 1
    assert j == len(clean) and noisy_states[-1] == clean_states[-1]
    assert noisy.n_mistakes == pairs and len(noisy) == len(clean) + 2 * pairs
    assert noisy.final() == clean.final() and noisy.terminal == clean.terminal
    assert noisy.clean() == clean
    return pairs


@settings(deadline=None)
@given(clean_trajectories(), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_augment_replays_to_the_clean_sequence(clean, p, seed):
    (noisy,) = augment([clean], p, seed)
    check_augmented(clean, noisy)
    assert augment([clean], p, seed) == [noisy]  # seeded
    if p == 0.0:
        assert noisy == clean
    if p == 1.0:
        assert noisy.n_mistakes == len(clean)  # every position, eos included


@settings(deadline=None)
@given(valid_histories(), st.integers(0, 2**32 - 1))
def test_augment_of_augmented_data_inserts_only_before_expert_actions(t, seed):
    (noisy,) = augment([t], 1.0, seed)
    assert noisy.final() == t.final()
    assert noisy.n_mistakes == t.n_mistakes + int(t.expert.sum())


@settings(deadline=None)
@given(clean_trajectories(), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_mistake_steps_of_augmented_data_are_the_inserted_pairs(clean, p, seed):
    """Leaving out the mistake steps of an augmented trajectory leaves its clean trajectory, step for step."""
    (noisy,) = augment([clean], p, seed)
    out = noisy.mistake_steps()
    assert out.shape == (len(noisy),) and out.dtype == np.bool_
    assert out.sum() == 2 * noisy.n_mistakes
    assert noisy.actions[~out].tolist() == clean.actions.tolist()
    assert np.all(noisy.actions[np.flatnonzero(~noisy.expert) + 1] == BK)
    assert np.array_equal(out[np.flatnonzero(~noisy.expert) + 1], np.ones(noisy.n_mistakes, dtype=bool))


def test_a_backspace_marked_as_a_mistake_is_left_out_alone() -> None:
    for actions, expert, want in [
        ([0, 1, BK, BK], [1, 0, 0, 1], [0, 1, 1, 0]),
        ([0, 0, BK, BK], [1, 1, 0, 1], [0, 0, 1, 0]),
    ]:
        t = Trajectory(prompt=[2], actions=actions, terminal=False, expert=[e == 1 for e in expert], vocab=V)
        assert t.mistake_steps().astype(int).tolist() == want


@pytest.mark.parametrize(
    ("actions", "expert", "want"),
    [
        ([0, 1, BK, 2, EOS], [1, 0, 1, 1, 1], [0, 1, 1, 0, 0]),  # augment's shape
        ([0, 1, 2, BK, BK, 2], [1, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]),  # a detour of two tokens
        ([1, 0, BK, BK, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0]),  # nested mistakes
        ([0, 1, 2], [1, 0, 1], [0, 1, 1]),  # never deleted: to the end
        ([0, 2, 1, BK, BK, 1, 0, BK], [1, 1, 0, 1, 1, 1, 0, 1], [0, 0, 1, 1, 0, 0, 1, 1]),  # two detours
    ],
)
def test_mistake_steps_run_from_each_mistake_to_the_backspace_that_deletes_it(actions, expert, want):
    t = Trajectory(
        prompt=[2], actions=actions, terminal=actions[-1] == EOS, expert=[e == 1 for e in expert], vocab=V
    )
    assert t.mistake_steps().astype(int).tolist() == want
    states = t.states()
    kept = np.flatnonzero(~t.mistake_steps())
    for j in np.flatnonzero(np.diff(np.r_[-1, kept]) > 1):  # a kept step right after a detour
        i = int(kept[j])
        start = int(kept[j - 1]) + 1 if j else 0
        assert states[i] == states[start]  # the detour returned to the state before it


def test_number_of_inserted_pairs_is_binomial():
    clean = collect(Tiny(), 2000, 0)
    n_positions = sum(len(t) for t in clean)
    p = 0.1
    noisy = augment(clean, p, 1)
    k = sum(check_augmented(c, t) for c, t in zip(clean, noisy))
    sd = math.sqrt(n_positions * p * (1 - p))
    assert abs(k - n_positions * p) < 5 * sd, (k, n_positions * p, sd)


def test_uniform_noise_is_uniform_over_the_other_tokens():
    v = Vocabulary(["a", "b", "c", "d"])
    t = Trajectory.from_completion([], [1] * 4000 + [v.eos_id], vocab=v)
    rng = np.random.default_rng(0)
    w = uniform_noise(t, np.arange(4000), rng)
    counts = np.bincount(w, minlength=4)
    assert counts[1] == 0  # never the expert's token
    assert np.all(np.abs(counts[[0, 2, 3]] - 4000 / 3) < 5 * math.sqrt(4000 * (1 / 3) * (2 / 3)))
    w_eos = uniform_noise(t, np.full(4000, 4000), rng)  # in place of eos: any ordinary token
    counts = np.bincount(w_eos, minlength=4)
    assert counts.shape == (4,) and np.all(np.abs(counts - 1000) < 5 * math.sqrt(4000 * 0.25 * 0.75))


def test_uniform_noise_with_a_single_token_skips_impossible_positions():
    v = Vocabulary(["a"])
    clean = Trajectory.from_completion([], [0, 0, v.eos_id], vocab=v)
    (noisy,) = augment([clean], 1.0, 0)
    assert noisy.actions.tolist() == [0, 0, 0, v.backspace_id, v.eos_id]  # only before eos
    with pytest.raises(ValueError, match="at least 2 ordinary tokens"):
        uniform_noise(clean, np.array([0]), np.random.default_rng(0))


def test_noise_function_gets_all_positions_at_once():
    calls = []

    def next_token(t, positions, rng):
        calls.append((t, positions.tolist()))
        assert not positions.flags.writeable
        return (t.actions[positions] + 1) % t.vocab.n_tokens  # e.g. what a model would propose

    clean = collect(Tiny(), 30, 3)
    noisy = augment(clean, 0.5, 4, next_token)
    assert len(calls) == sum(t.n_mistakes > 0 for t in noisy)  # one call per corrupted trajectory
    for c, t in zip(clean, noisy):
        check_augmented(c, t)
    for t, positions in calls:
        (n,) = [x for c, x in zip(clean, noisy) if c is t]
        wrong = n.actions[~n.expert]
        assert wrong.tolist() == ((t.actions[positions] + 1) % V.n_tokens).tolist()
    calls.clear()
    augment(clean, 0.0, 4, next_token)
    assert calls == []  # never called without positions


@pytest.mark.parametrize(
    ("output", "match"),
    [
        (lambda t, pos: np.zeros(len(pos) + 1, dtype=np.int64), r"shape \(\d+,\); expected one token"),
        (lambda t, pos: np.full(len(pos), t.vocab.eos_id), "not an ordinary token"),
        (lambda t, pos: np.full(len(pos), t.vocab.backspace_id), "not an ordinary token"),
        (lambda t, pos: np.full(len(pos), -1), "not an ordinary token"),
        (lambda t, pos: t.actions[pos], "equals the expert's action"),
        (lambda t, pos: np.zeros(len(pos)), "integer token ids"),
    ],
)
def test_noise_function_output_is_validated(output, match):
    clean = [Trajectory.from_completion([0], [1, 2, 0], vocab=V)]  # no eos: the expert's actions are tokens
    with pytest.raises(ValueError, match=match):
        augment(clean, 1.0, 0, lambda t, pos, rng: output(t, pos))


def test_augment_argument_errors():
    clean = collect(Tiny(), 3, 0)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p_noise must be a probability in \[0, 1\]"):
            augment(clean, p, 0)
    with pytest.raises(TypeError, match="p_noise must be a number"):
        augment(clean, "0.1", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown noise 'model'"):
        augment(clean, 0.1, 0, "model")
    with pytest.raises(TypeError, match="noise must be 'uniform' or a callable"):
        augment(clean, 0.1, 0, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wrap the single trajectory in a list"):
        augment(clean[0], 0.1, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1 is a list"):
        augment([clean[0], [0, 1]], 0.1, 0)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="int seed"):
        augment(clean, 0.1, "seed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        augment(clean, 0.1, 0, max_length=0)


def test_augment_max_length_keeps_wrong_tokens_below_the_truncation_length():
    clean = traj([0], [1, 2, 0, EOS])  # visible lengths 1, 2, 3, 4, 5
    (unbounded,) = augment([clean], 1.0, 0)
    assert unbounded.n_mistakes == 4 and unbounded.visible_lengths().max() == 5
    (bounded,) = augment([clean], 1.0, 0, max_length=5)
    # a wrong token before step i makes the length L_i + 1; it must stay below 5 (else the env truncates)
    assert bounded.n_mistakes == 3
    noisy_lengths = bounded.visible_lengths()[1:][~bounded.expert]
    assert noisy_lengths.max() == 4 and bounded.final() == clean.final()


# ---------------------------------------------------------------------------------------------------------
# to_transitions
def padded(state: list[int], width: int, pad: int = PAD) -> list[int]:
    return state + [pad] * (width - len(state))


@settings(deadline=None)
@given(st.lists(valid_histories(), max_size=4), st.integers(0, 3))
def test_to_transitions_matches_the_reference_states(trajs, extra):
    width = max([int(t.visible_lengths().max()) for t in trajs] + [1]) + extra
    batch = to_transitions(trajs, max_length=width)
    n = sum(len(t) for t in trajs)
    assert len(batch) == n and batch.obs.shape == (n, width) and batch.next_obs.shape == (n, width)
    assert batch.obs.dtype == np.int64 and batch.acts.dtype == np.int64 and batch.dones.dtype == np.bool_
    row = 0
    for t in trajs:
        states = t.states()
        for i in range(len(t)):
            assert batch.obs[row].tolist() == padded(states[i], width)
            assert batch.next_obs[row].tolist() == padded(states[i + 1], width)
            assert batch.acts[row] == t.actions[i] and batch.expert[row] == t.expert[i]
            assert batch.lengths[row] == len(states[i]) and batch.prompt_lengths[row] == t.prompt_length
            assert batch.dones[row] == (t.terminal and i == len(t) - 1)
            row += 1


def test_to_transitions_errors_and_edge_cases():
    t = traj([0], [1, 2, EOS])
    with pytest.raises(ValueError, match="trajectory 1 reaches a visible length of 4 > max_length=3"):
        to_transitions([traj([0], [1]), t], max_length=3)
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        to_transitions([t], max_length=0)
    with pytest.raises(ValueError, match="another vocabulary"):
        to_transitions([t, traj([0], [1], vocab=Vocabulary(["x", "y", "z", "w"]))], max_length=4)
    empty = to_transitions([], max_length=4)
    assert len(empty) == 0 and empty.obs.shape == (0, 4)
    batch = to_transitions([traj([0, 1], []), t, traj([], [0, 1])], max_length=4)
    assert len(batch) == 5 and batch.dones.tolist() == [False, False, True, False, False]  # cut: no done
    assert batch.obs[0].tolist() == [0, PAD, PAD, PAD]
    sub = batch[batch.expert & (batch.acts != EOS)]
    assert isinstance(sub, Transitions) and sub.acts.tolist() == [1, 2, 0, 1]
    assert batch[-1].acts.tolist() == [1] and batch[1:3].obs.shape == (2, 4)
    with pytest.raises(ValueError, match="must have shape"):
        Transitions(
            obs=batch.obs,
            acts=batch.acts,
            next_obs=batch.next_obs,
            dones=batch.dones[:2],
            expert=batch.expert,
            lengths=batch.lengths,
            prompt_lengths=batch.prompt_lengths,
        )


# ---------------------------------------------------------------------------------------------------------
# the environment agrees
def rollout(env, t: Trajectory):
    """Step ``env`` through ``t``; return the observations after reset and after each step, and the flags."""
    obs, info = env.reset(seed=0, options={"prompt": t.prompt.tolist()})
    assert info["prompt_length"] == t.prompt_length
    observations, flags = [obs], []
    for a in t.actions.tolist():
        assert env.action_masks()[a], "a demonstration never takes a masked action"
        obs, _, terminated, truncated, info = env.step(a)
        observations.append(obs)
        flags.append((terminated, truncated))
    return np.stack(observations), flags


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_augmented_trajectory_replays_through_the_env_to_the_clean_sequence(name, tmp_path):
    source = SOURCES[name]()
    max_length = source.max_sequence_length  # the clean sequences just fit
    env = SequenceEnv(source, max_length=max_length, max_steps=100)
    clean = collect(source, 40, 0)
    noisy = augment(clean, 0.3, 1, max_length=max_length)
    assert sum(t.n_mistakes for t in noisy) > 20
    batch = to_transitions(noisy, max_length=max_length)
    row = 0
    for c, t in zip(clean, noisy):
        observations, flags = rollout(env, t)
        # exactly the clean sequence
        assert observations[-1].tolist() == padded(c.final(), max_length, source.vocab.pad_id)
        assert flags == [(False, False)] * (len(t) - 1) + [(True, False)]  # never truncated, ends at eos
        np.testing.assert_array_equal(batch.obs[row : row + len(t)], observations[:-1])
        np.testing.assert_array_equal(batch.next_obs[row : row + len(t)], observations[1:])
        assert source.is_valid(t.final())
        row += len(t)
    save_demonstrations(tmp_path / "demos.npz", noisy)
    assert load_demonstrations(tmp_path / "demos.npz", vocab=source.vocab) == noisy


@settings(max_examples=50, deadline=None)
@given(st.lists(valid_histories(), min_size=1, max_size=3))
def test_to_transitions_equals_env_observations(trajs):
    width = max(int(t.visible_lengths().max()) for t in trajs) + 2  # room: the env never truncates
    env = SequenceEnv(Tiny(), max_length=width, max_steps=100)
    batch = to_transitions(trajs, max_length=width)
    observations = [rollout(env, t)[0] for t in trajs]
    np.testing.assert_array_equal(batch.obs, np.concatenate([o[:-1] for o in observations]))
    np.testing.assert_array_equal(batch.next_obs, np.concatenate([o[1:] for o in observations]))


# ---------------------------------------------------------------------------------------------------------
# files
@settings(max_examples=25, deadline=None)
@given(st.lists(valid_histories(), max_size=5))
def test_save_load_round_trip(trajs):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "demos.npz")
        save_demonstrations(path, trajs, vocab=V)
        loaded = load_demonstrations(path)
        assert loaded == trajs
        assert all(t.vocab == V for t in loaded)
        assert load_demonstrations(path, vocab=V) == trajs


def test_save_load_keeps_vocab_and_shares_the_given_one(tmp_path):
    v = Vocabulary(["one", "two"], separator=" ", eos="</s>", backspace="<bs>", pad="<p>")
    demos = augment([Trajectory.from_completion([0], [1, 0, v.eos_id], vocab=v)] * 3, 0.5, 0)
    path = tmp_path / "demos"  # no extension is added
    save_demonstrations(path, demos)
    assert os.listdir(tmp_path) == ["demos"]
    loaded = load_demonstrations(path)
    assert loaded == demos and loaded[0].vocab == v and loaded[0].vocab.separator == " "
    assert loaded[0].vocab is loaded[1].vocab
    assert all(t.vocab is v for t in load_demonstrations(path, vocab=v))
    assert not loaded[0].actions.flags.writeable


def test_empty_sets(tmp_path):
    path = tmp_path / "empty.npz"
    with pytest.raises(ValueError, match="empty set records no vocabulary; pass vocab="):
        save_demonstrations(path, [])
    assert not path.exists()
    save_demonstrations(path, [], vocab=V)
    assert load_demonstrations(path) == []
    with pytest.raises(DemonstrationFileError, match="vocabulary mismatch"):
        load_demonstrations(path, vocab=Vocabulary(["a", "b"]))


def test_save_errors(tmp_path):
    t = traj([0], [1, EOS])
    with pytest.raises(ValueError, match="differs from vocab="):
        save_demonstrations(tmp_path / "x.npz", [t], vocab=Vocabulary(["a", "b"]))
    with pytest.raises(ValueError, match="another vocabulary"):
        save_demonstrations(tmp_path / "x.npz", [t, traj([0], [1, EOS], vocab=Vocabulary(["a", "b", "d"]))])
    with pytest.raises(TypeError, match="wrap the single trajectory"):
        save_demonstrations(tmp_path / "x.npz", t)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


class Boom(Exception):
    pass


@pytest.mark.parametrize("fail_in", ["savez", "replace", "interrupt"])
def test_failed_save_leaves_the_old_file_intact_and_no_temporary_file(tmp_path, monkeypatch, fail_in):
    path = tmp_path / "demos.npz"
    old = collect(Tiny(), 5, 0)
    save_demonstrations(path, old)
    before = path.read_bytes()
    real_savez = np.savez_compressed

    def partial_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")  # a partial write, then the failure
        if fail_in == "interrupt":
            raise KeyboardInterrupt
        raise Boom("disk full")

    def failing_replace(src, dst):
        raise Boom("rename failed")

    if fail_in == "replace":
        monkeypatch.setattr(os, "replace", failing_replace)
    else:
        monkeypatch.setattr(np, "savez_compressed", partial_savez)
    with pytest.raises(KeyboardInterrupt if fail_in == "interrupt" else Boom):
        save_demonstrations(path, collect(Tiny(), 7, 1))
    monkeypatch.setattr(np, "savez_compressed", real_savez)
    assert os.listdir(tmp_path) == ["demos.npz"]  # no temporary file left behind
    assert path.read_bytes() == before
    assert load_demonstrations(path) == old


def test_save_replaces_atomically_and_respects_the_umask(tmp_path):
    path = tmp_path / "demos.npz"
    save_demonstrations(path, collect(Tiny(), 3, 0))
    new = collect(Tiny(), 4, 1)
    save_demonstrations(path, new)
    assert load_demonstrations(path) == new and os.listdir(tmp_path) == ["demos.npz"]
    reference = tmp_path / "plain"
    reference.write_bytes(b"")
    assert path.stat().st_mode == reference.stat().st_mode


def rewrite(path, **replace):
    """Rewrite an .npz file with some arrays replaced (``None`` drops one)."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for k, v in replace.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def header_bytes(**changes):
    header = {"format": "seqgym-demonstrations", "version": FORMAT_VERSION, "vocab": V.to_dict()}
    header.update({"n_trajectories": 2}, **changes)
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt or truncated"),
        (lambda p: p.write_bytes(b""), "corrupt or truncated"),
        (lambda p: p.write_bytes(b"hello, not a zip file at all"), "corrupt or truncated"),
        (lambda p: np.save(open(p, "wb"), np.arange(3)), "not an .npz archive"),
        (lambda p: rewrite(p, header=None), "no 'header' array; not a seqgym demonstration file"),
        (
            lambda p: rewrite(p, header=np.frombuffer(b"{not json", np.uint8)),
            "corrupt header, not valid JSON",
        ),
        (lambda p: rewrite(p, header=header_bytes(format="other")), "header names another format"),
        (lambda p: rewrite(p, header=header_bytes(version=99)), "format version 99, but this seqgym reads"),
        (lambda p: rewrite(p, header=header_bytes(vocab=[1])), "corrupt vocabulary"),
        (lambda p: rewrite(p, header=header_bytes(n_trajectories=3)), "corrupt 'prompt_offsets'"),
        (lambda p: rewrite(p, header=header_bytes(n_trajectories=True)), "n_trajectories is True"),
        (lambda p: rewrite(p, actions=None), r"missing arrays \['actions'\]"),
        (lambda p: rewrite(p, action_offsets=np.array([0, 3, 1])), "corrupt 'action_offsets'"),
        (lambda p: rewrite(p, expert=np.ones(1, bool)), "corrupt 'expert' or 'terminal'"),
        (lambda p: rewrite(p, actions=np.array([1, PAD, 2, EOS])), r"trajectory 0 is invalid: actions\[1\]"),
        (lambda p: rewrite(p, terminal=np.array([False, True])), "trajectory 0 is invalid: terminal=False"),
        (lambda p: rewrite(p, prompts=np.array([0.5])), "trajectory 0 is invalid: prompt must hold integer"),
        (lambda p: rewrite(p, prompts=np.array(["x"], dtype=object)), "corrupt or truncated"),
    ],
)
def test_damaged_files_raise_a_demonstration_file_error(tmp_path, damage, match):
    path = tmp_path / "demos.npz"
    save_demonstrations(path, [traj([0], [1, 2, EOS]), traj([], [2])])
    damage(path)
    with pytest.raises(DemonstrationFileError, match=match) as info:
        load_demonstrations(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_every_flipped_byte_is_caught_or_harmless(tmp_path):
    demos = augment(collect(Tiny(), 4, 0), 0.3, 1)
    path = tmp_path / "demos.npz"
    save_demonstrations(path, demos)
    raw = path.read_bytes()
    caught = 0
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            assert load_demonstrations(path) == demos  # e.g. a flipped timestamp: the data is intact
        except DemonstrationFileError:
            caught += 1
    assert caught > len(raw) // 2


def test_vocabulary_mismatch_names_the_difference(tmp_path):
    path = tmp_path / "demos.npz"
    save_demonstrations(path, [traj([0], [1, EOS])])
    with pytest.raises(DemonstrationFileError, match="token 1 is 'b' in the file and 'x' in the given"):
        load_demonstrations(path, vocab=Vocabulary(["a", "x", "c"]))
    with pytest.raises(
        DemonstrationFileError, match="the file has 3 ordinary tokens, the given vocabulary 2"
    ):
        load_demonstrations(path, vocab=Vocabulary(["a", "b"]))
    with pytest.raises(DemonstrationFileError, match="separators differ"):
        load_demonstrations(path, vocab=Vocabulary(["a", "b", "c"], separator=" "))
    with pytest.raises(FileNotFoundError):
        load_demonstrations(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(path)


def test_augment_draws_uniform_noise_as_the_noise_function_would() -> None:
    """augment's shortcut (the candidates it computed) draws exactly what calling UniformNoise draws."""
    from seqgym.data import UniformNoise
    from seqgym.sources.arithmetic import Arithmetic
    from seqgym.sources.dyck import Dyck

    for src in (Dyck(), Arithmetic(base=5, n_digits=2)):
        clean = collect(src, 60, np.random.default_rng(0))
        noise = UniformNoise(src)
        fast = augment(clean, 0.4, np.random.default_rng(1), "uniform", source=src)
        slow = augment(clean, 0.4, np.random.default_rng(1), noise.__call__, source=src)  # not the shortcut
        assert fast == slow and sum(t.n_mistakes for t in fast) > 20


def test_augment_calls_a_noise_that_may_draw_otherwise_as_it_is() -> None:
    """The candidates augment computed go only to a from_candidates defined by the class of ``__call__``,
    with augment's source and an impossible-only floor; any other noise is called."""
    from seqgym.data import UniformNoise
    from seqgym.sources.dyck import Dyck

    src = Dyck()
    clean = collect(src, 40, np.random.default_rng(0))

    class FirstCandidate(UniformNoise):  # overrides from_candidates alone: __call__ still draws uniformly
        def from_candidates(self, trajectory, positions, candidates, rng):  # type: ignore[no-untyped-def]
            return candidates.argmax(axis=1)

    class Counted(UniformNoise):  # overrides __call__ alone
        calls = 0

        def __call__(self, trajectory, positions, rng):  # type: ignore[no-untyped-def]
            Counted.calls += 1
            return super().__call__(trajectory, positions, rng)

    plain = augment(clean, 0.4, np.random.default_rng(1), UniformNoise(src), source=src)
    assert augment(clean, 0.4, np.random.default_rng(1), FirstCandidate(src), source=src) == plain
    assert augment(clean, 0.4, np.random.default_rng(1), Counted(src), source=src) == plain
    assert Counted.calls == sum(t.n_mistakes > 0 for t in plain)
    # another source, or a floor above -inf, names other candidates: the noise computes its own
    other = UniformNoise(Dyck(), floor=-30.0)
    assert augment(clean, 0.4, np.random.default_rng(1), other, source=src) == plain
    from seqgym.data import _candidate_draw

    assert _candidate_draw(other, src) is None and _candidate_draw(UniformNoise(Dyck()), src) is None
    assert _candidate_draw(FirstCandidate(src), src) is None and _candidate_draw(Counted(src), src) is None
    assert _candidate_draw(UniformNoise(src), src) is not None
