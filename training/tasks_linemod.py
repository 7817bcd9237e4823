"""LineMOD (BOP layout) with the dense correspondence network: paper Table 1, rows A2 and B0-B3.

* data: :class:`~epropnp_lib.data.bop.BopDataset` instance crops (``data.bop``; the crop side
  must equal ``net.crop_size``) with their crop intrinsics, ground-truth object-coordinate maps
  and visible masks, brought to the network's output resolution by
  :func:`~epropnp_lib.nets.dense_targets.downsample_coords`;
* network and loss: :class:`~epropnp_lib.nets.dense.DenseCorrespondenceNet` and its
  :class:`~epropnp_lib.nets.dense.DenseNetLoss` (``net.loss``: Monte Carlo KL pose loss,
  coordinate regression, surrogate mask loss, derivative regularisation);
* evaluation: :meth:`DenseCorrespondenceNet.predict_pose` (the PnP solve) on every instance of
  the split, then :mod:`epropnp_lib.metrics` per object -- ADD(-S) at 0.02/0.05/0.1 of the
  diameter (ADD-S for the symmetric eggbox and glue), 2°2cm, 5°5cm, median errors (symmetric
  objects: against the closest equivalent ground truth) -- and their
  unweighted mean over objects (the paper's "Mean" row).

Items depend on their index and epoch only (the BOP crops are deterministic; the optional box
jitter, ``data.bop.box_jitter``, a dynamic zoom-in like CDPN's, is drawn from the run's seed, the
epoch and the index), so resume is exact.  Evaluation crops the annotated boxes without jitter;
CDPN's background swaps are not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import default_collate

from epropnp_lib.data.bop import LINEMOD_13, BopConfig, BopDataset, BopSample, read_models_info
from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.errors import ConfigError
from epropnp_lib.metrics import (
    SYMMETRY_STEPS,
    PoseErrors,
    mean_over_objects,
    pose_errors,
    summarize_errors,
)
from epropnp_lib.nets.dense import (
    CHECKPOINT_KIND,
    TRAINING_DATA_KEY,
    DenseCorrespondenceNet,
    DenseNetConfig,
    DenseNetLoss,
)
from epropnp_lib.nets.dense_targets import downsample_coords
from epropnp_lib.pnp.solver import SolveStatus

from .config import TrainConfig
from .task import StepOutput, Task, TrainingModule, task_network

__all__ = [
    "CONFIG_CLASS",
    "LinemodDataConfig",
    "LinemodModule",
    "LinemodTask",
    "LinemodTrainConfig",
    "build_task",
    "collate_bop",
]


@dataclass(frozen=True)
class LinemodDataConfig:
    """Where the BOP data is and which part of it to use.

    Attributes:
        root: BOP root folder (holding ``<bop.dataset>/``, e.g. ``lm/``).
        train_split: split folder trained on (e.g. ``train`` with the LineMOD training
            images, or ``train_pbr``).
        objects: LineMOD names or BOP ids as strings (``["ape", "10"]``); empty: every object
            of ``models_info.json`` -- for ``lm``/``lmo`` only those of the 13 LineMOD objects
            (bowl and cup excluded, the standard protocol).
        bop: reader options (crop size and scale, box, visibility filter, symmetry rule).
    """

    root: str = "data/bop"
    train_split: str = "train"
    objects: tuple[str, ...] = ()
    bop: BopConfig = field(default_factory=BopConfig)

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("data.root must not be empty")
        if not self.bop.render_coords:
            raise ConfigError("data.bop.render_coords must be true (coordinate targets)")

    def object_list(self) -> list[int | str] | None:
        """Objects for :class:`BopDataset` (ids as ints, names as strings; ``None``: all)."""
        if self.objects:
            return [int(o) if o.isdigit() else o for o in self.objects]
        if self.bop.dataset not in ("lm", "lmo"):
            return None
        info = read_models_info(Path(self.root, self.bop.dataset, "models", "models_info.json"))
        return [o for o in sorted(info) if o in LINEMOD_13]


@dataclass(frozen=True, kw_only=True)
class LinemodTrainConfig(TrainConfig):
    """Training config of the LineMOD task (``task: linemod``); ``net`` is the
    :class:`~epropnp_lib.nets.dense.DenseNetConfig`, written as that dataclass nests."""

    task: Literal["linemod"] = "linemod"
    net: DenseNetConfig = field(default_factory=DenseNetConfig)
    data: LinemodDataConfig = field(default_factory=LinemodDataConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data.bop.crop_size != self.net.crop_size:
            raise ConfigError(
                f"data.bop.crop_size ({self.data.bop.crop_size}) must equal net.crop_size "
                f"({self.net.crop_size})"
            )


CONFIG_CLASS = LinemodTrainConfig


def collate_bop(items: Sequence[BopSample]) -> BopSample:
    """Stack :class:`BopSample` fields; ``model_points`` stays a list when the objects'
    point counts differ (the engine only needs the crops, evaluation the models)."""
    out: dict[str, Any] = {}
    for f in BopSample._fields:
        values = [getattr(it, f) for it in items]
        if f == "model_points" and len({tuple(v.shape) for v in values}) > 1:
            out[f] = values
        else:
            out[f] = default_collate(values)
    return BopSample(**out)


class LinemodModule(TrainingModule):
    """Dense network + its loss; ``forward`` returns the weighted total and the terms."""

    model: DenseCorrespondenceNet

    def __init__(self, cfg: DenseNetConfig) -> None:
        super().__init__(DenseCorrespondenceNet(cfg))
        self.loss = DenseNetLoss(cfg.loss, coord_scale=cfg.object_extent)

    def forward(self, batch: BopSample, generator: torch.Generator) -> StepOutput:
        net = self.model
        out = net(batch.image, batch.cam_mats)
        coords, mask = downsample_coords(batch.coords, batch.mask, net.config.output_stride)
        # The PnP solve and the Monte Carlo loss run in float32 even under mixed precision.
        with torch.autocast(out.x3d.device.type, enabled=False):
            out = out._replace(**{
                name: value.float() for name, value in out._asdict().items()
                if isinstance(value, torch.Tensor) and value.is_floating_point()
            })
            losses = self.loss(net.pnp, out, batch.pose, coords, mask, generator=generator)
        logs = {"pose": losses.pose, "coord": losses.coord, "mask": losses.mask,
                "reg": losses.reg, "valid": losses.valid_fraction,
                "weight_scale": out.scale.detach().mean()}
        return StepOutput(losses.total, logs)


class LinemodTask(Task):
    """The LineMOD task (see the module docstring)."""

    net_checkpoint_kind = CHECKPOINT_KIND
    config: LinemodTrainConfig

    def build_module(self) -> LinemodModule:
        return LinemodModule(self.config.net)

    def dataset(self, split: str) -> BopDataset:
        """The instances of ``split`` as evaluated: the annotated boxes, no jitter."""
        data = self.config.data
        return BopDataset(data.root, split, data.object_list(),
                          config=replace(data.bop, box_jitter=0.0))

    def train_dataset(self) -> BopDataset:
        """The training instances, with ``data.bop.box_jitter`` drawn from the run's seed."""
        data = self.config.data
        return BopDataset(data.root, data.train_split, data.object_list(), config=data.bop,
                          seed=self.config.seed)

    def collate_fn(self) -> Any:
        return collate_bop

    def export_model(self, module: TrainingModule, path: Path) -> None:
        """The network with the reader options it was trained with (``extra["bop"]``: the
        node crops its regions with the same ``crop_scale``)."""
        task_network(module, DenseCorrespondenceNet).save(
            path, extra={TRAINING_DATA_KEY: to_dict(self.config.data.bop)})

    def evaluate(
        self, module: TrainingModule, *, split: str, out_dir: Path, device: torch.device,
        likelihood_temperature: float = 1.0, weight_temperature: float = 1.0,
    ) -> dict[str, Any]:
        net = task_network(module, DenseCorrespondenceNet)
        data = self.dataset(split)
        loader = self.eval_loader(data, collate_bop)
        per_object: dict[int, list[PoseErrors]] = {}
        symmetries = {o: m.symmetries(SYMMETRY_STEPS) for o, m in data.models.items()
                      if m.symmetric}
        failed = 0
        for batch in loader:
            images, cam_mats = batch.image.to(device), batch.cam_mats.to(device)
            _, sol = net.predict_pose(images, cam_mats, weight_temperature=weight_temperature)
            pose = sol.pose.detach().cpu().float()
            failed += int((sol.status.cpu() > SolveStatus.MAX_ITERATIONS).sum())
            for obj_id in batch.obj_id.unique().tolist():
                sel = batch.obj_id == obj_id
                model = data.model(obj_id)
                per_object.setdefault(obj_id, []).append(pose_errors(
                    pose[sel], batch.pose[sel], model.vertices, model.diameter,
                    model.symmetric, symmetries.get(obj_id)))
        summaries = {data.model(o).name: summarize_errors(PoseErrors.cat(parts))
                     for o, parts in sorted(per_object.items())}
        mean = mean_over_objects(summaries)
        return {
            "protocol": "LineMOD: ADD(-S) at 0.02/0.05/0.1 d (ADD-S for eggbox and glue), "
                        "n deg n cm; mean over objects",
            "num_instances": len(data),
            "failed_solves": failed,
            "mean": mean.to_dict(),
            "per_object": {name: m.to_dict() for name, m in summaries.items()},
        }


def build_task(config: TrainConfig) -> LinemodTask:
    """The task for ``config`` (a :class:`LinemodTrainConfig`)."""
    if not isinstance(config, LinemodTrainConfig):
        raise ConfigError(f"linemod task needs a LinemodTrainConfig, got {type(config).__name__}")
    return LinemodTask(config)
