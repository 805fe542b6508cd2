"""The training script that ``tests/test_distributed.py`` launches on several processes (``torchrun``).

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT``.
Every rank runs the same code, as a user's script would; rank 0 writes what the test compares into ``OUT``:

- ``first_<agent>.pt``: the parameters and loss after the first update of an MLE and a BC agent;
- ``run/``: a SequenceMatch run of 4 updates (its own samples generated on every rank) with checkpoints every
  2 updates, ``final.pt`` its parameters at the end, and ``resumed.pt`` the parameters of the same run resumed
  from the checkpoint of update 2 (on the same number of processes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

#: The library's default (Llama-style) family. torchrun's exit status is part of what the test checks: every rank
#: must exit cleanly after the script finishes (the process group is torn down before the interpreter finalises).
POLICY = {"architecture": "llama", "n_layer": 1, "n_embd": 16, "n_head": 2}


def first_update(name: str) -> dict[str, Any]:
    """Build an agent, take one update on its first global batch of 8, return parameters and loss."""
    from agents import make_agent

    agent = make_agent(
        name,
        env="seqgym/Dyck-v0",
        seed=0,
        n_demonstrations=16,
        batch_size=8,
        learning_rate=1e-2,
        device="cpu",
        policy_kwargs=POLICY,
    )
    losses: list[float] = []

    def record(locals_: dict[str, Any], _globals: dict[str, Any]) -> bool:
        losses.append(float(locals_["loss"]))
        return True

    agent.train(n_batches=1, callback=record)
    params = {k: v.detach().clone() for k, v in agent.policy.state_dict().items()}
    return {"params": params, "loss": losses[0], "num_timesteps": agent.num_timesteps}


def sequencematch(checkpoint_dir: str) -> Any:
    """A SequenceMatch agent whose updates 2.. generate its own samples (sharded over the ranks)."""
    from agents import make_agent

    return make_agent(
        "sequencematch",
        env="seqgym/Dyck-v0",
        seed=1,
        n_demonstrations=16,
        batch_size=8,
        bc_warmup_steps=1,
        replay_refresh_interval=2,
        device="cpu",
        checkpoint_every=2,
        checkpoint_dir=checkpoint_dir,
        policy_kwargs=POLICY,
    )


def main(out: Path) -> None:
    from agents import Agent
    from agents.common.distributed import process_group

    rank = process_group("cpu").rank  # initialises the group on every rank (as Agent.learn would)
    for name in ("mle", "bc"):
        result = first_update(name)
        if rank == 0:
            torch.save(result, out / f"first_{name}.pt")

    run = out / "run"
    agent = sequencematch(str(run))
    agent.train(n_batches=4)
    final = {k: v.detach().clone() for k, v in agent.policy.state_dict().items()}
    agent.save(out / "final_agent")  # rank 0 writes; the others return at once
    resumed = Agent.load(run / "step_00000002", device="cpu")
    resumed.train(n_batches=2)
    if rank == 0:
        torch.save(final, out / "final.pt")
        torch.save(
            {k: v.detach().clone() for k, v in resumed.policy.state_dict().items()}, out / "resumed.pt"
        )
    torch.save(  # every rank: the parameters must agree across ranks
        {"rank": rank, "final": final, "world": agent.process_group.world_size}, out / f"rank{rank}.pt"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
