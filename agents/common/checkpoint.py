"""Checkpoint I/O: ``save`` / ``load`` of a whole agent as one directory, written atomically.

Layout (format version :data:`FORMAT_VERSION`): ``agent.json`` (format, agent name and class,
hyperparameters, seed, counters, numpy RNG state, env id, and the size and SHA-256 of every other file),
``vocab.json``, ``policy/`` (:meth:`LMPolicy.save_pretrained`), ``training_state.pt`` (optimiser, torch RNG
states, data order, the algorithm's ``_extra_state``) and ``demonstrations.npz``. ``agent.json`` is written
last: its presence marks a complete save, which :meth:`CheckpointMixin.latest_checkpoint` relies on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch

from agents.common.distributed import is_main_process
from agents.common.hooks import AgentHooks, BatchT, EpochSampler
from agents.common.registry import lookup, registered_name
from agents.common.resolve import env_spec, resolve_device, resolve_env
from agents.policy import LMPolicy
from seqgym._files import default_mode, fsync_directory, fsync_tree
from seqgym.data import load_demonstrations, save_demonstrations
from seqgym.vocab import Vocabulary

if TYPE_CHECKING:
    from agents.common.config import AgentConfig
    from agents.common.resolve import DemonstrationsLike, EnvLike

__all__ = ["FORMAT_VERSION", "AgentLoadError", "CheckpointMixin"]

FORMAT_VERSION = 1
"""Version of the directory layout written by :meth:`Agent.save`; :meth:`Agent.load` reads versions <= it."""

_FORMAT_NAME = "seqgym-agent"
_AGENT_FILE = "agent.json"
_POLICY_DIR = "policy"
_STATE_FILE = "training_state.pt"
_DEMOS_FILE = "demonstrations.npz"
_VOCAB_FILE = "vocab.json"
#: The entries of ``agent.json`` that :meth:`CheckpointMixin.load` needs, with their JSON types.
_REQUIRED_FIELDS: dict[str, type] = {
    "agent": str,
    "hyperparameters": dict,
    "seed": int,
    "num_timesteps": int,
    "n_updates": int,
    "total_timesteps": int,
    "schedule": list,
    "rng": dict,
}
_STEP_DIR = re.compile(r"step_(\d+)")
_TMP_DIR = re.compile(r"\..+\.tmp-(\d+)-[^/]*")

_C = TypeVar("_C", bound="CheckpointMixin[Any]")


class AgentLoadError(ValueError):
    """A directory cannot be loaded as an agent: missing / truncated / corrupt file, another agent class, another
    vocabulary, or another format version. The message names the directory, the file and the problem."""


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars (shard writing / weight loading) while saving or loading."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _check_files(root: Path) -> str | None:
    """Why ``root`` is not a complete save (its ``agent.json`` missing, unreadable, or not matching the sizes
    and SHA-256 of the files it lists), or ``None`` when it is."""
    meta_path = root / _AGENT_FILE
    if not meta_path.is_file():
        return f"it holds no {_AGENT_FILE}; it is not an agent directory (or the save was interrupted)."
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
        for rel, info in files.items():
            p = root / rel
            if not p.is_file():
                return f"the file {rel} is missing."
            if p.stat().st_size != info["size"]:
                return f"the file {rel} has {p.stat().st_size} bytes, {info['size']} were saved (truncated?)."
            if _file_digest(p) != info["sha256"]:
                return f"the file {rel} does not match its saved SHA-256 (corrupt or modified)."
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{_AGENT_FILE} is truncated or corrupt ({e})."
    except (KeyError, TypeError, AttributeError) as e:
        return f"{_AGENT_FILE} lacks or garbles the entry {e}."
    return None


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary folders (``.<name>.tmp-<pid>-*``) that saves killed before their rename left in
    ``folder``: those whose process no longer runs. Folders of a live save (this or another process) stay."""
    for p in folder.glob(".*.tmp-*"):
        match = _TMP_DIR.fullmatch(p.name)
        if match is None or not p.is_dir():
            continue
        pid = int(match.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (OverflowError, OSError):  # another user's process, or cannot tell: keep its folder
            pass


class CheckpointMixin(AgentHooks[BatchT]):
    """``save``, ``load`` and periodic checkpoints; part of :class:`~agents.common.agent.Agent`."""

    if TYPE_CHECKING:  # provided by Agent and TrainingMixin

        def _build(
            self,
            *,
            env: EnvLike | None,
            config: AgentConfig,
            seed: int | None,
            policy: LMPolicy | None,
            demonstrations: DemonstrationsLike,
            collect_missing: bool = True,
            limits: dict[str, int] | None = None,
            loading: bool = False,
        ) -> None: ...

        def _capture_training_rng(self) -> None: ...

    def checkpoint_path(self, step: int) -> Path:
        """Directory of the checkpoint taken after update ``step``: ``checkpoint_dir/step_XXXXXXXX``."""
        if not self.config.checkpoint_dir:
            raise ValueError("No checkpoint_dir configured.")
        return Path(self.config.checkpoint_dir) / f"step_{step:08d}"

    @staticmethod
    def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
        """The newest complete checkpoint in a folder, or ``None``.

        Checkpoints are the ``step_<number>`` folders, ordered by their step number (``step_100000000`` comes
        after ``step_99999999``). One whose ``agent.json`` is missing, unreadable, or whose files do not match
        the sizes and SHA-256 it records (a partial or corrupt save) is skipped with a warning, and the newest
        good one before it is returned.
        """
        folder = Path(checkpoint_dir)
        if not folder.is_dir():
            return None
        steps = []
        for p in folder.iterdir():
            match = _STEP_DIR.fullmatch(p.name)
            if match is not None and p.is_dir():
                steps.append((int(match.group(1)), p))
        for _, p in sorted(steps, reverse=True):
            problem = _check_files(p)
            if problem is None:
                return p
            warnings.warn(f"Skipping the checkpoint {p}: {problem}", stacklevel=2)
        return None

    def _training_state(self) -> dict[str, Any]:
        if self._in_training:
            self._capture_training_rng()
        return {
            "optimizer": self.optimizer.state_dict(),
            "generator": self._generator.get_state(),
            "generator_device": self.device.type,
            "train_rng": self._train_rng_state,
            "sampler": None if self._sampler is None else self._sampler.state(),
            "extra": self._extra_state(),
        }

    def save(self, path: str | os.PathLike[str], *, include_demonstrations: bool = True) -> None:
        """Write the agent to one directory, atomically.

        Layout: ``agent.json`` (format version, agent name and class, hyperparameters, seed, counters, numpy
        RNG state, env id, and the size and SHA-256 of every other file), ``vocab.json``, ``policy/``
        (:meth:`LMPolicy.save_pretrained`: safetensors + vocabulary), ``training_state.pt`` (optimiser, torch
        RNG states, data order, ``_extra_state``) and ``demonstrations.npz`` (so a checkpoint resumes alone).

        Everything is written to a temporary directory beside ``path``, which is then renamed into place; an
        existing save at ``path`` is first renamed aside and deleted only after the new one is in place, so an
        interruption never loses the previous save (at worst it waits at ``.<name>.old-*`` beside ``path``).

        Raises:
            ValueError: ``path`` exists and is not an agent directory (nothing is overwritten).
        """
        if not is_main_process():  # several processes hold the same state: rank 0 alone writes it
            return
        target = Path(path)
        if target.exists() and not (
            target.is_dir() and ((target / _AGENT_FILE).is_file() or not any(target.iterdir()))
        ):
            raise ValueError(f"Refusing to overwrite {target}: it exists and is not an agent directory.")
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes it owner-only
        try:
            with _quiet_transformers():
                self.policy.save_pretrained(tmp / _POLICY_DIR)
            (tmp / _VOCAB_FILE).write_text(json.dumps(self.vocab.to_dict(), indent=1))
            torch.save(self._training_state(), tmp / _STATE_FILE)
            has_demos = include_demonstrations and bool(self.demonstrations)
            if has_demos:
                save_demonstrations(tmp / _DEMOS_FILE, self.demonstrations)
            files = {
                p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": _file_digest(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            meta = {
                "format": _FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "agent": registered_name(type(self)),
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "hyperparameters": self.config.to_dict(),
                "seed": self.seed,
                "num_timesteps": self.num_timesteps,
                "n_updates": self._n_updates,
                "total_timesteps": self._total_timesteps,
                "schedule": list(self._schedule),
                "rng": self.rng.bit_generator.state,
                "env": env_spec(self.env),
                "limits": {"max_length": self.max_length, "max_steps": self.max_steps},
                "demonstrations": has_demos,
                "files": files,
            }
            with open(tmp / _AGENT_FILE, "w") as f:  # written last: its presence marks a complete save
                json.dump(meta, f, indent=1)
            fsync_tree(tmp)  # weights, training state, agent.json and the folders, before the rename
            if target.exists():
                aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(target, aside)
                os.rename(tmp, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(tmp, target)
            fsync_directory(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load_policy(cls, path: str | os.PathLike[str], *, device: str = "auto") -> LMPolicy:
        """The trained :class:`~agents.policy.LMPolicy` of the agent saved in ``path`` (any agent class), e.g.
        to fine-tune an MLE model with SequenceMatch: ``make_agent("sequencematch", ..., policy="runs/mle")``.

        Raises:
            AgentLoadError: as :meth:`load`.
        """
        from agents.common.agent import Agent

        return Agent.load(path, device=device).policy

    @classmethod
    def load(
        cls: type[_C],
        path: str | os.PathLike[str],
        env: EnvLike | None = None,
        device: str = "auto",
        *,
        demonstrations: DemonstrationsLike = None,
    ) -> _C:
        """Load an agent written by :meth:`save`; it predicts and trains exactly as the saved one would have.

        Args:
            path: the directory.
            env: the env to attach (must use the saved vocabulary); ``None`` rebuilds it from the saved
                Gymnasium id when the agent's env was made by id (else the agent can predict and generate from
                given prompts, but not draw prompts).
            device: ``"auto"``, ``"cpu"``, ``"cuda"``...
            demonstrations: training data to use instead of the saved ones.

        Called on a subclass (``BC.load``), the directory must hold that class (or a subclass); ``Agent.load``
        loads whatever registered class it holds.

        Raises:
            AgentLoadError: missing directory or file, truncated / corrupt file (sizes and SHA-256 are checked),
                another agent class, another vocabulary, unknown hyperparameters, or a newer format version.
        """
        root = Path(path)

        def fail(problem: str) -> AgentLoadError:
            return AgentLoadError(f"Cannot load an agent from {root}: {problem}")

        if not root.is_dir():
            aside = sorted(root.parent.glob(f".{root.name}.old-*")) if root.parent.is_dir() else []
            hint = f" An interrupted save left the previous one at {aside[-1]}." if aside else ""
            raise fail(f"no such directory.{hint}")
        meta_path = root / _AGENT_FILE
        if not meta_path.is_file():
            raise fail(
                f"it holds no {_AGENT_FILE}; it is not an agent directory (or the save was interrupted)."
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise fail(f"{_AGENT_FILE} is truncated or corrupt ({e}).") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
            raise fail(f"{_AGENT_FILE} is not a seqgym agent file.")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise fail(f"format version {version!r}; this seqgym reads versions <= {FORMAT_VERSION}.")
        problem = _check_files(root)
        if problem is not None:
            raise fail(problem)
        for key, kind in _REQUIRED_FIELDS.items():
            if key not in meta:
                raise fail(f"{_AGENT_FILE} lacks the entry {key!r}.")
            value = meta[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise fail(
                    f"{_AGENT_FILE} has {key}={value!r} ({type(value).__name__}); expected {kind.__name__}."
                )
        schedule = meta["schedule"]
        if len(schedule) != 3:
            raise fail(f"{_AGENT_FILE} has schedule={schedule!r}; expected [unit, start, end].")
        name = meta["agent"]
        hp = dict(meta["hyperparameters"])

        try:
            saved_cls = lookup(name)
        except KeyError:
            raise fail(
                f"it holds a {name!r} agent ({meta.get('class')}), which is not registered here; import its "
                "module or call register_agent first."
            ) from None
        if not issubclass(saved_cls, cls):
            raise fail(
                f"it holds a {name!r} agent ({saved_cls.__name__}), not a {cls.__name__}; load it with "
                f"{saved_cls.__name__}.load or Agent.load."
            )
        names = saved_cls.config_class.field_names()
        unknown = [k for k in hp if k not in names]
        if unknown:
            raise fail(
                f"unknown hyperparameters {unknown} for {saved_cls.__name__} (saved by another version?)."
            )
        hp["device"] = device
        try:
            config = saved_cls.config_class(**hp)
            vocab = Vocabulary.from_dict(json.loads((root / _VOCAB_FILE).read_text()))
        except (ValueError, TypeError, KeyError, OSError) as e:
            raise fail(f"bad hyperparameters or vocabulary ({e}).") from None

        if env is None and isinstance(meta.get("env"), dict):
            import gymnasium as gym

            from seqgym.registration import register_envs

            register_envs()
            try:
                env = gym.make(meta["env"]["id"], **meta["env"].get("kwargs", {}))
            except Exception as e:
                raise fail(f"cannot rebuild the env {meta['env']['id']!r} ({e}); pass env=.") from None
        if env is not None:
            _, base = resolve_env(env)
            assert base is not None
            if base.vocab != vocab:
                raise fail(
                    f"the env's vocabulary {base.vocab} differs from the saved one {vocab}; pass an env over the "
                    "same tokens."
                )
        dev = resolve_device(device)
        try:
            with _quiet_transformers():
                policy = LMPolicy.load(root / _POLICY_DIR, device=dev)
        except Exception as e:
            raise fail(f"the policy in {_POLICY_DIR}/ cannot be loaded ({type(e).__name__}: {e}).") from None
        if policy.vocab != vocab:
            raise fail("the policy's vocabulary differs from vocab.json.")
        if demonstrations is None and meta.get("demonstrations"):
            try:
                demonstrations = load_demonstrations(root / _DEMOS_FILE, vocab=vocab)
            except (ValueError, OSError) as e:
                raise fail(f"{_DEMOS_FILE} cannot be read ({e}).") from None
        try:
            state = torch.load(root / _STATE_FILE, map_location=dev, weights_only=True)
        except Exception as e:
            raise fail(f"{_STATE_FILE} cannot be read ({type(e).__name__}: {e}).") from None

        agent = saved_cls.__new__(saved_cls)
        agent._build(
            env=env,
            config=config,
            seed=int(meta["seed"]),
            policy=policy,
            demonstrations=demonstrations,
            collect_missing=False,
            limits=meta.get("limits"),
            loading=True,
        )
        try:
            agent._restore(meta, state)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise fail(f"the training state does not fit this agent ({type(e).__name__}: {e}).") from None
        return cast("_C", agent)

    def _restore(self, meta: dict[str, Any], state: dict[str, Any]) -> None:
        self.num_timesteps = int(meta["num_timesteps"])
        self._n_updates = int(meta["n_updates"])
        self._total_timesteps = int(meta["total_timesteps"])
        unit, start, end = meta["schedule"]
        self._schedule = (str(unit), int(start), int(end))
        self.rng.bit_generator.state = meta["rng"]
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("generator_device") == self.device.type:
            self._generator.set_state(state["generator"].cpu())
        else:  # another device type has another generator; continue a deterministic stream instead
            self._generator.manual_seed((self.seed * 1_000_003 + self._n_updates) % 2**62)
        train_rng = state.get("train_rng")
        if train_rng is not None:
            cpu_state = train_rng.get("cpu")
            cuda_state = train_rng.get("cuda") if self.device.type == "cuda" else None
            self._train_rng_state = {
                "cpu": None if cpu_state is None else cpu_state.cpu(),
                "cuda": None if cuda_state is None else cuda_state.cpu(),
            }
        sampler = state.get("sampler")
        if sampler is not None and int(sampler["n"]) == self._dataset_size():
            self._sampler = EpochSampler(int(sampler["n"]))
            self._sampler.load({"n": sampler["n"], "perm": sampler["perm"].cpu(), "pos": sampler["pos"]})
        self._load_extra_state(state.get("extra") or {})
