"""The training engine: standard PyTorch (DistributedDataParallel, DistributedSampler, autocast,
GradScaler, LambdaLR), seeded, resumable to the exact step.

A task (LineMOD, nuScenes, the toy task) supplies a :class:`Task`: the network wrapped with its
loss in a :class:`TrainingModule`, the training dataset, and an evaluation.  :func:`train` does
the rest:

* **processes** -- one process without ``torchrun``; under ``torchrun`` (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) one process per device joined in a
  ``torch.distributed`` group (``nccl`` on CUDA, ``gloo`` on CPU), the module wrapped in
  ``DistributedDataParallel`` and the data split by a ``DistributedSampler`` (``set_epoch`` every
  epoch, ``drop_last`` so every process takes the same number of steps);
* **randomness** -- ``config.seed`` seeds the model initialisation (identical on every rank),
  the data order (the sampler's seed and epoch), a per-rank ``torch.Generator`` handed to the
  training module (the Monte Carlo samples of EPro-PnP), the per-rank global torch RNG
  (dropout) and the data-loader workers (the loader's own generator, re-seeded each epoch);
* **checkpoints** -- every ``checkpoint_interval`` steps and at the end, a ``"training_state"``
  checkpoint (:mod:`epropnp_lib.nets.checkpoint`) with the module weights, optimiser, scheduler,
  scaler, step, epoch, position in the epoch and every rank's RNG states.  ``resume`` restarts
  from the newest one so that the next step is the step the uninterrupted run would have taken
  (same batch, same samples, same loss and parameters): the sampler skips the batches already
  taken in the epoch.  Exactness needs datasets whose items depend on their index only (ours
  do); augmentation drawn from a worker's RNG would differ after a mid-epoch resume;
* **precision** -- ``torch.autocast`` + ``GradScaler`` when ``config.amp`` and on CUDA;
* **logs** -- a tqdm bar with the loss on rank 0, ``train_log.csv`` (rank 0; averages over the
  log interval and all processes), TensorBoard events when tensorboard is installed, and the
  exported network checkpoint plus ``metrics.json`` at the end.

Run layout under ``config.log_dir``::

    train_log.csv  checkpoints/step_00000100.pt ...  model.pt  metrics.json  config.yaml
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
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
from epropnp_lib.nets.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from .config import TrainConfig

__all__ = [
    "TRAINING_STATE_KIND",
    "DistContext",
    "StepOutput",
    "Task",
    "TrainResult",
    "TrainingError",
    "TrainingModule",
    "build_optimizer",
    "build_scheduler",
    "derive_seed",
    "find_latest_checkpoint",
    "init_distributed",
    "load_weights",
    "run_evaluation",
    "to_device",
    "train",
]

logger = logging.getLogger(__name__)

#: ``kind`` of the engine's checkpoints.
TRAINING_STATE_KIND = "training_state"
_CHECKPOINT_DIR = "checkpoints"
_LOG_NAME = "train_log.csv"


class TrainingError(EProPnPError, RuntimeError):
    """Training cannot go on (non-finite losses, empty data, inconsistent resume)."""


class StepOutput(NamedTuple):
    """What a :class:`TrainingModule` returns for one batch.

    Attributes:
        loss: ``()`` the total loss to minimise (differentiable).
        logs: named ``()`` scalars to log (e.g. the loss terms); detached by the engine.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]


