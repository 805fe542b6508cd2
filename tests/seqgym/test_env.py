from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from echo_source import Echo
from gymnasium.error import ResetNeeded
from hypothesis import given, settings
from hypothesis import strategies as st

from seqgym.dynamics import action_mask, states
from seqgym.env import SequenceEnv, render_history
from seqgym.registration import ENV_IDS, make_env, register_envs
from seqgym.sources.dyck import Dyck
from seqgym.vocab import Vocabulary

register_envs()


class NoProbs:
    """A source with neither exact probabilities nor validity."""

    def __init__(self) -> None:
        self.vocab = Vocabulary(["x", "y"])

    def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        return [], [0, self.vocab.eos_id]


V = Echo().vocab  # a=0 b=1 c=2 eos=3 bksp=4 pad=5
EOS, BK, PAD = V.eos_id, V.backspace_id, V.pad_id


def make_echo(**kwargs: object) -> SequenceEnv:
    return SequenceEnv(Echo(), **{"max_length": 6, "max_steps": 12, **kwargs})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# Every registered id: Gymnasium's and SB3's checkers, and a seeded two-copy determinism rollout.
@pytest.fixture
def corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("the cat sat on the mat. the dog sat on the log. a cat and a dog.\n" * 20)
    return str(path)


def _make_registered(env_id: str, corpus: str, **kwargs: Any) -> gym.Env:
    if env_id == "seqgym/Text-v0":
        kwargs = {"path": corpus, **kwargs}
    return gym.make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_registered_env_passes_checkers_and_is_deterministic(env_id: str, corpus: str) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = _make_registered(env_id, corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped, skip_render_check=True)
    check_env(_make_registered(env_id, corpus, render_mode="ansi").unwrapped)
    sb3_check_env(_make_registered(env_id, corpus).unwrapped)

    # Two copies, same seed, same (masked random) actions: identical transitions, through several episodes.
    envs = [_make_registered(env_id, corpus) for _ in range(2)]
    rngs = [np.random.default_rng(7) for _ in range(2)]
    outs: list[tuple[Any, ...]] = [env.reset(seed=123) for env in envs]
    assert np.array_equal(outs[0][0], outs[1][0])
    assert outs[0][1]["generated"] == outs[1][1]["generated"]
    for _ in range(300):
        actions = [int(rng.choice(np.flatnonzero(o[-1]["action_mask"]))) for rng, o in zip(rngs, outs)]
        assert actions[0] == actions[1]
        outs = [env.step(a) for env, a in zip(envs, actions)]
        (o0, r0, te0, tr0, i0), (o1, r1, te1, tr1, i1) = outs
        assert np.array_equal(o0, o1) and r0 == r1 and te0 == te1 and tr0 == tr1
        assert {k: np.asarray(v).tolist() for k, v in i0.items()} == {
            k: np.asarray(v).tolist() for k, v in i1.items()
        }
        if te0 or tr0:
            outs = [(*env.reset(),) for env in envs]
            outs = [(o[0], 0.0, False, False, o[1]) for o in outs]


def test_register_envs_is_idempotent_and_routes_kwargs() -> None:
    register_envs()
    register_envs()
    env: Any = gym.make("seqgym/Dyck-v0", n_types=3, reward="valid", max_steps=40).unwrapped
    assert isinstance(env, SequenceEnv) and isinstance(env.source, Dyck)
    assert env.source.n_types == 3 and env.vocab.n_actions == 8
    assert env.max_length == env.source.max_sequence_length == 17 and env.max_steps == 40
    assert env.reward_fn.name == "valid"
    short: Any = gym.make("seqgym/Dyck-v0", source_kwargs={"max_length": 8}).unwrapped
    assert short.source.max_length == 8 and short.max_length == 9 and short.max_steps == 27
    with pytest.raises(ValueError, match="given twice"):
        make_env("dyck", n_types=2, source_kwargs={"n_types": 3})


