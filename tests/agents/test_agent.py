"""The Agent interface: registry, hyperparameters, SB3 protocol (predict, callbacks, logger), generation,
save / load, checkpoint-resume, NaN detection, and a third-party agent registered through ``register_agent``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor

from agents.bc import BC
from agents.common import (
    FORMAT_VERSION,
    Agent,
    AgentConfig,
    AgentLoadError,
    NonFiniteLossError,
    list_agents,
    make_agent,
    register_agent,
)
from agents.mle import MLE
from agents.policy import LMPolicy
from seqgym.data import augment, collect, save_demonstrations
from seqgym.env import SequenceEnv
from seqgym.sources.dyck import Dyck

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}


def small_env(n_types: int = 2) -> SequenceEnv:
    return SequenceEnv(Dyck(n_types, max_depth=3, max_length=8), max_length=9, max_steps=27)


def small(name: str, env: Any = None, **kw: Any) -> Agent:
    kw.setdefault("seed", 0)
    kw.setdefault("n_demonstrations", 32)
    kw.setdefault("batch_size", 8)
    kw.setdefault("policy_kwargs", dict(TINY))
    return make_agent(name, env=small_env() if env is None else env, **kw)


def params(agent: Agent) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.policy.parameters()]


def same_params(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------------
# A third-party agent: its own hyperparameter, its own loss, nothing else.
@dataclasses.dataclass(kw_only=True)
class EosWeightedConfig(AgentConfig):
    """Hyperparameters of :class:`EosWeighted`.

    Attributes:
        eos_weight: weight of the eos step in the cross-entropy.
    """

    eos_weight: float = 2.0


class EosWeighted(Agent):
    """Cross-entropy with a heavier eos step; data = the demonstrations (base default)."""

    config_class = EosWeightedConfig
    config: EosWeightedConfig
    nan_at_update: int | None = None

    def _loss(self, batch: list[Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.policy.trajectory_logits([t.prompt for t in batch], [t.actions for t in batch])
        logp = out.logits[:, :-1].log_softmax(-1).gather(-1, out.actions[..., None])[..., 0]  # (B, T)
        w = torch.where(out.actions == self.vocab.eos_id, self.config.eos_weight, 1.0)
        loss = -torch.where(out.action_mask, w * logp, 0.0).sum() / len(batch)
        if self.nan_at_update is not None and self.n_updates + 1 == self.nan_at_update:
            loss = loss * float("nan")
        return loss, {"weighted_nll": loss.detach()}


register_agent("eos_weighted_test", EosWeighted)


# ------------------------------------------------------------------------------------------------------
def test_registry_lists_builtins_and_rejects_bad_names() -> None:
    names = list_agents()
    assert {"mle", "bc", "eos_weighted_test"} <= set(names)
    with pytest.raises(KeyError, match="Did you mean 'mle'"):
        make_agent("mel", env=small_env())
    with pytest.raises(TypeError, match=r"subclass of agents.base.Agent"):
        register_agent("not_an_agent", dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        register_agent("mle", BC)
    register_agent("eos_weighted_test", EosWeighted)  # same class again: fine


def test_hyperparameters_are_validated() -> None:
    with pytest.raises(TypeError, match=r"'learning_rat' \(did you mean 'learning_rate'\?\)"):
        small("mle", learning_rat=1e-3)
    with pytest.raises(TypeError, match="eos_weight"):  # the message lists the class's own fields too
        small("eos_weighted_test", bogus=1)
    for bad in (
        {"learning_rate": 0.0},
        {"learning_rate": float("nan")},
        {"batch_size": 0},
        {"batch_size": 2.5},
        {"lr_schedule": "step"},
        {"warmup_steps": -1},
        {"max_grad_norm": -1.0},
        {"adam_betas": (0.9, 1.0)},
        {"checkpoint_every": 5},  # no checkpoint_dir
        {"p_noise": 1.5},
    ):
        with pytest.raises(ValueError):
            small("bc", **bad)
    with pytest.raises(ValueError, match="seed"):
        small("mle", seed=-1)
    with pytest.raises(ValueError, match=r"CUDA is not available|Unknown device"):
        if torch.cuda.is_available():
            raise ValueError("Unknown device")
        small("mle", device="cuda")


def test_env_policy_and_demonstrations_arguments(tmp_path: Path) -> None:
    agent = make_agent("mle", env="seqgym/Dyck-v0", seed=0, n_demonstrations=4, policy_kwargs=dict(TINY))
    assert agent.max_length == 17 and len(agent.demonstrations) == 4
    with pytest.raises(TypeError, match="env is required"):
        make_agent("mle", env=None)
    with pytest.raises(TypeError, match="SequenceEnv"):
        make_agent("mle", env=object())
    env = small_env()
    other = small_env(n_types=1)
    with pytest.raises(ValueError, match="vocabulary"):
        make_agent("mle", env=env, policy=LMPolicy.from_config(other.vocab, **TINY))
    with pytest.raises(ValueError, match="either policy= or policy_kwargs="):
        make_agent("mle", env=env, policy=LMPolicy.from_config(env.vocab, **TINY), policy_kwargs=dict(TINY))
    with pytest.raises(ValueError, match="another vocabulary"):
        make_agent("mle", env=env, demonstrations=collect(other.source, 3, rng=0), policy_kwargs=dict(TINY))
    with pytest.raises(TypeError, match=r"list of seqgym.data.Trajectory"):
        make_agent("mle", env=env, demonstrations=collect(env.source, 1, rng=0)[0])  # type: ignore[arg-type]
    demos = collect(env.source, 5, rng=1)
    save_demonstrations(tmp_path / "d.npz", demos)
    agent = make_agent("mle", env=env, demonstrations=tmp_path / "d.npz", policy_kwargs=dict(TINY))
    assert agent.demonstrations == demos
    policy = LMPolicy.from_config(env.vocab, **TINY)
    assert make_agent("bc", env=env, policy=policy).policy is policy  # trained in place


def test_seeded_agents_train_identically() -> None:
    a, b = small("bc", seed=5).learn(150), small("bc", seed=5).learn(150)
    assert same_params(params(a), params(b))
    c = small("bc", seed=6).learn(150)
    assert not same_params(params(a), params(c))


def test_train_epochs_and_batches() -> None:
    agent = small("mle", n_demonstrations=20, batch_size=8)
    assert agent.train(n_epochs=1).n_updates == 3  # ceil(20 / 8)
    assert agent.train(n_batches=2).n_updates == 5
    assert agent.num_timesteps > 0
    with pytest.raises(ValueError, match="exactly one"):
        agent.train()
    with pytest.raises(ValueError, match="n_batches"):
        agent.train(n_batches=0)


def test_learning_rate_schedule_and_warmup() -> None:
    seen: list[float] = []

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            seen.append(self.model.optimizer.param_groups[0]["lr"])  # type: ignore[attr-defined]
            return True

    agent = small("mle", learning_rate=1e-2, warmup_steps=2, lr_schedule="linear")
    agent.train(n_batches=6, callback=Record())
    assert seen[0] == pytest.approx(0.5e-2 * (1 - 0 / 6))  # warm-up 1/2 of peak
    assert seen[2] == pytest.approx(1e-2 * (1 - 2 / 6))
    assert seen[5] == pytest.approx(1e-2 * (1 - 5 / 6))
    seen.clear()
    small("mle", learning_rate=1e-2, lr_schedule="cosine").train(n_batches=4, callback=Record())
    assert seen == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


# ------------------------------------------------------------------------------------------------------
def test_predict_single_and_batched_respects_masks() -> None:
    agent = small("bc")
    env = small_env()
    obs, _ = env.reset(seed=0)
    a, state = agent.predict(obs)
    assert isinstance(a, np.ndarray) and a.shape == () and 0 <= int(a) < env.vocab.n_actions
    bk = env.vocab.backspace_id
    # state None: every row starts, so its visible sequence is its prompt and backspace is masked
    pad = env.vocab.pad_id
    batch = np.full((64, env.max_length), pad, dtype=np.int64)
    batch[:, :3] = [0, 0, 2]
    for _ in range(5):
        acts, state = agent.predict(batch)
        assert acts.shape == (64,) and bk not in acts
    assert state[0].tolist() == [3] * 64
    # prompt length 0 remembered in the state: backspace is allowed, and an untrained model takes it
    acts, _ = agent.predict(batch, state=(np.zeros(64, dtype=np.int64),))
    assert bk in acts
    # episode_start resets the remembered prompt length of those rows only
    starts = np.zeros(64, dtype=bool)
    starts[:32] = True
    acts, state = agent.predict(batch, state=(np.zeros(64, dtype=np.int64),), episode_start=starts)
    assert state[0][:32].tolist() == [3] * 32 and state[0][32:].tolist() == [0] * 32
    # MaskablePPO-style masks
    only = np.zeros(env.vocab.n_actions, dtype=bool)
    only[1] = True
    acts, _ = agent.predict(batch, state=(np.zeros(64, dtype=np.int64),), action_masks=only)
    assert set(acts.tolist()) == {1}
    per_row = np.zeros((64, env.vocab.n_actions), dtype=np.int8)
    per_row[np.arange(64), np.arange(64) % 3] = 1
    acts, _ = agent.predict(batch, action_masks=per_row, deterministic=True)
    assert acts.tolist() == (np.arange(64) % 3).tolist()
    with pytest.raises(ValueError, match="no allowed action"):
        agent.predict(batch, action_masks=np.zeros(env.vocab.n_actions, dtype=bool))
    with pytest.raises(ValueError, match="outside"):
        agent.predict(np.full(env.max_length, pad + 1))
    with pytest.raises(ValueError, match="shape"):
        agent.predict(np.zeros((2, 2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="prompt lengths"):
        agent.predict(batch, state=(np.zeros(3, dtype=np.int64),))


def test_evaluate_policy_and_eval_callback_run(tmp_path: Path) -> None:
    agent = small("bc")
    mean, std = evaluate_policy(agent, Monitor(small_env()), n_eval_episodes=4)
    assert np.isfinite(mean) and np.isfinite(std)
    cb = EvalCallback(
        Monitor(small_env()),
        n_eval_episodes=2,
        eval_freq=2,
        log_path=str(tmp_path),
        best_model_save_path=str(tmp_path),
    )
    agent.train(n_batches=4, callback=cb)
    assert len(cb.evaluations_timesteps) == 2 and cb.evaluations_timesteps[-1] == agent.num_timesteps
    assert (
        BC.load(tmp_path / "best_model", env=small_env()).num_timesteps > 0
    )  # EvalCallback saved through save()


def test_generate_masks_backspace_at_the_prompt_boundary() -> None:
    env = SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=9, max_steps=27)
    agent = small("bc", env=env)
    out = agent.generate(64, seed=0, temperature=2.0)
    bk = env.vocab.backspace_id
    n_bk = 0
    for prompt_len, acts in zip([0] * 64, out.actions):
        length = prompt_len
        for a in acts:
            if a == bk:
                assert length > prompt_len
                length -= 1
                n_bk += 1
            else:
                length += 1
    assert n_bk > 0  # the untrained policy does backspace, just never at the boundary
    again = agent.generate(prompts=[[0, 1]] * 3, seed=0, max_steps=5)
    assert all(len(a) <= 5 and s[:2] == [0, 1] for a, s in zip(again.actions, again.sequences))
    with pytest.raises(ValueError, match="prompts"):
        agent.generate(2, prompts=[[0]])


@pytest.mark.parametrize("name", ["mle", "bc"])
def test_generate_with_seed_equals_stepping_the_env_with_predict(name: str) -> None:
    env = small_env()
    agent = small(name, env=env)
    for seed in range(3):
        agent.set_sampling_seed(seed)
        obs, _ = env.reset(seed=seed)
        state, start, taken = None, np.ones(1, dtype=bool), []
        while True:
            a, state = agent.predict(obs, state=state, episode_start=start)
            start = np.zeros(1, dtype=bool)
            obs, _, term, trunc, _ = env.step(a)
            taken.append(int(a))
            if term or trunc:
                break
        out = agent.generate(prompts=[[]], seed=seed)
        assert out.actions[0] == taken


# ------------------------------------------------------------------------------------------------------
class Counter(BaseCallback):
    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.stop_after = stop_after
        self.started = self.ended = False
        self.timesteps: list[int] = []

    def _on_training_start(self) -> None:
        self.started = True

    def _on_step(self) -> bool:
        self.timesteps.append(self.num_timesteps)
        assert self.training_env.num_envs == 1 and self.logger is self.model.logger
        return self.stop_after is None or self.n_calls < self.stop_after

    def _on_training_end(self) -> None:
        self.ended = True


def test_sb3_callback_stops_training() -> None:
    agent = small("mle")
    cb = Counter(stop_after=3)
    agent.learn(10_000, callback=cb)
    assert cb.started and cb.ended and cb.n_calls == 3 and agent.n_updates == 3
    assert cb.timesteps[-1] == agent.num_timesteps and cb.timesteps == sorted(cb.timesteps)
    two = [Counter(), Counter(stop_after=2)]
    agent.learn(10_000, callback=two)  # type: ignore[arg-type]
    assert agent.n_updates == 5 and two[0].n_calls == 2
    calls: list[int] = []

    def stop_at_once(loc: dict[str, Any], glob: dict[str, Any]) -> bool:
        calls.append(1)
        return False

    agent.learn(10_000, callback=stop_at_once)
    assert calls == [1]
    with pytest.raises(TypeError, match="callback"):
        agent.learn(10, callback=42)  # type: ignore[arg-type]


def test_logger_records_terms_rate_and_throughput(tmp_path: Path) -> None:
    agent = small("bc", verbose=0)
    agent.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    agent.learn(300, log_interval=2, progress_bar=True)
    text = (tmp_path / "log" / "progress.csv").read_text().splitlines()
    header = text[0].split(",")
    for key in (
        "train/loss",
        "train/nll_per_action",
        "train/learning_rate",
        "train/grad_norm",
        "time/tokens_per_s",
        "time/total_timesteps",
    ):
        assert key in header
    assert len(text) >= 2
    tb = small("mle", tensorboard_log=str(tmp_path / "tb"))
    tb.learn(50, log_interval=1)
    assert any(p.name.startswith("events") for p in (tmp_path / "tb").rglob("*"))


def test_nan_loss_names_the_step_and_keeps_parameters() -> None:
    agent = small("eos_weighted_test")
    assert isinstance(agent, EosWeighted)
    agent.nan_at_update = 3
    before: list[torch.Tensor] = []

    class Snapshot(BaseCallback):
        def _on_step(self) -> bool:
            before[:] = params(agent)
            return True

    with pytest.raises(NonFiniteLossError, match=r"update 3 .*weighted_nll") as err:
        agent.learn(10_000, callback=Snapshot())
    assert err.value.step == 3 and math.isnan(err.value.terms["weighted_nll"])
    assert agent.n_updates == 2 and same_params(before, params(agent))
    assert isinstance(err.value, FloatingPointError)


# ------------------------------------------------------------------------------------------------------
def predictions(agent: Agent, n: int = 5) -> list[list[int]]:
    env = small_env()
    obs = np.stack([env.reset(seed=s)[0] for s in range(8)])
    out, state = [], None
    for _ in range(n):
        acts, state = agent.predict(obs, state=state, episode_start=None)
        out.append(acts.tolist())
    return out


def test_save_load_round_trip(tmp_path: Path) -> None:
    agent = small("bc", p_noise=0.3).learn(200)
    agent.save(tmp_path / "bc")
    meta = json.loads((tmp_path / "bc" / "agent.json").read_text())
    assert meta["agent"] == "bc" and meta["format_version"] == FORMAT_VERSION
    assert meta["hyperparameters"]["p_noise"] == 0.3
    assert (tmp_path / "bc" / "policy").is_dir() and any((tmp_path / "bc" / "policy").glob("*.safetensors"))
    loaded = Agent.load(tmp_path / "bc", env=small_env(), device="cpu")
    assert type(loaded) is BC and loaded.num_timesteps == agent.num_timesteps
    assert same_params(params(agent), params(loaded))
    assert loaded.train_trajectories == agent.train_trajectories  # type: ignore[attr-defined]
    assert predictions(agent) == predictions(loaded)
    assert agent.generate(6).actions == loaded.generate(6).actions
    # training continues identically too
    agent.learn(100)
    loaded.learn(100)
    assert same_params(params(agent), params(loaded))
    # env rebuilt from the saved gymnasium id; save over an existing save leaves no temporary folders
    by_id = make_agent("mle", env="seqgym/Dyck-v0", seed=0, n_demonstrations=4, policy_kwargs=dict(TINY))
    by_id.save(tmp_path / "mle")
    by_id.save(tmp_path / "mle")
    back = MLE.load(tmp_path / "mle")
    assert back.env is not None and back.max_length == 17
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bc", "mle"]
    # an env built directly cannot be rebuilt: the agent still predicts, generates from prompts and trains
    alone = BC.load(tmp_path / "bc")
    assert alone.env is None and alone.get_env() is None
    assert predictions(alone) == predictions(BC.load(tmp_path / "bc", env=small_env()))
    assert len(alone.generate(prompts=[[], [0]]).sequences) == 2
    with pytest.raises(ValueError, match="pass prompts="):
        alone.generate(2)
    assert alone.learn(50).num_timesteps >= 50


def test_load_errors(tmp_path: Path) -> None:
    agent = small("bc")
    agent.save(tmp_path / "bc")
    with pytest.raises(AgentLoadError, match=r"'bc' agent .*MLE"):
        MLE.load(tmp_path / "bc")
    with pytest.raises(AgentLoadError, match="vocabulary"):
        BC.load(tmp_path / "bc", env=small_env(n_types=1))
    with pytest.raises(AgentLoadError, match="no such directory"):
        Agent.load(tmp_path / "nothing")
    with pytest.raises(AgentLoadError, match=r"no agent.json"):
        (tmp_path / "empty").mkdir()
        Agent.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="Refusing to overwrite"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("keep me")
        agent.save(tmp_path / "other")

    def damaged(how: str) -> Path:
        import shutil

        d = tmp_path / how
        shutil.copytree(tmp_path / "bc", d)
        weights = next((d / "policy").glob("*.safetensors"))
        if how == "truncated":
            data = weights.read_bytes()
            weights.write_bytes(data[: len(data) // 2])
        elif how == "missing":
            (d / "training_state.pt").unlink()
        elif how == "corrupt":
            flipped = bytearray(weights.read_bytes())
            flipped[-1] ^= 0xFF
            weights.write_bytes(bytes(flipped))
        elif how == "badjson":
            (d / "agent.json").write_text((d / "agent.json").read_text()[:50])
        elif how == "unknown_hp":
            meta = json.loads((d / "agent.json").read_text())
            meta["hyperparameters"]["mystery"] = 1
            (d / "agent.json").write_text(json.dumps(meta))
        elif how == "future":
            meta = json.loads((d / "agent.json").read_text())
            meta["format_version"] = FORMAT_VERSION + 1
            (d / "agent.json").write_text(json.dumps(meta))
        return d

    for how, pattern in [
        ("truncated", r"model\.safetensors has \d+ bytes"),
        ("missing", "training_state.pt is missing"),
        ("corrupt", "SHA-256"),
        ("badjson", "truncated or corrupt"),
        ("unknown_hp", "mystery"),
        ("future", "format version"),
    ]:
        with pytest.raises(AgentLoadError, match=pattern):
            Agent.load(damaged(how), env=small_env())


def test_saved_agent_has_the_permissions_of_a_plain_folder(tmp_path: Path) -> None:
    """The temporary folder renamed into place is not left owner-only (mkdtemp's mode): the umask applies."""
    small("mle").save(tmp_path / "run")
    reference = tmp_path / "plain"
    reference.mkdir()
    assert (tmp_path / "run").stat().st_mode == reference.stat().st_mode


def test_interrupted_save_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = small("mle")
    agent.save(tmp_path / "run")
    first = params(agent)
    agent.learn(100)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(torch, "save", boom)
        with pytest.raises(KeyboardInterrupt):
            agent.save(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left
    assert same_params(params(MLE.load(tmp_path / "run", env=small_env())), first)

    real_rename = os.rename
    calls: list[int] = []

    def rename_once(src: Any, dst: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # after moving the old save aside, before moving the new one in
            raise KeyboardInterrupt
        real_rename(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "rename", rename_once)
        with pytest.raises(KeyboardInterrupt):
            agent.save(tmp_path / "run")
    with pytest.raises(AgentLoadError, match=r"previous one at .*\.run\.old-"):
        MLE.load(tmp_path / "run")
    aside = next(tmp_path.glob(".run.old-*"))
    assert same_params(params(MLE.load(aside, env=small_env())), first)


def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(
        seed=3,
        p_noise=0.2,
        lr_schedule="cosine",
        warmup_steps=3,
        checkpoint_every=4,
        checkpoint_dir=str(tmp_path / "ck"),
        policy_kwargs={**TINY, "attention_dropout": 0.1},  # dropout: the training RNG stream must resume too
    )
    total = 700
    full = small("bc", **kw).learn(total)
    assert full.n_updates > 8
    ck = tmp_path / "ck" / "step_00000004"
    assert Agent.latest_checkpoint(tmp_path / "ck") == tmp_path / "ck" / f"step_{full.n_updates // 4 * 4:08d}"
    resumed = BC.load(ck, env=small_env())
    assert resumed.n_updates == 4
    resumed.learn(total - resumed.num_timesteps, reset_num_timesteps=False)
    assert resumed.n_updates == full.n_updates and resumed.num_timesteps == full.num_timesteps
    assert same_params(params(full), params(resumed))
    a, b = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)


def test_third_party_agent_trains_saves_and_loads(tmp_path: Path) -> None:
    agent = small("eos_weighted_test", eos_weight=3.0, learning_rate=3e-3)
    logs: list[float] = []

    class Loss(BaseCallback):
        def _on_step(self) -> bool:
            logs.append(float(self.locals["loss"]))
            return True

    agent.learn(1500, callback=Loss())
    assert np.mean(logs[-5:]) < np.mean(logs[:5])
    agent.save(tmp_path / "ew")
    back = Agent.load(tmp_path / "ew", env=small_env())
    assert isinstance(back, EosWeighted) and back.config.eos_weight == 3.0
    assert predictions(agent) == predictions(back)
    assert EosWeighted.load(tmp_path / "ew", env=small_env()).num_timesteps == agent.num_timesteps
    with pytest.raises(AgentLoadError, match="not a BC"):
        BC.load(tmp_path / "ew")


def test_bc_rejects_doubly_augmented_demonstrations() -> None:
    env = small_env()
    demos = augment(collect(env.source, 20, rng=0), 0.5, rng=0)
    with pytest.raises(ValueError, match=r"p_noise=0.0"):
        make_agent("bc", env=env, demonstrations=demos, policy_kwargs=dict(TINY))
    agent = make_agent("bc", env=env, demonstrations=demos, p_noise=0.0, policy_kwargs=dict(TINY))
    assert agent.train_trajectories == demos  # type: ignore[attr-defined]
