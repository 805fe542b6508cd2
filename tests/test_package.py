"""Package-level contracts: what ``import seqgym`` needs and registers."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_seqgym_needs_only_numpy_and_gymnasium():
    # Block the heavy libraries: importing seqgym (and making every registered toy env) must not touch them.
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "transformers", "stable_baselines3", "sb3_contrib",
                                          "tokenizers", "agents", "mauve", "sklearn"}:
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import gymnasium as gym
        import seqgym
        for env_id in ["seqgym/Markov-v0", "seqgym/Dyck-v0", "seqgym/Arithmetic-v0"]:
            env = gym.make(env_id)
            env.reset(seed=0)
            env.step(int(env.action_space.sample(mask=env.unwrapped.action_masks().astype("int8"))))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers"})
        assert not loaded, loaded
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_registers_every_env_id():
    import gymnasium as gym

    import seqgym

    for env_id in seqgym.ENV_IDS:
        assert env_id in gym.registry
