"""Atomic file writes: a temporary file in the target's directory, renamed into place.

An interrupted write (crash, kill, full disk) never leaves a truncated file under the final
name.  The file gets the usual permissions of a new file (``0o666`` minus the umask), not the
``0o600`` of :func:`tempfile.mkstemp`, so that checkpoints and results stay readable by the
other users of a shared machine.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``.

    Args:
        path: destination; its parent directories are created.
        mode: ``"wb"`` or ``"w"``.

    Example::

        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.json"
        >>> with atomic_write(target, "w") as f:
        ...     _ = f.write("{}")
        >>> target.read_text()
        '{}'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
