"""Stable-Baselines3 bridge: PPO / DQN / MaskablePPO on seqgym envs, evaluated like the imitation agents.

Three pieces, each usable alone:

- :class:`TokenEmbeddingExtractor`, a ``BaseFeaturesExtractor`` for token observations: SB3 hands a ``Box``
  observation over as floats; the extractor casts it back to ids and embeds them (no one-hot), then pools
  the visible sequence with a GRU (default) or a mean over positions. Pass it in ``policy_kwargs``.
- :class:`RewardWrapper`, a ``gymnasium.Wrapper`` that replaces the env's reward with the reward recovered
  by a trained SequenceMatch critic (``r = Q − γ·V'``), and :func:`make_env`, which builds an env with the
  env's own ``"logprob"`` / ``"valid"`` reward, a callable reward, or a critic's reward;
  :class:`TruncationPenalty` charges an episode that never reaches eos (on by default for ``"logprob"``).
- :func:`train_sb3_baseline`, which trains an algorithm and returns an :class:`SB3Baseline` with ``predict``,
  ``generate(n, seed=...)`` (samples produced by stepping the env with the trained model, action masks
  respected) and ``save`` / ``load``. ``generate`` returns the same :class:`~agents.policy.Generation` as
  the LM agents, so ``seqgym.metrics.evaluate_samples`` judges both the same way.

Example:
    >>> from seqgym.env import SequenceEnv
    >>> from seqgym.sources.dyck import Dyck
    >>> env = SequenceEnv(Dyck(), max_length=17, max_steps=24)
    >>> baseline = train_sb3_baseline(
    ...     "maskable_ppo", env, reward="logprob", total_timesteps=64, seed=0,
    ...     algo_kwargs={"n_steps": 64, "batch_size": 32, "n_epochs": 1},
    ... )
    >>> gen = baseline.generate(4, seed=0)
    >>> len(gen.sequences), all(t or tr for t, tr in zip(gen.terminated, gen.truncated))
    (4, True)
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import typing
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.policy import Generation, sample_actions
from seqgym._files import atomic_write
from seqgym._options import check_option
from seqgym.env import SequenceEnv
from seqgym.rewards import Reward, RewardFn
from seqgym.vocab import Vocabulary

__all__ = [
    "ALGOS",
    "ENV_REWARDS",
    "Algo",
    "Critic",
    "CriticMode",
    "EnvReward",
    "Pooling",
    "RewardWrapper",
    "SB3Baseline",
    "TokenEmbeddingExtractor",
    "TruncationPenalty",
    "default_policy_kwargs",
    "make_env",
    "train_sb3_baseline",
]

#: Algorithm names accepted by :func:`train_sb3_baseline`.
Algo = Literal["maskable_ppo", "ppo", "dqn"]
ALGOS: tuple[Algo, ...] = typing.get_args(Algo)

#: How :class:`TokenEmbeddingExtractor` summarises the visible tokens.
Pooling = Literal["gru", "mean"]

#: When :class:`RewardWrapper` pays a critic's reward: after every step, or summed at the episode's end.
CriticMode = Literal["dense", "terminal"]

#: The rewards a ``SequenceEnv`` computes itself (beside a callable or a critic).
EnvReward = Literal["none", "logprob", "valid"]
ENV_REWARDS: tuple[EnvReward, ...] = typing.get_args(EnvReward)
_FORMAT = 1
_META_FILE = "sb3_baseline.json"
_MODEL_FILE = "model.zip"


# ============================================================================================================
# Features extractor
# ============================================================================================================
class TokenEmbeddingExtractor(BaseFeaturesExtractor):
    """Embeds a padded sequence of token ids and pools it into one feature vector.

    The observation is ``SequenceEnv``'s ``Box(0, pad_id, (max_length,))``: the visible sequence left-aligned,
    padded with ``pad_id`` on the right. SB3 passes it as floats; it is cast back to ``long`` here.

    Pooling:

    - ``"gru"`` (default): a learned start vector followed by the token embeddings runs through a one-layer
      GRU; the hidden state after the last visible token is the summary (the empty sequence gives the state
      after the start vector). Order-aware, which Dyck-like tasks need (the open-bracket stack).
    - ``"mean"``: mean of token + position embeddings over the visible positions, concatenated with the
      embedding of the last visible token (the start vector when empty). Cheaper; weaker on order.

    The summary then goes through ``Linear + ReLU`` to ``features_dim``.

    Args:
        observation_space: a 1-D integer ``Box`` whose ``high`` is the pad id.
        features_dim: size of the output features.
        embed_dim: size of the token embeddings.
        hidden_dim: GRU hidden size (``"gru"`` pooling); defaults to ``features_dim``.
        pooling: ``"gru"`` or ``"mean"``.

    Example (``policy_kwargs`` for PPO, DQN or MaskablePPO):
        >>> policy_kwargs = dict(
        ...     features_extractor_class=TokenEmbeddingExtractor,
        ...     features_extractor_kwargs=dict(features_dim=64, pooling="gru"),
        ... )
        >>> ext = TokenEmbeddingExtractor(spaces.Box(0, 6, shape=(5,), dtype=np.int64), features_dim=8)
        >>> ext(torch.tensor([[0.0, 1.0, 6.0, 6.0, 6.0], [6.0, 6.0, 6.0, 6.0, 6.0]])).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        observation_space: gym.Space,
        features_dim: int = 64,
        *,
        embed_dim: int = 32,
        hidden_dim: int | None = None,
        pooling: Pooling = "gru",
    ) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
            raise TypeError(
                "TokenEmbeddingExtractor needs a 1-D Box observation space of token ids, "
                f"got {observation_space}."
            )
        check_option("pooling", pooling, typing.get_args(Pooling))
        for name, value in (("features_dim", features_dim), ("embed_dim", embed_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        super().__init__(observation_space, features_dim)
        high = np.asarray(observation_space.high)
        self.pad_id = int(high.max())
        self.max_length = int(observation_space.shape[0])
        self.pooling = pooling
        self.embed = torch.nn.Embedding(self.pad_id + 1, embed_dim, padding_idx=self.pad_id)
        self.start = torch.nn.Parameter(torch.zeros(1, 1, embed_dim))  # stands before the first token
        torch.nn.init.normal_(self.start, std=0.02)
        if pooling == "gru":
            hidden = hidden_dim or features_dim
            self.gru: torch.nn.GRU | None = torch.nn.GRU(embed_dim, hidden, batch_first=True)
            summary = hidden
        else:
            self.gru = None
            self.pos = torch.nn.Embedding(self.max_length, embed_dim)
            summary = 2 * embed_dim
        self.head = torch.nn.Sequential(torch.nn.Linear(summary, features_dim), torch.nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """``(B, max_length)`` float or int observations -> ``(B, features_dim)`` features."""
        ids = observations.round().long().clamp(0, self.pad_id)  # (B, L)
        visible = ids != self.pad_id  # (B, L)
        lengths = visible.sum(dim=1)  # (B,)
        B = ids.shape[0]
        x = self.embed(ids)  # (B, L, E)
        start = self.start.expand(B, 1, -1)  # (B, 1, E)
        rows = torch.arange(B, device=ids.device)
        if self.gru is not None:
            out, _ = self.gru(torch.cat([start, x], dim=1))  # (B, L+1, H)
            summary = out[rows, lengths]  # (B, H): state after the last visible token
        else:
            pos = self.pos(torch.arange(ids.shape[1], device=ids.device))  # (L, E)
            m = visible.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
            mean = ((x + pos) * m).sum(dim=1) / lengths.clamp(min=1).unsqueeze(-1).to(x.dtype)  # (B, E)
            with_start = torch.cat([start, x], dim=1)  # (B, L+1, E)
            last = with_start[rows, lengths]  # (B, E)
            summary = torch.cat([mean, last], dim=-1)  # (B, 2E)
        return self.head(summary)


def default_policy_kwargs(**features_extractor_kwargs: Any) -> dict[str, Any]:
    """``policy_kwargs``: :class:`TokenEmbeddingExtractor` (GRU, 64 features) and one 64-unit hidden layer.

    Valid for PPO, DQN and MaskablePPO alike. Keyword arguments override the extractor's defaults.
    """
    return {
        "features_extractor_class": TokenEmbeddingExtractor,
        "features_extractor_kwargs": {"features_dim": 64, **features_extractor_kwargs},
        "net_arch": [64],
    }


# ============================================================================================================
# Rewards
# ============================================================================================================
@runtime_checkable
class Critic(Protocol):
    """Anything that recovers per-step rewards from action histories (e.g. a trained ``SequenceMatch``).

    ``reward(prompts, action_histories)`` returns one float array per history, of shape ``(T_b,)``: the reward
    of each step, ``r_i = Q(u_i, a_i) − γ·V(u_{i+1})``.
    """

    def reward(
        self, prompts: Sequence[Sequence[int]], action_histories: Sequence[Sequence[int]]
    ) -> Sequence[np.ndarray]: ...


class RewardWrapper(gym.Wrapper):
    """Replaces a sequence env's reward with the reward recovered by a critic (``r = Q − γ·V'``).

    The wrapper records the episode's prompt (from ``reset``) and its action history, and calls
    ``critic.reward([prompt], [history])``. The env's own reward is kept in ``info["env_reward"]``.

    Modes:

    - ``"dense"`` (default): after every step, the reward of that step (the last entry of the critic's
      output). Cost: one critic forward over the whole history per step, so ``O(T²)`` tokens per episode of
      ``T`` steps; fine for toy tasks (``T`` of tens), slow for long text.
    - ``"terminal"``: ``0.0`` until the episode ends, then the sum of the history's recovered rewards. One
      critic forward per episode (``O(T)`` tokens). Sparse: harder credit assignment for the RL algorithm.

    With a critic whose per-step reward depends only on ``(u_i, a_i, u_{i+1})`` (as SequenceMatch's does)
    both modes give an episode the same return.

    Args:
        env: a ``SequenceEnv`` (possibly wrapped); its ``info`` must hold ``prompt_length``.
        critic: an object with a ``reward(prompts, action_histories)`` method (see :class:`Critic`).
        mode: ``"dense"`` or ``"terminal"``.

    Example:
        >>> from seqgym.sources.dyck import Dyck
        >>> class Stub:  # a critic that pays 1 per step
        ...     def reward(self, prompts, histories):
        ...         return [np.ones(len(h)) for h in histories]
        >>> env = RewardWrapper(SequenceEnv(Dyck(), max_length=17, max_steps=24), Stub())
        >>> _ = env.reset(seed=0)
        >>> env.step(0)[1]
        1.0
    """

    def __init__(self, env: gym.Env, critic: Critic, *, mode: CriticMode = "dense") -> None:
        super().__init__(env)
        if not callable(getattr(critic, "reward", None)):
            raise TypeError(
                f"critic must have a reward(prompts, action_histories) method, got {type(critic).__name__}."
            )
        check_option("mode", mode, typing.get_args(CriticMode))
        self.critic = critic
        self.mode = mode
        self._prompt: list[int] = []
        self._history: list[int] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._prompt = [int(t) for t in np.asarray(obs)[: int(info["prompt_length"])]]
        self._history = []
        return obs, info

    def _rewards(self) -> np.ndarray:
        out = self.critic.reward([self._prompt], [list(self._history)])
        r = np.asarray(out[0], dtype=np.float64).reshape(-1)  # (T,)
        if r.shape[0] != len(self._history):
            raise ValueError(
                f"critic.reward returned {r.shape[0]} rewards for a history of {len(self._history)} actions; "
                "it must return one reward per action."
            )
        return r

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        self._history.append(int(action))
        info = dict(info)
        info["env_reward"] = env_reward
        if self.mode == "dense":
            reward = float(self._rewards()[-1])
        else:
            reward = float(self._rewards().sum()) if (terminated or truncated) else 0.0
        return obs, reward, terminated, truncated, info


class TruncationPenalty(gym.Wrapper):
    """Adds ``penalty`` to the reward of a step that ends an episode by truncation (not by eos).

    Why: with the ``"logprob"`` reward every step pays ``≤ 0`` and a backspace refunds what the deleted token
    earned, so without a penalty the best return (0) belongs to a policy that types and deletes until the step
    limit and never finishes a sequence; DQN finds it within 20k steps on Dyck. Charging a truncated episode
    the log-probability floor (the price of one impossible token) makes finishing with eos worth it.
    ``info["truncation_penalty"]`` holds the amount added.

    Example:
        >>> from seqgym.sources.dyck import Dyck
        >>> env = TruncationPenalty(SequenceEnv(Dyck(), max_length=17, max_steps=2, reward="logprob"), -20.0)
        >>> _ = env.reset(seed=0)
        >>> [round(float(env.step(a)[1]), 3) for a in (0, 5)]   # "(", backspace: truncated at 2 steps
        [-0.693, -19.307]
    """

    def __init__(self, env: gym.Env, penalty: float) -> None:
        super().__init__(env)
        if not np.isfinite(penalty):
            raise ValueError(f"penalty must be finite, got {penalty}.")
        self.penalty = float(penalty)

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if truncated and not terminated:
            info = dict(info)
            info["truncation_penalty"] = self.penalty
            reward = float(reward) + self.penalty
        return obs, float(reward), terminated, truncated, info


def _is_critic(reward: object) -> bool:
    return not isinstance(reward, str) and callable(getattr(reward, "reward", None))


def _check_reward(reward: object) -> None:
    if isinstance(reward, str):
        check_option("reward", reward, ENV_REWARDS, hint=", a callable or a critic")
    elif not (callable(reward) or _is_critic(reward)):
        raise TypeError(
            "reward must be 'none' / 'logprob' / 'valid', a callable (state, action, next_state, terminated) "
            "-> float, or a critic with a reward(prompts, action_histories) method; "
            f"got {type(reward).__name__}."
        )


class _EnvSpec:
    """How to build copies of one sequence env with any reward (the source is built once and shared)."""

    def __init__(self, env: str | gym.Env, env_kwargs: dict[str, Any] | None) -> None:
        kwargs = dict(env_kwargs or {})
        if "reward" in kwargs:
            raise ValueError("Pass the reward as reward=..., not inside env_kwargs.")
        self.env_id: str | None = None
        self.env_kwargs = kwargs
        if isinstance(env, str):
            self.env_id = env
            _ensure_registered(env)
            template = gym.make(env, **kwargs).unwrapped
        elif isinstance(env, gym.Env):
            if kwargs:
                raise ValueError("env_kwargs only apply to an env id; configure an env instance yourself.")
            template = env.unwrapped
        else:
            raise TypeError(f"env must be a registered env id or a SequenceEnv, got {type(env).__name__}.")
        if not isinstance(template, SequenceEnv):
            raise TypeError(f"The env must be a seqgym SequenceEnv, got {type(template).__name__}.")
        self.source = template.source
        self.vocab: Vocabulary = template.vocab
        self.max_length = template.max_length
        self.max_steps = template.max_steps
        self.logprob_floor = float(
            kwargs.get("logprob_floor", getattr(template.reward_fn, "logprob_floor", -20.0))
        )

    def make(
        self,
        reward: EnvReward | RewardFn | Reward | Critic = "none",
        critic_mode: CriticMode = "dense",
        truncation_penalty: float | Literal["auto"] = "auto",
    ) -> gym.Env:
        _check_reward(reward)
        penalty = _truncation_penalty(truncation_penalty, reward, self.logprob_floor)
        env: gym.Env
        if _is_critic(reward):
            base = SequenceEnv(self.source, max_length=self.max_length, max_steps=self.max_steps)
            env = RewardWrapper(base, reward, mode=critic_mode)  # type: ignore[arg-type]
        else:
            env = SequenceEnv(
                self.source,
                max_length=self.max_length,
                max_steps=self.max_steps,
                reward=reward,  # type: ignore[arg-type]
                logprob_floor=self.logprob_floor,
            )
        return TruncationPenalty(env, penalty) if penalty != 0.0 else env

    def to_json(self) -> dict[str, Any] | None:
        if self.env_id is None:
            return None
        try:
            json.dumps(self.env_kwargs)
        except TypeError:
            return None
        return {"env_id": self.env_id, "env_kwargs": self.env_kwargs}


def _truncation_penalty(
    value: float | str, reward: EnvReward | RewardFn | Reward | Critic, floor: float
) -> float:
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"truncation_penalty must be a number or 'auto', got {value!r}.")
        return floor if isinstance(reward, str) and reward == "logprob" else 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"truncation_penalty must be a finite number or 'auto', got {value!r}.")
    return float(value)


def _ensure_registered(env_id: str) -> None:
    if env_id in gym.registry or not env_id.startswith("seqgym/"):
        return
    registration = importlib.import_module("seqgym.registration")
    registration.register_envs()


def make_env(
    env: str | gym.Env,
    *,
    reward: EnvReward | RewardFn | Reward | Critic = "logprob",
    critic_mode: CriticMode = "dense",
    truncation_penalty: float | Literal["auto"] = "auto",
    env_kwargs: dict[str, Any] | None = None,
) -> gym.Env:
    """A fresh sequence env with the requested reward, ready for an SB3 algorithm.

    Args:
        env: a registered id (``"seqgym/Dyck-v0"``) or a ``SequenceEnv`` instance to copy (its source is
            shared; its limits and ``logprob_floor`` are kept).
        reward: the env's own ``"logprob"`` (exact log-probability of each token, floored; needs a toy
            source), ``"valid"`` (1 at eos if valid; needs ``is_valid``), ``"none"``, a callable
            ``(state, action, next_state, terminated) -> float``, or a critic (an object with
            ``reward(prompts, action_histories)``, e.g. a trained ``SequenceMatch``) whose recovered reward
            replaces the env's through :class:`RewardWrapper`.
        critic_mode: ``"dense"`` or ``"terminal"``, for a critic (see :class:`RewardWrapper`).
        truncation_penalty: added to the last reward of an episode that is truncated (see
            :class:`TruncationPenalty`); ``"auto"`` = the env's ``logprob_floor`` for ``"logprob"``, else 0
            (no wrapper).
        env_kwargs: keyword arguments of ``gym.make`` for an env id (source and env options, not ``reward``).
    """
    return _EnvSpec(env, env_kwargs).make(reward, critic_mode, truncation_penalty)


# ============================================================================================================
# Baselines
# ============================================================================================================
def _algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 class of an :data:`Algo` name (checked: a ``str`` from a config or a saved file is fine)."""
    check_option("algo", algo, ALGOS)
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if algo == "dqn":
        from stable_baselines3 import DQN

        return DQN
    if algo == "maskable_ppo":
        try:
            from sb3_contrib import MaskablePPO
        except ImportError as e:
            raise ImportError('MaskablePPO needs sb3-contrib: pip install "seqgym[sb3]"') from e
        return MaskablePPO
    raise AssertionError(algo)  # unreachable: check_option


class SB3Baseline:
    """A trained SB3 model on a sequence env, with the interface the experiments evaluate.

    Attributes:
        model: the SB3 algorithm (``PPO``, ``DQN`` or ``MaskablePPO``).
        algo: its name in :data:`ALGOS`.
        vocab: the env's vocabulary.
        source: the env's source.
    """

    def __init__(self, model: BaseAlgorithm, *, algo: str, spec: _EnvSpec) -> None:
        _algo_class(algo)  # validates the name
        self.model = model
        self.algo = algo
        self._spec = spec
        self.vocab = spec.vocab
        self.source = spec.source

    def __repr__(self) -> str:
        return f"SB3Baseline(algo={self.algo!r}, env={self._spec.env_id or type(self.source).__name__})"

    @property
    def max_length(self) -> int:
        return self._spec.max_length

    @property
    def max_steps(self) -> int:
        return self._spec.max_steps

    # --------------------------------------------------------------------------------------------------------
    def learn(self, total_timesteps: int, **learn_kwargs: Any) -> SB3Baseline:
        """Train further (``model.learn`` without resetting the timestep counter); returns ``self``."""
        learn_kwargs.setdefault("reset_num_timesteps", False)
        self.model.learn(total_timesteps, **learn_kwargs)
        return self

    @torch.no_grad()
    def action_logits(self, observations: np.ndarray, action_masks: np.ndarray | None = None) -> torch.Tensor:
        """Scores of every action for a batch of observations, with masked actions at ``-inf``.

        PPO / MaskablePPO: the policy's logits; DQN: the Q-values (act greedily on them).

        Args:
            observations: ``(B, max_length)`` token observations.
            action_masks: ``(B, n_actions)`` bool, ``True`` = allowed; ``None`` = all allowed.

        Returns:
            ``(B, n_actions)`` float tensor on the CPU.
        """
        obs = np.asarray(observations).reshape(-1, self.max_length)
        policy: Any = self.model.policy
        obs_t, _ = policy.obs_to_tensor(obs)
        if self.algo == "dqn":
            scores = policy.q_net(obs_t)  # (B, A)
        else:
            scores = policy.get_distribution(obs_t).distribution.logits  # (B, A)
        scores = scores.detach().float().cpu()
        if action_masks is not None:
            mask = torch.as_tensor(np.asarray(action_masks, dtype=bool).reshape(scores.shape))
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict``; with ``action_masks`` every algorithm respects them.

        Without masks this is exactly ``model.predict``. With masks, MaskablePPO uses its own masking; PPO
        samples from (or, if ``deterministic``, takes the argmax of) its masked logits, and DQN takes the
        masked greedy action.
        """
        if action_masks is None:
            return self.model.predict(observation, state, episode_start, deterministic)
        if self.algo == "maskable_ppo":
            return self.model.predict(  # type: ignore[call-arg]
                observation, state, episode_start, deterministic, action_masks=action_masks
            )
        obs = np.asarray(observation)
        scores = self.action_logits(obs, action_masks)
        actions = sample_actions(scores, deterministic=deterministic or self.algo == "dqn").numpy()
        return (actions if obs.ndim > 1 else actions[0]), state

    def generate(
        self,
        n: int | None = None,
        *,
        prompts: Sequence[Sequence[int]] | None = None,
        seed: int | None = None,
        deterministic: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> Generation:
        """Sample ``n`` episodes by stepping copies of the env with the trained model, masks respected.

        Prompts come from ``prompts`` or, for ``n``, from the source (each env reset with a seed drawn from
        ``seed``). Actions are drawn with :func:`agents.policy.sample_actions` (the imitation agents' sampling
        function) from the masked logits, with a ``torch.Generator`` seeded by ``seed``: the same seed gives
        the same samples. DQN acts greedily on its masked Q-values (a DQN policy is deterministic).

        Returns:
            :class:`~agents.policy.Generation`: final visible sequences (prompt included), action histories,
            and ``terminated`` / ``truncated`` flags, exactly as the env produced them.
        """
        if prompts is None and n is None:
            raise ValueError("Give n (prompts drawn from the source) or prompts.")
        if prompts is not None and n is not None and n != len(prompts):
            raise ValueError(f"n={n} but {len(prompts)} prompts were given; give one or make them agree.")
        count = len(prompts) if prompts is not None else int(n)  # type: ignore[arg-type]
        if count < 1:
            raise ValueError(f"n must be positive, got {count}.")
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        envs = [self._spec.make("none") for _ in range(count)]
        obs = np.zeros((count, self.max_length), dtype=np.int64)  # (N, L)
        for i, env in enumerate(envs):
            options = {"prompt": list(prompts[i])} if prompts is not None else None
            obs[i], _ = env.reset(seed=int(rng.integers(2**31)), options=options)
        terminated = [False] * count
        truncated = [False] * count
        active = list(range(count))
        greedy = deterministic or self.algo == "dqn"
        while active:
            masks = np.stack([envs[i].action_masks() for i in active])  # type: ignore[attr-defined]  # (B, A)
            scores = self.action_logits(obs[active], masks)  # (B, A)
            actions = sample_actions(
                scores,
                generator=generator,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                deterministic=greedy,
            ).tolist()
            still = []
            for i, a in zip(active, actions):
                obs[i], _, term, trunc, _ = envs[i].step(int(a))
                terminated[i], truncated[i] = bool(term), bool(trunc)
                if not (term or trunc):
                    still.append(i)
            active = still
        seqs = [list(e.unwrapped.state) for e in envs]  # type: ignore[attr-defined]
        hist = [e.unwrapped.history for e in envs]  # type: ignore[attr-defined]
        return Generation(sequences=seqs, actions=hist, terminated=terminated, truncated=truncated)

    # --------------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``path/model.zip`` (SB3's own format, which SB3's ``load`` opens too) and
        ``path/sb3_baseline.json`` (algo, env id and the plain settings :meth:`load` rebuilds the model from),
        each atomically."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        self.model.save(buffer)
        atomic_write(directory / _MODEL_FILE, lambda f: f.write(buffer.getvalue()))
        meta = {
            "format": _FORMAT,
            "algo": self.algo,
            "env": self._spec.to_json(),
            "settings": _plain_settings(self.model),
        }
        atomic_write(directory / _META_FILE, lambda f: f.write(json.dumps(meta, indent=2).encode()))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], env: str | gym.Env | None = None, device: str = "cpu"
    ) -> SB3Baseline:
        """Load what :meth:`save` wrote, without running anything stored in the file.

        SB3's ``model.zip`` keeps some entries of its ``data`` member as ``:serialized:`` cloudpickle blobs,
        which SB3's own ``load`` unpickles (running whatever code they name). This method never unpickles: it
        reads ``data`` as JSON, rebuilds each object the blobs held (policy class, ``policy_kwargs``, spaces,
        schedules, buffer classes) from the algorithm, the plain settings stored beside them and the env, and
        hands them to SB3 as ``custom_objects``, so SB3 never decodes a blob. The weights are read by SB3 with
        ``torch.load(weights_only=True)``.

        Args:
            path: the directory written by :meth:`save`.
            env: needed when the baseline was trained on an env instance (only an env id and JSON-serialisable
                ``env_kwargs`` are stored); its spaces must match the saved ones.
            device: torch device of the model.

        Raises:
            FileNotFoundError: no ``sb3_baseline.json`` / ``model.zip`` in ``path``.
            ValueError: a corrupt or foreign file, a pickled entry that cannot be rebuilt from plain settings
                (e.g. a custom class or a callable schedule), or an env whose spaces differ from the saved ones.
        """
        directory = Path(path)
        meta_file = directory / _META_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{meta_file} not found; is {directory} a directory written by SB3Baseline.save?"
            )
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_file} is not valid JSON ({e}).") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ValueError(f"{meta_file} has format {found!r}; this version reads {_FORMAT}.")
        algo = meta.get("algo")
        if not isinstance(algo, str):
            raise ValueError(f"{meta_file} names no algorithm (its 'algo' entry is {algo!r}).")
        algo_cls = _algo_class(algo)
        if env is not None:
            spec = _EnvSpec(env, None)
        elif isinstance(meta.get("env"), dict):
            stored = meta["env"]
            if not isinstance(stored.get("env_id"), str) or not isinstance(stored.get("env_kwargs"), dict):
                raise ValueError(f"{meta_file} has a malformed 'env' entry: {stored!r}.")
            spec = _EnvSpec(stored["env_id"], stored["env_kwargs"])
        else:
            raise ValueError(
                "This baseline was trained on an env instance; pass env= (the same kind of env) to load."
            )
        model_file = directory / _MODEL_FILE
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file} not found; the save in {directory} is incomplete.")
        content = model_file.read_bytes()  # read once: SB3 loads these very bytes, not the file again
        data = _read_sb3_data(content, model_file)
        stored_settings = meta.get("settings")
        settings: dict[str, Any] = stored_settings if isinstance(stored_settings, dict) else {}
        template = spec.make("none")
        custom = _rebuild_serialized(data, algo_cls, settings, template, model_file)
        model = algo_cls.load(io.BytesIO(content), device=device, custom_objects=custom)
        return cls(model, algo=algo, spec=spec)


