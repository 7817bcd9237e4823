"""Batched Levenberg-Marquardt / Gauss-Newton PnP solver with per-element status.

The solver minimises the robust cost of :mod:`epropnp_lib.pnp.cost` over a 6DoF or 4DoF pose.
It never aborts a batch: an element whose input is invalid (NaN/inf, negative weights, a bad
camera matrix) or whose problem is degenerate (singular Hessian at the optimum: all-zero weights,
collinear points, ...) is computed on sanitised data, masked, and reported in
:attr:`PnPSolution.status`, while every other element is solved normally.

The solve is not differentiated (it runs under ``torch.no_grad``); gradients reach the
correspondences through the Monte Carlo loss and the derivative regulariser instead
(:mod:`epropnp_lib.epropnp`, :mod:`epropnp_lib.losses`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.conventions import MIN_DEPTH
from epropnp_lib.errors import ConfigError, DegenerateInputError
from epropnp_lib.geometry.pose import PoseSpace, pose_space
from epropnp_lib.pnp.cost import CostTerms, HuberConfig, evaluate_cost
from epropnp_lib.pnp.init import hypotheses_6dof, init_4dof, init_6dof


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
        tolerance: an element stops when the relative cost decrease and the relative step
            are both below this.
        initial_damping: initial LM damping (relative to the Hessian diagonal).
        multi_start_below: for 6DoF problems with fewer points than this (where the DLT is
            undetermined), also start from 24 rotation hypotheses and keep the best optimum.
        degenerate_rcond: an element whose Jacobi-scaled Hessian has reciprocal condition
            number below this (or below 10 machine epsilons of the input dtype, whichever is
            larger) at the solution is reported DEGENERATE.
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


class ValidatedProblem(NamedTuple):
    """Inputs after :func:`validate_problem`: invalid elements replaced by a benign problem."""

    x3d: torch.Tensor
    x2d: torch.Tensor
    w2d: torch.Tensor
    cam_mats: torch.Tensor
    pose_init: torch.Tensor | None
    valid: torch.Tensor  # (B,) bool


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

    def finite(t: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(t).flatten(1).all(1)

    valid = finite(x3d) & finite(x2d) & finite(w2d) & finite(cam_mats)
    valid &= (w2d >= 0).flatten(1).all(1)
    last_row = cam_mats.new_tensor([0.0, 0.0, 1.0])
    valid &= (cam_mats[:, 2] == last_row).all(-1)
    valid &= (cam_mats[:, 0, 0] > 0) & (cam_mats[:, 1, 1] > 0)
    if pose_init is not None:
        valid &= finite(pose_init)
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
        if space.dim == 7:
            ident[3] = 1.0
        pose_init = torch.where(bad[:, None], ident, pose_init)
    return ValidatedProblem(x3d, x2d, w2d, cam_mats, pose_init, valid)


def normal_equations(terms: CostTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton Hessian ``(S, D, D)`` and gradient ``(S, D)`` of the robust cost.

    ``H = sum_i rho'_i J_i^T J_i``, ``g = sum_i rho'_i J_i^T f_i`` (IRLS form of Eq. 11).
    """
    assert terms.jacobian is not None
    jac = terms.jacobian.flatten(-3, -2)  # (S, 2N, D)
    w = terms.robust_weight.repeat_interleave(2, dim=-1).unsqueeze(-1)  # (S, 2N, 1)
    jw = jac * w
    hess = jw.transpose(-1, -2) @ jac
    grad = (jw.transpose(-1, -2) @ terms.residual.flatten(-2, -1).unsqueeze(-1)).squeeze(-1)
    return hess, grad


def _damped(hess: torch.Tensor, damping: torch.Tensor) -> torch.Tensor:
    diag = hess.diagonal(dim1=-2, dim2=-1)
    floor = diag.amax(-1, keepdim=True).clamp_min(1e-30) * 1e-9
    extra = damping[..., None] * diag.clamp_min(0).maximum(floor)
    return hess + torch.diag_embed(extra)


