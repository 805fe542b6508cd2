"""Paired differences between the runs of two studies, matched by seed: ablations and A/A controls.

``experiments.compare`` pairs the agents of one study. This compares an agent of one study with an agent of
another (or the same) study, seed by seed, on the seeds both ran: for instance SequenceMatch with its terms
switched off (``--sm-alpha 1e-6 --sm-chi2-coef 5e-5``: the same ``c/α``, every term scaled by α) against BC,
to tell what the method changes from what a different random stream through the same data changes. The two
studies should differ only in what is being tested; the settings in which their configs differ are printed and
saved beside the table, so that a reader sees them. A side may pool several studies of the same settings that
ran different seeds (e.g. a second set of fresh seeds), so that the interval is over all of them.

Usage (from the repository root)::

    python -m experiments.paired --a results/aa_arith_1m:sequencematch --b results/compare_arithmetic_long:bc \\
        --out results/paired_aa_arith_1m
    python -m experiments.paired --a results/compare_dyck_long:sequencematch results/compare_dyck_long2:sequencematch \\
        --b results/compare_dyck_long:bc results/compare_dyck_long2:bc
    python -m experiments.paired --a results/curves_dyck_1m:sequencematch --b results/curves_dyck_1m:bc \\
        --metrics validity length_curve@16 temperature_curve@1.5

Writes ``results.json`` and ``table.md`` to ``--out`` (when given) and prints the table. The interval is the
95% bootstrap interval of :func:`experiments.stats.paired_differences` (``scipy.stats.bootstrap``, BCa).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from agents.common.config import is_number
from experiments.common import ConfigError, _is_int, run_cli, write_json_atomic, write_text_atomic
from experiments.stats import paired_differences

IGNORED_SETTINGS = ("out", "workers", "resume", "progress", "seeds", "agents")
"""Config fields left out of the list of settings in which the two studies differ (they change no run)."""

DEFAULT_METRICS = (
    "validity",
    "unseen_validity",
    "backspace_first",
    "recovery",
    "deliberate_mistakes",
    "heldout_nll",
)
"""The metrics compared when none are named: those of these that both sides' runs hold."""


@dataclasses.dataclass
class Config:
    """Compare agent A of one study (or several pooled) with agent B of another, paired by seed."""

    a: tuple[str, ...]
    """STUDY:AGENT, e.g. results/aa_arith_1m:sequencematch (the study folder holds results.json); several pool
    their runs (the same agent and settings, different seeds)"""
    b: tuple[str, ...]
    """STUDY:AGENT ..., the other side of the difference A − B"""
    metrics: tuple[str, ...] = ()
    """per-run metrics to compare (keys of the runs in results.json, or CURVE@X for a point of a curve, e.g.
    length_curve@16 or temperature_curve@1.5; a named metric a run lacks is refused); empty: those of
    DEFAULT_METRICS that both sides hold"""
    out: Path | None = None
    """folder for results.json and table.md (default: print only)"""


def _side(spec: str, what: str) -> tuple[Path, str, dict[str, Any], dict[int, dict[str, Any]]]:
    """``STUDY:AGENT`` -> (folder, agent, the study's config, {seed: run})."""
    folder, sep, agent = spec.rpartition(":")
    if not sep or not folder or not agent:
        raise ConfigError(f"--{what} must be STUDY:AGENT (e.g. results/compare_dyck:bc), got {spec!r}.")
    path = Path(folder) / "results.json"
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--{what}: {path} does not exist (run the study first).") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--{what}: cannot read {path}: {e}.") from None
    if not isinstance(study, dict) or not isinstance(study.get("runs"), list):
        raise ConfigError(f"--{what}: {path} is not a study's results.json (no list of runs).")
    if not all(isinstance(r, dict) and _is_int(r.get("seed")) for r in study["runs"]):
        raise ConfigError(f"--{what}: {path} holds a run that is not a record with an integer seed.")
    mine = [r for r in study["runs"] if r.get("agent") == agent]  # the main runs (a noise study's are apart)
    runs = {int(r["seed"]): r for r in mine}
    if len(runs) < len(mine):
        raise ConfigError(f"--{what}: {path} holds more than one run of agent {agent!r} for a seed.")
    if not runs:
        agents = sorted({str(r.get("agent")) for r in study["runs"]})
        raise ConfigError(f"--{what}: {path} has no runs of agent {agent!r}; it has {agents}.")
    return Path(folder), agent, dict(study.get("config", {})), runs


