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

Layout.  The hot loops (the solver's cost + Jacobian + normal equations) work on a structure of
arrays (:class:`PointSet`: one contiguous ``(B, N)`` tensor per coordinate) rather than on
``(B, N, 3)`` / ``(B, N, 2, D)`` tensors: on the CPU an elementwise op over a strided last-axis
slice or a batch of tiny matrix products costs 5-50x more than the same op over a contiguous
array.  :func:`evaluate_cost` gives the same numbers in the ``(..., N, 2)`` layout (and keeps
autograd), built from the same core, :func:`point_terms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from epropnp_lib.conventions import MIN_DEPTH
from epropnp_lib.errors import ConfigError
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

    def threshold(
        self, x2d: torch.Tensor, w2d: torch.Tensor, spread_sq: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Per-element threshold ``(B,)`` for ``x2d, w2d: (B, N, 2)``, or ``None`` (no kernel).

        The threshold is a statistic of the inputs that sets the scale of the kernel; it is
        detached, i.e. a constant of the cost (no gradient flows through it).  ``spread_sq:
        (B,)`` is ``var_x(x2d) + var_y(x2d)`` when the caller has already computed it.
        """
        if self.delta is not None:
            return x2d.new_full(x2d.shape[:-2], self.delta)
        if self.relative_delta is None:
            return None
        if spread_sq is None:
            spread_sq = point_spread_sq(x2d.detach())
        spread = spread_sq.detach().sqrt()
        return self.relative_delta * w2d.detach().mean(dim=(-2, -1)) * spread


def point_spread_sq(x2d: torch.Tensor) -> torch.Tensor:
    """``var_x + var_y`` (unbiased) of the points ``x2d: S + (N, 2)`` of each problem: ``S``.

    An empty batch gives an empty result (``torch.var`` would warn about it).
    """
    if x2d.shape[:-2].numel() == 0:
        return x2d.new_zeros(x2d.shape[:-2])
    # Two passes like torch.var (no cancellation), a few times faster on the CPU.
    centred = x2d - x2d.mean(dim=-2, keepdim=True)
    return centred.square().sum(dim=(-2, -1)) / (x2d.shape[-2] - 1)


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


#: Smallest squared residual the Huber weight's ``s^(-1/2)`` sees (its derivative ``s^(-3/2)``
#: stays within float32); only thresholds ``d < 2e-10`` reach it.
_HUBER_FLOOR = 1e-20


def _huber(sq_norm: torch.Tensor, d: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`huber` with ``d`` already broadcastable against ``sq_norm``."""
    if d is None:
        return 0.5 * sq_norm, torch.ones_like(sq_norm)
    # rho'(s) = min(1, d / sqrt(s)), and 1/2 rho(s) = 1/2 s rho' (2 - rho') on both branches.
    # s is floored at d^2 / 4, where the clamp holds the weight at 1 anyway: the floor keeps
    # the derivative of s^(-1/2) finite for the residuals near 0 of points whose weight nearly
    # vanished (in float32 it overflows below s ~ 1e-26, and the clamp's zero times it is NaN).
    floor = (0.25 * d * d).clamp_min(_HUBER_FLOOR)
    weight = (d * torch.maximum(sq_norm, floor).rsqrt()).clamp_max(1.0)
    return sq_norm * torch.addcmul(weight, weight, weight, value=-0.5), weight  # s w (1 - w/2)


def huber(sq_norm: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Half Huber kernel ``1/2 rho(s)`` and ``rho'(s)`` for squared norms ``s: S + (N,)``.

    ``delta: S`` (broadcast over N) or ``None`` for the plain square.
    """
    return _huber(sq_norm, None if delta is None else delta.unsqueeze(-1))


class PointSet(NamedTuple):
    """A batch of weighted correspondences in the component-major layout of the hot loops.

    Built by :meth:`from_tensors`; the weights and intrinsics are folded in so that each cost
    evaluation does the least work.  With ``(u, v)`` the image point, ``(wu, wv)`` its weights
    and ``K = [[k00, k01, cx], [k10, k11, cy], [0, 0, 1]]``:

    Attributes:
        x: ``(3, B, N)`` object point coordinates (one contiguous ``(B, N)`` per axis).
        wk: ``(2, 2, B, N)`` ``[[wu k00, wu k01], [wv k10, wv k11]]``.
        wc: ``(2, B, N)`` ``[wu (u - cx), wv (v - cy)]``.
        delta: ``(B, 1)`` Huber thresholds, or ``None`` for the plain squared cost.
    """

    x: torch.Tensor
    wk: torch.Tensor
    wc: torch.Tensor
    delta: torch.Tensor | None

    @classmethod
    def from_tensors(
        cls,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        cam_mats: torch.Tensor,
        delta: torch.Tensor | None,
    ) -> PointSet:
        """From ``x3d: (B, N, 3)``, ``x2d: (B, N, 2)``, ``w2d: (B, N, 2)``,
        ``cam_mats: (B, 3, 3)`` and ``delta: (B,)`` or ``None`` (differentiable)."""
        w = w2d.movedim(-1, 0)  # (2, B, N)
        k = cam_mats[:, :2].permute(1, 2, 0).unsqueeze(-1)  # (2, 3, B, 1)
        return cls(
            x3d.movedim(-1, 0).contiguous(),
            (w.unsqueeze(1) * k[:, :2]).contiguous(),
            (w * (x2d.movedim(-1, 0) - k[:, 2])).contiguous(),
            None if delta is None else delta.unsqueeze(-1),
        )

    def select(self, idx: torch.Tensor) -> PointSet:
        """The problems ``idx`` (an index or boolean mask over ``B``)."""
        return PointSet(
            self.x[:, idx], self.wk[:, :, idx], self.wc[:, idx],
            None if self.delta is None else self.delta[idx],
        )

    def repeat(self, reps: int) -> PointSet:
        """The batch repeated ``reps`` times (``B`` becomes ``reps * B``)."""
        if reps == 1:
            return self
        return PointSet(
            self.x.repeat(1, reps, 1), self.wk.repeat(1, 1, reps, 1), self.wc.repeat(1, reps, 1),
            None if self.delta is None else self.delta.repeat(reps, 1),
        )


class PointTerms(NamedTuple):
    """Per-point pieces of the cost (see :func:`point_terms`).

    ``S`` is the broadcast of the pose's leading dims with ``(B,)``.

    Attributes:
        half_rho: ``S + (N,)`` per-point cost ``1/2 rho(||f||^2)``.
        robust_weight: ``S + (N,)`` IRLS weights ``rho'``.
        residual: ``(2,) + S + (N,)`` weighted residuals (u and v rows).
        rows: ``(2,) + S + (D + 1, N)``: for the u and v rows, the derivatives w.r.t. the
            ``D`` tangent coordinates followed by the residual (the layout of
            :func:`normal_equations_from_rows`), or ``None`` when not requested.
        depth: ``S + (N,)`` camera-frame depth before clamping.
    """

    half_rho: torch.Tensor
    robust_weight: torch.Tensor
    residual: torch.Tensor
    rows: torch.Tensor | None
    depth: torch.Tensor


def point_terms(
    space: type[PoseSpace], pose: torch.Tensor, pts: PointSet, with_jacobian: bool = False
) -> PointTerms:
    """The cost's per-point pieces at ``pose: S + (dim,)`` (``S`` broadcasts against ``(B,)``).

    Points at or behind the camera are clamped to :data:`~epropnp_lib.conventions.MIN_DEPTH`,
    where the derivative w.r.t. depth is zero (as :func:`epropnp_lib.geometry.camera.project`).
    Differentiable.
    """
    t0, t1, t2 = pose[..., :3].unsqueeze(-2).unbind(-1)  # S + (1,)
    p0, p1, p2 = space.rotate(pose, pts.x)  # S + (N,)
    # Pose batch dims beyond the problems' (e.g. K samples per problem): broadcast the
    # component-major tensors over them.
    extra = (1,) * (pose.dim() - 2)
    wk = pts.wk.view(pts.wk.shape[:2] + extra + pts.wk.shape[2:])
    wc = pts.wc.view(pts.wc.shape[:1] + extra + pts.wc.shape[1:])
    depth = p2 + t2
    inv_z = depth.clamp_min(MIN_DEPTH).reciprocal()
    # w K[:2, :2] / z, (2, 2) + S + (N,): both the projection and its derivative need it.
    wk0, wk1 = (wk * inv_z).unbind(1)
    wr = torch.addcmul(wk0 * (p0 + t0), wk1, p1 + t1)  # w (K[:2, :2] x / z): (2,) + S + (N,)
    residual = wr - wc
    half_rho, weight = _huber((residual * residual).sum(0), pts.delta)
    rows = None
    if with_jacobian:
        # d(K[:2] x / z) / dx = K[:2, :2] / z and -(u - cx, v - cy) / z for the depth (which
        # vanishes where the depth is clamped).  Both image rows at once: (2,) + S + (N,).
        dz = (-inv_z).masked_fill(depth <= MIN_DEPTH, 0.0)
        a = (wk0, wk1, wr * dz)
        cols = a + space.rotation_columns((p0, p1, p2), a) + (residual,)
        rows = torch.stack(cols, dim=-2)  # one contiguous (D + 1, N) block per image row
    return PointTerms(half_rho, weight, residual, rows, depth)


def augmented_normal_matrix(rows: torch.Tensor, robust_weight: torch.Tensor) -> torch.Tensor:
    """``S + (D + 1, D + 1)`` matrix ``[[H, g], [g^T, sum_i rho'_i |f_i|^2]]``.

    ``H = sum_i rho'_i J_i^T J_i`` and ``g = sum_i rho'_i J_i^T f_i`` are the Gauss-Newton
    Hessian and gradient of the robust cost (IRLS form of Eq. 11), from ``rows: (2,) + S +
    (D + 1, N)`` (:attr:`PointTerms.rows`: Jacobian columns, then the residual) and
    ``robust_weight: S + (N,)``: the residual rides along as an extra Jacobian column, so one
    batched product gives both.  Differentiable.
    """
    shape = rows.shape
    flat = rows.reshape(-1, shape[-2], shape[-1])  # one (D + 1, N) block per image row
    weighted = (rows * robust_weight.unsqueeze(-2)).reshape(flat.shape)
    # An explicit bmm with the transposed view: a batched `@` on the 4D tensors reshapes (copies)
    # its operands first, which costs more than the product for small batches.
    return torch.bmm(weighted, flat.transpose(-1, -2)).view(shape[:-1] + shape[-2:-1]).sum(0)


def normal_equations_from_rows(
    rows: torch.Tensor, robust_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton Hessian ``S + (D, D)`` and gradient ``S + (D,)`` of the robust cost (see
    :func:`augmented_normal_matrix`).  Differentiable."""
    d = rows.shape[-2] - 1
    m = augmented_normal_matrix(rows, robust_weight)
    return m[..., :d, :d], m[..., :d, d]


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
    pts = PointSet.from_tensors(x3d, x2d, w2d, cam_mats, delta)
    terms = point_terms(space, pose, pts, with_jacobian)
    # (2,) + S + (D, N) -> S + (N, 2, D)
    jac = None if terms.rows is None else terms.rows[..., :-1, :].movedim(0, -1).movedim(-3, -1)
    return CostTerms(
        terms.half_rho.sum(-1), terms.residual.movedim(0, -1), terms.robust_weight, jac,
        terms.depth,
    )


def tempered_weights(w2d: torch.Tensor, temperature: float) -> torch.Tensor:
    """Weights ``(..., N, 2)`` whose cost is ``cost / temperature``: the likelihood
    ``exp(-cost / T)`` of a post-hoc calibration (temperature scaling).

    The cost is homogeneous of degree 2 in the weights: the residuals ``f_i`` scale with
    ``w2d`` and so does the adaptive threshold (``mean(w2d)``), so ``rho`` scales with the
    square.  Scaling the weights by ``T ** -0.5`` therefore keeps the optimal pose and
    multiplies the Laplace covariance by ``T`` (:func:`epropnp_lib.pnp.solver.
    temper_solution` does the same to a solution already computed).  A fixed absolute
    ``HuberConfig.delta`` breaks the homogeneity in the kernel's linear part.

    Raises:
        ConfigError: ``temperature`` is not a positive finite number.
    """
    check_temperature(temperature)
    return w2d if temperature == 1.0 else w2d * temperature ** -0.5


def check_temperature(temperature: float, name: str = "likelihood_temperature") -> None:
    """Raise ``ConfigError`` unless ``temperature`` (the setting ``name``) is a positive finite
    number."""
    if isinstance(temperature, bool) or not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"{name} must be positive, got {temperature}")


__all__ = [
    "NO_KERNEL", "CostTerms", "HuberConfig", "PointSet", "PointTerms", "augmented_normal_matrix",
    "evaluate_cost", "huber", "point_spread_sq",
    "normal_equations_from_rows", "point_terms", "tempered_weights", "check_temperature",
]
