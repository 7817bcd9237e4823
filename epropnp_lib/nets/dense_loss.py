"""Training losses of the dense correspondence network (paper 4.1, Table 3): the Monte Carlo KL
pose loss of EPro-PnP 6DoF (Eq. 5) or one of two baselines, optionally with masked coordinate
regression, a surrogate mask loss and the derivative regulariser (Eq. 10).  Network outputs
are :class:`~epropnp_lib.nets.dense.DenseNetOutput` (``B`` crops, ``N`` correspondences,
``h x w`` maps); every loss is a scalar tensor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from epropnp_lib.checks import check_shape
from epropnp_lib.epropnp import EProPnP6DoF, EProPnPResult
from epropnp_lib.errors import ConfigError, ShapeError
from epropnp_lib.geometry.pose import Pose6DoF
from epropnp_lib.losses import MonteCarloPoseLoss, derivative_regularization_loss
from epropnp_lib.nets.config_checks import check_non_negative
from epropnp_lib.pnp.cost import evaluate_cost
from epropnp_lib.pnp.solver import SolveStatus

if TYPE_CHECKING:
    from epropnp_lib.nets.dense import DenseNetOutput

__all__ = [
    "DenseLossConfig",
    "DenseLosses",
    "DenseNetLoss",
    "PoseLossKind",
    "TrainingInit",
    "implicit_pose",
    "masked_coordinate_loss",
    "reprojection_nll",
    "training_init",
]


class PoseLossKind(enum.Enum):
    """Main pose loss: EPro-PnP's and the two baselines of the loss comparison (Table 3)."""

    #: Monte Carlo KL divergence (Eq. 5; EPro-PnP).
    MONTE_CARLO = "monte_carlo"
    #: Uncertainty-aware reprojection NLL at the target pose only (MonoRUN [11]): the first
    #: term of Eq. 5 plus the log-determinant that keeps the weights from collapsing to zero,
    #: without the normaliser that makes the loss discriminative (:func:`reprojection_nll`).
    REPROJECTION = "reprojection"
    #: Pose distance of Eq. 10 (as the paper does for Table 3, not BPnP's reprojection metric)
    #: between the LM solution and the target, with the gradient of the solution by the
    #: implicit function theorem (BPnP [10], :func:`implicit_pose`).
    IMPLICIT = "implicit"


class TrainingInit(enum.Enum):
    """Start of the PnP solve during training."""

    #: The target pose: ``y*`` is the local optimum nearest the truth (the reference
    #: implementation's choice).  Other optima with a lower cost are never seen by the loss.
    TARGET = "target"
    #: The closed-form initialisation used at inference.  From scratch, random correspondences
    #: mostly give solves behind the camera (DEGENERATE, masked out of the loss).
    CLOSED_FORM = "closed_form"
    #: Both, keeping the optimum of lower cost: ``y*`` is the best optimum the solver finds,
    #: as at inference, and never a degenerate one when the target's neighbourhood is fine.
    BEST = "best"


