"""The optimiser (with per-parameter learning-rate multipliers) and the learning-rate schedule
(warm-up times step / cosine / constant, stepped once per optimiser step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from epropnp_lib.errors import ConfigError

from .config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


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
