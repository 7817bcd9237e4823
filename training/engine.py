"""The training engine: standard PyTorch (DistributedDataParallel, DistributedSampler, autocast,
GradScaler, LambdaLR), seeded, resumable to the exact step.

A task (:mod:`.task`) supplies the network with its loss, the training set and an evaluation;
:func:`train` does the rest: one process, or one per device under ``torchrun``
(:mod:`.distributed`: the module in ``DistributedDataParallel``, the data split by a
``DistributedSampler`` with ``drop_last``); ``config.seed`` seeds the initialisation (the same
on every rank), the data order, a per-rank ``torch.Generator`` handed to the module (the Monte
Carlo samples), the per-rank global RNG and the loader workers; a training set with a
``set_epoch`` (:class:`~.task.EpochDataset`, e.g. random box jitter) is told the epoch before
each; training-state checkpoints
(:mod:`.training_state`) every ``checkpoint_interval`` steps and at the end, from which
``resume`` takes the very next step (exact for datasets whose items depend on their index only);
``torch.autocast`` (+ ``GradScaler`` on CUDA) when ``config.amp``; logs on rank 0 (a tqdm bar,
``train_log.csv`` averaged over the log interval and all processes, plotted into
``training_curves.png`` at the end, TensorBoard when installed).

A step whose loss or whose gradients are not finite on some process is skipped by every
process: no optimiser update (the weights and the optimiser state stay as they were), the
schedule still advances; ``skipped_steps`` in ``train_log.csv`` counts the skipped steps since
the previous row, and more than ``max_nonfinite_steps`` in a row stop training with
:class:`TrainingError`.

Run layout under ``config.log_dir``::

    train_log.csv  training_curves.png  checkpoints/step_00000100.pt ...  model.pt  metrics.json
    config.yaml

A run stopped early by ``stop_at_step`` also exports its network, as ``model_step_<step>.pt``
with the step in 8 digits, e.g. ``model_step_00001500.pt`` (the file a node loads; the training
state is for ``--resume``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.errors import ConfigError, EProPnPError

from .config import TrainConfig
from .distributed import (
    DistContext,
    all_finite,
    derive_seed,
    init_distributed,
    reduce_means,
    to_device,
)
from .optim import build_optimizer, build_scheduler
from .plots import training_curves
from .task import EpochDataset, StepOutput, Task, TrainingModule
from .training_state import (
    SchedulePosition,
    TrainingParts,
    find_latest_checkpoint,
    load_weights,
    restore_training_state,
    save_training_state,
)

__all__ = [
    "TrainResult",
    "TrainingError",
    "run_evaluation",
    "train",
]

logger = logging.getLogger(__name__)

_LOG_NAME = "train_log.csv"


class TrainingError(EProPnPError, RuntimeError):
    """Training cannot go on (non-finite losses, empty data, inconsistent resume)."""



class TrainResult(NamedTuple):
    """Outcome of :func:`train` (the same on every rank, ``metrics`` on rank 0 only).

    Attributes:
        step: optimiser steps done.
        epoch: epoch the last step belonged to.
        finished: the schedule completed (``False`` when stopped by ``stop_at_step``).
        checkpoint: the last training-state checkpoint written.
        model_path: the exported network checkpoint: ``model.pt`` when finished, else
            ``model_step_<step, 8 digits>.pt`` of the step the run stopped at.
        metrics: evaluation metrics (``None`` without ``eval_split`` or off rank 0).
        last_loss: mean loss of the last logged interval (``nan`` before any).
    """

    step: int
    epoch: int
    finished: bool
    checkpoint: Path
    model_path: Path
    metrics: dict[str, Any] | None
    last_loss: float



class _ResumableSampler(DistributedSampler[Any]):
    """``DistributedSampler`` that can skip the first ``skip`` indices of the current epoch."""

    def __init__(self, dataset: Dataset[Any], **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)


def _worker_init(worker_id: int) -> None:
    # PyTorch seeds torch, random and numpy in each worker from the loader's generator (which
    # the engine re-seeds every epoch); nothing more is needed, but keep one thread per worker.
    torch.set_num_threads(1)



class _CsvLog:
    """``train_log.csv`` of rank 0; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.columns: list[str] | None = None
        if resume_step is not None and path.is_file():
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or []) or None
                rows = [r for r in reader if int(float(r.get("step") or 0)) <= resume_step]
            self._rewrite(rows)
        elif path.exists():
            path.unlink()

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        if self.columns is None:
            return
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: Mapping[str, float | int]) -> None:
        new = self.columns is None
        if self.columns is None:
            self.columns = list(row)
        extra = set(row) - set(self.columns)
        if extra:
            logger.warning("train log: columns %s not in %s; dropped", sorted(extra), self.path)
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def _tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional (not in the lock file)
        logger.info("tensorboard is not installed: CSV log only (%s)", log_dir / _LOG_NAME)
        return None
    return SummaryWriter(log_dir=str(log_dir / "tensorboard"))


