"""The main comparison: MLE, BC, SequenceMatch and an SB3 baseline on one toy task, side by side.

Every agent trains for the same budget on the same demonstrations, for each seed; then each draws samples that
are judged by the exact metrics of :mod:`seqgym.metrics`. The script prints its tables (mean ± std over seeds:
the agents, and validity vs noise level) and writes ``results.json``, ``table.md`` (both tables),
``compare.png`` (learning curves; validity vs noise level, with ± std over seeds) and ``samples.md`` (a gallery
of each agent's samples, deleted tokens struck through) to ``--out``. Finished runs are cached under
``--out/runs``: an interrupted comparison resumes where it stopped, and a changed setting or edited library code
recomputes them. Every option is checked before the first run starts.

Run ``python -m experiments.compare --help`` for every option.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from agents import make_agent
from agents.evaluation import evaluate_generator, policy_heldout_nll
from agents.sb3 import train_sb3_baseline
from experiments.common import (
    IMITATION_AGENTS,
    NOISY_AGENTS,
    AgentSettings,
    ConfigError,
    RunCache,
    check_int,
    check_number,
    format_table,
    mean_std,
    run_cli,
    run_stamp,
    summarize,
    torch_threads,
    write_json_atomic,
)
from experiments.gallery import gallery_samples, write_gallery
from experiments.progress import RunBar, StudyLog
from seqgym.data import collect
from seqgym.metrics import source_statistics, validity_rate
from seqgym.registration import make_env
from seqgym.sources.base import has_validity

TASKS = {"dyck": "seqgym/Dyck-v0", "markov": "seqgym/Markov-v0", "arithmetic": "seqgym/Arithmetic-v0"}
IMITATION = IMITATION_AGENTS
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
NOISE_METRICS = ("validity", "backspace_rate")
GALLERY_SEED = 30_000  # samples of the gallery (not those the metrics judge)


@dataclasses.dataclass
class Config(AgentSettings):
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
    p_noise: float = 0.1
    """Backspace-augmentation noise of BC and SequenceMatch in the main comparison."""
    noise_levels: tuple[float, ...] = (0.0, 0.3)
    """Extra noise levels for the validity-vs-noise study (BC and SequenceMatch; p_noise is included)."""
    noise_seeds: int | None = None
    """How many of the seeds run the noise study (None: all; it trains 2 agents per extra level per seed)."""
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
    n_gallery: int = 6
    """Samples per agent shown in the gallery (samples.md; 0: none)."""
    out: Path = Path("results/compare")
    """Output folder (results.json, table.md, compare.png, samples.md, runs/)."""

    def check(self) -> None:
        """Raise :class:`~experiments.common.ConfigError` (naming the flag) for any invalid option, before
        anything runs."""
        super().check()
        if not self.agents:
            raise ConfigError("--agents is empty; name at least one agent.")
        for a in self.agents:
            if a not in IMITATION + SB3_ALGOS:
                raise ConfigError(f"Unknown agent {a!r}; choose from {IMITATION + SB3_ALGOS}.")
        if len(set(self.agents)) != len(self.agents):
            raise ConfigError(f"--agents lists an agent twice: {list(self.agents)}.")
        check_seeds(self.seeds)
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        check_source(self.task, self.source_kwargs)
        for name in ("budget", "n_eval", "n_curve", "n_curve_samples"):
            check_int(name, getattr(self, name))
        for name in ("sb3_n_envs", "sb3_n_steps", "sb3_batch_size", "sb3_n_epochs"):
            check_int(name, getattr(self, name))
        check_int("n_gallery", self.n_gallery, low=0)
        check_number("p_noise", self.p_noise, low=0.0, high=1.0)
        for p in self.noise_levels:
            check_number("noise_levels", p, low=0.0, high=1.0)
        if self.noise_seeds is not None:
            check_int("noise_seeds", self.noise_seeds, low=0, high=len(self.seeds))
        if self.sb3_reward not in ("logprob", "valid"):
            raise ConfigError(f"--sb3-reward must be logprob or valid, got {self.sb3_reward!r}.")
        if self.sb3_pooling not in ("gru", "mean"):
            raise ConfigError(f"--sb3-pooling must be gru or mean, got {self.sb3_pooling!r}.")
        if not isinstance(self.out, (str, Path)) or str(self.out) == "":
            raise ConfigError(f"--out must be a folder, got {self.out!r}.")


def check_seeds(seeds: tuple[int, ...]) -> None:
    """Raise :class:`ConfigError` unless ``seeds`` are distinct ints >= 0 (at least one)."""
    if not seeds:
        raise ConfigError("--seeds is empty; give at least one seed.")
    for s in seeds:
        check_int("seeds", s, low=0)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {list(seeds)}.")


def check_source(task: str, source_kwargs: dict[str, int]) -> None:
    """Raise :class:`ConfigError` unless ``task``'s env can be made with ``source_kwargs`` (cheap: builds
    the env, trains nothing)."""
    try:
        make_env(task, **source_kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"task {task!r} with source arguments {source_kwargs}: {e}") from None


def _sb3_kwargs(cfg: Config, algo: str) -> dict[str, Any]:
    if algo == "dqn":
        return {"batch_size": cfg.sb3_batch_size}
    return {"n_steps": cfg.sb3_n_steps, "batch_size": cfg.sb3_batch_size, "n_epochs": cfg.sb3_n_epochs}


def run_one(
    cfg: Config, agent: str, seed: int, *, p_noise: float, curve: bool = True, bar: RunBar | None = None
) -> dict[str, Any]:
    """Train one agent with one seed (on ``cfg.threads`` torch threads) and evaluate it; returns a JSON-ready
    record. ``bar`` follows the training steps (``None``: no progress shown)."""
    with torch_threads(cfg.threads):
        return _run_one(cfg, agent, seed, p_noise=p_noise, curve=curve, bar=bar)


def _run_one(
    cfg: Config, agent: str, seed: int, *, p_noise: float, curve: bool, bar: RunBar | None
) -> dict[str, Any]:
    env_id = TASKS[cfg.task]
    env = make_env(cfg.task, **cfg.source_kwargs)
    source = env.source
    reference = _reference(cfg.task, cfg.source_kwargs)
    chunk = max(1, cfg.budget // max(1, cfg.n_curve if curve else 1))
    curve_points: list[list[float]] = []
    train_time = 0.0  # seconds spent in learn (not in evaluation)

    def callback() -> Any:
        return None if bar is None else bar.callback()

    if agent in IMITATION:
        torch.manual_seed(seed)
        demos = collect(source, cfg.n_demonstrations, np.random.default_rng(10_000 + seed))
        learner: Any = make_agent(
            agent,
            env=env,
            demonstrations=demos,
            seed=seed,
            **cfg.agent_kwargs(agent, p_noise=p_noise if agent in NOISY_AGENTS else None),
        )
        done = 0
        while done < cfg.budget:
            step = min(chunk, cfg.budget - done)
            t0 = time.perf_counter()
            learner.learn(
                step, reset_num_timesteps=done == 0, progress_bar=False, log_interval=0, callback=callback()
            )
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
            progress_bar=False,
            callback=callback(),
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
            learner.learn(step, reset_num_timesteps=False, progress_bar=False, callback=callback())
            train_time += time.perf_counter() - t0
            done += step
    else:
        raise ValueError(f"Unknown agent {agent!r}; choose from {IMITATION + SB3_ALGOS}.")
    if bar is not None:
        bar.update(cfg.budget)
    metrics = evaluate_generator(learner, source, n=cfg.n_eval, seed=10_000 + seed, reference=reference)
    if agent in IMITATION:
        metrics["heldout_nll"] = policy_heldout_nll(
            learner.policy, source, n=500, seed=20_000 + seed, allow_backspace=learner.allow_backspace
        )
    samples: list[dict[str, Any]] = []
    if cfg.n_gallery > 0:
        gen = learner.generate(cfg.n_gallery, seed=GALLERY_SEED)
        samples = gallery_samples(gen.sequences, gen.actions, source.vocab, valid=_validity_judge(source))
    return {
        "agent": agent,
        "seed": seed,
        "p_noise": p_noise if agent in NOISY_AGENTS else None,
        "train_seconds": train_time,
        "updates": learner.n_updates if agent in IMITATION else None,
        "curve": curve_points,
        **metrics,
        "samples": samples,
    }


def _validity_judge(source: Any) -> Any:
    """``sequence -> bool`` with the metrics' rule (valid for the source and ended by eos), or None."""
    if not has_validity(source):
        return None
    return lambda seq: validity_rate(source, [seq]) == 1.0


