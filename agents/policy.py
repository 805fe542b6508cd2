"""The language-model policy: any Hugging Face causal LM plus a ``<backspace>`` action.

The LM's logits over the environment's actions are the policy's Q-values (``docs/method.md`` §2). Three
ways to run the model, all agreeing with :func:`seqgym.dynamics.states` (the one definition of what an action
history means):

- :meth:`LMPolicy.state_logits`: plain forward on visible sequences (the reference).
- :meth:`LMPolicy.trajectory_logits`: ONE masked forward for whole action histories with backspaces
  (``docs/method.md`` §5); equal to :meth:`~LMPolicy.state_logits` on every visited state.
- :meth:`LMPolicy.generate`: batched sampling with backspace on a KV cache; a backspace never recomputes
  the prefix.

Env ids and model ids are mapped in one place, :class:`TokenMap`. The model input always starts with a BOS
slot holding the model id of eos (GPT-2 style), so an empty prompt works.

Example:
    >>> from seqgym.vocab import Vocabulary
    >>> vocab = Vocabulary(["a", "b"])                 # a=0, b=1, eos=2, backspace=3
    >>> policy = LMPolicy.from_config(vocab, n_layer=1, n_embd=16, n_head=2, n_positions=32, seed=0)
    >>> out = policy.trajectory_logits([[0]], [[1, 3, 0, 2]])
    >>> tuple(out.logits.shape)                        # (B, T+1, A)
    (1, 5, 4)
    >>> ref = policy.state_logits([[0], [0, 1], [0], [0, 0], [0, 0, 2]], [1, 1, 1, 1, 1])
    >>> bool(torch.allclose(out.logits[0], ref, atol=1e-5))
    True
    >>> g = policy.generate([[0], []], max_steps=6, max_length=5, generator=torch.Generator().manual_seed(0))
    >>> len(g.sequences), len(g.actions[0]) <= 6
    (2, True)
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from seqgym._options import check_option
from seqgym.dynamics import pad_histories
from seqgym.vocab import Vocabulary

#: A batch of id sequences: a sequence of sequences, or a 2-D integer array / tensor.
IdRows = Sequence[Sequence[int]] | np.ndarray | torch.Tensor

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCHITECTURE",
    "POLICY_CONFIG_NAME",
    "Architecture",
    "Generation",
    "IdRows",
    "LMPolicy",
    "TokenMap",
    "TrajectoryLogits",
    "sample_actions",
]

#: Largest per-call store of state logits (``B * (max_length+1) * A`` floats) that lets a backspace in
#: :meth:`LMPolicy.generate` reuse the logits of the state it returns to; above it, a backspace re-feeds the
#: new last token instead (one cache slot, no prefix recompute).
_LOGIT_STACK_BYTES = 256 * 2**20

#: Dynamo's recompile limit (per code object) while :meth:`LMPolicy.generate` runs compiled: room for the kinds
#: of graph generation needs (:meth:`LMPolicy.compiled_model`) in eval and train mode, with some to spare.
COMPILED_GRAPHS = 32

#: The model families :meth:`LMPolicy.from_config` builds.
Architecture = Literal["llama", "gpt2"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
#: The family :meth:`LMPolicy.from_config` builds when none is named.
DEFAULT_ARCHITECTURE: Architecture = "llama"
#: Each family's own size fields, which :meth:`LMPolicy.from_config` sets from its arguments (field -> argument).
_SIZE_FIELDS: dict[str, dict[str, str]] = {
    "llama": {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
    },
    "gpt2": {"n_ctx": "n_positions"},
}

#: File written next to the model by :meth:`LMPolicy.save_pretrained` (vocabulary and token map).
POLICY_CONFIG_NAME = "seqgym_policy.json"
#: Folder (inside a saved LoRA policy) holding the frozen base model when it has no name or path to load from.
_LORA_BASE_DIR = "base"
_FORMAT = "seqgym-lm-policy"
_FORMAT_VERSION = 1


def upcast_logits(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in float32 when they are float16 or bfloat16 (a forward under bf16 autocast), else as they
    are: losses, soft values and sampling then work at full precision (Hugging Face's losses upcast the same
    way)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


# ======================================================================================================
# Token map
# ======================================================================================================
class TokenMap:
    """The one mapping between env ids (``0 .. n_actions-1`` and pad) and model token ids.

    For a model built from a config the map is the identity (the model's vocabulary is the env vocabulary,
    pad included). For a pretrained model it follows the tokenizer. The BOS slot that starts every model input
    holds :attr:`bos`, the model id of eos (GPT-2 style).

    Args:
        env_to_model: model id of every env id, in env id order; length ``len(vocab)`` (tokens, eos,
            backspace, pad).
        model_vocab_size: number of rows of the model's embedding matrix.

    Raises:
        ValueError: a model id out of range, or two actions mapped to the same model id.
    """

    def __init__(self, env_to_model: Sequence[int], *, model_vocab_size: int) -> None:
        ids = [int(i) for i in env_to_model]
        if len(ids) < 4:
            raise ValueError(
                f"env_to_model must map at least 4 env ids (a token, eos, backspace, pad); got {ids}."
            )
        for k, i in enumerate(ids):
            if not 0 <= i < model_vocab_size:
                raise ValueError(
                    f"env id {k} maps to model id {i}, outside the model vocabulary 0..{model_vocab_size - 1}."
                )
        actions = ids[:-1]
        if len(set(actions)) != len(actions):
            seen: dict[int, int] = {}
            for k, m in enumerate(actions):
                if m in seen:
                    raise ValueError(
                        f"Env actions {seen[m]} and {k} both map to model id {m}; the map must be one-to-one."
                    )
                seen[m] = k
        self.env_to_model: list[int] = ids
        self.model_vocab_size: int = int(model_vocab_size)
        self.n_actions: int = len(ids) - 1
        self.bos: int = ids[self.n_actions - 2]  # model id of eos (env layout: ..., eos, backspace, pad)
        self.is_identity: bool = ids == list(range(len(ids)))
        self._table = torch.tensor(ids, dtype=torch.long)  # (len(vocab),)
        self._actions = self._table[: self.n_actions]  # (A,)
        self._by_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def identity(cls, vocab: Vocabulary, *, model_vocab_size: int | None = None) -> TokenMap:
        """Env id ``i`` is model id ``i``; ``model_vocab_size`` defaults to ``len(vocab)``."""
        size = len(vocab) if model_vocab_size is None else model_vocab_size
        return cls(list(range(len(vocab))), model_vocab_size=size)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._by_device:
            self._by_device[device] = (self._table.to(device), self._actions.to(device))
        return self._by_device[device]

    def to_model(self, env_ids: torch.Tensor) -> torch.Tensor:
        """Model ids of env ids (any shape, pad allowed); same shape and device."""
        if self.is_identity:
            return env_ids
        return self._tables(env_ids.device)[0][env_ids]

    def action_logits(self, model_logits: torch.Tensor) -> torch.Tensor:
        """Restrict model logits ``(..., V)`` to the env actions: ``(..., A)`` in env id order, float32 where the
        model's are bfloat16 or float16 (:func:`upcast_logits`)."""
        if self.is_identity:
            return upcast_logits(model_logits[..., : self.n_actions])
        return upcast_logits(model_logits.index_select(-1, self._tables(model_logits.device)[1]))

    def to_env(self, model_ids: Sequence[int]) -> list[int]:
        """Env action ids of model ids; raises ``KeyError`` for a model id that is no env action."""
        inverse = {m: k for k, m in enumerate(self.env_to_model[:-1])}
        out = []
        for m in model_ids:
            if int(m) not in inverse:
                raise KeyError(f"Model id {int(m)} is not mapped to any env action.")
            out.append(inverse[int(m)])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, inverse of :meth:`from_dict`."""
        return {"env_to_model": self.env_to_model, "model_vocab_size": self.model_vocab_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenMap:
        try:
            return cls(d["env_to_model"], model_vocab_size=int(d["model_vocab_size"]))
        except KeyError as e:
            raise ValueError(
                f"Token map dict lacks the key {e}; it needs env_to_model and model_vocab_size."
            ) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenMap) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((tuple(self.env_to_model), self.model_vocab_size))

    def __repr__(self) -> str:
        kind = "identity" if self.is_identity else "general"
        size = self.model_vocab_size
        return f"TokenMap({kind}, n_actions={self.n_actions}, bos={self.bos}, model_vocab_size={size})"


# ======================================================================================================
# Results
# ======================================================================================================
@dataclass(frozen=True)
class TrajectoryLogits:
    """Logits of every state visited by a batch of action histories (one masked forward).

    Attributes:
        logits: ``(B, T+1, A)`` float; row ``b``, index ``i`` = logits over env actions at state
            ``u_i`` (``u_0`` = prompt), ``i = 0 .. T_b``; the backspace logit is ``-inf`` where ``u_i`` is at
            the prompt boundary; entries with ``i > T_b`` are 0. ``T = max_b T_b``, ``A = vocab.n_actions``.
        state_mask: ``(B, T+1)`` bool, True for ``i <= T_b``.
        actions: ``(B, T)`` long, the actions, padded with 0.
        action_mask: ``(B, T)`` bool, True for ``i < T_b``.
    """

    logits: torch.Tensor
    state_mask: torch.Tensor
    actions: torch.Tensor
    action_mask: torch.Tensor


@dataclass(frozen=True)
class Generation:
    """Result of :meth:`LMPolicy.generate` (one entry per prompt).

    Attributes:
        sequences: final visible sequences, prompt included (eos included when taken).
        actions: the full action histories, backspaces included.
        terminated: True where the row ended with eos.
        truncated: True where the row hit ``max_length`` (after a non-eos token) or ``max_steps`` without eos.
        logits: with ``output_logits=True``, per row a ``(T_b, A)`` tensor: the model's logits at each step's
            state (before ``logits_processor``; backspace ``-inf`` where masked), as :meth:`trajectory_logits`
            gives them.
    """

    sequences: list[list[int]]
    actions: list[list[int]]
    terminated: list[bool]
    truncated: list[bool]
    logits: list[torch.Tensor] | None = field(default=None, compare=False, repr=False)


# ======================================================================================================
# Sampling
# ======================================================================================================
def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> float:
    """Check the sampling arguments (numpy scalars accepted where a Python number is); returns the
    temperature as a float."""
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(
        temperature, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"temperature must be a number > 0, got {type(temperature).__name__}: {temperature!r}; use "
            "deterministic=True for argmax."
        )
    if not (math.isfinite(float(temperature)) and float(temperature) > 0):
        raise ValueError(
            f"temperature must be a finite number > 0, got {temperature!r}; use deterministic=True for argmax."
        )
    if top_k is not None and (
        isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)) or top_k < 1
    ):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}.")
    if top_p is not None and (
        isinstance(top_p, (bool, np.bool_))
        or not isinstance(top_p, (int, float, np.integer, np.floating))
        or not 0 < float(top_p) <= 1
    ):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}.")
    return float(temperature)


def check_logits_rows(logits: torch.Tensor) -> None:
    """Refuse logits that cannot be sampled from: a NaN or ``+inf`` entry, or a row whose actions are all
    ``-inf`` (nothing allowed).

    Raises:
        ValueError: naming the first offending row and the cause.
    """
    bad = torch.isnan(logits) | torch.isposinf(logits)  # (B, A)
    if bool(bad.any()):
        row = int(bad.any(dim=-1).nonzero()[0, 0])
        kind = "NaN" if bool(torch.isnan(logits[row]).any()) else "+inf"
        raise ValueError(
            f"Row {row} of the logits holds {kind} (a non-finite model output); no action can be sampled from it."
        )
    empty = (logits == float("-inf")).all(dim=-1)  # (B,)
    if bool(empty.any()):
        row = int(empty.nonzero()[0, 0])
        raise ValueError(f"Row {row} of the logits has no allowed action (all -inf).")


def sample_actions(
    logits: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    deterministic: bool = False,
) -> torch.Tensor:
    """Sample one action per row: the one sampling function of generation and of ``Agent.predict``.

    Inverse-CDF sampling with one uniform number per row drawn from ``generator`` (on the generator's device),
    so a batch of one consumes the generator exactly as one env step does.

    Args:
        logits: ``(B, A)`` logits over env actions; masked actions hold ``-inf``.
        generator: source of randomness (``None``: torch's global generator, not reproducible).
        temperature: logits are divided by it (finite, > 0; a numpy scalar is fine).
        top_k: keep only the ``top_k`` largest logits (>= 1).
        top_p: keep the smallest set of most likely actions whose probability reaches ``top_p`` (in (0, 1]).
        deterministic: argmax (no randomness consumed).

    Returns:
        ``(B,)`` long tensor of actions, on ``logits.device``.

    Raises:
        ValueError: bad sampling arguments (a temperature that is not finite and > 0...), ``logits`` not 2-D,
            a NaN or ``+inf`` logit, or a row with no allowed action (all ``-inf``).
        TypeError: a temperature that is not a number (numpy scalars are numbers).
    """
    temp = _check_sampling(temperature, top_k, top_p)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor of shape (B, A), got {shape}.")
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    check_logits_rows(logits)
    return _draw(logits, generator, temp, top_k, top_p, deterministic)


def _processed(processor: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """``processor(logits)``, checked to be a tensor of the same shape (a ``logits_processor`` of ``generate``)."""
    out = processor(logits)
    if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"logits_processor must return a tensor of the shape it was given, {tuple(logits.shape)} (rows "
            f"choosing an action, actions); got {got}."
        )
    return out


def _draw(
    logits: torch.Tensor,
    generator: torch.Generator | None,
    temp: float,
    top_k: int | None,
    top_p: float | None,
    deterministic: bool = False,
    rows: tuple[torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """:func:`sample_actions` on checked arguments and rows (no host synchronisation): ``(R, A)`` -> ``(R,)``.

    ``rows = (ix, B)``: the ``R`` rows are rows ``ix`` of a batch of ``B``; the uniform draws are made for all
    ``B`` rows and row ``ix[r]``'s is used, so the generator advances as for a draw over the whole batch and each
    row gets the action it would get there.
    """
    x = logits.detach().double()  # (B, A)
    if temp != 1.0 or top_k is not None or top_p is not None:
        # (at temperature 1 without top-k / top-p the softmax below subtracts the row max itself: same values)
        x = (x - x.max(dim=-1, keepdim=True).values) / temp  # row max 0: no overflow at a small temperature
    if deterministic:
        return x.argmax(dim=-1)
    if top_k is not None and top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_x, order = x.sort(dim=-1, descending=True)  # (B, A)
        p = sorted_x.softmax(dim=-1)
        drop = (p.cumsum(dim=-1) - p) >= top_p  # mass before this action already reaches top_p
        drop[:, 0] = False
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    cdf = x.softmax(dim=-1).cumsum(dim=-1)  # (B, A)
    cdf = cdf / cdf[:, -1:]  # last entry exactly 1
    device = generator.device if generator is not None else logits.device
    n = x.shape[0] if rows is None else rows[1]
    u = torch.rand(n, 1, generator=generator, device=device, dtype=torch.float64)  # (B, 1)
    u = u.to(x.device) if rows is None else u.to(x.device)[rows[0]]  # (R, 1)
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=x.shape[-1] - 1).to(logits.device)


# ======================================================================================================
# Backspace rules on tensors: torch twins of seqgym.dynamics' primitives (tested equal to them), so the masked
# forward and generation run on the policy's device without a round trip through numpy.
# ======================================================================================================
def backspace_allowed_torch(lengths: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """:func:`seqgym.dynamics.backspace_allowed` on tensors: ``lengths > prompt_lengths``."""
    return lengths > prompt_lengths


def step_masks_torch(
    lengths: torch.Tensor, prompt_lengths: torch.Tensor, actions: torch.Tensor, backspace_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`seqgym.dynamics.step_masks` on tensors: ``(appends, deletes)``, bool, shape of ``actions``."""
    is_bk = actions == backspace_id
    return ~is_bk, is_bk & backspace_allowed_torch(lengths, prompt_lengths)


def slot_layout_torch(
    prompts: torch.Tensor,
    prompt_lengths: torch.Tensor,
    actions: torch.Tensor,
    n_steps: torch.Tensor,
    vocab: Vocabulary,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`seqgym.dynamics.slot_layout` on tensors: ``(tokens, positions, attend)``.

    Args:
        prompts: ``(B, P_max)`` long, row ``b``'s prompt in its first ``prompt_lengths[b]`` columns.
        prompt_lengths: ``(B,)`` long.
        actions: ``(B, T_max)`` long, row ``b``'s actions in its first ``n_steps[b]`` columns.
        n_steps: ``(B,)`` long.
        vocab: the vocabulary.

    Returns:
        ``tokens (B, S)`` long env ids, ``positions (B, S)`` long, ``attend (B, S, S)`` bool ``[query, key]``.
    """
    dev = actions.device
    B, Tm = actions.shape
    Pm = prompts.shape[1]
    P = prompt_lengths[:, None]  # (B, 1)
    n = 1 + prompt_lengths + n_steps  # (B,) slots per row
    S = int(n.max())
    ar = torch.arange(S, device=dev)  # (S,)
    rel = ar[None, :] - (S - n)[:, None]  # (B, S) index within the row; < 0 is left padding
    valid = rel >= 0  # (B, S) real slots
    is_act = rel >= 1 + P  # (B, S) action slots
    tok = torch.full((B, S), vocab.pad_id, dtype=torch.long, device=dev)
    tok = torch.where(rel == 0, vocab.eos_id, tok)
    if Pm:
        j = (rel - 1).clamp(0, Pm - 1)  # (B, S) prompt index
        tok = torch.where((rel >= 1) & ~is_act, prompts.gather(1, j), tok)
    if Tm:
        t = (rel - 1 - P).clamp(0, Tm - 1)  # (B, S) action index
        tok = torch.where(is_act, actions.gather(1, t), tok)
    is_bk = is_act & (tok == vocab.backspace_id)  # (B, S)
    # visible length after each action slot: cumulative +1/-1 reflected at the prompt boundary (Skorokhod)
    step = is_act.long() - 2 * is_bk.long()  # (B, S)
    cum = step.cumsum(dim=1)  # (B, S)
    vis = P + cum - cum.cummin(dim=1).values  # (B, S)
    pos = torch.where(is_act, vis, rel.clamp(min=0))  # (B, S) position ids
    earlier = ar[None, :, None] > ar[None, None, :]  # (1, S, S) [s, k]: k < s
    same_pos = pos[:, :, None] == pos[:, None, :]  # (B, S, S)
    # a backspace slot copies the token of the latest earlier non-backspace slot at its position
    origin = valid & ~is_bk  # (B, S)
    ar1 = torch.arange(1, S + 1, dtype=torch.int32, device=dev)  # (S,) slot index + 1
    src = torch.where(same_pos & earlier & origin[:, None, :], ar1, 0).amax(dim=-1).long() - 1  # (B, S)
    inp = torch.where(is_bk, tok.gather(1, src.clamp(min=0)), tok)  # (B, S) env ids
    # slot k (an action) removes every earlier slot j with pos_j >= pos_k
    kills = is_act[:, :, None] & earlier & (pos[:, :, None] <= pos[:, None, :])  # (B, S_k, S_j)
    death = torch.where(kills.any(dim=1), kills.to(torch.uint8).argmax(dim=1), S)  # (B, S_j)
    eye = torch.eye(S, dtype=torch.bool, device=dev)  # (S, S)
    alive = ar[None, :, None] < death[:, None, :]  # (B, S_q, S_j): j not yet removed at query s
    attend = ((earlier | eye) & alive & valid[:, None, :]) | eye  # (B, S, S)
    return inp, pos, attend


# ======================================================================================================
# KV cache for generation with backspace
# ======================================================================================================
class _SlotLayer(CacheLayerMixin):
    """One layer of :class:`_SlotCache`: preallocated keys/values, one row-specific slot written per step."""

    def __init__(self, owner: _SlotCache) -> None:
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, dk = key_states.shape
        n = self.owner.max_slots
        self.keys = key_states.new_zeros(b, h, n, dk)  # (B, H, L, Dk)
        self.values = value_states.new_zeros(b, h, n, value_states.shape[-1])  # (B, H, L, Dv)
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None and self.values is not None
        w = self.owner.write_index
        if w is None:  # prefill: slots 0 .. q-1
            q = key_states.shape[-2]
            self.keys[:, :, :q] = key_states
            self.values[:, :, :q] = value_states
        else:  # one slot per row, at its own index
            rows = self.owner.rows
            self.keys[rows, :, w] = key_states[:, :, 0]  # (B, H, Dk)
            self.values[rows, :, w] = value_states[:, :, 0]  # (B, H, Dv)
        n = self.owner.kv_len
        return self.keys[:, :, :n], self.values[:, :, :n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.kv_len, 0

    def get_seq_length(self) -> int:
        return self.owner.kv_len

    def get_max_length(self) -> int:
        return self.owner.max_slots


class _SlotCache(Cache):
    """KV cache where row ``b`` keeps position ``p`` of its visible sequence at slot ``offset_b + p``.

    A token writes the slot of its position; slots past a row's visible length are masked out by the caller
    (and overwritten by its next token), so a backspace never recomputes the prefix and the cache never
    outgrows ``max_slots``. Re-feeding the new last token after a backspace rewrites its own slot with the
    same keys/values (same token, same position, same prefix). Finished rows are dropped (:meth:`keep_rows`).
    """

    def __init__(self, n_layers: int, *, max_slots: int, batch_size: int, device: torch.device) -> None:
        self.max_slots = max_slots
        self.write_index: torch.Tensor | None = None  # (B,) slot written by the next 1-token step
        self.kv_len = 0  # number of slots attention reads
        self.rows = torch.arange(batch_size, device=device)  # (B,)
        self.slot_layers = [_SlotLayer(self) for _ in range(n_layers)]
        super().__init__(layers=list(self.slot_layers))

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows ``index`` (``(B',)`` long), in that order."""
        for layer in self.slot_layers:
            if layer.keys is not None and layer.values is not None:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
        self.rows = torch.arange(len(index), device=index.device)


# ======================================================================================================
# The policy
# ======================================================================================================
def _check_sizes(architecture: object, **sizes: object) -> None:
    """``architecture`` is one of :data:`ARCHITECTURES` and every size an int >= 1 (``ValueError``)."""
    check_option("architecture", architecture, ARCHITECTURES)
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


def _as_ids(x: Sequence[int] | np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """A 1-D int64 array of ids, or ``TypeError`` naming ``what``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a sequence of ints, got {type(x).__name__}.") from None
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{what} must be a 1-D sequence of ints, got array of shape {arr.shape}, dtype {arr.dtype}."
        )
    return arr.astype(np.int64, copy=False)


def _rows_to_padded(rows: list[np.ndarray], starts: np.ndarray, width: int, fill: int) -> np.ndarray:
    """Place row ``b`` at columns ``starts[b] ..`` of a ``(B, width)`` array of ``fill`` (vectorised)."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.full((len(rows), width), fill, dtype=np.int64)
    if lengths.sum() == 0:
        return out
    flat = np.concatenate(rows)
    row_of = np.repeat(np.arange(len(rows)), lengths)
    within = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row_of, starts[row_of] + within] = flat
    return out


class LMPolicy(torch.nn.Module):
    """A causal LM over the env's actions (tokens, eos, backspace), with its vocabulary and token map.

    Build one with :meth:`from_config` (a small Llama-style or GPT-2 model for CPU), :meth:`from_pretrained`
    (hub name or local directory) or :meth:`load` (a directory written by :meth:`save_pretrained`).

    Args:
        model: a Hugging Face causal LM (``PreTrainedModel`` with an LM head) accepting 4-D float attention
            masks, explicit ``position_ids`` and a ``Cache``.
        vocab: the env vocabulary.
        token_map: env id <-> model id map; default the identity (model vocabulary = env vocabulary).
        tokenizer: the Hugging Face tokenizer the token map follows, if any (saved with the model).

    Attributes:
        model, vocab, token_map, tokenizer: as given.
        n_positions: the longest model input (BOS slot included) the model's position embeddings allow.
        compiled_generation: the default of :meth:`generate`'s ``compiled`` (``False``): set it to ``True`` to
            run every generation of this policy, the agents' own included, through ``torch.compile`` (a
            setting of this process: it is not saved with the policy).
    """

    def __init__(
        self,
        *,
        model: Any,
        vocab: Vocabulary,
        token_map: TokenMap | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be a seqgym Vocabulary, got {type(vocab).__name__}.")
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(
                f"model must be a Hugging Face causal LM (torch module with a config), got {type(model)}."
            )
        model_vocab = _embedding_rows(model)
        if token_map is None:
            if model_vocab < len(vocab):
                raise ValueError(
                    f"The model has {model_vocab} token ids but the vocabulary needs {len(vocab)}; pass a "
                    "token_map or build the policy with LMPolicy.from_pretrained(..., tokenizer=...)."
                )
            token_map = TokenMap.identity(vocab, model_vocab_size=model_vocab)
        if token_map.n_actions != vocab.n_actions:
            raise ValueError(
                f"token_map maps {token_map.n_actions} actions but the vocabulary has {vocab.n_actions}."
            )
        if max(token_map.env_to_model) >= model_vocab:
            raise ValueError(
                f"token_map uses model ids beyond the model's {model_vocab} embeddings; resize them."
            )
        self.model: Any = model
        self.vocab = vocab
        self.token_map = token_map
        self.tokenizer = tokenizer
        cfg = model.config
        n_pos = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        self.n_positions: int = int(n_pos) if n_pos else 1 << 30
        self.pretrained_name: str | None = None
        self._pretrained_rows: int | None = None  # embedding rows before tokens were added (from_pretrained)
        self.compiled_generation: bool = False
        self._read_forward_signature()

    def _read_forward_signature(self) -> None:
        """The keyword names of the (base) model's forward for the cache and for keeping the last logits."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        params = inspect.signature(base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def config_sizes(cls, **from_config_kwargs: Any) -> dict[str, int]:
        """The sizes a :meth:`from_config` call with these keyword arguments would build, its defaults filled
        in, for estimating memory before building: ``n_layer``, ``n_embd``, ``n_head``, and
        ``position_table``, the rows of a learned position embedding (``n_positions`` for ``"gpt2"``, 0 for
        the rotary positions of ``"llama"``). The architecture and the sizes are checked as
        :meth:`from_config` checks them (``ValueError``).

        Example:
            >>> LMPolicy.config_sizes(architecture="gpt2", n_positions=64)
            {'n_layer': 2, 'n_embd': 64, 'n_head': 2, 'position_table': 64}
        """
        defaults = {
            name: p.default
            for name, p in inspect.signature(cls.from_config).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        kw = {**defaults, **from_config_kwargs}
        _check_sizes(
            kw["architecture"],
            **{name: kw[name] for name in ("n_layer", "n_embd", "n_head", "n_positions")},
        )
        return {
            "n_layer": int(kw["n_layer"]),
            "n_embd": int(kw["n_embd"]),
            "n_head": int(kw["n_head"]),
            "position_table": int(kw["n_positions"]) if kw["architecture"] == "gpt2" else 0,
        }

    @classmethod
    def from_config(
        cls,
        vocab: Vocabulary,
        *,
        architecture: Architecture = DEFAULT_ARCHITECTURE,
        n_layer: int = 2,
        n_embd: int = 64,
        n_head: int = 2,
        n_positions: int = 128,
        seed: int = 0,
        **config_kwargs: Any,
    ) -> LMPolicy:
        """A freshly initialised small causal LM over the env vocabulary (pad included), identity token map.

        Two families (``architecture``):

        - ``"llama"`` (default): a Llama-style decoder (``transformers.LlamaConfig``): rotary position
          embeddings, RMSNorm, a gated MLP of width ``4 * n_embd``, tied input / output embeddings. Rotary
          positions are relative, so what the model learns about neighbouring tokens (e.g. "the last token
          cannot follow the one before it", which spotting a mistake in a Markov chain needs) holds at every
          position.
        - ``"gpt2"``: GPT-2 (``transformers.GPT2Config``), with learned absolute position embeddings: such a
          look-back is learnt position by position, and late positions are rare in the data.

        The default was chosen on the development tasks with the agents' default optimiser (README, "The model
        family"): at equal or better validity, the Llama-style model takes ``<backspace>`` after an injected
        impossible token far more often on the development Markov language and emits fewer tokens it later
        deletes. The studies keep GPT-2, with the learning rate and batch chosen for it.

        Dropout defaults to 0 (exact, reproducible losses); pass the config's dropout fields to change it. The
        initialisation depends only on ``seed`` (torch's global generator is left untouched). The model is
        returned in eval mode.

        Args:
            vocab: the env vocabulary.
            architecture: ``"llama"`` or ``"gpt2"`` (see above).
            n_layer, n_embd, n_head: transformer size (``n_embd`` divisible by ``n_head``; with ``"llama"``
                the head size ``n_embd / n_head`` must be even, for the rotary embedding).
            n_positions: longest model input, BOS slot included.
            seed: initialisation seed.
            **config_kwargs: further fields of the family's config (``LlamaConfig`` / ``GPT2Config``), and
                ``attn_implementation`` (e.g. ``"eager"``).

        Raises:
            ValueError: an unknown architecture, a bad size, ``vocab_size`` given, or ``num_key_value_heads``
                not dividing ``n_head``.
            TypeError: ``vocab`` is not a :class:`~seqgym.vocab.Vocabulary`, an unknown config field (a field
                of the other family is named as such), or a config field of a size set by an argument
                (``hidden_size``: use ``n_embd``).
        """
        from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be a seqgym Vocabulary, got {type(vocab).__name__}.")
        _check_sizes(architecture, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions)
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}).")
        if architecture == "llama" and (n_embd // n_head) % 2:
            raise ValueError(
                f"The rotary embedding needs an even head size; n_embd / n_head = {n_embd // n_head}."
            )
        if "vocab_size" in config_kwargs:
            raise ValueError("vocab_size is set from the vocabulary (len(vocab)); do not pass it.")
        kv_heads = config_kwargs.get("num_key_value_heads")
        if (
            architecture == "llama"
            and kv_heads is not None
            and (
                isinstance(kv_heads, bool)
                or not isinstance(kv_heads, int)
                or kv_heads < 1
                or n_head % kv_heads
            )
        ):
            raise ValueError(
                f"num_key_value_heads must be an int >= 1 dividing n_head ({n_head}), got {kv_heads!r}."
            )
        config_cls: Any = LlamaConfig if architecture == "llama" else GPT2Config
        other_cls: Any = GPT2Config if architecture == "llama" else LlamaConfig
        sizes = _SIZE_FIELDS[architecture]
        taken = sorted(k for k in config_kwargs if k in sizes)
        if taken:
            raise TypeError(
                f"Policy setting{'s' if len(taken) > 1 else ''} {', '.join(map(repr, taken))}: set the size with "
                f"{', '.join(sorted({sizes[k] for k in taken}))} instead."
            )

        def fields(config: Any) -> set[str]:
            return {*inspect.signature(config.__init__).parameters, *config().to_dict()}

        known = {"attn_implementation", *fields(config_cls)}
        unknown = sorted(k for k in config_kwargs if k not in known)
        if unknown:
            names = sorted(known | {"architecture", "n_layer", "n_embd", "n_head", "n_positions", "seed"})
            other = fields(other_cls)
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, names, n=1)
                if k in other:
                    note = f" (a {other_cls.__name__} field: pass architecture={other_cls.model_type!r})"
                else:
                    note = f" (did you mean {close[0]!r}?)" if close else ""
                hints.append(f"{k!r}{note}")
            raise TypeError(
                f"Unknown policy setting{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: LMPolicy.from_config "
                "takes architecture, n_layer, n_embd, n_head, n_positions, seed and "
                f"transformers.{config_cls.__name__} fields."
            )
        attn = config_kwargs.pop("attn_implementation", None)
        ids = {"bos_token_id": vocab.eos_id, "eos_token_id": vocab.eos_id, "pad_token_id": vocab.pad_id}
        kwargs: dict[str, Any]
        if architecture == "llama":
            kwargs = {
                "vocab_size": len(vocab),
                "hidden_size": n_embd,
                "intermediate_size": 4 * n_embd,
                "num_hidden_layers": n_layer,
                "num_attention_heads": n_head,
                "num_key_value_heads": n_head,
                "max_position_embeddings": n_positions,
                "tie_word_embeddings": True,
                "attention_dropout": 0.0,
                **ids,
                **config_kwargs,
            }
        else:
            kwargs = {
                "vocab_size": len(vocab),
                "n_positions": n_positions,
                "n_embd": n_embd,
                "n_layer": n_layer,
                "n_head": n_head,
                "resid_pdrop": 0.0,
                "embd_pdrop": 0.0,
                "attn_pdrop": 0.0,
                **ids,
                **config_kwargs,
            }
        config = config_cls(**kwargs)
        if attn is not None:
            config._attn_implementation = attn
        model_cls: Any = LlamaForCausalLM if architecture == "llama" else GPT2LMHeadModel
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_cls(config)
        model.eval()
        return cls(model=model, vocab=vocab, token_map=TokenMap.identity(vocab))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        vocab: Vocabulary | None = None,
        tokenizer: Any = None,
        lora: dict[str, Any] | Any | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> LMPolicy:
        """Wrap a pretrained causal LM (hub name or local directory).

        A directory written by :meth:`save_pretrained` is loaded as is (see :meth:`load`). Otherwise the model
        is loaded with ``AutoModelForCausalLM`` and the token map follows the tokenizer (``tokenizer`` or the
        one stored with the model):

        - ``vocab=None``: the env vocabulary is the tokenizer's (every token except its eos / pad, plus a
          ``<bksp>`` token), so any text the tokenizer encodes is an action sequence;
        - ``vocab`` given: its tokens are looked up in the tokenizer, and the ones it lacks are added.

        ``<backspace>`` (and eos, when the tokenizer has none) are added to the tokenizer when missing, and
        the model's embeddings are resized. Without any tokenizer, a ``vocab`` of exactly the model's
        vocabulary size gives the identity map. The tokenizer gets a pad token (its eos) when it has none.

        Args:
            name_or_path: hub name or local directory of a causal LM (or of a saved policy).
            vocab: the env vocabulary to follow (see above); ``None``: the tokenizer's.
            tokenizer: a Hugging Face tokenizer (default: the one stored with the model).
            lora: LoRA adapters through ``peft`` (``pip install "seqgym[scale]"``): a ``peft.LoraConfig`` or
                the keyword arguments of one (see :meth:`add_lora`); ``None``: train every weight.
            torch_dtype: dtype of the loaded weights (default: as stored / float32).

        Raises:
            ValueError: no tokenizer and no matching ``vocab``, or a token map that is not one-to-one.
        """
        path = Path(name_or_path)
        if path.is_dir() and (path / POLICY_CONFIG_NAME).is_file() and tokenizer is None:
            policy = cls.load(path)
            if vocab is not None and vocab != policy.vocab:
                raise ValueError(
                    f"{path} holds a policy over another vocabulary ({policy.vocab}) than {vocab}."
                )
            return policy
        from transformers import AutoModelForCausalLM, AutoTokenizer

        load_kw: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **load_kw)
        if tokenizer is None and (not path.is_dir() or _has_tokenizer_files(path)):
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
            except (OSError, ValueError, TypeError, KeyError):
                tokenizer = None
        model_vocab = _embedding_rows(model)
        if tokenizer is None:
            if vocab is None or len(vocab) != model_vocab:
                have = "no vocab" if vocab is None else f"a vocab of {len(vocab)} ids"
                raise ValueError(
                    f"No tokenizer found for {name_or_path!s} and {have} for a model of {model_vocab} token "
                    "ids: pass tokenizer=..., or a vocab of exactly the model's size (identity map)."
                )
            policy = cls(
                model=model, vocab=vocab, token_map=TokenMap.identity(vocab, model_vocab_size=model_vocab)
            )
        else:
            vocab, token_map = _map_tokenizer(tokenizer, vocab)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if len(tokenizer) > model_vocab:
                model.resize_token_embeddings(len(tokenizer))
            token_map = TokenMap(token_map.env_to_model, model_vocab_size=_embedding_rows(model))
            policy = cls(model=model, vocab=vocab, token_map=token_map, tokenizer=tokenizer)
        policy.pretrained_name = str(name_or_path)
        policy._pretrained_rows = model_vocab
        if lora is not None:
            policy.add_lora(lora)
        return policy

    # -- LoRA -------------------------------------------------------------------------------------------
    @property
    def is_lora(self) -> bool:
        """Whether the model is wrapped with ``peft`` LoRA adapters (:meth:`add_lora`)."""
        return hasattr(self.model, "peft_config")

    def add_lora(self, config: dict[str, Any] | Any | None = None, **kwargs: Any) -> LMPolicy:
        """Wrap the model with LoRA adapters (``peft``): only the adapters and the embedding rows of the tokens
        the pretrained model did not know (``<backspace>``, and any token added to it) are trained.

        Args:
            config: a ``peft.LoraConfig``, or a dict of its fields. Defaults: ``r=8``, ``lora_alpha=16``,
                ``lora_dropout=0``, ``target_modules="all-linear"``, ``task_type="CAUSAL_LM"``, and
                ``trainable_token_indices`` = the model ids of ``<backspace>``, eos and of every embedding row
                added to the pretrained model (so they are learnt, and saved with the adapters).
            **kwargs: more LoRA fields (with a dict ``config``).

        Returns:
            ``self`` (modified in place; its parameters change, so build the optimiser afterwards).

        Raises:
            ImportError: ``peft`` is not installed.
            ValueError: the model already has adapters.
        """
        try:
            import peft
        except ImportError:
            raise ImportError('LoRA needs peft: pip install "seqgym[scale]".') from None
        if self.is_lora:
            raise ValueError("The policy's model already has LoRA adapters.")
        if isinstance(config, peft.LoraConfig):
            if kwargs:
                raise ValueError("Pass LoRA fields either in a LoraConfig or as keyword arguments, not both.")
            lora_config = config
        else:
            if config is not None and not isinstance(config, dict):
                raise TypeError(f"lora must be a peft.LoraConfig or a dict, got {type(config).__name__}.")
            tm = self.token_map
            rows = _embedding_rows(self.model)
            base_rows = rows if self._pretrained_rows is None else self._pretrained_rows
            new = {tm.env_to_model[self.vocab.backspace_id], tm.env_to_model[self.vocab.eos_id]}
            fields: dict[str, Any] = {
                "r": 8,
                "lora_alpha": 16,
                "lora_dropout": 0.0,
                "target_modules": "all-linear",
                "task_type": "CAUSAL_LM",
                "trainable_token_indices": sorted(new | set(range(base_rows, rows))),
                **(config or {}),
                **kwargs,
            }
            lora_config = peft.LoraConfig(**fields)
        self.model = peft.get_peft_model(self.model, lora_config)
        self._read_forward_signature()
        return self

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the model (``save_pretrained`` format, safetensors), the tokenizer if any, and
        ``seqgym_policy.json`` (vocabulary and token map) into ``directory`` (created if needed)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))  # with LoRA: the adapters (and trained embedding rows) only
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path))
        meta: dict[str, Any] = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "vocab": self.vocab.to_dict(),
            "token_map": self.token_map.to_dict(),
        }
        if self.is_lora:  # the frozen base: the pretrained model's name or path, else its weights beside
            base = self.pretrained_name
            if base is None:
                base = _LORA_BASE_DIR
                _frozen_base(self.model).save_pretrained(str(path / _LORA_BASE_DIR))
            meta["lora"] = {"base_model": base}
        tmp = path / (POLICY_CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, path / POLICY_CONFIG_NAME)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> LMPolicy:
        """Load a policy written by :meth:`save_pretrained`; ``device`` may be ``"auto"`` (cuda if available).

        Raises:
            FileNotFoundError: ``directory`` does not exist.
            ValueError: it holds no (or a malformed) ``seqgym_policy.json``, or the model does not match it.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(directory)
        if not path.is_dir():
            raise FileNotFoundError(f"No policy directory at {path}.")
        meta_path = path / POLICY_CONFIG_NAME
        if not meta_path.is_file():
            raise ValueError(
                f"{path} holds no {POLICY_CONFIG_NAME}; it was not written by LMPolicy.save_pretrained "
                "(use LMPolicy.from_pretrained for a plain Hugging Face model directory)."
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{meta_path} is not valid JSON ({e}); the file is truncated or corrupt."
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path} is not a seqgym policy file (format {_FORMAT!r} expected).")
        if int(meta.get("version", -1)) > _FORMAT_VERSION:
            raise ValueError(
                f"{meta_path} has format version {meta.get('version')}; "
                f"this seqgym reads versions <= {_FORMAT_VERSION}."
            )
        vocab = Vocabulary.from_dict(meta["vocab"])
        token_map = TokenMap.from_dict(meta["token_map"])
        lora = meta.get("lora")
        if lora:
            model = _load_lora(path, str(lora["base_model"]), token_map.model_vocab_size)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path))
        tokenizer = None
        if _has_tokenizer_files(path):
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        policy = cls(model=model, vocab=vocab, token_map=token_map, tokenizer=tokenizer)
        if lora:
            policy.pretrained_name = None if lora["base_model"] == _LORA_BASE_DIR else str(lora["base_model"])
        return policy.to(device)

    # -- helpers ----------------------------------------------------------------------------------------
    @property
    def engine_model(self) -> torch.nn.Module | None:
        """The training engine's wrapper of :attr:`model` (``DistributedDataParallel`` in a multi-process run),
        through which forwards that carry gradients run; ``None`` when training runs on one process."""
        return self.__dict__.get("_engine_model")

    def set_engine_model(self, module: torch.nn.Module | None) -> None:
        """Run gradient-carrying forwards through ``module`` (a wrapper of :attr:`model`, not registered as a
        submodule, so ``state_dict`` and saving are unchanged); ``None`` removes it."""
        object.__setattr__(self, "_engine_model", module)

    def call_model(self, **kwargs: Any) -> Any:
        """``model(**kwargs)``, through :attr:`engine_model` when one is set and gradients are enabled (so a
        no-grad forward, e.g. generation, never runs the engine's collectives)."""
        engine = self.engine_model
        if engine is not None and torch.is_grad_enabled():
            return engine(**kwargs)
        return self.model(**kwargs)

    def compiled_model(self) -> Any:
        """:attr:`model` wrapped by ``torch.compile(dynamic=True)`` for generation, built on first use and kept
        (not a submodule: ``state_dict`` and saving are unchanged) until :attr:`model` is replaced. It shares
        the model's parameters, so training in between needs no rebuild.

        Sizes are symbolic, so one graph serves every batch, prompt and cache length of its kind, but dynamo
        compiles a graph per kind on its first call: the prefill, the one-token step, a step with a single
        live row and a batch of one (sizes 0 and 1 are specialised), a prefill that keeps every logit (a
        ``generated`` part), and each of these again in train mode. Each takes seconds to tens of seconds on
        a CPU (the inductor backend needs a C++ compiler there); later calls reuse them. Generation runs
        with dynamo's recompile limit raised to :data:`COMPILED_GRAPHS` so that these kinds fit."""
        held = self.__dict__.get("_compiled")
        if held is None or held[0] is not self.model:
            held = (self.model, torch.compile(self.model, dynamic=True))
            object.__setattr__(self, "_compiled", held)
        return held[1]

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def _neg(self) -> float:
        return float(torch.finfo(self.model.dtype).min)

    def _run(
        self,
        env_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        keep: int | None = None,
        cache: Cache | None = None,
        compiled: bool = False,
    ) -> torch.Tensor:
        """Model forward on env ids ``(B, S)``; returns action logits ``(B, keep or S, A)``.

        ``compiled``: through :meth:`compiled_model` (generation only: no gradients, no training engine; the
        caller raises dynamo's recompile limit, as :meth:`generate` does)."""
        kwargs: dict[str, Any] = {
            "input_ids": self.token_map.to_model(env_ids),
            "position_ids": position_ids,
            "attention_mask": attention_mask,
        }
        if cache is not None:
            kwargs[self._cache_kw] = cache
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        if keep is not None and self._keep_kw is not None:
            kwargs[self._keep_kw] = keep
        out = self.compiled_model()(**kwargs) if compiled else self.call_model(**kwargs)
        logits = out.logits  # (B, S' , V)
        if keep is not None:
            logits = logits[:, -keep:]
        return self.token_map.action_logits(logits)

    def _check_generated(self, generated: IdRows, n: int) -> list[np.ndarray]:
        """Validate ``generated`` parts: one per prompt, ordinary token ids only (no eos, backspace or pad)."""
        if isinstance(generated, (str, bytes)) or not isinstance(
            generated, (Sequence, np.ndarray, torch.Tensor)
        ):
            raise TypeError(f"generated must be a sequence of id sequences, got {type(generated).__name__}.")
        rows = [_as_ids(g, f"generated[{b}]") for b, g in enumerate(generated)]
        if len(rows) != n:
            raise ValueError(
                f"generated has {len(rows)} rows for {n} prompts; give one (possibly empty) per prompt."
            )
        for b, r in enumerate(rows):
            bad = np.nonzero((r < 0) | (r >= self.vocab.n_tokens))[0]
            if len(bad):
                raise ValueError(
                    f"generated[{b}] holds id {int(r[bad[0]])} at position {int(bad[0])}: a generated part holds "
                    f"ordinary tokens only (0..{self.vocab.n_tokens - 1}; no eos, backspace or pad)."
                )
        return rows

    def _check_prompts(self, prompts: IdRows, what: str) -> list[np.ndarray]:
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (Sequence, np.ndarray, torch.Tensor)):
            raise TypeError(f"{what} must be a sequence of id sequences, got {type(prompts).__name__}.")
        rows = [_as_ids(p, f"{what}[{b}]") for b, p in enumerate(prompts)]
        if not rows:
            raise ValueError(f"{what} is empty; pass at least one sequence.")
        flat = np.concatenate(rows)
        bad = np.nonzero((flat < 0) | (flat > self.vocab.eos_id))[0]
        if len(bad):
            lengths = np.array([len(r) for r in rows])
            row = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
            pos = int(bad[0] - (np.cumsum(lengths)[row] - lengths[row]))
            self.vocab.check_ids(rows[row].tolist(), what=f"{what}[{row}]")
            raise ValueError(f"{what}[{row}] holds invalid id {int(flat[bad[0]])} at position {pos}.")
        return rows

    # -- forwards -------------------------------------------------------------------------------------------
    def state_logits(self, states: IdRows, prompt_lengths: Sequence[int]) -> torch.Tensor:
        """Plain batched forward on visible sequences (the reference for the masked forward).

        Args:
            states: ``B`` visible sequences (prompt + generated tokens; ordinary ids or eos).
            prompt_lengths: prompt length of each state (backspace is masked where the state is the prompt).

        Returns:
            ``(B, A)`` logits over env actions at each state, backspace ``-inf`` at the prompt boundary.
        """
        rows = self._check_prompts(states, "states")
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        pl = _as_ids(prompt_lengths, "prompt_lengths")
        if len(pl) != len(rows):
            raise ValueError(f"Got {len(rows)} states but {len(pl)} prompt_lengths.")
        if (pl < 0).any() or (pl > lengths).any():
            b = int(np.nonzero((pl < 0) | (pl > lengths))[0][0])
            raise ValueError(
                f"prompt_lengths[{b}] = {int(pl[b])} is not in 0..len(states[{b}]) = {int(lengths[b])}."
            )
        S = int(lengths.max()) + 1  # BOS slot
        if S > self.n_positions:
            raise ValueError(
                f"A state of length {S - 1} does not fit the model's {self.n_positions} positions "
                "(BOS included)."
            )
        dev = self.device
        bos = [np.array([self.vocab.eos_id])] * len(rows)
        seqs = [np.concatenate((b0, r)) for b0, r in zip(bos, rows)]
        start = S - (lengths + 1)  # (B,) left padding
        tok = torch.from_numpy(_rows_to_padded(seqs, start, S, self.vocab.pad_id)).to(dev)  # (B, S)
        ar = torch.arange(S, device=dev)  # (S,)
        start_t = torch.from_numpy(start).to(dev)[:, None]  # (B, 1)
        valid = ar[None, :] >= start_t  # (B, S)
        pos = (ar[None, :] - start_t).clamp(min=0)  # (B, S)
        logits = self._run(tok, pos, valid.long(), keep=1)[:, -1]  # (B, A), HF builds the causal mask
        boundary = torch.from_numpy(lengths == pl).to(dev)  # (B,)
        return self._mask_backspace(logits, boundary)

    def _mask_backspace(self, logits: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
        """Set the backspace logit to ``-inf`` where ``boundary`` (shape of ``logits[..., 0]``)."""
        col = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        col[self.vocab.backspace_id] = True
        return logits.masked_fill(boundary[..., None] & col, float("-inf"))

    def trajectory_logits(self, prompts: IdRows, actions: IdRows) -> TrajectoryLogits:
        """Logits of every state of a batch of action histories, in ONE masked forward (differentiable).

        Layout (``docs/method.md`` §5): row ``b`` is left-padded to ``S`` slots and holds
        ``[BOS, prompt..., one slot per action]``. A token slot holds the token at position id
        ``len(state) - 1`` (BOS counted) and attends to the slots of the state it creates. A backspace slot
        holds a copy of the new last token (BOS if the state becomes empty) at that token's position id and
        attends to the slots of the new state with the original slot of that token replaced by itself (so no
        slot is seen twice); a no-op backspace at the prompt boundary copies the last prompt slot the same
        way. Slot ``k`` removes from the visible set every earlier slot ``j`` with ``pos_j >= pos_k``, which
        gives the mask without a per-step loop: ``attend(s, j) = j <= s < death(j)`` with ``death(j)`` the
        first such ``k > j``.
        The logits at state ``u_i`` are the outputs of the slot before action ``i`` (the last prompt slot for
        ``u_0``), i.e. the last ``T_b + 1`` slots of each row.

        Args:
            prompts: ``B`` prompts (ordinary ids or eos).
            actions: ``B`` action histories (ids ``0 .. n_actions-1``; nothing after eos).

        Returns:
            :class:`TrajectoryLogits` (see there for shapes).

        Raises:
            ValueError: lengths differ, invalid ids, an action after eos, or a state too long for the model.
        """
        v = self.vocab
        prow = self._check_prompts(prompts, "prompts")
        if isinstance(actions, (str, bytes)) or len(actions) != len(prow):
            raise ValueError(
                f"Got {len(prow)} prompts but {len(actions)} action histories; pass one per prompt."
            )
        arow = [_as_ids(a, f"actions[{b}]") for b, a in enumerate(actions)]
        B = len(prow)
        P = np.array([len(p) for p in prow], dtype=np.int64)  # (B,)
        T = np.array([len(a) for a in arow], dtype=np.int64)  # (B,)
        self._check_actions(arow, T)
        Tm = int(T.max())
        dev = self.device
        P_t = torch.from_numpy(P).to(dev)[:, None]  # (B, 1)
        inp, pos, attend = slot_layout_torch(
            torch.from_numpy(pad_histories(prow, v.pad_id)[0]).to(dev),  # (B, P_max)
            P_t[:, 0],
            torch.from_numpy(pad_histories(arow, 0)[0]).to(dev),  # (B, T)
            torch.from_numpy(T).to(dev),
            v,
        )  # (B, S) env ids, (B, S) position ids, (B, S, S) bool
        S = inp.shape[1]
        if int(pos.max()) >= self.n_positions:
            raise ValueError(
                f"A visited state of length {int(pos.max())} does not fit the model's {self.n_positions} "
                "positions (BOS included); shorten the histories or use a model with more positions."
            )
        dtype = self.model.dtype
        mask = torch.zeros(B, 1, S, S, dtype=dtype, device=dev)
        mask.masked_fill_(~attend[:, None], self._neg())  # (B, 1, S, S) additive

        K = Tm + 1  # states are the last T_b + 1 slots of each row
        out = self._run(inp, pos, mask, keep=K)  # (B, K, A)
        T_t = torch.from_numpy(T).to(dev)[:, None]  # (B, 1)
        i = torch.arange(K, device=dev)[None, :]  # (1, K)
        state_mask = i <= T_t  # (B, K)
        idx = (Tm - T_t + i).clamp(max=Tm)  # (B, K) kept index of state i
        logits = out.gather(1, idx[:, :, None].expand(-1, -1, out.shape[-1]))  # (B, K, A)
        length = pos[:, S - K :].gather(1, idx)  # (B, K) length of state i (its slot's position id)
        logits = self._mask_backspace(logits, ~backspace_allowed_torch(length, P_t) & state_mask)
        logits = logits.masked_fill(~state_mask[:, :, None], 0.0)
        acts = _rows_to_padded(arow, np.zeros(B, dtype=np.int64), Tm, 0)  # (B, T)
        return TrajectoryLogits(
            logits=logits,
            state_mask=state_mask,
            actions=torch.from_numpy(acts).to(dev),
            action_mask=torch.arange(Tm, device=dev)[None, :] < T_t,
        )

    def forward(self, prompts: IdRows, actions: IdRows) -> TrajectoryLogits:
        """Same as :meth:`trajectory_logits`."""
        return self.trajectory_logits(prompts, actions)

    def _check_actions(self, arow: list[np.ndarray], T: np.ndarray) -> None:
        v = self.vocab
        if T.sum() == 0:
            return
        flat = np.concatenate(arow)
        row_of = np.repeat(np.arange(len(arow)), T)
        within = np.arange(len(flat)) - np.repeat(np.cumsum(T) - T, T)
        bad = np.nonzero((flat < 0) | (flat >= v.n_actions))[0]
        if len(bad):
            k = bad[0]
            hint = " (the pad id, never an action)" if flat[k] == v.pad_id else ""
            raise ValueError(
                f"actions[{row_of[k]}] holds id {int(flat[k])}{hint} at step {within[k]}; "
                f"valid actions are 0..{v.n_actions - 1}."
            )
        late = np.nonzero((flat == v.eos_id) & (within < T[row_of] - 1))[0]
        if len(late):
            k = late[0]
            raise ValueError(
                f"actions[{row_of[k]}] continues after eos at step {within[k]}; an episode ends at eos."
            )

    # -- generation ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        prompts: IdRows,
        *,
        max_steps: int,
        max_length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        allow_backspace: bool = True,
        logits_processor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        output_logits: bool = False,
        generated: IdRows | None = None,
        compiled: bool | None = None,
    ) -> Generation:
        """Sample a batch of action histories with backspace, on a KV cache.

        Each row steps independently with the rules of ``SequenceEnv``: eos terminates; the visible length
        reaching ``max_length`` after a non-eos token, or the step count reaching ``max_steps``, truncates.
        Backspace is masked at the prompt boundary (and everywhere if ``allow_backspace=False``). Actions are
        drawn in sampling calls, each over the ``R <= B`` rows that choose an action at that call (the live rows,
        then, after a backspace, only the rows that backspaced: they sample again at once); each call draws
        ``B`` uniforms from the generator and row ``b`` uses the ``b``-th, exactly as :func:`sample_actions` on
        the whole ``(B, A)`` batch would. So with a batch of one and the same generator this equals stepping
        the env with :meth:`state_logits` + :func:`sample_actions`.

        KV cache: row ``b`` keeps position ``p`` of its visible sequence in cache slot ``offset_b + p``, so a
        token writes one new slot with position id ``p``, and the slots past the visible length drop out of
        that row's attention mask (a later token overwrites them). A backspace never recomputes the prefix:
        the logits of every visible prefix are kept (while ``B * (max_length+1) * A`` floats fit in 256 MiB),
        so a backspace costs no forward at all and the row samples its next action at once; otherwise the
        new last token is re-fed at its own slot and position (identical keys/values, one slot of compute).

        Args:
            prompts: ``B`` prompts (ordinary ids), each shorter than ``max_length``.
            max_steps: most actions per row (>= 1).
            max_length: most visible ids per row, prompt included (``<= n_positions``).
            temperature, top_k, top_p, generator: as in :func:`sample_actions`.
            allow_backspace: False masks backspace at every step.
            logits_processor: optional ``(R, A) -> (R, A)`` function applied to (a copy of) the logits of the
                ``R <= B`` rows that choose an action at a sampling call, before masking and sampling, e.g. a
                logit bias. It must treat each row on its own: the rows it sees change from call to call (the
                live rows, then only those that backspaced and sample again at once).
            output_logits: also return the logits of every step's state (``Generation.logits``).
            generated: optional ``B`` deletable generated parts (ordinary token ids): row ``b`` starts from the
                state ``prompts[b] + generated[b]`` as if it had written ``generated[b]`` itself, so
                ``<backspace>`` may delete it down to the prompt (``docs/method.md`` §7). ``Generation.actions``
                are the actions taken from there; ``Generation.sequences`` the final visible sequences.
            compiled: run the model's forwards through :meth:`compiled_model` (``torch.compile``; the first
                calls compile a few graphs, later ones reuse them whatever the batch, prompt and cache
                lengths). The logits agree with the eager forward to float rounding, so the samples do too
                but for a draw that falls within that rounding of a boundary. ``None`` (default):
                :attr:`compiled_generation`.

        Returns:
            :class:`Generation`.
        """
        temp = _check_sampling(temperature, top_k, top_p)
        if compiled is None:
            compiled = self.compiled_generation
        if isinstance(compiled, np.bool_):
            compiled = bool(compiled)
        if not isinstance(compiled, bool):
            raise TypeError(
                f"compiled (and LMPolicy.compiled_generation) must be a bool, got {type(compiled).__name__}."
            )
        # compiled: dynamo's recompile limit, raised once for the whole generation (room for its few graph kinds)
        limit = contextlib.nullcontext()
        if compiled:
            import torch._dynamo

            size = max(torch._dynamo.config.cache_size_limit, COMPILED_GRAPHS)
            limit = torch._dynamo.config.patch(cache_size_limit=size)
        with limit:
            return self._sample(
                prompts,
                max_steps,
                max_length,
                temp,
                top_k,
                top_p,
                generator,
                allow_backspace,
                logits_processor,
                output_logits,
                generated,
                compiled=compiled,
            )

    def _sample(
        self,
        prompts: IdRows,
        max_steps: int,
        max_length: int,
        temp: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator | None,
        allow_backspace: bool,
        logits_processor: Callable[[torch.Tensor], torch.Tensor] | None,
        output_logits: bool,
        generated: IdRows | None,
        *,
        compiled: bool,
    ) -> Generation:
        """The body of :meth:`generate`, its sampling arguments checked (``temp`` from :func:`_check_sampling`)
        and ``compiled`` resolved; the other arguments are checked here."""
        for name, value in (("max_steps", max_steps), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        if max_length > self.n_positions:
            raise ValueError(
                f"max_length={max_length} exceeds the model's {self.n_positions} positions (the BOS slot "
                f"takes one); use max_length <= {self.n_positions}."
            )
        rows = self._check_prompts(prompts, "prompts")
        for b, row in enumerate(rows):
            if (row == self.vocab.eos_id).any():
                raise ValueError(
                    f"prompts[{b}] holds eos (id {self.vocab.eos_id}) at position "
                    f"{int(np.flatnonzero(row == self.vocab.eos_id)[0])}; a prompt is ordinary tokens only."
                )
        bound = np.array([len(r) for r in rows], dtype=np.int64)  # (B,) prompt lengths: backspace stops here
        if generated is not None:
            rows = [np.concatenate((r, g)) for r, g in zip(rows, self._check_generated(generated, len(rows)))]
        P = np.array([len(r) for r in rows], dtype=np.int64)  # (B,) prefill lengths (prompt + generated)
        if (P >= max_length).any():
            b = int(np.nonzero(P >= max_length)[0][0])
            what = "prompts" if generated is None else "prompts + generated"
            raise ValueError(
                f"{what}[{b}] has length {int(P[b])}; it must be shorter than max_length={max_length}."
            )
        v, dev = self.vocab, self.device
        B, Pm = len(rows), int(P.max())
        neg = self._neg()

        # prefill, left padded: row b's BOS at slot off_b = Pm - P_b; position p lives at slot off_b + p
        seqs = [np.concatenate(([v.eos_id], r)) for r in rows]
        off_np = Pm - P
        tok = torch.from_numpy(_rows_to_padded(seqs, off_np, Pm + 1, v.pad_id)).to(dev)  # (B, Pm+1)
        ar = torch.arange(Pm + max_length, device=dev)  # (L,) slot indices
        off = torch.from_numpy(off_np).to(dev)  # (B,)
        q = ar[: Pm + 1]  # (Q,)
        pos0 = (q[None, :] - off[:, None]).clamp(min=0)  # (B, Q)
        causal = q[None, None, :] <= q[None, :, None]  # (1, Q, Q)
        attend0 = (causal & (q[None, None, :] >= off[:, None, None])) | torch.eye(
            Pm + 1, dtype=torch.bool, device=dev
        )
        mdtype = self.model.dtype  # (read once: the property walks the parameters)
        mask0 = torch.zeros(B, 1, Pm + 1, Pm + 1, dtype=mdtype, device=dev)
        mask0.masked_fill_(~attend0[:, None], neg)  # (B, 1, Q, Q)
        n_layers = int(getattr(self.model.config, "num_hidden_layers", 0) or self.model.config.n_layer)
        cache = _SlotCache(n_layers, max_slots=Pm + max_length, batch_size=B, device=dev)
        cache.kv_len = Pm + 1
        if generated is None:
            logits = self._run(tok, pos0, mask0, keep=1, cache=cache, compiled=compiled)[:, -1]  # (B, A)
        else:  # keep the logits of every prefill slot: a backspace into the generated part needs them
            prefill = self._run(tok, pos0, mask0, keep=Pm + 1, cache=cache, compiled=compiled)  # (B, Pm+1, A)
            logits = prefill[:, -1]

        seq = torch.full((B, max_length + 1), v.pad_id, dtype=torch.long, device=dev)  # (B, L+1) by position
        seq[:, : Pm + 1] = tok.gather(1, (q[None, :] + off[:, None]).clamp(max=Pm))  # left-align prompts
        P_t = torch.from_numpy(bound).to(dev)  # (B,) the prompt boundary
        A = v.n_actions
        # logits of the state of visible length p, kept so that a backspace needs no forward at all
        use_stack = B * (max_length + 1) * A * logits.element_size() <= _LOGIT_STACK_BYTES
        stack = torch.empty((B, max_length + 1, A) if use_stack else (0,), dtype=logits.dtype, device=dev)
        rows_t = torch.arange(B, device=dev)  # (B,)
        vis = torch.from_numpy(P).to(dev)  # (B,) visible length
        if use_stack:
            stack[rows_t, vis] = logits
            if generated is not None:  # states of the generated part: visible length p at slot off_b + p
                for b in np.nonzero(P > bound)[0].tolist():
                    first, last = int(bound[b]), int(P[b])
                    stack[b, first:last] = prefill[b, int(off_np[b]) + first : int(off_np[b]) + last]
        steps = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) actions taken
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        terminated = torch.zeros_like(done)
        truncated = torch.zeros_like(done)
        history = torch.full((B, max_steps), -1, dtype=torch.long, device=dev)  # (B, max_steps)
        seen = torch.zeros((B, max_steps, A) if output_logits else (0,), dtype=logits.dtype, device=dev)
        act = rows_t.clone()  # (B',) original row of each cache row
        bk, eos = v.backspace_id, v.eos_id
        bk_col = torch.zeros(A, dtype=torch.bool, device=dev)
        bk_col[bk] = True
        kv_hi = Pm + 1  # host-side bound on the slots attention reads: a step appends at most one per row
        n_cache = B  # rows of the cache (host-side count, so the loop synchronises once per step)
        while True:
            # sample until every live row has taken a token (or eos); a row that backspaces samples again
            # at once from the stored logits of its new state
            need = ~done  # (B,)
            # (R,) rows drawn at this call: the live rows (act holds no finished row: see below), then only
            # those that backspaced and are not done; so every row of ix chooses an action
            ix = act
            while True:
                whole = len(ix) == B  # every row draws: no gather or scatter by row needed
                if allow_backspace:  # backspace masked at the prompt boundary
                    v_ix, p_ix = (vis, P_t) if whole else (vis[ix], P_t[ix])
                    blocked = ~backspace_allowed_torch(v_ix, p_ix)[:, None] & bk_col  # (R, A)
                else:
                    blocked = bk_col[None, :]  # (1, A) backspace masked everywhere
                at = (steps if whole else steps[ix]).clamp(max=max_steps - 1)  # (R,)
                lg = logits if whole else logits[ix]  # (R, A)
                if output_logits:
                    seen[ix, at] = lg.masked_fill(blocked, -math.inf)
                if logits_processor is not None:
                    lg = _processed(logits_processor, lg.clone())
                x = lg.masked_fill(blocked, -math.inf)  # (R, A)
                # a row with nothing allowed, a NaN or a +inf logit has a row max that is not finite
                unusable = ~torch.isfinite(x.amax(dim=-1))  # (R,)
                a_ix = _draw(x, generator, temp, top_k, top_p, rows=None if whole else (ix, B))  # (R,)
                # (B,) every row's action (rows outside ix: unused)
                a = a_ix if whole else torch.zeros_like(rows_t).index_copy(0, ix, a_ix)
                history[ix, at] = a_ix
                appends, deletes = step_masks_torch(vis, P_t, a, bk)  # (B,) each
                is_bk = need & deletes  # (B,) backspace (never at the boundary: masked above)
                is_tok = need & appends  # (B,) token or eos
                steps += need.long()
                vis = vis + is_tok.long() - is_bk.long()
                seq[rows_t, vis] = torch.where(is_tok, a, seq[rows_t, vis])
                ended = is_tok & (a == eos)
                cut = need & ~ended & ((is_tok & (vis >= max_length)) | (steps >= max_steps))
                terminated |= ended
                truncated |= cut
                done = done | ended | cut
                need = is_bk & ~done  # (B,) rows that backspaced and sample again at once
                # the one host synchronisation of the step
                resample, n_live, no_action = torch.stack(
                    [need.sum(), (~done).sum(), unusable.any().long()]
                ).tolist()
                if no_action:  # raise the message sample_actions gives
                    check_logits_rows(x)
                if not use_stack or not resample:
                    break
                # (R,) the rows that sample again, in order, without another synchronisation (R is known)
                ix = torch.argsort((~need).to(torch.uint8), stable=True)[:resample]
                logits = logits.index_copy(0, ix, stack[ix, vis[ix]])  # (B, A)
            if n_live == 0:
                break
            if n_live < n_cache:  # drop finished rows from the cache and the forward
                keep = (~done[act]).nonzero()[:, 0]
                act = act[keep]
                cache.keep_rows(keep)
                n_cache = n_live
            # next input: the last visible token of each live row, at its position; after a backspace (without
            # the stack) this re-feeds the new last token at its own slot
            feed = vis[act]  # (B',) position id
            lo = off[act]  # (B',) slot of BOS
            w = lo + feed  # (B',) slot written
            cache.write_index = w
            kv_hi = min(kv_hi + 1, Pm + max_length)
            cache.kv_len = kv_hi  # slots past a row's own are masked out below
            kv = ar[:kv_hi]  # (K,)
            step_mask = (kv[None, :] >= lo[:, None]) & (kv[None, :] <= w[:, None])  # (B', K)
            m4 = torch.where(step_mask, 0.0, neg).to(mdtype)[:, None, None, :]  # (B', 1, 1, K)
            inp = seq[act, feed][:, None]  # (B', 1)
            out = self._run(inp, feed[:, None], m4, keep=1, cache=cache, compiled=compiled)[:, -1]  # (B', A)
            logits = logits.index_copy(0, act, out)  # (B, A)
            if use_stack:
                stack[act, feed] = out

        seq_l, vis_l, n_l = seq.tolist(), vis.tolist(), steps.tolist()
        hist_l = history.tolist()
        return Generation(
            sequences=[s[1 : n + 1] for s, n in zip(seq_l, vis_l)],
            actions=[h[:n] for h, n in zip(hist_l, n_l)],
            terminated=[bool(x) for x in terminated.tolist()],
            truncated=[bool(x) for x in truncated.tolist()],
            logits=[seen[b, :n] for b, n in enumerate(n_l)] if output_logits else None,
        )


# ======================================================================================================
# Tokenizer -> token map
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)


def _has_tokenizer_files(directory: Path) -> bool:
    """Whether a local model directory holds a tokenizer (transformers would invent an empty one)."""
    return any((directory / f).is_file() for f in _TOKENIZER_FILES)


def _frozen_base(model: Any) -> Any:
    """A plain copy of the frozen base model inside a ``peft`` model (the adapters left out), to save."""
    from transformers import AutoModelForCausalLM

    inner = model.get_base_model()
    state = {}
    for key, value in inner.state_dict().items():
        if "lora_" in key or "trainable_tokens" in key:
            continue
        state[key.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")] = value
    with torch.random.fork_rng(devices=[]):
        plain = AutoModelForCausalLM.from_config(inner.config)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])
    if unexpected or any(k not in tied for k in missing):
        raise RuntimeError(f"Cannot separate the base model from its adapters: {missing=}, {unexpected=}.")
    return plain


