"""Detections of the cameras of a rig fused in one target frame (ROS-free logic).

Each camera's :class:`~epropnp_ros.pipeline.DetectorOutput` (4DoF, camera optical frame) is
moved into the target frame (e.g. ``base_link``) through the camera's
:class:`~epropnp_lib.geometry.rigid.RigidTransform` (target <- camera): poses and posterior
samples become 6DoF ``(t, q_wxyz)``; the 4x4 covariance is lifted to the 6x6 fixed-axis
covariance (:func:`~epropnp_lib.pnp.covariance.to_ros_covariance`: the unobserved rotations get
:data:`~epropnp_lib.conventions.UNOBSERVED_ROTATION_VARIANCE`) and rotated by
``blockdiag(R, R)`` (:func:`~epropnp_lib.geometry.rigid.transform_covariance`), then
conditioned on roll and pitch in the z-up target frame (:func:`_level`: a camera a degree off
level would otherwise leak the placeholder into the heading's ``rot_z``); the velocity
``(vx, vz)`` along the camera axes is rotated into the target frame.

In the target frame the object axes are those of a nuScenes box (x forward along the length, y
left, z up; the 4DoF object frame turned by 90 deg about its x axis, a right factor that leaves
the fixed-axis covariance as it is) and ``size`` is (length, width, height) along them, so that
the fused boxes read as REP 103 boxes (z up) in ``base_link`` or ``map``.

Objects seen by two cameras are detected twice: a class-aware bird's-eye-view NMS across
cameras (:func:`~epropnp_lib.nets.deformable.inference.bev_nms`, the network's own per-image
NMS, with the camera as group: each camera's detections were NMS-ed already and never suppress
each other) on the box footprints in the target frame's x-y plane (z up, REP 103) keeps the
best-scoring one.
Shapes: ``M`` objects, ``S`` samples each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from epropnp_lib.conventions import BOX_AXES_FROM_4DOF, UNOBSERVED_ROTATION_VARIANCE
from epropnp_lib.geometry.boxes import box_corners
from epropnp_lib.geometry.rigid import RigidTransform, transform_covariance, transform_poses
from epropnp_lib.geometry.rotations import matrix_to_quat, quat_to_matrix
from epropnp_lib.nets.deformable.inference import bev_nms
from epropnp_lib.pnp.covariance import to_ros_covariance
from epropnp_ros.detections import ObjectPose3D
from epropnp_ros.pipeline import DetectorOutput

__all__ = ["FusedDetections", "fuse", "fused_objects", "to_target_frame"]


class FusedDetections(NamedTuple):
    """Detections in the target frame (float64 numpy).

    Attributes:
        pose: ``(M, 7)`` (t, q_wxyz), object -> target frame; t is the box centre.
        covariance: ``(M, 6, 6)`` fixed-axis covariance in the target frame (ROS order).
        samples: ``(M, S, 7)`` posterior samples in the target frame.
        scores: ``(M,)``.
        class_ids: ``M`` class names.
        size: ``(M, 3)`` box extents along the object's own x, y, z axes: (length, width,
            height).
        camera: ``(M,)`` int, the index of the camera that saw each object.
        velocity: ``(M, 3)`` m/s in the target frame (NaN rows: unknown).
        attributes: ``M`` attribute names (``""``: none).
    """

    pose: np.ndarray
    covariance: np.ndarray
    samples: np.ndarray
    scores: np.ndarray
    class_ids: tuple[str, ...]
    size: np.ndarray
    camera: np.ndarray
    velocity: np.ndarray
    attributes: tuple[str, ...]

    @staticmethod
    def empty(num_samples: int = 0) -> FusedDetections:
        """No detections."""
        return FusedDetections(np.zeros((0, 7)), np.zeros((0, 6, 6)),
                               np.zeros((0, num_samples, 7)), np.zeros(0), (), np.zeros((0, 3)),
                               np.zeros(0, dtype=np.int64), np.zeros((0, 3)), ())

    def select(self, index: np.ndarray) -> FusedDetections:
        """The detections at ``index`` (``(K,)`` indices, in that order)."""
        return FusedDetections(self.pose[index], self.covariance[index], self.samples[index],
                               self.scores[index], tuple(self.class_ids[i] for i in index),
                               self.size[index], self.camera[index], self.velocity[index],
                               tuple(self.attributes[i] for i in index))


#: The 4DoF object frame (y down, z left) -> a nuScenes box's (y left, z up).
_BOX_AXES = torch.tensor(BOX_AXES_FROM_4DOF, dtype=torch.float64)


def _box_axes(poses: torch.Tensor) -> torch.Tensor:
    """``(..., 7)`` poses with their rotations turned into the box axes (``R @ _BOX_AXES``)."""
    rot = quat_to_matrix(poses[..., 3:]) @ _BOX_AXES
    return torch.cat((poses[..., :3], matrix_to_quat(rot)), dim=-1)


def _level(cov: torch.Tensor) -> torch.Tensor:
    """``(M, 6, 6)`` fixed-axis covariances in a z-up frame, conditioned on the rotations about
    x and y (a 4DoF detection observes no roll or pitch), which then carry the
    :data:`~epropnp_lib.conventions.UNOBSERVED_ROTATION_VARIANCE` placeholder, uncorrelated.

    The camera's placeholder variances, rotated with a camera a degree off level, would put
    some 300 rad^2 into ``rot_z``; conditioned, ``rot_z`` is the heading's own variance."""
    keep, held = [0, 1, 2, 5], [3, 4]
    s_kk = cov[:, keep][:, :, keep]
    s_kh = cov[:, keep][:, :, held]
    s_hh = cov[:, held][:, :, held]
    cond = s_kk - s_kh @ torch.linalg.solve(s_hh, s_kh.transpose(-1, -2))
    out = torch.zeros_like(cov)
    idx = torch.tensor(keep)
    out[:, idx[:, None], idx[None, :]] = 0.5 * (cond + cond.transpose(-1, -2))
    out[:, 3, 3] = out[:, 4, 4] = UNOBSERVED_ROTATION_VARIANCE
    return out


