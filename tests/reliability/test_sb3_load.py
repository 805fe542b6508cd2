"""Loading an SB3 baseline never unpickles anything from the file; saving stays SB3's own format."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.sb3 import SB3Baseline, train_sb3_baseline
from seqgym.registration import register_envs

ENV_ID = "seqgym/Dyck-v0"
FAST: dict[str, dict[str, Any]] = {
    "maskable_ppo": {"n_steps": 32, "batch_size": 16, "n_epochs": 1},
    "ppo": {"n_steps": 32, "batch_size": 16, "n_epochs": 1},
    "dqn": {"buffer_size": 100, "learning_starts": 8, "train_freq": (2, "step"), "batch_size": 8},
}


class _Touch:
    """Unpickling this object creates ``marker`` (stands for any code a pickle can run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _payload(marker: Path) -> str:
    return base64.b64encode(pickle.dumps(_Touch(marker))).decode()


def _edit_data(model_zip: Path, edit: Any) -> None:
    """Rewrite the ``data`` JSON member of an SB3 zip through ``edit(dict) -> None``."""
    with zipfile.ZipFile(model_zip) as z:
        members = {name: z.read(name) for name in z.namelist()}
    data = json.loads(members["data"])
    edit(data)
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(model_zip, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    register_envs()
    out = {}
    for algo in ("maskable_ppo", "ppo", "dqn"):
        baseline = train_sb3_baseline(algo, ENV_ID, total_timesteps=32, seed=0, algo_kwargs=FAST[algo])
        path = tmp_path_factory.mktemp(algo)
        baseline.save(path)
        out[algo] = path
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo", "dqn"])
def test_round_trip_predicts_the_same(saved: dict[str, Path], algo: str) -> None:
    loaded = SB3Baseline.load(saved[algo])
    again = SB3Baseline.load(saved[algo])
    env = gym.make(ENV_ID)
    obs = np.stack([env.reset(seed=s)[0] for s in range(4)])
    torch.testing.assert_close(loaded.action_logits(obs), again.action_logits(obs))
    assert loaded.algo == algo
    assert len(loaded.generate(2, seed=0).sequences) == 2


def test_saved_file_still_opens_with_sb3(saved: dict[str, Path]) -> None:
    from stable_baselines3 import PPO

    model = PPO.load(saved["ppo"] / "model.zip")  # SB3 users can open the file (trusted origin)
    assert model.observation_space.shape == (gym.make(ENV_ID).observation_space.shape[0],)


@pytest.mark.parametrize("algo", ["maskable_ppo", "dqn"])
def test_pickled_known_entries_are_rebuilt_not_unpickled(
    saved: dict[str, Path], tmp_path: Path, algo: str
) -> None:
    path = _copy(saved[algo], tmp_path / "copy")
    marker = tmp_path / "ran"
    keys = ["policy_class", "policy_kwargs", "observation_space", "action_space", "lr_schedule", "_last_obs"]

    def poison(data: dict[str, Any]) -> None:
        for key in keys:
            data[key][":serialized:"] = _payload(marker)

    _edit_data(path / "model.zip", poison)
    loaded = SB3Baseline.load(path)
    assert not marker.exists(), "loading ran code stored in the file"
    assert loaded.action_logits(np.full((1, loaded.max_length), loaded.vocab.pad_id)).shape[0] == 1


def test_unknown_pickled_entry_is_refused(saved: dict[str, Path], tmp_path: Path) -> None:
    path = _copy(saved["ppo"], tmp_path / "copy")
    marker = tmp_path / "ran"
    _edit_data(path / "model.zip", lambda d: d.update(evil={":type:": "x", ":serialized:": _payload(marker)}))
    with pytest.raises(ValueError, match=r"pickled entry 'evil'.*refuses to unpickle"):
        SB3Baseline.load(path)
    assert not marker.exists()


def test_foreign_classes_and_envs_are_refused(saved: dict[str, Path], tmp_path: Path) -> None:
    path = _copy(saved["ppo"], tmp_path / "a")

    def foreign_extractor(data: dict[str, Any]) -> None:
        data["policy_kwargs"]["features_extractor_class"] = "<class 'evil.Extractor'>"

    _edit_data(path / "model.zip", foreign_extractor)
    with pytest.raises(ValueError, match=r"evil.Extractor.*does not rebuild"):
        SB3Baseline.load(path)

    path = _copy(saved["ppo"], tmp_path / "b")
    _edit_data(path / "model.zip", lambda d: d.update(env="evil.module:Env"))
    with pytest.raises(ValueError, match="'env' entry"):
        SB3Baseline.load(path)

    path = _copy(saved["ppo"], tmp_path / "c")
    (path / "model.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip file"):
        SB3Baseline.load(path)

    path = _copy(saved["ppo"], tmp_path / "d")
    (path / "sb3_baseline.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        SB3Baseline.load(path)


def test_other_env_is_refused(saved: dict[str, Path]) -> None:
    register_envs()
    other = gym.make(ENV_ID, max_length=9)
    with pytest.raises(ValueError, match="shape"):
        SB3Baseline.load(saved["ppo"], env=other)
