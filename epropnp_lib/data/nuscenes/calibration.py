"""How well detections' predicted uncertainty covers the nuScenes ground truth.

Each detection is matched to the nearest ground-truth box of its class in the ground plane
(:func:`epropnp_lib.heading.greedy_match`: best score first, each box matched once, the
devkit's rule at its 2 m threshold). For a match, in any one frame where both are given:

* position: ``d2 = dt^T Sigma_t^-1 dt`` with the predicted ``(3, 3)`` position covariance, which
  follows chi-square(3) when calibrated;
* heading: ``d2 = wrap(yaw_gt - yaw)^2 / var_yaw``, chi-square(1).

:func:`coverage` turns them into the fraction of ground truths inside the nominal 50/90/95/99 %
regions (:func:`epropnp_lib.metrics.calibration`). :func:`ground_truth_global` reads a
sample's boxes (global frame) and :func:`camera_calibration_errors` measures one camera image's
4DoF detections against them. Shapes: ``M`` detections, ``G`` boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from epropnp_lib.data.nuscenes.frames import CameraFrame, global_to_camera
from epropnp_lib.data.nuscenes.taxonomy import NUSCENES_CLASSES
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.rotations import quat_to_matrix, wrap_angle
from epropnp_lib.heading import MATCH_DISTANCE, greedy_match
from epropnp_lib.metrics import CALIBRATION_LEVELS, calibration

__all__ = ["CalibrationErrors", "GroundTruth", "GroundTruthCache", "camera_calibration_errors",
           "global_yaw",
           "coverage", "ground_truth_global", "match_and_measure"]


class CalibrationErrors(NamedTuple):
    """Squared Mahalanobis distances of the matched detections.

    Attributes:
        position: ``(K,)`` position ``d2`` (NaN where the covariance is not positive definite).
        heading: ``(K,)`` heading ``d2`` (NaN where the variance is not positive).
    """

    position: torch.Tensor
    heading: torch.Tensor

    @staticmethod
    def cat(parts: Sequence[CalibrationErrors]) -> CalibrationErrors:
        """All ``parts`` in one."""
        empty = torch.zeros(0, dtype=torch.float64)
        return CalibrationErrors(torch.cat([empty, *(p.position for p in parts)]),
                                 torch.cat([empty, *(p.heading for p in parts)]))


def match_and_measure(
    center: torch.Tensor, yaw: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
    position_cov: torch.Tensor, yaw_var: torch.Tensor, gt_center: torch.Tensor,
    gt_yaw: torch.Tensor, gt_labels: torch.Tensor, *, max_distance: float = MATCH_DISTANCE,
    ground_plane: tuple[int, int] = (0, 1),
) -> CalibrationErrors:
    """Match one frame's detections to its ground truth and measure the matches.

    Args:
        center: ``(M, 3)`` detected box centres; ``yaw: (M,)`` headings; ``labels: (M,)`` class
            indices; ``scores: (M,)``.
        position_cov: ``(M, 3, 3)`` position covariances; ``yaw_var: (M,)`` heading variances
            (rad^2), in the frame of ``center`` and ``yaw``.
        gt_center: ``(G, 3)``, ``gt_yaw: (G,)``, ``gt_labels: (G,)``: the ground truth in the
            same frame and heading convention.
        max_distance: the matching radius (metres) of :func:`epropnp_lib.heading.greedy_match`.
        ground_plane: the two axes of the frame that span the ground (``(0, 1)`` for a z-up
            frame such as nuScenes' global one, ``(0, 2)`` for a camera frame).

    Returns:
        The ``d2`` of every match (module docstring).
    """
    f64 = torch.float64
    center, gt_center = center.to(f64).reshape(-1, 3), gt_center.to(f64).reshape(-1, 3)
    plane = list(ground_plane)
    match = greedy_match(center[:, plane], labels.reshape(-1), scores.reshape(-1),
                         gt_center[:, plane], gt_labels.reshape(-1), max_distance)
    g = torch.nonzero(match >= 0).reshape(-1)
    if g.numel() == 0:
        return CalibrationErrors.cat([])
    p = match[g]
    dt = (gt_center[g] - center[p]).unsqueeze(-1)
    cov = position_cov.to(f64).reshape(-1, 3, 3)[p]
    chol, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.transpose(-1, -2)))
    ok = info == 0
    eye = torch.eye(3, dtype=f64).expand_as(chol)
    white = torch.linalg.solve_triangular(torch.where(ok[:, None, None], chol, eye), dt,
                                          upper=False)
    d2_pos = torch.where(ok, white.square().sum((-1, -2)), torch.full_like(ok, math.nan, dtype=f64))
    dyaw = wrap_angle(gt_yaw.to(f64).reshape(-1)[g] - yaw.to(f64).reshape(-1)[p])
    var = yaw_var.to(f64).reshape(-1)[p]
    d2_yaw = torch.where(var > 0, dyaw.square() / var.clamp_min(1e-300),
                         torch.full_like(var, math.nan))
    return CalibrationErrors(d2_pos, d2_yaw)


def coverage(errors: CalibrationErrors, levels: Sequence[float] = CALIBRATION_LEVELS
             ) -> dict[str, Any]:
    """``{"position": {level: fraction}, "heading": {...}, "matches": K}`` of ``errors``."""
    pos = calibration(errors.position, 3, levels)
    head = calibration(errors.heading, 1, levels)
    return {"position": pos.coverage, "heading": head.coverage, "matches": pos.count}


class GroundTruth(NamedTuple):
    """A sample's detection-class annotations in the global frame.

    Attributes:
        translation: ``(G, 3)``; rotation: ``(G, 4)`` (w, x, y, z); labels: ``(G,)`` class
        indices.
    """

    translation: torch.Tensor
    rotation: torch.Tensor
    labels: torch.Tensor


def ground_truth_global(nusc: Any, sample_token: str) -> GroundTruth:
    """The annotations of ``sample_token`` of the ten detection classes."""
    # nuscenes-devkit: importing it takes seconds (matplotlib ...); only scoring needs it.
    from nuscenes.eval.detection.utils import category_to_detection_name

    rows = []
    for token in nusc.get("sample", sample_token)["anns"]:
        ann = nusc.get("sample_annotation", token)
        name = category_to_detection_name(ann["category_name"])
        if name is not None:
            rows.append((ann["translation"], ann["rotation"], NUSCENES_CLASSES.index(name)))
    f64 = torch.float64
    return GroundTruth(torch.tensor([r[0] for r in rows], dtype=f64).reshape(-1, 3),
                       torch.tensor([r[1] for r in rows], dtype=f64).reshape(-1, 4),
                       torch.tensor([r[2] for r in rows], dtype=torch.long))


def global_yaw(rotation: torch.Tensor) -> torch.Tensor:
    """``(G,)`` heading about the global z axis of box rotations ``(G, 4)``."""
    rot = quat_to_matrix(rotation)
    return torch.atan2(rot[:, 1, 0], rot[:, 0, 0])


def camera_calibration_errors(boxes: CameraBoxes, covariances: np.ndarray, frame: CameraFrame,
                              gt: GroundTruth) -> CalibrationErrors:
    """The matched detections of one camera image (camera frame, ``(M, 4, 4)`` covariances
    over (t, yaw)); the ground truth is moved into the camera frame."""
    g = gt.translation.shape[0]
    center, yaw, _ = global_to_camera(gt.translation, gt.rotation,
                                      torch.zeros(g, 2, dtype=torch.float64),
                                      frame.cam_to_global)
    cov = torch.from_numpy(np.asarray(covariances, dtype=np.float64)).reshape(-1, 4, 4)
    return match_and_measure(boxes.center, boxes.yaw, boxes.labels, boxes.scores,
                             cov[:, :3, :3], cov[:, 3, 3], center, yaw, gt.labels,
                             ground_plane=(0, 2))


class GroundTruthCache:
    """Each evaluated sample's :class:`GroundTruth`, loaded once."""

    def __init__(self, nusc: Any) -> None:
        self.nusc = nusc
        self.truth: dict[str, GroundTruth] = {}

    def __call__(self, sample: str) -> GroundTruth:
        if sample not in self.truth:
            self.truth[sample] = ground_truth_global(self.nusc, sample)
        return self.truth[sample]
