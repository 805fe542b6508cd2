"""Imitation agents for seqgym environments (SequenceMatch, MLE, BC) behind one SB3-shaped interface.

Example:
    >>> from agents import make_agent
    >>> agent = make_agent("bc", env="seqgym/Dyck-v0", seed=0, n_demonstrations=16,
    ...                    policy_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2})
    >>> agent = agent.learn(200)
    >>> gen = agent.generate(4, seed=0)
    >>> len(gen.sequences)
    4
"""

from agents.bc import BC, BCConfig
from agents.common import (
    Agent,
    AgentConfig,
    AgentLoadError,
    NonFiniteLossError,
    TrainStep,
    list_agents,
    make_agent,
    register_agent,
)
from agents.mle import MLE
from agents.policy import Generation, LMPolicy, TokenMap, TrajectoryLogits, sample_actions
from agents.sequencematch import SequenceMatch, SequenceMatchConfig

__all__ = [
    "BC",
    "MLE",
    "Agent",
    "AgentConfig",
    "AgentLoadError",
    "BCConfig",
    "Generation",
    "LMPolicy",
    "NonFiniteLossError",
    "SequenceMatch",
    "SequenceMatchConfig",
    "TokenMap",
    "TrainStep",
    "TrajectoryLogits",
    "list_agents",
    "make_agent",
    "register_agent",
    "sample_actions",
]
