"""Robust PnP for correspondences with gross outliers (an inference mode; training keeps Eq. 11).

The paper's cost (:mod:`epropnp_lib.pnp.cost`) sets its Huber threshold from the spread of the
2D points, which outliers inflate, and gives every point a say: with a fifth of the points
uniform in the image its optimum is usually far from the truth.  :func:`solve_pnp_robust`
instead, batched over problems and hypotheses on the tensors' device:

1. draws ``H`` random subsets of ``subset_size`` positively weighted points per problem (seeded
   generator), each point with a chance proportional to its weight ``w_u + w_v`` (its mass), and
   solves each (closed-form start and a few LM iterations, plain squares); a problem whose best
   hypothesis explains little of the mass gets more subsets, as many as a clean subset needs at
   ``confidence`` (adaptive RANSAC), up to ``max_hypotheses``;
2. scores every hypothesis on all points by the squared weighted residual norms
   ``r^2 = ||w (pi(y) - x2d)||^2``: the least mass-weighted median (LMedS) gives the robust
   scale ``s``, with ``s^2 = median(r^2) / (2 ln 2)`` (for inliers with per-axis weighted
   residuals ``N(0, s^2)``, ``r^2 / s^2`` is chi-square with 2 degrees of freedom, median ``2 ln
   2``); the hypothesis of least truncated cost ``sum min(r^2, (k s)^2)`` (MSAC, ``k =
   inlier_sigmas``) is kept;
3. refines it with Levenberg-Marquardt on the inliers (``r < k s``; the others get zero weight)
   with the Huber threshold ``k s``, re-estimating ``s`` from the inliers' mass-weighted mean
   ``r^2`` (the mean of a chi-square law truncated at ``k^2``) and the inlier set after each
   round.

The mass matters for learned correspondences: a dense network gives most of its map cells a
weight near zero, and those cells fit any pose (their ``r^2`` is near zero); counted like the
others they would make the median and the scale vanish.  With equal weights everything is the
plain, unweighted method.  The pose, cost and covariance are those of the last refinement's
inliers; ``inlier_fraction`` is their share of the mass of the positively weighted points.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.pose import PoseSpace, pose_space
from epropnp_lib.pnp.cost import NO_KERNEL, PointSet, point_spread_sq, point_terms
from epropnp_lib.pnp.solver import (
    PnPSolution,
    SolverConfig,
    cost_round_off,
    initial_pose,
    optimize_pose,
    solve_validated,
)
from epropnp_lib.pnp.validation import ValidatedProblem, validate_problem

#: ``median(r^2) / s^2`` for inliers: the median of the chi-square law with 2 degrees of freedom.
_CHI2_2_MEDIAN = 2.0 * math.log(2.0)
#: Residual elements (hypotheses x problems x points) scored at once.
_SCORE_CHUNK = 1 << 21


@dataclass(frozen=True)
class RobustConfig:
    """Settings of :func:`solve_pnp_robust`.

    Attributes:
        num_hypotheses: random subsets per problem in the first round.
        max_hypotheses: most subsets per problem in all.
        confidence: probability that a problem's subsets include an all-inlier one, given the
            inlier fraction of its best hypothesis (sets the number of subsets beyond the first
            round).
        subset_size: points per subset (at least the pose's minimum; fewer positively weighted
            points than this: the subsets are all of them).
        hypothesis_iterations: LM iterations on each subset (0: the closed-form pose).
        inlier_sigmas: ``k``: inliers lie within ``k`` robust scales (4: all but 0.03 % of
            Gaussian inliers, so that clean data loses nothing); also the refinement's Huber
            threshold, in scales.
        refine_rounds: LM refinements on the inliers, each followed by a new scale and inlier
            set.
        seed: seed of the subsets when no generator is given (the same input gives the same
            result).
    """

    num_hypotheses: int = 24
    max_hypotheses: int = 256
    confidence: float = 0.999
    subset_size: int = 6
    hypothesis_iterations: int = 0
    inlier_sigmas: float = 4.0
    refine_rounds: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_hypotheses", "subset_size", "refine_rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RobustConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_hypotheses < self.num_hypotheses:
            raise ConfigError("RobustConfig.max_hypotheses must be >= num_hypotheses, got "
                              f"{self.max_hypotheses} < {self.num_hypotheses}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"RobustConfig.confidence must be in (0, 1), got {self.confidence}")
        if self.hypothesis_iterations < 0:
            raise ConfigError("RobustConfig.hypothesis_iterations must be >= 0, got "
                              f"{self.hypothesis_iterations}")
        if not (math.isfinite(self.inlier_sigmas) and self.inlier_sigmas > 0):
            raise ConfigError(f"RobustConfig.inlier_sigmas must be positive, got "
                              f"{self.inlier_sigmas}")


class RobustPnPSolution(NamedTuple):
    """Result of :func:`solve_pnp_robust`: the fields of
    :class:`~epropnp_lib.pnp.solver.PnPSolution` (of the inliers' problem), then:

    Attributes:
        inlier_fraction: ``(B,)`` share of the mass (weight) of the positively weighted points
            that lies on inliers (NaN where the input was invalid).  A low value means the pose
            explains few points: reject such fits (e.g. below 0.5, or below the outlier rate
            the application can tolerate).
        inliers: ``(B, N)`` bool, the points the final refinement used: the pose, cost and
            covariance are theirs.
        scale: ``(B,)`` robust scale ``s`` of the weighted residuals (per image axis).
    """

    pose: torch.Tensor
    cost: torch.Tensor
    covariance: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    inlier_fraction: torch.Tensor
    inliers: torch.Tensor
    scale: torch.Tensor

    def solution(self) -> PnPSolution:
        """The :class:`~epropnp_lib.pnp.solver.PnPSolution` part (e.g. for
        :meth:`epropnp_lib.epropnp.EProPnPBase.posterior_samples`)."""
        return PnPSolution(self.pose, self.cost, self.covariance, self.status, self.iterations)


@torch.no_grad()
def solve_pnp_robust(
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    dof: int = 6,
    config: RobustConfig | None = None,
    solver: SolverConfig | None = None,
    generator: torch.Generator | None = None,
) -> RobustPnPSolution:
    """Solve a batch of PnP problems whose correspondences may hold gross outliers.

    Args:
        x3d: ``(B, N, 3)`` object points.
        x2d: ``(B, N, 2)`` image points in pixels.
        w2d: ``(B, N, 2)`` non-negative weights.
        cam_mats: ``(B, 3, 3)`` intrinsics.
        dof: 6 or 4 (as :func:`~epropnp_lib.pnp.solver.solve_pnp`).
        config: :class:`RobustConfig`.
        solver: the refinement's :class:`~epropnp_lib.pnp.solver.SolverConfig` (its Huber
            settings are replaced by the robust threshold).
        generator: source of the random subsets, on the tensors' device (default: one seeded
            with ``config.seed``).

    Returns:
        :class:`RobustPnPSolution`; statuses as :func:`~epropnp_lib.pnp.solver.solve_pnp`.
    """
    cfg = config or RobustConfig()
    scfg = solver or SolverConfig()
    space = pose_space(dof)
    with torch.inference_mode():
        prob = validate_problem(space, x3d, x2d, w2d, cam_mats)
        if generator is None:
            generator = torch.Generator(device=x3d.device).manual_seed(cfg.seed)
        mass = prob.w2d[..., 0] + prob.w2d[..., 1]  # (B, N)
        active = mass > 0  # points that count
        pts = PointSet.from_tensors(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats, None)
        pose, scale = _search(space, prob, pts, mass, cfg, scfg, generator)
        k = cfg.inlier_sigmas
        iterations = torch.zeros_like(pose[:, 0], dtype=torch.int64)
        r2 = _sq_residuals(space, pose, pts)  # (B, N) at the current pose
    sol = None
    used = active
    for _ in range(cfg.refine_rounds):
        with torch.inference_mode():
            used = active & (r2 < (k * scale[:, None]) ** 2)
            refine = prob._replace(w2d=prob.w2d * used[..., None], pose_init=pose)
        sol = solve_validated(space, refine, scfg, delta=k * scale)
        with torch.inference_mode():
            iterations = iterations + sol.iterations
            pose = torch.where(sol.pose.isfinite().all(-1, keepdim=True), sol.pose, pose)
            r2 = _sq_residuals(space, pose, pts)
            inlier_mass = mass * (active & (r2 < (k * scale[:, None]) ** 2))
            total = inlier_mass.sum(-1)
            mean_r2 = (inlier_mass * r2.nan_to_num(0.0)).sum(-1) / total.clamp_min(
                torch.finfo(total.dtype).tiny)
            scale = torch.where(total > 0, (mean_r2 / _truncated_chi2_2_mean(k)).sqrt(), scale)
            scale = scale.clamp_min(_scale_floor(prob))
    assert sol is not None  # refine_rounds >= 1
    # The inliers are those of the last refinement: the pose and covariance are theirs.
    fraction = _mass_share(used, mass).to(pose.dtype).masked_fill(~prob.valid, torch.nan)
    return RobustPnPSolution(sol.pose, sol.cost, sol.covariance, sol.status, iterations,
                             fraction, used & prob.valid[:, None], scale)


def _truncated_chi2_2_mean(k: float) -> float:
    """``E[r^2 / s^2 | r < k s]`` for ``r^2 / s^2`` chi-square with 2 degrees of freedom: the
    mean of the inliers' ``r^2`` is this times ``s^2``."""
    tail = math.exp(-0.5 * k * k)
    return 2.0 - k * k * tail / (1.0 - tail)


