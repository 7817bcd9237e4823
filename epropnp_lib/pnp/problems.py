"""Seeded synthetic PnP problems (for tests, benchmarks and the demo)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from epropnp_lib.geometry.camera import project, transform_points
from epropnp_lib.geometry.pose import pose_space
from epropnp_lib.geometry.rotations import quat_normalize


class PnPProblem(NamedTuple):
    """A batch of PnP problems with their true poses.

    Attributes:
        x3d: ``(B, N, 3)`` object points; x2d: ``(B, N, 2)`` pixels (noisy if asked);
        w2d: ``(B, N, 2)`` weights; cam_mats: ``(B, 3, 3)``; pose: ``(B, dim)`` true poses.
    """

    x3d: torch.Tensor
    x2d: torch.Tensor
    w2d: torch.Tensor
    cam_mats: torch.Tensor
    pose: torch.Tensor


def default_camera(batch: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``(B, 3, 3)`` intrinsics of a 640x480 camera with 500 px focal length."""
    k = torch.tensor([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]], dtype=dtype)
    return k.to(device).expand(batch, 3, 3).clone()


def random_problems(
    batch: int,
    num_points: int,
    dof: int = 6,
    noise_std: float = 0.0,
    flatness: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> PnPProblem:
    """Random object poses seen by :func:`default_camera`.

    Object points are uniform in the box ``[-1, 1] x [-1, 1] x [-flatness, flatness]`` (object
    frame; ``flatness=0`` is exactly planar); rotations are uniform (6DoF) or uniform yaw (4DoF);
    the object centre lies 6 to 10 units in front of the camera, inside the field of view.
    Pixel noise is Gaussian with ``noise_std`` and the weights are ``1 / noise_std`` (or 1).
    All randomness comes from ``generator`` (drawn on CPU, then moved), so results are identical
    across devices.
    """
    g = generator
    cpu = torch.float64
    x3d = torch.rand(batch, num_points, 3, generator=g, dtype=cpu) * 2 - 1
    x3d[..., 2] *= flatness
    if dof == 6:
        rot = quat_normalize(torch.randn(batch, 4, generator=g, dtype=cpu))
        rot = torch.where(rot[:, :1] < 0, -rot, rot)
    else:
        rot = (torch.rand(batch, 1, generator=g, dtype=cpu) * 2 - 1) * torch.pi
    depth = 6 + 4 * torch.rand(batch, 1, generator=g, dtype=cpu)
    xy = (torch.rand(batch, 2, generator=g, dtype=cpu) * 2 - 1) * depth * 0.25
    pose = torch.cat((xy, depth, rot), dim=-1)
    cam = default_camera(batch, cpu, "cpu")
    space = pose_space(dof)
    x2d = project(transform_points(x3d, space.rotation(pose), pose[:, :3]), cam).x2d
    x2d = x2d + noise_std * torch.randn(x2d.shape, generator=g, dtype=cpu)
    w = 1.0 / noise_std if noise_std > 0 else 1.0
    w2d = torch.full_like(x2d, w)
    out = (x3d, x2d, w2d, cam, pose)
    return PnPProblem(*(t.to(device=device, dtype=dtype) for t in out))


class OutlierProblem(NamedTuple):
    """A batch of PnP problems in which some image points are gross outliers.

    Attributes:
        problem: the :class:`PnPProblem` (its ``x2d`` holds the outliers).
        inliers: ``(B, N)`` bool, False where the image point was replaced.
    """

    problem: PnPProblem
    inliers: torch.Tensor


def with_outliers(
    problem: PnPProblem,
    fraction: float,
    image_size: tuple[int, int] = (640, 480),
    generator: torch.Generator | None = None,
) -> OutlierProblem:
    """``problem`` with ``round(fraction * N)`` image points per element replaced by points
    uniform in the ``(width, height)`` image (the other points keep their noise); which points,
    and where they go, come from ``generator`` (drawn on the CPU)."""
    x2d = problem.x2d
    batch, n = x2d.shape[:2]
    num_out = round(fraction * n)
    order = torch.rand(batch, n, generator=generator, dtype=torch.float64).argsort(dim=-1)
    inliers = torch.ones(batch, n, dtype=torch.bool)
    inliers.scatter_(1, order[:, :num_out], False)
    size = torch.tensor(image_size, dtype=torch.float64)
    uniform = torch.rand(batch, n, 2, generator=generator, dtype=torch.float64) * size - 0.5
    out = torch.where(inliers[..., None], x2d.cpu().double(), uniform)
    problem = problem._replace(x2d=out.to(device=x2d.device, dtype=x2d.dtype))
    return OutlierProblem(problem, inliers.to(x2d.device))
