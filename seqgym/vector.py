"""``SequenceVectorEnv``: many :class:`~seqgym.env.SequenceEnv` copies stepped as numpy array operations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from seqgym._options import (
    AUTORESET_MODE_NAMES,
    RENDER_MODES,
    AutoresetModeName,
    RenderMode,
    RewardName,
    check_option,
)
from seqgym.dynamics import action_mask, backspace_allowed, step_masks
from seqgym.env import (
    SequenceEnv,
    _check_source,
    check_generated,
    check_limit,
    check_prompt,
    render_history,
    sample_prompt,
)
from seqgym.render import FrameRenderer
from seqgym.rewards import Reward, RewardFn, make_reward
from seqgym.sources.base import Source
from seqgym.vocab import Vocabulary

__all__ = ["SequenceVectorEnv"]

_OPTION_KEYS = ("prompt", "prompts", "generated", "generated_parts", "reset_mask")


class SequenceVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """``num_envs`` independent sequence environments in one set of numpy arrays.

    Same MDP, observations, rewards, termination and truncation as :class:`~seqgym.env.SequenceEnv` (read
    its docstring), batched: a step is a handful of numpy operations over all sub-environments, with no Python
    loop per sub-environment. Python runs per sub-environment only to draw the prompt of an episode that
    starts (``source.sample`` is Python) and for rewards other than ``"none"`` (``"valid"`` only on the
    sub-envs that terminate).

    Spaces:
        ``single_action_space = Discrete(n_actions)``,
        ``action_space = MultiDiscrete([n_actions] * num_envs)``;
        ``single_observation_space = Box(0, pad_id, (max_length,), int64)``, ``observation_space`` the same
        with shape ``(num_envs, max_length)``.

    Autoreset (``metadata["autoreset_mode"]``):
        - ``AutoresetMode.NEXT_STEP`` (default, Gymnasium's): a step that ends sub-env ``i`` returns its final
          observation; the *next* step ignores ``actions[i]``, resets sub-env ``i`` and returns its first
          observation with reward ``0`` and ``terminated = truncated = False``.
        - ``AutoresetMode.SAME_STEP``: the step that ends sub-env ``i`` resets it at once and returns the new
          first observation; the final one is in ``info["final_obs"][i]`` (an object array, ``None``
          elsewhere) and the final info in ``info["final_info"]`` (arrays over all sub-envs, with masks such
          as ``info["final_info"]["_length"]`` true where an episode ended), as ``SyncVectorEnv`` does.
        - ``AutoresetMode.DISABLED``: nothing is reset automatically; reset ended sub-envs with
          ``reset(options={"reset_mask": mask})``; stepping an ended sub-env raises ``ResetNeeded``.

    Seeding:
        ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (as ``SyncVectorEnv`` does); a list of
        ``num_envs`` seeds (ints or ``None``) seeds each one. Each sub-env draws every prompt from its own
        generator, exactly as ``SequenceEnv.np_random``, so sub-env ``i`` behaves like
        ``SequenceEnv(...).reset(seed=s + i)`` followed by the same actions (with plain ``reset()`` at each
        episode end): ``SyncVectorEnv([lambda: SequenceEnv(...)] * n)`` with the same seed and autoreset mode
        returns the same observations, rewards, terminations, truncations and info arrays.

    Info (arrays over sub-envs, each with Gymnasium's ``"_key"`` mask of the sub-envs it describes):
        ``length`` ``(num_envs,)`` int64, ``prompt_length`` ``(num_envs,)`` int64, ``action_mask``
        ``(num_envs, n_actions)`` int8. Unlike ``SequenceEnv`` there is no ``generated`` list (building it
        would loop over sub-envs): read ``obs[i, prompt_length[i]:length[i]]``.

    Args:
        source: the :class:`~seqgym.sources.base.Source` shared by all sub-envs.
        num_envs: number of sub-environments (positive int).
        max_length, max_steps, reward, logprob_floor: as in :class:`~seqgym.env.SequenceEnv`.
        autoreset_mode: an :class:`gymnasium.vector.AutoresetMode` or its value (``"NextStep"``,
            ``"SameStep"``, ``"Disabled"``).
        render_mode: ``None``, ``"ansi"`` or ``"rgb_array"``: ``render()`` returns a tuple with one line of
            text, or one ``(H, W, 3)`` uint8 image, per sub-env, as ``SequenceEnv.render`` (and as
            ``SyncVectorEnv.render``).

    Example:
        >>> from seqgym.sources.dyck import Dyck
        >>> envs = SequenceVectorEnv(Dyck(2, max_length=4), 3, max_length=5, max_steps=10)
        >>> obs, info = envs.reset(seed=0)
        >>> obs.shape, info["action_mask"][:, 5]       # backspace (5) masked at the prompt boundary
        ((3, 5), array([0, 0, 0], dtype=int8))
        >>> obs, rewards, terminated, truncated, info = envs.step(np.array([0, 2, 4]))  # "(", "[", eos
        >>> obs[:, :2], terminated, info["length"]
        (array([[0, 6],
               [2, 6],
               [4, 6]]), array([False, False,  True]), array([1, 1, 1]))
        >>> obs, *_ = envs.step(np.array([5, 3, 0]))   # backspace, "]"; sub-env 2 resets (action ignored)
        >>> obs[:, :2]
        array([[6, 6],
               [2, 3],
               [6, 6]])
    """

    def __init__(
        self,
        source: Source,
        num_envs: int,
        *,
        max_length: int,
        max_steps: int,
        reward: RewardName | RewardFn | Reward | None = None,
        logprob_floor: float = -20.0,
        autoreset_mode: AutoresetMode | AutoresetModeName = AutoresetMode.NEXT_STEP,
        render_mode: RenderMode | None = None,
    ) -> None:
        _check_source(source)
        self.source = source
        self.vocab: Vocabulary = source.vocab
        self.num_envs = check_limit("num_envs", num_envs)
        self.max_length = check_limit("max_length", max_length)
        self.max_steps = check_limit("max_steps", max_steps)
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.render_mode = (
            None
            if render_mode is None
            else check_option("render_mode", render_mode, RENDER_MODES, hint=" or None")
        )
        self.metadata = {
            "render_modes": list(RENDER_MODES),
            "render_fps": SequenceEnv.metadata["render_fps"],
            "autoreset_mode": self.autoreset_mode,
        }
        self.reward_fn: Reward = make_reward(reward, source, logprob_floor=logprob_floor)
        self._renderer = (
            FrameRenderer(self.vocab, max_length=self.max_length, max_steps=self.max_steps)
            if render_mode == "rgb_array"
            else None
        )

        v = self.vocab
        n, length = self.num_envs, self.max_length
        self.single_action_space = spaces.Discrete(v.n_actions)
        self.action_space = batch_space(self.single_action_space, n)
        self.single_observation_space = spaces.Box(low=0, high=v.pad_id, shape=(length,), dtype=np.int64)
        self.observation_space = batch_space(self.single_observation_space, n)
        self._mask_boundary = action_mask(0, 0, v)  # (A,) bool, from the reference function
        self._mask_free = action_mask(1, 0, v)  # (A,) bool

        # (N, L + 1): the observations plus a scratch column that absorbs the writes of sub-envs that neither
        # append nor delete, so a step updates every row with one scatter.
        self._buf = np.full((n, length + 1), v.pad_id, dtype=np.int64)
        self._obs = self._buf[:, :length]  # (N, L) view
        self._mask_free_i8 = self._mask_free.astype(np.int8)  # (A,)
        self._length = np.zeros(n, dtype=np.int64)  # (N,) visible length
        self._prompt_length = np.zeros(n, dtype=np.int64)  # (N,)
        self._steps = np.zeros(n, dtype=np.int64)  # (N,) steps this episode
        # (N, max_steps) actions this episode, kept only for render()
        self._history = np.zeros((n, self.max_steps if render_mode else 0), dtype=np.int64)
        self._generated: list[list[int]] = [[] for _ in range(n)]  # deletable parts the episodes started from
        self._autoreset = np.zeros(n, dtype=bool)  # (N,) NEXT_STEP: reset on the next step
        self._needs_reset = np.ones(n, dtype=bool)  # (N,) not started, or ended under DISABLED
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._all = np.ones(n, dtype=bool)
        self._env_ids = np.arange(n)

    # ----------------------------------------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all sub-envs, or those in ``options["reset_mask"]``.

        Args:
            seed: ``None``, an int ``s`` (sub-env ``i`` gets ``s + i``), or a list of ``num_envs`` ints or
                ``None``.
            options: ``"prompt"``: one prompt for every reset sub-env; ``"prompts"``: a list of ``num_envs``
                prompts (entries of sub-envs not reset are ignored); ``"generated"``: one deletable generated
                part after the prompt for every reset sub-env, or ``"generated_parts"``: ``num_envs`` of them
                (as :meth:`SequenceEnv.reset`'s ``"generated"``); ``"reset_mask"``: bool ``(num_envs,)``, which
                sub-envs to reset (default all).

        Returns:
            ``(observations (num_envs, max_length) int64, info)``; info masks mark the reset sub-envs.
        """
        n = self.num_envs
        if seed is None or isinstance(seed, (int, np.integer)):
            if seed is not None:
                super().reset(seed=int(seed))
            seeds: list[int | None] = [None if seed is None else int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"A list of seeds must have num_envs={n} entries, got {len(seeds)}.")
        options = dict(options or {})
        unknown = sorted(set(options) - set(_OPTION_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown reset options {unknown}; SequenceVectorEnv accepts {list(_OPTION_KEYS)}."
            )
        mask = options.get("reset_mask")
        if mask is None:
            mask = self._all
        elif not (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (n,)):
            raise ValueError(f"options['reset_mask'] must be a bool numpy array of shape ({n},).")
        prompts: list[Any] | None = None
        if options.get("prompts") is not None:
            if options.get("prompt") is not None:
                raise ValueError(
                    "Pass options['prompt'] (one for all) or options['prompts'] (one each), not both."
                )
            prompts = list(options["prompts"])
            if len(prompts) != n:
                raise ValueError(f"options['prompts'] must hold num_envs={n} prompts, got {len(prompts)}.")
        elif options.get("prompt") is not None:
            prompts = [options["prompt"]] * n

        parts: list[Any] | None = None
        if options.get("generated_parts") is not None:
            if options.get("generated") is not None:
                raise ValueError(
                    "Pass options['generated'] (one for all) or options['generated_parts'] (one each), not both."
                )
            parts = list(options["generated_parts"])
            if len(parts) != n:
                raise ValueError(
                    f"options['generated_parts'] must hold num_envs={n} parts, got {len(parts)}."
                )
        elif options.get("generated") is not None:
            parts = [options["generated"]] * n

        idx = np.flatnonzero(mask)
        # A reset that fails (a bad prompt, a source that raises) leaves every sub-env as it was, RNGs included.
        saved_rngs = list(self._rngs)
        saved_states = {i: r.bit_generator.state for i, r in enumerate(self._rngs) if r is not None}
        try:
            for i in idx.tolist():
                if seeds[i] is not None:
                    self._rngs[i] = seeding.np_random(seeds[i])[0]
            self._reset_rows(idx, prompts, parts)
        except BaseException:
            self._rngs = saved_rngs
            for i, state in saved_states.items():
                saved_rngs[i].bit_generator.state = state  # type: ignore[union-attr]
            raise
        return self._obs.copy(), self._info(mask.copy())

    def step(
        self, actions: npt.ArrayLike
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Apply one action per sub-env.

        Args:
            actions: ``(num_envs,)`` integer action ids.

        Returns:
            ``(observations (N, max_length) int64, rewards (N,) float64, terminated (N,) bool,
            truncated (N,) bool, info)``.

        Raises:
            ValueError: ``actions`` has the wrong shape, is not integer, or holds an id outside
                ``0 .. n_actions-1`` (the pad id included).
            ResetNeeded: called before :meth:`reset`, or (``DISABLED`` mode) on a sub-env that has ended.
        """
        a = self._check_actions(actions)  # (N,)
        v = self.vocab
        if self._needs_reset.any():
            bad = np.flatnonzero(self._needs_reset)
            raise ResetNeeded(
                f"Sub-environments {bad[:10].tolist()} have ended or were never reset; call reset() "
                "(with options={'reset_mask': mask} to reset only some) before step()."
            )
        next_step = self.autoreset_mode == AutoresetMode.NEXT_STEP
        # Sub-envs that ended on the previous step (NEXT_STEP) ignore their action and reset below.
        pending = np.flatnonzero(self._autoreset) if next_step else self._env_ids[:0]
        active = ~self._autoreset if len(pending) else None  # (N,) bool, None = all

        obs, length, plen, steps = self._obs, self._length, self._prompt_length, self._steps
        if self.reward_fn.needs_states:
            obs_before, length_before = obs.copy(), length.copy()
        append, delete = step_masks(length, plen, a, v)  # (N,) each; a no-op backspace is in neither
        if active is not None:
            append &= active
            delete &= active
        # One scatter: append writes a at length, delete writes pad at length - 1, the rest hit the scratch.
        pos = np.where(append, length, np.where(delete, length - 1, self.max_length))
        self._buf[self._env_ids, pos] = np.where(append, a, v.pad_id)
        length += append
        length -= delete
        steps += 1 if active is None else active
        if self.render_mode is not None:
            si = self._env_ids if active is None else np.flatnonzero(active)
            self._history[si, steps[si] - 1] = a[si]

        terminated = append & (a == v.eos_id)  # (N,)
        truncated = ~terminated & ((length >= self.max_length) | (steps >= self.max_steps))
        if active is not None:
            truncated &= active
        if self.reward_fn.needs_states:
            si = self._env_ids if active is None else np.flatnonzero(active)
            rewards = np.zeros(self.num_envs, dtype=np.float64)
            rewards[si] = self.reward_fn.batch(
                obs_before[si], length_before[si], a[si], obs[si], length[si], terminated[si]
            )
        else:
            rewards = self.reward_fn.batch(obs, length, a, obs, length, terminated)
        done = terminated | truncated

        info: dict[str, Any] = {}
        if next_step:
            if len(pending):
                self._autoreset_rows(pending)
            self._autoreset = done
        elif self.autoreset_mode == AutoresetMode.SAME_STEP:
            if done.any():
                final_obs = np.full(self.num_envs, None, dtype=object)
                di = np.flatnonzero(done)
                for i in di.tolist():
                    final_obs[i] = obs[i].copy()
                info["final_obs"], info["_final_obs"] = final_obs, done.copy()
                info["final_info"], info["_final_info"] = self._info(done.copy()), done.copy()
                self._autoreset_rows(di)
        else:
            self._needs_reset = done
        info.update(self._info(self._all.copy()))
        return self._obs.copy(), rewards, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """Allowed actions, bool ``(num_envs, n_actions)``: all but backspace at the prompt boundary."""
        masks = np.tile(self._mask_free, (self.num_envs, 1))  # (N, A)
        masks[:, self.vocab.backspace_id] = backspace_allowed(self._length, self._prompt_length)
        return masks

    def render(self) -> tuple[str, ...] | tuple[np.ndarray, ...] | None:
        """One line of text (``"ansi"``) or one ``(H, W, 3)`` uint8 image (``"rgb_array"``) per sub-env, as
        :meth:`SequenceEnv.render`; ``None`` without a render mode."""
        if self.render_mode is None:
            return None
        episodes = [
            (
                self._obs[i, : self._prompt_length[i]].tolist(),
                self._generated[i] + self._history[i, : self._steps[i]].tolist(),
            )
            for i in range(self.num_envs)
        ]
        if self._renderer is not None:
            return tuple(self._renderer(prompt, actions) for prompt, actions in episodes)
        return tuple(render_history(self.vocab, prompt, actions) for prompt, actions in episodes)

    # ----------------------------------------------------------------------------------------------------
    def _autoreset_rows(self, idx: np.ndarray) -> None:
        """Autoreset sub-envs ``idx`` inside :meth:`step`; if drawing their prompts fails, they are marked as
        needing a reset (the next :meth:`step` raises ``ResetNeeded``) instead of being left half-reset."""
        try:
            self._reset_rows(idx, None)
        except BaseException:
            self._needs_reset[idx] = True
            self._autoreset[idx] = False
            raise

    def _reset_rows(self, idx: np.ndarray, prompts: list[Any] | None, parts: list[Any] | None = None) -> None:
        """Start new episodes in sub-envs ``idx`` (prompts given, or drawn from each sub-env's generator),
        optionally followed by deletable generated ``parts``.

        Every prompt (and part) is drawn and checked before any sub-env changes, so an error leaves them all as
        they were.
        """
        obs, v = self._obs, self.vocab
        new_prompts, new_parts = [], []
        for i in idx.tolist():
            if prompts is None:
                rng = self._rngs[i]
                if rng is None:
                    rng = self._rngs[i] = seeding.np_random()[0]
                p = check_prompt(sample_prompt(self.source, rng), v, self.max_length, sampled=True)
            else:
                p = check_prompt(prompts[i], v, self.max_length)
            new_prompts.append(p)
            new_parts.append([] if parts is None else check_generated(parts[i], p, v, self.max_length))
        self._buf[idx] = v.pad_id
        self._steps[idx] = 0
        self._autoreset[idx] = False
        self._needs_reset[idx] = False
        lengths = np.zeros(len(idx), dtype=np.int64)
        prompt_lengths = np.zeros(len(idx), dtype=np.int64)
        for k, (i, p, g) in enumerate(zip(idx.tolist(), new_prompts, new_parts)):
            self._generated[i] = g
            if p or g:
                obs[i, : len(p) + len(g)] = p + g
                lengths[k] = len(p) + len(g)
            prompt_lengths[k] = len(p)
        self._length[idx] = lengths
        self._prompt_length[idx] = prompt_lengths

    def _info(self, mask: np.ndarray) -> dict[str, Any]:
        masks = np.empty((self.num_envs, self.vocab.n_actions), dtype=np.int8)  # (N, A)
        masks[:] = self._mask_free_i8
        masks[:, self.vocab.backspace_id] = backspace_allowed(self._length, self._prompt_length)
        return {
            "length": self._length.copy(),
            "_length": mask,
            "prompt_length": self._prompt_length.copy(),
            "_prompt_length": mask.copy(),
            "action_mask": masks,
            "_action_mask": mask.copy(),
        }

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        n, n_actions = self.num_envs, self.vocab.n_actions
        if a.shape != (n,):
            raise ValueError(f"actions must have shape ({n},) (one per sub-env), got {a.shape}.")
        if a.dtype.kind not in "iu":
            raise ValueError(f"actions must be integer ids in 0..{n_actions - 1}, got dtype {a.dtype}.")
        if n and (a.min() < 0 or a.max() >= n_actions):
            bad = np.flatnonzero((a < 0) | (a >= n_actions))
            i = int(bad[0])
            hint = " (the pad id, which is never an action)" if a[i] == self.vocab.pad_id else ""
            raise ValueError(
                f"Action {int(a[i])} of sub-env {i} is out of range{hint}: "
                f"valid actions are 0..{n_actions - 1}."
            )
        return a.astype(np.int64, copy=False)

    def __repr__(self) -> str:
        return (
            f"SequenceVectorEnv({type(self.source).__name__}, num_envs={self.num_envs}, "
            f"max_length={self.max_length}, max_steps={self.max_steps}, reward={self.reward_fn.name!r})"
        )


def _autoreset_mode(mode: AutoresetMode | AutoresetModeName) -> AutoresetMode:
    """The mode itself, or the one a name gives, ignoring case and ``_`` (``"next_step"``, ``"NEXT_STEP"``)."""
    if isinstance(mode, AutoresetMode):
        return mode
    name = check_option(
        "autoreset_mode", mode, AUTORESET_MODE_NAMES, normalize=lambda s: s.replace("_", "").lower()
    )
    return AutoresetMode(name)
