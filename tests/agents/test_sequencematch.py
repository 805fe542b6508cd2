"""Tests of SequenceMatch: the loss of ``docs/method.md`` §3 against a deliberately naive per-state
reference, the identities of §2, the direction of each term's gradient, and the agent."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from agents import make_agent
from agents.bc import BC
from agents.common.noise import ModelNoise
from agents.policy import LMPolicy
from agents.sequencematch import (
    DIVERGENCES,
    PHI_WEIGHT_MAX,
    SequenceMatch,
    SequenceMatchBatch,
    WarmupOnlyWarning,
    bc_term,
    chi2_term,
    expert_term,
    phi_weights,
    sequencematch_loss,
    soft_q,
    value_term,
    value_term_telescoped,
)
from seqgym.data import Trajectory, augment
from seqgym.dynamics import states
from seqgym.vocab import Vocabulary

VOCAB = Vocabulary(["a", "b", "c"])  # a=0 b=1 c=2 eos=3 backspace=4 pad=5
BK, EOS, A = VOCAB.backspace_id, VOCAB.eos_id, VOCAB.n_actions
TOL = {"atol": 1e-5, "rtol": 1e-5}


# ---------------------------------------------------------------------------------------------------------
# A deliberately naive reference: one forward per state, Python loops and floats
# ---------------------------------------------------------------------------------------------------------
def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A 1-layer GPT-2 over the env ids (model id = env id); wide init so that rewards spread out."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(VOCAB),
        n_positions=48,
        n_embd=16,
        n_layer=1,
        n_head=2,
        initializer_range=0.5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg).eval()


def naive_state_logits(model: GPT2LMHeadModel, state: list[int], prompt_length: int) -> list[float]:
    """Logits over the env actions at one state: BOS (= eos) + state, run alone; backspace -inf at the
    prompt boundary."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[EOS, *state]])).logits[0, -1, :A]
    logits = [float(x) for x in out]
    if len(state) == prompt_length:
        logits[BK] = -math.inf
    return logits


def naive_phi(r: float, divergence: str) -> float:
    W = PHI_WEIGHT_MAX
    if divergence == "chi2":
        return 1.0
    if divergence == "kl":
        return min(math.exp(-r - 1.0), W)
    if divergence == "js":
        e = math.exp(-r)
        return W if 2.0 - e <= 0 else min(e / (2.0 - e), W)
    return W if 1.0 + r <= 0 else min(1.0 / (1.0 + r) ** 2, W)  # hellinger


def naive_terms(
    model: GPT2LMHeadModel,
    prompts: list[list[int]],
    actions: list[list[int]],
    expert: list[list[bool]],
    *,
    alpha: float,
    gamma: float,
    chi2_coef: float,
    divergence: str,
    terminal_mode: str = "iq",
    skip_inserted: bool = False,
) -> dict[str, list[float]]:
    """Per-trajectory terms of §3, state by state: ``Q = α·l``, ``V = α·LSE(l)``, ``π = softmax(l)``.

    ``skip_inserted``: leave each inserted mistake (``expert`` False) and the step after it out of the expert,
    value and χ² sums, discounting by the count of steps kept. ``terminal_mode="absorbing"``: after eos the
    absorbing state z (``V(z)`` = V of the state after eos) loops forever with reward ``(1 − γ)·V(z)``; its
    tail is summed step by step until ``γ^t`` is negligible (or in closed form at ``γ = 1``).
    """
    out: dict[str, list[float]] = {"expert": [], "value": [], "chi2": [], "bc": [], "rewards": []}
    for p, acts, exp in zip(prompts, actions, expert):
        visited = states(p, acts, VOCAB)
        terminal = bool(acts) and acts[-1] == EOS
        lg = [naive_state_logits(model, s, len(p)) for s in visited]
        lse = [math.log(sum(math.exp(x) for x in row if x > -math.inf)) for row in lg]
        V = [alpha * x for x in lse]
        e_sum = v_sum = c_sum = bc_sum = 0.0
        rewards = []
        k = 0  # kept steps so far
        for i, a in enumerate(acts):
            q = alpha * lg[i][a]
            iq_end = terminal and i == len(acts) - 1 and terminal_mode == "iq"
            v_next = 0.0 if iq_end else V[i + 1]
            r = q - gamma * v_next
            rewards.append(r)
            inserted = not exp[i] or (i > 0 and not exp[i - 1])
            if exp[i]:
                bc_sum -= lg[i][a] - lse[i]
            if skip_inserted and inserted:
                continue
            g = gamma**k
            k += 1
            v_sum += g * (V[i] - gamma * v_next)
            c_sum += g * r * r / (4.0 * chi2_coef)
            if exp[i]:
                e_sum -= g * naive_phi(r, divergence) * r
        if terminal and terminal_mode == "absorbing":
            vz = V[len(acts)]
            rz = (1.0 - gamma) * vz
            if gamma == 1.0:
                e_sum -= naive_phi(rz, divergence) * vz
                v_sum += vz
            else:
                t = k
                while gamma**t > 1e-12:
                    g = gamma**t
                    e_sum -= g * naive_phi(rz, divergence) * rz
                    v_sum += g * (vz - gamma * vz)
                    c_sum += g * rz * rz / (4.0 * chi2_coef)
                    t += 1
        out["expert"].append(e_sum)
        out["value"].append(v_sum)
        out["chi2"].append(c_sum)
        out["bc"].append(bc_sum)
        out["rewards"].append(rewards)  # type: ignore[arg-type]
    return out


