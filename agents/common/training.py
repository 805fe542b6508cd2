"""The training loop every agent shares: ``learn``, ``train`` and the public one-update ``train_step``.

An update draws a batch (the algorithm's ``_sample_batch``), minimises its loss (``_loss``) with AdamW under the
learning-rate schedule and gradient clipping, checks for NaN / infinity before stepping, advances
``num_timesteps`` by the (state, action) pairs it trained on, and calls ``_on_update_end``. ``learn`` and
``train`` run updates until their budget is spent, logging through SB3's ``Logger``, checkpointing, and calling
SB3 callbacks; :meth:`TrainingMixin.train_step` runs one update on a batch the caller gives::

    >>> from agents import make_agent
    >>> agent = make_agent("bc", env="seqgym/Dyck-v0", seed=0, n_demonstrations=8, batch_size=4,
    ...                    policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2})
    >>> step = agent.train_step(agent.sample_batch())
    >>> agent.n_updates, step.n_timesteps == agent.num_timesteps, step.loss > 0
    (1, True, True)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from agents.callbacks import CallbackLike, convert_callback
from agents.common.config import is_int, is_number
from agents.common.engine import EngineMixin
from agents.common.hooks import AgentHooks, BatchT

if TYPE_CHECKING:
    import os

    from stable_baselines3.common.logger import Logger

__all__ = ["NonFiniteLossError", "TrainStep", "TrainingMixin"]

_T = TypeVar("_T", bound="TrainingMixin[Any]")


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) of an update was NaN or infinite; raised before the optimiser step, so the
    parameters still hold the values of the previous update.

    Attributes:
        step: the update number (1-based, counted over the agent's life) at which it happened.
        terms: the logged loss terms of that update.
    """

    def __init__(self, message: str, *, step: int, terms: dict[str, float]) -> None:
        super().__init__(message)
        self.step = step
        self.terms = terms


@dataclass(frozen=True)
class TrainStep:
    """What one update did.

    Attributes:
        loss: the loss minimised (a float, after the step's forward).
        grad_norm: the global gradient norm before clipping.
        n_timesteps: the (state, action) pairs the batch trained on (``num_timesteps`` advanced by it).
        terms: the algorithm's logged terms (floats or 0-d tensors), e.g. SequenceMatch's ``expert``, ``bc``.
    """

    loss: float
    grad_norm: float
    n_timesteps: int
    terms: Mapping[str, float | torch.Tensor]


