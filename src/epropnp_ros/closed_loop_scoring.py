"""What the closed loop reads from the nodes' messages beyond boxes: velocities, attributes and
how well the published covariances cover the ground truth.

* :func:`with_velocity_and_attributes`: a camera's boxes with the velocities of its
  ``DetectedObjects`` and the attributes of its ``detection_attributes`` (same stamp, same order).
* :func:`rig_calibration_errors`: the matched fused detections' squared Mahalanobis distances
  (position from the 3x3 block of the published covariance, heading from the variance of its
  ``rot_z`` with roll and pitch held) against the sample's ground truth; a camera's own
  detections are measured by
  :func:`epropnp_lib.data.nuscenes.calibration.camera_calibration_errors`.
* :func:`heading_report`: the heading error of each camera's matched detections and the fraction
  of true headings inside the 90 % highest-density region of their posterior yaw samples
  (:func:`epropnp_lib.heading.heading_calibration`).
* :func:`calibration_report`: their coverage of the nominal 50/90/95/99 % regions, written as
  ``calibration.png`` too; :func:`rig_calibration` and :func:`camera_calibration` make it for a
  closed loop's evaluated samples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epropnp_lib.data.nuscenes import (
    NUSCENES_ATTRIBUTES,
    NUSCENES_CLASSES,
    NUSCENES_HEADING_PERIODS,
    CameraDetections,
    ResultsMeta,
    evaluate,
    write_results,
)
from epropnp_lib.data.nuscenes.calibration import (
    CalibrationErrors,
    GroundTruth,
    GroundTruthCache,
    camera_calibration_errors,
    coverage,
    global_yaw,
    match_and_measure,
)
from epropnp_lib.data.nuscenes.frames import camera_frame_of, global_to_camera
from epropnp_lib.dataclass_io import json_default
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.heading import HDR_MASSES, HeadingImage, heading_calibration
from epropnp_lib.plots import calibration_diagram
from epropnp_ros.autoware import attributes_from_classification, velocities_from_detected_objects
from epropnp_ros.poses import msg_to_pose, pose_rotation

__all__ = ["calibration_report", "camera_calibration", "heading_report", "rig_calibration",
           "rig_calibration_errors", "with_velocity_and_attributes", "write_scores"]


def with_velocity_and_attributes(boxes: CameraBoxes, objects: Any, attributes: Any
                                 ) -> CameraBoxes:
    """``boxes`` (camera frame, ``M`` of them) with the velocities (vx, vz) of the image's
    ``DetectedObjects`` and the attribute indices of its ``detection_attributes`` (either may be
    ``None``: the boxes keep NaN / -1)."""
    m = int(boxes.center.shape[0])
    velocity, attrs = boxes.velocity, boxes.attributes
    if objects is not None and len(objects.objects) == m:
        v = velocities_from_detected_objects(objects)
        velocity = torch.from_numpy(v[:, [0, 2]].copy())
    if attributes is not None:
        names = attributes_from_classification(attributes, m)
        attrs = torch.tensor([NUSCENES_ATTRIBUTES.index(n) if n in NUSCENES_ATTRIBUTES else -1
                              for n in names], dtype=torch.long).reshape(m)
    return boxes._replace(velocity=velocity, attributes=attrs)


def _heading_variance(rot_cov: np.ndarray) -> float:
    """The variance of the rotation about the frame's z axis with the other two rotations held
    (``1 / (Sigma_rot^-1)_zz``). A fused 4DoF detection observes the rotation about its camera's
    y axis only; its unobserved rotations carry a placeholder variance of 1e6 rad^2, and a
    camera y axis a degree off the vertical leaks some 300 rad^2 of it into ``Sigma_zz``
    itself. Held at zero (a vehicle on the road), they leave the heading's own variance."""
    try:
        info = np.linalg.inv(0.5 * (rot_cov + rot_cov.T))
    except np.linalg.LinAlgError:
        return math.nan
    return float(1.0 / info[2, 2]) if info[2, 2] > 0 else math.nan


def rig_calibration_errors(msg: Any, gt: GroundTruth) -> CalibrationErrors:
    """The matched detections of a fused ``Detection3DArray`` in the global frame (``map``)."""
    centers, yaws, labels, scores, pos_cov, yaw_var = [], [], [], [], [], []
    for det in msg.detections:
        if not det.results:
            continue
        best = max(det.results, key=lambda r: r.hypothesis.score)
        if best.hypothesis.class_id not in NUSCENES_CLASSES:
            continue
        pose = msg_to_pose(best.pose.pose, dof=6)
        rot = pose_rotation(pose)
        cov = np.asarray(best.pose.covariance, dtype=np.float64).reshape(6, 6)
        centers.append(pose[:3])
        yaws.append(math.atan2(rot[1, 0], rot[0, 0]))
        labels.append(NUSCENES_CLASSES.index(best.hypothesis.class_id))
        scores.append(best.hypothesis.score)
        pos_cov.append(cov[:3, :3])
        yaw_var.append(_heading_variance(cov[3:, 3:]))
    f64 = torch.float64
    return match_and_measure(
        torch.tensor(np.asarray(centers, dtype=np.float64).reshape(-1, 3)),
        torch.tensor(yaws, dtype=f64), torch.tensor(labels, dtype=torch.long),
        torch.tensor(scores, dtype=f64),
        torch.tensor(np.asarray(pos_cov, dtype=np.float64).reshape(-1, 3, 3)),
        torch.tensor(yaw_var, dtype=f64), gt.translation, global_yaw(gt.rotation), gt.labels)


