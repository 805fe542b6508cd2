"""The SB3 bridge: token features extractor, critic reward wrapper, baseline training and generation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.sb3 import (
    RewardWrapper,
    SB3Baseline,
    TokenEmbeddingExtractor,
    TruncationPenalty,
    make_env,
    train_sb3_baseline,
)
from seqgym.dynamics import replay
from seqgym.env import SequenceEnv
from seqgym.metrics import DEFAULT_LOGPROB_FLOOR, evaluate_samples, token_logprobs
from seqgym.registration import register_envs
from seqgym.sources.dyck import Dyck

ENV_ID = "seqgym/Dyck-v0"

# Small rollouts so that a few hundred steps are a few updates.
FAST_KWARGS: dict[str, dict[str, Any]] = {
    "maskable_ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 2},
    "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 2},
    "dqn": {"buffer_size": 2000, "learning_starts": 64, "train_freq": 4, "batch_size": 32},
}


@pytest.fixture(scope="module")
def env() -> gym.Env:
    register_envs()
    return gym.make(ENV_ID)


@pytest.fixture(scope="module")
def critic() -> Any:
    """A briefly trained SequenceMatch agent on Dyck (a real critic, not a good one)."""
    from agents import make_agent

    agent = make_agent(
        "sequencematch",
        env=ENV_ID,
        seed=0,
        n_demonstrations=32,
        batch_size=8,
        bc_warmup_steps=2,
        replay_refresh_interval=2,
        replay_size=16,
        policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2},
    )
    return agent.train(n_batches=4)


def _check_rollouts(env: gym.Env, gen: Any, n: int) -> None:
    """Each sample is a valid env rollout: replaying its actions gives its sequence; flags, limits agree."""
    u: Any = env.unwrapped
    v = u.vocab
    assert len(gen.sequences) == len(gen.actions) == len(gen.terminated) == len(gen.truncated) == n
    for seq, acts, term, trunc in zip(gen.sequences, gen.actions, gen.terminated, gen.truncated):
        assert replay([], acts, v) == seq  # Dyck prompts are empty
        assert term != trunc
        assert term == (seq[-1:] == [v.eos_id])
        assert 1 <= len(acts) <= u.max_steps and len(seq) <= u.max_length
        # Masks respected: never a backspace at the prompt boundary.
        visible = 0
        for a in acts:
            assert not (a == v.backspace_id and visible == 0)
            visible += -1 if a == v.backspace_id else 1


# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["gru", "mean"])
def test_extractor_embeds_float_observations(pooling: str) -> None:
    space = spaces.Box(0, 6, shape=(5,), dtype=np.int64)  # pad = 6
    ext = TokenEmbeddingExtractor(space, features_dim=8, pooling=pooling)
    obs = torch.tensor([[0, 1, 6, 6, 6], [6, 6, 6, 6, 6], [2, 3, 0, 1, 4]], dtype=torch.float32)
    out = ext(obs)
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    # Pad positions do not matter: only the visible prefix is read.
    torch.testing.assert_close(ext(obs[:1]), out[:1])
    # Integer observations give the same features as their float copies.
    torch.testing.assert_close(ext(obs.long()), out)
    # Order matters for the GRU summary.
    if pooling == "gru":
        assert not torch.allclose(
            ext(torch.tensor([[0.0, 1.0, 6, 6, 6]])), ext(torch.tensor([[1.0, 0.0, 6, 6, 6]]))
        )


def test_extractor_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="1-D Box"):
        TokenEmbeddingExtractor(spaces.Discrete(3))
    with pytest.raises(ValueError, match="pooling"):
        TokenEmbeddingExtractor(spaces.Box(0, 6, shape=(5,), dtype=np.int64), pooling="max")


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo", "dqn"])
def test_baseline_trains_and_generates_valid_rollouts(algo: str, env: gym.Env) -> None:
    baseline = train_sb3_baseline(
        algo, ENV_ID, reward="logprob", total_timesteps=256, seed=0, algo_kwargs=FAST_KWARGS[algo]
    )
    assert baseline.model.num_timesteps >= 256
    assert any(isinstance(m, TokenEmbeddingExtractor) for m in baseline.model.policy.modules())
    gen = baseline.generate(8, seed=1)
    _check_rollouts(env, gen, 8)
    again = baseline.generate(8, seed=1)
    assert again.sequences == gen.sequences and again.actions == gen.actions
    # The samples go straight into the same metrics as the imitation agents'.
    u: Any = env.unwrapped
    m = evaluate_samples(u.source, gen.sequences, gen.actions, n_reference=500)
    assert 0.0 <= m["validity"] <= 1.0 and 0.0 <= m["backspace_rate"] <= 1.0
    # predict with masks never picks a masked action.
    obs, _ = env.reset(seed=0)
    masks = u.action_masks()
    for _ in range(5):
        action, _ = baseline.predict(obs, action_masks=masks)
        assert masks[int(action)]


def test_baseline_with_prompts_and_greedy(env: gym.Env) -> None:
    baseline = train_sb3_baseline(
        "maskable_ppo", env, total_timesteps=128, seed=0, algo_kwargs=FAST_KWARGS["maskable_ppo"]
    )
    u: Any = env.unwrapped
    v = u.vocab
    gen = baseline.generate(prompts=[[0], [0, 2]], seed=0, deterministic=True)
    assert [s[:1] for s in gen.sequences] == [[0], [0]] and gen.sequences[1][:2] == [0, 2]
    for p, seq, acts in zip([[0], [0, 2]], gen.sequences, gen.actions):
        assert replay(p, acts, v) == seq
    with pytest.raises(ValueError, match="Give n"):
        baseline.generate()


def test_save_load_roundtrip(env: gym.Env, tmp_path: Path) -> None:
    baseline = train_sb3_baseline("ppo", env, total_timesteps=128, seed=0, algo_kwargs=FAST_KWARGS["ppo"])
    baseline.save(tmp_path / "ppo")
    loaded = SB3Baseline.load(tmp_path / "ppo", env=env)
    assert loaded.algo == "ppo"
    a, b = baseline.generate(6, seed=3), loaded.generate(6, seed=3)
    assert a.sequences == b.sequences and a.actions == b.actions
    # Trained on an env id: the id and its kwargs are stored, so no env is needed to load.
    by_id = train_sb3_baseline(
        "dqn", ENV_ID, total_timesteps=64, seed=0, env_kwargs={"n_types": 2}, algo_kwargs=FAST_KWARGS["dqn"]
    )
    by_id.save(tmp_path / "dqn")
    loaded = SB3Baseline.load(tmp_path / "dqn")
    assert loaded.generate(3, seed=0).sequences == by_id.generate(3, seed=0).sequences
    with pytest.raises(ValueError, match="pass env="):
        SB3Baseline.load(tmp_path / "ppo")
    with pytest.raises(FileNotFoundError, match=r"SB3Baseline\.save"):
        SB3Baseline.load(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------------------
class StubCritic:
    """Pays ``0.1 * (action + 1) + step index`` for each step (depends on the history, to be checkable)."""

    def __init__(self) -> None:
        self.calls = 0

    def reward(
        self, prompts: Sequence[Sequence[int]], action_histories: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        self.calls += 1
        return [0.1 * (np.asarray(h, dtype=float) + 1) + np.arange(len(h)) for h in action_histories]


def test_reward_wrapper_gives_the_critics_reward(env: gym.Env) -> None:
    critic = StubCritic()
    wrapped = make_env(env, reward=critic)
    assert isinstance(wrapped, RewardWrapper)
    wrapped.reset(seed=0)
    actions = [0, 2, 5, 1, 4]  # "(", "[", backspace, ")", eos
    rewards, infos = [], []
    for a in actions:
        _, r, term, trunc, info = wrapped.step(a)
        rewards.append(r)
        infos.append(info)
    assert term and not trunc
    expected = 0.1 * (np.array(actions) + 1) + np.arange(len(actions))
    np.testing.assert_allclose(rewards, expected)
    assert critic.calls == len(actions)
    # The base env keeps its default reward (validity: "()" at eos is valid), reported beside the critic's.
    assert [info["env_reward"] for info in infos] == [0.0, 0.0, 0.0, 0.0, 1.0]

    terminal = make_env(env, reward=StubCritic(), critic_mode="terminal")
    terminal.reset(seed=0)
    rewards = [float(terminal.step(a)[1]) for a in actions]
    np.testing.assert_allclose(rewards, [0, 0, 0, 0, expected.sum()])


def test_reward_wrapper_with_a_trained_sequencematch_critic(env: gym.Env, critic: Any) -> None:
    v = critic.vocab
    actions = [0, 2, v.backspace_id, 1, 2, 3, v.eos_id]  # "(", "[", backspace, ")", "[", "]", eos
    expected = critic.reward([[]], [actions])[0]  # r_i = Q(u_i, a_i) − γ·V'(u_{i+1}), V' = 0 after eos
    dense = make_env(env, reward=critic)
    dense.reset(seed=0)
    got = [float(dense.step(a)[1]) for a in actions]
    # Each dense reward is the last entry of the reward of the history so far: the same per-step values.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    terminal = make_env(env, reward=critic, critic_mode="terminal")
    terminal.reset(seed=0)
    got = [float(terminal.step(a)[1]) for a in actions]
    assert got[:-1] == [0.0] * (len(actions) - 1)
    assert got[-1] == pytest.approx(expected.sum(), abs=1e-4)
    # An SB3 algorithm trains on the critic's reward.
    baseline = train_sb3_baseline(
        "maskable_ppo",
        env,
        reward=critic,
        total_timesteps=64,
        seed=0,
        algo_kwargs={"n_steps": 64, "n_epochs": 1},
    )
    _check_rollouts(env, baseline.generate(4, seed=0), 4)


def test_reward_wrapper_rejects_wrong_length_and_non_critic(env: gym.Env) -> None:
    class Bad:
        def reward(
            self, prompts: Sequence[Sequence[int]], action_histories: Sequence[Sequence[int]]
        ) -> list[np.ndarray]:
            return [np.zeros(len(h) + 1) for h in action_histories]

    wrapped = RewardWrapper(SequenceEnv(Dyck(), max_length=17, max_steps=51), Bad())
    wrapped.reset(seed=0)
    with pytest.raises(ValueError, match="one reward per action"):
        wrapped.step(0)
    with pytest.raises(TypeError, match="reward"):
        RewardWrapper(wrapped, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown reward"):
        make_env(env, reward="accuracy")


def test_env_logprob_reward_matches_the_metric(env: gym.Env) -> None:
    """The env's logprob return is the floored exact log-prob of the final sequence (backspace included)."""
    e = make_env(env, reward="logprob")
    u: Any = e.unwrapped
    v = u.vocab
    e.reset(seed=0)
    actions = [0, 3, 5, 1, 2, 3, 4]  # "(", "]" (impossible), backspace, ")", "[", "]", eos
    total = sum(float(e.step(a)[1]) for a in actions)
    seq = replay([], actions, v)
    exact = np.maximum(token_logprobs(u.source, seq), DEFAULT_LOGPROB_FLOOR).sum()
    assert total == pytest.approx(exact)
    valid = make_env(env, reward="valid")
    valid.reset(seed=0)
    assert [float(valid.step(a)[1]) for a in [0, 1, 4]] == [0.0, 0.0, 1.0]


