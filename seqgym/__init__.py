"""seqgym: sequence generation as a reinforcement-learning problem, with a ``<backspace>`` action.

Importing ``seqgym`` needs only numpy and gymnasium, and registers the environment ids
``seqgym/Markov-v0``, ``seqgym/Dyck-v0``, ``seqgym/Arithmetic-v0``, ``seqgym/Mirror-v0`` and ``seqgym/Text-v0``.

Example:
    >>> import gymnasium as gym
    >>> import seqgym
    >>> env = gym.make("seqgym/Dyck-v0")
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape == (env.unwrapped.max_length,), info["length"]
    (True, 0)
"""

from seqgym.data import (
    DemonstrationFileError,
    Trajectory,
    Transitions,
    augment,
    collect,
    load_demonstrations,
    save_demonstrations,
    to_transitions,
)
from seqgym.dynamics import action_mask, replay, states
from seqgym.env import SequenceEnv
from seqgym.registration import ENV_IDS, make_env, make_vector_env, register_envs
from seqgym.sources import (
    Arithmetic,
    Dyck,
    Markov,
    Source,
    Text,
    list_sources,
    make_source,
    register_source,
)
from seqgym.vector import SequenceVectorEnv
from seqgym.vocab import Vocabulary

__version__ = "0.1.0"

register_envs()

__all__ = [
    "ENV_IDS",
    "Arithmetic",
    "DemonstrationFileError",
    "Dyck",
    "Markov",
    "SequenceEnv",
    "SequenceVectorEnv",
    "Source",
    "Text",
    "Trajectory",
    "Transitions",
    "Vocabulary",
    "action_mask",
    "augment",
    "collect",
    "list_sources",
    "load_demonstrations",
    "make_env",
    "make_source",
    "make_vector_env",
    "register_source",
    "replay",
    "save_demonstrations",
    "states",
    "to_transitions",
]
