"""The process heap policy (epropnp_lib.allocator): settings, and its effect on glibc's heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from epropnp_lib.allocator import (
    HEAP_POLICY_ENV,
    MAX_MMAP_THRESHOLD,
    HeapPolicy,
    _glibc,
    apply_heap_policy,
)
from epropnp_lib.errors import ConfigError

needs_glibc = pytest.mark.skipif(_glibc() is None or not sys.platform.startswith("linux"),
                                 reason="mallopt and /proc/self/maps: Linux with glibc only")


@pytest.mark.parametrize("kwargs", [
    {"mmap_threshold": 0}, {"mmap_threshold": MAX_MMAP_THRESHOLD + 1}, {"trim_threshold": -1},
    {"trim_threshold": 2**31},
])
def test_out_of_range_thresholds_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        HeapPolicy(**kwargs)


def test_an_unknown_policy_name_is_refused() -> None:
    with pytest.raises(ConfigError, match=HEAP_POLICY_ENV):
        apply_heap_policy({HEAP_POLICY_ENV: "sometimes"})


def test_the_default_policy_name_leaves_malloc_alone() -> None:
    assert apply_heap_policy({HEAP_POLICY_ENV: "default"}) is False


#: In a fresh process: optionally apply a policy, then allocate and touch a 24 MiB tensor and
#: print whether it lies in the brk heap, and whether the heap kept its size once it was freed.
_BLOCK_IN_HEAP = textwrap.dedent("""
    import sys
    import torch
    from epropnp_lib.allocator import apply_heap_policy

    def heap():
        for line in open("/proc/self/maps"):
            if line.rstrip().endswith("[heap]"):
                return tuple(int(v, 16) for v in line.split()[0].split("-"))
        return (0, 0)

    print(apply_heap_policy({"EPROPNP_HEAP_POLICY": sys.argv[1]}))
    block = torch.empty(6 * 2**20)  # 24 MiB of float32
    block.fill_(1.0)
    lo, hi = heap()
    print(lo <= block.data_ptr() < hi)
    del block
    print(heap()[1] >= hi)
""")


def _block_in_heap(policy: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", _BLOCK_IN_HEAP, policy], check=True,
                          capture_output=True, text=True).stdout.split()


@needs_glibc
def test_large_blocks_come_from_the_heap_and_stay_there() -> None:
    # glibc's defaults serve a 24 MiB block with its own mmap (the adaptive threshold starts at
    # 128 KiB) and unmap it on free, so the next batch faults its pages in again; under the
    # policy it comes from the heap, and the heap keeps its pages when the block is freed.
    assert _block_in_heap("keep") == ["True", "True", "True"]
    assert _block_in_heap("default")[:2] == ["False", "False"]
