"""The agent: one interface for every learner, assembled from the parts in :mod:`agents.common`.

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
- ``sample_batch()`` / ``train_step(batch)``: one update on a batch you hold, exactly as ``learn`` takes it.

Where each part lives: hyperparameters in :mod:`agents.common.config`, the registry in
:mod:`agents.common.registry`, the training loop in :mod:`agents.common.training`, ``predict`` / ``generate`` in
:mod:`agents.common.acting`, ``save`` / ``load`` in :mod:`agents.common.checkpoint`, the hooks below (with
their defaults) in :mod:`agents.common.hooks`; this module builds the agent from its arguments.

Writing an algorithm (SB3's ``dqn.py`` habit: the file holds its loss and its data, nothing else). A subclass
sets the class attributes ``name`` and (if it has hyperparameters of its own) ``config_class``, a keyword-only
dataclass deriving from :class:`AgentConfig`, and implements these hooks; the base class owns the optimiser,
learning-rate schedule, gradient clipping, seeding, device, logging, callbacks, checkpoints and NaN checks:

- ``_setup()`` (optional): build derived data (e.g. augmented demonstrations) and modules. Runs once at
  construction and again on :meth:`Agent.load`, *before* the saved state is restored, so it must be
  deterministic given the seed: draw from ``self.setup_rng()``, never from ``self.rng``.
- ``_sample_batch(batch_size, rng) -> batch`` (default: ``batch_size`` demonstrations, epoch-shuffled through
  :meth:`Agent._sample_indices`). Draw only from ``rng`` (the agent's training generator, saved in checkpoints).
  The batch type is the algorithm's: ``class MLE(Agent[MLEBatch])`` says what ``_sample_batch`` returns and
  ``_loss`` / ``train_step`` take (a bare ``Agent`` is ``Agent[Any]``).
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
    >>> from agents import Agent, list_agents, make_agent, register_agent
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

import os
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agents.common.acting import ActingMixin
from agents.common.checkpoint import CheckpointMixin
from agents.common.config import AgentConfig
from agents.common.hooks import BatchT
from agents.common.resolve import DemonstrationsLike, EnvLike, resolve_device, resolve_env, resolve_seed
from agents.common.training import TrainingMixin
from agents.policy import LMPolicy
from seqgym.data import Trajectory, collect, load_demonstrations
from seqgym.vocab import Vocabulary

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

__all__ = ["Agent", "DemonstrationsLike", "EnvLike"]


#: Refuse a configuration whose estimated training memory exceeds this share of the device's memory.
MEMORY_SHARE = 0.9


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory of ``device`` (the GPU's, or the machine's RAM for the CPU); ``None`` if unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not every platform has sysconf
        return None


def check_memory(
    *,
    max_length: int,
    max_steps: int,
    batch_size: int,
    n_positions: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    device: torch.device,
    available: int | None = None,
) -> int:
    """A lower bound on the bytes one training update needs, refused up front when it exceeds
    :data:`MEMORY_SHARE` of the device's memory (instead of failing, or swapping, minutes later).

    Counted: the learned position embeddings with their gradient and two AdamW moments
    (``4·n_positions·n_embd`` floats, when a GPT-2 policy is built; pass 0 for rotary positions), and the
    attention scores the masked forward keeps for the backward pass (``batch_size·n_layer·n_head·T²`` floats
    with ``T = max_length + max_steps + 1`` positions a trajectory can span). Returns the estimate in bytes.

    Raises:
        ValueError: the estimate exceeds the memory (the message gives both and what to shrink).
    """
    T = int(max_length) + int(max_steps) + 1
    table = 4 * 4 * int(n_positions) * int(n_embd)
    need = table + 4 * int(batch_size) * int(n_layer) * int(n_head) * T * T
    total = device_memory(device) if available is None else available
    if total is not None and need > MEMORY_SHARE * total:
        if 2 * table > need:
            settings = f"n_positions={n_positions} with n_embd={n_embd}"
            what = "the position table, its gradient and AdamW moments"
            fix = "n_positions"
        else:
            settings = (
                f"max_length={max_length}, max_steps={max_steps} with batch_size={batch_size}, "
                f"n_layer={n_layer}, n_head={n_head}"
            )
            what = f"attention over {T} positions"
            fix = "max_length, max_steps or batch_size"
        raise ValueError(
            f"{settings} need at least {need / 2**30:.1f} GiB per update (mostly {what}), more than the "
            f"{total / 2**30:.1f} GiB of the {device.type} device; shrink {fix}."
        )
    return need


class Agent(TrainingMixin[BatchT], ActingMixin[BatchT], CheckpointMixin[BatchT]):
    """Base class of every learner; see the module docstring for the interface and the subclass hooks.

    Args:
        env: a ``SequenceEnv`` (possibly wrapped) or a registered id such as ``"seqgym/Dyck-v0"``.
        demonstrations: trajectories, a demonstration file, or ``None`` (collected from ``env.source``).
        policy: the :class:`LMPolicy` to train in place (fine-tuning a trained model: pass
            ``copy.deepcopy(other_agent.policy)`` to keep the original), the directory of a saved agent whose
            policy to start from, or ``None`` to build one from ``policy_kwargs``.
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

    def __init__(
        self,
        *,
        env: EnvLike,
        demonstrations: DemonstrationsLike = None,
        policy: LMPolicy | str | os.PathLike[str] | None = None,
        seed: int | None = None,
        **hyperparameters: Any,
    ) -> None:
        if env is None:
            raise TypeError("env is required: a SequenceEnv or a registered id such as 'seqgym/Dyck-v0'.")
        config = self.config_class.from_kwargs(hyperparameters, owner=type(self).__name__)
        if isinstance(
            policy, (str, os.PathLike)
        ):  # fine-tune the policy of a saved agent (e.g. a trained MLE)
            policy = type(self).load_policy(policy, device=config.device)
        if seed is not None:
            s = resolve_seed(seed)
            random.seed(s)
            np.random.seed(s % 2**32)  # noqa: NPY002 (SB3-style global seeding for user code)
            torch.manual_seed(s)
        self._build(env=env, config=config, seed=seed, policy=policy, demonstrations=demonstrations)

    # -- construction shared by __init__ and load ------------------------------------------------------------
    def _build(
        self,
        *,
        env: EnvLike | None,
        config: AgentConfig,
        seed: int | None,
        policy: LMPolicy | None,
        demonstrations: DemonstrationsLike,
        collect_missing: bool = True,
        limits: dict[str, int] | None = None,
        loading: bool = False,
    ) -> None:
        self.config = config
        self.seed = resolve_seed(seed)
        self.device = resolve_device(config.device)
        self.env, self._seq_env = resolve_env(env)
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
        self._train_rng_state = None
        self._in_training = False

        policy_is_given = policy is not None
        if policy is None:
            kwargs = dict(config.policy_kwargs)
            kwargs.setdefault("seed", self.seed)
            kwargs.setdefault("n_positions", max(128, self.max_length + 1))
            sizes = LMPolicy.config_sizes(**kwargs)
            check_memory(
                max_length=self.max_length,
                max_steps=self.max_steps,
                batch_size=config.batch_size,
                n_positions=sizes["position_table"],
                n_layer=sizes["n_layer"],
                n_embd=sizes["n_embd"],
                n_head=sizes["n_head"],
                device=self.device,
            )
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
        if policy_is_given:
            cfg = policy.model.config
            check_memory(
                max_length=self.max_length,
                max_steps=self.max_steps,
                batch_size=config.batch_size,
                n_positions=0,  # the weights exist already
                n_layer=int(getattr(cfg, "n_layer", getattr(cfg, "num_hidden_layers", 1))),
                n_embd=0,
                n_head=int(getattr(cfg, "n_head", getattr(cfg, "num_attention_heads", 1))),
                device=self.device,
            )
        self.policy = policy.to(self.device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(sample_seed)

        self.demonstrations = self._resolve_demonstrations(
            demonstrations, collect_missing=collect_missing, rng=np.random.default_rng(collect_ss)
        )

        self.num_timesteps = 0
        self._n_updates = 0
        self._total_timesteps = 0
        self._schedule = ("timesteps", 0, 1)
        self._sampler = None
        self._logger = None
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
        demonstrations: DemonstrationsLike,
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

    # -- SB3 model protocol (used by callbacks) ------------------------------------------------------------
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

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, seed={self.seed}, num_timesteps={self.num_timesteps}, "
            f"n_updates={self._n_updates}, device={self.device})"
        )
