"""Plumbing shared by the experiment scripts.

- :class:`AgentSettings`: the LM policy's and the imitation agents' settings, one typed dataclass that every
  study's ``Config`` derives from (a study adds only what makes it different), checked before anything runs.
- :class:`RunCache`: one JSON file per finished run, keyed on the settings the run depends on *and* on the
  library's source code and version (:func:`run_stamp`), so a rerun resumes, and edited code or a changed
  setting never reuses stale results.
- :func:`run_cli`: the command line (tyro), with a study's errors printed as one line instead of a traceback.
- :func:`run_jobs`: a study's independent runs, cached ones skipped, the rest one after another or in worker
  processes (``--workers``), with the same records either way.
- atomic JSON, mean ± std tables, torch thread counts.

The logic being compared lives in ``seqgym`` and ``agents``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, get_args

import numpy as np

from seqgym._files import atomic_write

if TYPE_CHECKING:
    from experiments.progress import StudyLog

__all__ = [
    "IMITATION_AGENTS",
    "LIBRARY_PACKAGES",
    "NOISY_AGENTS",
    "SEQUENCEMATCH_FIELDS",
    "AgentSettings",
    "Architecture",
    "CacheError",
    "ConfigError",
    "Divergence",
    "InsertedSteps",
    "Job",
    "RunCache",
    "StudyError",
    "StudyTerminated",
    "Terminal",
    "check_int",
    "check_number",
    "config_digest",
    "flag",
    "format_table",
    "library_digest",
    "mean_std",
    "model_kwargs",
    "package_version",
    "run_cli",
    "run_jobs",
    "run_stamp",
    "source_digest",
    "stamp_digest",
    "summarize",
    "torch_threads",
    "write_json_atomic",
    "write_text_atomic",
]

ConfigT = TypeVar("ConfigT")


# ==========================================================================================================
# Errors a study reports in one line
# ==========================================================================================================
class StudyError(ValueError):
    """An error a study reports to its user as one line (a bad option, an unreadable cache file); anything
    else that goes wrong is a bug and keeps its traceback."""


class ConfigError(StudyError):
    """An option of a study is invalid. Raised by ``Config.check()``, before anything is trained or cached."""


class CacheError(StudyError):
    """A cached run cannot be read; the message names the file and how to recover."""


def flag(name: str) -> str:
    """The command-line flag of a config field: ``flag("n_eval") == "--n-eval"``."""
    return "--" + name.replace("_", "-")


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_int(name: str, value: object, *, low: int = 1, high: int | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int in ``[low, high]``; the message names the flag.

    Example:
        >>> check_int("n_eval", 0)
        Traceback (most recent call last):
        ...
        experiments.common.ConfigError: --n-eval must be an int >= 1, got 0.
    """
    if not _is_int(value) or value < low or (high is not None and value > high):  # type: ignore[operator]
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{flag(name)} must be an int {bound}, got {value!r}.")


def check_noise_margin_option(noise_margin: int, task: str, source_kwargs: Mapping[str, int]) -> None:
    """Raise :class:`ConfigError` for a ``--noise-margin`` that is not an int >= 0, or that leaves the task's
    demonstrations no position for a mistake (``agents.common.noise.check_noise_margin``, judged on a few
    demonstrations of the task), before anything trains."""
    check_int("noise_margin", noise_margin, low=0)
    if noise_margin == 0:
        return
    from agents.common.noise import check_noise_margin
    from seqgym.data import collect
    from seqgym.registration import make_env

    env = make_env(task, **source_kwargs)
    try:
        check_noise_margin(noise_margin, env.max_length, collect(env.source, 32, np.random.default_rng(0)))
    except ValueError as e:
        raise ConfigError(f"--noise-margin: {e}") from None


