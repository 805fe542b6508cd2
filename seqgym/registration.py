"""Gymnasium ids of the built-in sources.

``seqgym/Markov-v0``, ``seqgym/Dyck-v0``, ``seqgym/Arithmetic-v0``, ``seqgym/Mirror-v0`` and ``seqgym/Text-v0``
each build a
:class:`~seqgym.env.SequenceEnv` with ``gymnasium.make`` and a natively batched
:class:`~seqgym.vector.SequenceVectorEnv` with
``gymnasium.make_vec(id, num_envs=n, vectorization_mode="vector_entry_point")``.
Keyword arguments go to the environment when they are environment arguments (``max_length``, ``max_steps``,
``reward``, ``logprob_floor``, ``render_mode``; ``autoreset_mode`` for the vector env) and to the source
otherwise (``n_types=3`` for Dyck, ``path=...`` for Text). A source argument whose name is also an environment
argument (Dyck's and Markov's ``max_length``) goes in ``source_kwargs={...}``.

Toy defaults (small enough to train on a laptop CPU):

| id                      | source                                            | max_length | max_steps |
|-------------------------|---------------------------------------------------|------------|-----------|
| ``seqgym/Markov-v0``     | ``Markov()`` (8 tokens, sequences up to 20 + eos)  | 21         | 63        |
| ``seqgym/Dyck-v0``       | ``Dyck(2, max_depth=4, max_length=16)``             | 17         | 51        |
| ``seqgym/Arithmetic-v0`` | ``Arithmetic()`` (``ab+cd=`` / ``ab-cd=``, base 10) | 10         | 30        |
| ``seqgym/Mirror-v0``     | ``Mirror(3, min_half=1, max_half=8)`` (``w|reverse(w)``) | 18 | 54        |
| ``seqgym/Text-v0``       | ``Text(path)`` (32-token prompt, 64 to complete)  | 97         | 291       |

By default ``max_length = source.max_sequence_length`` (the longest prompt + completion, eos included, that
the source emits, so an expert never hits the length limit) and ``max_steps = 3 * max_length`` (room for
backspaces: an augmented demonstration inserts two actions per mistake). The default reward is the source's
validity (``reward="valid"``: ``1.0`` at eos for a valid sequence) for Markov, Dyck, Arithmetic and Mirror, so an
episode's return says whether the sequence is right, and ``"none"`` for Text (no judge of text); pass
``reward="logprob"`` for a dense reward, ``"none"`` to drop it, or a callable.

Example:
    >>> import gymnasium as gym
    >>> register_envs()
    >>> env = gym.make("seqgym/Dyck-v0", n_types=3)
    >>> env.unwrapped.vocab.n_actions, env.unwrapped.max_length, env.unwrapped.max_steps
    (8, 17, 51)
    >>> envs = gym.make_vec("seqgym/Dyck-v0", num_envs=4, vectorization_mode="vector_entry_point")
    >>> type(envs).__name__, envs.num_envs
    ('SequenceVectorEnv', 4)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from seqgym._options import AutoresetModeName
from seqgym.env import SequenceEnv
from seqgym.sources.base import Source
from seqgym.vector import SequenceVectorEnv

__all__ = ["ENV_IDS", "STEPS_PER_TOKEN", "make_env", "make_vector_env", "register_envs"]

ENV_IDS: dict[str, str] = {
    "seqgym/Markov-v0": "markov",
    "seqgym/Dyck-v0": "dyck",
    "seqgym/Arithmetic-v0": "arithmetic",
    "seqgym/Mirror-v0": "mirror",
    "seqgym/Text-v0": "text",
}
"""Registered id -> source name (as in ``seqgym.sources.registry``)."""

STEPS_PER_TOKEN = 3
"""Default ``max_steps = STEPS_PER_TOKEN * max_length``."""

_ENV_KWARGS = ("max_length", "max_steps", "reward", "logprob_floor", "render_mode")
_TEXT_CORPUS_KWARGS = ("path", "paths", "text")


def _make_source(source: str | Source, source_kwargs: dict[str, Any]) -> Source:
    if not isinstance(source, str):
        if source_kwargs:
            raise ValueError(
                f"Source arguments {sorted(source_kwargs)} were given with a ready-made source "
                f"{type(source).__name__}; configure the source object itself instead."
            )
        return source
    if source == "text":
        if not any(k in source_kwargs for k in _TEXT_CORPUS_KWARGS):
            raise ValueError(
                "seqgym/Text-v0 needs a corpus: pass a text file, e.g. "
                'gym.make("seqgym/Text-v0", path="corpus.txt") (or paths=[...], or text="...").'
            )
        if "path" in source_kwargs:
            if "paths" in source_kwargs:
                raise ValueError("Pass either path= (one file) or paths= (a list of files), not both.")
            source_kwargs["paths"] = source_kwargs.pop("path")
    from seqgym.sources.registry import make_source

    return make_source(source, **source_kwargs)


def _split(source: str | Source, kwargs: dict[str, Any]) -> tuple[Source, dict[str, Any]]:
    """Build the source and the environment arguments (defaults filled in) from flat keyword arguments."""
    kwargs = dict(kwargs)
    source_kwargs = dict(kwargs.pop("source_kwargs", None) or {})
    env_kwargs = {k: kwargs.pop(k) for k in _ENV_KWARGS if k in kwargs}
    clash = sorted(set(kwargs) & set(source_kwargs))
    if clash:
        raise ValueError(f"Source arguments {clash} were given twice (directly and in source_kwargs).")
    source_kwargs.update(kwargs)
    src = _make_source(source, source_kwargs)
    longest = getattr(src, "max_sequence_length", None)
    if env_kwargs.get("max_length") is None:
        if longest is None:
            raise ValueError(
                f"{type(src).__name__} has no max_sequence_length, so the observation size cannot be chosen "
                "automatically; pass max_length=... (longer than any prompt)."
            )
        env_kwargs["max_length"] = int(longest)
    elif longest is not None and env_kwargs["max_length"] < longest:
        gym.logger.warn(
            f"max_length={env_kwargs['max_length']} is shorter than the longest sequence "
            f"{type(src).__name__} emits ({longest}), so expert sequences can be truncated. To shorten the "
            "source's sequences instead, pass source_kwargs={'max_length': ...}."
        )
    if env_kwargs.get("max_steps") is None:
        env_kwargs["max_steps"] = STEPS_PER_TOKEN * int(env_kwargs["max_length"])
    return src, env_kwargs


def make_env(source: str | Source = "dyck", **kwargs: Any) -> SequenceEnv:
    """Build a :class:`SequenceEnv` from a source name (or object) and flat keyword arguments.

    The ``entry_point`` of every registered id (``source`` is fixed by the id). Environment arguments
    (``max_length``, ``max_steps``, ``reward``, ``logprob_floor``, ``render_mode``) go to the env; the rest,
    and everything in ``source_kwargs``, to the source.

    Raises:
        ValueError: Text without a corpus, a source without ``max_sequence_length`` and no ``max_length``, or
            any error of the source or of :class:`SequenceEnv`.
    """
    src, env_kwargs = _split(source, kwargs)
    return SequenceEnv(src, **env_kwargs)


# ``gym.make`` reads the entry point's ``metadata``: with it, ``render_mode="rgb_array_list"`` gets Gymnasium's
# RenderCollection and ``render_mode="human"`` its HumanRendering (pygame) over ``"rgb_array"``.
make_env.metadata = SequenceEnv.metadata  # type: ignore[attr-defined]


def make_vector_env(
    source: str | Source = "dyck",
    num_envs: int = 1,
    *,
    autoreset_mode: AutoresetMode | AutoresetModeName = AutoresetMode.NEXT_STEP,
    **kwargs: Any,
) -> SequenceVectorEnv:
    """Build a :class:`SequenceVectorEnv`; the ``vector_entry_point`` of every registered id.

    Arguments as in :func:`make_env`, plus ``num_envs`` and ``autoreset_mode``.
    """
    src, env_kwargs = _split(source, kwargs)
    return SequenceVectorEnv(src, num_envs, autoreset_mode=autoreset_mode, **env_kwargs)


def register_envs() -> None:
    """Register the ids of :data:`ENV_IDS` with Gymnasium (idempotent: ids already registered are kept)."""
    for env_id, source in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="seqgym.registration:make_env",
            vector_entry_point="seqgym.registration:make_vector_env",
            kwargs={"source": source},
        )
