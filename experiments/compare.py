"""The main comparison: MLE, BC, SequenceMatch and an SB3 baseline on one toy task, side by side.

The protocol (``docs/method.md`` §7): the SequenceMatch settings are the library defaults (chosen by
``experiments.sweep`` on a development language and development seeds), the seeds are fresh (10–14 by default:
neither the sweep's 1000+ nor the 0–2 earlier tables were tuned on), and the agents of a seed are *paired*: they
train on the same demonstrations and are judged on the same evaluation states (the same prompts, the same
recovery start states), with ``--n-eval`` (2,000) samples per evaluation. For each metric the script reports the
per-seed difference SequenceMatch − BC, SequenceMatch − MLE and BC − MLE with a 95% interval from
``scipy.stats.bootstrap`` over seeds (:func:`experiments.stats.paired_differences`).

Where the task has prompts (arithmetic), ``unseen_validity`` is the validity on prompts that none of the seed's
demonstrations holds (:func:`unseen_prompts`): held-out problems, not answers learned by heart.
Beside validity it reports recovery (``agents.evaluation.evaluate_recovery``): P(``<backspace>`` first) just after
an injected impossible token (also split by whether the model's own most likely token at the clean state just
before it is one the source allows: ``backspace_first_known`` / ``backspace_first_unknown``, with ``known_share``;
NaN for a seed where a class is empty), the recovery rate, false deletions
of a clean generated part, deliberate mistakes in clean generation, and validity with ``<backspace>`` masked (what
backspace buys is the difference). Options add
validity against the sampling temperature (``--temperatures``) and against the length of a prefix beyond the
training data (``--lengths``, Dyck and Mirror), and validity against the noise level (``--noise-levels``).

The script prints its tables and writes ``results.json``, ``table.md``, ``compare.png`` (learning curves, the
paired differences and the optional curves, each with 95% bootstrap intervals over seeds) and ``samples.md`` (a
gallery of each agent's samples, deleted tokens struck through) to ``--out``. Finished runs are cached under
``--out/runs``: an interrupted comparison resumes where it stopped, and a changed setting or edited library code
recomputes them. Every option is checked before the first run starts.

Run ``python -m experiments.compare --help`` for every option.
"""

from __future__ import annotations

import dataclasses
import textwrap
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from agents import evaluation, make_agent
from agents.evaluation import evaluate_generator, policy_heldout_nll
from agents.sb3 import train_sb3_baseline
from agents.sequencematch import WarmupOnlyWarning
from experiments.common import (
    IMITATION_AGENTS,
    NOISY_AGENTS,
    AgentSettings,
    ConfigError,
    Job,
    RunCache,
    check_int,
    check_noise_margin_option,
    check_number,
    check_seeds,
    format_table,
    run_cli,
    run_jobs,
    run_stamp,
    summarize,
    torch_threads,
    write_json_atomic,
    write_text_atomic,
)
from experiments.gallery import gallery_samples, write_gallery
from experiments.progress import RunBar, StudyLog
from experiments.stats import mean_interval, paired_differences
from seqgym.data import collect
from seqgym.metrics import source_statistics, validity_rate
from seqgym.registration import make_env
from seqgym.sources.base import has_exact_probabilities, has_validity
from seqgym.sources.dyck import Dyck
from seqgym.sources.mirror import Mirror

