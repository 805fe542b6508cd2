"""The main comparison: MLE, BC, SequenceMatch and an SB3 baseline on one toy task, side by side.

Every agent trains for the same budget on the same demonstrations, for each seed; then each draws samples that
are judged by the exact metrics of :mod:`seqgym.metrics`. The script prints a table (mean ± std over seeds),
writes ``results.json``, ``table.md`` and ``compare.png`` (learning curves; validity vs noise level) to
``--out``. Finished runs are cached under ``--out/runs``: an interrupted comparison resumes where it stopped.

Run ``python -m experiments.compare --help`` for every option.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro

from agents import make_agent
from agents.evaluation import evaluate_generator, policy_heldout_nll
from agents.sb3 import train_sb3_baseline
from experiments.common import (
    RunCache,
    config_digest,
    format_table,
    summarize,
    torch_threads,
    write_json_atomic,
)
from seqgym.data import collect
from seqgym.metrics import source_statistics
from seqgym.registration import make_env

TASKS = {"dyck": "seqgym/Dyck-v0", "markov": "seqgym/Markov-v0", "arithmetic": "seqgym/Arithmetic-v0"}
IMITATION = ("mle", "bc", "sequencematch")
SB3_ALGOS = ("maskable_ppo", "ppo", "dqn")
METRICS = (
    "validity",
    "logprob_per_token",
    "heldout_nll",
    "length_tv",
    "bigram_tv",
    "rep_2",
    "backspace_rate",
)


@dataclasses.dataclass
class Config:
    """Compare imitation agents and an SB3 baseline on a toy task."""

    task: Literal["dyck", "markov", "arithmetic"] = "dyck"
    """Toy task (a registered seqgym env with exact probabilities)."""
    source_kwargs: dict[str, int] = dataclasses.field(default_factory=dict)
    """Arguments of the task's source (e.g. ``base``, ``n_digits`` for arithmetic); empty: the env id's defaults."""
    agents: tuple[str, ...] = ("mle", "bc", "sequencematch", "maskable_ppo")
    """Agents to compare: imitation agents (mle, bc, sequencematch) and SB3 algorithms (maskable_ppo, ppo, dqn)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds; each seed draws its own demonstrations and initialises every agent."""
    budget: int = 200_000
    """Training budget per agent: (state, action) pairs for imitation agents, env steps for SB3."""
    n_demonstrations: int = 1_000
    """Expert trajectories per seed (shared by the imitation agents)."""
    p_noise: float = 0.1
    """Backspace-augmentation noise of BC and SequenceMatch in the main comparison."""
    noise_levels: tuple[float, ...] = (0.0, 0.3)
    """Extra noise levels for the validity-vs-noise study (BC and SequenceMatch; p_noise is included)."""
    noise_seeds: int = 1
    """How many of the seeds run the noise study (it trains 2 agents per extra level per seed)."""
    sb3_reward: Literal["logprob", "valid"] = "logprob"
    """Reward of the SB3 baseline (the env's exact log-probability, or sparse validity)."""
    sb3_n_envs: int = 8
    """Parallel envs of the SB3 baseline (a ``DummyVecEnv``; stepping them in one batch is ~4x faster than one)."""
    sb3_n_steps: int = 128
    """Rollout length of PPO / MaskablePPO per env (8 x 128 = 1,024 steps per rollout; SB3's default is 2048)."""
    sb3_batch_size: int = 256
    """Minibatch size of the SB3 algorithm."""
    sb3_n_epochs: int = 4
    """PPO epochs per rollout (SB3's default is 10)."""
    sb3_pooling: Literal["gru", "mean"] = "mean"
    """Pooling of the token features extractor (``agents.sb3.TokenEmbeddingExtractor``)."""
    n_eval: int = 500
    """Samples drawn per agent for the final metrics."""
    n_curve: int = 4
    """Evaluation points on the learning curves."""
    n_curve_samples: int = 128
    """Samples per learning-curve point."""
    n_layer: int = 2
    """Transformer layers of the LM policy."""
    n_embd: int = 64
    """Width of the LM policy."""
    learning_rate: float = 3e-3
    """Learning rate of the imitation agents."""
    sm_chi2_coef: float = 5.0
    """SequenceMatch χ² coefficient c. The SequenceMatch defaults here (c=5, λ_bc=2, warm-up 50) are the best
    of a small sweep on Dyck (README); the library defaults (IQ-Learn's c=0.5, λ_bc=1, warm-up 100) lag BC."""
    sm_bc_weight: float = 2.0
    """SequenceMatch behaviour-cloning anchor weight λ_bc."""
    sm_bc_warmup_steps: int = 50
    """SequenceMatch updates of BC alone before the full loss."""
    sm_divergence: str = "chi2"
    """SequenceMatch divergence: chi2, kl, js or hellinger."""
    batch_size: int = 16
    """Trajectories per update of the imitation agents (about 900 updates in the default budget)."""
    out: Path = Path("results/compare")
    """Output folder (results.json, table.md, compare.png, runs/)."""
    resume: bool = True
    """Reuse finished runs found under out/runs (False retrains everything)."""
    threads: int = 1
    """torch CPU threads per run (one is the fastest for these small models on a 2-core CPU; the count can
    change floating-point results, so it is part of what a cached run depends on)."""
    progress: bool = True
    """Show progress bars."""


def _imitation_kwargs(cfg: Config, agent: str, p_noise: float) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "policy_kwargs": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": 2},
    }
    if agent in ("bc", "sequencematch"):
        kw["p_noise"] = p_noise
    if agent == "sequencematch":
        kw.update(
            chi2_coef=cfg.sm_chi2_coef,
            bc_weight=cfg.sm_bc_weight,
            bc_warmup_steps=cfg.sm_bc_warmup_steps,
            divergence=cfg.sm_divergence,
        )
    return kw


