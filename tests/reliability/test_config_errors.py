"""Config and arguments: every option is checked, with a message that says what is accepted.

``agent.json`` with missing or wrong fields, or written by another agent class: see
``test_checkpoints.py::test_agent_json_with_missing_or_wrong_fields``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents import make_agent
from agents.common.config import AgentConfig
from seqgym.env import SequenceEnv
from seqgym.sources.dyck import Dyck

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}


def small_env() -> SequenceEnv:
    return SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=9, max_steps=27)


@dataclasses.dataclass(kw_only=True)
class _FlagConfig(AgentConfig):
    keep_mistakes: bool = True


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
def test_bool_options_refuse_truthy_values(value: object) -> None:
    with pytest.raises(TypeError, match=r"keep_mistakes must be True or False"):
        _FlagConfig(keep_mistakes=value)  # type: ignore[arg-type]
    assert _FlagConfig(keep_mistakes=False).keep_mistakes is False


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"lr_schedule": "no"}, "Unknown lr_schedule 'no'"),
        ({"noise": "yes"}, "Unknown noise 'yes'"),
        ({"learning_rate": "1e-3"}, "learning_rate must be"),
        ({"n_demonstrations": 2.0}, "n_demonstrations must be an int"),
        ({"lr_schedul": "constant"}, r"did you mean 'lr_schedule'"),
    ],
)
def test_agent_options_are_checked(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises((ValueError, TypeError), match=pattern):
        make_agent("bc", env=small_env(), policy_kwargs=dict(TINY), **kwargs)


@pytest.mark.parametrize("floor", [0.5, 1, float("inf")])
def test_positive_logprob_floor_is_refused(floor: float) -> None:
    with pytest.raises(ValueError, match="logprob_floor must be"):
        SequenceEnv(Dyck(), max_length=17, max_steps=24, reward="logprob", logprob_floor=floor)
    SequenceEnv(Dyck(), max_length=17, max_steps=24, reward="logprob", logprob_floor=0.0)


def test_unknown_policy_kwargs_are_refused_with_a_suggestion() -> None:
    with pytest.raises(TypeError, match=r"'n_layers' \(did you mean 'n_layer'\?\)"):
        make_agent("bc", env=small_env(), policy_kwargs={"n_layers": 1, "n_embd": 16, "n_head": 2})
    agent = make_agent(
        "bc", env=small_env(), n_demonstrations=2, policy_kwargs={**TINY, "attention_dropout": 0.1}
    )
    assert agent.policy.model.config.attention_dropout == 0.1


def test_generate_refuses_eos_inside_a_prompt() -> None:
    agent = make_agent("bc", env=small_env(), n_demonstrations=2, policy_kwargs=dict(TINY))
    eos = agent.vocab.eos_id
    with pytest.raises(ValueError, match=rf"prompts\[1\] holds eos \(id {eos}\) at position 1"):
        agent.generate(prompts=[[0], [0, eos]])
    with pytest.raises(ValueError, match="holds eos"):
        agent.policy.generate([[eos]], max_steps=3, max_length=5)
    assert len(agent.generate(prompts=[[0], []], seed=0).sequences) == 2


@pytest.mark.parametrize(
    "action", [True, False, np.bool_(True), 1.0, np.float64(0.0), np.array(1.0), "0", None]
)
def test_env_step_refuses_bools_and_floats(action: object) -> None:
    env = small_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Action must be an integer"):
        env.step(action)
    env.step(np.int64(0))
    env.step(np.array(1))