def _amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """Whether the step runs under autocast, and its dtype: on CUDA either dtype, on the CPU
    bfloat16 only (float16 autocast on the CPU is slow and needs loss scaling)."""
    dtype = torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16
    if cfg.amp and device.type != "cuda" and dtype != torch.bfloat16:
        logger.warning("amp with float16 is honoured on CUDA only; training on %s in full "
                       "precision (amp_dtype: bfloat16 runs there)", device)
        return False, dtype
    return cfg.amp, dtype



class _TrainingData(NamedTuple):
    sampler: _ResumableSampler
    loader: DataLoader[Any]
    loader_gen: torch.Generator  # re-seeded every epoch
    steps_per_epoch: int


class _Precision(NamedTuple):
    enabled: bool
    dtype: torch.dtype


class _Skipped(NamedTuple):
    """A skipped optimiser step: what was not finite (``"loss"`` or ``"gradients"``)."""

    reason: str


class _IntervalLog:
    """The logs of rank 0: ``train_log.csv``, TensorBoard and the progress bar, fed with the
    mean of every logged value over the log interval and all processes."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, log_dir: Path, total_steps: int,
                 step: int, resumed: bool) -> None:
        self.ctx = ctx
        self.batch_size = cfg.batch_size
        self.csv = _CsvLog(log_dir / _LOG_NAME, step if resumed else None) if ctx.is_main else None
        self.tb = _tensorboard(log_dir) if ctx.is_main and cfg.tensorboard else None
        self.bar = tqdm(total=total_steps, initial=step, desc=cfg.task, dynamic_ncols=True,
                        disable=not (ctx.is_main and cfg.progress_bar))
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.skipped = 0
        self.last_loss = float("nan")
        self.t_last = time.perf_counter()

    def add(self, logs: Mapping[str, torch.Tensor]) -> None:
        """Accumulate the ``()`` values of one optimiser step."""
        for key, value in logs.items():
            v = value.detach().float().reshape(())
            self.sums[key] = self.sums[key] + v if key in self.sums else v
        self.count += 1

    def write(self, step: int, epoch: int, lr: float) -> None:
        """Write the interval's means (a collective: every rank calls it) and start anew."""
        means = reduce_means(self.ctx, self.sums, self.count)
        self.last_loss = means["loss"]
        now = time.perf_counter()
        row: dict[str, float | int] = {
            "step": step, "epoch": epoch, "lr": lr,
            **means,
            "samples_per_s": (self.count * self.batch_size * self.ctx.world_size
                              / (now - self.t_last)),
            # skip decisions are collective: the same count on every process
            "skipped_steps": self.skipped,
        }
        if self.csv is not None:
            self.csv.write(row)
        if self.tb is not None:
            for name, scalar in row.items():
                if name != "step":
                    self.tb.add_scalar(f"train/{name}", float(scalar), step)
        self.bar.set_postfix(loss=f"{self.last_loss:.4g}", lr=f"{row['lr']:.3g}")
        self.sums, self.count, self.skipped, self.t_last = {}, 0, 0, now

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.csv is not None and self.csv.path.is_file():
            try:
                logger.info("training curves: %s", training_curves(self.csv.path))
            except ValueError as exc:  # a run stopped before its first logged step
                logger.info("no training curves: %s", exc)


