"""Reproduce the paper's central claim on a CPU: learning 2D-3D correspondences from scratch.

One command trains the dense correspondence network (:mod:`epropnp_lib.nets.dense`) from
scratch, with the same data, budget and seeds, under the five losses of
:data:`~.reproduce_report.VARIANTS` (Table 3's Monte Carlo KL, reprojection and implicit
differentiation; Table 1's D0 without the Softmax denominator and C1 with detached weights)::

    python -m epropnp_training.reproduce --out runs/repro                         # full run
    python -m epropnp_training.reproduce --out runs/repro_smoke --budget-scale 0.02   # smoke

and evaluates each on a held-out split (ADD(-S)-0.1d, 5°5cm, 2°2cm, median errors) into
``DIR/results.json``, ``DIR/results.md`` (:mod:`.reproduce_report`) and one directory per variant
(``checkpoint.pt``, ``metrics.json``); rerunning skips finished variants and resumes an
interrupted one.  The task is small (one synthetic object, 64x64 crops, 16x16 maps, rotations
within a cone); the initialisation, batch order and Monte Carlo samples depend only on ``seed``
and the step, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from epropnp_lib.dataclass_io import from_dict, to_dict
from epropnp_lib.epropnp import MonteCarloConfig
from epropnp_lib.errors import ConfigError
from epropnp_lib.generators.object_meshes import make_object
from epropnp_lib.generators.objects import CropBatch, SyntheticCropConfig, render_split
from epropnp_lib.metrics import PoseErrors, PoseMetrics, pose_errors, summarize_errors
from epropnp_lib.nets.backbone import BackboneConfig
from epropnp_lib.nets.checkpoint import CheckpointError
from epropnp_lib.nets.dense import (
    DenseCorrespondenceNet,
    DenseLossConfig,
    DenseNetConfig,
    DenseNetLoss,
    PoseLossKind,
    TrainingInit,
    WeightNormalization,
)
from epropnp_lib.nets.dense_targets import downsample_coords
from epropnp_lib.pnp.cost import HuberConfig
from epropnp_lib.pnp.solver import SolverConfig

from .reproduce_report import PAPER, VARIANT_LABELS, VARIANTS, markdown_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReproConfig:
    """Settings of one reproduction run (all variants share them).

    Attributes:
        seed: seeds data rendering (train/test streams), initialisation, batch order and Monte
            Carlo samples.
        object_name: the synthetic object (:func:`make_object`).
        crop_size: crop side in pixels.
        max_rotation_deg: rotations within this angle of the canonical view.
        num_train / num_test: rendered crops per split.
        steps: optimiser steps per variant.
        batch_size: crops per step.
        lr: Adam learning rate (cosine decay to ``min_lr_ratio * lr``).
        min_lr_ratio: final learning rate relative to ``lr``.
        warmup_steps: linear warm-up steps.
        grad_clip_norm: global gradient-norm clip (same for every variant).
        checkpoint_every: steps between checkpoints.
        eval_batch_size: crops per evaluation batch.
        max_nonfinite_steps: consecutive non-finite losses after which a variant is recorded as
            diverged (its training stops; it is still evaluated).
        net: the network (its ``loss`` is replaced per variant).
    """

    seed: int = 0
    object_name: str = "drill"
    crop_size: int = 64
    max_rotation_deg: float = 45.0
    num_train: int = 4096
    num_test: int = 512
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 20
    grad_clip_norm: float = 10.0
    checkpoint_every: int = 50
    eval_batch_size: int = 64
    max_nonfinite_steps: int = 20
    net: DenseNetConfig = field(default_factory=lambda: DenseNetConfig(
        backbone=BackboneConfig(depth=18, base_width=16),
        crop_size=64,
        output_stride=4,
        head_channels=64,
        skip_connections=True,
        object_extent=0.1,
        init_weight_scale=16.0,
        monte_carlo=MonteCarloConfig(
            num_iterations=4, num_samples=64,
            solver=SolverConfig(huber=HuberConfig(relative_delta=0.1)),
        ),
        loss=DenseLossConfig(train_points=64, training_init=TrainingInit.BEST),
    ))

    def __post_init__(self) -> None:
        for name in ("num_train", "num_test", "steps", "batch_size", "checkpoint_every",
                     "eval_batch_size", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ReproConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ConfigError("lr must be positive, min_lr_ratio in [0, 1], warmup_steps >= 0")
        if not 0 < self.max_rotation_deg <= 180:
            raise ConfigError(f"max_rotation_deg must be in (0, 180], got {self.max_rotation_deg}")
        if self.net.crop_size != self.crop_size:
            raise ConfigError(
                f"net.crop_size {self.net.crop_size} differs from crop_size {self.crop_size}"
            )

    def scaled(self, budget_scale: float) -> ReproConfig:
        """The same run with the training budget (steps, training crops) times
        ``budget_scale`` (smoke runs); the test split keeps at least 16 crops."""
        if not budget_scale > 0:
            raise ConfigError(f"budget_scale must be positive, got {budget_scale}")
        if budget_scale == 1.0:
            return self
        return replace(
            self,
            steps=max(2, round(self.steps * budget_scale)),
            num_train=max(self.batch_size, round(self.num_train * budget_scale)),
            num_test=max(16, round(self.num_test * min(1.0, budget_scale * 4))),
            checkpoint_every=max(1, min(self.checkpoint_every,
                                        round(self.steps * budget_scale) // 2 or 1)),
            warmup_steps=min(self.warmup_steps, max(0, round(self.steps * budget_scale) // 4)),
        )


def variant_net_config(base: DenseNetConfig, variant: str) -> DenseNetConfig:
    """The network config of ``variant``: only the main loss, the weight normalisation or the
    detaching change; everything else (including ``base.loss``'s point sampling and solver
    start) is shared."""
    mc = replace(base.loss, pose_loss=PoseLossKind.MONTE_CARLO)
    if variant == "monte_carlo":
        return replace(base, loss=mc)
    if variant == "reprojection":
        return replace(base, loss=replace(mc, pose_loss=PoseLossKind.REPROJECTION))
    if variant == "implicit":
        return replace(base, loss=replace(mc, pose_loss=PoseLossKind.IMPLICIT))
    if variant == "no_softmax":
        return replace(base, loss=mc, weight_normalization=WeightNormalization.EXP)
    if variant == "detach_weights":
        return replace(base, loss=replace(mc, detach_weights=True, mask_weight=1.0))
    raise ConfigError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def data_config(cfg: ReproConfig, split: str) -> SyntheticCropConfig:
    """The synthetic crop settings of ``split`` ('train' or 'test')."""
    n = cfg.num_train if split == "train" else cfg.num_test
    return SyntheticCropConfig(
        object_name=cfg.object_name, image_size=cfg.crop_size, num_samples=n, seed=cfg.seed,
        split=split, max_rotation_deg=cfg.max_rotation_deg,
    )


def load_or_render(cfg: ReproConfig, split: str, cache: Path) -> CropBatch:
    """Render ``split`` once and cache it in ``cache`` (re-rendered when its config changed)."""
    dcfg = data_config(cfg, split)
    key = to_dict(dcfg)
    if cache.is_file():
        try:
            blob = torch.load(cache, map_location="cpu", weights_only=True)
            if blob.get("config") == key:
                return CropBatch(**blob["batch"])
        except Exception as exc:  # a stale or truncated cache is simply re-rendered
            logger.warning("ignoring unreadable data cache %s: %s", cache, exc)
    t0 = time.perf_counter()
    batch = render_split(dcfg)
    logger.info("rendered %d %s crops in %.1f s", n_of(batch), split, time.perf_counter() - t0)
    tmp = cache.with_suffix(".tmp")
    torch.save({"config": key, "batch": batch._asdict()}, tmp)
    tmp.replace(cache)
    return batch


def n_of(batch: CropBatch) -> int:
    """Number of crops in ``batch``."""
    return int(batch.image.shape[0])


def index_batch(batch: CropBatch, idx: torch.Tensor) -> CropBatch:
    """The crops ``idx: (b,)`` of ``batch``."""
    return CropBatch(*(t[idx] for t in batch))


def learning_rate(cfg: ReproConfig, step: int) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (0.1 + 0.9 * step / max(1, cfg.warmup_steps))
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def batch_indices(cfg: ReproConfig, num: int, step: int) -> torch.Tensor:
    """Indices of the crops of ``step``: epoch-wise permutations drawn from ``seed``."""
    per_epoch = num // cfg.batch_size
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    perm = torch.randperm(num, generator=g)
    return perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]


@dataclass
class TrainState:
    """Progress of one variant (stored in its checkpoint's ``extra``)."""

    step: int = 0
    nonfinite_run: int = 0
    nonfinite_total: int = 0
    diverged: bool = False
    seconds: float = 0.0
    history: list[list[float]] = field(default_factory=list)  # [step, loss, valid fraction]


def train_variant(
    cfg: ReproConfig, variant: str, train: CropBatch, vdir: Path, progress: bool = True,
    stop_at: int | None = None,
) -> tuple[DenseCorrespondenceNet, TrainState]:
    """Train (or resume) ``variant``; returns the network and its final state.

    ``stop_at`` stops after that step with a checkpoint, as an interruption would (tests)."""
    ckpt_path = vdir / "checkpoint.pt"
    net, loss_fn, opt, state = _start_or_resume(cfg, variant, ckpt_path)

    def save() -> None:
        net.save(ckpt_path, extra={
            "optimizer": opt.state_dict(),
            "loss_state": loss_fn.state_dict(),
            "train_state": dataclasses.asdict(state),
            "variant": variant,
            "repro_config": to_dict(cfg),
        })

    net.train()
    loss_fn.train()
    bar = tqdm(total=cfg.steps, initial=state.step, desc=variant, disable=not progress,
               dynamic_ncols=True, leave=True)
    last = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    while state.step < last and not state.diverged:
        t0 = time.perf_counter()
        step = state.step
        finite, value, valid = _train_step(cfg, net, loss_fn, opt, train, step)
        if finite:
            state.nonfinite_run = 0
        else:
            state.nonfinite_run += 1
            state.nonfinite_total += 1
            if state.nonfinite_run >= cfg.max_nonfinite_steps:
                state.diverged = True
                logger.warning("%s: %d consecutive non-finite losses at step %d: diverged",
                               variant, state.nonfinite_run, step)
        state.history.append([step, value, valid])
        state.step += 1
        state.seconds += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4g}", valid=f"{valid:.2f}")
        if state.step % cfg.checkpoint_every == 0 or state.step >= last or state.diverged:
            save()
    bar.close()
    if not ckpt_path.is_file():
        save()
    return net, state


