"""Hyperparameters shared by every agent (:class:`AgentConfig`), and the checks every config uses.

Every string option is a ``Literal`` type; :class:`AgentConfig` checks every field annotated with one (its own
and those of any subclass) in one place, :func:`seqgym._options.check_option`, so an algorithm's config
declares an option by its type alone::

    >>> import dataclasses
    >>> from typing import Literal
    >>> @dataclasses.dataclass(kw_only=True)
    ... class MyConfig(AgentConfig):
    ...     reduction: Literal["sum", "mean"] = "sum"
    >>> MyConfig(reduction="max")
    Traceback (most recent call last):
    ...
    ValueError: Unknown reduction 'max'; choose one of ['sum', 'mean'].
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from seqgym._options import check_option

__all__ = [
    "LR_SCHEDULES",
    "AgentConfig",
    "LRSchedule",
    "MixedPrecision",
    "is_int",
    "is_number",
]

#: Mixed precision of the agent's forwards (Accelerate's names): ``"no"`` (float32) or ``"bf16"`` (autocast).
MixedPrecision = Literal["no", "bf16"]

#: Learning-rate schedules over the budget of one ``learn`` / ``train`` call.
LRSchedule = Literal["constant", "linear", "cosine"]
LR_SCHEDULES: tuple[LRSchedule, ...] = typing.get_args(LRSchedule)

_ConfigT = TypeVar("_ConfigT", bound="AgentConfig")


def is_int(x: object) -> bool:
    """``x`` is an int (Python or numpy), not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_number(x: object) -> bool:
    """``x`` is a real number (Python or numpy int / float), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


_LITERAL_FIELDS: dict[type, dict[str, tuple[str, ...]]] = {}


def _literal_fields(cls: type) -> Mapping[str, tuple[str, ...]]:
    """``{field name: allowed values}`` of the fields of dataclass ``cls`` annotated with a ``Literal`` of str
    (computed once per class)."""
    if cls in _LITERAL_FIELDS:
        return _LITERAL_FIELDS[cls]
    out: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        tp: object = f.type
        if isinstance(
            tp, str
        ):  # postponed annotation: resolve it in the module of the class that declares it
            owner = next((c for c in cls.__mro__ if f.name in vars(c).get("__annotations__", {})), cls)
            try:
                tp = eval(tp, dict(vars(sys.modules[owner.__module__])))  # as typing.get_type_hints does
            except Exception:  # a name only imported for type checkers: not a Literal of ours
                continue
        if typing.get_origin(tp) is Literal:
            args = typing.get_args(tp)
            if all(isinstance(a, str) for a in args):
                out[f.name] = args
    _LITERAL_FIELDS[cls] = out
    return out


def _bool_fields(cls: type) -> tuple[str, ...]:
    """Names of the fields of dataclass ``cls`` annotated ``bool`` (checked strictly: ``"no"`` is not False)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.type in (bool, "bool"))


