"""Speed and memory of the LM policy's backspace-aware code paths, against their plain baselines.

(a) The one-pass masked forward (``LMPolicy.trajectory_logits``) vs running the model on every visited
    state, over action histories of ``n_steps`` steps with ``p_backspace`` backspaces. Baselines: one
    forward per state (the definition), one batched forward per history, one forward over all states.
(b) Generation with backspace on the KV cache (``LMPolicy.generate``; a logit processor adds a constant to
    the backspace logit, calibrated so that backspace has probability ``p_backspace_gen`` on average where it is
    allowed: :func:`benchmarks._common.generation_processors`) vs Hugging Face ``model.generate``
    without backspace, in tokens of final text per second (both write exactly ``new_tokens`` final tokens
    per row).

Timings are medians over ``repeats`` runs, interleaved across methods, after one warm-up each. Peak memory
is the peak resident-set growth of one run in a forked child process (torch's CPU allocations are invisible
to ``tracemalloc``). Writes ``results/benchmarks/policy_bench.json`` and prints a table.

Usage (from the repository root)::

    python -m benchmarks.policy_bench            # defaults below
    python -m benchmarks.policy_bench --threads 2 --repeats 7
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from agents.policy import Architecture, LMPolicy
from benchmarks._common import (
    cli,
    generation_processors,
    hf_generate,
    interleaved_times,
    load_average,
    machine_info,
    peak_memory_mb,
)
from experiments.common import model_kwargs, write_json_atomic
from seqgym.dynamics import apply_action, backspace_allowed, states
from seqgym.vocab import Vocabulary


@dataclass
class Config:
    """Benchmark settings (one model and batch for every measurement)."""

    architecture: Architecture = "gpt2"
    """model family of ``LMPolicy.from_config``: 'gpt2' (the README's figures) or 'llama' (the library default)"""
    n_tokens: int = 32
    """ordinary tokens in the vocabulary"""
    n_layer: int = 2
    """transformer layers"""
    n_embd: int = 128
    """transformer width"""
    n_head: int = 2
    """attention heads"""
    batch: int = 32
    """rows per batch"""
    prompt_length: int = 8
    """prompt tokens per row"""
    n_steps: int = 64
    """(a) actions per history"""
    p_backspace: float = 0.2
    """(a) fraction of backspace actions in the histories"""
    new_tokens: int = 64
    """(b) final generated tokens per row"""
    p_backspace_gen: float = 0.1
    """(b) mean probability of backspace where it is allowed (a calibrated constant bias)"""
    repeats: int = 5
    """timed runs per measurement (median reported)"""
    threads: int = 1
    """torch CPU threads"""
    seed: int = 0
    """seed of the model, the histories and the sampling"""
    out: str = "results/benchmarks/policy_bench.json"
    """where the JSON results go (under results/, which git ignores)"""


def make_histories(cfg: Config, vocab: Vocabulary, rng: np.random.Generator) -> tuple[list, list]:
    """Random prompts and histories with ``p_backspace`` backspaces (never at the prompt boundary)."""
    prompts, histories = [], []
    for _ in range(cfg.batch):
        prompt = rng.integers(0, vocab.n_tokens, cfg.prompt_length).tolist()
        acts: list[int] = []
        state = list(prompt)
        for _ in range(cfg.n_steps):
            if backspace_allowed(len(state), len(prompt)) and rng.random() < cfg.p_backspace:
                acts.append(vocab.backspace_id)
            else:
                acts.append(int(rng.integers(0, vocab.n_tokens)))
            apply_action(state, len(prompt), acts[-1], vocab)
        prompts.append(prompt)
        histories.append(acts)
    return prompts, histories


def bench_masked_forward(cfg: Config, policy: LMPolicy, rng: np.random.Generator) -> dict[str, Any]:
    v = policy.vocab
    prompts, histories = make_histories(cfg, v, rng)
    visited = [states(p, a, v) for p, a in zip(prompts, histories)]
    n_states = sum(len(s) for s in visited)
    bksp = sum(a.count(v.backspace_id) for a in histories) / (cfg.batch * cfg.n_steps)

    def one_pass() -> torch.Tensor:
        with torch.inference_mode():
            return policy.trajectory_logits(prompts, histories).logits

    def per_state() -> None:
        with torch.inference_mode():
            for p, ss in zip(prompts, visited):
                for s in ss:
                    policy.state_logits([s], [len(p)])

    def per_history() -> None:
        with torch.inference_mode():
            for p, ss in zip(prompts, visited):
                policy.state_logits(ss, [len(p)] * len(ss))

    def all_states() -> None:
        with torch.inference_mode():
            policy.state_logits(
                [s for ss in visited for s in ss], [len(p) for p, ss in zip(prompts, visited) for _ in ss]
            )

    # correctness on this very batch
    got = one_pass()
    worst = 0.0
    with torch.inference_mode():
        for b, (p, ss) in enumerate(zip(prompts, visited)):
            ref = policy.state_logits(ss, [len(p)] * len(ss))
            finite = torch.isfinite(ref)
            worst = max(worst, float((got[b, : len(ss)][finite] - ref[finite]).abs().max()))

    fns = {
        "one_pass_masked": one_pass,
        "per_state": per_state,
        "per_history_batched": per_history,
        "all_states_one_batch": all_states,
    }
    rows: dict[str, Any] = {}
    for name, times in interleaved_times(fns, cfg.repeats).items():
        fn = fns[name]
        rows[name] = {
            "seconds": statistics.median(times),
            "times": times,
            "states_per_s": n_states / statistics.median(times),
            "peak_mem_mb": peak_memory_mb(fn),
        }
    base = rows["one_pass_masked"]["seconds"]
    for r in rows.values():
        r["speedup_of_one_pass"] = r["seconds"] / base
    return {
        "n_states": n_states,
        "backspace_fraction": bksp,
        "max_abs_diff_vs_per_state": worst,
        "methods": rows,
        "target": ">= 10x faster than per_state",
        "meets_target": rows["per_state"]["speedup_of_one_pass"] >= 10,
    }


def bench_generation(cfg: Config, policy: LMPolicy, rng: np.random.Generator) -> dict[str, Any]:
    v = policy.vocab
    prompts = [rng.integers(0, v.n_tokens, cfg.prompt_length).tolist() for _ in range(cfg.batch)]
    bk, eos = v.backspace_id, v.eos_id
    force_backspace, no_eos = generation_processors(
        policy, prompts, cfg.new_tokens, cfg.p_backspace_gen, seed=cfg.seed
    )

    max_length = cfg.prompt_length + cfg.new_tokens
    stats: dict[bool, Any] = {}

    def ours(allow_backspace: bool) -> Callable[[], Any]:
        def run() -> Any:
            g = torch.Generator().manual_seed(cfg.seed)
            out = policy.generate(
                prompts,
                max_steps=10 * cfg.new_tokens,
                max_length=max_length,
                generator=g,
                allow_backspace=allow_backspace,
                logits_processor=force_backspace if allow_backspace else no_eos,
            )
            stats[allow_backspace] = out
            return out

        return run

    input_ids = torch.tensor([[eos, *p] for p in prompts])  # (B, 1+P): the same BOS slot as ours

    def hf() -> torch.Tensor:
        return hf_generate(policy, input_ids, cfg.new_tokens, cfg.seed)

    fns = {
        "hf_generate_no_backspace": hf,
        "ours_with_backspace": ours(True),
        "ours_no_backspace": ours(False),
    }
    rows: dict[str, Any] = {}
    final_tokens = cfg.batch * cfg.new_tokens
    for name, times in interleaved_times(fns, cfg.repeats).items():
        fn = fns[name]
        rows[name] = {
            "seconds": statistics.median(times),
            "times": times,
            "final_tokens_per_s": final_tokens / statistics.median(times),
            "peak_mem_mb": peak_memory_mb(fn),
        }
    out = stats[True]
    assert all(len(s) == max_length for s in out.sequences), "every row must write new_tokens final tokens"
    steps = sum(len(a) for a in out.actions)
    rows["ours_with_backspace"]["steps_per_s"] = steps / rows["ours_with_backspace"]["seconds"]
    hf_rate = rows["hf_generate_no_backspace"]["final_tokens_per_s"]
    for r in rows.values():
        r["ratio_to_hf"] = r["final_tokens_per_s"] / hf_rate
    return {
        "final_tokens": final_tokens,
        "steps_with_backspace": steps,
        "backspace_fraction": sum(a.count(bk) for a in out.actions) / steps,
        "methods": rows,
        "target": ">= 0.8x HF generate final tokens/s",
        "meets_target": rows["ours_with_backspace"]["ratio_to_hf"] >= 0.8,
    }


def main(cfg: Config) -> dict[str, Any]:
    import transformers

    transformers.logging.set_verbosity_error()  # HF generate may sample the pad id; its warning is noise here
    torch.set_num_threads(cfg.threads)
    load_before = load_average()
    vocab = Vocabulary([f"t{i}" for i in range(cfg.n_tokens)], separator=" ")
    policy = LMPolicy.from_config(
        vocab,
        **model_kwargs(cfg),
        n_positions=max(128, cfg.prompt_length + cfg.n_steps + cfg.new_tokens + 2),
        seed=cfg.seed,
    )
    policy.eval()
    rng = np.random.default_rng(cfg.seed)
    masked_forward = bench_masked_forward(cfg, policy, rng)
    generation = bench_generation(cfg, policy, rng)
    results = {
        "config": asdict(cfg),
        "env": machine_info(
            transformers=transformers.__version__,
            torch_threads=torch.get_num_threads(),
            attn_implementation=policy.model.config._attn_implementation,
            load_average_1min_before=load_before,
        ),
        "masked_forward": masked_forward,
        "generation": generation,
    }
    write_json_atomic(cfg.out, results)
    print_table(results)
    print(f"\nwrote {cfg.out}")
    return results


def print_table(res: dict[str, Any]) -> None:
    c, e = res["config"], res["env"]
    print(
        f"{c['architecture']} {c['n_layer']} layers / {c['n_embd']} dims / {c['n_head']} heads, "
        f"vocab {c['n_tokens']}+3, "
        f"batch {c['batch']}, torch {e['torch']} ({e['torch_threads']} thread(s)), "
        f"transformers {e['transformers']}, attn={e['attn_implementation']}"
    )
    m = res["masked_forward"]
    print(
        f"\n(a) logits of every state: {c['n_steps']}-step histories, "
        f"{m['backspace_fraction']:.0%} backspaces, {m['n_states']} states; "
        f"max |diff| vs per-state = {m['max_abs_diff_vs_per_state']:.2e}"
    )
    print(f"{'method':<26}{'median s':>10}{'states/s':>12}{'one-pass x':>12}{'peak MiB':>10}")
    for name, r in m["methods"].items():
        mem = "n/a" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}"
        print(
            f"{name:<26}{r['seconds']:>10.4f}{r['states_per_s']:>12.0f}{r['speedup_of_one_pass']:>12.1f}{mem:>10}"
        )
    print(f"target {m['target']}: {'met' if m['meets_target'] else 'NOT met'}")
    g = res["generation"]
    print(
        f"\n(b) generation: {c['new_tokens']} final tokens per row, "
        f"backspace on {g['backspace_fraction']:.1%} of {g['steps_with_backspace']} steps"
    )
    print(f"{'method':<26}{'median s':>10}{'final tok/s':>12}{'vs HF':>8}{'peak MiB':>10}")
    for name, r in g["methods"].items():
        mem = "n/a" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}"
        print(
            f"{name:<26}{r['seconds']:>10.4f}{r['final_tokens_per_s']:>12.0f}{r['ratio_to_hf']:>8.2f}{mem:>10}"
        )
    print(f"target {g['target']}: {'met' if g['meets_target'] else 'NOT met'}")


if __name__ == "__main__":
    main(cli(Config))
