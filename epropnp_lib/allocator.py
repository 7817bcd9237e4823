"""The heap policy of a process that solves many batches: keep freed memory for reuse.

PyTorch's CPU tensors come from the C library's ``malloc``.  glibc serves blocks above its
``mmap`` threshold (128 KiB at start, raised adaptively up to 32 MiB) with fresh ``mmap``
pages, and returns the top of its heap to the system once more than its trim threshold is
free.  A solve of a large batch allocates and frees blocks of a few hundred KiB to a few MiB
over and over (at B = 256, N = 64 each Jacobian is 0.9 MiB), so depending on where the
adaptive thresholds happen to sit, every solve can fault its memory in again: 700 minor page
faults and 1.7 ms of system time per 6 ms solve in one process, none in the next
(``bench/README.md``, "Heap policy").

:func:`keep_freed_memory` fixes both thresholds (glibc's ``mallopt``): blocks below
``mmap_threshold`` come from the heap, and up to ``trim_threshold`` of freed heap stays mapped
for the next batch.  It changes the whole process, so the library never calls it on its own:
the ROS nodes and the training entry point (through :func:`apply_heap_policy`) and the
benchmarks do, as their process policy.  The cost is resident memory: up to
``trim_threshold`` of freed heap is kept.  On a C library other than glibc (musl, macOS) it
does nothing and returns ``False``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping
from dataclasses import dataclass

from epropnp_lib.errors import ConfigError

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc refuses an ``mmap`` threshold above half its largest heap (32 MiB on 64-bit systems).
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


@dataclass(frozen=True)
class HeapPolicy:
    """Thresholds of :func:`keep_freed_memory` in bytes.

    Attributes:
        mmap_threshold: blocks of at least this size get their own ``mmap`` (at most
            :data:`MAX_MMAP_THRESHOLD`).
        trim_threshold: freed memory at the top of the heap kept mapped, up to this much.
    """

    mmap_threshold: int = MAX_MMAP_THRESHOLD
    trim_threshold: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.mmap_threshold <= MAX_MMAP_THRESHOLD:
            raise ConfigError(f"HeapPolicy.mmap_threshold must be in (0, {MAX_MMAP_THRESHOLD}], "
                              f"got {self.mmap_threshold}")
        if not 0 < self.trim_threshold < 2**31:
            raise ConfigError(f"HeapPolicy.trim_threshold must be in (0, 2^31), got "
                              f"{self.trim_threshold}")


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc, else ``None``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def keep_freed_memory(policy: HeapPolicy | None = None) -> bool:
    """Apply ``policy`` (default :class:`HeapPolicy`) to this process's ``malloc``.

    Returns:
        ``True`` when glibc took both thresholds, ``False`` on another C library.

    Raises:
        ConfigError: glibc refused a threshold.
    """
    policy = policy or HeapPolicy()
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    for param, value, name in ((M_MMAP_THRESHOLD, policy.mmap_threshold, "mmap_threshold"),
                               (M_TRIM_THRESHOLD, policy.trim_threshold, "trim_threshold")):
        if libc.mallopt(param, value) != 1:
            raise ConfigError(f"glibc's mallopt refused {name} = {value}")
    return True


#: Environment variable of :func:`apply_heap_policy`: ``keep`` (the default) or ``default``.
HEAP_POLICY_ENV = "EPROPNP_HEAP_POLICY"


def apply_heap_policy(environ: Mapping[str, str] | None = None) -> bool:
    """The process policy of the node executables and the training entry point:
    :func:`keep_freed_memory` unless the environment (default ``os.environ``) sets
    ``EPROPNP_HEAP_POLICY=default``.

    Returns:
        whether the policy is in force (``False`` when disabled or not on glibc).

    Raises:
        ConfigError: ``EPROPNP_HEAP_POLICY`` is neither ``keep`` nor ``default``.
    """
    value = (os.environ if environ is None else environ).get(HEAP_POLICY_ENV, "keep")
    if value not in ("keep", "default"):
        raise ConfigError(f"{HEAP_POLICY_ENV} must be 'keep' or 'default', got {value!r}")
    return value == "keep" and keep_freed_memory()


__all__ = ["HEAP_POLICY_ENV", "MAX_MMAP_THRESHOLD", "HeapPolicy", "apply_heap_policy",
           "keep_freed_memory"]
