"""The deformable correspondence network (EPro-PnP paper 4.2, Fig. 5): FCOS3D-style monocular
3D detection whose 2D-3D correspondences and weights are all learned, solved by
:class:`~epropnp_lib.epropnp.EProPnP4DoF`.

Architecture (no mmcv/mmdet; torchvision only)

* :class:`~epropnp_lib.nets.backbone.ResNetBackbone` (optionally with DCNv2 in the last stages
  via :func:`~epropnp_lib.nets.dcn.convert_to_deformable`) and an
  :class:`~epropnp_lib.nets.fpn.FPN` (FCOS3D: P3-P7).
* A dense FCOS head shared by all levels: a classification tower (class logits, focal loss)
  and a query tower that emits, per location, an *object query*: an embedding (plus a learned
  level embedding) and a reference point = location + ``stride * offset`` (the offset to the
  projected 3D centre, supervised with L1).
* :class:`~epropnp_lib.nets.deform_attention.DeformableAttention` samples ``N = heads *
  points`` locations around the reference point: these are the ``x2d`` of the object's
  correspondences; it gives point-wise and object-level features.
* The point subnet maps each point feature (plus the query, the point's offset from the
  reference point and a learned per-point embedding) to normalised object coordinates (NOC,
  MonoRUN) and two weight logits.  ``x3d = NOC * (length, height, width)`` along the object axes
  (x = length/heading, y = height/down, z = width, as in
  :mod:`epropnp_lib.geometry.boxes`); ``w2d = softmax over the N points * weight scale``.
* Object heads on the object feature: 3D score (localisation confidence), global weight
  scale ``(2,)`` (``exp`` of a clamped log), box size (log-ratio to the class mean size),
  velocity ``(vx, vz)`` and attribute logits (both optional).

Training (:meth:`DeformableCorrespondenceNet.loss`): FCOS/FCOS3D target assignment
(:mod:`epropnp_lib.nets.fcos_targets`), sigmoid focal loss on all locations, and on up to
``max_pose_queries`` randomly drawn positive locations: the Monte Carlo KL pose loss
(:class:`~epropnp_lib.losses.MonteCarloPoseLoss`, Eq. 5-6, weight-scale normalisation), the
derivative regulariser (Eq. 10), L1 on the log size, the centre offset and the velocity, cross
entropy on the attribute, BCE on the 3D score with target ``exp(-||t* - t_gt|| / tau)`` (``t*``
the detached PnP solution: the 3D localisation confidence), and optionally coordinate
regression.  The paper's "+ coord. regr." regresses NOC at sparse LiDAR points; this
implementation has no LiDAR and instead regresses, for each sampled point whose camera ray hits
the ground-truth box, the NOC where the ray first enters the box (the visible faces of the box,
:func:`~epropnp_lib.nets.fcos_targets.ray_box_coordinates`); points whose ray misses the box
contribute nothing.

Two choices make the KL loss trainable from random correspondences: the training-time PnP solve
starts from the ground-truth pose (``loss.init_from_target``; the closed-form initialisation of
random points often lands in a spurious optimum behind the camera), and DEGENERATE solves
(the optimum of inconsistent points recedes to infinity) keep their Monte Carlo KL, computed
around the layer's broad fallback proposal; only invalid inputs are masked.  The KL gradient
is large and noisy early on: clip the gradient norm (FCOS3D clips at 35).

Inference (:meth:`DeformableCorrespondenceNet.detect`): per image and level, the locations whose
best class score passes ``score_threshold`` (one query per location, its best class), top
``pre_nms_top_k`` per level; the PnP solve of each query gives the pose and its Laplace
covariance (multi-start, :meth:`DeformableCorrespondenceNet.solve`); score = class score *
3D score; class-aware NMS
(:func:`torchvision.ops.batched_nms`) on **bird's-eye-view** boxes: the axis-aligned
rectangles, in the camera x-z plane, around the rotated box footprints (so objects that overlap
in the image at different depths are not suppressed); at most ``max_detections`` per image.

Images enter as ``(B, 3, H, W)`` RGB, floating in [0, 1] or uint8, with their intrinsics; the
network runs on the image resized by ``input_scale`` with the intrinsics mapped accordingly
(pixel centres at integer coordinates), and reports 2D points in the original pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn
from torchvision.ops import batched_nms, sigmoid_focal_loss

from epropnp_lib.checks import check_shape
from epropnp_lib.data.nuscenes import NUSCENES_ATTRIBUTES, NUSCENES_CLASSES, NUSCENES_MEAN_SIZES
from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.epropnp import EProPnP4DoF, MonteCarloConfig
from epropnp_lib.errors import ConfigError, DeviceError, DTypeError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.camera import pixel_affine
from epropnp_lib.geometry.pose import Pose4DoF
from epropnp_lib.losses import MonteCarloPoseLoss, derivative_regularization_loss
from epropnp_lib.nets.backbone import BackboneConfig, ResNetBackbone
from epropnp_lib.nets.checkpoint import CheckpointError, load_model, save_checkpoint
from epropnp_lib.nets.dcn import convert_to_deformable
from epropnp_lib.nets.deform_attention import DeformableAttention
from epropnp_lib.nets.fcos_targets import (
    LevelSpec,
    assign_locations,
    level_locations,
    object_extent,
    ray_box_coordinates,
)
from epropnp_lib.nets.fpn import FPN
from epropnp_lib.pnp.init import hypotheses_6dof, init_4dof
from epropnp_lib.pnp.solver import PnPSolution, SolveStatus, solve_pnp

__all__ = [
    "CHECKPOINT_KIND",
    "DeformableCheckpointError",
    "DeformableCorrespondenceNet",
    "DeformableLossConfig",
    "DeformableLosses",
    "DeformableNetConfig",
    "Detections",
    "small_config",
]

#: Checkpoint kind of :class:`DeformableCorrespondenceNet`.
CHECKPOINT_KIND = "deformable_correspondence_net"

#: Largest |log| of the predicted weight scale (keeps exp() finite from random weights).
_MAX_LOG_SCALE = 12.0
#: Largest |log-ratio| of the predicted size to the class mean.
_MAX_LOG_SIZE = 4.0


class DeformableCheckpointError(CheckpointError):
    """A checkpoint's config or tensors do not fit :class:`DeformableCorrespondenceNet`."""


