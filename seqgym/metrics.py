"""Exact metrics on toy sources, computed from generated sequences (numpy only).

Every function takes the source (or its vocabulary) and the generated data as plain id lists:

- ``sequences``: final *visible* sequences, prompt included, eos included when the episode terminated
  (what ``SequenceEnv`` shows and what ``Generation.sequences`` holds);
- ``actions``: action histories (backspaces included), for :func:`backspace_rate`.

Where a function needs the prompt/completion split it takes ``prompt_lengths`` (one int per sequence);
without it the split comes from ``source.prompt_length(sequence)`` when the source has that method, else the
prompt is taken to be empty.

The distribution metrics (:func:`length_tv`, :func:`bigram_tv`) compare the samples against a
:class:`SourceStatistics` reference estimated from many source samples drawn with a fixed seed (exact
enumeration is infeasible for most sources: Markov(8) has ``8**20`` sequences). The reference's own Monte
Carlo error is small next to the samples' (``n_reference`` defaults to 10,000, against the hundreds of samples
an experiment evaluates); a source's own samples score a TV of a few hundredths, not exactly 0, because of the
samples' finite size.

Example:
    >>> import numpy as np
    >>> from seqgym.vocab import Vocabulary
    >>> class AB:
    ...     '''"a" then "b" repeated 1-2 times with equal probability, then eos.'''
    ...     vocab = Vocabulary(["a", "b"])                      # a=0, b=1, eos=2, backspace=3
    ...     def sample(self, rng):
    ...         return [], [0, 1] * int(rng.integers(1, 3)) + [2]
    ...     def is_valid(self, seq):
    ...         return list(seq) in ([0, 1, 2], [0, 1, 0, 1, 2])
    ...     def next_token_logprobs(self, prefix):
    ...         lp = np.full(4, -np.inf)
    ...         n, last = len(prefix), (prefix[-1] if prefix else None)
    ...         if n == 0 or (n == 2 and last == 1):
    ...             lp[0] = 0.0 if n == 0 else np.log(0.5)
    ...             if n == 2:
    ...                 lp[2] = np.log(0.5)
    ...         elif last == 0:
    ...             lp[1] = 0.0
    ...         elif n == 4 and last == 1:
    ...             lp[2] = 0.0
    ...         return lp
    >>> src = AB()
    >>> validity_rate(src, [[0, 1, 2], [0, 0, 2]])
    0.5
    >>> round(true_logprob_per_token(src, [[0, 1, 2], [0, 1, 0, 1, 2]]), 4)   # 2 * log(0.5) / 8 tokens
    -0.1733
    >>> backspace_rate(src, [[0, 0, 3, 1, 2]])
    0.2
    >>> m = evaluate_samples(src, [[0, 1, 2], [0, 1, 0, 1, 2]], seed=0, n_reference=1000)
    >>> m["validity"], m["length_tv"] < 0.1
    (1.0, True)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from seqgym.sources.base import Source, has_exact_probabilities, has_validity
from seqgym.vocab import Vocabulary

KeyT = TypeVar("KeyT", bound=Hashable)
"""Outcome type of a distribution given as counts."""

__all__ = [
    "DEFAULT_LOGPROB_FLOOR",
    "START",
    "RecoveryStates",
    "SourceStatistics",
    "backspace_rate",
    "bigram_counts",
    "bigram_tv",
    "deletion_stats",
    "distinct_n",
    "evaluate_samples",
    "heldout_nll_per_token",
    "impossible_fraction",
    "length_counts",
    "length_tv",
    "model_heldout_nll",
    "recovery_metrics",
    "rep_n",
    "sample_heldout",
    "sample_recovery_states",
    "source_entropy_per_token",
    "source_statistics",
    "token_logprobs",
    "total_variation",
    "true_logprob_per_token",
    "validity_rate",
]

DEFAULT_LOGPROB_FLOOR: float = -20.0
"""Floor (nats) applied to each token's exact log-probability in :func:`true_logprob_per_token`, so that one
impossible token (log-probability ``-inf``) does not turn the mean into ``-inf``. ``exp(-20) ≈ 2e-9``."""

START: int = -1
"""Marker used as the left element of the bigram whose right element is the first token of a sequence."""

Ids = Sequence[int]


# ------------------------------------------------------------------------------------------------------------
# input handling
def _vocab_of(source_or_vocab: object) -> Vocabulary:
    if isinstance(source_or_vocab, Vocabulary):
        return source_or_vocab
    vocab = getattr(source_or_vocab, "vocab", None)
    if not isinstance(vocab, Vocabulary):
        raise TypeError(
            "Expected a source with a .vocab Vocabulary, or a Vocabulary; "
            f"got {type(source_or_vocab).__name__}."
        )
    return vocab


def _as_id_lists(sequences: Iterable[Iterable[int]], what: str) -> list[list[int]]:
    if isinstance(sequences, np.ndarray) and sequences.ndim != 2:
        raise ValueError(
            f"{what} must be a list of id lists (or a 2-D array), got an array of shape {sequences.shape}."
        )
    out = []
    for s in sequences:
        if isinstance(s, (int, np.integer)):
            raise TypeError(f"{what} must be a list of id lists, not a flat list of ids; wrap it: [{what}].")
        out.append([int(t) for t in s])
    return out


def _check_sequences(vocab: Vocabulary, sequences: list[list[int]]) -> None:
    """Raise ``ValueError`` for a backspace/pad/unknown id, or an eos that is not the last id."""
    for k, s in enumerate(sequences):
        vocab.check_ids(s, what=f"sequence {k}", allow_eos=True)
        if vocab.eos_id in s[:-1]:
            raise ValueError(
                f"sequence {k} holds eos before its end; pass final visible sequences (eos last)."
            )


def _prompt_lengths(
    source: Source, sequences: list[list[int]], prompt_lengths: Sequence[int] | None
) -> list[int]:
    if prompt_lengths is None:
        fn = getattr(source, "prompt_length", None)
        if callable(fn):
            return [int(fn(s)) for s in sequences]
        return [0] * len(sequences)
    pl = [int(p) for p in prompt_lengths]
    if len(pl) != len(sequences):
        raise ValueError(
            f"Got {len(pl)} prompt_lengths for {len(sequences)} sequences; give one per sequence."
        )
    for k, (p, s) in enumerate(zip(pl, sequences)):
        if not 0 <= p <= len(s):
            raise ValueError(
                f"prompt_lengths[{k}] = {p} is outside 0..{len(s)} (the length of sequence {k})."
            )
    return pl


def _prepare(
    source: Source, sequences: Iterable[Iterable[int]], prompt_lengths: Sequence[int] | None
) -> tuple[Vocabulary, list[list[int]], list[int]]:
    vocab = _vocab_of(source)
    seqs = _as_id_lists(sequences, "sequences")
    _check_sequences(vocab, seqs)
    return vocab, seqs, _prompt_lengths(source, seqs, prompt_lengths)


def total_variation(p: Mapping[KeyT, float], q: Mapping[KeyT, float]) -> float:
    """Total variation ``0.5 * Σ_x |p(x) − q(x)|`` between two distributions given as (unnormalised) counts.

    Each argument is normalised by its own total. Range ``[0, 1]``; 0 = identical, 1 = disjoint supports.
    Raises ``ValueError`` when either is empty (a distribution of nothing).

    Example:
        >>> total_variation({"a": 1, "b": 1}, {"a": 3, "b": 1})
        0.25
    """
    tp, tq = float(sum(p.values())), float(sum(q.values()))
    if tp <= 0 or tq <= 0:
        raise ValueError("total_variation needs two non-empty distributions (positive total counts).")
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0) / tp - q.get(k, 0) / tq) for k in keys)


# ------------------------------------------------------------------------------------------------------------
# validity and exact log-probabilities
def validity_rate(source: Source, sequences: Iterable[Iterable[int]]) -> float:
    """Fraction of ``sequences`` (prompt + completion) that ``source.is_valid`` accepts. Range ``[0, 1]``.

    A sequence that does not end with eos (a truncated episode) counts as invalid whatever ``is_valid`` says.
    Raises ``TypeError`` for a source without ``is_valid`` and ``ValueError`` for an empty list.
    """
    if not has_validity(source):
        raise TypeError(f"{type(source).__name__} has no is_valid; validity is unknown for this source.")
    vocab = _vocab_of(source)
    seqs = _as_id_lists(sequences, "sequences")
    if not seqs:
        raise ValueError("validity_rate needs at least one sequence.")
    _check_sequences(vocab, seqs)
    ok = [bool(s) and s[-1] == vocab.eos_id and bool(source.is_valid(s)) for s in seqs]  # type: ignore[attr-defined]
    return float(np.mean(ok))


def token_logprobs(source: Source, sequence: Ids, prompt_length: int = 0) -> np.ndarray:
    """Exact log-probabilities (nats) of each completion token of one sequence under the source.

    Args:
        source: a source with ``next_token_logprobs``.
        sequence: prompt + completion ids.
        prompt_length: number of leading prompt ids (not scored).

    Returns:
        float64 array of shape ``(len(sequence) - prompt_length,)``; ``-inf`` marks an impossible token (and,
        by the ``Source`` protocol, every token after it).
    """
    if not has_exact_probabilities(source):
        raise TypeError(
            f"{type(source).__name__} has no next_token_logprobs; exact log-probabilities are unknown."
        )
    seq = [int(t) for t in sequence]
    out = np.empty(len(seq) - prompt_length, dtype=np.float64)
    for i in range(prompt_length, len(seq)):
        lp = np.asarray(source.next_token_logprobs(seq[:i]), dtype=np.float64)  # type: ignore[attr-defined]
        out[i - prompt_length] = lp[seq[i]]
    return out


def _all_token_logprobs(source: Source, seqs: list[list[int]], pls: list[int]) -> list[np.ndarray]:
    return [token_logprobs(source, s, p) for s, p in zip(seqs, pls)]


def _logprob_summary(lps: list[np.ndarray], floor: float) -> dict[str, float]:
    if not lps:
        raise ValueError("Exact log-probability metrics need at least one sequence.")
    n_tokens = sum(len(x) for x in lps)
    if n_tokens == 0:
        raise ValueError(
            "The sequences hold no completion tokens to score (every sequence is only its prompt)."
        )
    possible = [x for x in lps if np.all(np.isfinite(x))]
    floored = sum(float(np.maximum(x, floor).sum()) for x in lps)
    n_possible = sum(len(x) for x in possible)
    return {
        "logprob_per_token": floored / n_tokens,
        "impossible_fraction": 1.0 - len(possible) / len(lps),
        "logprob_per_token_possible": (
            sum(float(x.sum()) for x in possible) / n_possible if n_possible else float("nan")
        ),
    }


def true_logprob_per_token(
    source: Source,
    sequences: Iterable[Iterable[int]],
    *,
    prompt_lengths: Sequence[int] | None = None,
    floor: float = DEFAULT_LOGPROB_FLOOR,
) -> float:
    """Mean exact log-probability per completion token of the samples under the source (nats/token, ``≤ 0``).

    Pooled over all samples: ``Σ_seq Σ_tok max(log p(tok | prefix), floor) / (number of completion tokens)``;
    eos counts as a token. Each token's log-probability is floored at ``floor`` so that impossible samples
    do not make the mean ``-inf``; report :func:`impossible_fraction` next to it. Higher is better; a
    source's own samples score minus its entropy rate (see :func:`source_entropy_per_token`).
    Range ``[floor, 0]``.
    """
    _, seqs, pls = _prepare(source, sequences, prompt_lengths)
    return _logprob_summary(_all_token_logprobs(source, seqs, pls), floor)["logprob_per_token"]


def impossible_fraction(
    source: Source, sequences: Iterable[Iterable[int]], *, prompt_lengths: Sequence[int] | None = None
) -> float:
    """Fraction of samples holding at least one token of probability 0 under the source. Range ``[0, 1]``."""
    _, seqs, pls = _prepare(source, sequences, prompt_lengths)
    return _logprob_summary(_all_token_logprobs(source, seqs, pls), DEFAULT_LOGPROB_FLOOR)[
        "impossible_fraction"
    ]


# ------------------------------------------------------------------------------------------------------------
# held-out likelihood of a model
def heldout_nll_per_token(
    total_logprobs: Sequence[float] | np.ndarray, token_counts: Sequence[int] | np.ndarray
) -> float:
    """Negative log-likelihood per token of a model on held-out sequences (nats/token, ``≥ 0``).

    ``−Σ total_logprobs / Σ token_counts``: pooled over tokens, not an average of per-sequence means. Defined
    only for models that assign per-token log-probabilities (LMs, not SB3 policies trained on a reward).

    Args:
        total_logprobs: shape ``(N,)``, each sequence's total log-probability of its scored tokens (nats).
        token_counts: shape ``(N,)``, how many tokens each total covers (eos included, if scored).

    Example:
        >>> heldout_nll_per_token([-2.0, -4.0], [2, 4])
        1.0
    """
    lp = np.asarray(total_logprobs, dtype=np.float64).reshape(-1)
    n = np.asarray(token_counts, dtype=np.float64).reshape(-1)
    if lp.shape != n.shape:
        raise ValueError(
            f"total_logprobs has {lp.size} entries but token_counts has {n.size}; give one per sequence."
        )
    if n.sum() <= 0 or np.any(n < 0):
        raise ValueError("token_counts must be non-negative with a positive total.")
    if np.any(lp > 1e-9):
        raise ValueError(
            "total_logprobs must be log-probabilities (≤ 0); did you pass negative log-likelihoods?"
        )
    return float(-lp.sum() / n.sum())


def sample_heldout(source: Source, n: int, *, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Draw ``n`` ``(prompt, completion)`` pairs from ``source`` with ``np.random.default_rng(seed)``.

    Use a ``seed`` that was not used to draw the training demonstrations.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}.")
    rng = np.random.default_rng(seed)
    prompts, completions = [], []
    for _ in range(n):
        p, c = source.sample(rng)
        prompts.append([int(t) for t in p])
        completions.append([int(t) for t in c])
    return prompts, completions


def model_heldout_nll(
    score: Callable[[list[list[int]], list[list[int]]], Sequence[float] | np.ndarray],
    source: Source,
    *,
    n: int = 1000,
    seed: int = 12345,
) -> float:
    """Held-out NLL per token (nats/token, ``≥ 0``) of a model on ``n`` fresh source samples.

    Args:
        score: ``score(prompts, completions) -> (N,)`` total log-probability (nats) of each completion given
            its prompt under the model, eos included (e.g. a wrapper over an LM's teacher-forced forward).
        source: the source the held-out samples are drawn from.
        n: number of held-out samples.
        seed: seed of the held-out draw (keep it apart from the training data's seed).
    """
    prompts, completions = sample_heldout(source, n, seed=seed)
    totals = np.asarray(score(prompts, completions), dtype=np.float64)
    if totals.shape != (n,):
        raise ValueError(
            f"score must return shape ({n},) (one total log-probability per sample), got {totals.shape}."
        )
    return heldout_nll_per_token(totals, [len(c) for c in completions])


def source_entropy_per_token(source: Source, *, n: int = 1000, seed: int = 12345) -> float:
    """Monte Carlo estimate of the source's own NLL per token (nats/token, ``≥ 0``).

    It is the best held-out NLL any model can reach on samples drawn with the same ``n`` and ``seed``: the
    reference for :func:`model_heldout_nll`. Needs ``next_token_logprobs``.
    """

    def exact(prompts: list[list[int]], completions: list[list[int]]) -> np.ndarray:
        return np.array([token_logprobs(source, p + c, len(p)).sum() for p, c in zip(prompts, completions)])

    return model_heldout_nll(exact, source, n=n, seed=seed)


# ------------------------------------------------------------------------------------------------------------
# distributions: lengths and bigrams
def length_counts(sequences: Iterable[Ids], prompt_lengths: Sequence[int]) -> Counter[int]:
    """Counter of completion lengths (ids after the prompt, eos included)."""
    return Counter(len(s) - p for s, p in zip(sequences, prompt_lengths))


def bigram_counts(sequences: Iterable[Ids], prompt_lengths: Sequence[int]) -> Counter[tuple[int, int]]:
    """Counter of bigrams ``(previous id, id)`` for every completion id (eos included).

    The left element is the preceding visible id (the last prompt id for the first completion id) or
    :data:`START` at the start of the sequence. Prompt-internal bigrams are not counted.
    """
    c: Counter[tuple[int, int]] = Counter()
    for s, p in zip(sequences, prompt_lengths):
        for i in range(p, len(s)):
            c[(s[i - 1] if i > 0 else START, s[i])] += 1
    return c


@dataclass(frozen=True)
class SourceStatistics:
    """Reference distributions of a source, estimated from ``n`` samples drawn with ``seed``.

    Attributes:
        lengths: counts of completion lengths (eos included).
        bigrams: counts of completion bigrams (see :func:`bigram_counts`).
        n: number of source samples.
        seed: seed of ``np.random.default_rng`` used to draw them.
        rep: ``{n: rep-n}`` of the source samples' completions, for comparison with :func:`rep_n` of samples.
    """

    lengths: Counter[int]
    bigrams: Counter[tuple[int, int]]
    n: int
    seed: int
    rep: dict[int, float] = field(default_factory=dict)


def source_statistics(
    source: Source, *, n: int = 10_000, seed: int = 0, rep_ns: Sequence[int] = (2,)
) -> SourceStatistics:
    """Estimate a source's length and bigram distributions (and rep-n) from ``n`` samples drawn with ``seed``.

    Compute it once per source and pass it as ``reference=`` to :func:`length_tv` / :func:`bigram_tv` /
    :func:`evaluate_samples`. Cost: ``n`` calls of ``source.sample``.
    """
    prompts, completions = sample_heldout(source, n, seed=seed)
    seqs = [p + c for p, c in zip(prompts, completions)]
    pls = [len(p) for p in prompts]
    return SourceStatistics(
        lengths=length_counts(seqs, pls),
        bigrams=bigram_counts(seqs, pls),
        n=n,
        seed=seed,
        rep={k: rep_n([_strip_eos(c, _vocab_of(source)) for c in completions], k) for k in rep_ns},
    )


def _reference(
    source: Source, reference: SourceStatistics | None, n_reference: int, seed: int
) -> SourceStatistics:
    return reference if reference is not None else source_statistics(source, n=n_reference, seed=seed)


def length_tv(
    source: Source,
    sequences: Iterable[Iterable[int]],
    *,
    prompt_lengths: Sequence[int] | None = None,
    reference: SourceStatistics | None = None,
    n_reference: int = 10_000,
    seed: int = 0,
) -> float:
    """Total variation between the samples' and the source's completion-length distributions, in ``[0, 1]``.

    The source side is ``reference`` (or ``source_statistics(source, n=n_reference, seed=seed)``). Lower is
    better; with ``N`` samples a perfect model scores about ``sqrt(K / N) / 2`` for ``K`` likely lengths.
    """
    _, seqs, pls = _prepare(source, sequences, prompt_lengths)
    if not seqs:
        raise ValueError("length_tv needs at least one sequence.")
    ref = _reference(source, reference, n_reference, seed)
    return total_variation(length_counts(seqs, pls), ref.lengths)


def bigram_tv(
    source: Source,
    sequences: Iterable[Iterable[int]],
    *,
    prompt_lengths: Sequence[int] | None = None,
    reference: SourceStatistics | None = None,
    n_reference: int = 10_000,
    seed: int = 0,
) -> float:
    """Total variation between the samples' and the source's completion-bigram distributions, in ``[0, 1]``.

    Bigrams are pooled over all completions (see :func:`bigram_counts`), each distribution normalised by its
    number of bigrams. The source side is estimated as in :func:`length_tv`. Lower is better.
    """
    _, seqs, pls = _prepare(source, sequences, prompt_lengths)
    counts = bigram_counts(seqs, pls)
    if not counts:
        raise ValueError("bigram_tv needs at least one completion token.")
    ref = _reference(source, reference, n_reference, seed)
    return total_variation(counts, ref.bigrams)


# ------------------------------------------------------------------------------------------------------------
# actions and repetition
def backspace_rate(source: Source | Vocabulary, actions: Iterable[Iterable[int]]) -> float:
    """Fraction of all actions that are backspace, pooled over the action histories. Range ``[0, 1]``.

    ``source`` is a source or a :class:`~seqgym.vocab.Vocabulary` (it gives the backspace id). Returns 0.0
    when the histories hold no action at all.
    """
    vocab = _vocab_of(source)
    hist = _as_id_lists(actions, "actions")
    total = sum(len(a) for a in hist)
    if total == 0:
        return 0.0
    for k, a in enumerate(hist):
        bad = [t for t in a if not 0 <= t < vocab.n_actions]
        if bad:
            raise ValueError(f"actions[{k}] holds {bad[0]}, outside the action ids 0..{vocab.n_actions - 1}.")
    return sum(a.count(vocab.backspace_id) for a in hist) / total


def _ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer (the n-gram order), got {n!r}.")


def rep_n(sequences: Iterable[Sequence[Hashable]], n: int = 2) -> float:
    """Repetition within sequences (seq-rep-n, Welleck et al. 2020).

    Mean over sequences of ``1 − |unique n-grams| / |n-grams|``. Range ``[0, 1]``; 0 = no n-gram repeats
    inside any sequence.

    Works on any token sequences (id lists, word lists). Sequences shorter than ``n`` have no n-gram and are
    skipped; with none left the result is 0.0 (nothing can repeat).

    Example:
        >>> rep_n([[1, 2, 1, 2], [3, 4, 5]], n=2)       # (1 - 2/3 + 1 - 2/2) / 2
        0.1666...
    """
    _check_n(n)
    vals = []
    for s in sequences:
        grams = _ngrams(list(s), n)
        if grams:
            vals.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(vals)) if vals else 0.0


def distinct_n(sequences: Iterable[Sequence[Hashable]], n: int = 2) -> float:
    """Diversity across sequences (distinct-n, Li et al. 2016): ``|unique n-grams| / |n-grams|``, pooled.

    Range ``[0, 1]``; higher = more diverse. 0.0 when there is no n-gram at all.

    Example:
        >>> distinct_n([[1, 2, 1, 2], [1, 2]], n=2)      # {(1,2), (2,1)} out of 4 bigrams
        0.5
    """
    _check_n(n)
    grams: list[tuple[Hashable, ...]] = []
    for s in sequences:
        grams.extend(_ngrams(list(s), n))
    return len(set(grams)) / len(grams) if grams else 0.0


def _strip_eos(seq: Sequence[int], vocab: Vocabulary) -> list[int]:
    return [int(t) for t in seq if int(t) != vocab.eos_id]


# ------------------------------------------------------------------------------------------------------------
def evaluate_samples(
    source: Source,
    sequences: Iterable[Iterable[int]],
    actions: Iterable[Iterable[int]] | None = None,
    *,
    prompt_lengths: Sequence[int] | None = None,
    reference: SourceStatistics | None = None,
    n_reference: int = 10_000,
    seed: int = 0,
    floor: float = DEFAULT_LOGPROB_FLOOR,
    rep_ns: Sequence[int] = (2,),
) -> dict[str, float]:
    """All the metrics the source supports, in one dict of floats.

    Keys (each present only when the source / inputs allow it):

    - ``n_samples``, ``mean_length`` (completion ids, eos included), ``terminated`` (fraction ending in eos);
    - ``validity`` (:func:`validity_rate`), if the source has ``is_valid``;
    - ``logprob_per_token`` (floored, :func:`true_logprob_per_token`), ``impossible_fraction`` and
      ``logprob_per_token_possible`` (mean over the possible samples only; nan if none), if the source has
      ``next_token_logprobs``;
    - ``length_tv``, ``bigram_tv`` against ``reference`` (estimated with ``n_reference`` and ``seed`` when
      absent);
    - ``rep_{n}`` and ``distinct_{n}`` of the completions (eos dropped) for each ``n`` in ``rep_ns``, and
      ``source_rep_{n}`` (the source's own rep-n, for comparison, when the reference holds it);
    - ``backspace_rate`` if ``actions`` is given.
    """
    vocab, seqs, pls = _prepare(source, sequences, prompt_lengths)
    if not seqs:
        raise ValueError("evaluate_samples needs at least one sequence.")
    out: dict[str, float] = {
        "n_samples": float(len(seqs)),
        "mean_length": float(np.mean([len(s) - p for s, p in zip(seqs, pls)])),
        "terminated": float(np.mean([bool(s) and s[-1] == vocab.eos_id for s in seqs])),
    }
    if has_validity(source):
        out["validity"] = validity_rate(source, seqs)
    if has_exact_probabilities(source) and any(len(s) > p for s, p in zip(seqs, pls)):
        out.update(_logprob_summary(_all_token_logprobs(source, seqs, pls), floor))
    ref = (
        reference
        if reference is not None
        else source_statistics(source, n=n_reference, seed=seed, rep_ns=rep_ns)
    )
    out["length_tv"] = total_variation(length_counts(seqs, pls), ref.lengths)
    bigrams = bigram_counts(seqs, pls)
    if bigrams:
        out["bigram_tv"] = total_variation(bigrams, ref.bigrams)
    completions = [_strip_eos(s[p:], vocab) for s, p in zip(seqs, pls)]
    for k in rep_ns:
        out[f"rep_{k}"] = rep_n(completions, k)
        out[f"distinct_{k}"] = distinct_n(completions, k)
        if k in ref.rep:
            out[f"source_rep_{k}"] = ref.rep[k]
    if actions is not None:
        out["backspace_rate"] = backspace_rate(vocab, actions)
    return out


# ------------------------------------------------------------------------------------------------------------
# recovery: evaluation from states with a deletable generated prefix (docs/method.md §7)
@dataclass(frozen=True)
class RecoveryStates:
    """Start states for recovery evaluation, one per row: a prompt and a deletable generated prefix.

    Attributes:
        prompts: ``n`` prompts (undeletable).
        clean: ``n`` clean generated prefixes: a prefix of a source sample's completion (at least one token,
            never eos), so a model that deletes any of it deletes a correct token.
        injected: ``n`` prefixes: ``clean[k]`` followed by one token the source rules out there (an impossible
            token), the mistake a model should take back.
    """

    prompts: list[list[int]]
    clean: list[list[int]]
    injected: list[list[int]]


def sample_recovery_states(
    source: object, n: int, *, seed: int, max_length: int | None = None
) -> RecoveryStates:
    """Draw ``n`` recovery start states from ``source`` (which needs ``next_token_logprobs``).

    Each row: a source sample ``(prompt, completion)``, a cut ``k`` uniform in ``1 .. len(completion) − 1``
    (the eos excluded), ``clean = completion[:k]``, and ``injected = clean + [w]`` with ``w`` uniform over the
    ordinary tokens of log-probability ``-inf`` after ``prompt + clean``. Samples too short to cut, or states
    where the source rules nothing out, are skipped and redrawn (at most ``100·n`` draws). With
    ``max_length``, states whose prompt + injected prefix is not shorter than it are skipped too (an env or
    generation with that limit must have room for one more token).

    Raises:
        TypeError: the source has no ``next_token_logprobs``.
        ValueError: ``n < 1``, or too few usable states were found.
    """
    if not callable(getattr(source, "next_token_logprobs", None)):
        raise TypeError(
            f"{type(source).__name__} has no next_token_logprobs: it cannot tell an impossible token."
        )
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    vocab = _vocab_of(source)
    rng = np.random.default_rng(seed)
    prompts: list[list[int]] = []
    clean: list[list[int]] = []
    injected: list[list[int]] = []
    for _ in range(100 * int(n)):
        if len(prompts) == n:
            break
        p, c = source.sample(rng)  # type: ignore[attr-defined]
        p, c = [int(t) for t in p], [int(t) for t in c]
        if len(c) < 2:
            continue
        k = int(rng.integers(1, len(c)))  # 1 .. len(c) - 1: at least one token, never the eos
        prefix = c[:k]
        lp = np.asarray(source.next_token_logprobs(p + prefix))[: vocab.n_tokens]  # type: ignore[attr-defined]
        impossible = np.flatnonzero(np.isneginf(lp))
        if impossible.size == 0 or (max_length is not None and len(p) + k + 1 >= max_length):
            continue
        prompts.append(p)
        clean.append(prefix)
        injected.append([*prefix, int(rng.choice(impossible))])
    if len(prompts) < n:
        raise ValueError(
            f"Found only {len(prompts)} of {n} recovery states: the source rarely rules a token out or its "
            "samples are too short to cut."
        )
    return RecoveryStates(prompts=prompts, clean=clean, injected=injected)


def _walk(
    source: object, vocab: Vocabulary, prompt: list[int], prefix: list[int], actions: list[int]
) -> tuple[list[int], int, int, int]:
    """Replay ``prefix + actions`` from ``prompt``: the final sequence, how many prefix tokens were deleted,
    and how many generated tokens were emitted then deleted, split into allowed / ruled-out ones."""
    state = [*prompt, *prefix]
    boundary = len(state)  # deleting below this deletes the given prefix
    emitted_ok: list[bool] = []  # per generated token on the stack: did the source allow it there?
    prefix_deleted = deleted_allowed = deleted_ruled_out = 0
    exact = callable(getattr(source, "next_token_logprobs", None))
    for a in actions:
        if a == vocab.backspace_id:
            if len(state) <= len(prompt):
                continue  # a no-op at the prompt boundary
            state.pop()
            if len(state) < boundary:
                prefix_deleted += 1
                boundary = len(state)
            else:
                if emitted_ok.pop():
                    deleted_allowed += 1
                else:
                    deleted_ruled_out += 1
        else:
            ok = True
            if exact and a != vocab.eos_id:
                ok = bool(np.asarray(source.next_token_logprobs(state))[a] > -np.inf)  # type: ignore[attr-defined]
            state.append(int(a))
            emitted_ok.append(ok)
            if a == vocab.eos_id:
                break
    return state, prefix_deleted, deleted_allowed, deleted_ruled_out


def _check_rows(prompts: Sequence[Ids], prefixes: Sequence[Ids] | None, actions: Sequence[Ids]) -> None:
    if len(prompts) != len(actions) or (prefixes is not None and len(prefixes) != len(actions)):
        raise ValueError(
            f"Give one prompt (and prefix) per action history: got {len(prompts)} prompts, "
            f"{'no' if prefixes is None else len(prefixes)} prefixes and {len(actions)} histories."
        )
    if not actions:
        raise ValueError("No action histories to judge.")


def recovery_metrics(
    source: object,
    prompts: Sequence[Ids],
    prefixes: Sequence[Ids],
    actions: Sequence[Ids],
    *,
    predicted: Sequence[int] | np.ndarray | None = None,
) -> dict[str, float]:
    """How a model recovers from an injected mistake at the end of a deletable prefix.

    Args:
        source: a source with ``is_valid`` (and ``next_token_logprobs`` for the deletion split and ``predicted``).
        prompts, prefixes: the start states (:attr:`RecoveryStates.prompts`, :attr:`RecoveryStates.injected`).
        actions: the action history each run took after its prefix (backspaces included).
        predicted: optional, one token id (or eos) per run: the model's own most likely token at the clean
            state (the prefix without its injected last token). ``backspace_first`` is then split by whether
            the source allows that token: a proxy for whether the model knows what belongs there.

    Returns:
        ``backspace_first``: share of runs whose first action is ``<backspace>`` (P(backspace next | just after
        the mistake), estimated by sampling); ``recovery``: share whose final sequence is valid;
        ``mistake_removed``: share that deleted the injected token. With ``predicted``, also ``known_share``
        (share of states where the model's own choice is allowed), ``backspace_first_known`` and
        ``backspace_first_unknown`` (``backspace_first`` over those states and over the others; ``nan`` where
        there are none).

    Raises:
        ValueError: rows of different counts, or ``predicted`` of another length, or ids that are not tokens or
            eos.
        TypeError: ``predicted`` with a source without ``next_token_logprobs``.
    """
    _check_rows(prompts, prefixes, actions)
    vocab = _vocab_of(source)
    known = None if predicted is None else _allowed(source, vocab, prompts, prefixes, predicted)  # (n,)
    first = np.zeros(len(actions), dtype=bool)
    removed = valid = 0
    for i, (p, g, a) in enumerate(zip(prompts, prefixes, actions)):
        p, g, a = [int(t) for t in p], [int(t) for t in g], [int(t) for t in a]
        first[i] = bool(a) and a[0] == vocab.backspace_id
        final, prefix_deleted, _, _ = _walk(source, vocab, p, g, a)
        removed += prefix_deleted > 0
        valid += bool(source.is_valid(final))  # type: ignore[attr-defined]
    n = len(actions)
    out = {"backspace_first": float(first.mean()), "recovery": valid / n, "mistake_removed": removed / n}
    if known is not None:
        out["known_share"] = float(known.mean())
        out["backspace_first_known"] = float(first[known].mean()) if known.any() else float("nan")
        out["backspace_first_unknown"] = float(first[~known].mean()) if (~known).any() else float("nan")
    return out


def _allowed(
    source: object,
    vocab: Vocabulary,
    prompts: Sequence[Ids],
    prefixes: Sequence[Ids],
    predicted: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """``(n,)`` bool: does the source allow ``predicted[i]`` after ``prompts[i] + prefixes[i][:-1]``?"""
    if not callable(getattr(source, "next_token_logprobs", None)):
        raise TypeError(f"{type(source).__name__} has no next_token_logprobs: it cannot judge `predicted`.")
    pred = np.asarray(predicted)
    if pred.ndim != 1 or len(pred) != len(prefixes):
        raise ValueError(
            f"predicted must hold one token id per run ({len(prefixes)}), got shape {pred.shape}."
        )
    if pred.size and not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"predicted must hold integer token ids, got dtype {pred.dtype}.")
    bad = np.flatnonzero((pred < 0) | (pred > vocab.eos_id))
    if bad.size:
        raise ValueError(
            f"predicted[{int(bad[0])}] = {int(pred[bad[0]])} is not a token id or eos (0..{vocab.eos_id}; "
            "a prediction is never <backspace> or pad)."
        )
    out = np.zeros(len(pred), dtype=bool)
    for i, (p, g, t) in enumerate(zip(prompts, prefixes, pred)):
        if len(g) == 0:
            raise ValueError(f"prefixes[{i}] is empty: it must end with the injected token.")
        state = [int(x) for x in p] + [int(x) for x in g[:-1]]
        lp = np.asarray(source.next_token_logprobs(state))  # type: ignore[attr-defined]
        out[i] = int(t) != vocab.backspace_id and bool(lp[int(t)] > -np.inf)
    return out


def deletion_stats(
    source: object, prompts: Sequence[Ids], actions: Sequence[Ids], prefixes: Sequence[Ids] | None = None
) -> dict[str, float]:
    """Deletions during generation, per sequence.

    Args:
        source: a source or vocabulary; with ``next_token_logprobs`` the deleted tokens are split into those
            the source allowed (correct tokens taken back) and those it ruled out (real mistakes repaired).
        prompts: the prompts.
        actions: the action histories after the start state.
        prefixes: optional clean deletable prefixes the runs started from (:attr:`RecoveryStates.clean`).

    Returns:
        ``deliberate_mistakes``: tokens emitted and then deleted, per sequence; ``deleted_allowed`` /
        ``deleted_ruled_out``: the same split by the source's verdict on each deleted token (``nan`` without
        exact probabilities); ``false_deletions``: share of runs that deleted part of the clean ``prefixes``
        (0 without prefixes).
    """
    _check_rows(prompts, prefixes, actions)
    vocab = _vocab_of(source)
    exact = callable(getattr(source, "next_token_logprobs", None))
    tot_allowed = tot_ruled_out = runs_into_prefix = 0
    for k, (p, a) in enumerate(zip(prompts, actions)):
        g = [] if prefixes is None else [int(t) for t in prefixes[k]]
        _, prefix_deleted, allowed, ruled_out = _walk(
            source, vocab, [int(t) for t in p], g, [int(t) for t in a]
        )
        tot_allowed += allowed
        tot_ruled_out += ruled_out
        runs_into_prefix += prefix_deleted > 0
    n = len(actions)
    return {
        "deliberate_mistakes": (tot_allowed + tot_ruled_out) / n,
        "deleted_allowed": tot_allowed / n if exact else float("nan"),
        "deleted_ruled_out": tot_ruled_out / n if exact else float("nan"),
        "false_deletions": runs_into_prefix / n,
    }