def check_seeds(seeds: tuple[int, ...]) -> None:
    """Raise :class:`ConfigError` unless ``seeds`` are distinct ints >= 0 (at least one)."""
    if not seeds:
        raise ConfigError("--seeds is empty; give at least one seed.")
    for s in seeds:
        check_int("seeds", s, low=0)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {list(seeds)}.")


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number within the bounds (``low_open`` /
    ``high_open``: the bound itself is excluded); the message names the flag.

    Example:
        >>> check_number("p_noise", 1.5, low=0.0, high=1.0)
        Traceback (most recent call last):
        ...
        experiments.common.ConfigError: --p-noise must be a number in [0.0, 1.0], got 1.5.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v)
        ok = ok and (low is None or (v > low if low_open else v >= low))
        ok = ok and (high is None or (v < high if high_open else v <= high))
    if not ok:
        if low is not None and high is not None:
            bound = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            bound = f"{'>' if low_open else '>='} {low}"
        elif high is not None:
            bound = f"{'<' if high_open else '<='} {high}"
        else:
            bound = "finite"
        raise ConfigError(f"{flag(name)} must be a number {bound}, got {value!r}.")


# ==========================================================================================================
# The settings every study shares
# ==========================================================================================================
def model_kwargs(cfg: Any) -> dict[str, Any]:
    """``LMPolicy.from_config`` keyword arguments of the model a study's or a benchmark's settings describe
    (their ``architecture``, ``n_layer``, ``n_embd`` and ``n_head`` fields)."""
    return {name: getattr(cfg, name) for name in ("architecture", "n_layer", "n_embd", "n_head")}


Architecture = Literal["llama", "gpt2"]
"""Model families of the LM policy (``agents.policy.ARCHITECTURES``)."""
Divergence = Literal["chi2", "kl", "js", "hellinger"]
"""SequenceMatch's divergences (``agents.SequenceMatchConfig.divergence``)."""

Terminal = Literal["absorbing", "iq"]
"""SequenceMatch's treatment of eos (``agents.SequenceMatchConfig.terminal``)."""
InsertedSteps = Literal["bc_only", "all"]
"""Which SequenceMatch terms see the inserted pairs (``agents.SequenceMatchConfig.inserted_steps``)."""
SEQUENCEMATCH_FIELDS = (
    "alpha",
    "chi2_coef",
    "bc_weight",
    "bc_warmup_steps",
    "divergence",
    "terminal",
    "inserted_steps",
    "replay_refresh_interval",
    "mixture_size",
)
"""The SequenceMatch hyperparameters a study can override (``AgentSettings.sm_<name>``)."""

IMITATION_AGENTS = ("mle", "bc", "sequencematch")
NOISY_AGENTS = ("bc", "sequencematch")  # the agents trained on backspace-augmented demonstrations


