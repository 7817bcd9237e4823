"""nuScenes monocular 3D detection with the deformable correspondence network: paper Table 4,
rows "Basic EPro-PnP" and "+ coord. regr.".

* data: :class:`~epropnp_lib.data.nuscenes.NuScenesCameraDataset` (nuscenes-devkit), one item
  per (sample, camera): the image, its intrinsics and the annotated boxes in its optical frame
  (:class:`~epropnp_lib.geometry.boxes.CameraBoxes`); the devkit's ``NuScenes`` tables are loaded
  once per task and shared by the training and evaluation splits;
* network and loss: :class:`~epropnp_lib.nets.deformable.DeformableCorrespondenceNet` and its
  :meth:`~epropnp_lib.nets.deformable.DeformableCorrespondenceNet.loss` (focal loss, Monte Carlo
  KL pose loss on ``EProPnP4DoF``, derivative regularisation, size / 3D score / velocity /
  attribute terms and, for "+ coord. regr.", ``net.loss.coord_weight > 0``);
* evaluation: ``detect`` on every image of the split, the camera-frame boxes written back to the
  global frame as the official results JSON (:func:`~epropnp_lib.data.nuscenes.write_results`,
  six cameras merged, every sample present) and scored by the devkit's ``DetectionEval`` with
  the ``detection_cvpr_2019`` preset (:func:`~epropnp_lib.data.nuscenes.evaluate`), plus the
  heading metrics of :mod:`epropnp_lib.heading` per camera image (``heading``: mean error of
  the matched detections; with ``num_pose_samples >= 2`` the 90 % HDR coverage).

Items depend on their index only, so resume is exact.  No augmentation (the reference's random
flip and crop of the image top are not reproduced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from epropnp_lib.data.nuscenes import (
    CAMERAS,
    NUSCENES_HEADING_PERIODS,
    CameraDetections,
    NuScenesBatch,
    NuScenesCameraDataset,
    NuScenesCameraSample,
    ResultsMeta,
    collate_camera_samples,
    evaluate,
    load_nuscenes,
    write_results,
)
from epropnp_lib.data.nuscenes.calibration import (
    CalibrationErrors,
    GroundTruthCache,
    camera_calibration_errors,
    coverage,
)
from epropnp_lib.errors import ConfigError
from epropnp_lib.heading import HDR_MASSES, HeadingImage, heading_calibration
from epropnp_lib.nets.deformable import (
    CHECKPOINT_KIND,
    DeformableCorrespondenceNet,
    DeformableNetConfig,
)
from epropnp_lib.plots import calibration_diagram

from .config import TrainConfig
from .distributed import to_device
from .task import StepOutput, Task, TrainingModule, task_network

__all__ = [
    "CONFIG_CLASS",
    "NuScenesDataConfig",
    "NuScenesModule",
    "NuScenesTask",
    "NuScenesTrainConfig",
    "build_task",
]


@dataclass(frozen=True)
class NuScenesDataConfig:
    """Where the nuScenes data is and which part of it to use.

    Attributes:
        dataroot: nuScenes root (``<version>/``, ``samples/``, ``maps/``).
        version: table version, e.g. ``v1.0-trainval`` or ``v1.0-mini``.
        train_split: devkit split trained on (``train``, ``mini_train``, ...); ``eval_split``
            of the run config is the one evaluated (``val``, ``mini_val``, ...).
        cameras: camera channels used (default all six).
        min_visibility: training boxes need at least this visibility level (1..4; the
            reference implementation uses 2); evaluation always scores every annotation.
        min_points: training boxes need this many lidar + radar points.
        min_depth: boxes closer than this (camera z, metres) are dropped.
        merge_radius: cross-camera duplicate merging radius of the results writer (metres).
        num_pose_samples: posterior samples per detection at evaluation (0: none).
    """

    dataroot: str = "data/nuscenes"
    version: str = "v1.0-trainval"
    train_split: str = "train"
    cameras: tuple[str, ...] = CAMERAS
    min_visibility: int = 2
    min_points: int = 0
    min_depth: float = 0.5
    merge_radius: float = 1.0
    num_pose_samples: int = 0

    def __post_init__(self) -> None:
        if not self.dataroot or not self.version:
            raise ConfigError("data.dataroot and data.version must not be empty")
        unknown = [c for c in self.cameras if c not in CAMERAS]
        if not self.cameras or unknown:
            raise ConfigError(f"data.cameras must be among {list(CAMERAS)}, got {unknown}")
        if not 0 <= self.min_visibility <= 4:
            raise ConfigError(f"data.min_visibility must be in 0..4, got {self.min_visibility}")
        if self.min_points < 0 or self.num_pose_samples < 0:
            raise ConfigError("data.min_points and data.num_pose_samples must be >= 0")
        if not self.merge_radius > 0:
            raise ConfigError(f"data.merge_radius must be positive, got {self.merge_radius}")


@dataclass(frozen=True, kw_only=True)
class NuScenesTrainConfig(TrainConfig):
    """Training config of the nuScenes task (``task: nuscenes``); ``net`` is the
    :class:`~epropnp_lib.nets.deformable.DeformableNetConfig`, written as that dataclass nests.
    """

    task: Literal["nuscenes"] = "nuscenes"
    net: DeformableNetConfig = field(default_factory=DeformableNetConfig)
    data: NuScenesDataConfig = field(default_factory=NuScenesDataConfig)


CONFIG_CLASS = NuScenesTrainConfig


class NuScenesModule(TrainingModule):
    """Deformable network; ``forward`` returns its weighted total loss and the terms."""

    model: DeformableCorrespondenceNet

    def __init__(self, cfg: DeformableNetConfig) -> None:
        super().__init__(DeformableCorrespondenceNet(cfg))

    def forward(self, batch: NuScenesBatch, generator: torch.Generator) -> StepOutput:
        if batch.images is None:
            raise ConfigError("nuScenes training needs images (load_images=True)")
        losses = self.model.loss(batch.images, batch.cam_mats, batch.boxes, generator=generator)
        ref = losses.total.detach()
        logs = {name: getattr(losses, name).detach() for name in
                ("cls", "offset", "kl", "reg", "size", "score3d", "velocity", "attribute",
                 "coord")}
        logs["positives"] = ref.new_tensor(float(losses.num_positive))
        return StepOutput(losses.total, logs)


class NuScenesTask(Task):
    """The nuScenes task (see the module docstring)."""

    net_checkpoint_kind = CHECKPOINT_KIND
    config: NuScenesTrainConfig

    def __init__(self, config: NuScenesTrainConfig) -> None:
        super().__init__(config)
        self._nusc: Any = None

    def nusc(self) -> Any:
        """The devkit's ``NuScenes`` tables (loaded once)."""
        if self._nusc is None:
            data = self.config.data
            self._nusc = load_nuscenes(data.dataroot, data.version)
        return self._nusc

    def dataset(self, split: str, *, training: bool) -> NuScenesCameraDataset:
        data = self.config.data
        return NuScenesCameraDataset(
            data.dataroot, data.version, split, cameras=data.cameras,
            min_visibility=data.min_visibility if training else 0,
            min_points=data.min_points if training else 0, min_depth=data.min_depth,
            nusc=self.nusc(),
        )

    def build_module(self) -> NuScenesModule:
        return NuScenesModule(self.config.net)

    def train_dataset(self) -> NuScenesCameraDataset:
        return self.dataset(self.config.data.train_split, training=True)

    def collate_fn(self) -> Any:
        return _collate_for_training

    def export_model(self, module: TrainingModule, path: Path) -> None:
        task_network(module, DeformableCorrespondenceNet).save(path)

    def evaluate(
        self, module: TrainingModule, *, split: str, out_dir: Path, device: torch.device,
        likelihood_temperature: float = 1.0, weight_temperature: float = 1.0,
    ) -> dict[str, Any]:
        net = task_network(module, DeformableCorrespondenceNet)
        data = self.config.data
        dataset = self.dataset(split, training=False)
        loader = self.eval_loader(dataset, collate_camera_samples)
        gen = torch.Generator(device=device).manual_seed(self.config.seed)
        per_sample: dict[str, list[CameraDetections]] = {}
        headings: list[HeadingImage] = []
        truth = GroundTruthCache(self.nusc())
        covariances: list[CalibrationErrors] = []
        num_boxes = 0
        for batch in loader:
            if batch.images is None:
                raise ConfigError("nuScenes evaluation needs images (load_images=True)")
            dets = net.detect(batch.images.to(device), batch.cam_mats.to(device),
                              num_pose_samples=data.num_pose_samples, generator=gen,
                              likelihood_temperature=likelihood_temperature)
            for det, frame, gt in zip(dets, batch.frames, batch.boxes, strict=True):
                boxes = to_device(det.boxes, torch.device("cpu"))
                samples = (det.pose_samples[..., 3].cpu() if det.pose_samples is not None
                           else boxes.yaw[None].expand(2, -1))
                headings.append(HeadingImage(boxes, samples, gt))
                covariances.append(camera_calibration_errors(
                    boxes, det.covariance.detach().cpu().numpy(), frame,
                    truth(frame.sample_token)))
                num_boxes += int(boxes.center.shape[0])
                per_sample.setdefault(frame.sample_token, []).append(
                    CameraDetections(boxes, frame))
        results_path = out_dir / f"results_nusc_{split}.json"
        summary = write_results(results_path, per_sample, sample_tokens=dataset.sample_tokens,
                                meta=ResultsMeta(use_camera=True),
                                merge_radius=data.merge_radius)
        scores = evaluate(results_path, data.dataroot, data.version, split,
                          out_dir / f"nuscenes_eval_{split}", nusc=self.nusc())
        return {
            "protocol": "nuScenes detection, DetectionEval detection_cvpr_2019 (devkit)",
            "results_file": str(results_path),
            "num_images": len(dataset),
            "num_samples": summary.num_samples,
            "num_detections": num_boxes,
            "num_boxes_written": summary.num_boxes,
            "nds": scores.nds,
            "mean_ap": scores.mean_ap,
            "tp_errors": scores.tp_errors,
            "per_class_ap": scores.per_class_ap,
            "summary_file": str(scores.summary_path),
            "likelihood_temperature": likelihood_temperature,
            "heading": _heading_report(headings, with_samples=data.num_pose_samples >= 2),
            "calibration": _calibration_report(CalibrationErrors.cat(covariances),
                                               out_dir / f"calibration_{split}.png"),
        }