# ============================================================================================================
# Loading SB3 files without unpickling
# ============================================================================================================
_MAX_DATA_BYTES = 16 * 2**20  # the JSON member of a model.zip: a few kB in practice
_SCHEDULE = re.compile(r"^ConstantSchedule\(val=([-+0-9.eE]+|inf|nan)\)$")


def _plain_settings(model: BaseAlgorithm) -> dict[str, Any]:
    """What :meth:`SB3Baseline.load` needs beyond SB3's plain JSON to rebuild a pickled entry: PPO's constant
    clip range and DQN's training frequency (``None`` when the model has no such setting)."""
    settings: dict[str, Any] = {}
    clip = getattr(model, "clip_range", None)
    if callable(clip):
        start, end = float(clip(1.0)), float(clip(0.0))
        settings["clip_range"] = start if start == end else None
    train_freq = getattr(model, "train_freq", None)
    if train_freq is not None and hasattr(train_freq, "frequency"):
        settings["train_freq"] = [int(train_freq.frequency), str(train_freq.unit.value)]
    return settings


def _read_sb3_data(content: bytes, where: Path) -> dict[str, Any]:
    """The ``data`` member of an SB3 ``model.zip`` as a JSON dict (size-limited, never unpickled)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            try:
                info = archive.getinfo("data")
            except KeyError:
                raise ValueError(f"{where} has no 'data' member; it is not an SB3 model file.") from None
            if info.file_size > _MAX_DATA_BYTES:
                raise ValueError(
                    f"{where}: its 'data' member declares {info.file_size} bytes, over the "
                    f"{_MAX_DATA_BYTES} allowed."
                )
            with archive.open(info) as member:
                raw = member.read(_MAX_DATA_BYTES + 1)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{where} is not a zip file ({e}); the save is corrupt.") from None
    if len(raw) > _MAX_DATA_BYTES:
        raise ValueError(f"{where}: its 'data' member is over {_MAX_DATA_BYTES} bytes.")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: its 'data' member is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: its 'data' member is not a JSON object.")
    return data


def _allowed_classes() -> dict[str, type]:
    """Classes a ``policy_kwargs`` entry may name (by SB3's ``repr``): the token extractor, SB3's
    extractors, torch activations and optimisers. Nothing else is ever imported from a name in a file."""
    from stable_baselines3.common.torch_layers import FlattenExtractor

    classes: list[type] = [TokenEmbeddingExtractor, FlattenExtractor]
    nn = torch.nn
    classes += [nn.ReLU, nn.Tanh, nn.GELU, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.Sigmoid, nn.Identity]
    classes += [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.RMSprop]
    return {repr(c): c for c in classes}


def _rebuild_policy_kwargs(entry: dict[str, Any], where: Path) -> dict[str, Any]:
    allowed = _allowed_classes()
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key in (":type:", ":serialized:"):
            continue
        if isinstance(value, str) and value.startswith("<"):
            if value not in allowed:
                raise ValueError(
                    f"{where}: policy_kwargs[{key!r}] is {value}, which SB3Baseline.load does not rebuild "
                    f"(allowed: {sorted(allowed)}); it never unpickles objects from a file."
                )
            out[key] = allowed[value]
        else:
            out[key] = value
    return out


def _check_space(name: str, entry: dict[str, Any], space: gym.Space, where: Path) -> None:
    """Compare the plain fields SB3 stored beside a pickled space with the env's space."""
    if isinstance(space, spaces.Discrete):
        stored = entry.get("n")
        if stored is not None and str(stored) != str(int(space.n)):
            raise ValueError(f"{where} was trained with {stored} actions; the env has {int(space.n)}.")
    shape = entry.get("_shape")
    if shape is not None and tuple(shape) != tuple(space.shape or ()):
        raise ValueError(
            f"{where}: the saved {name} has shape {tuple(shape)}, the env's has {space.shape}; "
            "pass the env the baseline was trained on."
        )


def _rebuild_serialized(
    data: dict[str, Any],
    algo_cls: type[BaseAlgorithm],
    settings: dict[str, Any],
    env: gym.Env,
    where: Path,
) -> dict[str, Any]:
    """``custom_objects`` for every ``:serialized:`` entry of ``data``, built from plain values only.

    Raises:
        ValueError: an entry this bridge does not know how to rebuild (SB3 would have unpickled it), or a
            plain ``env`` entry (SB3 would build an env from it).
    """
    if "env" in data:
        raise ValueError(
            f"{where}: its 'data' member holds an 'env' entry, which SB3 never saves; refusing it."
        )
    custom: dict[str, Any] = {}
    for key, entry in data.items():
        if not (isinstance(entry, dict) and ":serialized:" in entry):
            continue
        if key == "policy_class":
            policy_cls = algo_cls.policy_aliases["MlpPolicy"]
            module = entry.get("__module__")
            if module is not None and module != policy_cls.__module__:
                raise ValueError(
                    f"{where}: the policy class comes from {module!r}; SB3Baseline.load rebuilds only the "
                    f"{algo_cls.__name__} MlpPolicy ({policy_cls.__module__}.{policy_cls.__name__})."
                )
            custom[key] = policy_cls
        elif key == "policy_kwargs":
            custom[key] = _rebuild_policy_kwargs(entry, where)
        elif key == "observation_space":
            _check_space(key, entry, env.observation_space, where)
            custom[key] = env.observation_space
        elif key == "action_space":
            _check_space(key, entry, env.action_space, where)
            custom[key] = env.action_space
        elif key in ("lr_schedule", "exploration_schedule"):
            custom[key] = None  # rebuilt by the algorithm's _setup_model from its plain settings
        elif key in ("rollout_buffer_class", "replay_buffer_class"):
            custom[key] = None  # None = the algorithm's default buffer, the one train_sb3_baseline uses
        elif key in (
            "_last_obs",
            "_last_episode_starts",
            "_last_original_obs",
            "ep_info_buffer",
            "ep_success_buffer",
        ):
            custom[key] = None  # rollout state: recreated by the next learn()
        elif key == "clip_range":
            value = settings.get("clip_range")
            if value is None:
                match = _SCHEDULE.match(str(entry.get("value_schedule", "")))
                if match is None:
                    raise ValueError(
                        f"{where}: clip_range is a schedule ({entry.get('value_schedule')!r}) that cannot be "
                        "rebuilt from plain settings; SB3Baseline.load never unpickles it."
                    )
                value = float(match.group(1))
            custom[key] = float(value)
        elif key == "train_freq":
            freq = settings.get("train_freq")
            custom[key] = tuple(freq) if isinstance(freq, list) and len(freq) == 2 else (4, "step")
        else:
            raise ValueError(
                f"{where}: its 'data' member holds a pickled entry {key!r} "
                f"({entry.get(':type:', 'unknown type')}) that SB3Baseline.load cannot rebuild from plain "
                "settings; it refuses to unpickle anything from a file. Open it with SB3's own load only if "
                "you trust its origin."
            )
    return custom


def train_sb3_baseline(
    algo: str = "maskable_ppo",  # an Algo; checked by _algo_class (callers hold names as str)
    env: str | gym.Env = "seqgym/Dyck-v0",
    *,
    reward: EnvReward | RewardFn | Reward | Critic = "logprob",
    total_timesteps: int,
    seed: int = 0,
    policy_kwargs: dict[str, Any] | None = None,
    algo_kwargs: dict[str, Any] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    n_envs: int = 1,
    critic_mode: CriticMode = "dense",
    truncation_penalty: float | Literal["auto"] = "auto",
    device: str = "cpu",
    verbose: int = 0,
    callback: MaybeCallback = None,
    progress_bar: bool = False,
) -> SB3Baseline:
    """Train an SB3 baseline on a sequence env and return it as an :class:`SB3Baseline`.

    Args:
        algo: ``"maskable_ppo"`` (sb3-contrib; never takes a masked backspace), ``"ppo"`` or ``"dqn"`` (both
            unmasked while training: a backspace at the prompt boundary is a no-op step).
        env: a registered env id or a ``SequenceEnv`` (copied, not stepped itself).
        reward: see :func:`make_env` (``"logprob"``, ``"valid"``, a callable, or a trained critic).
            Note that maximising the ``"logprob"`` return seeks the *mode* of the source (its most likely
            sequences), not its distribution.
        total_timesteps: environment steps to train for (SB3 rounds up to whole rollouts).
        seed: seeds the algorithm and the envs.
        policy_kwargs: merged over :func:`default_policy_kwargs` (the token extractor, ``net_arch=[64]``).
        algo_kwargs: keyword arguments of the algorithm's constructor, over the defaults ``gamma=1.0``
            (episodes are short and the undiscounted ``"logprob"`` return is the sequence's log-probability)
            and SB3's own.
        env_kwargs: ``gym.make`` keyword arguments for an env id.
        n_envs: parallel envs in a ``DummyVecEnv``, each wrapped in SB3's ``Monitor``.
        critic_mode: ``"dense"`` or ``"terminal"`` when ``reward`` is a critic (see :class:`RewardWrapper`).
        truncation_penalty: see :func:`make_env` (default: the log-prob floor for ``"logprob"``, else 0).
        device: torch device of the model.
        verbose, callback, progress_bar: passed to SB3.
    """
    cls = _algo_class(algo)
    _check_reward(reward)
    if not isinstance(total_timesteps, int) or total_timesteps < 1:
        raise ValueError(f"total_timesteps must be a positive int, got {total_timesteps!r}.")
    spec = _EnvSpec(env, env_kwargs)
    _truncation_penalty(truncation_penalty, reward, spec.logprob_floor)  # validate before building envs
    make: Callable[[], gym.Env] = lambda: spec.make(reward, critic_mode, truncation_penalty)  # noqa: E731
    vec_env = make_vec_env(make, n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    pk = default_policy_kwargs()
    pk.update(policy_kwargs or {})
    kwargs: dict[str, Any] = {"gamma": 1.0}
    kwargs.update(algo_kwargs or {})
    model = cls("MlpPolicy", vec_env, policy_kwargs=pk, seed=seed, device=device, verbose=verbose, **kwargs)
    model.learn(total_timesteps, callback=callback, progress_bar=progress_bar)
    return SB3Baseline(model, algo=algo, spec=spec)