@dataclass(frozen=True)
class DeformableLossConfig:
    """Loss weights and settings of :meth:`DeformableCorrespondenceNet.loss`.

    Attributes:
        cls_weight / focal_alpha / focal_gamma: sigmoid focal loss on the class logits.
        offset_weight: L1 on the offset to the projected centre (strides).
        kl_weight: Monte Carlo KL pose loss (normalised by the running mean weight scale).
        reg_weight: derivative regularisation (Eq. 10); 0 disables the one-step pose.
        reg_position_weight / reg_orientation_weight: its two terms.
        size_weight: L1 on log(size / class mean).
        score_weight / score_distance: BCE on the 3D score, target
            ``exp(-||t* - t_gt|| / score_distance)`` (metres).
        velocity_weight: L1 on (vx, vz) where the target is finite.
        attribute_weight: cross entropy on the attribute (boxes with attribute -1 ignored).
        coord_weight: smooth L1 on NOC at points whose ray hits the box (module docstring);
            0 = the paper's basic variant.
        max_pose_queries: positive locations per batch, drawn at random, that get the
            point-level losses (the Monte Carlo loss costs ``T K' N`` per query).
        kl_norm_momentum: momentum of the running weight-scale normaliser of the KL loss.
        detach_x2d: stop the pose losses' gradient into the sampled 2D locations.
        init_from_target: start the training-time PnP solve from the target pose.
    """

    cls_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    offset_weight: float = 1.0
    kl_weight: float = 1.0
    reg_weight: float = 0.1
    reg_position_weight: float = 1.0
    reg_orientation_weight: float = 1.0
    size_weight: float = 1.0
    score_weight: float = 1.0
    score_distance: float = 1.0
    velocity_weight: float = 0.1
    attribute_weight: float = 0.2
    coord_weight: float = 0.0
    max_pose_queries: int = 64
    kl_norm_momentum: float = 0.01
    detach_x2d: bool = False
    init_from_target: bool = True

    def __post_init__(self) -> None:
        for name in ("cls_weight", "offset_weight", "kl_weight", "reg_weight",
                     "reg_position_weight", "reg_orientation_weight", "size_weight",
                     "score_weight", "velocity_weight", "attribute_weight", "coord_weight",
                     "focal_gamma"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.focal_alpha <= 1:
            raise ConfigError(f"focal_alpha must be in [0, 1], got {self.focal_alpha}")
        if not self.score_distance > 0:
            raise ConfigError(f"score_distance must be positive, got {self.score_distance}")
        if self.max_pose_queries < 1:
            raise ConfigError(f"max_pose_queries must be >= 1, got {self.max_pose_queries}")
        if not 0 < self.kl_norm_momentum <= 1:
            raise ConfigError(f"kl_norm_momentum must be in (0, 1], got {self.kl_norm_momentum}")


@dataclass(frozen=True)
class DeformableNetConfig:
    """Settings of :class:`DeformableCorrespondenceNet`.

    The defaults follow the paper's setting where it can be followed on torchvision (FCOS3D head
    on P3-P7, 8 heads x 8 points = 64 correspondences, DCN in stages 3-4) with a ResNet-34 trunk
    instead of ResNet-101 (``depth=101`` is also available); :func:`small_config` is the CPU
    configuration of the ROS detector node.

    Attributes:
        backbone: ResNet trunk.
        dcn_stages: ResNet stages (1..4) whose 3x3 convolutions become modulated deformable
            convolutions (``()``: none).
        fpn_channels: channels of every pyramid level.
        fpn_levels: consecutive pyramid levels (stride ``2**l``), e.g. ``(3, 4, 5, 6, 7)``.
        regress_edges: boundaries (pixels of the network input) between the regress ranges of
            consecutive levels (``len(fpn_levels) - 1`` increasing values); the first level
            starts at 0, the last is unbounded.
        center_radius: centre-sampling radius in strides.
        head_convs: 3x3 conv + GroupNorm + ReLU layers in each dense tower.
        head_channels: channels of the dense towers.
        embed_dim: size ``E`` of the query embedding and of point/object features.
        num_heads / num_points: deformable attention heads and points per head
            (``N = num_heads * num_points`` correspondences per object).
        init_radius: initial sampling radius in strides.
        point_hidden: hidden size of the point subnet.
        num_classes / num_attributes: nuScenes: 10 and 8; ``num_attributes = 0`` disables the
            attribute head.
        with_velocity: predict (vx, vz).
        class_mean_sizes: ``num_classes`` sizes (w, l, h), the reference of the size head.
        input_scale: resize factor applied to the images before the network.
        pixel_mean / pixel_std: RGB normalisation of images in [0, 1] (ImageNet).
        score_threshold: minimum class score and final score of a detection.
        pre_nms_top_k: queries kept per image and level before the PnP solve.
        max_detections: detections per image after NMS.
        nms_iou: IoU threshold of the BEV NMS.
        multi_start: at inference, solve from five initial poses per object (the closed-form
            4DoF initialisation and yaw 0, 90, 180, 270 degrees with the translation from the
            2D/3D centroids and spreads) and keep the lowest cost (see :meth:`solve`).
        solve_iterations: LM iteration limit of the inference solve (:meth:`solve`; 0: the
            limit of ``monte_carlo.solver``, which training uses).  Learned correspondences
            make some starts creep for many iterations at a tiny gain (the robust kernel's
            IRLS steps converge linearly), and the batched loop runs until its slowest
            element: the reference implementation also stops its inference LM after a few
            iterations.
        monte_carlo: the EPro-PnP layer's settings (AMIS, solver).
        loss: loss weights.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dcn_stages: tuple[int, ...] = (3, 4)
    fpn_channels: int = 256
    fpn_levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    regress_edges: tuple[float, ...] = (48.0, 96.0, 192.0, 384.0)
    center_radius: float = 1.5
    head_convs: int = 4
    head_channels: int = 256
    embed_dim: int = 256
    num_heads: int = 8
    num_points: int = 8
    init_radius: float = 2.0
    point_hidden: int = 128
    num_classes: int = len(NUSCENES_CLASSES)
    num_attributes: int = len(NUSCENES_ATTRIBUTES)
    with_velocity: bool = True
    class_mean_sizes: tuple[tuple[float, float, float], ...] = NUSCENES_MEAN_SIZES
    input_scale: float = 1.0
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    score_threshold: float = 0.05
    pre_nms_top_k: int = 100
    max_detections: int = 100
    nms_iou: float = 0.5
    multi_start: bool = True
    solve_iterations: int = 12
    monte_carlo: MonteCarloConfig = field(default_factory=MonteCarloConfig)
    loss: DeformableLossConfig = field(default_factory=DeformableLossConfig)

    def __post_init__(self) -> None:  # noqa: C901 - one check per field
        if len(self.regress_edges) != len(self.fpn_levels) - 1 or any(
            not b > a for a, b in zip(self.regress_edges, self.regress_edges[1:], strict=False)
        ) or any(not e > 0 for e in self.regress_edges):
            raise ConfigError(
                f"regress_edges must hold len(fpn_levels) - 1 = {len(self.fpn_levels) - 1} "
                f"increasing positive values, got {self.regress_edges}"
            )
        if self.num_classes < 1 or len(self.class_mean_sizes) != self.num_classes:
            raise ConfigError(
                f"class_mean_sizes needs one (w, l, h) per class ({self.num_classes}), "
                f"got {len(self.class_mean_sizes)}"
            )
        if any(not v > 0 for s in self.class_mean_sizes for v in s):
            raise ConfigError("class_mean_sizes must be positive")
        if self.num_attributes < 0:
            raise ConfigError(f"num_attributes must be >= 0, got {self.num_attributes}")
        for name in ("fpn_channels", "head_channels", "embed_dim", "num_heads", "num_points",
                     "point_hidden", "pre_nms_top_k", "max_detections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_convs < 0:
            raise ConfigError(f"head_convs must be >= 0, got {self.head_convs}")
        if self.solve_iterations < 0:
            raise ConfigError(f"solve_iterations must be >= 0, got {self.solve_iterations}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} must be divisible by num_heads "
                              f"{self.num_heads}")
        if self.num_heads * self.num_points < Pose4DoF.min_points:
            raise ConfigError("num_heads * num_points must be >= 3 (4DoF PnP)")
        if any(s not in (1, 2, 3, 4) for s in self.dcn_stages):
            raise ConfigError(f"dcn_stages must be in 1..4, got {self.dcn_stages}")
        if not 0 < self.input_scale <= 4:
            raise ConfigError(f"input_scale must be in (0, 4], got {self.input_scale}")
        if any(not s > 0 for s in self.pixel_std):
            raise ConfigError(f"pixel_std must be positive, got {self.pixel_std}")
        if not 0 <= self.score_threshold < 1:
            raise ConfigError(f"score_threshold must be in [0, 1), got {self.score_threshold}")
        if not 0 < self.nms_iou <= 1:
            raise ConfigError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if not self.center_radius > 0 or not self.init_radius > 0:
            raise ConfigError("center_radius and init_radius must be positive")

    @property
    def num_correspondences(self) -> int:
        """``N = num_heads * num_points`` 2D-3D pairs per object."""
        return self.num_heads * self.num_points


def small_config(**overrides: Any) -> DeformableNetConfig:
    """The CPU configuration of the ROS detector node: ResNet-18 of width 32 without DCN,
    P3-P5 with 64 channels, one conv per tower, 4 heads x 8 points, images downscaled by 0.4
    (1600x900 -> 640x360), AMIS 4 x 64 samples.  ``overrides`` replace top-level fields."""
    base: dict[str, Any] = dict(
        backbone=BackboneConfig(depth=18, base_width=32),
        dcn_stages=(),
        fpn_channels=64,
        fpn_levels=(3, 4, 5),
        regress_edges=(48.0, 96.0),
        head_convs=1,
        head_channels=64,
        embed_dim=64,
        num_heads=4,
        num_points=8,
        point_hidden=64,
        input_scale=0.4,
        pre_nms_top_k=50,
        max_detections=50,
        monte_carlo=MonteCarloConfig(num_samples=64),
    )
    base.update(overrides)
    return DeformableNetConfig(**base)


class QueryOutput(NamedTuple):
    """Per-query predictions (``Q`` queries, ``N`` points, network-input pixels).

    Attributes:
        x2d: ``(Q, N, 2)`` sampled locations = 2D points.
        x3d: ``(Q, N, 3)`` object points ``NOC * extent`` (metres).
        w2d: ``(Q, N, 2)`` weights (softmax over N times the weight scale).
        noc: ``(Q, N, 3)`` normalised object coordinates.
        weight_scale: ``(Q, 2)`` global weight scale.
        size: ``(Q, 3)`` box size (w, l, h).
        log_size: ``(Q, 3)`` log(size / class mean).
        score3d_logit: ``(Q,)`` 3D score logit.
        velocity: ``(Q, 2)`` (vx, vz), or NaN without the velocity head.
        attribute_logits: ``(Q, A)`` (``A = 0`` without the attribute head).
        cam_mats: ``(Q, 3, 3)`` network-input intrinsics of each query's image.
    """

    x2d: torch.Tensor
    x3d: torch.Tensor
    w2d: torch.Tensor
    noc: torch.Tensor
    weight_scale: torch.Tensor
    size: torch.Tensor
    log_size: torch.Tensor
    score3d_logit: torch.Tensor
    velocity: torch.Tensor
    attribute_logits: torch.Tensor
    cam_mats: torch.Tensor


class DenseOutput(NamedTuple):
    """Dense FCOS outputs, levels concatenated (``L`` locations, ``C`` classes, ``E`` embed).

    Attributes:
        feats: the pyramid maps ``(B, fpn_channels, H_l, W_l)``.
        levels: their :class:`~epropnp_lib.nets.fcos_targets.LevelSpec`.
        cls_logits: ``(B, L, C)``.
        offset: ``(B, L, 2)`` predicted offset to the projected centre (strides).
        embed: ``(B, L, E)`` query embeddings.
        locations: ``(L, 2)`` location pixels; strides: ``(L,)``; level_index: ``(L,)`` long.
        cam_mats: ``(B, 3, 3)`` intrinsics of the network input.
        image_size: ``(H', W')`` of the network input.
    """

    feats: list[torch.Tensor]
    levels: list[LevelSpec]
    cls_logits: torch.Tensor
    offset: torch.Tensor
    embed: torch.Tensor
    locations: torch.Tensor
    strides: torch.Tensor
    level_index: torch.Tensor
    cam_mats: torch.Tensor
    image_size: tuple[int, int]


class Detections(NamedTuple):
    """Detections of one image (``M`` boxes, ``N`` correspondences, ``S`` posterior samples).

    Attributes:
        boxes: :class:`~epropnp_lib.geometry.boxes.CameraBoxes` (pose from the PnP solve, predicted
            size, class, score = class score * 3D score, velocity (NaN without the head),
            attribute (-1 without the head)).
        covariance: ``(M, 4, 4)`` Laplace covariance of ``(x, y, z, yaw)``.
        x2d: ``(M, N, 2)`` 2D points in the original image's pixels.
        x3d: ``(M, N, 3)`` object points (metres, object frame).
        w2d: ``(M, N, 2)`` weights.
        pose_samples: ``(S, M, 4)`` equally weighted posterior samples, or ``None``.
    """

    boxes: CameraBoxes
    covariance: torch.Tensor
    x2d: torch.Tensor
    x3d: torch.Tensor
    w2d: torch.Tensor
    pose_samples: torch.Tensor | None


class DeformableLosses(NamedTuple):
    """Loss terms (scalars; the weighted sum is ``total``) and the number of positives."""

    total: torch.Tensor
    cls: torch.Tensor
    offset: torch.Tensor
    kl: torch.Tensor
    reg: torch.Tensor
    size: torch.Tensor
    score3d: torch.Tensor
    velocity: torch.Tensor
    attribute: torch.Tensor
    coord: torch.Tensor
    num_positive: int
    num_pose_queries: int


def _tower(cin: int, channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(cin if i == 0 else channels, channels, 3, padding=1, bias=False),
                   nn.GroupNorm(math.gcd(32, channels), channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Dense head shared by all levels: class logits, centre offset, query embedding.

    Forward: list of ``(B, C_in, H_l, W_l)`` -> (logits ``(B, L, C)``, offset ``(B, L, 2)``,
    embed ``(B, L, E)``), levels concatenated row-major.
    """

    def __init__(self, cfg: DeformableNetConfig) -> None:
        super().__init__()
        cin = cfg.fpn_channels
        ch = cfg.head_channels if cfg.head_convs > 0 else cin
        self.cls_tower = _tower(cin, ch, cfg.head_convs)
        self.query_tower = _tower(cin, ch, cfg.head_convs)
        self.cls_out = nn.Conv2d(ch, cfg.num_classes, 3, padding=1)
        self.offset_out = nn.Conv2d(ch, 2, 3, padding=1)
        self.embed_out = nn.Conv2d(ch, cfg.embed_dim, 1)
        self.level_embed = nn.Parameter(torch.zeros(len(cfg.fpn_levels), cfg.embed_dim))
        self.offset_scale = nn.Parameter(torch.ones(len(cfg.fpn_levels)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.level_embed, std=0.02)
        nn.init.normal_(self.embed_out.weight, std=math.sqrt(1.0 / ch))
        prior = 0.01  # FCOS: initial foreground probability
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior) / prior))  # type: ignore[arg-type]

    def forward(
        self, feats: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, offsets, embeds = [], [], []
        for k, f in enumerate(feats):
            c = self.cls_tower(f)
            q = self.query_tower(f)
            logits.append(self.cls_out(c).flatten(2).transpose(1, 2))
            offsets.append((self.offset_out(q) * self.offset_scale[k]).flatten(2).transpose(1, 2))
            emb = self.embed_out(q).flatten(2).transpose(1, 2) + self.level_embed[k]
            embeds.append(emb)
        return torch.cat(logits, 1), torch.cat(offsets, 1), torch.cat(embeds, 1)


class DeformableCorrespondenceNet(nn.Module):
    """FCOS3D-style detector with deformable 2D-3D correspondences (module docstring).

    Example::

        >>> net = DeformableCorrespondenceNet(small_config(score_threshold=0.0,
        ...                                                 pre_nms_top_k=2)).eval()
        >>> images = torch.rand(1, 3, 90, 160)
        >>> cam_K = torch.tensor([[[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]]])
        >>> dets = net.detect(images, cam_K)
        >>> dets[0].boxes.center.shape[-1], dets[0].x2d.shape[-2]
        (3, 32)
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    mean_sizes: torch.Tensor

    def __init__(self, config: DeformableNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DeformableNetConfig()
        self.backbone = ResNetBackbone(cfg.backbone)
        if cfg.dcn_stages:
            convert_to_deformable(self.backbone, cfg.dcn_stages)
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn_channels, cfg.fpn_levels)
        self.head = FCOSHead(cfg)
        e, n = cfg.embed_dim, cfg.num_correspondences
        self.attention = DeformableAttention(
            cfg.fpn_channels, e, cfg.num_heads, cfg.num_points, len(cfg.fpn_levels),
            init_radius=cfg.init_radius,
        )
        self.point_embed = nn.Parameter(torch.zeros(n, e))
        nn.init.normal_(self.point_embed, std=0.02)
        self.point_query = nn.Linear(e, e)
        self.point_pos = nn.Linear(2, e)
        self.point_subnet = nn.Sequential(
            nn.LayerNorm(e), nn.Linear(e, cfg.point_hidden), nn.ReLU(inplace=True),
            nn.Linear(cfg.point_hidden, cfg.point_hidden), nn.ReLU(inplace=True),
            nn.Linear(cfg.point_hidden, 5),
        )
        n_obj = 1 + 2 + 3 + (2 if cfg.with_velocity else 0) + cfg.num_attributes
        last = nn.Linear(e, n_obj)
        self.object_head = nn.Sequential(nn.Linear(e, e), nn.ReLU(inplace=True), last)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        # Initial weight scale: sqrt(N) / 20, a pose distribution whose projected centre has a
        # standard deviation of about 20 pixels (broad while the points are still random).
        init_scale = math.sqrt(n) / 20.0
        with torch.no_grad():
            last.bias[1:3] = math.log(init_scale)
        self.epropnp = EProPnP4DoF(cfg.monte_carlo)
        self.kl_loss = MonteCarloPoseLoss(init_norm_factor=init_scale,
                                          momentum=cfg.loss.kl_norm_momentum)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("mean_sizes", torch.tensor(cfg.class_mean_sizes), persistent=False)

    # --- input ------------------------------------------------------------------------------
    def preprocess(
        self, images: torch.Tensor, cam_K: torch.Tensor  # noqa: N803 - K is the standard name
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate, resize by ``input_scale`` and normalise.

        Args:
            images: ``(B, 3, H, W)`` RGB, floating in [0, 1] or uint8.
            cam_K: ``(B, 3, 3)`` intrinsics of ``images``.

        Returns:
            ``(x (B, 3, H', W'), cam_K' (B, 3, 3))`` in the network's dtype (``x`` in the
            channels-last memory format).
        """
        dims = check_shape(images, ["B", 3, "H", "W"], "images")
        check_shape(cam_K, ["B", 3, 3], "cam_K", dims)
        param = self.pixel_mean
        for name, t in (("images", images), ("cam_K", cam_K)):
            if t.device != param.device:
                raise DeviceError(f"{name} is on {t.device} but the network on {param.device}")
        if not cam_K.is_floating_point():
            raise DTypeError(f"cam_K must be floating point, got {cam_K.dtype}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise DTypeError(f"images must be uint8 or floating point, got {images.dtype}")
        if not torch.isfinite(cam_K).all():
            raise DTypeError("cam_K contains NaN or infinity")
        k = cam_K.to(self._dtype())
        x = images
        s = self.config.input_scale
        if s != 1.0:
            h, w = dims["H"], dims["W"]
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            if x.dtype == torch.uint8 and x.device.type != "cpu":
                x = x.to(self._dtype()) / 255.0
            # uint8 images are resized as uint8 on the CPU (a vectorised kernel, ~5x faster
            # than resizing the float image at 1600x900).
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=s < 1.0)
            k = pixel_affine((nw / w, nh / h), (-0.5, -0.5)).to(k) @ k
        x = x.to(self._dtype()) / 255.0 if x.dtype == torch.uint8 else x.to(self._dtype())
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        # Channels-last activations: ~20% faster convolutions on the CPU (oneDNN), and the
        # layout tensor cores prefer on CUDA.
        return x.contiguous(memory_format=torch.channels_last), k

    def _dtype(self) -> torch.dtype:
        return self.point_embed.dtype

    # --- network ----------------------------------------------------------------------------
    def forward_dense(self, x: torch.Tensor, cam_K: torch.Tensor) -> DenseOutput:  # noqa: N803
        """Backbone, FPN and dense head on a preprocessed batch ``x: (B, 3, H', W')`` with its
        intrinsics ``cam_K: (B, 3, 3)``."""
        cfg = self.config
        feats = self.fpn(self.backbone(x))
        logits, offset, embed = self.head(feats)
        strides = self.fpn.strides
        edges = (0.0, *cfg.regress_edges, math.inf)
        levels = [
            LevelSpec(s, f.shape[-2], f.shape[-1], edges[k], edges[k + 1])
            for k, (s, f) in enumerate(zip(strides, feats, strict=True))
        ]
        locs, loc_strides, lvl = level_locations(levels, x.dtype, x.device)
        return DenseOutput(feats, levels, logits, offset, embed, locs, loc_strides, lvl, cam_K,
                           (x.shape[-2], x.shape[-1]))

    def decode_queries(
        self,
        dense: DenseOutput,
        batch_index: torch.Tensor,
        location_index: torch.Tensor,
        labels: torch.Tensor,
    ) -> QueryOutput:
        """Correspondences and object properties of the queries at ``location_index: (Q,)``
        of images ``batch_index: (Q,)``; ``labels: (Q,)`` select the class mean size."""
        cfg = self.config
        query = dense.embed[batch_index, location_index]  # (Q, E)
        stride = dense.strides[location_index]
        reference = dense.locations[location_index] + dense.offset[
            batch_index, location_index] * stride[:, None]
        samp = self.attention(dense.feats, self.fpn.strides, query, reference, stride,
                              batch_index)
        pf = (samp.point_features + self.point_query(query)[:, None, :] + self.point_embed
              + self.point_pos(samp.offsets))
        out = self.point_subnet(pf)  # (Q, N, 5)
        noc, w_logit = out[..., :3], out[..., 3:]
        obj = self.object_head(samp.object_features)
        score3d = obj[:, 0]
        weight_scale = obj[:, 1:3].clamp(-_MAX_LOG_SCALE, _MAX_LOG_SCALE).exp()
        log_size = obj[:, 3:6].clamp(-_MAX_LOG_SIZE, _MAX_LOG_SIZE)
        size = self.mean_sizes.to(log_size.dtype)[labels] * log_size.exp()
        rest = obj[:, 6:]
        if cfg.with_velocity:
            velocity, rest = rest[:, :2], rest[:, 2:]
        else:
            velocity = torch.full_like(obj[:, :2], torch.nan)
        x3d = noc * object_extent(size)[:, None, :]
        w2d = w_logit.softmax(dim=1) * weight_scale[:, None, :]
        return QueryOutput(samp.points, x3d, w2d, noc, weight_scale, size, log_size, score3d,
                           velocity, rest, dense.cam_mats[batch_index])

    # --- training ---------------------------------------------------------------------------
    def loss(
        self,
        images: torch.Tensor,
        cam_K: torch.Tensor,  # noqa: N803
        targets: Sequence[CameraBoxes],
        generator: torch.Generator | None = None,
    ) -> DeformableLosses:
        """Training losses of a batch (module docstring).

        Args:
            images: ``(B, 3, H, W)``; cam_K: ``(B, 3, 3)`` as in :meth:`preprocess`.
            targets: ``B`` ground-truth :class:`~epropnp_lib.geometry.boxes.CameraBoxes`.
            generator: source of randomness of the query draw and the Monte Carlo samples
                (on the network's device).
        """
        cfg, lc = self.config, self.config.loss
        if len(targets) != images.shape[0]:
            raise ConfigError(f"{len(targets)} targets for {images.shape[0]} images")
        x, k = self.preprocess(images, cam_K)
        dense = self.forward_dense(x, k)
        tgt = assign_locations(dense.levels, [t.validate() for t in targets], k,
                               dense.image_size, cfg.num_classes, cfg.center_radius)
        pos = tgt.positive
        num_pos = int(pos.sum())
        onehot = F.one_hot(tgt.labels, cfg.num_classes + 1)[..., : cfg.num_classes]
        loss_cls = sigmoid_focal_loss(dense.cls_logits, onehot.to(dense.cls_logits.dtype),
                                      alpha=lc.focal_alpha, gamma=lc.focal_gamma,
                                      reduction="sum") / max(num_pos, 1)
        # Zero for the terms a batch lacks, touching every trainable parameter so that
        # DistributedDataParallel sees a gradient for each even in a batch without boxes.
        zero = sum((p.view(-1)[0] * 0.0 for p in self.parameters() if p.requires_grad),
                   dense.cls_logits.sum() * 0.0)
        terms = dict(offset=zero, kl=zero, reg=zero, size=zero, score3d=zero, velocity=zero,
                     attribute=zero, coord=zero)
        n_q = 0
        if num_pos > 0:
            terms["offset"] = F.l1_loss(dense.offset[pos], tgt.offset[pos])
            b_idx, l_idx = pos.nonzero(as_tuple=True)
            if num_pos > lc.max_pose_queries:
                gen_device = generator.device if generator is not None else torch.device("cpu")
                pick = torch.randperm(num_pos, generator=generator, device=gen_device)
                pick = pick[: lc.max_pose_queries].to(b_idx.device)
                b_idx, l_idx = b_idx[pick], l_idx[pick]
            n_q = int(b_idx.shape[0])
            gt = _gather_boxes(targets, b_idx, tgt.box_index[b_idx, l_idx], x.dtype, x.device)
            terms.update(self._query_losses(dense, b_idx, l_idx, gt, generator))
        weights = dict(offset=lc.offset_weight, kl=lc.kl_weight, reg=lc.reg_weight,
                       size=lc.size_weight, score3d=lc.score_weight,
                       velocity=lc.velocity_weight, attribute=lc.attribute_weight,
                       coord=lc.coord_weight)
        total = lc.cls_weight * loss_cls + sum(weights[k_] * v for k_, v in terms.items())
        return DeformableLosses(total, loss_cls, terms["offset"], terms["kl"], terms["reg"],
                                terms["size"], terms["score3d"], terms["velocity"],
                                terms["attribute"], terms["coord"], num_pos, n_q)

    def _query_losses(
        self,
        dense: DenseOutput,
        b_idx: torch.Tensor,
        l_idx: torch.Tensor,
        gt: CameraBoxes,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        cfg, lc = self.config, self.config.loss
        out = self.decode_queries(dense, b_idx, l_idx, gt.labels)
        x2d = out.x2d.detach() if lc.detach_x2d else out.x2d
        target_pose = gt.pose4()
        # The solver starts from the ground truth in training: with the still-random
        # correspondences of early training the closed-form
        # initialisation often lands in a spurious optimum behind the camera, where the
        # Laplace proposal misses the mass around the target and the Monte Carlo estimate of
        # the normaliser fails.  The optimum found is still the network's own.
        res = self.epropnp(out.x3d, x2d, out.w2d, out.cam_mats, pose_target=target_pose,
                           pose_init=target_pose if lc.init_from_target else None,
                           generator=generator, with_step=lc.reg_weight > 0)
        terms: dict[str, torch.Tensor] = {}
        # A DEGENERATE solve (the rule rather than the exception at initialisation: random
        # correspondences make the optimum recede to infinity) still has a usable Monte Carlo
        # KL around the layer's broad fallback proposal, and it is the signal that makes the
        # correspondences consistent; only invalid inputs are left out.
        status = torch.where(res.status == SolveStatus.DEGENERATE,
                             torch.full_like(res.status, SolveStatus.MAX_ITERATIONS), res.status)
        terms["kl"] = self.kl_loss(res._replace(status=status),
                                   norm_factor=out.weight_scale.detach().mean())
        if res.pose_step is not None:
            terms["reg"] = derivative_regularization_loss(
                Pose4DoF, res.pose_step, target_pose, res.valid,
                position_weight=lc.reg_position_weight,
                orientation_weight=lc.reg_orientation_weight,
            )
        mean = self.mean_sizes.to(gt.size.dtype)[gt.labels]
        terms["size"] = F.l1_loss(out.log_size, (gt.size / mean).log())
        with torch.no_grad():
            err = (res.pose[:, :3] - target_pose[:, :3]).norm(dim=-1)
            score_tgt = torch.where(res.valid & torch.isfinite(err),
                                    torch.exp(-err / lc.score_distance), 0.0)
        terms["score3d"] = F.binary_cross_entropy_with_logits(out.score3d_logit, score_tgt)
        if cfg.with_velocity:
            ok = torch.isfinite(gt.velocity).all(-1)
            if bool(ok.any()):
                terms["velocity"] = F.l1_loss(out.velocity[ok], gt.velocity[ok])
        if cfg.num_attributes > 0:
            ok = (gt.attributes >= 0) & (gt.attributes < cfg.num_attributes)
            if bool(ok.any()):
                terms["attribute"] = F.cross_entropy(out.attribute_logits[ok], gt.attributes[ok])
        if lc.coord_weight > 0:
            hits = ray_box_coordinates(out.x2d.detach(), out.cam_mats, gt.center, gt.size,
                                       gt.yaw)
            if bool(hits.hit.any()):
                terms["coord"] = F.smooth_l1_loss(out.noc[hits.hit], hits.noc[hits.hit],
                                                  beta=0.1)
        return terms

    # --- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        cam_K: torch.Tensor,  # noqa: N803
        num_pose_samples: int = 0,
        generator: torch.Generator | None = None,
        sample_iterations: int | None = None,
    ) -> list[Detections]:
        """Detect 3D boxes (module docstring).

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1] (floating) or uint8.
            cam_K: ``(B, 3, 3)`` intrinsics of ``images``.
            num_pose_samples: equally weighted posterior samples per detection (0: none).
            generator: randomness of the posterior samples.
            sample_iterations: AMIS iterations of the posterior samples (default: the
                Monte Carlo config's).

        Returns:
            ``B`` :class:`Detections`.
        """
        cfg = self.config
        x, k = self.preprocess(images, cam_K)
        dense = self.forward_dense(x, k)
        scores_all, labels_all = dense.cls_logits.sigmoid().max(dim=-1)  # (B, L)
        b_sel, l_sel = [], []
        for b in range(x.shape[0]):
            for lv in range(len(dense.levels)):
                idx = (dense.level_index == lv).nonzero().squeeze(-1)
                sc = scores_all[b, idx]
                keep = sc >= cfg.score_threshold
                idx, sc = idx[keep], sc[keep]
                if idx.numel() > cfg.pre_nms_top_k:
                    idx = idx[sc.topk(cfg.pre_nms_top_k).indices]
                l_sel.append(idx)
                b_sel.append(torch.full_like(idx, b))
        b_idx, l_idx = torch.cat(b_sel), torch.cat(l_sel)
        if b_idx.numel() == 0:
            return [self._no_detections(x, num_pose_samples) for _ in range(x.shape[0])]
        labels = labels_all[b_idx, l_idx]
        out = self.decode_queries(dense, b_idx, l_idx, labels)
        # The final score does not depend on the pose: queries below the threshold are dropped
        # before the (multi-start) PnP solve, the most expensive step of inference.
        score = scores_all[b_idx, l_idx] * out.score3d_logit.sigmoid()
        above = score >= cfg.score_threshold
        if not bool(above.all()):
            out = QueryOutput(*(field[above] for field in out))
            b_idx, l_idx, labels, score = b_idx[above], l_idx[above], labels[above], score[above]
            if b_idx.numel() == 0:
                return [self._no_detections(x, num_pose_samples) for _ in range(x.shape[0])]
        sol = self.solve(out.x3d, out.x2d, out.w2d, out.cam_mats)
        attrs = (out.attribute_logits.argmax(-1) if cfg.num_attributes > 0
                 else torch.full_like(labels, -1))
        boxes = CameraBoxes(sol.pose[:, :3], out.size, sol.pose[:, 3], labels, out.velocity,
                            attrs, score)
        ok = (sol.status <= 1) & (score >= cfg.score_threshold) & torch.isfinite(
            sol.pose).all(-1)
        sx, sy = images.shape[-1] / x.shape[-1], images.shape[-2] / x.shape[-2]
        x2d_orig = (out.x2d + 0.5) * out.x2d.new_tensor([sx, sy]) - 0.5
        results = []
        for b in range(x.shape[0]):
            sel = ((b_idx == b) & ok).nonzero().squeeze(-1)
            if sel.numel() > 0:
                bev = _bev_rectangles(boxes.select(sel))
                kept = batched_nms(bev, score[sel], labels[sel], cfg.nms_iou)
                sel = sel[kept[: cfg.max_detections]]
            samples = None
            if num_pose_samples > 0:
                samples = self.pose_samples(
                    out.x3d[sel], out.x2d[sel], out.w2d[sel], out.cam_mats[sel],
                    PnPSolution(*(t[sel] for t in sol)), num_pose_samples, generator,
                    sample_iterations,
                ) if sel.numel() > 0 else x.new_zeros(num_pose_samples, 0, 4)
            results.append(Detections(boxes.select(sel), sol.covariance[sel], x2d_orig[sel],
                                      out.x3d[sel], out.w2d[sel], samples))
        return results

    @torch.no_grad()
    def solve(
        self,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        cam_mats: torch.Tensor,
    ) -> PnPSolution:
        """PnP solve of ``Q`` objects' correspondences (``x3d: (Q, N, 3)``, ``x2d, w2d:
        (Q, N, 2)``, ``cam_mats: (Q, 3, 3)``), multi-start when ``config.multi_start``.

        Learned correspondences often mislead the closed-form 4DoF initialisation (a linear
        relaxation) into an optimum behind the camera or a wrong local optimum; the solve
        therefore also starts from the four yaw rotations among
        :func:`~epropnp_lib.pnp.init.hypotheses_6dof`'s poses (translation from the weighted
        2D/3D centroids and spreads) and keeps, per object, the usable solution of lowest cost.
        """
        solver = self.epropnp.config.solver
        if self.config.solve_iterations > 0:
            solver = dataclasses.replace(solver, max_iterations=self.config.solve_iterations)
        if not self.config.multi_start or x3d.shape[0] == 0:
            return solve_pnp(x3d, x2d, w2d, cam_mats, dof=4, config=solver)
        q = x3d.shape[0]
        hyp = hypotheses_6dof(x3d, x2d, w2d, cam_mats)  # (24, Q, 7)
        quat = hyp[:, 0, 3:]
        about_y = (quat[:, 1].abs() < 1e-6) & (quat[:, 3].abs() < 1e-6)
        hyp = hyp[about_y]  # (4, Q, 7): yaw 0, 90, 180, 270 degrees
        yaw = 2.0 * torch.atan2(hyp[..., 5], hyp[..., 3])
        starts = torch.cat((init_4dof(x3d, x2d, w2d, cam_mats),
                            torch.cat((hyp[..., :3], yaw[..., None]), dim=-1)))  # (S, Q, 4)
        n = starts.shape[0]
        sol = solve_pnp(
            x3d.repeat(n, 1, 1), x2d.repeat(n, 1, 1), w2d.repeat(n, 1, 1),
            cam_mats.repeat(n, 1, 1), dof=4, pose_init=starts.flatten(0, 1), config=solver,
        )
        usable = (sol.status <= SolveStatus.MAX_ITERATIONS) & torch.isfinite(sol.cost)
        cost = torch.where(usable, sol.cost, torch.inf).view(n, q)
        # Prefer usable solutions; among none usable, the first (closed-form) start.
        best = torch.where(torch.isfinite(cost).any(0), cost.argmin(0), 0)
        flat = best * q + torch.arange(q, device=best.device)
        return PnPSolution(*(t[flat] for t in sol))

    @torch.no_grad()
    def pose_samples(
        self,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        cam_mats: torch.Tensor,
        solution: PnPSolution,
        num_samples: int,
        generator: torch.Generator | None = None,
        num_iterations: int | None = None,
    ) -> torch.Tensor:
        """``(num_samples, Q, 4)`` equally weighted posterior samples around the solutions of
        :meth:`solve` (``solution``, shapes as there): the AMIS samples of
        :class:`~epropnp_lib.epropnp.EProPnP4DoF` around each solution and its Laplace
        covariance, resampled by their importance weights (``num_iterations``: AMIS
        iterations, default the config's).  NaN for objects whose solve failed."""
        return self.epropnp.posterior_samples(
            x3d, x2d, w2d, cam_mats, num_samples, generator=generator, solution=solution,
            num_iterations=num_iterations,
        )

    def _no_detections(self, x: torch.Tensor, num_pose_samples: int) -> Detections:
        n = self.config.num_correspondences
        boxes = CameraBoxes.empty(dtype=x.dtype, device=x.device)
        return Detections(boxes, x.new_zeros(0, 4, 4), x.new_zeros(0, n, 2),
                          x.new_zeros(0, n, 3), x.new_zeros(0, n, 2),
                          x.new_zeros(num_pose_samples, 0, 4) if num_pose_samples > 0 else None)

    # --- checkpoints ------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a checkpoint (kind ``"deformable_correspondence_net"``) holding
        ``to_dict(config)`` and the state dict."""
        save_checkpoint(path, kind=CHECKPOINT_KIND, config=to_dict(self.config),
                        state_dict=self.state_dict(), extra=extra)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> DeformableCorrespondenceNet:
        """Build the network stored in ``path`` (loaded with ``weights_only=True``).

        Raises:
            CheckpointError: missing, truncated or malformed file, or another kind.
            DeformableCheckpointError: the stored config is invalid or the tensors do not fit
                it (the message names the file and the first offending keys).
        """
        net, _ = load_model(path, kind=CHECKPOINT_KIND, config_class=DeformableNetConfig,
                            build=cls, error=DeformableCheckpointError,
                            name="deformable network", map_location=map_location)
        return net


def _gather_boxes(
    targets: Sequence[CameraBoxes],
    b_idx: torch.Tensor,
    box_idx: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> CameraBoxes:
    """The ground-truth boxes ``targets[b_idx[q]][box_idx[q]]`` as one CameraBoxes ``(Q, ...)``."""
    counts = [t.num_boxes for t in targets]
    offsets = torch.tensor([0, *counts], device=device).cumsum(0)[:-1]
    flat = offsets[b_idx] + box_idx
    cat = CameraBoxes(*(torch.cat([f.to(device) for f in fields])
                        for fields in zip(*targets, strict=True)))
    floats = ("center", "size", "yaw", "velocity", "scores")
    cat = cat._replace(**{n: getattr(cat, n).to(dtype) for n in floats},
                       labels=cat.labels.long(), attributes=cat.attributes.long())
    return cat.select(flat)


def _bev_rectangles(boxes: CameraBoxes) -> torch.Tensor:
    """``(M, 4)`` axis-aligned ``(x1, z1, x2, z2)`` around the footprints in the camera x-z
    plane."""
    corners = boxes.corners()[..., [0, 2]]  # (M, 8, 2)
    return torch.cat((corners.amin(1), corners.amax(1)), dim=-1)
