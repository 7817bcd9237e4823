"""Post-hoc calibration of a pose model's weights and covariances (``epropnp-pose-calibrate``;
ROS-free).

A network trained with the KL loss learns its likelihood, but the Laplace covariance of that
likelihood can still be too narrow or too wide for the errors the model makes, and its weights
can sit on fewer map cells than the pose is best solved from (the bundled model's before and
after: ``models/README.md``).  This tool fits two numbers and stores them in a copy of the
checkpoint (``extra.calibration``), which the ``pose_estimator`` node uses by default:

1. the **weight temperature** ``tau`` (the network's weight logits divided by ``tau`` before
   their spatial Softmax, :meth:`~epropnp_lib.nets.dense.DenseCorrespondenceNet.forward`):
   of :data:`WEIGHT_TEMPERATURES`, the one with the best pose accuracy on the split (the mean
   of ADD(-S)-0.1d and 5deg5cm, :func:`pose_accuracy`; the first of equals);
2. at that ``tau``, the **likelihood temperature** ``T`` that fixes the 95 % level of the
   covariance (the node then solves and samples ``exp(-cost / T)``: the same pose, ``T``
   times the covariance; :func:`epropnp_lib.metrics.fit_temperature`).

It runs :class:`~epropnp_ros.pipeline.PoseEstimatorPipeline` -- the node's processing without
ROS -- at ``T = 1`` over every instance of a BOP split, on the regions the bag converter
would send the node (the visible boxes with the same seeded jitter,
:func:`epropnp_ros.bop_bag.jittered_roi`).  Fit it on a split of its own (``val``: other
scenes of another seed), never on the split whose coverage you report::

    epropnp-pose-calibrate --checkpoint runs/linemod_synthetic_small/model.pt \\
        --bop-root runs/pose_data --split val --out models/pose_small_synthetic.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from epropnp_lib.data.bop import BopConfig, BopDataError, BopDataset
from epropnp_lib.errors import ConfigError, EProPnPError
from epropnp_lib.geometry.rotations import matrix_to_quat
from epropnp_lib.metrics import calibration, fit_temperature
from epropnp_lib.nets.checkpoint import CALIBRATION_KEY, load_checkpoint, save_checkpoint
from epropnp_lib.nets.dense import CHECKPOINT_KIND
from epropnp_lib.pnp.cost import check_temperature
from epropnp_ros.bop_bag import BopBagConfig, jittered_roi
from epropnp_ros.errors import CalibrationError
from epropnp_ros.pipeline import Intrinsics, PoseEstimatorPipeline, PoseEstimatorSettings
from epropnp_ros.pose_scores import (
    COVERAGE_LEVELS,
    Estimate,
    ModelSpec,
    mahalanobis_of,
    model_specs,
    score_estimates,
)

logger = logging.getLogger(__name__)

_BAG = BopBagConfig(root="", output="")
_NODE = PoseEstimatorSettings()

#: The weight temperatures :func:`calibrate` chooses from (1: the weights as trained).
WEIGHT_TEMPERATURES = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


@dataclass(frozen=True)
class PoseCalibrationConfig:
    """What :func:`calibrate` fits on and writes.

    Attributes:
        checkpoint: the dense-network checkpoint to calibrate.
        bop_root: BOP root of the held-out data.
        out: the calibrated copy of the checkpoint (may be ``checkpoint`` itself; written
            atomically).
        split: split folder of ``bop_root`` (not the one whose coverage you report).
        dataset: BOP dataset folder.
        mass: the coverage level fitted (0.95: 95 % of the truths inside the 95 % ellipsoid).
        jitter, seed, min_visib_fract: the regions, as the bag converter makes them
            (:class:`~epropnp_ros.bop_bag.BopBagConfig`).
        roi_crops, roi_crop_shift: the crops per region the temperatures are fitted for (the
            node's defaults; the temperatures depend on them).
        weight_temperatures: the weight temperatures to choose from (``(1.0,)``: keep the
            weights as trained).
    """

    checkpoint: Path
    bop_root: Path
    out: Path
    split: str = "val"
    dataset: str = "lm"
    mass: float = 0.95
    jitter: float = _BAG.jitter
    seed: int = _BAG.seed
    min_visib_fract: float = _BAG.min_visib_fract
    roi_crops: int = _NODE.roi_crops
    roi_crop_shift: float = _NODE.roi_crop_shift
    coverage_levels: tuple[float, ...] = field(default=COVERAGE_LEVELS)
    weight_temperatures: tuple[float, ...] = WEIGHT_TEMPERATURES

    def __post_init__(self) -> None:
        if not self.weight_temperatures:
            raise ConfigError("weight_temperatures is empty: give at least one weight_temperature")
        for tau in self.weight_temperatures:
            check_temperature(tau, "weight_temperature")


def _estimates(pipe: PoseEstimatorPipeline, data: BopDataset, config: PoseCalibrationConfig
               ) -> list[Estimate]:
    """One :class:`Estimate` per instance of ``data`` (``pose`` None where the solve failed)."""
    images: dict[tuple[int, int], list[Any]] = {}
    for inst in data.instances:
        images.setdefault((inst.scene_id, inst.im_id), []).append(inst)
    estimates = []
    for (scene_id, im_id), insts in sorted(images.items()):
        insts.sort(key=lambda i: i.gt_id)
        path = data.image_path(scene_id, im_id)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CalibrationError(f"cannot read {path}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rois = np.stack([jittered_roi(i.info.bbox_visib, config.jitter, config.seed, scene_id,
                                      im_id, i.gt_id) for i in insts])
        ids = [str(i.gt_id) for i in insts]
        out = pipe.process(rgb, Intrinsics(insts[0].cam_mats, None, rgb.shape[1],
                                           rgb.shape[0]), rois, roi_ids=ids)
        found = dict(zip(out.object_ids, zip(out.pose, out.covariance, strict=True),
                         strict=True))
        for inst, ident in zip(insts, ids, strict=True):
            gt = np.concatenate([inst.t, matrix_to_quat(torch.as_tensor(inst.R)).numpy()])
            pose, cov = found.get(ident, (None, None))
            estimates.append(Estimate(data.model(inst.obj_id).name, gt, pose, cov))
    return estimates


def pose_accuracy(estimates: Sequence[Estimate], specs: Mapping[str, ModelSpec]) -> float:
    """The accuracy the weight temperature is chosen by: the mean of ADD(-S)-0.1d and 5deg5cm
    (each the mean over objects, in %; a failed solve counts as a miss); 0 without any
    estimate."""
    mean = score_estimates(estimates, specs)["mean"]
    if not mean:
        return 0.0
    return 0.5 * (float(mean["add_01"]) + float(mean["deg5_cm5"]))


def calibrate(config: PoseCalibrationConfig) -> dict[str, Any]:
    """Fit the weight and likelihood temperatures (module docstring), write ``config.out``,
    and return the report: both temperatures, the accuracy of each weight temperature tried,
    the coverage before and after, and what they were fitted on.

    Raises:
        CalibrationError: unreadable data or checkpoint, or no solved instance to fit on.
    """
    try:
        data = BopDataset(config.bop_root, config.split, config=BopConfig(
            dataset=config.dataset, crop_size=0, render_coords=False, bbox="visib",
            min_visib_fract=config.min_visib_fract))
        ckpt = load_checkpoint(config.checkpoint, kind=CHECKPOINT_KIND)
        settings = PoseEstimatorSettings(num_samples=0, likelihood_temperature=1.0,
                                         roi_crops=config.roi_crops,
                                         roi_crop_shift=config.roi_crop_shift)
        pipe = PoseEstimatorPipeline.from_checkpoint(config.checkpoint, "cpu", settings)
    except (BopDataError, EProPnPError) as exc:
        raise CalibrationError(f"cannot calibrate: {exc}") from exc
    specs = model_specs(data.models.values())
    accuracy: dict[float, float] = {}
    chosen: tuple[float, list[Estimate]] | None = None
    for tau in config.weight_temperatures:
        pipe.settings = replace(settings, weight_temperature=tau)
        found = _estimates(pipe, data, config)
        accuracy[tau] = pose_accuracy(found, specs)
        logger.info("weight temperature %g: pose accuracy %.2f %%", tau, accuracy[tau])
        if chosen is None or accuracy[tau] > accuracy[chosen[0]]:
            chosen = (tau, found)
    assert chosen is not None  # weight_temperatures is not empty
    weight_temperature, estimates = chosen
    d2 = mahalanobis_of(estimates, specs)
    if not bool(torch.isfinite(d2).any()):
        raise CalibrationError(f"no instance of {config.bop_root}/{config.dataset}/"
                              f"{config.split} was solved: nothing to calibrate on")
    temperature = fit_temperature(d2, 6, config.mass)
    before = calibration(d2, 6, config.coverage_levels)
    after = calibration(d2 / temperature, 6, config.coverage_levels)
    fitted = {
        "likelihood_temperature": temperature,
        "weight_temperature": weight_temperature,
        "mass": config.mass,
        "instances": len(estimates),
        "solved": before.count,
        "data": f"{config.dataset}/{config.split} of {Path(config.bop_root).name}",
        "roi_jitter": config.jitter,
        "roi_crops": config.roi_crops,
        "roi_crop_shift": config.roi_crop_shift,
    }
    save_checkpoint(config.out, kind=ckpt.kind, config=ckpt.config, state_dict=ckpt.state_dict,
                    extra={**ckpt.extra, CALIBRATION_KEY: fitted})
    return {**fitted,
            "pose_accuracy": {f"{k:g}": v for k, v in accuracy.items()},
            "coverage_before": {f"{k:g}": v for k, v in before.coverage.items()},
            "coverage_after": {f"{k:g}": v for k, v in after.coverage.items()},
            "out": str(config.out)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="epropnp-pose-calibrate",
        description="Fit the weight temperature (best pose accuracy) and the likelihood "
                    "temperature (95 %% of the truths inside their 95 %% ellipsoids) of a pose "
                    "model on a held-out BOP split and write a copy of the checkpoint that "
                    "carries them.")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--bop-root", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path,
                        help="calibrated checkpoint (may be --checkpoint itself)")
    parser.add_argument("--split", default="val",
                        help="held-out split to fit on (default val; never the reported one)")
    parser.add_argument("--dataset", default="lm")
    parser.add_argument("--mass", type=float, default=0.95)
    parser.add_argument("--weight-temperatures", type=float, nargs="+",
                        default=list(WEIGHT_TEMPERATURES), metavar="TAU",
                        help="weight temperatures to choose from by pose accuracy (default "
                             "%(default)s; 1 alone keeps the weights as trained)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not 0.0 < args.mass < 1.0 or not math.isfinite(args.mass):
        parser.error(f"--mass must be in (0, 1), got {args.mass}")
    try:
        config = PoseCalibrationConfig(
            checkpoint=args.checkpoint, bop_root=args.bop_root, out=args.out, split=args.split,
            dataset=args.dataset, mass=args.mass,
            weight_temperatures=tuple(args.weight_temperatures))
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        report = calibrate(config)
    except CalibrationError as exc:
        print(f"epropnp-pose-calibrate: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