def _pooled(specs: tuple[str, ...], what: str) -> tuple[str, dict[str, Any], dict[int, dict[str, Any]]]:
    """One side: its name, its settings and ``{seed: run}`` over the studies it pools."""
    if isinstance(specs, str):  # one study, from Python
        specs = (specs,)
    if not specs:
        raise ConfigError(f"--{what} needs at least one STUDY:AGENT.")
    sides = [_side(spec, what) for spec in specs]
    agents = {agent for _, agent, _, _ in sides}
    if len(agents) > 1:
        raise ConfigError(f"--{what} pools different agents {sorted(agents)}; pool runs of one agent.")
    config = sides[0][2]
    runs: dict[int, dict[str, Any]] = {}
    for folder, _, other, more in sides:
        differs = _differences(config, other)
        if differs:
            raise ConfigError(
                f"--{what}: {folder} ran other settings than {sides[0][0]} ({sorted(differs)}); pool only "
                "studies of the same settings."
            )
        twice = sorted(set(runs) & set(more))
        if twice:
            raise ConfigError(f"--{what}: seeds {twice} appear in more than one of the pooled studies.")
        runs.update(more)
    name = f"{agents.pop()} ({' + '.join(folder.name for folder, _, _, _ in sides)})"
    return name, config, runs


def _value(run: dict[str, Any], metric: str) -> Any:
    """``run[metric]``, or for ``CURVE@X`` (e.g. ``length_curve@16``) the curve's value at ``X`` (None if absent)."""
    if "@" not in metric:
        return run.get(metric)
    name, _, at = metric.partition("@")
    try:
        x = float(at)
    except ValueError:
        raise ConfigError(
            f"Metric {metric!r}: {at!r} after '@' is not a number (e.g. length_curve@16)."
        ) from None
    points = run.get(name)
    if not isinstance(points, list):
        return None
    for point in points:
        if isinstance(point, list) and len(point) == 2 and is_number(point[0]) and float(point[0]) == x:
            return point[1]
    return None


def _differences(config_a: dict[str, Any], config_b: dict[str, Any]) -> dict[str, list[Any]]:
    """``{setting: [a, b]}`` for the settings (beyond :data:`IGNORED_SETTINGS`) in which two configs differ."""
    return {
        k: [config_a.get(k), config_b.get(k)]
        for k in sorted(set(config_a) | set(config_b))
        if k not in IGNORED_SETTINGS and config_a.get(k) != config_b.get(k)
    }


def main(cfg: Config) -> dict[str, Any]:
    """Pair the two sides by seed and compute each metric's paired difference; returns what results.json holds."""
    name_a, config_a, runs_a = _pooled(cfg.a, "a")
    name_b, config_b, runs_b = _pooled(cfg.b, "b")
    seeds = sorted(set(runs_a) & set(runs_b))
    if len(seeds) < 2:
        raise ConfigError(
            f"The two sides share {len(seeds)} seed(s) ({seeds}); a paired interval needs at least 2 "
            f"(A ran {sorted(runs_a)}, B ran {sorted(runs_b)})."
        )

    def held(m: str) -> list[int]:  # seeds whose runs lack a number for m, on either side
        return [s for s in seeds if not (is_number(_value(runs_a[s], m)) and is_number(_value(runs_b[s], m)))]

    metrics = tuple(cfg.metrics) or tuple(m for m in DEFAULT_METRICS if not held(m))
    if not metrics:
        raise ConfigError(
            f"The two sides hold none of the metrics {list(DEFAULT_METRICS)}; name some with --metrics."
        )
    for m in metrics:
        if held(m):
            raise ConfigError(f"Metric {m!r} is missing (or not a number) in the runs of seeds {held(m)}.")
    differs = _differences(config_a, config_b)
    values = {
        m: ([float(_value(runs_a[s], m)) for s in seeds], [float(_value(runs_b[s], m)) for s in seeds])
        for m in metrics
    }
    diffs = {m: paired_differences(a, b) for m, (a, b) in values.items()}

    def num(x: float) -> str:
        return "nan" if math.isnan(x) else f"{x:.3f}"

    lines = [f"A = {name_a}, B = {name_b}, seeds {seeds} (paired)", ""]
    lines += [
        "| metric | A per seed | B per seed | A − B: mean [95% bootstrap interval] |",
        "|---|---|---|---|",
    ]
    for m, (a, b) in values.items():
        d = diffs[m]
        lines.append(
            f"| {m} | {' / '.join(num(x) for x in a)} | {' / '.join(num(x) for x in b)} | "
            f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            + (f" (n={int(d['n'])}: NaN pairs left out)" if d["n"] < len(seeds) else "")
            + " |"
        )
    lines += [
        "",
        "Settings in which the studies differ (A, B): " + (json.dumps(differs) if differs else "none"),
    ]
    table = "\n".join(lines)
    print(table)
    results = {
        "config": {
            **dataclasses.asdict(cfg),
            "a": list(cfg.a),
            "b": list(cfg.b),
            "out": None if cfg.out is None else str(cfg.out),
        },
        "metrics": list(metrics),
        "a": name_a,
        "b": name_b,
        "seeds": seeds,
        "values": {m: {"a": a, "b": b} for m, (a, b) in values.items()},
        "differences": diffs,
        "settings_that_differ": differs,
    }
    if cfg.out is not None:
        write_json_atomic(cfg.out / "results.json", results)
        write_text_atomic(cfg.out / "table.md", table + "\n")
    return results


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.paired")