def test_text_env_without_a_corpus_says_how_to_give_one() -> None:
    with pytest.raises(ValueError, match=r"needs a corpus.*path="):
        gym.make("seqgym/Text-v0")


# ------------------------------------------------------------------------------------------------------------
# Semantics: the observation follows the reference dynamics (seqgym.dynamics) step by step.
@settings(max_examples=150, deadline=None)
@given(
    prompt=st.lists(st.integers(0, 2), max_size=3),
    actions=st.lists(st.integers(0, V.n_actions - 1), max_size=25),
    max_length=st.integers(4, 7),
    max_steps=st.integers(1, 15),
)
def test_observation_equals_reference_replay(
    prompt: list[int], actions: list[int], max_length: int, max_steps: int
) -> None:
    env = make_echo(max_length=max_length, max_steps=max_steps)
    obs, info = env.reset(seed=0, options={"prompt": prompt})
    assert obs.tolist() == prompt + [PAD] * (max_length - len(prompt))
    assert info["prompt_length"] == len(prompt) and info["generated"] == []
    for t, a in enumerate(actions):
        expected = states(prompt, actions[: t + 1], V)[-1]
        obs, reward, terminated, truncated, info = env.step(a)
        assert obs.dtype == np.int64 and obs.shape == (max_length,)
        assert obs.tolist() == expected + [PAD] * (max_length - len(expected))
        assert list(env.state) == expected
        assert info["length"] == len(expected) and info["generated"] == expected[len(prompt) :]
        assert info["action_mask"].dtype == np.int8
        assert np.array_equal(info["action_mask"], action_mask(len(expected), len(prompt), V).astype(np.int8))
        assert np.array_equal(env.action_masks(), action_mask(len(expected), len(prompt), V))
        assert terminated == (a == EOS)
        assert truncated == (not terminated and (len(expected) >= max_length or t + 1 >= max_steps))
        assert reward == (1.0 if terminated and Echo().is_valid(expected) else 0.0)  # the default: "valid"
        if terminated or truncated:
            with pytest.raises(ResetNeeded, match="reset"):
                env.step(0)
            break


def test_backspace_at_the_prompt_boundary_is_masked_and_a_no_op() -> None:
    env = make_echo()
    obs, info = env.reset(seed=0, options={"prompt": [1, 2]})
    assert info["action_mask"][BK] == 0 and not env.action_masks()[BK]
    obs2, reward, terminated, truncated, info = env.step(BK)
    assert np.array_equal(obs, obs2) and reward == 0.0 and not terminated and not truncated
    assert info["length"] == 2 and info["generated"] == []
    _, _, _, _, info = env.step(0)
    assert info["action_mask"][BK] == 1 and env.action_masks()[BK]


def test_sampled_prompts_come_from_the_source_and_are_seeded() -> None:
    env = make_echo()
    first = [env.reset(seed=s)[1]["prompt_length"] for s in range(20)]
    again = [env.reset(seed=s)[1]["prompt_length"] for s in range(20)]
    assert first == again and len(set(first)) > 1
    src = Echo()
    for s in range(5):
        prompt, _ = src.sample(np.random.default_rng(np.random.SeedSequence(s)))
        obs, _ = env.reset(seed=s)
        assert obs[: len(prompt)].tolist() == prompt


def test_a_source_can_draw_prompts_without_completions() -> None:
    class PromptOnly(Echo):
        def sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
            raise AssertionError("the env should use sample_prompt")

        def sample_prompt(self, rng: np.random.Generator) -> list[int]:
            return [int(rng.integers(0, 3))]

    env = SequenceEnv(PromptOnly(), max_length=6, max_steps=12)
    prompts = [env.reset(seed=s)[0][0] for s in range(10)]
    assert prompts == [
        int(np.random.default_rng(np.random.SeedSequence(s)).integers(0, 3)) for s in range(10)
    ]


