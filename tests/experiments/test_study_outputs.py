"""What the studies show: "run k of N" and one progress bar per run (plain lines off a terminal), every table
printed and in table.md, figures over seeds, a sample gallery with deletions struck through, and the shipped
corpus."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from recovery_spy import spy_on_recovery

from agents import make_agent
from experiments import compare
from experiments.corpus import AUSTEN, HELDOUT, bundled_corpus, checksums
from experiments.gallery import gallery_samples, mark_actions, render_sample, write_gallery
from experiments.progress import RunBar, StudyLog
from seqgym.dynamics import replay
from seqgym.vocab import Vocabulary


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_progress_lines_off_a_terminal() -> None:
    out, err = io.StringIO(), io.StringIO()
    log = StudyLog("demo", 3, stream=out, bar_stream=err, timed=False)
    log.run("training mle (seed 0)")
    with log.bar("mle", total=1000) as bar:
        for done in range(0, 1101, 10):  # many updates, some past the budget
            bar.update(done)
    log.run("bc (seed 0)", cached=True)
    lines = out.getvalue().splitlines()
    assert lines == [
        "[demo] training mle (seed 0) (run 1 of 3)",
        "[demo]   mle: 250 / 1000 steps (25%)",
        "[demo]   mle: 500 / 1000 steps (50%)",
        "[demo]   mle: 750 / 1000 steps (75%)",
        "[demo]   mle: 1000 / 1000 steps (100%)",
        "[demo] cached bc (seed 0) (run 2 of 3)",
    ]
    assert err.getvalue() == "" and "\r" not in out.getvalue()


def test_one_bar_on_a_terminal_and_none_when_progress_is_off() -> None:
    out, term = io.StringIO(), Terminal()
    bar = RunBar("bc seed 0", 200, prefix="demo", stream=out, bar_stream=term)
    for done in (50, 100, 200):
        bar.update(done)
    bar.close()
    assert out.getvalue() == ""  # the bar replaces the plain lines
    drawn = term.getvalue()
    assert "bc seed 0" in drawn and "200/200" in drawn
    quiet_out, quiet_term = io.StringIO(), Terminal()
    quiet = RunBar("bc", 200, prefix="demo", enabled=False, stream=quiet_out, bar_stream=quiet_term)
    quiet.update(200)
    quiet.close()
    assert quiet_out.getvalue() == quiet_term.getvalue() == ""


def test_the_progress_callback_follows_an_agents_whole_budget_over_several_learn_calls() -> None:
    agent = make_agent(
        "mle",
        env="seqgym/Dyck-v0",
        seed=0,
        n_demonstrations=8,
        batch_size=4,
        policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2},
    )
    out = io.StringIO()
    bar = RunBar("mle", 120, prefix="demo", stream=out, bar_stream=io.StringIO(), timed=False)
    agent.learn(60, callback=bar.callback())
    assert bar.done == min(agent.num_timesteps, 120) > 0
    agent.learn(60, reset_num_timesteps=False, callback=bar.callback())
    assert bar.done == 120  # one bar for the run, not one per learn call
    assert out.getvalue().splitlines()[-1] == "[demo]   mle: 120 / 120 steps (100%)"


def test_compare_prints_and_writes_every_table_and_a_gallery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy_on_recovery(monkeypatch)
    cfg = compare.Config(
        agents=("mle", "bc"),
        seeds=(0, 1),
        budget=64,
        n_demonstrations=16,
        noise_levels=(0.0,),
        n_eval=8,
        n_curve=2,
        n_curve_samples=4,
        n_gallery=3,
        n_layer=1,
        n_embd=16,
        batch_size=8,
        out=tmp_path,
        progress=True,
        workers=1,  # progress bars (and the recovery spy) live in this process
    )
    results = compare.main(cfg)
    printed = capsys.readouterr().out
    for k in range(1, 7):  # 2 agents x 2 seeds + BC at p_noise=0 for both seeds (the noise study, by default)
        assert f"(run {k} of 6)" in printed
    assert "steps (100%)" in printed  # plain progress lines: the output is not a terminal
    table = (tmp_path / "table.md").read_text()
    assert "| mle |" in table and "| bc p=0.0 |" in table and "| bc p=0.1 |" in table
    for line in table.splitlines():
        if line.startswith("| bc p=") or line.startswith("| mle |"):
            assert "±" in line  # two seeds: mean ± std
            assert line in printed  # every table is printed, too
    noise = results["noise_summary"]
    assert noise["bc p=0.0"]["validity"][2] == noise["bc p=0.1"]["validity"][2] == 2  # over both seeds
    assert (tmp_path / "compare.png").stat().st_size > 0
    gallery = (tmp_path / "samples.md").read_text()
    assert "| # | mle | bc |" in gallery and "\n| 3 | " in gallery and "\n| 4 | " not in gallery
    saved = json.loads((tmp_path / "results.json").read_text())
    for rec in saved["runs"]:
        assert len(rec["samples"]) == 3
        for sample in rec["samples"]:
            assert sample["valid"] in (True, False)


@pytest.mark.parametrize("seed", range(20))
def test_marks_agree_with_the_reference_semantics(seed: int) -> None:
    vocab = Vocabulary(["a", "b", "c"])  # a b c, eos=3, backspace=4
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, 3, size=int(rng.integers(0, 3))).tolist()
    actions = rng.choice([0, 1, 2, 4, 4], size=int(rng.integers(0, 12))).tolist()
    if rng.random() < 0.5:
        actions.append(vocab.eos_id)
    marks = mark_actions(prompt, actions, vocab)
    final = replay(prompt, actions, vocab)
    assert [a for a, m in zip(actions, marks) if m == "kept"] == final[len(prompt) :]
    assert marks.count("deleted") == marks.count("backspace")
    for a, m in zip(actions, marks):
        assert (a == vocab.backspace_id) == (m in ("backspace", "no-op"))


def test_a_gallery_strikes_through_deleted_tokens_and_shows_each_agent_side_by_side(tmp_path: Path) -> None:
    vocab = Vocabulary(["(", ")", "|"])  # ( ) |, eos=3, backspace=4
    #          prompt "(" ; "|" deleted, ")" kept, eos        ; a backspace at the boundary, then cut
    sequences = [[0, 1, 3], [0, 0]]
    actions = [[2, 4, 1, 3], [4, 0]]
    samples = gallery_samples(sequences, actions, vocab, valid=lambda s: s == [0, 1, 3])
    assert samples[0]["pieces"] == [["|", "deleted"], ["", "backspace"], [")", "kept"]]
    assert samples[1]["pieces"] == [["", "no-op"], ["(", "kept"]]
    assert render_sample(samples[0]) == "✓ <b>(</b> <del>\\|</del>⌫)"
    assert render_sample(samples[1]) == "✗ <b>(</b> ( …"
    empty = gallery_samples([[3]], [[3]], vocab)[0]
    assert render_sample(empty) == "<i>(empty)</i>"
    text = write_gallery(tmp_path / "g" / "samples.md", {"mle": samples[:1], "bc": samples}, title="T")
    assert (tmp_path / "g" / "samples.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| # | mle | bc |"
    assert rows[1].startswith("| 1 | ✓") and rows[2] == "| 2 |  | ✗ <b>(</b> ( … |"


def test_the_austen_corpus_ships_compressed_and_decompresses_to_the_recorded_texts(tmp_path: Path) -> None:
    shipped = sorted(AUSTEN.glob("*.txt.xz"))
    assert len(shipped) == 6 and sum(p.stat().st_size for p in shipped) < 2 * 2**20
    sums = checksums()
    assert HELDOUT in sums and len(sums) == 6
    folder = bundled_corpus(tmp_path / "corpus")
    for name, digest in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert (folder / HELDOUT).read_text().lstrip().startswith("Persuasion")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    (folder / "emma.txt").write_text("damaged")
    bundled_corpus(folder)  # a damaged file is restored, the others are left alone
    assert hashlib.sha256((folder / "emma.txt").read_bytes()).hexdigest() == sums["emma.txt"]
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert {n for n in after if after[n] != before[n]} == {"emma.txt"}
