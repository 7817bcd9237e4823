"""6DoF and 4DoF pose spaces: parameterisation, retraction and point Jacobians.

A pose space bundles everything the solver, the covariance and the Monte Carlo layer need to
know about a pose parameterisation, so each piece of math exists once for both kinds of pose:

========  ===========================  ============================  ==========================
space     pose vector                   tangent increment ``delta``   retraction
========  ===========================  ============================  ==========================
6DoF      ``(tx, ty, tz, qw, qx, qy,    ``(dtx, dty, dtz, phi_x,      ``t + dt``,
          qz)``  ``(..., 7)``           phi_y, phi_z)``  ``(..., 6)`` ``q <- Exp(phi) * q``
4DoF      ``(tx, ty, tz, yaw)``         ``(dtx, dty, dtz, dyaw)``     ``t + dt``,
          ``(..., 4)``                  ``(..., 4)``                  ``yaw + dyaw`` (wrapped)
========  ===========================  ============================  ==========================

The rotation increment multiplies on the left: it rotates about the camera's fixed axes, which
is the ROS covariance convention (see :mod:`epropnp_lib.conventions`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from epropnp_lib.geometry.rotations import (
    quat_angle_between,
    quat_normalize,
    quat_retract,
    quat_to_matrix,
    wrap_angle,
    yaw_to_matrix,
)


class PoseSpace(ABC):
    """Interface of a pose parameterisation (see the module docstring)."""

    #: Length of the pose vector.
    dim: ClassVar[int]
    #: Dimension of the tangent space (degrees of freedom).
    tangent_dim: ClassVar[int]
    #: Smallest number of 2D-3D correspondences the solver accepts.
    min_points: ClassVar[int]

    @staticmethod
    @abstractmethod
    def rotation(pose: torch.Tensor) -> torch.Tensor:
        """Rotation matrices ``(..., 3, 3)`` of poses ``(..., dim)``."""

    @staticmethod
    @abstractmethod
    def rotate(
        pose: torch.Tensor, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Components of the rotated points ``R x`` (structure of arrays).

        Args:
            pose: ``S + (dim,)`` poses.
            points: ``(3, B, N)`` point coordinates, component-major (``S`` broadcasts
                against ``(B,)``).

        Returns:
            the x, y, z components ``S + (N,)`` of ``R(pose) x`` (possibly strided views).
        """

    @staticmethod
    @abstractmethod
    def retract(pose: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Pose ``(..., dim)`` moved by the tangent increment ``delta: (..., tangent_dim)``."""

    @staticmethod
    @abstractmethod
    def rotation_columns(
        p: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        """Derivative of Jacobian rows w.r.t. the rotation increment, one tensor per axis.

        Args:
            p: the x, y, z components of the rotated object points ``R x`` (camera frame minus
                ``t``).
            a: the x, y, z components of the rows' derivatives w.r.t. the camera-frame point
                (any number of rows folded into a leading dim; broadcasts against ``p``).

        Returns:
            ``tangent_dim - 3`` tensors: the rows' derivatives w.r.t. the rotation increment.
        """

    @staticmethod
    @abstractmethod
    def rotation_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Rotation angle (rad) between the orientations of poses ``a, b: (..., dim)``."""

    @staticmethod
    @abstractmethod
    def canonical(pose: torch.Tensor) -> torch.Tensor:
        """A canonical representative (unit quaternion with w >= 0; wrapped yaw)."""


class Pose6DoF(PoseSpace):
    """Full 6DoF pose ``(t, q_wxyz)``; see the module docstring."""

    dim = 7
    tangent_dim = 6
    min_points = 4

    @staticmethod
    def rotation(pose: torch.Tensor) -> torch.Tensor:
        return quat_to_matrix(pose[..., 3:])

    @staticmethod
    def rotate(
        pose: torch.Tensor, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # One (batched) product with the (B, 3, N) view of the points: fewer ops than nine
        # elementwise multiply-adds, which matters for small batches.
        rot = quat_to_matrix(pose[..., 3:])  # S + (3, 3)
        pts = points.transpose(0, 1)  # (B, 3, N)
        same = rot.dim() == 3 and rot.shape[0] == pts.shape[0]
        out = torch.bmm(rot, pts) if same else torch.matmul(rot, pts)  # matmul broadcasts S
        p0, p1, p2 = out.unbind(-2)
        return p0, p1, p2

    @staticmethod
    def retract(pose: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        q = quat_retract(pose[..., 3:], delta[..., 3:])
        return torch.cat((pose[..., :3] + delta[..., :3], q), dim=-1)

    @staticmethod
    def rotation_columns(
        p: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        # d(Exp(phi) p)/dphi = -[p]x, and a^T (-[p]x) = (p x a)^T for each Jacobian row a.
        p0, p1, p2 = p
        a0, a1, a2 = a
        return (torch.addcmul(p1 * a2, p2, a1, value=-1.0),
                torch.addcmul(p2 * a0, p0, a2, value=-1.0),
                torch.addcmul(p0 * a1, p1, a0, value=-1.0))

    @staticmethod
    def rotation_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return quat_angle_between(a[..., 3:], b[..., 3:])

    @staticmethod
    def canonical(pose: torch.Tensor) -> torch.Tensor:
        q = quat_normalize(pose[..., 3:])
        q = torch.where(q[..., :1] < 0, -q, q)
        return torch.cat((pose[..., :3], q), dim=-1)


class Pose4DoF(PoseSpace):
    """Translation + yaw about the camera y axis ``(t, yaw)``; see the module docstring."""

    dim = 4
    tangent_dim = 4
    min_points = 3

    @staticmethod
    def rotation(pose: torch.Tensor) -> torch.Tensor:
        return yaw_to_matrix(pose[..., 3])

    @staticmethod
    def rotate(
        pose: torch.Tensor, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, z = points.unbind(0)
        yaw = pose[..., 3:]  # S + (1,)
        c, s = torch.cos(yaw), torch.sin(yaw)
        return torch.addcmul(x * c, z, s), y.expand(torch.broadcast_shapes(yaw.shape, y.shape)), (
            torch.addcmul(z * c, x, s, value=-1.0)
        )

    @staticmethod
    def retract(pose: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            (pose[..., :3] + delta[..., :3], wrap_angle(pose[..., 3:] + delta[..., 3:])), dim=-1
        )

    @staticmethod
    def rotation_columns(
        p: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        # d(R_y(dyaw) p)/dyaw = e_y x p = (p_z, 0, -p_x).
        return (a[0] * p[2] - a[2] * p[0],)

    @staticmethod
    def rotation_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return wrap_angle(a[..., 3] - b[..., 3]).abs()

    @staticmethod
    def canonical(pose: torch.Tensor) -> torch.Tensor:
        return torch.cat((pose[..., :3], wrap_angle(pose[..., 3:])), dim=-1)


def pose_space(dof: int) -> type[PoseSpace]:
    """The pose space class for ``dof`` in {4, 6}."""
    if dof == 6:
        return Pose6DoF
    if dof == 4:
        return Pose4DoF
    raise ValueError(f"dof must be 4 or 6, got {dof}")
