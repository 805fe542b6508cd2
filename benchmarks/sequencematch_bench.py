"""Cost of SequenceMatch against BC: one update, and a whole training run with its generation.

(a) One update on the same batch and model: BC minimises its cross-entropy on ``batch_size`` augmented
    demonstrations ``E``; SequenceMatch (past its BC warm-up) runs ONE masked forward over ``E`` plus the
    ``n_replay`` model trajectories of the mixture, and minimises the loss of ``docs/method.md`` §3. Each
    update is ``agent.train_step(batch)``: forward + loss + backward + clipping + NaN check + AdamW step (the
    batch is drawn beforehand with ``agent.sample_batch``, identical for every repeat). Also reported: the
    update including its share of the replay generation (one refresh every ``replay_refresh_interval``
    updates). Target: SequenceMatch <= 1.5x BC.
(b) A whole ``learn(budget)`` run of each agent from the same initial model and data: wall time, the share
    of SequenceMatch's time spent generating replay samples vs updating, and the tokens/s of each (generated
    actions per second of generation; (state, action) pairs through the forward/backward per second of
    update, replay rows included).

Timings are medians over ``repeats`` interleaved runs after a warm-up. Writes
``results/benchmarks/sequencematch_bench.json`` and prints a table.

Usage (from the repository root)::

    python -m benchmarks.sequencematch_bench
    python -m benchmarks.sequencematch_bench --n-embd 256 --budget 400000
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents import Agent, make_agent
from agents.bc import BC
from agents.policy import Architecture
from agents.sequencematch import SequenceMatch, SequenceMatchBatch
from benchmarks._common import cli, interleaved_times, load_average, machine_info
from experiments.common import model_kwargs, write_json_atomic
from seqgym.data import collect


@dataclass
class Config:
    """Benchmark settings (one env, model and batch for every measurement)."""

    architecture: Architecture = "gpt2"
    """model family of ``LMPolicy.from_config``: 'gpt2' (the README's figures) or 'llama' (the library default)"""
    env: str = "seqgym/Dyck-v0"
    """Gymnasium id of the task"""
    n_layer: int = 2
    """transformer layers"""
    n_embd: int = 128
    """transformer width"""
    n_head: int = 2
    """attention heads"""
    batch_size: int = 32
    """trajectories of E per update (BC's batch)"""
    n_demonstrations: int = 500
    """expert trajectories"""
    p_noise: float = 0.1
    """augmentation probability (both agents)"""
    bc_warmup_steps: int = 20
    """SequenceMatch's BC-only updates (part b)"""
    replay_refresh_interval: int | None = None
    """updates between replay refreshes (None: the library default)"""
    mixture_size: int | None = None
    """SequenceMatch's mixture per update (None: the library default)"""
    repeats: int = 20
    """(a) timed updates per agent (median reported)"""
    budget: int = 200_000
    """(b) expert (state, action) pairs per training run"""
    threads: int = 1
    """torch CPU threads"""
    seed: int = 0
    """seed of the data, the model and the sampling"""
    out: str = "results/benchmarks/sequencematch_bench.json"
    """where the JSON results go (under results/, which git ignores)"""


def _agents(cfg: Config, *, bc_warmup_steps: int | None = None) -> tuple[BC, SequenceMatch]:
    import gymnasium as gym

    from seqgym.registration import register_envs

    register_envs()
    env = gym.make(cfg.env)
    demos = collect(env.unwrapped.source, cfg.n_demonstrations, np.random.default_rng(cfg.seed))  # type: ignore[attr-defined]
    common: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "p_noise": cfg.p_noise,
        "learning_rate": 1e-3,
        "policy_kwargs": model_kwargs(cfg),
    }
    sm_only: dict[
        str, Any
    ] = {  # the SequenceMatch settings the config sets; the others keep the library defaults
        name: value
        for name, value in (
            ("replay_refresh_interval", cfg.replay_refresh_interval),
            ("mixture_size", cfg.mixture_size),
        )
        if value is not None
    }
    bc = make_agent("bc", env=env, demonstrations=demos, seed=cfg.seed, **common)
    sm = make_agent(
        "sequencematch",
        env=env,
        demonstrations=demos,
        seed=cfg.seed,
        bc_warmup_steps=cfg.bc_warmup_steps if bc_warmup_steps is None else bc_warmup_steps,
        **sm_only,
        **common,
    )
    assert isinstance(bc, BC) and isinstance(sm, SequenceMatch)
    return bc, sm


