"""One interface for every learner: :class:`Agent`, its hyperparameters, and the registry.

Shaped like Stable-Baselines3's algorithms so that swapping a learner is one word::

    agent = make_agent("bc", env="seqgym/Dyck-v0", seed=0, learning_rate=1e-3)
    agent.learn(50_000, progress_bar=True)        # 50k (state, action) pairs trained on
    result = agent.generate(16)                    # batched sampling with <backspace>
    agent.save("runs/bc")
    agent = Agent.load("runs/bc")                   # the registered class is found from the directory

Public API (every agent):

- ``learn(total_timesteps, *, callback=None, log_interval=10, tb_log_name=None, reset_num_timesteps=True,
  progress_bar=False) -> self``; ``total_timesteps`` counts the (state, action) pairs trained on (the pairs that
  carry a loss weight; inserted mistakes do not). SB3 callbacks, SB3 ``Logger`` output, optional progress bar.
- ``train(n_epochs=None, n_batches=None, ...)``: imitation-style, a number of passes over the data or of updates.
- ``predict(observation, state=None, episode_start=None, deterministic=False, action_masks=None)``: SB3's
  ``PolicyPredictor`` protocol, so ``stable_baselines3.common.evaluation.evaluate_policy(agent, env)`` works.
- ``generate(n=None, *, prompts=None, ...)``: batched sampling with backspace on a KV cache.
- ``save(path)`` / ``Agent.load(path, env=None, device="auto")``: one directory, written atomically.

Writing an algorithm (SB3's ``dqn.py`` habit: the file holds its loss and its data, nothing else). A subclass
sets the class attributes ``name`` and (if it has hyperparameters of its own) ``config_class``, a keyword-only
dataclass deriving from :class:`AgentConfig`, and implements these hooks; the base class owns the optimiser,
learning-rate schedule, gradient clipping, seeding, device, logging, callbacks, checkpoints and NaN checks:

- ``_setup()`` (optional): build derived data (e.g. augmented demonstrations) and modules. Runs once at
  construction and again on :meth:`Agent.load`, *before* the saved state is restored, so it must be
  deterministic given the seed: draw from ``self.setup_rng()``, never from ``self.rng``.
- ``_sample_batch(batch_size, rng) -> batch`` (default: ``batch_size`` demonstrations, epoch-shuffled through
  :meth:`Agent._sample_indices`). Draw only from ``rng`` (the agent's training generator, saved in checkpoints).
- ``_loss(batch) -> (loss, terms)`` (required): a scalar tensor to minimise and a ``dict[str, float | Tensor]``
  of terms to log (each logged as ``train/<name>``, averaged over the log interval).
- ``_n_timesteps(batch) -> int`` (default: number of expert actions of a list of trajectories): the
  (state, action) pairs the batch trains on; ``num_timesteps`` advances by it.
- ``_dataset_size() -> int`` (default ``len(self.demonstrations)``): items per epoch for ``train(n_epochs=...)``.
- ``_on_update_end(step)`` (optional): after each optimiser step (e.g. refresh a replay buffer every n updates).
- ``_extra_state() -> dict`` / ``_load_extra_state(state)`` (optional): anything else a checkpoint must hold to
  resume bitwise (tensors and plain Python values; saved with ``torch.save``, loaded with ``weights_only``).
- ``_parameters()`` (optional): the parameters to optimise (default: the policy's).

Class attribute ``allow_backspace = False`` masks ``<backspace>`` in ``predict`` and ``generate`` (MLE).

Registering your own agent takes a few lines; it then trains, saves and loads like the built-ins:

    >>> import torch
    >>> from agents.base import Agent, make_agent, register_agent
    >>> class Teacher(Agent):
    ...     '''Cross-entropy on every expert action of the demonstrations.'''
    ...     def _loss(self, batch):
    ...         out = self.policy.trajectory_logits([t.prompt for t in batch], [t.actions for t in batch])
    ...         logp = out.logits[:, :-1].log_softmax(-1)                            # (B, T, A)
    ...         logp = logp.gather(-1, out.actions[..., None])[..., 0]               # (B, T)
    ...         loss = -torch.where(out.action_mask, logp, 0.0).sum() / len(batch)  # sum over steps
    ...         return loss, {"nll": loss.detach()}
    >>> register_agent("teacher", Teacher)
    >>> agent = make_agent("teacher", env="seqgym/Dyck-v0", seed=0, n_demonstrations=16, batch_size=4,
    ...                    policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2})
    >>> agent.learn(100).num_timesteps >= 100
    True
    >>> "teacher" in list_agents()
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib
import json
import math
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch

from agents.callbacks import CallbackLike, convert_callback
from agents.policy import Generation, LMPolicy, sample_actions
from seqgym._files import default_mode
from seqgym.data import Trajectory, collect, load_demonstrations, save_demonstrations
from seqgym.vocab import Vocabulary

if TYPE_CHECKING:
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import VecEnv

__all__ = [
    "FORMAT_VERSION",
    "Agent",
    "AgentConfig",
    "AgentLoadError",
    "NonFiniteLossError",
    "list_agents",
    "make_agent",
    "register_agent",
]

FORMAT_VERSION = 1
"""Version of the directory layout written by :meth:`Agent.save`; :meth:`Agent.load` reads versions <= it."""

_FORMAT_NAME = "seqgym-agent"
_AGENT_FILE = "agent.json"
_POLICY_DIR = "policy"
_STATE_FILE = "training_state.pt"
_DEMOS_FILE = "demonstrations.npz"
_VOCAB_FILE = "vocab.json"
_SCHEDULES = ("constant", "linear", "cosine")

_AgentT = TypeVar("_AgentT", bound="Agent")


class AgentLoadError(ValueError):
    """A directory cannot be loaded as an agent: missing / truncated / corrupt file, another agent class, another
    vocabulary, or another format version. The message names the directory, the file and the problem."""


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) of an update was NaN or infinite; raised before the optimiser step, so the
    parameters still hold the values of the previous update.

    Attributes:
        step: the update number (1-based, counted over the agent's life) at which it happened.
        terms: the logged loss terms of that update.
    """

    def __init__(self, message: str, *, step: int, terms: dict[str, float]) -> None:
        super().__init__(message)
        self.step = step
        self.terms = terms


# ==========================================================================================================
# Hyperparameters
# ==========================================================================================================
def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