def to_target_frame(output: DetectorOutput, tf: RigidTransform, camera: int,
                    attribute_names: Sequence[str] = ()) -> FusedDetections:
    """One camera's detections in the target frame; ``tf``: target <- camera optical frame;
    ``attribute_names``: the name of each attribute index of the boxes."""
    tf = RigidTransform(tf.rotation.double(), tf.translation.double())
    pose = torch.from_numpy(np.asarray(output.pose, dtype=np.float64)).reshape(-1, 4)
    m = pose.shape[0]
    cov4 = torch.from_numpy(np.asarray(output.covariance, dtype=np.float64)).reshape(m, 4, 4)
    samples = torch.from_numpy(np.asarray(output.samples, dtype=np.float64))
    if samples.dim() != 3:
        samples = samples.reshape(m, 0, 4)
    cov6 = to_ros_covariance(cov4).unflatten(-1, (6, 6))
    wlh = torch.as_tensor(output.boxes.size, dtype=torch.float64).reshape(m, 3)
    vel = torch.as_tensor(output.boxes.velocity, dtype=torch.float64).reshape(m, 2)
    vel3 = torch.stack((vel[:, 0], torch.zeros_like(vel[:, 0]), vel[:, 1]), dim=-1)
    attrs = torch.as_tensor(output.boxes.attributes).reshape(m).tolist()
    return FusedDetections(
        pose=_box_axes(transform_poses(tf, pose)).numpy(),
        covariance=_level(transform_covariance(tf, cov6)).numpy(),
        samples=_box_axes(transform_poses(tf, samples.reshape(m, samples.shape[-2], 4))).numpy(),
        scores=np.asarray(output.scores, dtype=np.float64).reshape(m),
        class_ids=tuple(output.class_ids),
        size=wlh[:, [1, 0, 2]].numpy(),
        camera=np.full(m, camera, dtype=np.int64),
        velocity=(vel3 @ tf.matrix().T).numpy(),
        attributes=tuple(attribute_names[a] if 0 <= a < len(attribute_names) else ""
                         for a in attrs),
    )


def fuse(parts: Sequence[FusedDetections], nms_iou: float, max_detections: int
         ) -> FusedDetections:
    """All cameras' detections (already in the target frame) with cross-camera duplicates
    removed: class-aware BEV NMS at ``nms_iou`` between the detections of different cameras, on
    the footprints in the target x-y plane, best score first, at most ``max_detections``."""
    parts = [p for p in parts if len(p.scores)]
    if not parts:
        return FusedDetections.empty()
    num_samples = min(p.samples.shape[1] for p in parts)
    every = FusedDetections(
        np.concatenate([p.pose for p in parts]), np.concatenate([p.covariance for p in parts]),
        np.concatenate([p.samples[:, :num_samples] for p in parts]),
        np.concatenate([p.scores for p in parts]),
        tuple(c for p in parts for c in p.class_ids), np.concatenate([p.size for p in parts]),
        np.concatenate([p.camera for p in parts]), np.concatenate([p.velocity for p in parts]),
        tuple(a for p in parts for a in p.attributes),
    )
    pose = torch.from_numpy(every.pose)
    corners = box_corners(pose[:, :3], quat_to_matrix(pose[:, 3:]), torch.from_numpy(every.size))
    names = {c: i for i, c in enumerate(dict.fromkeys(every.class_ids))}
    labels = torch.tensor([names[c] for c in every.class_ids], dtype=torch.long)
    keep = bev_nms(corners[..., :2], torch.from_numpy(every.scores), labels, nms_iou,
                   groups=torch.from_numpy(every.camera))
    return every.select(keep[:max_detections].numpy())


def fused_objects(fused: FusedDetections) -> list[ObjectPose3D]:
    """The :class:`~epropnp_ros.detections.ObjectPose3D` of each fused detection (6DoF)."""
    return [
        ObjectPose3D(pose=fused.pose[i], size=fused.size[i], class_id=fused.class_ids[i],
                     score=float(fused.scores[i]), covariance=fused.covariance[i],
                     object_id=str(i),
                     velocity=(fused.velocity[i] if np.all(np.isfinite(fused.velocity[i]))
                               else None),
                     attribute=fused.attributes[i])
        for i in range(len(fused.scores))
    ]
