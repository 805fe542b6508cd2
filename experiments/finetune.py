"""Fine-tuning from MLE against training from scratch, at equal budgets (the paper's regime, on our scale).

For each seed: MLE trains on the demonstrations for ``pretrain`` (state, action) pairs; then MLE (continued),
BC and SequenceMatch (library defaults unless ``--sm-*`` flags override them) each train ``finetune`` more pairs
starting from a copy of that model. Beside them, BC and SequenceMatch train from scratch for
``pretrain + finetune`` pairs, the same total. Every agent of a seed shares the demonstrations and is judged on
the same evaluation states (:func:`agents.evaluation.evaluate_recovery`): validity, validity with backspace
masked, and recovery from an injected mistake.

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
class Config(AgentSettings):
    """Fine-tune MLE with BC and SequenceMatch, against both trained from scratch for the same total budget.

    The model, the batch, the from-scratch learning rate and any SequenceMatch override are the shared
    :class:`~experiments.common.AgentSettings`."""

    task: str = "dyck"
    """Toy task: dyck (or mirror, where a later token is forced by a far earlier one)."""
    seeds: tuple[int, ...] = (30, 31, 32)
    """Seeds (fresh: no table tuned on them)."""
    pretrain: int = 100_000
    """(state, action) pairs of MLE before fine-tuning."""
    finetune: int = 100_000
    """(state, action) pairs of each fine-tuning run (from scratch: pretrain + finetune)."""
    p_noise: float = 0.1
    """Backspace augmentation of BC and SequenceMatch."""
    n_eval: int = 2_000
    """Samples per evaluation batch."""
    finetune_learning_rate: float = 1e-3
    """Learning rate of fine-tuning."""
    workers: int = 2
    """Seeds trained at once (one process each)."""
    out: Path = Path("results/finetune")
    """Output folder."""

    def check(self) -> None:
        super().check()
        for name in ("pretrain", "finetune", "n_eval", "workers"):
            check_int(name, getattr(self, name))
        check_seeds(self.seeds)
        check_number("p_noise", self.p_noise, low=0.0, high=1.0)
        check_number("finetune_learning_rate", self.finetune_learning_rate, low=0.0, low_open=True)
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {list(TASKS)}, got {self.task!r}.")

    def seed_steps(self) -> int:
        """Training steps of every arm of one seed together (its progress bar's total)."""
        return self.pretrain + 3 * self.finetune + 2 * (self.pretrain + self.finetune)


def run_seed(cfg: Config, seed: int, *, bar: RunBar | None = None) -> dict[str, Any]:
    """Every arm for one seed: ``{"arms": [record per arm]}``; ``bar`` follows the steps of all of them."""
    import gymnasium as gym

    from agents import make_agent
    from agents.evaluation import evaluate_recovery

    env = gym.make(TASKS[cfg.task])
    source = env.unwrapped.source  # type: ignore[attr-defined]
    done = 0

    def learn(agent: Any, budget: int) -> Any:
        nonlocal done
        agent.learn(budget, callback=None if bar is None else bar.callback(offset=done))
        done += budget
        return agent

    out = []
    with torch_threads(cfg.threads):
        start = time.perf_counter()
        mle = make_agent(
            "mle", env=env, seed=seed, n_demonstrations=cfg.n_demonstrations, **cfg.agent_kwargs("mle")
        )
        learn(mle, cfg.pretrain)
        demos = mle.demonstrations
        arms: dict[str, Any] = {}
        for name, agent_name in (
            ("mle (continued)", "mle"),
            ("bc from mle", "bc"),
            ("sequencematch from mle", "sequencematch"),
        ):
            kw = cfg.agent_kwargs(
                agent_name,
                p_noise=cfg.p_noise,
                learning_rate=cfg.finetune_learning_rate,
                with_policy_kwargs=False,
            )
            agent = make_agent(
                agent_name, env=env, seed=seed, demonstrations=demos, policy=copy.deepcopy(mle.policy), **kw
            )
            arms[name] = learn(agent, cfg.finetune)
        for name, agent_name in (("bc from scratch", "bc"), ("sequencematch from scratch", "sequencematch")):
            kw = cfg.agent_kwargs(agent_name, p_noise=cfg.p_noise)
            agent = make_agent(agent_name, env=env, seed=seed, demonstrations=demos, **kw)
            arms[name] = learn(agent, cfg.pretrain + cfg.finetune)
        seconds = time.perf_counter() - start
        for name in ARMS:
            m = evaluate_recovery(arms[name], source, n=cfg.n_eval, seed=seed + 1)
            out.append({"arm": name, "seed": seed, **m, "seed_seconds": seconds})
    return {"arms": out}


def main(cfg: Config) -> dict[str, Any]:
    cfg.check()
    stamp = run_stamp(cfg, ignore=("seeds", "workers", "out", "resume", "progress"))
    cache = RunCache(cfg.out / "runs", enabled=cfg.resume, stamp=stamp)
    jobs = [
        Job(key=("seed", seed), label=f"seed {seed} (every arm)", args=(cfg, seed), total=cfg.seed_steps())
        for seed in cfg.seeds
    ]
    log = StudyLog("finetune", len(jobs), progress=cfg.progress)
    rows = [
        r for rec in run_jobs(run_seed, jobs, cache=cache, log=log, workers=cfg.workers) for r in rec["arms"]
    ]
    summary = summarize(rows, METRICS, by="arm")
    table = format_table({a: summary[a] for a in ARMS if a in summary}, METRICS, row_label="arm")
    print(table)
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.out / "table.md", table + "\n")
    write_json_atomic(cfg.out / "results.json", {"config": dataclasses.asdict(cfg), "runs": rows})
    return summary


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.finetune")
