"""Demonstrations: expert trajectories, backspace augmentation, flat transitions, and files.

A demonstration is a :class:`Trajectory`: a prompt and the action history that continues it, with a
per-action ``expert`` mask (``False`` marks an inserted mistake). Which state an action history leads to is
defined once, in :mod:`seqgym.dynamics`; everything here is built on it and tested against it.

- :func:`collect` draws clean expert trajectories from a source.
- :func:`augment` inserts a wrong token followed by ``<backspace>`` before each expert action with probability
  ``p_noise`` (``docs/method.md`` §4), so a learner sees states it must recover from.
- :func:`to_transitions` flattens trajectories into ``(obs, acts, next_obs, dones)`` arrays in
  :class:`~seqgym.env.SequenceEnv`'s observation format, for SB3 / imitation-style consumers.
- :func:`save_demonstrations` / :func:`load_demonstrations` store a set in one ``.npz`` file, written
  atomically.

Example:
    >>> import numpy as np
    >>> from seqgym.vocab import Vocabulary
    >>> from seqgym.data import Trajectory, augment, to_transitions
    >>> v = Vocabulary(["a", "b", "c"])              # a=0 b=1 c=2 eos=3 backspace=4 pad=5
    >>> clean = Trajectory.from_completion([0], [1, 2, v.eos_id], vocab=v)
    >>> clean.final(), len(clean), clean.terminal
    ([0, 1, 2, 3], 3, True)
    >>> noisy = augment([clean], 0.5, rng=9)[0]      # a wrong "b" and its backspace before the "c"
    >>> v.decode(noisy.actions), noisy.expert.tolist()
    ('bb<bksp>c<eos>', [True, False, True, True, True])
    >>> noisy.final() == clean.final() and noisy.clean() == clean
    True
    >>> batch = to_transitions([noisy], max_length=5)
    >>> batch.obs                                      # visible sequence, left-aligned, padded with pad=5
    array([[0, 5, 5, 5, 5],
           [0, 1, 5, 5, 5],
           [0, 1, 1, 5, 5],
           [0, 1, 5, 5, 5],
           [0, 1, 2, 5, 5]])
    >>> batch.acts.tolist(), batch.expert.tolist(), batch.dones.tolist()
    ([1, 1, 4, 2, 3], [True, False, True, True, True], [False, False, False, False, True])
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

import numpy as np
from numpy.typing import ArrayLike

from seqgym import dynamics
from seqgym._files import atomic_write
from seqgym._options import NOISE_NAMES, NoiseName, check_option
from seqgym.sources.base import Source
from seqgym.vocab import Vocabulary

__all__ = [
    "FORMAT_VERSION",
    "MAX_DEMONSTRATION_BYTES",
    "DemonstrationFileError",
    "NoiseFn",
    "Trajectory",
    "Transitions",
    "UniformNoise",
    "augment",
    "collect",
    "inserted_allowed_share",
    "load_demonstrations",
    "mistake_candidates",
    "save_demonstrations",
    "to_transitions",
    "uniform_noise",
]

#: Version of the ``.npz`` layout written by :func:`save_demonstrations`; :func:`load_demonstrations` reads
#: exactly this version.
FORMAT_VERSION = 1
_FORMAT_NAME = "seqgym-demonstrations"

#: ``noise(trajectory, positions, rng) -> wrong_tokens``: for a trajectory and the action indices
#: ``positions`` (int64, shape ``(K,)``, increasing) chosen for corruption, return ``K`` wrong token ids
#: (shape ``(K,)``): each an ordinary token (``0 .. n_tokens-1``, never eos or backspace) different from
#: ``trajectory.actions[positions]``. The wrong token at ``positions[j]`` is inserted in state
#: ``trajectory.states()[positions[j]]``. Called once per trajectory with every position at once, so a
#: language model can propose all its mistakes in one forward pass.
NoiseFn = Callable[["Trajectory", np.ndarray, np.random.Generator], np.ndarray]

RngLike = np.random.Generator | int


class DemonstrationFileError(ValueError):
    """A demonstration file is corrupt, truncated, of another format version, or holds another vocabulary."""


# ------------------------------------------------------------------------------------------------------------
# helpers
def _as_generator(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}.")


def _as_ids(x: Any, what: str) -> np.ndarray:
    """A fresh, 1-D int64 copy of ``x`` (any integer sequence or array)."""
    arr = np.array(x, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of ids, got an array of shape {arr.shape}.")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what} must hold integer ids, got dtype {arr.dtype}.")
    return arr.astype(np.int64, copy=False)


def _as_flags(x: Any, what: str) -> np.ndarray:
    """A fresh, 1-D bool copy of ``x``."""
    arr = np.array(x, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of booleans, got an array of shape {arr.shape}.")
    if arr.size == 0:
        return np.zeros(0, dtype=np.bool_)
    if arr.dtype != np.bool_:
        raise TypeError(f"{what} must hold booleans (True/False), got dtype {arr.dtype}.")
    return arr


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.setflags(write=False)
    return arr


def _id_name(i: int, vocab: Vocabulary) -> str:
    if i == vocab.eos_id:
        return f"the eos id {i}"
    if i == vocab.backspace_id:
        return f"the backspace id {i}"
    if i == vocab.pad_id:
        return f"the pad id {i}"
    return f"unknown id {i}"


def _check_vocab(vocab: object) -> Vocabulary:
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be a seqgym.vocab.Vocabulary, got {type(vocab).__name__}.")
    return vocab


def _common_vocab(trajectories: Sequence[Trajectory], what: str) -> Vocabulary | None:
    """The one vocabulary of ``trajectories`` (``None`` if empty); ``ValueError`` if they disagree."""
    if not trajectories:
        return None
    vocab = trajectories[0].vocab
    for k, t in enumerate(trajectories):
        if t.vocab is not vocab and t.vocab != vocab:
            raise ValueError(
                f"{what}: trajectory {k} has another vocabulary than trajectory 0 ({t.vocab!r} vs "
                f"{vocab!r}); all trajectories of one set must share one vocabulary."
            )
    return vocab


def _as_trajectory_list(trajectories: Iterable[Trajectory], what: str) -> list[Trajectory]:
    if isinstance(trajectories, Trajectory):
        raise TypeError(f"{what} takes a list of trajectories; wrap the single trajectory in a list.")
    out = list(trajectories)
    for k, t in enumerate(out):
        if not isinstance(t, Trajectory):
            raise TypeError(f"{what}: item {k} is a {type(t).__name__}, not a seqgym.data.Trajectory.")
    return out


# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Trajectory:
    """One demonstration: a prompt and the action history that continues it.

    All arrays are converted to fresh, read-only numpy arrays and validated at construction; invalid input
    raises ``ValueError`` (or ``TypeError`` for a wrong type) saying what to change.

    Args:
        prompt: int64, shape ``(P,)``: the prompt; ordinary token ids only (no eos, backspace or pad). May be
            empty.
        actions: int64, shape ``(T,)``: the action history, ids in ``0 .. vocab.n_actions - 1`` (pad is never
            an action). Nothing follows eos, and no backspace is taken at the prompt boundary (a demonstration
            never tries to delete the prompt, although the environment would treat that as a no-op).
        terminal: whether the episode ended with eos; must equal ``actions[-1] == vocab.eos_id``. ``False``
            means a cut (truncated) episode.
        expert: bool, shape ``(T,)``: ``False`` marks an inserted mistake, an action the expert would not
            take; the ``<backspace>`` that repairs it is an expert action (``True``).
        vocab: the vocabulary that gives the special ids. Not part of equality and not shown in ``repr``.

    Equality (``==``) compares ``prompt``, ``actions``, ``expert`` element-wise and ``terminal``; the
    vocabulary is not compared. Trajectories are not hashable.

    Example:
        >>> from seqgym.vocab import Vocabulary
        >>> v = Vocabulary(["a", "b"])                   # a=0 b=1 eos=2 backspace=3
        >>> t = Trajectory(prompt=[0], actions=[1, 0, 3, 2], terminal=True, expert=[True, False, True, True],
        ...                vocab=v)
        >>> t.states()
        [[0], [0, 1], [0, 1, 0], [0, 1], [0, 1, 2]]
        >>> t.final(), t.visible_lengths().tolist(), t.n_backspaces, t.n_mistakes
        ([0, 1, 2], [1, 2, 3, 2, 3], 1, 1)
        >>> Trajectory(prompt=[0], actions=[3], terminal=False, expert=[True], vocab=v)
        Traceback (most recent call last):
        ...
        ValueError: actions[0] is a backspace at the prompt boundary ...
    """

    prompt: np.ndarray
    actions: np.ndarray
    terminal: bool
    expert: np.ndarray
    vocab: Vocabulary = dataclasses.field(compare=False, repr=False)

    def __init__(
        self, *, prompt: ArrayLike, actions: ArrayLike, terminal: bool, expert: ArrayLike, vocab: Vocabulary
    ) -> None:
        # Written out (not generated) so that lists and other array-likes type-check; fields stay ndarrays.
        vocab = _check_vocab(vocab)
        prompt = _as_ids(prompt, "prompt")
        actions = _as_ids(actions, "actions")
        expert = _as_flags(expert, "expert")
        if not isinstance(terminal, (bool, np.bool_)):
            raise TypeError(f"terminal must be a bool, got {type(terminal).__name__}: {terminal!r}.")
        terminal = bool(terminal)
        n_tok, n_act = vocab.n_tokens, vocab.n_actions
        P, T = prompt.shape[0], actions.shape[0]

        bad = np.flatnonzero((prompt < 0) | (prompt >= n_tok))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"prompt[{i}] is {_id_name(int(prompt[i]), vocab)}; a prompt holds only ordinary token ids "
                f"0..{n_tok - 1}."
            )
        bad = np.flatnonzero((actions < 0) | (actions >= n_act))
        if bad.size:
            i = int(bad[0])
            a = int(actions[i])
            hint = " (the pad id, which is never an action)" if a == vocab.pad_id else ""
            raise ValueError(f"actions[{i}] = {a} is out of range{hint}: valid actions are 0..{n_act - 1}.")
        eos_at = np.flatnonzero(actions == vocab.eos_id)
        if eos_at.size and int(eos_at[0]) != T - 1:
            raise ValueError(
                f"actions[{int(eos_at[0]) + 1}] follows eos (taken at step {int(eos_at[0])}); an episode "
                "ends at eos, so eos may only be the last action."
            )
        ends_with_eos = T > 0 and int(actions[-1]) == vocab.eos_id
        if terminal != ends_with_eos:
            raise ValueError(
                f"terminal={terminal} but the last action is {'' if ends_with_eos else 'not '}eos; terminal "
                "must be True exactly when the trajectory ends with eos."
            )
        noop = np.flatnonzero(dynamics.noop_backspaces(actions, P, vocab))
        if noop.size:
            raise ValueError(
                f"actions[{int(noop[0])}] is a backspace at the prompt boundary (nothing generated to "
                "delete); a demonstration never deletes the prompt. Remove that backspace."
            )
        if expert.shape != (T,):
            raise ValueError(f"expert must have one flag per action, shape ({T},); got shape {expert.shape}.")

        object.__setattr__(self, "prompt", _readonly(prompt))
        object.__setattr__(self, "actions", _readonly(actions))
        object.__setattr__(self, "terminal", terminal)
        object.__setattr__(self, "expert", _readonly(expert))
        object.__setattr__(self, "vocab", vocab)

    # --------------------------------------------------------------------------------------------------------
    @classmethod
    def from_completion(cls, prompt: ArrayLike, completion: ArrayLike, *, vocab: Vocabulary) -> Trajectory:
        """A clean expert trajectory that writes ``completion`` after ``prompt`` (all actions expert).

        ``completion`` is what :meth:`Source.sample <seqgym.sources.base.Source.sample>` returns: token ids,
        usually ending with eos (``terminal`` is set from it). It may not hold backspace.
        """
        _check_vocab(vocab)
        completion = _as_ids(completion, "completion")
        vocab.check_ids(completion.tolist(), what="completion", allow_eos=True)
        terminal = completion.size > 0 and int(completion[-1]) == vocab.eos_id
        return cls(
            prompt=prompt,
            actions=completion,
            terminal=terminal,
            expert=np.ones(completion.shape[0], dtype=np.bool_),
            vocab=vocab,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trajectory):
            return NotImplemented
        return (
            self.terminal == other.terminal
            and np.array_equal(self.prompt, other.prompt)
            and np.array_equal(self.actions, other.actions)
            and np.array_equal(self.expert, other.expert)
        )

    def __len__(self) -> int:
        """Number of actions ``T``."""
        return int(self.actions.shape[0])

    @property
    def prompt_length(self) -> int:
        """``P``, the number of prompt ids."""
        return int(self.prompt.shape[0])

    @property
    def n_backspaces(self) -> int:
        """Number of backspace actions."""
        return int(np.count_nonzero(self.actions == self.vocab.backspace_id))

    @property
    def n_mistakes(self) -> int:
        """Number of non-expert actions (inserted mistakes)."""
        return int(self.expert.shape[0] - np.count_nonzero(self.expert))

    def states(self) -> list[list[int]]:
        """The ``T+1`` visible sequences ``[u_0 = prompt, ..., u_T]`` (:func:`seqgym.dynamics.states`)."""
        return dynamics.states(self.prompt.tolist(), self.actions.tolist(), self.vocab)

    def final(self) -> list[int]:
        """The final visible sequence: prompt + surviving generated ids, eos included if taken."""
        return dynamics.replay(self.prompt.tolist(), self.actions.tolist(), self.vocab)

    def visible_lengths(self) -> np.ndarray:
        """int64, shape ``(T+1,)``: ``len(u_i)`` for each state, ``u_0`` = prompt.

        Equals ``[len(s) for s in self.states()]`` without building the states.
        """
        return dynamics.visible_lengths(self.actions, self.prompt_length, self.vocab)

    def mistake_steps(self) -> np.ndarray:
        """bool, shape ``(T,)``: the steps taken while an inserted mistake is visible.

        For each inserted mistake (a token with ``expert`` False, written at step ``j``), the steps from ``j``
        to the ``<backspace>`` that deletes it, inclusive (to the end when nothing deletes it). The state after
        such a detour is the state before it, so leaving these steps out leaves the clean trajectory. For what
        :func:`augment` makes, these are each mistake and the backspace right after it. A backspace or eos marked
        non-expert is marked alone.

        Example:
            >>> from seqgym.vocab import Vocabulary
            >>> v = Vocabulary(["a", "b"])                   # a=0 b=1 eos=2 backspace=3
            >>> t = Trajectory(prompt=[], actions=[0, 1, 0, 3, 3, 1, 2], terminal=True,
            ...                expert=[True, False, True, True, True, True, True], vocab=v)
            >>> t.mistake_steps().astype(int).tolist()
            [0, 1, 1, 1, 1, 0, 0]
        """
        T = len(self)
        out = np.zeros(T, dtype=np.bool_)
        starts = np.flatnonzero(~self.expert)  # (K,) steps that write a mistake
        if starts.size == 0:
            return out
        after = starts + 1
        tokens = self.actions[starts] < self.vocab.n_tokens  # (K,) each mistake writes an ordinary token
        pairs = tokens.all() and after[-1] < T and np.all(self.actions[after] == self.vocab.backspace_id)
        if pairs:  # augment's shape: each mistake deleted at once
            out[starts] = True
            out[after] = True
            return out
        vis = self.visible_lengths()  # (T+1,) len(u_i)
        for j in starts.tolist():
            if self.actions[j] >= self.vocab.n_tokens:  # a backspace or eos marked non-expert: itself only
                out[j] = True
                continue
            gone = np.flatnonzero(vis[j + 2 :] < vis[j + 1])  # later states without the token of step j
            end = j + 1 + int(gone[0]) if gone.size else T - 1  # the step that deletes it
            out[j : end + 1] = True
        return out

    def clean(self) -> Trajectory:
        """The backspace-free trajectory that reaches the same final sequence (what plain MLE trains on).

        Surviving actions keep their expert flags, so for a trajectory made by :func:`augment` this is the
        original clean trajectory.
        """
        idx = np.flatnonzero(dynamics.surviving_actions(self.actions, self.prompt_length, self.vocab))
        return Trajectory(
            prompt=self.prompt,
            actions=self.actions[idx],
            terminal=self.terminal,
            expert=self.expert[idx],
            vocab=self.vocab,
        )


# ------------------------------------------------------------------------------------------------------------
def collect(source: Source, n: int, rng: RngLike) -> list[Trajectory]:
    """Draw ``n`` clean expert trajectories from ``source.sample(rng)``.

    Args:
        source: a :class:`~seqgym.sources.base.Source` (``vocab`` and ``sample(rng)``).
        n: number of trajectories, ``n >= 0``.
        rng: a ``numpy.random.Generator`` (advanced in place) or an int seed.

    Returns:
        ``n`` terminal trajectories (completions end with eos), every action expert.

    Raises:
        ValueError: a sample that is not a ``(prompt, completion)`` pair of valid ids, or whose completion
            holds backspace or does not end with eos; the message names the source and the sample.

    Example:
        >>> import numpy as np
        >>> from seqgym.vocab import Vocabulary
        >>> class Twice:
        ...     vocab = Vocabulary(["x", "y"])
        ...     def sample(self, rng):
        ...         t = int(rng.integers(0, 2))
        ...         return [t], [t, t, self.vocab.eos_id]
        >>> [t.final() for t in collect(Twice(), 3, rng=np.random.default_rng(2))]
        [[1, 1, 1, 2], [0, 0, 0, 2], [0, 0, 0, 2]]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int (the number of trajectories), got {n!r}.")
    vocab = getattr(source, "vocab", None)
    if not isinstance(vocab, Vocabulary) or not callable(getattr(source, "sample", None)):
        raise TypeError(
            f"source must follow seqgym.sources.Source (a `vocab` Vocabulary and `sample(rng)`); got "
            f"{type(source).__name__}."
        )
    gen = _as_generator(rng)
    name = getattr(source, "name", type(source).__name__)
    out: list[Trajectory] = []
    for k in range(int(n)):
        sample = source.sample(gen)
        try:
            prompt, completion = sample
            traj = Trajectory.from_completion(prompt, completion, vocab=vocab)
            if not traj.terminal:
                raise ValueError("the completion does not end with eos (the Source protocol requires it)")
            out.append(traj)
        except (ValueError, TypeError) as e:
            raise ValueError(f"source {name!r} returned an invalid sample (number {k}): {e}") from e
    return out


