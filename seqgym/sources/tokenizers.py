"""Text tokenizers for :class:`~seqgym.sources.text.Text`: a built-in character-level one and byte-level BPE.

Both are deterministic (training the same corpus twice gives the same tokenizer) and serialisable, so a
tokenizer can be saved next to a model and rebuilt exactly:

    >>> from seqgym.sources.tokenizers import CharTokenizer, tokenizer_from_json
    >>> tok = CharTokenizer.train("abracadabra")
    >>> tok
    CharTokenizer(n_tokens=6, unk_token='<unk>')
    >>> tok.tokens
    ['a', 'b', 'c', 'd', 'r', '<unk>']
    >>> tok.encode("cab!")
    [2, 0, 1, 5]
    >>> tok.decode([2, 0, 1])
    'cab'
    >>> tokenizer_from_json(tok.to_json()) == tok
    True

The byte-level BPE (:class:`BPETokenizer`) needs the ``tokenizers`` library (``pip install "seqgym[text]"``),
imported only when a BPE tokenizer is trained or loaded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "TextTokenizer",
    "as_tokenizer",
    "tokenizer_from_dict",
    "tokenizer_from_json",
]

_INSTALL_HINT = 'The BPE tokenizer needs the `tokenizers` library: pip install "seqgym[text]"'


@runtime_checkable
class TextTokenizer(Protocol):
    """What :class:`~seqgym.sources.text.Text` needs from a tokenizer.

    Attributes:
        tokens: the token strings in id order (ids ``0 .. len(tokens)-1``), unique.

    Methods:
        encode(text) -> list[int]; decode(ids) -> str; to_dict() -> a JSON-serialisable dict with a ``"type"``
        key that :func:`tokenizer_from_dict` understands.
    """

    @property
    def tokens(self) -> list[str]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per character; characters missing from the vocabulary map to ``unk_token``.

    Args:
        chars: the single-character tokens, in id order (unique).
        unk_token: string of the unknown-character token, appended after ``chars``; ``None`` for none, in
            which case encoding an unknown character raises ``ValueError``.

    Attributes:
        tokens: ``chars`` plus ``unk_token`` if any (id order).
        unk_id: id of ``unk_token`` or ``None``.
    """

    def __init__(self, chars: Sequence[str], *, unk_token: str | None = "<unk>") -> None:
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"CharTokenizer chars must be single characters, got {bad[:5]!r}.")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer chars must be unique.")
        if not chars and unk_token is None:
            raise ValueError("CharTokenizer needs at least one character or an unk_token.")
        if unk_token is not None and (not isinstance(unk_token, str) or len(unk_token) < 2):
            raise ValueError(
                f"CharTokenizer unk_token must be a string of two or more characters (so it cannot be "
                f"confused with a character), got {unk_token!r}."
            )
        self.unk_token = unk_token
        self._tokens: list[str] = chars + ([unk_token] if unk_token is not None else [])
        self._index: dict[str, int] = {c: i for i, c in enumerate(chars)}
        self.unk_id: int | None = len(chars) if unk_token is not None else None

    @classmethod
    def train(cls, text: str, *, min_frequency: int = 1, unk_token: str | None = "<unk>") -> CharTokenizer:
        """The sorted characters of ``text`` that occur at least ``min_frequency`` times (then ``unk_token``).

        Raises:
            ValueError: if ``min_frequency < 1``, or no character is kept and there is no ``unk_token``.
        """
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}.")
        counts = Counter(text)
        return cls(sorted(c for c, n in counts.items() if n >= min_frequency), unk_token=unk_token)

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CharTokenizer) and self._tokens == other._tokens and self.unk_id == other.unk_id
        )

    def __hash__(self) -> int:
        return hash((tuple(self._tokens), self.unk_id))

    def __repr__(self) -> str:
        return f"CharTokenizer(n_tokens={len(self._tokens)}, unk_token={self.unk_token!r})"

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text`` (unknown ones -> ``unk_id``; ``ValueError`` if there is none)."""
        index, unk = self._index, self.unk_id
        if unk is not None:
            return [index.get(c, unk) for c in text]
        missing = sorted(set(text) - index.keys())
        if missing:
            raise ValueError(
                f"Characters {missing[:10]!r} are not in this CharTokenizer and it has no unk_token; "
                f"train it with unk_token='<unk>' or on a corpus that contains them."
            )
        return [index[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """The characters of ``ids`` (``unk_id`` decodes to ``unk_token``)."""
        n = len(self._tokens)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"Token id {i} is out of range for a CharTokenizer of {n} tokens.")
            out.append(self._tokens[i])
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description; :func:`tokenizer_from_dict` rebuilds it."""
        chars = self._tokens[: self.unk_id] if self.unk_id is not None else list(self._tokens)
        return {"type": "char", "chars": chars, "unk_token": self.unk_token}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


class BPETokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (byte-level BPE when trained here) as a :class:`TextTokenizer`.

    Build one with :meth:`train`, or wrap an existing tokenizer (e.g. GPT-2's, via :func:`as_tokenizer`).
    Encoding adds no special tokens. Byte-level BPE covers every byte, so any text can be encoded.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` whose ids are contiguous ``0 .. V-1``.

    Example (needs ``tokenizers``):
        >>> from seqgym.sources.tokenizers import BPETokenizer
        >>> tok = BPETokenizer.train("the cat sat on the mat; the cat ate. " * 20, vocab_size=270)
        >>> len(tok.tokens)
        270
        >>> ids = tok.encode("the cat")
        >>> len(ids) < len("the cat"), tok.decode(ids)
        (True, 'the cat')
    """

    def __init__(self, tokenizer: Any) -> None:
        vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=True)
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise ValueError("BPETokenizer needs a tokenizer whose ids are contiguous 0..V-1.")
        self.tokenizer = tokenizer
        self._tokens: list[str] = [t for t, _ in by_id]

    @classmethod
    def train(
        cls, text: str | Sequence[str], *, vocab_size: int = 512, min_frequency: int = 2
    ) -> BPETokenizer:
        """Train a byte-level BPE on ``text`` (a string or a list of strings).

        Args:
            text: the training corpus.
            vocab_size: the number of tokens (>= 256: the 256 byte tokens come first, then the merges).
                A small corpus may yield fewer tokens than asked.
            min_frequency: minimum count of a pair for it to be merged (>= 1).

        Raises:
            ImportError: without the ``tokenizers`` library (``pip install "seqgym[text]"``).
            ValueError: for a bad ``vocab_size`` or ``min_frequency``.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256:
            raise ValueError(
                f"BPE vocab_size must be an int >= 256 (the byte alphabet alone has 256 tokens), "
                f"got {vocab_size!r}."
            )
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}.")
        tk = _import_tokenizers()
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tokenizer.train_from_iterator([text] if isinstance(text, str) else list(text), trainer=trainer)
        return cls(tokenizer)

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self.tokenizer.to_str() == other.tokenizer.to_str()

    def __hash__(self) -> int:
        return hash(self.tokenizer.to_str())

    def __repr__(self) -> str:
        return f"BPETokenizer(n_tokens={len(self._tokens)})"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``."""
        n = len(self._tokens)
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"Token ids {bad[:5]} are out of range for a BPETokenizer of {n} tokens.")
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (with the ``tokenizers`` JSON); see :func:`tokenizer_from_dict`."""
        return {"type": "bpe", "tokenizer": json.loads(self.tokenizer.to_str())}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(_INSTALL_HINT) from e
    return tokenizers


def tokenizer_from_dict(d: dict[str, Any]) -> CharTokenizer | BPETokenizer:
    """Rebuild a tokenizer from its :meth:`to_dict` output.

    Raises:
        ValueError: for an unknown or malformed description; the message names what is missing or wrong.
    """
    if not isinstance(d, dict):
        raise ValueError(
            f"A tokenizer description must be a JSON object with a 'type' ('char' or 'bpe'), got "
            f"{type(d).__name__}."
        )
    kind = d.get("type")
    if kind == "char":
        chars = d.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            what = "lacks 'chars'" if "chars" not in d else f"has 'chars' of type {type(chars).__name__}"
            raise ValueError(
                f"The 'char' tokenizer description {what}; expected a list of one-character strings."
            )
        unk = d.get("unk_token")
        if unk is not None and not isinstance(unk, str):
            raise ValueError(f"The 'char' tokenizer's 'unk_token' must be a string or null, got {unk!r}.")
        return CharTokenizer(chars, unk_token=unk)
    if kind == "bpe":
        if not isinstance(d.get("tokenizer"), dict):
            raise ValueError(
                "The 'bpe' tokenizer description lacks 'tokenizer' (the tokenizers library's JSON object)."
            )
        tk = _import_tokenizers()
        try:
            return BPETokenizer(tk.Tokenizer.from_str(json.dumps(d["tokenizer"])))
        except Exception as e:  # the tokenizers library raises its own exception types
            raise ValueError(
                f"The 'bpe' tokenizer description is not a valid tokenizers JSON ({e})."
            ) from None
    if "type" not in d:
        raise ValueError(
            f"The tokenizer description lacks 'type' ('char' or 'bpe'); it has the keys {sorted(d)}. Is this a "
            "file written by a tokenizer's to_json()?"
        )
    raise ValueError(f"Unknown tokenizer description (type {kind!r}); expected type 'char' or 'bpe'.")


def tokenizer_from_json(s: str | bytes) -> CharTokenizer | BPETokenizer:
    """Rebuild a tokenizer from its ``to_json()`` string.

    Raises:
        TypeError: ``s`` is not a string.
        ValueError: ``s`` is not JSON, or not a tokenizer description (the message names what is missing).
    """
    if not isinstance(s, (str, bytes)):
        raise TypeError(f"tokenizer_from_json takes the JSON text, got {type(s).__name__}.")
    try:
        d = json.loads(s)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Not a tokenizer description: the text is not valid JSON ({e}).") from None
    return tokenizer_from_dict(d)


def as_tokenizer(obj: object) -> TextTokenizer:
    """Return ``obj`` as a :class:`TextTokenizer`.

    Accepts a :class:`TextTokenizer` (returned as is), a ``tokenizers.Tokenizer``, or a ``transformers`` fast
    tokenizer (its ``backend_tokenizer`` is wrapped, e.g. GPT-2's, so a pretrained model's ids are kept).

    Raises:
        TypeError: for anything else.
    """
    if isinstance(obj, (CharTokenizer, BPETokenizer)):
        return obj
    backend = getattr(obj, "backend_tokenizer", None)
    if backend is not None:
        return BPETokenizer(backend)
    if all(callable(getattr(obj, m, None)) for m in ("get_vocab", "to_str", "encode", "decode")):
        return BPETokenizer(obj)
    if isinstance(obj, TextTokenizer):
        return obj
    raise TypeError(
        f"Cannot use a {type(obj).__name__} as a tokenizer: pass 'char', 'bpe', a CharTokenizer or "
        f"BPETokenizer, a tokenizers.Tokenizer, a transformers fast tokenizer, or an object with tokens, "
        f"encode, decode and to_dict."
    )
