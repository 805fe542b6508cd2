"""Property tests: every vectorised primitive of ``seqgym.dynamics`` agrees with the scalar reference.

Random batches of histories (prompts of 0-3 tokens, backspaces anywhere, the boundary included, an optional
final eos) are padded with arbitrary values past each row's length; the padding must not matter.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqgym.dynamics import (
    action_mask,
    apply_action,
    backspace_allowed,
    noop_backspaces,
    pad_histories,
    replay,
    slot_layout,
    state_matrix,
    states,
    step_masks,
    surviving_actions,
    visible_lengths,
)
from seqgym.vocab import Vocabulary

VOCABS = [Vocabulary([chr(ord("a") + i) for i in range(n)]) for n in (1, 2, 4)]


@st.composite
def histories(draw: st.DrawFn, vocab: Vocabulary) -> tuple[list[int], list[int]]:
    """A prompt and an action history (backspace weighted up so the boundary is hit often)."""
    prompt = draw(st.lists(st.integers(0, vocab.n_tokens - 1), max_size=3))
    step = st.one_of(st.just(vocab.backspace_id), st.integers(0, vocab.n_tokens - 1))
    actions = draw(st.lists(step, max_size=12))
    if draw(st.booleans()):
        actions.append(vocab.eos_id)
    return prompt, actions


@st.composite
def batches(draw: st.DrawFn) -> tuple[Vocabulary, list[list[int]], list[list[int]], np.ndarray, np.ndarray]:
    """``(vocab, prompts, histories, padded actions (B, T), padded prompts (B, P))`` with junk padding."""
    vocab = draw(st.sampled_from(VOCABS))
    rows = draw(st.lists(histories(vocab), min_size=1, max_size=5))
    prompts, acts = [p for p, _ in rows], [a for _, a in rows]
    T = max(len(a) for a in acts) + draw(st.integers(0, 2))
    P = max(len(p) for p in prompts) + draw(st.integers(0, 2))
    junk = st.integers(0, vocab.pad_id)  # padding may hold any id, backspace and eos included
    A = np.array([a + draw(st.lists(junk, min_size=T - len(a), max_size=T - len(a))) for a in acts])
    Pr = np.array([p + draw(st.lists(junk, min_size=P - len(p), max_size=P - len(p))) for p in prompts])
    return vocab, prompts, acts, A.reshape(len(acts), T), Pr.reshape(len(prompts), P)


def _n_plen(prompts: list[list[int]], acts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([len(a) for a in acts]), np.array([len(p) for p in prompts])


@settings(max_examples=300, deadline=None)
@given(batches())
def test_visible_lengths_match_the_states(batch) -> None:
    vocab, prompts, acts, A, _ = batch
    n, plen = _n_plen(prompts, acts)
    got = visible_lengths(A, plen, vocab, n_steps=n)
    assert got.shape == (len(acts), A.shape[1] + 1) and got.dtype == np.int64
    for b, (p, a) in enumerate(zip(prompts, acts)):
        ref = [len(s) for s in states(p, a, vocab)]
        assert got[b].tolist() == ref + [ref[-1]] * (A.shape[1] - len(a))
        assert visible_lengths(a, len(p), vocab).tolist() == ref  # one history, no batch axis


@settings(max_examples=300, deadline=None)
@given(batches())
def test_noop_backspaces_are_backspaces_at_the_prompt_boundary(batch) -> None:
    vocab, prompts, acts, A, _ = batch
    n, plen = _n_plen(prompts, acts)
    got = noop_backspaces(A, plen, vocab, n_steps=n)
    for b, (p, a) in enumerate(zip(prompts, acts)):
        ss = states(p, a, vocab)
        ref = [x == vocab.backspace_id and len(ss[t]) == len(p) for t, x in enumerate(a)]
        assert got[b].tolist() == ref + [False] * (A.shape[1] - len(a))
        assert noop_backspaces(a, len(p), vocab).tolist() == ref


def _survivors(prompt: list[int], actions: list[int], vocab: Vocabulary) -> list[bool]:
    """Scalar: replay a stack of action indices alongside the state."""
    state, alive = list(prompt), []
    for t, a in enumerate(actions):
        n_before = len(state)
        apply_action(state, len(prompt), a, vocab)
        if len(state) > n_before:
            alive.append(t)
        elif len(state) < n_before:
            alive.pop()
    return [t in alive for t in range(len(actions))]


@settings(max_examples=300, deadline=None)
@given(batches())
def test_surviving_actions_are_the_generated_part_of_the_final_state(batch) -> None:
    vocab, prompts, acts, A, _ = batch
    n, plen = _n_plen(prompts, acts)
    got = surviving_actions(A, plen, vocab, n_steps=n)
    assert got.dtype == np.bool_
    for b, (p, a) in enumerate(zip(prompts, acts)):
        ref = _survivors(p, a, vocab)
        assert got[b].tolist() == ref + [False] * (A.shape[1] - len(a))
        assert [x for x, keep in zip(a, ref) if keep] == replay(p, a, vocab)[len(p) :]
        assert surviving_actions(a, len(p), vocab).tolist() == ref


@settings(max_examples=150, deadline=None)
@given(batches(), st.integers(0, 3))
def test_state_matrix_holds_every_state_padded(batch, spare) -> None:
    vocab, prompts, acts, A, Pr = batch
    n, plen = _n_plen(prompts, acts)
    ss_all = [states(p, a, vocab) for p, a in zip(prompts, acts)]
    width = max(len(s) for ss in ss_all for s in ss) + spare
    if width == 0:
        width = 1
    got = state_matrix(Pr, A, plen, vocab, width=width, n_steps=n)
    assert got.shape == (len(acts), A.shape[1] + 1, width)
    for b, ss in enumerate(ss_all):
        ref = [s + [vocab.pad_id] * (width - len(s)) for s in ss]
        assert got[b].tolist() == ref + [ref[-1]] * (A.shape[1] - len(acts[b]))
        one = state_matrix(prompts[b], acts[b], len(prompts[b]), vocab, width=width)
        assert one.tolist() == ref
    longest = max(len(s) for ss in ss_all for s in ss)
    if longest > 1:
        with pytest.raises(ValueError, match="does not fit"):
            state_matrix(Pr, A, plen, vocab, width=longest - 1, n_steps=n)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VOCABS), st.data())
def test_step_masks_and_backspace_allowed_match_apply_action(vocab, data) -> None:
    N = data.draw(st.integers(1, 8))
    plen = np.array(data.draw(st.lists(st.integers(0, 3), min_size=N, max_size=N)))
    extra = np.array(data.draw(st.lists(st.integers(0, 3), min_size=N, max_size=N)))
    lengths = plen + extra
    a = np.array(data.draw(st.lists(st.integers(0, vocab.n_actions - 1), min_size=N, max_size=N)))
    appends, deletes = step_masks(lengths, plen, a, vocab)
    allowed = backspace_allowed(lengths, plen)
    for i in range(N):
        state = list(range(int(lengths[i])))
        apply_action(state, int(plen[i]), int(a[i]), vocab)
        assert len(state) == lengths[i] + appends[i] - deletes[i]
        assert not (appends[i] and deletes[i])
        assert allowed[i] == action_mask(int(lengths[i]), int(plen[i]), vocab)[vocab.backspace_id]
        assert backspace_allowed(int(lengths[i]), int(plen[i])) == allowed[i]


@settings(max_examples=150, deadline=None)
@given(batches())
def test_slot_layout_puts_each_state_in_the_slots_its_slot_attends_to(batch) -> None:
    vocab, prompts, acts, A, Pr = batch
    n, plen = _n_plen(prompts, acts)
    lay = slot_layout(Pr, plen, A, vocab, n_steps=n)
    B, S = lay.tokens.shape
    assert S == int((1 + plen + n).max()) and lay.attend.shape == (B, S, S)
    bos = vocab.eos_id
    for b, (p, a) in enumerate(zip(prompts, acts)):
        ss = states(p, a, vocab)
        start = S - (1 + len(p) + len(a))
        assert not lay.valid[b, :start].any() and lay.valid[b, start:].all()
        for q in range(start):  # left padding: pad id, attends to itself only
            assert lay.tokens[b, q] == vocab.pad_id and np.flatnonzero(lay.attend[b, q]).tolist() == [q]
        # slot start + k (k <= P) is the prompt prefix of length k; the slot of action t is state u_{t+1}
        seen = [p[:k] for k in range(len(p) + 1)] + ss[1:]
        for k, u in enumerate(seen):
            q = start + k
            keys = np.flatnonzero(lay.attend[b, q])
            assert keys.max() == q and keys.min() >= start  # causal, inside the row
            pos = lay.positions[b, keys].tolist()
            assert pos == list(range(len(u) + 1))  # each position once, in slot order
            assert lay.tokens[b, keys].tolist() == [bos, *u]
            assert lay.positions[b, q] == len(u)
        # the prediction at state u_i is the output of slot S - 1 - (T_b - i)
        for i, u in enumerate(ss):
            q = S - 1 - (len(a) - i)
            assert lay.positions[b, q] == len(u)
        one = slot_layout([p], [len(p)], [a], vocab)
        assert one.tokens[0].tolist() == lay.tokens[b, start:].tolist()
        assert (one.attend[0] == lay.attend[b, start:, start:]).all()


def test_pad_histories_round_trip_and_empty_rows() -> None:
    acts, n = pad_histories([[1, 2, 3], [], [4]], fill=-1)
    assert acts.tolist() == [[1, 2, 3], [-1, -1, -1], [4, -1, -1]] and n.tolist() == [3, 0, 1]
    acts, n = pad_histories([[], []], fill=0)
    assert acts.shape == (2, 0) and n.tolist() == [0, 0]


def test_bad_shapes_raise() -> None:
    v = VOCABS[1]
    with pytest.raises(ValueError, match="prompt_lengths"):
        visible_lengths(np.zeros((2, 3), dtype=np.int64), [0, 0, 0], v)
    with pytest.raises(ValueError, match="n_steps"):
        visible_lengths(np.zeros((2, 3), dtype=np.int64), [0, 0], v, n_steps=[4, 0])
    with pytest.raises(ValueError, match=r"shape \(T,\) or \(B, T\)"):
        visible_lengths(np.zeros((1, 2, 3), dtype=np.int64), 0, v)
