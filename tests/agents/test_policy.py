"""Tests of the LM policy: the one-pass masked forward and KV-cached generation agree with the plain forward,
with ``seqgym.dynamics`` and with stepping ``SequenceEnv``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch._dynamo.utils import counters

from agents.policy import ARCHITECTURES, Generation, LMPolicy, TokenMap, TrajectoryLogits, sample_actions
from seqgym.dynamics import replay, states
from seqgym.vocab import Vocabulary

VOCAB = Vocabulary(["a", "b", "c", "d"])  # a..d = 0..3, eos=4, backspace=5, pad=6
BK, EOS = VOCAB.backspace_id, VOCAB.eos_id
ATOL = 1e-5


@pytest.fixture(scope="module", params=ARCHITECTURES)
def policy(request: pytest.FixtureRequest) -> LMPolicy:
    """One small policy of each architecture: every forward / generation equality holds for both."""
    return LMPolicy.from_config(
        VOCAB, architecture=request.param, n_layer=2, n_embd=32, n_head=2, n_positions=64, seed=3
    )


def assert_matches_reference(policy: LMPolicy, prompts: list[list[int]], actions: list[list[int]]) -> None:
    """trajectory_logits equals state_logits on every state that seqgym.dynamics says is visited."""
    out = policy.trajectory_logits(prompts, actions)
    T = max(len(a) for a in actions)
    assert out.logits.shape == (len(prompts), T + 1, policy.vocab.n_actions)
    for b, (p, a) in enumerate(zip(prompts, actions)):
        visited = states(p, a, policy.vocab)
        ref = policy.state_logits(visited, [len(p)] * len(visited))  # (T_b+1, A)
        got = out.logits[b, : len(visited)]
        assert torch.equal(torch.isinf(got), torch.isinf(ref))
        finite = torch.isfinite(ref)
        torch.testing.assert_close(got[finite], ref[finite], atol=ATOL, rtol=0)
        assert out.state_mask[b].tolist() == [i < len(visited) for i in range(T + 1)]
        assert out.action_mask[b].tolist() == [i < len(a) for i in range(T)]
        assert out.actions[b, : len(a)].tolist() == a
        boundary = [len(s) == len(p) for s in visited]
        assert torch.isinf(got[:, policy.vocab.backspace_id]).tolist() == boundary


# ---------------------------------------------------------------------------------------------------------
# TokenMap
# ---------------------------------------------------------------------------------------------------------
def test_token_map_identity_and_round_trip() -> None:
    tm = TokenMap.identity(VOCAB)
    assert tm.is_identity and tm.bos == EOS and tm.n_actions == VOCAB.n_actions
    ids = torch.tensor([[0, 5, 6]])
    assert torch.equal(tm.to_model(ids), ids)
    assert TokenMap.from_dict(json.loads(json.dumps(tm.to_dict()))) == tm
    logits = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 9)
    assert torch.equal(tm.action_logits(logits), logits[:, : VOCAB.n_actions])


def test_token_map_general() -> None:
    tm = TokenMap([7, 3, 2, 9, 8, 0, 1, 4], model_vocab_size=10)
    assert not tm.is_identity and tm.bos == 0  # model id of eos (env id 5)
    assert tm.to_model(torch.tensor([0, 6, 7])).tolist() == [7, 1, 4]
    logits = torch.arange(10, dtype=torch.float32)[None]  # (1, V) logit of model id m = m
    assert tm.action_logits(logits)[0].tolist() == [7, 3, 2, 9, 8, 0, 1]
    assert tm.to_env([9, 7]) == [3, 0]
    with pytest.raises(KeyError, match="not mapped"):
        tm.to_env([4])


@pytest.mark.parametrize(
    ("ids", "size", "match"),
    [
        ([0, 1, 1, 3, 4], 5, "both map to model id 1"),
        ([0, 1, 2, 7, 4], 5, "outside the model vocabulary"),
        ([0, 1, 2], 5, "at least 4"),
    ],
)
def test_token_map_rejects_bad_maps(ids: list[int], size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TokenMap(ids, model_vocab_size=size)


# ---------------------------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_from_config_is_deterministic_and_leaves_global_rng_alone(architecture: str) -> None:
    state = torch.random.get_rng_state()
    kw: dict[str, Any] = {"architecture": architecture, "n_layer": 1, "n_embd": 16, "n_head": 2}
    p1 = LMPolicy.from_config(VOCAB, seed=7, **kw)
    p2 = LMPolicy.from_config(VOCAB, seed=7, **kw)
    p3 = LMPolicy.from_config(VOCAB, seed=8, **kw)
    assert torch.equal(torch.random.get_rng_state(), state)
    w = [p.model.get_input_embeddings().weight for p in (p1, p2, p3)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    assert p1.model.config.vocab_size == len(VOCAB) and p1.token_map.is_identity
    assert p1.n_positions == 128 and p1.device == torch.device("cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_embd": 15, "n_head": 2}, "divisible"),
        ({"n_layer": 0}, "n_layer"),
        ({"vocab_size": 3}, "vocab_size"),
        ({"architecture": "gpt3"}, r"Unknown architecture 'gpt3'; choose one of \['llama', 'gpt2'\]"),
        ({"num_key_value_heads": 3}, r"num_key_value_heads must be an int >= 1 dividing n_head \(2\), got 3"),
    ],
)
def test_from_config_rejects_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LMPolicy.from_config(VOCAB, **kwargs)


def test_from_config_builds_each_architecture_with_its_own_config_fields() -> None:
    llama = LMPolicy.from_config(VOCAB, n_layer=1, n_embd=16, n_head=2, n_positions=40, rms_norm_eps=1e-5)
    assert llama.model.config.model_type == "llama" and llama.n_positions == 40
    assert llama.model.config.rms_norm_eps == 1e-5
    assert llama.model.config.intermediate_size == 64 and llama.model.config.tie_word_embeddings
    gpt2 = LMPolicy.from_config(VOCAB, architecture="gpt2", n_layer=1, n_embd=16, n_head=2, n_positions=40)
    assert gpt2.model.config.model_type == "gpt2" and gpt2.n_positions == 40
    with pytest.raises(TypeError, match=r"'rms_norm_eps'.*GPT2Config"):
        LMPolicy.from_config(VOCAB, architecture="gpt2", rms_norm_eps=1e-5)
    with pytest.raises(TypeError, match=r"'n_inner' \(a GPT2Config field: pass architecture='gpt2'\)"):
        LMPolicy.from_config(VOCAB, n_inner=32)
    with pytest.raises(
        TypeError, match=r"'hidden_size', 'num_hidden_layers': set the size with n_embd, n_layer"
    ):
        LMPolicy.from_config(VOCAB, hidden_size=24, num_hidden_layers=3)
    with pytest.raises(TypeError, match=r"'n_ctx': set the size with n_positions"):
        LMPolicy.from_config(VOCAB, architecture="gpt2", n_ctx=64)
    assert LMPolicy.from_config(VOCAB, n_head=2, num_key_value_heads=1).model.config.num_key_value_heads == 1
    with pytest.raises(ValueError, match="even head size"):
        LMPolicy.from_config(VOCAB, n_embd=6, n_head=2)


# ---------------------------------------------------------------------------------------------------------
# the one-pass masked forward
# ---------------------------------------------------------------------------------------------------------
def _history(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    prompt = draw(st.lists(st.integers(0, VOCAB.n_tokens - 1), max_size=4))
    # backspace about as often as a token, so histories go back and forth across the prompt boundary
    actions = draw(st.lists(st.sampled_from([0, 1, 2, 3, BK, BK, BK, BK]), max_size=14))
    if draw(st.booleans()):
        actions.append(EOS)
    return prompt, actions


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[list[int]], list[list[int]]]:
    rows = [_history(draw) for _ in range(draw(st.integers(1, 4)))]
    return [p for p, _ in rows], [a for _, a in rows]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_trajectory_logits_equal_per_state_forward(policy: LMPolicy, batch: tuple) -> None:
    prompts, actions = batch
    assert_matches_reference(policy, prompts, actions)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_trajectory_logits_edge_cases(attn: str, architecture: str) -> None:
    policy = LMPolicy.from_config(
        VOCAB, architecture=architecture, n_layer=2, n_embd=16, n_head=2, seed=1, attn_implementation=attn
    )
    prompts = [[], [0], [1, 2, 3], [], [2]]
    actions = [
        [],  # only u_0 = empty prompt
        [BK, BK, 1, BK, BK, 2],  # no-op backspaces at the boundary, before and after a deletion
        [0, 1, BK, BK, BK, BK, 2, EOS],  # delete back to the prompt, then no-ops
        [0, BK, 1, 2, BK, BK, BK, 3],  # empty state reached again (BOS copy)
        [EOS],
    ]
    assert_matches_reference(policy, prompts, actions)


def test_trajectory_logits_are_differentiable(policy: LMPolicy) -> None:
    out = policy.trajectory_logits([[0, 1]], [[2, BK, 3, EOS]])
    assert isinstance(out, TrajectoryLogits)
    logp = out.logits.log_softmax(-1)[:, :-1].gather(-1, out.actions[..., None])[..., 0]  # (B, T)
    logp[out.action_mask].sum().backward()
    grad = policy.model.get_input_embeddings().weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    policy.model.zero_grad(set_to_none=True)


def test_trajectory_logits_with_general_token_map() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=12, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    tm = TokenMap([9, 3, 7, 1, 11, 2, 0], model_vocab_size=12)
    policy = LMPolicy(model=model, vocab=VOCAB, token_map=tm)
    assert_matches_reference(policy, [[0, 3], []], [[1, BK, BK, BK, 2], [3, EOS]])


@pytest.mark.parametrize(
    ("prompts", "actions", "error", "match"),
    [
        ([[0]], [[1, EOS, 2]], ValueError, "continues after eos"),
        ([[0]], [[1, EOS, BK]], ValueError, "continues after eos"),
        ([[0]], [[VOCAB.pad_id]], ValueError, "pad id"),
        ([[0]], [[-1]], ValueError, "valid actions"),
        ([[BK]], [[0]], ValueError, "backspace"),
        ([[0], [1]], [[0]], ValueError, "one per prompt"),
        ([[0]], [[0.5]], TypeError, "ints"),
        ([], [], ValueError, "empty"),
    ],
)
def test_trajectory_logits_rejects_bad_input(
    policy: LMPolicy, prompts: list, actions: list, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        policy.trajectory_logits(prompts, actions)


def test_trajectory_logits_rejects_states_beyond_positions() -> None:
    policy = LMPolicy.from_config(VOCAB, n_layer=1, n_embd=16, n_head=2, n_positions=8)
    policy.trajectory_logits([[0, 1]], [[0, BK] * 20])  # long history, short states: fine
    with pytest.raises(ValueError, match="positions"):
        policy.trajectory_logits([[0, 1]], [[0] * 6])


def test_state_logits_masks_backspace_and_validates(policy: LMPolicy) -> None:
    logits = policy.state_logits([[0, 1], [0, 1], []], [2, 1, 0])
    assert logits.shape == (3, VOCAB.n_actions)
    assert torch.isinf(logits[:, BK]).tolist() == [True, False, True]
    assert torch.isfinite(logits[:, :BK]).all()
    with pytest.raises(ValueError, match="prompt_lengths"):
        policy.state_logits([[0]], [2])
    with pytest.raises(ValueError, match="prompt_lengths"):
        policy.state_logits([[0], [1]], [1])


# ---------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------
def test_sample_actions_respects_masks_and_filters() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf")], [5.0, 0.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_actions(logits, generator=g) for _ in range(300)])  # (300, 2)
    assert (draws[:, 0] != 3).all()
    assert set(draws[:, 0].tolist()) == {0, 1, 2}
    assert sample_actions(logits, deterministic=True).tolist() == [2, 0]
    assert (sample_actions(logits.expand(50, -1, -1)[:, 0], generator=g, top_k=1) == 2).all()
    top_p = torch.stack([sample_actions(logits, generator=g, top_p=0.5) for _ in range(50)])
    assert (top_p[:, 0] == 2).all() and (top_p[:, 1] == 0).all()
    freq = (draws[:, 0] == 2).float().mean().item()  # softmax([0, 1, 2])[2] = 0.665
    assert 0.55 < freq < 0.78


def test_sample_actions_is_reproducible_and_cold_at_low_temperature() -> None:
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    a = sample_actions(logits, generator=torch.Generator().manual_seed(3))
    b = sample_actions(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    cold = sample_actions(logits, generator=torch.Generator().manual_seed(3), temperature=1e-4)
    assert torch.equal(cold, logits.argmax(-1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_sample_actions_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_actions(torch.zeros(1, 3), **kwargs)


def test_sample_actions_rejects_rows_without_allowed_action() -> None:
    with pytest.raises(ValueError, match="no allowed action"):
        sample_actions(torch.full((1, 3), float("-inf")))


# ---------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------
def _backspace_bias(strength: float) -> Callable[[torch.Tensor], torch.Tensor]:
    bias = torch.zeros(VOCAB.n_actions)
    bias[BK] = strength
    bias[EOS] = -1.0
    return lambda logits: logits + bias


def test_generate_replays_and_follows_env_limits(policy: LMPolicy, backspace_mode: str) -> None:
    prompts = [[0, 1], [], [2], [3, 0, 1], [1]]
    g = torch.Generator().manual_seed(0)
    out = policy.generate(
        prompts, max_steps=25, max_length=9, generator=g, logits_processor=_backspace_bias(1.5)
    )
    assert isinstance(out, Generation)
    n_backspaces = 0
    for p, seq, acts, term, trunc in zip(prompts, out.sequences, out.actions, out.terminated, out.truncated):
        assert replay(p, acts, VOCAB) == seq
        assert seq[: len(p)] == p
        visited = states(p, acts, VOCAB)
        for s, a in zip(visited, acts):
            assert a != BK or len(s) > len(p)  # backspace masked at the prompt boundary
        n_backspaces += acts.count(BK)
        assert term == (acts[-1] == EOS)
        assert trunc == (not term and (len(seq) >= 9 or len(acts) == 25))
        assert term or trunc
        # no earlier step would have ended the episode
        assert all(len(s) < 9 for s in visited[:-1]) and len(acts) <= 25
    assert n_backspaces >= 5


@pytest.fixture(params=["logit_stack", "refeed"])
def backspace_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a generation test with both ways a backspace gets its logits: stored, or re-fed to the cache."""
    if request.param == "refeed":
        monkeypatch.setattr("agents.policy._LOGIT_STACK_BYTES", 0)
    return str(request.param)


