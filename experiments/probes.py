"""What an agent does at two kinds of states, measured on its action probabilities (no sampling).

- ``mistakes``: P(``<backspace>``) just after an injected impossible token (the start states of
  :func:`seqgym.metrics.sample_recovery_states`), grouped by the injected token, with the action the policy
  finds most likely where it would rather not delete (P(``<backspace>``) < 0.5). It tells which mistakes an
  agent sees and which it keeps.
- ``eos``: P(eos) right after a correct prefix of ``n`` tokens (the states of the validity-vs-length curve of
  :mod:`experiments.compare`, Dyck and Mirror), for each ``n`` of ``--lengths``: whether an agent ends the
  sequence where the training sequences ended.

Each agent trains as in :mod:`experiments.compare` (same demonstrations, model and settings for a seed), once per
run of this script. Writes ``results.json`` and ``table.md`` to ``--out``.

Usage (from the repository root)::

    python -m experiments.probes --task arithmetic --source-kwargs base 5 n_digits 3 --agents bc \\
        --probe mistakes --budget 1000000 --seed 1000 --out results/probe_arith_mistakes
    python -m experiments.probes --agents mle bc --probe eos --lengths 12 16 20 --budget 300000 --seed 1000

``--noise model``, ``--p-noise``, ``--noise-margin`` and the model size (``--n-layer``) change how BC and
SequenceMatch train, to see what moves a probe.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from agents.common.noise import NOISE_KINDS
from experiments.common import (
    IMITATION_AGENTS,
    NOISY_AGENTS,
    AgentSettings,
    ConfigError,
    check_int,
    check_noise_margin_option,
    check_number,
    check_seeds,
    run_cli,
    torch_threads,
    write_json_atomic,
    write_text_atomic,
)

PROBES = ("mistakes", "eos")
"""The probes (module docstring)."""


@dataclasses.dataclass
class Config(AgentSettings):
    """Train agents once, then probe their action probabilities at chosen states."""

    task: Literal["dyck", "markov", "arithmetic", "mirror"] = "dyck"
    """Toy task (a registered seqgym env with exact probabilities)."""
    source_kwargs: dict[str, int] = dataclasses.field(default_factory=dict)
    """Arguments of the task's source (e.g. ``base``, ``n_digits`` for arithmetic)."""
    agents: tuple[str, ...] = ("mle", "bc")
    """Imitation agents to train and probe."""
    probe: Literal["mistakes", "eos"] = "mistakes"
    """Which probe (module docstring)."""
    seed: int = 1000
    """Seed of the demonstrations, the model and the states (a development seed by default)."""
    budget: int = 300_000
    """(state, action) pairs per agent."""
    p_noise: float = 0.1
    """Augmentation of BC and SequenceMatch."""
    noise: Literal["uniform", "model"] = "uniform"
    """How BC's and SequenceMatch's inserted mistakes are drawn (``agents.common.noise``; the library's default is
    uniform)."""
    noise_margin: int = 0
    """Positions before the length limit that BC and SequenceMatch get no inserted mistakes at (the library's
    default is 0)."""
    lengths: tuple[int, ...] = (12, 16, 20)
    """Prefix lengths of the ``eos`` probe."""
    n_states: int = 3_000
    """States per probe (per length for ``eos``)."""
    architecture: Literal["llama", "gpt2"] = "llama"
    """Model family (the library's default; the studies' 1M commands pass it too)."""
    learning_rate: float = 1e-3
    """Learning rate (the library's default)."""
    batch_size: int = 32
    """Trajectories per update (the library's default)."""
    n_demonstrations: int = 4_000
    """Demonstrations (the library's default)."""
    threads: int = 1
    """Torch CPU threads."""
    out: Path = Path("results/probe")
    """Output folder (results.json, table.md)."""

    def check(self) -> None:
        """Raise :class:`~experiments.common.ConfigError` (naming the flag) for any invalid option."""
        super().check()
        from experiments.compare import LENGTH_TASKS, TASKS, check_source

        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        check_source(self.task, self.source_kwargs)
        if not self.agents or any(a not in IMITATION_AGENTS for a in self.agents):
            raise ConfigError(f"--agents must be among {IMITATION_AGENTS}, got {list(self.agents)}.")
        if self.probe not in PROBES:
            raise ConfigError(f"--probe must be one of {PROBES}, got {self.probe!r}.")
        if self.probe == "eos" and self.task not in LENGTH_TASKS:
            raise ConfigError(f"--probe eos needs a task in {LENGTH_TASKS}, got --task {self.task}.")
        check_seeds((self.seed,))
        check_noise_margin_option(self.noise_margin, self.task, self.source_kwargs)
        for name in ("budget", "n_states", "threads"):
            check_int(name, getattr(self, name))
        for n in self.lengths:
            check_int("lengths", n)
        check_number("p_noise", self.p_noise, low=0.0, high=1.0)
        if self.noise not in NOISE_KINDS:
            raise ConfigError(f"--noise must be one of {', '.join(NOISE_KINDS)}, got {self.noise!r}.")


