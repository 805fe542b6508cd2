"""Behaviour cloning on backspace-augmented demonstrations ("MLE + backspace", ``sequencematch.md`` §4, §6).

Before each expert action, with probability ``p_noise``, a wrong token and the ``<backspace>`` that repairs it
are inserted (:func:`seqgym.data.augment`): with ``noise="uniform"`` once, at construction, the wrong token
drawn uniformly; with ``noise="model"`` afresh for every batch, the wrong token sampled from the current policy
(:class:`~agents.sequencematch.ModelNoise`, one no-grad forward per batch), exactly as SequenceMatch does.
The loss is the cross-entropy of every *expert* (state, action) pair, from one masked forward per batch
(:meth:`agents.policy.LMPolicy.trajectory_logits`)::

    L = (1 / B) * sum_b sum_i  expert_b[i] * -log pi(a_b[i] | u_b[i])

summed over steps and averaged over trajectories (never divided by a trajectory's length). Inserted mistakes
(``expert = False``) are masked out, while the state after a mistake, where ``<backspace>`` is the right
action, is kept. ``num_timesteps`` advances by the expert pairs trained on.

Example:
    >>> from agents.base import make_agent
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

from agents.base import Agent, AgentConfig, register_agent
from agents.sequencematch import ModelNoise
from seqgym.data import Trajectory, augment, inserted_allowed_share

__all__ = ["BC", "BCConfig"]


@dataclasses.dataclass(kw_only=True)
class BCConfig(AgentConfig):
    """Hyperparameters of :class:`BC`: those of :class:`~agents.base.AgentConfig`, plus:

    Attributes:
        p_noise: probability of inserting a (wrong token, backspace) pair before each expert action, in
            ``[0, 1]`` (default 0.1). ``0.0`` trains on the demonstrations exactly as given (e.g. already
            augmented ones); demonstrations that already hold inserted mistakes require ``p_noise=0.0``.
        noise: how the wrong token is drawn: ``"uniform"`` (default) over the ordinary tokens but the
            expert's, or ``"model"``: from the current policy, restricted to those tokens.
    """

    p_noise: float = 0.1
    noise: str = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.p_noise, bool) or not isinstance(self.p_noise, (int, float)):
            raise TypeError(f"p_noise must be a number in [0, 1], got {self.p_noise!r}.")
        if not 0.0 <= float(self.p_noise) <= 1.0:
            raise ValueError(f"p_noise must be a probability in [0, 1], got {self.p_noise!r}.")
        if self.noise not in ("uniform", "model"):
            raise ValueError(f"noise must be 'uniform' or 'model', got {self.noise!r}.")


class BC(Agent):
    """Cross-entropy on the expert (state, action) pairs of backspace-augmented demonstrations.

    Attributes:
        train_trajectories: the demonstrations trained on: augmented (``noise="uniform"``) or clean, to be
            augmented per batch (``noise="model"``).
    """

    name = "bc"
    config_class = BCConfig
    config: BCConfig

    def _setup(self) -> None:
        p = float(self.config.p_noise)
        if p > 0 and any(t.n_mistakes for t in self.demonstrations):
            raise ValueError(
                "The demonstrations already hold inserted mistakes (expert=False); pass p_noise=0.0 to train on "
                "them as given, or pass clean demonstrations."
            )
        source = getattr(self._seq_env, "source", None)  # rules out tokens: mistakes are real mistakes
        self.train_trajectories: list[Trajectory] = (
            augment(
                self.demonstrations, p, self.setup_rng(), "uniform", max_length=self.max_length, source=source
            )
            if p > 0 and self.config.noise == "uniform"
            else list(self.demonstrations)
        )
        #: share of the inserted wrong tokens that the source allows there (0: all real mistakes; nan: unknown)
        self.noise_allowed_share = inserted_allowed_share(self.train_trajectories, source)
        self.model_noise = ModelNoise(self.policy, source=source)

    def _dataset_size(self) -> int:
        return len(self.train_trajectories)

    def _sample_batch(self, batch_size: int, rng: np.random.Generator) -> list[Trajectory]:
        batch = [self.train_trajectories[i] for i in self._sample_indices(batch_size, rng)]
        p = float(self.config.p_noise)
        if self.config.noise == "model" and p > 0:
            self.model_noise.prepare(batch)
            batch = augment(batch, p, rng, self.model_noise, max_length=self.max_length)
            self.model_noise.prepare([])
        return batch

    def _loss(self, batch: list[Trajectory]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prompts: list[Any] = [t.prompt for t in batch]
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
