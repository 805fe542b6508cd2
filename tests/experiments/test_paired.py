"""experiments.paired: two studies' runs paired by seed, with the differences and what settings differ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments.common import ConfigError
from experiments.paired import Config, main
from experiments.stats import paired_differences


def _study(folder: Path, config: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"config": config, "runs": runs}), encoding="utf-8")
    return str(folder)


@pytest.fixture
def studies(tmp_path: Path) -> tuple[str, str]:
    a = _study(
        tmp_path / "control",
        {"task": "arithmetic", "sm_alpha": 1e-6, "out": "x", "seeds": [1, 2, 3, 4]},
        [
            {"agent": "sequencematch", "seed": s, "validity": v}
            for s, v in ((1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9))
        ],
    )
    b = _study(
        tmp_path / "main",
        {"task": "arithmetic", "sm_alpha": None, "out": "y", "seeds": [2, 3, 4, 5]},
        [
            {"agent": a, "seed": s, "validity": v}
            for a in ("bc", "mle")
            for s, v in ((2, 0.6), (3, 0.8), (4, 0.7), (5, 0.1))
        ],
    )
    return a, b


def test_pairs_the_shared_seeds_and_names_the_settings_that_differ(
    studies: tuple[str, str], tmp_path: Path
) -> None:
    a, b = studies
    out = tmp_path / "out"
    res = main(Config(a=f"{a}:sequencematch", b=f"{b}:bc", metrics=("validity",), out=out))
    assert res["seeds"] == [2, 3, 4]
    assert res["values"]["validity"] == {"a": [0.7, 0.6, 0.9], "b": [0.6, 0.8, 0.7]}
    assert res["differences"]["validity"] == paired_differences([0.7, 0.6, 0.9], [0.6, 0.8, 0.7])
    assert res["settings_that_differ"] == {"sm_alpha": [1e-6, None]}  # out and seeds change no run
    assert json.loads((out / "results.json").read_text())["seeds"] == [2, 3, 4]
    table = (out / "table.md").read_text()
    assert "0.700 / 0.600 / 0.900" in table and "sm_alpha" in table


@pytest.mark.parametrize(
    ("a", "b", "metrics", "match"),
    [
        ("{a}", "{b}:bc", ("validity",), "STUDY:AGENT"),
        ("{a}:bc", "{b}:bc", ("validity",), "no runs of agent 'bc'"),
        ("{a}/nowhere:bc", "{b}:bc", ("validity",), "does not exist"),
        ("{a}:sequencematch", "{b}:bc", ("recovery",), "'recovery' is missing"),
        ("{a}:sequencematch", "{b}:bc", ("validity", "heldout_nll"), "'heldout_nll' is missing"),
    ],
)
def test_bad_input_is_refused_with_the_cause(
    studies: tuple[str, str], a: str, b: str, metrics: tuple[str, ...], match: str
) -> None:
    sa, sb = studies
    with pytest.raises(ConfigError, match=match):
        main(Config(a=a.format(a=sa), b=b.format(b=sb), metrics=metrics))


def test_default_metrics_are_those_both_sides_hold(studies: tuple[str, str]) -> None:
    a, b = studies  # their runs hold validity alone
    res = main(Config(a=f"{a}:sequencematch", b=f"{b}:mle"))
    assert res["metrics"] == ["validity"] and list(res["differences"]) == ["validity"]


@pytest.mark.parametrize(
    ("runs", "match"),
    [
        ([{"agent": "bc", "validity": 0.5}], "integer seed"),
        (["bc"], "integer seed"),
        (
            [{"agent": "bc", "seed": 1, "validity": 0.5}, {"agent": "bc", "seed": 1, "validity": 0.6}],
            "more than one",
        ),
        ([{"agent": "bc", "seed": s, "validity": None} for s in (1, 2)], "none of the metrics"),
    ],
)
def test_malformed_runs_are_refused(tmp_path: Path, runs: list[Any], match: str) -> None:
    a = _study(tmp_path / "a", {}, runs)
    b = _study(tmp_path / "b", {}, [{"agent": "bc", "seed": s, "validity": 0.4} for s in (1, 2)])
    with pytest.raises(ConfigError, match=match):
        main(Config(a=f"{a}:bc", b=f"{b}:bc"))


def test_an_unreadable_or_foreign_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text('{"rows": []}', encoding="utf-8")
    b = _study(tmp_path / "b", {}, [{"agent": "bc", "seed": s, "validity": 0.4} for s in (1, 2)])
    with pytest.raises(ConfigError, match="cannot read"):
        main(Config(a=f"{tmp_path / 'bad'}:bc", b=f"{b}:bc"))
    with pytest.raises(ConfigError, match=r"not a study's results\.json"):
        main(Config(a=f"{tmp_path / 'other'}:bc", b=f"{b}:bc"))


def test_a_side_pools_studies_of_the_same_settings(tmp_path: Path) -> None:
    def runs(agent: str, seeds: tuple[int, ...], base: float) -> list[dict[str, Any]]:
        return [{"agent": agent, "seed": s, "validity": base + 0.01 * s} for s in seeds]

    first = _study(
        tmp_path / "s1", {"task": "dyck", "seeds": [1, 2]}, runs("sm", (1, 2), 0.5) + runs("bc", (1, 2), 0.4)
    )
    second = _study(
        tmp_path / "s2", {"task": "dyck", "seeds": [3]}, runs("sm", (3,), 0.5) + runs("bc", (3,), 0.4)
    )
    res = main(Config(a=(f"{first}:sm", f"{second}:sm"), b=(f"{first}:bc", f"{second}:bc")))
    assert res["seeds"] == [1, 2, 3] and res["a"] == "sm (s1 + s2)"
    assert res["differences"]["validity"]["mean"] == pytest.approx(0.1)
    other = _study(tmp_path / "s3", {"task": "mirror"}, runs("sm", (4,), 0.5))
    with pytest.raises(ConfigError, match="other settings"):
        main(Config(a=(f"{first}:sm", f"{other}:sm"), b=(f"{first}:bc",)))
    with pytest.raises(ConfigError, match="more than one of the pooled"):
        main(Config(a=(f"{first}:sm", f"{first}:sm"), b=(f"{first}:bc",)))
    with pytest.raises(ConfigError, match="different agents"):
        main(Config(a=(f"{first}:sm", f"{second}:bc"), b=(f"{first}:bc",)))
    with pytest.raises(ConfigError, match="at least one"):
        main(Config(a=(), b=(f"{first}:bc",)))


def test_too_few_shared_seeds_is_refused(tmp_path: Path) -> None:
    a = _study(tmp_path / "a", {}, [{"agent": "bc", "seed": 1, "validity": 0.5}])
    b = _study(tmp_path / "b", {}, [{"agent": "bc", "seed": 1, "validity": 0.4}])
    with pytest.raises(ConfigError, match="at least 2"):
        main(Config(a=f"{a}:bc", b=f"{b}:bc", metrics=("validity",)))


def test_a_metric_with_nan_pairs_says_how_many_pairs_its_interval_holds(tmp_path: Path) -> None:
    runs = [
        {"agent": "bc", "seed": s, "rate": v} for s, v in ((1, 0.5), (2, float("nan")), (3, 0.7), (4, 0.6))
    ]
    a = _study(tmp_path / "a", {"task": "dyck"}, runs)
    b = _study(tmp_path / "b", {"task": "dyck"}, [{**r, "rate": 0.4} for r in runs])
    res = main(Config(a=f"{a}:bc", b=f"{b}:bc", metrics=("rate",), out=tmp_path / "out"))
    assert res["differences"]["rate"]["n"] == 3
    assert "(n=3: NaN pairs left out)" in (tmp_path / "out" / "table.md").read_text()


def test_a_point_of_a_curve_is_a_metric(tmp_path: Path) -> None:
    def runs(shift: float) -> list[dict[str, Any]]:
        return [
            {"agent": "bc", "seed": s, "length_curve": [[4, 0.9], [16, 0.5 + shift + s / 100]]}
            for s in (1, 2, 3)
        ]

    a = _study(tmp_path / "a", {"task": "dyck"}, runs(0.1))
    b = _study(tmp_path / "b", {"task": "dyck"}, runs(0.0))
    res = main(Config(a=f"{a}:bc", b=f"{b}:bc", metrics=("length_curve@16", "length_curve@4.0")))
    assert res["values"]["length_curve@16"] == {"a": [0.61, 0.62, 0.63], "b": [0.51, 0.52, 0.53]}
    assert res["differences"]["length_curve@16"]["mean"] == pytest.approx(0.1)
    assert res["differences"]["length_curve@4.0"]["mean"] == 0.0
    with pytest.raises(ConfigError, match="missing"):
        main(Config(a=f"{a}:bc", b=f"{b}:bc", metrics=("length_curve@8",)))
    with pytest.raises(ConfigError, match="not a number"):
        main(Config(a=f"{a}:bc", b=f"{b}:bc", metrics=("length_curve@long",)))
