"""Training throughput of ``MLE.learn`` against a plain hand-written PyTorch loop on the same model and data.

Both train the same model (GPT-2 by default; built by ``LMPolicy.from_config`` with the same seed) by teacher-forced
cross-entropy, summed over tokens and averaged over sequences, on the same demonstrations (Dyck, as in
``seqgym/Dyck-v0``) with the same batch size, AdamW settings and gradient clipping:

- ``mle_learn``: ``agent.learn(budget)``, everything included (epoch sampling, the policy's masked forward,
  backspace masking, NaN check, learning-rate schedule, SB3 logger, callbacks plumbing);
- ``plain_loop``: a right-padded tensor of all sequences built once, then per update: index a batch, one
  ``model(input_ids, attention_mask)`` call, ``F.cross_entropy(..., ignore_index=pad, reduction="sum") / B``,
  ``backward``, ``clip_grad_norm_``, ``step``.

Throughput is tokens trained on per second (the (state, action) pairs of ``num_timesteps``; for the plain
loop, the non-pad targets). Each repeat runs ``updates`` updates of each method, interleaved round-robin after
one warm-up each; the medians are reported. Peak memory is the peak resident-set growth of one repeat in a
forked child process (CPU), or ``torch.cuda.max_memory_allocated`` (CUDA). Writes
``results/benchmarks/train_throughput.json`` and prints a table. Target: ``mle_learn >= 0.9x plain_loop``.

Usage (from the repository root)::

    python -m benchmarks.train_throughput                 # defaults below
    python -m benchmarks.train_throughput --n-embd 256 --n-layer 4 --repeats 7
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from agents import make_agent
from agents.mle import MLE
from agents.policy import Architecture, LMPolicy
from benchmarks._common import (
    cli,
    interleaved_times,
    load_average,
    machine_info,
    peak_memory_mb,
)
from experiments.common import model_kwargs, write_json_atomic
from seqgym.data import collect
from seqgym.env import SequenceEnv
from seqgym.sources.dyck import Dyck


@dataclass
class Config:
    """Benchmark settings (one model, data set and batch size for both methods)."""

    architecture: Architecture = "gpt2"
    """model family of ``LMPolicy.from_config``: 'gpt2' (the README's figures) or 'llama' (the library default)"""
    n_layer: int = 2
    """transformer layers"""
    n_embd: int = 64
    """transformer width"""
    n_head: int = 2
    """attention heads"""
    batch_size: int = 32
    """sequences per update"""
    n_types: int = 2
    """Dyck bracket kinds"""
    max_length: int = 16
    """Dyck brackets per sequence at most (eos not counted)"""
    n_demonstrations: int = 1000
    """sequences in the data set"""
    updates: int = 40
    """updates per timed repeat"""
    repeats: int = 5
    """timed repeats per method (median reported)"""
    threads: int = 1
    """torch CPU threads"""
    device: str = "cpu"
    """'cpu' or 'cuda'"""
    seed: int = 0
    """seed of the model, the data and the batch order"""
    out: str = "results/benchmarks/train_throughput.json"
    """where the JSON results go (under results/, which git ignores)"""


class PlainLoop:
    """The hand-written reference: a padded tensor built once, then index / forward / CE / step."""

    def __init__(self, cfg: Config, agent: MLE, device: torch.device) -> None:
        v = agent.vocab
        self.policy = LMPolicy.from_config(v, **model_kwargs(cfg), seed=cfg.seed).to(device)
        self.model = self.policy.model
        self.model.train()
        c = agent.config
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=c.learning_rate,
            betas=c.adam_betas,
            eps=c.adam_eps,
            weight_decay=c.weight_decay,
        )
        self.max_grad_norm = c.max_grad_norm
        self.pad = v.pad_id
        seqs = [
            [v.eos_id, *t.prompt.tolist(), *t.actions.tolist()] for t in agent.demonstrations
        ]  # BOS first
        width = max(len(s) for s in seqs)
        x = np.full((len(seqs), width), self.pad, dtype=np.int64)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = s
        self.data = self.policy.token_map.to_model(torch.from_numpy(x)).to(device)  # (N, W) model ids
        self.lengths = torch.tensor([len(s) for s in seqs], device=device)  # (N,)
        self.pad_model = int(self.policy.token_map.env_to_model[self.pad])
        self.batch_size = cfg.batch_size
        self.rng = np.random.default_rng(cfg.seed)
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0
        self.device = device

    def _indices(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self.perm):
            self.perm, self.pos = self.rng.permutation(len(self.lengths)), 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return torch.from_numpy(idx).to(self.device)

    def run(self, updates: int) -> int:
        """``updates`` updates; returns the tokens trained on."""
        tokens = 0
        for _ in range(updates):
            idx = self._indices()
            width = int(self.lengths[idx].max())
            x = self.data[idx, :width]  # (B, W)
            inp, tgt = x[:, :-1], x[:, 1:]  # (B, W-1)
            mask = (torch.arange(width - 1, device=x.device)[None, :] < self.lengths[idx, None] - 1).long()
            logits = self.model(input_ids=inp, attention_mask=mask, use_cache=False).logits  # (B, W-1, V)
            tgt = tgt.masked_fill(mask == 0, -100)
            loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="sum")
            loss = loss / x.shape[0]
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.opt.step()
            tokens += int(mask.sum())
        return tokens