def _solve_spd(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``a x = b`` for SPD ``a: (S, D, D)``; returns ``x: (S, D)`` (0 where singular)
    and ``ok: (S,)``."""
    chol, info = torch.linalg.cholesky_ex(a)
    ok = info == 0
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    chol = torch.where(ok[..., None, None], chol, eye)
    x = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    x = torch.where(ok[..., None] & torch.isfinite(x).all(-1, keepdim=True), x, 0.0)
    return x, ok


def laplace_covariance(
    hess: torch.Tensor, rcond: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Laplace covariance ``H^-1`` ``(S, D, D)`` and a degenerate flag ``(S,)``.

    The Hessian is Jacobi-scaled before the eigen-check so that the reciprocal condition
    number test does not depend on units (metres vs. radians).
    """
    d = hess.diagonal(dim1=-2, dim2=-1).clamp_min(0)
    d_ok = d > d.amax(-1, keepdim=True).clamp_min(1e-300) * 1e-14
    scale = torch.where(d_ok, d, torch.ones_like(d)).rsqrt()
    hs = hess * scale[..., :, None] * scale[..., None, :]
    hs = 0.5 * (hs + hs.transpose(-1, -2))
    # A non-finite Hessian (overflow) must not make eigh fail for the whole batch.
    finite = torch.isfinite(hs).flatten(-2).all(-1)
    hs = torch.where(finite[..., None, None], hs, torch.eye(hs.shape[-1], dtype=hs.dtype,
                                                             device=hs.device))
    evals, evecs = torch.linalg.eigh(hs)
    degenerate = ~d_ok.all(-1) | (evals[..., 0] <= rcond * evals[..., -1].clamp_min(1e-300))
    degenerate |= ~finite
    inv_evals = torch.where(degenerate[..., None], torch.nan, 1.0 / evals.clamp_min(1e-300))
    cov_s = (evecs * inv_evals[..., None, :]) @ evecs.transpose(-1, -2)
    cov = cov_s * scale[..., :, None] * scale[..., None, :]
    return cov, degenerate


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
    prob = validate_problem(space, x3d, x2d, w2d, cam_mats, pose_init)
    return solve_validated(space, prob, config or SolverConfig())


@torch.no_grad()
def solve_validated(
    space: type[PoseSpace], prob: ValidatedProblem, cfg: SolverConfig
) -> PnPSolution:
    """:func:`solve_pnp` on a problem already checked by :func:`validate_problem` (for
    callers that need the sanitised tensors themselves, so the checks run once)."""
    dof = space.tangent_dim
    delta = cfg.huber.threshold(prob.x2d, prob.w2d)

    def evaluator(reps: int) -> Evaluate:
        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.repeat(reps, *([1] * (t.dim() - 1))) if reps > 1 else t

        a3, a2, aw, ak = (rep(t) for t in (prob.x3d, prob.x2d, prob.w2d, prob.cam_mats))
        d = None if delta is None else rep(delta)

        def evaluate(pose: torch.Tensor, idx: torch.Tensor | None) -> CostTerms:
            if idx is None:
                return evaluate_cost(space, pose, a3, a2, aw, ak, d, True)
            di = None if d is None else d[idx]
            return evaluate_cost(space, pose, a3[idx], a2[idx], aw[idx], ak[idx], di, True)

        return evaluate

    evaluate = evaluator(1)
    batch, num_points = prob.x3d.shape[:2]
    w_point = prob.w2d.sum(-1)  # (B, N)
    # Cost if every residual were as large as the 2D spread, times relative round-off squared.
    spread2 = prob.x2d.var(dim=-2).sum(-1)
    cost_scale = 0.5 * (prob.w2d * prob.w2d).sum(dim=(-2, -1)) * spread2
    cost_floor = cost_scale * (100.0 * torch.finfo(prob.x3d.dtype).eps) ** 2
    if prob.pose_init is not None:
        pose = space.canonical(prob.pose_init)
    else:
        init = init_6dof if dof == 6 else init_4dof
        cands = init(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats)  # (C, B, dim)
        cands = torch.where(torch.isfinite(cands), cands, cands[:1].nan_to_num(0.0))
        if dof == 6 and num_points < cfg.multi_start_below:
            hyp = hypotheses_6dof(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats)
            starts = torch.cat((cands, hyp.to(cands.dtype)), dim=0)
            n_starts = starts.shape[0]
            st_all, _, _ = _optimize(
                space, starts.flatten(0, 1), evaluator(n_starts), w_point.repeat(n_starts, 1),
                cfg, cost_floor.repeat(n_starts),
            )
            cost_all = st_all.cost.unflatten(0, (n_starts, batch)).nan_to_num(torch.inf)
            best = cost_all.argmin(0)
            cands = torch.take_along_dim(
                st_all.pose.unflatten(0, (n_starts, batch)), best[None, :, None], dim=0
            )
        if cands.shape[0] > 1:
            cand_cost = evaluate_cost(space, cands, prob.x3d, prob.x2d, prob.w2d, prob.cam_mats,
                                      delta).cost.nan_to_num(torch.inf)
            best = cand_cost.argmin(0)
            pose = torch.take_along_dim(cands, best[None, :, None], dim=0)[0]
        else:
            pose = cands[0]
    st, iters, converged = _optimize(space, pose, evaluate, w_point, cfg, cost_floor)
    pose = st.pose

    # The Hessian carries the round-off of the input dtype: scale the threshold with it.
    rcond = max(cfg.degenerate_rcond, 10.0 * torch.finfo(prob.x3d.dtype).eps)
    cov, degenerate = laplace_covariance(st.hess.double(), rcond)
    cov = cov.to(pose.dtype)
    # Most of the weight behind the camera is degenerate too.
    degenerate |= st.behind | ~torch.isfinite(pose).all(-1) | ~torch.isfinite(st.cost)
    status = torch.where(converged, SolveStatus.CONVERGED, SolveStatus.MAX_ITERATIONS)
    status = torch.where(degenerate, SolveStatus.DEGENERATE, status)
    status = torch.where(prob.valid, status, SolveStatus.INVALID_INPUT).to(torch.int64)
    cov = torch.where(degenerate[:, None, None] | ~prob.valid[:, None, None], torch.nan, cov)
    pose = torch.where(prob.valid[:, None], pose, torch.nan)
    cost = torch.where(prob.valid, st.cost, torch.nan)
    return PnPSolution(pose, cost, cov, status, iters)


class _State(NamedTuple):
    """What the LM loop keeps per element (all ``(B, ...)``)."""

    pose: torch.Tensor
    cost: torch.Tensor
    hess: torch.Tensor
    grad: torch.Tensor
    behind: torch.Tensor  # bool: most of the weight at or behind the camera


def _state(pose: torch.Tensor, terms: CostTerms, w_point: torch.Tensor) -> _State:
    hess, grad = normal_equations(terms)
    behind = ((terms.depth <= MIN_DEPTH) * w_point).sum(-1) > 0.5 * w_point.sum(-1)
    return _State(pose, terms.cost, hess, grad, behind)


#: The evaluate callback of :func:`_optimize`: cost terms (with Jacobian) at poses
#: ``(n, dim)`` of the elements ``idx`` (``None``: all elements).
Evaluate = Callable[[torch.Tensor, torch.Tensor | None], CostTerms]


def _optimize(
    space: type[PoseSpace],
    pose: torch.Tensor,
    evaluate: Evaluate,
    w_point: torch.Tensor,
    cfg: SolverConfig,
    cost_floor: torch.Tensor,
) -> tuple[_State, torch.Tensor, torch.Tensor]:
    """The LM / GN loop with per-element early exit.

    Only the still-active elements are evaluated in each iteration (the batch is compacted),
    and an element whose next near-Gauss-Newton step is already below the tolerance stops
    without evaluating it.  ``w_point: (B, N)`` are the per-point weights (for the
    behind-camera test) and ``cost_floor: (B,)`` the cost change below which round-off
    dominates (noise-free problems have zero cost at the optimum).

    Returns:
        the final :class:`_State`, iteration counts ``(B,)`` and converged flags ``(B,)``.
    """
    batch = pose.shape[0]
    device = pose.device
    st = _state(pose, evaluate(pose, None), w_point)
    lm = cfg.mode is SolverMode.LEVENBERG_MARQUARDT
    damping = pose.new_full((batch,), cfg.initial_damping if lm else 1e-9)
    nu = pose.new_full((batch,), 2.0)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    iters = torch.zeros(batch, dtype=torch.int64, device=device)
    tol = max(cfg.tolerance, 100.0 * torch.finfo(pose.dtype).eps)
    for it in range(cfg.max_iterations):
        # idx: the active elements, or None while all are active (no gathers needed).
        idx: torch.Tensor | None = None
        if it > 0:
            idx = active.nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            if idx.numel() == batch:
                idx = None

        def where_(mask: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
            """Indexer of the elements selected by ``mask`` (over the current subset)."""
            return mask if idx is None else idx[mask]

        def sub(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
            return t if idx is None else t[idx]

        if idx is None:
            iters += 1
        else:
            iters[idx] += 1
        s_pose, s_cost, s_hess, s_grad = (sub(t, idx) for t in st[:4])
        s_damp, s_nu = sub(damping, idx), sub(nu, idx)
        step, ok = _solve_spd(_damped(s_hess, s_damp), -s_grad)
        small_step = step.norm(dim=-1) <= tol * (1.0 + s_pose[:, :3].norm(dim=-1))
        # Converged without evaluating: the next near-Gauss-Newton step is negligible.
        done_now = ok & small_step & (s_damp < 1.0)
        if bool(done_now.any()):
            converged[where_(done_now, idx)] = True
            active[where_(done_now, idx)] = False
            go = ~done_now
            idx = go.nonzero().squeeze(-1) if idx is None else idx[go]
            if idx.numel() == 0:
                break
            step, ok, small_step = step[go], ok[go], small_step[go]
            s_pose, s_cost, s_hess, s_grad = s_pose[go], s_cost[go], s_hess[go], s_grad[go]
            s_damp, s_nu = s_damp[go], s_nu[go]
        new_pose = space.retract(s_pose, step)
        new = _state(new_pose, evaluate(new_pose, idx), sub(w_point, idx))
        decrease = s_cost - new.cost
        finite = torch.isfinite(new.cost) & torch.isfinite(new_pose).all(-1)
        small_cost = decrease.abs() <= tol * s_cost.abs().clamp_min(1e-30) + sub(cost_floor, idx)
        if lm:
            h_step = (s_hess @ step.unsqueeze(-1)).squeeze(-1)
            predicted = -(s_grad * step).sum(-1) - 0.5 * (step * h_step).sum(-1)
            rho = decrease / predicted.clamp_min(1e-300)
            near_gn = s_damp < 1.0
            accept = ok & finite & (decrease >= 0)
            # Stalled at the numerical floor: a tiny step that changes nothing measurable.
            stalled = ~accept & ok & small_cost & small_step
            new_damp = torch.where(
                accept,
                s_damp * (1.0 - (2.0 * rho - 1.0).pow(3)).clamp(1.0 / 3.0, 1.0),
                s_damp * s_nu,
            ).clamp(1e-12, 1e12)
            new_nu = torch.where(accept, torch.full_like(s_nu, 2.0), s_nu * 2.0)
            if idx is None:
                damping, nu = new_damp, new_nu
            else:
                damping[idx], nu[idx] = new_damp, new_nu
            hopeless = new_damp >= 1e12
        else:
            accept = ok & finite
            near_gn = accept
            stalled = ~accept & ok & small_cost
            hopeless = ~ok
        if idx is None and bool(accept.all()):
            st = new
        else:
            target = where_(accept, idx)
            for full, part in zip(st, new, strict=True):
                full[target] = part[accept]
        now_converged = (accept & (small_step | (small_cost & near_gn))) | stalled
        converged[where_(now_converged, idx)] = True
        active[where_(now_converged | hopeless, idx)] = False
    return st, iters, converged
