"""Set-up shared by the benchmark scripts: machine description, peak memory, interleaved timing and the
command line (results are written with ``experiments.common.write_json_atomic``). What is measured lives in
each script."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = [
    "cli",
    "generation_processors",
    "hf_generate",
    "interleaved_times",
    "load_average",
    "machine_info",
    "peak_memory_mb",
]

ConfigT = TypeVar("ConfigT")


def generation_processors(
    policy: Any, prompts: Sequence[Sequence[int]], new_tokens: int, p_backspace: float, *, seed: int = 0
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """The two ``logits_processor`` of the generation benchmarks: ``(with_backspace, no_eos)``.

    Both mask eos, so every row writes the requested number of final tokens. ``with_backspace`` also adds one
    constant to the ``<backspace>`` logit, calibrated on ``policy`` so that backspace has a mean probability of
    ``p_backspace`` over the states of its own generations (up to 512 states of ``new_tokens``-token
    continuations of ``prompts``, solved by bisection); the benchmarks report the fraction they got. A constant
    costs one tensor operation a call, like ``no_eos``: the processors stand in for a model that backspaces by
    itself, so their own cost should weigh as little as possible on what is timed. Each treats its ``(R, A)``
    rows on their own.

    Args:
        policy: the :class:`agents.policy.LMPolicy` being timed.
        prompts: the benchmark's prompts (ordinary ids), non-empty.
        new_tokens: final tokens per row of the benchmark.
        p_backspace: the wanted probability of ``<backspace>``, in (0, 1).
        seed: seed of the calibration's generation.
    """
    import numpy as np
    import torch

    eos_id, backspace_id = policy.vocab.eos_id, policy.vocab.backspace_id

    def no_eos(logits: torch.Tensor) -> torch.Tensor:
        logits[:, eos_id] = float("-inf")
        return logits

    lengths = [len(p) for p in prompts]
    g = torch.Generator(device=policy.device).manual_seed(seed)
    with torch.no_grad():
        out = policy.generate(
            prompts,
            max_steps=new_tokens,
            max_length=max(lengths) + new_tokens,
            generator=g,
            allow_backspace=False,
            logits_processor=no_eos,
        )
        states = [s[:k] for s, n in zip(out.sequences, lengths) for k in range(n + 1, len(s))]
        states = states or [list(s) for s in out.sequences]  # one new token a row: the states it reaches
        pick = np.random.default_rng(seed).permutation(len(states))[:512]
        logits = policy.state_logits([states[i] for i in pick], [0] * len(pick)).double()  # (S, A)
    others = logits.clone()
    others[:, [eos_id, backspace_id]] = float("-inf")
    gap = others.logsumexp(-1) - logits[:, backspace_id]  # (S,) P(bk) = sigmoid(bias - gap)
    lo, hi = float(gap.min()) - 20.0, float(gap.max()) + 20.0
    for _ in range(100):
        bias = (lo + hi) / 2
        lo, hi = (bias, hi) if float(torch.sigmoid(bias - gap).mean()) < p_backspace else (lo, bias)

    def with_backspace(logits: torch.Tensor) -> torch.Tensor:
        logits[:, eos_id] = float("-inf")
        logits[:, backspace_id] += bias
        return logits

    return with_backspace, no_eos


def hf_generate(policy: Any, input_ids: torch.Tensor, new_tokens: int, seed: int, **extra: Any) -> Any:
    """Hugging Face ``generate`` of ``policy.model`` (``policy`` an :class:`agents.policy.LMPolicy`) sampling
    exactly ``new_tokens`` tokens after every row of ``input_ids`` (``(B, 1+P)``: the BOS slot, then the prompt),
    the baseline of the generation benchmarks; ``extra`` goes to ``generate`` (e.g. a static cache and
    ``compile_config``). Returns ``(B, 1+P+new_tokens)``."""
    import torch

    v = policy.vocab
    torch.manual_seed(seed)
    with torch.inference_mode():
        return policy.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=v.pad_id,
            eos_token_id=v.eos_id,
            **extra,
        )


def load_average() -> float | None:
    """The 1-minute load average of the machine, or None where the OS does not report one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(**extra: Any) -> dict[str, Any]:
    """Where a benchmark ran, for its JSON results: platform, Python version, processor, CPU count, torch
    version (None without torch) and the 1-minute load average at the time of the call (the machine may be
    shared), followed by the ``extra`` fields (which override those of the same name)."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": _version("torch"),
        "load_average_1min": load_average(),
        **extra,
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str | None = None) -> float | None:
    """Peak memory (MiB) that one call of ``fn`` adds.

    On a CUDA ``device``: the allocator's peak during the call over what was allocated before it. Otherwise:
    the peak resident-set growth of the call, run in a forked child process so that the caller's state and
    peak are untouched (torch's CPU allocations are invisible to ``tracemalloc``). None where there is no
    ``fork`` or ``/proc``, or when ``fn`` raises in the child.
    """
    if device is not None:
        import torch

        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            torch.cuda.synchronize(device)
            return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/statm"):
        return None
    import resource

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its maxrss starts at its current RSS
        os.close(r)
        try:
            start = _rss_bytes()
            fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            os.write(w, str(max(peak - start, 0)).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return int(data) / 2**20 if data else None


def interleaved_times(fns: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of ``repeats`` calls of each function, after one warm-up call each, interleaved
    round-robin so that load from other processes on a shared machine hits every function alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def cli(config_cls: type[ConfigT], args: Sequence[str] | None = None) -> ConfigT:
    """The config dataclass ``config_cls`` from the command line (``args``, default ``sys.argv[1:]``), one
    flag per field with ``tyro`` (``--help`` lists them). Without ``tyro`` installed: the defaults, and an
    error if flags were given rather than ignoring them."""
    try:
        import tyro
    except ImportError:
        given = list(sys.argv[1:] if args is None else args)
        if given:
            raise SystemExit(f"command-line flags need tyro (pip install tyro); got {given}") from None
        return config_cls()
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set when run as ``python -m module``
    prog = None if spec is None else f"python -m {spec.name}"
    return tyro.cli(config_cls, args=args, prog=prog)
