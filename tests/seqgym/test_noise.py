"""Mistakes that are mistakes: noise draws wrong tokens among those the source rules out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seqgym.data import (
    Trajectory,
    UniformNoise,
    augment,
    collect,
    inserted_allowed_share,
    mistake_candidates,
    uniform_noise,
)
from seqgym.sources.arithmetic import Arithmetic
from seqgym.sources.dyck import Dyck
from seqgym.sources.markov import Markov
from seqgym.vocab import Vocabulary

SOURCES = [Dyck(), Markov(6, forbidden_fraction=0.5, eos_prob=0.2, max_length=8, seed=3), Arithmetic()]


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: type(s).__name__)
def test_every_inserted_token_is_ruled_out_by_toy_sources(source) -> None:
    clean = collect(source, 200, np.random.default_rng(0))
    noisy = augment(clean, 0.3, np.random.default_rng(1), source=source)
    assert sum(t.n_mistakes for t in noisy) > 50
    assert inserted_allowed_share(noisy, source) == 0.0
    for t in noisy:
        assert t.final() == clean[noisy.index(t)].final()
    # without the source, uniform noise often draws a token the language allows there
    blind = augment(clean, 0.3, np.random.default_rng(1))
    if isinstance(source, Dyck):
        assert inserted_allowed_share(blind, source) > 0.2


def test_candidates_are_the_ruled_out_tokens_or_else_all_but_the_experts() -> None:
    src = Dyck()
    v = src.vocab
    t = Trajectory.from_completion([], [v.token_to_id("("), v.token_to_id(")"), v.eos_id], vocab=v)
    cand = mistake_candidates(t, np.array([0, 1, 2]), src)
    # at the empty state only "(" and "[" may start: ")" and "]" are the mistakes
    assert cand[0].tolist() == [v.tokens[i] in (")", "]") for i in range(v.n_tokens)]
    assert not cand[1, v.token_to_id(")")] and cand[1, v.token_to_id("]")]
    no_source = mistake_candidates(t, np.array([0, 1]), None)
    assert no_source.sum(axis=1).tolist() == [v.n_tokens - 1, v.n_tokens - 1]
    assert not no_source[0, v.token_to_id("(")]


def test_uniform_noise_without_source_is_the_plain_draw() -> None:
    v = Vocabulary(["a", "b", "c"])
    t = Trajectory.from_completion([], [0, 1, 2, v.eos_id], vocab=v)
    pos = np.array([0, 2, 3])
    a = UniformNoise()(t, pos, np.random.default_rng(4))
    b = uniform_noise(t, pos, np.random.default_rng(4))
    assert a.tolist() == b.tolist()


def test_allowed_share_is_nan_without_probabilities_or_insertions() -> None:
    src = Dyck()
    clean = collect(src, 5, np.random.default_rng(0))
    assert math.isnan(inserted_allowed_share(clean, src))
    assert math.isnan(inserted_allowed_share(clean, object()))


@pytest.mark.parametrize("floor", [0.5, float("nan")])
def test_bad_floor_is_refused(floor: float) -> None:
    with pytest.raises(ValueError, match="floor"):
        UniformNoise(Dyck(), floor=floor)