def main(cfg: Config) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    load_before = load_average()
    env = SequenceEnv(
        Dyck(cfg.n_types, max_depth=4, max_length=cfg.max_length),
        max_length=cfg.max_length + 1,
        max_steps=3 * (cfg.max_length + 1),
    )
    demos = collect(env.source, cfg.n_demonstrations, rng=cfg.seed)
    agent = make_agent(
        "mle",
        env=env,
        demonstrations=demos,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        device=cfg.device,
        policy_kwargs=model_kwargs(cfg),
    )
    assert isinstance(agent, MLE)
    plain = PlainLoop(cfg, agent, device)
    mean_tokens = float(np.mean([len(t) for t in demos]))
    budget = int(cfg.updates * cfg.batch_size * mean_tokens)  # about `updates` updates

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def mle_learn() -> tuple[int, int]:
        t0, u0 = agent.num_timesteps, agent.n_updates
        agent.learn(budget, reset_num_timesteps=False)
        sync()
        return agent.num_timesteps - t0, agent.n_updates - u0

    def plain_loop() -> tuple[int, int]:
        tokens = plain.run(cfg.updates)
        sync()
        return tokens, cfg.updates

    fns: dict[str, Callable[[], tuple[int, int]]] = {"mle_learn": mle_learn, "plain_loop": plain_loop}
    counts: dict[str, list[tuple[int, int]]] = {name: [] for name in fns}  # (tokens, updates) of every call

    def counted(name: str) -> Callable[[], None]:
        return lambda: counts[name].append(fns[name]())

    times = interleaved_times({name: counted(name) for name in fns}, cfg.repeats)
    rows: dict[str, Any] = {}
    for name, ts in times.items():
        rs = [
            {"seconds": dt, "tokens": tokens, "updates": updates, "tokens_per_s": tokens / dt}
            for dt, (tokens, updates) in zip(ts, counts[name][1:])  # [0] is the warm-up
        ]
        rows[name] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "updates_per_s": statistics.median(r["updates"] / r["seconds"] for r in rs),
            "runs": rs,
            "peak_mem_mb": peak_memory_mb(fns[name], device),
        }
    ratio = rows["mle_learn"]["tokens_per_s"] / rows["plain_loop"]["tokens_per_s"]
    result = {
        "benchmark": "train_throughput",
        "config": asdict(cfg),
        "n_parameters": sum(p.numel() for p in agent.policy.parameters()),
        "mean_tokens_per_sequence": mean_tokens,
        "methods": rows,
        "ratio_mle_over_plain": ratio,
        "target": "mle_learn >= 0.9x plain_loop tokens/s",
        "meets_target": ratio >= 0.9,
        "machine": machine_info(
            device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            load_average_1min_before=load_before,
        ),
    }
    write_json_atomic(cfg.out, result)

    print(f"training throughput, {result['n_parameters']:,} parameters, batch {cfg.batch_size}, {device}")
    print(f"{'method':<12} {'tokens/s':>10} {'updates/s':>10} {'peak MiB':>9}")
    for name, r in rows.items():
        mem = "n/a" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}"
        print(f"{name:<12} {r['tokens_per_s']:>10.0f} {r['updates_per_s']:>10.1f} {mem:>9}")
    print(
        f"ratio mle_learn / plain_loop = {ratio:.3f} (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})"
    )
    print(f"wrote {cfg.out}")
    return result


if __name__ == "__main__":
    main(cli(Config))
