"""Dense correspondence network (paper 4.1, Fig. 4): CDPN-style, with an EPro-PnP 6DoF head.

An object crop ``images: (B, 3, S, S)`` with its intrinsics ``cam_mats: (B, 3, 3)`` gives
``h x w`` maps at ``output_stride``; each map cell is one 2D-3D correspondence (``N = h * w``, or
the ``num_points`` cells of largest weight): ``x3d: (B, N, 3)`` object coordinates (metres),
``x2d: (B, N, 2)`` the crop pixel of the cell's centre, ``w2d: (B, N, 2)`` weights.
:func:`predict_pose` solves them (:func:`pool_views` first joins several crops of one object
into one problem); the losses are in :mod:`epropnp_lib.nets.dense_loss`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.epropnp import EProPnP6DoF, MonteCarloConfig
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.camera import pixel_grid
from epropnp_lib.geometry.pose import Pose6DoF
from epropnp_lib.nets.backbone import BackboneConfig, ResNetBackbone
from epropnp_lib.nets.checkpoint import (
    CALIBRATION_KEY,
    CheckpointError,
    load_model,
    save_checkpoint,
    stored_positive,
)
from epropnp_lib.nets.dense_loss import DenseLossConfig, DenseNetLoss, PoseLossKind, TrainingInit
from epropnp_lib.pnp.cost import check_temperature
from epropnp_lib.pnp.solver import PnPSolution, SolverConfig, solve_pnp

__all__ = [
    "CHECKPOINT_KIND",
    "TRAINING_DATA_KEY",
    "training_crop_scale",
    "stored_weight_temperature",
    "DenseCheckpointError",
    "DenseCorrespondenceNet",
    "DenseNetConfig",
    "DenseNetOutput",
    "WeightNormalization",
    "pool_views",
    "predict_pose",
    "solve_correspondences",
    # The loss settings of DenseNetConfig.loss and the loss of make_loss():
    "DenseLossConfig",
    "DenseNetLoss",
    "PoseLossKind",
    "TrainingInit",
]

#: Checkpoint kind of :class:`DenseCorrespondenceNet`.
CHECKPOINT_KIND = "dense_correspondence_net"
#: Key of a checkpoint's ``extra`` holding the reader options the network was trained with
#: (``to_dict`` of :class:`epropnp_lib.data.bop.BopConfig`; absent in older checkpoints).
TRAINING_DATA_KEY = "bop"

#: ImageNet statistics (torchvision backbones expect normalised inputs).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DenseCheckpointError(CheckpointError):
    """A checkpoint does not hold a usable :class:`DenseCorrespondenceNet`."""


def training_crop_scale(extra: dict[str, Any], path: str | Path = "checkpoint") -> float | None:
    """The crop scale (crop side over box side, ``BopConfig.crop_scale``) stored in a
    checkpoint's ``extra`` under :data:`TRAINING_DATA_KEY`, or ``None`` when it has none.

    Raises:
        DenseCheckpointError: the stored value is not a positive finite number.
    """
    return stored_positive(extra, TRAINING_DATA_KEY, "crop_scale", path, DenseCheckpointError)


def stored_weight_temperature(extra: dict[str, Any], path: str | Path = "checkpoint"
                              ) -> float | None:
    """The weight temperature (:meth:`DenseCorrespondenceNet.forward`) a checkpoint was
    calibrated with, stored in its ``extra`` under
    :data:`~epropnp_lib.nets.checkpoint.CALIBRATION_KEY` (``epropnp-pose-calibrate``), or
    ``None`` when it has none.

    Raises:
        DenseCheckpointError: the stored value is not a positive finite number.
    """
    return stored_positive(extra, CALIBRATION_KEY, "weight_temperature", path,
                           DenseCheckpointError)


class WeightNormalization(enum.Enum):
    """How the two weight channels become correspondence weights."""

    #: Spatial Softmax over the map cells times the global scale (the paper's network).
    SPATIAL_SOFTMAX = "spatial_softmax"
    #: ``exp(logit)`` times the global scale: no Softmax denominator (Table 1, D0).
    EXP = "exp"


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
        cam_mats: ``(B, 3, 3)`` crop intrinsics (the input ``cam_mats``).
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

    def forward(
        self, images: torch.Tensor, cam_mats: torch.Tensor, weight_temperature: float = 1.0
    ) -> DenseNetOutput:
        """Correspondences for object crops.

        The two weight channels become weights by a spatial Softmax over the ``h * w`` cells
        (``WeightNormalization.EXP``: ``exp`` without its denominator), times a global weight
        scale ``(B, 2)`` predicted from the pooled C5 features (Fig. 4).

        Args:
            images: ``(B, 3, S, S)`` crops, RGB in [0, 1], ``S = config.crop_size``.
            cam_mats: ``(B, 3, 3)`` intrinsics of the crops (pixels of the crop).
            weight_temperature: ``tau``, the weight logits are divided by it before the
                normalisation (1 in training; ``tau > 1`` spreads the weights over more cells:
                a calibration, :func:`stored_weight_temperature`).  ``weight_logits`` stays
                the raw logits.

        Returns:
            :class:`DenseNetOutput`.
        """
        check_temperature(weight_temperature, "weight_temperature")
        cfg = self.config
        s = cfg.crop_size
        dims = check_shape(images, ["B", 3, s, s], "images")
        check_shape(cam_mats, ["B", 3, 3], "cam_mats", dims)
        check_float_tensors(images=images, cam_mats=cam_mats)
        x = (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)
        feats = self.backbone(x)
        y = feats[3]
        for i, stage in enumerate(self.up_stages):
            y = stage(y, feats[2 - i])
        maps = self.head(y)  # (B, 5, h, w)
        b, _, h, w = maps.shape
        coord_map = maps[:, :3] * cfg.object_extent
        logits = maps[:, 3:]
        tempered = logits if weight_temperature == 1.0 else logits / weight_temperature
        log_scale = self.scale_head(feats[3].mean(dim=(2, 3))).clamp(-20.0, 20.0)
        scale = log_scale.exp()  # (B, 2)
        flat_logits = tempered.flatten(2)  # (B, 2, h*w)
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
        return DenseNetOutput(x3d, x2d, w2d, cam_mats, scale, coord_map, weight_map, logits,
                              indices)

    @torch.no_grad()
    def predict_pose(
        self, images: torch.Tensor, cam_mats: torch.Tensor, multi_start: bool = True,
        weight_temperature: float = 1.0,
    ) -> tuple[DenseNetOutput, PnPSolution]:
        """Network outputs and the PnP solution (pose ``(B, 7)``, covariance ``(B, 6, 6)``,
        status ``(B,)``) of ``images: (B, 3, S, S)`` seen with ``cam_mats: (B, 3, 3)`` (see
        :func:`predict_pose`; ``weight_temperature``: see :meth:`forward`)."""
        out = self.forward(images, cam_mats, weight_temperature)
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
    cost, status ``(B,)`` (detached); :func:`solve_correspondences` of ``out``."""
    return solve_correspondences(layer, out.x3d, out.x2d, out.w2d, out.cam_mats, multi_start)