def _train(cfg: Config, agent: str, env: Any, demos: Any) -> Any:
    from agents import make_agent

    torch.manual_seed(cfg.seed)
    kw = cfg.agent_kwargs(agent, p_noise=cfg.p_noise if agent != "mle" else None)
    if agent in NOISY_AGENTS:
        kw["noise"] = cfg.noise
        kw["noise_margin"] = cfg.noise_margin
    learner = make_agent(agent, env=env, demonstrations=demos, seed=cfg.seed, **kw)
    return learner.learn(cfg.budget, progress_bar=cfg.progress)


def probe_mistakes(learner: Any, source: Any, n: int, seed: int) -> dict[str, Any]:
    """P(``<backspace>``) just after an injected impossible token, by injected token (module docstring)."""
    from agents.evaluation import action_logits
    from seqgym.metrics import sample_recovery_states

    vocab = source.vocab
    st = sample_recovery_states(source, n, seed=seed, max_length=learner.max_length)
    logits = action_logits(learner.policy, st.prompts, st.injected, allow_backspace=learner.allow_backspace)
    p = logits.softmax(-1).numpy()  # (N, A)
    p_bk = p[:, vocab.backspace_id]  # (N,)
    by: dict[str, list[float]] = collections.defaultdict(list)
    kept: collections.Counter[str] = collections.Counter()
    for i, h in enumerate(st.injected):
        by[vocab.decode([h[-1]])].append(float(p_bk[i]))
        if p_bk[i] < 0.5:
            kept[vocab.decode([int(p[i].argmax())])] += 1
    return {
        "p_backspace": float(p_bk.mean()),
        "by_injected_token": {
            t: {"n": len(v), "p_backspace": float(np.mean(v))} for t, v in sorted(by.items())
        },
        "most_likely_instead": dict(kept.most_common()),
    }


def probe_eos(
    learner: Any, source: Any, task: str, lengths: tuple[int, ...], n: int, seed: int
) -> dict[str, Any]:
    """Mean P(eos) right after a correct prefix of each length (module docstring)."""
    from agents.evaluation import action_logits
    from experiments.compare import long_prefixes

    out = {}
    for n_tokens in lengths:
        prompts, _, _ = long_prefixes(task, source, lengths, n_tokens, n, seed)
        logits = action_logits(
            learner.policy, prompts, [[]] * len(prompts), allow_backspace=learner.allow_backspace
        )
        p_eos = logits.softmax(-1)[:, source.vocab.eos_id].numpy()  # (N,)
        out[str(n_tokens)] = float(p_eos.mean())
    return {"p_eos": out}


def main(cfg: Config) -> dict[str, Any]:
    """Train each agent, run the probe, print and write the table; returns what ``results.json`` holds."""
    from seqgym.data import collect
    from seqgym.registration import make_env

    cfg.check()
    env = make_env(cfg.task, **cfg.source_kwargs)
    source = env.source
    demos = collect(source, cfg.n_demonstrations, np.random.default_rng(10_000 + cfg.seed))
    results: dict[str, Any] = {}
    with torch_threads(cfg.threads):
        for agent in cfg.agents:
            learner = _train(cfg, agent, env, demos)
            if cfg.probe == "mistakes":
                results[agent] = probe_mistakes(learner, source, cfg.n_states, cfg.seed)
            else:
                results[agent] = probe_eos(learner, source, cfg.task, cfg.lengths, cfg.n_states, cfg.seed)
    lines = [
        f"Probe {cfg.probe}, task {cfg.task}, seed {cfg.seed}, {cfg.budget} pairs, {cfg.n_states} states",
        "",
    ]
    if cfg.probe == "mistakes":
        tokens = sorted({t for r in results.values() for t in r["by_injected_token"]})
        lines += ["| agent | all | " + " | ".join(tokens) + " |", "|---|---|" + "---|" * len(tokens)]
        for agent, r in results.items():
            cells = [
                f"{r['by_injected_token'][t]['p_backspace']:.3f}" if t in r["by_injected_token"] else ""
                for t in tokens
            ]
            lines.append(f"| {agent} | {r['p_backspace']:.3f} | " + " | ".join(cells) + " |")
        lines += ["", "Most likely action where P(<backspace>) < 0.5 (count):"]
        lines += [f"- {agent}: {r['most_likely_instead']}" for agent, r in results.items()]
    else:
        lines += [
            "| agent | " + " | ".join(map(str, cfg.lengths)) + " |",
            "|---|" + "---|" * len(cfg.lengths),
        ]
        for agent, r in results.items():
            lines.append(
                f"| {agent} | " + " | ".join(f"{r['p_eos'][str(n)]:.3f}" for n in cfg.lengths) + " |"
            )
    table = "\n".join(lines)
    print(table)
    out = {"config": {**dataclasses.asdict(cfg), "out": str(cfg.out)}, "results": results}
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.out / "results.json", out)
    write_text_atomic(cfg.out / "table.md", table + "\n")
    return out


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.probes")