def _start_or_resume(
    cfg: ReproConfig, variant: str, ckpt_path: Path,
) -> tuple[DenseCorrespondenceNet, DenseNetLoss, torch.optim.Optimizer, TrainState]:
    """The network (seeded), its loss, the optimiser and the state of ``variant``: fresh, or
    from ``ckpt_path`` when it exists."""
    net_cfg = variant_net_config(cfg.net, variant)
    torch.manual_seed(cfg.seed)
    net = DenseCorrespondenceNet(net_cfg)
    loss_fn = net.make_loss()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    state = TrainState()
    if not ckpt_path.is_file():
        return net, loss_fn, opt, state
    try:
        net, extra = DenseCorrespondenceNet.from_checkpoint(ckpt_path)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
        opt.load_state_dict(extra["optimizer"])
        loss_fn = net.make_loss()
        loss_fn.load_state_dict(extra["loss_state"])
        state = TrainState(**extra["train_state"])
        logger.info("%s: resuming at step %d", variant, state.step)
    except (CheckpointError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{ckpt_path}: cannot resume variant {variant!r} ({exc}); delete the file to "
            f"restart it"
        ) from exc
    if net.config != net_cfg:
        raise CheckpointError(
            f"{ckpt_path} was written with another configuration; delete it or use another "
            f"--out"
        )
    return net, loss_fn, opt, state


