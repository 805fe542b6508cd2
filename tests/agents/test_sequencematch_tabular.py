"""The SequenceMatch objective on a tabular MDP small enough to solve exactly.

Every sequence over the tokens ``{a, b}`` of at most 3 tokens, then eos (forced after 3 tokens), under a fixed
expert policy with full support: 15 states, exact occupancy measures by enumerating the 15 trajectories with
their probabilities. The logits are a free table (one row per state, and one per state after eos: the
absorbing states' values), so the optimum of the loss is the soft-Q optimum itself. With the data as the
mixture (IQ-Learn's offline setting), the absorbing treatment of eos must give back the expert policy; IQ-Learn's
``V' = 0`` after eos is biased when ``c/α`` is small (its optimum keeps the eos reward pinned near 0).
"""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from agents.sequencematch import chi2_term, expert_term, soft_q, value_term  # noqa: E402

A_, B_, EOS, BK = 0, 1, 2, 3  # actions: two tokens, eos, backspace (masked: the expert never deletes)
N_ACTIONS = 4
MAX_TOKENS = 3


def expert_policy(prefix: tuple[int, ...]) -> list[float]:
    """π_E(·|prefix) over (a, b, eos): full support below 3 tokens, eos forced at 3."""
    if len(prefix) == MAX_TOKENS:
        return [0.0, 0.0, 1.0]
    p_eos = [0.2, 0.35, 0.5][len(prefix)]
    p_a = 0.7 if (not prefix or prefix[-1] == B_) else 0.25
    return [(1 - p_eos) * p_a, (1 - p_eos) * (1 - p_a), p_eos]


def enumerate_trajectories() -> list[tuple[tuple[int, ...], float]]:
    """Every token sequence (without eos) and its probability under the expert."""
    out = []
    for n in range(MAX_TOKENS + 1):
        for seq in itertools.product([A_, B_], repeat=n):
            p = 1.0
            for i, tok in enumerate(seq):
                p *= expert_policy(seq[:i])[tok]
            p *= expert_policy(seq)[EOS]
            out.append((seq, p))
    return out


def solve(terminal_mode: str, *, alpha: float, chi2_coef: float, gamma: float) -> float:
    """Minimise the expected SequenceMatch terms (E = M = the expert) over a free logit table; return the
    largest |π − π_E| over the expert's states and actions."""
    trajs = enumerate_trajectories()
    prefixes = sorted({seq[:i] for seq, _ in trajs for i in range(len(seq) + 1)}, key=lambda s: (len(s), s))
    index = {s: k for k, s in enumerate(prefixes)}
    n_states = len(prefixes)
    B, T = len(trajs), MAX_TOKENS + 1
    # row b, slot i < T_b: the state before action i; slot T_b: the state after eos (its own table row)
    state_ids = torch.zeros(B, T + 1, dtype=torch.long)
    actions = torch.zeros(B, T, dtype=torch.long)
    step_mask = torch.zeros(B, T, dtype=torch.bool)
    for b, (seq, _) in enumerate(trajs):
        acts = [*seq, EOS]
        for i, a in enumerate(acts):
            state_ids[b, i] = index[seq[:i]]
            actions[b, i] = a
            step_mask[b, i] = True
        state_ids[b, len(acts)] = n_states + b  # the absorbing state after this sequence's eos
    weights = torch.tensor([p for _, p in trajs], dtype=torch.float64)  # (B,) occupancy of each trajectory
    assert abs(float(weights.sum()) - 1.0) < 1e-12

    allowed = torch.ones(n_states + B, N_ACTIONS, dtype=torch.bool)
    allowed[:, BK] = False
    for s, k in index.items():
        if len(s) == MAX_TOKENS:
            allowed[k, [A_, B_]] = False
    table = torch.zeros(n_states + B, N_ACTIONS, dtype=torch.float64, requires_grad=True)
    terminal = torch.ones(B, dtype=torch.bool)
    expert_mask = step_mask.clone()

    def loss() -> torch.Tensor:
        logits = table.masked_fill(~allowed, float("-inf"))[state_ids]  # (B, T+1, A)
        sq = soft_q(
            logits, actions, step_mask, terminal, alpha=alpha, gamma=gamma, terminal_mode=terminal_mode
        )
        per_row = expert_term(sq, expert_mask) + value_term(sq) + chi2_term(sq, chi2_coef)  # (B,)
        return (weights * per_row).sum()

    opt = torch.optim.LBFGS(
        [table],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    for _ in range(6):
        opt.step(closure)
    with torch.no_grad():
        pi = torch.softmax(table.masked_fill(~allowed, float("-inf"))[:n_states], dim=-1)  # (S, A)
        worst = 0.0
        for s, k in index.items():
            target = torch.tensor([*expert_policy(s), 0.0], dtype=torch.float64)
            worst = max(worst, float((pi[k] - target).abs().max()))
    return worst


@pytest.mark.parametrize("gamma", [1.0, 0.998])
@pytest.mark.parametrize(("alpha", "chi2_coef"), [(1.0, 0.5), (0.1, 0.5), (1.0, 5.0)])
def test_absorbing_terminal_recovers_the_expert_policy(gamma: float, alpha: float, chi2_coef: float) -> None:
    assert solve("absorbing", alpha=alpha, chi2_coef=chi2_coef, gamma=gamma) < 2e-3


def test_iq_terminal_is_biased_when_c_over_alpha_is_small() -> None:
    """V' = 0 after eos: at c/α = 0.5 the optimum is visibly off the expert; the bias shrinks as c/α grows."""
    small = solve("iq", alpha=1.0, chi2_coef=0.5, gamma=1.0)
    large = solve("iq", alpha=1.0, chi2_coef=50.0, gamma=1.0)
    assert small > 0.05
    assert large < small / 5
