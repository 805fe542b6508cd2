"""The registry of agents: :func:`register_agent`, :func:`make_agent` and :func:`list_agents`.

The built-in algorithms (``"mle"``, ``"bc"``, ``"sequencematch"``) register themselves when their module is
imported; the registry imports them on first use, so ``make_agent("bc", ...)`` works after ``import agents``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.common.agent import Agent, DemonstrationsLike, EnvLike
    from agents.common.hooks import AgentHooks
    from agents.policy import LMPolicy

__all__ = ["list_agents", "lookup", "make_agent", "register_agent", "registered_name"]

_REGISTRY: dict[str, type[Agent]] = {}
_BUILTINS: dict[str, str] = {
    "mle": "agents.mle",
    "bc": "agents.bc",
    "sequencematch": "agents.sequencematch",
}


def register_agent(name: str, cls: type[Agent], *, overwrite: bool = False) -> None:
    """Make ``cls`` available to :func:`make_agent` and :meth:`Agent.load` under ``name``.

    If ``cls`` does not define its own ``name`` attribute, it is set to ``name`` (the name saved with the agent).
    :mod:`agents.common.agent` shows a complete agent; the smallest one reuses another's loss:

    >>> from agents.mle import MLE
    >>> class SlowMLE(MLE):
    ...     name = "slow_mle"
    >>> register_agent("slow_mle", SlowMLE)
    >>> make_agent("slow_mle", env="seqgym/Dyck-v0", seed=0, n_demonstrations=4, learning_rate=1e-4,
    ...            policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2}).config.learning_rate
    0.0001

    Raises:
        TypeError: ``cls`` is not a subclass of :class:`Agent`, or ``name`` not a non-empty string.
        ValueError: ``name`` is taken by another class (pass ``overwrite=True`` to replace it).
    """
    from agents.common.agent import Agent

    if not isinstance(name, str) or not name:
        raise TypeError(f"Agent names must be non-empty strings, got {name!r}.")
    if not isinstance(cls, type) or not issubclass(cls, Agent):
        raise TypeError(f"register_agent needs a subclass of agents.base.Agent, got {cls!r}.")
    old = _REGISTRY.get(name)
    if old is not None and old is not cls and not overwrite:
        raise ValueError(
            f"Agent name {name!r} is already registered for {old.__module__}.{old.__qualname__}; pick another "
            "name or pass overwrite=True."
        )
    if "name" not in cls.__dict__:
        cls.name = name
    _REGISTRY[name] = cls


def _import_builtin(name: str) -> None:
    module = _BUILTINS.get(name)
    if module is not None and name not in _REGISTRY:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def lookup(name: str) -> type[Agent]:
    """The class registered as ``name`` (a built-in is imported on first use).

    Raises:
        KeyError: no agent has that name; the message suggests a close one.
    """
    _import_builtin(name)
    if name not in _REGISTRY:
        names = list_agents()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(
            f"No agent registered as {name!r}.{hint} Known agents: {', '.join(names) or 'none'}; add your own "
            "with agents.register_agent(name, cls)."
        )
    return _REGISTRY[name]


def list_agents() -> list[str]:
    """Names accepted by :func:`make_agent`, sorted (the built-ins are imported on first use)."""
    for name in _BUILTINS:
        _import_builtin(name)
    return sorted(_REGISTRY)


def registered_name(cls: type[AgentHooks]) -> str:
    """The name ``cls`` is registered under (saved with the agent), else its ``name`` attribute."""
    if _REGISTRY.get(cls.name) is cls:
        return cls.name
    for name, c in _REGISTRY.items():
        if c is cls:
            return name
    return cls.name


def make_agent(
    name: str,
    *,
    env: EnvLike,
    demonstrations: DemonstrationsLike = None,
    policy: LMPolicy | None = None,
    seed: int | None = None,
    **hyperparameters: Any,
) -> Agent:
    """Build a registered agent by name (``"mle"``, ``"bc"``, ``"sequencematch"`` or one you registered).

    Args:
        name: the registered name (see :func:`list_agents`).
        env: a ``SequenceEnv`` (possibly wrapped) or a registered Gymnasium id such as ``"seqgym/Dyck-v0"``.
        demonstrations: a list of :class:`~seqgym.data.Trajectory`, a file written by
            :func:`~seqgym.data.save_demonstrations`, or ``None`` to collect ``n_demonstrations`` from
            ``env.source``.
        policy: the :class:`LMPolicy` to train (in place); ``None`` builds ``LMPolicy.from_config(vocab,
            seed=seed, **policy_kwargs)``.
        seed: seeds everything the agent draws (data order, sampling, initialisation); ``None`` draws one
            (recorded in ``agent.seed``).
        **hyperparameters: fields of the agent's config dataclass (:class:`AgentConfig` and the algorithm's);
            each is checked by the config.

    Raises:
        KeyError: unknown agent name. TypeError: unknown hyperparameter, or a bad ``env`` / ``policy``.
        ValueError: a hyperparameter out of range, or a vocabulary mismatch.
    """
    cls = lookup(name)
    return cls(env=env, demonstrations=demonstrations, policy=policy, seed=seed, **hyperparameters)
