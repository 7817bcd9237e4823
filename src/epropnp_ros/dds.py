"""The project's Fast DDS profile (``config/fastdds.xml``: large images over shared memory).

Fast DDS reads ``FASTDDS_DEFAULT_PROFILES_FILE`` when a process creates its first participant,
and the shared-memory segment that matters is the one of the process that *writes* the images.
Every entry point of this package that publishes images or starts nodes (the bag player, the
closed loop, the demo) therefore calls :func:`use_profile` before ``rclpy.init`` and hands the
same environment to its children. A value already set (the user's own profile) is kept.
"""

from __future__ import annotations

import gc
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

__all__ = [
    "DISCOVERY_SETTLE_S", "PROFILE_VARIABLE", "profile_path", "release_rclpy", "use_profile",
]

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
#: Seconds to wait after a publisher has matched a best-effort subscription before relying on
#: it: the writer side matches first, and the reader drops what a writer sends before the reader
#: side has matched that writer too (reliable QoS would resend; best effort does not).
DISCOVERY_SETTLE_S = 1.0


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


def release_rclpy(context: Any = None) -> None:
    """Shut rclpy down and free its context (default: the global one) *now*, so that its DDS
    participant removes its shared-memory segments from ``/dev/shm``.

    A destroyed node lives on as a Python object in reference cycles (callbacks bound to it),
    and the nodes freeze everything alive after loading their model out of the garbage collector
    (``gc.freeze`` in ``EstimatorNode.on_configure``), the node included; its native handle keeps
    the context in use, and a context in use at exit is never finalised: its segments (64 MiB
    per process with ``config/fastdds.xml``) would stay in ``/dev/shm``, run after run, until
    they fill the machine's memory. Call it after ``destroy_node`` with no reference to the
    nodes left: it unfreezes and collects the cycles, then shuts down and destroys the context.
    """
    import rclpy  # the library half of this module stays importable without ROS

    gc.unfreeze()
    gc.collect()
    if context is None:
        context = rclpy.get_default_context()
        rclpy.try_shutdown()  # the next rclpy.init() gets a new default context
    else:
        context.try_shutdown()
    context.destroy()