def random_histories(
    rng: np.random.Generator, n: int, max_steps: int = 9
) -> tuple[list[list[int]], list[list[int]], list[list[bool]]]:
    """Random prompts and action histories with backspaces, some ending with eos, some cut."""
    prompts, actions, expert = [], [], []
    for _ in range(n):
        p = [int(x) for x in rng.integers(0, VOCAB.n_tokens, size=int(rng.integers(0, 3)))]
        acts: list[int] = []
        length = len(p)
        for _ in range(int(rng.integers(1, max_steps))):
            if length > len(p) and rng.random() < 0.3:
                acts.append(BK)
                length -= 1
            else:
                acts.append(int(rng.integers(0, VOCAB.n_tokens)))
                length += 1
        if rng.random() < 0.5:
            acts.append(EOS)
        prompts.append(p)
        actions.append(acts)
        expert.append([bool(x) for x in rng.random(len(acts)) < 0.8])
    return prompts, actions, expert


def padded(rows: list[list[int]] | list[list[bool]], dtype: torch.dtype) -> torch.Tensor:
    T = max(len(r) for r in rows)
    out = torch.zeros(len(rows), T, dtype=dtype)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    return tiny_gpt2(seed=1)


@pytest.fixture(scope="module")
def batch() -> tuple[list[list[int]], list[list[int]], list[list[bool]]]:
    return random_histories(np.random.default_rng(0), 6)


# ---------------------------------------------------------------------------------------------------------
# The loss equals the naive reference
# ---------------------------------------------------------------------------------------------------------
def kept_without_inserted(expert: list[list[bool]]) -> torch.Tensor:
    """(B, T) bool: False on each mistake (expert False) and on the step right after it."""
    mask = padded(expert, torch.bool)
    inserted = ~mask
    inserted[:, 1:] |= inserted[:, :-1].clone()
    return ~inserted


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize(("alpha", "gamma"), [(1.0, 0.998), (0.5, 0.9), (0.3, 1.0)])
@pytest.mark.parametrize("terminal_mode", ["iq", "absorbing"])
@pytest.mark.parametrize("skip_inserted", [False, True])
def test_loss_equals_naive_per_state_reference(
    model, batch, divergence: str, alpha: float, gamma: float, terminal_mode: str, skip_inserted: bool
):
    prompts, actions, expert = batch
    kept = kept_without_inserted(expert) if skip_inserted else None
    chi2_coef, bc_weight = 0.7, 0.3
    policy = LMPolicy(model=model, vocab=VOCAB)
    out = policy.trajectory_logits(prompts, actions)  # the one masked forward the agent uses
    terminal = torch.tensor([a[-1] == EOS for a in actions])
    expert_mask = padded(expert, torch.bool)
    in_expert = torch.tensor([True, True, True, True, False, False])
    in_mixture = torch.tensor([False, True, True, True, True, True])
    with torch.no_grad():
        loss, terms = sequencematch_loss(
            out.logits,
            out.actions,
            out.action_mask,
            terminal,
            expert_mask,
            in_expert=in_expert,
            in_mixture=in_mixture,
            alpha=alpha,
            gamma=gamma,
            chi2_coef=chi2_coef,
            bc_weight=bc_weight,
            divergence=divergence,
            terminal_mode=terminal_mode,
            kept_steps=kept,
        )
        sq = soft_q(
            out.logits,
            out.actions,
            out.action_mask,
            terminal,
            alpha=alpha,
            gamma=gamma,
            terminal_mode=terminal_mode,
            kept_steps=kept,
        )
    ref = naive_terms(
        model,
        prompts,
        actions,
        expert,
        alpha=alpha,
        gamma=gamma,
        chi2_coef=chi2_coef,
        divergence=divergence,
        terminal_mode=terminal_mode,
        skip_inserted=skip_inserted,
    )
    per_row = {
        "expert": expert_term(sq, expert_mask, divergence),
        "value": value_term(sq),
        "chi2": chi2_term(sq, chi2_coef),
        "bc": bc_term(sq, expert_mask),
    }
    for name, got in per_row.items():
        torch.testing.assert_close(got, torch.tensor(ref[name]), **TOL, msg=name)
    for b, r in enumerate(ref["rewards"]):
        torch.testing.assert_close(sq.reward[b, : len(r)], torch.tensor(r, dtype=torch.float32), **TOL)

    def mean(name: str, rows: torch.Tensor) -> float:
        vals = [x for x, keep in zip(ref[name], rows.tolist()) if keep]
        return sum(vals) / len(vals)

    expected = {
        "expert": mean("expert", in_expert),
        "value": mean("value", in_mixture),
        "chi2": mean("chi2", in_mixture),
        "bc": mean("bc", in_expert),
    }
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], torch.tensor(value), **TOL, msg=name)
    total = expected["expert"] + expected["value"] + expected["chi2"] + bc_weight * expected["bc"]
    torch.testing.assert_close(loss, torch.tensor(total), **TOL)


def test_reference_batch_exercises_every_case(model, batch):
    """The random batch holds backspaces, eos-terminated and cut rows, masked mistakes, and rewards on both
    sides of the JS / Hellinger domain edges, so the comparison above covers every branch."""
    prompts, actions, expert = batch
    assert any(BK in a for a in actions)
    assert {a[-1] == EOS for a in actions} == {True, False}
    assert not all(all(e) for e in expert)
    ref = naive_terms(model, prompts, actions, expert, alpha=1.0, gamma=0.998, chi2_coef=0.5, divergence="js")
    flat = [r for rs in ref["rewards"] for r in rs]  # type: ignore[union-attr]
    assert min(flat) < -1.0 and max(flat) > -math.log(2.0)


