"""Arithmetic: answer accuracy vs noise level for MLE, BC and SequenceMatch (the paper's arithmetic study).

Prompts are ``a+b=`` / ``a-b=`` (``seqgym/Arithmetic-v0``); a sample is correct when its answer is (the source's
``is_valid``). The *noise level* is the probability ``p_noise`` with which each expert action of a demonstration
is preceded by a wrong token (drawn uniformly among those the source rules out there) and the ``<backspace>``
that repairs it (``docs/method.md`` §4):
BC and SequenceMatch train on those augmented demonstrations; MLE trains on the clean answers (it cannot
express a backspace), so its accuracy is one line across noise levels. Results go to ``--out``
(``results.json``, ``table.md``, ``arithmetic.png`` with ± std over seeds, ``samples.md``); finished runs are
cached for resuming (a changed setting or edited library code recomputes them). ``unseen_accuracy`` is the
accuracy on problems that none of the seed's demonstrations holds (``experiments.compare.unseen_prompts``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import (
    IMITATION_AGENTS,
    AgentSettings,
    ConfigError,
    Job,
    RunCache,
    check_int,
    check_number,
    check_seeds,
    format_table,
    mean_std,
    run_cli,
    run_jobs,
    run_stamp,
    summarize,
    write_json_atomic,
    write_text_atomic,
)
from experiments.compare import NOT_IN_RUN, check_source, run_one
from experiments.compare import Config as CompareConfig
from experiments.gallery import write_gallery
from experiments.progress import StudyLog


@dataclasses.dataclass
class Config(AgentSettings):
    """Accuracy vs noise level on the arithmetic task."""

    base: int = 5
    """Number base of the operands and answers (base 5, 2 digits: 950 distinct problems, learnable by the default
    model within the default budget; base 10 needs far more compute: MLE reaches 6% accuracy after 300k pairs)."""
    n_digits: int = 2
    """Digits per operand."""
    noise_levels: tuple[float, ...] = (0.0, 0.1, 0.25)
    """Backspace-augmentation levels of BC and SequenceMatch."""
    agents: tuple[str, ...] = ("mle", "bc", "sequencematch")
    """Imitation agents to compare."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Seeds (five: whether a small model learns the task within the budget varies a lot between seeds)."""
    budget: int = 300_000
    """(state, action) pairs trained on per run (1,250 to 1,550 updates; SequenceMatch spends its first
    ``sm_bc_warmup_steps`` on BC alone)."""
    n_demonstrations: int = 5_000
    """Training examples (the paper uses 5,000)."""
    batch_size: int = 64
    """Trajectories per update (more than on Dyck: the answers are short)."""
    n_eval: int = 500
    """Test problems per run (fresh prompts)."""
    n_gallery: int = 6
    """Test problems per agent shown in the gallery (samples.md; 0: none)."""
    workers: int = 2
    """Independent runs trained at once, one worker process each (1: one after another in this process, with a
    progress bar per run). Every run seeds itself, so the records do not depend on the count."""
    out: Path = Path("results/arithmetic")
    """Output folder."""

    def check(self) -> None:
        """Raise :class:`~experiments.common.ConfigError` (naming the flag) for any invalid option, before
        anything runs."""
        super().check()
        if not self.agents:
            raise ConfigError("--agents is empty; name at least one agent.")
        for a in self.agents:
            if a not in IMITATION_AGENTS:
                raise ConfigError(f"Unknown agent {a!r}; choose from {IMITATION_AGENTS}.")
        if len(set(self.agents)) != len(self.agents):
            raise ConfigError(f"--agents lists an agent twice: {list(self.agents)}.")
        check_seeds(self.seeds)
        check_int("base", self.base, low=2)
        check_int("n_digits", self.n_digits)
        check_source("arithmetic", {"base": self.base, "n_digits": self.n_digits})
        if not self.noise_levels:
            raise ConfigError("--noise-levels is empty; give at least one level.")
        for p in self.noise_levels:
            check_number("noise_levels", p, low=0.0, high=1.0)
        for name in ("budget", "n_eval"):
            check_int(name, getattr(self, name))
        check_int("n_gallery", self.n_gallery, low=0)
        check_int("workers", self.workers)

    def compare_config(self) -> CompareConfig:
        """The ``experiments.compare`` config that each run of this study trains and evaluates with."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(AgentSettings)}
        return CompareConfig(
            task="arithmetic",
            source_kwargs={"base": self.base, "n_digits": self.n_digits},
            budget=self.budget,
            n_eval=self.n_eval,
            n_gallery=self.n_gallery,
            **shared,
        )


def main(cfg: Config) -> dict[str, Any]:
    """Run the study; returns what it writes to ``results.json``.

    Raises:
        ConfigError: an invalid option (before anything runs or is written).
        CacheError: an unreadable cached run (named, with how to recover).
    """
    cfg.check()
    base = cfg.compare_config()
    cache = RunCache(
        cfg.out / "runs", enabled=cfg.resume, stamp=run_stamp(base, ignore=(*NOT_IN_RUN, "p_noise"))
    )
    runs = [
        (seed, agent, p)
        for seed in cfg.seeds
        for agent in cfg.agents
        for p in ([0.0] if agent == "mle" else list(dict.fromkeys(cfg.noise_levels)))
    ]
    log = StudyLog("arithmetic", len(runs), progress=cfg.progress)
    jobs = [
        Job(
            key=("arithmetic", agent, f"seed{seed}", f"noise{p}"),
            label=f"{agent} seed {seed} p_noise={p}",
            args=(base, agent, seed, p, False),
            total=cfg.budget,
        )
        for seed, agent, p in runs
    ]
    records = run_jobs(run_one, jobs, cache=cache, log=log, workers=cfg.workers)
    rows = []
    for r in records:
        rows.append(
            {
                **r,
                "agent": _label(r),
                "accuracy": r.get("validity", float("nan")),
                "unseen_accuracy": r.get("unseen_validity"),
            }
        )
    metrics = [
        "accuracy",
        "unseen_accuracy",
        "logprob_per_token",
        "heldout_nll",
        "backspace_rate",
        "train_seconds",
    ]
    summary = summarize(rows, metrics)
    table = format_table(summary, metrics)
    header = (
        f"Arithmetic (base {cfg.base}, {cfg.n_digits} digits), budget {cfg.budget}, "
        f"seeds {list(cfg.seeds)}, {cfg.n_eval} test problems\n\n"
    )
    cfg.out.mkdir(parents=True, exist_ok=True)
    results = {"config": dataclasses.asdict(cfg), "summary": summary, "runs": records}
    write_json_atomic(cfg.out / "results.json", results)
    write_text_atomic(cfg.out / "table.md", header + table + "\n")
    _plot(records, cfg)
    first = cfg.seeds[0]
    write_gallery(
        cfg.out / "samples.md",
        {_label(r): r.get("samples", []) for r in records if r["seed"] == first},
        title=f"Samples: arithmetic (base {cfg.base}, {cfg.n_digits} digits), seed {first}",
        note="✓: the answer is right. Temperature 1.",
    )
    print(header + table)
    print(
        f"\nwrote {', '.join(str(cfg.out / n) for n in ('results.json', 'table.md', 'arithmetic.png', 'samples.md'))}"
    )
    return results


def _label(record: dict[str, Any]) -> str:
    return str(record["agent"]) if record["agent"] == "mle" else f"{record['agent']} p={record['p_noise']}"


def _plot(records: list[dict[str, Any]], cfg: Config) -> None:
    """Accuracy vs noise level: means over seeds with ± one-standard-deviation error bars (a band for MLE,
    which has one accuracy for every level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    levels = sorted(set(cfg.noise_levels))
    for agent in cfg.agents:
        pts: dict[float, list[float]] = {}
        for r in records:
            if r["agent"] == agent:
                pts.setdefault(float(r["p_noise"] or 0.0), []).append(float(r.get("validity", np.nan)))
        if not pts:
            continue
        if agent == "mle":
            mean, std = (float(x) for x in mean_std(np.array(next(iter(pts.values())))))
            (line,) = ax.plot(levels, [mean] * len(levels), "--", label="mle (clean data)")
            ax.fill_between(levels, mean - std, mean + std, alpha=0.15, color=line.get_color())
            continue
        xs = sorted(pts)
        stats = [mean_std(np.array(pts[x])) for x in xs]
        ax.errorbar(
            xs,
            [float(m) for m, _ in stats],
            yerr=[float(s) for _, s in stats],
            marker="o",
            capsize=4,
            label=agent,
        )
    n_seeds = len(cfg.seeds)
    spread = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed: no interval"
    ax.set_xlabel("noise level p_noise")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Arithmetic: accuracy vs noise\n{spread}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(cfg.out / "arithmetic.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.arithmetic")
