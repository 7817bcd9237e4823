"""Inference steps of the deformable correspondence network after its forward pass: the
multi-start 4DoF PnP solve of the queries and the bird's-eye-view NMS of the solved boxes.
Shapes: ``Q`` queries, ``N`` correspondences each, poses ``(Q, 4)`` = ``(x, y, z, yaw)``."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.pnp.init import hypotheses_6dof, init_4dof
from epropnp_lib.pnp.solver import PnPSolution, SolverConfig, SolveStatus, solve_pnp

__all__ = ["Detections", "bev_rectangles", "no_detections", "solve_multi_start"]


class Detections(NamedTuple):
    """Detections of one image (``M`` boxes, ``N`` correspondences, ``S`` posterior samples).

    Attributes:
        boxes: :class:`~epropnp_lib.geometry.boxes.CameraBoxes` (pose from the PnP solve, predicted
            size, class, score = class score * 3D score, velocity (NaN without the head),
            attribute (-1 without the head)).
        covariance: ``(M, 4, 4)`` Laplace covariance of ``(x, y, z, yaw)``.
        x2d: ``(M, N, 2)`` 2D points in the original image's pixels.
        x3d: ``(M, N, 3)`` object points (metres, object frame).
        w2d: ``(M, N, 2)`` weights.
        pose_samples: ``(S, M, 4)`` equally weighted posterior samples, or ``None``.
    """

    boxes: CameraBoxes
    covariance: torch.Tensor
    x2d: torch.Tensor
    x3d: torch.Tensor
    w2d: torch.Tensor
    pose_samples: torch.Tensor | None


def no_detections(like: torch.Tensor, num_points: int, num_pose_samples: int) -> Detections:
    """Empty :class:`Detections` in the dtype and device of ``like`` (``N = num_points``)."""
    boxes = CameraBoxes.empty(dtype=like.dtype, device=like.device)
    return Detections(boxes, like.new_zeros(0, 4, 4), like.new_zeros(0, num_points, 2),
                      like.new_zeros(0, num_points, 3), like.new_zeros(0, num_points, 2),
                      like.new_zeros(num_pose_samples, 0, 4) if num_pose_samples > 0 else None)


@torch.no_grad()
def solve_multi_start(
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    solver: SolverConfig,
    max_iterations: int = 0,
    multi_start: bool = True,
) -> PnPSolution:
    """4DoF PnP solve of ``Q`` objects' correspondences (``x3d: (Q, N, 3)``, ``x2d, w2d:
    (Q, N, 2)``, ``cam_mats: (Q, 3, 3)``) with ``solver`` (``max_iterations > 0`` replaces its
    iteration limit).

    Learned correspondences often mislead the closed-form 4DoF initialisation (a linear
    relaxation) into an optimum behind the camera or a wrong local optimum; with
    ``multi_start`` the solve therefore also starts from the four yaw rotations among
    :func:`~epropnp_lib.pnp.init.hypotheses_6dof`'s poses (yaw 0, 90, 180, 270 degrees,
    translation from the weighted 2D/3D centroids and spreads) and keeps, per object, the
    usable solution of lowest cost (among none usable, the closed-form start's).
    """
    if max_iterations > 0:
        solver = dataclasses.replace(solver, max_iterations=max_iterations)
    if not multi_start or x3d.shape[0] == 0:
        return solve_pnp(x3d, x2d, w2d, cam_mats, dof=4, config=solver)
    q = x3d.shape[0]
    hyp = hypotheses_6dof(x3d, x2d, w2d, cam_mats)  # (24, Q, 7)
    quat = hyp[:, 0, 3:]
    about_y = (quat[:, 1].abs() < 1e-6) & (quat[:, 3].abs() < 1e-6)
    hyp = hyp[about_y]  # (4, Q, 7): yaw 0, 90, 180, 270 degrees
    yaw = 2.0 * torch.atan2(hyp[..., 5], hyp[..., 3])
    starts = torch.cat((init_4dof(x3d, x2d, w2d, cam_mats),
                        torch.cat((hyp[..., :3], yaw[..., None]), dim=-1)))  # (S, Q, 4)
    n = starts.shape[0]
    sol = solve_pnp(
        x3d.repeat(n, 1, 1), x2d.repeat(n, 1, 1), w2d.repeat(n, 1, 1),
        cam_mats.repeat(n, 1, 1), dof=4, pose_init=starts.flatten(0, 1), config=solver,
    )
    usable = (sol.status <= SolveStatus.MAX_ITERATIONS) & torch.isfinite(sol.cost)
    cost = torch.where(usable, sol.cost, torch.inf).view(n, q)
    best = torch.where(torch.isfinite(cost).any(0), cost.argmin(0), 0)
    flat = best * q + torch.arange(q, device=best.device)
    return PnPSolution(*(t[flat] for t in sol))


def bev_rectangles(boxes: CameraBoxes) -> torch.Tensor:
    """``(M, 4)`` axis-aligned ``(x1, z1, x2, z2)`` around the footprints in the camera x-z
    plane: the boxes of the bird's-eye-view NMS, so that objects that overlap in the image at
    different depths are not suppressed."""
    corners = boxes.corners()[..., [0, 2]]  # (M, 8, 2)
    return torch.cat((corners.amin(1), corners.amax(1)), dim=-1)