def test_generate_logits_equal_trajectory_logits(policy: LMPolicy, backspace_mode: str) -> None:
    prompts = [[0, 1], [], [2, 2, 3]]
    out = policy.generate(
        prompts,
        max_steps=30,
        max_length=14,
        generator=torch.Generator().manual_seed(1),
        logits_processor=_backspace_bias(1.0),
        output_logits=True,
    )
    assert out.logits is not None
    ref = policy.trajectory_logits(prompts, out.actions)
    assert sum(a.count(BK) for a in out.actions) >= 3
    for b, acts in enumerate(out.actions):
        got, want = out.logits[b], ref.logits[b, : len(acts)]
        assert got.shape == (len(acts), VOCAB.n_actions)
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        finite = torch.isfinite(want)
        torch.testing.assert_close(got[finite], want[finite], atol=ATOL, rtol=0)


def test_generate_is_reproducible_and_can_forbid_backspace(policy: LMPolicy) -> None:
    kw: dict[str, Any] = {"max_steps": 20, "max_length": 12, "logits_processor": _backspace_bias(2.0)}
    a = policy.generate([[0], [1, 2]], generator=torch.Generator().manual_seed(5), **kw)
    b = policy.generate([[0], [1, 2]], generator=torch.Generator().manual_seed(5), **kw)
    assert a == b
    c = policy.generate(
        [[0], [1, 2]], generator=torch.Generator().manual_seed(5), allow_backspace=False, **kw
    )
    assert all(BK not in acts for acts in c.actions)
    assert c.sequences == [replay(p, acts, VOCAB) for p, acts in zip([[0], [1, 2]], c.actions)]


