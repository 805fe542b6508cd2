"""A seeded look at ``seqgym/Dyck-v0``: an expert, an expert that repairs a mistake, and a random agent.

Run ``python -m seqgym.demo --seed 0``. Each episode prints one line per step as ``render_mode="ansi"`` draws
it: the prompt (empty for Dyck), ``|``, the actions typed so far with a backspace shown as ``⌫``, and, once a
backspace has been used, ``=>`` and the visible sequence.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from seqgym.env import SequenceEnv
from seqgym.registration import register_envs

__all__ = ["main", "run_episode"]


def run_episode(
    env: SequenceEnv,
    choose: Callable[[dict[str, Any]], int],
    *,
    seed: int,
    prompt: Sequence[int] | None = None,
    print_fn: Callable[[str], None] = print,
) -> tuple[list[int], bool]:
    """Play one episode, printing the rendered text after every step.

    Args:
        env: a ``SequenceEnv`` with ``render_mode="ansi"``.
        choose: maps the step's ``info`` (with ``action_mask``) to an action id.
        seed: reset seed.
        prompt: fixed prompt, or ``None`` to draw one from the source.
        print_fn: where the lines go.

    Returns:
        ``(final visible sequence, terminated)``.
    """
    options = None if prompt is None else {"prompt": list(prompt)}
    _, info = env.reset(seed=seed, options=options)
    terminated = truncated = False
    step = 0
    total = 0.0
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(choose(info))
        total += reward
        step += 1
        print_fn(f"  {step:3d}  {env.render()}")
    end = "terminated (eos)" if terminated else "truncated"
    print_fn(f"  -> {end} after {step} step{'s' if step != 1 else ''}, return {total:.2f}")
    return list(env.state), terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m seqgym.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m seqgym.demo",
        description="Seeded rollouts on seqgym/Dyck-v0: an expert (actions from the source's own sample), "
        "the same expert with one mistake repaired by <backspace>, and a random agent (uniform over the "
        "allowed actions).",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument(
        "--random-episodes", type=int, default=3, help="episodes of the random agent (default 3)"
    )
    args = parser.parse_args(argv)
    seed: int = args.seed
    n_random: int = args.random_episodes

    register_envs()
    env: SequenceEnv = gym.make("seqgym/Dyck-v0", render_mode="ansi", reward="valid").unwrapped  # type: ignore[assignment]
    src, v = env.source, env.vocab
    rng = np.random.default_rng(seed)
    print(
        f"seqgym/Dyck-v0, seed {seed}: balanced brackets; reward 'valid' (1 at eos for a balanced sequence)"
    )
    print(
        "actions: "
        + ", ".join(f"{t}={i}" for i, t in enumerate(v.tokens[: v.n_actions]))
        + f"; max_length={env.max_length}, max_steps={env.max_steps}"
    )

    prompt, completion = src.sample(rng)
    print("\nExpert (replays a sequence sampled from the source):")
    expert = iter(completion)
    run_episode(env, lambda info: next(expert), seed=seed, prompt=prompt)

    # The same sequence with one wrong token inserted and deleted at a random position; the wrong token is one
    # the source gives probability zero there when there is such a token.
    pos = int(rng.integers(len(completion)))
    logprobs = src.next_token_logprobs([*prompt, *completion[:pos]])  # type: ignore[attr-defined]
    others = [t for t in range(v.n_tokens) if t != completion[pos]]
    impossible = [t for t in others if logprobs[t] == -np.inf]
    wrong = int(rng.choice(impossible or others))
    fixed = [*completion[:pos], wrong, v.backspace_id, *completion[pos:]]
    print(f"\nExpert with a mistake at step {pos + 1} ({v.decode([wrong])!r}), repaired with <backspace>:")
    repaired = iter(fixed)
    run_episode(env, lambda info: next(repaired), seed=seed, prompt=prompt)

    env.action_space.seed(seed)
    for episode in range(1, n_random + 1):
        print(f"\nRandom agent, episode {episode} (uniform over the allowed actions):")
        final, terminated = run_episode(
            env, lambda info: int(env.action_space.sample(mask=info["action_mask"])), seed=seed + episode
        )
        valid = terminated and bool(src.is_valid(final))  # type: ignore[attr-defined]
        print(f"  final sequence {v.decode(final)!r} is {'valid' if valid else 'not valid'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
