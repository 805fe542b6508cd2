"""SequenceMatch: imitation learning with a soft-Q critic read off the LM's logits, and ``<backspace>``.

The method of ``sequencematch.md`` §2-§4 (Cundy & Ermon, ICLR 2024, with IQ-Learn's non-adversarial
objective, Garg et al. 2021). The LM's logits ``l(a|u)`` over the env actions are soft Q-values:

    Q(u, a) = l(a|u)        V(u) = α·logsumexp(l(·|u)/α)        π(a|u) = softmax(l(·|u)/α)
    r_i = Q(u_i, a_i) − γ·V'(u_{i+1})          V'(u_T) = 0 after eos; V(u_T) at a time-limit cut

and the loss over a batch of expert (augmented) trajectories ``E`` and a mixture ``M`` of expert and
model trajectories is

    L = − mean_E Σ_i γ^i·w_i·r_i                   expert term      (w_i = φ'(r_i), no gradient; 1 for χ²)
        + mean_M Σ_i γ^i·(V(u_i) − γ·V'(u_{i+1}))    value term       (= mean_M [V(u_0) − γ^T·V'(u_T)])
        + 1/(4c)·mean_M Σ_i γ^i·r_i²                 χ² term
        + λ_bc·L_BC,   L_BC = − mean_E Σ_i log π(a_i|u_i)

Sums run over the steps of a sequence, means over sequences. Inserted mistakes (``expert`` False) are left
out of the expert and BC sums. The pure functions here (:func:`soft_q`, :func:`phi_weights`,
:func:`expert_term`, :func:`value_term`, :func:`value_term_telescoped`, :func:`chi2_term`, :func:`bc_term`,
:func:`sequencematch_loss`) take the padded tensors of one masked forward
(:class:`~agents.policy.TrajectoryLogits`) and hold the whole objective; the agent only feeds them.

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

from dataclasses import dataclass

import torch

__all__ = [
    "DIVERGENCES",
    "PHI_WEIGHT_MAX",
    "SoftQ",
    "bc_term",
    "chi2_term",
    "expert_term",
    "phi_weights",
    "sequencematch_loss",
    "soft_q",
    "value_term",
    "value_term_telescoped",
]

#: The divergences of :func:`phi_weights`: ``"chi2"`` is SequenceMatch-χ² (identity weight, the χ² term on
#: the mixture); ``"kl"``, ``"js"`` and ``"hellinger"`` weight the expert term by IQ-Learn's ``φ'(r)``.
DIVERGENCES: tuple[str, ...] = ("chi2", "kl", "js", "hellinger")

#: Cap on the expert-term weight ``φ'(r)`` (and its value where ``r`` lies outside φ's domain).
PHI_WEIGHT_MAX = 100.0


# ======================================================================================================
# §2: Q-values are the logits
# ======================================================================================================
@dataclass(frozen=True)
class SoftQ:
    """Per-step soft-Q quantities of a padded batch of trajectories (``sequencematch.md`` §2).

    Every ``(B, T)`` tensor is 0 on padding (steps ``i >= T_b``).

    Attributes:
        q: ``(B, T)`` ``Q(u_i, a_i) = l(a_i|u_i)``.
        v: ``(B, T+1)`` ``V(u_i) = α·logsumexp(l(·|u_i)/α)`` over the allowed actions, ``i = 0 .. T_b``.
        v_next: ``(B, T)`` ``V'(u_{i+1})``: ``V(u_{i+1})``, except 0 after eos (terminal).
        reward: ``(B, T)`` recovered reward ``r_i = Q(u_i, a_i) − γ·V'(u_{i+1})``.
        log_pi: ``(B, T)`` ``log π(a_i|u_i) = (Q(u_i, a_i) − V(u_i)) / α``.
        discount: ``(B, T)`` ``γ^i`` on steps, 0 on padding.
        step_mask: ``(B, T)`` bool, True for ``i < T_b``.
        lengths: ``(B,)`` long, ``T_b``.
        terminal: ``(B,)`` bool, True where the trajectory ended with eos.
        gamma: the discount γ.
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


def _check_gamma_alpha(gamma: float, alpha: float) -> None:
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}.")
    if not alpha > 0.0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}.")


