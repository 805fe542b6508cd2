"""Files written atomically (a temporary file beside the target, then ``os.replace``), and the permission bits
that folders made through :mod:`tempfile` (owner-only) should get."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from typing import IO

__all__ = ["atomic_write", "default_mode", "fsync_directory", "fsync_tree"]


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object],
    *,
    follow_symlinks: bool = False,
) -> None:
    """Call ``write`` on a fresh temporary file beside ``path`` (binary), fsync it and rename it over ``path``;
    the rename is made durable where the platform allows. An interruption or an error (in ``write`` or in any
    later step) leaves ``path`` as it was and removes the temporary file.

    Permissions: an existing target keeps its permission bits; a new one gets the umask's, as ``open()`` would.

    Args:
        path: the file to (re)write.
        write: called once with the open temporary file.
        follow_symlinks: a ``path`` that is a symbolic link is refused unless this is ``True``; then the file
            the link points to is replaced (the link stays).

    Raises:
        ValueError: ``path`` is a symbolic link and ``follow_symlinks`` is ``False``.
        IsADirectoryError: ``path`` is a directory.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> atomic_write(target, lambda f: f.write(b"hello"))
        >>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
        (b'hello', ['x.txt'])
    """
    path = os.fspath(path)
    if os.path.islink(path):
        if not follow_symlinks:
            raise ValueError(
                f"Refusing to write {path}: it is a symbolic link (to {os.readlink(path)}); pass "
                "follow_symlinks=True to replace the file it points to."
            )
        path = os.path.realpath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"Cannot write {path}: it is a directory.")
    try:
        mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    while True:  # a fresh, unique temporary name next to the target (O_EXCL: never reuse an existing file)
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
            break
        except FileExistsError:
            continue
    try:
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the entries of ``directory`` (creations, renames) durable; best effort, since not every platform
    can open a directory (e.g. Windows)."""
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file under ``root``, then every folder (deepest first, ``root`` last), so that a rename of
    ``root`` that follows publishes complete, durable contents."""
    folders = []
    for current, _, files in os.walk(root):
        folders.append(current)
        for name in files:
            fd = os.open(os.path.join(current, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for folder in reversed(folders):
        fsync_directory(folder)


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