def _train_step(cfg: ReproConfig, net: DenseCorrespondenceNet, loss_fn: DenseNetLoss,
                opt: torch.optim.Optimizer, train: CropBatch,
                step: int) -> tuple[bool, float, float]:
    """One optimiser step (skipped when the loss or the gradient norm is not finite); returns
    whether it was taken, the loss (``nan`` if not) and the fraction of valid solves."""
    for group in opt.param_groups:
        group["lr"] = learning_rate(cfg, step)
    b = index_batch(train, batch_indices(cfg, n_of(train), step))
    out = net(b.image, b.cam_mats)
    loss_cfg = net.config.loss
    coords_gt = mask_gt = None
    if loss_cfg.coord_weight > 0 or loss_cfg.mask_weight > 0:
        coords_gt, mask_gt = downsample_coords(b.coords, b.mask, net.config.output_stride)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    losses = loss_fn(net.pnp, out, b.pose, coords_gt, mask_gt, generator=gen)
    total = losses.total
    opt.zero_grad(set_to_none=True)
    finite = bool(torch.isfinite(total))
    if finite:
        total.backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip_norm)
        finite = bool(torch.isfinite(norm)) and len(grads) > 0
    if finite:
        opt.step()
    value = float(total.detach()) if finite else float("nan")
    return finite, value, float(losses.valid_fraction)


@torch.no_grad()
def evaluate(
    net: DenseCorrespondenceNet, test: CropBatch, points: torch.Tensor, diameter: float,
    symmetric: bool, batch_size: int,
) -> tuple[PoseMetrics, float]:
    """Metrics of ``net`` on ``test`` and the fraction of failed solves.  A failed solve (no
    finite pose) counts as an infinitely wrong pose."""
    net.eval()
    parts: list[PoseErrors] = []
    failed = 0
    for i in range(0, n_of(test), batch_size):
        b = index_batch(test, torch.arange(i, min(i + batch_size, n_of(test))))
        _, sol = net.predict_pose(b.image, b.cam_mats)
        ok = torch.isfinite(sol.pose).all(-1)
        failed += int((~ok).sum())
        pose = torch.where(ok[:, None], sol.pose, b.pose)
        err = pose_errors(pose, b.pose, points.to(pose), diameter, symmetric)
        inf = torch.full_like(err.add, math.inf)
        parts.append(PoseErrors(
            torch.where(ok, err.add, inf), err.diameter,
            torch.where(ok, err.rotation_deg, inf), torch.where(ok, err.translation, inf),
        ))
    return summarize_errors(PoseErrors.cat(parts)), failed / max(1, n_of(test))


