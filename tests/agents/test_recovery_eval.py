"""The agent-side recovery evaluation and fine-tuning from a saved agent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agents import make_agent  # noqa: E402
from agents.evaluation import evaluate_recovery  # noqa: E402

TINY = {"n_demonstrations": 64, "batch_size": 8, "policy_kwargs": {"n_layer": 1, "n_embd": 16, "n_head": 2}}
KEYS = {
    "backspace_first",
    "recovery",
    "mistake_removed",
    "false_deletions",
    "deliberate_mistakes",
    "deleted_allowed",
    "deleted_ruled_out",
    "validity",
    "validity_no_backspace",
    "known_share",
    "backspace_first_known",
    "backspace_first_unknown",
}


def test_recovery_metrics_of_mle_and_bc() -> None:
    mle = make_agent("mle", env="seqgym/Dyck-v0", seed=0, **TINY).learn(600)
    m = evaluate_recovery(mle, mle.env.unwrapped.source, n=64, seed=3)
    assert set(m) == KEYS
    # MLE never backspaces: it cannot remove the mistake, and masking backspace changes nothing
    assert m["backspace_first"] == m["mistake_removed"] == m["deliberate_mistakes"] == 0.0
    assert m["recovery"] == 0.0  # an impossible token that stays makes the sequence invalid
    assert m["validity_no_backspace"] == m["validity"]
    np.testing.assert_equal(evaluate_recovery(mle, mle.env.unwrapped.source, n=64, seed=3), m)  # same seed
    bc = make_agent("bc", env="seqgym/Dyck-v0", seed=0, p_noise=0.5, **TINY).learn(3000)
    b = evaluate_recovery(bc, bc.env.unwrapped.source, n=64, seed=3)
    counts = {"deliberate_mistakes", "deleted_allowed", "deleted_ruled_out"}
    split = {"backspace_first_known", "backspace_first_unknown"}  # NaN where the class is empty
    assert all(0.0 <= b[k] <= 1.0 for k in KEYS - counts - split)
    assert all(0.0 <= b[k] <= 1.0 or np.isnan(b[k]) for k in split)
    assert b["mistake_removed"] >= b["backspace_first"] > 0.0  # BC has learnt to take a mistake back
    # the split by the policy's own choice at the clean state adds up to backspace_first
    k = b["known_share"]
    parts = [(k, b["backspace_first_known"]), (1.0 - k, b["backspace_first_unknown"])]
    assert sum(w * v for w, v in parts if w > 0) == pytest.approx(b["backspace_first"])


def test_the_split_judges_the_policys_choice_at_the_clean_state(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import evaluation
    from seqgym.metrics import sample_recovery_states

    calls: list[tuple[list[list[int]], list[list[int]], np.ndarray]] = []
    real = evaluation.most_likely_tokens

    def spy(policy: object, prompts: list[list[int]], generated: list[list[int]], **kw: object) -> np.ndarray:
        out = real(policy, prompts, generated, **kw)  # type: ignore[arg-type]
        calls.append((list(prompts), list(generated), out))
        return out

    monkeypatch.setattr(evaluation, "most_likely_tokens", spy)
    bc = make_agent("bc", env="seqgym/Dyck-v0", seed=0, p_noise=0.5, **TINY).learn(1500)
    source = bc.env.unwrapped.source
    b = evaluate_recovery(bc, source, n=64, seed=3)
    st = sample_recovery_states(source, 64, seed=3, max_length=bc.max_length)
    ((prompts, generated, predicted),) = calls
    assert prompts == st.prompts and generated == st.clean  # the state just before the injected token
    allowed = [
        source.next_token_logprobs(p + c)[t] > -np.inf for p, c, t in zip(st.prompts, st.clean, predicted)
    ]
    assert b["known_share"] == pytest.approx(np.mean(allowed))


def test_most_likely_tokens_is_the_argmax_of_the_state_logits_without_backspace() -> None:
    from agents.evaluation import most_likely_tokens
    from seqgym.metrics import sample_recovery_states

    bc = make_agent("bc", env="seqgym/Dyck-v0", seed=0, **TINY)
    st = sample_recovery_states(bc.env.unwrapped.source, 40, seed=1, max_length=bc.max_length)
    got = most_likely_tokens(bc.policy, st.prompts, st.clean, batch_size=16)  # three batches
    want = []
    for lo in range(0, 40, 16):  # the same batches: the same left padding
        logits = bc.policy.state_logits(
            [p + c for p, c in zip(st.prompts[lo : lo + 16], st.clean[lo : lo + 16])],
            [len(p) for p in st.prompts[lo : lo + 16]],
        )
        logits[:, bc.vocab.backspace_id] = float("-inf")
        want += logits.argmax(-1).tolist()
    assert got.tolist() == want
    assert bc.vocab.backspace_id not in got.tolist()
    with pytest.raises(ValueError, match="prompts but"):
        most_likely_tokens(bc.policy, st.prompts, st.clean[:-1])
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            most_likely_tokens(bc.policy, st.prompts, st.clean, batch_size=bad)  # type: ignore[arg-type]


def test_fine_tuning_starts_from_the_saved_agents_policy(tmp_path: Path) -> None:
    mle = make_agent("mle", env="seqgym/Dyck-v0", seed=0, **TINY).learn(200)
    mle.save(tmp_path / "mle")
    kw = {k: v for k, v in TINY.items() if k != "policy_kwargs"}
    sm = make_agent("sequencematch", env="seqgym/Dyck-v0", seed=1, policy=str(tmp_path / "mle"), **kw)
    for p, q in zip(sm.policy.parameters(), mle.policy.parameters()):
        torch.testing.assert_close(p, q, atol=0.0, rtol=0.0)
    sm.train(n_batches=2)
    assert any(not torch.equal(p, q) for p, q in zip(sm.policy.parameters(), mle.policy.parameters()))
    with pytest.raises(ValueError, match="Cannot load"):
        make_agent("bc", env="seqgym/Dyck-v0", seed=1, policy=str(tmp_path / "missing"), **kw)


def test_library_defaults_are_the_setting_the_sweep_chose() -> None:
    from agents import SequenceMatchConfig
    from experiments.sweep import CHOSEN

    defaults = SequenceMatchConfig()
    assert {k: getattr(defaults, k) for k in CHOSEN} == CHOSEN


def test_the_sequencematch_benchmark_measures_the_library_default_refresh() -> None:
    from agents import SequenceMatchConfig
    from benchmarks.sequencematch_bench import Config, _agents

    defaults = SequenceMatchConfig()
    tiny = Config(n_layer=1, n_embd=16, n_head=2, n_demonstrations=8)
    _, sm = _agents(tiny)
    assert sm.config.replay_refresh_interval == defaults.replay_refresh_interval
    assert sm.config.mixture_size == defaults.mixture_size
    _, other = _agents(dataclasses.replace(tiny, replay_refresh_interval=8, mixture_size=16))
    assert (other.config.replay_refresh_interval, other.config.mixture_size) == (8, 16)