@dataclasses.dataclass(kw_only=True)
class AgentConfig:
    """Hyperparameters shared by every agent; an algorithm derives a dataclass adding its own.

    Every field is a keyword argument of :func:`make_agent` (and of the agent's constructor); unknown names raise
    ``TypeError`` naming the valid ones. The values are saved with the agent (``agent.json``).

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
            given (>= 1).
        policy_kwargs: keyword arguments of :meth:`LMPolicy.from_config` when no ``policy`` is given (its
            ``seed`` defaults to the agent's seed, ``n_positions`` to ``max(128, env.max_length + 1)``).
        checkpoint_every: save the agent every this many updates into ``checkpoint_dir/step_XXXXXXXX``
            (``None``: never).
        checkpoint_dir: where checkpoints go (required with ``checkpoint_every``).
        device: ``"auto"`` (cuda if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        verbose: 0 silent, 1 the SB3 logger prints its table to stdout every ``log_interval`` updates.
        tensorboard_log: folder for tensorboard event files (``None``: no tensorboard).
    """

    learning_rate: float = 1e-3
    batch_size: int = 32
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    n_demonstrations: int = 1000
    policy_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint_every: int | None = None
    checkpoint_dir: str | None = None
    device: str = "auto"
    verbose: int = 0
    tensorboard_log: str | None = None

    def __post_init__(self) -> None:
        def positive(name: str, value: object, *, integer: bool = False) -> None:
            ok = _is_int(value) if integer else _is_number(value)
            if not ok or not value > 0 or (not integer and not math.isfinite(float(value))):  # type: ignore[operator, arg-type]
                kind = "an int >= 1" if integer else "a finite number > 0"
                raise ValueError(f"{name} must be {kind}, got {value!r}.")

        positive("learning_rate", self.learning_rate)
        positive("batch_size", self.batch_size, integer=True)
        positive("adam_eps", self.adam_eps)
        positive("n_demonstrations", self.n_demonstrations, integer=True)
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, got {self.lr_schedule!r}.")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}.")
        if self.max_grad_norm is not None:
            positive("max_grad_norm", self.max_grad_norm)
        if not _is_number(self.weight_decay) or not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}.")
        betas = tuple(self.adam_betas) if isinstance(self.adam_betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
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
        if not _is_int(self.verbose) or self.verbose < 0:
            raise ValueError(f"verbose must be an int >= 0, got {self.verbose!r}.")

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of every hyperparameter, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], *, owner: str) -> AgentConfig:
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


# ==========================================================================================================
# Registry
# ==========================================================================================================
_REGISTRY: dict[str, type[Agent]] = {}
_BUILTINS: dict[str, str] = {
    "mle": "agents.mle",
    "bc": "agents.bc",
    "sequencematch": "agents.sequencematch",
}


def register_agent(name: str, cls: type[Agent], *, overwrite: bool = False) -> None:
    """Make ``cls`` available to :func:`make_agent` and :meth:`Agent.load` under ``name``.

    If ``cls`` does not define its own ``name`` attribute, it is set to ``name`` (the name saved with the agent).
    The module docstring shows a complete agent; the smallest one reuses another's loss:

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


def _lookup(name: str) -> type[Agent]:
    _import_builtin(name)
    if name not in _REGISTRY:
        names = list_agents()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(
            f"No agent registered as {name!r}.{hint} Known agents: {', '.join(names) or 'none'}; add your own "
            "with agents.base.register_agent(name, cls)."
        )
    return _REGISTRY[name]


def list_agents() -> list[str]:
    """Names accepted by :func:`make_agent`, sorted (the built-ins are imported on first use)."""
    for name in _BUILTINS:
        _import_builtin(name)
    return sorted(_REGISTRY)


def _registered_name(cls: type[Agent]) -> str:
    if _REGISTRY.get(cls.name) is cls:
        return cls.name
    for name, c in _REGISTRY.items():
        if c is cls:
            return name
    return cls.name


def make_agent(
    name: str,
    *,
    env: Any,
    demonstrations: Sequence[Trajectory] | str | os.PathLike[str] | None = None,
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
        **hyperparameters: fields of the agent's config dataclass (:class:`AgentConfig` and the algorithm's).

    Raises:
        KeyError: unknown agent name. TypeError: unknown hyperparameter, or a bad ``env`` / ``policy``.
        ValueError: a hyperparameter out of range, or a vocabulary mismatch.
    """
    cls = _lookup(name)
    return cls(env=env, demonstrations=demonstrations, policy=policy, seed=seed, **hyperparameters)


# ==========================================================================================================
# Helpers
# ==========================================================================================================
def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu' or 'auto'.")
    return dev


def _resolve_seed(seed: int | None) -> int:
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}.")
    return int(seed)


def _resolve_env(env: Any) -> tuple[Any, Any]:
    """``(env as given or made, unwrapped SequenceEnv)``; ``(None, None)`` for ``None``."""
    if env is None:
        return None, None
    if isinstance(env, str):
        import gymnasium as gym

        from seqgym.registration import register_envs

        register_envs()
        try:
            env = gym.make(env)
        except gym.error.Error as e:
            raise ValueError(f"Cannot make env {env!r}: {e}") from None
    import gymnasium as gym

    if isinstance(env, gym.vector.VectorEnv):
        raise TypeError("env must be a single SequenceEnv (not a vector env); agents batch internally.")
    base = getattr(env, "unwrapped", env)
    missing = [a for a in ("vocab", "max_length", "max_steps", "source") if not hasattr(base, a)]
    if missing or not isinstance(base.vocab, Vocabulary):
        raise TypeError(
            f"env must be a seqgym SequenceEnv or a registered id such as 'seqgym/Dyck-v0'; got "
            f"{type(env).__name__} (missing {missing or ['a Vocabulary vocab']})."
        )
    return env, base


