"""The benchmark scripts run end to end on tiny settings and write their JSON results."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo

from agents.policy import LMPolicy
from benchmarks import (
    env_throughput,
    generation_bench,
    policy_bench,
    scale_bench,
    sequencematch_bench,
    train_throughput,
)
from benchmarks._common import cli, generation_processors
from seqgym.vocab import Vocabulary


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Any:
    """The scripts set torch's thread count for their measurement; the rest of the suite keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def positive(x: Any) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def saved(path: Path, returned: dict[str, Any]) -> dict[str, Any]:
    result = json.loads(path.read_text())
    assert result == json.loads(json.dumps(returned))
    assert result["machine" if "machine" in result else "env"]["cpu_count"] >= 1
    return result


def test_env_throughput(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    result = saved(out, env_throughput.main(env_throughput.Config(sizes=(1, 4), min_time=0.01, out=str(out))))
    assert {(r["env"], r["num_envs"]) for r in result["results"]} == {
        ("SequenceEnv", 1),
        ("SyncVectorEnv(SequenceEnv)", 1),
        ("SyncVectorEnv(SequenceEnv)", 4),
        ("SequenceVectorEnv", 1),
        ("SequenceVectorEnv", 4),
    }
    assert all(positive(r["steps_per_s"]) for r in result["results"])
    assert set(result["speedup_native_over_sync"]) == {"dyck @ 1", "dyck @ 4"}
    assert all(positive(x) for x in result["speedup_native_over_sync"].values())


def test_generation_processors_give_the_asked_backspace_rate() -> None:
    vocab = Vocabulary([f"t{i}" for i in range(40)], separator=" ")
    policy = LMPolicy.from_config(vocab, n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=0)
    prompts = [[i % 40, (3 * i) % 40] for i in range(64)]
    with_backspace, no_eos = generation_processors(policy, prompts, 20, 0.1)
    g = torch.Generator().manual_seed(1)
    out = policy.generate(prompts, max_steps=200, max_length=22, generator=g, logits_processor=with_backspace)
    actions = [a for row in out.actions for a in row]
    assert vocab.eos_id not in actions  # eos masked: every row writes its 20 tokens
    assert all(len(s) == 22 for s in out.sequences)
    assert abs(actions.count(vocab.backspace_id) / len(actions) - 0.1) < 0.03
    plain = policy.generate(prompts, max_steps=20, max_length=22, generator=g, logits_processor=no_eos)
    assert all(len(a) == 20 and vocab.eos_id not in a for a in plain.actions)
    with_backspace, _ = generation_processors(
        policy, [[]], 1, 0.1
    )  # one token a row: calibrates all the same
    assert torch.isfinite(with_backspace(torch.zeros(1, vocab.n_actions))[0, vocab.backspace_id])


def test_generation_bench(tmp_path: Path) -> None:
    out = tmp_path / "generation.json"
    cfg = generation_bench.Config(
        sizes=("1x32",), batches=(1, 4), n_tokens=16, prompt_length=2, new_tokens=6, repeats=1, out=str(out)
    )
    result = saved(out, generation_bench.main(cfg))
    assert [(c["size"], c["batch"]) for c in result["results"]] == [("1x32", 1), ("1x32", 4)]
    for c in result["results"]:
        assert c["final_tokens"] == c["batch"] * 6
        assert all(positive(x) for x in c["final_tokens_per_s"].values())
        assert c["forward_steps"] >= 6 and c["forward_steps_per_final_token"] == c["forward_steps"] / 6
    assert result["meets_targets"] == all(
        c["ratio_no_backspace"] >= 1.0 and c["ratio_backspace"] >= 0.95 for c in result["results"]
    )
    assert "meets_targets_compiled" not in result and "hf_compiled" not in c["final_tokens_per_s"]


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend (inductor) needs a C++ compiler",
)
def test_generation_bench_times_both_sides_compiled(tmp_path: Path) -> None:
    out = tmp_path / "generation.json"
    limit = torch._dynamo.config.cache_size_limit
    cfg = generation_bench.Config(
        architecture="llama",
        sizes=("1x32",),
        batches=(3,),
        n_tokens=16,
        prompt_length=2,
        new_tokens=6,
        repeats=1,
        compiled=True,
        out=str(out),
    )
    result = saved(out, generation_bench.main(cfg))
    (c,) = result["results"]
    assert result["meets_targets_compiled"] == (
        c["ratio_compiled_no_backspace"] >= 1.0 and c["ratio_compiled_backspace"] >= 0.95
    )
    assert torch._dynamo.config.cache_size_limit == limit  # the raised limit does not outlive the run
    rates = c["final_tokens_per_s"]
    assert set(rates) == {
        "hf",
        "ours_no_backspace",
        "ours_backspace",
        "hf_compiled",
        "ours_compiled_no_backspace",
        "ours_compiled_backspace",
    }
    assert all(positive(x) for x in rates.values())
    assert c["ratio_compiled_no_backspace"] == rates["ours_compiled_no_backspace"] / rates["hf_compiled"]
    assert c["ratio_compiled_backspace"] == rates["ours_compiled_backspace"] / rates["hf_compiled"]
    assert c["ratio_compiled_backspace_vs_hf_eager"] == rates["ours_compiled_backspace"] / rates["hf"]
    assert set(c["first_call_seconds"]) == set(rates)