# ------------------------------------------------------------------------------------------------------------
def uniform_noise(trajectory: Trajectory, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ``"uniform"`` :data:`NoiseFn`: each wrong token uniform over the ordinary tokens but the expert's.

    Args:
        trajectory: the trajectory being corrupted.
        positions: int64, shape ``(K,)``: action indices chosen for corruption.
        rng: the generator to draw from.

    Returns:
        int64, shape ``(K,)``: ``w[j]`` uniform over ``{0 .. n_tokens-1} \\ {actions[positions[j]]}`` (all
        ordinary tokens when the expert's action is eos or backspace).

    Raises:
        ValueError: if no wrong token exists (a one-token vocabulary where the expert writes that token).
    """
    n_tok = trajectory.vocab.n_tokens
    expert_action = trajectory.actions[np.asarray(positions, dtype=np.int64)]  # (K,)
    is_token = expert_action < n_tok  # (K,) the expert's action is an ordinary token: exclude it
    if n_tok == 1 and is_token.any():
        raise ValueError(
            "uniform noise needs at least 2 ordinary tokens to draw a wrong one in place of a token."
        )
    r = rng.integers(0, n_tok - is_token.astype(np.int64))  # (K,) uniform over n_tok or n_tok-1 values
    return (r + (is_token & (r >= expert_action))).astype(np.int64)  # skip over the expert's token


def mistake_candidates(
    trajectory: Trajectory,
    positions: np.ndarray,
    source: object | None = None,
    *,
    floor: float = -math.inf,
) -> np.ndarray:
    """Which ordinary tokens count as a mistake before each chosen action: ``(K, n_tokens)`` bool.

    ``docs/method.md`` §4: a mistake must be a mistake. Where ``source`` knows its probabilities
    (``next_token_logprobs``), the candidates at position ``i`` are the tokens it rules out after the state
    before action ``i`` (log-probability ``<= floor``; ``-inf`` by default: impossible tokens only), and a row
    is empty where it rules out none (no mistake exists there: :func:`augment` inserts none). Without such a
    source: every ordinary token but the expert's action there.

    Args:
        trajectory: the trajectory being corrupted.
        positions: int64, shape ``(K,)``: action indices.
        source: an optional source with ``next_token_logprobs``.
        floor: log-probability at or below which a token counts as ruled out.

    Returns:
        bool, shape ``(K, n_tokens)``; never the expert's own action.
    """
    pos = np.asarray(positions, dtype=np.int64)
    n_tok = trajectory.vocab.n_tokens
    expert_action = trajectory.actions[pos]  # (K,)
    out = np.ones((len(pos), n_tok), dtype=np.bool_)
    is_token = np.flatnonzero(expert_action < n_tok)
    out[is_token, expert_action[is_token]] = False
    if source is None or not callable(getattr(source, "next_token_logprobs", None)) or len(pos) == 0:
        return out
    states = trajectory.states()
    for j, i in enumerate(pos.tolist()):
        lp = np.asarray(source.next_token_logprobs(states[i]), dtype=np.float64)[:n_tok]  # type: ignore[attr-defined]
        out[j] &= lp <= floor
    return out


class UniformNoise:
    """The ``"uniform"`` :data:`NoiseFn` restricted to real mistakes: each wrong token uniform over
    :func:`mistake_candidates` (the tokens ``source`` rules out, else every token but the expert's).

    Args:
        source: an optional source with ``next_token_logprobs``; ``None`` is :func:`uniform_noise`.
        floor: log-probability at or below which a token counts as ruled out (default ``-inf``).

    Example:
        >>> import numpy as np
        >>> from seqgym.sources.dyck import Dyck
        >>> src = Dyck()
        >>> clean = collect(src, 50, np.random.default_rng(0))
        >>> noisy = augment(clean, 0.3, np.random.default_rng(1), UniformNoise(src))
        >>> inserted_allowed_share(noisy, src)
        0.0
    """

    def __init__(self, source: object | None = None, *, floor: float = -math.inf) -> None:
        if not (isinstance(floor, (int, float, np.integer, np.floating)) and not isinstance(floor, bool)):
            raise TypeError(f"floor must be a number (a log-probability), got {floor!r}.")
        if float(floor) > 0 or math.isnan(float(floor)):
            raise ValueError(f"floor must be a log-probability <= 0 (or -inf), got {floor!r}.")
        self.source = source
        self.floor = float(floor)

    def __call__(self, trajectory: Trajectory, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.source is None:
            return uniform_noise(trajectory, positions, rng)
        return self.draw(mistake_candidates(trajectory, positions, self.source, floor=self.floor), rng)

    def from_candidates(
        self, trajectory: Trajectory, positions: np.ndarray, candidates: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """What ``self(trajectory, positions, rng)`` returns, given the :func:`mistake_candidates` of
        ``positions`` (bool ``(K, n_tokens)``, computed with this noise's ``source`` and ``floor``), which
        :func:`augment` has already computed: int64 ``(K,)``."""
        return self.draw(candidates, rng)

    @staticmethod
    def draw(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One token per row of ``mask`` (bool ``(K, n_tokens)``: the candidates), uniform over its candidates:
        int64 ``(K,)``. Draws ``K`` uniforms from ``rng``."""
        if not mask.any(axis=1).all():
            raise ValueError(
                "uniform noise needs at least 2 ordinary tokens to draw a wrong one in place of a token."
            )
        cdf = np.cumsum(mask, axis=1)  # (K, n_tokens)
        u = rng.random(len(mask)) * cdf[:, -1]  # (K,)
        out: np.ndarray = (cdf <= u[:, None]).sum(axis=1).astype(np.int64)
        return out


def inserted_allowed_share(
    trajectories: Iterable[Trajectory], source: object, *, floor: float = -math.inf
) -> float:
    """The share of inserted wrong tokens (``expert`` False) that ``source`` would have allowed there
    (log-probability ``> floor``): 0 when every mistake is a real one.

    Returns ``nan`` when nothing was inserted or ``source`` has no ``next_token_logprobs``.
    """
    if not callable(getattr(source, "next_token_logprobs", None)):
        return math.nan
    allowed = total = 0
    for traj in trajectories:
        where = np.flatnonzero(~traj.expert)
        if where.size == 0:
            continue
        states = traj.states()
        for i in where.tolist():
            lp = float(np.asarray(source.next_token_logprobs(states[i]))[int(traj.actions[i])])  # type: ignore[attr-defined]
            allowed += lp > floor
            total += 1
    return allowed / total if total else math.nan


def augment(
    trajectories: Iterable[Trajectory],
    p_noise: float,
    rng: RngLike,
    noise: NoiseName | NoiseFn = "uniform",
    *,
    max_length: int | None = None,
    source: object | None = None,
) -> list[Trajectory]:
    """Insert a wrong token and ``<backspace>`` before each expert action with probability ``p_noise``.

    ``docs/method.md`` §4: clean expert data never shows a state to recover from. Before every action ``i``
    with ``expert[i]`` True (every action of a clean trajectory, eos included), independently with probability
    ``p_noise``, the pair ``(w, <backspace>)`` is inserted, where ``w`` is an ordinary token different from
    ``actions[i]``. The pair leaves the state unchanged, so the augmented trajectory replays to exactly the
    same final sequence. In the ``expert`` mask, ``w`` is ``False`` (masked out of expert / BC terms) and the
    backspace after it is ``True`` (the right action in the state after a mistake).

    Args:
        trajectories: the trajectories to augment (usually clean ones from :func:`collect`).
        p_noise: insertion probability per position, in ``[0, 1]``.
        rng: a ``numpy.random.Generator`` (advanced in place) or an int seed. The draws per trajectory are
            ``T`` uniforms for the positions, then whatever ``noise`` draws.
        noise: ``"uniform"`` (:class:`UniformNoise` over the tokens ``source`` rules out, or
            :func:`uniform_noise` without a source) or a :data:`NoiseFn` ``(trajectory, positions, rng) ->
            wrong_tokens``, e.g. samples from a model ("model noise"); its output is validated. A noise
            object whose class defines ``from_candidates(trajectory, positions, candidates, rng)`` beside
            ``__call__`` (as :class:`UniformNoise` and the agents' model noise do) is handed the candidates
            ``augment`` already computed, when its ``source`` is ``source`` and its ``floor`` ``-inf``.
        max_length: if given, skip positions where the wrong token would make the visible sequence reach
            ``max_length`` (the environment truncates there), so the augmented trajectory plays out in a
            ``SequenceEnv(max_length=max_length)``. ``None``: no limit.
        source: the source of the demonstrations; where it knows its probabilities, mistakes are inserted only
            where it rules some token out, and ``"uniform"`` noise draws only such tokens
            (:func:`mistake_candidates`), so every inserted token is a real mistake (check with
            :func:`inserted_allowed_share`).

    Returns:
        One new trajectory per input, in order (the input itself where nothing was inserted).

    Raises:
        ValueError: ``p_noise`` outside ``[0, 1]``, an unknown noise name, or a ``NoiseFn`` output of the
            wrong shape, or holding a non-ordinary token or the expert's own action.
    """
    if isinstance(p_noise, (bool, np.bool_)) or not isinstance(
        p_noise, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"p_noise must be a number in [0, 1], got {type(p_noise).__name__}: {p_noise!r}.")
    p = float(p_noise)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p_noise must be a probability in [0, 1], got {p_noise!r}.")
    if max_length is not None and (
        isinstance(max_length, bool) or int(max_length) != max_length or max_length < 1
    ):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}.")
    noise_fn: NoiseFn
    if isinstance(noise, str):
        check_option("noise", noise, NOISE_NAMES, hint=" or pass a callable (trajectory, positions, rng)")
        noise_fn = UniformNoise(source)
    elif callable(noise):
        noise_fn = noise
    else:
        raise TypeError(f"noise must be 'uniform' or a callable, got {type(noise).__name__}.")
    gen = _as_generator(rng)
    knows = source is not None and callable(getattr(source, "next_token_logprobs", None))
    # the noise's own draw from the candidates computed below, where it gives what calling the noise would
    reuse = _candidate_draw(noise_fn, source) if knows else None

    out: list[Trajectory] = []
    for k, traj in enumerate(_as_trajectory_list(trajectories, "augment")):
        T = len(traj)
        vocab = traj.vocab
        coin = gen.random(T) < p  # (T,)
        eligible = traj.expert.copy()  # (T,)
        if max_length is not None:
            eligible &= traj.visible_lengths()[:-1] + 1 < max_length
        candidates = None  # (T, n_tokens) the real mistakes before each action, where the source knows them
        if knows:  # a position where the source rules no token out has no mistake to insert
            candidates = mistake_candidates(traj, np.arange(T), source)
            eligible &= candidates.any(axis=1)
        if isinstance(noise_fn, UniformNoise) and vocab.n_tokens == 1:
            eligible &= traj.actions >= vocab.n_tokens  # no wrong token exists in place of the only token
        chosen = np.flatnonzero(coin & eligible).astype(np.int64)  # (K,)
        K = int(chosen.shape[0])
        if K == 0:
            out.append(traj)
            continue
        if reuse is not None and candidates is not None:  # as noise_fn would, without recomputing them
            drawn = reuse(traj, _readonly(chosen.copy()), candidates[chosen], gen)
        else:
            drawn = noise_fn(traj, _readonly(chosen.copy()), gen)
        wrong = _check_noise(drawn, traj, chosen, k)  # (K,)

        # Original action i moves to i + 2 * (number of insertions at or before i).
        inserted = np.zeros(T, dtype=np.int64)
        inserted[chosen] = 1
        new_pos = np.arange(T) + 2 * np.cumsum(inserted)  # (T,)
        actions = np.empty(T + 2 * K, dtype=np.int64)
        expert = np.empty(T + 2 * K, dtype=np.bool_)
        actions[new_pos] = traj.actions
        expert[new_pos] = traj.expert
        actions[new_pos[chosen] - 2] = wrong
        expert[new_pos[chosen] - 2] = False
        actions[new_pos[chosen] - 1] = vocab.backspace_id
        expert[new_pos[chosen] - 1] = True
        out.append(
            Trajectory(
                prompt=traj.prompt, actions=actions, terminal=traj.terminal, expert=expert, vocab=vocab
            )
        )
    return out


def _candidate_draw(noise_fn: object, source: object) -> Callable[..., np.ndarray] | None:
    """``noise_fn.from_candidates`` where it returns what ``noise_fn`` itself would from the candidates
    :func:`augment` computed: one class defines both its ``__call__`` and its ``from_candidates`` (so a
    subclass that overrides either is called as it is), and its ``source`` and ``floor`` are augment's."""
    mro = type(noise_fn).__mro__
    owner = next((k for k in mro if "__call__" in vars(k)), None)
    if owner is None or owner is not next((k for k in mro if "from_candidates" in vars(k)), None):
        return None
    if getattr(noise_fn, "source", None) is not source or getattr(noise_fn, "floor", None) != -math.inf:
        return None
    draw: Callable[..., np.ndarray] = noise_fn.from_candidates  # type: ignore[attr-defined]
    return draw


def _check_noise(wrong: Any, traj: Trajectory, chosen: np.ndarray, k: int) -> np.ndarray:
    """Validate a NoiseFn's output: shape ``(K,)``, ordinary tokens, never the expert's action."""
    w = np.asarray(wrong)
    where = f"noise function output for trajectory {k}"
    if w.shape != chosen.shape:
        raise ValueError(
            f"{where} has shape {w.shape}; expected one token per position, shape {chosen.shape}."
        )
    if w.size and (w.dtype == np.bool_ or not np.issubdtype(w.dtype, np.integer)):
        raise ValueError(f"{where} must hold integer token ids, got dtype {w.dtype}.")
    w = w.astype(np.int64)
    n_tok = traj.vocab.n_tokens
    bad = np.flatnonzero((w < 0) | (w >= n_tok))
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"{where}: token {int(w[j])} at position {int(chosen[j])} is not an ordinary token; a wrong "
            f"token must be in 0..{n_tok - 1} (never eos, backspace or pad)."
        )
    same = np.flatnonzero(w == traj.actions[chosen])
    if same.size:
        j = int(same[0])
        raise ValueError(
            f"{where}: token {int(w[j])} at position {int(chosen[j])} equals the expert's action there; a "
            "wrong token must differ from it."
        )
    return w


# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Transitions:
    """Flat ``(state, action, next state)`` arrays of trajectories, in ``SequenceEnv``'s observation format.

    Row ``n`` is one step; the rows of a trajectory are consecutive and in order. Observations are the visible
    sequence (prompt + generated ids, eos included once taken), left-aligned and padded with ``vocab.pad_id``.
    The arrays are fresh and writable (not shared with the trajectories). Index with an int array, a bool mask
    or a slice to get a sub-batch: ``batch[idx]``.

    Attributes:
        obs: int64 ``(N, max_length)``: state before the action.
        acts: int64 ``(N,)``: the action.
        next_obs: int64 ``(N, max_length)``: state after the action.
        dones: bool ``(N,)``: True at the last step of a terminal trajectory (eos); a cut trajectory ends with
            ``False`` there (a time limit, not a terminal state).
        expert: bool ``(N,)``: the trajectory's expert flag of the action.
        lengths: int64 ``(N,)``: visible length of ``obs`` (number of non-pad ids).
        prompt_lengths: int64 ``(N,)``: prompt length of the trajectory; backspace is allowed in ``obs[n]``
            iff ``lengths[n] > prompt_lengths[n]``.
    """

    obs: np.ndarray
    acts: np.ndarray
    next_obs: np.ndarray
    dones: np.ndarray
    expert: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray

    def __post_init__(self) -> None:
        n = self.acts.shape[0]
        if self.obs.ndim != 2 or self.obs.shape[0] != n or self.next_obs.shape != self.obs.shape:
            raise ValueError(
                f"obs and next_obs must both have shape (N, max_length) with N = len(acts) = {n}; got "
                f"{self.obs.shape} and {self.next_obs.shape}."
            )
        for name in ("acts", "dones", "expert", "lengths", "prompt_lengths"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {getattr(self, name).shape}.")

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    def __getitem__(self, key: Any) -> Transitions:
        if isinstance(key, (int, np.integer)):
            key = slice(int(key), int(key) + 1 or None)
        return Transitions(**{f.name: getattr(self, f.name)[key] for f in dataclasses.fields(self)})


_STATE_CELLS = 1 << 21  # cells of state matrix that to_transitions builds at a time (16 MiB of int64)


def to_transitions(trajectories: Iterable[Trajectory], *, max_length: int) -> Transitions:
    """Flatten trajectories into :class:`Transitions` (obs and next_obs in ``SequenceEnv``'s format).

    Args:
        trajectories: trajectories sharing one vocabulary.
        max_length: observation width, the ``max_length`` of the environment the data is meant for.

    Raises:
        ValueError: if a state of some trajectory is longer than ``max_length`` (the message names the
            trajectory and the length needed), or if the trajectories have different vocabularies.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}.")
    L = int(max_length)
    trajs = _as_trajectory_list(trajectories, "to_transitions")
    vocab = _common_vocab(trajs, "to_transitions")
    if vocab is None:
        empty = np.zeros(0, dtype=np.int64)
        return Transitions(
            obs=np.zeros((0, L), dtype=np.int64),
            acts=empty,
            next_obs=np.zeros((0, L), dtype=np.int64),
            dones=np.zeros(0, dtype=np.bool_),
            expert=np.zeros(0, dtype=np.bool_),
            lengths=empty.copy(),
            prompt_lengths=empty.copy(),
        )
    pad = vocab.pad_id
    histories, n = dynamics.pad_histories([t.actions for t in trajs], fill=pad)  # (K, T_max), (K,)
    prompts, P = dynamics.pad_histories([t.prompt for t in trajs], fill=pad)  # (K, P_max), (K,)
    vis = dynamics.visible_lengths(histories, P, vocab, n_steps=n)  # (K, T_max+1)
    too_long = np.flatnonzero(vis.max(axis=1) > L)
    if too_long.size:
        k = int(too_long[0])
        raise ValueError(
            f"trajectory {k} reaches a visible length of {int(vis[k].max())} > max_length={L}; raise "
            "max_length or drop that trajectory."
        )
    real = np.arange(histories.shape[1]) < n[:, None]  # (K, T_max)
    N = int(n.sum())
    obs = np.empty((N, L), dtype=np.int64)  # (N, L)
    next_obs = np.empty((N, L), dtype=np.int64)  # (N, L)
    # State matrices in chunks of trajectories: at most _STATE_CELLS cells of (chunk, T+1, L+1) at a time.
    row, k = 0, 0
    while k < len(trajs):
        lo, width = k, 1
        while k < len(trajs) and (k - lo + 1) * (max(width, int(n[k])) + 1) * (L + 1) <= _STATE_CELLS:
            width = max(width, int(n[k]))
            k += 1
        if k == lo:  # one trajectory larger than the budget: alone
            width, k = max(width, int(n[k])), k + 1
        c = slice(lo, k)
        states = dynamics.state_matrix(
            prompts[c], histories[c, :width], P[c], vocab, width=L, n_steps=n[c]
        )  # (chunk, width+1, L)
        rc = real[c, :width]  # (chunk, width)
        m = int(n[c].sum())
        obs[row : row + m] = states[:, :-1][rc]
        next_obs[row : row + m] = states[:, 1:][rc]
        row += m
    ends = np.cumsum(n) - 1  # (K,) row of each trajectory's last step
    terminal = np.array([t.terminal for t in trajs], dtype=np.bool_) & (n > 0)
    dones = np.zeros(N, dtype=np.bool_)
    dones[ends[terminal]] = True
    acts = histories[real]
    expert = np.concatenate([t.expert for t in trajs]).astype(np.bool_, copy=False)
    lengths = vis[:, :-1][real]
    prompt_lengths = np.repeat(P, n)
    return Transitions(
        obs=obs,
        acts=acts,
        next_obs=next_obs,
        dones=dones,
        expert=expert,
        lengths=lengths,
        prompt_lengths=prompt_lengths,
    )


# ------------------------------------------------------------------------------------------------------------
# files
_KEYS = ("header", "prompts", "prompt_offsets", "actions", "action_offsets", "expert", "terminal")


def _offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def save_demonstrations(
    path: str | os.PathLike[str], trajectories: Iterable[Trajectory], *, vocab: Vocabulary | None = None
) -> None:
    """Write a demonstration set to one ``.npz`` file, atomically.

    The file holds a JSON header (format name, :data:`FORMAT_VERSION`, vocabulary, count) and the concatenated
    prompts, actions, expert flags with their offsets, and the terminal flags. It is written to a temporary
    file in the same directory, flushed to disk (``fsync``), then renamed over ``path`` (``os.replace``): a
    reader sees either the old file or the complete new one, and a failure leaves the old file untouched and
    no temporary file behind. ``path`` is used as given (no extension is added).

    Args:
        path: target file.
        trajectories: trajectories sharing one vocabulary. May be empty, then ``vocab`` is required.
        vocab: the vocabulary to record; optional when there are trajectories (must then equal theirs).

    Raises:
        ValueError: different vocabularies, or an empty set without ``vocab``.
    """
    trajs = _as_trajectory_list(trajectories, "save_demonstrations")
    found = _common_vocab(trajs, "save_demonstrations")
    if vocab is not None:
        _check_vocab(vocab)
        if found is not None and found != vocab:
            raise ValueError(
                f"save_demonstrations: the trajectories' vocabulary differs from vocab=: {found!r}."
            )
    elif found is None:
        raise ValueError("save_demonstrations: an empty set records no vocabulary; pass vocab=.")
    v = vocab if vocab is not None else found
    assert v is not None
    header = {
        "format": _FORMAT_NAME,
        "version": FORMAT_VERSION,
        "vocab": v.to_dict(),
        "n_trajectories": len(trajs),
    }
    arrays: dict[str, Any] = {
        "header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
        "prompts": np.concatenate([np.zeros(0, np.int64), *(t.prompt for t in trajs)]),
        "prompt_offsets": _offsets([t.prompt_length for t in trajs]),
        "actions": np.concatenate([np.zeros(0, np.int64), *(t.actions for t in trajs)]),
        "action_offsets": _offsets([len(t) for t in trajs]),
        "expert": np.concatenate([np.zeros(0, np.bool_), *(t.expert for t in trajs)]),
        "terminal": np.asarray([t.terminal for t in trajs], dtype=np.bool_).reshape(len(trajs)),
    }
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _vocab_difference(in_file: Vocabulary, given: Vocabulary) -> str:
    if in_file.n_tokens != given.n_tokens:
        return f"the file has {in_file.n_tokens} ordinary tokens, the given vocabulary {given.n_tokens}"
    for i, (a, b) in enumerate(zip(in_file.tokens, given.tokens)):
        if a != b:
            return f"token {i} is {a!r} in the file and {b!r} in the given vocabulary"
    return f"the separators differ ({in_file.separator!r} in the file, {given.separator!r} given)"


#: Default limit on the decompressed size of a demonstration file (:func:`load_demonstrations`'s ``max_bytes``).
MAX_DEMONSTRATION_BYTES = 4 * 2**30


def _check_npz_sizes(f: IO[bytes], max_bytes: int) -> str | None:
    """Why the ``.npz`` archive in ``f`` must not be decompressed (its members declare more than ``max_bytes``
    in all, or an array header claims more data than its member holds), or ``None``. Reads headers only."""
    import zipfile

    try:
        archive = zipfile.ZipFile(f)
    except zipfile.BadZipFile:
        return None  # not a zip: np.load reports it
    with archive:
        members = archive.infolist()
        total = sum(info.file_size for info in members)
        if total > max_bytes:
            return (
                f"it decompresses to {total} bytes, over the limit of {max_bytes} (pass max_bytes= to "
                "load_demonstrations to allow more)."
            )
        for info in members:
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                except (ValueError, OSError):
                    return None  # a damaged header: np.load reports it
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if need > info.file_size:
                return f"the array {info.filename} declares {need} bytes but holds {info.file_size}: corrupt."
    f.seek(0)
    return None


def load_demonstrations(
    path: str | os.PathLike[str], *, vocab: Vocabulary | None = None, max_bytes: int = MAX_DEMONSTRATION_BYTES
) -> list[Trajectory]:
    """Read a demonstration set written by :func:`save_demonstrations`.

    Args:
        path: the file.
        vocab: if given, the file's vocabulary must equal it, and the trajectories use this object; otherwise
            the file's vocabulary is used.
        max_bytes: refuse, before decompressing anything, a file whose arrays decompress to more than this
            (default :data:`MAX_DEMONSTRATION_BYTES`, 4 GiB): a small file cannot exhaust memory.

    Returns:
        The trajectories, in the order saved (all sharing one ``Vocabulary`` object); ``[]`` for an empty set.

    Raises:
        FileNotFoundError: no such file.
        DemonstrationFileError: the file decompresses beyond ``max_bytes``, is corrupt or truncated, not a
            seqgym demonstration file, of another
            format version, holds invalid trajectories, or its vocabulary differs from ``vocab``. The message
            names the problem and the file.

    Example:
        >>> import os, tempfile
        >>> from seqgym.vocab import Vocabulary
        >>> v = Vocabulary(["a", "b"])
        >>> demos = [Trajectory.from_completion([0], [1, 2], vocab=v),
        ...          Trajectory.from_completion([], [0], vocab=v)]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_demonstrations(os.path.join(d, "demos.npz"), demos)
        ...     load_demonstrations(os.path.join(d, "demos.npz"), vocab=v) == demos
        True
    """
    p = os.fspath(path)

    def fail(problem: str) -> DemonstrationFileError:
        return DemonstrationFileError(f"{p}: {problem}")

    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise ValueError(f"max_bytes must be an int >= 1, got {max_bytes!r}.")
    with open(p, "rb") as f:  # FileNotFoundError / PermissionError pass through unchanged
        try:
            problem = _check_npz_sizes(f, int(max_bytes))
        except Exception as e:  # damaged zip structures raise many types: all mean corrupt
            raise fail(f"corrupt or truncated file, cannot be read as .npz ({type(e).__name__}: {e}).") from e
        if problem is not None:
            raise fail(problem)
        f.seek(0)
        try:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise fail("not an .npz archive (a single .npy array); not a seqgym demonstration file.")
            with npz:
                missing = [k for k in _KEYS if k not in npz.files]
                if "header" in missing:
                    raise fail("no 'header' array; not a seqgym demonstration file.")
                data = {k: npz[k] for k in _KEYS if k in npz.files}
        except DemonstrationFileError:
            raise
        except Exception as e:  # zipfile / zlib / numpy raise many types on damaged bytes: all mean corrupt
            raise fail(f"corrupt or truncated file, cannot be read as .npz ({type(e).__name__}: {e}).") from e

    try:
        header = json.loads(data["header"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(f"corrupt header, not valid JSON ({e}).") from e
    if not isinstance(header, dict) or header.get("format") != _FORMAT_NAME:
        raise fail("not a seqgym demonstration file (the header names another format).")
    if header.get("version") != FORMAT_VERSION:
        raise fail(
            f"format version {header.get('version')!r}, but this seqgym reads version {FORMAT_VERSION}; "
            "re-create the file with this seqgym version."
        )
    if missing:
        raise fail(f"missing arrays {missing}; the file is incomplete or corrupt.")
    try:
        file_vocab = Vocabulary.from_dict(header["vocab"])
    except (KeyError, TypeError, ValueError) as e:
        raise fail(f"corrupt vocabulary in the header ({e}).") from e
    if vocab is not None:
        _check_vocab(vocab)
        if file_vocab != vocab:
            raise fail(f"vocabulary mismatch: {_vocab_difference(file_vocab, vocab)}.")
        file_vocab = vocab

    n = header.get("n_trajectories")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise fail(f"corrupt header: n_trajectories is {n!r}.")
    for name in ("prompt_offsets", "action_offsets"):
        off, flat = data[name], data[name.replace("_offsets", "s")]
        if (
            off.shape != (n + 1,)
            or not np.issubdtype(off.dtype, np.integer)
            or off[0] != 0
            or np.any(np.diff(off) < 0)
            or off[-1] != flat.shape[0]
            or flat.ndim != 1
        ):
            raise fail(f"corrupt '{name}': offsets do not match {n} trajectories and the concatenated data.")
    if data["expert"].shape != data["actions"].shape or data["terminal"].shape != (n,):
        raise fail("corrupt 'expert' or 'terminal': shapes do not match the actions.")

    po, ao = data["prompt_offsets"], data["action_offsets"]
    prompts, actions, expert, terminal = data["prompts"], data["actions"], data["expert"], data["terminal"]
    out: list[Trajectory] = []
    for k in range(n):
        try:
            out.append(
                Trajectory(
                    prompt=prompts[po[k] : po[k + 1]],
                    actions=actions[ao[k] : ao[k + 1]],
                    terminal=bool(terminal[k]) if terminal.dtype == np.bool_ else terminal[k],
                    expert=expert[ao[k] : ao[k + 1]],
                    vocab=file_vocab,
                )
            )
        except (ValueError, TypeError) as e:
            raise fail(f"trajectory {k} is invalid: {e}") from e
    return out
