"""Scaling up on one process: pretrained models (from a local folder, no download) with LoRA adapters, bf16
autocast, and ``device="cuda"`` end to end (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agents import Agent, make_agent
from agents.policy import LMPolicy
from seqgym.env import SequenceEnv
from seqgym.sources.text import Text

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}
TEXT = "the cat sat on the mat . the dog sat on the cat . a cat saw the dog on a mat . " * 8


def _save_gpt2(directory: Path) -> None:
    """A small 'pretrained' GPT-2 with a word-level tokenizer that has no backspace and no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<unk>", "</s>", "the", "cat", "sat", "on", "mat", ".", "dog", "a", "saw"]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=len(words), n_positions=32, n_embd=16, n_layer=2, n_head=2)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)


@pytest.fixture
def pretrained(tmp_path: Path) -> Path:
    _save_gpt2(tmp_path / "gpt2-tiny")
    return tmp_path / "gpt2-tiny"


def _text_env(path: Path) -> SequenceEnv:
    from transformers import AutoTokenizer

    source = Text(
        text=TEXT, tokenizer=AutoTokenizer.from_pretrained(str(path)), prompt_length=2, completion_length=4
    )
    return SequenceEnv(
        source, max_length=source.max_sequence_length, max_steps=2 * source.max_sequence_length
    )


def test_from_pretrained_adds_backspace_eos_and_pad_and_follows_a_text_source(pretrained: Path) -> None:
    env = _text_env(pretrained)
    v = env.unwrapped.vocab
    policy = LMPolicy.from_pretrained(pretrained, vocab=v)
    tok = policy.tokenizer
    assert tok.pad_token is not None  # added (the tokenizer had none)
    m = policy.token_map.env_to_model
    # the tokenizer's "</s>" stays an ordinary token of the text; the env's eos and <bksp> are new rows
    assert m[: v.n_tokens] == list(range(v.n_tokens))
    assert m[v.eos_id] >= v.n_tokens and m[v.backspace_id] >= v.n_tokens and m[v.eos_id] != m[v.backspace_id]
    assert policy.model.get_input_embeddings().weight.shape[0] == len(tok) == v.n_tokens + 2
    out = policy.generate([[2, 3]], max_steps=6, max_length=6, generator=torch.Generator().manual_seed(0))
    assert len(out.actions[0]) >= 1