@dataclasses.dataclass(kw_only=True)
class AgentConfig:
    """Hyperparameters shared by every agent; an algorithm derives a dataclass adding its own.

    Every field is a keyword argument of :func:`~agents.common.registry.make_agent` (and of the agent's
    constructor); unknown names raise ``TypeError`` naming the valid ones. The values are saved with the agent
    (``agent.json``). Fields annotated with a ``Literal`` are checked by
    :func:`seqgym._options.check_option`; fields annotated ``bool`` must be ``True`` or ``False`` (a string such
    as ``"no"`` is refused, not taken as truthy).

    Attributes:
        learning_rate: AdamW peak learning rate (> 0).
        batch_size: trajectories per update (>= 1).
        lr_schedule: ``"constant"``, ``"linear"`` (to 0) or ``"cosine"`` (to 0) over the budget of each
            ``learn`` (in (state, action) pairs, SB3's progress) or ``train`` call (in updates).
        warmup_steps: linear warm-up from 0 over the first updates of the agent's life (>= 0).
        max_grad_norm: clip the global gradient norm to this (> 0); ``None`` disables clipping.
        weight_decay: AdamW weight decay (>= 0).
        adam_betas: AdamW ``(beta1, beta2)``, each in ``[0, 1)``.
        adam_eps: AdamW epsilon (> 0).
        n_demonstrations: expert trajectories collected from ``env.source`` when no ``demonstrations`` are
            given (>= 1; 4000 by default, chosen on the development language: README, "How many demonstrations").
        policy_kwargs: keyword arguments of :meth:`LMPolicy.from_config` when no ``policy`` is given (its
            ``seed`` defaults to the agent's seed, ``n_positions`` to ``max(128, env.max_length + 1)``).
        checkpoint_every: save the agent every this many updates into ``checkpoint_dir/step_XXXXXXXX``
            (``None``: never).
        checkpoint_dir: where checkpoints go (required with ``checkpoint_every``).
        device: ``"auto"`` (cuda if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (a ``torch.device`` is
            turned into its string; an open set, so a ``str`` rather than a ``Literal``).
        mixed_precision: ``"no"`` (float32) or ``"bf16"``: the training forwards and the agent's generation
            run under ``torch.autocast`` to bfloat16 (parameters, gradients and AdamW stay float32).
        verbose: 0 silent, 1 the SB3 logger prints its table to stdout every ``log_interval`` updates.
        tensorboard_log: folder for tensorboard event files (``None``: no tensorboard).

    In a multi-process run (``torchrun`` / ``accelerate launch``, :mod:`agents.common.distributed`),
    ``batch_size`` is the global batch, split evenly over the processes (it must be a multiple of their number),
    and ``device="auto"`` / ``"cuda"`` is the process's own GPU (``cuda:LOCAL_RANK``).
    """

    learning_rate: float = 1e-3
    batch_size: int = 32
    lr_schedule: LRSchedule = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    n_demonstrations: int = 4000
    policy_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint_every: int | None = None
    checkpoint_dir: str | None = None
    device: str = "auto"
    mixed_precision: MixedPrecision = "no"
    verbose: int = 0
    tensorboard_log: str | None = None

    def __post_init__(self) -> None:
        def positive(name: str, value: object, *, integer: bool = False) -> None:
            ok = is_int(value) if integer else is_number(value)
            if not ok or not value > 0 or (not integer and not math.isfinite(float(value))):  # type: ignore[operator, arg-type]
                kind = "an int >= 1" if integer else "a finite number > 0"
                raise ValueError(f"{name} must be {kind}, got {value!r}.")

        positive("learning_rate", self.learning_rate)
        positive("batch_size", self.batch_size, integer=True)
        positive("adam_eps", self.adam_eps)
        positive("n_demonstrations", self.n_demonstrations, integer=True)
        for name, choices in _literal_fields(type(self)).items():
            check_option(name, getattr(self, name), choices)
        for name in _bool_fields(type(self)):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {type(value).__name__}: {value!r}.")
            setattr(self, name, bool(value))
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}.")
        if self.max_grad_norm is not None:
            positive("max_grad_norm", self.max_grad_norm)
        if not is_number(self.weight_decay) or not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}.")
        betas = tuple(self.adam_betas) if isinstance(self.adam_betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(is_number(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}.")
        self.adam_betas = (float(betas[0]), float(betas[1]))
        if not isinstance(self.policy_kwargs, dict):
            raise TypeError(f"policy_kwargs must be a dict, got {type(self.policy_kwargs).__name__}.")
        if self.checkpoint_every is not None:
            positive("checkpoint_every", self.checkpoint_every, integer=True)
            if not self.checkpoint_dir:
                raise ValueError(
                    "checkpoint_every needs checkpoint_dir= (the folder that receives checkpoints)."
                )
        for name in ("checkpoint_dir", "tensorboard_log"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"{name} must be a path or None, got {type(value).__name__}.")
            if value is not None:
                setattr(self, name, os.fspath(value))
        if not isinstance(self.device, (str, torch.device)):
            raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        self.device = str(self.device)
        if not is_int(self.verbose) or self.verbose < 0:
            raise ValueError(f"verbose must be an int >= 0, got {self.verbose!r}.")

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of every hyperparameter, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls: type[_ConfigT], kwargs: dict[str, Any], *, owner: str) -> _ConfigT:
        """Build from keyword arguments; unknown names raise ``TypeError`` with close matches."""
        names = cls.field_names()
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, names, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(
                f"Unknown hyperparameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for {owner}; "
                f"valid ones are: {', '.join(names)}."
            )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable values (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out
