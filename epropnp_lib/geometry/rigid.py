"""Rigid transforms between frames, and poses, covariances and samples moved by them.

A :class:`RigidTransform` ``T = (q, p)`` (``q: (..., 4)`` unit quaternion ``(w, x, y, z)``,
``p: (..., 3)``) maps points of a *source* frame into a *target* frame: ``x_t = R(q) x_s + p``
(the ROS ``TransformStamped`` from ``header.frame_id`` = target to ``child_frame_id`` = source).

Poses follow :mod:`epropnp_lib.conventions` (object -> frame, ``(..., 7)`` = ``(t, q_wxyz)`` or
``(..., 4)`` = ``(t, yaw about the frame's y axis)``); a pose moved into the target frame is
always 6DoF. Covariances are over the fixed-axis tangent ``(dt (3), dphi (3))`` in the frame of
the pose: a change of frame by rotation ``R`` maps them by ``J = blockdiag(R, R)``
(``cov' = J cov J^T``): ``t' = R t + p`` and ``Exp(R phi) = R Exp(phi) R^T``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from epropnp_lib.checks import check_shape
from epropnp_lib.errors import ShapeError
from epropnp_lib.geometry.rotations import (
    quat_exp,
    quat_log,
    quat_multiply,
    quat_normalize,
    quat_to_matrix,
    yaw_to_quat,
)

__all__ = [
    "RigidTransform",
    "interpolate_transforms",
    "transform_covariance",
    "transform_poses",
]

_CONJ = (1.0, -1.0, -1.0, -1.0)


class RigidTransform(NamedTuple):
    """``x_target = R(rotation) x_source + translation`` (see the module docstring).

    Attributes:
        rotation: ``(..., 4)`` unit quaternion ``(w, x, y, z)``.
        translation: ``(..., 3)``.
    """

    rotation: torch.Tensor
    translation: torch.Tensor

    @staticmethod
    def identity(dtype: torch.dtype = torch.float64) -> RigidTransform:
        """The identity transform (no batch dimensions)."""
        return RigidTransform(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype),
                              torch.zeros(3, dtype=dtype))

    def matrix(self) -> torch.Tensor:
        """``(..., 3, 3)`` rotation matrix."""
        return quat_to_matrix(self.rotation)

    def compose(self, other: RigidTransform) -> RigidTransform:
        """``self ∘ other``: first ``other`` (source -> middle), then ``self`` (middle ->
        target)."""
        t = (self.matrix() @ other.translation.unsqueeze(-1)).squeeze(-1) + self.translation
        return RigidTransform(quat_normalize(quat_multiply(self.rotation, other.rotation)), t)

    def inverse(self) -> RigidTransform:
        """The transform from target back to source."""
        q = self.rotation * self.rotation.new_tensor(_CONJ)
        t = -(quat_to_matrix(q) @ self.translation.unsqueeze(-1)).squeeze(-1)
        return RigidTransform(q, t)

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """Points ``(..., N, 3)`` of the source frame in the target frame."""
        return points @ self.matrix().transpose(-1, -2) + self.translation.unsqueeze(-2)


def interpolate_transforms(a: RigidTransform, b: RigidTransform, s: float) -> RigidTransform:
    """The transform a fraction ``s`` of the way from ``a`` (``s = 0``) to ``b`` (``s = 1``):
    linear in the translation, spherical-linear (constant angular rate, shortest arc) in the
    rotation."""
    rel = quat_multiply(b.rotation, a.rotation * a.rotation.new_tensor(_CONJ))
    q = quat_normalize(quat_multiply(quat_exp(s * quat_log(rel)), a.rotation))
    return RigidTransform(q, a.translation + s * (b.translation - a.translation))


def _as_6dof(poses: torch.Tensor) -> torch.Tensor:
    if poses.shape[-1] == 7:
        return poses
    if poses.shape[-1] == 4:
        return torch.cat((poses[..., :3], yaw_to_quat(poses[..., 3])), dim=-1)
    raise ShapeError(f"poses: expected (..., 7) or (..., 4), got {tuple(poses.shape)}")


def transform_poses(tf: RigidTransform, poses: torch.Tensor) -> torch.Tensor:
    """Poses ``(..., 7)`` or ``(..., 4)`` (object -> source frame) as ``(..., 7)`` poses
    object -> target frame (``tf`` broadcasts against the batch dims of ``poses``)."""
    p = _as_6dof(poses)
    rot = tf.matrix()
    t = (rot @ p[..., :3].unsqueeze(-1)).squeeze(-1) + tf.translation
    q = quat_normalize(quat_multiply(tf.rotation.expand(p[..., 3:].shape), p[..., 3:]))
    return torch.cat((t, q), dim=-1)


def transform_covariance(tf: RigidTransform, cov: torch.Tensor) -> torch.Tensor:
    """Fixed-axis 6DoF covariances ``(..., 6, 6)`` of poses in the source frame as those of the
    same poses in the target frame: ``J cov J^T`` with ``J = blockdiag(R, R)``."""
    check_shape(cov, ["*", 6, 6], "cov")
    rot = tf.matrix().to(cov.dtype)
    j = cov.new_zeros(rot.shape[:-2] + (6, 6))
    j[..., :3, :3] = rot
    j[..., 3:, 3:] = rot
    return j @ cov @ j.transpose(-1, -2)
