"""Behaviour cloning on backspace-augmented demonstrations ("MLE + backspace", ``docs/method.md`` §4, §6).

Before each expert action, with probability ``p_noise``, a wrong token and the ``<backspace>`` that repairs it
are inserted (:func:`seqgym.data.augment`): with ``noise="uniform"`` once, at construction, the wrong token
drawn uniformly; with ``noise="model"`` afresh for every batch, the wrong token sampled from the current policy
(:class:`~agents.common.noise.ModelNoise`, one no-grad forward per batch), exactly as SequenceMatch does
(both use :class:`~agents.common.noise.Augmentation`).
The loss is the cross-entropy of every *expert* (state, action) pair, from one masked forward per batch
(:meth:`agents.policy.LMPolicy.trajectory_logits`)::

    L = (1 / B) * sum_b sum_i  expert_b[i] * -log pi(a_b[i] | u_b[i])

summed over steps and averaged over trajectories (never divided by a trajectory's length). Inserted mistakes
(``expert = False``) are masked out, while the state after a mistake, where ``<backspace>`` is the right
action, is kept. ``num_timesteps`` advances by the expert pairs trained on.

Example:
    >>> from agents import make_agent
    >>> agent = make_agent("bc", env="seqgym/Dyck-v0", seed=0, n_demonstrations=32, batch_size=8, p_noise=0.2,
    ...                    policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2})
    >>> sum(t.n_mistakes for t in agent.train_trajectories) > 0
    True
    >>> agent.train(n_epochs=1).n_updates
    4
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from agents.common.agent import Agent
from agents.common.noise import Augmentation, AugmentationConfig
from agents.common.registry import register_agent
from seqgym.data import Trajectory

__all__ = ["BC", "BCConfig"]


@dataclasses.dataclass(kw_only=True)
class BCConfig(AugmentationConfig):
    """Hyperparameters of :class:`BC`: those of :class:`~agents.common.noise.AugmentationConfig` (``p_noise``,
    ``noise``, ``noise_margin``) and :class:`~agents.common.config.AgentConfig`; nothing of its own."""


class BC(Agent[list[Trajectory]]):
    """Cross-entropy on the expert (state, action) pairs of backspace-augmented demonstrations.

    Attributes:
        train_trajectories: the demonstrations trained on: augmented (``noise="uniform"``) or clean, to be
            augmented per batch (``noise="model"``).
    """

    name = "bc"
    config_class = BCConfig
    config: BCConfig

    def _setup(self) -> None:
        self.augmentation = Augmentation.for_agent(self)
        self.train_trajectories: list[Trajectory] = self.augmentation.trajectories
        self.model_noise = self.augmentation.model_noise

    def _dataset_size(self) -> int:
        return len(self.train_trajectories)

    def _sample_batch(self, batch_size: int, rng: np.random.Generator) -> list[Trajectory]:
        batch = [self.train_trajectories[i] for i in self._sample_indices(batch_size, rng)]
        return self.augmentation.batch(batch, rng)

    def _loss(self, batch: list[Trajectory]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prompts: list[Any] = [t.prompt for t in batch]  # int64 arrays (IdRows does not type a list of them)
        actions: list[Any] = [t.actions for t in batch]
        out = self.policy.trajectory_logits(prompts, actions)
        B, T = out.actions.shape
        expert = np.zeros((B, T), dtype=bool)
        for b, t in enumerate(batch):
            expert[b, : len(t)] = t.expert
        weight = out.action_mask & torch.from_numpy(expert).to(out.actions.device)  # (B, T)
        logp = out.logits[:, :-1].log_softmax(dim=-1)  # (B, T, A)
        logp = logp.gather(-1, out.actions[..., None])[..., 0]  # (B, T) log pi(a_i | u_i)
        nll = -torch.where(weight, logp, 0.0)  # (B, T)
        is_bksp = weight & (out.actions == self.vocab.backspace_id)  # (B, T)
        n = weight.sum().clamp(min=1)
        loss = nll.sum() / B
        return loss, {
            "nll_per_action": nll.sum().detach() / n,
            "backspace_nll": (nll * is_bksp).sum().detach() / is_bksp.sum().clamp(min=1),
        }


register_agent("bc", BC)
