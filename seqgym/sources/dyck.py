"""Dyck languages: balanced brackets of several kinds, from a probabilistic grammar with exact probabilities.

A wrong closer (``(]``) can never be repaired by appending tokens, so a model that makes one needs
``<backspace>``: this is the flagship toy task of ``seqgym``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqgym.vocab import Vocabulary

__all__ = ["Dyck"]

# Bracket pairs for the first kinds; further kinds get generic names ``o4``/``c4``, ``o5``/``c5``, ...
_BRACKETS: tuple[tuple[str, str], ...] = (("(", ")"), ("[", "]"), ("{", "}"), ("<", ">"))


class Dyck:
    """Balanced sequences of ``n_types`` kinds of brackets, with a depth limit and a length limit.

    Token ids interleave openers and closers: kind ``k`` opens with id ``2k`` and closes with id ``2k+1``
    (strings ``( ) [ ] { } < >`` for the first four kinds, then ``o4 c4 o5 c5 ...`` separated by spaces when
    ``n_types > 4``); ``eos = 2 * n_types``. The prompt is always empty.

    The generating process, with ``L`` the number of brackets so far and ``d`` the current depth
    (open brackets on the stack):

    - ``d == 0`` and ``L == 0``: open a uniformly chosen kind (every sequence holds at least one pair);
    - ``d == 0`` and ``L > 0``: ``eos`` with probability ``p_end``, else open a uniformly chosen kind;
      if there is no room for another pair (``L + 2 > max_length``), ``eos`` with probability 1;
    - ``d > 0``: open a uniformly chosen kind with total probability ``p_open`` when ``d < max_depth``
      and there is room to close everything afterwards (``L + d + 2 <= max_length``), else close the top
      bracket (probability 1 when opening is not allowed).

    So every sequence has at most ``max_length`` brackets plus ``eos``
    (``max_sequence_length = max_length + 1``) and nesting depth at most ``max_depth``.

    Exact probabilities: :meth:`next_token_logprobs` returns the process's next-token log-probabilities.
    A prefix outside the support (a wrong or unmatched closer, a token after ``eos``, a depth or length
    beyond the limits) gets an array of all ``-inf``. :meth:`is_valid` accepts exactly the sequences with
    non-zero probability, so balanced sequences that break the depth or length limit are invalid.

    Args:
        n_types: number of bracket kinds (>= 1).
        p_open: probability of opening a new bracket when the stack is not empty and opening is allowed,
            in ``(0, 1)``.
        p_end: probability of ``eos`` when the stack is empty (after at least one pair), in ``(0, 1)``.
        max_depth: maximum nesting depth (>= 1).
        max_length: maximum number of bracket tokens, ``eos`` not counted (even, >= 2).

    Attributes:
        vocab: the :class:`~seqgym.vocab.Vocabulary` (``n_actions = 2 * n_types + 2``).
        max_sequence_length: ``max_length + 1`` (longest prompt + completion, ``eos`` included).
        name: ``"dyck"``.

    Example:
        >>> import numpy as np
        >>> from seqgym.sources.dyck import Dyck
        >>> src = Dyck(2, max_depth=3, max_length=8)
        >>> src.vocab.tokens[:5]
        ['(', ')', '[', ']', '<eos>']
        >>> prompt, completion = src.sample(np.random.default_rng(0))
        >>> prompt, src.is_valid(prompt + completion)
        ([], True)
        >>> src.is_valid(src.vocab.encode(["(", "]", "<eos>"]))  # wrong closer
        False
        >>> np.exp(src.next_token_logprobs(src.vocab.encode(["("]))).round(3)  # ( ) [ ] eos bksp
        array([0.25, 0.5 , 0.25, 0.  , 0.  , 0.  ])
    """

    name = "dyck"

    def __init__(
        self,
        n_types: int = 2,
        *,
        p_open: float = 0.5,
        p_end: float = 0.3,
        max_depth: int = 4,
        max_length: int = 16,
    ) -> None:
        for arg, value in (("n_types", n_types), ("max_depth", max_depth), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Dyck {arg} must be an int, got {type(value).__name__}: {value!r}.")
        if n_types < 1:
            raise ValueError(f"Dyck needs n_types >= 1 bracket kinds, got {n_types}.")
        if max_depth < 1:
            raise ValueError(f"Dyck needs max_depth >= 1, got {max_depth}.")
        if max_length < 2:
            raise ValueError(f"Dyck needs max_length >= 2 (room for one pair of brackets), got {max_length}.")
        if max_length % 2:
            raise ValueError(
                f"Dyck max_length counts brackets and a balanced sequence has an even number of them; "
                f"got {max_length}, use {max_length - 1} or {max_length + 1}."
            )
        for arg, p in (("p_open", p_open), ("p_end", p_end)):
            if not isinstance(p, (int, float, np.floating)) or not 0.0 < float(p) < 1.0:
                raise ValueError(f"Dyck {arg} must be a probability strictly between 0 and 1, got {p!r}.")
        self.n_types = int(n_types)
        self.p_open = float(p_open)
        self.p_end = float(p_end)
        self.max_depth = int(max_depth)
        self.max_length = int(max_length)
        self.max_sequence_length = self.max_length + 1

        tokens: list[str] = []
        for k in range(self.n_types):
            opener, closer = _BRACKETS[k] if self.n_types <= len(_BRACKETS) else (f"o{k}", f"c{k}")
            tokens += [opener, closer]
        self.vocab = Vocabulary(tokens, separator="" if self.n_types <= len(_BRACKETS) else " ")

    def __repr__(self) -> str:
        return (
            f"Dyck(n_types={self.n_types}, p_open={self.p_open}, p_end={self.p_end}, "
            f"max_depth={self.max_depth}, max_length={self.max_length})"
        )

    # ----------------------------------------------------------------------------------------------------
    def _next_probs(self, stack: list[int], n_brackets: int) -> np.ndarray:
        """Next-token probabilities (shape ``(n_actions,)``) given the open kinds and the bracket count."""
        probs = np.zeros(self.vocab.n_actions, dtype=np.float64)
        depth = len(stack)
        if depth == 0:
            if n_brackets == 0:
                p_open_total = 1.0
            elif n_brackets + 2 > self.max_length:
                p_open_total = 0.0
            else:
                p_open_total = 1.0 - self.p_end
            probs[self.vocab.eos_id] = 1.0 - p_open_total
        else:
            can_open = depth < self.max_depth and n_brackets + depth + 2 <= self.max_length
            p_open_total = self.p_open if can_open else 0.0
            probs[2 * stack[-1] + 1] = 1.0 - p_open_total
        if p_open_total > 0.0:
            probs[0 : 2 * self.n_types : 2] = p_open_total / self.n_types
        return probs

    def _walk(self, ids: Sequence[int]) -> tuple[list[int], int] | None:
        """Follow ``ids`` (no eos) through the process; ``None`` if some step has probability zero."""
        stack: list[int] = []
        n = 0
        for t in ids:
            t = int(t)
            if not 0 <= t < 2 * self.n_types or self._next_probs(stack, n)[t] <= 0.0:
                return None
            if t % 2 == 0:
                stack.append(t // 2)
            else:
                stack.pop()
            n += 1
        return stack, n

    # ----------------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Draw one sequence: ``([], brackets + [eos])``."""
        out: list[int] = []
        stack: list[int] = []
        while True:
            depth = len(stack)
            if depth == 0:
                if out and (len(out) + 2 > self.max_length or rng.random() < self.p_end):
                    out.append(self.vocab.eos_id)
                    return [], out
                opening = True
            else:
                can_open = depth < self.max_depth and len(out) + depth + 2 <= self.max_length
                opening = can_open and rng.random() < self.p_open
            if opening:
                kind = int(rng.integers(self.n_types))
                stack.append(kind)
                out.append(2 * kind)
            else:
                out.append(2 * stack.pop() + 1)

    def sample_prompt(self, rng: np.random.Generator) -> list[int]:
        """The prompt of a fresh episode: always empty (no draw from ``rng``)."""
        return []

    def next_token_logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        """Exact next-token log-probabilities after ``prefix``.

        Args:
            prefix: token ids generated so far (the prompt is empty); may hold ``eos`` only as its last id.

        Returns:
            ``float64`` array of shape ``(n_actions,)``, natural log; ``backspace`` and impossible tokens get
            ``-inf``. All entries are ``-inf`` when ``prefix`` itself has probability zero (including any
            prefix that contains ``eos``, after which nothing may follow).

        Raises:
            ValueError: if ``prefix`` holds a backspace, pad or unknown id.
        """
        self.vocab.check_ids(prefix, what="Dyck prefix")
        walked = None if self.vocab.eos_id in [int(t) for t in prefix] else self._walk(prefix)
        if walked is None:
            return np.full(self.vocab.n_actions, -np.inf)
        with np.errstate(divide="ignore"):
            logp: np.ndarray = np.log(self._next_probs(*walked))
        return logp

    def is_valid(self, sequence: Sequence[int]) -> bool:
        """Whether ``sequence`` (brackets + ``eos``) has non-zero probability under this source.

        That is: balanced with correctly matched kinds, at least one pair, depth <= ``max_depth``,
        at most ``max_length`` brackets, and ending with exactly one ``eos``.
        """
        ids = [int(t) for t in sequence]
        if not ids or ids[-1] != self.vocab.eos_id:
            return False
        walked = self._walk(ids[:-1])
        return walked is not None and bool(self._next_probs(*walked)[self.vocab.eos_id] > 0.0)

    def prompt_length(self, sequence: Sequence[int]) -> int:
        """Always ``0``: Dyck sequences have no prompt."""
        return 0
