"""Batched Levenberg-Marquardt / Gauss-Newton PnP solver with per-element status.

The solver minimises the robust cost of :mod:`epropnp_lib.pnp.cost` over a 6DoF or 4DoF pose.
It never aborts a batch: an element whose input is invalid (NaN/inf, negative weights, a bad
camera matrix) or whose problem is degenerate (singular Hessian at the optimum: all-zero weights,
collinear points, ...) is computed on sanitised data, masked, and reported in
:attr:`PnPSolution.status`, while every other element is solved normally.

The solve is not differentiated (it runs in ``torch.inference_mode``); gradients reach the
correspondences through the Monte Carlo loss and the derivative regulariser instead
(:mod:`epropnp_lib.epropnp`, :mod:`epropnp_lib.losses`).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from epropnp_lib.conventions import MIN_DEPTH
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.pose import PoseSpace, pose_space
from epropnp_lib.native import state_native
from epropnp_lib.pnp.cost import (
    CostTerms,
    HuberConfig,
    PointSet,
    augmented_normal_matrix,
    check_temperature,
    normal_equations_from_rows,
    point_spread_sq,
    point_terms,
)
from epropnp_lib.pnp.init import (
    hypotheses_6dof,
    init_4dof,
    init_6dof,
    normalized_image_points,
)
from epropnp_lib.pnp.p3p import p3p_candidates
from epropnp_lib.pnp.validation import ValidatedProblem, validate_problem


class SolveStatus(enum.IntEnum):
    """Per-element outcome of a solve (values of :attr:`PnPSolution.status`)."""

    #: Converged to the tolerance; pose and covariance are valid.
    CONVERGED = 0
    #: Hit ``max_iterations`` before the tolerance; pose and covariance are the last iterate's.
    MAX_ITERATIONS = 1
    #: The problem is degenerate at the solution (singular Hessian, most weight behind the
    #: camera); the pose is the best found, the covariance is NaN.
    DEGENERATE = 2
    #: The element's input was invalid (NaN/inf, negative weight, bad intrinsics); pose and
    #: covariance are NaN.
    INVALID_INPUT = 3


class SolverMode(enum.Enum):
    """Optimisation algorithm."""

    #: Levenberg-Marquardt with Nielsen's trust-region update of the damping.
    LEVENBERG_MARQUARDT = "lm"
    #: Undamped Gauss-Newton: cheapest per iteration, for well-initialised problems.
    GAUSS_NEWTON = "gn"


@dataclass(frozen=True)
class SolverConfig:
    """Settings of :func:`solve_pnp`.

    Attributes:
        mode: LM (default) or Gauss-Newton.
        max_iterations: iteration limit (each iteration is one cost + Jacobian evaluation).
        tolerance: an element stops when the relative cost decrease and the step (its
            translation relative to the translation's norm, its rotation in radians) are both
            below this (or 100 machine epsilons of the dtype, whichever is larger).
        initial_damping: initial LM damping (relative to the Hessian diagonal).
        multi_start_below: 6DoF problems with fewer points than this also start from more
            poses and keep the best optimum: below :data:`MINIMAL_POINTS_BELOW` points (where
            the DLT is undetermined) the P3P poses of every point triple, from there on 24
            rotation hypotheses.
        degenerate_rcond: an element whose Jacobi-scaled Hessian is not numerically positive
            definite, or has a reciprocal condition number (Frobenius norm, see
            :func:`laplace_covariance`) at most this (or 10 machine epsilons of the input dtype,
            whichever is larger) at the solution is reported DEGENERATE.
        huber: robust kernel.
    """

    mode: SolverMode = SolverMode.LEVENBERG_MARQUARDT
    max_iterations: int = 20
    tolerance: float = 1e-7
    initial_damping: float = 1e-3
    degenerate_rcond: float = 1e-10
    multi_start_below: int = 6
    huber: HuberConfig = field(default_factory=HuberConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.mode, SolverMode):
            raise ConfigError(f"mode must be a SolverMode, got {self.mode!r}")
        if self.max_iterations < 0:
            raise ConfigError(f"max_iterations must be >= 0, got {self.max_iterations}")
        for name in ("tolerance", "initial_damping", "degenerate_rcond"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


class PnPSolution(NamedTuple):
    """Result of :func:`solve_pnp` (all tensors detached).

    Attributes:
        pose: ``(B, dim)`` optimal poses (7: t, q_wxyz; 4: t, yaw).  NaN where INVALID_INPUT.
        cost: ``(B,)`` robust cost at ``pose``.
        covariance: ``(B, D, D)`` Laplace covariance over the tangent increment
            (:mod:`epropnp_lib.conventions`); NaN where DEGENERATE or INVALID_INPUT.
        status: ``(B,)`` int64 :class:`SolveStatus` values.
        iterations: ``(B,)`` int64 iterations each element used.
    """

    pose: torch.Tensor
    cost: torch.Tensor
    covariance: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor


def temper_solution(solution: PnPSolution, temperature: float) -> PnPSolution:
    """``solution`` of the tempered likelihood ``exp(-cost / T)``: the same pose, status and
    iterations, ``cost / T`` and ``T`` times the covariance (the solution of the weights
    :func:`~epropnp_lib.pnp.cost.tempered_weights`, without solving again).

    Raises:
        ConfigError: ``temperature`` is not a positive finite number.
    """
    check_temperature(temperature)
    if temperature == 1.0:
        return solution
    return solution._replace(cost=solution.cost / temperature,
                             covariance=solution.covariance * temperature)


def normal_equations(terms: CostTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton Hessian ``(S, D, D)`` and gradient ``(S, D)`` of the robust cost from
    :class:`CostTerms` with Jacobian (``H = sum_i rho'_i J_i^T J_i``, ``g = sum_i rho'_i J_i^T
    f_i``, the IRLS form of Eq. 11).  Differentiable."""
    assert terms.jacobian is not None
    rows = torch.cat((terms.jacobian, terms.residual.unsqueeze(-1)), dim=-1)  # S + (N, 2, D + 1)
    return normal_equations_from_rows(rows.movedim(-3, -1).movedim(-3, 0), terms.robust_weight)


def laplace_covariance(
    hess: torch.Tensor, rcond: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Laplace covariance ``H^-1`` ``(S, D, D)`` and a degenerate flag ``(S,)``.

    The Hessian is Jacobi-scaled first, so that the conditioning test does not depend on units
    (metres vs. radians).  An element is degenerate when the scaled Hessian is not numerically
    positive definite (its Cholesky factorisation fails) or its reciprocal condition number in
    the Frobenius norm, ``1 / (||H_s||_F ||H_s^-1||_F)`` (within a factor ``D`` of the
    eigenvalue ratio), is at most ``rcond``.  One Cholesky factorisation per element, no
    eigen-decomposition.
    """
    d = hess.diagonal(dim1=-2, dim2=-1).clamp_min(0)
    d_ok = d > d.amax(-1, keepdim=True) * 1e-14  # False for a zero or NaN diagonal
    scale = torch.where(d_ok, d, 1.0).rsqrt()
    s2 = scale[..., :, None] * scale[..., None, :]
    hs = hess * s2
    # LAPACK's Cholesky reads one triangle and stops with info > 0 at a non-positive or NaN
    # pivot (a non-finite Hessian fails there), one matrix at a time.
    chol, info = torch.linalg.cholesky_ex(hs)
    pos_def = info == 0
    eye = torch.eye(hs.shape[-1], dtype=hs.dtype, device=hs.device)
    inv_s = torch.cholesky_inverse(torch.where(pos_def[..., None, None], chol, eye))
    norms = torch.linalg.matrix_norm(hs) * torch.linalg.matrix_norm(inv_s)
    degenerate = ~(d_ok.all(-1) & pos_def & (norms * rcond < 1.0))
    return torch.where(degenerate[..., None, None], torch.nan, inv_s) * s2, degenerate


@torch.no_grad()
def solve_pnp(
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    dof: int = 6,
    pose_init: torch.Tensor | None = None,
    config: SolverConfig | None = None,
) -> PnPSolution:
    """Solve a batch of weighted robust PnP problems (Eq. 11).

    Args:
        x3d: ``(B, N, 3)`` object points.
        x2d: ``(B, N, 2)`` image points in pixels.
        w2d: ``(B, N, 2)`` non-negative weights (per image axis).
        cam_mats: ``(B, 3, 3)`` intrinsics with last row (0, 0, 1).
        dof: 6 (pose ``(t, q_wxyz)``) or 4 (pose ``(t, yaw)``, yaw about camera y).
        pose_init: optional ``(B, dim)`` initial poses; otherwise the closed-form initialisers
            of :mod:`epropnp_lib.pnp.init` are used.
        config: :class:`SolverConfig`.

    Returns:
        :class:`PnPSolution`.

    Example::

        >>> from epropnp_lib.pnp.problems import random_problems
        >>> p = random_problems(4, 16, generator=torch.Generator().manual_seed(0))
        >>> sol = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
        >>> bool((sol.pose - p.pose).abs().max() < 1e-3)
        True
    """
    space = pose_space(dof)
    with torch.inference_mode():  # nothing here is differentiated (see solve_validated)
        prob = validate_problem(space, x3d, x2d, w2d, cam_mats, pose_init)
    return solve_validated(space, prob, config or SolverConfig())


@torch.no_grad()
def solve_validated(
    space: type[PoseSpace],
    prob: ValidatedProblem,
    cfg: SolverConfig,
    delta: torch.Tensor | None = None,
) -> PnPSolution:
    """:func:`solve_pnp` on a problem already checked by :func:`validate_problem` (for
    callers that need the sanitised tensors themselves, so the checks run once).

    ``delta: (B,)`` replaces the Huber thresholds of ``cfg.huber`` (e.g. robust scale
    estimates, :mod:`epropnp_lib.pnp.robust`).

    The solve runs in ``torch.inference_mode`` (no autograd or version-counter bookkeeping:
    ~10-15 % of a small batch's time, which is per-op overhead); the returned tensors are
    built outside it, so they are ordinary tensors that autograd code may use and save.
    """
    with torch.inference_mode():
        st, iters, converged, cov, degenerate = _solve(space, prob, cfg, delta)
    # (CONVERGED, MAX_ITERATIONS) = (0, 1), then the worse statuses on top.
    status = (~converged).to(torch.int64)
    status.masked_fill_(degenerate, SolveStatus.DEGENERATE)
    cov = cov.masked_fill(degenerate[:, None, None], torch.nan)
    pose, cost = st.pose.clone(), st.cost.clone()
    if not bool(prob.valid.all()):
        invalid = ~prob.valid
        status.masked_fill_(invalid, SolveStatus.INVALID_INPUT)
        cov.masked_fill_(invalid[:, None, None], torch.nan)
        pose.masked_fill_(invalid[:, None], torch.nan)
        cost.masked_fill_(invalid, torch.nan)
    return PnPSolution(pose, cost, cov, status, iters.clone())


def _solve(
    space: type[PoseSpace], prob: ValidatedProblem, cfg: SolverConfig, delta: torch.Tensor | None
) -> tuple[SolverState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The body of :func:`solve_validated`: final state, iterations, converged flags,
    covariance and degenerate flags (all ``(B, ...)``)."""
    spread2 = point_spread_sq(prob.x2d)  # (B,): the Huber threshold's scale, and below
    if delta is None:
        delta = cfg.huber.threshold(prob.x2d, prob.w2d, spread2)
    pts = PointSet.from_tensors(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats, delta)
    w_point = prob.w2d[..., 0] + prob.w2d[..., 1]  # (B, N) (a sum over the size-2 dim is slower)
    cost_floor = cost_round_off(prob, spread2)
    pose = initial_pose(space, prob, pts, cfg, cost_floor)
    st, iters, converged = optimize_pose(space, pose, pts, cfg, cost_floor)
    pose = st.pose

    # The Hessian carries the round-off of the input dtype: scale the threshold with it.
    rcond = max(cfg.degenerate_rcond, 10.0 * torch.finfo(prob.x3d.dtype).eps)
    cov, degenerate = laplace_covariance(st.hess.double(), rcond)
    cov = cov.to(pose.dtype)
    # Most of the weight behind the camera is degenerate too.
    degenerate |= _behind(st.depth, w_point)
    degenerate |= ~torch.isfinite(pose.sum(-1) + st.cost)  # a NaN/inf anywhere
    return st, iters, converged, cov, degenerate


#: Iterations of every multi-start start before the best few (:data:`MULTI_START_KEPT`) are
#: solved in full: the starts that lead to the global optimum have the lowest costs by then.
MULTI_START_ITERATIONS = 3
#: Starts of a multi-start solved in full.
MULTI_START_KEPT = 3
#: 6DoF problems with fewer points than this (where the DLT is undetermined) start from the
#: P3P poses of their point triples (:mod:`epropnp_lib.pnp.p3p`) instead of the 24 rotation
#: hypotheses (while ``SolverConfig.multi_start_below`` allows a multi-start).
MINIMAL_POINTS_BELOW = 6


def initial_pose(
    space: type[PoseSpace],
    prob: ValidatedProblem,
    pts: PointSet,
    cfg: SolverConfig,
    cost_floor: torch.Tensor,
) -> torch.Tensor:
    """The solver's start ``(B, dim)``: ``prob.pose_init``, or the closed-form candidate of
    least cost (with a multi-start for 6DoF problems of fewer than ``cfg.multi_start_below``
    points); ``pts`` is ``prob`` as a :class:`PointSet`, ``cost_floor: (B,)`` the round-off
    level of the cost (see :func:`optimize_pose`)."""
    if prob.pose_init is not None:
        return space.canonical(prob.pose_init)
    num_points = prob.x3d.shape[1]
    dof = space.tangent_dim
    init = init_6dof if dof == 6 else init_4dof
    cands = init(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats)  # (C, B, dim)
    # Non-finite entries: the first candidate's, made finite (the solver reports the rest).
    first = cands[:1].nan_to_num(0.0)
    cands = first if cands.shape[0] == 1 else torch.where(cands.isfinite(), cands, first)
    if dof == 6 and num_points < min(cfg.multi_start_below, MINIMAL_POINTS_BELOW):
        cands = _minimal_starts(space, prob, pts, cfg, cost_floor, cands)
    elif dof == 6 and num_points < cfg.multi_start_below:
        cands = _multi_start(space, prob, pts, cfg, cost_floor, cands)
    if cands.shape[0] == 1:
        return cands[0]
    cand_cost = point_terms(space, cands, pts).half_rho.sum(-1).nan_to_num(torch.inf)
    best = cand_cost.argmin(0)
    return torch.take_along_dim(cands, best[None, :, None], dim=0)[0]


def _best_of_full_solves(
    space: type[PoseSpace], starts: torch.Tensor, pts: PointSet, cfg: SolverConfig,
    cost_floor: torch.Tensor, costs: torch.Tensor,
) -> torch.Tensor:
    """The optimum ``(1, B, dim)`` of least cost after full solves from the
    :data:`MULTI_START_KEPT` starts of least ``costs: (S, B)`` among ``starts: (S, B, dim)``."""
    n_starts, batch = costs.shape
    keep = min(MULTI_START_KEPT, n_starts)
    top = costs.nan_to_num(torch.inf).topk(keep, dim=0, largest=False).indices  # (keep, B)
    kept = torch.take_along_dim(starts, top[..., None], dim=0)
    st, _, _ = optimize_pose(space, kept.flatten(0, 1), pts.repeat(keep), cfg,
                             cost_floor.repeat(keep))
    cost = st.cost.unflatten(0, (keep, batch)).nan_to_num(torch.inf)
    return torch.take_along_dim(st.pose.unflatten(0, (keep, batch)),
                                cost.argmin(0)[None, :, None], dim=0)


def _multi_start(
    space: type[PoseSpace], prob: ValidatedProblem, pts: PointSet, cfg: SolverConfig,
    cost_floor: torch.Tensor, cands: torch.Tensor,
) -> torch.Tensor:
    """Multi-start from ``cands: (C, B, 7)`` and the 24 rotation hypotheses: a few iterations
    from every start, then full solves from the best few; the best optimum ``(1, B, 7)``."""
    hyp = hypotheses_6dof(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats)
    starts = torch.cat((cands, hyp.to(cands.dtype)), dim=0)
    n_starts, batch = starts.shape[:2]
    short = dataclasses.replace(cfg, max_iterations=min(cfg.max_iterations,
                                                        MULTI_START_ITERATIONS))
    st_all, _, _ = optimize_pose(
        space, starts.flatten(0, 1), pts.repeat(n_starts), short, cost_floor.repeat(n_starts)
    )
    return _best_of_full_solves(space, st_all.pose.unflatten(0, (n_starts, batch)), pts, cfg,
                                cost_floor, st_all.cost.unflatten(0, (n_starts, batch)))


def _minimal_starts(
    space: type[PoseSpace], prob: ValidatedProblem, pts: PointSet, cfg: SolverConfig,
    cost_floor: torch.Tensor, cands: torch.Tensor,
) -> torch.Tensor:
    """The start ``(1, B, 7)`` for fewer than :data:`MINIMAL_POINTS_BELOW` points: among
    ``cands: (C, B, 7)`` and the P3P poses of every triple of points
    (:func:`~epropnp_lib.pnp.p3p.p3p_candidates`), the :data:`MULTI_START_KEPT` of least cost
    run :data:`MULTI_START_ITERATIONS` iterations, and the one of least cost then is the start
    (P3P poses are exact for their triple: by then the one that leads to the global optimum
    is ahead)."""
    xn = normalized_image_points(prob.x2d.double(), prob.cam_mats.double()).mT
    minimal = p3p_candidates(prob.x3d.double(), xn).to(cands.dtype)  # NaN where invalid
    starts = torch.cat((cands, torch.where(minimal.isfinite(), minimal, cands[:1])), dim=0)
    costs = point_terms(space, starts, pts).half_rho.sum(-1).nan_to_num(torch.inf)
    batch = starts.shape[1]
    keep = min(MULTI_START_KEPT, starts.shape[0])
    top = costs.topk(keep, dim=0, largest=False).indices  # (keep, B)
    kept = torch.take_along_dim(starts, top[..., None], dim=0)
    short = dataclasses.replace(cfg, max_iterations=min(cfg.max_iterations,
                                                        MULTI_START_ITERATIONS))
    st, _, _ = optimize_pose(space, kept.flatten(0, 1), pts.repeat(keep), short,
                             cost_floor.repeat(keep))
    cost = st.cost.unflatten(0, (keep, batch)).nan_to_num(torch.inf)
    return torch.take_along_dim(st.pose.unflatten(0, (keep, batch)),
                                cost.argmin(0)[None, :, None], dim=0)


class SolverState(NamedTuple):
    """What the LM loop keeps per element (all ``(B, ...)``)."""

    pose: torch.Tensor
    cost: torch.Tensor
    #: ``(B, D + 1, D + 1)`` ``[[H, g], [g^T, .]]``: Gauss-Newton Hessian and gradient.
    normal: torch.Tensor
    #: ``(B, N)`` camera-frame depth of the points (before clamping).
    depth: torch.Tensor

    @property
    def hess(self) -> torch.Tensor:
        d = self.normal.shape[-1] - 1
        return self.normal[:, :d, :d]

    @property
    def grad(self) -> torch.Tensor:
        d = self.normal.shape[-1] - 1
        return self.normal[:, :d, d]


def _state(space: type[PoseSpace], pose: torch.Tensor, pts: PointSet) -> SolverState:
    # The fused CPU kernel where it applies (epropnp_lib.native).
    native = state_native(space.tangent_dim, pose, pts.x, pts.wk, pts.wc, pts.delta, MIN_DEPTH)
    if native is not None:
        return SolverState(pose, *native)
    terms = point_terms(space, pose, pts, with_jacobian=True)
    assert terms.rows is not None
    return SolverState(pose, terms.half_rho.sum(-1),
                  augmented_normal_matrix(terms.rows, terms.robust_weight), terms.depth)


def _behind(depth: torch.Tensor, w_point: torch.Tensor) -> torch.Tensor:
    """``(B,)`` whether most of the weight ``w_point: (B, N)`` is at or behind the camera
    (``depth: (B, N)``)."""
    return ((depth <= MIN_DEPTH) * w_point).sum(-1) > 0.5 * w_point.sum(-1)


#: The loop gathers the still-active elements into a smaller batch once at most half of them
#: are left, if the batch has at least this many points in all (below, per-op overhead
#: dominates and masked updates of the whole batch are cheaper than gathering) ...
COMPACT_MIN_POINTS = 8192
#: ... or once at most this fraction of a batch of at least :data:`COMPACT_MIN_BATCH`
#: elements is left (a few slow elements would otherwise carry the whole batch through the
#: remaining iterations).
COMPACT_FEW_LEFT = 0.125
COMPACT_MIN_BATCH = 64


def cost_round_off(prob: ValidatedProblem, spread_sq: torch.Tensor) -> torch.Tensor:
    """``(B,)`` cost change below which round-off dominates: the cost if every residual were as
    large as the 2D spread (``spread_sq: (B,)``), times the relative round-off squared."""
    cost_scale = 0.5 * (prob.w2d * prob.w2d).sum(dim=(-2, -1)) * spread_sq
    return cost_scale * (100.0 * torch.finfo(prob.x3d.dtype).eps) ** 2


def optimize_pose(
    space: type[PoseSpace],
    pose: torch.Tensor,
    pts: PointSet,
    cfg: SolverConfig,
    cost_floor: torch.Tensor,
) -> tuple[SolverState, torch.Tensor, torch.Tensor]:
    """The LM / GN loop with per-element early exit, from ``pose: (B, dim)``.

    ``cost_floor: (B,)`` is the cost change below which round-off dominates (noise-free
    problems have zero cost at the optimum).

    Returns:
        the final :class:`SolverState`, iteration counts ``(B,)`` and converged flags ``(B,)``.
    """
    lm = cfg.mode is SolverMode.LEVENBERG_MARQUARDT
    damping = pose.new_full(pose.shape[:1], cfg.initial_damping if lm else 1e-9)
    nu = torch.full_like(damping, 2.0)
    st = _state(space, pose, pts)
    return _iterate(space, st, damping, nu, pts, cfg, cost_floor, cfg.max_iterations)


def _lm_update(
    active: torch.Tensor,
    decrease: torch.Tensor,
    predicted: torch.Tensor,
    small_cost: torch.Tensor,
    small_step: torch.Tensor,
    damping: torch.Tensor,
    nu: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nielsen's trust-region update of one LM iteration, all ``(B,)``: from the actual and
    the predicted cost decrease, ``(accept, stalled, hopeless, damping, nu)``."""
    accept = active & (decrease >= 0)  # False for a non-finite step or new cost
    # Stalled at the numerical floor: a tiny step that changes nothing measurable.
    stalled = active & small_cost & small_step
    # Gain ratio; the model's decrease is >= 0 (0 only at a zero gradient, where the step is 0
    # too): floor it at the dtype's smallest normal number, never 0.  The damping of stopped
    # elements is never used again.
    rho = decrease / predicted.clamp_min(torch.finfo(predicted.dtype).tiny)
    shrink = (2.0 * rho - 1.0).pow_(3).neg_().add_(1.0).clamp_(1.0 / 3.0, 1.0)
    damping = (damping * torch.where(accept, shrink, nu)).clamp_(1e-12, 1e12)
    nu = torch.where(accept, 2.0, nu * 2.0)
    hopeless = active & (damping >= 1e12)
    return accept, stalled, hopeless, damping, nu


def _iterate(
    space: type[PoseSpace],
    st: SolverState,
    damping: torch.Tensor,
    nu: torch.Tensor,
    pts: PointSet,
    cfg: SolverConfig,
    cost_floor: torch.Tensor,
    max_iterations: int,
) -> tuple[SolverState, torch.Tensor, torch.Tensor]:
    """Up to ``max_iterations`` LM / GN iterations of all elements of ``st`` (see
    :func:`optimize_pose`); ``damping, nu: (B,)`` is the trust-region state.

    Every iteration evaluates the whole batch and updates the still-active elements through
    masks; once few are left in a large batch it continues on the gathered active elements
    (:data:`COMPACT_MIN_POINTS`, :data:`COMPACT_FEW_LEFT`).  An element whose next
    near-Gauss-Newton step is below the tolerance, or whose cost decrease predicted by the
    quadratic model is below the round-off of its cost, stops without taking the step.
    """
    batch, dof = st.normal.shape[0], st.normal.shape[-1] - 1
    # Active elements at which the loop gathers them (never, below 1).
    compact_at = (batch // 2 if batch * pts.x.shape[-1] >= COMPACT_MIN_POINTS
                  else int(batch * COMPACT_FEW_LEFT) if batch >= COMPACT_MIN_BATCH else 0)
    device = st.pose.device
    lm = cfg.mode is SolverMode.LEVENBERG_MARQUARDT
    active = torch.ones(batch, dtype=torch.bool, device=device)
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    iters = torch.zeros(batch, dtype=torch.int64, device=device)
    round_off = 100.0 * torch.finfo(st.pose.dtype).eps
    tol = max(cfg.tolerance, round_off)
    # A step is negligible below tol: its translation relative to the translation's scale
    # (taken at the start: it barely changes while the steps are that small), its rotation in
    # radians (one tolerance for both would let a well-determined rotation stop early).
    inv_t = torch.linalg.vector_norm(st.pose[:, :3], dim=-1, keepdim=True).add_(1.0)
    inv_t.reciprocal_().mul_(1.0 / tol)
    step_scale = torch.cat((inv_t.expand(-1, 3), inv_t.new_full((batch, dof - 3), 1.0 / tol)), -1)
    for it in range(max_iterations):
        if compact_at and int(active.sum()) <= compact_at:
            idx = active.nonzero().squeeze(-1)
            sub, sub_iters, sub_conv = _iterate(
                space, SolverState(*(t[idx] for t in st)), damping[idx], nu[idx], pts.select(idx),
                cfg, cost_floor[idx], max_iterations - it,
            )
            st = SolverState(*(t.index_put((idx,), s) for t, s in zip(st, sub, strict=True)))
            iters = iters.index_put((idx,), iters[idx] + sub_iters)
            converged = converged.index_put((idx,), sub_conv)
            break
        iters += active
        hess, grad = st.hess, st.grad
        # Damped step: (H + lambda diag(H)) s = -g, with the diagonal floored relative to its
        # largest entry (so that a zero diagonal entry cannot make the system singular).  A
        # singular system gives a non-finite step, rejected below like any step whose cost is
        # not finite (every comparison with NaN is False).
        diag = hess.diagonal(dim1=-2, dim2=-1)
        extra = damping[:, None] * torch.maximum(diag, diag.amax(-1, keepdim=True) * 1e-9)
        neg_step = torch.linalg.solve_ex(hess + torch.diag_embed(extra), grad)[0]  # -s
        small_step = torch.linalg.vector_norm(neg_step * step_scale, dim=-1) <= 1.0
        # Decrease of the quadratic model, -g.s - s.H.s / 2 = (lambda D s - g).s / 2 (as
        # H s = -g - lambda D s) = (g + lambda D (-s)).(-s) / 2.
        predicted = 0.5 * torch.linalg.vecdot(torch.addcmul(grad, extra, neg_step), neg_step)
        near_gn = damping < 1.0
        # Converged without evaluating: the next near-Gauss-Newton step is negligible, or so is
        # what it could gain compared with the round-off of the cost (which would otherwise
        # reject step after step at the optimum of a noisy float32 problem).  (cost >= 0.)
        round_off_cost = torch.add(cost_floor, st.cost, alpha=round_off)
        done_now = active & near_gn & (small_step | (predicted <= round_off_cost))
        converged |= done_now
        active &= ~done_now
        if not bool(active.any()):  # all stopped without needing another evaluation
            break
        new = _state(space, space.retract(st.pose, neg_step.neg_()), pts)
        decrease = st.cost - new.cost
        tol_cost = round_off_cost if tol == round_off else torch.add(cost_floor, st.cost, alpha=tol)
        small_cost = decrease.abs() <= tol_cost
        if lm:
            accept, stalled, hopeless, damping, nu = _lm_update(
                active, decrease, predicted, small_cost, small_step, damping, nu)
        else:
            accept = active & torch.isfinite(new.cost)
            near_gn = accept
            stalled = active & ~accept & small_cost
            hopeless = active & ~accept  # Gauss-Newton would only repeat the same step
        if bool(accept.all()):  # (the common case: no per-element selection needed)
            st = new
        else:
            st = SolverState(
                torch.where(accept[:, None], new.pose, st.pose),
                torch.where(accept, new.cost, st.cost),
                torch.where(accept[:, None, None], new.normal, st.normal),
                torch.where(accept[:, None], new.depth, st.depth),
            )
        now_converged = (accept & (small_step | (small_cost & near_gn))) | stalled
        converged |= now_converged
        active &= ~(now_converged | hopeless)
        if not bool(active.any()):
            break
    return st, iters, converged
