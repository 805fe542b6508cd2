"""Token vocabularies with the special ids every sequence environment needs.

Id layout (fixed, so that the action space is a contiguous ``Discrete(n_actions)``)::

    0 .. n_tokens-1      ordinary tokens (actions)
    n_tokens             eos        (an action: ends the episode)
    n_tokens + 1         backspace  (an action: deletes the last generated token)
    n_tokens + 2         pad        (never an action: fills observations; equals ``n_actions``)

Example:
    >>> from seqgym.vocab import Vocabulary
    >>> v = Vocabulary(["(", ")"])
    >>> v.n_actions, v.eos_id, v.backspace_id, v.pad_id, len(v)
    (4, 2, 3, 4, 5)
    >>> v.encode(["(", ")", "<eos>"])
    [0, 1, 2]
    >>> v.decode([0, 1, 2])
    '()<eos>'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["Vocabulary"]


class Vocabulary:
    """An ordered set of token strings plus the special tokens ``eos``, ``backspace`` and ``pad``.

    Args:
        tokens: the ordinary tokens, in id order (ids ``0 .. len(tokens)-1``). Must be unique strings and
            must not collide with the special token strings.
        eos: string of the end-of-sequence token.
        backspace: string of the backspace token.
        pad: string of the padding token.
        separator: string placed between tokens by :meth:`decode` (``""`` for characters, ``" "`` for words).

    Attributes:
        n_tokens: number of ordinary tokens.
        n_actions: size of the action space, ``n_tokens + 2`` (tokens, eos, backspace).
        eos_id, backspace_id, pad_id: the special ids; ``pad_id == n_actions``.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        eos: str = "<eos>",
        backspace: str = "<bksp>",
        pad: str = "<pad>",
        separator: str = "",
    ) -> None:
        tokens = list(tokens)
        if not tokens:
            raise ValueError("Vocabulary needs at least one ordinary token; got an empty list.")
        for t in tokens:
            if not isinstance(t, str):
                raise TypeError(f"Vocabulary tokens must be str, got {type(t).__name__}: {t!r}.")
        specials = [eos, backspace, pad]
        if len(set(specials)) != 3:
            raise ValueError(
                f"The special tokens must differ, got eos={eos!r}, backspace={backspace!r}, pad={pad!r}."
            )
        if len(set(tokens)) != len(tokens):
            dup = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"Vocabulary tokens must be unique; duplicated: {dup[:10]}.")
        clash = [t for t in tokens if t in specials]
        if clash:
            raise ValueError(f"Ordinary tokens {clash} collide with the special tokens; rename them.")
        self._tokens: list[str] = [*tokens, eos, backspace, pad]
        self._index: dict[str, int] = {t: i for i, t in enumerate(self._tokens)}
        self.separator = separator
        self.n_tokens: int = len(tokens)
        self.eos_id: int = self.n_tokens
        self.backspace_id: int = self.n_tokens + 1
        self.pad_id: int = self.n_tokens + 2
        self.n_actions: int = self.n_tokens + 2

    # ----------------------------------------------------------------------------------------------------
    @property
    def tokens(self) -> list[str]:
        """All token strings in id order, specials included (length ``len(self)``)."""
        return list(self._tokens)

    @property
    def eos(self) -> str:
        return self._tokens[self.eos_id]

    @property
    def backspace(self) -> str:
        return self._tokens[self.backspace_id]

    @property
    def pad(self) -> str:
        return self._tokens[self.pad_id]

    def __len__(self) -> int:
        """Number of ids, pad included (``n_actions + 1``)."""
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self._tokens == other._tokens
            and self.separator == other.separator
        )

    def __hash__(self) -> int:
        return hash((tuple(self._tokens), self.separator))

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self._tokens[: min(8, self.n_tokens)])
        more = ", ..." if self.n_tokens > 8 else ""
        return f"Vocabulary([{head}{more}], n_actions={self.n_actions})"

    # ----------------------------------------------------------------------------------------------------
    def token_to_id(self, token: str) -> int:
        """Id of one token string; raises ``KeyError`` naming the unknown token."""
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(
                f"Unknown token {token!r}; it is not in this vocabulary of {len(self)} ids."
            ) from None

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Map token strings to ids (an already tokenized sequence; see ``seqgym.sources.Text`` for raw text)."""
        return [self.token_to_id(t) for t in tokens]

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Join the strings of ``ids`` with :attr:`separator`; ``skip_special`` drops eos, backspace and pad."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self._tokens):
                raise ValueError(f"Token id {i} is out of range for a vocabulary of {len(self)} ids.")
            if skip_special and i >= self.n_tokens:
                continue
            out.append(self._tokens[i])
        return self.separator.join(out)

    def check_ids(self, ids: Iterable[int], *, what: str = "sequence", allow_eos: bool = True) -> None:
        """Raise ``ValueError`` unless every id is an ordinary token (or eos, if allowed).

        Used to validate prompts and completions: backspace and pad may never appear inside a state.
        """
        for pos, i in enumerate(ids):
            i = int(i)
            if 0 <= i < self.n_tokens or (allow_eos and i == self.eos_id):
                continue
            if i in (self.backspace_id, self.pad_id):
                name = "backspace" if i == self.backspace_id else "pad"
                raise ValueError(
                    f"{what} holds the {name} id {i} at position {pos}; only token ids may appear there."
                )
            raise ValueError(
                f"{what} holds unknown id {i} at position {pos}; valid token ids are 0..{self.n_tokens - 1}"
                + (f" (and eos={self.eos_id})" if allow_eos else "")
                + "."
            )

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable description, inverse of :meth:`from_dict`."""
        return {
            "tokens": self._tokens[: self.n_tokens],
            "eos": self.eos,
            "backspace": self.backspace,
            "pad": self.pad,
            "separator": self.separator,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Vocabulary:
        tokens = d["tokens"]
        if not isinstance(tokens, list):
            raise ValueError("Vocabulary dict must hold a list under 'tokens'.")
        return cls(
            tokens,
            eos=str(d.get("eos", "<eos>")),
            backspace=str(d.get("backspace", "<bksp>")),
            pad=str(d.get("pad", "<pad>")),
            separator=str(d.get("separator", "")),
        )