@dataclasses.dataclass
class AgentSettings:
    """The LM policy and the imitation agents: settings every study shares.

    A study's ``Config`` derives from this class, adds what makes the study different, and overrides a default
    where its task needs another (the override says why). :meth:`check` validates every field, with the agents'
    own rules included, before a study trains or caches anything.
    """

    architecture: Architecture = "gpt2"
    """Model family of the LM policy, built from a config (``agents.policy.LMPolicy.from_config``): GPT-2 or
    a Llama-style decoder with rotary positions. The studies use GPT-2, the family their learning rate and batch
    were chosen with (the library's default is the Llama-style one, with its own default optimiser settings;
    at the studies' learning rate it trains Dyck badly on the development seeds)."""
    n_layer: int = 2
    """Transformer layers of the LM policy."""
    n_embd: int = 64
    """Width of the LM policy (a multiple of n_head)."""
    n_head: int = 2
    """Attention heads of the LM policy."""
    n_demonstrations: int = 1_000
    """Expert trajectories (demonstrations) per seed, shared by the imitation agents (the studies' setting; the
    agents' own default is 4000)."""
    learning_rate: float = 3e-3
    """Learning rate of the imitation agents."""
    batch_size: int = 16
    """Trajectories per update of the imitation agents."""
    sm_alpha: float | None = None
    """SequenceMatch scale α of ``Q = α·l`` (None: the library default, ``agents.SequenceMatchConfig``)."""
    sm_chi2_coef: float | None = None
    """SequenceMatch χ² coefficient c (None: the library default). The library defaults were chosen by
    ``experiments.sweep`` on a development language and development seeds that no reported table uses; the
    studies run them unchanged, and these flags exist to override them."""
    sm_bc_weight: float | None = None
    """SequenceMatch behaviour-cloning anchor weight λ_bc (None: the library default)."""
    sm_bc_warmup_steps: int | None = None
    """SequenceMatch updates of BC alone before the full loss (None: the library default)."""
    sm_divergence: Divergence | None = None
    """SequenceMatch divergence (None: the library default)."""
    sm_terminal: Terminal | None = None
    """SequenceMatch treatment of eos: absorbing or iq (None: the library default)."""
    sm_inserted_steps: InsertedSteps | None = None
    """Which SequenceMatch terms see the inserted (mistake, backspace) pairs: bc_only or all (None: the library
    default)."""
    sm_replay_refresh_interval: int | None = None
    """SequenceMatch updates between refreshes of the replay buffer (None: the library default)."""
    sm_mixture_size: int | None = None
    """SequenceMatch trajectories of the mixture M per update, half of them its own samples (None: the library
    default)."""
    threads: int = 1
    """torch CPU threads per run (one is the fastest for these small models on a 2-core CPU; the count can
    change floating-point results, so it is part of what a cached run depends on)."""
    resume: bool = True
    """Reuse finished runs cached under the output folder (False recomputes everything)."""
    progress: bool = True
    """Show a progress bar per run (plain progress lines when the output is not a terminal)."""

    def model_name(self) -> str:
        """The LM policy in a few words, for table headers and figure titles: ``"gpt2 2x64, lr 0.003, batch 16"``."""
        return f"{self.architecture} {self.n_layer}x{self.n_embd}, lr {self.learning_rate:g}, batch {self.batch_size}"

    def policy_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``LMPolicy.from_config`` for the model these settings describe."""
        return model_kwargs(self)

    def agent_kwargs(
        self,
        agent: str,
        *,
        p_noise: float | None = None,
        learning_rate: float | None = None,
        with_policy_kwargs: bool = True,
    ) -> dict[str, Any]:
        """Hyperparameters of ``make_agent(agent, ...)`` under these settings.

        Args:
            agent: ``"mle"``, ``"bc"`` or ``"sequencematch"``.
            p_noise: backspace augmentation of BC and SequenceMatch (ignored for MLE; required for the others).
            learning_rate: overrides :attr:`learning_rate` (e.g. a fine-tuning rate).
            with_policy_kwargs: include ``policy_kwargs`` (leave it out when a trained policy is passed).
        """
        if agent not in IMITATION_AGENTS:
            raise ValueError(f"Unknown imitation agent {agent!r}; choose from {IMITATION_AGENTS}.")
        kw: dict[str, Any] = {
            "learning_rate": self.learning_rate if learning_rate is None else learning_rate,
            "batch_size": self.batch_size,
        }
        if with_policy_kwargs:
            kw["policy_kwargs"] = self.policy_kwargs()
        if agent in NOISY_AGENTS:
            if p_noise is None:
                raise ValueError(f"{agent} needs p_noise (its backspace augmentation).")
            kw["p_noise"] = p_noise
        if agent == "sequencematch":
            kw.update(self.sequencematch_overrides())
        return kw

    def sequencematch_overrides(self) -> dict[str, Any]:
        """The SequenceMatch hyperparameters these settings set (the ``sm_*`` fields that are not None), by
        their name in ``agents.SequenceMatchConfig``; the others keep the library defaults.

        Example:
            >>> AgentSettings().sequencematch_overrides()
            {}
            >>> AgentSettings(sm_chi2_coef=5.0, sm_terminal="iq").sequencematch_overrides()
            {'chi2_coef': 5.0, 'terminal': 'iq'}
        """
        return {
            name: getattr(self, "sm_" + name)
            for name in SEQUENCEMATCH_FIELDS
            if getattr(self, "sm_" + name) is not None
        }

    def refuse_sequencematch_overrides(self, why: str) -> None:
        """Raise :class:`ConfigError` naming every ``--sm-*`` flag that is set, for a study whose SequenceMatch
        settings are its own or that trains no SequenceMatch (``why`` says which).

        Example:
            >>> AgentSettings(sm_alpha=0.1).refuse_sequencematch_overrides("this study trains none")
            Traceback (most recent call last):
            ...
            experiments.common.ConfigError: --sm-alpha does not apply: this study trains none.
        """
        given = [flag("sm_" + name) for name in self.sequencematch_overrides()]
        if given:
            raise ConfigError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply: {why}.")

    def check(self) -> None:
        """Raise :class:`ConfigError` (naming the flag) for any invalid field.

        Example:
            >>> AgentSettings(n_embd=65).check()
            Traceback (most recent call last):
            ...
            experiments.common.ConfigError: --n-embd (65) must be a multiple of --n-head (2).
        """
        for name in ("n_layer", "n_embd", "n_head", "n_demonstrations", "batch_size", "threads"):
            check_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ConfigError(f"--n-embd ({self.n_embd}) must be a multiple of --n-head ({self.n_head}).")
        check_number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        if self.sm_alpha is not None:
            check_number("sm_alpha", self.sm_alpha, low=0.0, low_open=True)
        if self.sm_chi2_coef is not None:
            check_number("sm_chi2_coef", self.sm_chi2_coef, low=0.0, low_open=True)
        if self.sm_bc_weight is not None:
            check_number("sm_bc_weight", self.sm_bc_weight, low=0.0)
        if self.sm_bc_warmup_steps is not None:
            check_int("sm_bc_warmup_steps", self.sm_bc_warmup_steps, low=0)
        if self.sm_replay_refresh_interval is not None:
            check_int("sm_replay_refresh_interval", self.sm_replay_refresh_interval)
        if self.sm_mixture_size is not None:
            check_int("sm_mixture_size", self.sm_mixture_size)
        if self.architecture == "llama" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"--architecture llama needs an even head size; --n-embd / --n-head = {self.n_embd // self.n_head}."
            )
        for name, kind in (
            ("architecture", Architecture),
            ("sm_divergence", Divergence),
            ("sm_terminal", Terminal),
            ("sm_inserted_steps", InsertedSteps),
        ):
            value = getattr(self, name)
            if value is not None and value not in get_args(kind):
                raise ConfigError(f"{flag(name)} must be one of {', '.join(get_args(kind))}, got {value!r}.")
        for name in ("resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{flag(name)} must be True or False, got {getattr(self, name)!r}.")
        for agent in IMITATION_AGENTS:  # and the agents' own rules, on the hyperparameters a run will pass
            check_agent_kwargs(agent, self.agent_kwargs(agent, p_noise=0.0))


def check_agent_kwargs(agent: str, kwargs: Mapping[str, Any]) -> None:
    """Validate ``make_agent(agent, **kwargs)``'s hyperparameters with the agent's own config class, without
    building anything; its complaint becomes a :class:`ConfigError`."""
    from agents import BC, MLE, Agent, SequenceMatch

    classes: dict[str, type[Agent[Any]]] = {"mle": MLE, "bc": BC, "sequencematch": SequenceMatch}
    cls = classes[agent]
    try:
        cls.config_class.from_kwargs(dict(kwargs), owner=agent)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{agent}: {e}") from None


# ==========================================================================================================
# What a cached run depends on
# ==========================================================================================================
LIBRARY_PACKAGES = ("seqgym", "agents", "experiments")
"""The packages whose source code a cached run depends on (:func:`library_digest`)."""


def config_digest(config: Any, *, ignore: Sequence[str] = ()) -> str:
    """Short hash of a config dataclass's fields (minus ``ignore``): runs cached under another digest are
    never reused, so changing a hyperparameter can never silently mix old and new results.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = 1e-3
        ...     out: str = "a"
        >>> config_digest(C(), ignore=["out"]) == config_digest(C(out="b"), ignore=["out"])
        True
        >>> config_digest(C()) == config_digest(C(lr=0.1))
        False
    """
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in set(ignore)}
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def source_digest(folders: Iterable[str | os.PathLike[str]]) -> str:
    """Hash of every ``.py`` file under ``folders`` (names and contents; ``__pycache__`` left out): any edit,
    added, removed or renamed file changes it.

    Example:
        >>> import pathlib, tempfile
        >>> pkg = pathlib.Path(tempfile.mkdtemp()) / "pkg"
        >>> pkg.mkdir(); _ = (pkg / "a.py").write_text("x = 1\\n")
        >>> before = source_digest([pkg])
        >>> _ = (pkg / "a.py").write_text("x = 2\\n")
        >>> source_digest([pkg]) == before
        False
    """
    h = hashlib.sha256()
    for folder in map(Path, folders):
        files = sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.relative_to(folder).parts)
        for p in files:
            h.update(f"{folder.name}/{p.relative_to(folder).as_posix()}\0".encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def library_folders() -> list[Path]:
    """The folders of the imported :data:`LIBRARY_PACKAGES` (the code that actually runs)."""
    folders = []
    for name in LIBRARY_PACKAGES:
        module = sys.modules.get(name) or importlib.import_module(name)
        if module.__file__ is None:
            raise RuntimeError(f"Cannot locate the source of package {name!r} to hash it.")
        folders.append(Path(module.__file__).parent)
    return folders


def library_digest() -> str:
    """:func:`source_digest` of the ``seqgym``, ``agents`` and ``experiments`` packages that are imported."""
    return source_digest(library_folders())


def package_version() -> str:
    """The version of the ``seqgym`` project (``seqgym.__version__``)."""
    import seqgym

    return str(seqgym.__version__)


def run_stamp(config: Any, *, ignore: Sequence[str] = ()) -> dict[str, str]:
    """What a cached result depends on: the config's digest (minus ``ignore``), the library's source digest
    and the package version. Stored with each cached run and checked when it is read back."""
    return {
        "config": config_digest(config, ignore=ignore),
        "code": library_digest(),
        "version": package_version(),
    }


def stamp_digest(stamp: Mapping[str, str]) -> str:
    """Short hash of a :func:`run_stamp` (part of a cached run's file or folder name)."""
    return hashlib.sha1(json.dumps(dict(stamp), sort_keys=True).encode()).hexdigest()[:10]


# ==========================================================================================================
# Files
# ==========================================================================================================
def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` (folders created) through :func:`seqgym._files.atomic_write`:
    an interrupted or failed write leaves the previous file in place. Raises ``TypeError`` for an object JSON
    cannot hold (before anything is written)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` (folders created) through :func:`seqgym._files.atomic_write`: an
    interrupted or failed write leaves the previous file in place."""
    data = text.encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"Cannot write {type(x).__name__} to JSON.")


class RunCache:
    """One JSON file per finished run under ``folder``; a rerun skips what is already there.

    Each file holds the run's record and the ``stamp`` it was computed under (:func:`run_stamp`: config digest,
    library source digest, version); the stamp's hash is part of the file name, and a file whose stored stamp
    differs from the cache's is recomputed rather than reused. A file that is not a readable record raises
    :class:`CacheError` naming it.

    Example:
        >>> import tempfile
        >>> cache = RunCache(tempfile.mkdtemp(), stamp={"config": "abc"})
        >>> cache.get("mle", 0) is None
        True
        >>> cache.put("mle", 0, {"validity": 0.5})
        >>> cache.get("mle", 0)
        {'validity': 0.5}
        >>> RunCache(cache.folder, stamp={"config": "def"}).get("mle", 0) is None  # other settings or code
        True
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        enabled: bool = True,
        stamp: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.enabled = enabled
        self.stamp = dict(stamp or {})

    def path(self, *key: object) -> Path:
        """The file of ``key`` (its parts joined by ``_``, then the stamp's hash)."""
        name = "_".join(str(k).replace("/", "-") for k in (*key, stamp_digest(self.stamp)))
        return self.folder / f"{name}.json"

    def get(self, *key: object) -> dict[str, Any] | None:
        """The stored record of ``key``, or ``None``: nothing stored, caching disabled, or the file was
        written under another stamp (other settings, code or version: it is then recomputed).

        Raises:
            CacheError: the file is not valid JSON or not a cached record (named, with how to recover).
        """
        p = self.path(*key)
        if not self.enabled or not p.exists():
            return None
        recover = f"delete {p} (or rerun with --no-resume) to recompute that run"
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CacheError(
                f"Cached run {p} is not valid JSON ({e.msg}, line {e.lineno}); {recover}."
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise CacheError(f"Cached run {p} cannot be read ({e}); {recover}.") from None
        if not isinstance(data, dict) or not isinstance(data.get("record"), dict):
            raise CacheError(f"Cached run {p} does not hold a run record; {recover}.")
        if data.get("stamp") != self.stamp:
            print(f"[cache] {p.name} was computed under other settings or code; recomputing it", flush=True)
            return None
        record: dict[str, Any] = data["record"]
        return record

    def put(self, *key_and_record: Any) -> None:
        """``put(*key, record)``: store ``record`` (with the cache's stamp) atomically."""
        *key, record = key_and_record
        write_json_atomic(self.path(*key), {"stamp": self.stamp, "record": record})


# ==========================================================================================================
# Running a study's runs
# ==========================================================================================================
@dataclasses.dataclass(frozen=True)
class Job:
    """One independent run of a study.

    Attributes:
        key: its key in the study's :class:`RunCache`.
        label: what the log calls it (e.g. ``"bc (seed 10)"``).
        args: the positional arguments of the study's run function.
        total: its budget in steps, for the progress bar of a run in this process.
        cost: its expected cost in any unit shared by the study's jobs; worker processes start the costliest
            jobs first (the order of the records does not change).
    """

    key: tuple[Any, ...]
    label: str
    args: tuple[Any, ...]
    total: int = 1
    cost: float = 1.0


def run_jobs(
    fn: Callable[..., dict[str, Any]],
    jobs: Sequence[Job],
    *,
    cache: RunCache,
    log: StudyLog,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Run every job not in ``cache`` as ``fn(*job.args, bar=...)``, store each record as it finishes, and
    return the records in the order of ``jobs``.

    With ``workers == 1`` (or one job to run) the runs go one after another in this process, each with a
    progress bar (``bar``: a :class:`~experiments.progress.RunBar`). Otherwise they run in ``workers`` fresh
    (spawned) processes with ``bar=None``, and the log says when each one finishes. ``fn`` must be a module-level
    function, its arguments picklable, and it must seed everything it draws from, so that its record does not
    depend on where or when it runs. When a run raises (or the study is interrupted), no further run starts,
    every finished run is in the cache, and the error is raised without waiting for the runs under way; the
    worker processes are stopped. While they run, a ``SIGTERM`` to the study (``kill`` on POSIX) counts as an
    interruption, as Ctrl-C does (:class:`StudyTerminated`).

    Raises:
        ValueError: ``workers`` is not a positive int.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}.")
    records: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for i, job in enumerate(jobs):
        hit = cache.get(*job.key)
        if hit is not None:
            log.run(job.label, cached=True)
            records[i] = hit
        else:
            todo.append(i)
    if workers == 1 or len(todo) <= 1:
        for i in todo:
            job = jobs[i]
            log.run(f"training {job.label}")
            with log.bar(job.label, max(1, job.total)) as bar:
                records[i] = fn(*job.args, bar=bar)
            cache.put(*job.key, records[i])
    else:
        log.note(f"training {len(todo)} runs in {min(workers, len(todo))} worker processes")
        with _terminate_raises():
            pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn")
            )
            started = time.perf_counter()
            costliest_first = sorted(todo, key=lambda i: -jobs[i].cost)  # stable: ties keep the study's order
            futures = {pool.submit(fn, *jobs[i].args, bar=None): i for i in costliest_first}
            try:
                for fut in concurrent.futures.as_completed(futures):
                    i = futures[fut]
                    record = fut.result()
                    cache.put(*jobs[i].key, record)  # cached before it counts as kept
                    records[i] = record
                    log.run(f"finished {jobs[i].label} at {time.perf_counter() - started:.0f} s")
            except BaseException:
                # a run failed or the user interrupted: start nothing more, stop the runs under way (Python
                # 3.11's executor has no public call for it), keep what finished, report at once
                processes = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                for process in processes:
                    with contextlib.suppress(Exception):
                        process.terminate()
                for fut, i in futures.items():
                    if i not in records and fut.done() and not fut.cancelled() and fut.exception() is None:
                        cache.put(*jobs[i].key, fut.result())
                raise
            pool.shutdown()
    return [records[i] for i in range(len(jobs))]


