"""Fine-tuning from MLE against training from scratch, at equal budgets (the paper's regime, on our scale).

For each seed: MLE trains on the demonstrations for ``pretrain`` (state, action) pairs; then MLE (continued),
BC and SequenceMatch (library defaults) each train ``finetune`` more pairs starting from a copy of that model.
Beside them, BC and SequenceMatch train from scratch for ``pretrain + finetune`` pairs, the same total. Every
agent of a seed shares the demonstrations and is judged on the same evaluation states
(:func:`agents.evaluation.evaluate_recovery`): validity, validity with backspace masked, and recovery from an
injected mistake.

Writes ``results.json``, ``table.md`` to ``--out``; finished runs are cached under ``--out/runs``.
Run ``python -m experiments.finetune --help`` for every option.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

from experiments.common import (
    Job,
    RunCache,
    check_int,
    format_table,
    run_cli,
    run_jobs,
    run_stamp,
    summarize,
    torch_threads,
    write_json_atomic,
)
from experiments.progress import RunBar, StudyLog

TASKS = {"dyck": "seqgym/Dyck-v0", "mirror": "seqgym/Mirror-v0"}
METRICS = ("validity", "validity_no_backspace", "backspace_first", "recovery", "deliberate_mistakes")
ARMS = (
    "mle (continued)",
    "bc from mle",
    "sequencematch from mle",
    "bc from scratch",
    "sequencematch from scratch",
)


@dataclasses.dataclass
class Config:
    """Fine-tune MLE with BC and SequenceMatch, against both trained from scratch for the same total budget."""

    task: str = "dyck"
    """Toy task: dyck (or mirror, where a later token is forced by a far earlier one)."""
    seeds: tuple[int, ...] = (30, 31, 32)
    """Seeds (fresh: no table tuned on them)."""
    pretrain: int = 100_000
    """(state, action) pairs of MLE before fine-tuning."""
    finetune: int = 100_000
    """(state, action) pairs of each fine-tuning run (from scratch: pretrain + finetune)."""
    n_demonstrations: int = 1_000
    """Demonstrations per seed."""
    p_noise: float = 0.1
    """Backspace augmentation of BC and SequenceMatch."""
    n_eval: int = 2_000
    """Samples per evaluation batch."""
    learning_rate: float = 3e-3
    """Learning rate from scratch."""
    finetune_learning_rate: float = 1e-3
    """Learning rate of fine-tuning."""
    workers: int = 2
    """Seeds trained at once (one process each, one torch thread each)."""
    out: Path = Path("results/finetune")
    """Output folder."""
    resume: bool = True
    """Reuse finished runs cached under out/runs."""

    def check(self) -> None:
        from experiments.common import ConfigError

        for name in ("pretrain", "finetune", "n_demonstrations", "n_eval", "workers"):
            check_int(name, getattr(self, name))
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {list(TASKS)}, got {self.task!r}.")


def run_seed(cfg: Config, seed: int, *, bar: RunBar | None = None) -> dict[str, Any]:
    """Every arm for one seed: ``{"arms": [record per arm]}`` (``bar`` is not used: a seed's arms have no
    single budget to follow)."""
    import gymnasium as gym

    from agents import make_agent
    from agents.evaluation import evaluate_recovery

    env = gym.make(TASKS[cfg.task])
    source = env.unwrapped.source  # type: ignore[attr-defined]
    model: dict[str, Any] = {"policy_kwargs": {"n_layer": 2, "n_embd": 64, "n_head": 2}}
    common: dict[str, Any] = {"n_demonstrations": cfg.n_demonstrations, "batch_size": 16}
    out = []
    with torch_threads(1):
        start = time.perf_counter()
        mle = make_agent("mle", env=env, seed=seed, learning_rate=cfg.learning_rate, **common, **model)
        mle.learn(cfg.pretrain)
        demos = mle.demonstrations
        arms: dict[str, Any] = {}
        ft: dict[str, Any] = {"learning_rate": cfg.finetune_learning_rate, **common}
        for name, agent_name in (
            ("mle (continued)", "mle"),
            ("bc from mle", "bc"),
            ("sequencematch from mle", "sequencematch"),
        ):
            kw: dict[str, Any] = dict(ft) if agent_name == "mle" else {**ft, "p_noise": cfg.p_noise}
            agent = make_agent(
                agent_name, env=env, seed=seed, demonstrations=demos, policy=copy.deepcopy(mle.policy), **kw
            )
            arms[name] = agent.learn(cfg.finetune)
        for name, agent_name in (("bc from scratch", "bc"), ("sequencematch from scratch", "sequencematch")):
            kw = {
                "learning_rate": cfg.learning_rate,
                **common,
                **model,
                "p_noise": cfg.p_noise,
            }  # from scratch
            agent = make_agent(agent_name, env=env, seed=seed, demonstrations=demos, **kw)
            arms[name] = agent.learn(cfg.pretrain + cfg.finetune)
        seconds = time.perf_counter() - start
        for name in ARMS:
            m = evaluate_recovery(arms[name], source, n=cfg.n_eval, seed=seed + 1)
            out.append({"arm": name, "seed": seed, **m, "seed_seconds": seconds})
    return {"arms": out}


def main(cfg: Config) -> dict[str, Any]:
    cfg.check()
    stamp = run_stamp(cfg, ignore=("seeds", "workers", "out", "resume"))
    cache = RunCache(cfg.out / "runs", enabled=cfg.resume, stamp=stamp)
    jobs = [Job(key=("seed", seed), label=f"seed {seed} (every arm)", args=(cfg, seed)) for seed in cfg.seeds]
    log = StudyLog("finetune", len(jobs), progress=False)
    rows = [
        r for rec in run_jobs(run_seed, jobs, cache=cache, log=log, workers=cfg.workers) for r in rec["arms"]
    ]
    summary = summarize(rows, METRICS, by="arm")
    table = format_table({a: summary[a] for a in ARMS if a in summary}, METRICS, row_label="arm")
    print(table)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "table.md").write_text(table + "\n", encoding="utf-8")
    write_json_atomic(cfg.out / "results.json", {"config": dataclasses.asdict(cfg), "runs": rows})
    return summary


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.finetune")
