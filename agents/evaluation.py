"""Judge any sequence generator the same way: imitation agents, SB3 baselines, or your own.

A *generator* is anything with ``generate(n, *, seed) -> Generation`` (``sequences``, ``actions``): every
:class:`~agents.base.Agent` and :class:`~agents.sb3.SB3Baseline` is one. Metrics come from
:mod:`seqgym.metrics`; the held-out NLL needs a language model (:class:`~agents.policy.LMPolicy`).

Example:
    >>> from agents import make_agent
    >>> agent = make_agent("mle", env="seqgym/Dyck-v0", seed=0, n_demonstrations=8,
    ...                    policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2})
    >>> m = evaluate_generator(agent, agent.env.unwrapped.source, n=16, seed=1, n_reference=500)
    >>> 0.0 <= m["validity"] <= 1.0, m["n_samples"]
    (True, 16.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from agents.policy import Generation, LMPolicy
from seqgym.dynamics import pad_histories, surviving_actions
from seqgym.metrics import SourceStatistics, evaluate_samples, model_heldout_nll

__all__ = [
    "Generator",
    "action_logits",
    "evaluate_generator",
    "evaluate_recovery",
    "most_likely_tokens",
    "policy_heldout_nll",
    "sequence_logprobs",
]


class Generator(Protocol):
    """Anything that samples whole episodes: ``generate(n, *, seed) -> Generation``."""

    def generate(self, n: int | None = None, *, seed: int | None = None) -> Generation: ...


def evaluate_generator(
    generator: Generator,
    source: Any,
    *,
    n: int,
    seed: int,
    reference: SourceStatistics | None = None,
    n_reference: int = 10_000,
) -> dict[str, float]:
    """Draw ``n`` samples with ``seed`` and return :func:`seqgym.metrics.evaluate_samples` of them.

    Args:
        generator: an agent or baseline with ``generate``.
        source: the source that defines validity and the exact probabilities.
        n: number of samples (>= 1).
        seed: seed of the samples (prompts and actions).
        reference: the source's length / bigram statistics (computed with ``n_reference`` samples when None).

    Returns:
        the metric dict (validity, true log-prob per token, length / bigram TV, rep-n, backspace rate, ...).
    """
    gen = generator.generate(n, seed=seed)
    vocab = source.vocab
    # The generated part is the surviving actions (backspace is a no-op exactly when nothing generated is
    # left, with or without a prompt), so the prompt is the rest of the visible sequence.
    acts, n_steps = pad_histories(gen.actions, vocab.pad_id)  # (n, T), (n,)
    generated = surviving_actions(acts, 0, vocab, n_steps=n_steps).sum(axis=1)  # (n,)
    plens = [len(s) - int(g) for s, g in zip(gen.sequences, generated)]
    return evaluate_samples(
        source, gen.sequences, gen.actions, prompt_lengths=plens, reference=reference, n_reference=n_reference
    )


@torch.no_grad()
def sequence_logprobs(
    policy: LMPolicy,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    allow_backspace: bool = True,
    batch_size: int = 256,
) -> np.ndarray:
    """Total log-probability (nats) of each completion along its direct, backspace-free path.

    ``Σ_i log π(c_i | prompt + c_<i)``, shape ``(N,)``. For a policy that may backspace this is a *lower bound*
    on the marginal probability of the final text (paths with backspaces also reach it); with
    ``allow_backspace=False`` the backspace logit is removed before normalising (the MLE agent's policy).
    """
    out = np.zeros(len(prompts), dtype=np.float64)
    bk = policy.vocab.backspace_id
    for lo in range(0, len(prompts), batch_size):
        hi = min(lo + batch_size, len(prompts))
        tl = policy.trajectory_logits(list(prompts[lo:hi]), list(completions[lo:hi]))
        logits = tl.logits[:, :-1].float()  # (B, T, A)
        if not allow_backspace:
            logits = logits.clone()
            logits[..., bk] = float("-inf")
        logp = logits.log_softmax(-1).gather(-1, tl.actions[..., None])[..., 0]  # (B, T)
        out[lo:hi] = torch.where(tl.action_mask, logp, 0.0).sum(-1).double().cpu().numpy()
    return out


def policy_heldout_nll(
    policy: LMPolicy, source: Any, *, n: int = 1000, seed: int = 12345, allow_backspace: bool = True
) -> float:
    """Held-out NLL per token (nats/token) of ``policy`` on ``n`` fresh samples of ``source``.

    Uses :func:`sequence_logprobs` (the direct path; an upper bound on the NLL of a backspacing policy).
    """

    def score(prompts: list[list[int]], completions: list[list[int]]) -> np.ndarray:
        return sequence_logprobs(policy, prompts, completions, allow_backspace=allow_backspace)

    return model_heldout_nll(score, source, n=n, seed=seed)


@torch.no_grad()
def action_logits(
    policy: LMPolicy,
    prompts: Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]],
    *,
    allow_backspace: bool = True,
    batch_size: int = 256,
) -> torch.Tensor:
    """The policy's logits over env actions after each ``prompt + generated``, in batches.

    :meth:`~agents.policy.LMPolicy.state_logits` in the policy's current mode, without the autocast that
    generation may use (as :func:`sequence_logprobs`).

    Args:
        policy: the policy.
        prompts, generated: ``N`` prompts and the generated part after each (``[]``: the state is the prompt).
        allow_backspace: False sets the ``<backspace>`` logit to ``-inf`` everywhere (it is ``-inf`` at the
            prompt boundary anyway).
        batch_size: states per forward (>= 1).

    Returns:
        ``(N, A)`` float32 logits on the CPU.
    """
    if len(prompts) != len(generated):
        raise ValueError(f"Got {len(prompts)} prompts but {len(generated)} generated parts.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    chunks = [torch.empty(0, policy.vocab.n_actions)]
    for lo in range(0, len(prompts), batch_size):
        hi = min(lo + batch_size, len(prompts))
        states = [[*map(int, p), *map(int, g)] for p, g in zip(prompts[lo:hi], generated[lo:hi])]
        logits = policy.state_logits(states, [len(p) for p in prompts[lo:hi]]).float()  # (b, A)
        if not allow_backspace:
            logits[:, policy.vocab.backspace_id] = float("-inf")
        chunks.append(logits.cpu())
    return torch.cat(chunks)


def most_likely_tokens(
    policy: LMPolicy,
    prompts: Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]],
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """The policy's most likely token or eos (never ``<backspace>``) after each ``prompt + generated``: the
    argmax of :func:`action_logits` with ``<backspace>`` left out.

    Returns:
        ``(N,)`` int64 env ids.
    """
    logits = action_logits(policy, prompts, generated, allow_backspace=False, batch_size=batch_size)
    return logits.argmax(-1).numpy().astype(np.int64)


def evaluate_recovery(
    agent: Any,
    source: Any,
    *,
    n: int,
    seed: int,
    temperature: float = 1.0,
) -> dict[str, float]:
    """What ``<backspace>`` is for, measured (``docs/method.md`` §7): recovery from an injected mistake, false
    deletions, deliberate mistakes, and validity with backspace disabled.

    Three batches of ``n`` samples each, all from states drawn by :func:`seqgym.metrics.sample_recovery_states`
    with ``seed`` (so two agents evaluated with the same seed see the same states):

    - from ``prompt + injected`` (a clean generated prefix followed by an impossible token, all deletable):
      ``backspace_first`` (share whose first action deletes the mistake: P(``<backspace>`` next | just after
      it)), ``recovery`` (final sequence valid), ``mistake_removed`` (the injected token was deleted at some
      point); for an agent with an :class:`~agents.policy.LMPolicy`, also ``known_share`` (share of states where
      the policy's most likely token at ``prompt + clean``, just before the injected token, is one the source
      allows: a proxy for knowing what belongs there) and ``backspace_first`` split over those states and the
      others (``backspace_first_known``, ``backspace_first_unknown``; ``nan`` where there are none). The two
      classes are the agent's own, so the split values of two agents are not paired;
    - from ``prompt + clean`` (the clean prefix alone): ``false_deletions`` (share that deleted a correct token
      of the prefix);
    - from the prompts, as usual: ``deliberate_mistakes`` (tokens emitted then deleted, per sequence), split into
      ``deleted_allowed`` and ``deleted_ruled_out`` by the source's verdict, ``validity``, and
      ``validity_no_backspace`` (the same prompts and seed with ``<backspace>`` masked: the difference is what
      backspace buys).

    Args:
        agent: an agent (``generate(prompts=..., generated=..., seed=..., temperature=..., backspace=...)``).
        source: a source with ``next_token_logprobs`` and ``is_valid``.
        n: samples per batch (>= 1).
        seed: seeds the states and the sampling.
        temperature: sampling temperature.

    Returns:
        The metrics above, floats.
    """
    from seqgym.metrics import deletion_stats, recovery_metrics, sample_recovery_states, validity_rate

    states = sample_recovery_states(source, n, seed=seed, max_length=agent.max_length)
    out: dict[str, float] = {}
    bad = agent.generate(
        prompts=states.prompts, generated=states.injected, seed=seed + 1, temperature=temperature
    )
    policy = getattr(agent, "policy", None)
    predicted = (
        most_likely_tokens(policy, states.prompts, states.clean) if isinstance(policy, LMPolicy) else None
    )
    out.update(recovery_metrics(source, states.prompts, states.injected, bad.actions, predicted=predicted))
    clean = agent.generate(
        prompts=states.prompts, generated=states.clean, seed=seed + 2, temperature=temperature
    )
    out["false_deletions"] = deletion_stats(source, states.prompts, clean.actions, states.clean)[
        "false_deletions"
    ]
    free = agent.generate(prompts=states.prompts, seed=seed + 3, temperature=temperature)
    d = deletion_stats(source, states.prompts, free.actions)
    out.update({k: d[k] for k in ("deliberate_mistakes", "deleted_allowed", "deleted_ruled_out")})
    out["validity"] = validity_rate(source, free.sequences)
    plain = agent.generate(prompts=states.prompts, seed=seed + 3, temperature=temperature, backspace=False)
    out["validity_no_backspace"] = validity_rate(source, plain.sequences)
    return {k: float(v) for k, v in out.items()}
