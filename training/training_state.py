"""Training-state checkpoints: the module weights, optimiser, scheduler, scaler, position in the
schedule and every rank's random states, so that a resumed run takes the very step the
uninterrupted run would have taken."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.nets.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

from .config import TrainConfig
from .distributed import DistContext, gather
from .task import TrainingModule

__all__ = [
    "CHECKPOINT_DIR",
    "TRAINING_STATE_KIND",
    "SchedulePosition",
    "TrainingParts",
    "find_latest_checkpoint",
    "load_weights",
    "restore_training_state",
    "save_training_state",
]

logger = logging.getLogger(__name__)

#: ``kind`` of the engine's checkpoints.
TRAINING_STATE_KIND = "training_state"
#: Folder of the training-state checkpoints under the run's ``log_dir``.
CHECKPOINT_DIR = "checkpoints"


class TrainingParts(NamedTuple):
    """What a training-state checkpoint holds, besides the position."""

    module: TrainingModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    generator: torch.Generator


class SchedulePosition(NamedTuple):
    """Optimiser steps done, the epoch and the batches taken in it."""

    step: int
    epoch: int
    in_epoch: int


def find_latest_checkpoint(log_dir: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoints/step_*.pt`` under ``log_dir`` (``None`` if there is none)."""
    files = sorted(Path(log_dir, CHECKPOINT_DIR).glob("step_*.pt"))
    return files[-1] if files else None


def load_weights(module: TrainingModule, path: str | os.PathLike[str], *,
                 net_kind: str, model_only: bool = False) -> Checkpoint:
    """Load a training state (the whole module, or its ``model`` when ``model_only``) or a
    network checkpoint of kind ``net_kind`` (into ``module.model``); returns the file's
    contents (its ``kind``, and its ``extra``: e.g. a network's calibration).

    Raises:
        CheckpointError: unreadable file, another kind, or names/shapes that do not match the
            module (the message names the file and the first differing keys).
    """
    ckpt = load_checkpoint(path)
    if ckpt.kind not in (TRAINING_STATE_KIND, net_kind):
        raise CheckpointError(
            f"{path} holds a {ckpt.kind!r} checkpoint, expected {TRAINING_STATE_KIND!r} or "
            f"{net_kind!r}"
        )
    state = ckpt.state_dict
    target: nn.Module = module
    if ckpt.kind != TRAINING_STATE_KIND or model_only:
        target = module.model
        if ckpt.kind == TRAINING_STATE_KIND:
            state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    _load_state(target, state, path)
    return ckpt


def _load_state(target: nn.Module, state: Mapping[str, torch.Tensor], path: Any) -> None:
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatch {shapes[:5]} (built from another config?)"
        )
    target.load_state_dict(state)


def _rng_state(ctx: DistContext, generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if ctx.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return state


def _set_rng_state(ctx: DistContext, generator: torch.Generator,
                   state: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if ctx.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], ctx.device)



def _param_checksum(module: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in module.parameters()))


def save_training_state(cfg: TrainConfig, ctx: DistContext, parts: TrainingParts,
                        position: SchedulePosition) -> Path:
    """Training-state checkpoint ``<log_dir>/checkpoints/step_<step>.pt`` (every rank gathers;
    rank 0 writes and keeps the newest ``keep_checkpoints``); returns its path."""
    rng = gather(ctx, _rng_state(ctx, parts.generator))
    checksums = gather(ctx, _param_checksum(parts.module))
    path = Path(cfg.log_dir, CHECKPOINT_DIR, f"step_{position.step:08d}.pt")
    if ctx.is_main:
        save_checkpoint(
            path, kind=TRAINING_STATE_KIND, config=to_dict(cfg),
            state_dict=parts.module.state_dict(),
            extra={
                "step": position.step, "epoch": position.epoch,
                "batch_in_epoch": position.in_epoch,
                "world_size": ctx.world_size,
                "optimizer": parts.optimizer.state_dict(),
                "scheduler": {k: v for k, v in parts.scheduler.state_dict().items()
                              if k != "lr_lambdas"},
                "scaler": parts.scaler.state_dict(),
                "rng": rng,
                "param_checksums": checksums,
            },
        )
        old = sorted(path.parent.glob("step_*.pt"))[:-cfg.keep_checkpoints]
        for stale in old:
            stale.unlink(missing_ok=True)
    if ctx.distributed:
        dist.barrier()
    return path


def restore_training_state(path: Path, cfg: TrainConfig, ctx: DistContext,
                           parts: TrainingParts) -> SchedulePosition:
    """Load a training-state checkpoint into ``parts``; returns the position to continue from.

    Raises:
        CheckpointError: another kind, task or batch size, or states that do not fit.
    """
    module, optimizer, scheduler, scaler, generator = parts
    ckpt = load_checkpoint(path, kind=TRAINING_STATE_KIND)
    extra = ckpt.extra
    needed = ("step", "epoch", "batch_in_epoch", "optimizer", "scheduler", "scaler", "rng")
    lacking = [k for k in needed if k not in extra]
    if lacking:
        raise CheckpointError(f"{path}: training state lacks {lacking}")
    if ckpt.config.get("task") != cfg.task:
        raise CheckpointError(
            f"{path} was written by a {ckpt.config.get('task')!r} run, not {cfg.task!r}"
        )
    if ckpt.config.get("batch_size") != cfg.batch_size:
        raise CheckpointError(
            f"{path}: batch_size {ckpt.config.get('batch_size')} in the checkpoint, "
            f"{cfg.batch_size} now; resuming would change the data order"
        )
    _load_state(module, ckpt.state_dict, path)
    try:
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict({**extra["scheduler"], "lr_lambdas": [None] * len(
            optimizer.param_groups)})
        scaler.load_state_dict(extra["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: optimiser/scheduler state does not fit: {exc}") from exc
    rng: Sequence[Mapping[str, torch.Tensor]] = extra["rng"]
    if len(rng) == ctx.world_size:
        _set_rng_state(ctx, generator, rng[ctx.rank])
    else:
        logger.warning("%s was written by %d processes, now %d: random streams re-seeded, the "
                       "run continues but is not bit-identical", path, len(rng), ctx.world_size)
    return SchedulePosition(int(extra["step"]), int(extra["epoch"]),
                            int(extra["batch_in_epoch"]))
