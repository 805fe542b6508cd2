"""seqgym: sequence generation as a reinforcement-learning problem, with a ``<backspace>`` action."""

from seqgym.vocab import Vocabulary

__all__ = ["Vocabulary"]
