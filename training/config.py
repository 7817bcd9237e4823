"""Training configurations: one self-contained YAML file per run (no ``_base_`` includes),
parsed into a dataclass.

Keys: the engine settings of :class:`TrainConfig` at the top level, always with ``task``
(``toy``, ``linemod`` or ``nuscenes``: the task module and its config class) and
``paper_reference``; ``net:`` -- the network's own config dataclass, nested as it nests;
``data:`` -- the task's data settings.  Every key is checked by
:func:`epropnp_lib.dataclass_io.from_dict` (unknown, missing or mistyped keys raise
:class:`~epropnp_lib.errors.ConfigError` naming the key and the file), ranges by
``__post_init__``.  Command-line overrides are dotted paths, values parsed as YAML scalars::

    --set lr=2e-4 --set net.backbone.depth=18 --set data.root=data/lm --set max_steps=10

Example::

    >>> cfg = load_config("config/train/toy.yaml", ["max_steps=3"])  # doctest: +SKIP
    >>> cfg.max_steps
    3
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import yaml

from epropnp_lib.dataclass_io import from_dict
from epropnp_lib.errors import ConfigError

__all__ = [
    "TASK_MODULES",
    "TrainConfig",
    "apply_overrides",
    "config_from_mapping",
    "load_config",
    "read_yaml",
    "task_module",
]

OptimizerName = Literal["adamw", "adam", "rmsprop", "sgd"]
ScheduleName = Literal["constant", "step", "cosine"]

#: The task modules of this package, by the ``task`` key of a config (a closed list, not a
#: registry: a new task is a new module and one line here).
TASK_MODULES: dict[str, str] = {
    "toy": ".tasks_toy",
    "linemod": ".tasks_linemod",
    "nuscenes": ".tasks_nuscenes",
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Engine settings shared by every task (the top-level keys of a training YAML).

    Task modules subclass it, fixing ``task`` and adding ``net`` and ``data`` sections.

    Attributes:
        task: task name (see :data:`TASK_MODULES`).
        paper_reference: the paper row and number this config targets (free text).
        seed: seeds the model initialisation, the data order, the per-rank Monte Carlo
            generators and the data-loader workers.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        epochs: passes over the training set (each process sees ``1 / world_size`` of it).
        max_steps: stop after this many optimiser steps instead (smoke runs); the learning rate
            schedule then spans ``max_steps``.
        batch_size: samples per process and step (the global batch is ``batch_size *
            world_size``).
        eval_batch_size: samples per evaluation batch.
        num_workers: data-loader worker processes per training process.
        optimizer: ``adamw`` / ``adam`` / ``rmsprop`` / ``sgd``.
        lr: base learning rate.
        weight_decay: decoupled (AdamW) or L2 (others) weight decay.
        momentum: momentum of SGD and RMSprop.
        betas: Adam(W) betas.
        eps: optimiser epsilon.
        rmsprop_alpha: RMSprop smoothing constant.
        lr_mult: learning-rate multipliers for parameters whose name contains a key, e.g.
            ``{"sampling_offsets": 0.1}`` (first matching key wins, in file order).
        lr_schedule: ``constant``, ``step`` (times ``lr_gamma`` at each milestone) or
            ``cosine`` (to ``min_lr_ratio * lr``).
        lr_milestones: step-schedule milestones as fractions of the schedule length, increasing,
            in (0, 1); e.g. epochs 50/100/150 of 160 are ``[0.3125, 0.625, 0.9375]``.
        lr_gamma: step-schedule factor.
        min_lr_ratio: final learning rate of the cosine schedule, relative to ``lr``.
        warmup_steps: linear warm-up steps from ``warmup_factor * lr``.
        warmup_factor: initial warm-up factor, in (0, 1].
        grad_clip_norm: clip the global gradient norm to this value (``None``: no clipping).
        amp: mixed precision (``torch.autocast``, plus ``GradScaler`` on CUDA): on CUDA with
            either dtype, on the CPU with ``bfloat16`` only (a warning and full precision for
            ``float16``).  The PnP solve and the Monte Carlo loss run in float32 either way.
            On a CPU with bfloat16 instructions (AVX512-BF16, AMX) the network runs faster
            (``bench/README.md``); without them bfloat16 is emulated and may be slower.
        amp_dtype: autocast dtype.
        log_dir: run directory: ``train_log.csv``, ``checkpoints/``, ``metrics.json``,
            TensorBoard events (when tensorboard is installed).
        log_interval: steps between log rows (averaged over the interval and the processes).
        checkpoint_interval: steps between training-state checkpoints (one more at the end).
        keep_checkpoints: newest training-state checkpoints kept (older ones are deleted).
        progress_bar: tqdm bar with the loss on rank 0.
        tensorboard: also write TensorBoard events when ``torch.utils.tensorboard`` imports.
        find_unused_parameters: passed to ``DistributedDataParallel`` (nets whose heads do not
            all take part in every loss need it).
        sync_batchnorm: convert batch norms to ``SyncBatchNorm`` under DDP on CUDA (ignored,
            with a warning, on CPU).
        dist_timeout_minutes: timeout of the process group's collectives; rank 0 evaluates
            alone after training while the others wait, so it must cover an evaluation.
        max_nonfinite_steps: consecutive steps with a non-finite loss or non-finite gradients
            that are skipped (all processes together, no optimiser update, counted in the
            log's ``skipped_steps``) before training stops with an error.
        init_checkpoint: weights to start from (a network checkpoint or a training state; e.g.
            paper row B2 starts from A1); ``None`` for the config's own initialisation.
        eval_split: split evaluated after training (``metrics.json`` in ``log_dir``), or
            ``None``.
    """

    task: str
    paper_reference: str = ""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    eval_batch_size: int = 8
    num_workers: int = 0
    optimizer: OptimizerName = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    rmsprop_alpha: float = 0.99
    lr_mult: dict[str, float] = field(default_factory=dict)
    lr_schedule: ScheduleName = "constant"
    lr_milestones: tuple[float, ...] = ()
    lr_gamma: float = 0.1
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    warmup_factor: float = 0.1
    grad_clip_norm: float | None = None
    amp: bool = False
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    log_dir: str = "runs/default"
    log_interval: int = 10
    checkpoint_interval: int = 1000
    keep_checkpoints: int = 3
    progress_bar: bool = True
    tensorboard: bool = True
    find_unused_parameters: bool = False
    sync_batchnorm: bool = False
    dist_timeout_minutes: float = 180.0
    max_nonfinite_steps: int = 10
    init_checkpoint: str | None = None
    eval_split: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASK_MODULES:
            raise ConfigError(f"task: {self.task!r} is not one of {sorted(TASK_MODULES)}")
        positive_ints = ("epochs", "batch_size", "eval_batch_size", "log_interval",
                         "checkpoint_interval", "keep_checkpoints")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        for name in ("num_workers", "warmup_steps", "max_nonfinite_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        for name in ("weight_decay", "momentum", "min_lr_ratio"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be in [0, 1), got {list(self.betas)}")
        if not self.eps > 0 or not 0 < self.rmsprop_alpha < 1:
            raise ConfigError("eps must be positive and rmsprop_alpha in (0, 1)")
        if any(m <= 0 for m in self.lr_mult.values()):
            raise ConfigError(f"lr_mult values must be positive, got {self.lr_mult}")
        ms = list(self.lr_milestones)
        if any(not 0.0 < m < 1.0 for m in ms) or ms != sorted(set(ms)):
            raise ConfigError(
                f"lr_milestones must be increasing fractions of the schedule in (0, 1), got {ms}"
            )
        if self.lr_schedule == "step" and not ms:
            raise ConfigError("lr_schedule 'step' needs lr_milestones")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if not 0.0 < self.warmup_factor <= 1.0:
            raise ConfigError(f"warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ConfigError(f"grad_clip_norm must be positive or null, got {self.grad_clip_norm}")
        if not self.dist_timeout_minutes > 0:
            raise ConfigError(
                f"dist_timeout_minutes must be positive, got {self.dist_timeout_minutes}")
        if not self.log_dir:
            raise ConfigError("log_dir must not be empty")


def task_module(name: str) -> ModuleType:
    """The module of task ``name`` (it defines ``CONFIG_CLASS`` and ``build_task(config)``)."""
    if name not in TASK_MODULES:
        raise ConfigError(f"task: {name!r} is not one of {sorted(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name], package=__package__)


class _Loader(yaml.SafeLoader):
    """Safe loader that also reads ``1e-4`` as a float (YAML 1.2; PyYAML's YAML 1.1 resolver
    wants ``1.0e-4`` and would hand the config a string)."""


_Loader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The top-level mapping of a YAML file; :class:`ConfigError` naming the file otherwise."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from exc
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(mapping: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``mapping`` with ``key.sub=value`` overrides applied (values parsed as YAML).

    Intermediate mappings are created when missing, so an unknown dotted key reaches
    ``from_dict`` and is reported there with its name.
    """
    out: dict[str, Any] = _deep_copy(mapping)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY")
        try:
            value = _load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_config(
    path: str | os.PathLike[str], overrides: Sequence[str] = ()
) -> TrainConfig:
    """Read a training YAML, apply ``--set`` overrides and build the task's config dataclass.

    Raises:
        ConfigError: unreadable file, invalid YAML, missing/unknown ``task``, unknown keys,
            wrong types or out-of-range values (the message names the key and the file).
    """
    mapping = apply_overrides(read_yaml(path), overrides)
    where = str(path) + (" (with --set overrides)" if overrides else "")
    return config_from_mapping(mapping, where=where)


def config_from_mapping(mapping: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
    """Build the task's config dataclass (chosen by ``mapping["task"]``) from a plain mapping."""
    task = mapping.get("task")
    if not isinstance(task, str):
        raise ConfigError(f"{where}: missing or invalid 'task' (one of {sorted(TASK_MODULES)})")
    if task not in TASK_MODULES:
        raise ConfigError(f"{where}.task: {task!r} is not one of {sorted(TASK_MODULES)}")
    cls = task_module(task).CONFIG_CLASS
    cfg = from_dict(cls, mapping, where=where)
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"{cls!r} is not a TrainConfig")
    return cfg


def _deep_copy(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}
