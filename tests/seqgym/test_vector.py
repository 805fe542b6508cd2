from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from echo_source import Echo
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from hypothesis import given, settings
from hypothesis import strategies as st

from seqgym.dynamics import action_mask, replay
from seqgym.env import SequenceEnv
from seqgym.registration import register_envs
from seqgym.sources.dyck import Dyck
from seqgym.vector import SequenceVectorEnv

register_envs()


V = Echo().vocab  # a=0 b=1 c=2 eos=3 bksp=4 pad=5
EOS, BK, PAD = V.eos_id, V.backspace_id, V.pad_id
KEYS = ("length", "prompt_length", "action_mask")


def _assert_same_step(vec: tuple, ref: tuple) -> None:
    for x, y, name in zip(vec[:4], ref[:4], ("obs", "rewards", "terminated", "truncated")):
        assert np.array_equal(x, y), name
    for key in KEYS:
        assert np.array_equal(vec[4][key], ref[4][key]), key


def _single_env_reference(
    source: Any, actions: np.ndarray, *, seed: int, mode: AutoresetMode, **kwargs: Any
) -> list[tuple[Any, ...]]:
    """Step ``N`` plain SequenceEnvs by hand, resetting as ``mode`` says; returns batched results per step."""
    n = actions.shape[1]
    envs = [SequenceEnv(source, **kwargs) for _ in range(n)]
    first = [env.reset(seed=seed + i) for i, env in enumerate(envs)]
    out: list[tuple[Any, ...]] = [
        (
            np.stack([o for o, _ in first]),
            None,
            None,
            None,
            {k: np.array([i[k] for _, i in first]) for k in KEYS},
        )
    ]
    done = [False] * n
    for row in actions:
        results = []
        for i, (env, a) in enumerate(zip(envs, row.tolist())):
            if mode == AutoresetMode.NEXT_STEP and done[i]:
                o, info = env.reset()
                results.append((o, 0.0, False, False, info))
                done[i] = False
                continue
            o, r, te, tr, info = env.step(a)
            done[i] = te or tr
            if mode == AutoresetMode.SAME_STEP and done[i]:
                o, info = env.reset()
                done[i] = False
            results.append((o, r, te, tr, info))
        out.append(
            (
                np.stack([r[0] for r in results]),
                np.array([r[1] for r in results]),
                np.array([r[2] for r in results]),
                np.array([r[3] for r in results]),
                {k: np.array([r[4][k] for r in results]) for k in KEYS},
            )
        )
    return out


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("reward", ["none", "logprob", "valid"])
def test_vector_env_equals_single_envs_with_the_same_seeds_and_actions(
    mode: AutoresetMode, reward: str
) -> None:
    kwargs: dict[str, Any] = {"max_length": 6, "max_steps": 9, "reward": reward}
    n, steps, seed = 5, 150, 11
    actions = np.random.default_rng(0).integers(0, V.n_actions, size=(steps, n))
    ref = _single_env_reference(Echo(), actions, seed=seed, mode=mode, **kwargs)
    envs = SequenceVectorEnv(Echo(), n, autoreset_mode=mode, **kwargs)
    assert envs.metadata["autoreset_mode"] == mode
    obs, info = envs.reset(seed=seed)
    assert np.array_equal(obs, ref[0][0])
    for key in KEYS:
        assert np.array_equal(info[key], ref[0][4][key])
    n_done = 0
    for t, row in enumerate(actions):
        out = envs.step(row)
        _assert_same_step(out, ref[t + 1])
        n_done += int((out[2] | out[3]).sum())
    assert n_done > 20  # autoreset was exercised


@settings(max_examples=40, deadline=None)
@given(
    actions=st.lists(st.lists(st.integers(0, V.n_actions - 1), min_size=3, max_size=3), max_size=30),
    seed=st.integers(0, 2**31),
)
def test_vector_env_matches_single_envs_on_random_histories(actions: list[list[int]], seed: int) -> None:
    acts = np.array(actions, dtype=np.int64).reshape(-1, 3)
    ref = _single_env_reference(
        Echo(), acts, seed=seed, mode=AutoresetMode.NEXT_STEP, max_length=5, max_steps=7
    )
    envs = SequenceVectorEnv(Echo(), 3, max_length=5, max_steps=7)
    assert np.array_equal(envs.reset(seed=seed)[0], ref[0][0])
    for t, row in enumerate(acts):
        _assert_same_step(envs.step(row), ref[t + 1])


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vector_env_equals_sync_vector_env_including_final_obs(mode: AutoresetMode) -> None:
    src = Dyck(2, max_depth=2, max_length=6)
    kwargs: dict[str, Any] = {"max_length": 7, "max_steps": 10, "reward": "logprob"}
    n = 6
    native = SequenceVectorEnv(src, n, autoreset_mode=mode, **kwargs)
    sync = SyncVectorEnv([lambda: SequenceEnv(src, **kwargs)] * n, autoreset_mode=mode)
    assert np.array_equal(native.reset(seed=5)[0], sync.reset(seed=5)[0])
    rng = np.random.default_rng(1)
    for _ in range(100):
        a = rng.integers(0, src.vocab.n_actions, size=n)
        out, ref = native.step(a), sync.step(a)
        _assert_same_step(out, ref)
        if mode == AutoresetMode.SAME_STEP and "final_obs" in ref[4]:
            ended = ref[4]["_final_obs"]
            assert np.array_equal(out[4]["_final_obs"], ended)
            for i in np.flatnonzero(ended):
                assert np.array_equal(out[4]["final_obs"][i], ref[4]["final_obs"][i])
            for key in KEYS:
                assert np.array_equal(out[4]["final_info"][key][ended], ref[4]["final_info"][key][ended])


