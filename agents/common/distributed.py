"""Multi-process training through an existing engine: the process group, the device and the data shard.

The same script runs on one process or on ``N`` (``torchrun --nproc_per_node N train.py`` or
``accelerate launch --num_processes N train.py``). Nothing here reimplements the engine: the process group is
found the way Accelerate and the Hugging Face ``Trainer`` find it (Accelerate's ``PartialState`` when Accelerate
is installed, else ``torch.distributed`` with the launcher's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
variables), gradients are all-reduced by ``torch.nn.parallel.DistributedDataParallel``, and objects are
exchanged with ``torch.distributed`` collectives.

How an agent uses it (see :mod:`agents.common.training`):

- every rank draws the same global batch of ``batch_size`` items from the same seeded generator, trains on its
  contiguous shard of ``batch_size / N`` items (:meth:`ProcessGroup.shard`), and DDP averages the gradients, so
  an update equals the one-process update on the global batch (losses are sums over a shard divided by the
  shard's size);
- work a batch needs that is expensive and random, such as SequenceMatch's own samples, is split across ranks and
  gathered (:meth:`ProcessGroup.all_gather_object`), so every rank holds the same data afterwards;
- the state of every rank is therefore the same: rank 0 alone logs, shows the progress bar and writes
  checkpoints, and a checkpoint resumes exactly on the same number of processes (or loads in one).

Example (one process: the group of one, no engine needed)::

    >>> group = process_group()
    >>> group.world_size, group.rank, group.is_main
    (1, 0, True)
    >>> group.shard(8)
    slice(0, 8, None)
"""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ProcessGroup", "is_main_process", "launched_world_size", "local_rank", "process_group"]


def launched_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``, as torchrun and ``accelerate launch``
    set it; 1 when not launched by one), or of an already initialised ``torch.distributed`` group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """False only on the ranks other than 0 of an initialised ``torch.distributed`` process group."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 when not launched by a launcher): the GPU it
    uses."""
    try:
        return max(0, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        return 0


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands among the processes training one agent.

    Attributes:
        rank: this process's index, ``0 .. world_size-1``.
        world_size: the number of processes (1: no process group, every collective is the identity).
        local_rank: this process's index on its machine.
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (``n`` must split evenly, so that every rank's loss is a
        mean over as many items and DDP's average of the gradients is the gradient of the global batch).

        Raises:
            ValueError: ``n`` is not a multiple of ``world_size``.
        """
        if n % self.world_size:
            raise ValueError(
                f"{n} items do not split evenly over {self.world_size} processes; use a batch size that is a "
                f"multiple of the number of processes (e.g. {self.world_size * max(1, n // self.world_size)})."
            )
        k = n // self.world_size
        return slice(self.rank * k, (self.rank + 1) * k)

    def split(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items when they need not split evenly (the first ``n % N``
        ranks take one more): for work whose results are gathered, e.g. generation."""
        k, extra = divmod(n, self.world_size)
        start = self.rank * k + min(self.rank, extra)
        return slice(start, start + k + (1 if self.rank < extra else 0))

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` with one process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Each name's mean over the ranks that have it (``values`` itself with one process)."""
        if not self.distributed:
            return values
        got = self.all_gather_object(values)
        names = dict.fromkeys(name for g in got for name in g)
        return {n: sum(g[n] for g in got if n in g) / sum(n in g for g in got) for n in names}

    def all_reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over the ranks (``x`` itself with one process); ``x`` is not modified."""
        if not self.distributed:
            return x
        y = x.clone()
        torch.distributed.all_reduce(y)
        return y / self.world_size

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing with one process)."""
        if self.distributed:
            torch.distributed.barrier()

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` inside ``DistributedDataParallel`` (gradients all-reduced during ``backward``).

        Buffers are not broadcast at each forward (they are equal on every rank), so a forward without gradient
        (generation, model noise) runs no collective and ranks may run different numbers of them.
        """
        from torch.nn.parallel import DistributedDataParallel

        ids = None
        if device.type == "cuda":
            ids = [device.index if device.index is not None else torch.cuda.current_device()]
        return DistributedDataParallel(
            model,
            device_ids=ids,
            broadcast_buffers=False,
        )


_SINGLE = ProcessGroup(rank=0, world_size=1, local_rank=0)


def _use_cpu(device: str | torch.device | None) -> bool:
    if device is not None and torch.device(device).type == "cpu" and str(device) != "auto":
        return True
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"):
        return True
    return not torch.cuda.is_available()


#: The default group this module initialised (empty when it initialised none, or that group is gone), and
#: whether :func:`_shutdown` is registered with ``atexit``.
_created: list[Any] = []
_registered: list[bool] = []


def _shutdown() -> None:
    """Tear down the group this module initialised, before the interpreter finalises.

    Left to interpreter shutdown, the gloo backend's worker threads can outlive the objects that reference the
    group (DDP wrappers in reference cycles are only freed by the final garbage collection), and a thread torn
    down then aborts the process (``terminate called without an active exception``) although the script
    finished: the launcher reports a failed run. Collecting those cycles first and destroying the group while
    the interpreter still runs makes the exit clean. A group the caller made (also one made after destroying
    ours) is left alone.
    """
    dist = torch.distributed
    gc.collect()
    if _created and dist.is_available() and dist.is_initialized() and dist.group.WORLD is _created[0]:
        dist.destroy_process_group()
    _created.clear()


def process_group(device: str | torch.device | None = None) -> ProcessGroup:
    """The process group of this run, initialised on first use when a launcher started several processes.

    Found as Accelerate and the ``Trainer`` find it: an already initialised ``torch.distributed`` group is used
    as it is; else, when the launcher's ``WORLD_SIZE`` is above 1, Accelerate's ``PartialState`` initialises
    it (gloo on CPU, nccl on GPUs), or ``torch.distributed.init_process_group`` from the launcher's variables
    when Accelerate is not installed. Every rank must call this (it is a collective the first time). A group
    initialised here is destroyed at interpreter exit; one the caller initialised is left to the caller.

    Args:
        device: the device training will use (``"cpu"`` selects the gloo backend even where GPUs exist).

    Returns:
        :class:`ProcessGroup` (a group of one when the script was not launched on several processes).
    """
    dist = torch.distributed
    if not dist.is_available():
        return _SINGLE
    if not dist.is_initialized():
        if launched_world_size() <= 1:
            return _SINGLE
        cpu = _use_cpu(device)
        try:
            from accelerate import PartialState
        except ImportError:
            dist.init_process_group(backend="gloo" if cpu else "nccl")
        else:
            PartialState(cpu=cpu)
            if not dist.is_initialized():  # Accelerate saw no distributed launch
                dist.init_process_group(backend="gloo" if cpu else "nccl")
        _created[:] = [dist.group.WORLD]  # the group this module made, this module tears down at exit
        if not _registered:
            atexit.register(_shutdown)
            _registered.append(True)
    return ProcessGroup(
        rank=int(dist.get_rank()), world_size=int(dist.get_world_size()), local_rank=local_rank()
    )
