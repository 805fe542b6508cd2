"""Shared test set-up: deterministic, single-threaded torch (when installed) so CPU timings are stable."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch
except ImportError:  # seqgym alone must be testable without torch
    torch = None  # type: ignore[assignment]

if torch is not None:
    torch.set_num_threads(1)
