"""``SequenceEnv``: sequence generation with a ``<backspace>`` action, as a Gymnasium environment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from seqgym._options import RENDER_MODES, RenderMode, RewardName, check_option
from seqgym.dynamics import action_mask, apply_action, backspace_allowed, replay
from seqgym.render import FrameRenderer
from seqgym.rewards import Reward, RewardFn, make_reward
from seqgym.sources.base import Source
from seqgym.vocab import Vocabulary

__all__ = ["BACKSPACE_GLYPH", "SequenceEnv", "render_history"]

BACKSPACE_GLYPH = "⌫"
"""How :func:`render_history` draws a backspace action."""

_OPTION_KEYS = ("prompt", "generated")


class SequenceEnv(gym.Env[np.ndarray, np.int64]):
    """Generate a sequence token by token, with a ``<backspace>`` action that deletes the last generated one.

    ## Description

    A *prompt* (possibly empty) is drawn from a sequence ``source`` (or given in ``reset``); the agent then
    appends tokens one at a time. The state is the visible sequence ``prompt + generated tokens``. Besides the
    ordinary tokens, the agent can take ``eos`` (ends the episode) and ``<backspace>`` (deletes the last
    generated token; the prompt can never be deleted). This is the MDP of SequenceMatch (Cundy & Ermon,
    ICLR 2024): imitation learning with backtracking. What an action history means is defined once, in
    :func:`seqgym.dynamics.replay`; this environment follows it step by step.

    ## Action Space

    ``Discrete(n_actions)`` with ``n_actions = vocab.n_tokens + 2``:

    | id                | action                                              |
    |-------------------|-----------------------------------------------------|
    | ``0 .. n_tokens-1`` | append that token                                 |
    | ``n_tokens``        | ``eos``: append eos and end the episode           |
    | ``n_tokens + 1``    | ``<backspace>``: delete the last generated token  |

    At the prompt boundary (no generated token left) ``<backspace>`` is masked out
    (``info["action_mask"]``, :meth:`action_masks`); if taken anyway it is a no-op that still counts as a
    step, so random-action checkers never crash. The pad id ``n_actions`` is never an action: actions outside
    ``0 .. n_actions-1`` (or not integers, as ``action_space.contains`` decides) raise ``ValueError``.

    ## Observation Space

    ``Box(low=0, high=pad_id, shape=(max_length,), dtype=int64)``: the visible sequence (prompt + generated
    tokens, eos included once taken), left-aligned and filled with ``pad_id`` (``= n_actions``) on the right.
    Token ids are kept as integers (no one-hot), so Stable-Baselines3 accepts the observation as it is.

    ## Starting State

    The prompt given as ``reset(options={"prompt": [...]})``, otherwise the prompt of
    ``source.sample(np_random)`` (a source may define ``sample_prompt(rng) -> list[int]`` to draw only the
    prompt; the environment then uses it instead). The prompt must be shorter than ``max_length`` and hold
    only ordinary token ids (no eos, backspace or pad).

    ## Reward

    Chosen by ``reward`` (see :mod:`seqgym.rewards`):

    - ``None`` (the default): ``"valid"`` when the source can judge a sequence (it has ``is_valid``: Markov,
      Dyck, Arithmetic), so that an evaluation by return (SB3's ``evaluate_policy``) gives the fraction of
      valid sequences; ``"none"`` otherwise (Text: no judge; pass a callable to score text);
    - ``"none"``: ``0.0`` (imitation learning needs no reward);
    - ``"logprob"``: the source's exact log-probability of each token floored at ``logprob_floor``; a
      backspace returns minus what the deleted token earned, so an episode's return is the floored
      log-probability of its final visible generated sequence; a no-op backspace gets ``0.0``;
    - ``"valid"``: ``1.0`` at eos if ``source.is_valid`` accepts the final sequence, else ``0.0``;
    - a callable ``(state, action, next_state, terminated) -> float`` on tuples of ids (e.g. a learned reward).

    ## Episode End

    - Termination: the agent takes ``eos``.
    - Truncation (only when not terminated): the visible length reaches ``max_length`` after a token, or the
      number of steps (backspaces and no-op backspaces included) reaches ``max_steps``.

    Stepping after the end without ``reset`` raises :class:`gymnasium.error.ResetNeeded`.

    ## Information

    ``reset`` and ``step`` return ``info`` with

    - ``length`` (int): visible length (prompt + generated);
    - ``prompt_length`` (int);
    - ``action_mask`` (``int8``, shape ``(n_actions,)``): ``1`` for allowed actions (all but ``<backspace>``
      at the prompt boundary), the mask *of the state this info comes with*, in Gymnasium's type
      (``env.action_space.sample(mask=info["action_mask"])`` needs ``int8``). :meth:`action_masks` returns the
      same values as ``bool`` for the env's *current* state (sb3-contrib's MaskablePPO calls it); an
      ``info`` kept from an earlier step is stale, ``action_masks()`` never is;
    - ``generated`` (``list[int]``): the visible generated ids (eos included once taken).

    ## Arguments

    ```python
    import gymnasium as gym
    import seqgym.registration

    seqgym.registration.register_envs()
    env = gym.make("seqgym/Dyck-v0", n_types=3, reward="valid", render_mode="ansi")
    ```

    Args:
        source: a :class:`~seqgym.sources.base.Source` (its ``vocab`` fixes the action space).
        max_length: number of ids an observation holds (positive int, larger than any prompt).
        max_steps: steps per episode before truncation (positive int).
        reward: ``None`` (the default: ``"valid"`` if the source has ``is_valid``, else ``"none"``),
            ``"none"``, ``"logprob"``, ``"valid"``, or a callable; see *Reward*.
        logprob_floor: floor of the ``"logprob"`` reward (finite; default ``-20.0``).
        render_mode: ``None``, ``"ansi"`` or ``"rgb_array"``. With ``"ansi"``, ``render()`` returns one line
            of text: the prompt, ``|``, then every generated action in order with a backspace drawn as ``⌫``;
            if the episode used a backspace, ``  =>  `` and the visible sequence follow. Example:
            ``|(]⌫)<eos>  =>  |()<eos>``. With ``"rgb_array"``, ``render()`` returns an ``(H, W, 3)`` uint8
            image of the same size at every step (see :mod:`seqgym.render`): prompt cells grey, the
            deletable generated tokens blue, eos green, the tokens deleted by the latest backspaces red and
            struck through, and a status line. Gymnasium's ``RenderCollection`` (``render_mode=
            "rgb_array_list"`` in ``gym.make``), ``HumanRendering`` (needs pygame) and ``RecordVideo`` (needs
            moviepy) work on it, and so does SB3's ``make_vec_env``, which asks for ``"rgb_array"``.
            ``metadata["render_fps"]`` is 4.

    ## Version History

    - v0: initial version. Before the first release, the default reward changed from ``"none"`` to the
      source's validity (``"valid"`` where the source has ``is_valid``) and ``render_mode="rgb_array"`` was
      added; the ids kept ``v0`` because no released version ever had the old default.

    Example:
        >>> from seqgym.sources.dyck import Dyck
        >>> env = SequenceEnv(Dyck(2, max_length=4), max_length=5, max_steps=10, render_mode="ansi")
        >>> obs, info = env.reset(seed=0)
        >>> obs, info["action_mask"]                   # pad = 6; backspace (5) masked at the boundary
        (array([6, 6, 6, 6, 6]), array([1, 1, 1, 1, 1, 0], dtype=int8))
        >>> for a in [0, 3, 5, 1]:                     # "(", "]" (wrong), backspace, ")"
        ...     obs, reward, terminated, truncated, info = env.step(a)
        >>> obs, info["generated"]
        (array([0, 1, 6, 6, 6]), [0, 1])
        >>> obs, reward, terminated, truncated, info = env.step(4)  # eos
        >>> terminated, truncated, env.render()
        (True, False, '|(]⌫)<eos>  =>  |()<eos>')
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}  # noqa: RUF012 (Gymnasium convention)

    def __init__(
        self,
        source: Source,
        *,
        max_length: int,
        max_steps: int,
        reward: RewardName | RewardFn | Reward | None = None,
        logprob_floor: float = -20.0,
        render_mode: RenderMode | None = None,
    ) -> None:
        _check_source(source)
        self.source = source
        self.vocab: Vocabulary = source.vocab
        self.max_length = check_limit("max_length", max_length)
        self.max_steps = check_limit("max_steps", max_steps)
        self.render_mode = (
            None
            if render_mode is None
            else check_option("render_mode", render_mode, RENDER_MODES, hint=" or None")
        )
        self.reward_fn: Reward = make_reward(reward, source, logprob_floor=logprob_floor)
        self._renderer = (
            FrameRenderer(self.vocab, max_length=self.max_length, max_steps=self.max_steps)
            if render_mode == "rgb_array"
            else None
        )

        v = self.vocab
        self.action_space = spaces.Discrete(v.n_actions)
        self.observation_space = spaces.Box(low=0, high=v.pad_id, shape=(self.max_length,), dtype=np.int64)
        # Masks at the prompt boundary and away from it, computed once by the reference function.
        self._mask_boundary = action_mask(0, 0, v)
        self._mask_free = action_mask(1, 0, v)
        self._mask_boundary_i8 = self._mask_boundary.astype(np.int8)
        self._mask_free_i8 = self._mask_free.astype(np.int8)

        self._obs = np.full(self.max_length, v.pad_id, dtype=np.int64)  # (max_length,)
        self._state: list[int] = []  # visible sequence
        self._prompt_length = 0
        self._steps = 0
        self._history: list[int] = []  # actions taken this episode
        self._needs_reset = True

    # ----------------------------------------------------------------------------------------------------
    @property
    def state(self) -> tuple[int, ...]:
        """The visible sequence (prompt + generated tokens) as a tuple of ids."""
        return tuple(self._state)

    @property
    def prompt_length(self) -> int:
        return self._prompt_length

    @property
    def history(self) -> list[int]:
        """The actions taken since the last reset (a copy)."""
        return list(self._history)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode from ``options["prompt"]`` or from a prompt drawn from the source.

        Args:
            seed: seeds :attr:`np_random` (used to draw prompts), as in every Gymnasium env.
            options: ``{"prompt": token ids}`` fixes the prompt; ``{"generated": token ids}`` starts after the
                prompt from a *deletable* generated part, as if the agent had written it (it opens the action
                history; the step count starts at 0; rewards count from the reset state). Recovery is
                evaluated this way: a generated part ending with a wrong token (``docs/method.md`` §7).

        Returns:
            ``(observation (max_length,) int64, info)``.

        Raises:
            ValueError: unknown option; a prompt or generated part with ids that are not ordinary tokens
                (eos, backspace, pad, out of range); or prompt + generated not shorter than ``max_length``.
        """
        super().reset(seed=seed)
        prompt = generated = None
        if options:
            unknown = sorted(set(options) - set(_OPTION_KEYS))
            if unknown:
                raise ValueError(
                    f"Unknown reset options {unknown}; SequenceEnv accepts {list(_OPTION_KEYS)}."
                )
            prompt = options.get("prompt")
            generated = options.get("generated")
        if prompt is None:
            prompt = check_prompt(
                sample_prompt(self.source, self.np_random), self.vocab, self.max_length, sampled=True
            )
        else:
            prompt = check_prompt(prompt, self.vocab, self.max_length)
        gen = [] if generated is None else check_generated(generated, prompt, self.vocab, self.max_length)
        self._state = prompt + gen
        self._prompt_length = len(prompt)
        self._obs[:] = self.vocab.pad_id
        self._obs[: len(self._state)] = self._state
        self._steps = 0
        self._history = list(gen)
        self._needs_reset = False
        return self._obs.copy(), self._info()

    def step(
        self, action: int | np.integer | np.ndarray
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply one action.

        Returns:
            ``(observation (max_length,) int64, reward, terminated, truncated, info)``.

        Raises:
            ValueError: ``action`` is not an integer in ``0 .. n_actions-1``.
            ResetNeeded: the episode has ended (or never started); call :meth:`reset`.
        """
        a = self._check_action(action)
        if self._needs_reset:
            raise ResetNeeded(
                "SequenceEnv.step() was called after the episode ended (terminated or truncated) or before "
                "the first reset; call env.reset() to start a new episode."
            )
        state = self._state
        before = tuple(state) if self.reward_fn.needs_states else ()
        n_before = len(state)
        last = state[-1] if state else None  # what a backspace deletes, to undo the step if the reward fails
        apply_action(state, self._prompt_length, a, self.vocab)
        n = len(state)
        if n > n_before:
            self._obs[n - 1] = a
        elif n < n_before:
            self._obs[n] = self.vocab.pad_id
        terminated = a == self.vocab.eos_id
        truncated = not terminated and (n >= self.max_length or self._steps + 1 >= self.max_steps)
        after = tuple(state) if self.reward_fn.needs_states else ()
        try:
            reward = float(self.reward_fn(before, a, after, terminated))
        except BaseException:  # a reward that raises leaves the env as it was before this step
            if n > n_before:
                state.pop()
                self._obs[n - 1] = self.vocab.pad_id
            elif n < n_before and last is not None:
                state.append(last)
                self._obs[n] = last
            raise
        self._steps += 1
        self._history.append(a)
        self._needs_reset = terminated or truncated
        return self._obs.copy(), reward, terminated, truncated, self._info()

    def action_masks(self) -> np.ndarray:
        """Allowed actions in the current state, bool ``(n_actions,)`` (sb3-contrib's MaskablePPO convention).

        The same values as the latest ``info["action_mask"]`` (which is ``int8``, Gymnasium's convention).
        """
        free = backspace_allowed(len(self._state), self._prompt_length)
        return (self._mask_free if free else self._mask_boundary).copy()

    def render(self) -> str | np.ndarray | None:
        """The episode so far (see *Arguments*).

        Returns:
            ``render_mode="ansi"``: one line of text; ``"rgb_array"``: an ``(H, W, 3)`` uint8 image; ``None``
            without a render mode.
        """
        if self.render_mode is None:
            gym.logger.warn(
                "SequenceEnv.render() was called without a render_mode; "
                "create the env with render_mode='ansi' or 'rgb_array'."
            )
            return None
        prompt = self._state[: self._prompt_length]
        if self._renderer is not None:
            return self._renderer(prompt, self._history)
        return render_history(self.vocab, prompt, self._history)

    # ----------------------------------------------------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        free = backspace_allowed(len(self._state), self._prompt_length)
        return {
            "length": len(self._state),
            "prompt_length": self._prompt_length,
            "action_mask": (self._mask_free_i8 if free else self._mask_boundary_i8).copy(),
            "generated": self._state[self._prompt_length :],
        }

    def _check_action(self, action: Any) -> int:
        # Same acceptance rule as ``Discrete.contains``: Python ints, numpy integer scalars or 0-d arrays.
        if isinstance(action, (bool, np.bool_)):
            raise ValueError(
                f"Action must be an integer in 0..{self.vocab.n_actions - 1}, got the bool {action!r} "
                "(True / False are not action ids)."
            )
        if isinstance(action, int):
            a = int(action)
        elif (
            isinstance(action, (np.generic, np.ndarray))
            and np.issubdtype(action.dtype, np.integer)
            and action.shape == ()
        ):
            a = int(action)
        else:
            raise ValueError(
                f"Action must be an integer in 0..{self.vocab.n_actions - 1}, "
                f"got {type(action).__name__}: {action!r}."
            )
        if not 0 <= a < self.vocab.n_actions:
            hint = " (that is the pad id, which is never an action)" if a == self.vocab.pad_id else ""
            raise ValueError(
                f"Action {a} is out of range{hint}: valid actions are 0..{self.vocab.n_actions - 1}."
            )
        return a

    def __repr__(self) -> str:
        return (
            f"SequenceEnv({type(self.source).__name__}, max_length={self.max_length}, "
            f"max_steps={self.max_steps}, reward={self.reward_fn.name!r})"
        )