def test_policy_bench(tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    cfg = policy_bench.Config(
        n_tokens=8,
        n_layer=1,
        n_embd=16,
        n_head=1,
        batch=2,
        prompt_length=2,
        n_steps=6,
        new_tokens=4,
        repeats=1,
        out=str(out),
    )
    result = saved(out, policy_bench.main(cfg))
    forward, generation = result["masked_forward"], result["generation"]
    assert forward["max_abs_diff_vs_per_state"] < 1e-4
    assert set(forward["methods"]) == {
        "one_pass_masked",
        "per_state",
        "per_history_batched",
        "all_states_one_batch",
    }
    assert all(positive(r["speedup_of_one_pass"]) for r in forward["methods"].values())
    assert set(generation["methods"]) == {
        "hf_generate_no_backspace",
        "ours_with_backspace",
        "ours_no_backspace",
    }
    assert all(positive(r["ratio_to_hf"]) for r in generation["methods"].values())
    assert generation["final_tokens"] == cfg.batch * cfg.new_tokens


def test_sequencematch_bench(tmp_path: Path) -> None:
    out = tmp_path / "sm.json"
    cfg = sequencematch_bench.Config(
        n_layer=1,
        n_embd=16,
        n_head=1,
        batch_size=4,
        n_demonstrations=16,
        bc_warmup_steps=1,
        replay_refresh_interval=2,
        repeats=1,
        budget=200,
        out=str(out),
    )
    result = saved(out, sequencematch_bench.main(cfg))
    update = result["update"]
    assert update["batch"]["replay_trajectories"] > 0
    assert positive(update["ratio"]) and positive(update["ratio_with_generation_share"])
    for agent in ("bc", "sequencematch"):
        run = result["training"][agent]
        assert run["expert_pairs"] >= cfg.budget and run["updates"] > 0
        assert positive(run["expert_pairs_per_s"])
    assert result["training"]["sequencematch"]["generated_tokens"] > 0
    per_update = {a: r["wall_s"] / r["updates"] for a, r in result["training"].items()}
    assert result["learn_ratio_per_update"] == pytest.approx(per_update["sequencematch"] / per_update["bc"])
    assert result["meets_targets"] == (update["ratio"] <= 1.5 and result["learn_ratio_per_update"] <= 1.5)


def test_train_throughput(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    cfg = train_throughput.Config(
        n_layer=1,
        n_embd=16,
        n_head=1,
        batch_size=4,
        max_length=8,
        n_demonstrations=16,
        updates=2,
        repeats=2,
        out=str(out),
    )
    result = saved(out, train_throughput.main(cfg))
    assert positive(result["ratio_mle_over_plain"])
    for method in ("mle_learn", "plain_loop"):
        row = result["methods"][method]
        assert len(row["runs"]) == cfg.repeats
        assert all(r["tokens"] > 0 and r["updates"] > 0 for r in row["runs"])
        assert positive(row["tokens_per_s"])


def test_cli_parses_flags_and_needs_tyro_only_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = cli(env_throughput.Config, args=["--sizes", "1", "4", "--min-time", "0.5", "--out", "x.json"])
    assert cfg == env_throughput.Config(sizes=(1, 4), min_time=0.5, out="x.json")
    monkeypatch.setitem(sys.modules, "tyro", None)  # import tyro now raises ImportError
    assert cli(env_throughput.Config, args=[]) == env_throughput.Config()
    with pytest.raises(SystemExit, match="need tyro"):
        cli(env_throughput.Config, args=["--seed", "1"])


def test_scale_bench(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    cfg = scale_bench.Config(
        device="cpu",
        agents=("mle",),
        precisions=("no", "bf16"),
        n_layer=1,
        n_embd=16,
        n_head=1,
        batch_size=4,
        n_demonstrations=16,
        updates=2,
        gen_batch=4,
        repeats=1,
        out=str(out),
    )
    result = saved(out, scale_bench.main(cfg))
    assert [(r["agent"], r["mixed_precision"]) for r in result["results"]] == [("mle", "no"), ("mle", "bf16")]
    for r in result["results"]:
        assert positive(r["train_pairs_per_s"]) and positive(r["generate_final_tokens_per_s"])
