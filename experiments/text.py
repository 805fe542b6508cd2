"""Real text: MLE pre-training, then BC and SequenceMatch fine-tuning, judged on a held-out novel.

1. Train a byte-level BPE tokenizer on the training novels and a small GPT-2 (built from a config) by MLE on
   random windows of them (``prompt_length`` tokens of prompt, ``completion_length`` to continue).
2. From that model, fine-tune three agents for the same budget: MLE (continued), BC and SequenceMatch (both on
   backspace-augmented windows).
3. On prompts drawn from the held-out novel, each agent continues the text; report MAUVE against the true
   continuations (MiniLM features, offline), distinct-n and rep-n of the continuations, the backspace rate, and
   the perplexity of held-out windows (the direct, backspace-free path). Prompts and generation settings are
   written into ``results.json``.

Default corpus: the six Austen novels in ``../shared/data/austen`` (``persuasion.txt`` held out).
The tokenizer and the trained agents are saved under ``--out/runs/<digest>/`` (``digest``: a hash of the settings
that change training), so an interrupted run resumes from what is there and a changed setting never reuses them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from agents import Agent, make_agent
from agents.evaluation import policy_heldout_nll
from experiments.common import config_digest, format_table, summarize, write_json_atomic
from seqgym.data import collect
from seqgym.env import SequenceEnv
from seqgym.sources.text import Text
from seqgym.sources.tokenizers import tokenizer_from_json
from seqgym.text_metrics import distinct_n, mauve_score, rep_n


@dataclasses.dataclass
class Config:
    """MLE pre-training, then BC / SequenceMatch fine-tuning, on real text."""

    corpus: Path = Path("../shared/data/austen")
    """A folder of .txt files (or one file): the training corpus."""
    heldout: str = "persuasion.txt"
    """File name (inside ``corpus``) held out for evaluation."""
    vocab_size: int = 1024
    """BPE tokens."""
    prompt_length: int = 16
    """Prompt tokens per window."""
    completion_length: int = 32
    """Completion tokens per window (then eos)."""
    n_layer: int = 4
    """Transformer layers."""
    n_embd: int = 192
    """Width (4 heads)."""
    n_demonstrations: int = 30_000
    """Training windows (demonstrations): 30k windows of 48 tokens cover the ~1.3M training tokens about once."""
    pretrain_budget: int = 4_000_000
    """(state, action) pairs of MLE pre-training (about 2,700 updates of ``batch_size`` windows)."""
    finetune_budget: int = 400_000
    """(state, action) pairs of each fine-tuning run (about 270 updates)."""
    agents: tuple[str, ...] = ("mle", "bc", "sequencematch")
    """Fine-tuned agents."""
    p_noise: float = 0.1
    """Backspace augmentation of BC and SequenceMatch."""
    learning_rate: float = 1e-3
    """Learning rate (pre-training; fine-tuning uses a third of it)."""
    batch_size: int = 32
    """Windows per update."""
    n_eval: int = 500
    """Held-out prompts (and reference continuations) for MAUVE and the diversity metrics."""
    sm_chi2_coef: float = 20.0
    """SequenceMatch χ² coefficient c."""
    sm_bc_weight: float = 2.0
    """SequenceMatch behaviour-cloning anchor weight λ_bc."""
    sm_bc_warmup_steps: int = 50
    """SequenceMatch updates of BC alone before the full loss (fewer than on toy tasks: it starts from the
    pre-trained model, which only has to learn ``<backspace>``)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float | None = None
    """Nucleus sampling (None: plain sampling)."""
    seed: int = 0
    """Seed of the data, the models and the evaluation prompts."""
    out: Path = Path("results/text")
    """Output folder."""
    resume: bool = True
    """Load agents already trained under out/agents, and resume interrupted training from out/checkpoints."""
    checkpoint_every: int = 500
    """Updates between checkpoints of each training run."""
    progress: bool = True
    """Progress bars."""