def train(
    cfg: TrainConfig,
    task: Task,
    *,
    resume: bool | str | os.PathLike[str] = False,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Train ``task`` as configured (see the module docstring).

    Args:
        cfg: the run's config (``task.config`` normally).
        task: the task.
        resume: ``True`` to continue from the newest checkpoint in ``cfg.log_dir`` (a fresh
            start when there is none), or the path of a training-state checkpoint.
        stop_at_step: stop (with a checkpoint, without evaluation) once this many steps are
            done, as if interrupted there; ``None`` runs the whole schedule.

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError / CheckpointError: bad config, empty training set, unusable checkpoint.
        TrainingError: more than ``max_nonfinite_steps`` consecutive steps skipped for
            non-finite losses or gradients.
    """
    ctx = init_distributed(cfg.device, cfg.dist_timeout_minutes)
    try:
        return _train(cfg, task, ctx, resume, stop_at_step)
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    task: Task,
    ctx: DistContext,
    resume: bool | str | os.PathLike[str],
    stop_at_step: int | None,
) -> TrainResult:
    log_dir = Path(cfg.log_dir)
    if ctx.is_main:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    module = _build_module(cfg, task, ctx)
    data = _training_data(cfg, task, ctx)
    total_steps = cfg.max_steps or cfg.epochs * data.steps_per_epoch
    parts, precision = _optimisation(cfg, ctx, module, total_steps)
    position = SchedulePosition(0, 0, 0)
    resume_from = _resume_path(cfg, resume)
    if resume_from is not None:
        position = restore_training_state(resume_from, cfg, ctx, parts)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from,
                    *position)
    wrapped: nn.Module = module
    if ctx.distributed:
        wrapped = DistributedDataParallel(
            wrapped, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )
    log = _IntervalLog(cfg, ctx, log_dir, total_steps, position.step, resume_from is not None)
    end_step = total_steps if stop_at_step is None else min(stop_at_step, total_steps)
    position, last_ckpt = _run_schedule(cfg, ctx, parts, wrapped, data, precision, log,
                                        position, end_step, resume_from)
    log.close()
    if last_ckpt is None:  # stop_at_step <= resumed step: nothing to do, keep the state
        last_ckpt = save_training_state(cfg, ctx, parts, position)

    finished = position.step >= total_steps
    metrics: dict[str, Any] | None = None
    model_path = log_dir / ("model.pt" if finished else f"model_step_{position.step:08d}.pt")
    if ctx.is_main:
        task.export_model(module, model_path)
        if finished and cfg.eval_split is not None:
            metrics = run_evaluation(task, module, split=cfg.eval_split, out_dir=log_dir,
                                     device=ctx.device)
    if ctx.distributed:
        dist.barrier()
    return TrainResult(position.step, position.epoch, finished, last_ckpt, model_path, metrics,
                       log.last_loss)


def _build_module(cfg: TrainConfig, task: Task, ctx: DistContext) -> TrainingModule:
    """The task's module on the device, initialised identically on every rank (DDP also
    broadcasts rank 0's weights), optionally from ``init_checkpoint``."""
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    module = task.build_module().to(ctx.device)
    if ctx.distributed and cfg.sync_batchnorm:
        if ctx.device.type == "cuda":
            # replaces the BatchNorm children in place (same parameters and buffers)
            nn.SyncBatchNorm.convert_sync_batchnorm(module)
        else:
            logger.warning("sync_batchnorm needs CUDA; ignored on %s", ctx.device)
    if cfg.init_checkpoint:
        kind = load_weights(module, cfg.init_checkpoint, net_kind=task.net_checkpoint_kind,
                            model_only=True).kind
        logger.info("initialised %s from %s (%s)", type(module.model).__name__,
                    cfg.init_checkpoint, kind)
    return module


def _training_data(cfg: TrainConfig, task: Task, ctx: DistContext) -> _TrainingData:
    """The resumable sampler and the loader of this rank's share of the training set."""
    dataset = task.train_dataset()
    sampler = _ResumableSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                shuffle=True, seed=derive_seed(cfg.seed, "order") % (1 << 31),
                                drop_last=False)
    loader_gen = torch.Generator()
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        collate_fn=task.collate_fn(), drop_last=True, generator=loader_gen,
        pin_memory=ctx.device.type == "cuda",
        worker_init_fn=_worker_init if cfg.num_workers > 0 else None,
    )
    steps_per_epoch = sampler.num_samples // cfg.batch_size
    if steps_per_epoch == 0:
        size = len(dataset)  # type: ignore[arg-type]
        raise ConfigError(
            f"the training set has {size} samples (divided over {ctx.world_size} processes), "
            f"fewer than one batch of {cfg.batch_size}"
        )
    return _TrainingData(sampler, loader, loader_gen, steps_per_epoch)


