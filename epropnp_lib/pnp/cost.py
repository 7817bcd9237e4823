"""The weighted reprojection cost of Eq. (1), robustified by the Huber kernel (Eq. 11-12).

For correspondences ``(x3d_i, x2d_i, w2d_i)`` and pose ``y`` the weighted residual is
``f_i(y) = w2d_i * (pi(R x3d_i + t) - x2d_i)`` and the cost is

    cost(y) = 1/2 sum_i rho(||f_i(y)||^2),
    rho(s) = s                       if s <= delta^2
           = delta (2 sqrt(s) - delta) otherwise.

``cost`` is the negative log-likelihood ``-log p(X|y)`` of Eq. (2).  The adaptive threshold
(EPro-PnP supplementary material) scales with the spread of the 2D points and the mean weight::

    delta = relative_delta * mean(w2d) * sqrt(var_x(x2d) + var_y(x2d))

Gauss-Newton for the robust cost uses iteratively re-weighted least squares: each point's
residual and Jacobian are scaled by ``sqrt(rho'(s))`` where ``rho'(s) = min(1, delta/||f||)``,
which gives the exact gradient and the usual Gauss-Newton Hessian approximation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.camera import project, rotate_points
from epropnp_lib.geometry.pose import PoseSpace


@dataclass(frozen=True)
class HuberConfig:
    """Robust kernel settings.

    Attributes:
        relative_delta: adaptive threshold factor (paper default 0.5); ``None`` disables it.
        delta: fixed absolute threshold on ``||f_i||``; overrides ``relative_delta``.
            Both ``None`` gives the plain squared cost of Eq. (1).
    """

    relative_delta: float | None = 0.5
    delta: float | None = None

    def __post_init__(self) -> None:
        for name in ("relative_delta", "delta"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"HuberConfig.{name} must be positive or None, got {v}")

    def threshold(self, x2d: torch.Tensor, w2d: torch.Tensor) -> torch.Tensor | None:
        """Per-element threshold ``(B,)`` for ``x2d, w2d: (B, N, 2)``, or ``None`` (no kernel).

        The threshold is a statistic of the inputs that sets the scale of the kernel; it is
        detached, i.e. a constant of the cost (no gradient flows through it).
        """
        if self.delta is not None:
            return x2d.new_full(x2d.shape[:-2], self.delta)
        if self.relative_delta is None:
            return None
        spread = x2d.detach().var(dim=-2).sum(dim=-1).sqrt()
        return self.relative_delta * w2d.detach().mean(dim=(-2, -1)) * spread


#: The plain squared cost of Eq. (1), without the robust kernel.
NO_KERNEL = HuberConfig(relative_delta=None, delta=None)


class CostTerms(NamedTuple):
    """Cost and its pieces at one or more poses.

    Batch shape ``S`` is the broadcast of the pose's leading dims with the points' (e.g.
    ``(B,)`` for one pose per problem, ``(K, B)`` for K samples per problem).

    Attributes:
        cost: ``S`` cost ``1/2 sum_i rho(||f_i||^2)``.
        residual: ``S + (N, 2)`` weighted residuals ``f_i``.
        robust_weight: ``S + (N,)`` IRLS weights ``rho'(||f_i||^2)`` in (0, 1].
        jacobian: ``S + (N, 2, D)`` d f_i / d delta (tangent increment), or ``None``.
        depth: ``S + (N,)`` camera-frame depth of each point before clamping.
    """

    cost: torch.Tensor
    residual: torch.Tensor
    robust_weight: torch.Tensor
    jacobian: torch.Tensor | None
    depth: torch.Tensor


def huber(sq_norm: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Half Huber kernel ``1/2 rho(s)`` and ``rho'(s)`` for squared norms ``s: S + (N,)``.

    ``delta: S`` (broadcast over N) or ``None`` for the plain square.
    """
    if delta is None:
        return 0.5 * sq_norm, torch.ones_like(sq_norm)
    d = delta.unsqueeze(-1)
    norm = sq_norm.clamp_min(torch.finfo(sq_norm.dtype).tiny).sqrt()
    inside = norm <= d
    half_rho = torch.where(inside, 0.5 * sq_norm, d * norm - 0.5 * d * d)
    weight = torch.where(inside, torch.ones_like(norm), d / norm)
    return half_rho, weight


def evaluate_cost(
    space: type[PoseSpace],
    pose: torch.Tensor,
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    delta: torch.Tensor | None,
    with_jacobian: bool = False,
) -> CostTerms:
    """Evaluate the robust reprojection cost at ``pose``.

    Args:
        space: :class:`~epropnp_lib.geometry.pose.Pose6DoF` or ``Pose4DoF``.
        pose: ``S + (dim,)`` poses; ``S`` broadcasts against ``(B,)``.
        x3d: ``(B, N, 3)`` object points.
        x2d: ``(B, N, 2)`` image points (pixels).
        w2d: ``(B, N, 2)`` non-negative weights.
        cam_mats: ``(B, 3, 3)`` intrinsics.
        delta: ``(B,)`` Huber thresholds (see :meth:`HuberConfig.threshold`) or ``None``.
        with_jacobian: also compute d f / d delta.

    Returns:
        :class:`CostTerms`.
    """
    p_rot = rotate_points(x3d, space.rotation(pose))
    x_cam = p_rot + pose[..., None, :3]
    proj = project(x_cam, cam_mats, with_jacobian=with_jacobian)
    residual = (proj.x2d - x2d) * w2d
    half_rho, weight = huber((residual * residual).sum(-1), delta)
    jac = None
    if with_jacobian:
        assert proj.jac_cam is not None
        jac = space.point_jacobian(p_rot, proj.jac_cam) * w2d.unsqueeze(-1)
    return CostTerms(half_rho.sum(-1), residual, weight, jac, proj.depth)


__all__ = ["NO_KERNEL", "CostTerms", "HuberConfig", "evaluate_cost", "huber"]
