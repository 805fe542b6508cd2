"""experiments.probes: action probabilities of trained agents at injected-mistake and long-prefix states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import probes
from experiments.common import ConfigError

TINY = {"budget": 400, "n_demonstrations": 16, "n_layer": 1, "n_embd": 16, "batch_size": 4, "progress": False}


def test_the_mistakes_probe_groups_p_backspace_by_injected_token(tmp_path: Path) -> None:
    cfg = probes.Config(agents=("mle", "bc"), probe="mistakes", n_states=40, out=tmp_path, **TINY)  # type: ignore[arg-type]
    res = probes.main(cfg)["results"]
    assert res["mle"]["p_backspace"] == 0.0  # MLE never takes <backspace>
    groups = res["bc"]["by_injected_token"]
    assert sum(g["n"] for g in groups.values()) == 40
    mean = sum(g["n"] * g["p_backspace"] for g in groups.values()) / 40
    assert mean == pytest.approx(res["bc"]["p_backspace"]) and 0.0 < mean < 1.0
    assert set(groups) <= {"(", ")", "[", "]"}  # Dyck's brackets: the injected tokens are ordinary ones
    assert sum(res["mle"]["most_likely_instead"].values()) == 40  # every state, since P = 0 < 0.5
    assert json.loads((tmp_path / "results.json").read_text())["results"] == res
    assert "| bc |" in (tmp_path / "table.md").read_text()


def test_noise_options_reach_the_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    real = probes._train

    def spy(cfg: probes.Config, agent: str, env: object, demos: object) -> object:
        learner = real(cfg, agent, env, demos)
        seen.append((agent, learner.config.noise, learner.config.noise_margin))
        return learner

    monkeypatch.setattr(probes, "_train", spy)
    cfg = probes.Config(agents=("bc",), noise="model", noise_margin=2, n_states=10, out=tmp_path, **TINY)  # type: ignore[arg-type]
    assert probes.main(cfg)["config"]["noise"] == "model"
    assert seen == [("bc", "model", 2)]


def test_the_eos_probe_gives_p_eos_per_prefix_length(tmp_path: Path) -> None:
    cfg = probes.Config(agents=("bc",), probe="eos", lengths=(2, 6), n_states=20, out=tmp_path, **TINY)  # type: ignore[arg-type]
    p_eos = probes.main(cfg)["results"]["bc"]["p_eos"]
    assert set(p_eos) == {"2", "6"} and all(0.0 < v < 1.0 for v in p_eos.values())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"agents": ("ppo",)}, "--agents"),
        ({"probe": "other"}, "--probe"),
        ({"probe": "eos", "task": "arithmetic"}, "needs a task"),
        ({"n_states": 0}, "--n-states"),
        ({"p_noise": 1.5}, "--p-noise"),
        ({"noise": "gaussian"}, "--noise"),
        ({"noise_margin": -1}, "--noise-margin"),
    ],
)
def test_bad_options_are_refused_before_training(
    tmp_path: Path, overrides: dict[str, object], match: str
) -> None:
    cfg = probes.Config(out=tmp_path, **{**TINY, **overrides})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=match):
        cfg.check()
