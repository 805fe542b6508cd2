from __future__ import annotations

import numpy as np
import pytest

from agents.buffers import ReplayBuffer, Rollouts


def _fill(buf: ReplayBuffer, n: int, start: int = 0) -> None:
    """Add records whose single prompt id and first action both equal their running index."""
    for k in range(start, start + n):
        buf.add([[k % 7]], [[k, 1, 2][: 1 + k % 3]], [k % 2 == 0])


def test_ring_keeps_the_newest_records_in_order():
    buf = ReplayBuffer(3, max_prompt_length=2, max_steps=3)
    _fill(buf, 5)
    assert len(buf) == 3 and buf.n_added == 5
    everything = buf.all()
    assert [int(a[0]) for a in everything.actions] == [2, 3, 4]
    assert [p.tolist() for p in everything.prompts] == [[2], [3], [4]]
    assert everything.terminal.tolist() == [True, False, True]
    assert [len(a) for a in everything.actions] == [3, 1, 2]


def test_one_add_larger_than_capacity_keeps_its_tail():
    buf = ReplayBuffer(2, max_prompt_length=0, max_steps=2)
    buf.add([[], [], []], [[0], [1], [2, 3]], [False, False, True])
    assert [a.tolist() for a in buf.all().actions] == [[1], [2, 3]]
    assert buf.all().terminal.tolist() == [False, True]


def test_memory_is_allocated_once_and_bounded():
    buf = ReplayBuffer(16, max_prompt_length=5, max_steps=9)
    expected = 16 * (5 + 9) * 8 + 16 * (8 + 8 + 8 + 1)  # ids; lengths, birth update, flag
    assert buf.nbytes == expected
    _fill(buf, 1000)
    assert buf.nbytes == expected and len(buf) == 16


def test_sample_is_seeded_and_draws_only_stored_records():
    buf = ReplayBuffer(8, max_prompt_length=1, max_steps=3)
    _fill(buf, 5)
    a = buf.sample(4, np.random.default_rng(1))
    b = buf.sample(4, np.random.default_rng(1))
    assert isinstance(a, Rollouts) and len(a) == 4
    assert [x.tolist() for x in a.actions] == [x.tolist() for x in b.actions]
    firsts = [int(x[0]) for x in a.actions]
    assert len(set(firsts)) == 4 and set(firsts) <= set(range(5))  # without replacement when possible
    assert len(buf.sample(20, np.random.default_rng(0))) == 20  # with replacement beyond the stored size
    returned = buf.sample(1, np.random.default_rng(0)).actions[0]
    returned[0] = 99  # samples are copies
    assert 99 not in [int(x[0]) for x in buf.all().actions]


def test_bad_input_raises_and_stores_nothing():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, max_prompt_length=1, max_steps=1)
    with pytest.raises(ValueError, match="max_steps"):
        ReplayBuffer(1, max_prompt_length=1, max_steps=0)
    buf = ReplayBuffer(4, max_prompt_length=1, max_steps=2)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_prompt_length"):
        buf.add([[0], [0, 1]], [[0], [0]], [False, False])
    with pytest.raises(ValueError, match="max_steps"):
        buf.add([[0]], [[0, 1, 2]], [False])
    with pytest.raises(ValueError, match="max_steps"):
        buf.add([[0]], [[]], [False])
    with pytest.raises(ValueError, match="as many"):
        buf.add([[0]], [[0], [1]], [False])
    assert len(buf) == 0 and buf.n_added == 0
    buf.add([[0]], [[1]], [True])
    buf.clear()
    assert len(buf) == 0


def test_state_dict_round_trip():
    buf = ReplayBuffer(4, max_prompt_length=1, max_steps=3)
    _fill(buf, 6)
    other = ReplayBuffer(4, max_prompt_length=1, max_steps=3)
    other.load_state_dict(buf.state_dict())
    assert [a.tolist() for a in other.all().actions] == [a.tolist() for a in buf.all().actions]
    assert other.all().terminal.tolist() == buf.all().terminal.tolist() and other.n_added == 6
    _fill(buf, 1, start=6)
    _fill(other, 1, start=6)
    assert [a.tolist() for a in other.all().actions] == [a.tolist() for a in buf.all().actions]
    with pytest.raises(ValueError, match="does not fit"):
        ReplayBuffer(5, max_prompt_length=1, max_steps=3).load_state_dict(buf.state_dict())
