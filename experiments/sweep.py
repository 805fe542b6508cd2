"""The sweep that chose SequenceMatch's library defaults, on a development language and development seeds.

The defaults of :class:`agents.SequenceMatchConfig` come from here, and only from here: a Markov language that no
reported table uses (12 tokens, half of each row's next tokens forbidden, sequences of about 25 tokens, source
seed 7), and seeds (1000, 1001) that no reported table uses. Each setting changes one thing against the chosen
one (or, for the rows marked "α=0.1", against the chosen one at α=0.1, the setting first screened), so the table
reads as an ablation; BC and MLE run beside them as references. The reported studies
(``experiments.compare`` and the others) then run the library defaults on other tasks and other seeds.

Each run reports validity and the recovery metrics (:data:`RECOVERY_COLUMNS`). ``--architecture`` chooses the model
family: the library's default family was chosen by running the BC, MLE and chosen rows once per family with the
agents' own default optimiser (``--learning-rate 1e-3 --batch-size 32 --budget 200000``).

Writes ``results.json`` (every run), ``table.md`` and ``sweep.png`` (mean validity per setting, one dot per seed)
to ``--out``; finished runs are cached under ``--out/runs``.

Run ``python -m experiments.sweep --help`` for every option.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import (
    AgentSettings,
    ConfigError,
    Job,
    RunCache,
    check_int,
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
from experiments.progress import RunBar, StudyLog

#: The development language: ``seqgym/Markov-v0`` with these source arguments.
DEV_SOURCE: dict[str, Any] = {
    "n_tokens": 12,
    "forbidden_fraction": 0.5,
    "eos_prob": 0.04,
    "max_length": 40,
    "seed": 7,
}

#: What the recovery evaluation adds to each run (``agents.evaluation.evaluate_recovery``): P(``<backspace>``
#: next) after an injected impossible token, the share of samples that deleted a correct token of a clean prefix,
#: and the tokens emitted then deleted per sequence.
RECOVERY_COLUMNS = ("backspace_first", "false_deletions", "deliberate_mistakes")

#: The SequenceMatch setting the sweep chose (the library defaults of :class:`agents.SequenceMatchConfig`).
CHOSEN: dict[str, Any] = {
    "alpha": 0.01,
    "terminal": "absorbing",
    "inserted_steps": "bc_only",
    "replay_refresh_interval": 4,
    "bc_weight": 1.0,
    "bc_warmup_steps": 100,
}

#: The settings compared: name -> (agent, SequenceMatch hyperparameters). Every SequenceMatch row states its
#: settings in full, so a rerun trains the same agents whatever the library defaults are; each row changes one
#: thing against :data:`CHOSEN`, so the table reads as an ablation. BC and MLE run beside them as references.
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "bc": ("bc", {}),
    "mle": ("mle", {}),
    "α=0.01 (c/α=50): chosen": ("sequencematch", CHOSEN),
    "α=0.1 (c/α=5)": ("sequencematch", {**CHOSEN, "alpha": 0.1}),
    "α=1 (c/α=0.5)": ("sequencematch", {**CHOSEN, "alpha": 1.0}),
    "first version (α=1, c=0.5, iq, all, refresh 20)": (
        "sequencematch",
        {**CHOSEN, "alpha": 1.0, "terminal": "iq", "inserted_steps": "all", "replay_refresh_interval": 20},
    ),
    "terminal=iq (α=0.1)": ("sequencematch", {**CHOSEN, "alpha": 0.1, "terminal": "iq"}),
    "inserted_steps=all (α=0.1)": ("sequencematch", {**CHOSEN, "alpha": 0.1, "inserted_steps": "all"}),
    "refresh every 20 updates (α=0.1)": (
        "sequencematch",
        {**CHOSEN, "alpha": 0.1, "replay_refresh_interval": 20},
    ),
    "bc_weight=0.5 (α=0.1)": ("sequencematch", {**CHOSEN, "alpha": 0.1, "bc_weight": 0.5}),
    "mixture of 16 (8 samples)": ("sequencematch", {**CHOSEN, "mixture_size": 16}),
    "mixture of 16, refresh 8": (
        "sequencematch",
        {**CHOSEN, "mixture_size": 16, "replay_refresh_interval": 8},
    ),
    "mixture of 8, refresh 8": ("sequencematch", {**CHOSEN, "mixture_size": 8, "replay_refresh_interval": 8}),
    "mixture of 64 (32 samples)": ("sequencematch", {**CHOSEN, "mixture_size": 64}),
}


@dataclasses.dataclass
class Config(AgentSettings):
    """Sweep SequenceMatch settings on the development language and seeds.

    The model, the batch and the learning rate are the shared :class:`~experiments.common.AgentSettings`; the
    SequenceMatch hyperparameters are each setting's own (:data:`SETTINGS`), so ``--sm-*`` flags are refused."""

    seeds: tuple[int, ...] = (1000, 1001)
    """Development seeds (never used by a reported table)."""
    settings: tuple[str, ...] = tuple(SETTINGS)
    """Which settings to run (names of SETTINGS)."""
    budget: int = 150_000
    """(state, action) pairs per run."""
    p_noise: float = 0.1
    """Backspace augmentation of BC and SequenceMatch."""
    n_eval: int = 2_000
    """Samples per run for validity."""
    n_recovery: int = 500
    """Start states per batch of the recovery evaluation (``agents.evaluation.evaluate_recovery``)."""
    workers: int = 2
    """Runs trained at once (one process each)."""
    out: Path = Path("results/sweep")
    """Output folder."""

    def check(self) -> None:
        super().check()
        self.refuse_sequencematch_overrides("each sweep setting sets SequenceMatch's hyperparameters itself")
        for name in ("budget", "n_eval", "n_recovery", "workers"):
            check_int(name, getattr(self, name))
        check_seeds(self.seeds)
        check_number("p_noise", self.p_noise, low=0.0, high=1.0)
        if not self.settings:
            raise ConfigError(f"--settings is empty; choose from {list(SETTINGS)}.")
        unknown = [s for s in self.settings if s not in SETTINGS]
        if unknown:
            raise ConfigError(f"Unknown --settings {unknown}; choose from {list(SETTINGS)}.")