def test_a_draw_over_some_rows_equals_the_draw_over_the_batch() -> None:
    """``_draw(x[ix], rows=(ix, B))`` gives each row the action the whole batch's draw gives it, and advances
    the generator the same way."""
    from agents.policy import _draw

    x = torch.randn(9, 7, dtype=torch.float64)
    x[2, 3] = float("-inf")
    ix = torch.tensor([1, 2, 5, 8])
    for kw in ({"temp": 1.0, "top_k": None, "top_p": None}, {"temp": 0.7, "top_k": 4, "top_p": 0.9}):
        g_all, g_some = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
        whole = _draw(x, g_all, **kw)  # type: ignore[arg-type]
        some = _draw(x[ix], g_some, rows=(ix, 9), **kw)  # type: ignore[arg-type]
        assert torch.equal(some, whole[ix])
        assert torch.equal(g_all.get_state(), g_some.get_state())


def test_generate_processor_sees_only_the_rows_that_choose(policy: LMPolicy) -> None:
    """The first call of a step sees every live row; after a backspace only the rows that backspaced sample
    again (and are processed); a processor must keep the shape it is given."""
    bias = _backspace_bias(1.0)
    calls: list[torch.Tensor] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.detach().clone())
        return bias(x)

    prompts = [[0], [1, 2], [3], [2, 2, 1]]
    gen = policy.generate(
        prompts, max_steps=12, max_length=12, generator=torch.Generator().manual_seed(3), logits_processor=spy
    )
    assert gen.sequences == [replay(p, a, VOCAB) for p, a in zip(prompts, gen.actions)]
    assert calls[0].shape[0] == len(prompts)
    n_actions = sum(len(a) for a in gen.actions)
    assert sum(c.shape[0] for c in calls) == n_actions  # every row processed once per action it took
    n_backspaces = sum(a.count(BK) for a in gen.actions)
    assert n_backspaces > 0 and any(c.shape[0] < len(prompts) for c in calls)
    with pytest.raises(ValueError, match="logits_processor must return a tensor of the shape"):
        policy.generate(prompts, max_steps=5, max_length=10, logits_processor=lambda x: x[:1])