class StudyTerminated(KeyboardInterrupt):
    """A study's process got ``SIGTERM`` while its worker processes ran (handled as Ctrl-C is)."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """While inside, the first ``SIGTERM`` raises :class:`StudyTerminated` in this (main) thread, as Ctrl-C raises
    ``KeyboardInterrupt``, so that a study stopped with ``kill`` stops its worker processes instead of leaving
    them running; later ones are ignored until the block is left, so they cannot cut that cleanup short.
    Outside the main thread, or where ``SIGTERM`` is ignored or handled outside Python, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None or previous is signal.SIG_IGN:
        yield
        return

    def stop(signum: int, frame: object) -> NoReturn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup runs to its end
        raise StudyTerminated

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ==========================================================================================================
# Tables
# ==========================================================================================================
def summarize(
    records: Iterable[Mapping[str, Any]], metrics: Sequence[str], *, by: str = "agent"
) -> dict[str, dict[str, list[float]]]:
    """Group run records by ``record[by]`` and return ``{group: {metric: [mean, std, n, n_nan]}}`` over seeds.

    ``n`` is the number of seeds behind the mean and the standard deviation (the sample one, ``ddof=1``; 0
    for a single seed), ``n_nan`` the number of seeds whose value is NaN (a diverged or failed run): they are
    left out of the mean but kept visible, and a metric that is NaN for every seed has mean and std NaN
    (``n = 0``) instead of disappearing. A record without the metric (or with ``None``) is not counted.

    Example:
        >>> summarize([{"agent": "bc", "v": 0.5}, {"agent": "bc", "v": float("nan")}], ["v"])
        {'bc': {'v': [0.5, 0.0, 1.0, 1.0]}}
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r[by]), []).append(r)
    out: dict[str, dict[str, list[float]]] = {}
    for group, rs in groups.items():
        out[group] = {}
        for m in metrics:
            vals = np.array([float(r[m]) for r in rs if m in r and r[m] is not None], dtype=float)
            if len(vals) == 0:
                continue
            nan = np.isnan(vals)
            vals = vals[~nan]
            if len(vals) == 0:
                out[group][m] = [math.nan, math.nan, 0.0, float(nan.sum())]
                continue
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            out[group][m] = [float(vals.mean()), std, float(len(vals)), float(nan.sum())]
    return out


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (``ddof=1``, as in :func:`summarize`) over the first axis (seeds),
    NaN skipped; the deviation is 0 where fewer than two values are left.

    Example:
        >>> mean_std(np.array([[0.5, 1.0], [0.7, np.nan]]))
        (array([0.6, 1. ]), array([0.14142136, 0.        ]))
    """
    values = np.asarray(values, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns, or one value left
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
    return mean, np.nan_to_num(std)


def _fmt(mean: float, std: float, n: float, n_nan: float = 0.0, seeds: float | None = None) -> str:
    """One table cell: ``mean ± std``; ``(n=k, j NaN)`` when fewer than the row's ``seeds`` are behind it."""
    if math.isnan(mean):
        text = "NaN"
    elif math.isinf(mean):
        text = "-inf" if mean < 0 else "inf"
    else:
        digits = 3 if abs(mean) < 100 else 1
        text = (
            f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"
        )  # one run: no spread
    if seeds is not None and n < seeds:
        text += f" (n={int(n)}" + (f", {int(n_nan)} NaN)" if n_nan else ")")
    return text


def _cell(values: Sequence[float], seeds: int) -> str:
    """``_fmt`` of a ``[mean, std, n]`` or ``[mean, std, n, n_nan]`` summary entry."""
    n_nan = values[3] if len(values) > 3 else 0.0
    return _fmt(values[0], values[1], values[2], n_nan, seeds=seeds)


def format_table(
    summary: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str], *, row_label: str = "agent"
) -> str:
    """A Markdown table: one row per group (``row_label`` heads the first column), one column per metric,
    cells ``mean ± std`` (just the value where a metric comes from a single run), and a last column with the
    number of seeds of the row. A cell with fewer seeds behind it says how many, and how many were NaN.

    Example:
        >>> summary = {"mle": {"validity": [0.5, 0.1, 3, 0]}, "bc": {"validity": [0.7, 0.0, 1, 2]}}
        >>> print(format_table(summary, ["validity"]))
        | agent | validity | seeds |
        |---|---|---|
        | mle | 0.500 ± 0.100 | 3 |
        | bc | 0.700 (n=1, 2 NaN) | 3 |
    """
    lines = [f"| {row_label} | " + " | ".join(metrics) + " | seeds |", "|---|" + "---|" * (len(metrics) + 1)]
    for group, row in summary.items():
        counts = [int(v[2]) + (int(v[3]) if len(v) > 3 else 0) for v in row.values() if len(v) > 2]
        seeds = max(counts, default=0)
        cells = [_cell(row[m], seeds) if m in row else "n/a" for m in metrics]
        lines.append(f"| {group} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines)


# ==========================================================================================================
# Running
# ==========================================================================================================
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous count.

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an int >= 1, got {n!r}.")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(
    config_cls: type[ConfigT],
    main: Callable[[ConfigT], object],
    *,
    prog: str,
    args: Sequence[str] | None = None,
) -> None:
    """Parse ``args`` (default ``sys.argv[1:]``) into ``config_cls`` with tyro (``--help`` explains every
    field) and run ``main`` on it. A :class:`StudyError` (a bad option, an unreadable cache file) prints one
    line ``<prog>: error: ...`` and exits with status 2; Ctrl-C exits with status 130 (``SIGTERM`` while worker
    processes run: 143), saying that finished runs are kept. Any other exception is a bug and keeps its traceback."""
    import tyro

    cfg = tyro.cli(config_cls, args=args, prog=prog)
    try:
        main(cfg)
    except StudyError as e:
        message = " ".join(str(e).split())
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        print(f"{prog}: interrupted; finished runs are kept and a rerun resumes from them.", file=sys.stderr)
        raise SystemExit(128 + int(getattr(e, "signum", signal.SIGINT))) from None
