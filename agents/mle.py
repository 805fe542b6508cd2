"""Maximum likelihood (teacher forcing) on clean expert sequences: the baseline without ``<backspace>``.

Loss, for a batch of ``B`` clean sequences ``(prompt_b, x_b)`` with ``x_b`` ending in eos::

    L = (1 / B) * sum_b sum_i  -log pi(x_b[i] | prompt_b + x_b[:i])

summed over the steps of a sequence and averaged over sequences (``sequencematch.md`` §3: a sequence's loss is
never divided by its own length). ``pi`` is the softmax of the LM logits with ``<backspace>`` removed, the same
distribution MLE samples from: the agent never emits ``<backspace>`` (``allow_backspace = False`` masks it in
``predict`` and ``generate``). Demonstrations that hold inserted mistakes are first reduced to their clean
sequence (:meth:`~seqgym.data.Trajectory.clean`). ``num_timesteps`` advances by the tokens trained on.

Example:
    >>> from agents.base import make_agent
    >>> agent = make_agent("mle", env="seqgym/Dyck-v0", seed=0, n_demonstrations=32, batch_size=8,
    ...                    policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2})
    >>> agent = agent.learn(200)
    >>> out = agent.generate(4, seed=0)
    >>> any(agent.vocab.backspace_id in a for a in out.actions)
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents.base import Agent, register_agent

__all__ = ["MLE", "MLEBatch"]


@dataclass(frozen=True)
class MLEBatch:
    """Clean sequences to teacher-force: ``prompts[b]`` (P_b,) and ``completions[b]`` (T_b,) int64 arrays."""

    prompts: list[Any]
    completions: list[Any]
    n_tokens: int


class MLE(Agent):
    """Teacher-forced cross-entropy on clean expert sequences; never emits ``<backspace>``.

    Hyperparameters: those of :class:`~agents.base.AgentConfig` only.
    """

    name = "mle"
    allow_backspace = False

    def _setup(self) -> None:
        clean = [t if t.n_backspaces == 0 else t.clean() for t in self.demonstrations]
        self._prompts = [np.asarray(t.prompt, dtype=np.int64) for t in clean]
        self._completions = [np.asarray(t.actions, dtype=np.int64) for t in clean]

    def _dataset_size(self) -> int:
        return len(self._completions)

    def _sample_batch(self, batch_size: int, rng: np.random.Generator) -> MLEBatch:
        idx = self._sample_indices(batch_size, rng)
        completions = [self._completions[i] for i in idx]
        return MLEBatch(
            prompts=[self._prompts[i] for i in idx],
            completions=completions,
            n_tokens=int(sum(len(c) for c in completions)),
        )

    def _n_timesteps(self, batch: MLEBatch) -> int:
        return batch.n_tokens

    def _loss(self, batch: MLEBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.policy.trajectory_logits(batch.prompts, batch.completions)
        logits = out.logits[:, :-1]  # (B, T, A) logits at the states before each token
        no_bksp = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        no_bksp[self.vocab.backspace_id] = True
        logp = logits.masked_fill(no_bksp, float("-inf")).log_softmax(dim=-1)  # (B, T, A)
        logp = logp.gather(-1, out.actions[..., None])[..., 0]  # (B, T)
        nll = -torch.where(out.action_mask, logp, 0.0).sum()  # summed over steps and sequences
        loss = nll / len(batch.completions)
        return loss, {"nll_per_token": nll.detach() / max(batch.n_tokens, 1)}


register_agent("mle", MLE)