def _optimisation(cfg: TrainConfig, ctx: DistContext, module: TrainingModule,
                  total_steps: int) -> tuple[TrainingParts, _Precision]:
    """Optimiser, schedule, scaler and this rank's generator; seeds this rank's global RNG."""
    optimizer = build_optimizer(cfg, module)
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    amp, amp_dtype = _amp_settings(cfg, ctx.device)
    # Loss scaling for CUDA's mixed precision (bfloat16 on the CPU keeps float32's exponent).
    scaler = torch.amp.GradScaler("cuda", enabled=amp and ctx.device.type == "cuda")
    generator = torch.Generator(device=ctx.device)
    generator.manual_seed(derive_seed(cfg.seed, "generator", ctx.rank))
    torch.manual_seed(derive_seed(cfg.seed, "rank", ctx.rank))
    return (TrainingParts(module, optimizer, scheduler, scaler, generator),
            _Precision(amp, amp_dtype))


def _run_schedule(
    cfg: TrainConfig, ctx: DistContext, parts: TrainingParts, wrapped: nn.Module,
    data: _TrainingData, precision: _Precision, log: _IntervalLog,
    position: SchedulePosition, end_step: int, last_ckpt: Path | None,
) -> tuple[SchedulePosition, Path | None]:
    """The optimiser steps from ``position`` to ``end_step`` with their logs and checkpoints;
    returns the final position and the last checkpoint written (else ``last_ckpt``)."""
    step, epoch, in_epoch = position
    nonfinite = 0
    parts.module.train()
    while step < end_step:
        if in_epoch >= data.steps_per_epoch:
            epoch, in_epoch = epoch + 1, 0
        data.sampler.set_epoch(epoch)
        if isinstance(data.loader.dataset, EpochDataset):
            data.loader.dataset.set_epoch(epoch)
        data.sampler.skip = in_epoch * cfg.batch_size
        data.loader_gen.manual_seed(derive_seed(cfg.seed, "loader", epoch, ctx.rank))
        for batch in data.loader:
            logs = _optimizer_step(cfg, ctx, parts, wrapped, batch, precision)
            if isinstance(logs, _Skipped):
                nonfinite += 1
                log.skipped += 1
                logger.warning("step %d: non-finite %s, step skipped (%d in a row)", step,
                               logs.reason, nonfinite)
                if nonfinite > cfg.max_nonfinite_steps:
                    raise TrainingError(
                        f"{nonfinite} consecutive steps with non-finite losses or gradients at "
                        f"step {step}; lower lr or check the data "
                        f"(max_nonfinite_steps={cfg.max_nonfinite_steps})"
                    )
            else:
                nonfinite = 0
                log.add(logs)
            _scheduler_step(parts.scheduler)
            step += 1
            in_epoch += 1
            log.bar.update(1)
            if log.count and (step % cfg.log_interval == 0 or step == end_step):
                log.write(step, epoch, float(parts.scheduler.get_last_lr()[0]))
            if step % cfg.checkpoint_interval == 0 or step == end_step:
                last_ckpt = save_training_state(cfg, ctx, parts,
                                                SchedulePosition(step, epoch, in_epoch))
            if step >= end_step or in_epoch >= data.steps_per_epoch:
                break
    return SchedulePosition(step, epoch, in_epoch), last_ckpt