def soft_q(
    logits: torch.Tensor,
    actions: torch.Tensor,
    step_mask: torch.Tensor,
    terminal: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
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
        alpha: soft-max temperature α (> 0).
        gamma: discount γ in (0, 1].

    Returns:
        :class:`SoftQ`.

    Raises:
        ValueError: inconsistent shapes, a step mask that is not a prefix, bad ``alpha`` / ``gamma``, or an
            action whose logit is ``-inf`` (a backspace taken at the prompt boundary).
    """
    _check_gamma_alpha(gamma, alpha)
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
    steps = torch.arange(T, device=dev)  # (T,)
    if not torch.equal(step_mask, steps[None, :] < lengths[:, None]):
        raise ValueError("step_mask must be True exactly on a prefix of each row (steps 0 .. T_b - 1).")
    if bool((terminal & (lengths == 0)).any()):
        raise ValueError("A trajectory with no action cannot be terminal.")
    state_mask = torch.arange(T1, device=dev)[None, :] <= lengths[:, None]  # (B, T+1)

    x = logits.masked_fill(~state_mask[:, :, None], 0.0)  # (B, T+1, A) padding cannot make NaNs
    v = alpha * torch.logsumexp(x / alpha, dim=-1)  # (B, T+1)
    v = v.masked_fill(~state_mask, 0.0)
    q = x[:, :T].gather(-1, actions.masked_fill(~step_mask, 0)[:, :, None]).squeeze(-1)  # (B, T)
    if not bool(torch.isfinite(q[step_mask]).all()):
        raise ValueError(
            "An action has logit -inf or NaN: a backspace at the prompt boundary (masked for agents) or a "
            "non-finite model output; such a history cannot be scored."
        )
    q = q.masked_fill(~step_mask, 0.0)
    last = steps[None, :] == (lengths - 1)[:, None]  # (B, T) the last step of each row
    v_next = v[:, 1:].masked_fill(last & terminal[:, None], 0.0)  # (B, T) V after eos is 0
    reward = (q - gamma * v_next).masked_fill(~step_mask, 0.0)  # (B, T)
    log_pi = ((q - v[:, :T]) / alpha).masked_fill(~step_mask, 0.0)  # (B, T)
    discount = torch.pow(torch.full((T,), gamma, dtype=logits.dtype, device=dev), steps)  # (T,)
    discount = discount[None, :] * step_mask  # (B, T)
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
    )


# ======================================================================================================
# §3: the terms, each a per-sequence sum (B,)
# ======================================================================================================
def phi_weights(reward: torch.Tensor, divergence: str, *, max_weight: float = PHI_WEIGHT_MAX) -> torch.Tensor:
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
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}.")
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


def expert_term(
    sq: SoftQ, expert_mask: torch.Tensor, divergence: str = "chi2", *, max_weight: float = PHI_WEIGHT_MAX
) -> torch.Tensor:
    """``−Σ_i γ^i·w_i·r_i`` over the expert steps of each row: ``(B,)``.

    Args:
        sq: from :func:`soft_q`.
        expert_mask: ``(B, T)`` bool, False on inserted mistakes (they are left out); padding is ignored.
        divergence, max_weight: the weight ``w = φ'(r)`` of :func:`phi_weights`.
    """
    keep = sq.step_mask & expert_mask.to(sq.step_mask.device, torch.bool)  # (B, T)
    w = phi_weights(sq.reward, divergence, max_weight=max_weight)  # (B, T)
    return -(sq.discount * w * sq.reward * keep).sum(dim=1)


def value_term(sq: SoftQ) -> torch.Tensor:
    """``Σ_i γ^i·(V(u_i) − γ·V'(u_{i+1}))`` over every step of each row (IQ-Learn's "value"): ``(B,)``."""
    T = sq.q.shape[1]
    return (sq.discount * (sq.v[:, :T] - sq.gamma * sq.v_next)).sum(dim=1)


def value_term_telescoped(sq: SoftQ) -> torch.Tensor:
    """The value term in closed form, ``V(u_0) − γ^T·V'(u_T)`` (``V'(u_T) = 0`` after eos): ``(B,)``."""
    B = sq.v.shape[0]
    rows = torch.arange(B, device=sq.v.device)
    v_last = sq.v[rows, sq.lengths].masked_fill(sq.terminal, 0.0)  # (B,)
    gamma_t = torch.pow(torch.full((B,), sq.gamma, dtype=sq.v.dtype, device=sq.v.device), sq.lengths)
    return sq.v[:, 0] - gamma_t * v_last


def chi2_term(sq: SoftQ, chi2_coef: float) -> torch.Tensor:
    """``1/(4c)·Σ_i γ^i·r_i²`` over every step of each row: ``(B,)``."""
    if not chi2_coef > 0:
        raise ValueError(f"chi2_coef must be > 0, got {chi2_coef!r}.")
    return (sq.discount * sq.reward.square()).sum(dim=1) / (4.0 * chi2_coef)


def bc_term(sq: SoftQ, expert_mask: torch.Tensor) -> torch.Tensor:
    """Behaviour cloning, ``−Σ_i log π(a_i|u_i)`` over the expert steps of each row (no γ^i): ``(B,)``."""
    keep = sq.step_mask & expert_mask.to(sq.step_mask.device, torch.bool)  # (B, T)
    return -(sq.log_pi * keep).sum(dim=1)


def _masked_mean(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B,) over the rows where ``rows`` (B,) is True; 0 when there are none."""
    rows = rows.to(x.device, torch.bool)
    return (x * rows).sum() / rows.sum().clamp(min=1)


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
    bc_weight: float = 0.5,
    divergence: str = "chi2",
    max_weight: float = PHI_WEIGHT_MAX,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SequenceMatch loss of ``sequencematch.md`` §3 on one padded batch.

    One batch holds both sets: rows with ``in_expert`` form ``E`` (expert and BC terms), rows with
    ``in_mixture`` form ``M`` (value and χ² terms); a row may be in both. Each term sums over the steps of a
    row and averages over its rows (never divided by a row's length)::

        loss = mean_E expert_term + mean_M value_term + mean_M chi2_term + bc_weight · mean_E bc_term

    Args:
        logits, actions, step_mask, terminal, alpha, gamma: as in :func:`soft_q`.
        expert_mask: ``(B, T)`` bool, False on inserted mistakes, which the expert and BC terms leave out (the
            value and χ² terms keep every step).
        in_expert: ``(B,)`` bool, the rows of ``E``.
        in_mixture: ``(B,)`` bool, the rows of ``M``.
        chi2_coef: ``c`` (> 0).
        bc_weight: ``λ_bc`` (>= 0).
        divergence, max_weight: the expert-term weighting (:func:`phi_weights`).

    Returns:
        ``(loss, terms)``: the scalar loss and the scalar terms ``"expert"``, ``"value"``, ``"chi2"``,
        ``"bc"`` (``bc`` before its weight ``λ_bc``), plus ``"reward_expert"`` / ``"reward_mixture"`` (mean
        ``r`` per step on the expert steps of ``E`` / every step of ``M``, detached). Means over an empty set
        are 0.
    """
    if not bc_weight >= 0:
        raise ValueError(f"bc_weight must be >= 0, got {bc_weight!r}.")
    sq = soft_q(logits, actions, step_mask, terminal, alpha=alpha, gamma=gamma)
    expert_mask = expert_mask.to(sq.step_mask.device, torch.bool)
    terms = {
        "expert": _masked_mean(expert_term(sq, expert_mask, divergence, max_weight=max_weight), in_expert),
        "value": _masked_mean(value_term(sq), in_mixture),
        "chi2": _masked_mean(chi2_term(sq, chi2_coef), in_mixture),
        "bc": _masked_mean(bc_term(sq, expert_mask), in_expert),
    }
    loss = terms["expert"] + terms["value"] + terms["chi2"] + bc_weight * terms["bc"]
    with torch.no_grad():
        e_steps = sq.step_mask & expert_mask & in_expert.to(sq.step_mask.device, torch.bool)[:, None]
        m_steps = sq.step_mask & in_mixture.to(sq.step_mask.device, torch.bool)[:, None]
        terms["reward_expert"] = (sq.reward * e_steps).sum() / e_steps.sum().clamp(min=1)
        terms["reward_mixture"] = (sq.reward * m_steps).sum() / m_steps.sum().clamp(min=1)
    return loss, terms
