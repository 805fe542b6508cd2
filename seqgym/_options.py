"""String options: each is a ``Literal`` type, and every value is checked here, by :func:`check_option`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar, get_args

__all__ = [
    "AUTORESET_MODE_NAMES",
    "NOISE_NAMES",
    "NUM_BUCKETS_NAMES",
    "OPERATORS",
    "RENDER_MODES",
    "REWARD_NAMES",
    "TEXT_SPLITS",
    "TOKENIZER_NAMES",
    "AutoresetModeName",
    "NoiseName",
    "NumBuckets",
    "Operator",
    "RenderMode",
    "RewardName",
    "TextSplit",
    "TokenizerName",
    "check_option",
]

RewardName = Literal["none", "logprob", "valid"]
"""Built-in rewards of the environments (:func:`seqgym.rewards.make_reward`)."""
RenderMode = Literal["ansi", "rgb_array"]
"""Render modes of the environments."""
AutoresetModeName = Literal["NextStep", "SameStep", "Disabled"]
"""Gymnasium's ``AutoresetMode`` values (matched ignoring case and ``_``, so ``"next_step"`` works too)."""
NoiseName = Literal["uniform"]
"""Built-in noise of :func:`seqgym.data.augment`."""
TextSplit = Literal["all", "train", "test"]
"""Splits of the :class:`~seqgym.sources.text.Text` source."""
TokenizerName = Literal["char", "bpe"]
"""Tokenizers the :class:`~seqgym.sources.text.Text` source trains itself."""
Operator = Literal["+", "-"]
"""Operators of the :class:`~seqgym.sources.arithmetic.Arithmetic` source."""
NumBuckets = Literal["auto"]
"""The named choice of MAUVE's ``num_buckets`` (else an int)."""

REWARD_NAMES: tuple[RewardName, ...] = get_args(RewardName)
RENDER_MODES: tuple[RenderMode, ...] = get_args(RenderMode)
AUTORESET_MODE_NAMES: tuple[AutoresetModeName, ...] = get_args(AutoresetModeName)
NOISE_NAMES: tuple[NoiseName, ...] = get_args(NoiseName)
TEXT_SPLITS: tuple[TextSplit, ...] = get_args(TextSplit)
TOKENIZER_NAMES: tuple[TokenizerName, ...] = get_args(TokenizerName)
OPERATORS: tuple[Operator, ...] = get_args(Operator)
NUM_BUCKETS_NAMES: tuple[NumBuckets, ...] = get_args(NumBuckets)

OptionT = TypeVar("OptionT", bound=str)


def check_option(
    option: str,
    value: object,
    allowed: tuple[OptionT, ...],
    *,
    hint: str = "",
    normalize: Callable[[str], str] | None = None,
) -> OptionT:
    """Return the allowed value that ``value`` names, or raise ``ValueError`` naming the option and the choices.

    Args:
        option: the option's name, for the message (e.g. ``"reward"``).
        value: what the caller passed.
        allowed: the ``Literal``'s values, e.g. ``REWARD_NAMES``.
        hint: appended to the message after the choices (e.g. ``" or pass a callable"``).
        normalize: compare ``normalize(value)`` with ``normalize(choice)`` (e.g. to ignore case); the canonical
            choice is returned.

    Example:
        >>> check_option("reward", "valid", REWARD_NAMES)
        'valid'
        >>> check_option("reward", "vallid", REWARD_NAMES)
        Traceback (most recent call last):
        ...
        ValueError: Unknown reward 'vallid'; choose one of ['none', 'logprob', 'valid'].
    """
    if isinstance(value, str):
        key = value if normalize is None else normalize(value)
        for choice in allowed:
            if key == (choice if normalize is None else normalize(choice)):
                return choice
    raise ValueError(f"Unknown {option} {value!r}; choose one of {list(allowed)}{hint}.")
