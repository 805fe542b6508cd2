"""Size limits, refused up front: operands beyond int64, a max_length beyond the model's positions or a
memory estimate, a demonstrations file that decompresses beyond a limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents import make_agent
from agents.common.agent import check_memory
from agents.policy import LMPolicy
from seqgym.env import SequenceEnv
from seqgym.sources.arithmetic import Arithmetic
from seqgym.sources.dyck import Dyck

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}


@pytest.mark.parametrize(("base", "most"), [(2, 62), (10, 18), (16, 15)])
def test_arithmetic_digits_beyond_int64_are_refused(base: int, most: int) -> None:
    src = Arithmetic(base=base, n_digits=most)
    seq = src.sample(np.random.default_rng(0))
    assert len(seq) <= src.max_sequence_length
    with pytest.raises(ValueError, match=rf"n_digits <= {most} in base {base}"):
        Arithmetic(base=base, n_digits=most + 1)
    with pytest.raises(ValueError, match="int64"):
        Arithmetic(base=base, n_digits=10**12)  # refused without computing base**n_digits


def test_max_length_beyond_the_policys_positions_is_refused() -> None:
    env = SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=200, max_steps=300)
    policy = LMPolicy.from_config(env.vocab, n_positions=64, **TINY)
    with pytest.raises(ValueError, match=r"64 positions but the env needs max_length \+ 1 = 201"):
        make_agent("bc", env=env, policy=policy, n_demonstrations=2)


def test_training_memory_beyond_the_device_is_refused() -> None:
    env = SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=200_000, max_steps=200_000)
    with pytest.raises(ValueError, match=r"need at least .* GiB per update .* shrink max_length"):
        make_agent("bc", env=env, policy_kwargs=dict(TINY), n_demonstrations=2, batch_size=32)
    cpu = torch.device("cpu")
    small = dict(max_length=17, max_steps=24, batch_size=32, n_positions=128, n_layer=2, n_embd=64, n_head=2)
    assert check_memory(**small, device=cpu) < 2**24
    with pytest.raises(ValueError, match=r"more than the 0\.0 GiB"):
        check_memory(**small, device=cpu, available=1000)