# ------------------------------------------------------------------------------------------------------------
# Rewards.
@settings(max_examples=60, deadline=None)
@given(actions=st.lists(st.integers(0, 5), min_size=1, max_size=30))
def test_logprob_return_is_the_floored_logprob_of_the_final_sequence(actions: list[int]) -> None:
    src = Dyck(2, max_depth=2, max_length=6)
    env = SequenceEnv(src, max_length=8, max_steps=30, reward="logprob", logprob_floor=-7.5)
    env.reset(seed=0)
    total, taken = 0.0, []
    for a in actions:
        _, reward, terminated, truncated, _ = env.step(a)
        total += reward
        taken.append(a)
        if terminated or truncated:
            break
    final = states([], taken, src.vocab)[-1]
    expected = sum(max(float(src.next_token_logprobs(final[:i])[t]), -7.5) for i, t in enumerate(final))
    assert total == pytest.approx(expected, abs=1e-9)


def test_logprob_reward_values_and_no_op_backspace() -> None:
    env = make_echo(reward="logprob")
    env.reset(seed=0, options={"prompt": [0]})
    assert env.step(BK)[1] == 0.0  # no-op at the boundary
    assert env.step(1)[1] == pytest.approx(math.log(0.25))
    assert env.step(BK)[1] == pytest.approx(-math.log(0.25))
    assert env.step(EOS)[1] == pytest.approx(math.log(0.25))


def test_valid_reward_is_sparse_and_judged_at_termination() -> None:
    env = make_echo(reward="valid")
    env.reset(seed=0, options={"prompt": [0, 1]})
    assert [env.step(a)[1] for a in (1, 0)] == [0.0, 0.0]
    assert env.step(EOS)[1:3] == (1.0, True)
    env.reset(seed=0, options={"prompt": [0, 1]})
    assert env.step(0)[1] == 0.0 and env.step(EOS)[1:3] == (0.0, True)
    env = make_echo(reward="valid", max_steps=2)
    env.reset(seed=0, options={"prompt": [0]})
    env.step(0)
    assert env.step(BK)[1:4] == (0.0, False, True)  # truncated by the step limit: no reward


def test_callable_reward_sees_state_tuples() -> None:
    seen = []

    def reward(state: tuple[int, ...], action: int, next_state: tuple[int, ...], terminated: bool) -> float:
        seen.append((state, action, next_state, terminated))
        return float(len(next_state))

    env = make_echo(reward=reward)
    env.reset(seed=0, options={"prompt": [2]})
    assert env.step(0)[1] == 2.0 and env.step(BK)[1] == 1.0 and env.step(EOS)[1] == 2.0
    assert seen == [((2,), 0, (2, 0), False), ((2, 0), BK, (2,), False), ((2,), EOS, (2, EOS), True)]


# ------------------------------------------------------------------------------------------------------------
# Bad input: specific errors that say what to change.
@pytest.mark.parametrize(
    ("action", "match"),
    [
        (-1, "out of range"),
        (V.n_actions, "pad id"),
        (99, "out of range"),
        (1.0, "integer"),
        (np.array([1]), "integer"),
    ],
)
def test_invalid_actions_raise(action: object, match: str) -> None:
    env = make_echo()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_numpy_integer_actions_are_accepted() -> None:
    env = make_echo()
    env.reset(seed=0, options={"prompt": []})
    assert env.step(np.int64(1))[0][0] == 1 and env.step(np.array(2, dtype=np.int32))[0][1] == 2


