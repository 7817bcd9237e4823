"""Pose covariance in the ROS ``PoseWithCovariance`` layout.

The library's Laplace covariance (:func:`epropnp_lib.pnp.solver.solve_pnp`) lives in the tangent
space of :mod:`epropnp_lib.geometry.pose`: ``(dtx, dty, dtz, phi_x, phi_y, phi_z)`` for 6DoF with
the rotation increment about the camera's fixed axes, ``(dtx, dty, dtz, dyaw)`` for 4DoF with
yaw about the camera y axis.  ROS wants a 6x6 row-major matrix over
``(x, y, z, rot_x, rot_y, rot_z)``, fixed axes, in the header (camera) frame.  This module is the
one place that maps between the two.
"""

from __future__ import annotations

import torch

from epropnp_lib.checks import check_shape
from epropnp_lib.conventions import UNOBSERVED_ROTATION_VARIANCE
from epropnp_lib.errors import ShapeError

#: ROS index of each 4DoF tangent coordinate (tx, ty, tz, yaw = rotation about camera y).
_ROS_INDEX_4DOF = (0, 1, 2, 4)


def to_ros_covariance(cov: torch.Tensor) -> torch.Tensor:
    """Map library covariances to ROS 6x6 layout.

    Args:
        cov: ``(..., 6, 6)`` (6DoF) or ``(..., 4, 4)`` (4DoF) tangent covariance.

    Returns:
        ``(..., 36)`` row-major ROS covariance.  For 4DoF, rotations about the camera x and z
        axes are unobserved: their variance is
        :data:`~epropnp_lib.conventions.UNOBSERVED_ROTATION_VARIANCE` and their correlations 0.
    """
    d = cov.shape[-1]
    if cov.dim() < 2 or cov.shape[-2] != d or d not in (4, 6):
        raise ShapeError(f"cov: expected (..., 6, 6) or (..., 4, 4), got {tuple(cov.shape)}")
    if d == 6:
        return cov.flatten(-2, -1).clone()
    out = cov.new_zeros(cov.shape[:-2] + (6, 6))
    idx = torch.tensor(_ROS_INDEX_4DOF, device=cov.device)
    out[..., idx[:, None], idx[None, :]] = cov
    out[..., 3, 3] = UNOBSERVED_ROTATION_VARIANCE
    out[..., 5, 5] = UNOBSERVED_ROTATION_VARIANCE
    return out.flatten(-2, -1)


def from_ros_covariance(ros_cov: torch.Tensor, dof: int) -> torch.Tensor:
    """Inverse of :func:`to_ros_covariance`: ``(..., 36)`` to ``(..., dof, dof)``."""
    check_shape(ros_cov, ["*", 36], "ros_cov")
    full = ros_cov.unflatten(-1, (6, 6))
    if dof == 6:
        return full.clone()
    if dof == 4:
        idx = torch.tensor(_ROS_INDEX_4DOF, device=ros_cov.device)
        return full[..., idx[:, None], idx[None, :]]
    raise ShapeError(f"dof must be 4 or 6, got {dof}")
