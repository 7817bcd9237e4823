"""The errors of the nuScenes reader, results writer and evaluation."""

from __future__ import annotations

import os
from pathlib import Path

from epropnp_lib.errors import EProPnPError

__all__ = ["NuScenesEvalError", "NuScenesFormatError"]


class NuScenesFormatError(EProPnPError, ValueError):
    """A nuScenes file is missing, unreadable or inconsistent; ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class NuScenesEvalError(EProPnPError, ValueError):
    """The official evaluation rejected a results file (message of the devkit included)."""