@dataclass(frozen=True)
class DenseLossConfig:
    """Loss settings of :class:`DenseNetLoss`.

    Attributes:
        pose_loss: main loss (:class:`PoseLossKind`).
        pose_weight: weight of the main loss.
        coord_weight: weight of the masked coordinate regression (smooth L1 on ``x3d`` over the
            object mask, in units of ``object_extent``); 0 disables it.
        mask_weight: weight of a surrogate mask loss on the mean weight logit (binary
            cross-entropy with the object mask; the paper adds it in ablation C1); 0 disables.
        reg_weight: weight of the derivative regulariser of Eq. 10; 0 disables it.
        position_weight / orientation_weight: weights of the position and orientation parts of
            the pose distance of Eq. 10 (regulariser and ``IMPLICIT`` loss).
        position_beta: smooth-L1 transition of the position distance, in metres.
        detach_weights: stop the gradient of the main loss into ``w2d`` (Table 1, C1).
        detach_coords: stop the gradient of the main loss into ``x3d`` (Table 1, C0).
        norm_momentum: momentum of the running loss normaliser (mean global weight scale) of
            :class:`~epropnp_lib.losses.MonteCarloPoseLoss`.
        train_points: correspondences per element used by the pose loss: 0 uses all; ``k > 0``
            a random subset of ``k`` (drawn from the loss's generator; the reference
            implementation trains on 1/8 of the cells).  The Softmax still runs over the whole
            map; inference always uses every correspondence.
        training_init: where the training-time PnP solve starts (:class:`TrainingInit`); it
            sets ``y*``, the centre of the first Monte Carlo proposal and the solution of the
            ``IMPLICIT`` loss.  Inference never sees the target.
    """

    pose_loss: PoseLossKind = PoseLossKind.MONTE_CARLO
    pose_weight: float = 1.0
    coord_weight: float = 0.0
    mask_weight: float = 0.0
    reg_weight: float = 0.0
    position_weight: float = 1.0
    orientation_weight: float = 1.0
    position_beta: float = 0.01
    detach_weights: bool = False
    detach_coords: bool = False
    norm_momentum: float = 0.01
    train_points: int = 0
    training_init: TrainingInit = TrainingInit.BEST

    def __post_init__(self) -> None:
        if not isinstance(self.training_init, TrainingInit):
            raise ConfigError(f"training_init must be a TrainingInit, got {self.training_init!r}")
        if not isinstance(self.pose_loss, PoseLossKind):
            raise ConfigError(f"pose_loss must be a PoseLossKind, got {self.pose_loss!r}")
        check_non_negative(self, ("pose_weight", "coord_weight", "mask_weight", "reg_weight",
                                  "position_weight", "orientation_weight"), "DenseLossConfig.")
        if not self.position_beta > 0:
            raise ConfigError(f"position_beta must be positive, got {self.position_beta}")
        if self.train_points < 0 or 0 < self.train_points < Pose6DoF.min_points:
            raise ConfigError(
                f"train_points must be 0 or >= {Pose6DoF.min_points}, got {self.train_points}"
            )
        if not 0 < self.norm_momentum <= 1:
            raise ConfigError(f"norm_momentum must be in (0, 1], got {self.norm_momentum}")


class DenseLosses(NamedTuple):
    """Loss terms of :class:`DenseNetLoss` (scalars; disabled terms are 0).

    Attributes:
        total: weighted sum to minimise.
        pose: main pose loss (KL, reprojection NLL or implicit pose distance, unweighted).
        coord: masked coordinate regression.
        mask: surrogate mask loss.
        reg: derivative regularisation (Eq. 10).
        valid_fraction: fraction of batch elements whose PnP solve was usable.
        result: the EPro-PnP forward result (``None`` for the reprojection loss and when
            ``pose_weight`` and ``reg_weight`` are both 0: no solve).
    """

    total: torch.Tensor
    pose: torch.Tensor
    coord: torch.Tensor
    mask: torch.Tensor
    reg: torch.Tensor
    valid_fraction: torch.Tensor
    result: EProPnPResult | None


