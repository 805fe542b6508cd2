"""Sequence sources: the :class:`Source` protocol, toy languages with exact probabilities, real text."""

from seqgym.sources.arithmetic import Arithmetic
from seqgym.sources.base import Source, has_exact_probabilities, has_validity, sequence_logprob
from seqgym.sources.dyck import Dyck
from seqgym.sources.markov import Markov
from seqgym.sources.mirror import Mirror
from seqgym.sources.registry import list_sources, make_source, register_source
from seqgym.sources.text import Text
from seqgym.sources.tokenizers import BPETokenizer, CharTokenizer, TextTokenizer, tokenizer_from_json

__all__ = [
    "Arithmetic",
    "BPETokenizer",
    "CharTokenizer",
    "Dyck",
    "Markov",
    "Mirror",
    "Source",
    "Text",
    "TextTokenizer",
    "has_exact_probabilities",
    "has_validity",
    "list_sources",
    "make_source",
    "register_source",
    "sequence_logprob",
    "tokenizer_from_json",
]
