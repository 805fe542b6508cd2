"""A random first-order Markov chain with forbidden transitions and exact probabilities."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from seqgym.vocab import Vocabulary

__all__ = ["Markov"]


class Markov:
    """A seeded random first-order Markov chain with forbidden transitions, so that mistakes are detectable.

    Tokens are named ``t0 .. t{n-1}`` (decoded with a space between them); ``eos = n_tokens``. The prompt is
    always empty. Construction (all from ``seed``):

    - ``initial_probs`` (shape ``(n_tokens,)``): a Dirichlet(1) draw; every token may start a sequence.
    - ``allowed`` (shape ``(n_tokens, n_tokens)``, bool): in each row,
      ``round(forbidden_fraction * n_tokens)`` next tokens (at most ``n_tokens - 1``) are forbidden, chosen
      uniformly at random.
    - ``transition_matrix`` (shape ``(n_tokens, n_tokens)``): each row a Dirichlet(1) draw over its allowed
      tokens, ``0`` on forbidden ones.

    Generation: the first token comes from ``initial_probs`` (a sequence holds at least one token). After each
    token, while the sequence is shorter than ``max_length`` tokens, ``eos`` comes with probability
    ``eos_prob`` and otherwise the next token is drawn from the row of the last token; after ``max_length``
    tokens ``eos`` is forced. So ``max_sequence_length = max_length + 1``.

    Exact probabilities: :meth:`next_token_logprobs` gives the chain's next-token log-probabilities; a prefix
    outside the support (a forbidden transition, a token after ``eos``, more than ``max_length`` tokens) gets
    an array of all ``-inf``. :meth:`is_valid` accepts exactly the sequences with non-zero probability.

    Args:
        n_tokens: number of ordinary tokens (>= 1).
        forbidden_fraction: fraction of forbidden next tokens in each row, in ``[0, 1)``.
        eos_prob: probability of ending after each token (before ``max_length``), in ``(0, 1)``.
        max_length: maximum number of tokens, ``eos`` not counted (>= 1).
        seed: seed of the random construction (an ``int``).

    Attributes:
        vocab: the :class:`~seqgym.vocab.Vocabulary` (``n_actions = n_tokens + 2``).
        initial_probs, allowed, transition_matrix: the chain (``float64`` / ``bool`` arrays, see above).
        max_sequence_length: ``max_length + 1``.
        name: ``"markov"``.

    Example:
        >>> import numpy as np
        >>> from seqgym.sources.markov import Markov
        >>> src = Markov(4, forbidden_fraction=0.5, eos_prob=0.2, max_length=6, seed=0)
        >>> src
        Markov(n_tokens=4, forbidden_fraction=0.5, eos_prob=0.2, max_length=6, seed=0)
        >>> src.allowed.sum(axis=1)  # two of four next tokens allowed in each row
        array([2, 2, 2, 2])
        >>> prompt, completion = src.sample(np.random.default_rng(0))
        >>> prompt, completion[-1] == src.vocab.eos_id, src.is_valid(completion)
        ([], True, True)
        >>> a, b = 0, int(np.flatnonzero(~src.allowed[0])[0])  # a forbidden transition
        >>> src.is_valid([a, b, src.vocab.eos_id]), bool(np.isinf(src.next_token_logprobs([a, b])).all())
        (False, True)
    """

    name = "markov"

    def __init__(
        self,
        n_tokens: int = 8,
        *,
        forbidden_fraction: float = 0.3,
        eos_prob: float = 0.1,
        max_length: int = 20,
        seed: int = 0,
    ) -> None:
        for arg, value in (("n_tokens", n_tokens), ("max_length", max_length), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Markov {arg} must be an int, got {type(value).__name__}: {value!r}.")
        if n_tokens < 1:
            raise ValueError(f"Markov needs n_tokens >= 1, got {n_tokens}.")
        if max_length < 1:
            raise ValueError(f"Markov needs max_length >= 1 (tokens before eos), got {max_length}.")
        ff = forbidden_fraction
        if not isinstance(ff, (int, float, np.floating)) or not 0.0 <= ff < 1.0:
            raise ValueError(f"Markov forbidden_fraction must be in [0, 1), got {ff!r}.")
        if not isinstance(eos_prob, (int, float, np.floating)) or not 0.0 < eos_prob < 1.0:
            raise ValueError(f"Markov eos_prob must be strictly between 0 and 1, got {eos_prob!r}.")
        self.n_tokens = int(n_tokens)
        self.forbidden_fraction = float(forbidden_fraction)
        self.eos_prob = float(eos_prob)
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.max_sequence_length = self.max_length + 1
        self.vocab = Vocabulary([f"t{i}" for i in range(self.n_tokens)], separator=" ")

        rng = np.random.default_rng(self.seed)
        n = self.n_tokens
        n_forbidden = min(round(self.forbidden_fraction * n), n - 1)
        self.initial_probs: np.ndarray = rng.dirichlet(np.ones(n))  # (n,)
        allowed = np.ones((n, n), dtype=bool)  # (n, n) row = current token, column = next token
        trans = np.zeros((n, n), dtype=np.float64)  # (n, n)
        for i in range(n):
            allowed[i, rng.choice(n, size=n_forbidden, replace=False)] = False
            cols = np.flatnonzero(allowed[i])
            trans[i, cols] = rng.dirichlet(np.ones(len(cols)))
        self.allowed: np.ndarray = allowed
        self.transition_matrix: np.ndarray = trans

    def __repr__(self) -> str:
        return (
            f"Markov(n_tokens={self.n_tokens}, forbidden_fraction={self.forbidden_fraction}, "
            f"eos_prob={self.eos_prob}, max_length={self.max_length}, seed={self.seed})"
        )

    # ----------------------------------------------------------------------------------------------------
    def _next_probs(self, tokens: Sequence[int]) -> np.ndarray:
        """Next-token probabilities (shape ``(n_actions,)``) after a supported, eos-free ``tokens``."""
        probs = np.zeros(self.vocab.n_actions, dtype=np.float64)
        if not tokens:
            probs[: self.n_tokens] = self.initial_probs
        elif len(tokens) >= self.max_length:
            probs[self.vocab.eos_id] = 1.0
        else:
            probs[: self.n_tokens] = (1.0 - self.eos_prob) * self.transition_matrix[tokens[-1]]
            probs[self.vocab.eos_id] = self.eos_prob
        return probs

    def _supported(self, tokens: Sequence[int]) -> bool:
        """Whether the eos-free ``tokens`` has non-zero probability as a prefix."""
        if len(tokens) > self.max_length or any(not 0 <= t < self.n_tokens for t in tokens):
            return False
        return all(self.allowed[a, b] for a, b in itertools.pairwise(tokens))

    # ----------------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Draw one sequence: ``([], tokens + [eos])``."""
        out = [int(rng.choice(self.n_tokens, p=self.initial_probs))]
        while len(out) < self.max_length and rng.random() >= self.eos_prob:
            out.append(int(rng.choice(self.n_tokens, p=self.transition_matrix[out[-1]])))
        out.append(self.vocab.eos_id)
        return [], out

    def sample_prompt(self, rng: np.random.Generator) -> list[int]:
        """The prompt of a fresh episode: always empty (no draw from ``rng``)."""
        return []

    def next_token_logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        """Exact next-token log-probabilities after ``prefix``.

        Args:
            prefix: token ids generated so far (the prompt is empty).

        Returns:
            ``float64`` array of shape ``(n_actions,)``, natural log; ``backspace`` and impossible tokens get
            ``-inf``. All entries are ``-inf`` when ``prefix`` itself has probability zero (a forbidden
            transition, more than ``max_length`` tokens, or any ``eos``, after which nothing may follow).

        Raises:
            ValueError: if ``prefix`` holds a backspace, pad or unknown id.
        """
        self.vocab.check_ids(prefix, what="Markov prefix")
        tokens = [int(t) for t in prefix]
        if not self._supported(tokens):
            return np.full(self.vocab.n_actions, -np.inf)
        with np.errstate(divide="ignore"):
            logp: np.ndarray = np.log(self._next_probs(tokens))
        return logp

    def is_valid(self, sequence: Sequence[int]) -> bool:
        """Whether ``sequence`` (tokens + ``eos``) has non-zero probability: at least one and at most
        ``max_length`` tokens, no forbidden transition, and exactly one ``eos``, at the end."""
        ids = [int(t) for t in sequence]
        return len(ids) >= 2 and ids[-1] == self.vocab.eos_id and self._supported(ids[:-1])

    def prompt_length(self, sequence: Sequence[int]) -> int:
        """Always ``0``: Markov sequences have no prompt."""
        return 0
