"""Exact toy-source metrics on hand-made cases and on a source's own samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seqgym import metrics as M
from seqgym.sources.dyck import Dyck
from seqgym.vocab import Vocabulary


class Fixed:
    """Always emits prompt [0] then completion [0, 1, eos] (ids: a=0, b=1, eos=2, backspace=3)."""

    vocab = Vocabulary(["a", "b"])

    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        return [0], [0, 1, 2]

    def prompt_length(self, sequence: list[int]) -> int:
        return 1

    def is_valid(self, sequence: list[int]) -> bool:
        return list(sequence) == [0, 0, 1, 2]

    def next_token_logprobs(self, prefix: list[int]) -> np.ndarray:
        lp = np.full(4, -np.inf)
        expected = [0, 0, 1, 2]
        if list(prefix) == expected[: len(prefix)] and len(prefix) < 4:
            lp[expected[len(prefix)]] = 0.0
        return lp


@pytest.fixture(scope="module")
def dyck() -> Dyck:
    return Dyck()


@pytest.fixture(scope="module")
def dyck_reference(dyck: Dyck) -> M.SourceStatistics:
    return M.source_statistics(dyck, n=10_000, seed=0)


def _own_samples(source: object, n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [p + c for p, c in (source.sample(rng) for _ in range(n))]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------------------
def test_own_samples_score_like_the_source(dyck: Dyck, dyck_reference: M.SourceStatistics) -> None:
    seqs = _own_samples(dyck, 1000, seed=1)
    m = M.evaluate_samples(dyck, seqs, reference=dyck_reference)
    assert m["validity"] == 1.0
    assert m["terminated"] == 1.0
    assert m["impossible_fraction"] == 0.0
    # TV of 1000 samples against a 10k-sample reference: finite-sample noise only (measured ~0.04 / ~0.01).
    assert m["length_tv"] < 0.08
    assert m["bigram_tv"] < 0.04
    # The samples' mean log-prob per token estimates minus the source's entropy rate.
    assert m["logprob_per_token"] == pytest.approx(
        -M.source_entropy_per_token(dyck, n=2000, seed=7), abs=0.05
    )
    assert m["rep_2"] == pytest.approx(m["source_rep_2"], abs=0.02)
    assert 0.0 <= m["distinct_2"] <= 1.0


def test_invalid_set(dyck: Dyck, dyck_reference: M.SourceStatistics) -> None:
    v = dyck.vocab
    seqs = [v.encode(["(", "]", "<eos>"]), v.encode(["[", ")", "(", ")", "<eos>"])]
    assert M.validity_rate(dyck, seqs) == 0.0
    assert M.impossible_fraction(dyck, seqs) == 1.0
    # "(" is possible (log 1/2), "]" is not (floored), eos after an impossible prefix is floored too.
    lp = M.true_logprob_per_token(dyck, [seqs[0]], floor=-10.0)
    assert lp == pytest.approx((math.log(0.5) - 10.0 - 10.0) / 3)
    m = M.evaluate_samples(dyck, seqs, reference=dyck_reference)
    assert m["validity"] == 0.0 and math.isnan(m["logprob_per_token_possible"])


def test_unterminated_sequence_is_invalid(dyck: Dyck) -> None:
    v = dyck.vocab
    assert M.validity_rate(dyck, [v.encode(["(", ")"]), v.encode(["(", ")", "<eos>"])]) == 0.5


def test_bigram_and_length_tv_by_hand() -> None:
    src = Fixed()
    ref = M.source_statistics(src, n=10, seed=0)  # lengths {3: 10}; bigrams (a,a), (a,b), (b,eos)
    assert ref.lengths == {3: 10}
    assert set(ref.bigrams) == {(0, 0), (0, 1), (1, 2)}
    # Same length, bigrams (a,a), (a,a), (a,eos): one in three shared -> TV = 2/3.
    assert M.bigram_tv(src, [[0, 0, 0, 2]], reference=ref) == pytest.approx(2 / 3)
    assert M.length_tv(src, [[0, 0, 0, 2]], reference=ref) == 0.0
    # Half the samples too short: TV of lengths = 1/2.
    assert M.length_tv(src, [[0, 0, 1, 2], [0, 2]], reference=ref) == pytest.approx(0.5)
    # The source's own sequence: both TVs exactly 0, validity 1, log-prob 0.
    m = M.evaluate_samples(src, [[0, 0, 1, 2]], reference=ref)
    assert (m["length_tv"], m["bigram_tv"], m["validity"], m["logprob_per_token"]) == (0.0, 0.0, 1.0, 0.0)
    # Explicit prompt lengths override source.prompt_length: now bigram (START, a) is counted too.
    assert M.bigram_counts([[0, 1]], [0]) == {(M.START, 0): 1, (0, 1): 1}


def test_total_variation() -> None:
    assert M.total_variation({"x": 2}, {"y": 5}) == 1.0
    assert M.total_variation({"x": 1, "y": 3}, {"x": 2, "y": 6}) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="non-empty"):
        M.total_variation({}, {"x": 1})


def test_backspace_rate_by_hand() -> None:
    v = Vocabulary(["a", "b"])  # backspace = 3
    assert M.backspace_rate(v, [[0, 3, 1, 2], [0, 1, 3, 3, 0, 2]]) == pytest.approx(3 / 10)
    assert M.backspace_rate(v, [[0, 1, 2]]) == 0.0
    assert M.backspace_rate(v, [[]]) == 0.0
    with pytest.raises(ValueError, match="outside the action ids"):
        M.backspace_rate(v, [[4]])  # pad is not an action


def test_repetition_and_distinct_by_hand() -> None:
    # [1,2,1,2,1]: bigrams 12,21,12,21 -> 2 unique of 4 -> rep 0.5; [3,4,5] -> 0.
    assert M.rep_n([[1, 2, 1, 2, 1], [3, 4, 5]], n=2) == pytest.approx(0.25)
    assert M.rep_n([[7, 7, 7, 7]], n=1) == pytest.approx(0.75)
    assert M.rep_n([[1]], n=2) == 0.0  # too short to hold a bigram
    assert M.distinct_n([[1, 2, 1, 2, 1], [3, 4, 5]], n=2) == pytest.approx(4 / 6)
    assert M.distinct_n([[1, 2, 3]], n=1) == 1.0
    with pytest.raises(ValueError, match="positive integer"):
        M.rep_n([[1, 2]], n=0)


def test_heldout_nll() -> None:
    assert M.heldout_nll_per_token([-3.0, -1.0], [3, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one per sequence"):
        M.heldout_nll_per_token([-1.0], [1, 2])
    with pytest.raises(ValueError, match="≤ 0"):
        M.heldout_nll_per_token([2.0], [1])
    src = Dyck()
    n_actions = src.vocab.n_actions

    def uniform(prompts: list[list[int]], completions: list[list[int]]) -> np.ndarray:
        # A model uniform over the tokens and eos (backspace excluded).
        return np.array([-len(c) * math.log(n_actions - 1) for c in completions])

    assert M.model_heldout_nll(uniform, src, n=200, seed=3) == pytest.approx(math.log(n_actions - 1))
    assert M.model_heldout_nll(uniform, src, n=200, seed=3) > M.source_entropy_per_token(src, n=200, seed=3)
    with pytest.raises(ValueError, match="shape"):
        M.model_heldout_nll(lambda p, c: np.zeros(3), src, n=5, seed=0)


def test_bad_input_raises(dyck: Dyck) -> None:
    v = dyck.vocab
    with pytest.raises(ValueError, match="backspace"):
        M.validity_rate(dyck, [[0, v.backspace_id, 1, v.eos_id]])
    with pytest.raises(ValueError, match="eos before its end"):
        M.validity_rate(dyck, [[0, 1, v.eos_id, 0]])
    with pytest.raises(TypeError, match="flat list"):
        M.validity_rate(dyck, [0, 1, v.eos_id])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="prompt_lengths"):
        M.length_tv(dyck, [[0, 1, v.eos_id]], prompt_lengths=[0, 0], n_reference=10)
    with pytest.raises(TypeError, match="is_valid"):
        M.validity_rate(object(), [[0]])


def test_evaluate_samples_keys(dyck: Dyck, dyck_reference: M.SourceStatistics) -> None:
    v = dyck.vocab
    seqs = [v.encode(["(", ")", "<eos>"]), v.encode(["(", "[", "]", ")"])]
    actions = [v.encode(["(", "[", "<bksp>", ")", "<eos>"]), v.encode(["(", "[", "]", ")"])]
    m = M.evaluate_samples(dyck, seqs, actions, reference=dyck_reference)
    assert m["backspace_rate"] == pytest.approx(1 / 9)
    assert m["terminated"] == 0.5 and m["validity"] == 0.5
    assert m["mean_length"] == pytest.approx(3.5)
    assert all(isinstance(x, float) for x in m.values())
