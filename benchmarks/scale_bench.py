"""Training and generation throughput of the agents on whatever device this machine has (GPU if any).

For each agent (``mle``, ``bc``) and each precision (``"no"``: float32; ``"bf16"``: autocast), on a model (GPT-2 by
default) built from a config and the Dyck demonstrations of ``seqgym/Dyck-v0``:

- training: ``agent.train(n_batches=updates)`` after a warm-up update, in (state, action) pairs trained on per
  second (``num_timesteps`` per second, the unit of ``learn``'s budget);
- generation: ``agent.generate`` of ``gen_batch`` rows with backspace (the agent's own sampling), in actions
  per second and in final tokens per second.

Timings are medians over ``repeats`` runs (the device synchronised around each). Writes
``results/benchmarks/scale_bench.json`` and prints a table.

Usage (from the repository root)::

    python -m benchmarks.scale_bench                       # cuda when available, else cpu
    python -m benchmarks.scale_bench --device cpu --n-layer 2 --n-embd 64
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from agents import make_agent
from agents.common.resolve import resolve_device
from agents.policy import Architecture
from benchmarks._common import cli, machine_info
from experiments.common import model_kwargs, write_json_atomic


@dataclass
class Config:
    """Benchmark settings."""

    architecture: Architecture = "gpt2"
    """model family of ``LMPolicy.from_config``: 'gpt2' (the README's figures) or 'llama' (the library default)"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'"""
    agents: tuple[str, ...] = ("mle", "bc")
    """agents to measure"""
    precisions: tuple[str, ...] = ("no", "bf16")
    """mixed_precision settings to measure ('no' = float32)"""
    n_layer: int = 4
    """transformer layers"""
    n_embd: int = 256
    """transformer width"""
    n_head: int = 4
    """attention heads"""
    batch_size: int = 64
    """trajectories per update"""
    n_demonstrations: int = 2048
    """Dyck demonstrations"""
    updates: int = 20
    """updates per timed training run"""
    gen_batch: int = 256
    """rows per timed generation"""
    repeats: int = 3
    """timed runs per measurement (median reported)"""
    threads: int = 1
    """torch CPU threads"""
    seed: int = 0
    """seed of models, data and sampling"""
    out: str = "results/benchmarks/scale_bench.json"
    """where the JSON results go (under results/, which git ignores)"""


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def measure(cfg: Config, name: str, precision: str, device: torch.device) -> dict[str, Any]:
    """Training and generation throughput of one agent at one precision."""
    agent = make_agent(
        name,
        env="seqgym/Dyck-v0",
        seed=cfg.seed,
        n_demonstrations=cfg.n_demonstrations,
        batch_size=cfg.batch_size,
        device=str(device),
        mixed_precision=precision,
        policy_kwargs=model_kwargs(cfg),
    )
    agent.train(n_batches=1)  # warm-up
    pairs: list[int] = []

    def train() -> None:
        before = agent.num_timesteps
        agent.train(n_batches=cfg.updates)
        pairs.append(agent.num_timesteps - before)

    train_times = _timed(train, device, cfg.repeats)
    agent.generate(min(cfg.gen_batch, 8), seed=cfg.seed)  # warm-up
    gens: list[Any] = []

    def generate() -> None:
        gens.append(agent.generate(cfg.gen_batch, seed=cfg.seed + len(gens)))

    gen_times = _timed(generate, device, cfg.repeats)
    t_train, t_gen = statistics.median(train_times), statistics.median(gen_times)
    n_actions = statistics.median(sum(len(a) for a in g.actions) for g in gens)
    n_final = statistics.median(sum(len(s) for s in g.sequences) for g in gens)
    return {
        "agent": name,
        "mixed_precision": precision,
        "train_pairs_per_s": statistics.median(pairs) / t_train,
        "train_seconds": train_times,
        "generate_actions_per_s": n_actions / t_gen,
        "generate_final_tokens_per_s": n_final / t_gen,
        "generate_seconds": gen_times,
    }


def main(cfg: Config) -> dict[str, Any]:
    import transformers

    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    info = machine_info(transformers=transformers.__version__, device=str(device), torch_threads=cfg.threads)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    rows = [measure(cfg, name, p, device) for name in cfg.agents for p in cfg.precisions]
    results = {"config": asdict(cfg), "machine": info, "results": rows}
    write_json_atomic(cfg.out, results)
    print_table(results)
    print(f"\nwrote {cfg.out}")
    return results


def print_table(res: dict[str, Any]) -> None:
    c, m = res["config"], res["machine"]
    print(
        f"{c['architecture']} {c['n_layer']} layers / {c['n_embd']} dims on {m.get('gpu', m['device'])}; "
        f"batch {c['batch_size']} "
        f"for training, {c['gen_batch']} rows for generation"
    )
    print(f"{'agent':<8}{'precision':>10}{'train pairs/s':>15}{'gen actions/s':>15}{'gen final tok/s':>17}")
    for r in res["results"]:
        print(
            f"{r['agent']:<8}{r['mixed_precision']:>10}{r['train_pairs_per_s']:>15.0f}"
            f"{r['generate_actions_per_s']:>15.0f}{r['generate_final_tokens_per_s']:>17.0f}"
        )


if __name__ == "__main__":
    main(cli(Config))