# --------------------------------------------------------------------------------------------------------
# Helpers shared with ``seqgym.vector``.
def _check_source(source: object) -> None:
    if not isinstance(source, Source):
        raise TypeError(
            f"source must implement the Source protocol (a `vocab` attribute and `sample(rng)`), "
            f"got {type(source).__name__}. See seqgym.sources.base.Source."
        )
    if not isinstance(source.vocab, Vocabulary):
        raise TypeError(f"source.vocab must be a seqgym.vocab.Vocabulary, got {type(source.vocab).__name__}.")


def check_limit(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}: {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}; pass e.g. {name}=32.")
    return int(value)


def sample_prompt(source: Source, rng: np.random.Generator) -> Sequence[int]:
    """A fresh episode's prompt: ``source.sample_prompt(rng)`` if defined, else ``source.sample(rng)[0]``."""
    sampler = getattr(source, "sample_prompt", None)
    prompt: Sequence[int] = sampler(rng) if callable(sampler) else source.sample(rng)[0]
    return prompt


def check_generated(
    generated: object, prompt: Sequence[int], vocab: Vocabulary, max_length: int
) -> list[int]:
    """Validate a deletable generated part that follows ``prompt`` and return it as a list of ints.

    Raises:
        TypeError: not a sequence of integers.
        ValueError: an id that is not an ordinary token (eos, backspace, pad, out of range), or
            ``len(prompt) + len(generated) >= max_length``.
    """
    if isinstance(generated, (str, bytes)) or not hasattr(generated, "__iter__"):
        raise TypeError(f"generated must be a sequence of token ids, got {type(generated).__name__}.")
    ids: list[int] = []
    for pos, t in enumerate(generated):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(
                f"generated must hold integer token ids; position {pos} holds {type(t).__name__}."
            )
        ids.append(int(t))
    if vocab.eos_id in ids:
        raise ValueError(
            f"The generated part holds eos at position {ids.index(vocab.eos_id)}; a generated part the agent "
            "may still delete holds ordinary tokens only (an episode ends at eos)."
        )
    vocab.check_ids(ids, what="The generated part", allow_eos=False)
    if len(prompt) + len(ids) >= max_length:
        raise ValueError(
            f"prompt ({len(prompt)} ids) + generated ({len(ids)} ids) must be shorter than max_length="
            f"{max_length}, leaving room for at least one more token."
        )
    return ids