class _Interval:
    """Sums of the logged quantities over one log interval (tensors summed lazily, no device sync).

    A term is averaged over the updates that logged it (SequenceMatch's warm-up updates log only ``bc``)."""

    def __init__(self) -> None:
        self.n_updates = 0
        self.timesteps = 0
        self.loss = 0.0
        self.grad_norm = 0.0
        self.terms: dict[str, float | torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.t0 = time.perf_counter()

    def add(self, step: TrainStep) -> None:
        self.n_updates += 1
        self.timesteps += step.n_timesteps
        self.loss += step.loss
        self.grad_norm += step.grad_norm
        for k, v in step.terms.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            self.terms[k] = self.terms[k] + v if k in self.terms else v
            self.counts[k] = self.counts.get(k, 0) + 1


class TrainingMixin(EngineMixin, AgentHooks[BatchT]):
    """``learn``, ``train``, ``train_step`` and the loop's logging; part of :class:`~agents.common.agent.Agent`."""

    _logger: Logger | None
    _custom_logger: bool

    if TYPE_CHECKING:  # provided by CheckpointMixin

        def save(self, path: str | os.PathLike[str], *, include_demonstrations: bool = True) -> None: ...

        def checkpoint_path(self, step: int) -> Path: ...

    # -- SB3 model protocol: the logger callbacks write to ---------------------------------------------------
    @property
    def logger(self) -> Logger:
        """The SB3 ``Logger`` (set by ``learn`` from ``verbose`` / ``tensorboard_log``, or by ``set_logger``)."""
        if self._logger is None:
            from stable_baselines3.common.logger import Logger

            self._logger = Logger(folder=None, output_formats=[])
        return self._logger

    def set_logger(self, logger: Logger) -> None:
        """Use this SB3 logger (e.g. ``stable_baselines3.common.logger.configure(folder, ["stdout", "csv",
        "tensorboard"])``) instead of configuring one in every ``learn`` call."""
        self._logger = logger
        self._custom_logger = True

    def dump_logs(self) -> None:
        """Write the logger's current values (SB3 protocol)."""
        self.logger.dump(step=self.num_timesteps)

    def training_progress(self) -> tuple[str, int, int]:
        """``(unit, done, total)`` of the current ``learn`` (pairs) or ``train`` (updates) budget."""
        unit, _, end = self._schedule
        if unit == "timesteps":
            return "pairs", self.num_timesteps, end
        return "updates", self._n_updates, end

    @property
    def n_updates(self) -> int:
        """Optimiser steps taken over the agent's life."""
        return self._n_updates

    # -- training ---------------------------------------------------------------------------------------------
    def learn(
        self: _T,
        total_timesteps: int,
        *,
        callback: CallbackLike = None,
        log_interval: int = 10,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> _T:
        """Train until ``total_timesteps`` (state, action) pairs have been trained on.

        Every update draws a batch (``_sample_batch``), minimises its loss with AdamW (learning-rate schedule,
        gradient clipping), advances ``num_timesteps`` by the pairs it trained on, logs every ``log_interval``
        updates, checkpoints every ``checkpoint_every`` updates, then calls ``callback.on_step()`` (False stops).
        The last update may overshoot the budget by less than one batch.

        To resume an interrupted run exactly: ``agent = Cls.load(checkpoint)`` then
        ``agent.learn(total - agent.num_timesteps, reset_num_timesteps=False)`` (SB3's convention: the budget
        adds to ``num_timesteps``, and the schedule runs over the whole ``total``).

        Args:
            total_timesteps: (state, action) pairs to train on (>= 1).
            callback: SB3 callback(s), see :mod:`agents.callbacks`. Its ``locals`` hold ``loss``, ``terms``,
                ``n_timesteps`` and ``batch`` of the update just taken.
            log_interval: updates between log dumps (``0``: no logging).
            tb_log_name: tensorboard run name (default: the agent's name).
            reset_num_timesteps: start counting from 0 (else continue, as SB3).
            progress_bar: show a tqdm progress bar.

        Returns:
            ``self``.

        Raises:
            NonFiniteLossError: a NaN / infinite loss or gradient; names the update and the loss terms.
        """
        if not is_int(total_timesteps) or total_timesteps < 1:
            raise ValueError(f"total_timesteps must be an int >= 1, got {total_timesteps!r}.")
        total = int(total_timesteps)
        if reset_num_timesteps:
            self.num_timesteps = 0
        else:
            total += self.num_timesteps
        self._total_timesteps = total
        self._schedule = ("timesteps", 0, total)
        self._run(
            lambda: self.num_timesteps >= total,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
            total_timesteps=total,
        )
        self._on_learn_end()
        return self

    def train(
        self: _T,
        n_epochs: float | None = None,
        n_batches: int | None = None,
        *,
        callback: CallbackLike = None,
        log_interval: int = 10,
        progress_bar: bool = False,
    ) -> _T:
        """Imitation-style training: ``n_epochs`` passes over the data, or ``n_batches`` updates (exactly one).

        One epoch is ``ceil(_dataset_size() / batch_size)`` updates (fractional epochs are rounded up to whole
        updates). The learning-rate schedule runs over this call's updates. Returns ``self``.
        """
        if (n_epochs is None) == (n_batches is None):
            raise ValueError("Pass exactly one of n_epochs= or n_batches=.")
        if n_batches is not None:
            if not is_int(n_batches) or n_batches < 1:
                raise ValueError(f"n_batches must be an int >= 1, got {n_batches!r}.")
            n = int(n_batches)
        else:
            if not is_number(n_epochs) or not float(n_epochs) > 0:  # type: ignore[arg-type]
                raise ValueError(f"n_epochs must be a number > 0, got {n_epochs!r}.")
            size = self._dataset_size()
            if size <= 0:
                raise ValueError(f"{type(self).__name__} has no training data; pass demonstrations=.")
            n = max(1, math.ceil(float(n_epochs) * size / self.config.batch_size))  # type: ignore[arg-type]
        start = self._n_updates
        end = start + n
        self._schedule = ("updates", start, end)
        self._run(
            lambda: self._n_updates >= end,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=None,
            reset_num_timesteps=True,
            progress_bar=progress_bar,
            total_timesteps=None,
        )
        return self

    def sample_batch(self, batch_size: int | None = None, rng: np.random.Generator | None = None) -> BatchT:
        """The batch the algorithm would train on next (its ``_sample_batch``), for :meth:`train_step`.

        Args:
            batch_size: default ``config.batch_size``.
            rng: default the agent's training generator (``agent.rng``, which then advances as in training).

        Returns:
            The algorithm's batch type (a list of trajectories for BC, ``MLEBatch``, ``SequenceMatchBatch``).
        """
        size = self.config.batch_size if batch_size is None else batch_size
        if not is_int(size) or size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {size!r}.")
        return self._sample_batch(int(size), self.rng if rng is None else rng)

    def train_step(self, batch: BatchT) -> TrainStep:
        """One optimiser step on ``batch``: exactly the update ``learn`` / ``train`` take, batch given.

        Sets the learning rate of this update (schedule and warm-up), minimises ``_loss(batch)``, clips the
        gradient, checks that loss and gradient norm are finite, steps AdamW, advances ``num_timesteps`` and
        ``n_updates``, and calls ``_on_update_end``. Outside ``learn`` / ``train`` it runs on the agent's own
        torch RNG stream (dropout), as they do.

        Args:
            batch: what :meth:`sample_batch` (the algorithm's ``_sample_batch``) returns.

        Returns:
            :class:`TrainStep`.

        Raises:
            NonFiniteLossError: a NaN / infinite loss or gradient (the parameters are left as they were).
        """
        rng = contextlib.nullcontext() if self._in_training else self._training_rng()
        with rng:
            return self._step(batch)

    def _step(self, batch: BatchT) -> TrainStep:
        step = self._n_updates + 1
        lr = self._learning_rate_now()
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        n = int(self._n_timesteps(batch))  # the global batch's pairs: the same count on every rank
        group = self.process_group
        if group.distributed:  # this rank's shard; DDP averages the gradients over the ranks in backward
            if self.policy.engine_model is None:
                self.policy.set_engine_model(group.wrap(self.policy.model, self.device))
            batch = self._shard_batch(batch, group)
        self.policy.train()
        with self.autocast():
            loss, terms = self._loss(batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(f"{type(self).__name__}._loss must return a scalar tensor first, got {loss!r}.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.config.max_grad_norm is not None:
            gn = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        else:
            gn = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        loss_value, grad_norm = group.all_reduce_mean(  # the global batch's loss (mean of equal shards')
            torch.stack([loss.detach().float(), gn.detach().float().to(loss.device)])
        ).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            shown = {k: float(v) for k, v in terms.items()}
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            raise NonFiniteLossError(
                f"Non-finite {what} at update {step} (num_timesteps={self.num_timesteps}): loss={loss_value}, "
                f"grad_norm={grad_norm}, terms={shown}. The parameters were not updated by this step; lower "
                "learning_rate, set max_grad_norm, or check the data and the loss.",
                step=step,
                terms=shown,
            )
        self.optimizer.step()
        self.num_timesteps += n
        self._n_updates = step
        self._on_update_end(step)
        return TrainStep(loss=loss_value, grad_norm=grad_norm, n_timesteps=n, terms=terms)

    def _run(
        self,
        stop: Callable[[], bool],
        *,
        callback: CallbackLike,
        log_interval: int,
        tb_log_name: str | None,
        reset_num_timesteps: bool,
        progress_bar: bool,
        total_timesteps: int | None,
    ) -> None:
        """The one training loop behind ``learn`` and ``train``."""
        if not is_int(log_interval) or log_interval < 0:
            raise ValueError(f"log_interval must be an int >= 0, got {log_interval!r}.")
        group = self.process_group  # initialised here on every rank of a multi-process launch
        main = group.is_main  # every rank holds the same state: rank 0 alone logs and writes checkpoints
        if not self._custom_logger:
            from stable_baselines3.common.utils import configure_logger

            self._logger = configure_logger(  # ranks other than 0 log nothing
                self.config.verbose if main else 0,
                self.config.tensorboard_log if main else None,
                tb_log_name or self.name,
                reset_num_timesteps,
            )
        cb = convert_callback(callback, progress_bar=progress_bar and main)
        cb.init_callback(self)  # type: ignore[arg-type]
        start_time = time.perf_counter()
        cb.on_training_start({"total_timesteps": total_timesteps, "self": self}, globals())
        try:
            with self._training_rng():
                interval = _Interval()
                while not stop():
                    batch = self._sample_batch(self.config.batch_size, self.rng)
                    step = self._step(batch)
                    interval.add(step)
                    if log_interval and self._n_updates % log_interval == 0:
                        self._dump(interval, start_time)
                        interval = _Interval()
                    every = self.config.checkpoint_every
                    if every and self._n_updates % every == 0:
                        self.save(self.checkpoint_path(self._n_updates))  # rank 0 writes, the others wait
                        group.barrier()
                    cb.update_locals(
                        {
                            "loss": step.loss,
                            "terms": step.terms,
                            "n_timesteps": step.n_timesteps,
                            "batch": batch,
                        }
                    )
                    if not cb.on_step():
                        break
                if log_interval and interval.n_updates:
                    self._dump(interval, start_time)
        finally:
            cb.on_training_end()

    def _learning_rate_now(self) -> float:
        """Learning rate of the next update: peak x warm-up factor x schedule factor."""
        c = self.config
        lr = float(c.learning_rate)
        if c.warmup_steps and self._n_updates < c.warmup_steps:
            lr *= (self._n_updates + 1) / c.warmup_steps
        unit, start, end = self._schedule
        done = self.num_timesteps if unit == "timesteps" else self._n_updates
        p = min(max((done - start) / max(end - start, 1), 0.0), 1.0)
        if c.lr_schedule == "linear":
            lr *= 1.0 - p
        elif c.lr_schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * p))
        return lr

    def _dump(self, interval: _Interval, start_time: float) -> None:
        k = max(interval.n_updates, 1)
        log = self.logger
        log.record("train/loss", interval.loss / k)
        terms = {name: float(total) / interval.counts[name] for name, total in interval.terms.items()}
        for name, value in self.process_group.mean_over_ranks(terms).items():  # of the ranks' shards
            log.record(f"train/{name}", value)
        log.record("train/learning_rate", self.optimizer.param_groups[0]["lr"])
        log.record("train/grad_norm", interval.grad_norm / k)
        log.record("train/n_updates", self._n_updates)
        dt = max(time.perf_counter() - interval.t0, 1e-9)
        log.record("time/tokens_per_s", interval.timesteps / dt)
        log.record("time/total_timesteps", self.num_timesteps)
        log.record("time/time_elapsed", int(time.perf_counter() - start_time))
        log.dump(step=self.num_timesteps)

    # -- the agent's own torch RNG stream -------------------------------------------------------------------
    def _cuda_index(self) -> int:
        if self.device.type != "cuda":
            return 0
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    @contextlib.contextmanager
    def _training_rng(self) -> Iterator[None]:
        """Run training on the agent's own torch RNG stream (dropout etc.), saved and restored in checkpoints."""
        cuda = self.device.type == "cuda"
        index = self._cuda_index()
        with torch.random.fork_rng(devices=[index] if cuda else []):
            state = self._train_rng_state
            if state is None:
                torch.default_generator.manual_seed(self._train_torch_seed)
                if cuda:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(self._train_torch_seed)
            else:
                cpu_state = state.get("cpu")
                if cpu_state is not None:
                    torch.set_rng_state(cpu_state)
                cuda_state = state.get("cuda")
                if cuda and cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, index)
            self._in_training = True
            try:
                yield
            finally:
                self._capture_training_rng()
                self._in_training = False

    def _capture_training_rng(self) -> None:
        cuda = self.device.type == "cuda"
        self._train_rng_state = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self._cuda_index()) if cuda else None,
        }
