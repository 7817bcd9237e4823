"""The project's Fast DDS profile (``config/fastdds.xml``: large images over shared memory).

Fast DDS reads ``FASTDDS_DEFAULT_PROFILES_FILE`` when a process creates its first participant,
and the shared-memory segment that matters is the one of the process that *writes* the images.
Every entry point of this package that publishes images or starts nodes (the bag player, the
closed loop, the demo) therefore calls :func:`use_profile` before ``rclpy.init`` and hands the
same environment to its children. A value already set (the user's own profile) is kept.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["PROFILE_VARIABLE", "profile_path", "use_profile"]

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def profile_path() -> Path | None:
    """``config/fastdds.xml`` of the source tree, else of the installed package's share
    directory; ``None`` when neither exists."""
    source = Path(__file__).resolve().parents[2] / "config" / "fastdds.xml"
    if source.is_file():
        return source
    try:
        from ament_index_python.packages import (  # only installed trees get here
            PackageNotFoundError,
            get_package_share_directory,
        )
    except ImportError:
        return None
    try:
        installed = Path(get_package_share_directory("epropnp")) / "config" / "fastdds.xml"
    except PackageNotFoundError:
        return None
    return installed if installed.is_file() else None


def use_profile(env: MutableMapping[str, str] | None = None) -> str | None:
    """Set :data:`PROFILE_VARIABLE` in ``env`` (default: this process's environment) to
    :func:`profile_path` unless it is set already; returns the value in effect."""
    target = os.environ if env is None else env
    if not target.get(PROFILE_VARIABLE):
        path = profile_path()
        if path is not None:
            target[PROFILE_VARIABLE] = str(path)
    return target.get(PROFILE_VARIABLE)