def test_generate_truncates_exactly() -> None:
    policy = LMPolicy.from_config(VOCAB, n_layer=1, n_embd=16, n_head=2, n_positions=16)
    no_eos = _backspace_bias(-30.0)  # no backspace, eos less likely
    out = policy.generate([[0, 1]], max_steps=3, max_length=10, generator=torch.Generator().manual_seed(0))
    assert len(out.actions[0]) <= 3
    forced = policy.generate(
        [[0], [1, 2, 3]],
        max_steps=50,
        max_length=5,
        generator=torch.Generator().manual_seed(0),
        logits_processor=lambda x: no_eos(x).index_fill(1, torch.tensor([EOS]), float("-inf")),
    )
    assert [len(s) for s in forced.sequences] == [5, 5]
    assert [len(a) for a in forced.actions] == [4, 2]
    assert forced.truncated == [True, True] and forced.terminated == [False, False]
    steps = policy.generate(
        [[0]],
        max_steps=4,
        max_length=16,
        generator=torch.Generator().manual_seed(0),
        logits_processor=lambda x: x.index_fill(1, torch.tensor([EOS]), float("-inf")),
    )
    assert len(steps.actions[0]) == 4 and steps.truncated == [True]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_length": 2}, "shorter than max_length"),
        ({"max_length": 65}, "positions"),
        ({"prompts": [[0, 9]]}, "unknown id"),
        ({"prompts": [[BK]]}, "backspace"),
    ],
)
def test_generate_rejects_bad_arguments(policy: LMPolicy, kwargs: dict, match: str) -> None:
    args = {"prompts": [[0, 1]], "max_steps": 5, "max_length": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        policy.generate(args.pop("prompts"), **args)


def test_generate_equals_stepping_the_env_with_predict_sampling(backspace_mode: str) -> None:
    """Batch of one: generate == SequenceEnv stepped with state_logits + sample_actions, same generator."""
    from seqgym.env import SequenceEnv
    from seqgym.sources.dyck import Dyck

    env = SequenceEnv(Dyck(2, max_length=8), max_length=10, max_steps=16)
    policy = LMPolicy.from_config(env.vocab, n_layer=2, n_embd=32, n_head=2, n_positions=32, seed=4)
    bias = torch.zeros(env.vocab.n_actions)
    bias[env.vocab.backspace_id] = 1.0
    bias[env.vocab.eos_id] = -1.0
    n_backspaces = 0
    for seed, prompt in [(0, []), (1, [0, 2]), (2, [1]), (3, [])]:
        kw: dict[str, Any] = {"temperature": 0.9, "top_p": 0.95}
        gen = policy.generate(
            [prompt],
            max_steps=env.max_steps,
            max_length=env.max_length,
            generator=torch.Generator().manual_seed(seed),
            logits_processor=lambda x: x + bias,
            **kw,
        )
        g = torch.Generator().manual_seed(seed)
        obs, info = env.reset(seed=seed, options={"prompt": prompt})
        taken, done = [], False
        while not done:
            visible = obs[: info["length"]].tolist()
            with torch.no_grad():
                logits = policy.state_logits([visible], [info["prompt_length"]]) + bias
            assert bool(env.action_masks()[env.vocab.backspace_id]) == bool(
                torch.isfinite(logits[0, env.vocab.backspace_id])
            )
            a = int(sample_actions(logits, generator=g, **kw)[0])
            obs, _, terminated, truncated, info = env.step(a)
            taken.append(a)
            done = terminated or truncated
        assert gen.actions[0] == taken
        assert gen.sequences[0] == obs[: info["length"]].tolist()
        assert (gen.terminated[0], gen.truncated[0]) == (terminated, truncated)
        n_backspaces += taken.count(env.vocab.backspace_id)
    assert n_backspaces > 0


def test_generate_from_a_generated_part_equals_stepping_the_env_from_it(backspace_mode: str) -> None:
    """Batch of one, starting from prompt + a deletable generated part: generate == SequenceEnv reset with
    options {"prompt", "generated"} and stepped with state_logits + sample_actions; a strong backspace bias
    makes the rows delete into the generated part (whose states' logits come from the prefill)."""
    from seqgym.env import SequenceEnv
    from seqgym.sources.dyck import Dyck

    env = SequenceEnv(Dyck(2, max_length=8), max_length=10, max_steps=16)
    policy = LMPolicy.from_config(env.vocab, n_layer=2, n_embd=32, n_head=2, n_positions=32, seed=5)
    bias = torch.zeros(env.vocab.n_actions)
    bias[env.vocab.backspace_id] = 3.0
    deleted_into_part = 0
    for seed, prompt, part in [(0, [], [0, 1, 2]), (1, [0], [2, 3]), (2, [1, 1], [0]), (3, [], [])]:
        gen = policy.generate(
            [prompt],
            max_steps=env.max_steps,
            max_length=env.max_length,
            generator=torch.Generator().manual_seed(seed),
            logits_processor=lambda x: x + bias,
            generated=[part],
        )
        g = torch.Generator().manual_seed(seed)
        obs, info = env.reset(options={"prompt": prompt, "generated": part})
        taken, done, shortest = [], False, info["length"]
        while not done:
            visible = obs[: info["length"]].tolist()
            with torch.no_grad():
                logits = policy.state_logits([visible], [info["prompt_length"]]) + bias
            a = int(sample_actions(logits, generator=g)[0])
            obs, _, terminated, truncated, info = env.step(a)
            taken.append(a)
            shortest = min(shortest, info["length"])
            done = terminated or truncated
        assert gen.actions[0] == taken
        assert gen.sequences[0] == obs[: info["length"]].tolist()
        deleted_into_part += shortest < len(prompt) + len(part)
    assert deleted_into_part >= 2
    with pytest.raises(ValueError, match="generated\\[0\\] holds id"):
        policy.generate([[0]], max_steps=4, max_length=10, generated=[[env.vocab.eos_id]])
    with pytest.raises(ValueError, match="one \\(possibly empty\\) per prompt"):
        policy.generate([[0], [1]], max_steps=4, max_length=10, generated=[[1]])
    with pytest.raises(ValueError, match="prompts \\+ generated"):
        policy.generate([[0]], max_steps=4, max_length=4, generated=[[1, 2, 3]])


# ---------------------------------------------------------------------------------------------------------
# save / load / from_pretrained
# ---------------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(policy: LMPolicy, tmp_path: Path) -> None:
    policy.save_pretrained(tmp_path / "p")
    files = {f.name for f in (tmp_path / "p").iterdir()}
    assert {"model.safetensors", "config.json", "seqgym_policy.json"} <= files
    loaded = LMPolicy.load(tmp_path / "p")
    again = LMPolicy.from_pretrained(tmp_path / "p")
    assert loaded.vocab == policy.vocab and loaded.token_map == policy.token_map
    prompts, actions = [[0, 1], []], [[2, BK, 3], [1, EOS]]
    want = policy.trajectory_logits(prompts, actions).logits
    for other in (loaded, again):
        torch.testing.assert_close(other.trajectory_logits(prompts, actions).logits, want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="another vocabulary"):
        LMPolicy.from_pretrained(tmp_path / "p", vocab=Vocabulary(["x", "y"]))


def test_load_rejects_foreign_or_corrupt_directories(policy: LMPolicy, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LMPolicy.load(tmp_path / "missing")
    policy.model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"seqgym_policy\.json"):
        LMPolicy.load(tmp_path / "plain")
    policy.save_pretrained(tmp_path / "bad")
    meta = tmp_path / "bad" / "seqgym_policy.json"
    meta.write_text(meta.read_text()[:20])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        LMPolicy.load(tmp_path / "bad")
    meta.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a seqgym policy"):
        LMPolicy.load(tmp_path / "bad")


def test_from_pretrained_plain_model_directory(policy: LMPolicy, tmp_path: Path) -> None:
    policy.model.save_pretrained(tmp_path / "plain")  # no tokenizer, no seqgym metadata
    wrapped = LMPolicy.from_pretrained(tmp_path / "plain", vocab=VOCAB)
    assert wrapped.token_map.is_identity
    torch.testing.assert_close(wrapped.state_logits([[0, 1]], [1]), policy.state_logits([[0, 1]], [1]))
    with pytest.raises(ValueError, match="No tokenizer"):
        LMPolicy.from_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="No tokenizer"):
        LMPolicy.from_pretrained(tmp_path / "plain", vocab=Vocabulary(["x"]))