def _optimizer_step(cfg: TrainConfig, ctx: DistContext, parts: TrainingParts,
                    wrapped: nn.Module, batch: Any,
                    precision: _Precision) -> dict[str, torch.Tensor] | _Skipped:
    """One optimiser step on ``batch``; returns the values to log, or :class:`_Skipped` when
    the loss or the (unscaled) gradients are not finite on some rank: then no parameter and
    no optimiser state changes (under AMP the scaler still lowers its scale)."""
    batch = to_device(batch, ctx.device)
    with torch.autocast(ctx.device.type, dtype=precision.dtype, enabled=precision.enabled):
        out: StepOutput = wrapped(batch, parts.generator)
    loss = out.loss.float()
    optimizer, scaler = parts.optimizer, parts.scaler
    if not all_finite(ctx, loss):
        optimizer.zero_grad(set_to_none=True)
        return _Skipped("loss")
    scaler.scale(loss).backward()
    logs = {"loss": loss, **out.logs}
    scaler.unscale_(optimizer)  # a no-op without AMP
    grads = [p.grad for p in parts.module.parameters() if p.grad is not None]
    norm = (nn.utils.get_total_norm(grads) if grads
            else torch.zeros((), device=loss.device))
    if not all_finite(ctx, norm):
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update()  # the inf/NaN found by unscale_ lowers the scale
        return _Skipped("gradients")
    if cfg.grad_clip_norm is not None:
        nn.utils.clip_grads_with_norm_(parts.module.parameters(), cfg.grad_clip_norm, norm)
        logs["grad_norm"] = norm
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return logs


def _scheduler_step(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    with warnings.catch_warnings():
        # after a skipped step the scheduler still advances (the schedule follows the step
        # count); PyTorch warns when optimizer.step() has not run yet
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                category=UserWarning)
        scheduler.step()


def _resume_path(cfg: TrainConfig, resume: bool | str | os.PathLike[str]) -> Path | None:
    if resume is False:
        return None
    if resume is True:
        return find_latest_checkpoint(cfg.log_dir)
    return Path(resume)



def run_evaluation(
    task: Task, module: TrainingModule, *, split: str, out_dir: Path, device: torch.device,
    metrics_path: Path | None = None, likelihood_temperature: float = 1.0,
    weight_temperature: float = 1.0,
) -> dict[str, Any]:
    """Evaluate ``module`` on ``split`` and write ``metrics.json`` (default in ``out_dir``);
    ``likelihood_temperature``, ``weight_temperature``: see :meth:`Task.evaluate`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            metrics = task.evaluate(module, split=split, out_dir=out_dir, device=device,
                                    likelihood_temperature=likelihood_temperature,
                                    weight_temperature=weight_temperature)
    finally:
        module.train(was_training)
    target = metrics_path or out_dir / "metrics.json"
    payload = {"task": task.config.task, "split": split,
               "paper_reference": task.config.paper_reference, "metrics": metrics}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    logger.info("metrics of %s written to %s", split, target)
    return metrics
