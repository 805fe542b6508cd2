"""A local ``evaluate_recovery`` with the API of ``agents.evaluation.evaluate_recovery``, for the study tests.

The studies call ``agents.evaluation.evaluate_recovery``; where the installed ``agents`` does not provide it,
:func:`use_recovery_standin` puts this one in its place, so the studies' plumbing (which metrics they report,
which seeds they pass, the tables) is tested either way. It runs from the injected state as an undeletable
prompt, so its numbers are not recovery numbers; the tests only check their plumbing.
"""

from __future__ import annotations

from typing import Any

import pytest

from seqgym.dynamics import replay
from seqgym.metrics import deletion_stats, recovery_metrics, sample_recovery_states, validity_rate

CALLS: list[tuple[str, int, int]] = []
"""(agent name, n, seed) of every call, for the tests to check pairing."""


def evaluate_recovery(
    agent: Any, source: Any, *, n: int, seed: int, temperature: float = 1.0
) -> dict[str, float]:
    """The keys of the library helper, computed from real samples of ``agent`` (see the module docstring)."""
    CALLS.append((agent.name, n, seed))
    states = sample_recovery_states(source, n, seed=seed)
    starts = [p + g for p, g in zip(states.prompts, states.injected)]
    room = max(agent.max_length, max(map(len, starts)) + 2)  # the injected token can fill the last slot
    gen = agent.generate(prompts=starts, seed=seed, temperature=temperature, max_length=room)
    after = [list(a) for a in gen.actions]
    rec = recovery_metrics(source, states.prompts, states.injected, after)
    clean = agent.generate(n, seed=seed + 1, temperature=temperature)
    plens = [len(s) - len(replay([], a, source.vocab)) for s, a in zip(clean.sequences, clean.actions)]
    dele = deletion_stats(source, [list(s[:k]) for s, k in zip(clean.sequences, plens)], clean.actions)
    return {
        **rec,
        "false_deletions": dele["false_deletions"],
        "deliberate_mistakes": dele["deliberate_mistakes"],
        "deleted_allowed": dele["deleted_allowed"],
        "deleted_ruled_out": dele["deleted_ruled_out"],
        "validity_no_backspace": validity_rate(source, clean.sequences),
    }


def use_recovery_standin(monkeypatch: pytest.MonkeyPatch) -> bool:
    """Put :func:`evaluate_recovery` in ``agents.evaluation`` where the library has none; True if it did."""
    from agents import evaluation

    CALLS.clear()
    if hasattr(evaluation, "evaluate_recovery"):
        return False
    monkeypatch.setattr(evaluation, "evaluate_recovery", evaluate_recovery, raising=False)
    return True
