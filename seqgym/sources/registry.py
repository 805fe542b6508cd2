"""A registry of sequence sources by name, so configs and command lines can say ``"dyck"``.

Built-ins: ``"arithmetic"``, ``"dyck"``, ``"markov"``, ``"mirror"``, ``"text"``.

Example:
    >>> from seqgym.sources.registry import list_sources, make_source, register_source
    >>> make_source("dyck", n_types=3, max_length=8)
    Dyck(n_types=3, p_open=0.5, p_end=0.3, max_depth=4, max_length=8)
    >>> from seqgym.sources.markov import Markov
    >>> register_source("tiny-markov", lambda **kw: Markov(3, max_length=5, **kw), overwrite=True)
    >>> make_source("tiny-markov", seed=2)
    Markov(n_tokens=3, forbidden_fraction=0.3, eos_prob=0.1, max_length=5, seed=2)
    >>> "tiny-markov" in list_sources()
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seqgym.sources.arithmetic import Arithmetic
from seqgym.sources.base import Source
from seqgym.sources.dyck import Dyck
from seqgym.sources.markov import Markov
from seqgym.sources.mirror import Mirror
from seqgym.sources.text import Text

__all__ = ["list_sources", "make_source", "register_source"]

SourceFactory = Callable[..., Source]
"""A class or function that takes keyword arguments and returns a source."""

_REGISTRY: dict[str, SourceFactory] = {}


def register_source(name: str, factory: SourceFactory, *, overwrite: bool = False) -> None:
    """Make ``factory(**kwargs)`` available as ``make_source(name, **kwargs)``.

    Raises:
        TypeError: if ``name`` is not a non-empty string or ``factory`` is not callable.
        ValueError: if ``name`` is taken and ``overwrite`` is false.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"A source name must be a non-empty str, got {name!r}.")
    if not callable(factory):
        raise TypeError(f"The factory for source {name!r} must be callable, got {type(factory).__name__}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"A source named {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = factory


def make_source(name: str, **kwargs: Any) -> Source:
    """Build the source registered as ``name`` with ``kwargs``.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown source {name!r}; known sources: {', '.join(list_sources())}.") from None
    return factory(**kwargs)


def list_sources() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


for _name, _factory in (
    ("arithmetic", Arithmetic),
    ("dyck", Dyck),
    ("markov", Markov),
    ("mirror", Mirror),
    ("text", Text),
):
    register_source(_name, _factory)
