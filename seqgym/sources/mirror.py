"""Mirror: a random word, a separator, then the word reversed: a language where one slip spoils the sequence.

The second half is forced token by token by the first, so errors compound: a model that writes one wrong token
after the separator can never end validly by appending. Unlike Dyck, where an impossible token is visible
locally (a closer that does not match the bracket just opened), here a later token is forced by a far earlier
one: to tell that the token just written is wrong, a model has to remember the matching token of the first half,
as far back as the whole word.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

from seqgym.vocab import Vocabulary

__all__ = ["Mirror"]


class Mirror:
    """Sequences ``w | reverse(w) eos``: a uniformly random word ``w``, a separator, then ``w`` backwards.

    Token ids: the symbols ``a, b, c, ...`` are ``0 .. n_symbols − 1``, the separator ``|`` is ``n_symbols`` and
    ``eos = n_symbols + 1`` (decoded without spaces: ``"abc|cba"``). The prompt is always empty.

    The generating process: the length ``L`` of ``w`` is uniform on ``min_half .. max_half`` and its symbols are
    uniform and independent; after the separator every token is forced (``w`` reversed, then ``eos``). Written
    token by token: while ``k = len(w) < min_half`` each symbol has probability ``1/n_symbols``; for
    ``min_half <= k < max_half`` the separator comes with probability ``1/(max_half − k + 1)`` (the hazard of
    the uniform length) and each symbol with the rest split evenly; at ``k = max_half`` the separator is forced.
    So ``max_sequence_length = 2·max_half + 2`` (separator and eos included).

    Exact probabilities: :meth:`next_token_logprobs` gives them; every token the process rules out gets ``-inf``
    (``eos`` before the end, the separator before ``min_half`` symbols or twice, any symbol after the separator
    but the forced one), and a prefix outside the support gets an array of all ``-inf``. :meth:`is_valid`
    accepts exactly the sequences with non-zero probability.

    Args:
        n_symbols: number of symbols of ``w`` (2 to 26).
        min_half: shortest ``w`` (>= 1).
        max_half: longest ``w`` (>= ``min_half``).

    Attributes:
        vocab: the :class:`~seqgym.vocab.Vocabulary` (``n_actions = n_symbols + 3``: symbols, separator,
            eos, backspace).
        separator_id: id of ``|``.
        max_sequence_length: ``2·max_half + 2``.
        name: ``"mirror"``.

    Example:
        >>> import numpy as np
        >>> from seqgym.sources.mirror import Mirror
        >>> src = Mirror(3, min_half=2, max_half=4)
        >>> src.vocab.tokens[:5]
        ['a', 'b', 'c', '|', '<eos>']
        >>> prompt, completion = src.sample(np.random.default_rng(0))
        >>> src.vocab.decode(completion), src.is_valid(completion)
        ('bbaa|aabb<eos>', True)
        >>> src.is_valid(src.vocab.encode(["a", "b", "|", "a", "b", "<eos>"]))  # not reversed
        False
        >>> np.exp(src.next_token_logprobs(src.vocab.encode(["a", "b", "|", "b"]))).round(3)  # a forced
        array([1., 0., 0., 0., 0., 0.])
    """

    name = "mirror"

    def __init__(self, n_symbols: int = 3, *, min_half: int = 1, max_half: int = 8) -> None:
        for arg, value in (("n_symbols", n_symbols), ("min_half", min_half), ("max_half", max_half)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Mirror {arg} must be an int, got {type(value).__name__}: {value!r}.")
        if not 2 <= n_symbols <= 26:
            raise ValueError(f"Mirror needs n_symbols in [2, 26], got {n_symbols}.")
        if min_half < 1:
            raise ValueError(f"Mirror needs min_half >= 1 (a non-empty first half), got {min_half}.")
        if max_half < min_half:
            raise ValueError(
                f"Mirror needs max_half >= min_half, got max_half={max_half} < min_half={min_half}."
            )
        self.n_symbols = int(n_symbols)
        self.min_half = int(min_half)
        self.max_half = int(max_half)
        self.max_sequence_length = 2 * self.max_half + 2
        self.vocab = Vocabulary([*string.ascii_lowercase[: self.n_symbols], "|"], separator="")
        self.separator_id = self.n_symbols

    def __repr__(self) -> str:
        return f"Mirror(n_symbols={self.n_symbols}, min_half={self.min_half}, max_half={self.max_half})"

    # ----------------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Draw one sequence: ``([], w + [separator] + reversed(w) + [eos])``."""
        length = int(rng.integers(self.min_half, self.max_half + 1))
        w = [int(t) for t in rng.integers(self.n_symbols, size=length)]
        return [], [*w, self.separator_id, *w[::-1], self.vocab.eos_id]

    def sample_prompt(self, rng: np.random.Generator) -> list[int]:
        """The prompt of a fresh episode: always empty (no draw from ``rng``)."""
        return []

    def _first_half_probs(self, k: int) -> np.ndarray:
        """Next-token probabilities (shape ``(n_actions,)``) after ``k`` symbols and no separator."""
        probs = np.zeros(self.vocab.n_actions, dtype=np.float64)
        p_sep = 0.0 if k < self.min_half else 1.0 / (self.max_half - k + 1)
        probs[self.separator_id] = p_sep
        probs[: self.n_symbols] = (1.0 - p_sep) / self.n_symbols
        return probs

    def next_token_logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        """Exact next-token log-probabilities after ``prefix``.

        Args:
            prefix: token ids generated so far (the prompt is empty); may hold ``eos`` only as its last id.

        Returns:
            ``float64`` array of shape ``(n_actions,)``, natural log; ``backspace`` and impossible tokens get
            ``-inf``; all ``-inf`` when ``prefix`` itself has probability zero (e.g. holds ``eos``).

        Raises:
            ValueError: if ``prefix`` holds a backspace, pad or unknown id.
        """
        self.vocab.check_ids(prefix, what="Mirror prefix")
        ids = [int(t) for t in prefix]
        out = np.full(self.vocab.n_actions, -np.inf)
        if self.vocab.eos_id in ids:
            return out
        if self.separator_id not in ids:
            if len(ids) > self.max_half:
                return out
            with np.errstate(divide="ignore"):
                logp: np.ndarray = np.log(self._first_half_probs(len(ids)))
            return logp
        cut = ids.index(self.separator_id)
        w, tail = ids[:cut], ids[cut + 1 :]
        if not self.min_half <= len(w) <= self.max_half or tail != w[::-1][: len(tail)]:
            return out  # a short or long first half, a second separator, or a wrong mirrored symbol
        out[w[::-1][len(tail)] if len(tail) < len(w) else self.vocab.eos_id] = 0.0
        return out

    def is_valid(self, sequence: Sequence[int]) -> bool:
        """Whether ``sequence`` is ``w | reverse(w) eos`` with ``min_half <= len(w) <= max_half``."""
        ids = [int(t) for t in sequence]
        if len(ids) < 3 or ids[-1] != self.vocab.eos_id or (len(ids) - 2) % 2:
            return False
        half = (len(ids) - 2) // 2
        w = ids[:half]
        return (
            self.min_half <= half <= self.max_half
            and all(0 <= t < self.n_symbols for t in w)
            and ids[half] == self.separator_id
            and ids[half + 1 : -1] == w[::-1]
        )

    def prompt_length(self, sequence: Sequence[int]) -> int:
        """Always ``0``: Mirror sequences have no prompt."""
        return 0
