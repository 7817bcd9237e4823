"""Worker of tests/training/test_ddp.py, started by ``torchrun --nproc-per-node 2``.

Runs the training CLI's ``main`` three times in one process group (one launch instead of three:
every process start imports torch): a full run, a run stopped after 4 steps, and its resume.

    torchrun --nproc-per-node 2 tests/training/ddp_worker.py CONFIG_FULL CONFIG_CUT
"""

from __future__ import annotations

import sys

import torch.distributed as dist

from epropnp_training.train import main


def run(full: str, cut: str) -> int:
    dist.init_process_group(backend="gloo")
    try:
        for argv in (["--config", full], ["--config", cut, "--stop-after", "4"],
                     ["--config", cut, "--resume"]):
            status = main(argv)
            if status != 0:
                return status
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2]))
