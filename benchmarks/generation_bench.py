"""Backspace generation against Hugging Face ``generate``, over model sizes and batch sizes.

For each model size (``LAYERSxWIDTH``) and batch size, on the device found (GPU if any), three ways to write
``new_tokens`` final tokens per row after a ``prompt_length``-token prompt (eos is masked so every row writes
exactly that many):

- ``hf``: ``model.generate(do_sample=True)`` of the same model, no backspace (the baseline);
- ``ours_no_backspace``: :meth:`LMPolicy.generate` with ``allow_backspace=False``;
- ``ours_backspace``: :meth:`LMPolicy.generate` where a logits processor adds a constant to the
  ``<backspace>`` logit, calibrated so that backspace has probability ``p_backspace`` on average where it is
  allowed (about 10% of the actions are backspaces, each one undoing a token, so more actions are taken than
  final tokens are written).

Every token, deleted or not, needs a forward, and a batch takes as many forward steps as its row with the most
deletions: ``forward_steps`` (of the backspace run) over ``new_tokens`` is that cost, reported beside the ratio;
``ratio_no_backspace * new_tokens / forward_steps`` is about what the backspace run would reach if a sampling
round after a backspace cost nothing (the rows that finish early leave the forward, so it can do a little better).

The figure of merit is final tokens per second, as a ratio to ``hf``; the targets are ``>= 1.0`` without
backspace and ``>= 0.95`` with 10% backspaces. Timings are medians over ``repeats`` runs, interleaved across
the three methods after one warm-up each, with the device synchronised. Writes
``results/benchmarks/generation_bench.json`` and prints a table.

Usage (from the repository root)::

    python -m benchmarks.generation_bench                              # the sweep below
    python -m benchmarks.generation_bench --sizes 2x128 --batches 1 32 --repeats 3
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch._dynamo

from agents.common.resolve import resolve_device
from agents.policy import Architecture, LMPolicy
from benchmarks._common import cli, generation_processors, hf_generate, machine_info
from experiments.common import write_json_atomic
from seqgym.vocab import Vocabulary


@dataclass
class Config:
    """Benchmark settings."""

    architecture: Architecture = "gpt2"
    """model family of ``LMPolicy.from_config``: 'gpt2' (the README's figures) or 'llama' (the library default)"""
    sizes: tuple[str, ...] = ("2x128", "4x256", "8x512")
    """model sizes, LAYERSxWIDTH (heads: width / 64, at least 2)"""
    batches: tuple[int, ...] = (1, 32, 256)
    """rows per generate call"""
    n_tokens: int = 512
    """ordinary tokens in the vocabulary"""
    prompt_length: int = 8
    """prompt tokens per row"""
    new_tokens: int = 64
    """final generated tokens per row"""
    p_backspace: float = 0.1
    """mean probability of backspace where it is allowed (ours_backspace; a calibrated constant bias)"""
    repeats: int = 3
    """timed runs per method (median reported)"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'"""
    threads: int = 1
    """torch CPU threads"""
    seed: int = 0
    """seed of the models, prompts and sampling"""
    compiled: bool = False
    """also time both sides compiled with torch.compile: ours with ``generate(compiled=True)``, HF's with its
    static cache and ``compile_config`` (its own compiled path); the first call of each compiles and is left
    out of the timings (its seconds are reported)"""
    out: str = "results/benchmarks/generation_bench.json"
    """where the JSON results go (under results/, which git ignores)"""


def parse_size(size: str) -> tuple[int, int, int]:
    """``"4x256"`` -> ``(n_layer=4, n_embd=256, n_head=4)``."""
    try:
        layers, width = (int(x) for x in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"A size is LAYERSxWIDTH, e.g. '4x256'; got {size!r}.") from None
    heads = max(2, width // 64)
    if width % heads:
        raise ValueError(f"Width {width} of {size!r} is not divisible by its {heads} heads.")
    return layers, width, heads


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_cell(cfg: Config, policy: LMPolicy, batch: int, device: torch.device) -> dict[str, Any]:
    """The three methods at one model size and batch size."""
    v = policy.vocab
    rng = np.random.default_rng(cfg.seed)
    prompts = [rng.integers(0, v.n_tokens, cfg.prompt_length).tolist() for _ in range(batch)]
    bk, eos = v.backspace_id, v.eos_id
    max_length = cfg.prompt_length + cfg.new_tokens
    with_backspace, no_eos = generation_processors(
        policy, prompts, cfg.new_tokens, cfg.p_backspace, seed=cfg.seed
    )

    outs: dict[tuple[bool, bool], Any] = {}

    def ours(allow: bool, compiled: bool = False) -> Callable[[], Any]:
        def run() -> Any:
            g = torch.Generator(device=device).manual_seed(cfg.seed)
            outs[allow, compiled] = policy.generate(
                prompts,
                max_steps=10 * cfg.new_tokens,
                max_length=max_length,
                generator=g,
                allow_backspace=allow,
                logits_processor=with_backspace if allow else no_eos,
                compiled=compiled,
            )
            return outs[allow, compiled]

        return run

    input_ids = torch.tensor([[eos, *p] for p in prompts], device=device)  # the same BOS slot as ours

    def hf(compiled: bool = False) -> Callable[[], Any]:
        extra: dict[str, Any] = {}
        if compiled:  # HF's own compiled path: a static cache, and compile_config on any device
            from transformers import CompileConfig

            compile_config = CompileConfig(mode="default")
            if not hasattr(CompileConfig, "_compile_all_devices"):
                raise RuntimeError(
                    "This transformers version has no CompileConfig._compile_all_devices, which the benchmark sets "
                    "to compile HF's generate on any device; run without --compiled."
                )
            compile_config._compile_all_devices = True  # type: ignore[assignment]  # HF: accelerators only unless told
            extra = {"cache_implementation": "static", "compile_config": compile_config}

        def run() -> Any:
            return hf_generate(policy, input_ids, cfg.new_tokens, cfg.seed, **extra)

        return run

    fns = {"hf": hf(), "ours_no_backspace": ours(False), "ours_backspace": ours(True)}
    if cfg.compiled:
        fns.update(
            hf_compiled=hf(True),
            ours_compiled_no_backspace=ours(False, True),
            ours_compiled_backspace=ours(True, True),
        )
    first: dict[str, float] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(cfg.repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    final = batch * cfg.new_tokens
    assert all(len(s) == max_length for s in outs[True, False].sequences), (
        "every row writes new_tokens final tokens"
    )
    steps = sum(len(a) for a in outs[True, False].actions)
    forward_steps = max(len(a) - a.count(bk) for a in outs[True, False].actions)  # tokens of the busiest row
    rates = {name: final / statistics.median(t) for name, t in times.items()}
    extra: dict[str, Any] = {}
    if cfg.compiled:
        extra = {
            # vs HF compiled (like for like) and vs HF eager (its default)
            "ratio_compiled_no_backspace": rates["ours_compiled_no_backspace"] / rates["hf_compiled"],
            "ratio_compiled_backspace": rates["ours_compiled_backspace"] / rates["hf_compiled"],
            "ratio_compiled_backspace_vs_hf_eager": rates["ours_compiled_backspace"] / rates["hf"],
            "first_call_seconds": first,  # the compiled ones include their compilation
        }
    return {
        "batch": batch,
        "final_tokens": final,
        "backspace_fraction": sum(a.count(bk) for a in outs[True, False].actions) / steps,
        "seconds": times,
        "final_tokens_per_s": rates,
        "ratio_no_backspace": rates["ours_no_backspace"] / rates["hf"],
        "ratio_backspace": rates["ours_backspace"] / rates["hf"],
        "forward_steps": forward_steps,
        "forward_steps_per_final_token": forward_steps / cfg.new_tokens,
        **extra,
    }


def _cells(cfg: Config, vocab: Vocabulary, device: torch.device) -> list[dict[str, Any]]:
    """Every (size, batch) cell of the sweep."""
    cells = []
    for size in cfg.sizes:
        n_layer, n_embd, n_head = parse_size(size)
        policy = LMPolicy.from_config(
            vocab,
            architecture=cfg.architecture,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_positions=max(128, cfg.prompt_length + cfg.new_tokens + 2),
            seed=cfg.seed,
        ).to(device)
        policy.eval()
        for batch in cfg.batches:
            cells.append({"size": size, **bench_cell(cfg, policy, batch, device)})
    return cells


def main(cfg: Config) -> dict[str, Any]:
    import transformers

    transformers.logging.set_verbosity_error()  # HF generate may sample the pad id; its warning is noise here
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    vocab = Vocabulary([f"t{i}" for i in range(cfg.n_tokens)], separator=" ")
    # HF's compiled generate (a static cache: graphs per batch size) and ours compile the same forward, whose
    # graphs count against one recompile limit (8 by default; past it dynamo runs eagerly): raised for the run
    limit = max(torch._dynamo.config.cache_size_limit, 64 if cfg.compiled else 0)
    with torch._dynamo.config.patch(cache_size_limit=limit):
        cells = _cells(cfg, vocab, device)
    info = machine_info(transformers=transformers.__version__, device=str(device), torch_threads=cfg.threads)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    results = {
        "config": asdict(cfg),
        "machine": info,
        "results": cells,
        "targets": {"ratio_no_backspace": 1.0, "ratio_backspace": 0.95},
        "meets_targets": all(c["ratio_no_backspace"] >= 1.0 and c["ratio_backspace"] >= 0.95 for c in cells),
    }
    if cfg.compiled:
        results["meets_targets_compiled"] = all(
            c["ratio_compiled_no_backspace"] >= 1.0 and c["ratio_compiled_backspace"] >= 0.95 for c in cells
        )
    write_json_atomic(cfg.out, results)
    print_table(results)
    print(f"\nwrote {cfg.out}")
    return results


def print_table(res: dict[str, Any]) -> None:
    c, m = res["config"], res["machine"]
    print(
        f"{c['new_tokens']} final tokens per row after {c['prompt_length']} prompt tokens, vocab {c['n_tokens']}+3, "
        f"on {m.get('gpu', m['device'])} ({m['torch_threads']} thread(s)), torch {m['torch']}"
    )
    print(
        f"{'size':<8}{'batch':>6}{'HF tok/s':>11}{'ours tok/s':>12}{'x HF':>7}"
        f"{'bksp tok/s':>12}{'x HF':>7}{'bksp %':>8}{'fwd steps':>10}"
    )
    for r in res["results"]:
        t = r["final_tokens_per_s"]
        print(
            f"{r['size']:<8}{r['batch']:>6}{t['hf']:>11.0f}{t['ours_no_backspace']:>12.0f}"
            f"{r['ratio_no_backspace']:>7.2f}{t['ours_backspace']:>12.0f}{r['ratio_backspace']:>7.2f}"
            f"{r['backspace_fraction']:>8.1%}{r['forward_steps_per_final_token']:>9.2f}x"
        )
    print(f"targets >= 1.0x / >= 0.95x HF: {'met' if res['meets_targets'] else 'NOT met'} in every cell")
    if not c.get("compiled"):
        return
    print(
        "\ncompiled (torch.compile), both sides: ours generate(compiled=True), HF static cache + compile_config"
    )
    print(
        f"{'size':<8}{'batch':>6}{'HF tok/s':>11}{'ours tok/s':>12}{'x HF':>7}"
        f"{'bksp tok/s':>12}{'x HF':>7}{'x HF eager':>12}"
    )
    for r in res["results"]:
        t = r["final_tokens_per_s"]
        print(
            f"{r['size']:<8}{r['batch']:>6}{t['hf_compiled']:>11.0f}{t['ours_compiled_no_backspace']:>12.0f}"
            f"{r['ratio_compiled_no_backspace']:>7.2f}{t['ours_compiled_backspace']:>12.0f}"
            f"{r['ratio_compiled_backspace']:>7.2f}{r['ratio_compiled_backspace_vs_hf_eager']:>12.2f}"
        )
    print(
        f"targets, compiled vs compiled: {'met' if res['meets_targets_compiled'] else 'NOT met'} in every cell"
    )


if __name__ == "__main__":
    main(cli(Config))
