"""Paired differences between agents over seeds, with bootstrap intervals from ``scipy.stats.bootstrap``.

A study trains every agent of a seed on the same demonstrations and judges it on the same evaluation states, so
the per-seed difference ``a_s − b_s`` removes what the seed shares (the data, the evaluation draw); the interval
is a bootstrap over seeds of the mean of those differences. With a handful of seeds a bootstrap interval is
rough (it tends to be too narrow); it is what the tables report, beside the per-seed values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["mean_interval", "paired_differences"]


def paired_differences(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of ``a − b`` over paired seeds, with a bootstrap confidence interval (BCa, ``scipy.stats.bootstrap``).

    Args:
        a, b: one value per seed, shape ``(S,)``, paired by position (NaN pairs are left out).
        confidence: level of the interval, in (0, 1).
        n_resamples: bootstrap resamples.
        seed: seed of the resampling (the interval is reproducible).

    Returns:
        ``{"mean", "low", "high", "n"}``: the mean difference, the interval (NaN with fewer than two pairs; the
        mean itself when every difference is equal, where there is nothing to resample), and the pair count.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, or ``confidence`` is not in (0, 1).

    Example:
        >>> d = paired_differences([0.9, 0.8, 0.85, 0.95, 0.9], [0.7, 0.75, 0.7, 0.8, 0.72])
        >>> round(d["mean"], 3), d["low"] > 0, d["n"]
        (0.146, True, 5.0)
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-D and paired, got shapes {x.shape} and {y.shape}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    d = x - y
    d = d[~np.isnan(d)]
    n = len(d)
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0.0}
    mean = float(d.mean())
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": float(n)}
    if np.ptp(d) <= 1e-12 * max(1.0, abs(mean)):  # all equal: the bootstrap distribution is one point
        return {"mean": mean, "low": mean, "high": mean, "n": float(n)}
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's warning for a nearly degenerate resample distribution
        res = bootstrap(
            (d,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):  # BCa undefined (e.g. two distinct values): percentile instead
        res = bootstrap(
            (d,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"mean": mean, "low": low, "high": high, "n": float(n)}


def mean_interval(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean over seeds of ``values`` (shape ``(S,)``, NaN left out) and its bootstrap interval.

    The interval comes from ``scipy.stats.bootstrap`` (BCa, percentile where BCa is undefined); it is
    ``(nan, nan)`` with fewer than two values and the mean itself when every value is equal.

    Example:
        >>> m, lo, hi = mean_interval([0.5, 0.6, 0.7, 0.65, 0.55])
        >>> round(m, 2), lo < m < hi
        (0.6, True)
    """
    x = np.asarray(values, dtype=float)
    d = paired_differences(x, np.zeros_like(x), confidence=confidence, n_resamples=n_resamples, seed=seed)
    return d["mean"], d["low"], d["high"]