def bench_update(cfg: Config) -> dict[str, Any]:
    """(a) One update of each agent on the same batch E and the same initial model."""
    bc, sm = _agents(cfg, bc_warmup_steps=0)  # no warm-up: the first batch refreshes the replay buffer
    t0 = time.perf_counter()
    batch = sm.sample_batch(cfg.batch_size, np.random.default_rng(cfg.seed))
    refresh_s = time.perf_counter() - t0  # dominated by generating n_replay * interval trajectories
    n_generated = sm.replay_buffer.n_added
    assert isinstance(batch, SequenceMatchBatch) and batch.replay is not None
    bc.policy.load_state_dict(sm.policy.state_dict())
    times = interleaved_times(
        {"bc": lambda: bc.train_step(batch.expert), "sequencematch": lambda: sm.train_step(batch)},
        cfg.repeats,
    )
    bc_s, sm_s = statistics.median(times["bc"]), statistics.median(times["sequencematch"])
    per_update_generation = refresh_s / sm.config.replay_refresh_interval
    e_pairs = sum(len(t) for t in batch.expert)
    r_pairs = sum(len(a) for a in batch.replay.actions)
    return {
        "batch": {
            "expert_trajectories": len(batch.expert),
            "replay_trajectories": len(batch.replay),
            "expert_rows_in_mixture": batch.n_mixed_expert,
            "expert_pairs": e_pairs,
            "replay_pairs": r_pairs,
        },
        "bc_update_s": bc_s,
        "sequencematch_update_s": sm_s,
        "ratio": sm_s / bc_s,
        "refresh_s": refresh_s,
        "refresh_trajectories": n_generated,
        "refresh_interval": sm.config.replay_refresh_interval,
        "sequencematch_update_with_generation_share_s": sm_s + per_update_generation,
        "ratio_with_generation_share": (sm_s + per_update_generation) / bc_s,
        "times_s": times,
    }


def _pairs(batch: Any) -> int:
    """(state, action) pairs through the forward / backward of an update: replay rows included."""
    if isinstance(batch, SequenceMatchBatch):
        n = sum(len(t) for t in batch.expert)
        return n + (0 if batch.replay is None else sum(len(a) for a in batch.replay.actions))
    return sum(len(t) for t in batch)


class _UpdateTimer(BaseCallback):
    """Times each update of ``learn`` (from the previous update's end to this one's, the batch drawing and its
    generation included) and counts the pairs of its batch (the loop's ``locals["batch"]``)."""

    def __init__(self, stats: dict[str, float]) -> None:
        super().__init__()
        self.stats = stats
        self.last = 0.0

    def _on_training_start(self) -> None:
        self.last = time.perf_counter()

    def _on_step(self) -> bool:
        now = time.perf_counter()
        self.stats["update_s"] += now - self.last
        self.last = now
        self.stats["updates"] += 1
        self.stats["update_pairs"] += _pairs(self.locals["batch"])
        return True