def test_lora_trains_adapters_and_new_rows_and_saves_with_the_agent(pretrained: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    env = _text_env(pretrained)
    v = env.unwrapped.vocab
    policy = LMPolicy.from_pretrained(pretrained, vocab=v, lora={"r": 4})
    assert policy.is_lora
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    agent = make_agent(
        "bc",
        env=env,
        policy=policy,
        seed=0,
        n_demonstrations=16,
        batch_size=4,
        device="cpu",
        learning_rate=1e-2,
    )
    agent.policy.eval()  # the pretrained config has dropout
    before = agent.policy.trajectory_logits([[2, 3]], [[4, v.backspace_id, v.eos_id]]).logits.detach().clone()
    agent.train(n_batches=3)
    agent.policy.eval()
    after = agent.policy.trajectory_logits([[2, 3]], [[4, v.backspace_id, v.eos_id]]).logits.detach()
    assert not torch.allclose(before, after)  # the adapters and the new rows learnt
    for n, p in agent.policy.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # the pretrained weights did not move
    agent.save(tmp_path / "agent")
    saved = {p.name for p in (tmp_path / "agent" / "policy").iterdir()}
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved  # adapters only
    loaded = Agent.load(tmp_path / "agent", env=env, device="cpu")
    assert loaded.policy.is_lora
    again = loaded.policy.trajectory_logits([[2, 3]], [[4, v.backspace_id, v.eos_id]]).logits
    torch.testing.assert_close(again, after)
    loaded.train(n_batches=1)  # the adapters load trainable and the optimiser state fits them


def test_lora_on_a_model_built_from_a_config_saves_its_base(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    agent = make_agent(
        "bc", env="seqgym/Dyck-v0", seed=0, n_demonstrations=8, batch_size=4, device="cpu", policy_kwargs=TINY
    )
    policy = LMPolicy.from_config(agent.vocab, **TINY, seed=1).add_lora(r=2)
    with torch.no_grad():  # trained adapters (LoRA's B starts at 0, so untrained ones would change nothing)
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    base = LMPolicy.from_config(agent.vocab, **TINY, seed=1)
    assert not torch.allclose(policy.state_logits([[0, 1]], [1]), base.state_logits([[0, 1]], [1]))
    policy.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "base").is_dir()
    again = LMPolicy.load(tmp_path / "p")
    torch.testing.assert_close(again.state_logits([[0, 1]], [1]), policy.state_logits([[0, 1]], [1]))


def test_bf16_autocast_trains_and_generates_on_cpu() -> None:
    agent = make_agent(
        "bc",
        env="seqgym/Dyck-v0",
        seed=0,
        n_demonstrations=16,
        batch_size=4,
        device="cpu",
        mixed_precision="bf16",
        policy_kwargs=TINY,
    )
    with agent.autocast():
        out = agent.policy.trajectory_logits([[0]], [[1, 2]])
    plain = agent.policy.trajectory_logits([[0]], [[1, 2]])
    finite = out.logits.isfinite()
    assert out.logits.dtype == torch.float32  # upcast for the losses...
    assert torch.equal(out.logits[finite], out.logits[finite].bfloat16().float())  # ...from a bf16 forward
    assert not torch.equal(out.logits, plain.logits)
    agent.train(n_batches=2)
    assert all(p.dtype == torch.float32 for p in agent.policy.parameters())  # the weights stay float32
    assert agent.n_updates == 2
    assert len(agent.generate(3, seed=0).sequences) == 3
    with pytest.raises(ValueError, match="mixed_precision"):
        make_agent("bc", env="seqgym/Dyck-v0", mixed_precision="fp8")


@needs_cuda
@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("name", ["mle", "bc", "sequencematch"])
def test_cuda_end_to_end(name: str, precision: str, tmp_path: Path) -> None:
    extra = {"bc_warmup_steps": 1, "replay_refresh_interval": 2} if name == "sequencematch" else {}
    agent = make_agent(
        name,
        env="seqgym/Dyck-v0",
        seed=0,
        n_demonstrations=32,
        batch_size=8,
        device="cuda",
        mixed_precision=precision,
        policy_kwargs=TINY,
        **extra,
    )
    assert agent.policy.device.type == "cuda"
    agent.train(n_batches=4)
    out = agent.generate(8, seed=0)
    assert len(out.sequences) == 8
    agent.save(tmp_path / "a")
    loaded = Agent.load(tmp_path / "a", device="cuda")
    assert loaded.policy.device.type == "cuda"
    loaded.train(n_batches=1)
    cpu = Agent.load(tmp_path / "a", device="cpu")
    torch.testing.assert_close(
        cpu.policy.state_logits([[0, 1]], [1]),
        agent.policy.state_logits([[0, 1]], [1]).cpu(),
        atol=1e-4,
        rtol=1e-4,
    )


@needs_cuda
def test_cuda_masked_forward_and_generation_match_the_reference() -> None:
    agent = make_agent(
        "bc", env="seqgym/Dyck-v0", seed=0, n_demonstrations=8, device="cuda", policy_kwargs=TINY
    )
    policy = agent.policy
    bk = agent.vocab.backspace_id
    out = policy.trajectory_logits([[0]], [[1, bk, 0, 2]])
    ref = policy.state_logits([[0], [0, 1], [0], [0, 0], [0, 0, 2]], [1, 1, 1, 1, 1])
    torch.testing.assert_close(out.logits[0], ref, atol=1e-4, rtol=1e-4)
    gen = policy.generate(
        [[0]] * 64,
        max_steps=12,
        max_length=10,
        generator=torch.Generator("cuda").manual_seed(0),
        output_logits=True,
    )
    assert gen.logits is not None and gen.logits[0].device.type == "cuda"


def test_text_study_fine_tunes_a_pretrained_model_with_lora(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from experiments import text

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "the cat sat on the mat while a dog ran in the park and birds sang over the old house".split()
    for k, name in enumerate(["a.txt", "b.txt", "held.txt"]):
        (corpus / name).write_text(" ".join(words[(i * 7 + k) % len(words)] for i in range(2000)) + "\n")
    ids = {w: i for i, w in enumerate(["<unk>", "<|endoftext|>", *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|endoftext|>")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        GPT2LMHeadModel(
            GPT2Config(vocab_size=len(ids), n_positions=64, n_embd=16, n_layer=1, n_head=2)
        ).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    cfg = text.Config(
        corpus=corpus,
        heldout="held.txt",
        pretrained=str(tmp_path / "lm"),
        lora_r=2,
        prompt_length=4,
        completion_length=6,
        n_demonstrations=16,
        pretrain_budget=48,
        finetune_budget=96,
        batch_size=8,
        n_eval=8,
        agents=("mle", "bc"),
        out=tmp_path / "out",
        progress=False,
        checkpoint_every=100,
        n_gallery=0,
    )
    results = text.main(cfg)
    assert {r["agent"] for r in results["runs"]} == {"pretrained", "mle", "bc", "human (held-out)"}
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    saved = run_dir / "agents" / "finetuned_bc"
    assert (saved / "policy" / "adapter_model.safetensors").exists()
    assert Agent.load(saved).policy.is_lora
    with pytest.raises(text.ConfigError, match="--lora-r needs --pretrained"):
        text.main(text.Config(lora_r=2, out=tmp_path / "x"))