TASKS = {
    "dyck": "seqgym/Dyck-v0",
    "markov": "seqgym/Markov-v0",
    "arithmetic": "seqgym/Arithmetic-v0",
    "mirror": "seqgym/Mirror-v0",
}
LENGTH_TASKS = ("dyck", "mirror")
"""Tasks with a length curve (``--lengths``): a prefix longer than any demonstration, to be completed."""
IMITATION = IMITATION_AGENTS
SB3_ALGOS = ("maskable_ppo", "ppo", "dqn")
METRICS = (
    "validity",
    "unseen_validity",
    "logprob_per_token",
    "heldout_nll",
    "length_tv",
    "bigram_tv",
    "rep_2",
    "backspace_rate",
)
RECOVERY_METRICS = (
    "validity_no_backspace",
    "backspace_first",
    "recovery",
    "mistake_removed",
    "false_deletions",
    "deliberate_mistakes",
    "deleted_allowed",
    "deleted_ruled_out",
    "known_share",
    "backspace_first_known",
    "backspace_first_unknown",
)
"""The keys of ``agents.evaluation.evaluate_recovery`` (imitation agents, sources with exact probabilities)."""
DIFF_METRICS = (
    "validity",
    "unseen_validity",
    "validity_no_backspace",
    "backspace_first",
    "recovery",
    "false_deletions",
    "deliberate_mistakes",
    "heldout_nll",
)
"""Metrics whose paired differences between agents the tables report."""
DIFF_PAIRS = (("sequencematch", "bc"), ("sequencematch", "mle"), ("bc", "mle"))
"""The differences reported (first − second), where both agents ran."""
SB3_DEFAULT_BUDGET = 50_000
"""The most env steps the SB3 baseline takes when ``--sb3-budget`` is not given."""
RELATIVE_COST = {"mle": 1.0, "bc": 1.2, "sequencematch": 2.8, "maskable_ppo": 3.3, "ppo": 3.3, "dqn": 3.3}
"""Seconds per step of each agent's run relative to MLE's (measured on Dyck, evaluation included): worker
processes start the costliest runs first, so no core idles at the end while one long run finishes."""
NOISE_METRICS = ("validity", "backspace_rate")
GALLERY_SEED = 30_000  # samples of the gallery (not those the metrics judge)
_K = TypeVar("_K", str, float)  # the key of a paired difference: a metric name or a curve point