def test_phi_weights_follow_iq_learn_forms_and_cap():
    r = torch.linspace(-4.0, 4.0, 81, dtype=torch.float64)
    for div in DIVERGENCES:
        got = phi_weights(r, div)
        want = torch.tensor([naive_phi(float(x), div) for x in r], dtype=torch.float64)
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
        assert bool((got > 0).all()) and bool((got <= PHI_WEIGHT_MAX).all())
    # inside the domains, the weights are exactly IQ-Learn's phi'(r)
    x = torch.tensor([-0.5, 0.0, 0.7])
    torch.testing.assert_close(phi_weights(x, "js"), torch.exp(-x) / (2 - torch.exp(-x)))
    torch.testing.assert_close(phi_weights(x, "hellinger"), 1 / (1 + x) ** 2)
    torch.testing.assert_close(phi_weights(x, "kl"), torch.exp(-x - 1))
    xg = x.clone().requires_grad_(True)
    assert not phi_weights(xg, "kl").requires_grad
    with pytest.raises(ValueError, match="Unknown divergence"):
        phi_weights(x, "wasserstein")


# ---------------------------------------------------------------------------------------------------------
# Identities of §2
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("terminal_mode", ["iq", "absorbing"])
def test_reward_identity_and_telescoped_value(model, batch, alpha: float, terminal_mode: str):
    """r_i = α·log π(a_i|u_i) + V(u_i) − γ·V'(u_{i+1}) (the identity of §2), log π taken from an
    independent log-softmax of the logits (π = softmax(l) whatever α is); the value term equals its closed
    form (V(u_0) − γ^T·V'(u_T), or V(u_0) on rows that enter the absorbing state)."""
    prompts, actions, _ = batch
    gamma = 0.9
    out = LMPolicy(model=model, vocab=VOCAB).trajectory_logits(prompts, actions)
    terminal = torch.tensor([a[-1] == EOS for a in actions])
    with torch.no_grad():
        sq = soft_q(
            out.logits,
            out.actions,
            out.action_mask,
            terminal,
            alpha=alpha,
            gamma=gamma,
            terminal_mode=terminal_mode,
        )
        T = out.actions.shape[1]
        log_pi = torch.log_softmax(out.logits[:, :T], dim=-1).gather(-1, out.actions[:, :, None])[..., 0]
        m = out.action_mask
        rhs = alpha * log_pi + sq.v[:, :T] - gamma * sq.v_next
        torch.testing.assert_close(sq.reward[m], rhs[m], **TOL)
        torch.testing.assert_close(sq.log_pi[m], log_pi[m], **TOL)
        torch.testing.assert_close(
            sq.q[m], alpha * out.logits[:, :T].gather(-1, out.actions[:, :, None])[..., 0][m]
        )
        torch.testing.assert_close(value_term(sq), value_term_telescoped(sq), **TOL)
        for b, a in enumerate(actions):
            t = len(a)
            if terminal_mode == "absorbing" and a[-1] == EOS:
                torch.testing.assert_close(value_term(sq)[b], sq.v[b, 0], **TOL)
            # iq: nothing is bootstrapped after eos; cut rows (and the absorbing state) bootstrap V(u_T)
            want = 0.0 if (a[-1] == EOS and terminal_mode == "iq") else float(sq.v[b, t])
            assert float(sq.v_next[b, t - 1]) == pytest.approx(want)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    alpha=st.floats(0.01, 10.0),
    chi2_coef=st.floats(0.05, 50.0),
    gamma=st.sampled_from([0.9, 0.998, 1.0]),
    terminal_mode=st.sampled_from(["iq", "absorbing"]),
    divergence=st.sampled_from(list(DIVERGENCES)),
)
def test_scale_identity_on_random_logits(
    seed: int, alpha: float, chi2_coef: float, gamma: float, terminal_mode: str, divergence: str
):
    """L(α, c) = α·L(1, c/α) for the SequenceMatch terms on the same random logits (§2): only c/α shapes
    the optimum. The identity is exact for χ² only (the φ-weighted divergences weigh by φ'(α·r), not φ'(r));
    for every divergence the BC anchor does not depend on α."""
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 6
    logits = torch.randn(B, T + 1, A, generator=g, dtype=torch.float64) * 3.0
    actions = torch.randint(0, A - 1, (B, T), generator=g)
    lengths = torch.tensor([6, 3, 1, 5])
    step_mask = torch.arange(T)[None, :] < lengths[:, None]
    terminal = torch.tensor([True, False, True, True])
    actions[0, 5], actions[2, 0], actions[3, 4] = EOS, EOS, EOS
    expert_mask = torch.rand(B, T, generator=g) < 0.8
    rows = torch.ones(B, dtype=torch.bool)

    def terms(a: float, c: float, bc_weight: float) -> dict[str, torch.Tensor]:
        return sequencematch_loss(
            logits,
            actions,
            step_mask,
            terminal,
            expert_mask,
            in_expert=rows,
            in_mixture=rows,
            alpha=a,
            gamma=gamma,
            chi2_coef=c,
            bc_weight=bc_weight,
            divergence=divergence,
            terminal_mode=terminal_mode,
        )[1]

    def sm_terms(a: float, c: float) -> torch.Tensor:
        t = terms(a, c, 0.0)
        return t["expert"] + t["value"] + t["chi2"]

    if divergence == "chi2":
        torch.testing.assert_close(sm_terms(alpha, chi2_coef), alpha * sm_terms(1.0, chi2_coef / alpha))
    with_bc, bc_at_1 = terms(alpha, chi2_coef, 1.0), terms(1.0, chi2_coef, 1.0)
    torch.testing.assert_close(with_bc["bc"], bc_at_1["bc"])  # the BC anchor does not depend on α