def test_vector_env_uses_the_prompt_sampler_like_the_single_env() -> None:
    class PromptOnly(Echo):
        def sample_prompt(self, rng: np.random.Generator) -> list[int]:
            return rng.integers(0, 3, size=int(rng.integers(1, 3))).tolist()

    actions = np.random.default_rng(2).integers(0, V.n_actions, size=(60, 4))
    ref = _single_env_reference(
        PromptOnly(), actions, seed=3, mode=AutoresetMode.NEXT_STEP, max_length=5, max_steps=6
    )
    envs = SequenceVectorEnv(PromptOnly(), 4, max_length=5, max_steps=6)
    assert np.array_equal(envs.reset(seed=3)[0], ref[0][0])
    for t, row in enumerate(actions):
        _assert_same_step(envs.step(row), ref[t + 1])


def test_observations_follow_the_reference_dynamics() -> None:
    envs = SequenceVectorEnv(Echo(), 2, max_length=6, max_steps=20)
    envs.reset(seed=0, options={"prompts": [[0], []]})
    history = [[1, BK, BK, 2], [BK, 0, 1, BK]]  # backspaces at the boundary are no-ops
    for t in range(4):
        obs, *_ = envs.step(np.array([h[t] for h in history]))
    for i, prompt in enumerate([[0], []]):
        visible = replay(prompt, history[i], V)
        assert obs[i].tolist() == visible + [PAD] * (6 - len(visible))
    masks = envs.action_masks()
    assert masks.dtype == bool and masks.shape == (2, V.n_actions)
    assert np.array_equal(masks[1], action_mask(1, 0, V))


def test_disabled_autoreset_needs_a_masked_reset() -> None:
    envs = SequenceVectorEnv(Echo(), 3, max_length=6, max_steps=20, autoreset_mode="Disabled")
    envs.reset(seed=0, options={"prompt": [1]})
    _, _, terminated, _, _ = envs.step(np.array([0, EOS, 0]))
    assert terminated.tolist() == [False, True, False]
    with pytest.raises(ResetNeeded, match=r"\[1\].*reset_mask"):
        envs.step(np.array([0, 0, 0]))
    obs, info = envs.reset(options={"reset_mask": np.array([False, True, False]), "prompt": [2, 2]})
    assert info["_length"].tolist() == [False, True, False]
    assert obs[:, :3].tolist() == [[1, 0, PAD], [2, 2, PAD], [1, 0, PAD]]
    obs, *_ = envs.step(np.array([1, 1, 1]))
    assert obs[:, :3].tolist() == [[1, 0, 1], [2, 2, 1], [1, 0, 1]]


def test_make_vec_returns_the_native_vector_env() -> None:
    envs = gym.make_vec("seqgym/Dyck-v0", num_envs=4, vectorization_mode="vector_entry_point", n_types=3)
    assert isinstance(envs, SequenceVectorEnv) and envs.num_envs == 4
    assert envs.single_action_space == gym.spaces.Discrete(8)
    assert envs.single_observation_space.shape == (17,) and envs.observation_space.shape == (4, 17)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = envs.reset(seed=0)
    assert (
        obs.shape == (4, 17) and info["action_mask"].shape == (4, 8) and info["action_mask"].dtype == np.int8
    )
    same = gym.make_vec("seqgym/Dyck-v0", num_envs=4, vectorization_mode="vector_entry_point")
    assert same.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    same_step = gym.make_vec(
        "seqgym/Dyck-v0", num_envs=2, vectorization_mode="vector_entry_point", autoreset_mode="SameStep"
    )
    assert same_step.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP


def test_vector_render_shows_each_sub_env() -> None:
    envs = SequenceVectorEnv(Echo(), 2, max_length=6, max_steps=20, render_mode="ansi")
    envs.reset(seed=0, options={"prompts": [[0], [1, 2]]})
    envs.step(np.array([1, 0]))
    envs.step(np.array([BK, EOS]))
    assert envs.render() == ("a|b⌫  =>  a|", "bc|a<eos>")


@pytest.mark.parametrize(
    ("actions", "match"),
    [
        (np.array([0, 1]), r"shape \(3,\)"),
        (np.array([0.0, 1.0, 2.0]), "integer"),
        (np.array([0, 1, V.pad_id]), "sub-env 2.*pad id"),
        (np.array([-1, 0, 0]), "sub-env 0 is out of range"),
    ],
)
def test_invalid_vector_actions_raise(actions: np.ndarray, match: str) -> None:
    envs = SequenceVectorEnv(Echo(), 3, max_length=6, max_steps=20)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        envs.step(actions)


def test_invalid_vector_arguments_raise() -> None:
    with pytest.raises(ValueError, match="num_envs must be a positive int"):
        SequenceVectorEnv(Echo(), 0, max_length=6, max_steps=20)
    with pytest.raises(ValueError, match="autoreset_mode"):
        SequenceVectorEnv(Echo(), 2, max_length=6, max_steps=20, autoreset_mode="sometimes")
    envs = SequenceVectorEnv(Echo(), 2, max_length=3, max_steps=20)
    with pytest.raises(ResetNeeded):
        envs.step(np.array([0, 0]))
    with pytest.raises(ValueError, match="num_envs=2 entries"):
        envs.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="max_length"):
        envs.reset(options={"prompts": [[0], [0, 1, 2]]})
    with pytest.raises(ValueError, match="backspace id"):
        envs.reset(options={"prompt": [BK]})
    with pytest.raises(ValueError, match="accepts"):
        envs.reset(options={"seed": 3})