def _load_lora(path: Path, base: str, rows: int) -> Any:
    """The model of a LoRA policy saved in ``path``: the frozen base (a name / path, or ``path/base``) with its
    embeddings resized to ``rows``, and the adapters of ``path`` (trainable, as saved)."""
    try:
        import peft
    except ImportError:
        raise ImportError(
            f'{path} holds LoRA adapters; loading them needs peft: pip install "seqgym[scale]".'
        ) from None
    from transformers import AutoModelForCausalLM

    where = path / base if base == _LORA_BASE_DIR else base
    model = AutoModelForCausalLM.from_pretrained(str(where))
    if _embedding_rows(model) != rows:
        model.resize_token_embeddings(rows, mean_resizing=False)  # added rows come back from the adapters
    return peft.PeftModel.from_pretrained(model, str(path), is_trainable=True)


def _embedding_rows(model: Any) -> int:
    """Number of token ids the model embeds."""
    return int(model.get_input_embeddings().weight.shape[0])


# ======================================================================================================
def _map_tokenizer(tokenizer: Any, vocab: Vocabulary | None) -> tuple[Vocabulary, TokenMap]:
    """Build (or follow) the env vocabulary for a Hugging Face tokenizer; adds missing tokens to it."""
    if tokenizer.eos_token is None:
        eos_str = vocab.eos if vocab is not None else "<eos>"
        tokenizer.add_special_tokens({"eos_token": eos_str})
    eos_id = int(tokenizer.eos_token_id)
    if vocab is not None and tokenizer.eos_token in vocab.tokens[: vocab.n_tokens]:
        # the env keeps the tokenizer's eos string as an ordinary token (a text source over every token of the
        # tokenizer): the env's eos is a token of its own, added to the tokenizer
        if vocab.eos not in tokenizer.get_vocab():
            tokenizer.add_tokens([vocab.eos], special_tokens=True)
        eos_id = int(tokenizer.convert_tokens_to_ids(vocab.eos))
    bksp_str = vocab.backspace if vocab is not None else "<bksp>"
    if bksp_str not in tokenizer.get_vocab():
        tokenizer.add_tokens([bksp_str], special_tokens=True)
    bksp_id = int(tokenizer.convert_tokens_to_ids(bksp_str))
    pad_id = tokenizer.pad_token_id
    pad_model = int(pad_id) if pad_id is not None and int(pad_id) not in (eos_id, bksp_id) else eos_id
    if vocab is None:
        specials = {eos_id, bksp_id, pad_model}
        names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        tokens = [str(t) for i, t in enumerate(names) if i not in specials]
        ids = [i for i in range(len(tokenizer)) if i not in specials]
        pad_str = tokenizer.pad_token if pad_model != eos_id else "<pad>"
        known = set(tokens) | {tokenizer.eos_token, bksp_str}
        while pad_str in known:
            pad_str = "<" + pad_str + ">"
        vocab = Vocabulary(tokens, eos=str(tokenizer.eos_token), backspace=bksp_str, pad=str(pad_str))
        return vocab, TokenMap([*ids, eos_id, bksp_id, pad_model], model_vocab_size=len(tokenizer))

    have = tokenizer.get_vocab()
    missing = [t for t in vocab.tokens[: vocab.n_tokens] if t not in have]
    if missing:
        tokenizer.add_tokens(missing)
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids(vocab.tokens[: vocab.n_tokens])]
    clash = [vocab.tokens[k] for k, i in enumerate(ids) if i in (eos_id, bksp_id)]
    if clash:
        raise ValueError(
            f"Ordinary tokens {clash} are the tokenizer's eos/backspace; rename them in the vocabulary."
        )
    return vocab, TokenMap([*ids, eos_id, bksp_id, pad_model], model_vocab_size=len(tokenizer))