def run(
    cfg: ReproConfig, out: Path, variants: Sequence[str] = VARIANTS, progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``variants`` into ``out``; returns the ``results.json`` content."""
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    if threads is not None:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    obj = make_object(cfg.object_name)
    train = load_or_render(cfg, "train", out / "data_train.pt")
    test = load_or_render(cfg, "test", out / "data_test.pt")
    results: dict[str, Any] = {}
    for v in variants:
        vdir = out / v
        mpath = vdir / "metrics.json"
        if mpath.is_file():
            saved = json.loads(mpath.read_text())
            if saved.get("config") == to_dict(variant_net_config(cfg.net, v)) and \
                    saved.get("steps") == cfg.steps:
                logger.info("%s: finished earlier, skipping", v)
                results[v] = saved
                continue
        net, state = train_variant(cfg, v, train, vdir, progress)
        metrics, failed = evaluate(net, test, obj.model_points, float(obj.diameter),
                                   bool(obj.symmetric), cfg.eval_batch_size)
        tail = [h[1] for h in state.history[-max(1, len(state.history) // 10):]]
        finite_tail = [x for x in tail if math.isfinite(x)]
        entry = {
            "variant": v,
            "label": VARIANT_LABELS[v],
            "metrics": metrics.to_dict(),
            "failed_solves": failed,
            "diverged": state.diverged,
            "nonfinite_steps": state.nonfinite_total,
            "steps": cfg.steps,
            "steps_done": state.step,
            "train_seconds": state.seconds,
            "final_loss": sum(finite_tail) / len(finite_tail) if finite_tail else None,
            "config": to_dict(net.config),
            "paper": PAPER[v],
        }
        vdir.mkdir(parents=True, exist_ok=True)
        mpath.write_text(json.dumps(entry, indent=2))
        results[v] = entry
    summary = {
        "task": task_description(cfg),
        "object": {"name": obj.name, "diameter_m": float(obj.diameter),
                   "symmetric": bool(obj.symmetric)},
        "config": to_dict(cfg),
        "variants": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(markdown_table(summary))
    return summary


def task_description(cfg: ReproConfig) -> str:
    """One paragraph stating the task honestly."""
    net = cfg.net
    h = net.map_size
    return (
        f"Synthetic object '{cfg.object_name}', {cfg.crop_size}x{cfg.crop_size} crops, rotations "
        f"within {cfg.max_rotation_deg:g} deg of a canonical view, {cfg.num_train} training / "
        f"{cfg.num_test} held-out crops (independent streams, seed {cfg.seed}); ResNet-"
        f"{net.backbone.depth} (base width {net.backbone.base_width}), {h}x{h} maps = "
        f"{h * h} correspondences, from scratch (no coordinate regression, no pretraining); "
        f"{cfg.steps} Adam steps of {cfg.batch_size} crops per variant, lr {cfg.lr:g} with "
        f"cosine decay; Monte Carlo {net.monte_carlo.num_iterations}x"
        f"{net.monte_carlo.num_samples} samples; the pose losses see "
        f"{net.loss.train_points or h * h} random correspondences per crop and step; the "
        f"training-time solve starts from {_INIT_TEXT[net.loss.training_init]}; evaluation "
        f"solves from the closed form and 24 rotation hypotheses (lowest cost wins), never "
        f"seeing the target."
    )


_INIT_TEXT = {
    TrainingInit.TARGET: "the target pose",
    TrainingInit.CLOSED_FORM: "the closed form",
    TrainingInit.BEST: "both the target pose and the closed form (the lower-cost optimum wins)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m epropnp_training.reproduce",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--budget-scale", type=float, default=1.0,
                    help="multiply steps and training crops (e.g. 0.02 for a smoke run)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--config", type=Path, default=None,
                    help="JSON file of ReproConfig fields (e.g. a config.json of an earlier run)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = ReproConfig()
    if args.config is not None:
        base = from_dict(ReproConfig, json.loads(args.config.read_text()), where=str(args.config))
    cfg = replace(base, seed=args.seed).scaled(args.budget_scale)
    summary = run(cfg, args.out, args.variants, progress=not args.no_progress,
                  threads=args.threads)
    sys.stdout.write(markdown_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
