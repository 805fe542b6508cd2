"""Arithmetic: answer accuracy vs noise level for MLE, BC and SequenceMatch (the paper's arithmetic study).

Prompts are ``a+b=`` / ``a-b=`` (``seqgym/Arithmetic-v0``); a sample is correct when its answer is (the source's
``is_valid``). The *noise level* is the probability ``p_noise`` with which each expert action of a demonstration
is preceded by a uniformly drawn wrong token and the ``<backspace>`` that repairs it (``sequencematch.md`` §4):
BC and SequenceMatch train on those augmented demonstrations; MLE trains on the clean answers (it cannot
express a backspace), so its accuracy is one line across noise levels. Results go to ``--out``
(``results.json``, ``table.md``, ``arithmetic.png``); finished runs are cached for resuming.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from experiments.common import RunCache, config_digest, format_table, summarize, write_json_atomic
from experiments.compare import NOT_IN_RUN, run_one
from experiments.compare import Config as CompareConfig


@dataclasses.dataclass
class Config:
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
    n_eval: int = 500
    """Test problems per run (fresh prompts)."""
    n_layer: int = 2
    """Transformer layers."""
    n_embd: int = 64
    """Width."""
    learning_rate: float = 3e-3
    """Learning rate."""
    batch_size: int = 64
    """Trajectories per update."""
    sm_chi2_coef: float = CompareConfig.sm_chi2_coef
    """SequenceMatch χ² coefficient c (as in ``experiments.compare``)."""
    sm_bc_weight: float = CompareConfig.sm_bc_weight
    """SequenceMatch behaviour-cloning anchor weight λ_bc."""
    sm_bc_warmup_steps: int = CompareConfig.sm_bc_warmup_steps
    """SequenceMatch updates of BC alone before the full loss."""
    out: Path = Path("results/arithmetic")
    """Output folder."""
    resume: bool = True
    """Reuse finished runs under out/runs."""
    threads: int = 1
    """torch CPU threads per run (as in ``experiments.compare``)."""
    progress: bool = True
    """Progress bars."""


def main(cfg: Config) -> dict[str, Any]:
    """Run the study; returns what it writes to ``results.json``."""
    base = CompareConfig(
        task="arithmetic",
        source_kwargs={"base": cfg.base, "n_digits": cfg.n_digits},
        budget=cfg.budget,
        n_demonstrations=cfg.n_demonstrations,
        n_eval=cfg.n_eval,
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size,
        sm_chi2_coef=cfg.sm_chi2_coef,
        sm_bc_weight=cfg.sm_bc_weight,
        sm_bc_warmup_steps=cfg.sm_bc_warmup_steps,
        threads=cfg.threads,
        progress=cfg.progress,
    )
    cache = RunCache(cfg.out / "runs", enabled=cfg.resume)
    digest = config_digest(base, ignore=(*NOT_IN_RUN, "p_noise"))
    records = []
    for seed in cfg.seeds:
        for agent in cfg.agents:
            levels = [0.0] if agent == "mle" else list(cfg.noise_levels)
            for p in levels:
                key = ("arithmetic", agent, f"seed{seed}", f"noise{p}", digest)
                rec = cache.get(*key)
                if rec is None:
                    print(f"[arithmetic] {agent} seed {seed} p_noise={p}", flush=True)
                    rec = run_one(base, agent, seed, p_noise=p, curve=False)
                    cache.put(*key, rec)
                records.append(rec)
    rows = []
    for r in records:
        label = r["agent"] if r["agent"] == "mle" else f"{r['agent']} p={r['p_noise']}"
        rows.append({**r, "agent": label, "accuracy": r.get("validity", float("nan"))})
    metrics = ["accuracy", "logprob_per_token", "heldout_nll", "backspace_rate", "train_seconds"]
    summary = summarize(rows, metrics)
    table = format_table(summary, metrics)
    header = (
        f"Arithmetic (base {cfg.base}, {cfg.n_digits} digits), budget {cfg.budget}, "
        f"seeds {list(cfg.seeds)}, {cfg.n_eval} test problems\n\n"
    )
    cfg.out.mkdir(parents=True, exist_ok=True)
    results = {"config": dataclasses.asdict(cfg), "summary": summary, "runs": records}
    write_json_atomic(cfg.out / "results.json", results)
    (cfg.out / "table.md").write_text(header + table + "\n")
    _plot(records, cfg)
    print(header + table)
    return results


def _plot(records: list[dict[str, Any]], cfg: Config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for agent in cfg.agents:
        pts: dict[float, list[float]] = {}
        for r in records:
            if r["agent"] == agent:
                pts.setdefault(float(r["p_noise"] or 0.0), []).append(float(r.get("validity", np.nan)))
        if agent == "mle" and pts:
            acc = float(np.mean(next(iter(pts.values()))))
            ax.plot(cfg.noise_levels, [acc] * len(cfg.noise_levels), "--", label="mle (clean data)")
            continue
        xs = sorted(pts)
        ax.errorbar(
            xs, [np.mean(pts[x]) for x in xs], yerr=[np.std(pts[x]) for x in xs], marker="o", label=agent
        )
    ax.set_xlabel("noise level p_noise")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Arithmetic: accuracy vs noise")
    ax.legend()
    fig.tight_layout()
    fig.savefig(cfg.out / "arithmetic.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Config))