@dataclasses.dataclass
class Config(AgentSettings):
    """Compare imitation agents and an SB3 baseline on a toy task."""

    task: Literal["dyck", "markov", "arithmetic", "mirror"] = "dyck"
    """Toy task (a registered seqgym env with exact probabilities)."""
    source_kwargs: dict[str, int] = dataclasses.field(default_factory=dict)
    """Arguments of the task's source (e.g. ``base``, ``n_digits`` for arithmetic); empty: the env id's defaults."""
    agents: tuple[str, ...] = ("mle", "bc", "sequencematch", "maskable_ppo")
    """Agents to compare: imitation agents (mle, bc, sequencematch) and SB3 algorithms (maskable_ppo, ppo, dqn)."""
    seeds: tuple[int, ...] = (10, 11, 12, 13, 14)
    """Seeds; each seed draws its own demonstrations (shared by every agent of the seed) and initialises every
    agent. Fresh by default: no default of the library or of this script was chosen on them."""
    budget: int = 200_000
    """Training budget per agent: (state, action) pairs for imitation agents, env steps for SB3."""
    p_noise: float = 0.1
    """Backspace-augmentation noise of BC and SequenceMatch in the main comparison."""
    noise_margin: int = 0
    """Positions before the length limit where BC and SequenceMatch get no inserted mistakes (the library's
    default, 0: none left clean; ``agents.common.noise.AugmentationConfig``)."""
    noise_levels: tuple[float, ...] = ()
    """Extra noise levels for the validity-vs-noise study (BC and SequenceMatch; p_noise is included; empty:
    no noise study)."""
    noise_seeds: int | None = None
    """How many of the seeds run the noise study (None: all; it trains 2 agents per extra level per seed)."""
    sb3_reward: Literal["logprob", "valid"] = "valid"
    """Reward of the SB3 baseline: sparse validity (1 at eos for a valid sequence; the fair one), or the env's
    exact log-probability per token (a trap: ending at once costs one floored step, README)."""
    sb3_budget: int | None = None
    """Env steps of the SB3 baseline (None: ``--budget``, at most 50,000: enough for MaskablePPO on Dyck's
    ``valid`` reward, whose validity on development seeds 1000 and 1001 reaches 0.98 by 30,000 steps and 1.0 by
    50,000)."""
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
    n_eval: int = 2_000
    """Samples per evaluation (the final metrics, each recovery metric, each curve point), the same evaluation
    states for every agent of a seed."""
    recovery: bool = True
    """Evaluate recovery (``agents.evaluation.evaluate_recovery``) for the imitation agents."""
    temperatures: tuple[float, ...] = ()
    """Sampling temperatures of the validity-vs-temperature curve (e.g. 0.5 0.75 1 1.25 1.5; empty: none)."""
    lengths: tuple[int, ...] = ()
    """Prefix lengths of the validity-vs-length curve (Dyck: brackets of a valid prefix to complete; Mirror: the
    first half ``w``, given with its separator); longer than the demonstrations to test length generalisation
    (empty: none)."""
    n_curve: int = 4
    """Evaluation points on the learning curves."""
    n_curve_samples: int = 128
    """Samples per learning-curve point."""
    n_gallery: int = 6
    """Samples per agent shown in the gallery (samples.md; 0: none)."""
    workers: int = 2
    """Independent runs trained at once, one worker process each (1: one after another in this process, with a
    progress bar per run). Every run seeds itself, so the records do not depend on the count."""
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
        if self.sb3_budget is not None:
            check_int("sb3_budget", self.sb3_budget)
        for t in self.temperatures:
            check_number("temperatures", t, low=0.0, low_open=True)
        if self.lengths and self.task not in LENGTH_TASKS:
            raise ConfigError(f"--lengths needs a task in {LENGTH_TASKS}, got --task {self.task}.")
        for n in self.lengths:
            check_int("lengths", n)
        if not isinstance(self.recovery, bool):
            raise ConfigError(f"--recovery must be True or False, got {self.recovery!r}.")
        for name in ("sb3_n_envs", "sb3_n_steps", "sb3_batch_size", "sb3_n_epochs"):
            check_int(name, getattr(self, name))
        check_int("n_gallery", self.n_gallery, low=0)
        check_int("workers", self.workers)
        check_number("p_noise", self.p_noise, low=0.0, high=1.0)
        check_noise_margin_option(self.noise_margin, self.task, self.source_kwargs)
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
    cfg: Config, agent: str, seed: int, p_noise: float, curve: bool = True, *, bar: RunBar | None = None
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
        kw = cfg.agent_kwargs(agent, p_noise=p_noise if agent in NOISY_AGENTS else None)
        if agent in NOISY_AGENTS:
            kw["noise_margin"] = cfg.noise_margin
        learner: Any = make_agent(agent, env=env, demonstrations=demos, seed=seed, **kw)
        done = 0
        warmup_only: list[warnings.WarningMessage] = []  # of the latest chunk: only the run's end may warn
        while done < cfg.budget:
            step = min(chunk, cfg.budget - done)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                learner.learn(
                    step,
                    reset_num_timesteps=done == 0,
                    progress_bar=False,
                    log_interval=0,
                    callback=callback(),
                )
            train_time += time.perf_counter() - t0
            warmup_only = [w for w in caught if issubclass(w.category, WarmupOnlyWarning)]
            _reissue(w for w in caught if not issubclass(w.category, WarmupOnlyWarning))
            done = learner.num_timesteps
            if curve:
                m = evaluate_generator(learner, source, n=cfg.n_curve_samples, seed=777, reference=reference)
                curve_points.append([float(done), m.get("validity", float("nan"))])
        _reissue(warmup_only)
    elif agent in SB3_ALGOS:
        budget = sb3_budget(cfg)
        chunk = max(1, budget // max(1, cfg.n_curve if curve else 1))
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
            if done >= budget:
                break
            step = min(chunk, budget - done)
            t0 = time.perf_counter()
            learner.learn(step, reset_num_timesteps=False, progress_bar=False, callback=callback())
            train_time += time.perf_counter() - t0
            done += step
    else:
        raise ValueError(f"Unknown agent {agent!r}; choose from {IMITATION + SB3_ALGOS}.")
    if bar is not None:
        bar.update(bar.total)
    # Evaluation states are drawn from seeds that depend on the run's seed only: every agent of a seed is judged
    # on the same prompts and the same recovery start states (paired).
    metrics = evaluate_generator(learner, source, n=cfg.n_eval, seed=EVAL_SEED + seed, reference=reference)
    if agent in IMITATION:
        metrics["heldout_nll"] = policy_heldout_nll(
            learner.policy, source, n=500, seed=HELDOUT_SEED + seed, allow_backspace=learner.allow_backspace
        )
        unseen = unseen_prompts(source, learner.demonstrations, cfg.n_eval, UNSEEN_SEED + seed)
        if unseen is not None and has_validity(source):
            gen = learner.generate(prompts=unseen, seed=UNSEEN_SEED + seed)
            metrics["unseen_validity"] = validity_rate(source, gen.sequences)
            metrics["unseen_problems"] = len({tuple(p) for p in unseen})
        if cfg.recovery and has_exact_probabilities(source) and has_validity(source):
            rec = evaluation.evaluate_recovery(learner, source, n=cfg.n_eval, seed=RECOVERY_SEED + seed)
            metrics.update({k: float(v) for k, v in rec.items()})
    temperature_curve = [
        [float(t), validity_at(learner, source, n=cfg.n_eval, seed=EVAL_SEED + seed, temperature=t)]
        for t in cfg.temperatures
    ]
    length_curve = []
    if agent in IMITATION:
        for n_tokens in cfg.lengths:
            prompts, judge, room = long_prefixes(
                cfg.task, source, cfg.lengths, n_tokens, cfg.n_eval, LENGTH_SEED + seed
            )
            gen = learner.generate(
                prompts=prompts, seed=EVAL_SEED + seed, max_length=room, max_steps=3 * room
            )
            length_curve.append([float(n_tokens), validity_rate(judge, gen.sequences)])
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
        "temperature_curve": temperature_curve,
        "length_curve": length_curve,
        **metrics,
        "samples": samples,
    }