def test_soft_q_rejects_bad_input():
    logits = torch.zeros(1, 3, A)
    logits[0, 0, BK] = -math.inf
    ok = {"alpha": 1.0, "gamma": 0.9}
    acts, mask, term = torch.tensor([[0, 1]]), torch.tensor([[True, True]]), torch.tensor([False])
    with pytest.raises(ValueError, match="gamma"):
        soft_q(logits, acts, mask, term, alpha=1.0, gamma=0.0)
    with pytest.raises(ValueError, match="alpha"):
        soft_q(logits, acts, mask, term, alpha=0.0, gamma=0.9)
    with pytest.raises(ValueError, match="prefix"):
        soft_q(logits, acts, torch.tensor([[False, True]]), term, **ok)
    with pytest.raises(ValueError, match="shape"):
        soft_q(logits, acts[:, :1], mask, term, **ok)
    with pytest.raises(ValueError, match="prompt boundary"):
        soft_q(logits, torch.tensor([[BK, 1]]), mask, term, **ok)


# ---------------------------------------------------------------------------------------------------------
# Gradients point where the terms demand (2-token toy, free logits: one parameter per state and action)
# ---------------------------------------------------------------------------------------------------------
TOY = Vocabulary(["a", "b"])  # a=0 b=1 eos=2 backspace=3
# "a", then a mistake "a" and its backspace, then "b", eos
TOY_ACTIONS = torch.tensor([[0, 0, 3, 1, 2]])
TOY_EXPERT = torch.tensor([[True, False, True, True, True]])
TOY_STEPS = torch.ones(1, 5, dtype=torch.bool)


def toy_logits(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 6, TOY.n_actions, generator=g)
    x[0, 0, TOY.backspace_id] = -math.inf  # u_0 is the (empty) prompt
    return x.requires_grad_(True)


def sgd_step(x: torch.Tensor, loss: torch.Tensor, lr: float = 0.1) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return (x - lr * g.nan_to_num(0.0)).detach()


def test_expert_term_step_raises_expert_q_and_lowers_the_mistake():
    x = toy_logits()
    sq = soft_q(x, TOY_ACTIONS, TOY_STEPS, torch.tensor([True]), alpha=1.0, gamma=0.998)
    y = sgd_step(x, expert_term(sq, TOY_EXPERT).sum())
    acts = TOY_ACTIONS[0].tolist()
    for i, a in enumerate(acts):
        dq = float(y[0, i, a] - x.detach()[0, i, a])
        if TOY_EXPERT[0, i]:
            assert dq > 0, f"expert step {i}: Q must rise"
        else:
            assert dq < 0, "the inserted mistake's Q must not rise (it only lowers via V' of the step before)"
    # the state after eos is terminal: its logits get no gradient
    assert torch.equal(y[0, 5], x[0, 5].detach())


def test_value_term_step_lowers_v0_and_touches_only_the_ends():
    for terminal in (True, False):
        x = toy_logits(1)
        sq = soft_q(x, TOY_ACTIONS, TOY_STEPS, torch.tensor([terminal]), alpha=1.0, gamma=0.9)
        (g,) = torch.autograd.grad(value_term(sq).sum(), x)
        g = g.nan_to_num(0.0)
        assert float(g[0, 0].sum()) > 0  # gradient descent lowers V(u_0)
        assert torch.allclose(g[0, 1:5], torch.zeros_like(g[0, 1:5]), atol=1e-6)  # telescoped away
        if terminal:
            assert torch.equal(g[0, 5], torch.zeros_like(g[0, 5]))
        else:
            assert float(g[0, 5].sum()) < 0  # a cut trajectory raises V(u_T) (it bootstraps)


def test_chi2_term_step_shrinks_rewards_and_bc_ignores_the_mistake():
    x = toy_logits(2)
    term = torch.tensor([True])
    sq = soft_q(x, TOY_ACTIONS, TOY_STEPS, term, alpha=1.0, gamma=0.998)
    before = chi2_term(sq, 0.5).item()
    y = sgd_step(x, chi2_term(sq, 0.5).sum(), lr=0.01)
    after = chi2_term(soft_q(y, TOY_ACTIONS, TOY_STEPS, term, alpha=1.0, gamma=0.998), 0.5).item()
    assert after < before
    sq = soft_q(x, TOY_ACTIONS, TOY_STEPS, term, alpha=1.0, gamma=0.998)
    (g,) = torch.autograd.grad(bc_term(sq, TOY_EXPERT).sum(), x)
    assert torch.equal(g[0, 1], torch.zeros_like(g[0, 1]))  # the mistake's state-action is masked out
    assert float(g[0, 2, TOY.backspace_id]) < 0  # ... the backspace after it is learnt


def test_full_loss_step_raises_expert_log_probabilities():
    """One small SGD step of the whole loss on a toy GPT-2 raises log π of every expert action and lowers
    that of the inserted mistake."""
    policy = LMPolicy.from_config(TOY, n_layer=1, n_embd=16, n_head=2, n_positions=16, seed=0)
    opt = torch.optim.SGD(policy.parameters(), lr=1e-3)
    prompts, acts, terminal = [[]], [TOY_ACTIONS[0].tolist()], torch.tensor([True])

    def log_pi() -> torch.Tensor:
        with torch.no_grad():
            out = policy.trajectory_logits(prompts, acts)
            return soft_q(out.logits, out.actions, out.action_mask, terminal, alpha=1.0, gamma=0.998).log_pi[
                0
            ]

    before = log_pi()
    out = policy.trajectory_logits(prompts, acts)
    loss, _ = sequencematch_loss(
        out.logits,
        out.actions,
        out.action_mask,
        terminal,
        TOY_EXPERT,
        in_expert=torch.tensor([True]),
        in_mixture=torch.tensor([True]),
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    change = log_pi() - before
    assert bool((change[TOY_EXPERT[0]] > 0).all())
    assert float(change[1]) < 0


# ---------------------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------------------

DYCK = "seqgym/Dyck-v0"
TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}
FAST = {"n_demonstrations": 16, "batch_size": 4, "policy_kwargs": TINY}


