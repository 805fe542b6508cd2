"""Sequence sources: the :class:`Source` protocol, toy languages with exact probabilities, real text."""

from seqgym.sources.base import Source, has_exact_probabilities, has_validity, sequence_logprob
from seqgym.sources.dyck import Dyck

__all__ = ["Dyck", "Source", "has_exact_probabilities", "has_validity", "sequence_logprob"]
