"""Environment throughput: steps per second of SequenceEnv, SyncVectorEnv over it, and SequenceVectorEnv.

Every configuration steps ``seqgym/Dyck-v0``'s defaults (``Dyck(2, max_depth=4, max_length=16)``,
``max_length=17``, ``max_steps=51``, ``reward="none"``) with uniformly random *masked* actions (backspace only
where allowed) for at least ``--min-time`` seconds. The uniform numbers are drawn before timing; turning one
into an action takes one multiply per step on the step's own ``action_mask`` (vectorised for the vector envs),
which is inside the timing. A step of a vector env over ``N`` sub-envs counts as ``N`` steps.

Random agents end an episode every few steps (eos is one action in six), so resets matter: each reset draws a
prompt with the source's ``sample_prompt`` (Dyck's is the empty prompt, no draw).

Writes ``results/benchmarks/env_throughput.json`` and prints a table.

Usage (from the repository root)::

    python -m benchmarks.env_throughput                  # defaults below
    python -m benchmarks.env_throughput --sizes 1 64 --min-time 0.5
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from benchmarks._common import cli, load_average, machine_info
from experiments.common import write_json_atomic
from seqgym.env import SequenceEnv
from seqgym.sources.dyck import Dyck
from seqgym.vector import SequenceVectorEnv

MAX_LENGTH, MAX_STEPS = 17, 51
N_UNIFORMS = 512  # rows of pre-drawn uniforms, reused cyclically


@dataclass
class Config:
    """Benchmark settings (the env is fixed: ``seqgym/Dyck-v0``'s defaults)."""

    sizes: tuple[int, ...] = (1, 64, 1024)
    """numbers of sub-envs of the vector envs"""
    min_time: float = 2.0
    """seconds per configuration (at least)"""
    seed: int = 0
    """seed of the pre-drawn uniforms"""
    out: str = "results/benchmarks/env_throughput.json"
    """where the JSON results go (under results/, which git ignores)"""


def _masked(u: np.ndarray, mask: np.ndarray, n_actions: int) -> np.ndarray:
    """Uniform over the allowed actions: tokens and eos always, backspace (the last id) where allowed."""
    return (u * (n_actions - 1 + mask[..., n_actions - 1])).astype(np.int64)


def bench_single(source: Dyck, n_envs: int, min_time: float, rng: np.random.Generator) -> tuple[int, float]:
    env = SequenceEnv(source, max_length=MAX_LENGTH, max_steps=MAX_STEPS, reward="none")
    n_actions = env.vocab.n_actions
    uniforms = rng.random(N_UNIFORMS * 64).tolist()
    _, info = env.reset(seed=0)
    steps, t0 = 0, time.perf_counter()
    while True:
        for u in uniforms:
            action = int(u * (n_actions - 1 + int(info["action_mask"][n_actions - 1])))
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                _, info = env.reset()
        steps += len(uniforms)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return steps, elapsed


def _bench_vector(envs: gym.vector.VectorEnv, min_time: float, rng: np.random.Generator) -> tuple[int, float]:
    n_actions = int(envs.single_action_space.n)  # type: ignore[attr-defined]
    uniforms = rng.random((N_UNIFORMS, envs.num_envs))
    _, info = envs.reset(seed=0)
    for k in range(20):  # warm-up
        _, _, _, _, info = envs.step(_masked(uniforms[k], info["action_mask"], n_actions))
    steps, t0 = 0, time.perf_counter()
    while True:
        for row in uniforms:
            _, _, _, _, info = envs.step(_masked(row, info["action_mask"], n_actions))
        steps += len(uniforms) * envs.num_envs
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return steps, elapsed


def bench_sync(source: Dyck, n_envs: int, min_time: float, rng: np.random.Generator) -> tuple[int, float]:
    envs = gym.vector.SyncVectorEnv(
        [
            lambda: SequenceEnv(source, max_length=MAX_LENGTH, max_steps=MAX_STEPS, reward="none")
            for _ in range(n_envs)
        ]
    )
    return _bench_vector(envs, min_time, rng)


def bench_native(source: Dyck, n_envs: int, min_time: float, rng: np.random.Generator) -> tuple[int, float]:
    envs = SequenceVectorEnv(source, n_envs, max_length=MAX_LENGTH, max_steps=MAX_STEPS, reward="none")
    return _bench_vector(envs, min_time, rng)


BENCHES: dict[str, Callable[[Dyck, int, float, np.random.Generator], tuple[int, float]]] = {
    "SequenceEnv": bench_single,
    "SyncVectorEnv(SequenceEnv)": bench_sync,
    "SequenceVectorEnv": bench_native,
}


def main(cfg: Config) -> dict[str, Any]:
    sources = {"dyck": Dyck(2, max_depth=4, max_length=16)}
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    for source_name in sources:
        for name, bench in BENCHES.items():
            for n in [1] if name == "SequenceEnv" else cfg.sizes:
                steps, elapsed = bench(sources[source_name], n, cfg.min_time, np.random.default_rng(cfg.seed))
                rows.append(
                    {"source": source_name, "env": name, "num_envs": n, "steps": steps, "seconds": elapsed,
                     "steps_per_s": steps / elapsed}
                )  # fmt: skip
                print(
                    f"  {source_name:20s} {name:28s} {n:5d}  {steps / elapsed:12,.0f} steps/s",
                    file=sys.stderr,
                )

    def rate(source: str, env: str, n: int) -> float:
        return next(
            r["steps_per_s"] for r in rows if (r["source"], r["env"], r["num_envs"]) == (source, env, n)
        )

    speedups = {
        f"{s} @ {n}": rate(s, "SequenceVectorEnv", n) / rate(s, "SyncVectorEnv(SequenceEnv)", n)
        for s in sources
        for n in cfg.sizes
    }
    print(f"\n{'source':20s} {'env':28s} {'num_envs':>8s} {'steps/s':>14s}")
    for r in rows:
        print(f"{r['source']:20s} {r['env']:28s} {r['num_envs']:8d} {r['steps_per_s']:14,.0f}")
    print("\nSequenceVectorEnv / SyncVectorEnv:")
    for key, value in speedups.items():
        print(f"  {key:28s} {value:6.1f}x")

    result = {
        "benchmark": "env_throughput",
        "env": {
            "source": "Dyck(2, max_depth=4, max_length=16)",
            "max_length": MAX_LENGTH,
            "max_steps": MAX_STEPS,
        },
        "actions": "uniform over the allowed actions (masked), from pre-drawn uniforms",
        "min_time_s": cfg.min_time,
        "config": asdict(cfg),
        "machine": machine_info(load_average_1min_before=load_before),
        "numpy": np.__version__,
        "gymnasium": gym.__version__,
        "results": rows,
        "speedup_native_over_sync": speedups,
    }
    write_json_atomic(cfg.out, result)
    print(f"\nwrote {cfg.out}")
    return result


if __name__ == "__main__":
    main(cli(Config))
