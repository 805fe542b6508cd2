"""Recovery metrics: start states with a deletable prefix, and how runs from them are judged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seqgym.metrics import deletion_stats, recovery_metrics, sample_recovery_states
from seqgym.sources.dyck import Dyck
from seqgym.sources.markov import Markov

SRC = Dyck()
V = SRC.vocab
OP, C, SQ, BK, EOS = V.token_to_id("("), V.token_to_id(")"), V.token_to_id("]"), V.backspace_id, V.eos_id


def test_recovery_states_hold_a_clean_prefix_and_one_impossible_token() -> None:
    st = sample_recovery_states(SRC, 200, seed=0)
    assert len(st.prompts) == len(st.clean) == len(st.injected) == 200
    for p, g, h in zip(st.prompts, st.clean, st.injected):
        assert len(g) >= 1 and EOS not in g and h[:-1] == g
        assert SRC.next_token_logprobs(p + g)[h[-1]] == -math.inf  # the injected token is impossible
        assert all(SRC.next_token_logprobs(p + g[:i])[g[i]] > -math.inf for i in range(len(g)))
    again = sample_recovery_states(SRC, 200, seed=0)
    assert again == st  # same seed, same states


def test_recovery_metrics_on_hand_made_runs() -> None:
    prompts = [[], [], []]
    prefixes = [[OP, SQ], [OP, SQ], [OP, SQ]]  # "(" then "]" (impossible after "(")
    assert SRC.next_token_logprobs([OP])[SQ] == -math.inf
    runs = [
        [BK, C, EOS],  # deletes the mistake, closes: valid
        [C, EOS],  # keeps the mistake: invalid
        [BK, BK, OP, C, EOS],  # deletes the mistake and the "(" too, then writes "()": valid
    ]
    m = recovery_metrics(SRC, prompts, prefixes, runs)
    assert m == {
        "backspace_first": pytest.approx(2 / 3),
        "recovery": pytest.approx(2 / 3),
        "mistake_removed": pytest.approx(2 / 3),
    }


def test_backspace_first_is_split_by_whether_the_models_own_choice_is_right() -> None:
    prompts = [[], [], [], []]
    prefixes = [[OP, SQ]] * 4  # "(" then the impossible "]"
    runs = [[BK, C, EOS], [C, EOS], [BK, C, EOS], [BK, C, EOS]]
    # the model's most likely token after "(": ")" and "(" are allowed, "]" and eos are not
    predicted = [C, C, SQ, EOS]
    assert SRC.next_token_logprobs([OP])[EOS] == -math.inf
    m = recovery_metrics(SRC, prompts, prefixes, runs, predicted=predicted)
    assert m["known_share"] == pytest.approx(0.5)
    assert m["backspace_first_known"] == pytest.approx(0.5)  # runs 0 and 1
    assert m["backspace_first_unknown"] == pytest.approx(1.0)  # runs 2 and 3
    assert m["backspace_first"] == pytest.approx(0.75)  # unchanged by the split
    every = recovery_metrics(SRC, prompts, prefixes, runs, predicted=[C] * 4)
    assert every["known_share"] == 1.0 and math.isnan(every["backspace_first_unknown"])
    with pytest.raises(ValueError, match="one token id per run"):
        recovery_metrics(SRC, prompts, prefixes, runs, predicted=[C])
    for bad in (99, BK, -1):
        with pytest.raises(ValueError, match=r"predicted\[3\] = .* is not a token id or eos"):
            recovery_metrics(SRC, prompts, prefixes, runs, predicted=[C, C, C, bad])
    with pytest.raises(ValueError, match="integer token ids"):
        recovery_metrics(SRC, prompts, prefixes, runs, predicted=[0.5] * 4)
    with pytest.raises(TypeError, match="next_token_logprobs"):
        recovery_metrics(_NoProbs(), prompts, prefixes, runs, predicted=[C] * 4)


class _NoProbs:
    """Dyck's validity without its probabilities."""

    vocab = V

    def is_valid(self, seq: list[int]) -> bool:
        return bool(SRC.is_valid(seq))


def test_deletion_stats_split_deleted_tokens_by_the_sources_verdict() -> None:
    runs = [
        [OP, C, BK, C, EOS],  # ")" emitted, deleted, written again: an allowed token taken back
        [OP, SQ, BK, C, EOS],  # "]" after "(" is ruled out: a real mistake repaired
        [OP, C, EOS],  # no deletion
    ]
    d = deletion_stats(SRC, [[], [], []], runs)
    assert d["deliberate_mistakes"] == pytest.approx(2 / 3)
    assert d["deleted_allowed"] == pytest.approx(1 / 3)
    assert d["deleted_ruled_out"] == pytest.approx(1 / 3)
    assert d["false_deletions"] == 0.0
    # from clean prefixes: the second run deletes into its prefix
    d = deletion_stats(SRC, [[], []], [[C, EOS], [BK, OP, C, C, EOS]], prefixes=[[OP], [OP]])
    assert d["false_deletions"] == pytest.approx(0.5)


def test_bad_input_is_refused() -> None:
    with pytest.raises(TypeError, match="next_token_logprobs"):
        sample_recovery_states(object(), 3, seed=0)
    with pytest.raises(ValueError, match="positive"):
        sample_recovery_states(SRC, 0, seed=0)
    with pytest.raises(ValueError, match="one prompt"):
        recovery_metrics(SRC, [[]], [[OP]], [[C], [C]])


def test_markov_recovery_states() -> None:
    src = Markov(6, forbidden_fraction=0.5, eos_prob=0.2, max_length=8, seed=3)
    st = sample_recovery_states(src, 50, seed=1)
    assert all(
        np.isneginf(src.next_token_logprobs(p + g[:-1])[g[-1]]) for p, g in zip(st.prompts, st.injected)
    )
