"""Resets from a deletable generated part after the prompt (recovery evaluation), in both envs."""

from __future__ import annotations

import numpy as np
import pytest

from seqgym.env import SequenceEnv
from seqgym.sources.dyck import Dyck
from seqgym.vector import SequenceVectorEnv

SRC = Dyck(2, max_length=8)
V = SRC.vocab
OP, CL, SQ = V.token_to_id("("), V.token_to_id(")"), V.token_to_id("]")


def test_env_starts_from_the_generated_part_and_may_delete_it_down_to_the_prompt() -> None:
    env = SequenceEnv(SRC, max_length=10, max_steps=20)
    obs, info = env.reset(options={"prompt": [OP], "generated": [OP, SQ]})
    assert obs[:3].tolist() == [OP, OP, SQ] and info["length"] == 3 and info["prompt_length"] == 1
    assert info["generated"] == [OP, SQ] and info["action_mask"][V.backspace_id] == 1
    for expected_length in (2, 1):
        obs, _, _, _, info = env.step(V.backspace_id)
        assert info["length"] == expected_length
    assert info["action_mask"][V.backspace_id] == 0  # the prompt cannot be deleted
    obs, _, _, _, info = env.step(V.backspace_id)  # an unmasked backspace at the boundary is a no-op
    assert info["length"] == 1 and obs[0] == OP
    obs, _, terminated, _, info = env.step(CL)
    obs, reward, terminated, _, info = env.step(V.eos_id)
    assert terminated and reward == 1.0  # "()" + eos is valid: recovered


@pytest.mark.parametrize(
    ("generated", "error", "match"),
    [
        ([V.eos_id], ValueError, "eos"),
        ([V.backspace_id], ValueError, "backspace"),
        ([V.pad_id], ValueError, "pad"),
        ([99], ValueError, "unknown id"),
        ([OP] * 9, ValueError, "shorter than max_length"),
        ("((", TypeError, "generated"),
        ([1.5], TypeError, "integer"),
    ],
)
def test_bad_generated_parts_are_refused(generated: object, error: type, match: str) -> None:
    env = SequenceEnv(SRC, max_length=10, max_steps=20)
    with pytest.raises(error, match=match):
        env.reset(options={"prompt": [OP], "generated": generated})


def test_vector_env_resets_each_sub_env_from_its_generated_part() -> None:
    vec = SequenceVectorEnv(SRC, num_envs=3, max_length=10, max_steps=20, render_mode="ansi")
    parts = [[OP], [OP, SQ], []]
    obs, info = vec.reset(options={"prompts": [[], [OP], [OP]], "generated_parts": parts})
    assert info["length"].tolist() == [1, 3, 1] and info["prompt_length"].tolist() == [0, 1, 1]
    assert info["action_mask"][:, V.backspace_id].tolist() == [1, 1, 0]
    obs, _, _, _, info = vec.step(np.array([V.backspace_id] * 3))
    assert info["length"].tolist() == [0, 2, 1]
    assert "⌫" in vec.render()[1]
    single = SequenceEnv(SRC, max_length=10, max_steps=20)
    o, _ = single.reset(options={"prompt": [OP], "generated": [OP, SQ]})
    o, *_ = single.step(V.backspace_id)
    assert obs[1].tolist() == o.tolist()
    with pytest.raises(ValueError, match="not both"):
        vec.reset(options={"generated": [OP], "generated_parts": parts})
    with pytest.raises(ValueError, match="num_envs=3"):
        vec.reset(options={"generated_parts": parts[:2]})