def _save_model_with_tokenizer(directory: Path) -> None:
    """A local 'pretrained' model: GPT-2 with a word-level tokenizer that has no backspace token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = {"<unk>": 0, "</s>": 1, "the": 2, "cat": 3, "sat": 4}
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=5, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)


def test_from_pretrained_with_tokenizer_adds_backspace(tmp_path: Path) -> None:
    _save_model_with_tokenizer(tmp_path / "hf")
    policy = LMPolicy.from_pretrained(tmp_path / "hf")
    v = policy.vocab
    assert v.tokens[: v.n_tokens] == ["<unk>", "the", "cat", "sat"]
    assert v.eos == "</s>" and v.backspace == "<bksp>"
    assert policy.tokenizer.convert_tokens_to_ids("<bksp>") == 5
    assert policy.model.get_input_embeddings().weight.shape[0] == 6  # resized for <bksp>
    tm = policy.token_map
    assert tm.env_to_model[: v.n_actions] == [0, 2, 3, 4, 1, 5] and tm.bos == 1
    ids = v.encode(["the", "cat"])
    assert_matches_reference(policy, [ids, []], [[v.token_to_id("sat"), v.backspace_id, v.eos_id], [2, 1]])
    # save / load keeps the tokenizer and the map
    policy.save_pretrained(tmp_path / "saved")
    loaded = LMPolicy.load(tmp_path / "saved")
    assert loaded.token_map == tm and loaded.tokenizer is not None and loaded.vocab == v
    torch.testing.assert_close(loaded.state_logits([ids], [1]), policy.state_logits([ids], [1]))


def test_from_pretrained_with_given_vocab_adds_missing_tokens(tmp_path: Path) -> None:
    _save_model_with_tokenizer(tmp_path / "hf")
    vocab = Vocabulary(["cat", "dog"], eos="</s>")
    policy = LMPolicy.from_pretrained(tmp_path / "hf", vocab=vocab)
    assert policy.vocab is vocab
    assert policy.tokenizer.convert_tokens_to_ids("dog") >= 5
    assert policy.model.get_input_embeddings().weight.shape[0] == len(policy.tokenizer) == 7
    m = policy.token_map.env_to_model
    assert m[0] == 3 and m[vocab.eos_id] == 1
    assert_matches_reference(policy, [[0]], [[1, vocab.backspace_id, 0, vocab.eos_id]])


def test_policy_rejects_mismatched_model_and_vocab() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=4, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="token ids but the vocabulary needs"):
        LMPolicy(model=model, vocab=VOCAB)
    with pytest.raises(TypeError, match="Vocabulary"):
        LMPolicy(model=model, vocab=["a"])  # type: ignore[arg-type]


def test_generate_with_numpy_and_tensor_prompts(policy: LMPolicy) -> None:
    g = torch.Generator().manual_seed(0)
    out = policy.generate(np.array([[0, 1], [2, 3]]), max_steps=4, max_length=8, generator=g)
    g = torch.Generator().manual_seed(0)
    same = policy.generate(torch.tensor([[0, 1], [2, 3]]), max_steps=4, max_length=8, generator=g)
    assert out == same


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_torch_twins_equal_the_dynamics_primitives(data: st.DataObject) -> None:
    """The masked forward's layout and generation's bookkeeping on tensors equal seqgym.dynamics on arrays."""
    from agents.policy import backspace_allowed_torch, slot_layout_torch, step_masks_torch
    from seqgym.dynamics import backspace_allowed, pad_histories, slot_layout, step_masks

    B = data.draw(st.integers(1, 4))
    tok = st.integers(0, VOCAB.n_tokens - 1)
    prompts = [data.draw(st.lists(tok, max_size=3)) for _ in range(B)]
    actions = [data.draw(st.lists(st.one_of(st.just(BK), tok), max_size=8)) for _ in range(B)]
    pr, P = pad_histories(prompts, VOCAB.pad_id)
    ac, T = pad_histories(actions, BK)  # padding holds backspaces: it must be ignored
    ref = slot_layout(pr, P, ac, VOCAB, n_steps=T)
    t = torch.from_numpy
    inp, pos, attend = slot_layout_torch(t(pr), t(P), t(ac), t(T), VOCAB)
    assert inp.tolist() == ref.tokens.tolist()
    assert pos.tolist() == ref.positions.tolist()
    assert attend.tolist() == ref.attend.tolist()

    lengths = P + np.array([data.draw(st.integers(0, 2)) for _ in range(B)])
    a = np.array([data.draw(st.integers(0, VOCAB.n_actions - 1)) for _ in range(B)])
    appends, deletes = step_masks_torch(t(lengths), t(P), t(a), BK)
    ref_appends, ref_deletes = step_masks(lengths, P, a, VOCAB)
    assert appends.tolist() == ref_appends.tolist() and deletes.tolist() == ref_deletes.tolist()
    assert backspace_allowed_torch(t(lengths), t(P)).tolist() == backspace_allowed(lengths, P).tolist()


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend (inductor) needs a C++ compiler",
)
def test_compiled_generation_agrees_with_eager_and_is_built_once(policy: LMPolicy) -> None:
    prompts = [[0, 1], [], [2, 2, 3], [1]]
    kw: dict[str, Any] = {
        "max_steps": 30,
        "max_length": 14,
        "logits_processor": _backspace_bias(1.0),
        "output_logits": True,
    }
    eager = policy.generate(prompts, generator=torch.Generator().manual_seed(2), **kw)
    graphs = counters["stats"]["unique_graphs"]
    compiled = policy.generate(prompts, generator=torch.Generator().manual_seed(2), compiled=True, **kw)
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile (not a silent eager fallback)
    graphs = counters["stats"]["unique_graphs"]
    repeat = policy.generate(prompts, generator=torch.Generator().manual_seed(2), compiled=True, **kw)
    assert counters["stats"]["unique_graphs"] == graphs  # and the same call reuses its graphs
    assert repeat.actions == eager.actions
    assert compiled.actions == eager.actions and compiled.sequences == eager.sequences
    assert sum(a.count(BK) for a in eager.actions) >= 3  # backspaces taken, rows finished at different steps
    assert compiled.logits is not None and eager.logits is not None
    for got, want in zip(compiled.logits, eager.logits):
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got))
        torch.testing.assert_close(got[finite], want[finite], atol=ATOL, rtol=0)
    built = policy.compiled_model()
    # the policy's default applies to every generation, a generated part and another batch size included
    policy.compiled_generation = True
    try:
        again = policy.generate(
            [[3], [0]], generated=[[1, 2], []], generator=torch.Generator().manual_seed(4), **kw
        )
    finally:
        policy.compiled_generation = False
    assert policy.compiled_model() is built  # reused, not rebuilt
    ref = policy.generate(
        [[3], [0]], generated=[[1, 2], []], generator=torch.Generator().manual_seed(4), **kw
    )
    assert again.actions == ref.actions
    with pytest.raises(TypeError, match="compiled"):
        policy.generate(prompts, max_steps=5, max_length=10, compiled=1)  # type: ignore[arg-type]
    assert policy.generate(
        prompts, max_steps=5, max_length=10, compiled=np.False_
    ).actions  # numpy bools pass


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("kwargs", [{}, {"n_layer": 1, "n_embd": 16, "n_head": 4, "n_positions": 40}])
def test_config_sizes_are_those_from_config_builds(architecture: str, kwargs: dict[str, int]) -> None:
    sizes = LMPolicy.config_sizes(architecture=architecture, **kwargs)
    cfg = LMPolicy.from_config(VOCAB, architecture=architecture, **kwargs).model.config
    assert sizes["n_layer"] == cfg.num_hidden_layers and sizes["n_embd"] == cfg.hidden_size
    assert sizes["n_head"] == cfg.num_attention_heads
    table = cfg.max_position_embeddings if architecture == "gpt2" else 0  # rotary positions have no table
    assert sizes["position_table"] == table


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"architecture": "bert"}, "architecture"),
        ({"n_layer": None}, "n_layer must be an int >= 1"),
        ({"n_head": "two"}, "n_head must be an int >= 1"),
        ({"n_positions": 0}, "n_positions must be an int >= 1"),
    ],
)
def test_config_sizes_refuses_what_from_config_refuses(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LMPolicy.config_sizes(**kwargs)
    with pytest.raises(ValueError, match=match):
        LMPolicy.from_config(VOCAB, **kwargs)
