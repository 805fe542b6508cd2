"""A tiny test source shared by the environment tests (exact probabilities and validity)."""

from __future__ import annotations

import math

import numpy as np

from seqgym.vocab import Vocabulary


class Echo:
    """Test source: a prompt of 0-3 tokens from {a, b, c}; the completion is the prompt reversed, then eos.

    Its "exact" next-token distribution is uniform over a, b, c and eos (so every token earns log 1/4).
    """

    name = "echo"
    max_sequence_length = 7

    def __init__(self) -> None:
        self.vocab = Vocabulary(["a", "b", "c"])

    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        prompt = rng.integers(0, 3, size=int(rng.integers(0, 4))).tolist()
        return prompt, [*prompt[::-1], self.vocab.eos_id]

    def next_token_logprobs(self, prefix: list[int]) -> np.ndarray:
        lp = np.full(self.vocab.n_actions, math.log(0.25))
        lp[self.vocab.backspace_id] = -np.inf
        return lp

    def is_valid(self, sequence: list[int]) -> bool:
        body = list(sequence)[:-1]
        return list(sequence)[-1:] == [self.vocab.eos_id] and len(body) % 2 == 0 and body == body[::-1]
