from __future__ import annotations

import pytest

from seqgym.dynamics import action_mask, replay, states
from seqgym.vocab import Vocabulary

V = Vocabulary(["a", "b", "c"])  # a=0 b=1 c=2 eos=3 bksp=4 pad=5
BK, EOS = V.backspace_id, V.eos_id


def test_replay_applies_tokens_backspaces_and_eos():
    assert replay([], [0, 1, BK, 2, EOS], V) == [0, 2, EOS]
    assert replay([1], [BK, BK, 0], V) == [1, 0]  # backspace at the prompt boundary is a no-op


def test_states_lists_every_visited_state():
    assert states([2], [0, BK, 1], V) == [[2], [2, 0], [2], [2, 1]]


def test_action_after_eos_and_out_of_range_actions_raise():
    with pytest.raises(ValueError, match="follows eos"):
        replay([], [0, EOS, 1], V)
    with pytest.raises(ValueError, match="pad id"):
        replay([], [V.pad_id], V)
    with pytest.raises(ValueError, match="out of range"):
        replay([], [-1], V)


def test_action_mask_blocks_backspace_only_at_the_boundary():
    assert not action_mask(2, 2, V)[BK]
    assert action_mask(3, 2, V)[BK]
    assert action_mask(3, 2, V).sum() == V.n_actions


def test_vocabulary_validation_and_roundtrip():
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="collide"):
        Vocabulary(["a", "<eos>"])
    with pytest.raises(ValueError, match="backspace id"):
        V.check_ids([0, BK], what="prompt")
    assert Vocabulary.from_dict(V.to_dict()) == V
    assert len(V) == V.n_actions + 1 and V.pad_id == V.n_actions
