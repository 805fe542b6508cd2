"""Maximum likelihood (teacher forcing) on clean expert sequences: the baseline without ``<backspace>``.

Loss, for a batch of ``B`` clean sequences ``(prompt_b, x_b)`` with ``x_b`` ending in eos::

    L = (1 / B) * sum_b sum_i  -log pi(x_b[i] | prompt_b + x_b[:i])

summed over the steps of a sequence and averaged over sequences (``docs/method.md`` §3: a sequence's loss is
never divided by its own length). ``pi`` is the softmax of the LM logits with ``<backspace>`` removed, the same
distribution MLE samples from: the agent never emits ``<backspace>`` (``allow_backspace = False`` masks it in
``predict`` and ``generate``). Demonstrations that hold inserted mistakes are first reduced to their clean
sequence (:meth:`~seqgym.data.Trajectory.clean`). ``num_timesteps`` advances by the tokens trained on.

Example:
    >>> from agents import make_agent
    >>> agent = make_agent("mle", env="seqgym/Dyck-v0", seed=0, n_demonstrations=32, batch_size=8,
    ...                    policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2})
    >>> agent = agent.learn(200)
    >>> out = agent.generate(4, seed=0)
    >>> any(agent.vocab.backspace_id in a for a in out.actions)
    False
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.common.agent import Agent
from agents.common.distributed import ProcessGroup
from agents.common.registry import register_agent

__all__ = ["MLE", "MLEBatch"]


@dataclass(frozen=True)
class MLEBatch:
    """A batch of clean sequences, by index into the agent's padded data tensor.

    Attributes:
        indices: int64 ``(B,)`` rows of the data set.
        width: ``1 + max_b (P_b + T_b)``: columns of the padded rows the batch needs (BOS slot included).
        n_tokens: ``sum_b T_b``, the completion tokens (the (state, action) pairs) trained on.
    """

    indices: np.ndarray
    width: int
    n_tokens: int


class MLE(Agent[MLEBatch]):
    """Teacher-forced cross-entropy on clean expert sequences; never emits ``<backspace>``.

    Hyperparameters: those of :class:`~agents.common.config.AgentConfig` only.

    A clean sequence has no backspace, so the state before its ``i``-th token is simply its prefix and one
    causal forward over ``[BOS, prompt, completion]`` (right-padded, position ids ``0, 1, ...``) gives the logits
    of every state: the input and positions :meth:`~agents.policy.LMPolicy.trajectory_logits` uses, without
    building its 4-D mask (checked against the policy's per-state forward in the tests). The data set is one
    padded tensor on the device, built once.
    """

    name = "mle"
    allow_backspace = False

    def _setup(self) -> None:
        v = self.vocab
        clean = [t if t.n_backspaces == 0 else t.clean() for t in self.demonstrations]
        self._prompt_lengths = np.array([t.prompt_length for t in clean], dtype=np.int64)  # (N,)
        self._completion_lengths = np.array([len(t) for t in clean], dtype=np.int64)  # (N,)
        self._row_lengths = 1 + self._prompt_lengths + self._completion_lengths  # (N,) BOS included
        width = int(self._row_lengths.max()) if len(clean) else 1
        rows = np.full((len(clean), width), v.pad_id, dtype=np.int64)  # (N, W) env ids
        for i, t in enumerate(clean):
            rows[i, : self._row_lengths[i]] = np.concatenate(([v.eos_id], t.prompt, t.actions))  # BOS = eos
        dev = self.device
        self._rows = torch.from_numpy(rows).to(dev)  # (N, W)
        self._rows_len = torch.from_numpy(self._row_lengths).to(dev)  # (N,)
        self._rows_prompt = torch.from_numpy(self._prompt_lengths).to(dev)  # (N,)

    def _dataset_size(self) -> int:
        return len(self._completion_lengths)

    def _sample_batch(self, batch_size: int, rng: np.random.Generator) -> MLEBatch:
        idx = self._sample_indices(batch_size, rng)
        return MLEBatch(
            indices=idx,
            width=int(self._row_lengths[idx].max()),
            n_tokens=int(self._completion_lengths[idx].sum()),
        )

    def _n_timesteps(self, batch: MLEBatch) -> int:
        return batch.n_tokens

    def _shard_batch(self, batch: MLEBatch, group: ProcessGroup) -> MLEBatch:
        idx = batch.indices[group.shard(len(batch.indices))]
        return MLEBatch(
            indices=idx,
            width=int(self._row_lengths[idx].max()),
            n_tokens=int(self._completion_lengths[idx].sum()),
        )

    def _loss(self, batch: MLEBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dev = self._rows.device
        idx = torch.from_numpy(batch.indices).to(dev)  # (B,)
        x = self._rows[idx, : batch.width]  # (B, W) [BOS, prompt, completion, pad...]
        inp, target = x[:, :-1], x[:, 1:]  # (B, W-1): state prefixes in, next tokens out
        pos = torch.arange(batch.width - 1, device=dev)[None, :]  # (1, W-1)
        n_in = (self._rows_len[idx] - 1)[:, None]  # (B, 1) inputs per row (the last token is only a target)
        attend = pos < n_in  # (B, W-1)
        trained = attend & (pos >= self._rows_prompt[idx][:, None])  # (B, W-1) completion targets only
        tm = self.policy.token_map
        out = self.policy.call_model(
            input_ids=tm.to_model(inp),
            attention_mask=attend.long(),
            position_ids=pos.expand(x.shape[0], -1),
            use_cache=False,
        )
        logits = tm.action_logits(out.logits)  # (B, W-1, A)
        no_bksp = torch.zeros(logits.shape[-1], dtype=torch.bool, device=dev)
        no_bksp[self.vocab.backspace_id] = True
        logp = logits.masked_fill(no_bksp, float("-inf")).log_softmax(
            dim=-1
        )  # (B, W-1, A), backspace removed
        logp = logp.gather(-1, target.masked_fill(~trained, 0)[..., None])[..., 0]  # (B, W-1)
        nll = -torch.where(trained, logp, 0.0).sum()  # summed over steps and sequences
        loss = nll / x.shape[0]
        return loss, {"nll_per_token": nll.detach() / max(batch.n_tokens, 1)}


register_agent("mle", MLE)
