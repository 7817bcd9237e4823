"""Library poses and covariances <-> ``geometry_msgs``: Pose, Quaternion, PoseWithCovariance
(Stamped) and PoseArray.

Poses map object to camera, in the header's optical frame (x right, y down, z forward):
``(7,)`` = ``(tx, ty, tz, qw, qx, qy, qz)`` (6DoF) or ``(4,)`` = ``(tx, ty, tz, yaw)`` (4DoF,
yaw about the camera **y** axis, ``q = (cos(yaw/2), 0, sin(yaw/2), 0)``). Library quaternions
are ``(w, x, y, z)``, ``geometry_msgs/Quaternion`` is ``(x, y, z, w)``: this module is the only
place the order is swapped (:func:`poses_to_msgs`, :func:`rotations_to_quat_msgs`,
:func:`msg_to_pose`).

Covariance: ROS 6x6 row-major over ``(x, y, z, rot_x, rot_y, rot_z)``, fixed axes, header
frame, made only by :func:`epropnp_lib.pnp.covariance.to_ros_covariance`; for 4DoF the
unobserved ``rot_x`` / ``rot_z`` variances are
:data:`epropnp_lib.conventions.UNOBSERVED_ROTATION_VARIANCE` (1e6 rad^2), never zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from geometry_msgs.msg import (
    Pose,
    PoseArray,
    PoseWithCovariance,
    PoseWithCovarianceStamped,
    Quaternion,
)

from epropnp_lib.geometry.pose import pose_space
from epropnp_lib.geometry.rotations import matrix_to_quat, yaw_to_quat
from epropnp_lib.pnp.covariance import from_ros_covariance, to_ros_covariance
from epropnp_ros.checks import ArrayLike, as_float64, check_finite, check_shape
from epropnp_ros.errors import ArrayShapeError, ConversionError
from epropnp_ros.messages import copy_header, poses_from_arrays

__all__ = [
    "checked_covariance",
    "checked_pose",
    "covariance_to_msg",
    "covariances_of",
    "msg_to_covariance",
    "msg_to_pose",
    "pose_array",
    "pose_msgs_of",
    "pose_rotation",
    "pose_to_msg",
    "pose_with_covariance",
    "pose_with_covariance_stamped",
    "poses_to_msgs",
    "rotations_of",
    "rotations_to_quat_msgs",
]


def checked_pose(pose: ArrayLike, name: str = "pose") -> np.ndarray:
    """``pose`` as a finite float64 ``(7,)`` or ``(4,)`` vector (:class:`ArrayShapeError`,
    :class:`~epropnp_ros.errors.NonFiniteValueError` otherwise)."""
    p = as_float64(pose, name)
    if p.shape not in ((7,), (4,)):
        raise ArrayShapeError(
            f"{name}: expected (7,) (t, q_wxyz) or (4,) (t, yaw), got {p.shape}"
        )
    check_finite(p, name)
    return p


def checked_covariance(pose: np.ndarray, cov: ArrayLike, name: str = "cov") -> np.ndarray:
    """``cov`` checked to be the ``(6, 6)`` / ``(4, 4)`` covariance of ``pose: (7,) / (4,)``."""
    c = as_float64(cov, name)
    want = (6, 6) if pose.shape[0] == 7 else (4, 4)
    if c.shape != want:
        raise ArrayShapeError(f"{name}: a {pose.shape} pose needs a {want} covariance, "
                              f"got {c.shape}")
    return c


def _pose_batch(poses: ArrayLike, name: str) -> np.ndarray:
    """Finite ``(S, 7)`` / ``(S, 4)`` float64 poses."""
    p = as_float64(poses, name)
    if p.ndim != 2 or p.shape[1] not in (7, 4):
        raise ArrayShapeError(f"{name}: expected (S, 7) or (S, 4), got {p.shape}")
    check_finite(p, name)
    return p


def _unit_quats(poses: np.ndarray, name: str) -> np.ndarray:
    """``(S, 4)`` unit quaternions (w, x, y, z) of ``(S, 7)`` or ``(S, 4)`` poses."""
    if poses.shape[1] == 4:
        return yaw_to_quat(torch.from_numpy(poses[:, 3])).numpy()
    q = poses[:, 3:]
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ArrayShapeError(f"{name}: zero quaternion")
    return q / norm


def poses_to_msgs(poses: ArrayLike) -> list[Pose]:
    """``geometry_msgs/Pose`` list of library poses (quaternion order swapped here).

    Args:
        poses: ``(S, 7)`` (quaternions normalised here) or ``(S, 4)`` poses.

    Returns:
        ``S`` poses with ``orientation = (x, y, z, w)``.

    Raises:
        ArrayShapeError, NonFiniteValueError: wrong shape, zero quaternion, NaN/inf.
    """
    p = _pose_batch(poses, "poses")
    return poses_from_arrays(p[:, :3], _unit_quats(p, "poses")[:, [1, 2, 3, 0]])


def pose_to_msg(pose: ArrayLike) -> Pose:
    """``geometry_msgs/Pose`` of one library pose ``(7,)`` or ``(4,)`` (see
    :func:`poses_to_msgs`)."""
    return poses_to_msgs(checked_pose(pose)[None])[0]


def msg_to_pose(msg: Any, dof: int = 6, *, yaw_tolerance: float = 1e-3) -> np.ndarray:
    """Library pose of a ``geometry_msgs/Pose`` (inverse of :func:`pose_to_msg`).

    Args:
        msg: the pose message (orientation ``x, y, z, w``).
        dof: 6 -> ``(7,)`` ``(t, q_wxyz)`` (unit, ``w >= 0``); 4 -> ``(4,)`` ``(t, yaw)``.
        yaw_tolerance: for ``dof=4``, the largest tilt (rad) of the object y axis away from
            the camera y axis that is still accepted as a pure yaw rotation.

    Raises:
        ConversionError: zero/non-finite quaternion, or (4DoF) a rotation that is not about y.
    """
    o, t = msg.orientation, msg.position
    q = np.array([o.w, o.x, o.y, o.z], dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not math.isfinite(norm) or norm < 1e-12:
        raise ConversionError(f"invalid orientation quaternion {q.tolist()} (w, x, y, z)")
    q = q / norm
    q = -q if q[0] < 0 else q
    xyz = np.array([t.x, t.y, t.z], dtype=np.float64)
    if dof == 6:
        return np.concatenate((xyz, q))
    if dof != 4:
        raise ArrayShapeError(f"dof must be 4 or 6, got {dof}")
    rot = pose_rotation(np.concatenate((xyz, q)))
    tilt = math.acos(min(1.0, max(-1.0, float(rot[1, 1]))))
    if tilt > yaw_tolerance:
        raise ConversionError(
            f"orientation is not a rotation about the camera y axis (tilt {tilt:.3g} rad)"
        )
    return np.concatenate((xyz, [math.atan2(rot[0, 2], rot[2, 2])]))


def pose_rotation(pose: ArrayLike) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of poses ``(..., 7)`` or ``(..., 4)`` (float64)."""
    p = as_float64(pose, "pose")
    if p.ndim == 0 or p.shape[-1] not in (7, 4):
        raise ArrayShapeError(f"pose: expected (..., 7) or (..., 4), got {p.shape}")
    t = torch.from_numpy(p)
    if p.shape[-1] == 7:
        t = torch.cat((t[..., :3], t[..., 3:] / t[..., 3:].norm(dim=-1, keepdim=True)), dim=-1)
    return pose_space(6 if p.shape[-1] == 7 else 4).rotation(t).numpy()