_REFERENCES: dict[str, Any] = {}
NOT_IN_RUN = ("agents", "seeds", "noise_levels", "noise_seeds", "out", "resume", "progress")
"""Config fields that a single run does not depend on (left out of its cache stamp)."""


def _reference(task: str, source_kwargs: dict[str, int]) -> Any:
    key = f"{task}{sorted(source_kwargs.items())}"
    if key not in _REFERENCES:
        _REFERENCES[key] = source_statistics(make_env(task, **source_kwargs).source, n=20_000, seed=0)
    return _REFERENCES[key]


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a study: which agent, seed and noise level, and whether it records a curve."""

    agent: str
    seed: int
    p_noise: float
    curve: bool

    def describe(self) -> str:
        noise = f", p_noise={self.p_noise}" if self.agent in NOISY_AGENTS else ""
        return f"{self.agent} (seed {self.seed}{noise})"


def plan(cfg: Config) -> tuple[list[Run], list[Run]]:
    """The runs of the main comparison and the extra ones of the noise study, in the order they run."""
    main_runs = [Run(a, s, cfg.p_noise, True) for s in cfg.seeds for a in cfg.agents]
    n_noise = len(cfg.seeds) if cfg.noise_seeds is None else cfg.noise_seeds
    noise_runs = [
        Run(a, s, p, False)
        for s in cfg.seeds[:n_noise]
        for a in NOISY_AGENTS
        if a in cfg.agents
        for p in dict.fromkeys(cfg.noise_levels)
        if p != cfg.p_noise
    ]
    return main_runs, noise_runs


def main(cfg: Config) -> dict[str, Any]:
    """Run the comparison described by ``cfg``; returns what it writes to ``results.json``.

    Raises:
        ConfigError: an invalid option (before anything runs or is written).
        CacheError: an unreadable cached run (named, with how to recover).
    """
    cfg.check()
    main_runs, noise_runs = plan(cfg)
    # What a single run depends on (not which agents / seeds / noise levels are listed, nor where it is written),
    # and the library's code and version.
    cache = RunCache(cfg.out / "runs", enabled=cfg.resume, stamp=run_stamp(cfg, ignore=NOT_IN_RUN))
    log = StudyLog("compare", len(main_runs) + len(noise_runs), progress=cfg.progress)
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    noise_records: list[dict[str, Any]] = []
    for run in [*main_runs, *noise_runs]:
        key = (cfg.task, run.agent, f"seed{run.seed}", f"noise{run.p_noise}")
        rec = cache.get(*key)
        if rec is not None:
            log.run(run.describe(), cached=True)
        else:
            what = "training" if run.curve else "noise study: training"
            log.run(f"{what} {run.describe()} on {cfg.task} for {cfg.budget} steps")
            with log.bar(f"{run.agent} seed {run.seed}", cfg.budget) as bar:
                rec = run_one(cfg, run.agent, run.seed, p_noise=run.p_noise, curve=run.curve, bar=bar)
            cache.put(*key, rec)
        (records if run.curve else noise_records).append(rec)
    noise_seeds = {r.seed for r in noise_runs}
    noise_records = [
        r for r in records if r["agent"] in NOISY_AGENTS and r["seed"] in noise_seeds
    ] + noise_records
    summary = summarize(records, [*METRICS, "train_seconds"])
    noise_summary = summarize(_noise_rows(noise_records), NOISE_METRICS, by="label")
    header = (
        f"Task {cfg.task}, budget {cfg.budget}, seeds {list(cfg.seeds)}, {cfg.n_eval} samples per agent\n\n"
    )
    table = header + format_table(summary, [*METRICS, "train_seconds"])
    tables = [table]
    if noise_summary:
        spread = ", mean ± std over seeds" if len(noise_seeds) > 1 else ""
        noise_header = (
            f"Validity vs noise level (BC and SequenceMatch), seeds {sorted(noise_seeds)}{spread}\n\n"
        )
        tables.append(noise_header + format_table(noise_summary, NOISE_METRICS, row_label="agent, p_noise"))
    results = {
        "config": dataclasses.asdict(cfg),
        "summary": summary,
        "noise_summary": noise_summary,
        "runs": records,
        "noise_study": noise_records,
        "wall_seconds": time.perf_counter() - started,
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.out / "results.json", results)
    (cfg.out / "table.md").write_text("\n\n".join(tables) + "\n")
    plot(records, noise_records, cfg.out / "compare.png", title=f"{cfg.task} (budget {cfg.budget})")
    first = cfg.seeds[0]
    write_gallery(
        cfg.out / "samples.md",
        {r["agent"]: r.get("samples", []) for r in records if r["seed"] == first},
        title=f"Samples: {cfg.task}, seed {first}, budget {cfg.budget}",
        note=f"BC and SequenceMatch at p_noise={cfg.p_noise}; temperature 1.",
    )
    print("\n\n".join(tables))
    written = ", ".join(str(cfg.out / n) for n in ("results.json", "table.md", "compare.png", "samples.md"))
    print(f"\nwrote {written}")
    return results


def _noise_rows(noise_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [{**r, "label": f"{r['agent']} p={r['p_noise']}"} for r in noise_records]
    return sorted(rows, key=lambda r: (NOISY_AGENTS.index(r["agent"]), float(r["p_noise"])))


def plot(
    records: list[dict[str, Any]], noise_records: list[dict[str, Any]], path: Path, *, title: str
) -> None:
    """Learning curves (validity vs training steps) and validity vs noise level: means over seeds with a
    ± one-standard-deviation band / error bars (none with a single seed, as the titles say)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    n_curve_seeds = 0
    for agent in dict.fromkeys(r["agent"] for r in records):
        curves = [np.asarray(r["curve"]) for r in records if r["agent"] == agent and r["curve"]]
        if not curves:
            continue
        n_curve_seeds = max(n_curve_seeds, len(curves))
        n = min(len(c) for c in curves)
        xs = curves[0][:n, 0]
        mean, std = mean_std(np.stack([c[:n, 1] for c in curves]))
        (line,) = ax1.plot(xs, mean, marker="o", label=agent)
        if len(curves) > 1:
            ax1.fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color())
    ax1.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    ax1.set_xlabel("training steps ((state, action) pairs; env steps for SB3)")
    ax1.set_ylabel("validity of samples")
    ax1.set_title(f"Learning curves: {title}\n{_over_seeds(n_curve_seeds)}", fontsize=10)
    ax1.set_ylim(-0.02, 1.02)
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend()
    for agent in NOISY_AGENTS:
        pts: dict[float, list[float]] = {}
        for r in noise_records:
            if r["agent"] == agent and r.get("p_noise") is not None:
                pts.setdefault(float(r["p_noise"]), []).append(float(r.get("validity", np.nan)))
        if pts:
            levels = sorted(pts)
            stats = [mean_std(np.array(pts[x])) for x in levels]
            ax2.errorbar(
                levels,
                [float(m) for m, _ in stats],
                yerr=[float(s) for _, s in stats],
                marker="o",
                capsize=4,
                label=agent,
            )
    ax2.set_xlabel("p_noise (backspace augmentation)")
    ax2.set_ylabel("validity of samples")
    seeds = sorted({int(r["seed"]) for r in noise_records})
    ax2.set_title(f"Validity vs noise level\n{_over_seeds(len(seeds), seeds)}", fontsize=10)
    ax2.set_ylim(-0.02, 1.02)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _over_seeds(n: int, seeds: list[int] | None = None) -> str:
    which = f" ({', '.join(map(str, seeds))})" if seeds else ""
    if n > 1:
        return f"mean ± std over {n} seeds{which}"
    return f"one seed{which}: no interval"


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.compare")
