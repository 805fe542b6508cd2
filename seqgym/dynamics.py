"""The meaning of an action history, defined once.

Every component that needs to know which state a sequence of actions leads to (``SequenceEnv``,
``SequenceVectorEnv``, backspace augmentation, the LM policy's one-pass masked forward and its generation) is
tested against :func:`replay` / :func:`states` here.

Rules (``sequencematch.md`` §1):

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

import numpy as np

from seqgym.vocab import Vocabulary

__all__ = ["action_mask", "apply_action", "check_action", "replay", "states"]


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


def action_mask(length: int, prompt_length: int, vocab: Vocabulary) -> np.ndarray:
    """Boolean mask of shape ``(n_actions,)``: every action is allowed except backspace at the prompt boundary."""
    mask = np.ones(vocab.n_actions, dtype=bool)
    mask[vocab.backspace_id] = length > prompt_length
    return mask