EVAL_SEED = 10_000
HELDOUT_SEED = 20_000
RECOVERY_SEED = 40_000
LENGTH_SEED = 50_000
UNSEEN_SEED = 60_000
"""Offsets of the evaluation seeds (plus the run's seed): the same for every agent of a seed."""


def sb3_budget(cfg: Config) -> int:
    """Env steps of the SB3 baseline: ``--sb3-budget``, or ``--budget`` capped at 50,000 when it is None."""
    return min(cfg.budget, SB3_DEFAULT_BUDGET) if cfg.sb3_budget is None else cfg.sb3_budget


def validity_at(generator: Any, source: Any, *, n: int, seed: int, temperature: float) -> float:
    """Validity of ``n`` samples of ``generator`` at sampling ``temperature`` (prompts drawn with ``seed``)."""
    gen = generator.generate(n, seed=seed, temperature=temperature)
    return validity_rate(source, gen.sequences)


def unseen_prompts(
    source: Any, demonstrations: Any, n: int, seed: int, *, min_problems: int = 20
) -> list[list[int]] | None:
    """``n`` prompts, each unseen problem asked about equally often (within one), or None.

    Draws prompts from ``source`` with ``seed`` (at most ``20 * n`` draws, stopping once ``n`` distinct ones are
    found) and keeps the distinct ones that no demonstration holds, in the order drawn; the ``n`` prompts cycle
    through them. Validity on them (``unseen_validity``) measures generalisation to new problems, where
    ``validity`` on the source's own prompts also rewards answers learned by heart (e.g. arithmetic with few
    distinct problems). None when the source has no prompts or fewer than ``min_problems`` unseen ones were found.
    """
    seen = {tuple(int(t) for t in d.prompt) for d in demonstrations}
    if not any(seen):  # the source has no prompts
        return None
    rng = np.random.default_rng(seed)
    found: dict[tuple[int, ...], None] = {}
    for _ in range(20 * n):
        prompt = tuple(int(t) for t in source.sample(rng)[0])
        if prompt not in seen:
            found[prompt] = None
            if len(found) == n:
                break
    if len(found) < min_problems:
        return None
    problems = [list(p) for p in found]
    return [problems[k % len(problems)] for k in range(n)]