class DenseNetLoss(nn.Module):
    """Training losses of the dense network (see :class:`DenseLossConfig`).

    Holds the running normaliser of the Monte Carlo loss (a buffer: save it with the training
    state).  ``coord_scale`` (metres, e.g. the network's ``object_extent``) makes the
    coordinate regression unit-free.
    """

    def __init__(self, config: DenseLossConfig | None = None, coord_scale: float = 1.0) -> None:
        super().__init__()
        self.config = config or DenseLossConfig()
        self.coord_scale = float(coord_scale)
        self.kl = MonteCarloPoseLoss(momentum=self.config.norm_momentum)

    def forward(
        self,
        layer: EProPnP6DoF,
        out: DenseNetOutput,
        pose_gt: torch.Tensor,
        coords_gt: torch.Tensor | None = None,
        mask_gt: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DenseLosses:
        """Losses of one batch.

        Args:
            layer: the network's EPro-PnP layer (``net.pnp``).
            out: the network output.
            pose_gt: ``(B, 7)`` target poses.
            coords_gt: ``(B, 3, h, w)`` target object coordinates at the map resolution
                (metres), needed when ``coord_weight > 0``.
            mask_gt: ``(B, 1, h, w)`` object mask in [0, 1] at the map resolution, needed when
                ``coord_weight > 0`` or ``mask_weight > 0``.
            generator: randomness of the Monte Carlo samples.
        """
        cfg = self.config
        b = out.x3d.shape[0]
        check_shape(pose_gt, [b, 7], "pose_gt")
        zero = out.x3d.new_zeros(())
        x3d = out.x3d.detach() if cfg.detach_coords else out.x3d
        w2d = out.w2d.detach() if cfg.detach_weights else out.w2d
        x2d = out.x2d
        n = x3d.shape[1]
        if 0 < cfg.train_points < n:
            gen_device = generator.device if generator is not None else x3d.device
            keys = torch.rand(b, n, generator=generator, device=gen_device).to(x3d.device)
            idx = keys.argsort(dim=-1)[:, :cfg.train_points]
            x3d = x3d.gather(1, idx[..., None].expand(-1, -1, 3))
            x2d = x2d.gather(1, idx[..., None].expand(-1, -1, 2))
            w2d = w2d.gather(1, idx[..., None].expand(-1, -1, 2))
        need_step = cfg.reg_weight > 0 or cfg.pose_loss is PoseLossKind.IMPLICIT
        result: EProPnPResult | None = None
        pose = reg = zero
        valid_fraction = out.x3d.new_ones(())
        if cfg.pose_weight == 0 and cfg.reg_weight == 0:
            pass  # no pose term: the solve is skipped (e.g. a coordinate-only first stage)
        elif cfg.pose_loss is PoseLossKind.REPROJECTION:
            pose = reprojection_nll(layer, x3d, x2d, w2d, out.cam_mats, pose_gt)
        else:
            init = training_init(layer, cfg.training_init, x3d, x2d, w2d, out.cam_mats, pose_gt)
            result = layer(x3d, x2d, w2d, out.cam_mats, pose_target=pose_gt,
                           pose_init=init, generator=generator, with_step=need_step)
            valid_fraction = result.valid.to(out.x3d.dtype).mean()
            if cfg.pose_loss is PoseLossKind.MONTE_CARLO:
                pose = self.kl(result, out.scale.detach().mean())
            else:
                # failed solves (NaN y*) are masked; keep the masked values finite
                ift = torch.where(result.valid[:, None], implicit_pose(result), pose_gt)
                pose = self._pose_distance(ift, pose_gt, result.valid)
            if cfg.reg_weight > 0:
                assert result.pose_step is not None
                reg = self._pose_distance(result.pose_step, pose_gt, result.valid)
        coord = mask = zero
        if cfg.coord_weight > 0 or cfg.mask_weight > 0:
            if mask_gt is None or (cfg.coord_weight > 0 and coords_gt is None):
                raise ConfigError("coord_weight/mask_weight > 0 need coords_gt and mask_gt")
            h, w = out.coord_map.shape[-2:]
            check_shape(mask_gt, [b, 1, h, w], "mask_gt")
            if cfg.coord_weight > 0:
                assert coords_gt is not None
                check_shape(coords_gt, [b, 3, h, w], "coords_gt")
                coord = masked_coordinate_loss(out.coord_map, coords_gt, mask_gt,
                                               self.coord_scale)
            if cfg.mask_weight > 0:
                mean_logit = out.weight_logits.mean(1, keepdim=True)
                mask = F.binary_cross_entropy_with_logits(mean_logit, mask_gt.to(mean_logit))
        total = (cfg.pose_weight * pose + cfg.coord_weight * coord + cfg.mask_weight * mask
                 + cfg.reg_weight * reg)
        return DenseLosses(total, pose, coord, mask, reg, valid_fraction, result)

    def _pose_distance(
        self, pose: torch.Tensor, pose_gt: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.config
        return derivative_regularization_loss(
            Pose6DoF, pose, pose_gt, valid, position_weight=cfg.position_weight,
            orientation_weight=cfg.orientation_weight, beta=cfg.position_beta,
        )


@torch.no_grad()
def training_init(
    layer: EProPnP6DoF,
    mode: TrainingInit,
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    pose_gt: torch.Tensor,
) -> torch.Tensor | None:
    """``(B, 7)`` initial poses of the training-time solve (``None``: closed form); shapes as
    :meth:`EProPnP6DoF.forward`, ``pose_gt: (B, 7)``."""
    if mode is TrainingInit.CLOSED_FORM:
        return None
    gt = pose_gt.detach()
    if mode is TrainingInit.TARGET:
        return gt
    x3d, w2d = x3d.detach(), w2d.detach()
    near = layer.solve(x3d, x2d, w2d, cam_mats, pose_init=gt)
    free = layer.solve(x3d, x2d, w2d, cam_mats)
    inf = torch.full_like(near.cost, torch.inf)
    cost_near = torch.where(near.status <= SolveStatus.MAX_ITERATIONS, near.cost, inf)
    cost_free = torch.where(free.status <= SolveStatus.MAX_ITERATIONS, free.cost, inf)
    use_free = cost_free < cost_near
    start = torch.where(torch.isfinite(cost_near)[:, None], near.pose, gt)
    return torch.where(use_free[:, None], free.pose, start)


def implicit_pose(result: EProPnPResult) -> torch.Tensor:
    """``(B, 7)`` the LM solution ``y*`` with the implicit-function-theorem gradient.

    The value is ``result.pose``; the gradient is that of the one Gauss-Newton step ``dy`` of
    Eq. 9 (``result.pose_step``, computed with ``with_step=True``), which at an optimum equals
    ``dy*/dX = -H^-1 dg/dX`` (the term ``d(H^-1)/dX g`` vanishes with the gradient ``g``).
    """
    if result.pose_step is None:
        raise ShapeError("implicit_pose needs a result computed with with_step=True")
    step = result.pose_step
    return result.pose + (step - step.detach())


def reprojection_nll(
    layer: EProPnP6DoF,
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    pose_gt: torch.Tensor,
) -> torch.Tensor:
    """Uncertainty-aware reprojection loss at the target pose (MonoRUN [11]), batch mean.

    ``cost(y_gt) - sum_i log w2d_i`` per element, divided by the number of residuals ``2N``:
    the negative log-likelihood of the reprojection errors at the target pose under
    independent Gaussians with inverse standard deviations ``w2d`` (robust kernel as in
    ``layer``'s solver).  Shapes: ``x3d (B, N, 3)``, ``x2d, w2d (B, N, 2)``,
    ``cam_mats (B, 3, 3)``, ``pose_gt (B, 7)``.
    """
    delta = layer.config.solver.huber.threshold(x2d, w2d)
    cost = evaluate_cost(Pose6DoF, Pose6DoF.canonical(pose_gt), x3d, x2d, w2d, cam_mats,
                         delta).cost
    log_det = w2d.clamp_min(torch.finfo(w2d.dtype).tiny).log().sum(dim=(-2, -1))
    return ((cost - log_det) / x2d[0].numel()).mean()


def masked_coordinate_loss(
    coord_map: torch.Tensor, coords_gt: torch.Tensor, mask_gt: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """Masked L1 coordinate regression (CDPN): mean over the mask of ``|x3d - x3d_gt|``
    (summed over x, y, z) divided by ``scale``.  ``coord_map, coords_gt: (B, 3, h, w)``,
    ``mask_gt: (B, 1, h, w)``."""
    m = mask_gt.to(coord_map.dtype)
    err = (coord_map - coords_gt).abs().sum(1, keepdim=True) * m
    return err.sum() / (m.sum().clamp_min(1.0) * scale)
