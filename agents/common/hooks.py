"""What an algorithm overrides (the hooks, with their defaults), and the state every part of an agent shares.

:class:`AgentHooks` is the common base of the parts :class:`~agents.common.agent.Agent` is assembled from
(training, acting, checkpoint I/O): it declares the attributes that construction sets and the hooks the
training loop and checkpoints call. An algorithm subclasses ``Agent`` and overrides hooks; the module
docstring of :mod:`agents.common.agent` lists them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, cast

import numpy as np
import torch
from typing_extensions import TypeVar

from agents.common.config import AgentConfig
from seqgym.data import Trajectory

if TYPE_CHECKING:
    import gymnasium as gym

    from agents.common.distributed import ProcessGroup
    from agents.policy import LMPolicy
    from seqgym.env import SequenceEnv
    from seqgym.vocab import Vocabulary

__all__ = ["AgentHooks", "BatchT", "EpochSampler"]

#: The type of an algorithm's batch: what its ``_sample_batch`` returns and its ``_loss`` takes.
BatchT = TypeVar("BatchT", default=Any)  # a bare ``Agent`` is ``Agent[Any]``


class EpochSampler:
    """Indices ``0..n-1`` in shuffled epochs (each index once per epoch), drawn from a given generator."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0

    def next(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """The next ``k`` indices, int64 ``(k,)``; a new permutation starts whenever one is used up."""
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

    def state(self) -> dict[str, int | torch.Tensor]:
        """Checkpoint state: ``{"n", "perm" (int64 tensor), "pos"}``."""
        return {"n": self.n, "perm": torch.from_numpy(self.perm.copy()), "pos": self.pos}

    def load(self, state: Mapping[str, int | torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""
        perm = state["perm"]
        assert isinstance(perm, torch.Tensor)
        self.n = int(state["n"])
        self.perm = perm.numpy().astype(np.int64)
        self.pos = int(state["pos"])


class AgentHooks(Generic[BatchT]):
    """Shared state and the algorithm hooks; see :mod:`agents.common.agent` for the interface.

    The attributes are set by :meth:`Agent._build <agents.common.agent.Agent>` (documented on ``Agent``).
    """

    name: ClassVar[str] = "agent"
    config_class: ClassVar[type[AgentConfig]] = AgentConfig
    allow_backspace: ClassVar[bool] = True

    config: AgentConfig
    seed: int
    device: torch.device
    env: gym.Env[Any, Any] | None
    _seq_env: SequenceEnv | None
    vocab: Vocabulary
    max_length: int
    max_steps: int
    policy: LMPolicy
    demonstrations: list[Trajectory]
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    num_timesteps: int
    _n_updates: int
    _total_timesteps: int
    _schedule: tuple[str, int, int]
    _sampler: EpochSampler | None
    _generator: torch.Generator
    _setup_ss: np.random.SeedSequence
    _train_torch_seed: int
    _train_rng_state: dict[str, torch.Tensor | None] | None
    _in_training: bool

    # -- hooks ----------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Build derived data / modules (deterministic given the seed: draw from :meth:`setup_rng`)."""

    def _parameters(self) -> Iterator[torch.nn.Parameter]:
        """Parameters the optimiser updates (default: the policy's)."""
        return self.policy.parameters()

    def _dataset_size(self) -> int:
        """Items per epoch of ``train(n_epochs=...)`` and of :meth:`_sample_indices`."""
        return len(self.demonstrations)

    def _sample_batch(self, batch_size: int, rng: np.random.Generator) -> BatchT:
        """A batch to train on (default: ``batch_size`` demonstrations in epoch-shuffled order, for agents whose
        batch is a ``list[Trajectory]``)."""
        return cast(BatchT, [self.demonstrations[int(i)] for i in self._sample_indices(batch_size, rng)])

    def _loss(self, batch: BatchT) -> tuple[torch.Tensor, Mapping[str, float | torch.Tensor]]:
        """``(scalar loss to minimise, {term name: float or 0-d tensor})`` for one batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement _loss(batch) -> (loss, terms).")

    def _n_timesteps(self, batch: BatchT) -> int:
        """(state, action) pairs ``batch`` trains on (default: expert actions of a list of trajectories)."""
        if isinstance(batch, list) and all(isinstance(t, Trajectory) for t in batch):
            return int(sum(int(np.count_nonzero(t.expert)) for t in batch))
        raise NotImplementedError(
            f"{type(self).__name__}._sample_batch returns {type(batch).__name__}; implement _n_timesteps(batch)."
        )

    def _shard_batch(self, batch: BatchT, group: ProcessGroup) -> BatchT:
        """This rank's part of the global ``batch`` in a multi-process run (default: a contiguous slice of a list
        of trajectories, :meth:`ProcessGroup.shard`). The loss of a shard must be the mean over its items of
        what the global loss averages, so that DDP's mean of the shards' gradients is the global gradient."""
        if isinstance(batch, list):
            return cast(BatchT, batch[group.shard(len(batch))])
        raise NotImplementedError(
            f"{type(self).__name__}._sample_batch returns {type(batch).__name__}; implement "
            "_shard_batch(batch, group) to train on several processes."
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
            self._sampler = EpochSampler(n)
        return self._sampler.next(batch_size, rng)
