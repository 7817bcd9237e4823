"""The public boundary check of a batch of PnP problems (:func:`validate_problem`).

Whole-call errors (shapes, dtypes, devices, too few points) raise; per-element problems (NaN,
negative weights, bad intrinsics) do not: the element is marked invalid and replaced by a
benign dummy, so that a batch is never failed as a whole (the solver reports such elements as
``INVALID_INPUT``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.errors import DegenerateInputError
from epropnp_lib.geometry.pose import Pose6DoF, PoseSpace
from epropnp_lib.tensor_constants import on


class ValidatedProblem(NamedTuple):
    """Inputs after :func:`validate_problem`: invalid elements replaced by a benign problem."""

    x3d: torch.Tensor
    x2d: torch.Tensor
    w2d: torch.Tensor
    cam_mats: torch.Tensor
    pose_init: torch.Tensor | None
    valid: torch.Tensor  # (B,) bool


_K_LAST_ROW = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)


def validate_problem(
    space: type[PoseSpace],
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    pose_init: torch.Tensor | None = None,
) -> ValidatedProblem:
    """Check a batch of PnP problems at the public boundary.

    Shapes: ``x3d: (B, N, 3)``, ``x2d: (B, N, 2)``, ``w2d: (B, N, 2)``, ``cam_mats: (B, 3, 3)``,
    ``pose_init: (B, dim)`` or ``None``.

    Raises:
        ShapeError, DTypeError, DeviceError: inconsistent tensors (the whole call is wrong).
        DegenerateInputError: ``N`` below the pose space's minimum (the whole batch is).

    Per-element problems (NaN/inf, negative weights, intrinsics whose last row is not
    (0, 0, 1) or with non-positive focal lengths) do not raise: the element is marked invalid
    and replaced by a well-posed dummy so the batch computes cleanly.
    """
    dims = check_shape(x3d, ["B", "N", 3], "x3d")
    dims = check_shape(x2d, ["B", "N", 2], "x2d", dims)
    dims = check_shape(w2d, ["B", "N", 2], "w2d", dims)
    dims = check_shape(cam_mats, ["B", 3, 3], "cam_mats", dims)
    if pose_init is not None:
        check_shape(pose_init, ["B", space.dim], "pose_init", dims)
    check_float_tensors(x3d=x3d, x2d=x2d, w2d=w2d, cam_mats=cam_mats, pose_init=pose_init)
    if dims["N"] < space.min_points:
        raise DegenerateInputError(
            f"{space.__name__} needs at least {space.min_points} correspondences, got N={dims['N']}"
        )

    # One NaN or inf makes its element's sum non-finite (as does a sum beyond the dtype's
    # range, which no sane problem has); a NaN weight fails the minimum's test too.
    total = x3d.sum((1, 2)) + x2d.sum((1, 2)) + w2d.sum((1, 2)) + cam_mats.sum((1, 2))
    if pose_init is not None:
        total = total + pose_init.sum(1)
    valid = torch.isfinite(total) & (w2d.amin((1, 2)) >= 0)
    k = cam_mats.flatten(1)  # last row (0, 0, 1), positive focal lengths
    valid &= (k[:, 6:] == on(_K_LAST_ROW, k.dtype, k.device)).all(1)
    valid &= torch.minimum(k[:, 0], k[:, 4]) > 0
    if bool(valid.all()):
        return ValidatedProblem(x3d, x2d, w2d, cam_mats, pose_init, valid)
    # Replace invalid elements by a benign problem: unit camera, points on a unit cube at
    # depth 5, zero weights (so they never influence anything and are flagged anyway).
    bad = ~valid
    n = dims["N"]
    g = torch.arange(n, device=x3d.device)
    dummy3d = torch.stack(((g % 2), (g // 2) % 2, (g // 4) % 2), -1).to(x3d.dtype) - 0.5
    dummy3d = dummy3d + 0.01 * g.to(x3d.dtype)[:, None]
    dummy2d = dummy3d[:, :2] / (dummy3d[:, 2:] + 5.0)
    eye = torch.eye(3, dtype=x3d.dtype, device=x3d.device)
    m3, m2 = bad[:, None, None], bad[:, None, None]
    x3d = torch.where(m3, dummy3d, x3d)
    x2d = torch.where(m2, dummy2d, x2d)
    w2d = torch.where(m2, torch.zeros_like(w2d), w2d)
    cam_mats = torch.where(bad[:, None, None], eye, cam_mats)
    if pose_init is not None:
        ident = torch.zeros_like(pose_init[0])
        ident[2] = 5.0
        if issubclass(space, Pose6DoF):
            ident[3] = 1.0
        pose_init = torch.where(bad[:, None], ident, pose_init)
    return ValidatedProblem(x3d, x2d, w2d, cam_mats, pose_init, valid)
