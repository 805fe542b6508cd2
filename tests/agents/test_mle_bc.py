"""MLE and BC: they provably learn a tiny Dyck task, their losses equal a state-by-state reference, MLE never
emits backspace, BC masks inserted mistakes out of its loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from agents import make_agent
from agents.bc import BC
from agents.mle import MLE
from agents.policy import LMPolicy
from seqgym.data import Trajectory, augment, collect
from seqgym.env import SequenceEnv
from seqgym.sources.arithmetic import Arithmetic
from seqgym.sources.dyck import Dyck

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}


def dyck_env() -> SequenceEnv:
    """Two bracket kinds, depth <= 3, at most 8 brackets: a wrong closer is a visible, checkable mistake."""
    return SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=9, max_steps=27)


def validity(agent: Any, n: int = 200) -> float:
    out = agent.generate(n, seed=123)
    return float(np.mean([agent.env.source.is_valid(s) for s in out.sequences]))


@pytest.mark.parametrize("name", ["mle", "bc"])
def test_agent_learns_dyck_within_seconds(name: str) -> None:
    """SB3 identity-env style: validity of 200 samples rises from the untrained model's (measured 0.015 for MLE,
    0.01 for BC) to >= 0.85 (measured 0.95 / 0.945; 0.95 / 0.955 with seed 1) after 60k (state, action) pairs,
    about 3–4 s of one CPU core (the default Llama-style model with n_layer=2, n_embd=32; 256 demonstrations,
    batch 32, seed 0)."""
    agent = make_agent(
        name,
        env=dyck_env(),
        seed=0,
        n_demonstrations=256,
        batch_size=32,
        learning_rate=3e-3,
        policy_kwargs={"n_layer": 2, "n_embd": 32, "n_head": 2},
    )
    before = validity(agent)
    assert before <= 0.1
    agent.learn(60_000)
    after = validity(agent)
    assert after >= 0.85, f"{name}: validity {before:.3f} -> {after:.3f}"


def masked_logprob_reference(
    policy: LMPolicy, traj: Trajectory, *, only_expert: bool, no_backspace: bool
) -> torch.Tensor:
    """Sum over steps of log pi(a_i | u_i), one plain forward per state (state_logits), Python loops."""
    states = traj.states()
    total = torch.zeros(())
    for i, a in enumerate(traj.actions.tolist()):
        if only_expert and not traj.expert[i]:
            continue
        logits = policy.state_logits([states[i]], [traj.prompt_length])[0]  # (A,)
        if no_backspace:
            logits = logits.clone()
            logits[policy.vocab.backspace_id] = float("-inf")
        total = total + logits.log_softmax(-1)[a]
    return total


@pytest.mark.parametrize("task", ["dyck", "arithmetic"])
def test_mle_loss_is_summed_over_steps_and_averaged_over_sequences(task: str) -> None:
    """MLE's one causal forward equals the policy's per-state forward; prompts are not trained on."""
    if task == "dyck":
        env = dyck_env()
    else:
        source = Arithmetic(base=4, n_digits=1)
        env = SequenceEnv(source, max_length=source.max_sequence_length, max_steps=20)
    demos = augment(collect(env.source, 6, rng=0), 0.5, rng=1)
    agent = make_agent("mle", env=env, demonstrations=demos, seed=0, policy_kwargs=dict(TINY))
    assert isinstance(agent, MLE)
    batch = agent._sample_batch(4, np.random.default_rng(0))
    clean = [demos[i].clean() for i in batch.indices]
    assert all(t.n_backspaces == 0 for t in clean)  # augmented demonstrations were cleaned
    assert agent._n_timesteps(batch) == sum(len(t) for t in clean)
    if task == "arithmetic":
        assert all(t.prompt_length > 0 for t in clean)
    agent.policy.eval()
    loss, terms = agent._loss(batch)
    ref = -torch.stack(
        [masked_logprob_reference(agent.policy, t, only_expert=False, no_backspace=True) for t in clean]
    ).sum()
    assert loss.item() == pytest.approx(ref.item() / len(clean), rel=1e-5)
    assert float(terms["nll_per_token"]) == pytest.approx(ref.item() / agent._n_timesteps(batch), rel=1e-5)


def test_bc_loss_masks_inserted_mistakes_and_keeps_the_backspace_after_them() -> None:
    env = dyck_env()
    agent = make_agent("bc", env=env, seed=0, n_demonstrations=16, p_noise=0.4, policy_kwargs=dict(TINY))
    assert isinstance(agent, BC)
    batch = [t for t in agent.train_trajectories if t.n_mistakes][:4]
    assert len(batch) == 4
    assert agent._n_timesteps(batch) == sum(int(t.expert.sum()) for t in batch)
    agent.policy.eval()
    loss, terms = agent._loss(batch)
    ref = -torch.stack(
        [masked_logprob_reference(agent.policy, t, only_expert=True, no_backspace=False) for t in batch]
    ).sum()
    assert loss.item() == pytest.approx(ref.item() / len(batch), rel=1e-5)
    # the mistakes' own log-probabilities are not in the loss: including them gives a different value
    with_mistakes = -torch.stack(
        [masked_logprob_reference(agent.policy, t, only_expert=False, no_backspace=False) for t in batch]
    ).sum()
    assert with_mistakes.item() / len(batch) > loss.item() + 1e-3
    assert float(terms["backspace_nll"]) > 0


def test_bc_augmentation_is_seeded_and_bounded_by_max_length() -> None:
    env = dyck_env()
    a = make_agent("bc", env=env, seed=4, n_demonstrations=64, p_noise=0.3, policy_kwargs=dict(TINY))
    b = make_agent("bc", env=env, seed=4, n_demonstrations=64, p_noise=0.3, policy_kwargs=dict(TINY))
    assert isinstance(a, BC) and isinstance(b, BC)
    assert a.train_trajectories == b.train_trajectories
    assert [t.final() for t in a.train_trajectories] == [t.final() for t in a.demonstrations]
    assert max(int(t.visible_lengths().max()) for t in a.train_trajectories) <= env.max_length
    rate = sum(t.n_mistakes for t in a.train_trajectories) / sum(len(t) for t in a.demonstrations)
    assert 0.2 < rate < 0.4
    with pytest.raises(TypeError, match="p_noise"):
        make_agent("bc", env=env, p_noise="0.1", policy_kwargs=dict(TINY))
    with pytest.raises(ValueError, match=r"Unknown noise 'gaussian'; choose one of \['uniform', 'model'\]"):
        make_agent("bc", env=env, noise="gaussian", policy_kwargs=dict(TINY))


@pytest.mark.parametrize("noise", ["uniform", "model"])
def test_noise_margin_leaves_the_last_positions_before_the_length_limit_clean(noise: str) -> None:
    """No mistake is inserted where the wrong token would bring the sequence within ``noise_margin`` of the
    limit; elsewhere the augmentation is the same kind as without a margin."""
    env = dyck_env()  # max_length 9: at most 8 brackets, then eos
    kw: dict[str, Any] = {"seed": 4, "n_demonstrations": 64, "p_noise": 1.0, "noise": noise}

    def visible_before_mistakes(agent: BC) -> list[int]:
        batch = agent.augmentation.batch(agent.train_trajectories, np.random.default_rng(0))
        return [int(t.visible_lengths()[i]) for t in batch for i in np.flatnonzero(~t.expert)]

    plain = make_agent("bc", env=env, policy_kwargs=dict(TINY), **kw)
    margin = make_agent("bc", env=env, policy_kwargs=dict(TINY), noise_margin=3, **kw)
    assert isinstance(plain, BC) and isinstance(margin, BC)
    before, after = visible_before_mistakes(plain), visible_before_mistakes(margin)
    assert max(before) == env.max_length - 2  # a wrong token may take the last position but one...
    assert max(after) == env.max_length - 2 - 3  # ...and three fewer with the margin
    assert sorted(v for v in before if v <= env.max_length - 5) == sorted(
        after
    )  # the same positions below it
    assert margin.config.noise_margin == 3 and plain.config.noise_margin == 0
    with pytest.raises(ValueError, match="noise_margin=8 leaves no position"):
        make_agent("bc", env=env, noise_margin=8, policy_kwargs=dict(TINY))
    arith = SequenceEnv(Arithmetic(base=4, n_digits=1), max_length=12, max_steps=36)  # prompts of 4 tokens
    make_agent("bc", env=arith, noise_margin=6, n_demonstrations=8, policy_kwargs=dict(TINY))
    with pytest.raises(
        ValueError, match=r"noise_margin=7 leaves no position .* prompts of 4 tokens or more .* 6\."
    ):
        make_agent("bc", env=arith, noise_margin=7, n_demonstrations=8, policy_kwargs=dict(TINY))
    short = SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=1, max_steps=27)
    make_agent(
        "bc", env=short, p_noise=0.0, n_demonstrations=4, policy_kwargs=dict(TINY)
    )  # margin 0: no check
    with pytest.raises(ValueError, match="noise_margin must be >= 0"):
        make_agent("bc", env=env, noise_margin=-1, policy_kwargs=dict(TINY))
    with pytest.raises(TypeError, match="noise_margin must be an int"):
        make_agent("bc", env=env, noise_margin=1.5, policy_kwargs=dict(TINY))


def test_bc_model_noise_augments_each_batch_from_the_current_policy() -> None:
    env = dyck_env()
    agent = make_agent(
        "bc", env=env, seed=2, n_demonstrations=32, batch_size=8, p_noise=0.5, noise="model",
        policy_kwargs=dict(TINY),
    )  # fmt: skip
    assert isinstance(agent, BC)
    assert agent.train_trajectories == agent.demonstrations  # clean: augmented per batch, not once
    batch = agent._sample_batch(8, np.random.default_rng(0))
    assert sum(t.n_mistakes for t in batch) > 0
    assert {tuple(t.final()) for t in batch} <= {tuple(t.final()) for t in agent.demonstrations}
    bk, n_tok = env.vocab.backspace_id, env.vocab.n_tokens
    for t in batch:  # every mistake is an ordinary token, undone by the very next action
        acts = t.actions.tolist()
        for i in np.flatnonzero(~t.expert):
            assert acts[i] < n_tok and acts[i + 1] == bk
    agent.train(n_batches=2)


def test_mle_never_emits_backspace_where_bc_would() -> None:
    env = dyck_env()
    mle = make_agent("mle", env=env, policy=LMPolicy.from_config(env.vocab, seed=1, **TINY), seed=0)
    bc = make_agent("bc", env=env, policy=LMPolicy.from_config(env.vocab, seed=1, **TINY), seed=0)
    bk = env.vocab.backspace_id
    assert any(bk in a for a in bc.generate(64, seed=0, temperature=3.0).actions)
    assert not any(bk in a for a in mle.generate(64, seed=0, temperature=3.0).actions)
    obs = np.full((64, env.max_length), env.vocab.pad_id, dtype=np.int64)
    obs[:, :4] = [0, 0, 1, 2]
    after_prompt = (np.zeros(64, dtype=np.int64),)  # the whole visible sequence was generated
    assert bk in bc.predict(obs, state=after_prompt)[0]
    for _ in range(3):
        assert bk not in mle.predict(obs, state=after_prompt)[0]
