"""What every agent shares, one concern a module (SB3's ``common/``):

- :mod:`~agents.common.config`: :class:`AgentConfig`, the hyperparameters (and the check of string options);
- :mod:`~agents.common.registry`: :func:`register_agent`, :func:`make_agent`, :func:`list_agents`;
- :mod:`~agents.common.agent`: :class:`Agent`, built from its arguments and assembled from
  :mod:`~agents.common.training` (``learn``, ``train``, ``train_step``), :mod:`~agents.common.acting`
  (``predict``, ``generate``) and :mod:`~agents.common.checkpoint` (``save``, ``load``), over the hooks of
  :mod:`~agents.common.hooks` that an algorithm overrides;
- :mod:`~agents.common.noise`: the backspace augmentation of demonstrations (uniform or model noise) that
  BC and SequenceMatch share.
"""

from agents.common.agent import Agent
from agents.common.checkpoint import FORMAT_VERSION, AgentLoadError
from agents.common.config import AgentConfig
from agents.common.registry import list_agents, make_agent, register_agent
from agents.common.training import NonFiniteLossError, TrainStep

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