def _heading_report(images: Sequence[HeadingImage], *, with_samples: bool) -> dict[str, Any]:
    """Mean heading error of the detections matched to the camera's annotations
    (:func:`~epropnp_lib.heading.match_boxes`) and, with posterior samples, the fraction of
    true headings inside their 90 % highest-density regions (and inside the regions of
    :data:`~epropnp_lib.heading.HDR_MASSES`)."""
    masses = HDR_MASSES if with_samples else (0.9,)
    cals = {m: heading_calibration(images, m, periods=NUSCENES_HEADING_PERIODS)
            for m in masses}
    cal = cals[0.9]
    report: dict[str, Any] = {"num_matched": cal.num_matched, "mean_error": cal.mean_error}
    if with_samples:
        report["hdr90_fraction"] = cal.fraction
        report["hdr_fractions"] = {f"{m:g}": c.fraction for m, c in cals.items()}
    return report


def _calibration_report(errors: CalibrationErrors, plot: Path) -> dict[str, Any]:
    """Coverage of the nominal 50/90/95/99 % regions of the predicted covariance by the matched
    ground truth (position chi2(3), heading chi2(1):
    :mod:`epropnp_lib.data.nuscenes.calibration`), drawn into ``plot`` too."""
    report = coverage(errors)
    calibration_diagram({"position (chi2 3)": report["position"],
                         "heading (chi2 1)": report["heading"]}, plot,
                        title=f"covariance coverage, {report['matches']} matches")
    return dict(report, plot=str(plot))


def _collate_for_training(items: Sequence[NuScenesCameraSample]) -> NuScenesBatch:
    # frames hold float64 calibration the loss never reads: leave them out of the device copy
    return collate_camera_samples(items)._replace(frames=[])


def build_task(config: TrainConfig) -> NuScenesTask:
    """The task for ``config`` (a :class:`NuScenesTrainConfig`)."""
    if not isinstance(config, NuScenesTrainConfig):
        raise ConfigError(
            f"nuscenes task needs a NuScenesTrainConfig, got {type(config).__name__}")
    return NuScenesTask(config)
