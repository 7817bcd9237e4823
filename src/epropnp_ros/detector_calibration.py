"""Post-hoc calibration of a detector's heading posterior (``epropnp-detector-calibrate``;
ROS-free).

The paper's posterior is ``exp(-cost)`` of the learned correspondences; the detections a
model gets wrong (front and back confused, a poor heading) often sit under a posterior that is
too narrow to hold the truth.  This tool fits one number, the likelihood temperature ``T``
(the detector then publishes covariances and posterior samples of ``exp(-cost / T)``: the same
detections, ``T`` times the covariance, :func:`epropnp_lib.pnp.solver.temper_solution`), so
that the true heading of ``mass`` of the matched detections lies in the ``mass``
highest-density region of their posterior samples (:func:`epropnp_lib.heading.
heading_calibration`, the number the closed loop reports as ``hdr90_fraction``), and stores it
in a copy of the checkpoint (``extra.calibration``), which the ``detector`` and
``rig_detector`` nodes use by default.

The region is estimated from samples, so the fraction is not monotonic in ``T`` (a very wide
posterior spreads its samples over positions as well): the tool evaluates a grid of
temperatures and keeps the one whose fraction is nearest to ``mass``.  It runs
:class:`~epropnp_ros.detector_pipeline.DetectorPipeline` -- the node's processing without ROS
-- with the node's sampling settings over every camera image of a nuScenes-format split.  Fit
it on data of its own (another draw of the training scenes), never on the split you report::

    epropnp-detector-calibrate --checkpoint runs/nuscenes_synthetic_heading/model.pt \\
        --dataroot runs/heading_data/calib --split mini_train \\
        --out models/detector_small_synthetic.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epropnp_lib.data.nuscenes import NUSCENES_HEADING_PERIODS
from epropnp_lib.data.nuscenes.dataset import NuScenesCameraDataset, NuScenesCameraSample
from epropnp_lib.errors import EProPnPError
from epropnp_lib.heading import HeadingCalibration, HeadingImage, heading_calibration
from epropnp_lib.nets.checkpoint import CALIBRATION_KEY, load_checkpoint, save_checkpoint
from epropnp_lib.nets.deformable import CHECKPOINT_KIND
from epropnp_ros.detector_pipeline import DetectorPipeline, DetectorSettings
from epropnp_ros.errors import CalibrationError
from epropnp_ros.pipeline import Intrinsics

logger = logging.getLogger(__name__)

_NODE = DetectorSettings()

#: Temperatures tried by default (the fraction is flat near its best; a coarse grid suffices).
TEMPERATURES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)


@dataclass(frozen=True)
class DetectorCalibrationConfig:
    """What :func:`calibrate` fits on and writes.

    Attributes:
        checkpoint: the deformable-network checkpoint to calibrate.
        dataroot: nuScenes root of the held-out data.
        out: the calibrated copy of the checkpoint (may be ``checkpoint`` itself; written
            atomically).
        split: devkit split of ``dataroot`` (not the one whose calibration you report).
        version: nuScenes version folder.
        mass: the highest-density mass fitted (0.9: 90 % of the true headings inside the 90 %
            regions).
        temperatures: the grid of ``T`` tried (positive).
        score_threshold: least score of the detections matched to the ground truth (the
            closed loop scores at 0.1).
        num_samples, sample_iterations: the posterior draw the temperature is fitted for (the
            node's defaults; the fraction depends on them).
        seed: seed of the sampling generator.
    """

    checkpoint: Path
    dataroot: Path
    out: Path
    split: str = "mini_train"
    version: str = "v1.0-mini"
    mass: float = 0.9
    temperatures: tuple[float, ...] = TEMPERATURES
    score_threshold: float = 0.1
    num_samples: int = _NODE.num_samples
    sample_iterations: int = _NODE.sample_iterations
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.mass < 1.0:
            raise CalibrationError(f"mass must be in (0, 1), got {self.mass}")
        if not self.temperatures or not all(math.isfinite(t) and t > 0
                                            for t in self.temperatures):
            raise CalibrationError(f"temperatures must be positive numbers, got "
                                   f"{self.temperatures}")
        if self.num_samples < 2:
            raise CalibrationError(f"the heading region needs at least 2 samples per "
                                   f"detection, got num_samples={self.num_samples}")


def heading_fraction(pipe: DetectorPipeline, samples: Sequence[Sequence[NuScenesCameraSample]],
                     mass: float) -> HeadingCalibration:
    """The heading calibration of ``pipe`` (its current settings) over ``samples``: the
    camera images of each nuScenes sample processed as one batch, as the rig node does."""
    images = []
    for cams in samples:
        rgbs, intr = [], []
        for item in cams:
            if item.image is None:
                raise CalibrationError("the dataset was built without images")
            rgb = np.ascontiguousarray(item.image.permute(1, 2, 0).numpy())
            rgbs.append(rgb)
            intr.append(Intrinsics(item.cam_mats.double().numpy(), None, rgb.shape[1],
                                   rgb.shape[0]))
        for item, out in zip(cams, pipe.process_batch(rgbs, intr), strict=True):
            yaw = torch.as_tensor(out.samples[..., 3]).T  # (S, M)
            images.append(HeadingImage(out.boxes, yaw, item.boxes))
    return heading_calibration(images, mass, periods=NUSCENES_HEADING_PERIODS)


def calibrate(config: DetectorCalibrationConfig) -> dict[str, Any]:
    """Fit the likelihood temperature (module docstring), write ``config.out``, and return the
    report: the temperature, the fraction at each temperature tried, and what it was fitted on.

    Raises:
        CalibrationError: unreadable data or checkpoint, or no matched detection to fit on.
    """
    try:
        data = NuScenesCameraDataset(config.dataroot, config.version, config.split)
        ckpt = load_checkpoint(config.checkpoint, kind=CHECKPOINT_KIND)
        settings = DetectorSettings(
            score_threshold=config.score_threshold, num_samples=config.num_samples,
            sample_iterations=config.sample_iterations, seed=config.seed,
            likelihood_temperature=1.0)
        pipe = DetectorPipeline.from_checkpoint(config.checkpoint, "cpu", settings)
        by_sample: dict[str, list[NuScenesCameraSample]] = {}
        for i in range(len(data)):
            item = data[i]
            by_sample.setdefault(item.frame.sample_token, []).append(item)
    except EProPnPError as exc:
        raise CalibrationError(f"cannot calibrate: {exc}") from exc
    samples = list(by_sample.values())
    grid: dict[float, HeadingCalibration] = {}
    for t in sorted(set(config.temperatures)):
        pipe.settings = replace(settings, likelihood_temperature=t)
        pipe.generator.manual_seed(config.seed)
        grid[t] = heading_fraction(pipe, samples, config.mass)
        logger.info("T = %g: %d of %d matched headings inside their %g %% regions (%.3f)", t,
                    grid[t].num_inside, grid[t].num_matched, 100 * config.mass,
                    grid[t].fraction)
    matched = next(iter(grid.values())).num_matched
    if matched == 0:
        raise CalibrationError(f"no detection of {config.dataroot} ({config.split}) was "
                               f"matched to a ground-truth box: nothing to calibrate on")
    temperature = min(grid, key=lambda t: (abs(grid[t].fraction - config.mass), t))
    fitted = {
        "likelihood_temperature": temperature,
        "target": f"heading posterior: {config.mass:g} of the true headings inside the "
                  f"{config.mass:g} highest-density region of the samples",
        "mass": config.mass,
        "matched": matched,
        "images": len(data),
        "data": f"{config.split} of {Path(config.dataroot).name}",
        "score_threshold": config.score_threshold,
        "num_samples": config.num_samples,
        "sample_iterations": config.sample_iterations,
    }
    save_checkpoint(config.out, kind=ckpt.kind, config=ckpt.config, state_dict=ckpt.state_dict,
                    extra={**ckpt.extra, CALIBRATION_KEY: fitted})
    return {**fitted,
            "fraction_before": grid[1.0].fraction if 1.0 in grid else None,
            "fraction_after": grid[temperature].fraction,
            "fraction_by_temperature": {f"{t:g}": c.fraction for t, c in grid.items()},
            "mean_heading_error": grid[temperature].mean_error,
            "out": str(config.out)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="epropnp-detector-calibrate",
        description="Fit the likelihood temperature of a detector on a held-out nuScenes-format "
                    "split (90 %% of the true headings inside the 90 %% highest-density region "
                    "of the posterior samples) and write a copy of the checkpoint that carries "
                    "it.")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--dataroot", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path,
                        help="calibrated checkpoint (may be --checkpoint itself)")
    parser.add_argument("--split", default="mini_train",
                        help="held-out split to fit on (default mini_train of a draw never "
                             "trained on; never the reported one)")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--mass", type=float, default=0.9)
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--num-samples", type=int, default=_NODE.num_samples,
                        help="posterior samples per detection (the node's default)")
    parser.add_argument("--sample-iterations", type=int, default=_NODE.sample_iterations,
                        help="AMIS iterations of the samples (the node's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = calibrate(DetectorCalibrationConfig(
            checkpoint=args.checkpoint, dataroot=args.dataroot, out=args.out, split=args.split,
            version=args.version, mass=args.mass, temperatures=tuple(args.temperatures),
            num_samples=args.num_samples, sample_iterations=args.sample_iterations))
    except CalibrationError as exc:
        print(f"epropnp-detector-calibrate: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
