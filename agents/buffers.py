"""Replay buffer of the model's own trajectories, bounded in memory.

SequenceMatch mixes expert trajectories with trajectories the current model generated (with ``<backspace>``)
(``docs/method.md`` §3). :class:`ReplayBuffer` keeps the most recent ``capacity`` of them in a ring: every
array is allocated once, at construction, so the memory it holds never grows (:attr:`ReplayBuffer.nbytes`).

Example:
    >>> import numpy as np
    >>> buf = ReplayBuffer(capacity=2, max_prompt_length=3, max_steps=4)
    >>> buf.nbytes                      # 2 * (3 + 4) ids * 8 bytes + 2 * (3 int64 + 1 flag)
    162
    >>> buf.add([[0], [1, 1]], [[2, 5], [0, 3, 2]], [False, True])
    >>> buf.add([[]], [[1]], [False])   # full: overwrites the oldest record
    >>> len(buf), buf.n_added
    (2, 3)
    >>> batch = buf.sample(2, np.random.default_rng(0))
    >>> sorted(a.tolist() for a in batch.actions)
    [[0, 3, 2], [1]]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ReplayBuffer", "Rollouts"]


@dataclass(frozen=True)
class Rollouts:
    """A batch of action histories (not necessarily expert ones).

    Attributes:
        prompts: ``B`` int64 arrays, the prompt ``u_0`` of each trajectory (may be empty).
        actions: ``B`` int64 arrays, the actions taken (tokens, ``eos``, ``backspace``), ``(T_b,)`` each.
        terminal: bool array ``(B,)``: True where the trajectory ended with ``eos`` (False: cut by a time or
            length limit, so its last state is not terminal).
        born: int64 array ``(B,)``: the update count of the model that generated each trajectory (``-1``
            where not recorded), so that an update can measure the age of the samples it uses.
    """

    prompts: list[np.ndarray]
    actions: list[np.ndarray]
    terminal: np.ndarray
    born: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.actions)


class ReplayBuffer:
    """Ring buffer of ``(prompt, actions, terminal)`` records in arrays allocated once.

    Memory is fixed at construction: ``capacity * (max_prompt_length + max_steps)`` int64 ids plus, per record,
    two int64 lengths, the int64 update count that generated it and one bool flag (:attr:`nbytes`); adding
    never allocates. When full, :meth:`add` overwrites the oldest records first.

    Args:
        capacity: number of trajectories kept (``>= 1``).
        max_prompt_length: longest prompt a record may hold (``>= 0``).
        max_steps: longest action history a record may hold (``>= 1``).

    Raises:
        ValueError: on a non-positive ``capacity`` / ``max_steps`` or a negative ``max_prompt_length``.
    """

    def __init__(self, capacity: int, *, max_prompt_length: int, max_steps: int) -> None:
        if int(capacity) < 1:
            raise ValueError(f"ReplayBuffer capacity must be >= 1, got {capacity}.")
        if int(max_prompt_length) < 0:
            raise ValueError(f"max_prompt_length must be >= 0, got {max_prompt_length}.")
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
        self.capacity = int(capacity)
        self.max_prompt_length = int(max_prompt_length)
        self.max_steps = int(max_steps)
        self._prompts = np.zeros((self.capacity, self.max_prompt_length), dtype=np.int64)  # (N, P_max)
        self._actions = np.zeros((self.capacity, self.max_steps), dtype=np.int64)  # (N, T_max)
        self._prompt_lengths = np.zeros(self.capacity, dtype=np.int64)  # (N,)
        self._lengths = np.zeros(self.capacity, dtype=np.int64)  # (N,)
        self._terminal = np.zeros(self.capacity, dtype=bool)  # (N,)
        self._born = np.full(self.capacity, -1, dtype=np.int64)  # (N,) update count of the generating model
        self._size = 0
        self._next = 0  # slot the next record goes to
        self.n_added = 0  # records added since construction (or the last clear)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays; constant for the buffer's lifetime."""
        arrays = (
            self._prompts,
            self._actions,
            self._prompt_lengths,
            self._lengths,
            self._terminal,
            self._born,
        )
        return int(sum(a.nbytes for a in arrays))

    def __len__(self) -> int:
        """Number of records stored (at most :attr:`capacity`)."""
        return self._size

    def clear(self) -> None:
        """Forget every record (the memory stays allocated)."""
        self._size = 0
        self._next = 0
        self.n_added = 0

    def add(
        self,
        prompts: Sequence[Sequence[int] | np.ndarray],
        actions: Sequence[Sequence[int] | np.ndarray],
        terminal: Sequence[bool] | np.ndarray,
        *,
        born: int = -1,
    ) -> None:
        """Append trajectories, overwriting the oldest ones once the buffer is full.

        Args:
            prompts: ``B`` prompts (id sequences, possibly empty), each at most ``max_prompt_length`` long.
            actions: ``B`` action histories, each of length ``1 .. max_steps``.
            terminal: ``B`` flags, True where the history ends with ``eos``.
            born: the update count of the model that generated them (``Rollouts.born``; -1: unknown).

        Raises:
            ValueError: on mismatched lengths, an empty or too long history, or a too long prompt. Nothing is
                stored when an error is raised.
        """
        terminal = np.asarray(terminal, dtype=bool).reshape(-1)
        if not len(prompts) == len(actions) == len(terminal):
            raise ValueError(
                f"add() needs as many prompts, action histories and terminal flags; got {len(prompts)}, "
                f"{len(actions)} and {len(terminal)}."
            )
        ps = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
        acts = [np.asarray(a, dtype=np.int64).reshape(-1) for a in actions]
        for b, (p, a) in enumerate(zip(ps, acts)):
            if len(p) > self.max_prompt_length:
                raise ValueError(
                    f"Prompt {b} has {len(p)} ids but this buffer holds at most max_prompt_length="
                    f"{self.max_prompt_length}; build it with a larger max_prompt_length."
                )
            if not 1 <= len(a) <= self.max_steps:
                raise ValueError(
                    f"Action history {b} has {len(a)} actions; this buffer holds 1..max_steps="
                    f"{self.max_steps}."
                )
        # Only the last `capacity` records can survive this call.
        start = max(0, len(acts) - self.capacity)
        for p, a, term in zip(ps[start:], acts[start:], terminal[start:]):
            i = self._next
            self._prompts[i, : len(p)] = p
            self._prompt_lengths[i] = len(p)
            self._actions[i, : len(a)] = a
            self._lengths[i] = len(a)
            self._terminal[i] = term
            self._born[i] = born
            self._next = (i + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)
        self.n_added += len(acts)

    def sample(self, n: int, rng: np.random.Generator) -> Rollouts:
        """Draw ``n`` records uniformly; without replacement if ``n <= len(self)``, else with replacement.

        Raises:
            ValueError: if the buffer is empty or ``n < 0``.
        """
        if n < 0:
            raise ValueError(f"sample() needs n >= 0, got {n}.")
        if self._size == 0:
            raise ValueError("The replay buffer is empty; add trajectories before sampling.")
        idx = rng.choice(self._size, size=n, replace=n > self._size)
        return self._gather(np.asarray(idx, dtype=np.int64))

    def all(self) -> Rollouts:
        """Every stored record, oldest first."""
        start = self._next if self._size == self.capacity else 0
        idx = (start + np.arange(self._size)) % self.capacity
        return self._gather(idx)

    def state_dict(self) -> dict[str, int | np.ndarray]:
        """The stored records and ring position as plain values and int64/bool arrays (for checkpoints)."""
        n = self._size
        return {
            "capacity": self.capacity,
            "max_prompt_length": self.max_prompt_length,
            "max_steps": self.max_steps,
            "size": n,
            "next": self._next,
            "n_added": self.n_added,
            "prompts": self._prompts[:n].copy(),
            "actions": self._actions[:n].copy(),
            "prompt_lengths": self._prompt_lengths[:n].copy(),
            "lengths": self._lengths[:n].copy(),
            "terminal": self._terminal[:n].copy(),
            "born": self._born[:n].copy(),
        }

    def load_state_dict(self, state: Mapping[str, int | np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (into a buffer of the same shape).

        Raises:
            ValueError: the state comes from a buffer of another capacity or record size.
        """
        shape = (int(state["capacity"]), int(state["max_prompt_length"]), int(state["max_steps"]))
        if shape != (self.capacity, self.max_prompt_length, self.max_steps):
            raise ValueError(
                f"Replay buffer state of (capacity, max_prompt_length, max_steps) = {shape} does not fit this "
                f"buffer's {(self.capacity, self.max_prompt_length, self.max_steps)}."
            )
        n = int(state["size"])
        for name in ("prompts", "actions", "prompt_lengths", "lengths", "terminal"):
            getattr(self, f"_{name}")[:n] = np.asarray(state[name])
        self._born[:n] = np.asarray(state["born"]) if "born" in state else -1
        self._size, self._next, self.n_added = n, int(state["next"]), int(state["n_added"])

    def _gather(self, idx: np.ndarray) -> Rollouts:
        return Rollouts(
            prompts=[self._prompts[i, : self._prompt_lengths[i]].copy() for i in idx],
            actions=[self._actions[i, : self._lengths[i]].copy() for i in idx],
            terminal=self._terminal[idx].copy(),
            born=self._born[idx].copy(),
        )
