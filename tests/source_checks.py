"""Checks every toy source must pass: its exact probabilities against enumeration and against its samples."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from seqgym.sources.base import sequence_logprob

# Tolerances of the statistical tests (fixed seeds, N_SAMPLES draws each). Whole sequences: the total
# variation (TV) between the empirical and the exact distribution must stay below TV_RATIO times its expected
# value under correct sampling, E[TV] ~= 0.5 * sum_k sqrt(2 p_k (1 - p_k) / (pi N)) (normal approximation).
# Next tokens: after every prefix seen at least MIN_PREFIX_COUNT times, the next-token TV must be below
# STEP_TV_TOL (about twice its expected value at that count). A sampler whose probability is off by ~0.05 on
# a frequent outcome fails (checked by hand on Dyck and Markov).
N_SAMPLES = 4000
TV_RATIO = 1.6
STEP_TV_TOL = 0.06
MIN_PREFIX_COUNT = 400


def enumerate_support(source: object, prompt: Sequence[int], max_len: int) -> dict[tuple[int, ...], float]:
    """All completions with non-zero probability (depth-first), checking every next-token distribution.

    Returns ``{completion (eos included): probability}``.
    """
    vocab = source.vocab  # type: ignore[attr-defined]
    out: dict[tuple[int, ...], float] = {}
    stack: list[tuple[list[int], float]] = [([], 0.0)]
    while stack:
        gen, lp = stack.pop()
        assert len(gen) <= max_len, f"support longer than {max_len}: {gen}"
        logp = source.next_token_logprobs([*prompt, *gen])  # type: ignore[attr-defined]
        assert logp.shape == (vocab.n_actions,) and logp.dtype == np.float64
        assert logp[vocab.backspace_id] == -np.inf
        assert math.isclose(float(np.exp(logp).sum()), 1.0, abs_tol=1e-12), (gen, np.exp(logp))
        for t in (int(i) for i in np.flatnonzero(np.isfinite(logp))):
            if t == vocab.eos_id:
                out[(*gen, t)] = math.exp(lp + logp[t])
            else:
                stack.append(([*gen, t], lp + float(logp[t])))
    return out


def check_against_samples(
    source: object, seed: int, *, support: dict[tuple[int, ...], float] | None = None
) -> None:
    """Samples are valid; their frequencies match the exact probabilities (sequences and next tokens)."""
    rng = np.random.default_rng(seed)
    vocab = source.vocab  # type: ignore[attr-defined]
    seqs: Counter[tuple[tuple[int, ...], tuple[int, ...]]] = Counter()
    for _ in range(N_SAMPLES):
        prompt, completion = source.sample(rng)  # type: ignore[attr-defined]
        assert completion[-1] == vocab.eos_id and vocab.eos_id not in completion[:-1]
        seqs[(tuple(prompt), tuple(completion))] += 1
    # Whole sequences: TV between the empirical distribution and the exact one (unseen mass counted).
    seen_mass = 0.0
    abs_dev = 0.0
    for (prompt, completion), count in seqs.items():
        assert source.is_valid([*prompt, *completion]), (prompt, completion)  # type: ignore[attr-defined]
        p = math.exp(sequence_logprob(source, prompt, completion))
        if support is not None:
            assert math.isclose(p, support[completion], rel_tol=1e-9)
        assert p > 0.0
        seen_mass += p
        abs_dev += abs(count / N_SAMPLES - p)
    if support is not None:  # single prompt: compare with the full sequence distribution
        expected_tv = 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * N_SAMPLES)) for p in support.values())
        tv = 0.5 * (abs_dev + (1.0 - seen_mass))
        assert tv < TV_RATIO * expected_tv, f"sequence TV {tv:.3f} >= {TV_RATIO} x {expected_tv:.3f}"
    # Next tokens after frequent prefixes.
    nxt: dict[tuple[int, ...], Counter[int]] = {}
    for (prompt, completion), count in seqs.items():
        for i in range(len(completion)):
            nxt.setdefault((*prompt, *completion[:i]), Counter())[completion[i]] += count
    n_checked = 0
    for prefix, counter in nxt.items():
        total = sum(counter.values())
        if total < MIN_PREFIX_COUNT:
            continue
        exact = np.exp(source.next_token_logprobs(list(prefix)))  # type: ignore[attr-defined]
        emp = np.zeros_like(exact)
        for t, c in counter.items():
            emp[t] = c / total
        tv = 0.5 * float(np.abs(exact - emp).sum())
        assert tv < STEP_TV_TOL, f"next-token TV {tv:.3f} after {prefix}"
        n_checked += 1
    assert n_checked >= 1