def test_truncation_penalty() -> None:
    """Type-and-delete until the step limit: 0 under the raw logprob reward, the floor with the penalty."""
    base = SequenceEnv(Dyck(), max_length=17, max_steps=6, reward="logprob")
    loop = [0, 5, 0, 5, 0, 5]  # "(", backspace, ... truncated at 6 steps with nothing visible
    for env, expected in ((make_env(base, truncation_penalty=0.0), 0.0), (make_env(base), -20.0)):
        env.reset(seed=0)
        steps = [env.step(a) for a in loop]
        assert steps[-1][3] and not steps[-1][2]  # truncated
        assert sum(float(s[1]) for s in steps) == pytest.approx(expected)
    assert isinstance(make_env(base), TruncationPenalty)
    assert not isinstance(make_env(base, reward="valid"), TruncationPenalty)
    assert isinstance(make_env(base, reward="valid", truncation_penalty=-1.0), TruncationPenalty)
    with pytest.raises(ValueError, match="truncation_penalty"):
        make_env(base, truncation_penalty="always")


def test_train_rejects_bad_arguments(env: gym.Env) -> None:
    with pytest.raises(ValueError, match="Unknown algo"):
        train_sb3_baseline("a2c", env, total_timesteps=10)
    with pytest.raises(ValueError, match="env_kwargs"):
        train_sb3_baseline("ppo", env, total_timesteps=10, env_kwargs={"reward": "valid"})
    with pytest.raises(TypeError, match="reward must be"):
        train_sb3_baseline("ppo", env, reward=3, total_timesteps=10)  # type: ignore[arg-type]


@pytest.mark.slow
def test_maskable_ppo_learns_validity_on_the_valid_reward(env: gym.Env) -> None:
    """20k steps of MaskablePPO on the sparse validity reward (measured: validity 1.0, ~50 s of CPU)."""
    baseline = train_sb3_baseline(
        "maskable_ppo",
        ENV_ID,
        reward="valid",
        total_timesteps=20_000,
        seed=0,
        algo_kwargs={"n_steps": 512, "batch_size": 64, "ent_coef": 0.01},
    )
    gen = baseline.generate(200, seed=0)
    _check_rollouts(env, gen, 200)
    u: Any = env.unwrapped
    assert evaluate_samples(u.source, gen.sequences, gen.actions, n_reference=1000)["validity"] >= 0.9