def check_prompt(prompt: object, vocab: Vocabulary, max_length: int, *, sampled: bool = False) -> list[int]:
    """Validate a prompt and return it as a list of ints.

    Raises:
        TypeError: not a sequence of integers.
        ValueError: an id that is not an ordinary token, or ``len(prompt) >= max_length``.
    """
    if type(prompt) in (list, tuple) and not prompt:  # fast path: the empty prompt
        return []
    what = "The source's sampled prompt" if sampled else "The prompt"
    if isinstance(prompt, (str, bytes)) or not hasattr(prompt, "__len__") or not hasattr(prompt, "__iter__"):
        raise TypeError(f"{what} must be a sequence of token ids, got {type(prompt).__name__}.")
    ids: list[int] = []
    for pos, t in enumerate(prompt):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(
                f"{what} must hold integer token ids; position {pos} holds {type(t).__name__}: {t!r}."
            )
        ids.append(int(t))
    vocab.check_ids(ids, what=what, allow_eos=False)
    if len(ids) >= max_length:
        fix = (
            "create the env with a larger max_length" if sampled else "shorten the prompt or raise max_length"
        )
        raise ValueError(
            f"{what} has {len(ids)} ids but the observation holds max_length={max_length} ids and needs room "
            f"for at least one generated token; {fix} (max_length > {len(ids)})."
        )
    return ids


def render_history(vocab: Vocabulary, prompt: Sequence[int], actions: Sequence[int]) -> str:
    """One line of text for an episode.

    ``prompt|actions`` with backspaces drawn as ``⌫``, then ``  =>  prompt|visible`` if any backspace was
    taken.

    Example:
        >>> from seqgym.vocab import Vocabulary
        >>> v = Vocabulary(["a", "b"])        # eos=2, backspace=3
        >>> render_history(v, [0], [1, 3, 0, 2])
        'a|b⌫a<eos>  =>  a|a<eos>'
        >>> render_history(v, [], [1, 2])
        '|b<eos>'
    """
    bk = vocab.backspace_id
    sep = vocab.separator
    typed = sep.join(BACKSPACE_GLYPH if a == bk else vocab.decode([a]) for a in actions)
    line = f"{vocab.decode(prompt)}|{typed}"
    if bk in actions:
        visible = replay(prompt, actions, vocab)[len(prompt) :]
        line += f"  =>  {vocab.decode(prompt)}|{vocab.decode(visible)}"
    return line