def _sb3_kwargs(cfg: Config, algo: str) -> dict[str, Any]:
    if algo == "dqn":
        return {"batch_size": cfg.sb3_batch_size}
    return {"n_steps": cfg.sb3_n_steps, "batch_size": cfg.sb3_batch_size, "n_epochs": cfg.sb3_n_epochs}


def run_one(cfg: Config, agent: str, seed: int, *, p_noise: float, curve: bool = True) -> dict[str, Any]:
    """Train one agent with one seed (on ``cfg.threads`` torch threads) and evaluate it; returns a JSON-ready
    record."""
    with torch_threads(cfg.threads):
        return _run_one(cfg, agent, seed, p_noise=p_noise, curve=curve)


def _run_one(cfg: Config, agent: str, seed: int, *, p_noise: float, curve: bool) -> dict[str, Any]:
    env_id = TASKS[cfg.task]
    env = make_env(cfg.task, **cfg.source_kwargs)
    source = env.source
    reference = _reference(cfg.task, cfg.source_kwargs)
    chunk = max(1, cfg.budget // max(1, cfg.n_curve if curve else 1))
    curve_points: list[list[float]] = []
    train_time = 0.0  # seconds spent in learn (not in evaluation)
    if agent in IMITATION:
        torch.manual_seed(seed)
        demos = collect(source, cfg.n_demonstrations, np.random.default_rng(10_000 + seed))
        learner: Any = make_agent(
            agent, env=env, demonstrations=demos, seed=seed, **_imitation_kwargs(cfg, agent, p_noise)
        )
        done = 0
        while done < cfg.budget:
            step = min(chunk, cfg.budget - done)
            t0 = time.perf_counter()
            learner.learn(step, reset_num_timesteps=done == 0, progress_bar=cfg.progress, log_interval=0)
            train_time += time.perf_counter() - t0
            done = learner.num_timesteps
            if curve:
                m = evaluate_generator(learner, source, n=cfg.n_curve_samples, seed=777, reference=reference)
                curve_points.append([float(done), m.get("validity", float("nan"))])
    elif agent in SB3_ALGOS:
        t0 = time.perf_counter()
        learner = train_sb3_baseline(
            agent,
            env_id,
            reward=cfg.sb3_reward,
            total_timesteps=chunk,
            seed=seed,
            progress_bar=cfg.progress,
            env_kwargs=dict(cfg.source_kwargs),
            n_envs=cfg.sb3_n_envs,
            algo_kwargs=_sb3_kwargs(cfg, agent),
            policy_kwargs={"features_extractor_kwargs": {"pooling": cfg.sb3_pooling}},
        )
        train_time += time.perf_counter() - t0
        done = chunk
        while True:
            if curve:
                m = evaluate_generator(learner, source, n=cfg.n_curve_samples, seed=777, reference=reference)
                curve_points.append([float(done), m.get("validity", float("nan"))])
            if done >= cfg.budget:
                break
            step = min(chunk, cfg.budget - done)
            t0 = time.perf_counter()
            learner.learn(step, reset_num_timesteps=False, progress_bar=cfg.progress)
            train_time += time.perf_counter() - t0
            done += step
    else:
        raise ValueError(f"Unknown agent {agent!r}; choose from {IMITATION + SB3_ALGOS}.")
    metrics = evaluate_generator(learner, source, n=cfg.n_eval, seed=10_000 + seed, reference=reference)
    if agent in IMITATION:
        metrics["heldout_nll"] = policy_heldout_nll(
            learner.policy, source, n=500, seed=20_000 + seed, allow_backspace=learner.allow_backspace
        )
    return {
        "agent": agent,
        "seed": seed,
        "p_noise": p_noise if agent in ("bc", "sequencematch") else None,
        "train_seconds": train_time,
        "updates": learner.n_updates if agent in IMITATION else None,
        "curve": curve_points,
        **metrics,
    }


_REFERENCES: dict[str, Any] = {}
NOT_IN_RUN = ("agents", "seeds", "noise_levels", "noise_seeds", "out", "resume", "progress")


def _reference(task: str, source_kwargs: dict[str, int]) -> Any:
    key = f"{task}{sorted(source_kwargs.items())}"
    if key not in _REFERENCES:
        _REFERENCES[key] = source_statistics(make_env(task, **source_kwargs).source, n=20_000, seed=0)
    return _REFERENCES[key]


def main(cfg: Config) -> dict[str, Any]:
    """Run the comparison described by ``cfg``; returns what it writes to ``results.json``."""
    for a in cfg.agents:
        if a not in IMITATION + SB3_ALGOS:
            raise ValueError(f"Unknown agent {a!r}; choose from {IMITATION + SB3_ALGOS}.")
    if cfg.budget < 1 or not cfg.seeds:
        raise ValueError("budget must be >= 1 and at least one seed is needed.")
    cache = RunCache(cfg.out / "runs", enabled=cfg.resume)
    # What a single run depends on (not which agents / seeds / noise levels are listed, nor where it is written).
    digest = config_digest(cfg, ignore=NOT_IN_RUN)
    started = time.perf_counter()
    records = []
    for seed in cfg.seeds:
        for agent in cfg.agents:
            key = (cfg.task, agent, f"seed{seed}", f"noise{cfg.p_noise}", digest)
            rec = cache.get(*key)
            if rec is None:
                print(
                    f"[compare] training {agent} (seed {seed}) on {cfg.task} for {cfg.budget} steps",
                    flush=True,
                )
                rec = run_one(cfg, agent, seed, p_noise=cfg.p_noise)
                cache.put(*key, rec)
            records.append(rec)
    noise_seeds = list(cfg.seeds[: cfg.noise_seeds])  # every noise level gets exactly these seeds
    noise_records = [r for r in records if r["agent"] in ("bc", "sequencematch") and r["seed"] in noise_seeds]
    for seed in noise_seeds:
        for agent in ("bc", "sequencematch"):
            if agent not in cfg.agents:
                continue
            for p in cfg.noise_levels:
                if p == cfg.p_noise:
                    continue
                key = (cfg.task, agent, f"seed{seed}", f"noise{p}", digest)
                rec = cache.get(*key)
                if rec is None:
                    print(f"[compare] noise study: {agent} (seed {seed}), p_noise={p}", flush=True)
                    rec = run_one(cfg, agent, seed, p_noise=p, curve=False)
                    cache.put(*key, rec)
                noise_records.append(rec)
    summary = summarize(records, [*METRICS, "train_seconds"])
    table = format_table(summary, [*METRICS, "train_seconds"])
    results = {
        "config": dataclasses.asdict(cfg),
        "summary": summary,
        "runs": records,
        "noise_study": noise_records,
        "wall_seconds": time.perf_counter() - started,
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.out / "results.json", results)
    header = (
        f"Task {cfg.task}, budget {cfg.budget}, seeds {list(cfg.seeds)}, {cfg.n_eval} samples per agent\n\n"
    )
    (cfg.out / "table.md").write_text(header + table + "\n")
    plot(records, noise_records, cfg.out / "compare.png", title=f"{cfg.task} (budget {cfg.budget})")
    print(header + table)
    print(f"\nwrote {cfg.out / 'results.json'}, {cfg.out / 'table.md'}, {cfg.out / 'compare.png'}")
    return results


def plot(
    records: list[dict[str, Any]], noise_records: list[dict[str, Any]], path: Path, *, title: str
) -> None:
    """Learning curves (validity vs training steps, mean over seeds) and validity vs noise level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for agent in dict.fromkeys(r["agent"] for r in records):
        curves = [np.asarray(r["curve"]) for r in records if r["agent"] == agent and r["curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        xs = curves[0][:n, 0]
        ys = np.stack([c[:n, 1] for c in curves])
        ax1.plot(xs, ys.mean(0), marker="o", label=agent)
        if len(curves) > 1:
            ax1.fill_between(xs, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), alpha=0.2)
    ax1.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    ax1.set_xlabel("training steps ((state, action) pairs; env steps for SB3)")
    ax1.set_ylabel("validity of samples")
    ax1.set_title(f"Learning curves: {title}")
    ax1.set_ylim(-0.02, 1.02)
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend()
    for agent in ("bc", "sequencematch"):
        pts: dict[float, list[float]] = {}
        for r in noise_records:
            if r["agent"] == agent and r.get("p_noise") is not None:
                pts.setdefault(float(r["p_noise"]), []).append(float(r.get("validity", np.nan)))
        if pts:
            levels = sorted(pts)
            ax2.errorbar(
                levels,
                [np.mean(pts[x]) for x in levels],
                yerr=[np.std(pts[x]) for x in levels],
                marker="o",
                capsize=3,
                label=agent,
            )
    ax2.set_xlabel("p_noise (backspace augmentation)")
    ax2.set_ylabel("validity of samples")
    seeds = sorted({int(r["seed"]) for r in noise_records})
    ax2.set_title(
        f"Validity vs noise level (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    )
    ax2.set_ylim(-0.02, 1.02)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Config))
