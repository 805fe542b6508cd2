"""The names needed to write, register, save and load an agent, in one module.

The same objects as :mod:`agents` and :mod:`agents.common` export (their home is :mod:`agents.common`)::

    from agents.base import Agent, AgentConfig, make_agent, register_agent
"""

from agents.common import (
    FORMAT_VERSION,
    Agent,
    AgentConfig,
    AgentLoadError,
    NonFiniteLossError,
    TrainStep,
    list_agents,
    make_agent,
    register_agent,
)

__all__ = [
    "FORMAT_VERSION",
    "Agent",
    "AgentConfig",
    "AgentLoadError",
    "NonFiniteLossError",
    "TrainStep",
    "list_agents",
    "make_agent",
    "register_agent",
]
