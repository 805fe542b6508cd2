"""Built-in sources: exact probabilities agree with sampling, validity equals the support, bad input fails."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from source_checks import check_against_samples, enumerate_support

from seqgym.sources import registry
from seqgym.sources.arithmetic import Arithmetic
from seqgym.sources.base import Source, has_exact_probabilities, has_validity, sequence_logprob
from seqgym.sources.dyck import Dyck
from seqgym.sources.markov import Markov
from seqgym.sources.registry import list_sources, make_source, register_source
from seqgym.sources.text import Text
from seqgym.sources.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    as_tokenizer,
    tokenizer_from_dict,
    tokenizer_from_json,
)

# ------------------------------------------------------------------------------------------------------------
# Dyck


def test_dyck_vocab_and_protocol() -> None:
    src = Dyck(3, max_depth=2, max_length=6)
    assert isinstance(src, Source) and has_exact_probabilities(src) and has_validity(src)
    assert src.vocab.tokens[:7] == ["(", ")", "[", "]", "{", "}", "<eos>"]
    assert src.vocab.n_actions == 8
    assert src.max_sequence_length == 7
    assert src.name == "dyck"
    assert repr(src) == "Dyck(n_types=3, p_open=0.5, p_end=0.3, max_depth=2, max_length=6)"
    many = Dyck(6)
    assert many.vocab.tokens[8:12] == ["o4", "c4", "o5", "c5"] and many.vocab.separator == " "


def test_dyck_exact_probabilities_sum_to_one_and_match_samples() -> None:
    src = Dyck(2, p_open=0.4, p_end=0.35, max_depth=2, max_length=6)
    support = enumerate_support(src, [], src.max_sequence_length)
    assert math.isclose(sum(support.values()), 1.0, abs_tol=1e-12)
    assert all(src.is_valid(list(s)) for s in support)
    assert max(len(s) for s in support) == src.max_sequence_length
    check_against_samples(src, seed=1, support=support)


def test_dyck_default_matches_samples() -> None:
    check_against_samples(Dyck(), seed=2)


def test_dyck_sequence_logprob_hand_computed() -> None:
    src = Dyck(2, p_open=0.5, p_end=0.3, max_depth=4, max_length=16)
    seq = src.vocab.encode(["(", ")", "[", "]", "<eos>"])
    # "(" 1/2 (first bracket must open, uniform kind), ")" 1-p_open, "[" (1-p_end)/2, "]" 1-p_open, eos p_end.
    expected = 0.5 * 0.5 * (0.7 / 2) * 0.5 * 0.3
    assert math.isclose(sequence_logprob(src, [], seq), math.log(expected), rel_tol=1e-12)
    # Limits force moves: depth 1 forces a close, a full length forces eos.
    tight = Dyck(1, p_end=0.3, max_depth=1, max_length=4)
    seq = tight.vocab.encode(["(", ")", "(", ")", "<eos>"])
    assert math.isclose(sequence_logprob(tight, [], seq), math.log(0.7), rel_tol=1e-12)


def test_dyck_rejects_and_gives_minus_inf_off_support() -> None:
    src = Dyck(2, max_depth=2, max_length=6)
    enc = src.vocab.encode
    bad = [
        enc(["(", "]", "<eos>"]),  # wrong closer
        enc([")", "(", "<eos>"]),  # closer on an empty stack
        enc(["(", "<eos>"]),  # unbalanced
        enc(["<eos>"]),  # empty sequence
        enc(["(", ")"]),  # no eos
        enc(["(", ")", "<eos>", "<eos>"]),  # eos twice
        enc(["(", "(", "(", ")", ")", ")", "<eos>"]),  # depth 3 > max_depth
        enc(["(", ")"] * 4 + ["<eos>"]),  # 8 brackets > max_length
        [0, src.vocab.backspace_id, 1, src.vocab.eos_id],  # backspace inside a sequence
    ]
    for seq in bad:
        assert not src.is_valid(seq), src.vocab.decode(seq)
    assert src.is_valid(enc(["(", "[", "]", ")", "<eos>"]))
    for prefix in (enc(["(", "]"]), enc(["(", ")", "<eos>"]), enc(["(", "(", "("])):
        lp = src.next_token_logprobs(prefix)
        assert lp.shape == (src.vocab.n_actions,) and np.all(lp == -np.inf)
    with pytest.raises(ValueError, match="backspace"):
        src.next_token_logprobs([0, src.vocab.backspace_id])


def test_dyck_seeded_reproducibility() -> None:
    src = Dyck()
    a = [src.sample(np.random.default_rng(7)) for _ in range(3)]
    b = [src.sample(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    assert [src.sample(rng1) for _ in range(20)] == [src.sample(rng2) for _ in range(20)]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_types": 0}, ValueError, "n_types"),
        ({"n_types": 2.0}, TypeError, "n_types"),
        ({"max_depth": 0}, ValueError, "max_depth"),
        ({"max_length": 0}, ValueError, "max_length"),
        ({"max_length": 7}, ValueError, "use 6 or 8"),
        ({"p_open": 0.0}, ValueError, "p_open"),
        ({"p_end": 1.0}, ValueError, "p_end"),
        ({"p_end": -0.1}, ValueError, "p_end"),
    ],
)
def test_dyck_bad_arguments(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Dyck(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# Markov


def test_markov_construction_and_protocol() -> None:
    src = Markov(8, forbidden_fraction=0.3, eos_prob=0.1, max_length=20, seed=0)
    assert isinstance(src, Source) and has_exact_probabilities(src) and has_validity(src)
    assert src.name == "markov" and src.max_sequence_length == 21 and src.vocab.n_actions == 10
    assert repr(src) == "Markov(n_tokens=8, forbidden_fraction=0.3, eos_prob=0.1, max_length=20, seed=0)"
    assert np.all((~src.allowed).sum(axis=1) == 2)  # round(0.3 * 8) forbidden per row
    assert np.all(src.transition_matrix[~src.allowed] == 0.0)
    np.testing.assert_allclose(src.transition_matrix.sum(axis=1), 1.0)
    np.testing.assert_allclose(src.initial_probs.sum(), 1.0)
    same, other = Markov(8, seed=0), Markov(8, seed=1)
    np.testing.assert_array_equal(same.transition_matrix, src.transition_matrix)
    assert not np.array_equal(other.allowed, src.allowed)
    assert Markov(1, forbidden_fraction=0.9).allowed.all()  # a lone token may always follow itself


def test_markov_exact_probabilities_sum_to_one_and_match_samples() -> None:
    src = Markov(3, forbidden_fraction=0.34, eos_prob=0.3, max_length=4, seed=3)
    support = enumerate_support(src, [], src.max_sequence_length)
    assert math.isclose(sum(support.values()), 1.0, abs_tol=1e-12)
    assert all(src.is_valid(list(s)) for s in support)
    assert max(len(s) for s in support) == src.max_sequence_length
    check_against_samples(src, seed=4, support=support)


def test_markov_default_matches_samples() -> None:
    check_against_samples(Markov(), seed=5)


def test_markov_sequence_logprob_hand_computed() -> None:
    src = Markov(4, forbidden_fraction=0.25, eos_prob=0.2, max_length=3, seed=2)
    a = 0
    b = int(np.flatnonzero(src.allowed[0])[0])
    c = int(np.flatnonzero(src.allowed[b])[0])
    expected = (
        src.initial_probs[a]
        * 0.8
        * src.transition_matrix[a, b]
        * 0.8
        * src.transition_matrix[b, c]
        * 1.0  # eos forced after max_length = 3 tokens
    )
    assert math.isclose(
        sequence_logprob(src, [], [a, b, c, src.vocab.eos_id]), math.log(expected), rel_tol=1e-12
    )
    assert math.isclose(
        sequence_logprob(src, [], [a, src.vocab.eos_id]), math.log(src.initial_probs[a] * 0.2)
    )


def test_markov_rejects_and_gives_minus_inf_off_support() -> None:
    src = Markov(5, forbidden_fraction=0.4, eos_prob=0.2, max_length=4, seed=0)
    eos = src.vocab.eos_id
    a = 0
    bad_b = int(np.flatnonzero(~src.allowed[a])[0])
    ok_b = int(np.flatnonzero(src.allowed[a])[0])
    loop = next(i for i in range(5) if src.allowed[i, i])
    assert src.is_valid([a, ok_b, eos])
    for seq in (
        [a, bad_b, eos],  # forbidden transition
        [eos],  # empty sequence
        [a, ok_b],  # no eos
        [a, eos, eos],  # eos twice
        [loop] * 5 + [eos],  # longer than max_length
        [a, src.vocab.backspace_id, eos],
    ):
        assert not src.is_valid(seq), seq
    for prefix in ([a, bad_b], [a, eos], [loop] * 5):
        assert np.all(src.next_token_logprobs(prefix) == -np.inf)
    lp = src.next_token_logprobs([loop] * 4)  # full length: eos forced
    assert lp[eos] == 0.0 and np.all(np.delete(lp, eos) == -np.inf)
    with pytest.raises(ValueError, match="pad"):
        src.next_token_logprobs([src.vocab.pad_id])


def test_markov_seeded_reproducibility() -> None:
    rng1, rng2 = np.random.default_rng(11), np.random.default_rng(11)
    # Same construction seed and same sampling seed: same samples, also from a freshly built source.
    assert [Markov(seed=4).sample(rng1) for _ in range(20)] == [
        Markov(seed=4).sample(rng2) for _ in range(20)
    ]
    a = [Markov(seed=4).sample(np.random.default_rng(0)) for _ in range(5)]
    b = [Markov(seed=5).sample(np.random.default_rng(0)) for _ in range(5)]
    assert a != b


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_tokens": 0}, ValueError, "n_tokens"),
        ({"n_tokens": 3.5}, TypeError, "n_tokens"),
        ({"forbidden_fraction": 1.0}, ValueError, "forbidden_fraction"),
        ({"forbidden_fraction": -0.1}, ValueError, "forbidden_fraction"),
        ({"eos_prob": 0.0}, ValueError, "eos_prob"),
        ({"eos_prob": 1.5}, ValueError, "eos_prob"),
        ({"max_length": 0}, ValueError, "max_length"),
        ({"seed": None}, TypeError, "seed"),
    ],
)
def test_markov_bad_arguments(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Markov(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# Arithmetic


class _Joint:
    """View a prompted source as one whose sample is ``([], prompt + completion)`` (joint probabilities)."""

    def __init__(self, source: Arithmetic) -> None:
        self.source = source
        self.vocab = source.vocab

    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        prompt, completion = self.source.sample(rng)
        return [], prompt + completion

    def next_token_logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        return self.source.next_token_logprobs(prefix)

    def is_valid(self, sequence: Sequence[int]) -> bool:
        return self.source.is_valid(sequence)


@pytest.mark.parametrize("ops", [("+", "-"), ("-",), ("+",)])
def test_arithmetic_joint_probabilities_are_exact(ops: tuple[str, ...]) -> None:
    src = Arithmetic(base=3, n_digits=2, ops=ops)
    n = 9
    support = enumerate_support(src, [], src.max_sequence_length)
    expected: dict[tuple[int, ...], float] = {}
    for op in ops:
        pairs = [(a, b) for a in range(n) for b in range(n) if op == "+" or a >= b]
        for a, b in pairs:
            expected[tuple(src.encode_problem(a, op, b))] = 1.0 / len(ops) / len(pairs)
    assert support.keys() == expected.keys()
    for seq, p in support.items():
        assert math.isclose(p, expected[seq], rel_tol=1e-9)
        assert src.is_valid(list(seq))
    assert max(len(s) for s in support) == src.max_sequence_length
    small = Arithmetic(base=2, n_digits=2, ops=ops)  # few outcomes, so the sampling test is sharp
    check_against_samples(
        _Joint(small), seed=6, support=enumerate_support(small, [], small.max_sequence_length)
    )


def test_arithmetic_answers_and_point_mass() -> None:
    src = Arithmetic(base=16, n_digits=2)
    assert src.vocab.tokens[:19] == [*"0123456789abcdef", "+", "-", "="]
    assert src.max_sequence_length == 6 + 3 + 1  # ff+ff=1fe<eos>
    assert src.vocab.decode(src.encode_problem(255, "+", 255)) == "ff+ff=1fe<eos>"
    assert src.vocab.decode(src.encode_problem(10, "-", 10)) == "0a-0a=0<eos>"
    assert Arithmetic(base=2, n_digits=3, ops=("-",)).max_sequence_length == 8 + 3 + 1
    rng = np.random.default_rng(8)
    for _ in range(200):
        prompt, completion = src.sample(rng)
        seq = prompt + completion
        assert len(prompt) == src.prompt_length(seq) == 6 and src.is_valid(seq)
        text = src.vocab.decode(prompt)
        a, b = int(text[:2], 16), int(text[3:5], 16)
        assert int(src.vocab.decode(completion[:-1]), 16) == (a + b if text[2] == "+" else a - b) >= 0
        assert sequence_logprob(src, prompt, completion) == 0.0
        for i in range(len(completion)):
            lp = src.next_token_logprobs(seq[: 6 + i])
            assert lp[completion[i]] == 0.0 and np.sum(np.isfinite(lp)) == 1


def test_arithmetic_rejects_wrong_answers_and_malformed_prompts() -> None:
    src = Arithmetic(base=10, n_digits=2)
    enc = src.vocab.encode
    eos = src.vocab.eos_id
    assert src.is_valid([*enc(list("12-05=7")), eos])
    bad = [
        [*enc(list("12-05=8")), eos],  # wrong answer
        [*enc(list("12-05=07")), eos],  # leading zero
        [*enc(list("12-05=7"))],  # no eos
        [*enc(list("05-12=")), eos],  # a < b with "-"
        [*enc(list("5-12=7")), eos],  # operand not zero-padded
        [*enc(list("12+05+7")), eos],  # no "="
        [*enc(list("12-05=7")), eos, eos],
    ]
    for seq in bad:
        assert not src.is_valid(seq), src.vocab.decode(seq)
    assert not Arithmetic(ops=("+",)).is_valid([*enc(list("12-05=7")), eos])  # operator not drawn
    for prefix in (
        enc(list("12-05=8")),
        [*enc(list("12-05=7")), eos],
        enc(list("05-1")),
        enc(list("1=")),
        [eos],
    ):
        assert np.all(src.next_token_logprobs(prefix) == -np.inf), src.vocab.decode(prefix)
    with pytest.raises(ValueError, match="no '='"):
        src.prompt_length(enc(list("12+05")))
    with pytest.raises(ValueError, match="a >= b"):
        src.encode_problem(3, "-", 4)
    with pytest.raises(ValueError, match="out of range"):
        src.encode_problem(100, "+", 4)


def test_arithmetic_seeded_reproducibility() -> None:
    src = Arithmetic(base=7, n_digits=3)
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    assert [src.sample(rng1) for _ in range(20)] == [src.sample(rng2) for _ in range(20)]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"base": 1}, ValueError, "base"),
        ({"base": 17}, ValueError, "base"),
        ({"base": 10.0}, TypeError, "base"),
        ({"n_digits": 0}, ValueError, "n_digits"),
        ({"ops": ()}, ValueError, "ops"),
        ({"ops": ("*",)}, ValueError, "ops"),
        ({"ops": ("+", "+")}, ValueError, "ops"),
        ({"ops": "+-"}, TypeError, "ops"),
    ],
)
def test_arithmetic_bad_arguments(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Arithmetic(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# Tokenizers and Text (small corpora built here; never the shared data folder)

CORPUS = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity.\n"
) * 4


def test_char_tokenizer_roundtrip_unk_and_serialisation() -> None:
    tok = CharTokenizer.train("banana bread", min_frequency=2)
    assert tok.tokens == ["a", "b", "n", "<unk>"]  # " ", "d", "e", "r" occur once
    assert tok.encode("nab!") == [2, 0, 1, 3] and tok.decode([2, 0, 1]) == "nab"
    full = CharTokenizer.train(CORPUS)
    assert full.decode(full.encode(CORPUS)) == CORPUS
    assert CharTokenizer.train(CORPUS) == full  # deterministic
    back = tokenizer_from_json(full.to_json())
    assert back == full and back.encode("worst") == full.encode("worst")
    assert tokenizer_from_dict(json.loads(json.dumps(full.to_dict()))) == full
    strict = CharTokenizer.train("abc", unk_token=None)
    assert strict.tokens == ["a", "b", "c"]
    with pytest.raises(ValueError, match="unk_token"):
        strict.encode("abd")
    with pytest.raises(ValueError, match="min_frequency"):
        CharTokenizer.train("abc", min_frequency=0)
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="out of range"):
        strict.decode([3])
    with pytest.raises(ValueError, match="type"):
        tokenizer_from_dict({"type": "word"})


def test_bpe_tokenizer_deterministic_and_serialisable() -> None:
    pytest.importorskip("tokenizers")
    tok = BPETokenizer.train(CORPUS, vocab_size=300)
    assert len(tok.tokens) == 300 and len(set(tok.tokens)) == 300
    ids = tok.encode("it was the age of times")
    assert len(ids) < len("it was the age of times")
    unseen = "Größe: 42 € — ok"  # characters never seen in training still round-trip (byte level)
    assert tok.decode(tok.encode(unseen)) == unseen
    again = BPETokenizer.train(CORPUS, vocab_size=300)
    assert again == tok and again.to_json() == tok.to_json()
    back = tokenizer_from_json(tok.to_json())
    assert isinstance(back, BPETokenizer) and back == tok and back.encode(CORPUS) == tok.encode(CORPUS)
    import tokenizers

    assert isinstance(as_tokenizer(tok.tokenizer), BPETokenizer)
    assert as_tokenizer(tokenizers.Tokenizer.from_str(tok.tokenizer.to_str())) == tok
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(TypeError, match="tokenizer"):
        as_tokenizer(42)


def test_bpe_missing_library_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ImportError, match=r'pip install "seqgym\[text\]"'):
        BPETokenizer.train(CORPUS, vocab_size=300)
    with pytest.raises(ImportError, match=r'pip install "seqgym\[text\]"'):
        Text(text=CORPUS, tokenizer="bpe", prompt_length=2, completion_length=3)
    Text(text=CORPUS, prompt_length=2, completion_length=3)  # the char tokenizer needs nothing


def test_text_char_windows() -> None:
    src = Text(text=CORPUS, prompt_length=5, completion_length=7)
    assert isinstance(src, Source) and not has_exact_probabilities(src) and not has_validity(src)
    assert not hasattr(src, "next_token_logprobs")
    assert src.name == "text" and src.max_sequence_length == 13
    assert src.vocab.tokens[: src.vocab.n_tokens] == src.tokenizer.tokens
    assert src.vocab.eos == "<eos>" and len(src.ids) == len(CORPUS)
    rng = np.random.default_rng(0)
    for _ in range(50):
        prompt, completion = src.sample(rng)
        assert len(prompt) == 5 and len(completion) == 8 and completion[-1] == src.vocab.eos_id
        assert src.decode(prompt + completion) in CORPUS
        src.vocab.check_ids(prompt, allow_eos=False)
        assert src.prompt_length(prompt + completion) == 5
    assert src.decode(src.encode_text("the age")) == "the age"
    a = [src.sample(np.random.default_rng(4)) for _ in range(3)]
    assert a == [src.sample(np.random.default_rng(4)) for _ in range(3)]
    tiny = Text(text="abcdef", prompt_length=0, completion_length=6)  # ids 0..5, <unk> 6, eos 7
    assert tiny.sample(rng) == ([], [0, 1, 2, 3, 4, 5, 7])


def test_text_train_test_split_shares_the_tokenizer() -> None:
    corpus = CORPUS + "Zebras quietly jog.\n"  # "Z", "q", "j" and "." appear late
    kw: dict[str, Any] = {"text": corpus, "prompt_length": 3, "completion_length": 4, "test_fraction": 0.05}
    train, test = Text(split="train", **kw), Text(split="test", **kw)
    assert train.vocab == test.vocab and train.tokenizer == test.tokenizer
    cut = round(len(corpus) * 0.95)
    assert train.decode(train.ids.tolist()) == corpus[:cut]
    assert len(train.ids) + len(test.ids) == len(corpus)
    unk = train.tokenizer.tokens.index("<unk>")
    assert unk in test.ids.tolist()  # a held-out-only character
    assert "Z" not in train.tokenizer.tokens and "Z" in Text(**kw).tokenizer.tokens  # "all" sees everything
    # A held-out file with the training tokenizer passed along, also through its JSON.
    other = Text(
        text="the worst of times.\n" * 3, tokenizer=train.tokenizer, prompt_length=3, completion_length=4
    )
    assert other.vocab == train.vocab
    rebuilt = tokenizer_from_json(train.tokenizer.to_json())  # type: ignore[attr-defined]
    assert Text(text=corpus, tokenizer=rebuilt, prompt_length=3, completion_length=4).vocab == train.vocab


def test_text_bpe_and_files(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    (tmp_path / "a.txt").write_text(CORPUS[:200], encoding="utf-8")  # no trailing newline
    (tmp_path / "b.txt").write_text(CORPUS[200:], encoding="utf-8")
    src = Text(
        [tmp_path / "a.txt", str(tmp_path / "b.txt")], tokenizer="bpe", vocab_size=290, completion_length=6
    )
    assert src.vocab.n_tokens == 290 and src.max_sequence_length == 32 + 6 + 1
    assert src.decode(src.ids.tolist()) == CORPUS[:200] + "\n" + CORPUS[200:]
    prompt, completion = src.sample(np.random.default_rng(1))
    assert (
        len(prompt) == 32 and len(completion) == 7 and src.decode(prompt + completion) in src.decode(src.ids)
    )
    assert "a.txt" in repr(src)
    one = Text(tmp_path / "a.txt", prompt_length=2, completion_length=3)
    assert len(one.ids) == 200
    kw: dict[str, Any] = {"tokenizer": "bpe", "vocab_size": 290, "prompt_length": 3, "completion_length": 4}
    assert Text(text=CORPUS, **kw).tokenizer == Text(text=CORPUS, **kw).tokenizer  # deterministic


def test_text_special_names_avoid_tokenizer_strings() -> None:
    tok = CharTokenizer.train(CORPUS, unk_token="<eos>")
    src = Text(text=CORPUS, tokenizer=tok, prompt_length=2, completion_length=3)
    assert src.vocab.eos == "<eos_1>" and src.vocab.tokens[tok.unk_id] == "<eos>"  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({}, ValueError, "exactly one corpus"),
        ({"text": "abc", "paths": "x.txt"}, ValueError, "exactly one corpus"),
        ({"paths": "/nonexistent/novel.txt"}, FileNotFoundError, "novel.txt"),
        ({"paths": []}, ValueError, "at least one"),
        ({"text": ""}, ValueError, "empty"),
        ({"text": CORPUS, "tokenizer": "word"}, ValueError, "'char', 'bpe'"),
        ({"text": CORPUS, "tokenizer": 3}, TypeError, "tokenizer"),
        ({"text": CORPUS, "split": "valid"}, ValueError, "split"),
        ({"text": CORPUS, "test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"text": CORPUS, "prompt_length": -1}, ValueError, "prompt_length"),
        ({"text": CORPUS, "completion_length": 0}, ValueError, "completion_length"),
        ({"text": CORPUS, "completion_length": 2.5}, TypeError, "completion_length"),
        (
            {"text": "short text", "prompt_length": 8, "completion_length": 8},
            ValueError,
            "fewer than one window",
        ),
        ({"text": CORPUS, "prompt_length": 300, "split": "test"}, ValueError, "'test' split"),
        ({"text": CORPUS, "min_frequency": 0}, ValueError, "min_frequency"),
    ],
)
def test_text_bad_arguments(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Text(**kwargs)


# ------------------------------------------------------------------------------------------------------------
# Registry


def test_registry_builds_the_builtins() -> None:
    assert {"arithmetic", "dyck", "markov", "text"} <= set(list_sources())
    assert list_sources() == sorted(list_sources())
    assert repr(make_source("dyck", n_types=3)) == repr(Dyck(3))
    assert repr(make_source("markov", seed=3)) == repr(Markov(seed=3))
    assert repr(make_source("arithmetic", base=8)) == repr(Arithmetic(base=8))
    assert isinstance(make_source("text", text=CORPUS, prompt_length=2, completion_length=2), Text)
    with pytest.raises(KeyError, match="known sources: arithmetic, dyck"):
        make_source("dyk")
    with pytest.raises(TypeError, match="n_typez"):
        make_source("dyck", n_typez=3)


def test_registry_register_and_overwrite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_source("tiny", lambda **kw: Dyck(1, max_length=4, **kw))
    assert "tiny" in list_sources() and make_source("tiny", p_end=0.5).p_end == 0.5
    with pytest.raises(ValueError, match="already registered"):
        register_source("tiny", Dyck)
    register_source("tiny", Markov, overwrite=True)
    assert isinstance(make_source("tiny"), Markov)
    with pytest.raises(TypeError, match="callable"):
        register_source("broken", "Dyck")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty"):
        register_source("", Dyck)
