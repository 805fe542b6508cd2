"""A spy on ``agents.evaluation.evaluate_recovery`` for the study tests: records each call, then runs the real one.

The studies call ``agents.evaluation.evaluate_recovery``; :func:`spy_on_recovery` wraps it so a test can check
the pairing (every agent of a seed judged with the same ``n`` and ``seed``, hence the same recovery states).
"""

from __future__ import annotations

from typing import Any

import pytest

CALLS: list[tuple[str, int, int]] = []
"""(agent name, n, seed) of every call, for the tests to check pairing."""


def spy_on_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record every call of ``agents.evaluation.evaluate_recovery`` in :data:`CALLS` (cleared first)."""
    from agents import evaluation

    real = evaluation.evaluate_recovery
    CALLS.clear()

    def spy(agent: Any, source: Any, *, n: int, seed: int, temperature: float = 1.0) -> dict[str, float]:
        CALLS.append((agent.name, n, seed))
        return real(agent, source, n=n, seed=seed, temperature=temperature)

    monkeypatch.setattr(evaluation, "evaluate_recovery", spy)
