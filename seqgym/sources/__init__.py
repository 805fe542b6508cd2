"""Sequence sources: the :class:`Source` protocol, toy languages with exact probabilities, real text."""

from seqgym.sources.base import Source, has_exact_probabilities, has_validity, sequence_logprob

__all__ = ["Source", "has_exact_probabilities", "has_validity", "sequence_logprob"]