def tiny_agent(**hp) -> SequenceMatch:
    agent = make_agent("sequencematch", env=DYCK, seed=0, **{**FAST, **hp})
    assert isinstance(agent, SequenceMatch)
    return agent


@pytest.mark.parametrize(
    ("hp", "match"),
    [
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"chi2_coef": 0.0}, "chi2_coef"),
        ({"bc_weight": -0.1}, "bc_weight"),
        ({"max_phi_weight": 0.0}, "max_phi_weight"),
        ({"expert_fraction": -0.1}, "expert_fraction"),
        ({"expert_fraction": 1.5}, "expert_fraction"),
        ({"divergence": "wasserstein"}, "Unknown divergence"),
        ({"noise": "gaussian"}, "noise"),
        ({"p_noise": 2.0}, "p_noise"),
        ({"replay_size": 0}, "replay_size"),
        ({"replay_refresh_interval": 0}, "replay_refresh_interval"),
        ({"bc_warmup_steps": -1}, "bc_warmup_steps"),
        ({"mixture_size": 0}, "mixture_size"),
        ({"mixture_size": 2.5}, "mixture_size"),
        ({"mixture_size": 12}, "mixture_size=12 with expert_fraction=0.5 puts 6 rows of E"),  # batch 4
    ],
)
def test_bad_hyperparameters_raise_at_construction(hp: dict, match: str):
    with pytest.raises(ValueError, match=match):
        make_agent("sequencematch", env=DYCK, seed=0, **{**FAST, **hp})


def test_non_numeric_hyperparameters_raise():
    with pytest.raises(TypeError, match="gamma"):
        make_agent("sequencematch", env=DYCK, seed=0, gamma="high", **FAST)
    with pytest.raises(TypeError, match="mask_mistakes"):
        make_agent("sequencematch", env=DYCK, seed=0, mask_mistakes="yes", **FAST)


