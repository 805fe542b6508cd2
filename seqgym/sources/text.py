"""Real text: random windows of a tokenized corpus, with a held-out split. No exact probabilities."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqgym._options import TEXT_SPLITS, TOKENIZER_NAMES, TextSplit, TokenizerName, check_option
from seqgym.sources.tokenizers import BPETokenizer, CharTokenizer, TextTokenizer, as_tokenizer
from seqgym.vocab import Vocabulary

__all__ = ["Text"]


def _free_name(name: str, taken: set[str]) -> str:
    """``name``, or ``<name_1>``-style variants of it, whichever is first not in ``taken``."""
    if name not in taken:
        return name
    inner = name.strip("<>")
    i = 1
    while f"<{inner}_{i}>" in taken:
        i += 1
    return f"<{inner}_{i}>"


class Text:
    """Random windows of a text corpus: ``prompt_length`` tokens of prompt, ``completion_length`` to continue.

    The corpus is one string (``text=``) or the contents of one or more files (``paths``, read with
    ``encoding`` and concatenated, a newline added between files that do not end with one).

    Splits: with ``split="train"`` the source uses the first ``1 - test_fraction`` of the corpus characters,
    with ``split="test"`` the rest, and with ``split="all"`` (default) everything. The tokenizer is trained
    on the training part (the whole corpus for ``"all"``), so ``Text(p, split="train")`` and
    ``Text(p, split="test")`` share the same tokenizer and vocabulary; a held-out book in its own file works
    the same way by passing the training source's ``tokenizer`` object.

    Tokenizers:

    - ``"char"``: one token per character (:class:`~seqgym.sources.tokenizers.CharTokenizer`): the sorted
      characters seen at least ``min_frequency`` times (default 1), then ``"<unk>"`` for the others.
    - ``"bpe"``: byte-level BPE trained here with the ``tokenizers`` library
      (:class:`~seqgym.sources.tokenizers.BPETokenizer`, ``pip install "seqgym[text]"``), ``vocab_size``
      tokens (default 512) and merge ``min_frequency`` (default 2).
    - an object: a ``CharTokenizer`` / ``BPETokenizer`` (e.g. another source's ``tokenizer``, or one rebuilt
      with :func:`~seqgym.sources.tokenizers.tokenizer_from_json`), a ``tokenizers.Tokenizer`` or a
      ``transformers`` fast tokenizer (e.g. GPT-2's); used as is (``vocab_size`` and ``min_frequency`` are
      then ignored, as ``vocab_size`` is for ``"char"``).

    The vocabulary's ordinary tokens are the tokenizer's tokens with the same ids, then ``eos``, ``backspace``
    and ``pad`` (renamed ``<eos_1>`` etc. if the tokenizer already has such a string).

    A sample is a uniformly random window of ``prompt_length + completion_length`` consecutive tokens of the
    split: ``(window[:prompt_length], window[prompt_length:] + [eos])``. Real text has no exact probabilities
    and no validity test: this source has neither ``next_token_logprobs`` nor ``is_valid``.

    Args:
        paths: a text file path or a sequence of them (exclusive with ``text``).
        text: the corpus as a string (exclusive with ``paths``).
        tokenizer: ``"char"``, ``"bpe"`` or a tokenizer object (see above).
        vocab_size: number of BPE tokens (>= 256), for ``"bpe"`` only.
        min_frequency: minimum count of a character (``"char"``) or of a merged pair (``"bpe"``).
        prompt_length: tokens in each prompt (>= 0).
        completion_length: tokens in each completion before ``eos`` (>= 1).
        split: ``"all"``, ``"train"`` or ``"test"``.
        test_fraction: share of the corpus characters held out for ``"test"``, in ``(0, 1)``.
        encoding: encoding of the files.

    Attributes:
        vocab: the :class:`~seqgym.vocab.Vocabulary`.
        tokenizer: the :class:`~seqgym.sources.tokenizers.TextTokenizer` (save it with ``to_json()``).
        ids: the split's token ids, ``int64`` array of shape ``(n_ids,)``.
        prompt_tokens, completion_tokens: the window sizes.
        max_sequence_length: ``prompt_length + completion_length + 1``.
        name: ``"text"``.

    Example:
        >>> import numpy as np
        >>> from seqgym.sources.text import Text
        >>> corpus = "the cat sat on the mat. " * 20
        >>> src = Text(text=corpus, prompt_length=4, completion_length=6)
        >>> src
        Text(text=<480 chars>, tokenizer=CharTokenizer(n_tokens=12, unk_token='<unk>'), prompt_length=4,
             completion_length=6, split='all', n_ids=480)
        >>> prompt, completion = src.sample(np.random.default_rng(0))
        >>> len(prompt), len(completion), completion[-1] == src.vocab.eos_id
        (4, 7, True)
        >>> src.decode(prompt + completion) in corpus * 2
        True
        >>> src.decode(src.encode_text("a cat"))
        'a cat'
        >>> test = Text(text=corpus, prompt_length=4, completion_length=6, split="test", test_fraction=0.25)
        >>> test.vocab == Text(text=corpus, prompt_length=4, completion_length=6, split="train",
        ...                    test_fraction=0.25).vocab, len(test.ids)
        (True, 120)
    """

    name = "text"

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        *,
        text: str | None = None,
        tokenizer: TokenizerName | TextTokenizer | Any = "char",  # Any: a tokenizers / transformers object
        vocab_size: int | None = None,
        min_frequency: int | None = None,
        prompt_length: int = 32,
        completion_length: int = 64,
        split: TextSplit = "all",
        test_fraction: float = 0.1,
        encoding: str = "utf-8",
    ) -> None:
        if (paths is None) == (text is None):
            raise ValueError(
                "Text needs exactly one corpus: file path(s) as `paths`, or a string as `text=`."
            )
        for arg, value, low in (
            ("prompt_length", prompt_length, 0),
            ("completion_length", completion_length, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Text {arg} must be an int, got {type(value).__name__}: {value!r}.")
            if value < low:
                raise ValueError(f"Text {arg} must be >= {low}, got {value}.")
        split = check_option("Text split", split, TEXT_SPLITS)
        if not isinstance(test_fraction, (int, float, np.floating)) or not 0.0 < test_fraction < 1.0:
            raise ValueError(f"Text test_fraction must be strictly between 0 and 1, got {test_fraction!r}.")

        if text is not None:
            if not isinstance(text, str):
                raise TypeError(f"Text text= must be a str, got {type(text).__name__}.")
            corpus = text
            self.paths: list[Path] = []
        else:
            assert paths is not None
            path_list = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
            if not path_list:
                raise ValueError("Text paths is empty; pass at least one text file.")
            self.paths = [Path(p) for p in path_list]
            parts = []
            for p in self.paths:
                if not p.is_file():
                    raise FileNotFoundError(f"Text corpus file {str(p)!r} does not exist or is not a file.")
                parts.append(p.read_text(encoding=encoding))
            corpus = "".join(
                part if i == len(parts) - 1 or part.endswith("\n") else part + "\n"
                for i, part in enumerate(parts)
            )
        if not corpus:
            raise ValueError("Text corpus is empty.")

        cut = round(len(corpus) * (1.0 - float(test_fraction)))
        train_text = corpus if split == "all" else corpus[:cut]
        split_text = {"all": corpus, "train": corpus[:cut], "test": corpus[cut:]}[split]

        if isinstance(tokenizer, str):
            tokenizer = check_option(
                "tokenizer", tokenizer, TOKENIZER_NAMES, hint=" or pass a tokenizer object"
            )
            if tokenizer == "char":
                tok: TextTokenizer = CharTokenizer.train(
                    train_text, min_frequency=1 if min_frequency is None else min_frequency
                )
            else:
                tok = BPETokenizer.train(
                    train_text,
                    vocab_size=512 if vocab_size is None else vocab_size,
                    min_frequency=2 if min_frequency is None else min_frequency,
                )
        else:
            tok = as_tokenizer(tokenizer)
        self.tokenizer: TextTokenizer = tok

        tokens = list(tok.tokens)
        taken = set(tokens)
        eos = _free_name("<eos>", taken)
        bksp = _free_name("<bksp>", taken | {eos})
        pad = _free_name("<pad>", taken | {eos, bksp})
        self.vocab = Vocabulary(tokens, eos=eos, backspace=bksp, pad=pad, separator="")

        self.ids: np.ndarray = np.asarray(tok.encode(split_text), dtype=np.int64)  # (n_ids,)
        self.prompt_tokens = int(prompt_length)
        self.completion_tokens = int(completion_length)
        self.max_sequence_length = self.prompt_tokens + self.completion_tokens + 1
        window = self.prompt_tokens + self.completion_tokens
        if len(self.ids) < window:
            raise ValueError(
                f"The {split!r} split has {len(self.ids)} tokens, fewer than one window of "
                f"prompt_length + completion_length = {window}; use a longer corpus or shorter windows."
            )
        self.split = split
        self.test_fraction = float(test_fraction)
        self._n_chars = len(corpus)

    def __repr__(self) -> str:
        corpus = f"paths={[str(p) for p in self.paths]!r}" if self.paths else f"text=<{self._n_chars} chars>"
        return (
            f"Text({corpus}, tokenizer={self.tokenizer!r}, prompt_length={self.prompt_tokens}, "
            f"completion_length={self.completion_tokens}, split={self.split!r}, n_ids={len(self.ids)})"
        )

    # ----------------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """A uniformly random window: ``(prompt_length ids, completion_length ids + [eos])``."""
        window = self.prompt_tokens + self.completion_tokens
        start = int(rng.integers(len(self.ids) - window + 1))
        ids = self.ids[start : start + window].tolist()
        return ids[: self.prompt_tokens], [*ids[self.prompt_tokens :], self.vocab.eos_id]

    def prompt_length(self, sequence: Sequence[int]) -> int:
        """``min(prompt_length, len(sequence))``: the prompt of a sampled window."""
        return min(self.prompt_tokens, len(sequence))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` under this source's tokenizer (no eos added)."""
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids`` (a list or a 1-D array); special ids (eos, backspace, pad) are dropped."""
        return self.tokenizer.decode([int(i) for i in ids if 0 <= int(i) < self.vocab.n_tokens])
