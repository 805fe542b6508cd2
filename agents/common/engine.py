"""What the training engine gives an agent: its process group (one process, or several under ``torchrun`` /
``accelerate launch``, see :mod:`agents.common.distributed`), whether this process is the main one, and the
mixed-precision context of its forwards. Part of :class:`~agents.common.agent.Agent`."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from agents.common.distributed import ProcessGroup, is_main_process, process_group
from agents.common.hooks import AgentHooks, BatchT

__all__ = ["EngineMixin"]


class EngineMixin(AgentHooks[BatchT]):
    """``process_group``, ``is_main_process`` and ``autocast``."""

    @property
    def process_group(self) -> ProcessGroup:
        """The processes training this agent (:mod:`agents.common.distributed`): a group of one unless the script
        was launched on several processes (``torchrun`` / ``accelerate launch``), in which case the first call,
        on every rank, initialises it."""
        return process_group(self.device)

    @property
    def is_main_process(self) -> bool:
        """False only on the ranks other than 0 of an initialised process group (rank 0 logs and saves)."""
        return is_main_process()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The mixed-precision context of the agent's forwards: ``torch.autocast`` to bfloat16 on the agent's
        device with ``mixed_precision="bf16"``, else a no-op (parameters and optimiser stay float32)."""
        if self.config.mixed_precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