class TrainingModule(nn.Module, ABC):
    """A network (``self.model``) together with its training loss.

    ``forward(batch, generator)`` computes the loss of one batch; the engine wraps the whole
    module in ``DistributedDataParallel``, so every parameter and buffer that the loss uses
    (e.g. the running normaliser of :class:`~epropnp_lib.losses.MonteCarloPoseLoss`) is
    synchronised and checkpointed with the network.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @abstractmethod
    def forward(self, batch: Any, generator: torch.Generator) -> StepOutput:
        """Loss of ``batch`` (already on the module's device); ``generator`` is the only source
        of randomness allowed (it is checkpointed)."""


class Task(ABC):
    """What the engine needs from a task.  Subclasses set :attr:`net_checkpoint_kind`."""

    #: ``kind`` of the network checkpoint that :meth:`export_model` writes.
    net_checkpoint_kind: str = "model"

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @abstractmethod
    def build_module(self) -> TrainingModule:
        """The network and its loss, freshly initialised (called under the config's seed)."""

    @abstractmethod
    def train_dataset(self) -> Dataset[Any]:
        """The training set; items should depend on their index only (exact resume)."""

    def collate_fn(self) -> Callable[[list[Any]], Any] | None:
        """The data loader's ``collate_fn`` (``None``: PyTorch's default)."""
        return None

    @abstractmethod
    def evaluate(
        self, module: TrainingModule, *, split: str, out_dir: Path, device: torch.device
    ) -> dict[str, Any]:
        """Metrics of ``module.model`` (in eval mode, on ``device``) on ``split``; may write
        files (e.g. a results JSON) into ``out_dir``."""

    def export_model(self, module: TrainingModule, path: Path) -> None:
        """Write the network alone as a checkpoint of kind :attr:`net_checkpoint_kind` (the
        file the nodes and ``evaluate`` load), with the network config ``config.net``."""
        net_cfg = getattr(self.config, "net", None)
        save_checkpoint(
            path,
            kind=self.net_checkpoint_kind,
            config=to_dict(net_cfg) if net_cfg is not None else {},
            state_dict=module.model.state_dict(),
        )


class TrainResult(NamedTuple):
    """Outcome of :func:`train` (the same on every rank, ``metrics`` on rank 0 only).

    Attributes:
        step: optimiser steps done.
        epoch: epoch the last step belonged to.
        finished: the schedule completed (``False`` when stopped by ``stop_at_step``).
        checkpoint: the last training-state checkpoint written.
        model_path: the exported network checkpoint (``None`` when not finished).
        metrics: evaluation metrics (``None`` without ``eval_split`` or off rank 0).
        last_loss: mean loss of the last logged interval (``nan`` before any).
    """

    step: int
    epoch: int
    finished: bool
    checkpoint: Path
    model_path: Path | None
    metrics: dict[str, Any] | None
    last_loss: float


# --- processes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", timeout_minutes: float = 180.0) -> DistContext:
    """Join the ``torchrun`` process group if the environment describes one (else one process).

    ``device``: ``"auto"`` (CUDA ``LOCAL_RANK`` when available), ``"cpu"`` or ``"cuda"``.  The
    backend is ``nccl`` on CUDA and ``gloo`` on CPU; collectives time out after
    ``timeout_minutes``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but CUDA is not available")
    if use_cuda:
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                                timeout=timedelta(minutes=timeout_minutes))
        owns = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistContext(rank, world, local, dev, owns)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from ``seed`` and ``keys`` (stable across runs, platforms and ranks)."""
    text = ":".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor moved to ``device`` (through dicts, lists, tuples and
    NamedTuples; other values unchanged)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# --- optimisation -----------------------------------------------------------------------------
def build_optimizer(cfg: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser; parameters whose name contains a ``lr_mult`` key get their own
    group with ``lr * mult`` (the first matching key in file order)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        mult = next((m for key, m in cfg.lr_mult.items() if key in name), 1.0)
        groups.setdefault(mult, []).append(param)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    param_groups = [{"params": ps, "lr": cfg.lr * m} for m, ps in groups.items()]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.eps,
                                   weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning-rate factor at ``step`` (0-based) of ``total_steps``: warm-up times schedule."""
    warm = 1.0
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        warm = cfg.warmup_factor + (1.0 - cfg.warmup_factor) * step / cfg.warmup_steps
    frac = min(step / max(total_steps, 1), 1.0)
    if cfg.lr_schedule == "step":
        sched = cfg.lr_gamma ** sum(frac >= m for m in cfg.lr_milestones)
    elif cfg.lr_schedule == "cosine":
        sched = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))
    else:
        sched = 1.0
    return warm * sched


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimiser step with :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, total_steps)
    )


# --- data -------------------------------------------------------------------------------------
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


# --- checkpoints ------------------------------------------------------------------------------
def find_latest_checkpoint(log_dir: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoints/step_*.pt`` under ``log_dir`` (``None`` if there is none)."""
    files = sorted(Path(log_dir, _CHECKPOINT_DIR).glob("step_*.pt"))
    return files[-1] if files else None


def load_weights(module: TrainingModule, path: str | os.PathLike[str], *,
                 net_kind: str, model_only: bool = False) -> str:
    """Load a training state (the whole module, or its ``model`` when ``model_only``) or a
    network checkpoint of kind ``net_kind`` (into ``module.model``); returns the kind.

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
    return ckpt.kind


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


def _gather(ctx: DistContext, obj: Any) -> list[Any]:
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


# --- logs -------------------------------------------------------------------------------------
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


# --- the loop ---------------------------------------------------------------------------------
def _amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    dtype = torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16
    if cfg.amp and device.type != "cuda":
        logger.warning("amp is honoured on CUDA only; training on %s in full precision", device)
        return False, dtype
    return cfg.amp, dtype


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
        TrainingError: more than ``max_nonfinite_steps`` consecutive non-finite losses.
    """
    ctx = init_distributed(cfg.device, cfg.dist_timeout_minutes)
    try:
        return _train(cfg, task, ctx, resume, stop_at_step)
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(  # noqa: C901 - the loop reads best in one piece
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

    # Model: identical initialisation on every rank (DDP also broadcasts rank 0's weights).
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
                            model_only=True)
        logger.info("initialised %s from %s (%s)", type(module.model).__name__,
                    cfg.init_checkpoint, kind)

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
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch

    optimizer = build_optimizer(cfg, module)
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    amp, amp_dtype = _amp_settings(cfg, ctx.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    generator = torch.Generator(device=ctx.device)
    generator.manual_seed(derive_seed(cfg.seed, "generator", ctx.rank))
    torch.manual_seed(derive_seed(cfg.seed, "rank", ctx.rank))

    step = epoch = in_epoch = 0
    resume_from = _resume_path(cfg, resume)
    if resume_from is not None:
        step, epoch, in_epoch = _restore(resume_from, cfg, ctx, module, optimizer, scheduler,
                                         scaler, generator)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, step,
                    epoch, in_epoch)

    wrapped: nn.Module = module
    if ctx.distributed:
        wrapped = DistributedDataParallel(
            wrapped, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )

    csv_log = _CsvLog(log_dir / _LOG_NAME, step if resume_from else None) if ctx.is_main else None
    tb = _tensorboard(log_dir) if ctx.is_main and cfg.tensorboard else None
    bar = tqdm(total=total_steps, initial=step, desc=cfg.task, dynamic_ncols=True,
               disable=not (ctx.is_main and cfg.progress_bar))
    sums: dict[str, torch.Tensor] = {}
    count = 0
    nonfinite = 0
    last_loss = float("nan")
    last_ckpt: Path | None = resume_from
    t_last = time.perf_counter()
    end_step = total_steps if stop_at_step is None else min(stop_at_step, total_steps)

    module.train()
    while step < end_step:
        if in_epoch >= steps_per_epoch:
            epoch, in_epoch = epoch + 1, 0
        sampler.set_epoch(epoch)
        sampler.skip = in_epoch * cfg.batch_size
        loader_gen.manual_seed(derive_seed(cfg.seed, "loader", epoch, ctx.rank))
        for batch in loader:
            batch = to_device(batch, ctx.device)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp):
                out: StepOutput = wrapped(batch, generator)
            loss = out.loss.float()
            if not _all_finite(ctx, loss):
                nonfinite += 1
                optimizer.zero_grad(set_to_none=True)
                logger.warning("step %d: non-finite loss, step skipped (%d in a row)", step,
                               nonfinite)
                if nonfinite > cfg.max_nonfinite_steps:
                    raise TrainingError(
                        f"{nonfinite} consecutive non-finite losses at step {step}; lower lr or "
                        f"check the data (max_nonfinite_steps={cfg.max_nonfinite_steps})"
                    )
            else:
                nonfinite = 0
                scaler.scale(loss).backward()
                logs = {"loss": loss, **out.logs}
                if cfg.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    logs["grad_norm"] = nn.utils.clip_grad_norm_(module.parameters(),
                                                                 cfg.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                for key, value in logs.items():
                    v = value.detach().float().reshape(())
                    sums[key] = sums[key] + v if key in sums else v
                count += 1
            with warnings.catch_warnings():
                # after a skipped step the scheduler still advances (the schedule follows the
                # step count); PyTorch warns when optimizer.step() has not run yet
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                        category=UserWarning)
                scheduler.step()
            step += 1
            in_epoch += 1
            bar.update(1)

            if count and (step % cfg.log_interval == 0 or step == end_step):
                means = _reduce_means(ctx, sums, count)
                last_loss = means["loss"]
                now = time.perf_counter()
                row: dict[str, float | int] = {
                    "step": step, "epoch": epoch, "lr": float(scheduler.get_last_lr()[0]),
                    **means,
                    "samples_per_s": count * cfg.batch_size * ctx.world_size / (now - t_last),
                }
                if csv_log is not None:
                    csv_log.write(row)
                if tb is not None:
                    for name, scalar in row.items():
                        if name != "step":
                            tb.add_scalar(f"train/{name}", float(scalar), step)
                bar.set_postfix(loss=f"{last_loss:.4g}", lr=f"{row['lr']:.3g}")
                sums, count, t_last = {}, 0, now
            if step % cfg.checkpoint_interval == 0 or step == end_step:
                last_ckpt = _save(cfg, ctx, module, optimizer, scheduler, scaler, generator,
                                  step, epoch, in_epoch)
            if step >= end_step or in_epoch >= steps_per_epoch:
                break
    bar.close()
    if tb is not None:
        tb.close()
    if last_ckpt is None:  # stop_at_step <= resumed step: nothing to do, keep the state
        last_ckpt = _save(cfg, ctx, module, optimizer, scheduler, scaler, generator, step,
                          epoch, in_epoch)

    finished = step >= total_steps
    model_path: Path | None = None
    metrics: dict[str, Any] | None = None
    if finished:
        model_path = log_dir / "model.pt"
        if ctx.is_main:
            task.export_model(module, model_path)
            if cfg.eval_split is not None:
                metrics = run_evaluation(task, module, split=cfg.eval_split, out_dir=log_dir,
                                         device=ctx.device)
        if ctx.distributed:
            dist.barrier()
    return TrainResult(step, epoch, finished, last_ckpt, model_path, metrics, last_loss)


def _resume_path(cfg: TrainConfig, resume: bool | str | os.PathLike[str]) -> Path | None:
    if resume is False:
        return None
    if resume is True:
        return find_latest_checkpoint(cfg.log_dir)
    return Path(resume)


def _all_finite(ctx: DistContext, loss: torch.Tensor) -> bool:
    flag = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if ctx.distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _reduce_means(ctx: DistContext, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    keys = sorted(sums)
    stacked = torch.stack([sums[k] for k in keys]) / count
    if ctx.distributed:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= ctx.world_size
    values = stacked.tolist()
    tail = ["grad_norm"] if "grad_norm" in keys else []
    order = ["loss"] + [k for k in keys if k not in ("loss", "grad_norm")] + tail
    return {k: values[keys.index(k)] for k in order}


def _param_checksum(module: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in module.parameters()))


def _save(
    cfg: TrainConfig, ctx: DistContext, module: TrainingModule,
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler, generator: torch.Generator,
    step: int, epoch: int, in_epoch: int,
) -> Path:
    """Training-state checkpoint (every rank gathers; rank 0 writes); returns its path."""
    rng = _gather(ctx, _rng_state(ctx, generator))
    checksums = _gather(ctx, _param_checksum(module))
    path = Path(cfg.log_dir, _CHECKPOINT_DIR, f"step_{step:08d}.pt")
    if ctx.is_main:
        save_checkpoint(
            path, kind=TRAINING_STATE_KIND, config=to_dict(cfg), state_dict=module.state_dict(),
            extra={
                "step": step, "epoch": epoch, "batch_in_epoch": in_epoch,
                "world_size": ctx.world_size,
                "optimizer": optimizer.state_dict(),
                "scheduler": {k: v for k, v in scheduler.state_dict().items()
                              if k != "lr_lambdas"},
                "scaler": scaler.state_dict(),
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


def _restore(
    path: Path, cfg: TrainConfig, ctx: DistContext, module: TrainingModule,
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler, generator: torch.Generator,
) -> tuple[int, int, int]:
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
    return int(extra["step"]), int(extra["epoch"]), int(extra["batch_in_epoch"])


# --- evaluation -------------------------------------------------------------------------------
def run_evaluation(
    task: Task, module: TrainingModule, *, split: str, out_dir: Path, device: torch.device,
    metrics_path: Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``module`` on ``split`` and write ``metrics.json`` (default in ``out_dir``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            metrics = task.evaluate(module, split=split, out_dir=out_dir, device=device)
    finally:
        module.train(was_training)
    target = metrics_path or out_dir / "metrics.json"
    payload = {"task": task.config.task, "split": split,
               "paper_reference": task.config.paper_reference, "metrics": metrics}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    logger.info("metrics of %s written to %s", split, target)
    return metrics
