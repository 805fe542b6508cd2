"""Stable-Baselines3 callbacks for seqgym agents.

:meth:`Agent.learn <agents.common.training.TrainingMixin.learn>` accepts what SB3's ``learn`` accepts: a
``stable_baselines3.common.callbacks.BaseCallback``, a list of them (wrapped in a ``CallbackList``), a plain
function ``(locals, globals) -> bool`` (wrapped in a ``ConvertCallback``) or ``None``. The agent plays the part
of SB3's model: it has ``num_timesteps``, ``logger``, ``get_env()`` (a one-env ``VecEnv``) and ``save``.
One *step*, for a callback, is one gradient update; ``num_timesteps`` counts the (state, action) pairs trained on.

Example:
    >>> from stable_baselines3.common.callbacks import BaseCallback
    >>> class StopAfter(BaseCallback):
    ...     def __init__(self, n: int) -> None:
    ...         super().__init__()
    ...         self.n = n
    ...     def _on_step(self) -> bool:
    ...         return self.n_calls < self.n      # False stops training
    >>> cb = convert_callback([StopAfter(3)], progress_bar=False)
    >>> type(cb).__name__
    'CallbackList'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback

if TYPE_CHECKING:
    from tqdm.auto import tqdm

__all__ = ["CallbackLike", "ProgressBarCallback", "convert_callback"]

#: What ``learn(callback=...)`` accepts.
CallbackLike = BaseCallback | list[BaseCallback] | Callable[[dict[str, Any], dict[str, Any]], bool] | None


class _NoOpCallback(BaseCallback):
    """Does nothing; stands in for ``callback=None``."""

    def _on_step(self) -> bool:
        return True


class ProgressBarCallback(BaseCallback):
    """A tqdm progress bar over the training budget of one ``learn`` / ``train`` call.

    Unlike SB3's ``ProgressBarCallback`` (one tick per env step) it advances by what each update consumed:
    (state, action) pairs for ``learn``, updates for ``train``. It reads the budget from the agent's
    ``training_progress()``, which returns ``(unit, done, total)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pbar: tqdm | None = None
        self._last = 0

    def _on_training_start(self) -> None:
        from tqdm.auto import tqdm

        unit, done, total = self.model.training_progress()  # type: ignore[attr-defined]
        self._last = done
        self._pbar = tqdm(total=max(total - done, 0), unit=unit, unit_scale=True, dynamic_ncols=True)

    def _on_step(self) -> bool:
        _, done, _ = self.model.training_progress()  # type: ignore[attr-defined]
        if self._pbar is not None:
            self._pbar.update(done - self._last)
        self._last = done
        return True

    def _on_training_end(self) -> None:
        if self._pbar is not None:
            self._pbar.refresh()
            self._pbar.close()
            self._pbar = None


def convert_callback(callback: CallbackLike, *, progress_bar: bool) -> BaseCallback:
    """Turn what ``learn(callback=...)`` accepts into one ``BaseCallback`` (SB3's rules).

    Args:
        callback: ``None``, a ``BaseCallback``, a list of them, or a function ``(locals, globals) -> bool``.
        progress_bar: add a :class:`ProgressBarCallback`.

    Raises:
        TypeError: anything else.
    """
    if callback is None:
        cb: BaseCallback = _NoOpCallback()
    elif isinstance(callback, BaseCallback):
        cb = callback
    elif isinstance(callback, list):
        bad = [type(c).__name__ for c in callback if not isinstance(c, BaseCallback)]
        if bad:
            raise TypeError(f"callback lists must hold stable_baselines3 BaseCallback instances; got {bad}.")
        cb = CallbackList(list(callback))
    elif callable(callback):
        cb = ConvertCallback(callback)
    else:
        raise TypeError(
            "callback must be None, a stable_baselines3 BaseCallback, a list of them, or a function "
            f"(locals, globals) -> bool; got {type(callback).__name__}."
        )
    if progress_bar:
        cb = CallbackList([cb, ProgressBarCallback()])
    return cb