def _scale_floor(prob: ValidatedProblem) -> torch.Tensor:
    """``(B,)`` smallest scale: the weighted 2D spread at float32 round-off (noise-free
    problems have residuals at that level)."""
    spread = point_spread_sq(prob.x2d).sqrt()
    return (1e-6 * prob.w2d.mean(dim=(-2, -1)) * spread).clamp_min(torch.finfo(spread.dtype).tiny)


def _mass_share(points: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """``(B,)`` share of the mass ``(B, N)`` (zero for inactive points) on ``points: (B, N)``
    (bool)."""
    total = mass.sum(-1)
    return (mass * points).sum(-1) / total.clamp_min(torch.finfo(total.dtype).tiny)


def _search(
    space: type[PoseSpace],
    prob: ValidatedProblem,
    pts: PointSet,
    mass: torch.Tensor,
    cfg: RobustConfig,
    scfg: SolverConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best hypothesis ``(B, dim)`` and its robust scale ``(B,)``: a first round of
    ``num_hypotheses`` subsets, then one more for the problems whose inlier mass needs it
    (``mass: (B, N)``, zero for the inactive points)."""
    hyps = _hypotheses(space, prob, mass, cfg.num_hypotheses, cfg, scfg, generator)
    pose, scale = _best_hypothesis(space, pts, mass, hyps, cfg, prob)
    m = min(cfg.subset_size, mass.shape[1])
    inliers = (mass > 0) & (_sq_residuals(space, pose, pts)
                            < (cfg.inlier_sigmas * scale[:, None]) ** 2)
    # Subsets are drawn by mass: a subset is clean with about the inlier mass share ^ m.
    clean = _mass_share(inliers, mass).double().pow(m).clamp(1e-12, 1.0 - 1e-12)
    need = torch.log1p(torch.full_like(clean, -cfg.confidence)) / torch.log1p(-clean)
    more = (need > cfg.num_hypotheses) & prob.valid
    if not bool(more.any()):
        return pose, scale
    extra = int(need[more].max().clamp_max(cfg.max_hypotheses).ceil()) - cfg.num_hypotheses
    if extra < 1:
        return pose, scale
    sub = ValidatedProblem(prob.x3d[more], prob.x2d[more], prob.w2d[more], prob.cam_mats[more],
                           None, prob.valid[more])
    sub_pts, sub_mass = pts.select(more), mass[more]
    hyps2 = _hypotheses(space, sub, sub_mass, extra, cfg, scfg, generator)
    hyps2 = torch.cat((pose[more][None], hyps2))  # the first round's best stays a candidate
    pose2, scale2 = _best_hypothesis(space, sub_pts, sub_mass, hyps2, cfg, sub)
    return pose.index_put((more,), pose2), scale.index_put((more,), scale2)


def _hypotheses(
    space: type[PoseSpace],
    prob: ValidatedProblem,
    mass: torch.Tensor,
    h: int,
    cfg: RobustConfig,
    scfg: SolverConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """``(h, B, dim)`` poses solved from random subsets of the active points, drawn without
    replacement with chances proportional to their ``mass: (B, N)`` (the ``m`` largest keys
    ``log(u) / mass``, Efraimidis-Spirakis; equal masses give uniform subsets)."""
    batch, n = mass.shape
    m = min(cfg.subset_size, n)
    keys = torch.rand((h, batch, n), generator=generator, device=mass.device)
    if mass.dtype != keys.dtype:
        keys = keys.to(mass.dtype)
    keys = keys.log_().div_(mass.clamp_min(torch.finfo(mass.dtype).tiny))
    # Inactive points only when too few are active (a uniform key below every active one's).
    keys = torch.where(mass > 0, keys, -torch.inf)
    idx = keys.topk(m, dim=-1).indices  # (H, B, m)

    def gather(t: torch.Tensor) -> torch.Tensor:
        full = t.expand(h, *t.shape)
        return full.gather(2, idx[..., None].expand(h, batch, m, t.shape[-1])).flatten(0, 1)

    cams = prob.cam_mats.expand(h, *prob.cam_mats.shape).flatten(0, 1)
    sub = ValidatedProblem(gather(prob.x3d), gather(prob.x2d), gather(prob.w2d), cams, None,
                           prob.valid.repeat(h))
    sub_cfg = dataclasses.replace(scfg, max_iterations=cfg.hypothesis_iterations, huber=NO_KERNEL)
    pts = PointSet.from_tensors(sub.x3d, sub.x2d, sub.w2d, sub.cam_mats, None)
    floor = cost_round_off(sub, point_spread_sq(sub.x2d))
    pose = initial_pose(space, sub, pts, sub_cfg, floor)
    if cfg.hypothesis_iterations > 0:
        pose = optimize_pose(space, pose, pts, sub_cfg, floor)[0].pose
    return pose.unflatten(0, (h, batch))


def _weighted_median(r2: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """``(H, B)`` lower median of ``r2: (H, B, N)`` with each point counted by its ``mass: (B,
    N)`` (inactive points: 0): the least value at which the mass at or below it reaches half
    of the total (NaN values sort last).  Equal masses give the ``(N + 1) // 2``-th smallest."""
    total = mass.sum(-1, dtype=torch.float64)  # (B,)
    if bool(((mass == mass[:, :1]) | (total[:, None] == 0)).all()):  # equal masses: no sort
        return r2.kthvalue((mass.shape[1] + 1) // 2, dim=-1).values
    order = r2.argsort(dim=-1)
    cum = mass.double().expand_as(r2).gather(-1, order).cumsum(-1)
    # The first point whose cumulated mass reaches half the total (a relative margin for the
    # round-off of the cumulative sum).
    below = (cum < 0.5 * total[:, None] * (1.0 - 1e-9)).sum(-1, keepdim=True)
    return r2.gather(-1, order.gather(-1, below.clamp_max(r2.shape[-1] - 1)))[..., 0]


def _sq_residuals(space: type[PoseSpace], pose: torch.Tensor, pts: PointSet) -> torch.Tensor:
    """Squared weighted residual norms ``S + (N,)`` at ``pose: S + (dim,)``."""
    res = point_terms(space, pose, pts).residual
    return (res * res).sum(0)


def _best_hypothesis(
    space: type[PoseSpace],
    pts: PointSet,
    mass: torch.Tensor,
    hyps: torch.Tensor,
    cfg: RobustConfig,
    prob: ValidatedProblem,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MSAC-best hypothesis ``(B, dim)`` of ``hyps: (H, B, dim)`` and the LMedS scale
    ``(B,)`` (the mass-weighted median, ``mass: (B, N)``, zero for the inactive points)."""
    h, batch, n = hyps.shape[0], *mass.shape
    active = mass > 0
    step = max(1, _SCORE_CHUNK // max(1, batch * n))
    r2 = torch.cat([_sq_residuals(space, hyps[i:i + step], pts) for i in range(0, h, step)])
    median = _weighted_median(r2, mass).nan_to_num(torch.inf)  # (H, B)
    lmeds = median.argmin(0)  # (B,)
    best_median = median.gather(0, lmeds[None])[0]
    floor = _scale_floor(prob)
    scale = torch.where(best_median.isfinite(), (best_median / _CHI2_2_MEDIAN).sqrt(), floor)
    scale = scale.clamp_min(floor)
    cap = (cfg.inlier_sigmas * scale) ** 2
    msac = torch.minimum(r2, cap[:, None]).masked_fill_(~active, 0.0).sum(-1)  # (H, B)
    msac = msac.masked_fill(~hyps.isfinite().all(-1), torch.inf)
    best = msac.argmin(0)
    return hyps.gather(0, best[None, :, None].expand(1, batch, hyps.shape[-1]))[0], scale
