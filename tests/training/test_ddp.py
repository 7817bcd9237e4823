"""Two-process DistributedDataParallel training on CPU (gloo) under ``torchrun``, through the
training CLI, including an interrupted run resumed to the same result (``ddp_worker.py`` runs the
three trainings in one launch)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from epropnp_lib.nets.checkpoint import load_checkpoint
from epropnp_training.training_state import TRAINING_STATE_KIND

CONFIG = """\
task: toy
paper_reference: "none (DDP test)"
seed: 5
device: cpu
epochs: 2
batch_size: 4
lr: 3.0e-3
lr_schedule: step
lr_milestones: [0.5]
grad_clip_norm: 10.0
log_dir: {log_dir}
log_interval: 1
checkpoint_interval: 100
progress_bar: false
eval_split: val
net: {{hidden: 16, dropout: 0.2, num_iterations: 2, num_samples: 16}}
data: {{num_train: 24, num_val: 8, num_points: 12}}
"""
# 24 samples over 2 processes, 4 per process and step: 3 steps per epoch, 6 in all.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           str(Path(__file__).with_name("ddp_worker.py")), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def _losses(log_dir: Path) -> list[str]:
    with (log_dir / "train_log.csv").open(newline="") as fh:
        return [row["loss"] for row in csv.DictReader(fh)]


def test_two_process_gloo_training_and_exact_resume(tmp_path: Path) -> None:
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    for d in (full_dir, cut_dir):
        d.mkdir()
        (d / "run.yaml").write_text(CONFIG.format(log_dir=d))

    proc = _torchrun(str(full_dir / "run.yaml"), str(cut_dir / "run.yaml"))
    assert "[rank 0]" in proc.stderr  # rank 0 logs; the other rank logs warnings only
    ckpt = load_checkpoint(full_dir / "checkpoints" / "step_00000006.pt",
                           kind=TRAINING_STATE_KIND)
    assert ckpt.extra["world_size"] == 2 and len(ckpt.extra["rng"]) == 2
    # Each rank draws its own Monte Carlo samples ...
    gens = [r["generator"] for r in ckpt.extra["rng"]]
    assert not torch.equal(gens[0], gens[1])
    # ... yet DDP keeps the replicas identical.
    sums = ckpt.extra["param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert (full_dir / "model.pt").is_file() and (full_dir / "metrics.json").is_file()
    assert len(_losses(full_dir)) == 6  # rank 0 logs the mean over both processes

    assert (cut_dir / "checkpoints" / "step_00000004.pt").is_file()  # the interruption
    assert _losses(cut_dir) == _losses(full_dir)
    a = ckpt.state_dict
    b = load_checkpoint(cut_dir / "checkpoints" / "step_00000006.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
