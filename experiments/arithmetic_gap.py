"""MLE against BC at ``p_noise=0`` on arithmetic: where does a gap between two nearly equal losses come from?

At ``p_noise=0`` BC trains on the clean demonstrations, exactly as MLE does: same initial model (same seed), same
batches (same sampler seed), the same number of updates, and a loss that differs only in the softmax: BC's
includes the ``<backspace>`` logit (never a target, so it is pushed down), MLE's leaves it out. A third learner
separates the two candidate causes, :class:`MaskedBC`: BC's code path (the one-pass 4-D-mask forward of
:meth:`agents.policy.LMPolicy.trajectory_logits`) with ``<backspace>`` removed from its softmax, i.e. MLE's loss.

- ``bc (backspace masked)`` close to ``mle`` seed by seed: the ``<backspace>`` logit in the softmax is the cause.
- close to ``bc``: BC's code path (its forward, its batches) is.
- neither: the outcome of a run is chaotic in tiny numerical differences, and only many seeds can tell the
  learners apart; the paired differences and their bootstrap intervals over seeds say whether they differ.

Writes ``results.json`` and ``table.md`` to ``--out``; finished runs are cached under ``--out/runs``.
Run ``python -m experiments.arithmetic_gap --help`` for every option.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.bc import BC
from experiments.common import (
    AgentSettings,
    ConfigError,
    Job,
    RunCache,
    check_int,
    check_seeds,
    run_cli,
    run_jobs,
    run_stamp,
    torch_threads,
    write_json_atomic,
    write_text_atomic,
)
from experiments.progress import RunBar, StudyLog
from experiments.stats import paired_differences

VARIANTS = ("mle", "bc", "bc_masked")
"""The learners: MLE, BC at ``p_noise=0``, and BC with ``<backspace>`` masked out of its softmax."""


class MaskedBC(BC):
    """BC whose cross-entropy leaves ``<backspace>`` out of the softmax (MLE's loss on BC's code path).

    Only meaningful at ``p_noise=0`` (no ``<backspace>`` targets); the logits at every expert step are those of
    :meth:`agents.policy.LMPolicy.trajectory_logits`, as in :class:`~agents.bc.BC`.
    """

    def _loss(self, batch: list[Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prompts: list[Any] = [t.prompt for t in batch]
        actions: list[Any] = [t.actions for t in batch]
        out = self.policy.trajectory_logits(prompts, actions)
        B, T = out.actions.shape
        expert = np.zeros((B, T), dtype=bool)
        for b, t in enumerate(batch):
            expert[b, : len(t)] = t.expert
        weight = out.action_mask & torch.from_numpy(expert).to(out.actions.device)  # (B, T)
        logits = out.logits[:, :-1]  # (B, T, A)
        no_bksp = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        no_bksp[self.vocab.backspace_id] = True
        logp = logits.masked_fill(no_bksp, float("-inf")).log_softmax(dim=-1)
        logp = logp.gather(-1, out.actions[..., None])[..., 0]  # (B, T)
        nll = -torch.where(weight, logp, 0.0)
        return nll.sum() / B, {"nll_per_action": nll.sum().detach() / weight.sum().clamp(min=1)}


@dataclasses.dataclass
class Config(AgentSettings):
    """Train MLE, BC (p_noise=0) and BC with backspace masked on arithmetic, paired by seed.

    The model, the batch and the learning rate are the shared :class:`~experiments.common.AgentSettings` (with
    ``experiments.arithmetic``'s data and batch); no SequenceMatch trains here, so ``--sm-*`` flags are refused."""

    seeds: tuple[int, ...] = (20, 21, 22, 23, 24, 25, 26, 27)
    """Seeds (none of them used by another table)."""
    variants: tuple[str, ...] = VARIANTS
    """Which learners to train (mle, bc, bc_masked)."""
    base: int = 5
    """Number base (as ``experiments.arithmetic``)."""
    n_digits: int = 2
    """Digits per operand."""
    budget: int = 300_000
    """(state, action) pairs per run (as ``experiments.arithmetic``)."""
    n_demonstrations: int = 5_000
    """Demonstrations per seed (as ``experiments.arithmetic``)."""
    batch_size: int = 64
    """Trajectories per update (as ``experiments.arithmetic``)."""
    n_eval: int = 2_000
    """Test problems per run."""
    workers: int = 2
    """Runs trained at once (one process each)."""
    out: Path = Path("results/arithmetic_gap")
    """Output folder."""

    def check(self) -> None:
        super().check()
        self.refuse_sequencematch_overrides("this study trains MLE and BC only")
        for name in ("budget", "n_eval", "workers"):
            check_int(name, getattr(self, name))
        check_int("base", self.base, low=2)
        check_int("n_digits", self.n_digits)
        check_seeds(self.seeds)
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ConfigError(f"--variants must be among {VARIANTS}, got {list(self.variants)}.")


def run_one(cfg: Config, variant: str, seed: int, *, bar: RunBar | None = None) -> dict[str, Any]:
    """Train one learner with one seed and return its accuracy on ``cfg.n_eval`` fresh problems (``bar``
    follows the training steps)."""
    from agents import make_agent
    from agents.evaluation import evaluate_generator
    from seqgym.data import collect
    from seqgym.registration import make_env

    env = make_env("arithmetic", base=cfg.base, n_digits=cfg.n_digits)
    source = env.source
    with torch_threads(cfg.threads):
        torch.manual_seed(seed)
        demos = collect(source, cfg.n_demonstrations, np.random.default_rng(10_000 + seed))
        kw = cfg.agent_kwargs("mle" if variant == "mle" else "bc", p_noise=0.0)
        if variant == "bc_masked":
            agent: Any = MaskedBC(env=env, demonstrations=demos, seed=seed, **kw)
        else:
            agent = make_agent(variant, env=env, demonstrations=demos, seed=seed, **kw)
        start = time.perf_counter()
        agent.learn(cfg.budget, log_interval=0, callback=None if bar is None else bar.callback())
        seconds = time.perf_counter() - start
        m = evaluate_generator(agent, source, n=cfg.n_eval, seed=10_000 + seed, n_reference=500)
    return {
        "variant": variant,
        "seed": seed,
        "accuracy": float(m["validity"]),
        "updates": int(agent.n_updates),
        "train_seconds": seconds,
    }


def main(cfg: Config) -> dict[str, Any]:
    """Run every (variant, seed), then the paired differences over seeds; returns what ``results.json`` holds."""
    cfg.check()
    cache = RunCache(
        cfg.out / "runs",
        enabled=cfg.resume,
        stamp=run_stamp(cfg, ignore=("seeds", "variants", "out", "resume", "workers", "progress")),
    )
    jobs = [
        Job(key=(v, seed), label=f"{v} seed {seed}", args=(cfg, v, seed), total=cfg.budget)
        for seed in cfg.seeds
        for v in cfg.variants
    ]
    log = StudyLog("gap", len(jobs), progress=cfg.progress)
    records = run_jobs(run_one, jobs, cache=cache, log=log, workers=cfg.workers)
    for rec in records:
        log.note(
            f"{rec['variant']} seed {rec['seed']}: accuracy {rec['accuracy']:.3f} ({rec['updates']} updates)"
        )
    acc = {v: np.array([r["accuracy"] for r in records if r["variant"] == v]) for v in cfg.variants}
    lines = ["| learner | accuracy per seed | mean |", "|---|---|---|"]
    for v in cfg.variants:
        lines.append(f"| {v} | {' / '.join(f'{a:.3f}' for a in acc[v])} | {acc[v].mean():.3f} |")
    pairs = [
        (a, b) for a, b in (("bc", "mle"), ("bc_masked", "mle"), ("bc", "bc_masked")) if a in acc and b in acc
    ]
    diffs = {f"{a} - {b}": paired_differences(acc[a], acc[b]) for a, b in pairs}
    if diffs:
        lines += ["", "| paired difference | mean | 95% bootstrap interval |", "|---|---|---|"]
        for name, d in diffs.items():
            lines.append(f"| {name} | {d['mean']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] |")
    table = (
        f"Arithmetic base {cfg.base}, budget {cfg.budget}, seeds {list(cfg.seeds)}, {cfg.n_eval} problems\n\n"
    )
    table += "\n".join(lines)
    print(table)
    results = {"config": dataclasses.asdict(cfg), "runs": records, "differences": diffs}
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.out / "results.json", results)
    write_text_atomic(cfg.out / "table.md", table + "\n")
    return results


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.arithmetic_gap")