@pytest.mark.parametrize("noise", ["uniform", "model"])
def test_warmup_is_exactly_bc(noise: str):
    """The first bc_warmup_steps updates minimise L_BC alone on the same augmented data as BC (model noise:
    the same mistakes, drawn per batch from the same policy with the same generator)."""
    kw = {**FAST, "p_noise": 0.3, "noise": noise}
    sm = make_agent("sequencematch", env=DYCK, seed=3, bc_warmup_steps=3, **kw)
    bc = make_agent("bc", env=DYCK, seed=3, **kw)
    assert isinstance(bc, BC)
    assert [t.actions.tolist() for t in sm.train_trajectories] == [
        t.actions.tolist() for t in bc.train_trajectories
    ]
    sm.train(n_batches=3)
    bc.train(n_batches=3)
    for p, q in zip(sm.policy.parameters(), bc.policy.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    assert sm.num_timesteps == bc.num_timesteps
    assert len(sm.replay_buffer) == 0  # no generation during the warm-up


def test_learn_warns_when_it_never_leaves_the_bc_warmup():
    agent = tiny_agent(bc_warmup_steps=1_000)
    with pytest.warns(WarmupOnlyWarning, match=r"all within bc_warmup_steps=1000"):
        agent.learn(20)
    past = tiny_agent(bc_warmup_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        past.learn(1_000)  # several updates: the last ones train the full objective
    assert past._n_updates > 1


def test_replay_refresh_schedule_and_memory_bound():
    agent = tiny_agent(bc_warmup_steps=2, replay_refresh_interval=3, replay_size=5)
    assert agent.n_replay == 2  # batch 4, expert_fraction 0.5
    nbytes = agent.replay_buffer.nbytes
    assert nbytes == 5 * (agent.max_length - 1 + agent.max_steps) * 8 + 5 * 25
    agent.train(n_batches=2)
    assert agent.replay_buffer.n_added == 0
    agent.train(n_batches=7)  # updates 2..8: refreshes before updates 2, 5, 8, min(5, 2 * 3) = 5 samples each
    assert agent.replay_buffer.n_added == 15
    assert len(agent.replay_buffer) == 5 and agent.replay_buffer.nbytes == nbytes
    v = agent.vocab
    rollouts = agent.replay_buffer.all()
    assert set(rollouts.born.tolist()) <= {5, 8}  # generated by the models of the last two refreshes
    for prompt, acts, term in zip(rollouts.prompts, rollouts.actions, rollouts.terminal):
        assert len(prompt) == 0 and 1 <= len(acts) <= agent.max_steps
        assert bool(term) == (int(acts[-1]) == v.eos_id)


def test_mixture_size_sets_the_replay_rows_and_the_mixed_expert_rows():
    """M = the first round(f·m) rows of E and m − round(f·m) model samples; the replay buffer holds one refresh."""
    agent = tiny_agent(bc_warmup_steps=1, mixture_size=2, replay_refresh_interval=3)  # batch 4, f = 0.5
    assert agent.n_replay == 1 and agent.replay_capacity == 3
    agent.train(n_batches=1)
    batch = agent.sample_batch()
    assert isinstance(batch, SequenceMatchBatch) and batch.replay is not None
    assert len(batch.expert) == 4 and batch.n_mixed_expert == 1 and len(batch.replay) == 1
    assert agent.replay_buffer.n_added == 3
    wide = tiny_agent(bc_warmup_steps=0, mixture_size=8)  # all 4 rows of E and 4 samples
    assert wide.n_replay == 4
    b = wide.sample_batch()
    assert isinstance(b, SequenceMatchBatch) and b.replay is not None
    assert b.n_mixed_expert == 4 and len(b.replay) == 4 and len(b.expert) == 4
    assert math.isfinite(wide.train_step(b).loss)


def test_offline_mix_needs_no_generation_and_every_term_is_logged():
    agent = tiny_agent(bc_warmup_steps=1, expert_fraction=1.0)
    seen: list[dict] = []

    def grab(local_vars: dict, _globals: dict) -> bool:
        seen.append({k: float(v) for k, v in local_vars["terms"].items()})
        return True

    agent.train(n_batches=3, callback=grab)
    assert agent.n_replay == 0 and len(agent.replay_buffer) == 0
    for terms in seen:
        assert all(math.isfinite(x) for x in terms.values())
    assert [t["warmup"] for t in seen] == [1.0, 0.0, 0.0]
    assert {"expert", "value", "chi2", "reward_expert"}.isdisjoint(seen[0])  # the warm-up computes L_BC alone
    assert "bc" in seen[0]
    for terms in seen[1:]:
        assert {"expert", "value", "chi2", "bc", "reward_expert", "reward_mixture", "warmup"} <= set(terms)


def test_bc_only_loss_is_the_bc_term_of_the_full_loss(model, batch):
    """The warm-up's loss (bc_only) is exactly the BC term the full loss computes, and nothing else."""
    prompts, actions, expert = batch
    out = LMPolicy(model=model, vocab=VOCAB).trajectory_logits(prompts, actions)
    args = (out.logits, out.actions, out.action_mask, torch.tensor([a[-1] == EOS for a in actions]))
    rows = torch.ones(len(actions), dtype=torch.bool)
    kw = {"in_expert": rows, "in_mixture": rows, "alpha": 0.5, "gamma": 0.9}
    with torch.no_grad():
        _, full = sequencematch_loss(*args, padded(expert, torch.bool), **kw)
        loss, terms = sequencematch_loss(*args, padded(expert, torch.bool), bc_only=True, **kw)
    assert set(terms) == {"bc"}
    torch.testing.assert_close(loss, full["bc"])


def test_bf16_logits_are_scored_in_float32(model, batch):
    """Under bf16 autocast the logits come back float32, and bf16 logits given to the loss are upcast: the
    discount keeps γ = 0.998 and exact step counts (bf16 would give 0.996 and round counts above 256)."""
    prompts, actions, expert = batch
    policy = LMPolicy(model=model, vocab=VOCAB)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = policy.trajectory_logits(prompts, actions)
    assert out.logits.dtype == torch.float32
    low = out.logits.to(torch.bfloat16)
    args = (out.actions, out.action_mask, torch.tensor([a[-1] == EOS for a in actions]))
    rows = torch.ones(len(actions), dtype=torch.bool)
    kw = {"in_expert": rows, "in_mixture": rows, "alpha": 0.5, "gamma": 0.998, "terminal_mode": "absorbing"}
    loss_low, _ = sequencematch_loss(low, *args, padded(expert, torch.bool), **kw)
    loss_full, _ = sequencematch_loss(low.float(), *args, padded(expert, torch.bool), **kw)
    assert loss_low.dtype == torch.float32
    torch.testing.assert_close(loss_low, loss_full, atol=0.0, rtol=0.0)
    long = soft_q(
        torch.zeros(1, 301, A, dtype=torch.bfloat16),
        torch.zeros(1, 300, dtype=torch.long),
        torch.ones(1, 300, dtype=torch.bool),
        torch.tensor([False]),
        alpha=0.01,
        gamma=0.998,
    )
    torch.testing.assert_close(
        long.discount[0, [100, 257, 299]], torch.tensor([0.998**k for k in (100, 257, 299)])
    )
    torch.testing.assert_close(long.gamma_t, torch.tensor([0.998**300]))


def test_bc_only_leaves_out_each_detour_from_a_mistake_to_the_backspace_that_deletes_it():
    """With ``inserted_steps="bc_only"`` a demonstration whose mistakes are nested (two wrong tokens, then two
    backspaces) gives the expert, value and χ² terms of its clean trajectory, as augment's adjacent pairs do."""
    agent = tiny_agent(bc_warmup_steps=0, expert_fraction=1.0, p_noise=0.0)
    vocab = agent.vocab
    o, c = vocab.encode("("), vocab.encode(")")
    assert len(o) == len(c) == 1
    clean = Trajectory.from_completion([], [o[0], c[0], vocab.eos_id], vocab=vocab)
    nested = Trajectory(
        prompt=[],
        actions=[o[0], c[0], o[0], vocab.backspace_id, vocab.backspace_id, c[0], vocab.eos_id],
        terminal=True,
        expert=[True, False, False, True, True, True, True],
        vocab=vocab,
    )
    assert nested.final() == clean.final()
    _, want = agent._loss(SequenceMatchBatch(expert=[clean], replay=None, n_mixed_expert=1, warmup=False))
    _, got = agent._loss(SequenceMatchBatch(expert=[nested], replay=None, n_mixed_expert=1, warmup=False))
    for term in ("expert", "value", "chi2"):
        torch.testing.assert_close(got[term], want[term], **TOL)


def test_gradient_norm_of_each_term_is_logged_and_the_parts_add_up():
    """Every ``grad_norm_interval`` updates: the norm of each term's gradient; the SequenceMatch sum's norm is
    that of the loss's own gradient when the anchor weighs 0, and the anchor's scales with its weight."""
    agent = tiny_agent(bc_warmup_steps=0, grad_norm_interval=1, bc_weight=0.0, replay_size=8)
    params = [p for p in agent.policy.parameters() if p.requires_grad]
    batch = agent.sample_batch()
    loss, terms = agent._loss(batch)
    names = [f"grad_norm_{k}" for k in ("expert", "value", "chi2", "sm", "bc")]
    assert set(names) <= set(terms)
    grads = [g for g in torch.autograd.grad(loss, params, allow_unused=True) if g is not None]
    full = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    torch.testing.assert_close(terms["grad_norm_sm"], full, **TOL)
    parts = sum(float(terms[f"grad_norm_{k}"]) for k in ("expert", "value", "chi2"))
    assert 0.0 < float(terms["grad_norm_sm"]) <= parts + 1e-6
    assert float(terms["grad_norm_bc"]) == 0.0
    agent.config.bc_weight = 2.0
    _, twice = agent._loss(batch)
    agent.config.bc_weight = 1.0
    _, once = agent._loss(batch)
    assert float(once["grad_norm_bc"]) > 0
    torch.testing.assert_close(twice["grad_norm_bc"], 2 * once["grad_norm_bc"], **TOL)
    for k in ("expert", "value", "chi2", "sm"):
        torch.testing.assert_close(twice[f"grad_norm_{k}"], terms[f"grad_norm_{k}"], **TOL)


def test_train_step_is_the_update_learn_takes():
    """``sample_batch`` + ``train_step`` reproduce ``train(n_batches=...)`` exactly (same seed), warm-up and
    replay refresh included."""
    a = tiny_agent(bc_warmup_steps=1, replay_size=8)
    b = tiny_agent(bc_warmup_steps=1, replay_size=8)
    a.train(n_batches=3)
    steps = [b.train_step(b.sample_batch()) for _ in range(3)]
    assert b.n_updates == 3 and b.num_timesteps == a.num_timesteps == sum(s.n_timesteps for s in steps)
    for p, q in zip(a.policy.parameters(), b.policy.parameters()):
        torch.testing.assert_close(p, q, atol=0.0, rtol=0.0)
    assert float(steps[0].terms["warmup"]) == 1.0 and float(steps[-1].terms["warmup"]) == 0.0


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_every_divergence_trains(divergence: str):
    agent = tiny_agent(bc_warmup_steps=0, divergence=divergence, replay_size=8)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.train(n_batches=2)
    assert any(not torch.equal(p, q) for p, q in zip(agent.policy.parameters(), before))


@pytest.mark.parametrize("terminal", ["iq", "absorbing"])
def test_reward_is_q_minus_gamma_v_next_state_by_state(terminal: str):
    agent = tiny_agent(gamma=0.9, alpha=0.3, terminal=terminal)
    v = agent.vocab
    bk, eos, pol = v.backspace_id, v.eos_id, agent.policy
    histories = [[0, 1, bk, 2, 3, eos], [0, 0, 1], [2]]
    rewards = agent.reward([[], [], []], histories)
    for hist, r in zip(histories, rewards):
        assert r.dtype == np.float64 and r.shape == (len(hist),)
        visited = states([], hist, v)
        with torch.no_grad():
            lg = pol.state_logits(visited, [0] * len(visited))  # (T+1, A) one plain forward per state
        values = 0.3 * torch.logsumexp(lg, dim=-1)  # V = α·LSE(l)
        for i, a in enumerate(hist):
            after_eos = a == eos and i == len(hist) - 1
            v_next = 0.0 if (after_eos and terminal == "iq") else float(values[i + 1])
            assert r[i] == pytest.approx(0.3 * float(lg[i, a]) - 0.9 * v_next, abs=1e-5)  # Q = α·l
    assert agent.reward([[]], [[]])[0].shape == (0,)
    # a backspace at the prompt boundary (masked for agents, a no-op in the env) gets a finite reward
    noop = agent.reward([[]], [[bk, 0]], masked_reward=-7.0)[0]
    assert noop[0] == -7.0 and np.isfinite(noop[1])
    with pytest.raises(ValueError, match="one prompt per history"):
        agent.reward([[]], [[0], [1]])


def test_recovered_reward_drives_the_sb3_reward_wrapper():
    from agents.sb3 import RewardWrapper
    from seqgym.env import SequenceEnv
    from seqgym.sources.dyck import Dyck

    agent = tiny_agent()
    env = RewardWrapper(SequenceEnv(Dyck(), max_length=17, max_steps=24), agent)
    env.reset(seed=0)
    history, total = [0, 1, agent.vocab.eos_id], 0.0
    for a in history:
        _, r, terminated, _, _ = env.step(a)
        total += r
    assert terminated
    assert total == pytest.approx(float(agent.reward([[]], [history])[0].sum()), abs=1e-5)


class _FixedPolicy:
    """A policy stand-in whose logits at every state strongly favour token ``favourite``; counts forwards."""

    def __init__(self, vocab: Vocabulary, favourite: int) -> None:
        self.vocab, self.favourite, self.calls, self.training = vocab, favourite, 0, False

    def eval(self) -> None: ...

    def train(self, mode: bool = True) -> None: ...

    def trajectory_logits(self, prompts, actions):
        self.calls += 1
        B, T = len(actions), max(len(a) for a in actions)
        logits = torch.zeros(B, T + 1, self.vocab.n_actions)
        logits[..., self.favourite] = 20.0
        logits[..., 0] = 10.0  # the runner-up
        return type("Out", (), {"logits": logits})()


def test_model_noise_samples_the_models_mistakes_in_one_forward():
    v = VOCAB  # a b c eos bksp
    clean = [Trajectory.from_completion([], [0, 1, 2, v.eos_id], vocab=v) for _ in range(3)]
    policy = _FixedPolicy(v, favourite=2)
    noise = ModelNoise(policy)
    noise.prepare(clean)
    assert policy.calls == 1
    noisy = augment(clean, 1.0, np.random.default_rng(0), noise)
    assert policy.calls == 1  # prepared: no further forward
    for t in noisy:
        wrong = t.actions[~t.expert].tolist()
        # before a, b, eos the model's favourite "c" is wrong; before "c" itself the runner-up "a" is taken
        assert wrong == [2, 2, 0, 2]
    noise.prepare([])
    augment(clean[:1], 1.0, np.random.default_rng(0), noise)
    assert policy.calls == 2  # an unprepared trajectory costs its own forward


def test_augment_reuses_its_candidates_for_model_noise_and_draws_the_same(monkeypatch):
    """With a source, augment passes the mistake candidates it computed to ModelNoise.from_candidates
    (no second pass over the source) and gets what calling the noise would give; a subclass that overrides
    ``__call__`` alone is called as it is."""
    import seqgym.data as data
    from seqgym.sources.dyck import Dyck

    src = Dyck()
    clean = data.collect(src, 40, np.random.default_rng(0))
    policy = LMPolicy.from_config(src.vocab, n_layer=1, n_embd=16, n_head=2, n_positions=64, seed=0)
    noise = ModelNoise(policy, source=src)
    calls = []
    real = data.mistake_candidates
    monkeypatch.setattr(data, "mistake_candidates", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr("agents.common.noise.mistake_candidates", data.mistake_candidates)

    class Direct(ModelNoise):
        def __call__(self, trajectory, positions, rng):  # draws otherwise as far as augment can tell
            return super().__call__(trajectory, positions, rng)

    noise.prepare(clean)
    fast = augment(clean, 0.4, np.random.default_rng(1), noise, source=src)
    n_fast = len(calls)
    direct = Direct(policy, source=src)
    direct.prepare(clean)
    slow = augment(clean, 0.4, np.random.default_rng(1), direct, source=src)
    assert fast == slow and sum(t.n_mistakes for t in fast) > 20
    assert n_fast == len(clean)  # one candidate pass per trajectory, by augment
    assert len(calls) - n_fast > len(clean)  # the direct calls compute them again
    assert data.inserted_allowed_share(fast, src) == 0.0


def test_model_noise_agent_trains():
    agent = tiny_agent(noise="model", p_noise=0.5, bc_warmup_steps=1, replay_size=8)
    agent.train(n_batches=2)
    assert agent.n_updates == 2 and agent.num_timesteps > 0


def test_generation_samples_from_softmax_of_logits_whatever_alpha():
    """π = softmax(l): α scales Q and V, not the policy, so the agent samples at temperature 1."""
    agent = tiny_agent(alpha=2.0)
    out = agent.generate(prompts=[[]] * 4, seed=5)
    ref = agent.policy.generate(
        [[]] * 4,
        max_steps=agent.max_steps,
        max_length=agent.max_length,
        temperature=1.0,
        generator=torch.Generator().manual_seed(5),
    )
    assert out.actions == ref.actions
    obs = np.full((2, agent.max_length), agent.vocab.pad_id)
    actions, _ = agent.predict(obs, deterministic=True)
    assert actions.shape == (2,) and "state_logits" not in vars(agent.policy)


def test_save_load_resumes_with_the_replay_buffer(tmp_path):
    a = tiny_agent(bc_warmup_steps=1, replay_refresh_interval=2, replay_size=6)
    a.train(n_batches=3)
    a.save(tmp_path / "sm")
    b = SequenceMatch.load(tmp_path / "sm")
    assert [x.tolist() for x in b.replay_buffer.all().actions] == [
        x.tolist() for x in a.replay_buffer.all().actions
    ]
    a.train(n_batches=2)
    b.train(n_batches=2)
    for p, q in zip(a.policy.parameters(), b.policy.parameters()):
        torch.testing.assert_close(p, q)


# ---------------------------------------------------------------------------------------------------------
# Learning on Dyck (slow)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sequencematch_is_valid_at_least_as_often_as_bc_on_dyck():
    """Same budget (60,000 expert pairs), demonstrations, augmentation and seeds for both agents; 200 samples
    each (temperature 1, backspace allowed) judged by ``Dyck.is_valid``; SequenceMatch with the library defaults
    (chosen on a development Markov language, ``experiments/sweep.py``), nothing tuned here.
    """
    import gymnasium as gym

    from seqgym.data import collect
    from seqgym.metrics import validity_rate
    from seqgym.registration import register_envs

    register_envs()
    common = {
        "learning_rate": 3e-3,
        "batch_size": 16,
        "p_noise": 0.1,
        # the studies' model and optimiser (GPT-2 at 3e-3, batch 16)
        "policy_kwargs": {"architecture": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2},
    }
    extra: dict[str, dict[str, float]] = {"sequencematch": {}, "bc": {}}
    validity: dict[str, list[float]] = {"bc": [], "sequencematch": []}
    for seed in range(5):
        for name in ("bc", "sequencematch"):
            env = gym.make(DYCK)
            source = env.unwrapped.source  # type: ignore[attr-defined]
            demos = collect(source, 200, np.random.default_rng(100 + seed))
            agent = make_agent(name, env=env, demonstrations=demos, seed=seed, **common, **extra[name])
            agent.learn(60_000, log_interval=0)
            samples = agent.generate(200, seed=1)
            validity[name].append(validity_rate(source, samples.sequences))
    bc, sm = float(np.mean(validity["bc"])), float(np.mean(validity["sequencematch"]))
    assert sm >= bc, (
        f"SequenceMatch {validity['sequencematch']} (mean {sm:.3f}) < BC {validity['bc']} (mean {bc:.3f})"
    )
