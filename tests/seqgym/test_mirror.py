"""Mirror: ``w | reverse(w) eos``, exact probabilities, validity, the registered env and recovery states."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from source_checks import check_against_samples, enumerate_support

from seqgym.metrics import sample_recovery_states, validity_rate
from seqgym.registration import make_env
from seqgym.sources import Mirror, make_source
from seqgym.sources.base import Source, has_exact_probabilities, has_validity, sequence_logprob

SRC = Mirror(3, min_half=2, max_half=4)
V = SRC.vocab
A, B, C, SEP, EOS = 0, 1, 2, SRC.separator_id, V.eos_id


def test_vocab_and_protocol() -> None:
    assert V.tokens[: V.n_tokens] == ["a", "b", "c", "|"]
    assert (V.eos_id, V.backspace_id, V.n_actions) == (4, 5, 6)
    assert isinstance(SRC, Source) and has_exact_probabilities(SRC) and has_validity(SRC)
    assert SRC.max_sequence_length == 10
    assert repr(SRC) == "Mirror(n_symbols=3, min_half=2, max_half=4)"
    assert make_source("mirror", n_symbols=4).vocab.n_tokens == 5


def test_exact_probabilities_enumerate_the_whole_language() -> None:
    """Every word of length 2..4 over 3 symbols, each with probability (1/3 per length)·3^-L, nothing else."""
    support = enumerate_support(SRC, [], SRC.max_sequence_length)
    assert len(support) == 9 + 27 + 81
    for completion, p in support.items():
        half = (len(completion) - 2) // 2
        assert p == pytest.approx((1 / 3) * 3.0**-half, rel=1e-12)
        assert SRC.is_valid(list(completion))
    assert sum(support.values()) == pytest.approx(1.0, abs=1e-12)
    check_against_samples(SRC, seed=3, support=support)


def test_default_matches_samples() -> None:
    check_against_samples(Mirror(), seed=4)


def test_second_half_is_forced_and_everything_else_is_ruled_out() -> None:
    lp = SRC.next_token_logprobs([A, B, C, SEP, C])
    assert np.flatnonzero(np.isfinite(lp)).tolist() == [B] and lp[B] == 0.0
    lp = SRC.next_token_logprobs([A, B, SEP, B, A])  # the mirror is complete: eos forced
    assert np.flatnonzero(np.isfinite(lp)).tolist() == [EOS]
    first = SRC.next_token_logprobs([A])  # under min_half: separator and eos ruled out
    assert first[SEP] == -math.inf and first[EOS] == -math.inf
    assert np.exp(first[:3]) == pytest.approx([1 / 3] * 3)
    # hazard of the uniform length 2..4: after 2 symbols P(sep) = 1/3, after 3: 1/2, after 4: 1
    assert [math.exp(SRC.next_token_logprobs([A] * k)[SEP]) for k in (2, 3, 4)] == pytest.approx(
        [1 / 3, 1 / 2, 1]
    )
    assert math.exp(sequence_logprob(SRC, [], [A, B, SEP, B, A, EOS])) == pytest.approx(1 / 3 * 1 / 9)


@pytest.mark.parametrize(
    "prefix",
    [
        [A, B, SEP, A],  # a wrong mirrored symbol
        [A, SEP, A],  # first half too short
        [A, A, A, A, A],  # first half too long
        [A, B, SEP, B, A, EOS],  # after eos
        [A, B, SEP, SEP],  # a second separator
    ],
)
def test_prefix_off_the_support_gets_all_minus_inf(prefix: list[int]) -> None:
    assert np.isneginf(SRC.next_token_logprobs(prefix)).all()


def test_is_valid_accepts_exactly_the_mirrors() -> None:
    assert SRC.is_valid([A, B, SEP, B, A, EOS])
    for bad in (
        [A, B, SEP, A, B, EOS],  # not reversed
        [A, B, SEP, B, A],  # no eos
        [A, SEP, A, EOS],  # too short
        [A] * 5 + [SEP] + [A] * 5 + [EOS],  # too long
        [A, B, SEP, B, EOS],  # unbalanced
        [A, SEP, SEP, A, EOS],  # a separator inside w
        [],
    ):
        assert not SRC.is_valid(bad), bad


def test_seeded_sampling_is_reproducible() -> None:
    a = [SRC.sample(np.random.default_rng(5)) for _ in range(3)]
    b = [SRC.sample(np.random.default_rng(5)) for _ in range(3)]
    assert a == b and validity_rate(SRC, [p + c for p, c in a]) == 1.0


def test_registered_env_and_recovery_states() -> None:
    env = gym.make("seqgym/Mirror-v0", min_half=1, max_half=5)
    assert env.unwrapped.max_length == 12 and env.unwrapped.max_steps == 36
    env = make_env("mirror")
    env.reset(seed=0)
    states = sample_recovery_states(env.source, 50, seed=1)
    for g, h in zip(states.clean, states.injected):
        assert env.source.next_token_logprobs(g)[h[-1]] == -math.inf


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_symbols": 1}, ValueError, "n_symbols in \\[2, 26\\]"),
        ({"n_symbols": 27}, ValueError, "n_symbols in \\[2, 26\\]"),
        ({"min_half": 0}, ValueError, "min_half >= 1"),
        ({"min_half": 4, "max_half": 3}, ValueError, "max_half >= min_half"),
        ({"max_half": 2.5}, TypeError, "max_half must be an int"),
        ({"n_symbols": True}, TypeError, "n_symbols must be an int"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Mirror(**kwargs)  # type: ignore[arg-type]


def test_prefix_with_bad_ids_is_rejected() -> None:
    with pytest.raises(ValueError):
        SRC.next_token_logprobs([A, V.backspace_id])