def long_prefixes(
    task: str, source: Any, lengths: tuple[int, ...], n_tokens: int, n: int, seed: int
) -> tuple[list[list[int]], Any, int]:
    """``n`` prompts holding a correct prefix of ``n_tokens`` tokens to complete, a judge of the completed
    sequences and the length limit of a generation.

    - Mirror: a uniformly random first half ``w`` of ``n_tokens`` symbols and the separator; the model must
      write ``w`` reversed and eos. The judge accepts first halves up to ``max(lengths)``.
    - Dyck: ``n_tokens`` brackets drawn from the source's process with eos left out (a valid, unfinished
      prefix within the depth limit); the model must close it. The judge is the same Dyck with room for
      ``max(lengths)`` brackets and a full stack.

    The judge differs from the training source only in its length limit, so validity here is "completed
    correctly", for prefixes that may be longer than any demonstration.
    """
    rng = np.random.default_rng(seed)
    longest = max(max(lengths), n_tokens)
    if task == "mirror":
        judge: Any = Mirror(source.n_symbols, min_half=1, max_half=max(longest, source.max_half))
        prompts = [
            [*map(int, rng.integers(source.n_symbols, size=n_tokens)), judge.separator_id] for _ in range(n)
        ]
        return prompts, judge, 2 * n_tokens + 2
    if task == "dyck":
        limit = max(source.max_length, longest + 2 * source.max_depth)
        judge = Dyck(
            source.n_types,
            p_open=source.p_open,
            p_end=source.p_end,
            max_depth=source.max_depth,
            max_length=limit + limit % 2,
        )
        prompts = []
        for _ in range(n):
            prefix: list[int] = []
            for _ in range(n_tokens):
                p = np.exp(judge.next_token_logprobs(prefix))
                p[judge.vocab.eos_id] = 0.0
                prefix.append(int(rng.choice(len(p), p=p / p.sum())))
            prompts.append(prefix)
        return prompts, judge, judge.max_sequence_length
    raise ValueError(f"No length curve for task {task!r}; choose from {LENGTH_TASKS}.")


def _validity_judge(source: Any) -> Any:
    """``sequence -> bool`` with the metrics' rule (valid for the source and ended by eos), or None."""
    if not has_validity(source):
        return None
    return lambda seq: validity_rate(source, [seq]) == 1.0


_REFERENCES: dict[str, Any] = {}
NOT_IN_RUN = ("agents", "seeds", "noise_levels", "noise_seeds", "out", "resume", "progress", "workers")
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
    jobs = [
        Job(
            key=(cfg.task, run.agent, f"seed{run.seed}", f"noise{run.p_noise}"),
            label=("" if run.curve else "noise study: ") + run.describe(),
            args=(cfg, run.agent, run.seed, run.p_noise, run.curve),
            total=sb3_budget(cfg) if run.agent in SB3_ALGOS else cfg.budget,
            cost=RELATIVE_COST.get(run.agent, 1.0)
            * (sb3_budget(cfg) if run.agent in SB3_ALGOS else cfg.budget),
        )
        for run in [*main_runs, *noise_runs]
    ]
    done = run_jobs(run_one, jobs, cache=cache, log=log, workers=cfg.workers)
    records, noise_records = done[: len(main_runs)], done[len(main_runs) :]
    noise_seeds = {r.seed for r in noise_runs}
    noise_records = [
        r for r in records if r["agent"] in NOISY_AGENTS and r["seed"] in noise_seeds
    ] + noise_records
    shown = [m for m in (*METRICS, *RECOVERY_METRICS) if any(m in r for r in records)]
    summary = summarize(records, [*shown, "train_seconds"])
    differences = paired_table(records, cfg.seeds)
    noise_summary = summarize(_noise_rows(noise_records), NOISE_METRICS, by="label")
    sb3 = [a for a in cfg.agents if a in SB3_ALGOS]
    sb3_note = (
        f"; {', '.join(sb3)} on the `{cfg.sb3_reward}` reward for {sb3_budget(cfg)} env steps" if sb3 else ""
    )
    spread_note = ", mean ± std over seeds" if len(cfg.seeds) > 1 else ""
    margin_note = (
        f"; no inserted mistakes in the last {cfg.noise_margin} positions" if cfg.noise_margin else ""
    )
    header = (
        f"Task {cfg.task}, {cfg.model_name()}, budget {cfg.budget} (state, action) pairs{sb3_note}{margin_note}, seeds "
        f"{list(cfg.seeds)} (paired), {cfg.n_eval} samples per evaluation{spread_note}\n\n"
    )
    main_cols = ["validity", *(m for m in ("unseen_validity", *RECOVERY_METRICS[:6]) if m in shown)]
    tables = [header + format_table(summary, main_cols)]
    tables.append("All metrics\n\n" + format_table(summary, [*shown, "train_seconds"]))
    if differences:
        tables.append(
            f"Paired differences over seeds {list(cfg.seeds)}: mean [95% bootstrap interval, "
            "scipy.stats.bootstrap BCa; (n=k): over k seeds only]\n\n"
            + format_differences(differences, len(cfg.seeds))
        )
    curve_diffs: dict[str, dict[str, dict[float, dict[str, float]]]] = {}
    for name, label in (("temperature_curve", "temperature"), ("length_curve", "prefix length")):
        rows = curve_rows(records, name)
        if rows:
            tables.append(f"Validity vs {label}: mean [95% bootstrap interval over seeds]\n\n" + rows)
        diffs = curve_differences(records, name, cfg.seeds)
        if diffs:
            curve_diffs[name] = diffs
            tables.append(
                f"Validity vs {label}, paired differences: mean [95% bootstrap interval, scipy.stats.bootstrap "
                "BCa]\n\n" + format_curve_differences(diffs, len(cfg.seeds))
            )
    if noise_summary:
        spread = ", mean ± std over seeds" if len(noise_seeds) > 1 else ""
        noise_header = (
            f"Validity vs noise level (BC and SequenceMatch), seeds {sorted(noise_seeds)}{spread}\n\n"
        )
        tables.append(noise_header + format_table(noise_summary, NOISE_METRICS, row_label="agent, p_noise"))
    results = {
        "config": dataclasses.asdict(cfg),
        "summary": summary,
        "differences": differences,
        "curve_differences": {
            n: {p: [[x, d] for x, d in row.items()] for p, row in c.items()} for n, c in curve_diffs.items()
        },
        "noise_summary": noise_summary,
        "runs": records,
        "noise_study": noise_records,
        "wall_seconds": time.perf_counter() - started,
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.out / "results.json", results)
    write_text_atomic(cfg.out / "table.md", "\n\n".join(tables) + "\n")
    plot(
        records,
        noise_records,
        differences,
        cfg.out / "compare.png",
        title=f"{cfg.task}, {cfg.model_name()} (budget {cfg.budget})",
    )
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


