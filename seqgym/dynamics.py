"""The meaning of an action history, defined once.

Every component that needs to know which state a sequence of actions leads to (``SequenceEnv``,
``SequenceVectorEnv``, backspace augmentation, the LM policy's one-pass masked forward and its generation) calls
this module. It holds the rules in two forms, tested against each other:

- the scalar reference: :func:`apply_action`, :func:`states`, :func:`replay`, :func:`action_mask`;
- vectorised primitives over padded batches of action histories: :func:`backspace_allowed`,
  :func:`step_masks` (one step of many states), :func:`visible_lengths`, :func:`noop_backspaces`,
  :func:`surviving_actions`, :func:`state_matrix` and :func:`slot_layout` (the input layout of the one-pass
  masked forward), with :func:`pad_histories` to build the padded form.

Rules (``docs/method.md`` §1):

- a token action (or ``eos``) appends itself to the state;
- ``backspace`` removes the last *generated* token; at the prompt boundary it is a no-op (agents see it masked);
- ``eos`` ends the episode: no action may follow it.

Example:
    >>> from seqgym.vocab import Vocabulary
    >>> v = Vocabulary(["a", "b"])          # a=0, b=1, eos=2, backspace=3
    >>> replay([0], [1, 3, 3, 0, 2], v)     # prompt "a"; "b", bksp, bksp (no-op at boundary), "a", eos
    [0, 0, 2]
    >>> states([0], [1, 3], v)
    [[0], [0, 1], [0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt

from seqgym.vocab import Vocabulary

__all__ = [
    "BoolArray",
    "IntArray",
    "SlotLayout",
    "action_mask",
    "apply_action",
    "backspace_allowed",
    "check_action",
    "noop_backspaces",
    "pad_histories",
    "replay",
    "slot_layout",
    "state_matrix",
    "states",
    "step_masks",
    "surviving_actions",
    "visible_lengths",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def check_action(action: int, vocab: Vocabulary) -> int:
    """Return ``int(action)`` or raise ``ValueError`` if it is outside ``0 .. n_actions-1`` (pad is not an action)."""
    a = int(action)
    if not 0 <= a < vocab.n_actions:
        hint = " (that is the pad id, which is never an action)" if a == vocab.pad_id else ""
        raise ValueError(f"Action {a} is out of range{hint}: valid actions are 0..{vocab.n_actions - 1}.")
    return a


def apply_action(state: list[int], prompt_length: int, action: int, vocab: Vocabulary) -> list[int]:
    """Apply one action to ``state`` (prompt + generated tokens) in place and return it.

    Args:
        state: the visible sequence, modified in place.
        prompt_length: number of leading ids of ``state`` that form the (undeletable) prompt.
        action: an action id in ``0 .. n_actions-1``.
        vocab: the vocabulary that gives the special ids.
    """
    a = check_action(action, vocab)
    if a == vocab.backspace_id:
        if len(state) > prompt_length:
            state.pop()
    else:
        state.append(a)
    return state


def states(prompt: Sequence[int], actions: Sequence[int], vocab: Vocabulary) -> list[list[int]]:
    """All ``T+1`` states visited by an action history: ``[u_0 = prompt, u_1, ..., u_T]``.

    Raises ``ValueError`` for an out-of-range action or an action after ``eos``.
    """
    state = [int(t) for t in prompt]
    out = [list(state)]
    for i, a in enumerate(actions):
        if state and len(state) > len(prompt) and state[-1] == vocab.eos_id:
            raise ValueError(f"Action {int(a)} at step {i} follows eos; an episode ends at eos.")
        apply_action(state, len(prompt), a, vocab)
        out.append(list(state))
    return out


def replay(prompt: Sequence[int], actions: Sequence[int], vocab: Vocabulary) -> list[int]:
    """The visible sequence (prompt + generated tokens, eos included if taken) after ``actions``."""
    return states(prompt, actions, vocab)[-1]


def action_mask(length: int, prompt_length: int, vocab: Vocabulary) -> BoolArray:
    """Boolean mask of shape ``(n_actions,)``: every action is allowed except backspace at the prompt boundary."""
    mask = np.ones(vocab.n_actions, dtype=bool)
    mask[vocab.backspace_id] = length > prompt_length
    return mask


# ------------------------------------------------------------------------------------------------------------
# Vectorised primitives over padded action histories.
#
# A batch of ``B`` histories is an int array ``actions`` of shape ``(B, T)``, row ``b`` holding its ``T_b``
# actions in columns ``0 .. T_b-1`` (``n_steps[b] = T_b``; ``None`` means every row is full); the columns past
# ``T_b`` are padding and their values are ignored. A single history may be passed as a 1-D ``(T,)`` array with
# an int ``prompt_lengths``; results then drop the batch axis. Nothing here checks that actions are in range or
# that nothing follows eos (:func:`states` does): these functions only apply the rules above.


def _as_batch(
    actions: npt.ArrayLike, prompt_lengths: npt.ArrayLike, n_steps: npt.ArrayLike | None
) -> tuple[IntArray, IntArray | int, BoolArray | None]:
    """``(actions, prompt lengths, real)`` ready to broadcast along the last (step) axis.

    ``actions`` comes back as given, 1-D ``(T,)`` or 2-D ``(B, T)``; the prompt lengths as an int (1-D) or an
    ``(B, 1)`` array; ``real`` is None (every step real) or bool of the shape of ``actions``.
    """
    a = actions if isinstance(actions, np.ndarray) else np.asarray(actions, dtype=np.int64)
    if a.ndim not in (1, 2):
        raise ValueError(f"actions must have shape (T,) or (B, T), got shape {a.shape}.")
    if a.dtype != np.int64:
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions must hold integer ids, got dtype {a.dtype}.")
        a = a.astype(np.int64)
    T = a.shape[-1]
    p: IntArray | int
    if a.ndim == 1:
        if not isinstance(prompt_lengths, (int, np.integer)):
            raise ValueError(f"prompt_lengths must be an int for one history, got {prompt_lengths!r}.")
        p = int(prompt_lengths)
    else:
        B = a.shape[0]
        pa = np.asarray(prompt_lengths, dtype=np.int64)
        if pa.ndim == 0:
            pa = np.full(B, int(pa), dtype=np.int64)
        if pa.shape != (B,):
            raise ValueError(f"prompt_lengths must be an int or have shape ({B},), got shape {pa.shape}.")
        p = pa[:, None]
    if n_steps is None:
        return a, p, None
    n = np.asarray(n_steps, dtype=np.int64)
    if n.shape != a.shape[:-1] or (n < 0).any() or (n > T).any():
        raise ValueError(f"n_steps must have shape {a.shape[:-1]} with values in 0..{T}, got {n_steps!r}.")
    real = np.arange(T) < n[..., None]  # shape of a
    return a, p, real


def _visible(a: IntArray, p: IntArray | int, real: BoolArray | None, backspace_id: int) -> IntArray:
    """:func:`visible_lengths` on normalised input: shape of ``a`` with one more step."""
    step = np.where(a == backspace_id, -1, 1)  # (..., T)
    if real is not None:
        step *= real  # padding: 0
    cum = np.empty((*a.shape[:-1], a.shape[-1] + 1), dtype=np.int64)  # (..., T+1)
    cum[..., 0] = 0
    np.cumsum(step, axis=-1, out=cum[..., 1:])
    # Reflection at the boundary: subtract how far the free running sum has gone below 0 so far.
    cum -= np.minimum.accumulate(cum, axis=-1)
    cum += p
    return cum


def pad_histories(histories: Sequence[Sequence[int] | IntArray], fill: int) -> tuple[IntArray, IntArray]:
    """Ragged action histories as ``(actions (B, T) int64 padded with fill, n_steps (B,) int64)``.

    >>> pad_histories([[0, 1], [2]], fill=9)
    (array([[0, 1],
           [2, 9]]), array([2, 1]))
    """
    n = np.array([len(h) for h in histories], dtype=np.int64)
    T = int(n.max()) if len(n) else 0
    out = np.full((len(histories), T), fill, dtype=np.int64)
    if T:
        flat = np.concatenate([np.asarray(h, dtype=np.int64).reshape(-1) for h in histories])
        out[np.arange(T)[None, :] < n[:, None]] = flat
    return out, n


@overload
def backspace_allowed(lengths: int, prompt_lengths: int) -> bool: ...
@overload
def backspace_allowed(lengths: IntArray, prompt_lengths: IntArray | int) -> BoolArray: ...
def backspace_allowed(lengths: int | IntArray, prompt_lengths: IntArray | int) -> bool | BoolArray:
    """Where backspace deletes a token: the state holds generated tokens (``length > prompt_length``).

    Elementwise over ints or arrays; elsewhere (at the prompt boundary) backspace is a no-op that agents see
    masked. :func:`action_mask` is this for one state, over all actions.
    """
    return lengths > prompt_lengths


def step_masks(
    lengths: IntArray, prompt_lengths: IntArray, actions: IntArray, vocab: Vocabulary
) -> tuple[BoolArray, BoolArray]:
    """One action in each of ``N`` states: ``(appends, deletes)``, bool ``(N,)`` each.

    ``appends`` marks the rows whose action (a token or eos) is appended at column ``lengths``; ``deletes``
    the rows whose backspace removes the token at column ``lengths - 1``. A backspace at the prompt boundary
    is in neither (a no-op). The new visible length is ``lengths + appends - deletes``.

    >>> from seqgym.vocab import Vocabulary
    >>> v = Vocabulary(["a", "b"])          # a=0, b=1, eos=2, backspace=3
    >>> step_masks(np.array([1, 2, 1]), np.array([1, 1, 1]), np.array([0, 3, 3]), v)
    (array([ True, False, False]), array([False,  True, False]))
    """
    is_bk = actions == vocab.backspace_id  # (N,)
    return ~is_bk, is_bk & backspace_allowed(lengths, prompt_lengths)


def visible_lengths(
    actions: npt.ArrayLike,
    prompt_lengths: npt.ArrayLike,
    vocab: Vocabulary,
    *,
    n_steps: npt.ArrayLike | None = None,
) -> IntArray:
    """Visible length of every state: int64 ``(B, T+1)`` (``(T+1,)`` for one history).

    Entry ``[b, i]`` is ``len(u_i)`` (``u_0`` = prompt) for ``i <= T_b``; past ``T_b`` it repeats the final
    length. A token (or eos) adds one, a backspace removes one unless the state is the prompt (a running
    ``+1/-1`` sum reflected at the prompt boundary).

    >>> from seqgym.vocab import Vocabulary
    >>> v = Vocabulary(["a", "b"])          # a=0, b=1, eos=2, backspace=3
    >>> visible_lengths([1, 3, 3, 0, 2], 1, v).tolist()
    [1, 2, 1, 1, 2, 3]
    """
    a, p, real = _as_batch(actions, prompt_lengths, n_steps)
    return _visible(a, p, real, vocab.backspace_id)


def noop_backspaces(
    actions: npt.ArrayLike,
    prompt_lengths: npt.ArrayLike,
    vocab: Vocabulary,
    *,
    n_steps: npt.ArrayLike | None = None,
) -> BoolArray:
    """Backspaces taken at the prompt boundary (no-ops): bool ``(B, T)`` (``(T,)`` for one history).

    >>> from seqgym.vocab import Vocabulary
    >>> v = Vocabulary(["a", "b"])          # a=0, b=1, eos=2, backspace=3
    >>> noop_backspaces([1, 3, 3, 0], 1, v).tolist()
    [False, False, True, False]
    """
    a, p, real = _as_batch(actions, prompt_lengths, n_steps)
    vis = _visible(a, p, real, vocab.backspace_id)  # (..., T+1)
    # Every other real step changes the length by one (a token +1, a backspace off the boundary -1).
    out: BoolArray = vis[..., 1:] == vis[..., :-1]  # (..., T)
    if real is not None:
        out &= real
    return out


def surviving_actions(
    actions: npt.ArrayLike,
    prompt_lengths: npt.ArrayLike,
    vocab: Vocabulary,
    *,
    n_steps: npt.ArrayLike | None = None,
) -> BoolArray:
    """Actions whose token is in the final state: bool ``(B, T)`` (``(T,)`` for one history).

    A token (or eos) taken at step ``t`` sits at column ``len(u_{t+1}) - 1`` and survives unless a later
    state is shorter than ``len(u_{t+1})``. Backspaces and padding never survive. The surviving actions, in
    order, are the generated part of :func:`replay`.

    >>> from seqgym.vocab import Vocabulary
    >>> v = Vocabulary(["a", "b"])          # a=0, b=1, eos=2, backspace=3
    >>> surviving_actions([1, 3, 3, 0, 2], 1, v).tolist()
    [False, False, False, True, True]
    """
    a, p, real = _as_batch(actions, prompt_lengths, n_steps)
    vis = _visible(a, p, real, vocab.backspace_id)[..., 1:]  # (..., T) length after each step
    later_min = np.minimum.accumulate(vis[..., ::-1], axis=-1)[..., ::-1]  # (..., T) min over steps t..T-1
    out: BoolArray = (a != vocab.backspace_id) & (later_min >= vis)  # (..., T)
    if real is not None:
        out &= real
    return out


def state_matrix(
    prompts: npt.ArrayLike,
    actions: npt.ArrayLike,
    prompt_lengths: npt.ArrayLike,
    vocab: Vocabulary,
    *,
    width: int,
    n_steps: npt.ArrayLike | None = None,
) -> IntArray:
    """Every state of every history, left-aligned and padded: int64 ``(B, T+1, width)``.

    ``out[b, i]`` is ``u_i`` of row ``b`` padded with ``vocab.pad_id`` (rows past ``T_b`` repeat the final
    state). For one history pass ``prompts`` ``(P,)``, ``actions`` ``(T,)`` and an int ``prompt_lengths``;
    the result is then ``(T+1, width)``. ``prompts`` is ``(B, P_max)`` with row ``b``'s prompt in its first
    ``prompt_lengths[b]`` columns.

    Each step writes one cell: a token goes to column ``len(u_t)``, a deleting backspace writes pad to column
    ``len(u_t) - 1``; a cell of state ``i`` holds the last value written to its column at or before step ``i``.

    Raises:
        ValueError: a state longer than ``width``.

    >>> from seqgym.vocab import Vocabulary
    >>> v = Vocabulary(["a", "b"])          # a=0, b=1, eos=2, backspace=3, pad=4
    >>> state_matrix([0], [1, 3, 0], 1, v, width=3).tolist()
    [[0, 4, 4], [0, 1, 4], [0, 4, 4], [0, 0, 4]]
    """
    a, p, real = _as_batch(actions, prompt_lengths, n_steps)
    pr = prompts if isinstance(prompts, np.ndarray) else np.asarray(prompts, dtype=np.int64)
    squeeze = a.ndim == 1
    if squeeze:  # one history: a batch of one
        a, pr = a[None], pr[None]
        p = np.array([[p]], dtype=np.int64)
        real = None if real is None else real[None]
    assert not isinstance(p, int)
    B, T = a.shape
    if pr.ndim != 2 or pr.shape[0] != B or (B and pr.shape[1] < int(p.max())):
        raise ValueError(f"prompts must have shape ({B}, >= max prompt length), got shape {pr.shape}.")
    W = int(width)
    vis = _visible(a, p, real, vocab.backspace_id)  # (B, T+1)
    longest = int(vis.max(initial=0))
    if longest > W:
        raise ValueError(f"a state of length {longest} does not fit width={W}.")
    pad = vocab.pad_id
    # One spare column W takes the steps that write nothing (no-op backspaces, padding).
    values = np.full((B, T + 1, W + 1), pad, dtype=np.int64)  # (B, T+1, W+1) value written at (row, col)
    written = np.zeros((B, T + 1, W + 1), dtype=np.bool_)
    Pm = min(pr.shape[1], W)
    values[:, 0, :Pm] = np.where(np.arange(Pm) < p, pr[:, :Pm], pad)
    written[:, 0] = True  # row 0 is the whole initial state
    before = vis[:, :-1]  # (B, T) length before each step
    is_bk = a == vocab.backspace_id  # (B, T)
    appends = ~is_bk
    deletes = is_bk & backspace_allowed(before, p)
    if real is not None:
        appends &= real
        deletes &= real
    col = np.where(appends, before, np.where(deletes, before - 1, W))  # (B, T)
    bi = np.arange(B)[:, None]
    ti = np.arange(1, T + 1)
    values[bi, ti, col] = np.where(is_bk, pad, a)
    written[bi, ti, col] = True
    last = np.where(written, np.arange(T + 1)[:, None], 0)  # (B, T+1, W+1) row of the latest write so far
    np.maximum.accumulate(last, axis=1, out=last)
    out = np.take_along_axis(values, last, axis=1)[:, :, :W]
    return out[0] if squeeze else out


@dataclass(frozen=True)
class SlotLayout:
    """Input layout of the one-pass masked forward over a batch of histories (see :func:`slot_layout`).

    Attributes:
        tokens: int64 ``(B, S)``: the env id each slot feeds (``vocab.pad_id`` in left padding).
        positions: int64 ``(B, S)``: the position id of each slot (BOS is position 0; 0 in left padding).
        attend: bool ``(B, S, S)``: ``attend[b, q, k]`` is True where slot ``q`` attends to slot ``k``.
        valid: bool ``(B, S)``: the real (not left-padding) slots.
    """

    tokens: IntArray
    positions: IntArray
    attend: BoolArray
    valid: BoolArray


def slot_layout(
    prompts: npt.ArrayLike,
    prompt_lengths: npt.ArrayLike,
    actions: npt.ArrayLike,
    vocab: Vocabulary,
    *,
    n_steps: npt.ArrayLike | None = None,
) -> SlotLayout:
    """The slots of the one-pass masked forward: every state of every history in one causal-LM call.

    Row ``b`` is left-padded to ``S = max_b (1 + P_b + T_b)`` slots and holds ``[BOS, prompt..., one slot per
    action]``, BOS being ``vocab.eos_id``. With ``len(u)`` counting the prompt (BOS not counted):

    - BOS and the prompt take positions ``0 .. P_b``;
    - the slot of action ``t`` takes position ``len(u_{t+1})``, the position of the last token of the state the
      action creates. A token slot feeds that token. A backspace slot feeds a copy of the new last token (BOS
      if the state becomes empty), taken from the latest earlier non-backspace slot at its position; a no-op
      backspace at the prompt boundary copies the last prompt slot the same way;
    - slot ``k`` removes from the visible set every earlier slot ``j`` with ``position_j >= position_k`` when
      ``k`` is an action slot; slot ``q`` attends to itself and to every earlier real slot not yet removed at
      ``q``. So the slot of action ``t`` attends to exactly the slots of ``u_{t+1}``, each position once.

    The output of the slot at index ``S - 1 - (T_b - i)`` is the model's prediction at state ``u_i``.

    Args:
        prompts: int ``(B, P_max)``, row ``b``'s prompt in its first ``prompt_lengths[b]`` columns.
        prompt_lengths: int ``(B,)``.
        actions: int ``(B, T)`` padded histories (see the section comment above).
        vocab: the vocabulary.
        n_steps: int ``(B,)`` actions per row, or None when every row has ``T``.

    Example:
        >>> from seqgym.vocab import Vocabulary
        >>> v = Vocabulary(["a", "b"])          # a=0, b=1, eos=2, backspace=3, pad=4
        >>> lay = slot_layout([[0]], [1], [[1, 3, 0]], v)   # slots: BOS, a | b, bksp, a
        >>> lay.tokens.tolist(), lay.positions.tolist()
        ([[2, 0, 1, 0, 0]], [[0, 1, 2, 1, 2]])
        >>> lay.attend[0].astype(int).tolist()
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 1, 0], [1, 0, 0, 1, 1]]
    """
    a, pp, real = _as_batch(np.atleast_2d(np.asarray(actions, dtype=np.int64)), prompt_lengths, n_steps)
    assert not isinstance(pp, int)
    p = pp[:, 0]  # (B,)
    pr = np.atleast_2d(np.asarray(prompts, dtype=np.int64))
    B, Tm = a.shape
    if pr.shape[0] != B or (B and pr.shape[1] < int(p.max(initial=0))):
        raise ValueError(f"prompts must have shape ({B}, >= max prompt length), got shape {pr.shape}.")
    T = np.full(B, Tm, dtype=np.int64) if real is None else real.sum(axis=1)  # (B,)
    n = 1 + p + T  # (B,) slots per row
    S = int(n.max(initial=1))
    rel = np.arange(S)[None, :] - (S - n)[:, None]  # (B, S) index within the row; < 0 is left padding
    valid = rel >= 0
    is_act = rel >= 1 + p[:, None]  # (B, S)
    t = np.clip(rel - 1 - p[:, None], 0, max(Tm - 1, 0))  # (B, S) action index of an action slot
    j = np.clip(rel - 1, 0, max(pr.shape[1] - 1, 0))  # (B, S) prompt index of a prompt slot
    bi = np.arange(B)[:, None]
    tok = np.full((B, S), vocab.pad_id, dtype=np.int64)
    tok = np.where(rel == 0, vocab.eos_id, tok)
    if pr.shape[1]:
        tok = np.where((rel >= 1) & ~is_act, pr[bi, j], tok)
    if Tm:
        tok = np.where(is_act, a[bi, t], tok)
    vis = _visible(a, pp, real, vocab.backspace_id)  # (B, T+1)
    pos = np.where(is_act, vis[bi, t + 1] if Tm else 0, np.maximum(rel, 0))  # (B, S)
    is_bk = is_act & (tok == vocab.backspace_id)  # (B, S)

    earlier = np.tri(S, S, -1, dtype=np.bool_)[None]  # (1, S, S) [q, k]: k < q
    same_pos = pos[:, :, None] == pos[:, None, :]  # (B, S, S)
    origin = valid & ~is_bk  # (B, S)
    src = np.where(same_pos & earlier & origin[:, None, :], np.arange(1, S + 1), 0).max(axis=2) - 1  # (B, S)
    tok = np.where(is_bk, np.take_along_axis(tok, np.maximum(src, 0), axis=1), tok)
    # slot k (an action) removes every earlier slot j with pos_j >= pos_k; death(j) = first such k
    kills = is_act[:, :, None] & earlier & (pos[:, :, None] <= pos[:, None, :])  # (B, S_k, S_j)
    death = np.where(kills.any(axis=1), kills.argmax(axis=1), S)  # (B, S_j)
    eye = np.eye(S, dtype=np.bool_)[None]  # (1, S, S)
    alive = np.arange(S)[None, :, None] < death[:, None, :]  # (B, S_q, S_j)
    attend = ((earlier | eye) & alive & valid[:, None, :]) | eye  # (B, S, S)
    return SlotLayout(tokens=tok, positions=pos, attend=attend, valid=valid)
