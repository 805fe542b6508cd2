"""``render_mode="rgb_array"``: what a frame shows, for the single and the vector environment."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from echo_source import Echo

from seqgym.env import SequenceEnv
from seqgym.registration import register_envs
from seqgym.render import DELETED, EMPTY, EOS, GENERATED, PROMPT, FrameRenderer
from seqgym.vector import SequenceVectorEnv
from seqgym.vocab import Vocabulary

register_envs()
V = Echo().vocab  # a=0 b=1 c=2 eos=3 bksp=4 pad=5
A, B, C, EOS_ID, BK = 0, 1, 2, V.eos_id, V.backspace_id


def cell_colours(env: SequenceEnv, frame: np.ndarray) -> list[str]:
    """The fill colour of each position's cell, read from the frame (its top-left inner pixel)."""
    names = {tuple(c): n for n, c in [("empty", EMPTY), ("prompt", PROMPT), ("gen", GENERATED)]}
    names.update({tuple(EOS): "eos", tuple(DELETED): "deleted"})
    draw = env._renderer
    assert draw is not None
    out = []
    for pos in range(env.max_length):
        x, y = draw._cell_origin(pos)
        out.append(names[tuple(frame[y + 1, x + 1])])
    return out


def test_frame_shows_prompt_generated_part_last_deletions_and_eos() -> None:
    env = SequenceEnv(Echo(), max_length=6, max_steps=12, render_mode="rgb_array")
    env.reset(options={"prompt": [A]})
    first = env.render()
    assert isinstance(first, np.ndarray) and first.dtype == np.uint8 and first.shape == env._renderer.shape  # type: ignore[union-attr]
    assert cell_colours(env, first) == ["prompt"] + ["empty"] * 5
    for a in (B, C):
        env.step(a)
    assert cell_colours(env, env.render()) == ["prompt", "gen", "gen", "empty", "empty", "empty"]  # type: ignore[arg-type]
    env.step(BK)
    env.step(BK)  # two deletions in a row: both shown struck through where they stood
    assert cell_colours(env, env.render()) == ["prompt", "deleted", "deleted", "empty", "empty", "empty"]  # type: ignore[arg-type]
    env.step(BK)  # a no-op at the prompt boundary deletes nothing more
    assert cell_colours(env, env.render()) == ["prompt", "deleted", "deleted", "empty", "empty", "empty"]  # type: ignore[arg-type]
    env.step(C)  # a new token: the old deletions are no longer the latest action
    assert cell_colours(env, env.render()) == ["prompt", "gen", "empty", "empty", "empty", "empty"]  # type: ignore[arg-type]
    env.step(EOS_ID)
    last = env.render()
    assert cell_colours(env, last) == ["prompt", "gen", "eos", "empty", "empty", "empty"]  # type: ignore[arg-type]
    assert last.shape == first.shape  # type: ignore[union-attr]
    # The status line (top band) changes with the step count; the same history draws the same frame.
    again = SequenceEnv(Echo(), max_length=6, max_steps=12, render_mode="rgb_array")
    again.reset(options={"prompt": [A]})
    for a in (B, C, BK, BK, BK, C, EOS_ID):
        again.step(a)
    assert np.array_equal(again.render(), last)  # type: ignore[arg-type]


def test_ansi_rendering_is_unchanged_and_unknown_modes_are_refused() -> None:
    env = SequenceEnv(Echo(), max_length=6, max_steps=12, render_mode="ansi")
    env.reset(options={"prompt": [A]})
    for a in (B, C, BK, A, EOS_ID):
        env.step(a)
    assert env.render() == "a|bc⌫a<eos>  =>  a|ba<eos>"
    with pytest.raises(ValueError, match=r"Unknown render_mode 'human'.*'ansi', 'rgb_array'"):
        SequenceEnv(Echo(), max_length=6, max_steps=12, render_mode="human")
    with pytest.raises(ValueError, match=r"Unknown render_mode 'rgb'"):
        SequenceVectorEnv(Echo(), 2, max_length=6, max_steps=12, render_mode="rgb")
    assert SequenceEnv.metadata["render_fps"] == 4


def test_vector_env_renders_the_same_frames_as_single_envs() -> None:
    vec = SequenceVectorEnv(Echo(), 3, max_length=6, max_steps=12, render_mode="rgb_array")
    singles = [SequenceEnv(Echo(), max_length=6, max_steps=12, render_mode="rgb_array") for _ in range(3)]
    vec.reset(seed=5)
    for i, env in enumerate(singles):
        env.reset(seed=5 + i)
    for actions in ([A, B, C], [BK, C, EOS_ID], [BK, BK, A]):
        vec.step(np.array(actions))
        for env, a in zip(singles, actions):
            if env._needs_reset:  # NEXT_STEP autoreset: the vector env ignores the action and resets
                env.reset()
            else:
                env.step(a)
        frames = vec.render()
        assert isinstance(frames, tuple) and len(frames) == 3
        for frame, env in zip(frames, singles):
            assert np.array_equal(frame, env.render())  # type: ignore[arg-type]
    assert vec.metadata["render_fps"] == 4 and "rgb_array" in vec.metadata["render_modes"]
    made = gym.make_vec(
        "seqgym/Dyck-v0", num_envs=2, vectorization_mode="vector_entry_point", render_mode="rgb_array"
    )
    made.reset(seed=0)
    assert len(made.render()) == 2  # type: ignore[arg-type]


def test_frame_size_is_fixed_by_vocabulary_and_length_and_fits_video_encoders() -> None:
    long_tokens = Vocabulary(["the", " cat", " sat\n", "Hello, world", "é"])
    draw = FrameRenderer(long_tokens, max_length=40, max_steps=120)
    h, w, _ = draw.shape
    assert h % 16 == 0 and w % 16 == 0 and w <= 960 + 16
    frames = [draw([0, 1], []), draw([0, 1], [2, 3, 4, 0, 6, 6]), draw([], [5])]
    assert all(f.shape == draw.shape for f in frames)
    assert (frames[1] == DELETED).all(axis=-1).any() and not (frames[0] == DELETED).all(axis=-1).any()
