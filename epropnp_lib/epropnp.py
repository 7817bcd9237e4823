"""The EPro-PnP layer: pose distribution by Adaptive Multiple Importance Sampling (Alg. 1).

``EProPnP6DoF`` and ``EProPnP4DoF`` turn weighted 2D-3D correspondences into

* the optimal pose ``y*`` and its Laplace covariance (detached; :func:`solve_pnp`),
* ``T * K'`` pose samples with importance log-weights ``log v_j = -cost(y_j) - log Q(y_j)``
  that carry gradients to ``x3d``, ``x2d`` and ``w2d`` (the second term of Eq. 5 is
  ``log_normalizer = logsumexp_j(log v_j) - log(T K')``),
* the reprojection cost at a target pose (first term of Eq. 5) when one is given,
* the one-step pose ``y* (+) dy`` of Eq. 9, differentiable, for the regulariser of Eq. 10.

Proposals are factorised into position and orientation (paper 3.2): a multivariate t for the
position (Lebesgue measure on R^3), and a von Mises + uniform mixture for the yaw (Lebesgue
measure on [-pi, pi)) or an angular central Gaussian for the unit quaternion (uniform surface
measure on S^3, area 2 pi^2; q and -q both count, which adds the constant log 2 to the
normaliser and changes no gradient).  The initial proposal is fitted to ``y*`` and its
covariance; each later one to all weighted samples so far.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, cast, overload

import torch
from torch import nn

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.distributions import (
    AngularCentralGaussian,
    MultivariateT,
    VonMisesUniformMix,
)
from epropnp_lib.distributions.von_mises import MAX_KAPPA
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.pose import Pose4DoF, Pose6DoF, PoseSpace
from epropnp_lib.geometry.rotations import quat_multiply
from epropnp_lib.pnp.cost import CostTerms, evaluate_cost
from epropnp_lib.pnp.robust import RobustConfig, RobustPnPSolution, solve_pnp_robust
from epropnp_lib.pnp.sample_cost import sample_cost
from epropnp_lib.pnp.solver import (
    PnPSolution,
    SolverConfig,
    SolveStatus,
    normal_equations,
    solve_pnp,
    solve_validated,
)
from epropnp_lib.pnp.validation import ValidatedProblem, validate_problem


@dataclass(frozen=True)
class MonteCarloConfig:
    """Settings of the AMIS Monte Carlo forward.

    Attributes:
        num_iterations: AMIS iterations ``T`` (paper: 4).
        num_samples: samples per iteration ``K'`` (paper: 128).
        t_df: degrees of freedom of the position proposal.
        uniform_mix: weight of the uniform component of the yaw proposal (4DoF).
        moment_match: fit the position proposal's scale so that its covariance equals the
            weighted sample covariance (``True``), or use that covariance as the scale matrix,
            a proposal wider by ``sqrt(df / (df - 2))`` (``False``, the default, as in the
            reference implementation: AMIS with few samples per iteration is biased low when
            the fitted proposals are too narrow).
        kappa_scale: factor on the fitted von Mises concentration (reference: 0.33, a wider
            proposal for the same reason).
        acg_fit_iterations: Tyler fixed-point iterations when fitting the quaternion proposal
            (it is a proposal: a few iterations from the weighted second moment suffice).
        step_eps: relative damping ``eps`` of the one-step pose of Eq. 9 (times the mean
            diagonal of ``J^T J``).
        solver: settings of the PnP solve that gives ``y*``.
    """

    num_iterations: int = 4
    num_samples: int = 128
    t_df: float = 3.0
    uniform_mix: float = 0.25
    moment_match: bool = False
    kappa_scale: float = 0.33
    acg_fit_iterations: int = 3
    step_eps: float = 1e-5
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        if self.num_iterations < 1 or self.num_samples < 1:
            raise ConfigError("num_iterations and num_samples must be >= 1")
        if not self.t_df > 0:
            raise ConfigError(f"t_df must be positive, got {self.t_df}")
        if not 0.0 <= self.uniform_mix < 1.0:
            raise ConfigError(f"uniform_mix must be in [0, 1), got {self.uniform_mix}")
        if not self.step_eps > 0:
            raise ConfigError(f"step_eps must be positive, got {self.step_eps}")


class EProPnPResult(NamedTuple):
    """Output of :meth:`EProPnPBase.forward` (``K = T * K'`` samples, ``D`` tangent dim).

    Attributes:
        pose: ``(B, dim)`` optimal pose ``y*`` (detached).
        covariance: ``(B, D, D)`` Laplace covariance at ``y*`` (detached).
        cost: ``(B,)`` cost at ``y*`` (detached).
        status: ``(B,)`` :class:`~epropnp_lib.pnp.solver.SolveStatus` values.
        pose_samples: ``(K, B, dim)`` samples (detached).
        log_weights: ``(K, B)`` importance log-weights (differentiable).
        log_normalizer: ``(B,)`` Monte Carlo estimate of ``log int exp(-cost(y)) dy``
            (differentiable; L_pred of Eq. 5).
        target_cost: ``(B,)`` cost at the target pose (differentiable; L_tgt of Eq. 5), or
            ``None`` without a target.
        pose_step: ``(B, dim)`` ``y* (+) dy`` of Eq. 9 (differentiable), or ``None``.
    """

    pose: torch.Tensor
    covariance: torch.Tensor
    cost: torch.Tensor
    status: torch.Tensor
    pose_samples: torch.Tensor
    log_weights: torch.Tensor
    log_normalizer: torch.Tensor
    target_cost: torch.Tensor | None
    pose_step: torch.Tensor | None

    @property
    def valid(self) -> torch.Tensor:
        """``(B,)`` bool: elements whose solve is usable (CONVERGED or MAX_ITERATIONS)."""
        return self.status <= SolveStatus.MAX_ITERATIONS


class _Proposal(NamedTuple):
    position: MultivariateT
    orientation: VonMisesUniformMix | AngularCentralGaussian

    @staticmethod
    def stack(proposals: list[_Proposal]) -> _Proposal:
        """``M`` proposals of batch ``(B,)`` as one of batch ``(M, B)``."""
        ori = [p.orientation for p in proposals]  # one type (checked by ``stack``)
        orientation: VonMisesUniformMix | AngularCentralGaussian
        if isinstance(ori[0], AngularCentralGaussian):
            orientation = AngularCentralGaussian.stack(cast(list[AngularCentralGaussian], ori))
        else:
            orientation = VonMisesUniformMix.stack(cast(list[VonMisesUniformMix], ori))
        return _Proposal(MultivariateT.stack([p.position for p in proposals]), orientation)


class EProPnPBase(nn.Module, ABC):
    """Shared AMIS machinery; use :class:`EProPnP6DoF` or :class:`EProPnP4DoF`."""

    space: type[PoseSpace]

    def __init__(self, config: MonteCarloConfig | None = None) -> None:
        super().__init__()
        self.config = config or MonteCarloConfig()

    # --- orientation-specific pieces -------------------------------------------------------
    @abstractmethod
    def _initial_orientation(
        self, pose: torch.Tensor, rot_cov: torch.Tensor
    ) -> VonMisesUniformMix | AngularCentralGaussian:
        """Initial orientation proposal from ``pose: (B, dim)``, ``rot_cov: (B, R, R)``."""

    @abstractmethod
    def _fit_orientation(
        self, samples: torch.Tensor, log_weights: torch.Tensor
    ) -> VonMisesUniformMix | AngularCentralGaussian:
        """Orientation proposal fitted to ``samples: (K, B, dim - 3)`` and their log-weights."""

    # --- public API ------------------------------------------------------------------------
    @overload
    def solve(
        self,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        cam_mats: torch.Tensor,
        pose_init: torch.Tensor | None = None,
        *,
        robust: Literal[False] = False,
        generator: torch.Generator | None = None,
    ) -> PnPSolution: ...

    @overload
    def solve(
        self,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        cam_mats: torch.Tensor,
        pose_init: torch.Tensor | None = None,
        *,
        robust: Literal[True] | RobustConfig,
        generator: torch.Generator | None = None,
    ) -> RobustPnPSolution: ...

    def solve(
        self,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        cam_mats: torch.Tensor,
        pose_init: torch.Tensor | None = None,
        *,
        robust: bool | RobustConfig = False,
        generator: torch.Generator | None = None,
    ) -> PnPSolution | RobustPnPSolution:
        """Solve only (no sampling): pose, Laplace covariance, status.  Shapes as
        :func:`~epropnp_lib.pnp.solver.solve_pnp`.

        ``robust`` (``True`` or a :class:`~epropnp_lib.pnp.robust.RobustConfig`): the
        inference mode for correspondences with gross outliers,
        :func:`~epropnp_lib.pnp.robust.solve_pnp_robust` (random subsets from ``generator``,
        ``pose_init`` unused); its result adds each element's inlier fraction.  The default is
        the paper's cost, which the training forward always uses.
        """
        if robust is False:
            return solve_pnp(
                x3d, x2d, w2d, cam_mats, dof=self.space.tangent_dim, pose_init=pose_init,
                config=self.config.solver,
            )
        return solve_pnp_robust(
            x3d, x2d, w2d, cam_mats, dof=self.space.tangent_dim,
            config=robust if isinstance(robust, RobustConfig) else None,
            solver=self.config.solver, generator=generator,
        )

    def forward(
        self,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        cam_mats: torch.Tensor,
        pose_target: torch.Tensor | None = None,
        pose_init: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        with_step: bool = True,
        solution: PnPSolution | None = None,
        num_iterations: int | None = None,
    ) -> EProPnPResult:
        """Monte Carlo forward (Algorithm 1).

        Args:
            x3d: ``(B, N, 3)`` object points; x2d: ``(B, N, 2)`` pixels; w2d: ``(B, N, 2)``
                non-negative weights; cam_mats: ``(B, 3, 3)`` intrinsics.
            pose_target: ``(B, dim)`` target poses for L_tgt, or ``None``.
            pose_init: ``(B, dim)`` initial poses for the solver, or ``None``.
            generator: the only source of randomness (same seed, same samples).
            with_step: compute the one-step pose of Eq. 9.
            solution: a :class:`~epropnp_lib.pnp.solver.PnPSolution` of these very problems
                (e.g. from :meth:`solve`): used as ``y*`` and its covariance instead of solving
                again (``pose_init`` is then ignored).
            num_iterations: AMIS iterations ``T`` for this call (default: the config's).

        Returns:
            :class:`EProPnPResult`.
        """
        cfg = self.config
        if num_iterations is not None and num_iterations != cfg.num_iterations:
            if num_iterations < 1:
                raise ConfigError(f"num_iterations must be >= 1, got {num_iterations}")
            cfg = dataclasses.replace(cfg, num_iterations=num_iterations)
        space = self.space
        # Checked once; invalid elements are replaced by benign problems (never NaN gradients).
        prob = validate_problem(space, x3d, x2d, w2d, cam_mats, pose_init)
        dims = check_shape(x3d, ["B", "N", 3], "x3d")
        if pose_target is not None:
            check_shape(pose_target, ["B", space.dim], "pose_target", dims)
            check_float_tensors(x3d=x3d, pose_target=pose_target)
        sol = self._solution(prob, solution, cfg, dims["B"])
        keep = (sol.status <= SolveStatus.MAX_ITERATIONS) & prob.valid
        pose_star = torch.where(keep[:, None], sol.pose, self._fallback_pose(prob.x3d, sol.pose))
        delta = cfg.solver.huber.threshold(prob.x2d, prob.w2d)

        def cost_at(pose: torch.Tensor, jac: bool = False) -> CostTerms:
            return evaluate_cost(space, pose, prob.x3d, prob.x2d, prob.w2d, prob.cam_mats,
                                 delta, jac)

        proposal = self._initial_proposal(pose_star, sol.covariance, keep, prob.x3d)
        pose_samples, log_weights = self._amis(prob, proposal, delta, cfg, generator)
        log_normalizer = log_weights.logsumexp(0) - math.log(pose_samples.shape[0])
        target_cost = None
        if pose_target is not None:
            tgt = torch.where(prob.valid[:, None], space.canonical(pose_target), pose_star)
            target_cost = cost_at(tgt).cost
        pose_step = None
        if with_step:
            pose_step = self._one_step(cost_at(pose_star, True), pose_star, keep, cfg.step_eps)
        return EProPnPResult(
            sol.pose, sol.covariance, sol.cost, sol.status, pose_samples, log_weights,
            log_normalizer, target_cost, pose_step,
        )

    def _solution(
        self,
        prob: ValidatedProblem,
        solution: PnPSolution | None,
        cfg: MonteCarloConfig,
        batch: int,
    ) -> PnPSolution:
        """``y*`` and its covariance: ``solution`` when given (shapes checked), else solved."""
        space = self.space
        if solution is None:
            return solve_validated(space, prob, cfg.solver)
        dims = {"B": batch}
        check_shape(solution.pose, ["B", space.dim], "solution.pose", dims)
        check_shape(solution.covariance, ["B", space.tangent_dim, space.tangent_dim],
                    "solution.covariance", dims)
        return solution

    def _amis(
        self,
        prob: ValidatedProblem,
        proposal: _Proposal,
        delta: torch.Tensor | None,
        cfg: MonteCarloConfig,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The AMIS iterations of Algorithm 1 from ``proposal``: ``T K'`` samples ``(T K', B,
        dim)`` and their importance log-weights ``(T K', B)`` (differentiable through the
        cost)."""
        space = self.space
        log_p: list[torch.Tensor] = []  # differentiable -cost at each sample block
        proposals = [proposal]
        n_it, k = cfg.num_iterations, cfg.num_samples
        log_mix = drawn = log_q = prob.x3d.new_zeros(0)
        for it in range(n_it):
            new = self._sample(proposals[it], k, generator)  # (K', B, dim)
            log_p.append(-sample_cost(space, new, prob.x3d, prob.x2d, prob.w2d, prob.cam_mats,
                                      delta))
            with torch.no_grad():
                # log_q: every sample so far under every proposal so far, ((it + 1) K',
                # it + 1, B).  Only the new pairs are evaluated: the new block under every
                # proposal (one call on the stacked proposals) and the earlier blocks under
                # the newest proposal.
                rows = self._log_prob(
                    _Proposal.stack(proposals), new.unsqueeze(1).expand(-1, it + 1, -1, -1)
                )
                if it == 0:
                    log_q, drawn = rows, new
                else:
                    col = self._log_prob(proposals[it], drawn).unsqueeze(1)
                    log_q = torch.cat((torch.cat((log_q, col), dim=1), rows))
                    drawn = torch.cat((drawn, new))
                # log of the mixture of all proposals so far at every sample: (it + 1) K', B
                log_mix = log_q.logsumexp(1) - math.log(it + 1)
                if it + 1 < n_it:
                    log_v = torch.cat(log_p).detach() - log_mix
                    proposals.append(self._fit(drawn, log_v))
        return drawn, torch.cat(log_p) - log_mix

    def _one_step(
        self, terms: CostTerms, pose_star: torch.Tensor, keep: torch.Tensor, step_eps: float
    ) -> torch.Tensor:
        """The differentiable one-step pose ``y* (+) dy`` of Eq. 9 ``(B, dim)`` from the cost
        terms at ``y*`` (with Jacobian); no step where ``keep: (B,)`` is False."""
        hess, grad = normal_equations(terms)
        eps = step_eps * hess.diagonal(dim1=-2, dim2=-1).mean(-1).detach()
        eye = torch.eye(self.space.tangent_dim, dtype=hess.dtype, device=hess.device)
        step = -torch.linalg.solve_ex(hess + eps[:, None, None] * eye, grad)[0]
        step = torch.where(keep[:, None] & torch.isfinite(step), step, 0.0)
        return self.space.retract(pose_star, step)

    @torch.no_grad()
    def posterior_samples(
        self,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        cam_mats: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None = None,
        pose_init: torch.Tensor | None = None,
        solution: PnPSolution | None = None,
        num_iterations: int | None = None,
    ) -> torch.Tensor:
        """``(num_samples, B, dim)`` poses resampled to equal weights from the AMIS samples
        (multinomial resampling), for publishing the pose distribution.  Elements whose solve
        failed get NaN samples.  ``pose_init: (B, dim)`` starts the solve there (e.g. at a
        multi-start solution) instead of the closed-form initialisation; ``solution`` (a
        :meth:`solve` result of the same problems) skips the solve altogether.
        ``num_iterations`` overrides the AMIS iterations ``T`` of the config for this call
        (fewer for a cheaper draw: ``T K'`` samples are resampled to ``num_samples``)."""
        res = self.forward(x3d, x2d, w2d, cam_mats, pose_init=pose_init, generator=generator,
                           with_step=False, solution=solution, num_iterations=num_iterations)
        probs = torch.softmax(res.log_weights.T.double(), dim=-1)  # (B, K)
        idx = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
        out = torch.take_along_dim(res.pose_samples, idx.T[..., None], dim=0)
        return torch.where(res.valid[None, :, None], out, torch.nan)

    # --- AMIS internals --------------------------------------------------------------------
    @staticmethod
    def _fallback_pose(x3d: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """A finite stand-in pose for failed elements (masked out of every loss)."""
        fb = torch.zeros_like(pose)
        fb[:, 2] = 10.0 * x3d.detach().abs().amax(dim=(1, 2)).clamp_min(1e-3)
        if pose.shape[-1] == 7:
            fb[:, 3] = 1.0
        return fb

    def _initial_proposal(
        self, pose: torch.Tensor, cov: torch.Tensor, keep: torch.Tensor, x3d: torch.Tensor
    ) -> _Proposal:
        d = self.space.tangent_dim
        # Failed elements: a broad isotropic proposal (their loss is masked anyway).
        extent = x3d.detach().abs().amax(dim=(1, 2)).clamp_min(1e-3)
        fallback = torch.diag_embed(torch.ones_like(cov[:, :, 0]))
        fallback[:, :3, :3] *= extent[:, None, None] ** 2
        cov = torch.where(keep[:, None, None] & torch.isfinite(cov).all(-1).all(-1)[:, None, None],
                          cov, fallback)
        position = MultivariateT.from_scale_matrix(pose[:, :3], cov[:, :3, :3], self.config.t_df)
        return _Proposal(position, self._initial_orientation(pose, cov[:, 3:d, 3:d]))

    def _sample(
        self, proposal: _Proposal, num: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        pos = proposal.position.sample(num, generator)
        rot = proposal.orientation.sample(num, generator)
        return torch.cat((pos, rot), dim=-1)

    @staticmethod
    def _log_prob(proposal: _Proposal, samples: torch.Tensor) -> torch.Tensor:
        return proposal.position.log_prob(samples[..., :3]) + proposal.orientation.log_prob(
            samples[..., 3:]
        )

    def _fit(self, samples: torch.Tensor, log_weights: torch.Tensor) -> _Proposal:
        position = MultivariateT.fit(
            samples[..., :3], log_weights, self.config.t_df, moment_match=self.config.moment_match
        )
        return _Proposal(position, self._fit_orientation(samples[..., 3:], log_weights))


class EProPnP6DoF(EProPnPBase):
    """EPro-PnP for full 6DoF poses ``(t, q_wxyz)`` (dense correspondence network, LineMOD).

    Example::

        >>> from epropnp_lib.pnp.problems import random_problems
        >>> p = random_problems(2, 32, noise_std=1.0, generator=torch.Generator().manual_seed(0))
        >>> res = EProPnP6DoF()(p.x3d, p.x2d, p.w2d, p.cam_mats, pose_target=p.pose,
        ...                     generator=torch.Generator().manual_seed(0))
        >>> res.pose_samples.shape, res.log_weights.shape
        (torch.Size([512, 2, 7]), torch.Size([512, 2]))
    """

    space = Pose6DoF

    def _initial_orientation(
        self, pose: torch.Tensor, rot_cov: torch.Tensor
    ) -> AngularCentralGaussian:
        # Near q*, exp(phi) * q* ~ q* + 1/2 (0, phi) * q*: Lambda = q* q*^T + M (S / 4) M^T
        # with M the 4x3 map phi -> (0, phi) * q*.  Formed in the ACG's work dtype: the
        # second term can be 1e-10 of the first (float32 would round it away).
        wd = AngularCentralGaussian.work_dtype(pose.device)
        q, rot_cov = pose[:, 3:].to(wd), rot_cov.to(wd)
        basis = torch.eye(3, dtype=wd, device=q.device)
        pure = torch.cat((torch.zeros_like(basis[:, :1]), basis), dim=-1)  # (3, 4)
        m = quat_multiply(pure[None], q[:, None, :]).transpose(-1, -2)  # (B, 4, 3)
        lam = q[:, :, None] * q[:, None, :] + m @ (0.25 * rot_cov) @ m.transpose(-1, -2)
        return AngularCentralGaussian.from_matrix(lam, dtype=pose.dtype)

    def _fit_orientation(
        self, samples: torch.Tensor, log_weights: torch.Tensor
    ) -> AngularCentralGaussian:
        return AngularCentralGaussian.fit(
            samples, log_weights, num_iter=self.config.acg_fit_iterations
        )


class EProPnP4DoF(EProPnPBase):
    """EPro-PnP for 4DoF poses ``(t, yaw)``, yaw about the camera y axis (nuScenes)."""

    space = Pose4DoF

    def _initial_orientation(
        self, pose: torch.Tensor, rot_cov: torch.Tensor
    ) -> VonMisesUniformMix:
        var = rot_cov[:, 0, 0].clamp(1.0 / MAX_KAPPA, 1e8)
        kappa = (1.0 / var).clamp(1e-3, MAX_KAPPA)
        return VonMisesUniformMix(pose[:, 3], kappa, self.config.uniform_mix)

    def _fit_orientation(
        self, samples: torch.Tensor, log_weights: torch.Tensor
    ) -> VonMisesUniformMix:
        return VonMisesUniformMix.fit(
            samples, log_weights, self.config.uniform_mix, kappa_scale=self.config.kappa_scale
        )