def paired_table(
    records: list[dict[str, Any]], seeds: tuple[int, ...]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{"a − b": {metric: paired_differences(...)}}`` for each pair of :data:`DIFF_PAIRS` that ran, over the
    seeds where both agents have the metric (each seed's two runs share demonstrations and evaluation states)."""
    by = {(r["agent"], int(r["seed"])): r for r in records}
    return _by_pair(lambda _: DIFF_METRICS, lambda agent, s, m: by.get((agent, s), {}).get(m), seeds)


def _by_pair(
    keys: Callable[[str], Iterable[_K]], value: Callable[[str, int, _K], Any], seeds: tuple[int, ...]
) -> dict[str, dict[_K, dict[str, float]]]:
    """``{"a − b": {key: paired_differences(...)}}`` for each pair of :data:`DIFF_PAIRS` and each of ``keys(a)``,
    over the seeds where ``value(agent, seed, key)`` is not None for both agents; pairs without any are left out."""
    out: dict[str, dict[_K, dict[str, float]]] = {}
    for a, b in DIFF_PAIRS:
        row: dict[_K, dict[str, float]] = {}
        for k in keys(a):
            pairs = [(value(a, s, k), value(b, s, k)) for s in seeds]
            kept = [(float(u), float(v)) for u, v in pairs if u is not None and v is not None]
            if kept:
                x, y = np.array(kept).T
                row[k] = paired_differences(x, y)
        if row:
            out[f"{a} − {b}"] = row
    return out


def _reissue(caught: Iterable[warnings.WarningMessage]) -> None:
    """Warn again, through the current filters, with warnings recorded by ``warnings.catch_warnings``."""
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _interval(d: dict[str, float], n_seeds: int | None = None) -> str:
    """``mean [low, high]``, with ``(n=k)`` when it rests on fewer than ``n_seeds`` pairs (a seed without a value
    or with a NaN was left out)."""
    n = int(d.get("n", 1.0))
    if n == 0:
        return "n/a"  # every pair held a NaN
    if np.isnan(d["low"]):
        return f"{d['mean']:+.3f} (one seed)"
    fewer = f" (n={n})" if n_seeds is not None and n < n_seeds else ""
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{fewer}"


def format_differences(
    differences: dict[str, dict[str, dict[str, float]]], n_seeds: int | None = None
) -> str:
    """A Markdown table: one row per pair (``a − b``), one column per metric, cells ``mean [low, high]``, marked
    ``(n=k)`` where fewer than ``n_seeds`` pairs were left to compare."""
    metrics = [m for m in DIFF_METRICS if any(m in row for row in differences.values())]
    lines = ["| difference | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, row in differences.items():
        lines.append(
            f"| {name} | "
            + " | ".join(_interval(row[m], n_seeds) if m in row else "n/a" for m in metrics)
            + " |"
        )
    return "\n".join(lines)


def _curves(records: list[dict[str, Any]], name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{agent: (xs, values of shape (seeds, len(xs)))}`` of a per-run curve (NaN where a seed lacks a point)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for agent in dict.fromkeys(r["agent"] for r in records):
        curves = [dict(map(tuple, r.get(name) or [])) for r in records if r["agent"] == agent]
        xs = np.array(sorted({x for c in curves for x in c}), dtype=float)
        if len(xs):
            out[agent] = (xs, np.array([[c.get(x, np.nan) for x in xs] for c in curves], dtype=float))
    return out


def curve_rows(records: list[dict[str, Any]], name: str) -> str:
    """A Markdown table of a curve (``temperature_curve`` / ``length_curve``): one row per agent, one column per
    point, cells ``mean [95% bootstrap interval over seeds]``; empty when no run has the curve."""
    curves = _curves(records, name)
    if not curves:
        return ""
    xs = sorted({float(x) for x_arr, _ in curves.values() for x in x_arr})
    lines = ["| agent | " + " | ".join(f"{x:g}" for x in xs) + " |", "|---|" + "---|" * len(xs)]
    for agent, (ax, vals) in curves.items():
        cells = []
        for x in xs:
            col = vals[:, list(ax).index(x)] if x in ax else np.array([np.nan])
            m, lo, hi = mean_interval(col)
            cells.append(f"{m:.3f}" if np.isnan(lo) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_differences(
    records: list[dict[str, Any]], name: str, seeds: tuple[int, ...]
) -> dict[str, dict[float, dict[str, float]]]:
    """``{"a − b": {x: paired_differences(...)}}`` at each point ``x`` of a per-run curve (``temperature_curve`` /
    ``length_curve``), for each pair of :data:`DIFF_PAIRS` that has it, over the seeds where both runs have the
    point; empty when no run has the curve."""
    points = {(r["agent"], int(r["seed"])): dict(map(tuple, r.get(name) or [])) for r in records}

    def xs(agent: str) -> list[float]:
        return sorted({float(x) for (a, _), c in points.items() if a == agent for x in c})

    return _by_pair(xs, lambda agent, s, x: points.get((agent, s), {}).get(x), seeds)


def format_curve_differences(
    differences: dict[str, dict[float, dict[str, float]]], n_seeds: int | None = None
) -> str:
    """A Markdown table of :func:`curve_differences`: one row per pair, one column per curve point (cells as in
    :func:`format_differences`)."""
    xs = sorted({x for row in differences.values() for x in row})
    lines = ["| difference | " + " | ".join(f"{x:g}" for x in xs) + " |", "|---|" + "---|" * len(xs)]
    for pair, row in differences.items():
        cells = [_interval(row[x], n_seeds) if x in row else "n/a" for x in xs]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _noise_rows(noise_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [{**r, "label": f"{r['agent']} p={r['p_noise']}"} for r in noise_records]
    return sorted(rows, key=lambda r: (NOISY_AGENTS.index(r["agent"]), float(r["p_noise"])))


def _band(ax: Any, xs: np.ndarray, values: np.ndarray, label: str, **kw: Any) -> None:
    """Mean over seeds (rows of ``values``) with its 95% bootstrap interval as a band (none with one seed)."""
    stats = np.array([mean_interval(values[:, j]) for j in range(values.shape[1])])  # (X, 3)
    (line,) = ax.plot(xs, stats[:, 0], marker="o", label=label, **kw)
    if not np.isnan(stats[:, 1]).all():
        ax.fill_between(xs, stats[:, 1], stats[:, 2], alpha=0.2, color=line.get_color())


def plot(
    records: list[dict[str, Any]],
    noise_records: list[dict[str, Any]],
    differences: dict[str, dict[str, dict[str, float]]],
    path: Path,
    *,
    title: str,
) -> None:
    """The figure: learning curves (validity vs training steps), the paired differences between agents per
    metric, and, where the runs have them, validity vs temperature, vs prefix length and vs noise level. Every
    mean over seeds carries its 95% bootstrap interval (a band or error bars; none with a single seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    extra = [n for n in ("temperature_curve", "length_curve") if _curves(records, n)]
    has_noise = any(r.get("p_noise") is not None for r in noise_records)
    n_panels = 2 + len(extra) + has_noise
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4.2))
    ax1, ax_diff, *rest = axes
    n_seeds = len({int(r["seed"]) for r in records})
    for agent in dict.fromkeys(r["agent"] for r in records):
        curves = [np.asarray(r["curve"]) for r in records if r["agent"] == agent and r["curve"]]
        if curves:
            n = min(len(c) for c in curves)
            _band(ax1, curves[0][:n, 0], np.stack([c[:n, 1] for c in curves]), agent)
    ax1.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    ax1.set_xlabel("training steps ((state, action) pairs; env steps for SB3)")
    ax1.set_ylabel("validity of samples")
    heading = "\n".join(textwrap.wrap(f"Learning curves: {title}", 60))  # a long title fits its panel
    ax1.set_title(f"{heading}\n{_over_seeds(n_seeds)}", fontsize=10)
    ax1.set_ylim(-0.02, 1.02)
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=8)
    metrics = [
        m for m in DIFF_METRICS if m != "heldout_nll" and any(m in row for row in differences.values())
    ]
    for k, (name, row) in enumerate(differences.items()):
        ys = np.arange(len(metrics)) + (k - (len(differences) - 1) / 2) * 0.22
        d = [row.get(m, {"mean": np.nan, "low": np.nan, "high": np.nan}) for m in metrics]
        mean = np.array([x["mean"] for x in d])
        err = np.abs(np.array([[x["low"] for x in d], [x["high"] for x in d]]) - mean)
        ax_diff.errorbar(mean, ys, xerr=np.nan_to_num(err), fmt="o", capsize=3, label=name)
    ax_diff.axvline(0.0, color="gray", lw=0.8)
    ax_diff.set_yticks(range(len(metrics)), metrics, fontsize=8)
    ax_diff.invert_yaxis()
    ax_diff.set_xlabel("paired difference (per seed, then mean)")
    ax_diff.set_title("Differences between agents\nmean and 95% bootstrap interval over seeds", fontsize=10)
    if ax_diff.get_legend_handles_labels()[0]:
        ax_diff.legend(fontsize=8)
    for ax, name in zip(rest, extra):
        for agent, (xs, vals) in _curves(records, name).items():
            _band(ax, xs, vals, agent)
        ax.set_xlabel(
            "sampling temperature" if name == "temperature_curve" else "length of the prefix to complete"
        )
        ax.set_ylabel("validity")
        ax.set_ylim(-0.02, 1.02)
        what = "temperature" if name == "temperature_curve" else "prefix length (beyond training)"
        ax.set_title(f"Validity vs {what}\n{_over_seeds(n_seeds)}", fontsize=10)
        ax.legend(fontsize=8)
    if has_noise:
        ax2 = rest[-1]
        for agent in NOISY_AGENTS:
            pts: dict[float, dict[int, float]] = {}
            for r in noise_records:
                if r["agent"] == agent and r.get("p_noise") is not None:
                    pts.setdefault(float(r["p_noise"]), {})[int(r["seed"])] = float(r.get("validity", np.nan))
            if pts:
                levels = sorted(pts)
                seeds = sorted({s for v in pts.values() for s in v})
                vals = np.array([[pts[x].get(s, np.nan) for x in levels] for s in seeds])
                _band(ax2, np.array(levels), vals, agent)
        ax2.set_xlabel("p_noise (backspace augmentation)")
        ax2.set_ylabel("validity of samples")
        seeds_n = sorted({int(r["seed"]) for r in noise_records})
        ax2.set_title(f"Validity vs noise level\n{_over_seeds(len(seeds_n), seeds_n)}", fontsize=10)
        ax2.set_ylim(-0.02, 1.02)
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _over_seeds(n: int, seeds: list[int] | None = None) -> str:
    which = f" ({', '.join(map(str, seeds))})" if seeds else ""
    if n > 1:
        return f"mean and 95% bootstrap interval over {n} seeds{which}"
    return f"one seed{which}: no interval"


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.compare")
