"""Multi-process training on CPU: 2 gloo processes launched by torchrun, as a user would launch a script.

One launch of ``tests/distributed_worker.py`` (about 20 s) checks that a 2-process update equals the 1-process
update on the same global batch (MLE and BC), that ranks hold the same parameters, that SequenceMatch (whose own
samples are generated on every rank and gathered) trains and writes checkpoints from rank 0 that load in one
process, and that resuming from a checkpoint on 2 processes continues the run exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import distributed_worker
import pytest
import torch

from agents.common.distributed import ProcessGroup, process_group

ROOT = Path(__file__).resolve().parents[2]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "distributed_worker.py"),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


@pytest.mark.parametrize("name", ["mle", "bc"])
def test_first_update_equals_one_process_on_the_global_batch(launched: Path, name: str) -> None:
    two: dict[str, Any] = torch.load(launched / f"first_{name}.pt", weights_only=True)
    one = distributed_worker.first_update(name)  # this process: no process group, the whole batch
    assert two["num_timesteps"] == one["num_timesteps"]
    assert abs(two["loss"] - one["loss"]) < 1e-5
    assert _max_diff(two["params"], one["params"]) < 1e-5


def test_ranks_agree_and_checkpoint_loads_in_one_process(launched: Path) -> None:
    from agents import Agent

    r0 = torch.load(launched / "rank0.pt", weights_only=True)
    r1 = torch.load(launched / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    assert _max_diff(r0["final"], r1["final"]) == 0.0  # DDP keeps the replicas identical
    steps = sorted(p.name for p in (launched / "run").glob("step_*"))
    assert steps == ["step_00000002", "step_00000004"]  # rank 0 alone wrote, nothing half-written
    agent = Agent.load(launched / "final_agent", device="cpu")
    assert agent.n_updates == 4 and len(agent.replay_buffer) > 0
    final = torch.load(launched / "final.pt", weights_only=True)
    assert _max_diff(dict(agent.policy.state_dict()), final) == 0.0
    last = Agent.load(launched / "run" / "step_00000004", device="cpu")
    assert _max_diff(dict(last.policy.state_dict()), final) == 0.0
    out = agent.generate(4, seed=0)
    assert len(out.sequences) == 4


def test_resume_on_the_same_process_count_is_exact(launched: Path) -> None:
    final = torch.load(launched / "final.pt", weights_only=True)
    resumed = torch.load(launched / "resumed.pt", weights_only=True)
    assert _max_diff(final, resumed) == 0.0


def test_single_process_group_and_shards() -> None:
    assert process_group() == ProcessGroup(rank=0, world_size=1, local_rank=0)
    group = ProcessGroup(rank=1, world_size=2, local_rank=1)
    assert group.shard(8) == slice(4, 8) and not group.is_main
    assert [ProcessGroup(rank=r, world_size=3, local_rank=r).split(7) for r in range(3)] == [
        slice(0, 3),
        slice(3, 5),
        slice(5, 7),
    ]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        group.shard(7)


def _grads_of(agent: Any, batch: Any) -> tuple[float, list[torch.Tensor]]:
    agent.policy.train()
    agent.optimizer.zero_grad(set_to_none=True)
    loss, _ = agent._loss(batch)
    loss.backward()
    grads = [p.grad.detach().clone() for p in agent.policy.parameters()]
    agent.optimizer.zero_grad(set_to_none=True)
    return float(loss), grads


@pytest.mark.parametrize("name", ["mle", "bc", "sequencematch"])
def test_mean_of_shard_losses_and_gradients_is_the_global_one(name: str) -> None:
    """What DDP relies on: each shard's loss is a mean over its items, so the mean over ranks of the shards'
    losses and gradients is the loss and gradient of the global batch."""
    from agents import make_agent

    extra: dict[str, Any] = {"bc_warmup_steps": 0, "expert_fraction": 0.5} if name == "sequencematch" else {}
    agent = make_agent(
        name,
        env="seqgym/Dyck-v0",
        seed=3,
        n_demonstrations=16,
        batch_size=8,
        device="cpu",
        policy_kwargs=distributed_worker.POLICY,
        **extra,
    )
    batch = agent.sample_batch()
    loss, grads = _grads_of(agent, batch)
    shards = [agent._shard_batch(batch, ProcessGroup(rank=r, world_size=2, local_rank=r)) for r in range(2)]
    if name == "sequencematch":
        assert batch.replay is not None and all(len(s.replay) == len(batch.replay) // 2 for s in shards)
        assert [s.n_mixed_expert for s in shards] == [batch.n_mixed_expert // 2] * 2
    parts = [_grads_of(agent, s) for s in shards]
    assert abs(sum(p[0] for p in parts) / 2 - loss) < 1e-5
    for k, g in enumerate(grads):
        assert torch.allclose((parts[0][1][k] + parts[1][1][k]) / 2, g, atol=1e-6)


def test_the_group_made_here_is_torn_down_at_exit_and_a_users_own_group_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One gloo process stands in for a launch: ``process_group`` initialises the group, registers the exit hook
    once, and the hook destroys that group, but not one the user made after destroying it."""
    import socket

    from agents.common import distributed

    dist = torch.distributed
    assert not dist.is_initialized()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(sys.modules, "accelerate", None)  # torch.distributed's own initialisation
    monkeypatch.setattr(distributed, "launched_world_size", lambda: 2)  # as if launched on several processes
    monkeypatch.setattr(distributed, "_created", [])
    monkeypatch.setattr(distributed, "_registered", [])
    registered: list[Any] = []
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    try:
        assert process_group("cpu").world_size == 1 and dist.is_initialized()
        distributed._shutdown()
        assert not dist.is_initialized()
        process_group("cpu")  # initialised again: the hook is not registered twice
        assert registered == [distributed._shutdown]
        dist.destroy_process_group()  # the user tears ours down and makes their own
        dist.init_process_group(backend="gloo")
        distributed._shutdown()
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