NOT_IN_TRAINING = (
    "agents",
    "n_eval",
    "temperature",
    "top_p",
    "out",
    "resume",
    "progress",
    "checkpoint_every",
)
"""Config fields that do not change the tokenizer or the trained agents (left out of the run digest)."""


def _files(cfg: Config) -> tuple[list[Path], Path]:
    if cfg.corpus.is_file():
        raise ValueError("corpus must be a folder holding the training files and the held-out file.")
    files = sorted(cfg.corpus.glob("*.txt"))
    held = cfg.corpus / cfg.heldout
    if not files or held not in files:
        raise FileNotFoundError(f"Need .txt files in {cfg.corpus} including the held-out {cfg.heldout!r}.")
    return [f for f in files if f != held], held


def _trained(
    cfg: Config, run_dir: Path, name: str, build: Any, budget: int, env: SequenceEnv
) -> tuple[Agent, float]:
    """Load ``run_dir/agents/name`` if it is finished; else resume from its newest checkpoint under
    ``run_dir/checkpoints/name`` (or build it), train it to ``budget`` and save it. Returns the agent and the
    seconds its training took (recorded in ``run_dir/train_seconds.json``, so a loaded agent reports them too;
    a run resumed from a checkpoint reports the seconds of its last part only)."""
    path = run_dir / "agents" / name
    times_path = run_dir / "train_seconds.json"
    times: dict[str, float] = json.loads(times_path.read_text()) if times_path.exists() else {}
    if cfg.resume and (path / "agent.json").exists():
        print(f"[text] loading {name} from {path}", flush=True)
        return Agent.load(path, env=env), float(times.get(name, float("nan")))
    ckpt_dir = run_dir / "checkpoints" / name
    latest = Agent.latest_checkpoint(ckpt_dir) if cfg.resume else None
    if latest is not None:
        agent = Agent.load(latest, env=env)
        print(f"[text] resuming {name} from {latest} ({agent.num_timesteps} of {budget} steps)", flush=True)
    else:
        print(f"[text] training {name} for {budget} steps", flush=True)
        agent = build(checkpoint_dir=str(ckpt_dir), checkpoint_every=cfg.checkpoint_every)
    start = time.perf_counter()
    remaining = budget - agent.num_timesteps
    if remaining > 0:
        agent.learn(remaining, progress_bar=cfg.progress, log_interval=0, reset_num_timesteps=latest is None)
    seconds = time.perf_counter() - start
    agent.save(path)
    write_json_atomic(times_path, {**times, name: seconds})
    return agent, seconds


