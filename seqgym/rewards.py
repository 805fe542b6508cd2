"""Optional rewards for sequence environments (RL baselines; imitation learning needs none).

A reward is a function of one transition ``(state, action, next_state, terminated) -> float`` where the states
are tuples of token ids (the visible sequence, prompt included, eos included once taken). Every reward here,
the built-in ones included, has exactly that signature, so a learned reward (for example the one recovered
by a trained critic, ``r = Q - gamma * V'``) plugs in as a plain callable or as a :class:`Reward` subclass.

Built-in rewards, chosen by name (``SequenceEnv(..., reward="logprob")``):

- ``None`` (the environments' default): ``"valid"`` when the source can judge a sequence (``is_valid``: Markov,
  Dyck, Arithmetic), else ``"none"`` (Text). So evaluating a policy by its return (SB3's ``evaluate_policy``)
  measures the fraction of valid sequences wherever validity is defined, and is ``0.0`` for text.
- ``"none"``: always ``0.0`` (imitation learning needs no reward).
- ``"logprob"``: the source's exact log-probability of the appended token (eos included) given the state,
  floored at ``logprob_floor`` (so impossible tokens cost a finite amount). A backspace that deletes a token
  returns minus the reward that token earned, so the return of an episode is
  ``sum_t max(log p(x_t | x_<t), logprob_floor)`` over the *final visible* generated tokens (the floored
  log-probability of what is left). A backspace at the prompt boundary (a no-op) gets ``0.0``. Needs a
  source with ``next_token_logprobs`` (Markov, Dyck, Arithmetic; not Text).
- ``"valid"``: ``1.0`` at termination (eos) if ``source.is_valid(next_state)``, else ``0.0``; ``0.0`` on
  every other step, truncation included. Needs a source with ``is_valid``.

Example:
    >>> from seqgym.sources.dyck import Dyck
    >>> src = Dyck(2, max_depth=2, max_length=4)
    >>> r = make_reward("logprob", src)
    >>> o, c, eos, bk = 0, 1, src.vocab.eos_id, src.vocab.backspace_id
    >>> round(r((), o, (o,), False), 4)            # log(1/2): first opener, 2 kinds
    -0.6931
    >>> round(r((o,), c, (o, c), False), 4)        # log(1/2): close with probability 1 - p_open
    -0.6931
    >>> round(r((o, c), bk, (o,), False), 4)       # backspace returns what the deleted token earned
    0.6931
    >>> r((o,), 2 * 1 + 1, (o, 3), False)          # wrong closer: floored
    -20.0
    >>> make_reward("valid", src)((o, c), eos, (o, c, eos), True)
    1.0
    >>> make_reward(None, src).name                 # the default: Dyck can judge validity
    'valid'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from seqgym._options import REWARD_NAMES, RewardName, check_option
from seqgym.sources.base import Source, has_exact_probabilities, has_validity

__all__ = [
    "REWARD_NAMES",
    "CallableReward",
    "LogProbReward",
    "NoReward",
    "Reward",
    "RewardFn",
    "ValidReward",
    "default_reward_name",
    "make_reward",
]

State = tuple[int, ...]
RewardFn = Callable[[State, int, State, bool], float]
"""``(state, action, next_state, terminated) -> reward``; states are tuples of token ids."""


_EXACT_SOURCES = "Markov, Dyck and Arithmetic"


class Reward:
    """Base class of rewards: a callable on one transition, plus a batched form for vector environments.

    Subclasses implement :meth:`__call__`; :meth:`batch` loops over it unless a subclass has something faster.

    Attributes:
        name: short name shown in reprs and error messages.
        needs_states: ``False`` when the reward ignores the states (then environments skip building the state
            tuples and copying the observations before a step).
    """

    name: str = "custom"
    needs_states: bool = True

    def __call__(self, state: State, action: int, next_state: State, terminated: bool) -> float:
        raise NotImplementedError

    def batch(
        self,
        states: np.ndarray,
        lengths: np.ndarray,
        actions: np.ndarray,
        next_states: np.ndarray,
        next_lengths: np.ndarray,
        terminated: np.ndarray,
    ) -> np.ndarray:
        """Rewards of ``B`` transitions given as padded arrays (the vector environment's layout).

        Args:
            states: ``(B, max_length)`` int64 observations before the actions (row ``b`` holds its state in
                ``states[b, :lengths[b]]``).
            lengths: ``(B,)`` visible lengths before the actions.
            actions: ``(B,)`` int64 action ids.
            next_states: ``(B, max_length)`` int64 observations after the actions.
            next_lengths: ``(B,)`` visible lengths after the actions.
            terminated: ``(B,)`` bool, whether each action ended its episode with eos.

        Returns:
            ``(B,)`` float64 rewards, equal to calling the reward on each transition.
        """
        out = np.zeros(len(actions), dtype=np.float64)
        for b, (n, a, n2, t) in enumerate(
            zip(lengths.tolist(), actions.tolist(), next_lengths.tolist(), terminated.tolist())
        ):
            out[b] = self(tuple(states[b, :n].tolist()), a, tuple(next_states[b, :n2].tolist()), t)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoReward(Reward):
    """Always ``0.0``."""

    name = "none"
    needs_states = False

    def __call__(self, state: State, action: int, next_state: State, terminated: bool) -> float:
        return 0.0

    def batch(
        self,
        states: np.ndarray,
        lengths: np.ndarray,
        actions: np.ndarray,
        next_states: np.ndarray,
        next_lengths: np.ndarray,
        terminated: np.ndarray,
    ) -> np.ndarray:
        return np.zeros(len(actions), dtype=np.float64)


class LogProbReward(Reward):
    """The source's floored log-probability of each token; backspace undoes the reward of the deleted token.

    Args:
        source: a source with ``next_token_logprobs(prefix) -> (n_actions,)`` natural-log probabilities.
        logprob_floor: lower bound of a token's reward (a finite float), so impossible tokens cost
            ``logprob_floor`` instead of ``-inf``.
        cache_size: how many prefixes' log-probabilities to remember (a backspace looks up the prefix of the
            token it deletes, which was usually just queried); ``0`` disables the cache.
    """

    name = "logprob"

    def __init__(self, source: Source, *, logprob_floor: float = -20.0, cache_size: int = 4096) -> None:
        if not has_exact_probabilities(source):
            raise ValueError(
                f"reward='logprob' needs a source with exact next-token probabilities (next_token_logprobs); "
                f"{type(source).__name__} has none. The built-in sources {_EXACT_SOURCES} have them "
                "(Text does not): use one of those, or pick reward='none', 'valid' or a callable."
            )
        self.logprob_floor = _check_floor(logprob_floor)
        self.source = source
        self.backspace_id: int = source.vocab.backspace_id
        self._next_token_logprobs: Callable[[list[int]], np.ndarray] = source.next_token_logprobs  # type: ignore[attr-defined]
        self._cache: dict[State, np.ndarray] = {}
        self._cache_size = int(cache_size)

    def token_reward(self, prefix: State, token: int) -> float:
        """``max(log p(token | prefix), logprob_floor)``."""
        lp = self._cache.get(prefix)
        if lp is None:
            lp = np.asarray(self._next_token_logprobs(list(prefix)), dtype=np.float64)
            if self._cache_size > 0:
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()
                self._cache[prefix] = lp
        value = float(lp[token])
        return value if value > self.logprob_floor else self.logprob_floor  # -inf and nan -> floor

    def __call__(self, state: State, action: int, next_state: State, terminated: bool) -> float:
        if action == self.backspace_id:
            if len(next_state) < len(state):
                return -self.token_reward(next_state, state[-1])
            return 0.0  # no-op at the prompt boundary
        return self.token_reward(state, action)

    def __repr__(self) -> str:
        return f"LogProbReward(logprob_floor={self.logprob_floor})"


class ValidReward(Reward):
    """``1.0`` when an episode terminates (eos) with a sequence the source accepts, else ``0.0``.

    Args:
        source: a source with ``is_valid(sequence) -> bool`` on prompt + completion (eos included).
    """

    name = "valid"

    def __init__(self, source: Source) -> None:
        if not has_validity(source):
            raise ValueError(
                f"reward='valid' needs a source that can judge a sequence (is_valid); "
                f"{type(source).__name__} has none. The built-in sources {_EXACT_SOURCES} have it: "
                "use one of those, or pick reward='none' or a callable."
            )
        self.source = source
        self._is_valid: Callable[[list[int]], bool] = source.is_valid  # type: ignore[attr-defined]

    def __call__(self, state: State, action: int, next_state: State, terminated: bool) -> float:
        return 1.0 if terminated and bool(self._is_valid(list(next_state))) else 0.0

    def batch(
        self,
        states: np.ndarray,
        lengths: np.ndarray,
        actions: np.ndarray,
        next_states: np.ndarray,
        next_lengths: np.ndarray,
        terminated: np.ndarray,
    ) -> np.ndarray:
        out = np.zeros(len(actions), dtype=np.float64)
        for b in np.flatnonzero(terminated).tolist():
            out[b] = 1.0 if bool(self._is_valid(next_states[b, : next_lengths[b]].tolist())) else 0.0
        return out


class CallableReward(Reward):
    """Wraps any ``(state, action, next_state, terminated) -> float`` callable (e.g. a learned reward)."""

    def __init__(self, fn: RewardFn) -> None:
        if not callable(fn):
            raise TypeError(f"A reward function must be callable, got {type(fn).__name__}.")
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, state: State, action: int, next_state: State, terminated: bool) -> float:
        return float(self.fn(state, action, next_state, terminated))

    def __repr__(self) -> str:
        return f"CallableReward({self.name})"


def _check_floor(logprob_floor: float) -> float:
    if isinstance(logprob_floor, bool) or not isinstance(
        logprob_floor, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"logprob_floor must be a finite float, got {type(logprob_floor).__name__}.")
    value = float(logprob_floor)
    if not math.isfinite(value):
        raise ValueError(f"logprob_floor must be finite (e.g. -20.0), got {value}.")
    if value > 0:
        raise ValueError(
            f"logprob_floor must be <= 0 (a log-probability floor, e.g. -20.0), got {value}: a positive floor "
            "would pay impossible tokens more than certain ones."
        )
    return value


def default_reward_name(source: object) -> RewardName:
    """The reward an environment uses when none is given: ``"valid"`` if ``source`` has ``is_valid``, else
    ``"none"``."""
    return "valid" if has_validity(source) else "none"


def make_reward(
    reward: RewardName | RewardFn | Reward | None, source: Source, *, logprob_floor: float = -20.0
) -> Reward:
    """Build the :class:`Reward` that ``reward`` names.

    Args:
        reward: ``None`` (:func:`default_reward_name` of the source), ``"none"``, ``"logprob"``, ``"valid"``,
            a :class:`Reward`, or a callable ``(state, action, next_state, terminated) -> float``.
        source: the environment's source (needed by ``"logprob"`` and ``"valid"``).
        logprob_floor: floor of the ``"logprob"`` reward (ignored by the others).

    Raises:
        ValueError: unknown name, or a source that lacks what the reward needs.
        TypeError: ``reward`` is neither a string nor callable.
    """
    if isinstance(reward, Reward):
        return reward
    if reward is None:
        reward = default_reward_name(source)
    if isinstance(reward, str):
        reward = check_option(
            "reward",
            reward,
            REWARD_NAMES,
            hint=" or pass a callable (state, action, next_state, terminated) -> float",
        )
        if reward == "none":
            return NoReward()
        if reward == "logprob":
            return LogProbReward(source, logprob_floor=logprob_floor)
        return ValidReward(source)
    if callable(reward):
        return CallableReward(reward)
    raise TypeError(
        f"reward must be one of {list(REWARD_NAMES)} or a callable "
        f"(state, action, next_state, terminated) -> float, got {type(reward).__name__}."
    )