def solve_correspondences(
    layer: EProPnP6DoF,
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    multi_start: bool = True,
) -> PnPSolution:
    """The inference solve of dense correspondences ``x3d: (B, N, 3)``, ``x2d, w2d: (B, N, 2)``
    seen with ``cam_mats: (B, 3, 3)`` (detached).

    With ``multi_start`` the solver also starts from its 24 rotation hypotheses (besides the
    closed-form initialisation) and keeps the optimum of lowest cost -- a global search, like
    the reference implementation's random-sample initialisation; otherwise it is
    :meth:`EProPnP6DoF.solve` from the closed form alone.
    """
    x3d, w2d = x3d.detach(), w2d.detach()
    solver: SolverConfig = layer.config.solver
    if multi_start:
        solver = replace(solver, multi_start_below=x3d.shape[1] + 1)
    return solve_pnp(x3d, x2d.detach(), w2d, cam_mats, dof=6, config=solver)


def pool_views(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, num_views: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The correspondences of ``num_views`` crops of each object as one problem per object.

    Args:
        x3d: ``(B K, N, 3)``, the ``K = num_views`` crops of an object consecutive.
        x2d: ``(B K, N, 2)`` in one pixel frame per object (the image's, not the crops').
        w2d: ``(B K, N, 2)`` weights in that frame.

    Returns:
        ``x3d (B, K N, 3)``, ``x2d (B, K N, 2)`` and ``w2d (B, K N, 2)``, the weights scaled by
        ``K^-1/2``: the pooled cost is the mean of the crops' costs (a log-linear pool of
        their likelihoods, which counts crops of the same pixels as one observation, not ``K``
        independent ones), so ``K`` identical crops give the pose and covariance of one.
    """
    if num_views < 1 or x3d.shape[0] % num_views:
        raise ConfigError(f"{x3d.shape[0]} crops are not a multiple of num_views={num_views}")
    b = x3d.shape[0] // num_views

    def pooled(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, num_views * t.shape[1], t.shape[2])

    return pooled(x3d), pooled(x2d), pooled(w2d) * num_views ** -0.5
