"""Acting: SB3's ``predict`` (one step of an env) and batched ``generate`` with ``<backspace>``.

Both sample from the agent's policy ``softmax(logits)`` (every agent's policy; SequenceMatch reads the logits
as ``Q/α``) through the one sampling function of generation, :func:`agents.policy.sample_actions`, and mask
``<backspace>`` at the prompt boundary (everywhere for agents with ``allow_backspace = False``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from agents.common.config import is_int
from agents.common.hooks import AgentHooks, BatchT
from agents.common.resolve import resolve_seed
from agents.policy import Generation, sample_actions

__all__ = ["ActingMixin"]


class ActingMixin(AgentHooks[BatchT]):
    """``predict``, ``generate`` and the sampling generator; part of :class:`~agents.common.agent.Agent`."""

    def set_sampling_seed(self, seed: int) -> None:
        """Re-seed the generator that ``predict`` (and ``generate(seed=None)``) sample from.

        After ``agent.set_sampling_seed(s)``, stepping a ``SequenceEnv`` with ``predict`` samples the same
        actions as ``agent.generate(prompts=[prompt], seed=s)`` (one prompt).
        """
        self._generator.manual_seed(resolve_seed(seed))

    def _observation_batch(self, observation: np.ndarray | dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
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
        generated: Sequence[Sequence[int]] | None = None,
        backspace: bool = True,
    ) -> Generation:
        """Sample ``n`` sequences (or one per prompt) with backspace, batched on a KV cache.

        Args:
            n: number of samples when ``prompts`` is None (default 1); must equal ``len(prompts)`` otherwise.
            prompts: prompts (ordinary token ids); default: drawn from ``env.source``.
            max_steps, max_length: limits per row (default: the env's).
            temperature, top_p, top_k: sampling settings of :func:`agents.policy.sample_actions`.
            seed: sample from a fresh generator seeded with it (prompts too); ``None`` continues the agent's
                sampling generator.
            generated: one deletable generated part per prompt (requires ``prompts``): each row starts from
                ``prompt + generated`` and may delete the generated part (recovery evaluation,
                ``docs/method.md`` §7).
            backspace: False masks ``<backspace>`` everywhere (validity without backspace, for comparison).

        Returns:
            :class:`agents.policy.Generation`: ``sequences`` (final visible, prompt included), ``actions`` (full
            histories, backspaces included), ``terminated``, ``truncated``.
        """
        if prompts is None and generated is not None:
            raise ValueError("generated= needs prompts= (one deletable generated part per prompt).")
        if prompts is None:
            count = 1 if n is None else n
            if not is_int(count) or count < 1:
                raise ValueError(f"n must be an int >= 1, got {n!r}.")
            source = getattr(self._seq_env, "source", None)
            if source is None:
                raise ValueError(
                    "This agent has no env to draw prompts from; pass prompts= (or env= to load)."
                )
            if seed is not None:
                prompt_rng = np.random.default_rng(resolve_seed(seed))
            else:
                draw = torch.randint(0, 2**62, (1,), generator=self._generator, device=self.device)
                prompt_rng = np.random.default_rng(int(draw.item()))
            prompt_list: list[list[int]] = [list(source.sample(prompt_rng)[0]) for _ in range(int(count))]
        else:
            if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (Sequence, np.ndarray)):
                raise TypeError(f"prompts must be a sequence of id sequences, got {type(prompts).__name__}.")
            prompt_list = [[int(t) for t in p] for p in prompts]
            if generated is not None and len(generated) != len(prompt_list):
                raise ValueError(
                    f"generated has {len(generated)} rows for {len(prompt_list)} prompts; give one per prompt."
                )
            if n is not None and n != len(prompt_list):
                raise ValueError(f"n={n} but {len(prompt_list)} prompts were given; pass one or the other.")
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(resolve_seed(seed))
        else:
            generator = self._generator
        self.policy.eval()
        precision = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
            if self.config.mixed_precision == "bf16"
            else contextlib.nullcontext()
        )
        with precision:
            return self.policy.generate(
                prompt_list,
                max_steps=self.max_steps if max_steps is None else max_steps,
                max_length=self.max_length if max_length is None else max_length,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
                allow_backspace=self.allow_backspace and bool(backspace),
                generated=None if generated is None else [[int(t) for t in g] for g in generated],
            )
