"""Pictures of 6DoF poses with their uncertainty, drawn onto the camera image (ROS-free).

For each object: the projected outline of its model (the silhouette's contour; estimate in the
object's colour, ground truth in white when given), the pose axes at the object origin (x red,
y green, z blue, ``axis_length`` metres), the projected 2-sigma ellipse of the translation
covariance (the 3x3 position block pushed through the projection's Jacobian at the estimated
centre, in yellow) and the posterior samples as axis clouds: the tips of each sample's three
axes, blended, so that a tight cloud reads as a confident orientation and a spread one as an
uncertain (or multimodal) one.

Poses are ``(7,)`` ``(t, q_wxyz)`` object -> camera (:mod:`epropnp_lib.conventions`); intrinsics
``(3, 3)``; models ``(V, 3)`` vertices with ``(F, 3)`` faces, in metres; images BGR uint8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import torch

from epropnp_lib.geometry.camera import project
from epropnp_lib.geometry.rotations import quat_to_matrix

__all__ = ["AXIS_COLOURS", "DrawnPose", "draw_poses"]

#: BGR colours of the x, y, z axes.
AXIS_COLOURS = ((0, 0, 255), (0, 200, 0), (255, 0, 0))
_ESTIMATE = (0, 255, 255)
_TRUTH = (255, 255, 255)


class DrawnPose(NamedTuple):
    """One object to draw.

    Attributes:
        pose: ``(7,)`` estimated pose.
        covariance: ``(6, 6)`` library covariance (only the translation block is drawn).
        samples: ``(S, 7)`` posterior samples (``S`` may be 0).
        vertices: ``(V, 3)`` model vertices; faces: ``(F, 3)`` their triangles.
        gt_pose: ``(7,)`` ground truth, or ``None``.
        label: text drawn beside the object.
    """

    pose: np.ndarray
    covariance: np.ndarray
    samples: np.ndarray
    vertices: np.ndarray
    faces: np.ndarray
    gt_pose: np.ndarray | None = None
    label: str = ""


def _to_camera(poses: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(P, N, 3)`` camera-frame points of ``points: (N, 3)`` under ``poses: (P, 7)``."""
    p = torch.as_tensor(poses, dtype=torch.float64)
    rot = quat_to_matrix(p[:, 3:])
    x = torch.as_tensor(points, dtype=torch.float64)
    return (x @ rot.transpose(-1, -2) + p[:, None, :3]).numpy()


def _pixels(x_cam: np.ndarray, cam_mat: np.ndarray) -> np.ndarray:
    """``(..., N, 2)`` pixels of camera-frame points ``(..., N, 3)``; NaN behind the camera."""
    x = torch.as_tensor(x_cam, dtype=torch.float64)
    uv = project(x, torch.as_tensor(cam_mat, dtype=torch.float64)).x2d.numpy()
    return np.where((x_cam[..., 2:] > 1e-3), uv, np.nan)


def _pt(uv: np.ndarray) -> tuple[int, int]:
    return int(round(float(uv[0]))), int(round(float(uv[1])))


def _drawable(*uvs: np.ndarray) -> bool:
    return all(np.isfinite(u).all() and np.abs(u).max() < 1e5 for u in uvs)


def _outline(img: np.ndarray, uv: np.ndarray, faces: np.ndarray, colour: tuple[int, int, int],
             thickness: int) -> None:
    """Contour of the filled projected triangles ``uv: (V, 2)``."""
    if not _drawable(uv):
        return
    mask = np.zeros(img.shape[:2], dtype=np.uint8)
    tris = np.round(uv[faces]).astype(np.int32)  # (F, 3, 2)
    cv2.fillPoly(mask, list(tris), (255,))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, colour, thickness, cv2.LINE_AA)


def _ellipse(img: np.ndarray, t: np.ndarray, cov_t: np.ndarray, cam_mat: np.ndarray,
             thickness: int) -> None:
    """2-sigma ellipse of the projected position covariance ``cov_t: (3, 3)`` at ``t: (3,)``."""
    x = torch.as_tensor(t, dtype=torch.float64)[None]
    proj = project(x, torch.as_tensor(cam_mat, dtype=torch.float64), with_jacobian=True)
    if proj.jac_cam is None:
        return
    jac = proj.jac_cam[0].numpy()  # (2, 3)
    cov2 = jac @ cov_t @ jac.T
    if not np.isfinite(cov2).all():
        return
    w, v = np.linalg.eigh(0.5 * (cov2 + cov2.T))
    axes = v * (2.0 * np.sqrt(np.clip(w, 0.0, None)))
    ang = np.linspace(0.0, 2.0 * math.pi, 49)
    ring = proj.x2d[0].numpy()[:, None] + axes @ np.stack((np.cos(ang), np.sin(ang)))
    if _drawable(ring):
        cv2.polylines(img, [np.round(ring.T).astype(np.int32)], True, _ESTIMATE, thickness,
                      cv2.LINE_AA)


def draw_poses(image_bgr: np.ndarray, cam_mat: np.ndarray, objects: Sequence[DrawnPose],
               axis_length: float = 0.05) -> np.ndarray:
    """Draw outlines, axes, 2-sigma position ellipses and sample axis clouds onto a copy of
    ``image_bgr: (H, W, 3)`` with intrinsics ``cam_mat: (3, 3)`` (see the module docstring)."""
    img = image_bgr.copy()
    k = np.asarray(cam_mat, dtype=np.float64)
    thick = max(1, round(img.shape[0] / 480))
    axes = np.vstack((np.zeros(3), axis_length * np.eye(3)))  # origin, x, y, z tips
    tips = []
    for obj in objects:
        if obj.gt_pose is not None:
            uv = _pixels(_to_camera(obj.gt_pose[None], obj.vertices), k)[0]
            _outline(img, uv, obj.faces, _TRUTH, thick)
        uv = _pixels(_to_camera(obj.pose[None], obj.vertices), k)[0]
        _outline(img, uv, obj.faces, _ESTIMATE, thick)
        if len(obj.samples):
            tips.append(_pixels(_to_camera(np.asarray(obj.samples), axes[1:]), k))  # (S, 3, 2)
        frame = _pixels(_to_camera(obj.pose[None], axes), k)[0]
        for a in range(3):
            if _drawable(frame[0], frame[a + 1]):
                cv2.line(img, _pt(frame[0]), _pt(frame[a + 1]), AXIS_COLOURS[a], thick + 1,
                         cv2.LINE_AA)
        _ellipse(img, obj.pose[:3], np.asarray(obj.covariance)[:3, :3], k, thick)
        if obj.label and _drawable(frame[0]):
            x, y = _pt(frame[0])
            cv2.putText(img, obj.label, (x + 4, max(10, y - 6)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.35 * thick, _ESTIMATE, thick, cv2.LINE_AA)
    if not tips:
        return img
    clouds = img.copy()
    for cloud in tips:
        for s in range(cloud.shape[0]):
            for a in range(3):
                if _drawable(cloud[s, a]):
                    cv2.circle(clouds, _pt(cloud[s, a]), thick, AXIS_COLOURS[a], -1, cv2.LINE_AA)
    # Blended: a dense (confident) cloud reads as a solid dot, a spread one as faint speckle.
    return cv2.addWeighted(clouds, 0.6, img, 0.4, 0.0)
