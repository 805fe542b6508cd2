"""Size limits, refused up front: operands beyond int64, a max_length beyond the model's positions or a
memory estimate, a demonstrations file that decompresses beyond a limit."""

from __future__ import annotations

from typing import Any

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
    with pytest.raises(
        ValueError, match=r"need at least .* GiB per update \(mostly attention over .* shrink max_length"
    ):
        make_agent("bc", env=env, policy_kwargs=dict(TINY), n_demonstrations=2, batch_size=32)
    cpu = torch.device("cpu")
    small = dict(max_length=17, max_steps=24, batch_size=32, n_positions=128, n_layer=2, n_embd=64, n_head=2)
    assert check_memory(**small, device=cpu) < 2**24
    with pytest.raises(ValueError, match=r"more than the 0\.0 GiB"):
        check_memory(**small, device=cpu, available=1000)


def _demos(tmp_path: Any) -> Any:
    from seqgym.data import Trajectory, save_demonstrations
    from seqgym.vocab import Vocabulary

    v = Vocabulary(["a", "b"])
    demos = [Trajectory.from_completion([0], [1, 0, 1], vocab=v) for _ in range(50)]
    path = tmp_path / "demos.npz"
    save_demonstrations(path, demos)
    return path, demos, v


def test_demonstrations_beyond_the_size_limit_are_refused_before_decompressing(tmp_path: Any) -> None:
    import zipfile

    from seqgym.data import DemonstrationFileError, load_demonstrations

    path, demos, v = _demos(tmp_path)
    assert load_demonstrations(path, vocab=v) == demos
    with pytest.raises(DemonstrationFileError, match=r"decompresses to \d+ bytes, over the limit of 100"):
        load_demonstrations(path, max_bytes=100)
    # a zip bomb: 256 MiB of zeros in a member that compresses to about 256 kiB
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("header.npy", "w", force_zip64=True) as member:
            chunk = bytes(2**24)
            for _ in range(16):
                member.write(chunk)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(DemonstrationFileError, match="over the limit"):
        load_demonstrations(bomb, max_bytes=2**26)


def test_array_header_claiming_more_than_stored_is_refused(tmp_path: Any) -> None:
    import io
    import zipfile

    from seqgym.data import DemonstrationFileError, load_demonstrations

    lying = tmp_path / "lying.npz"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (2**40,)})
    with zipfile.ZipFile(lying, "w") as z:
        z.writestr("header.npy", buf.getvalue() + bytes(64))
    with pytest.raises(DemonstrationFileError, match="declares 8796093022208 bytes"):
        load_demonstrations(lying)
    with pytest.raises(ValueError, match="max_bytes"):
        load_demonstrations(lying, max_bytes=0)


def test_memory_estimate_counts_a_position_table_only_where_the_model_has_one(monkeypatch: Any) -> None:
    import agents.common.agent as agent_module

    env = SequenceEnv(Dyck(2, max_depth=3, max_length=8), max_length=9, max_steps=12)
    # 4 copies (weights, gradient, two AdamW moments) of a 2**20 x 16 float table: 256 MiB; allow 128 MiB
    monkeypatch.setattr(agent_module, "device_memory", lambda device: 2**27)
    big = {**TINY, "n_positions": 2**20}
    with pytest.raises(
        ValueError,
        match=r"n_positions=1048576 with n_embd=16 need at least \d+\.\d GiB .*mostly the position table.*n_positions",
    ):
        make_agent("bc", env=env, policy_kwargs={**big, "architecture": "gpt2"}, n_demonstrations=2)
    agent = make_agent("bc", env=env, policy_kwargs={**big, "architecture": "llama"}, n_demonstrations=2)
    assert agent.policy.n_positions == 2**20  # rotary positions: no table to hold