def main(cfg: Config) -> dict[str, Any]:
    """Run the text study; returns what it writes to ``results.json``."""
    train_files, held = _files(cfg)
    run_dir = cfg.out / "runs" / config_digest(cfg, ignore=NOT_IN_TRAINING)
    tok_path = run_dir / "tokenizer.json"
    tokenizer: Any = "bpe"
    if cfg.resume and tok_path.exists():
        tokenizer = tokenizer_from_json(tok_path.read_text())
    train = Text(
        train_files,
        tokenizer=tokenizer,
        vocab_size=cfg.vocab_size,
        prompt_length=cfg.prompt_length,
        completion_length=cfg.completion_length,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(tok_path, train.tokenizer.to_dict())
    test = Text(
        held,
        tokenizer=train.tokenizer,
        prompt_length=cfg.prompt_length,
        completion_length=cfg.completion_length,
    )
    max_length = train.max_sequence_length
    env = SequenceEnv(train, max_length=max_length, max_steps=2 * max_length)
    demos = collect(train, cfg.n_demonstrations, np.random.default_rng(cfg.seed))
    common: dict[str, Any] = {"batch_size": cfg.batch_size, "seed": cfg.seed}
    policy_kwargs = {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": 4, "n_positions": max_length + 2}
    base, pre_seconds = _trained(
        cfg,
        run_dir,
        "pretrained_mle",
        lambda **ckpt: make_agent(
            "mle",
            env=env,
            demonstrations=demos,
            learning_rate=cfg.learning_rate,
            lr_schedule="cosine",
            policy_kwargs=policy_kwargs,
            **common,
            **ckpt,
        ),
        cfg.pretrain_budget,
        env,
    )
    agents: dict[str, Agent] = {}
    seconds: dict[str, float] = {"pretrain": pre_seconds}
    for name in cfg.agents:
        kw: dict[str, Any] = {"learning_rate": cfg.learning_rate / 3, **common}
        if name != "mle":
            kw["p_noise"] = cfg.p_noise
        if name == "sequencematch":
            kw.update(
                chi2_coef=cfg.sm_chi2_coef,
                bc_weight=cfg.sm_bc_weight,
                bc_warmup_steps=cfg.sm_bc_warmup_steps,
            )

        def build(name: str = name, kw: dict[str, Any] = kw, **ckpt: Any) -> Agent:
            policy = copy.deepcopy(base.policy)
            return make_agent(name, env=env, demonstrations=demos, policy=policy, **kw, **ckpt)

        agents[name], seconds[name] = _trained(
            cfg, run_dir, f"finetuned_{name}", build, cfg.finetune_budget, env
        )

    rng = np.random.default_rng(cfg.seed + 1)
    pairs = [test.sample(rng) for _ in range(cfg.n_eval)]
    prompts = [p for p, _ in pairs]
    references = [test.decode(c) for _, c in pairs]
    from seqgym.text_metrics import minilm_featurizer

    featurizer = minilm_featurizer()
    records = []
    for name, agent in {"pretrained": base, **agents}.items():
        gen = agent.generate(prompts=prompts, seed=cfg.seed + 2, temperature=cfg.temperature, top_p=cfg.top_p)
        texts = [test.decode(s[len(p) :]) for s, p in zip(gen.sequences, prompts)]
        n_act = sum(len(a) for a in gen.actions)
        nll = policy_heldout_nll(
            agent.policy, test, n=cfg.n_eval, seed=cfg.seed + 3, allow_backspace=agent.allow_backspace
        )
        records.append(
            {
                "agent": name,
                "mauve": mauve_score(texts, references, featurizer=featurizer),
                "distinct_2": distinct_n(texts, 2),
                "distinct_3": distinct_n(texts, 3),
                "rep_2": rep_n(texts, 2),
                "rep_3": rep_n(texts, 3),
                "perplexity": float(np.exp(nll)),
                "backspace_rate": sum(a.count(env.vocab.backspace_id) for a in gen.actions) / max(1, n_act),
                "train_seconds": seconds.get(name, float("nan")),
                "examples": [
                    {"prompt": test.decode(p), "continuation": t} for p, t in zip(prompts[:5], texts[:5])
                ],
            }
        )
        print(f"[text] evaluated {name}: MAUVE {records[-1]['mauve']:.3f}", flush=True)
    records.append(
        {
            "agent": "human (held-out)",
            "distinct_2": distinct_n(references, 2),
            "distinct_3": distinct_n(references, 3),
            "rep_2": rep_n(references, 2),
            "rep_3": rep_n(references, 3),
        }
    )
    metrics = ["mauve", "distinct_2", "distinct_3", "rep_2", "rep_3", "perplexity", "backspace_rate"]
    summary = summarize(records, metrics)
    table = format_table(summary, metrics)
    header = (
        f"Austen-style text, held-out {cfg.heldout}: pre-training {cfg.pretrain_budget} steps, fine-tuning "
        f"{cfg.finetune_budget} steps, {cfg.n_eval} held-out prompts, seed {cfg.seed}\n\n"
    )
    results = {
        "config": dataclasses.asdict(cfg),
        "generation": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_steps": env.max_steps},
        "prompts": [test.decode(p) for p in prompts],
        "summary": summary,
        "runs": records,
        "train_seconds": seconds,
    }
    write_json_atomic(cfg.out / "results.json", results)
    (cfg.out / "table.md").write_text(header + table + "\n")
    print(header + table)
    return results


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    main(tyro.cli(Config))
