"""SequenceMatch: imitation learning with a soft-Q critic read off the LM's logits, and ``<backspace>``.

The method of ``docs/method.md`` §2-§4 (Cundy & Ermon, ICLR 2024, with IQ-Learn's non-adversarial objective,
Garg et al. 2021, and LS-IQ's absorbing states, Al-Hafez et al. 2023). The LM's logits ``l(a|u)`` over the env
actions are soft Q-values scaled by ``1/α`` (IQ-Learn's convention):

    π(a|u) = softmax(l(·|u))        Q(u, a) = α·l(a|u)        V(u) = α·logsumexp(l(·|u))
    r_i = Q(u_i, a_i) − γ·V'(u_{i+1})       V'(u_T) after eos: 0 ("iq") or the absorbing state's value
                                            ("absorbing"); V(u_T) at a time-limit cut

and the loss over a batch of expert (augmented) trajectories ``E`` and a mixture ``M`` of expert and model
trajectories is

    L = − mean_E Σ_i γ^i·w_i·r_i                   expert term      (w_i = φ'(r_i), no gradient; 1 for χ²)
        + mean_M Σ_i γ^i·(V(u_i) − γ·V'(u_{i+1}))    value term
        + 1/(4c)·mean_M Σ_i γ^i·r_i²                 χ² term
        + λ_bc·L_BC,   L_BC = − mean_E Σ_i log π(a_i|u_i)

(plus the absorbing state's tails, :class:`SoftQ`). Sums run over the steps of a sequence, means over
sequences. Only ``c/α`` shapes the optimum of the first three terms: ``L(α, c) = α·L(1, c/α)``.
:func:`sequencematch_loss` computes all of it, top to bottom, from the padded tensors of one masked forward
(:class:`~agents.policy.TrajectoryLogits`); :func:`soft_q` holds the per-step quantities of §2 (also used by
:meth:`SequenceMatch.reward`) and :func:`expert_term`, :func:`value_term`, :func:`chi2_term`, :func:`bc_term`
each term per sequence; the tests check them against a per-state reference.

Example:
    >>> import torch
    >>> logits = torch.zeros(1, 3, 4)                  # one trajectory, T = 2 actions, A = 4 actions
    >>> logits[0, 0, 3] = float("-inf")                # backspace masked at the prompt boundary
    >>> sq = soft_q(logits, torch.tensor([[0, 2]]), torch.tensor([[True, True]]), torch.tensor([True]),
    ...             alpha=1.0, gamma=1.0)
    >>> [round(x, 4) for x in sq.v[0].tolist()]         # V = log 3 at u_0 (3 allowed actions), log 4 after
    [1.0986, 1.3863, 1.3863]
    >>> [round(x, 4) for x in sq.reward[0].tolist()]    # r_0 = 0 − V(u_1); r_1 = Q = 0 (terminal: V' = 0)
    [-1.3863, 0.0]
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from agents.buffers import ReplayBuffer, Rollouts
from agents.common.agent import Agent
from agents.common.distributed import ProcessGroup
from agents.common.noise import Augmentation, AugmentationConfig
from agents.common.registry import register_agent
from agents.policy import upcast_logits
from seqgym._options import check_option
from seqgym.data import Trajectory

__all__ = [
    "DIVERGENCES",
    "INSERTED_STEPS",
    "PHI_WEIGHT_MAX",
    "TERMINAL_MODES",
    "Divergence",
    "InsertedSteps",
    "SequenceMatch",
    "SequenceMatchBatch",
    "SequenceMatchConfig",
    "SoftQ",
    "TerminalMode",
    "WarmupOnlyWarning",
    "bc_term",
    "chi2_term",
    "expert_term",
    "phi_weights",
    "sequencematch_loss",
    "soft_q",
    "value_term",
    "value_term_telescoped",
]


class WarmupOnlyWarning(UserWarning):
    """``learn`` ended with every update so far inside the BC warm-up: the agent has trained as BC would.

    A study that trains in chunks (to draw learning curves) can ignore it on every chunk but the last.
    """


#: The divergences of :func:`phi_weights`: ``"chi2"`` is SequenceMatch-χ² (identity weight, the χ² term on
#: the mixture); ``"kl"``, ``"js"`` and ``"hellinger"`` weight the expert term by IQ-Learn's ``φ'(r)``.
Divergence = Literal["chi2", "kl", "js", "hellinger"]
DIVERGENCES: tuple[Divergence, ...] = typing.get_args(Divergence)

#: End of sequence (§2): ``"iq"``: IQ-Learn's ``V' = 0`` after eos; ``"absorbing"``: eos enters an absorbing
#: state whose value is read off the logits at the state after eos.
TerminalMode = Literal["iq", "absorbing"]
TERMINAL_MODES: tuple[TerminalMode, ...] = typing.get_args(TerminalMode)

#: Which terms see the inserted (mistake, ``<backspace>``) pairs of augmented demonstrations (§4):
#: ``"bc_only"``: only the BC anchor, which learns ``<backspace>`` from them; ``"all"``: every term (the mistake
#: token itself is never in the expert or BC terms).
InsertedSteps = Literal["bc_only", "all"]
INSERTED_STEPS: tuple[InsertedSteps, ...] = typing.get_args(InsertedSteps)

#: Cap on the expert-term weight ``φ'(r)`` (and its value where ``r`` lies outside φ's domain).
PHI_WEIGHT_MAX = 100.0


# ======================================================================================================
# The expert-term weight of each divergence
# ======================================================================================================
def phi_weights(
    reward: torch.Tensor, divergence: Divergence, *, max_weight: float = PHI_WEIGHT_MAX
) -> torch.Tensor:
    """IQ-Learn's expert-term weight ``w = φ'(r)`` for a divergence, without gradient.

    The expert term of IQ-Learn is ``−E[φ(r)]`` for the concave ``φ`` of an f-divergence; its gradient is
    ``−E[φ'(r)·∇r]``, which is what ``−E[w·r]`` with ``w = φ'(r)`` held constant gives (IQ-Learn weights
    the expert term this way):

    ============ ======================== ==========================================
    divergence   φ(r)                     w = φ'(r)
    ============ ======================== ==========================================
    ``chi2``     r (+ the χ² term)        1
    ``kl``       −exp(−(r + 1))           exp(−r − 1)
    ``js``       log(2 − exp(−r))         exp(−r) / (2 − exp(−r)) = 1 / (2·exp(r) − 1)
    ``hellinger`` r / (1 + r)             1 / (1 + r)²
    ============ ======================== ==========================================

    The weights are capped at ``max_weight``, which is also used where ``r`` is outside φ's domain
    (JS: ``r <= −log 2``; Hellinger: ``r <= −1``), where φ' grows without bound as ``r`` approaches the
    edge. LM rewards start near ``log π ≈ −log A``, outside the JS domain, so the uncapped formula would
    give negative weights there and push the expert's actions down.

    Args:
        reward: any shape.
        divergence: one of :data:`DIVERGENCES`.
        max_weight: the cap (> 0).

    Returns:
        Weights of ``reward``'s shape, detached, in ``(0, max_weight]``.

    Example:
        >>> r = torch.tensor([-2.0, 0.0, 1.0])
        >>> [round(x, 4) for x in phi_weights(r, "js").tolist()]
        [100.0, 1.0, 0.2254]
        >>> [round(x, 4) for x in phi_weights(r, "kl").tolist()]
        [2.7183, 0.3679, 0.1353]
    """
    check_option("divergence", divergence, DIVERGENCES)
    if not max_weight > 0:
        raise ValueError(f"max_weight must be > 0, got {max_weight!r}.")
    with torch.no_grad():
        r = reward.detach()
        if divergence == "chi2":
            return torch.ones_like(r)
        if divergence == "kl":
            w = torch.exp(-r - 1.0)
        elif divergence == "js":
            d = 2.0 * torch.exp(r) - 1.0  # > 0 exactly inside the domain r > −log 2
            w = torch.where(d > 1.0 / max_weight, 1.0 / d.clamp(min=1.0 / max_weight), max_weight)
        else:  # hellinger
            d = 1.0 + r  # > 0 exactly inside the domain r > −1
            floor = max_weight**-0.5
            w = torch.where(d > floor, 1.0 / d.clamp(min=floor) ** 2, max_weight)
        return w.clamp(max=max_weight)


def _check_gamma_alpha(gamma: float, alpha: float) -> None:
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}.")
    if not alpha > 0.0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}.")


def _padded_batch(
    logits: torch.Tensor, actions: torch.Tensor, step_mask: torch.Tensor, terminal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the shapes of a padded batch; return ``(actions long, step_mask bool, terminal bool, state_mask)`` on
    the logits' device, ``state_mask`` ``(B, T+1)`` True for the states ``u_0 .. u_{T_b}`` of each row."""
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (B, T+1, A), got {tuple(logits.shape)}.")
    B, T1, _ = logits.shape
    T = T1 - 1
    if tuple(actions.shape) != (B, T) or tuple(step_mask.shape) != (B, T):
        raise ValueError(
            f"actions and step_mask must have shape (B, T) = {(B, T)} for logits of shape "
            f"{tuple(logits.shape)}; got {tuple(actions.shape)} and {tuple(step_mask.shape)}."
        )
    if tuple(terminal.shape) != (B,):
        raise ValueError(f"terminal must have shape (B,) = ({B},), got {tuple(terminal.shape)}.")
    dev = logits.device
    step_mask = step_mask.to(dev, torch.bool)
    terminal = terminal.to(dev, torch.bool)
    actions = actions.to(dev, torch.long)
    lengths = step_mask.sum(dim=1)  # (B,)
    if not torch.equal(step_mask, torch.arange(T, device=dev)[None, :] < lengths[:, None]):
        raise ValueError("step_mask must be True exactly on a prefix of each row (steps 0 .. T_b - 1).")
    if bool((terminal & (lengths == 0)).any()):
        raise ValueError("A trajectory with no action cannot be terminal.")
    state_mask = torch.arange(T1, device=dev)[None, :] <= lengths[:, None]  # (B, T+1)
    return actions, step_mask, terminal, state_mask


def _masked_mean(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B,) over the rows where ``rows`` (B,) is True; 0 when there are none."""
    rows = rows.to(x.device, torch.bool)
    return (x * rows).sum() / rows.sum().clamp(min=1)


def _pad_steps(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x`` (B, T, ...) zero-padded (False for bool) along dim 1 to ``length``."""
    if x.shape[1] == length:
        return x
    pad = x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def _logits_taken(
    logits: torch.Tensor,
    actions: torch.Tensor,
    step_mask: torch.Tensor,
    state_mask: torch.Tensor,
    *,
    allow_masked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(LSE(l(·|u_i)) (B, T+1), l(a_i|u_i) (B, T))`` of a checked padded batch, 0 on padding: with them
    ``log π = l − LSE``, ``Q = α·l`` and ``V = α·LSE``."""
    T = actions.shape[1]
    x = logits.masked_fill(~state_mask[:, :, None], 0.0)  # (B, T+1, A) padding cannot make NaNs
    lse = torch.logsumexp(x, dim=-1).masked_fill(~state_mask, 0.0)  # (B, T+1)
    l_a = x[:, :T].gather(-1, actions.masked_fill(~step_mask, 0)[:, :, None]).squeeze(-1)  # (B, T)
    if not allow_masked and not bool(torch.isfinite(l_a[step_mask]).all()):
        raise ValueError(
            "An action has logit -inf or NaN: a backspace at the prompt boundary (masked for agents) or a "
            "non-finite model output; such a history cannot be scored."
        )
    return lse, l_a.masked_fill(~step_mask, 0.0)


# ======================================================================================================
# The loss (§2 + §3), top to bottom
# ======================================================================================================
def sequencematch_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    step_mask: torch.Tensor,
    terminal: torch.Tensor,
    expert_mask: torch.Tensor,
    *,
    in_expert: torch.Tensor,
    in_mixture: torch.Tensor,
    alpha: float = 1.0,
    gamma: float = 0.998,
    chi2_coef: float = 0.5,
    bc_weight: float = 1.0,
    divergence: Divergence = "chi2",
    max_weight: float = PHI_WEIGHT_MAX,
    terminal_mode: TerminalMode = "iq",
    kept_steps: torch.Tensor | None = None,
    bc_only: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SequenceMatch loss of ``docs/method.md`` §3 on one padded batch, from the logits of one masked forward.

    One batch holds both sets: rows with ``in_expert`` form ``E`` (expert and BC terms), rows with
    ``in_mixture`` form ``M`` (value and χ² terms); a row may be in both. Each term sums over the steps of a
    row and averages over its rows (never divided by a row's length)::

        L = − mean_E Σ_i γ^i·w_i·r_i                    expert term  (w_i = φ'(r_i), no gradient; 1 for χ²)
            + mean_M Σ_i γ^i·(V(u_i) − γ·V'(u_{i+1}))     value term
            + 1/(4c)·mean_M Σ_i γ^i·r_i²                  χ² term
            + λ_bc·L_BC,     L_BC = − mean_E Σ_i log π(a_i|u_i)

    with ``Q = α·l``, ``V = α·LSE(l)``, ``π = softmax(l)``, and the absorbing state's tails on the rows that
    end with eos when ``terminal_mode="absorbing"`` (:class:`SoftQ`). Scale identity: the first three terms
    satisfy ``L(α, c) = α·L(1, c/α)``; ``L_BC`` does not depend on ``α``. With ``bc_only`` (SequenceMatch's
    warm-up) only ``L_BC`` is computed and returned.

    Args:
        logits, actions, step_mask, terminal, alpha, gamma, terminal_mode, kept_steps: as in :func:`soft_q`.
        expert_mask: ``(B, T)`` bool, False on inserted mistakes, which the expert and BC terms leave out.
        in_expert: ``(B,)`` bool, the rows of ``E``.
        in_mixture: ``(B,)`` bool, the rows of ``M``.
        chi2_coef: ``c`` (> 0). bc_weight: ``λ_bc`` (>= 0).
        divergence, max_weight: the expert-term weight ``w = φ'(r)`` (:func:`phi_weights`).
        bc_only: compute ``L_BC`` alone: the loss is ``L_BC`` and the terms are ``{"bc"}``.

    Returns:
        ``(loss, terms)``: the scalar loss and the scalar terms ``"expert"``, ``"value"``, ``"chi2"``, ``"bc"``
        (``bc`` before its weight ``λ_bc``), plus, detached: ``"reward_expert"`` / ``"reward_mixture"`` (mean
        ``r`` per step on the kept expert steps of ``E`` / the kept steps of ``M``) and ``"cap_binds"`` (share of
        those expert steps whose weight ``φ'(r)`` is at the cap). Means over an empty set are 0.

    Raises:
        ValueError: inconsistent shapes, a step mask that is not a prefix, a hyperparameter out of range, or an
            action whose logit is ``-inf`` (a backspace taken at the prompt boundary).
    """
    _check_gamma_alpha(gamma, alpha)
    if not chi2_coef > 0:
        raise ValueError(f"chi2_coef must be > 0, got {chi2_coef!r}.")
    if not bc_weight >= 0:
        raise ValueError(f"bc_weight must be >= 0, got {bc_weight!r}.")
    logits = upcast_logits(logits)  # (B, T+1, A) float32 under bf16 autocast (as soft_q computes)
    dev = logits.device
    e_rows = in_expert.to(dev, torch.bool)  # (B,) E
    m_rows = in_mixture.to(dev, torch.bool)  # (B,) M
    expert_mask = expert_mask.to(dev, torch.bool)  # (B, T) False on inserted mistakes

    if bc_only:  # the warm-up: L_BC = − mean_E Σ_i log π(a_i|u_i), log π = l − LSE(l); nothing else computed
        actions, step_mask, terminal, state_mask = _padded_batch(logits, actions, step_mask, terminal)
        lse, l_a = _logits_taken(logits, actions, step_mask, state_mask)
        log_pi = l_a - lse[:, : actions.shape[1]]  # (B, T)
        bc = _masked_mean(-(log_pi * (step_mask & expert_mask)).sum(dim=1), e_rows)
        return bc, {"bc": bc}

    # §2  Q = α·l,  V = α·LSE(l),  V'(u_{i+1}),  r_i = Q(u_i, a_i) − γ·V'(u_{i+1}),  log π,  γ^i on kept steps
    sq = soft_q(
        logits,
        actions,
        step_mask,
        terminal,
        alpha=alpha,
        gamma=gamma,
        terminal_mode=terminal_mode,
        kept_steps=kept_steps,
    )
    #     L =  − mean_E Σ_i γ^i·w_i·r_i                    (− γ^T·w_z·V(z) after eos, absorbing)
    expert = _masked_mean(expert_term(sq, expert_mask, divergence, max_weight=max_weight), e_rows)
    #          + mean_M Σ_i γ^i·(V(u_i) − γ·V'(u_{i+1}))    (+ γ^T·V(z))
    value = _masked_mean(value_term(sq), m_rows)
    #          + 1/(4c)·mean_M Σ_i γ^i·r_i²                 (+ γ^T·(1 − γ)·V(z)²/(4c))
    chi2 = _masked_mean(chi2_term(sq, chi2_coef), m_rows)
    #          + λ_bc·mean_E Σ_i −log π(a_i|u_i)
    bc = _masked_mean(bc_term(sq, expert_mask), e_rows)
    loss = expert + value + chi2 + bc_weight * bc

    with torch.no_grad():  # monitors: mean reward per step of E's kept expert steps and of M's kept steps
        e_r, m_r = sq.kept & expert_mask & e_rows[:, None], sq.kept & m_rows[:, None]
        reward_expert = (sq.reward * e_r).sum() / e_r.sum().clamp(min=1)
        reward_mixture = (sq.reward * m_r).sum() / m_r.sum().clamp(min=1)
        binds = phi_weights(sq.reward, divergence, max_weight=max_weight) >= max_weight
        cap_binds = (binds & e_r).sum() / e_r.sum().clamp(min=1)
    terms = {"expert": expert, "value": value, "chi2": chi2, "bc": bc}
    return loss, {
        **terms,
        "reward_expert": reward_expert,
        "reward_mixture": reward_mixture,
        "cap_binds": cap_binds,
    }


# ======================================================================================================
# The per-step quantities of §2 (SoftQ) and each term per sequence
# ======================================================================================================
@dataclass(frozen=True)
class SoftQ:
    """Per-step soft-Q quantities of a padded batch of trajectories (``docs/method.md`` §2).

    Every ``(B, T)`` tensor is 0 on padding (steps ``i >= T_b``).

    Attributes:
        q: ``(B, T)`` ``Q(u_i, a_i) = α·l(a_i|u_i)``.
        v: ``(B, T+1)`` ``V(u_i) = α·logsumexp(l(·|u_i))`` over the allowed actions, ``i = 0 .. T_b``.
        v_next: ``(B, T)`` ``V'(u_{i+1})``: ``V(u_{i+1})``; after eos 0 (``"iq"``) or the absorbing state's
            value ``V(z) = V(u_T)`` (``"absorbing"``).
        reward: ``(B, T)`` recovered reward ``r_i = Q(u_i, a_i) − γ·V'(u_{i+1})``.
        log_pi: ``(B, T)`` ``log π(a_i|u_i) = (Q(u_i, a_i) − V(u_i)) / α``.
        discount: ``(B, T)`` ``γ^k`` on the kept steps (``k`` = kept steps before this one; ``γ^i`` when every
            step is kept), 0 on other steps and padding.
        step_mask: ``(B, T)`` bool, True for ``i < T_b``.
        lengths: ``(B,)`` long, ``T_b``.
        terminal: ``(B,)`` bool, True where the trajectory ended with eos.
        gamma: the discount γ.
        absorbing: ``(B,)`` bool, the rows that enter the absorbing state (``terminal`` with
            ``terminal_mode="absorbing"``; all False with ``"iq"``).
        kept: ``(B, T)`` bool, the steps the occupancy terms count (``kept_steps`` of :func:`soft_q`).
        v_end: ``(B,)`` ``V(u_T)``, the value of the state after the last action (of the absorbing state on
            ``absorbing`` rows).
        gamma_t: ``(B,)`` ``γ^T`` (``T`` = the number of kept steps).
        terminal_mode: ``"iq"`` or ``"absorbing"``.

    With ``terminal_mode="absorbing"`` the absorbing state ``z`` after eos loops on itself forever with
    ``Q(z) = V(z) = V(u_T)``, so its reward is ``r_z = (1 − γ)·V(z)`` and its discounted occupancy from step
    ``T`` on is ``γ^T/(1 − γ)``. Summed in closed form, its tail adds ``−γ^T·w_z·V(z)`` to the expert term,
    ``+γ^T·V(z)`` to the value term (which then telescopes to ``V(u_0)``) and ``γ^T·(1 − γ)·V(z)²/(4c)`` to
    the χ² term. All three are finite at ``γ = 1``.
    """

    q: torch.Tensor
    v: torch.Tensor
    v_next: torch.Tensor
    reward: torch.Tensor
    log_pi: torch.Tensor
    discount: torch.Tensor
    step_mask: torch.Tensor
    lengths: torch.Tensor
    terminal: torch.Tensor
    gamma: float
    absorbing: torch.Tensor
    kept: torch.Tensor
    v_end: torch.Tensor
    gamma_t: torch.Tensor
    terminal_mode: str


def soft_q(
    logits: torch.Tensor,
    actions: torch.Tensor,
    step_mask: torch.Tensor,
    terminal: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    allow_masked: bool = False,
    terminal_mode: TerminalMode = "iq",
    kept_steps: torch.Tensor | None = None,
) -> SoftQ:
    """Q, V, V', the recovered reward and log π of every step, from the logits of every visited state.

    Args:
        logits: ``(B, T+1, A)`` float; ``logits[b, i]`` are the logits at state ``u_i`` (``i <= T_b``), with
            ``-inf`` on disallowed actions (backspace at the prompt boundary), which ``V`` then excludes.
            Entries past ``T_b`` are ignored.
        actions: ``(B, T)`` long, the action ids (anything on padding).
        step_mask: ``(B, T)`` bool, True for ``i < T_b``: a prefix of each row.
        terminal: ``(B,)`` bool, True where the last action was eos (``V' = 0`` after it); False where the
            trajectory was cut by a time or length limit (``V'`` bootstraps from ``V(u_T)``).
        alpha: the scale α (> 0) of ``Q = α·l`` (IQ-Learn's entropy temperature; ``π = softmax(l)`` whatever
            α is).
        gamma: discount γ in (0, 1].
        allow_masked: let a step take an action whose logit is ``-inf`` (its ``Q``, ``r`` and ``log π`` are
            then ``-inf``; for scoring histories, never for a loss).
        terminal_mode: ``"iq"`` (``V' = 0`` after eos, IQ-Learn's) or ``"absorbing"`` (after eos the episode
            enters an absorbing state whose value ``V(u_T) = α·LSE(l(·|u_T))`` is read off the logits at the
            state after eos; the terms then add its infinite tail in closed form, see :class:`SoftQ`).
        kept_steps: optional ``(B, T)`` bool, the steps the trajectory counts as taken in the occupancy terms
            (default: every step). Steps left out (inserted (mistake, ``<backspace>``) pairs, which return to
            the state before them) get no discount weight, and the later steps' discount ``γ^k`` counts only
            kept steps, so a row with its pairs left out weighs exactly as its clean trajectory.

    Returns:
        :class:`SoftQ`.

    Raises:
        ValueError: inconsistent shapes, a step mask that is not a prefix, bad ``alpha`` / ``gamma``, or an
            action whose logit is ``-inf`` (a backspace taken at the prompt boundary).
    """
    _check_gamma_alpha(gamma, alpha)
    check_option("terminal_mode", terminal_mode, TERMINAL_MODES)
    logits = upcast_logits(logits)  # bf16 would round γ (0.998 -> 0.996) and the step counts of γ^k
    actions, step_mask, terminal, state_mask = _padded_batch(logits, actions, step_mask, terminal)
    dev = logits.device
    B, T = actions.shape
    lengths = step_mask.sum(dim=1)  # (B,)
    steps = torch.arange(T, device=dev)  # (T,)
    lse, l_a = _logits_taken(logits, actions, step_mask, state_mask, allow_masked=allow_masked)
    v = alpha * lse  # (B, T+1) V = α·LSE(l)
    q = alpha * l_a  # (B, T) Q = α·l
    last = steps[None, :] == (lengths - 1)[:, None]  # (B, T) the last step of each row
    if terminal_mode == "iq":
        v_next = v[:, 1:].masked_fill(last & terminal[:, None], 0.0)  # (B, T) V' = 0 after eos
    else:  # absorbing: after eos, the absorbing state's own value V(u_T) (read at the eos slot)
        v_next = v[:, 1:].masked_fill(~state_mask[:, 1:], 0.0)
    reward = (q - gamma * v_next).masked_fill(~step_mask, 0.0)  # (B, T)
    log_pi = (l_a - lse[:, :T]).masked_fill(~step_mask, 0.0)  # (B, T) log π = l − LSE(l)
    kept = step_mask if kept_steps is None else step_mask & kept_steps.to(dev, torch.bool)  # (B, T)
    rank = torch.cumsum(kept.long(), dim=1) - 1  # (B, T) index of a kept step among the kept ones
    discount = torch.pow(
        torch.tensor(gamma, dtype=logits.dtype, device=dev), rank.clamp(min=0).to(logits.dtype)
    )
    discount = discount * kept  # (B, T) γ^k on kept steps, 0 elsewhere
    rows = torch.arange(B, device=dev)
    absorbing = terminal if terminal_mode == "absorbing" else torch.zeros_like(terminal)
    v_end = v[rows, lengths]  # (B,) V(u_T)
    n_kept = kept.sum(dim=1).to(logits.dtype)  # (B,)
    gamma_t = torch.pow(torch.tensor(gamma, dtype=logits.dtype, device=dev), n_kept)  # (B,) γ^T
    return SoftQ(
        q=q,
        v=v,
        v_next=v_next,
        reward=reward,
        log_pi=log_pi,
        discount=discount,
        step_mask=step_mask,
        lengths=lengths,
        terminal=terminal,
        gamma=float(gamma),
        absorbing=absorbing,
        kept=kept,
        v_end=v_end,
        gamma_t=gamma_t,
        terminal_mode=terminal_mode,
    )


# ======================================================================================================
# §3: each term per sequence (B,)
# ======================================================================================================
def expert_term(
    sq: SoftQ,
    expert_mask: torch.Tensor,
    divergence: Divergence = "chi2",
    *,
    max_weight: float = PHI_WEIGHT_MAX,
) -> torch.Tensor:
    """``−Σ_i γ^i·w_i·r_i`` over the kept expert steps of each row, plus the absorbing tail: ``(B,)``.

    Args:
        sq: from :func:`soft_q`.
        expert_mask: ``(B, T)`` bool, False on inserted mistakes (they are left out); padding is ignored.
        divergence, max_weight: the weight ``w = φ'(r)`` of :func:`phi_weights`.

    On absorbing rows the tail ``−γ^T·w_z·V(z)`` (``w_z = φ'((1 − γ)·V(z))``) is added (:class:`SoftQ`).
    """
    keep = expert_mask.to(sq.step_mask.device, torch.bool)  # (B, T)
    w = phi_weights(sq.reward, divergence, max_weight=max_weight)  # (B, T)
    steps = -(sq.discount * w * sq.reward * keep).sum(dim=1)  # (B,)
    w_z = phi_weights((1.0 - sq.gamma) * sq.v_end, divergence, max_weight=max_weight)  # (B,)
    return steps - sq.absorbing * sq.gamma_t * w_z * sq.v_end


def value_term(sq: SoftQ) -> torch.Tensor:
    """``Σ_i γ^i·(V(u_i) − γ·V'(u_{i+1}))`` over the kept steps of each row (IQ-Learn's "value"), plus the
    absorbing tail ``γ^T·V(z)``: ``(B,)``. Equals :func:`value_term_telescoped`."""
    T = sq.q.shape[1]
    steps = (sq.discount * (sq.v[:, :T] - sq.gamma * sq.v_next)).sum(dim=1)  # (B,)
    return steps + sq.absorbing * sq.gamma_t * sq.v_end


def value_term_telescoped(sq: SoftQ) -> torch.Tensor:
    """The value term in closed form: ``V(u_0) − γ^T·V'(u_T)``, where ``V'(u_T) = 0`` after eos with
    ``terminal_mode="iq"`` and the absorbing tail cancels ``γ^T·V(u_T)`` with ``"absorbing"``: ``(B,)``."""
    v_last = sq.v_end.masked_fill(sq.terminal, 0.0)  # (B,) 0 after eos (iq), and absorbing rows cancel
    return sq.v[:, 0] - sq.gamma_t * v_last


def chi2_term(sq: SoftQ, chi2_coef: float) -> torch.Tensor:
    """``1/(4c)·Σ_i γ^i·r_i²`` over the kept steps of each row, plus the absorbing tail
    ``γ^T·(1 − γ)·V(z)²/(4c)``: ``(B,)``."""
    if not chi2_coef > 0:
        raise ValueError(f"chi2_coef must be > 0, got {chi2_coef!r}.")
    steps = (sq.discount * sq.reward.square()).sum(dim=1)  # (B,)
    tail = sq.absorbing * sq.gamma_t * (1.0 - sq.gamma) * sq.v_end.square()  # (B,)
    return (steps + tail) / (4.0 * chi2_coef)


def bc_term(sq: SoftQ, expert_mask: torch.Tensor) -> torch.Tensor:
    """Behaviour cloning, ``−Σ_i log π(a_i|u_i)`` over the expert steps of each row (every step, kept or not;
    no discount): ``(B,)``."""
    keep = sq.step_mask & expert_mask.to(sq.step_mask.device, torch.bool)  # (B, T)
    return -(sq.log_pi * keep).sum(dim=1)


# ======================================================================================================
# The agent
# ======================================================================================================
@dataclasses.dataclass(kw_only=True)
class SequenceMatchConfig(AugmentationConfig):
    """Hyperparameters of :class:`SequenceMatch`: those of :class:`~agents.common.config.AgentConfig` and of
    :class:`~agents.common.noise.AugmentationConfig` (``p_noise``, ``noise``, ``noise_margin``: the backspace
    augmentation, as BC's), plus:

    Attributes:
        gamma: discount γ in (0, 1] of the occupancy weights ``γ^i`` and of ``V'`` (default 0.998).
        alpha: the scale α > 0 of ``Q = α·l`` and ``V = α·logsumexp(l)`` (IQ-Learn's entropy temperature);
            ``π = softmax(l)`` whatever α is (default 0.01, the paper's: ``c/α = 50``, the only ratio that shapes
            the optimum of the SequenceMatch terms; α also weighs them against the BC anchor).
        chi2_coef: ``c`` > 0 of the χ² term ``1/(4c)·r²`` (default 0.5, IQ-Learn's).
        bc_weight: ``λ_bc`` >= 0 of the BC anchor after the warm-up (default 1.0; 0 turns the anchor off).
        bc_warmup_steps: ``k``: the first ``k`` updates train on ``L_BC`` alone (default 100).
        replay_refresh_interval: ``n``: the replay buffer gets fresh samples of the current model every ``n``
            updates after the warm-up (default 4: the samples an update uses are a few updates old at most).
        replay_size: trajectories the replay buffer holds; ``None`` (default) sizes it to one refresh,
            ``n_replay · replay_refresh_interval``, so every update draws from the latest samples only (memory
            ``replay_size · (max_length + max_steps) · 8`` bytes plus 25 bytes a record, allocated once).
        expert_fraction: share of expert trajectories in the mixture ``M``, in [0, 1] (default 0.5; 1 is
            IQ-Learn's offline variant, with no generation at all).
        mixture_size: trajectories ``m`` of ``M`` per update: the first ``round(expert_fraction · m)`` rows of
            ``E`` (at most ``batch_size``) and ``m − round(expert_fraction · m)`` of the model's own samples;
            ``None`` means ``batch_size``. The value and χ² terms average over ``M``, so ``m`` sets the variance
            of their estimate, not its mean, and how many model samples each update generates and trains on
            (default ``None``).
        divergence: ``"chi2"`` (default), ``"kl"``, ``"js"`` or ``"hellinger"`` (:func:`phi_weights`).
        max_phi_weight: cap on the expert-term weight ``φ'(r)`` (> 0, default 100; unused by ``"chi2"``).
        terminal: ``"absorbing"`` (default: eos enters an absorbing state with its own value, :class:`SoftQ`)
            or ``"iq"`` (``V' = 0`` after eos).
        inserted_steps: ``"bc_only"`` (default: the inserted (mistake, ``<backspace>``) pairs train the BC anchor only;
            in the other terms each expert row weighs as its clean trajectory: the steps of
            :meth:`~seqgym.data.Trajectory.mistake_steps` are left out) or ``"all"`` (the pairs are
            steps of the expert rows in every term; the mistake token itself never in the expert or BC terms).
        grad_norm_interval: every this many updates after the warm-up, log the gradient norm of each
            SequenceMatch term (``train/grad_norm_expert``, ``train/grad_norm_value``, ``train/grad_norm_chi2``),
            of their sum (``train/grad_norm_sm``) and of the weighted BC anchor (``train/grad_norm_bc``), at the
            cost of four extra backward passes (default 100; 0: never).
    """

    gamma: float = 0.998
    alpha: float = 0.01
    chi2_coef: float = 0.5
    bc_weight: float = 1.0
    bc_warmup_steps: int = 100
    replay_refresh_interval: int = 4
    replay_size: int | None = None
    expert_fraction: float = 0.5
    mixture_size: int | None = None
    divergence: Divergence = "chi2"
    max_phi_weight: float = PHI_WEIGHT_MAX
    terminal: TerminalMode = "absorbing"
    inserted_steps: InsertedSteps = "bc_only"
    grad_norm_interval: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}.")
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite, got {value!r}.")
            return float(value)

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")

        if not 0.0 < number("gamma") <= 1.0:
            raise ValueError(f"gamma (the discount) must be in (0, 1], got {self.gamma!r}.")
        for name in ("alpha", "chi2_coef", "max_phi_weight"):
            if not number(name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}.")
        if not number("bc_weight") >= 0:
            raise ValueError(f"bc_weight must be >= 0 (0 turns the BC anchor off), got {self.bc_weight!r}.")
        if not 0.0 <= number("expert_fraction") <= 1.0:
            raise ValueError(f"expert_fraction (the mix) must be in [0, 1], got {self.expert_fraction!r}.")
        integer("bc_warmup_steps", 0)
        integer("replay_refresh_interval", 1)
        if self.replay_size is not None:
            integer("replay_size", 1)
        integer("grad_norm_interval", 0)
        if self.mixture_size is not None:
            integer("mixture_size", 1)
            n_mixed = round(self.expert_fraction * self.mixture_size)
            if n_mixed > self.batch_size:
                raise ValueError(
                    f"mixture_size={self.mixture_size} with expert_fraction={self.expert_fraction} puts {n_mixed} "
                    f"rows of E in the mixture, more than batch_size={self.batch_size} holds; lower mixture_size "
                    "or raise batch_size."
                )


@dataclasses.dataclass(frozen=True)
class SequenceMatchBatch:
    """One update's data: ``expert`` (the set ``E``, augmented demonstrations), ``replay`` (the model's own
    trajectories of the mixture), and ``n_mixed_expert``: how many of ``expert`` (the first ones) join
    ``replay`` in the mixture ``M``. ``warmup`` marks a BC-only update."""

    expert: list[Trajectory]
    replay: Rollouts | None
    n_mixed_expert: int
    warmup: bool


class SequenceMatch(Agent[SequenceMatchBatch]):
    """SequenceMatch (Cundy & Ermon, ICLR 2024): imitation as occupancy matching with a soft-Q critic that is
    the LM itself, trained with IQ-Learn's non-adversarial objective, with ``<backspace>`` (``docs/method.md``
    §2-§4).

    **Q-values are the scaled logits** (§2): ``π = softmax(l)``, ``Q(u, a) = α·l(a|u)``,
    ``V(u) = α·logsumexp(l(·|u))``, recovered reward ``r_i = Q(u_i, a_i) − γ·V'(u_{i+1})``. After eos, ``V'`` is
    the value of an absorbing state read off the logits at the state after eos (``terminal="absorbing"``, the
    default) or 0 (``"iq"``); a trajectory cut by the length or step limit bootstraps ``V' = V(u_T)``.
    :meth:`reward` returns ``r`` per step. Only ``c/α`` shapes the optimum of the SequenceMatch terms
    (``L(α, c) = α·L(1, c/α)``); ``α`` also weighs them against the BC anchor.

    **The loss** (§3), from one masked forward over ``E`` and the model samples of ``M``
    (:func:`sequencematch_loss`)::

        L = − mean_E Σ_i γ^i·w_i·r_i                    # expert term   (w_i = φ'(r_i): 1 for χ²)
            + mean_M Σ_i γ^i·(V(u_i) − γ·V'(u_{i+1}))     # value term    (IQ-Learn "value")
            + 1/(4·chi2_coef)·mean_M Σ_i γ^i·r_i²         # χ² term on the mixture
            + bc_weight·L_BC                              # BC anchor, L_BC = − mean_E Σ_i log π(a_i|u_i)

    Sums over the steps of a trajectory, means over trajectories. ``E`` is ``batch_size`` augmented
    demonstrations; ``M`` is ``m = mixture_size`` trajectories (``batch_size`` when ``None``): the first
    ``round(expert_fraction·m)`` of ``E`` and the rest drawn from the replay buffer.

    **Schedule** (§3): the first ``bc_warmup_steps`` updates compute and minimise ``L_BC`` alone; then the loss
    above. From the first update after the warm-up, and every ``replay_refresh_interval`` updates, the replay
    buffer (:class:`~agents.buffers.ReplayBuffer`, by default one refresh's worth) receives
    ``n_replay · replay_refresh_interval`` fresh samples of the current policy, generated with backspace from
    prompts of the demonstrations, so each sample is used about once and is at most a few updates old
    (``train/replay_age`` logs the mean age of the samples an update uses).

    **Backspace in the data** (§4): the demonstrations are augmented with probability ``p_noise`` per position,
    with real mistakes only (tokens the env's source rules out, where it can tell); ``noise="uniform"`` once at
    construction, exactly as :class:`~agents.bc.BC` does (the same seed gives both the same data), or
    ``noise="model"`` per batch (:class:`~agents.common.noise.Augmentation`, shared with BC). With
    ``inserted_steps="bc_only"`` (default) the inserted (mistake, ``<backspace>``) pairs train the BC anchor
    alone; with ``"all"`` they are also steps of the expert rows in the other terms.

    Choices the method leaves open, made here (defaults from ``experiments/sweep.py``, on a development language
    and seeds no reported table uses):

    - ``α = 0.01`` with IQ-Learn's ``c = 0.5`` (``c/α = 50``); the absorbing terminal; inserted pairs in the
      BC anchor only; the replay refreshed every 4 updates.
    - The other divergences (``"kl"``, ``"js"``, ``"hellinger"``) only change the expert term's weight
      ``w = φ'(r)`` (IQ-Learn's ``φ`` forms, held constant in the gradient, capped at ``max_phi_weight``; the
      share of steps at the cap is logged as ``train/cap_binds``); the χ² term on the mixture stays.
    - ``L_BC`` uses ``π = softmax(l)`` and no discount: exactly :class:`~agents.bc.BC`'s loss. After the
      warm-up the loss is the §3 sum with ``λ_bc = bc_weight``; the paper's convex combination
      ``(1 − λ)·L_SM + λ·L_BC`` is the same with ``bc_weight = λ / (1 − λ)`` and the learning rate scaled by
      ``1 − λ``.
    - ``num_timesteps`` counts the expert (state, action) pairs of ``E``, as BC does, so a budget means the
      same amount of demonstration data for both; the model's own samples come on top.
    - Logged: every term (``train/expert``, ``train/value``, ``train/chi2``, ``train/bc``), the mean reward per
      step (``train/reward_expert``, ``train/reward_mixture``), ``train/cap_binds``, ``train/replay_age``, and
      every ``grad_norm_interval`` updates the gradient norm of each SequenceMatch term, of their sum and of the
      weighted anchor (``train/grad_norm_expert`` / ``_value`` / ``_chi2`` / ``_sm`` / ``_bc``), beside the
      global ``train/grad_norm`` that ``max_grad_norm`` clips.
    - Fine-tuning from a trained model: ``make_agent("sequencematch", env=..., policy=mle.policy)`` (trained in
      place; pass ``copy.deepcopy(mle.policy)`` to keep the original) or ``policy="runs/mle"`` (the policy of a
      saved agent).

    Hyperparameters: :class:`SequenceMatchConfig`.

    Example:
        >>> from agents import make_agent
        >>> agent = make_agent("sequencematch", env="seqgym/Dyck-v0", seed=0, n_demonstrations=32, batch_size=8,
        ...                    bc_warmup_steps=2, replay_refresh_interval=2, replay_size=16,
        ...                    policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2})
        >>> agent.train(n_batches=4).n_updates, len(agent.replay_buffer)
        (4, 8)
        >>> rewards = agent.reward([[]], [[0, 1, agent.vocab.eos_id]])   # r = Q − γV' per step
        >>> rewards[0].shape
        (3,)
    """

    name = "sequencematch"
    config_class = SequenceMatchConfig
    config: SequenceMatchConfig

    # -- data ----------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        self.augmentation = Augmentation.for_agent(self)
        self.train_trajectories: list[Trajectory] = self.augmentation.trajectories
        self.model_noise = self.augmentation.model_noise
        max_prompt = max([t.prompt_length for t in self.demonstrations], default=0)
        self.replay_buffer = ReplayBuffer(
            self.replay_capacity,
            max_prompt_length=max(max_prompt, self.max_length - 1),
            max_steps=self.max_steps,
        )

    @property
    def replay_capacity(self) -> int:
        """Trajectories the replay buffer holds: ``replay_size``, or one refresh's worth when it is ``None``."""
        c = self.config
        return (
            c.replay_size if c.replay_size is not None else max(1, self.n_replay * c.replay_refresh_interval)
        )

    @property
    def n_replay(self) -> int:
        """Replay trajectories per batch: ``m − round(expert_fraction · m)``, ``m = mixture_size`` (``batch_size``
        when ``None``)."""
        return self._mixture_rows(self.config.batch_size)[1]

    def _mixture_rows(self, batch_size: int) -> tuple[int, int]:
        """``(expert rows, replay rows)`` of the mixture of a batch of ``batch_size`` expert trajectories."""
        c = self.config
        m = batch_size if c.mixture_size is None else c.mixture_size
        n_mixed = round(c.expert_fraction * m)
        return min(n_mixed, batch_size), m - n_mixed  # a smaller batch than the config's: all of it

    def _dataset_size(self) -> int:
        return len(self.train_trajectories)

    def _sample_batch(self, batch_size: int, rng: np.random.Generator) -> SequenceMatchBatch:
        c = self.config
        step = self._n_updates  # index of the update this batch is for
        expert = [self.train_trajectories[int(i)] for i in self._sample_indices(batch_size, rng)]
        expert = self.augmentation.batch(expert, rng)
        warmup = step < c.bc_warmup_steps
        n_mixed, n_replay = self._mixture_rows(batch_size)
        replay = None
        if not warmup and n_replay > 0:
            if len(self.replay_buffer) == 0 or (step - c.bc_warmup_steps) % c.replay_refresh_interval == 0:
                self._refresh_replay(min(self.replay_capacity, n_replay * c.replay_refresh_interval), rng)
            replay = self.replay_buffer.sample(n_replay, rng)
        return SequenceMatchBatch(expert=expert, replay=replay, n_mixed_expert=n_mixed, warmup=warmup)

    @torch.no_grad()
    def _refresh_replay(self, n: int, rng: np.random.Generator, *, chunk: int = 256) -> None:
        """Add ``n`` fresh samples of the current policy (with backspace) to the replay buffer.

        In a multi-process run every rank draws the same ``n`` prompts, generates its contiguous share of them
        (rank ``r`` from its own generator), and the samples are gathered in rank order, so every rank's buffer
        holds the same ``n`` samples."""
        prompts = [
            self.train_trajectories[int(i)].prompt.tolist()
            for i in rng.integers(0, len(self.train_trajectories), n)
        ]
        seed = int(rng.integers(0, 2**62))
        group = self.process_group
        if group.rank:
            seed = int(np.random.SeedSequence([seed, group.rank]).generate_state(1, np.uint64)[0]) >> 2
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        mine = prompts[group.split(n)]
        samples: list[tuple[list[list[int]], list[list[int]], list[bool]]] = []
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.autocast():
                for start in range(0, len(mine), chunk):
                    part = mine[start : start + chunk]
                    out = self.policy.generate(
                        part,
                        max_steps=self.max_steps,
                        max_length=self.max_length,
                        generator=generator,
                    )
                    samples.append((part, out.actions, out.terminated))
        finally:
            self.policy.train(was_training)
        for rank_samples in group.all_gather_object(samples):
            for part, actions, terminated in rank_samples:
                self.replay_buffer.add(part, actions, terminated, born=self._n_updates)

    def _shard_batch(self, batch: SequenceMatchBatch, group: ProcessGroup) -> SequenceMatchBatch:
        """This rank's share of each part of the batch: the mixed expert rows, the other expert rows and the
        replay rows (each split evenly when its size is a multiple of the number of processes, which makes the
        mean of the ranks' losses the global loss)."""
        m = batch.n_mixed_expert
        mixed, rest = batch.expert[:m], batch.expert[m:]
        mixed = mixed[group.split(len(mixed))]
        replay = batch.replay
        if replay is not None:
            k = group.split(len(replay))
            replay = Rollouts(
                prompts=replay.prompts[k],
                actions=replay.actions[k],
                terminal=replay.terminal[k],
                born=replay.born[k] if len(replay.born) else replay.born,
            )
        return SequenceMatchBatch(
            expert=mixed + rest[group.split(len(rest))],
            replay=replay,
            n_mixed_expert=len(mixed),
            warmup=batch.warmup,
        )

    def _n_timesteps(self, batch: SequenceMatchBatch) -> int:
        return int(sum(int(np.count_nonzero(t.expert)) for t in batch.expert))

    # -- the loss ------------------------------------------------------------------------------------------
    def _loss(self, batch: SequenceMatchBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:func:`sequencematch_loss` on the masked forward of ``E`` (the first rows) and of the replay rows;
        during the warm-up, over ``E`` alone and ``L_BC`` alone. The replay rows (often much shorter than the
        demonstrations) get a forward of their own, so they are not padded to ``E``'s length."""
        c = self.config
        prompts: list[Any] = [t.prompt for t in batch.expert]  # int64 arrays
        actions: list[Any] = [t.actions for t in batch.expert]
        terminal = [t.terminal for t in batch.expert]
        n_e, n_r = len(batch.expert), 0
        out = self.policy.trajectory_logits(prompts, actions)  # masked forward of E: logits (B_E, T_E+1, A)
        logits, acts, step_mask = out.logits, out.actions, out.action_mask
        if batch.replay is not None:
            terminal += batch.replay.terminal.tolist()
            n_r = len(batch.replay)
            r_prompts: list[Any] = list(batch.replay.prompts)  # int64 arrays
            r_actions: list[Any] = list(batch.replay.actions)
            rep = self.policy.trajectory_logits(r_prompts, r_actions)
            T = max(acts.shape[1], rep.actions.shape[1])
            logits = torch.cat([_pad_steps(logits, T + 1), _pad_steps(rep.logits, T + 1)])  # (B, T+1, A)
            acts = torch.cat([_pad_steps(acts, T), _pad_steps(rep.actions, T)])  # (B, T)
            step_mask = torch.cat([_pad_steps(step_mask, T), _pad_steps(rep.action_mask, T)])  # (B, T)
        if bool(torch.isnan(logits).any() | torch.isposinf(logits).any()):
            # a blown-up model: a NaN loss, which the training loop reports as NonFiniteLossError (no step)
            nan = logits.nan_to_num(0.0, 0.0, 0.0).sum() * float("nan")
            return nan, {"nonfinite_logits": torch.tensor(float(torch.isnan(logits).sum()))}
        B, T = acts.shape
        expert_np = np.ones((B, T), dtype=bool)  # False on the inserted mistake tokens of E
        kept_np = np.ones((B, T), dtype=bool)  # the steps the occupancy terms count
        for b, t in enumerate(batch.expert):
            expert_np[b, : len(t)] = t.expert
            if c.inserted_steps == "bc_only":
                kept_np[b, : len(t)] = ~t.mistake_steps()  # each mistake up to the backspace deleting it
        dev = logits.device
        row = torch.arange(B, device=dev)
        loss, terms = sequencematch_loss(
            logits,
            acts,
            step_mask,
            torch.tensor(terminal, dtype=torch.bool, device=dev),
            torch.from_numpy(expert_np).to(dev),
            in_expert=row < n_e,  # E: the augmented demonstrations
            in_mixture=(row < batch.n_mixed_expert) | (row >= n_e),  # M: the first of E, and the replay rows
            alpha=c.alpha,
            gamma=c.gamma,
            chi2_coef=c.chi2_coef,
            bc_weight=c.bc_weight,
            divergence=c.divergence,
            max_weight=c.max_phi_weight,
            terminal_mode=c.terminal,
            kept_steps=torch.from_numpy(kept_np).to(dev),
            bc_only=batch.warmup,
        )
        if not batch.warmup and c.grad_norm_interval and self._n_updates % c.grad_norm_interval == 0:
            terms.update(self._term_grad_norms(terms))
        if batch.replay is not None and bool((batch.replay.born >= 0).any()):
            born = batch.replay.born[batch.replay.born >= 0]
            terms["replay_age"] = torch.tensor(float(np.mean(self._n_updates - born)))
        logged = {k: v.detach() for k, v in terms.items()}
        logged["warmup"] = torch.tensor(float(batch.warmup))
        logged["replay_rows"] = torch.tensor(float(n_r))
        return loss, logged

    def _term_grad_norms(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gradient norms of each SequenceMatch term (``grad_norm_expert``, ``grad_norm_value``,
        ``grad_norm_chi2``), of their sum (``grad_norm_sm``) and of the weighted BC anchor (``grad_norm_bc``):
        four extra backward passes; the graph is kept for the update's own."""
        params = [p for p in self._parameters() if p.requires_grad]
        weighted = {
            "expert": terms["expert"],
            "value": terms["value"],
            "chi2": terms["chi2"],
            "bc": self.config.bc_weight * terms["bc"],
        }
        grads = {
            name: [
                torch.zeros_like(p) if g is None else g
                for p, g in zip(params, torch.autograd.grad(t, params, retain_graph=True, allow_unused=True))
            ]
            for name, t in weighted.items()
        }
        grads["sm"] = [e + v + c for e, v, c in zip(grads["expert"], grads["value"], grads["chi2"])]

        def norm(gs: list[torch.Tensor]) -> torch.Tensor:
            return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gs]))

        return {f"grad_norm_{name}": norm(gs) for name, gs in grads.items()}

    # -- training --------------------------------------------------------------------------------------------
    def _on_learn_end(self) -> None:
        """Warn (:class:`WarmupOnlyWarning`) when every update so far fell inside the BC warm-up, i.e.
        :meth:`learn` has trained the agent exactly as :class:`~agents.bc.BC` would."""
        k = self.config.bc_warmup_steps
        if 0 < self._n_updates <= k:
            warnings.warn(
                f"SequenceMatch has run {self._n_updates} updates, all within bc_warmup_steps={k}: so far it "
                "has minimised the BC loss alone. Raise total_timesteps or lower bc_warmup_steps to train "
                "the SequenceMatch objective.",
                WarmupOnlyWarning,
                stacklevel=3,
            )

    # -- recovered reward ----------------------------------------------------------------------------------
    @torch.no_grad()
    def reward(
        self,
        prompts: Sequence[Sequence[int]],
        action_histories: Sequence[Sequence[int]],
        *,
        masked_reward: float = -20.0,
        chunk: int = 256,
    ) -> list[np.ndarray]:
        """The recovered reward ``r_i = Q(u_i, a_i) − γ·V'(u_{i+1})`` of every step of every history.

        After eos ``V'`` is 0 (``terminal="iq"``) or the absorbing state's value; a history that does not end
        with eos bootstraps from ``V`` of its last state (a
        history in progress, or one cut by a limit). Usable as an env reward by RL baselines
        (:class:`agents.sb3.RewardWrapper`).

        Args:
            prompts: ``B`` prompts.
            action_histories: ``B`` action histories (tokens, eos, backspace).
            masked_reward: the reward of a masked action (a backspace at the prompt boundary, a no-op in the
                env, whose logit and so ``r`` is ``-inf``), finite so that an RL agent that is not masked
                can still learn from it (default ``-20``, the env's log-prob floor).
            chunk: histories per forward pass.

        Returns:
            ``B`` float64 arrays, shape ``(T_b,)`` each.
        """
        if len(prompts) != len(action_histories):
            raise ValueError(
                f"reward() needs one prompt per history; got {len(prompts)} prompts and "
                f"{len(action_histories)} histories."
            )
        eos = self.vocab.eos_id
        was_training = self.policy.training
        self.policy.eval()
        out_rows: list[np.ndarray] = []
        try:
            for start in range(0, len(prompts), chunk):
                ps = [list(p) for p in prompts[start : start + chunk]]
                hs = [[int(a) for a in h] for h in action_histories[start : start + chunk]]
                keep = [b for b, h in enumerate(hs) if h]
                rewards = [np.zeros(0, dtype=np.float64) for _ in hs]
                if keep:
                    out = self.policy.trajectory_logits([ps[b] for b in keep], [hs[b] for b in keep])
                    terminal = torch.tensor([hs[b][-1] == eos for b in keep], device=out.logits.device)
                    sq = soft_q(
                        out.logits,
                        out.actions,
                        out.action_mask,
                        terminal,
                        alpha=self.config.alpha,
                        gamma=self.config.gamma,
                        allow_masked=True,
                        terminal_mode=self.config.terminal,
                    )
                    r = sq.reward.double().cpu().numpy()
                    r[np.isneginf(r)] = masked_reward
                    for k, b in enumerate(keep):
                        rewards[b] = r[k, : len(hs[b])].copy()
                out_rows.extend(rewards)
        finally:
            self.policy.train(was_training)
        return out_rows

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        state = self.replay_buffer.state_dict()
        return {
            "replay": {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()},
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        replay = state.get("replay")
        if replay:
            self.replay_buffer.load_state_dict(
                {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in replay.items()}
            )


register_agent("sequencematch", SequenceMatch)