def run_one(cfg: Config, setting: str, seed: int, *, bar: RunBar | None = None) -> dict[str, Any]:
    """Train one agent of ``setting`` with ``seed`` and evaluate it (``cfg.threads`` torch threads); ``bar``
    follows the training steps."""
    import gymnasium as gym

    from agents import make_agent
    from agents.evaluation import evaluate_generator, evaluate_recovery

    agent_name, extra = SETTINGS[setting]
    env = gym.make("seqgym/Markov-v0", **DEV_SOURCE)
    kw = {
        "n_demonstrations": cfg.n_demonstrations,
        **cfg.agent_kwargs(agent_name, p_noise=cfg.p_noise),
        **extra,
    }
    with torch_threads(cfg.threads):
        start = time.perf_counter()
        agent = make_agent(agent_name, env=env, seed=seed, **kw)
        agent.learn(cfg.budget, callback=None if bar is None else bar.callback())
        seconds = time.perf_counter() - start
        source = env.unwrapped.source  # type: ignore[attr-defined]
        m = evaluate_generator(agent, source, n=cfg.n_eval, seed=seed + 1)
        r = evaluate_recovery(agent, source, n=cfg.n_recovery, seed=seed + 2)
    return {
        "setting": setting,
        "seed": seed,
        "validity": float(m["validity"]),
        "backspace_rate": float(m["backspace_rate"]),
        **{k: r[k] for k in RECOVERY_COLUMNS},
        "train_seconds": seconds,
    }


def main(cfg: Config) -> dict[str, Any]:
    cfg.check()
    stamp = run_stamp(cfg, ignore=("settings", "seeds", "workers", "out", "resume", "progress"))
    cache = RunCache(cfg.out / "runs", enabled=cfg.resume, stamp=stamp)
    jobs = [
        Job(key=(s, seed), label=f"{s} seed {seed}", args=(cfg, s, seed), total=cfg.budget)
        for s in cfg.settings
        for seed in cfg.seeds
    ]
    log = StudyLog("sweep", len(jobs), progress=cfg.progress)
    ordered = run_jobs(run_one, jobs, cache=cache, log=log, workers=cfg.workers)
    for rec in ordered:
        log.note(f"{rec['setting']} seed {rec['seed']}: validity {rec['validity']:.3f}")
    columns = ("validity", *RECOVERY_COLUMNS, "backspace_rate")
    summary = summarize(ordered, columns, by="setting")
    table = format_table(summary, columns, row_label="setting")
    print(table)
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.out / "table.md", table + "\n")
    write_json_atomic(cfg.out / "results.json", {"config": dataclasses.asdict(cfg), "runs": ordered})
    _plot(ordered, list(cfg.settings), cfg.out / "sweep.png")
    return summary


def _plot(records: list[dict[str, Any]], settings: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(settings) + 1.2))
    for y, s in enumerate(settings):
        vals = np.array([r["validity"] for r in records if r["setting"] == s])
        ax.barh(y, vals.mean(), color="#9ecae1" if SETTINGS[s][0] == "sequencematch" else "#d9d9d9")
        ax.plot(vals, np.full(len(vals), y), "o", color="black", ms=4)
    ax.set_yticks(range(len(settings)), settings, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("validity (bar: mean over development seeds; dots: each seed)")
    ax.set_title("SequenceMatch settings on the development Markov language")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.sweep")
