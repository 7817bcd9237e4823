"""Dense correspondence network (paper 4.1, Fig. 4): CDPN-style, with an EPro-PnP 6DoF head.

An object crop ``images: (B, 3, S, S)`` goes through a torchvision ResNet
(:class:`~epropnp_lib.nets.backbone.ResNetBackbone`); an up-sampling head turns its C5 map
(stride 32) into ``h x w`` maps at ``output_stride`` (paper: 256 px crops, stride 4, 64x64 maps)
with 5 channels:

* 3 object-coordinate channels, scaled by ``object_extent`` (``x3d``, object frame, metres);
* 2 XY weight logits, turned into weights by a **spatial Softmax** over the ``h * w`` cells,
  times a **global weight scale** ``(B, 2)`` predicted from the pooled C5 features (Fig. 4).
  ``WeightNormalization.EXP`` drops the Softmax denominator (``exp(logit) * scale``, the
  ablation D0 of Table 1 that the paper reports to diverge).

Each map cell is one 2D-3D correspondence at the crop pixel of its centre
(:func:`epropnp_lib.geometry.camera.pixel_grid`), so ``N = h * w`` (or the ``num_points``
cells of largest weight).  The pose comes from :class:`~epropnp_lib.epropnp.EProPnP6DoF`:
:meth:`DenseCorrespondenceNet.predict_pose` solves (pose, Laplace covariance, status) and
:class:`DenseNetLoss` trains with the Monte Carlo KL loss (Eq. 5), optionally with masked
coordinate regression and the derivative regulariser (Eq. 10).  For the loss-function comparison
of Table 3 it also provides the two baselines:

* ``PoseLossKind.REPROJECTION``: the uncertainty-aware reprojection loss at the target pose
  only (MonoRUN [11]): the Gaussian negative log-likelihood ``L_tgt - sum log w2d`` -- the first
  term of Eq. 5 plus the log-determinant that keeps the weights from collapsing to zero, without
  the normaliser ``L_pred`` that makes the loss discriminative;
* ``PoseLossKind.IMPLICIT``: implicit differentiation (BPnP [10]): the pose distance of Eq. 10
  between the LM solution ``y*`` and the target, with the gradient of ``y*`` by the implicit
  function theorem.  At an optimum the gradient ``g(y*, X)`` of the cost vanishes, so
  ``dy*/dX = -H^-1 dg/dX`` -- exactly the derivative of the one Gauss-Newton step ``dy`` of
  Eq. 9 (whose other term, ``d(H^-1)/dX g``, is zero when ``g = 0``).  We therefore take the
  loss value at ``y*`` and the gradient through ``dy``: ``y* + (dy - stop_grad(dy))``.  As the
  paper does for Table 3, the distance is the pose metric of Eq. 10, not BPnP's reprojection
  metric.

Checkpoints (kind ``"dense_correspondence_net"``) store ``to_dict(config)`` and the state dict;
:meth:`DenseCorrespondenceNet.from_checkpoint` rebuilds the network and raises
:class:`DenseCheckpointError` for a malformed or mismatched file.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.epropnp import EProPnP6DoF, EProPnPResult, MonteCarloConfig
from epropnp_lib.errors import ConfigError, ShapeError
from epropnp_lib.geometry.camera import pixel_grid
from epropnp_lib.geometry.pose import Pose6DoF
from epropnp_lib.losses import MonteCarloPoseLoss, derivative_regularization_loss
from epropnp_lib.nets.backbone import BackboneConfig, ResNetBackbone
from epropnp_lib.nets.checkpoint import CheckpointError, load_model, save_checkpoint
from epropnp_lib.pnp.cost import evaluate_cost
from epropnp_lib.pnp.solver import PnPSolution, SolverConfig, SolveStatus, solve_pnp

logger = logging.getLogger(__name__)

#: Checkpoint kind of :class:`DenseCorrespondenceNet`.
CHECKPOINT_KIND = "dense_correspondence_net"

#: ImageNet statistics (torchvision backbones expect normalised inputs).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DenseCheckpointError(CheckpointError):
    """A checkpoint does not hold a usable :class:`DenseCorrespondenceNet`."""


class WeightNormalization(enum.Enum):
    """How the two weight channels become correspondence weights."""

    #: Spatial Softmax over the map cells times the global scale (the paper's network).
    SPATIAL_SOFTMAX = "spatial_softmax"
    #: ``exp(logit)`` times the global scale: no Softmax denominator (Table 1, D0).
    EXP = "exp"


class PoseLossKind(enum.Enum):
    """Main pose loss (Table 3)."""

    #: Monte Carlo KL divergence (Eq. 5; EPro-PnP).
    MONTE_CARLO = "monte_carlo"
    #: Uncertainty-aware reprojection NLL at the target pose only (MonoRUN [11]).
    REPROJECTION = "reprojection"
    #: Pose distance of the LM solution, implicit-function-theorem gradient (BPnP [10]).
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
        for name in ("pose_weight", "coord_weight", "mask_weight", "reg_weight",
                     "position_weight", "orientation_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"DenseLossConfig.{name} must be >= 0, got {v}")
        if not self.position_beta > 0:
            raise ConfigError(f"position_beta must be positive, got {self.position_beta}")
        if self.train_points < 0 or 0 < self.train_points < Pose6DoF.min_points:
            raise ConfigError(
                f"train_points must be 0 or >= {Pose6DoF.min_points}, got {self.train_points}"
            )
        if not 0 < self.norm_momentum <= 1:
            raise ConfigError(f"norm_momentum must be in (0, 1], got {self.norm_momentum}")


@dataclass(frozen=True)
class DenseNetConfig:
    """Settings of :class:`DenseCorrespondenceNet`.

    Attributes:
        backbone: the ResNet (paper: ResNet-34; depth 18 / base_width 16-32 for a CPU).
        crop_size: input crop side ``S`` in pixels (paper: 256), a multiple of 32.
        output_stride: stride of the output maps (paper: 4), one of 4, 8, 16, 32.
        head_channels: channels of the up-sampling head (paper/CDPN: 256).
        skip_connections: add 1x1 projections of C4..C2 to the head at their strides (a
            U-Net-style shortcut for small crops; CDPN has none).
        num_points: correspondences per object: 0 uses every map cell, ``k > 0`` the ``k``
            cells of largest total weight.
        object_extent: scale of the coordinate channels (metres; e.g. the object's half
            diagonal): ``x3d = object_extent * channels``.
        init_weight_scale: initial global weight scale (per axis).
        weight_normalization: :class:`WeightNormalization`.
        monte_carlo: the EPro-PnP layer settings.
        loss: :class:`DenseLossConfig`.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    crop_size: int = 256
    output_stride: int = 4
    head_channels: int = 256
    skip_connections: bool = False
    num_points: int = 0
    object_extent: float = 0.1
    init_weight_scale: float = 1.0
    weight_normalization: WeightNormalization = WeightNormalization.SPATIAL_SOFTMAX
    monte_carlo: MonteCarloConfig = field(default_factory=MonteCarloConfig)
    loss: DenseLossConfig = field(default_factory=DenseLossConfig)

    def __post_init__(self) -> None:
        if self.crop_size < 32 or self.crop_size % 32:
            raise ConfigError(f"crop_size must be a positive multiple of 32, got {self.crop_size}")
        if self.output_stride not in (4, 8, 16, 32):
            raise ConfigError(f"output_stride must be 4, 8, 16 or 32, got {self.output_stride}")
        if self.head_channels < 1:
            raise ConfigError(f"head_channels must be >= 1, got {self.head_channels}")
        cells = (self.crop_size // self.output_stride) ** 2
        if not 0 <= self.num_points <= cells or 0 < self.num_points < Pose6DoF.min_points:
            raise ConfigError(
                f"num_points must be 0 (all {cells} cells) or in [{Pose6DoF.min_points}, "
                f"{cells}], got {self.num_points}"
            )
        for name in ("object_extent", "init_weight_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"DenseNetConfig.{name} must be positive, got {v}")
        if not isinstance(self.weight_normalization, WeightNormalization):
            raise ConfigError(
                f"weight_normalization must be a WeightNormalization, got "
                f"{self.weight_normalization!r}"
            )

    @property
    def map_size(self) -> int:
        """Side ``h = w`` of the output maps."""
        return self.crop_size // self.output_stride


class DenseNetOutput(NamedTuple):
    """Output of :meth:`DenseCorrespondenceNet.forward` (``N`` correspondences, ``h x w`` maps).

    Attributes:
        x3d: ``(B, N, 3)`` object coordinates (metres).
        x2d: ``(B, N, 2)`` crop pixels of the map cells.
        w2d: ``(B, N, 2)`` non-negative XY weights (Softmax over cells times ``scale``).
        cam_mats: ``(B, 3, 3)`` crop intrinsics (the input ``cam_K``).
        scale: ``(B, 2)`` global weight scale.
        coord_map: ``(B, 3, h, w)`` object-coordinate map (metres).
        weight_map: ``(B, 2, h, w)`` normalised weight map (Softmax over cells, or ``exp``
            without the denominator), before the global scale.
        weight_logits: ``(B, 2, h, w)`` raw weight logits.
        indices: ``(B, N)`` flat cell index of each correspondence, or ``None`` when every
            cell is used in order.
    """

    x3d: torch.Tensor
    x2d: torch.Tensor
    w2d: torch.Tensor
    cam_mats: torch.Tensor
    scale: torch.Tensor
    coord_map: torch.Tensor
    weight_map: torch.Tensor
    weight_logits: torch.Tensor
    indices: torch.Tensor | None


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _UpStage(nn.Module):
    """2x transposed convolution + 3x3 conv (CDPN's rotation head), optional lateral input."""

    def __init__(self, cin: int, cout: int, lateral: int | None) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
        self.lateral = nn.Conv2d(lateral, cout, 1) if lateral is not None else None
        self.conv = _conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if self.lateral is not None and skip is not None:
            x = x + self.lateral(skip)
        return self.conv(x)


class DenseCorrespondenceNet(nn.Module):
    """CDPN-style dense 2D-3D correspondence network with the EPro-PnP 6DoF layer.

    Example::

        >>> from epropnp_lib.nets.backbone import BackboneConfig
        >>> cfg = DenseNetConfig(backbone=BackboneConfig(depth=18, base_width=16), crop_size=64,
        ...                      output_stride=8, head_channels=16)
        >>> net = DenseCorrespondenceNet(cfg)
        >>> k = torch.tensor([[200.0, 0, 32], [0, 200.0, 32], [0, 0, 1]]).expand(2, 3, 3)
        >>> out = net(torch.rand(2, 3, 64, 64), k)
        >>> out.x3d.shape, out.w2d.shape, out.coord_map.shape
        (torch.Size([2, 64, 3]), torch.Size([2, 64, 2]), torch.Size([2, 3, 8, 8]))
    """

    image_mean: torch.Tensor
    image_std: torch.Tensor

    def __init__(self, config: DenseNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or DenseNetConfig()
        self.config = cfg
        self.backbone = ResNetBackbone(cfg.backbone)
        chans = self.backbone.out_channels
        n_up = int(round(math.log2(32 // cfg.output_stride)))
        hc = cfg.head_channels
        stages = []
        for i in range(n_up):
            lateral = chans[2 - i] if cfg.skip_connections else None  # C4, C3, C2
            stages.append(_UpStage(chans[3] if i == 0 else hc, hc, lateral))
        self.up_stages = nn.ModuleList(stages)
        head_in = hc if n_up else chans[3]
        self.head = nn.Sequential(_conv_bn_relu(head_in, hc), nn.Conv2d(hc, 5, 1))
        self.scale_head = nn.Sequential(
            nn.Linear(chans[3], hc), nn.ReLU(inplace=True), nn.Linear(hc, 2)
        )
        with torch.no_grad():
            final = self.head[-1]
            assert isinstance(final, nn.Conv2d)
            final.weight[3:].mul_(0.1)  # near-uniform Softmax at the start
            assert final.bias is not None
            final.bias.zero_()
            last = self.scale_head[-1]
            assert isinstance(last, nn.Linear)
            last.weight.mul_(0.1)
            last.bias.fill_(math.log(cfg.init_weight_scale))
        self.pnp = EProPnP6DoF(cfg.monte_carlo)
        self.register_buffer("image_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor, cam_K: torch.Tensor) -> DenseNetOutput:  # noqa: N803
        """Correspondences for object crops.

        Args:
            images: ``(B, 3, S, S)`` crops, RGB in [0, 1], ``S = config.crop_size``.
            cam_K: ``(B, 3, 3)`` intrinsics of the crops (pixels of the crop).

        Returns:
            :class:`DenseNetOutput`.
        """
        cfg = self.config
        s = cfg.crop_size
        dims = check_shape(images, ["B", 3, s, s], "images")
        check_shape(cam_K, ["B", 3, 3], "cam_K", dims)
        check_float_tensors(images=images, cam_K=cam_K)
        x = (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)
        feats = self.backbone(x)
        y = feats[3]
        for i, stage in enumerate(self.up_stages):
            y = stage(y, feats[2 - i])
        maps = self.head(y)  # (B, 5, h, w)
        b, _, h, w = maps.shape
        coord_map = maps[:, :3] * cfg.object_extent
        logits = maps[:, 3:]
        log_scale = self.scale_head(feats[3].mean(dim=(2, 3))).clamp(-20.0, 20.0)
        scale = log_scale.exp()  # (B, 2)
        flat_logits = logits.flatten(2)  # (B, 2, h*w)
        if cfg.weight_normalization is WeightNormalization.SPATIAL_SOFTMAX:
            norm = flat_logits.softmax(dim=-1)
        else:
            norm = flat_logits.clamp(max=30.0).exp()
        weight_map = norm.view(b, 2, h, w)
        x3d = coord_map.flatten(2).transpose(1, 2)  # (B, hw, 3)
        w2d = norm.transpose(1, 2) * scale[:, None, :]  # (B, hw, 2)
        grid = pixel_grid(h, w, cfg.output_stride, dtype=images.dtype, device=images.device)
        x2d = grid.expand(b, h * w, 2)
        indices = None
        if cfg.num_points:
            indices = norm.sum(1).topk(cfg.num_points, dim=-1).indices  # (B, k)
            x3d = x3d.gather(1, indices[..., None].expand(-1, -1, 3))
            w2d = w2d.gather(1, indices[..., None].expand(-1, -1, 2))
            x2d = x2d.gather(1, indices[..., None].expand(-1, -1, 2))
        return DenseNetOutput(x3d, x2d, w2d, cam_K, scale, coord_map, weight_map, logits, indices)

    @torch.no_grad()
    def predict_pose(
        self, images: torch.Tensor, cam_K: torch.Tensor, multi_start: bool = True  # noqa: N803
    ) -> tuple[DenseNetOutput, PnPSolution]:
        """Network outputs and the PnP solution (pose ``(B, 7)``, covariance ``(B, 6, 6)``,
        status ``(B,)``) of ``images: (B, 3, S, S)`` seen with ``cam_K: (B, 3, 3)`` (see
        :func:`predict_pose`)."""
        out = self.forward(images, cam_K)
        return out, predict_pose(self.pnp, out, multi_start)

    def make_loss(self) -> DenseNetLoss:
        """The :class:`DenseNetLoss` of ``config.loss`` (coordinates in units of
        ``object_extent``)."""
        return DenseNetLoss(self.config.loss, coord_scale=self.config.object_extent)

    # --- checkpoints ------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a checkpoint (kind ``"dense_correspondence_net"``) with ``to_dict(config)``."""
        save_checkpoint(path, kind=CHECKPOINT_KIND, config=to_dict(self.config),
                        state_dict=self.state_dict(), extra=extra)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> tuple[DenseCorrespondenceNet, dict[str, Any]]:
        """Rebuild a network from :meth:`save`'s file; returns ``(net, extra)``.

        Raises:
            CheckpointError: missing, truncated or malformed file, or another kind.
            DenseCheckpointError: the config is not a valid :class:`DenseNetConfig` or the
                weights do not fit the network it describes.
        """
        net, ckpt = load_model(path, kind=CHECKPOINT_KIND, config_class=DenseNetConfig,
                               build=cls, error=DenseCheckpointError, name="dense network",
                               map_location=map_location)
        return net, dict(ckpt.extra or {})


def predict_pose(layer: EProPnP6DoF, out: DenseNetOutput, multi_start: bool = True) -> PnPSolution:
    """Solve the PnP problem of network outputs: pose ``(B, 7)``, covariance ``(B, 6, 6)``,
    cost, status ``(B,)`` (detached).

    With ``multi_start`` the solver also starts from its 24 rotation hypotheses (besides the
    closed-form initialisation) and keeps the optimum of lowest cost -- a global search, like
    the reference implementation's random-sample initialisation; otherwise it is
    :meth:`EProPnP6DoF.solve` from the closed form alone.
    """
    x3d, w2d = out.x3d.detach(), out.w2d.detach()
    solver: SolverConfig = layer.config.solver
    if multi_start:
        solver = replace(solver, multi_start_below=x3d.shape[1] + 1)
    return solve_pnp(x3d, out.x2d, w2d, out.cam_mats, dof=6, config=solver)


class DenseLosses(NamedTuple):
    """Loss terms of :class:`DenseNetLoss` (scalars; disabled terms are 0).

    Attributes:
        total: weighted sum to minimise.
        pose: main pose loss (KL, reprojection NLL or implicit pose distance, unweighted).
        coord: masked coordinate regression.
        mask: surrogate mask loss.
        reg: derivative regularisation (Eq. 10).
        valid_fraction: fraction of batch elements whose PnP solve was usable.
        result: the EPro-PnP forward result (``None`` for the reprojection loss).
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
        if cfg.pose_loss is PoseLossKind.REPROJECTION:
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