@pytest.mark.parametrize(
    ("prompt", "error", "match"),
    [
        ([0, 7], ValueError, "unknown id 7"),
        ([0, BK], ValueError, "backspace id"),
        ([PAD], ValueError, "pad id"),
        ([EOS], ValueError, "unknown id"),
        ([0, 1, 2, 0, 1, 2], ValueError, r"max_length=6.*shorten the prompt or raise max_length"),
        ([0, 1.5], TypeError, "integer token ids"),
        ("abc", TypeError, "sequence of token ids"),
    ],
)
def test_invalid_prompts_raise(prompt: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make_echo().reset(options={"prompt": prompt})


def test_invalid_reset_option_and_step_before_reset_raise() -> None:
    env = make_echo()
    with pytest.raises(ResetNeeded, match="reset"):
        env.step(0)
    with pytest.raises(ValueError, match="accepts"):
        env.reset(options={"promt": [0]})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 0}, ValueError, "max_length must be a positive int"),
        ({"max_length": -3}, ValueError, "max_length must be a positive int"),
        ({"max_steps": 0}, ValueError, "max_steps must be a positive int"),
        ({"max_steps": 2.5}, TypeError, "max_steps must be a positive int"),
        ({"reward": "loglik"}, ValueError, r"Unknown reward 'loglik'.*'none', 'logprob', 'valid'"),
        ({"reward": 3}, TypeError, "callable"),
        ({"render_mode": "human"}, ValueError, "render_mode"),
        ({"reward": "logprob", "logprob_floor": float("-inf")}, ValueError, "finite"),
    ],
)
def test_invalid_constructor_arguments_raise(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make_echo(**kwargs)


def test_rewards_a_source_cannot_provide_raise() -> None:
    with pytest.raises(ValueError, match=r"next_token_logprobs.*Markov, Dyck and Arithmetic"):
        SequenceEnv(NoProbs(), max_length=4, max_steps=4, reward="logprob")
    with pytest.raises(ValueError, match="is_valid"):
        SequenceEnv(NoProbs(), max_length=4, max_steps=4, reward="valid")
    with pytest.raises(TypeError, match="Source protocol"):
        SequenceEnv(object(), max_length=4, max_steps=4)  # type: ignore[arg-type]


def test_sampled_prompt_too_long_for_max_length_raises() -> None:
    env = SequenceEnv(Echo(), max_length=2, max_steps=5)
    with pytest.raises(ValueError, match="larger max_length"):
        for s in range(50):
            env.reset(seed=s)


# ------------------------------------------------------------------------------------------------------------
# Rendering, the demo, and the import boundary.
def test_ansi_render_shows_backspaces_and_the_visible_text() -> None:
    env = make_echo(render_mode="ansi")
    env.reset(seed=0, options={"prompt": [0]})
    assert env.render() == "a|"
    for a in (1, 2, BK, 0, EOS):
        env.step(a)
    assert env.render() == "a|bc⌫a<eos>  =>  a|ba<eos>"
    assert render_history(V, [], [0, 3]) == "|a<eos>"


def test_demo_runs_and_is_seeded(capsys: pytest.CaptureFixture[str]) -> None:
    from seqgym.demo import main

    assert main(["--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert "Expert" in first and "Random agent" in first and "⌫" in first and "terminated" in first
    main(["--seed", "3"])
    assert capsys.readouterr().out == first
    cmd = [sys.executable, "-m", "seqgym.demo", "--seed", "1", "--random-episodes", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "Random agent, episode 1" in out


def test_env_modules_do_not_import_torch() -> None:
    code = (
        "import sys, seqgym.env, seqgym.vector, seqgym.rewards, seqgym.registration, seqgym.demo; "
        "assert not {'torch', 'transformers', 'stable_baselines3'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_maskable_ppo_trains_on_dyck() -> None:
    sb3_contrib = pytest.importorskip("sb3_contrib")
    import torch

    torch.set_num_threads(1)
    env = gym.make("seqgym/Dyck-v0", reward="valid")
    model = sb3_contrib.MaskablePPO(
        "MlpPolicy", env, n_steps=256, batch_size=128, n_epochs=1, seed=0, policy_kwargs={"net_arch": [32]}
    )
    model.learn(total_timesteps=4096)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks())  # type: ignore[attr-defined]
    assert 0 <= int(action) < env.unwrapped.vocab.n_actions  # type: ignore[attr-defined]
