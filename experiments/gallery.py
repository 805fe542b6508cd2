"""A sample gallery: generations of each agent side by side, with deleted tokens struck through.

A run stores a few of its samples as :func:`gallery_samples` (JSON-ready); :func:`write_gallery` lays them out
as a Markdown table, one column per agent. Which tokens a backspace deleted comes from the scalar reference
semantics of :mod:`seqgym.dynamics` (:func:`mark_actions`).

Example:
    >>> from seqgym.vocab import Vocabulary
    >>> v = Vocabulary(["a", "b"])          # a=0, b=1, eos=2, backspace=3
    >>> mark_actions([], [0, 1, 3, 0, 2], v)
    ['kept', 'deleted', 'backspace', 'kept', 'kept']
    >>> sample = {"prompt": "", "pieces": [["a", "kept"], ["b", "deleted"], ["", "backspace"], ["a", "kept"]],
    ...           "ended": True, "valid": True}
    >>> render_sample(sample)
    '✓ a<del>b</del>⌫a'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from seqgym.dynamics import replay, states
from seqgym.vocab import Vocabulary

__all__ = ["Mark", "gallery_samples", "mark_actions", "render_sample", "write_gallery"]

Mark = Literal["kept", "deleted", "backspace", "no-op"]
"""What became of an action: ``kept`` (a token, or eos, in the final sequence), ``deleted`` (a token that a
later backspace removed), ``backspace`` (a backspace that removed a token), ``no-op`` (a backspace at the
prompt boundary, which changes nothing)."""

LEGEND = (
    "Each cell is one sample: the prompt (if any) in bold, then the generated tokens; a token that a later "
    "`<backspace>` deleted is struck through and the backspace shows as ⌫. ✓ / ✗: the sequence is valid / "
    "invalid for the task; … marks a sample cut by the length or step limit."
)


def mark_actions(prompt: Sequence[int], actions: Sequence[int], vocab: Vocabulary) -> list[Mark]:
    """What became of each action of one history (see :data:`Mark`), read off the states that
    :func:`seqgym.dynamics.states` says the history visits.

    Raises ``ValueError`` (from :func:`~seqgym.dynamics.states`) for an out-of-range action or one after eos.
    """
    visited = states(prompt, actions, vocab)  # T+1 states
    marks: list[Mark] = []
    writers: list[int] = []  # writers[j]: the step that wrote the j-th generated token still visible
    for i in range(len(actions)):
        grew = len(visited[i + 1]) - len(visited[i])
        if grew > 0:
            writers.append(i)
            marks.append("kept")
        elif grew < 0:
            marks[writers.pop()] = "deleted"
            marks.append("backspace")
        else:
            marks.append("no-op")
    return marks


def gallery_samples(
    sequences: Sequence[Sequence[int]],
    actions: Sequence[Sequence[int]],
    vocab: Vocabulary,
    *,
    decode: Callable[[Sequence[int]], str] | None = None,
    valid: Callable[[Sequence[int]], bool] | None = None,
) -> list[dict[str, Any]]:
    """JSON-ready samples for a gallery, from a generation's final ``sequences`` (prompt included) and its
    action ``histories`` (e.g. an agent's ``generate()`` result).

    Args:
        sequences, actions: one entry per sample.
        vocab: the vocabulary of the ids.
        decode: text of a list of ordinary ids (default: ``vocab.decode``); used per token for the generated
            part, so a struck-through token shows as itself.
        valid: whether a final sequence is valid for the task (``None``: unknown).

    Returns:
        per sample ``{"prompt": str, "pieces": [[text, mark], ...], "ended": bool, "valid": bool | None}``:
        eos is left out of the pieces (``ended`` says it was taken), a backspace's text is empty, and each
        stretch of tokens with the same mark is decoded as one piece (so a character split over byte-level
        tokens shows whole).
    """
    if len(sequences) != len(actions):
        raise ValueError(f"{len(sequences)} sequences but {len(actions)} action histories.")
    text = decode if decode is not None else (lambda ids: vocab.decode(ids))
    out = []
    for seq, acts in zip(sequences, actions):
        seq, acts = [int(t) for t in seq], [int(a) for a in acts]
        prompt = seq[: len(seq) - len(replay([], acts, vocab))]  # backspace never deletes the prompt
        pieces: list[list[str]] = []
        run: list[int] = []  # ids of the current stretch of tokens with the same mark, decoded together
        run_mark = ""
        for a, mark in [*zip(acts, mark_actions(prompt, acts, vocab)), (vocab.eos_id, "end")]:
            if a == vocab.eos_id or mark != run_mark or a == vocab.backspace_id:
                if run:
                    pieces.append([text(run), run_mark])
                run, run_mark = [], ""
            if a == vocab.backspace_id:
                pieces.append(["", mark])
            elif a != vocab.eos_id:
                run, run_mark = [*run, a], mark
        ended = bool(seq) and len(seq) > len(prompt) and seq[-1] == vocab.eos_id
        out.append(
            {
                "prompt": text(prompt) if prompt else "",
                "pieces": pieces,
                "ended": ended,
                "valid": None if valid is None else bool(valid(seq)),
            }
        )
    return out


_MARKDOWN = {c: "\\" + c for c in "\\`*_[]|~"}
_MARKDOWN.update({"<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": "⏎", "\r": ""})


def _escape(text: str) -> str:
    return "".join(_MARKDOWN.get(c, c) for c in text)


def render_sample(sample: Mapping[str, Any]) -> str:
    """One sample of :func:`gallery_samples` as Markdown: validity mark, bold prompt, generated tokens with
    ``<del>`` around deleted ones and ⌫ for each backspace that deleted one."""
    parts = []
    if sample.get("valid") is not None:
        parts.append("✓ " if sample["valid"] else "✗ ")
    if sample.get("prompt"):
        parts.append(f"<b>{_escape(sample['prompt'])}</b> ")
    body = []
    for text, mark in sample["pieces"]:
        if mark == "deleted":
            body.append(f"<del>{_escape(text)}</del>")
        elif mark == "backspace":
            body.append("⌫")
        elif mark == "kept":
            body.append(_escape(text))
    parts.append("".join(body) or "<i>(empty)</i>")
    if not sample.get("ended", True):
        parts.append(" …")
    return "".join(parts)


def write_gallery(
    path: str | os.PathLike[str],
    columns: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    title: str,
    note: str = "",
) -> str:
    """Write a Markdown gallery to ``path`` (folders created): one column per entry of ``columns`` (agent ->
    its samples from :func:`gallery_samples`), one row per sample index. Returns the Markdown."""
    names = list(columns)
    n_rows = max((len(v) for v in columns.values()), default=0)
    lines = [f"# {title}", "", LEGEND, ""]
    if note:
        lines += [note, ""]
    if names:
        lines.append("| # | " + " | ".join(_escape(n) for n in names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for i in range(n_rows):
            cells = [render_sample(columns[n][i]) if i < len(columns[n]) else "" for n in names]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")
    return text