def _kinds(poses: Sequence[np.ndarray]) -> list[tuple[int, list[int]]]:
    """``(dim, indices)`` of each pose kind (7 or 4, the last axis) present in ``poses``."""
    groups = []
    for dim in (7, 4):
        idx = [i for i, p in enumerate(poses) if p.shape[-1] == dim]
        if idx:
            groups.append((dim, idx))
    return groups


def rotations_of(poses: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Rotation matrices ``(..., 3, 3)`` of each checked pose array ``(..., 7)`` or
    ``(..., 4)`` in ``poses`` (kinds may be mixed): one :func:`pose_rotation` call per kind."""
    out: list[np.ndarray] = [np.empty(0)] * len(poses)
    for dim, idx in _kinds(poses):
        flat = [poses[i].reshape(-1, dim) for i in idx]
        rots = pose_rotation(np.concatenate(flat))
        offsets = np.cumsum([0] + [len(f) for f in flat])
        for k, i in enumerate(idx):
            out[i] = rots[offsets[k]:offsets[k + 1]].reshape(poses[i].shape[:-1] + (3, 3))
    return out


def pose_msgs_of(poses: Sequence[np.ndarray]) -> list[Pose]:
    """One ``Pose`` per checked pose vector ``(7,)`` / ``(4,)`` (kinds may be mixed): one
    :func:`poses_to_msgs` call per kind."""
    out: list[Pose] = [Pose()] * len(poses)
    for _, idx in _kinds(poses):
        for i, msg in zip(idx, poses_to_msgs(np.stack([poses[i] for i in idx])), strict=True):
            out[i] = msg
    return out


def covariance_to_msg(cov: ArrayLike) -> np.ndarray:
    """ROS row-major covariance(s) of library covariances (the ``covariance`` field).

    Args:
        cov: ``(..., 6, 6)`` 6DoF tangent covariance(s) or ``(..., 4, 4)`` 4DoF ones (see
            :mod:`epropnp_lib.pnp.covariance`); symmetrised here.

    Returns:
        ``(..., 36)`` float64 over ``(x, y, z, rot_x, rot_y, rot_z)``; for 4DoF the ``rot_x``
        and ``rot_z`` variances are ``UNOBSERVED_ROTATION_VARIANCE`` with zero correlations.

    Raises:
        ArrayShapeError, NonFiniteValueError: wrong shape or NaN/infinite entries.
    """
    c = as_float64(cov, "cov")
    if c.ndim < 2 or c.shape[-2:] not in ((6, 6), (4, 4)):
        raise ArrayShapeError(f"cov: expected (..., 6, 6) or (..., 4, 4), got {c.shape}")
    check_finite(c, "cov")
    c = 0.5 * (c + np.swapaxes(c, -1, -2))
    return to_ros_covariance(torch.from_numpy(c)).numpy().copy()


def covariances_of(poses: Sequence[np.ndarray], covs: Sequence[np.ndarray]
                   ) -> list[np.ndarray]:
    """ROS ``(36,)`` rows of checked covariances ``(6, 6)`` / ``(4, 4)`` matching ``poses``
    (kinds may be mixed): one :func:`covariance_to_msg` call per kind."""
    out: list[np.ndarray] = [np.empty(0)] * len(poses)
    for _, idx in _kinds(poses):
        for i, row in zip(idx, covariance_to_msg(np.stack([covs[j] for j in idx])), strict=True):
            out[i] = row
    return out


def msg_to_covariance(ros_cov: ArrayLike, dof: int) -> np.ndarray:
    """Library ``(dof, dof)`` covariance of a ROS ``(36,)`` covariance (inverse of
    :func:`covariance_to_msg`)."""
    c = as_float64(ros_cov, "ros_cov")
    check_shape(c, (36,), "ros_cov")
    return from_ros_covariance(torch.from_numpy(c), dof).numpy().copy()


def pose_with_covariance(pose: ArrayLike, cov: ArrayLike) -> PoseWithCovariance:
    """``geometry_msgs/PoseWithCovariance`` of a ``(7,)``/``(4,)`` pose and its covariance."""
    p = checked_pose(pose)
    c = checked_covariance(p, cov)
    return PoseWithCovariance(pose=pose_to_msg(p), covariance=covariance_to_msg(c))


def pose_with_covariance_stamped(header: Any, pose: ArrayLike, cov: ArrayLike
                                 ) -> PoseWithCovarianceStamped:
    """``geometry_msgs/PoseWithCovarianceStamped`` (header copied; see
    :func:`pose_with_covariance`)."""
    return PoseWithCovarianceStamped(header=copy_header(header),
                                     pose=pose_with_covariance(pose, cov))


def pose_array(header: Any, samples: ArrayLike) -> PoseArray:
    """``geometry_msgs/PoseArray`` (header copied) of equally weighted pose samples
    ``(S, 7)`` or ``(S, 4)`` (e.g. resampled posterior samples)."""
    return PoseArray(header=copy_header(header), poses=poses_to_msgs(samples))


def rotations_to_quat_msgs(rots: ArrayLike) -> list[Quaternion]:
    """``geometry_msgs/Quaternion`` (x, y, z, w) list of rotation matrices ``rots: (M, 3, 3)``
    (one batched :func:`~epropnp_lib.geometry.rotations.matrix_to_quat` call)."""
    r = as_float64(rots, "rots")
    check_shape(r, (None, 3, 3), "rots")
    quats = matrix_to_quat(torch.from_numpy(r)).tolist() if len(r) else []
    return [Quaternion(x=x, y=y, z=z, w=w) for w, x, y, z in quats]
