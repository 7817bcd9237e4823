"""Pinhole projection and its analytic Jacobian w.r.t. a local pose increment.

The camera is the OpenCV optical frame (x right, y down, z forward) with intrinsics
``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` (skew allowed).  Points at or behind the camera are
clamped to :data:`epropnp_lib.conventions.MIN_DEPTH`, where the Jacobian w.r.t. depth is zero.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from epropnp_lib.conventions import MIN_DEPTH


class Projection(NamedTuple):
    """Result of :func:`project`.

    Attributes:
        x2d: ``(..., N, 2)`` projected pixel coordinates.
        depth: ``(..., N)`` camera-frame depth before clamping.
        jac_cam: ``(..., N, 2, 3)`` derivative of ``x2d`` w.r.t. the camera-frame point, or
            ``None`` when not requested.
    """

    x2d: torch.Tensor
    depth: torch.Tensor
    jac_cam: torch.Tensor | None


def transform_points(x3d: torch.Tensor, rot: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``R x + t``.

    Args:
        x3d: ``(..., N, 3)`` object points.
        rot: ``(..., 3, 3)`` rotations (broadcast against ``x3d``'s batch dims).
        t: ``(..., 3)`` translations.

    Returns:
        ``(..., N, 3)`` points in the camera frame.
    """
    return x3d @ rot.transpose(-1, -2) + t.unsqueeze(-2)


def project(
    x_cam: torch.Tensor, cam_mats: torch.Tensor, with_jacobian: bool = False
) -> Projection:
    """Project camera-frame points with intrinsics ``cam_mats``.

    Args:
        x_cam: ``(..., N, 3)`` camera-frame points.
        cam_mats: ``(..., 3, 3)`` intrinsics (batch dims broadcast against ``x_cam``'s).
        with_jacobian: also return d x2d / d x_cam.

    Returns:
        :class:`Projection`.
    """
    depth = x_cam[..., 2]
    z = depth.clamp_min(MIN_DEPTH)
    kx = x_cam @ cam_mats[..., :2, :].transpose(-1, -2)  # (..., N, 2), rows of K times x
    # For a K whose last row is (0, 0, 1) the homogeneous depth is z itself.
    x2d = kx / z.unsqueeze(-1)
    jac = None
    if with_jacobian:
        inv_z = (1.0 / z)[..., None, None]
        k2 = cam_mats[..., :2, :].unsqueeze(-3)  # (..., 1, 2, 3)
        in_front = (depth > MIN_DEPTH).to(x_cam.dtype)[..., None]
        # d(kx / z) / dx = K[:2] / z - (kx / z^2) e3^T   (e3 term vanishes where z is clamped)
        jac = k2 * inv_z
        jac = torch.cat(
            (jac[..., :2], jac[..., 2:] - (x2d * in_front)[..., None] * inv_z), dim=-1
        )
    return Projection(x2d, depth, jac)
