"""What the user passes, turned into what an agent uses: the env, the device, the seed.

``make_agent`` and ``Agent.load`` accept an env as a ``SequenceEnv`` (possibly wrapped) or a registered
Gymnasium id, demonstrations as trajectories or a file, a device as ``"auto"`` / ``"cpu"`` / ``"cuda[:N]"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import gymnasium as gym
import numpy as np
import torch

from agents.common.config import is_int
from agents.common.distributed import launched_world_size, local_rank
from seqgym.data import Trajectory
from seqgym.vocab import Vocabulary

if TYPE_CHECKING:
    from seqgym.env import SequenceEnv

__all__ = ["DemonstrationsLike", "EnvLike", "env_spec", "resolve_device", "resolve_env", "resolve_seed"]

#: An env as agents accept it: a ``SequenceEnv`` (possibly wrapped) or a registered id such as
#: ``"seqgym/Dyck-v0"``.
EnvLike: TypeAlias = "str | gym.Env[Any, Any]"

#: Demonstrations as agents accept them: trajectories, a file written by ``save_demonstrations``, or ``None``
#: (collected from the env's source).
DemonstrationsLike: TypeAlias = "Sequence[Trajectory] | str | os.PathLike[str] | None"


def resolve_seed(seed: int | None) -> int:
    """``seed`` checked (a non-negative int), or a fresh one drawn from the OS when ``None``."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}.")
    return int(seed)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` (cuda when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a ``torch.device``.

    In a process started by a multi-process launcher (``WORLD_SIZE > 1``), ``"auto"`` and ``"cuda"`` are the
    process's own GPU, ``cuda:LOCAL_RANK`` (as Accelerate places it), which also becomes the current device.
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu' or 'auto'.")
    if dev.type == "cuda" and dev.index is None and launched_world_size() > 1:
        dev = torch.device("cuda", local_rank())
        torch.cuda.set_device(dev)
    return dev


def resolve_env(env: EnvLike | None) -> tuple[gym.Env[Any, Any] | None, SequenceEnv | None]:
    """``(env as given or made, unwrapped SequenceEnv)``; ``(None, None)`` for ``None``."""
    if env is None:
        return None, None
    if isinstance(env, str):
        from seqgym.registration import register_envs

        register_envs()
        try:
            env = gym.make(env)
        except gym.error.Error as e:
            raise ValueError(f"Cannot make env {env!r}: {e}") from None
    if isinstance(env, gym.vector.VectorEnv):
        raise TypeError("env must be a single SequenceEnv (not a vector env); agents batch internally.")
    base: Any = getattr(env, "unwrapped", env)  # a SequenceEnv, or an object shaped like one
    missing = [a for a in ("vocab", "max_length", "max_steps", "source") if not hasattr(base, a)]
    if missing or not isinstance(base.vocab, Vocabulary):
        raise TypeError(
            f"env must be a seqgym SequenceEnv or a registered id such as 'seqgym/Dyck-v0'; got "
            f"{type(env).__name__} (missing {missing or ['a Vocabulary vocab']})."
        )
    return env, cast("SequenceEnv", base)


def env_spec(env: gym.Env[Any, Any] | None) -> dict[str, Any] | None:
    """The Gymnasium id and kwargs that rebuild ``env`` (when it was made by ``gym.make`` with JSON kwargs)."""
    spec = getattr(env, "spec", None)
    if spec is None or not getattr(spec, "id", None):
        return None
    kwargs = dict(spec.kwargs or {})
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError):
        return None
    return {"id": spec.id, "kwargs": kwargs}