def calibration_report(errors: CalibrationErrors, out_dir: Path, title: str) -> dict[str, Any]:
    """The coverage of ``errors`` (position, heading, matches), also drawn into
    ``out_dir / "calibration.png"`` (its path under ``"plot"``)."""
    report = coverage(errors)
    plot = calibration_diagram(
        {f"position (chi2 3, {report['matches']} matches)": report["position"],
         "heading (chi2 1)": report["heading"]},
        out_dir / "calibration.png", title=title)
    return dict(report, plot=str(plot))


def rig_calibration(nusc: Any, fused: Mapping[str, Any], evaluated: set[str], out_dir: Path
                    ) -> dict[str, Any]:
    """:func:`calibration_report` of the fused ``Detection3DArray`` of each sample (``map``)
    over the ``evaluated`` samples."""
    truth = GroundTruthCache(nusc)
    parts = [rig_calibration_errors(msg, truth(sample)) for sample, msg in fused.items()
             if sample in evaluated]
    return calibration_report(CalibrationErrors.cat(parts), out_dir,
                              "closed loop (rig node, fused in map): covariance coverage")


def camera_calibration(nusc: Any, images: Sequence[tuple[str, CameraBoxes, np.ndarray]],
                       evaluated: set[str], out_dir: Path) -> dict[str, Any]:
    """:func:`calibration_report` of each camera image's own detections ``(sample_data token,
    boxes, (M, 4, 4) covariances)`` over the ``evaluated`` samples."""
    truth = GroundTruthCache(nusc)
    parts = []
    for sd_token, boxes, covs in images:
        frame = camera_frame_of(nusc, sd_token)
        if frame.sample_token in evaluated:
            parts.append(camera_calibration_errors(boxes, covs, frame, truth(frame.sample_token)))
    return calibration_report(CalibrationErrors.cat(parts), out_dir,
                              "closed loop (one detector node per camera): covariance coverage")


def write_scores(nusc: Any, per_sample: Mapping[str, Sequence[CameraDetections]],
                 sample_tokens: Sequence[str], dataroot: str, version: str, eval_set: str,
                 out_dir: Path, run: Mapping[str, Any]) -> tuple[Path, Path, dict[str, Any]]:
    """Write the results JSON, score it with the devkit's ``DetectionEval`` and write
    ``scores.json`` (the scores, then ``run``: what the run reports about itself); returns both
    paths and the report."""
    results_path = out_dir / "results_nusc.json"
    summary = write_results(results_path, per_sample, sample_tokens=sample_tokens,
                            meta=ResultsMeta())
    scores = evaluate(results_path, dataroot, version, eval_set, out_dir, nusc=nusc)
    report = {
        "nds": scores.nds,
        "mean_ap": scores.mean_ap,
        "tp_errors": scores.tp_errors,
        "per_class_ap": scores.per_class_ap,
        "boxes_written": summary.num_boxes,
        **run,
    }
    scores_path = out_dir / "scores.json"
    scores_path.write_text(json.dumps(report, indent=2, default=json_default))
    return results_path, scores_path, report


def _yaw_samples(msg: Any, m: int) -> torch.Tensor:
    """``(S, M)`` yaw samples of a camera's 4DoF ``PoseArray`` (object-major, ``S`` per object;
    rotations about the camera y axis: ``yaw = 2 atan2(q_y, q_w)``)."""
    poses = list(msg.poses) if msg is not None else []
    if m == 0 or not poses or len(poses) % m:
        return torch.zeros(0, m, dtype=torch.float64)
    q = np.array([(p.orientation.y, p.orientation.w) for p in poses], dtype=np.float64)
    yaw = 2.0 * np.arctan2(q[:, 0], q[:, 1])
    return torch.from_numpy(yaw.reshape(m, -1).T.copy())


def heading_report(nusc: Any, images: Sequence[tuple[str, CameraBoxes, Any]],
                   evaluated: set[str]) -> dict[str, Any]:
    """Heading error and highest-density-region coverage of each camera image's own
    detections ``(sample_data token, boxes, PoseArray of posterior samples)`` over the
    ``evaluated`` samples: the fraction of true headings inside the 90 % region
    (``hdr90_fraction``) and inside the :data:`HDR_MASSES` regions (``hdr_fractions``)."""
    truth = GroundTruthCache(nusc)
    shots = []
    for sd_token, boxes, samples in images:
        frame = camera_frame_of(nusc, sd_token)
        if frame.sample_token not in evaluated:
            continue
        gt = truth(frame.sample_token)
        g = gt.translation.shape[0]
        f64 = torch.float64
        center, yaw, _ = global_to_camera(gt.translation, gt.rotation,
                                          torch.zeros(g, 2, dtype=f64), frame.cam_to_global)
        gt_boxes = CameraBoxes(center, torch.ones(g, 3, dtype=f64), yaw, gt.labels,
                               torch.zeros(g, 2, dtype=f64), torch.full((g,), -1),
                               torch.ones(g, dtype=f64))
        shots.append(HeadingImage(boxes, _yaw_samples(samples, int(boxes.center.shape[0])),
                                  gt_boxes))
    usable = [s for s in shots if s.yaw_samples.shape[0] >= 2]
    cals = {m: heading_calibration(usable, m, periods=NUSCENES_HEADING_PERIODS)
            for m in HDR_MASSES}
    cal = cals[0.9]
    return {"num_matched": cal.num_matched, "mean_error": cal.mean_error,
            "hdr90_fraction": cal.fraction,
            "hdr_fractions": {f"{m:g}": c.fraction for m, c in cals.items()}}
