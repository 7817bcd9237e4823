"""Pinhole projection with its analytic Jacobian, pixel grids and the intrinsics of resampled
images.

The camera is the OpenCV optical frame (x right, y down, z forward) with intrinsics
``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` (skew allowed).  Points at or behind the camera are
clamped to :data:`epropnp_lib.conventions.MIN_DEPTH`, where the Jacobian w.r.t. depth is zero.
Pixel centres are at integer coordinates: pixel ``k`` spans ``[k - 0.5, k + 0.5)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from epropnp_lib.checks import check_shape
from epropnp_lib.conventions import MIN_DEPTH
from epropnp_lib.errors import ShapeError


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


def rotate_points(x3d: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotated points ``R x``: ``x3d: (..., N, 3)``, ``rot: (..., 3, 3)`` -> ``(..., N, 3)``
    (batch dims broadcast)."""
    return x3d @ rot.transpose(-1, -2)


def transform_points(x3d: torch.Tensor, rot: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``R x + t``.

    Args:
        x3d: ``(..., N, 3)`` object points.
        rot: ``(..., 3, 3)`` rotations (broadcast against ``x3d``'s batch dims).
        t: ``(..., 3)`` translations.

    Returns:
        ``(..., N, 3)`` points in the camera frame.
    """
    return rotate_points(x3d, rot) + t.unsqueeze(-2)


def project(
    x_cam: torch.Tensor, cam_mats: torch.Tensor, with_jacobian: bool = False
) -> Projection:
    """Project camera-frame points with intrinsics ``cam_mats`` (last row ``(0, 0, 1)``).

    Args:
        x_cam: ``(..., N, 3)`` camera-frame points.
        cam_mats: ``(..., 3, 3)`` intrinsics (batch dims broadcast against ``x_cam``'s).
        with_jacobian: also return d x2d / d x_cam.

    Returns:
        :class:`Projection`.
    """
    x, y, depth = x_cam.unbind(-1)
    inv_z = 1.0 / depth.clamp_min(MIN_DEPTH)
    xn, yn = x * inv_z, y * inv_z
    k = cam_mats.unsqueeze(-3)  # (..., 1, 3, 3)
    k00, k01, k02 = k[..., 0, 0], k[..., 0, 1], k[..., 0, 2]
    k10, k11, k12 = k[..., 1, 0], k[..., 1, 1], k[..., 1, 2]
    u_rel = k00 * xn + k01 * yn  # u - cx
    v_rel = k10 * xn + k11 * yn
    x2d = torch.stack((u_rel + k02, v_rel + k12), dim=-1)
    jac = None
    if with_jacobian:
        # d(K[:2] x / z) / dx = K[:2, :2] / z and -(u - cx, v - cy) / z for the depth (which
        # vanishes where the depth is clamped).
        dz = torch.where(depth > MIN_DEPTH, -inv_z, torch.zeros_like(inv_z))
        jac = torch.stack(
            (k00 * inv_z, k01 * inv_z, u_rel * dz, k10 * inv_z, k11 * inv_z, v_rel * dz), dim=-1
        ).unflatten(-1, (2, 3))
    return Projection(x2d, depth, jac)


def pixel_affine(scale: float | tuple[float, float], origin: tuple[float, float]) -> torch.Tensor:
    """``(3, 3)`` float64 map ``A`` from the pixels of an image to those of a region of it
    resampled by ``scale``: ``u' = scale * (u - origin) - 0.5``.

    ``origin = (x0, y0)`` is the region's top-left corner in image pixels (the whole image's is
    ``(-0.5, -0.5)``); it maps to the resampled image's corner ``(-0.5, -0.5)``.  Crops, resizes
    and output strides are all this map, and the intrinsics of the resampled image are
    ``A @ K``: the one home of that formula.

    Args:
        scale: ``s`` or ``(sx, sy)``, resampled pixels per image pixel.
        origin: ``(x0, y0)`` image pixels.
    """
    sx, sy = (scale, scale) if isinstance(scale, int | float) else scale
    x0, y0 = origin
    return torch.tensor([[sx, 0.0, -sx * x0 - 0.5], [0.0, sy, -sy * y0 - 0.5],
                         [0.0, 0.0, 1.0]], dtype=torch.float64)


def image_points(x2d: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pixel_affine` on points: ``x2d: (..., N, 2)`` in the pixels of
    resampled images back in the pixels of the images, for the image-to-resampled affines
    ``affines: (..., 3, 3)`` (scale and shift only)."""
    scale = affines[..., None, [0, 1], [0, 1]]
    shift = affines[..., None, :2, 2]
    return (x2d - shift) / scale


def stride_intrinsics(cam_mats: torch.Tensor, stride: int) -> torch.Tensor:
    """Intrinsics ``(..., 3, 3)`` of the output map of ``stride`` of an image with intrinsics
    ``cam_mats: (..., 3, 3)``: pixel ``(j, i)`` of the map sees what image point
    ``pixel_grid(..., stride)[i * W + j]`` sees (:func:`pixel_affine` with scale ``1 / stride``).
    """
    check_shape(cam_mats, ["*", 3, 3], "cam_mats")
    if stride < 1:
        raise ShapeError(f"stride must be >= 1, got {stride}")
    return pixel_affine(1.0 / stride, (-0.5, -0.5)).to(cam_mats) @ cam_mats


def pixel_grid(height: int, width: int, stride: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Image-pixel coordinates of the cell centres of a ``(height, width)`` output map of
    ``stride``: cell ``(i, j)`` covers image pixels ``j * stride .. j * stride + stride - 1``
    (columns, likewise rows), so its centre is ``(j * stride + (stride - 1) / 2, i * stride +
    (stride - 1) / 2)``.

    Returns:
        ``(height * width, 2)`` points ``(x, y)`` in row-major order (index ``i * width + j``),
        matching ``map.flatten(-2)`` of a ``(..., height, width)`` map.
    """
    if height < 1 or width < 1 or stride < 1:
        raise ShapeError(f"pixel_grid: sizes and stride must be positive, got "
                         f"{height} x {width}, stride {stride}")
    off = (stride - 1) / 2
    ys = torch.arange(height, dtype=dtype, device=device) * stride + off
    xs = torch.arange(width, dtype=dtype, device=device) * stride + off
    return torch.stack((xs.expand(height, width), ys[:, None].expand(height, width)),
                       dim=-1).reshape(-1, 2)
