"""Real text: MLE pre-training, then BC and SequenceMatch fine-tuning, judged on a held-out novel.

1. Train a byte-level BPE tokenizer on the training novels and a small model (``--architecture``, GPT-2 by
   default, built from a config) by MLE on random windows of them (``prompt_length`` tokens of prompt,
   ``completion_length`` to continue).
2. From that model, fine-tune three agents for the same budget: MLE (continued), BC and SequenceMatch (both on
   backspace-augmented windows).
3. On prompts drawn from the held-out novel, each agent continues the text; report MAUVE against the true
   continuations (MiniLM features, offline), distinct-n and rep-n of the continuations, the backspace rate, and
   the perplexity of held-out windows (the direct, backspace-free path). Prompts and generation settings are
   written into ``results.json``.

With ``--pretrained NAME_OR_PATH`` step 1 starts from a pretrained Hugging Face causal LM instead (its tokenizer
replaces the BPE one; ``<backspace>`` and the env's eos are added to it), optionally with LoRA adapters
(``--lora-r 8``): MLE then fine-tunes it on the windows for ``pretrain_budget`` pairs before the three agents.

Default corpus: the six Austen novels shipped with the project (``experiments/data/austen``, xz-compressed;
``persuasion.txt`` held out); ``--corpus FOLDER`` trains on another folder of ``.txt`` files.
The tokenizer and the trained agents are saved under ``--out/runs/<digest>/`` (``digest``: a hash of the settings
that change training, of the library's source code and of its version), so an interrupted run resumes from what
is there, and a changed setting or edited code never reuses them. Besides ``results.json`` and ``table.md``, the
study writes ``samples.md``: each agent's continuations of the same held-out prompts side by side, deleted tokens
struck through. Every option is checked before anything is trained.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents import Agent, make_agent
from agents.evaluation import policy_heldout_nll
from experiments.common import (
    IMITATION_AGENTS,
    AgentSettings,
    ConfigError,
    check_int,
    check_number,
    format_table,
    run_cli,
    run_stamp,
    stamp_digest,
    summarize,
    torch_threads,
    write_json_atomic,
    write_text_atomic,
)
from experiments.corpus import AUSTEN, HELDOUT, bundled_corpus, checksums
from experiments.gallery import gallery_samples, write_gallery
from experiments.progress import StudyLog
from seqgym.data import collect
from seqgym.env import SequenceEnv
from seqgym.sources.text import Text
from seqgym.sources.tokenizers import tokenizer_from_json
from seqgym.text_metrics import distinct_n, mauve_score, rep_n


@dataclasses.dataclass
class Config(AgentSettings):
    """MLE pre-training, then BC / SequenceMatch fine-tuning, on real text."""

    corpus: Path | None = None
    """A folder of .txt files holding the training files and the held-out one. None: the six Austen novels
    shipped with the project (``experiments/data/austen``), decompressed into ``out/corpus``."""
    heldout: str = HELDOUT
    """File name (inside the corpus) held out for evaluation."""
    vocab_size: int = 1024
    """BPE tokens."""
    prompt_length: int = 16
    """Prompt tokens per window."""
    completion_length: int = 32
    """Completion tokens per window (then eos)."""
    n_layer: int = 4
    """Transformer layers (a larger model than on the toy tasks)."""
    n_embd: int = 192
    """Width (a multiple of n_head)."""
    n_head: int = 4
    """Attention heads."""
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
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float | None = None
    """Nucleus sampling (None: plain sampling)."""
    pretrained: str | None = None
    """A Hugging Face causal LM (hub name or local folder) to fine-tune instead of training a model from scratch
    (e.g. ``gpt2``); its tokenizer replaces the BPE one, and the architecture / n_layer / n_embd / n_head /
    vocab_size options are unused."""
    lora_r: int = 0
    """LoRA rank of the adapters put on the pretrained model (``peft``; 0: every weight is trained)."""
    seed: int = 0
    """Seed of the data, the models and the evaluation prompts."""
    n_gallery: int = 5
    """Held-out prompts shown in the sample gallery (samples.md; 0: none)."""
    out: Path = Path("results/text")
    """Output folder."""
    checkpoint_every: int = 500
    """Updates between checkpoints of each training run."""

    def check(self) -> None:
        """Raise :class:`~experiments.common.ConfigError` (naming the flag) for any invalid option, before
        anything runs."""
        super().check()
        if not self.agents:
            raise ConfigError("--agents is empty; name at least one agent.")
        for a in self.agents:
            if a not in IMITATION_AGENTS:
                raise ConfigError(f"Unknown agent {a!r}; choose from {IMITATION_AGENTS}.")
        if len(set(self.agents)) != len(self.agents):
            raise ConfigError(f"--agents lists an agent twice: {list(self.agents)}.")
        for name in ("vocab_size", "completion_length", "pretrain_budget", "finetune_budget", "n_eval"):
            check_int(name, getattr(self, name))
        check_int("checkpoint_every", self.checkpoint_every)
        check_int("prompt_length", self.prompt_length, low=0)
        check_int("seed", self.seed, low=0)
        check_int("n_gallery", self.n_gallery, low=0)
        check_int("lora_r", self.lora_r, low=0)
        if self.lora_r and self.pretrained is None:
            raise ConfigError("--lora-r needs --pretrained (LoRA adapts a pretrained model).")
        check_number("p_noise", self.p_noise, low=0.0, high=1.0)
        check_number("temperature", self.temperature, low=0.0, low_open=True)
        if self.top_p is not None:
            check_number("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        _files(self, check_only=True)


NOT_IN_TRAINING = (
    "agents",
    "n_eval",
    "temperature",
    "top_p",
    "out",
    "resume",
    "progress",
    "checkpoint_every",
    "n_gallery",
)
"""Config fields that do not change the tokenizer or the trained agents (left out of the run digest)."""


def _files(cfg: Config, *, check_only: bool = False) -> tuple[list[Path], Path]:
    """The training files and the held-out file of the corpus (the shipped novels, decompressed into
    ``out/corpus``, when ``cfg.corpus`` is None). ``check_only``: raise :class:`ConfigError` for a missing or
    unusable corpus without writing anything."""
    if cfg.corpus is None:
        names = sorted(checksums()) if (AUSTEN / "SHA256SUMS").exists() else []
        if cfg.heldout not in names:
            raise ConfigError(
                f"--heldout {cfg.heldout!r} is not one of the shipped novels ({', '.join(names) or 'none found'})."
            )
        if check_only:
            return [], AUSTEN / cfg.heldout
        folder = bundled_corpus(cfg.out / "corpus")
    else:
        folder = cfg.corpus
        if not folder.is_dir():
            raise ConfigError(
                f"--corpus {str(folder)!r} is not a folder (of .txt files, the held-out one included)."
            )
    files = sorted(folder.glob("*.txt"))
    held = folder / cfg.heldout
    if not files or held not in files:
        raise ConfigError(f"Need .txt files in {folder} including the held-out {cfg.heldout!r}.")
    train = [f for f in files if f != held]
    if not train:
        raise ConfigError(f"{folder} holds only the held-out {cfg.heldout!r}; add training .txt files.")
    return train, held


def _trained(
    cfg: Config, run_dir: Path, name: str, build: Any, budget: int, env: SequenceEnv, log: StudyLog
) -> tuple[Agent, float]:
    """Load ``run_dir/agents/name`` if it is finished; else resume from its newest checkpoint under
    ``run_dir/checkpoints/name`` (or build it), train it to ``budget`` and save it. Returns the agent and the
    seconds its training took (recorded in ``run_dir/train_seconds.json``, so a loaded agent reports them too;
    a run resumed from a checkpoint reports the seconds of its last part only)."""
    path = run_dir / "agents" / name
    times_path = run_dir / "train_seconds.json"
    times: dict[str, float] = json.loads(times_path.read_text()) if times_path.exists() else {}
    if cfg.resume and (path / "agent.json").exists():
        log.run(f"loading {name} from {path}")
        return Agent.load(path, env=env), float(times.get(name, float("nan")))
    ckpt_dir = run_dir / "checkpoints" / name
    latest = Agent.latest_checkpoint(ckpt_dir) if cfg.resume else None
    if latest is not None:
        agent = Agent.load(latest, env=env)
        log.run(f"resuming {name} from {latest} ({agent.num_timesteps} of {budget} steps)")
    else:
        log.run(f"training {name} for {budget} steps")
        agent = build(checkpoint_dir=str(ckpt_dir), checkpoint_every=cfg.checkpoint_every)
    start = time.perf_counter()
    remaining = budget - agent.num_timesteps
    if remaining > 0:
        with log.bar(name, budget) as bar:
            bar.update(agent.num_timesteps)
            agent.learn(
                remaining,
                progress_bar=False,
                log_interval=0,
                reset_num_timesteps=latest is None,
                callback=bar.callback(),
            )
    seconds = time.perf_counter() - start
    agent.save(path)
    write_json_atomic(times_path, {**times, name: seconds})
    return agent, seconds


def main(cfg: Config) -> dict[str, Any]:
    """Run the text study; returns what it writes to ``results.json``.

    Raises:
        ConfigError: an invalid option or corpus (before anything is trained or written).
    """
    cfg.check()
    with torch_threads(cfg.threads):
        return _main(cfg)


def _main(cfg: Config) -> dict[str, Any]:
    train_files, held = _files(cfg)
    run_dir = cfg.out / "runs" / stamp_digest(run_stamp(cfg, ignore=NOT_IN_TRAINING))
    log = StudyLog("text", 1 + len(cfg.agents), progress=cfg.progress)
    tok_path = run_dir / "tokenizer.json"
    tokenizer: Any = "bpe"
    if cfg.pretrained is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained)
    elif cfg.resume and tok_path.exists():
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
    model: dict[str, Any] = {"policy_kwargs": {**cfg.policy_kwargs(), "n_positions": max_length + 2}}
    if cfg.pretrained is not None:
        from agents.policy import LMPolicy

        model = {
            "policy": LMPolicy.from_pretrained(
                cfg.pretrained,
                vocab=env.vocab,
                tokenizer=copy.deepcopy(tokenizer),  # the policy adds <bksp> and eos to its own copy
                lora={"r": cfg.lora_r, "lora_alpha": 2 * cfg.lora_r} if cfg.lora_r else None,
            )
        }
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
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            **model,
            **ckpt,
        ),
        cfg.pretrain_budget,
        env,
        log,
    )
    agents: dict[str, Agent] = {}
    seconds: dict[str, float] = {"pretrain": pre_seconds}
    for name in cfg.agents:
        kw = cfg.agent_kwargs(
            name,
            p_noise=None if name == "mle" else cfg.p_noise,
            learning_rate=cfg.learning_rate / 3,
            with_policy_kwargs=False,
        )
        kw["seed"] = cfg.seed

        def build(name: str = name, kw: dict[str, Any] = kw, **ckpt: Any) -> Agent:
            policy = copy.deepcopy(base.policy)
            return make_agent(name, env=env, demonstrations=demos, policy=policy, **kw, **ckpt)

        agents[name], seconds[name] = _trained(
            cfg, run_dir, f"finetuned_{name}", build, cfg.finetune_budget, env, log
        )

    rng = np.random.default_rng(cfg.seed + 1)
    pairs = [test.sample(rng) for _ in range(cfg.n_eval)]
    prompts = [p for p, _ in pairs]
    references = [test.decode(c) for _, c in pairs]
    from seqgym.text_metrics import minilm_featurizer

    featurizer = minilm_featurizer()
    records = []
    gallery: dict[str, list[dict[str, Any]]] = {}
    k = cfg.n_gallery
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
        gallery[name] = gallery_samples(gen.sequences[:k], gen.actions[:k], env.vocab, decode=test.decode)
        records[-1]["samples"] = gallery[name]
        log.note(f"evaluated {name}: MAUVE {records[-1]['mauve']:.3f}")
    gallery["human (held-out)"] = gallery_samples(
        [[*p, *c] for p, c in pairs[:k]], [c for _, c in pairs[:k]], env.vocab, decode=test.decode
    )
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
    write_text_atomic(cfg.out / "table.md", header + table + "\n")
    write_gallery(
        cfg.out / "samples.md",
        gallery,
        title=f"Continuations of held-out prompts ({cfg.heldout})",
        note=f"Temperature {cfg.temperature}, top-p {cfg.top_p}; the last column is the true continuation.",
    )
    print(header + table)
    print(f"\nwrote {', '.join(str(cfg.out / n) for n in ('results.json', 'table.md', 'samples.md'))}")
    return results


if __name__ == "__main__":
    run_cli(Config, main, prog="python -m experiments.text")