def _env_spec(env: Any) -> dict[str, Any] | None:
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


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars (shard writing / weight loading) while saving or loading."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _EpochSampler:
    """Indices ``0..n-1`` in shuffled epochs (each index once per epoch), drawn from a given generator."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0

    def next(self, k: int, rng: np.random.Generator) -> np.ndarray:
        out = []
        while k > 0:
            if self.pos >= len(self.perm):
                self.perm = rng.permutation(self.n).astype(np.int64)
                self.pos = 0
            take = min(k, len(self.perm) - self.pos)
            out.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            k -= take
        return np.concatenate(out)

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "perm": torch.from_numpy(self.perm.copy()), "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        self.n = int(state["n"])
        self.perm = state["perm"].numpy().astype(np.int64)
        self.pos = int(state["pos"])


class _Interval:
    """Sums of the logged quantities over one log interval (tensors summed lazily, no device sync)."""

    def __init__(self) -> None:
        self.n_updates = 0
        self.timesteps = 0
        self.loss = 0.0
        self.grad_norm = 0.0
        self.terms: dict[str, Any] = {}
        self.t0 = time.perf_counter()

    def add(self, loss: float, grad_norm: float, terms: dict[str, Any], timesteps: int) -> None:
        self.n_updates += 1
        self.timesteps += timesteps
        self.loss += loss
        self.grad_norm += grad_norm
        for k, v in terms.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            self.terms[k] = self.terms[k] + v if k in self.terms else v


# ==========================================================================================================
# The agent
# ==========================================================================================================
class Agent:
    """Base class of every learner; see the module docstring for the interface and the subclass hooks.

    Args:
        env: a ``SequenceEnv`` (possibly wrapped) or a registered id such as ``"seqgym/Dyck-v0"``.
        demonstrations: trajectories, a demonstration file, or ``None`` (collected from ``env.source``).
        policy: the :class:`LMPolicy` to train in place; ``None`` builds one from ``policy_kwargs``.
        seed: seed of everything the agent draws; ``None`` draws one. When given, Python's, numpy's and torch's
            global generators are seeded too (as SB3 does), although the agent draws only from its own.
        **hyperparameters: fields of ``config_class``.

    Attributes:
        config: the hyperparameters (an instance of ``config_class``).
        env: the environment as given (or made from its id); ``None`` for a loaded agent without one.
        vocab: the vocabulary shared by env, policy and demonstrations.
        policy: the :class:`LMPolicy`.
        demonstrations: the expert trajectories (as given or collected).
        seed: the seed.
        device: the torch device.
        rng: the numpy generator training draws from (saved in checkpoints).
        num_timesteps: (state, action) pairs trained on so far.
        optimizer: the AdamW optimiser.
        max_length, max_steps: the env's limits (used by :meth:`generate`).
    """

    name: ClassVar[str] = "agent"
    config_class: ClassVar[type[AgentConfig]] = AgentConfig
    allow_backspace: ClassVar[bool] = True

    config: AgentConfig

    def __init__(
        self,
        *,
        env: Any,
        demonstrations: Sequence[Trajectory] | str | os.PathLike[str] | None = None,
        policy: LMPolicy | None = None,
        seed: int | None = None,
        **hyperparameters: Any,
    ) -> None:
        if env is None:
            raise TypeError("env is required: a SequenceEnv or a registered id such as 'seqgym/Dyck-v0'.")
        config = self.config_class.from_kwargs(hyperparameters, owner=type(self).__name__)
        if seed is not None:
            s = _resolve_seed(seed)
            random.seed(s)
            np.random.seed(s % 2**32)  # noqa: NPY002 (SB3-style global seeding for user code)
            torch.manual_seed(s)
        self._build(env=env, config=config, seed=seed, policy=policy, demonstrations=demonstrations)

    # -- construction shared by __init__ and load ------------------------------------------------------------
    def _build(
        self,
        *,
        env: Any,
        config: AgentConfig,
        seed: int | None,
        policy: LMPolicy | None,
        demonstrations: Sequence[Trajectory] | str | os.PathLike[str] | None,
        collect_missing: bool = True,
        limits: dict[str, int] | None = None,
        loading: bool = False,
    ) -> None:
        self.config = config
        self.seed = _resolve_seed(seed)
        self.device = _resolve_device(config.device)
        self.env, self._seq_env = _resolve_env(env)
        if self._seq_env is not None:
            vocab: Vocabulary = self._seq_env.vocab
            self.max_length = int(self._seq_env.max_length)
            self.max_steps = int(self._seq_env.max_steps)
        elif policy is not None and limits is not None:
            vocab = policy.vocab
            self.max_length, self.max_steps = int(limits["max_length"]), int(limits["max_steps"])
        else:
            raise TypeError("env is required: a SequenceEnv or a registered id such as 'seqgym/Dyck-v0'.")
        self.vocab = vocab

        # independent, reproducible streams: training draws, collection, _setup, torch sampling/training
        ss = np.random.SeedSequence(self.seed)
        train_ss, collect_ss, setup_ss, torch_ss = ss.spawn(4)
        self.rng = np.random.default_rng(train_ss)
        self._setup_ss = setup_ss
        sample_seed, train_seed = (int(x) >> 1 for x in torch_ss.generate_state(2, np.uint64))
        self._train_torch_seed = train_seed
        self._train_rng_state: dict[str, torch.Tensor | None] | None = None
        self._in_training = False

        if policy is None:
            kwargs = dict(config.policy_kwargs)
            kwargs.setdefault("seed", self.seed)
            kwargs.setdefault("n_positions", max(128, self.max_length + 1))
            policy = LMPolicy.from_config(vocab, **kwargs)
        elif not isinstance(policy, LMPolicy):
            raise TypeError(f"policy must be an agents.policy.LMPolicy or None, got {type(policy).__name__}.")
        elif config.policy_kwargs and not loading:
            raise ValueError(
                "Pass either policy= or policy_kwargs=, not both (policy_kwargs build a new policy)."
            )
        if policy.vocab != vocab:
            raise ValueError(f"The policy's vocabulary {policy.vocab} differs from the env's {vocab}.")
        if policy.n_positions < self.max_length + 1:
            raise ValueError(
                f"The policy has {policy.n_positions} positions but the env needs max_length + 1 = "
                f"{self.max_length + 1} (BOS included); build the policy with more positions."
            )
        self.policy: LMPolicy = policy.to(self.device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(sample_seed)

        self.demonstrations: list[Trajectory] = self._resolve_demonstrations(
            demonstrations, collect_missing=collect_missing, rng=np.random.default_rng(collect_ss)
        )

        self.num_timesteps = 0
        self._n_updates = 0
        self._total_timesteps = 0
        self._schedule: tuple[str, int, int] = ("timesteps", 0, 1)
        self._sampler: _EpochSampler | None = None
        self._logger: Logger | None = None
        self._custom_logger = False
        self._vec_env: VecEnv | None = None
        self._setup()
        self.optimizer = torch.optim.AdamW(
            list(self._parameters()),
            lr=config.learning_rate,
            betas=config.adam_betas,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )

    def _resolve_demonstrations(
        self,
        demonstrations: Sequence[Trajectory] | str | os.PathLike[str] | None,
        *,
        collect_missing: bool,
        rng: np.random.Generator,
    ) -> list[Trajectory]:
        if demonstrations is None:
            if not collect_missing:
                return []
            source = getattr(self._seq_env, "source", None)
            if source is None:
                raise ValueError("No demonstrations given and the env has no source to collect them from.")
            return collect(source, self.config.n_demonstrations, rng)
        if isinstance(demonstrations, (str, os.PathLike)):
            return load_demonstrations(demonstrations, vocab=self.vocab)
        if isinstance(demonstrations, Trajectory) or not isinstance(demonstrations, Sequence):
            raise TypeError(
                "demonstrations must be a list of seqgym.data.Trajectory, a demonstration file path, or None; "
                f"got {type(demonstrations).__name__}."
            )
        out: list[Trajectory] = list(demonstrations)  # type: ignore[arg-type]
        for k, t in enumerate(out):
            if not isinstance(t, Trajectory):
                raise TypeError(f"demonstrations[{k}] is a {type(t).__name__}, not a seqgym.data.Trajectory.")
            if t.vocab != self.vocab:
                raise ValueError(
                    f"demonstrations[{k}] uses another vocabulary ({t.vocab}) than the env ({self.vocab})."
                )
        return out

    # -- subclass hooks ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Build derived data / modules (deterministic given the seed: draw from :meth:`setup_rng`)."""

    def _parameters(self) -> Iterator[torch.nn.Parameter]:
        """Parameters the optimiser updates (default: the policy's)."""
        return self.policy.parameters()

    def _dataset_size(self) -> int:
        """Items per epoch of ``train(n_epochs=...)`` and of :meth:`_sample_indices`."""
        return len(self.demonstrations)

    def _sample_batch(self, batch_size: int, rng: np.random.Generator) -> Any:
        """A batch to train on (default: ``batch_size`` demonstrations in epoch-shuffled order)."""
        return [self.demonstrations[int(i)] for i in self._sample_indices(batch_size, rng)]

    def _loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(scalar loss to minimise, {term name: float or 0-d tensor})`` for one batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement _loss(batch) -> (loss, terms).")

    def _n_timesteps(self, batch: Any) -> int:
        """(state, action) pairs ``batch`` trains on (default: expert actions of a list of trajectories)."""
        if isinstance(batch, list) and all(isinstance(t, Trajectory) for t in batch):
            return int(sum(int(np.count_nonzero(t.expert)) for t in batch))
        raise NotImplementedError(
            f"{type(self).__name__}._sample_batch returns {type(batch).__name__}; implement _n_timesteps(batch)."
        )

    def _on_update_end(self, step: int) -> None:
        """Called after optimiser step number ``step`` (1-based, over the agent's life)."""

    def _on_learn_end(self) -> None:
        """Called when :meth:`learn` has trained its budget (e.g. to warn about how the run went)."""

    def _extra_state(self) -> dict[str, Any]:
        """Extra state for checkpoints (tensors / plain Python values)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` returned."""

    # -- helpers for subclasses ------------------------------------------------------------------------------
    def setup_rng(self) -> np.random.Generator:
        """A fresh generator, the same on every call for this seed: for deterministic work in ``_setup``."""
        return np.random.default_rng(self._setup_ss)

    def _sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` indices into the data set (size :meth:`_dataset_size`), epoch-shuffled with ``rng``.

        Every index appears once per epoch; the order is saved in checkpoints.

        Raises:
            ValueError: the data set is empty.
        """
        n = self._dataset_size()
        if n <= 0:
            raise ValueError(
                f"{type(self).__name__} has no training data: pass demonstrations= (to make_agent or to "
                "Agent.load), or an env whose source can be sampled."
            )
        if self._sampler is None or self._sampler.n != n:
            self._sampler = _EpochSampler(n)
        return self._sampler.next(batch_size, rng)

    # -- SB3 model protocol (used by callbacks) ------------------------------------------------------------
    @property
    def logger(self) -> Logger:
        """The SB3 ``Logger`` (set by ``learn`` from ``verbose`` / ``tensorboard_log``, or by ``set_logger``)."""
        if self._logger is None:
            from stable_baselines3.common.logger import Logger

            self._logger = Logger(folder=None, output_formats=[])
        return self._logger

    def set_logger(self, logger: Logger) -> None:
        """Use this SB3 logger (e.g. ``stable_baselines3.common.logger.configure(folder, ["stdout", "csv",
        "tensorboard"])``) instead of configuring one in every ``learn`` call."""
        self._logger = logger
        self._custom_logger = True

    def get_env(self) -> VecEnv | None:
        """The env as a one-env SB3 ``VecEnv`` (what SB3 callbacks expect), or ``None`` without an env."""
        if self.env is None:
            return None
        if self._vec_env is None:
            from stable_baselines3.common.vec_env import DummyVecEnv

            env = self.env
            self._vec_env = DummyVecEnv([lambda: env])
        return self._vec_env

    def get_vec_normalize_env(self) -> None:
        """SB3 protocol: there is no ``VecNormalize`` wrapper."""
        return None

    def dump_logs(self) -> None:
        """Write the logger's current values (SB3 protocol)."""
        self.logger.dump(step=self.num_timesteps)

    def training_progress(self) -> tuple[str, int, int]:
        """``(unit, done, total)`` of the current ``learn`` (pairs) or ``train`` (updates) budget."""
        unit, _, end = self._schedule
        if unit == "timesteps":
            return "pairs", self.num_timesteps, end
        return "updates", self._n_updates, end

    @property
    def n_updates(self) -> int:
        """Optimiser steps taken over the agent's life."""
        return self._n_updates

    # -- training ---------------------------------------------------------------------------------------------
    def learn(
        self: _AgentT,
        total_timesteps: int,
        *,
        callback: CallbackLike = None,
        log_interval: int = 10,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> _AgentT:
        """Train until ``total_timesteps`` (state, action) pairs have been trained on.

        Every update draws a batch (``_sample_batch``), minimises its loss with AdamW (learning-rate schedule,
        gradient clipping), advances ``num_timesteps`` by the pairs it trained on, logs every ``log_interval``
        updates, checkpoints every ``checkpoint_every`` updates, then calls ``callback.on_step()`` (False stops).
        The last update may overshoot the budget by less than one batch.

        To resume an interrupted run exactly: ``agent = Cls.load(checkpoint)`` then
        ``agent.learn(total - agent.num_timesteps, reset_num_timesteps=False)`` (SB3's convention: the budget
        adds to ``num_timesteps``, and the schedule runs over the whole ``total``).

        Args:
            total_timesteps: (state, action) pairs to train on (>= 1).
            callback: SB3 callback(s), see :mod:`agents.callbacks`.
            log_interval: updates between log dumps (``0``: no logging).
            tb_log_name: tensorboard run name (default: the agent's name).
            reset_num_timesteps: start counting from 0 (else continue, as SB3).
            progress_bar: show a tqdm progress bar.

        Returns:
            ``self``.

        Raises:
            NonFiniteLossError: a NaN / infinite loss or gradient; names the update and the loss terms.
        """
        if not _is_int(total_timesteps) or total_timesteps < 1:
            raise ValueError(f"total_timesteps must be an int >= 1, got {total_timesteps!r}.")
        total = int(total_timesteps)
        if reset_num_timesteps:
            self.num_timesteps = 0
        else:
            total += self.num_timesteps
        self._total_timesteps = total
        self._schedule = ("timesteps", 0, total)
        self._run(
            lambda: self.num_timesteps >= total,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
            total_timesteps=total,
        )
        self._on_learn_end()
        return self

    def train(
        self: _AgentT,
        n_epochs: float | None = None,
        n_batches: int | None = None,
        *,
        callback: CallbackLike = None,
        log_interval: int = 10,
        progress_bar: bool = False,
    ) -> _AgentT:
        """Imitation-style training: ``n_epochs`` passes over the data, or ``n_batches`` updates (exactly one).

        One epoch is ``ceil(_dataset_size() / batch_size)`` updates (fractional epochs are rounded up to whole
        updates). The learning-rate schedule runs over this call's updates. Returns ``self``.
        """
        if (n_epochs is None) == (n_batches is None):
            raise ValueError("Pass exactly one of n_epochs= or n_batches=.")
        if n_batches is not None:
            if not _is_int(n_batches) or n_batches < 1:
                raise ValueError(f"n_batches must be an int >= 1, got {n_batches!r}.")
            n = int(n_batches)
        else:
            if not _is_number(n_epochs) or not float(n_epochs) > 0:  # type: ignore[arg-type]
                raise ValueError(f"n_epochs must be a number > 0, got {n_epochs!r}.")
            size = self._dataset_size()
            if size <= 0:
                raise ValueError(f"{type(self).__name__} has no training data; pass demonstrations=.")
            n = max(1, math.ceil(float(n_epochs) * size / self.config.batch_size))  # type: ignore[arg-type]
        start = self._n_updates
        end = start + n
        self._schedule = ("updates", start, end)
        self._run(
            lambda: self._n_updates >= end,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=None,
            reset_num_timesteps=True,
            progress_bar=progress_bar,
            total_timesteps=None,
        )
        return self

    def _run(
        self,
        stop: Callable[[], bool],
        *,
        callback: CallbackLike,
        log_interval: int,
        tb_log_name: str | None,
        reset_num_timesteps: bool,
        progress_bar: bool,
        total_timesteps: int | None,
    ) -> None:
        """The one training loop behind ``learn`` and ``train``."""
        if not _is_int(log_interval) or log_interval < 0:
            raise ValueError(f"log_interval must be an int >= 0, got {log_interval!r}.")
        if not self._custom_logger:
            from stable_baselines3.common.utils import configure_logger

            self._logger = configure_logger(
                self.config.verbose,
                self.config.tensorboard_log,
                tb_log_name or self.name,
                reset_num_timesteps,
            )
        cb = convert_callback(callback, progress_bar=progress_bar)
        cb.init_callback(self)  # type: ignore[arg-type]
        start_time = time.perf_counter()
        cb.on_training_start({"total_timesteps": total_timesteps, "self": self}, globals())
        try:
            with self._training_rng():
                interval = _Interval()
                while not stop():
                    loss, terms, grad_norm, n = self._update()
                    interval.add(loss, grad_norm, terms, n)
                    if log_interval and self._n_updates % log_interval == 0:
                        self._dump(interval, start_time)
                        interval = _Interval()
                    every = self.config.checkpoint_every
                    if every and self._n_updates % every == 0:
                        self.save(self.checkpoint_path(self._n_updates))
                    cb.update_locals({"loss": loss, "terms": terms, "n_timesteps": n})
                    if not cb.on_step():
                        break
                if log_interval and interval.n_updates:
                    self._dump(interval, start_time)
        finally:
            cb.on_training_end()

    def _update(self) -> tuple[float, dict[str, Any], float, int]:
        """One optimiser step; returns ``(loss, terms, grad norm before clipping, pairs trained on)``."""
        step = self._n_updates + 1
        lr = self._learning_rate_now()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self._sample_batch(self.config.batch_size, self.rng)
        n = int(self._n_timesteps(batch))
        self.policy.train()
        loss, terms = self._loss(batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(f"{type(self).__name__}._loss must return a scalar tensor first, got {loss!r}.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.config.max_grad_norm is not None:
            gn = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        else:
            gn = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        loss_value, grad_norm = torch.stack(
            [loss.detach().float(), gn.detach().float().to(loss.device)]
        ).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            shown = {k: float(v) for k, v in terms.items()}
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            raise NonFiniteLossError(
                f"Non-finite {what} at update {step} (num_timesteps={self.num_timesteps}): loss={loss_value}, "
                f"grad_norm={grad_norm}, terms={shown}. The parameters were not updated by this step; lower "
                "learning_rate, set max_grad_norm, or check the data and the loss.",
                step=step,
                terms=shown,
            )
        self.optimizer.step()
        self.num_timesteps += n
        self._n_updates = step
        self._on_update_end(step)
        return loss_value, terms, grad_norm, n

    def _learning_rate_now(self) -> float:
        """Learning rate of the next update: peak x warm-up factor x schedule factor."""
        c = self.config
        lr = float(c.learning_rate)
        if c.warmup_steps and self._n_updates < c.warmup_steps:
            lr *= (self._n_updates + 1) / c.warmup_steps
        unit, start, end = self._schedule
        done = self.num_timesteps if unit == "timesteps" else self._n_updates
        p = min(max((done - start) / max(end - start, 1), 0.0), 1.0)
        if c.lr_schedule == "linear":
            lr *= 1.0 - p
        elif c.lr_schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * p))
        return lr

    def _dump(self, interval: _Interval, start_time: float) -> None:
        k = max(interval.n_updates, 1)
        log = self.logger
        log.record("train/loss", interval.loss / k)
        for name, total in interval.terms.items():
            log.record(f"train/{name}", float(total) / k)
        log.record("train/learning_rate", self.optimizer.param_groups[0]["lr"])
        log.record("train/grad_norm", interval.grad_norm / k)
        log.record("train/n_updates", self._n_updates)
        dt = max(time.perf_counter() - interval.t0, 1e-9)
        log.record("time/tokens_per_s", interval.timesteps / dt)
        log.record("time/total_timesteps", self.num_timesteps)
        log.record("time/time_elapsed", int(time.perf_counter() - start_time))
        log.dump(step=self.num_timesteps)

    @contextlib.contextmanager
    def _training_rng(self) -> Iterator[None]:
        """Run training on the agent's own torch RNG stream (dropout etc.), saved and restored in checkpoints."""
        cuda = self.device.type == "cuda"
        index = (
            (self.device.index if self.device.index is not None else torch.cuda.current_device())
            if cuda
            else 0
        )
        with torch.random.fork_rng(devices=[index] if cuda else []):
            state = self._train_rng_state
            if state is None:
                torch.default_generator.manual_seed(self._train_torch_seed)
                if cuda:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(self._train_torch_seed)
            else:
                cpu_state = state.get("cpu")
                if cpu_state is not None:
                    torch.set_rng_state(cpu_state)
                cuda_state = state.get("cuda")
                if cuda and cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, index)
            self._in_training = True
            try:
                yield
            finally:
                self._capture_training_rng()
                self._in_training = False

    def _capture_training_rng(self) -> None:
        cuda = self.device.type == "cuda"
        index = (
            (self.device.index if self.device.index is not None else torch.cuda.current_device())
            if cuda
            else 0
        )
        self._train_rng_state = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(index) if cuda else None,
        }

    # -- acting -----------------------------------------------------------------------------------------------
    def set_sampling_seed(self, seed: int) -> None:
        """Re-seed the generator that ``predict`` (and ``generate(seed=None)``) sample from.

        After ``agent.set_sampling_seed(s)``, stepping a ``SequenceEnv`` with ``predict`` samples the same
        actions as ``agent.generate(prompts=[prompt], seed=s)`` (one prompt).
        """
        self._generator.manual_seed(_resolve_seed(seed))

    def _observation_batch(self, observation: Any) -> tuple[np.ndarray, bool]:
        if isinstance(observation, dict):
            raise TypeError(
                "observation must be an array of token ids, not a dict (seqgym envs have Box spaces)."
            )
        obs = np.asarray(observation)
        if obs.ndim not in (1, 2) or obs.shape[-1] == 0:
            raise ValueError(
                f"observation must have shape (max_length,) or (n_envs, max_length), got {obs.shape}."
            )
        if not np.issubdtype(obs.dtype, np.number) or obs.dtype == np.bool_:
            raise TypeError(f"observation must hold integer token ids, got dtype {obs.dtype}.")
        ids = obs.astype(np.int64)
        if not np.array_equal(ids, obs):
            raise ValueError("observation holds non-integer values; it must hold token ids.")
        if ids.min() < 0 or ids.max() > self.vocab.pad_id:
            raise ValueError(
                f"observation holds ids outside 0..{self.vocab.pad_id} (pad = {self.vocab.pad_id} marks the end)."
            )
        return ids.reshape(-1, ids.shape[-1]), obs.ndim == 1

    @property
    def policy_temperature(self) -> float:
        """Temperature of the agent's own policy: ``predict`` and ``generate`` sample from
        ``softmax(logits / policy_temperature)`` (1.0 here; SequenceMatch's ``π = softmax(l/α)`` gives ``α``)."""
        return 1.0

    @torch.inference_mode()
    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Actions for single ``(max_length,)`` or batched ``(N, max_length)`` observations (SB3 protocol).

        An observation holds the visible sequence, left-aligned and padded with ``vocab.pad_id``. It does not say
        how long the prompt is, which decides whether ``<backspace>`` is allowed, so the recurrent ``state``
        carries each row's prompt length: ``(prompt_lengths (N,) int64,)``, set from the visible length where
        ``episode_start`` is True (or for every row when ``state`` is None). This is exactly how
        ``evaluate_policy`` calls it. Backspace is also masked everywhere for agents that never emit it (MLE),
        and ``action_masks`` (bool ``(A,)`` or ``(N, A)``, True = allowed; MaskablePPO's convention) masks more.

        Sampling uses the agent's torch generator (see :meth:`set_sampling_seed`) and the one sampling function
        of generation, :func:`agents.policy.sample_actions`; ``deterministic=True`` takes the argmax.

        Returns:
            ``(actions, state)``: ``actions`` int64 of shape ``()`` for a single observation, ``(N,)`` for a batch;
            ``state`` to pass back on the next call.
        """
        ids, single = self._observation_batch(observation)
        N, L = ids.shape
        is_pad = ids == self.vocab.pad_id
        lengths = np.where(is_pad.any(axis=1), is_pad.argmax(axis=1), L).astype(np.int64)  # (N,)
        if state is None:
            prompt_lengths = lengths.copy()
        else:
            prompt_lengths = np.asarray(state[0], dtype=np.int64).reshape(-1).copy()
            if prompt_lengths.shape != (N,):
                raise ValueError(
                    f"state holds {prompt_lengths.shape[0]} prompt lengths for {N} observations; pass back the "
                    "state predict returned for the same envs (or None at the start of episodes)."
                )
        if episode_start is not None:
            starts = np.asarray(episode_start, dtype=bool).reshape(-1)
            if starts.shape != (N,):
                raise ValueError(f"episode_start must have {N} entries, got shape {starts.shape}.")
            prompt_lengths[starts] = lengths[starts]
        prompt_lengths = np.minimum(prompt_lengths, lengths)
        states = [row[:n] for row, n in zip(ids, lengths)]

        self.policy.eval()
        logits = self.policy.state_logits(states, prompt_lengths.tolist()).float()  # (N, A)
        logits = logits / self.policy_temperature
        allowed = np.ones((N, self.vocab.n_actions), dtype=bool)  # (N, A)
        allowed[:, self.vocab.backspace_id] = (lengths > prompt_lengths) & self.allow_backspace
        if action_masks is not None:
            m = np.asarray(action_masks).astype(bool)
            if m.shape not in ((self.vocab.n_actions,), (N, self.vocab.n_actions)):
                raise ValueError(
                    f"action_masks must have shape ({self.vocab.n_actions},) or ({N}, {self.vocab.n_actions}), "
                    f"got {m.shape}."
                )
            allowed &= m
        empty = np.flatnonzero(~allowed.any(axis=1))
        if empty.size:
            raise ValueError(
                f"Observation {int(empty[0])} has no allowed action under the given action_masks."
            )
        mask = torch.from_numpy(allowed).to(logits.device)
        logits = logits.masked_fill(~mask, float("-inf"))
        actions_t = sample_actions(logits, generator=self._generator, deterministic=deterministic)
        actions = actions_t.cpu().numpy().astype(np.int64)
        if single:
            return actions.reshape(()), (prompt_lengths,)
        return actions, (prompt_lengths,)

    def generate(
        self,
        n: int | None = None,
        *,
        prompts: Sequence[Sequence[int]] | None = None,
        max_steps: int | None = None,
        max_length: int | None = None,
        temperature: float = 1.0,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> Generation:
        """Sample ``n`` sequences (or one per prompt) with backspace, batched on a KV cache.

        Args:
            n: number of samples when ``prompts`` is None (default 1); must equal ``len(prompts)`` otherwise.
            prompts: prompts (ordinary token ids); default: drawn from ``env.source``.
            max_steps, max_length: limits per row (default: the env's).
            temperature, top_p, top_k: sampling settings of :func:`agents.policy.sample_actions`.
            seed: sample from a fresh generator seeded with it (prompts too); ``None`` continues the agent's
                sampling generator.

        Returns:
            :class:`agents.policy.Generation`: ``sequences`` (final visible, prompt included), ``actions`` (full
            histories, backspaces included), ``terminated``, ``truncated``.
        """
        if prompts is None:
            count = 1 if n is None else n
            if not _is_int(count) or count < 1:
                raise ValueError(f"n must be an int >= 1, got {n!r}.")
            source = getattr(self._seq_env, "source", None)
            if source is None:
                raise ValueError(
                    "This agent has no env to draw prompts from; pass prompts= (or env= to load)."
                )
            if seed is not None:
                prompt_rng = np.random.default_rng(_resolve_seed(seed))
            else:
                draw = torch.randint(0, 2**62, (1,), generator=self._generator, device=self.device)
                prompt_rng = np.random.default_rng(int(draw.item()))
            prompt_list: list[list[int]] = [list(source.sample(prompt_rng)[0]) for _ in range(int(count))]
        else:
            if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (Sequence, np.ndarray)):
                raise TypeError(f"prompts must be a sequence of id sequences, got {type(prompts).__name__}.")
            prompt_list = [[int(t) for t in p] for p in prompts]
            if n is not None and n != len(prompt_list):
                raise ValueError(f"n={n} but {len(prompt_list)} prompts were given; pass one or the other.")
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(_resolve_seed(seed))
        else:
            generator = self._generator
        self.policy.eval()
        return self.policy.generate(
            prompt_list,
            max_steps=self.max_steps if max_steps is None else max_steps,
            max_length=self.max_length if max_length is None else max_length,
            temperature=temperature * self.policy_temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            allow_backspace=self.allow_backspace,
        )

    # -- persistence ----------------------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        """Directory of the checkpoint taken after update ``step``: ``checkpoint_dir/step_XXXXXXXX``."""
        if not self.config.checkpoint_dir:
            raise ValueError("No checkpoint_dir configured.")
        return Path(self.config.checkpoint_dir) / f"step_{step:08d}"

    @staticmethod
    def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
        """The newest complete checkpoint (``step_*`` holding ``agent.json``) in a folder, or ``None``."""
        folder = Path(checkpoint_dir)
        if not folder.is_dir():
            return None
        done = sorted(p for p in folder.glob("step_*") if (p / _AGENT_FILE).is_file())
        return done[-1] if done else None

    def _training_state(self) -> dict[str, Any]:
        if self._in_training:
            self._capture_training_rng()
        return {
            "optimizer": self.optimizer.state_dict(),
            "generator": self._generator.get_state(),
            "generator_device": self.device.type,
            "train_rng": self._train_rng_state,
            "sampler": None if self._sampler is None else self._sampler.state(),
            "extra": self._extra_state(),
        }

    def save(self, path: str | os.PathLike[str], *, include_demonstrations: bool = True) -> None:
        """Write the agent to one directory, atomically.

        Layout: ``agent.json`` (format version, agent name and class, hyperparameters, seed, counters, numpy
        RNG state, env id, and the size and SHA-256 of every other file), ``vocab.json``, ``policy/``
        (:meth:`LMPolicy.save_pretrained`: safetensors + vocabulary), ``training_state.pt`` (optimiser, torch
        RNG states, data order, ``_extra_state``) and ``demonstrations.npz`` (so a checkpoint resumes alone).

        Everything is written to a temporary directory beside ``path``, which is then renamed into place; an
        existing save at ``path`` is first renamed aside and deleted only after the new one is in place, so an
        interruption never loses the previous save (at worst it waits at ``.<name>.old-*`` beside ``path``).

        Raises:
            ValueError: ``path`` exists and is not an agent directory (nothing is overwritten).
        """
        target = Path(path)
        if target.exists() and not (
            target.is_dir() and ((target / _AGENT_FILE).is_file() or not any(target.iterdir()))
        ):
            raise ValueError(f"Refusing to overwrite {target}: it exists and is not an agent directory.")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes it owner-only
        try:
            with _quiet_transformers():
                self.policy.save_pretrained(tmp / _POLICY_DIR)
            (tmp / _VOCAB_FILE).write_text(json.dumps(self.vocab.to_dict(), indent=1))
            torch.save(self._training_state(), tmp / _STATE_FILE)
            has_demos = include_demonstrations and bool(self.demonstrations)
            if has_demos:
                save_demonstrations(tmp / _DEMOS_FILE, self.demonstrations)
            files = {
                p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": _file_digest(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            meta = {
                "format": _FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "agent": _registered_name(type(self)),
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "hyperparameters": self.config.to_dict(),
                "seed": self.seed,
                "num_timesteps": self.num_timesteps,
                "n_updates": self._n_updates,
                "total_timesteps": self._total_timesteps,
                "schedule": list(self._schedule),
                "rng": self.rng.bit_generator.state,
                "env": _env_spec(self.env),
                "limits": {"max_length": self.max_length, "max_steps": self.max_steps},
                "demonstrations": has_demos,
                "files": files,
            }
            with open(tmp / _AGENT_FILE, "w") as f:  # written last: its presence marks a complete save
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            if target.exists():
                aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(target, aside)
                os.rename(tmp, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(
        cls: type[_AgentT],
        path: str | os.PathLike[str],
        env: Any = None,
        device: str = "auto",
        *,
        demonstrations: Sequence[Trajectory] | str | os.PathLike[str] | None = None,
    ) -> _AgentT:
        """Load an agent written by :meth:`save`; it predicts and trains exactly as the saved one would have.

        Args:
            path: the directory.
            env: the env to attach (must use the saved vocabulary); ``None`` rebuilds it from the saved
                Gymnasium id when the agent's env was made by id (else the agent can predict and generate from
                given prompts, but not draw prompts).
            device: ``"auto"``, ``"cpu"``, ``"cuda"``...
            demonstrations: training data to use instead of the saved ones.

        Called on a subclass (``BC.load``), the directory must hold that class (or a subclass); ``Agent.load``
        loads whatever registered class it holds.

        Raises:
            AgentLoadError: missing directory or file, truncated / corrupt file (sizes and SHA-256 are checked),
                another agent class, another vocabulary, unknown hyperparameters, or a newer format version.
        """
        root = Path(path)

        def fail(problem: str) -> AgentLoadError:
            return AgentLoadError(f"Cannot load an agent from {root}: {problem}")

        if not root.is_dir():
            aside = sorted(root.parent.glob(f".{root.name}.old-*")) if root.parent.is_dir() else []
            hint = f" An interrupted save left the previous one at {aside[-1]}." if aside else ""
            raise fail(f"no such directory.{hint}")
        meta_path = root / _AGENT_FILE
        if not meta_path.is_file():
            raise fail(
                f"it holds no {_AGENT_FILE}; it is not an agent directory (or the save was interrupted)."
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise fail(f"{_AGENT_FILE} is truncated or corrupt ({e}).") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
            raise fail(f"{_AGENT_FILE} is not a seqgym agent file.")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise fail(f"format version {version!r}; this seqgym reads versions <= {FORMAT_VERSION}.")
        try:
            files: dict[str, dict[str, Any]] = meta["files"]
            for rel, info in files.items():
                p = root / rel
                if not p.is_file():
                    raise fail(f"the file {rel} is missing.")
                if p.stat().st_size != info["size"]:
                    raise fail(
                        f"the file {rel} has {p.stat().st_size} bytes, {info['size']} were saved (truncated?)."
                    )
                if _file_digest(p) != info["sha256"]:
                    raise fail(f"the file {rel} does not match its saved SHA-256 (corrupt or modified).")
            name = str(meta["agent"])
            hp = dict(meta["hyperparameters"])
        except (KeyError, TypeError, AttributeError) as e:
            raise fail(f"{_AGENT_FILE} lacks or garbles the entry {e}.") from None

        try:
            saved_cls = _lookup(name)
        except KeyError:
            raise fail(
                f"it holds a {name!r} agent ({meta.get('class')}), which is not registered here; import its "
                "module or call register_agent first."
            ) from None
        if not issubclass(saved_cls, cls):
            raise fail(
                f"it holds a {name!r} agent ({saved_cls.__name__}), not a {cls.__name__}; load it with "
                f"{saved_cls.__name__}.load or Agent.load."
            )
        names = saved_cls.config_class.field_names()
        unknown = [k for k in hp if k not in names]
        if unknown:
            raise fail(
                f"unknown hyperparameters {unknown} for {saved_cls.__name__} (saved by another version?)."
            )
        hp["device"] = device
        try:
            config = saved_cls.config_class(**hp)
            vocab = Vocabulary.from_dict(json.loads((root / _VOCAB_FILE).read_text()))
        except (ValueError, TypeError, KeyError, OSError) as e:
            raise fail(f"bad hyperparameters or vocabulary ({e}).") from None

        if env is None and isinstance(meta.get("env"), dict):
            import gymnasium as gym

            from seqgym.registration import register_envs

            register_envs()
            try:
                env = gym.make(meta["env"]["id"], **meta["env"].get("kwargs", {}))
            except Exception as e:
                raise fail(f"cannot rebuild the env {meta['env']['id']!r} ({e}); pass env=.") from None
        if env is not None:
            _, base = _resolve_env(env)
            if base.vocab != vocab:
                raise fail(
                    f"the env's vocabulary {base.vocab} differs from the saved one {vocab}; pass an env over the "
                    "same tokens."
                )
        dev = _resolve_device(device)
        try:
            with _quiet_transformers():
                policy = LMPolicy.load(root / _POLICY_DIR, device=dev)
        except Exception as e:
            raise fail(f"the policy in {_POLICY_DIR}/ cannot be loaded ({type(e).__name__}: {e}).") from None
        if policy.vocab != vocab:
            raise fail("the policy's vocabulary differs from vocab.json.")
        if demonstrations is None and meta.get("demonstrations"):
            try:
                demonstrations = load_demonstrations(root / _DEMOS_FILE, vocab=vocab)
            except (ValueError, OSError) as e:
                raise fail(f"{_DEMOS_FILE} cannot be read ({e}).") from None
        try:
            state = torch.load(root / _STATE_FILE, map_location=dev, weights_only=True)
        except Exception as e:
            raise fail(f"{_STATE_FILE} cannot be read ({type(e).__name__}: {e}).") from None

        agent = saved_cls.__new__(saved_cls)
        agent._build(
            env=env,
            config=config,
            seed=int(meta["seed"]),
            policy=policy,
            demonstrations=demonstrations,
            collect_missing=False,
            limits=meta.get("limits"),
            loading=True,
        )
        try:
            agent._restore(meta, state)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise fail(f"the training state does not fit this agent ({type(e).__name__}: {e}).") from None
        return agent

    def _restore(self, meta: dict[str, Any], state: dict[str, Any]) -> None:
        self.num_timesteps = int(meta["num_timesteps"])
        self._n_updates = int(meta["n_updates"])
        self._total_timesteps = int(meta["total_timesteps"])
        unit, start, end = meta["schedule"]
        self._schedule = (str(unit), int(start), int(end))
        self.rng.bit_generator.state = meta["rng"]
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("generator_device") == self.device.type:
            self._generator.set_state(state["generator"].cpu())
        else:  # another device type has another generator; continue a deterministic stream instead
            self._generator.manual_seed((self.seed * 1_000_003 + self._n_updates) % 2**62)
        train_rng = state.get("train_rng")
        if train_rng is not None:
            cpu_state = train_rng.get("cpu")
            cuda_state = train_rng.get("cuda") if self.device.type == "cuda" else None
            self._train_rng_state = {
                "cpu": None if cpu_state is None else cpu_state.cpu(),
                "cuda": None if cuda_state is None else cuda_state.cpu(),
            }
        sampler = state.get("sampler")
        if sampler is not None and int(sampler["n"]) == self._dataset_size():
            self._sampler = _EpochSampler(int(sampler["n"]))
            self._sampler.load({"n": sampler["n"], "perm": sampler["perm"].cpu(), "pos": sampler["pos"]})
        self._load_extra_state(state.get("extra") or {})

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, seed={self.seed}, num_timesteps={self.num_timesteps}, "
            f"n_updates={self._n_updates}, device={self.device})"
        )
