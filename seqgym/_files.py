"""Permission bits for files and folders written through :mod:`tempfile` (which creates them owner-only)."""

from __future__ import annotations

import os

__all__ = ["default_mode"]


def default_mode(*, directory: bool) -> int:
    """The permission bits that ``open(..., "w")`` (``directory=False``) or ``os.mkdir`` (``True``) would give
    under the process's current umask: ``0o666 & ~umask`` or ``0o777 & ~umask``.

    Example:
        >>> old = os.umask(0o022)
        >>> oct(default_mode(directory=False)), oct(default_mode(directory=True))
        ('0o644', '0o755')
        >>> _ = os.umask(old)
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask
