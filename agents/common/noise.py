"""Backspace in the data (``docs/method.md`` §4): the augmentation BC and SequenceMatch share.

Before each expert action, with probability ``p_noise``, a wrong token and the ``<backspace>`` that repairs it
are inserted (:func:`seqgym.data.augment`). How the wrong token is drawn is the noise kind
(:data:`NoiseKind`):

- ``"uniform"``: uniformly over the wrong tokens, once, when the agent is built (the same seed gives BC and
  SequenceMatch the same augmented data);
- ``"model"``: sampled from the current policy restricted to the wrong tokens (:class:`ModelNoise`), afresh for
  every batch from its clean demonstrations (one no-grad forward per batch).

A wrong token is a real mistake (``docs/method.md`` §4): where the env's source knows its probabilities, a token it
rules out at that state (:func:`seqgym.data.mistake_candidates`; no pair is inserted where it rules none out),
otherwise any ordinary token but the expert's. :attr:`Augmentation.allowed_share` reports the share of inserted
tokens the source would have allowed (0 for the toy sources).

An agent that augments derives its config from :class:`AugmentationConfig` and builds one
:class:`Augmentation` in its ``_setup``; its ``_sample_batch`` passes each batch through it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from agents.common.config import AgentConfig, is_number
from agents.policy import LMPolicy
from seqgym.data import Trajectory, augment, inserted_allowed_share, mistake_candidates

__all__ = [
    "NOISE_KINDS",
    "Augmentation",
    "AugmentationConfig",
    "ModelNoise",
    "NoiseKind",
    "check_noise_margin",
]

#: How an inserted wrong token is drawn: uniformly (once, at construction) or from the model (per batch).
NoiseKind = Literal["uniform", "model"]
NOISE_KINDS: tuple[NoiseKind, ...] = typing.get_args(NoiseKind)


@dataclasses.dataclass(kw_only=True)
class AugmentationConfig(AgentConfig):
    """Hyperparameters of agents that train on augmented demonstrations: those of :class:`AgentConfig`, plus:

    Attributes:
        p_noise: probability of inserting a (wrong token, backspace) pair before each expert action, in
            ``[0, 1]`` (default 0.1). ``0.0`` trains on the demonstrations exactly as given (e.g. already
            augmented ones); demonstrations that already hold inserted mistakes require ``p_noise=0.0``.
        noise: how the wrong token is drawn: ``"uniform"`` (default) over the wrong tokens (those the source
            rules out, else all but the expert's), or ``"model"``: from the current policy, restricted to them.
        noise_margin: leave the last ``noise_margin`` positions before the env's length limit without inserted
            mistakes (default 0: every position may get one). Near the limit a source with a length limit rules
            out the tokens that could not be finished in time, so the mistakes inserted there teach that limit as a
            rule; a margin keeps it out of the data, e.g. for completing sequences longer than the training ones.
    """

    p_noise: float = 0.1
    noise: NoiseKind = "uniform"
    noise_margin: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_number(self.p_noise):
            raise TypeError(
                f"p_noise must be a number in [0, 1], got {type(self.p_noise).__name__}: {self.p_noise!r}."
            )
        if not 0.0 <= float(self.p_noise) <= 1.0:
            raise ValueError(f"p_noise must be a probability in [0, 1], got {self.p_noise!r}.")
        if isinstance(self.noise_margin, bool) or not isinstance(self.noise_margin, (int, np.integer)):
            raise TypeError(
                f"noise_margin must be an int (a number of positions), got {self.noise_margin!r}."
            )
        if self.noise_margin < 0:
            raise ValueError(f"noise_margin must be >= 0 (a number of positions), got {self.noise_margin}.")


def check_noise_margin(noise_margin: int, max_length: int, demonstrations: Sequence[Trajectory]) -> None:
    """Raise ``ValueError`` when a ``noise_margin > 0`` leaves no position for a mistake: a wrong token must leave
    the visible sequence (prompt included) shorter than ``max_length - noise_margin``, so with prompts of at least
    ``P`` tokens the margin must stay below ``max_length - 1 - P``. A margin of 0 is always accepted.

    Example:
        >>> check_noise_margin(3, 17, [])
        >>> check_noise_margin(16, 17, [])
        Traceback (most recent call last):
        ...
        ValueError: noise_margin=16 leaves no position for a mistake: ... it must be at most 15.
    """
    if noise_margin <= 0:
        return
    shortest = min((t.prompt_length for t in demonstrations), default=0)
    room = max_length - 1 - shortest  # the visible lengths a wrong token may follow without a margin
    if noise_margin >= room:
        raise ValueError(
            f"noise_margin={noise_margin} leaves no position for a mistake: with the length limit {max_length} "
            f"and prompts of {shortest} tokens or more it must be at most {room - 1}."
        )


class Augmentation:
    """The augmented training data of one agent, and the per-batch model noise.

    Args:
        demonstrations: the clean expert trajectories.
        p_noise, noise, noise_margin: as in :class:`AugmentationConfig`.
        policy: the policy whose current weights propose the mistakes of model noise.
        rng: draws the uniform noise (pass the agent's ``setup_rng()``: construction must be deterministic).
        max_length: the env's length limit; no augmented state may exceed it.
        source: the demonstrations' source; where it has ``next_token_logprobs`` only tokens it rules out are
            inserted (``None``: any token but the expert's).

    Attributes:
        trajectories: the data to train on: augmented once (``"uniform"``) or clean (``"model"``, or
            ``p_noise = 0``).
        model_noise: the :class:`ModelNoise` of ``policy``.
        allowed_share: share of the inserted tokens the source would have allowed (0: all real mistakes;
            ``nan`` when nothing is inserted or the source cannot tell). With model noise it is that of the last
            batch.

    Raises:
        ValueError: ``p_noise > 0`` and the demonstrations already hold inserted mistakes.
    """

    def __init__(
        self,
        demonstrations: Sequence[Trajectory],
        *,
        p_noise: float,
        noise: NoiseKind,
        policy: LMPolicy,
        rng: np.random.Generator,
        max_length: int,
        source: object | None = None,
        noise_margin: int = 0,
    ) -> None:
        self.p_noise = float(p_noise)
        self.noise: NoiseKind = noise
        self.max_length = int(max_length)
        check_noise_margin(noise_margin, self.max_length, demonstrations)
        #: the limit passed to :func:`~seqgym.data.augment`: a wrong token must leave the sequence shorter
        self.noise_limit = self.max_length - int(noise_margin)
        if self.p_noise > 0 and any(t.n_mistakes for t in demonstrations):
            raise ValueError(
                "The demonstrations already hold inserted mistakes (expert=False); pass p_noise=0.0 to train on "
                "them as given, or pass clean demonstrations."
            )
        self.source = source
        self.trajectories: list[Trajectory] = (
            augment(demonstrations, self.p_noise, rng, "uniform", max_length=self.noise_limit, source=source)
            if self.p_noise > 0 and noise == "uniform"
            else list(demonstrations)
        )
        self.allowed_share = (
            inserted_allowed_share(self.trajectories, source) if source is not None else math.nan
        )
        self.model_noise = ModelNoise(policy, source=source)

    @classmethod
    def for_agent(cls, agent: Any) -> Augmentation:
        """The augmentation of ``agent`` (an agent whose config derives from :class:`AugmentationConfig`), built
        in its ``_setup``: its demonstrations, ``p_noise``, ``noise`` and ``noise_margin``, policy, setup
        generator, length limit, and its env's source (which tells real mistakes)."""
        c: AugmentationConfig = agent.config
        return cls(
            agent.demonstrations,
            p_noise=c.p_noise,
            noise=c.noise,
            policy=agent.policy,
            rng=agent.setup_rng(),
            max_length=agent.max_length,
            source=getattr(agent._seq_env, "source", None),
            noise_margin=c.noise_margin,
        )

    def batch(self, batch: list[Trajectory], rng: np.random.Generator) -> list[Trajectory]:
        """``batch`` (drawn from :attr:`trajectories`) as trained on: augmented afresh with model noise (one
        forward over the batch, mistakes drawn from ``rng``), else unchanged."""
        if self.noise != "model" or self.p_noise <= 0:
            return batch
        self.model_noise.prepare(batch)
        try:
            out = augment(
                batch, self.p_noise, rng, self.model_noise, max_length=self.noise_limit, source=self.source
            )
        finally:
            self.model_noise.prepare([])
        if self.source is not None:
            self.allowed_share = inserted_allowed_share(out, self.source)
        return out


class ModelNoise:
    """A :data:`~seqgym.data.NoiseFn` drawing each wrong token from the policy itself ("model noise", §4).

    The wrong token inserted before expert action ``i`` is sampled from ``π(·|u_i)`` restricted to the wrong
    tokens there (:func:`seqgym.data.mistake_candidates`: those ``source`` rules out, else the ordinary tokens
    other than the expert's action; never eos or backspace), so the inserted mistakes are the real mistakes the
    model is inclined to make. :meth:`prepare` runs ONE no-grad masked forward over a batch
    of trajectories and keeps their state probabilities; the calls :func:`seqgym.data.augment` then makes for
    those trajectories read them (an unprepared trajectory costs one forward of its own). Sampling uses only
    the ``rng`` that ``augment`` passes.

    Args:
        policy: the :class:`~agents.policy.LMPolicy` whose current weights propose the mistakes.
        temperature: the logits are divided by it before the softmax (> 0).
        source: an optional source with ``next_token_logprobs`` that says which tokens are mistakes.
        floor: log-probability at or below which the source rules a token out (default ``-inf``).

    Example:
        >>> import numpy as np
        >>> from agents.policy import LMPolicy
        >>> from seqgym.data import Trajectory, augment, inserted_allowed_share, mistake_candidates
        >>> from seqgym.vocab import Vocabulary
        >>> v = Vocabulary(["a", "b", "c"])
        >>> noise = ModelNoise(LMPolicy.from_config(v, n_layer=1, n_embd=16, n_head=2, n_positions=16))
        >>> clean = [Trajectory.from_completion([], [0, 1, v.eos_id], vocab=v)]
        >>> noise.prepare(clean)
        >>> noisy = augment(clean, 1.0, np.random.default_rng(0), noise)[0]
        >>> noisy.final() == clean[0].final(), noisy.n_mistakes
        (True, 3)
    """

    def __init__(
        self,
        policy: LMPolicy,
        *,
        temperature: float = 1.0,
        source: object | None = None,
        floor: float = -math.inf,
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.policy = policy
        self.temperature = float(temperature)
        self.source = source
        self.floor = float(floor)
        self._cache: dict[int, tuple[Trajectory, torch.Tensor]] = {}

    @torch.no_grad()
    def _token_logits(self, trajectories: Sequence[Trajectory]) -> list[torch.Tensor]:
        """Per trajectory, ``(T+1, n_tokens)`` logits over the ordinary tokens at every state (one forward)."""
        n_tok = self.policy.vocab.n_tokens
        was_training = self.policy.training
        self.policy.eval()
        try:
            prompts: list[Any] = [t.prompt for t in trajectories]  # int64 arrays
            actions: list[Any] = [t.actions for t in trajectories]
            out = self.policy.trajectory_logits(prompts, actions)
        finally:
            self.policy.train(was_training)
        logits = out.logits[..., :n_tok]  # (B, T+1, n_tokens)
        return [logits[b, : len(t) + 1] for b, t in enumerate(trajectories)]

    def prepare(self, trajectories: Sequence[Trajectory]) -> None:
        """Run one forward over ``trajectories`` and keep their logits; forgets earlier ones."""
        self._cache = {}
        if trajectories:
            for t, lg in zip(trajectories, self._token_logits(trajectories)):
                self._cache[id(t)] = (t, lg)

    def __call__(self, trajectory: Trajectory, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        candidates = mistake_candidates(trajectory, positions, self.source, floor=self.floor)
        return self.from_candidates(trajectory, positions, candidates, rng)

    def from_candidates(
        self, trajectory: Trajectory, positions: np.ndarray, candidates: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """What ``self(trajectory, positions, rng)`` returns, given the :func:`~seqgym.data.mistake_candidates`
        of ``positions`` (bool ``(K, n_tokens)``, with this noise's ``source`` and ``floor``), as
        :func:`~seqgym.data.augment` passes them once it has computed them: int64 ``(K,)``."""
        hit = self._cache.get(id(trajectory))
        logits = hit[1] if hit is not None and hit[0] is trajectory else self._token_logits([trajectory])[0]
        pos = np.array(positions, dtype=np.int64)  # a writable copy
        n_tok = logits.shape[-1]
        expert = trajectory.actions[pos]  # (K,)
        is_tok = expert < n_tok
        if n_tok == 1 and is_tok.any():
            raise ValueError(
                "Model noise needs at least 2 ordinary tokens to draw a wrong one in place of a token."
            )
        rows = torch.from_numpy(pos).to(logits.device)
        p = torch.softmax(logits[rows].double() / self.temperature, dim=-1).cpu().numpy()  # (K, n_tokens)
        # only real mistakes: the tokens the source rules out there, else never the expert's own token
        flat = np.array(candidates, dtype=np.float64)  # (K, n_tokens), a copy
        empty = flat.sum(axis=1) == 0  # the source rules nothing out here: any token but the expert's
        if empty.any():
            flat[empty] = mistake_candidates(trajectory, pos[empty], None)
        p = p * flat
        total = p.sum(axis=1, keepdims=True)  # (K, 1)
        # a row with no probability left (the model is sure of the expert's token): uniform over the others
        p = np.where(total > 0, p / np.where(total > 0, total, 1.0), flat / flat.sum(axis=1, keepdims=True))
        cdf = np.cumsum(p, axis=1)  # (K, n_tokens)
        u = rng.random(len(pos))[:, None] * cdf[:, -1:]  # (K, 1)
        return np.minimum((cdf <= u).sum(axis=1), n_tok - 1).astype(np.int64)
