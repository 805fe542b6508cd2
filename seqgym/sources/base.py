"""The ``Source`` protocol: where sequences come from.

A source owns a :class:`~seqgym.vocab.Vocabulary` and samples ``(prompt, completion)`` pairs of token ids.
Toy languages also know their exact next-token distribution and can judge a sequence; real text cannot.

Adding a language takes a few lines:

    >>> import numpy as np
    >>> from seqgym.vocab import Vocabulary
    >>> class Repeat:
    ...     '''Emits "ab" one to three times, then eos.'''
    ...     def __init__(self) -> None:
    ...         self.vocab = Vocabulary(["a", "b"])
    ...     def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    ...         n = int(rng.integers(1, 4))
    ...         return [], [0, 1] * n + [self.vocab.eos_id]
    ...     def is_valid(self, sequence) -> bool:
    ...         s = list(sequence)
    ...         return len(s) >= 3 and s[-1] == self.vocab.eos_id and s[:-1] == [0, 1] * ((len(s) - 1) // 2)
    >>> from seqgym.sources import Source, has_exact_probabilities
    >>> isinstance(Repeat(), Source), has_exact_probabilities(Repeat())
    (True, False)
    >>> Repeat().sample(np.random.default_rng(0))
    ([], [0, 1, 0, 1, 0, 1, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from seqgym.vocab import Vocabulary

__all__ = ["Source", "has_exact_probabilities", "has_validity", "sequence_logprob"]


@runtime_checkable
class Source(Protocol):
    """What every sequence source provides.

    Required:
        vocab: the :class:`Vocabulary` (its ``n_actions`` fixes the environment's action space).
        sample(rng): one ``(prompt, completion)`` pair of token-id lists drawn with ``rng``
            (a ``numpy.random.Generator``). ``prompt`` may be empty and never holds eos, backspace or pad;
            ``completion`` ends with ``vocab.eos_id``.

    Optional (detected with :func:`has_exact_probabilities` / :func:`has_validity`):
        next_token_logprobs(prefix) -> np.ndarray: exact log-probabilities, shape ``(vocab.n_actions,)``, of the
            next token after ``prefix`` = prompt + generated tokens; ``exp`` sums to 1, backspace gets ``-inf``,
            impossible tokens get ``-inf``.
        is_valid(sequence) -> bool: whether prompt + completion (eos included) belongs to the language.
        prompt_length(sequence) -> int: how many leading ids of a full sequence are the prompt (default 0).
        sample_prompt(rng) -> list[int]: a prompt alone, for environments' resets (default ``sample(rng)[0]``);
            worth defining when ``sample`` is costly and the prompt is cheap (e.g. always empty).
    """

    vocab: Vocabulary

    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]: ...


def has_exact_probabilities(source: object) -> bool:
    """Whether ``source`` offers ``next_token_logprobs``."""
    return callable(getattr(source, "next_token_logprobs", None))


def has_validity(source: object) -> bool:
    """Whether ``source`` offers ``is_valid``."""
    return callable(getattr(source, "is_valid", None))


def sequence_logprob(source: object, prompt: Sequence[int], completion: Sequence[int]) -> float:
    """Exact ``log p(completion | prompt)`` under a source with ``next_token_logprobs`` (natural log)."""
    if not has_exact_probabilities(source):
        raise TypeError(
            f"{type(source).__name__} has no next_token_logprobs; exact log-probabilities are unknown."
        )
    prefix = [int(t) for t in prompt]
    total = 0.0
    for t in completion:
        lp = source.next_token_logprobs(prefix)  # type: ignore[attr-defined]
        total += float(lp[int(t)])
        prefix.append(int(t))
    return total