def _timed_run(agent: Agent, budget: int) -> dict[str, Any]:
    """``agent.learn(budget)`` with its generation (an instance-level wrapper of ``policy.generate``) and update
    time taken apart (a callback)."""
    stats = {"generate_s": 0.0, "generated_tokens": 0, "update_s": 0.0, "update_pairs": 0, "updates": 0}
    policy = agent.policy
    plain_generate = policy.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = plain_generate(*args, **kwargs)
        stats["generate_s"] += time.perf_counter() - t0
        stats["generated_tokens"] += sum(len(a) for a in out.actions)
        return out

    policy.generate = generate  # type: ignore[method-assign]
    t0 = time.perf_counter()
    try:
        agent.learn(budget, log_interval=0, callback=_UpdateTimer(stats))
    finally:
        del policy.generate
    wall = time.perf_counter() - t0
    gen = stats["generate_s"]
    upd = stats["update_s"] - gen  # generation happens inside the update's batch drawing
    return {
        "wall_s": wall,
        "updates": stats["updates"],
        "expert_pairs": agent.num_timesteps,
        "generate_s": gen,
        "update_s": upd,
        "other_s": wall - stats["update_s"],
        "generate_share": gen / wall,
        "update_share": upd / wall,
        "generated_tokens": stats["generated_tokens"],
        "generate_tokens_per_s": stats["generated_tokens"] / gen if gen > 0 else None,
        "update_pairs": stats["update_pairs"],
        "update_pairs_per_s": stats["update_pairs"] / upd if upd > 0 else None,
        "expert_pairs_per_s": agent.num_timesteps / wall,
    }


def bench_training(cfg: Config) -> dict[str, Any]:
    """(b) A whole training run of each agent to ``cfg.budget`` expert pairs."""
    bc, sm = _agents(cfg)
    return {"bc": _timed_run(bc, cfg.budget), "sequencematch": _timed_run(sm, cfg.budget)}


def main(cfg: Config) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    load_before = load_average()
    update = bench_update(cfg)
    training = bench_training(cfg)
    per_update = {name: r["wall_s"] / max(1, r["updates"]) for name, r in training.items()}
    learn_ratio = per_update["sequencematch"] / per_update["bc"]
    result = {
        "benchmark": "sequencematch_bench",
        "config": asdict(cfg),
        "machine": machine_info(threads=cfg.threads, load_average_1min_before=load_before),
        "update": update,
        "training": training,
        "learn_ratio_per_update": learn_ratio,
        "targets": {"update_ratio": 1.5, "learn_ratio_per_update": 1.5},
        "meets_targets": update["ratio"] <= 1.5 and learn_ratio <= 1.5,
    }
    write_json_atomic(cfg.out, result)

    b = update["batch"]
    print(
        f"(a) one update, E = {b['expert_trajectories']} demonstrations ({b['expert_pairs']} pairs), "
        f"+ {b['replay_trajectories']} replay rows ({b['replay_pairs']} pairs) for SequenceMatch"
    )
    print(f"    BC             {update['bc_update_s'] * 1e3:8.1f} ms")
    print(
        f"    SequenceMatch  {update['sequencematch_update_s'] * 1e3:8.1f} ms   ratio {update['ratio']:.2f}x"
    )
    print(
        f"    + generation   {update['sequencematch_update_with_generation_share_s'] * 1e3:8.1f} ms   ratio "
        f"{update['ratio_with_generation_share']:.2f}x (one refresh of {update['refresh_trajectories']} "
        f"trajectories, {update['refresh_s']:.2f} s, every {update['refresh_interval']} updates)"
    )
    print(f"(b) training to {cfg.budget} expert pairs")
    head = ("agent", "wall s", "updates", "gen %", "upd %", "gen tok/s", "upd pairs/s")
    print("    {:14s} {:>8s} {:>8s} {:>6s} {:>6s} {:>10s} {:>12s}".format(*head))
    for name, r in training.items():
        gen_tps = r["generate_tokens_per_s"]
        print(
            f"    {name:14s} {r['wall_s']:8.1f} {r['updates']:8d} {100 * r['generate_share']:6.1f} "
            f"{100 * r['update_share']:6.1f} {'-' if gen_tps is None else str(round(gen_tps)):>10s} "
            f"{round(r['update_pairs_per_s']):>12d}"
        )
    print(
        f"    whole learn per update: SequenceMatch {learn_ratio:.2f}x BC (targets <= 1.5x for one update and for "
        f"learn: {'met' if result['meets_targets'] else 'NOT met'})"
    )
    print(f"wrote {cfg.out}")
    return result


if __name__ == "__main__":
    main(cli(Config))
