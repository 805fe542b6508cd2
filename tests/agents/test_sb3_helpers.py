"""The tools RL users already have work unchanged on seqgym's envs and agents.

Stable-Baselines3's ``make_vec_env``, ``evaluate_policy`` and ``check_env``; Gymnasium's render wrappers
(``RenderCollection``, ``HumanRendering``, ``RecordVideo``) and its env checker with ``render_mode="rgb_array"``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import HumanRendering, RecordVideo, RenderCollection
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from seqgym.registration import ENV_IDS, register_envs

register_envs()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("the cat sat on the mat. the dog sat on the log. a cat and a dog.\n" * 20)
    return str(path)


def _kwargs(env_id: str, corpus: str) -> dict[str, Any]:
    """Arguments an id needs beyond its defaults (Text needs a corpus)."""
    return {"path": corpus} if env_id == "seqgym/Text-v0" else {}


def _masked_action(mask: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.choice(np.flatnonzero(mask)))


# ------------------------------------------------------------------------------------------------------------
# Stable-Baselines3
@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_make_vec_env_works_on_every_registered_id(env_id: str, corpus: str) -> None:
    vec = make_vec_env(env_id, n_envs=4, seed=0, env_kwargs=_kwargs(env_id, corpus))
    assert vec.num_envs == 4
    assert vec.render_mode == "rgb_array"  # SB3 asks for it; the envs accept it
    obs = vec.reset()
    single = vec.observation_space
    assert obs.shape == (4, *single.shape) and obs.dtype == np.int64
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(60):
        masks = np.stack(vec.env_method("action_masks"))  # (4, n_actions) bool
        assert masks.dtype == np.bool_
        actions = np.array([_masked_action(m, rng) for m in masks])
        obs, rewards, dones, infos = vec.step(actions)
        assert obs.shape == (4, *single.shape) and rewards.shape == (4,) and dones.shape == (4,)
        ended += int(dones.sum())
        for done, info in zip(dones, infos):
            if done:
                assert "episode" in info and "terminal_observation" in info  # SB3's Monitor and autoreset
    assert ended > 0
    frames = vec.get_images()
    assert len(frames) == 4
    for frame in frames:
        assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    assert len({f.shape for f in frames}) == 1
    vec.close()


@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_checkers_accept_rgb_array_rendering(env_id: str, corpus: str) -> None:
    from gymnasium.utils.env_checker import check_env

    env = gym.make(env_id, render_mode="rgb_array", **_kwargs(env_id, corpus))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, skip_render_check=False)


class Scripted:
    """A policy that plays ``plan`` (one action per visible position, the prompt being empty)."""

    def __init__(self, plan: list[int], pad_id: int) -> None:
        self.plan, self.pad_id = plan, pad_id

    def predict(self, obs: np.ndarray, *args: Any, **kwargs: Any) -> tuple[np.ndarray, None]:
        lengths = (obs != self.pad_id).sum(axis=1)  # (N,)
        return np.array([self.plan[min(n, len(self.plan) - 1)] for n in lengths]), None


def test_default_reward_makes_evaluate_policy_measure_validity() -> None:
    env = gym.make("seqgym/Dyck-v0")
    assert env.unwrapped.reward_fn.name == "valid"  # type: ignore[attr-defined]
    src = env.unwrapped.source  # type: ignore[attr-defined]
    v = src.vocab
    # A fixed policy: "(" then ")" then eos (valid), against one that closes with the wrong bracket.
    for tokens, expected in ((["(", ")"], 1.0), (["(", "]"], 0.0)):
        policy = Scripted([*v.encode(tokens), v.eos_id], v.pad_id)
        mean, std = evaluate_policy(policy, env, n_eval_episodes=3, warn=False)
        assert (mean, std) == (expected, 0.0)
    text = gym.make("seqgym/Text-v0", text="abc abc abc " * 30, prompt_length=4, completion_length=4)
    assert text.unwrapped.reward_fn.name == "none"  # type: ignore[attr-defined]  # Text has no judge


def test_evaluate_policy_on_a_trained_agent_in_one_and_four_envs(tmp_path: Path) -> None:
    from agents import Agent, make_agent

    agent = make_agent(
        "bc",
        env="seqgym/Dyck-v0",
        seed=0,
        n_demonstrations=64,
        policy_kwargs={"n_layer": 1, "n_embd": 32, "n_head": 2},
    )
    agent.learn(3_000)
    agent.set_sampling_seed(0)
    mean, std = evaluate_policy(agent, agent.env, n_eval_episodes=20, deterministic=False, warn=False)
    # Every return is 0 or 1 (valid at eos), so the mean is the validity and the std its Bernoulli spread.
    assert 0.0 < mean <= 1.0 and math.isclose(std, math.sqrt(mean * (1 - mean)), abs_tol=1e-9)
    assert (20 * mean) == pytest.approx(round(20 * mean))

    vec = make_vec_env("seqgym/Dyck-v0", n_envs=4, seed=0)
    rewards, lengths = evaluate_policy(
        agent, vec, n_eval_episodes=8, deterministic=False, warn=False, return_episode_rewards=True
    )
    assert len(rewards) == 8 and set(rewards) <= {0.0, 1.0} and min(lengths) >= 1  # type: ignore[arg-type]

    agent.save(tmp_path / "bc")
    loaded = Agent.load(tmp_path / "bc")  # the base class loads whichever agent the directory holds
    assert type(loaded) is type(agent)
    for a in (agent, loaded):
        a.set_sampling_seed(1)
    first = evaluate_policy(agent, agent.env, n_eval_episodes=5, deterministic=False, warn=False)
    again = evaluate_policy(loaded, loaded.env, n_eval_episodes=5, deterministic=False, warn=False)
    assert first == again


# ------------------------------------------------------------------------------------------------------------
# Gymnasium's render wrappers
@pytest.mark.parametrize("env_id", ["seqgym/Dyck-v0", "seqgym/Text-v0"])
def test_render_collection_gathers_same_size_frames(env_id: str, corpus: str) -> None:
    # gym.make applies RenderCollection itself for "rgb_array_list", since the env renders "rgb_array".
    made = gym.make(env_id, render_mode="rgb_array_list", **_kwargs(env_id, corpus))
    wrapped = RenderCollection(gym.make(env_id, render_mode="rgb_array", **_kwargs(env_id, corpus)))
    rng = np.random.default_rng(0)
    for env in (made, wrapped):
        _, info = env.reset(seed=0)
        steps = 0
        for _ in range(5):
            _, _, terminated, truncated, info = env.step(_masked_action(info["action_mask"], rng))
            steps += 1
            if terminated or truncated:
                break
        frames = env.render()
        assert isinstance(frames, list) and len(frames) == steps + 1  # reset + each step
        assert all(f.dtype == np.uint8 and f.shape == frames[0].shape for f in frames)
        assert not np.array_equal(frames[0], frames[-1])
        env.close()


def test_human_rendering_wraps_the_env() -> None:
    env = HumanRendering(gym.make("seqgym/Dyck-v0", render_mode="rgb_array"))
    assert env.render_mode == "human" and "human" in env.metadata["render_modes"]
    assert env.metadata["render_fps"] == 4
    # gym.make(render_mode="human") applies the same wrapper itself, over the env's "rgb_array" frames.
    with pytest.warns(UserWarning, match="HumanRendering wrapper is being applied"):
        made = gym.make("seqgym/Dyck-v0", render_mode="human")
    assert isinstance(made, HumanRendering) and made.env.render_mode == "rgb_array"
    pytest.importorskip(
        "pygame", reason="HumanRendering draws with pygame (gymnasium[classic-control]), not installed here"
    )
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # no display needed
    env.reset(seed=0)
    env.step(0)
    assert env.render() is None
    env.close()


def test_record_video_writes_an_episode(tmp_path: Path) -> None:
    pytest.importorskip("moviepy", reason="RecordVideo writes videos with moviepy (gymnasium[other])")
    env = RecordVideo(
        gym.make("seqgym/Dyck-v0", render_mode="rgb_array"), str(tmp_path), episode_trigger=lambda _: True
    )
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(_masked_action(info["action_mask"], rng))
        done = terminated or truncated
    env.close()
    videos = list(tmp_path.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
