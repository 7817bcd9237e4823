"""Settings of the deformable correspondence network: :class:`DeformableNetConfig` (network,
inference), :class:`DeformableLossConfig` (training) and :func:`small_config` (the CPU network
of the ROS detector node).  Frozen dataclasses that validate their fields (``ConfigError``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from epropnp_lib.data.nuscenes import NUSCENES_ATTRIBUTES, NUSCENES_CLASSES, NUSCENES_MEAN_SIZES
from epropnp_lib.epropnp import MonteCarloConfig
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.pose import Pose4DoF
from epropnp_lib.nets.backbone import BackboneConfig
from epropnp_lib.nets.config_checks import check_non_negative

__all__ = [
    "DeformableLossConfig",
    "DeformableNetConfig",
    "check_input_scale",
    "check_score_threshold",
    "small_config",
]


def check_input_scale(value: float) -> None:
    """``ConfigError`` unless ``value`` is a resize factor in (0, 4]."""
    if not 0 < value <= 4:
        raise ConfigError(f"input_scale must be in (0, 4], got {value}")


def check_score_threshold(value: float) -> None:
    """``ConfigError`` unless ``value`` is a score threshold in [0, 1)."""
    if not 0 <= value < 1:
        raise ConfigError(f"score_threshold must be in [0, 1), got {value}")


@dataclass(frozen=True)
class DeformableLossConfig:
    """Loss weights and settings of :meth:`DeformableCorrespondenceNet.loss
    <epropnp_lib.nets.deformable.DeformableCorrespondenceNet.loss>`.

    Attributes:
        cls_weight / focal_alpha / focal_gamma: sigmoid focal loss on the class logits.
        offset_weight: L1 on the offset to the projected centre (strides).
        kl_weight: Monte Carlo KL pose loss (normalised by the running mean weight scale).
        reg_weight: derivative regularisation (Eq. 10); 0 disables the one-step pose.
        reg_position_weight / reg_orientation_weight: its two terms.
        reg_max_position_std / reg_max_yaw_std: the regulariser only counts queries whose
            Laplace covariance at ``y*`` gives every position standard deviation below
            ``reg_max_position_std`` (metres) and a yaw standard deviation below
            ``reg_max_yaw_std`` (radians); ``inf`` counts every valid query.  Where the
            correspondences do not determine the pose (random at initialisation, collapsed
            NOC) the one-step pose's derivative is ill-conditioned: its gradient is orders of
            magnitude above the other terms', and under gradient-norm clipping it alone moves
            the network.
        size_weight: L1 on log(size / class mean).
        score_weight / score_distance: BCE on the 3D score, target
            ``exp(-||t* - t_gt|| / score_distance)`` (metres).
        velocity_weight: L1 on (vx, vz) where the target is finite.
        attribute_weight: cross entropy on the attribute (boxes with attribute -1 ignored).
        coord_weight: smooth L1 on NOC at points whose ray hits the box
            (:func:`~epropnp_lib.nets.deformable.loss.deformable_loss`); 0 = the paper's basic
            variant.
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
    reg_max_position_std: float = math.inf
    reg_max_yaw_std: float = math.inf
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
        check_non_negative(self, ("cls_weight", "offset_weight", "kl_weight", "reg_weight",
                                  "reg_position_weight", "reg_orientation_weight",
                                  "size_weight", "score_weight", "velocity_weight",
                                  "attribute_weight", "coord_weight", "focal_gamma"))
        if not 0 <= self.focal_alpha <= 1:
            raise ConfigError(f"focal_alpha must be in [0, 1], got {self.focal_alpha}")
        if not (self.reg_max_position_std > 0 and self.reg_max_yaw_std > 0):
            raise ConfigError("reg_max_position_std and reg_max_yaw_std must be positive (inf: "
                              f"no limit), got {self.reg_max_position_std}, "
                              f"{self.reg_max_yaw_std}")
        if not self.score_distance > 0:
            raise ConfigError(f"score_distance must be positive, got {self.score_distance}")
        if self.max_pose_queries < 1:
            raise ConfigError(f"max_pose_queries must be >= 1, got {self.max_pose_queries}")
        if not 0 < self.kl_norm_momentum <= 1:
            raise ConfigError(f"kl_norm_momentum must be in (0, 1], got {self.kl_norm_momentum}")


@dataclass(frozen=True)
class DeformableNetConfig:
    """Settings of :class:`~epropnp_lib.nets.deformable.DeformableCorrespondenceNet`.

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
        input_scale: resize factor applied to the images before the network (the default of
            ``predict``'s argument).
        pixel_mean / pixel_std: RGB normalisation of images in [0, 1] (ImageNet).
        score_threshold: minimum class score and final score of a detection (the default of
            ``predict``'s and ``select``'s argument).
        pre_nms_top_k: queries kept per image and level before the PnP solve.
        max_detections: detections per image after NMS.
        nms_iou: IoU threshold of the BEV NMS.
        multi_start: at inference, solve from five initial poses per object and keep the
            lowest cost (:func:`~epropnp_lib.nets.deformable.inference.solve_multi_start`).
        solve_iterations: LM iteration limit of the inference solve (0: the limit of
            ``monte_carlo.solver``, which training uses).  Learned correspondences make some
            starts creep for many iterations at a tiny gain (the robust kernel's IRLS steps
            converge linearly), and the batched loop runs until its slowest element: the
            reference implementation also stops its inference LM after a few iterations.
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

    def __post_init__(self) -> None:
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
        check_input_scale(self.input_scale)
        if any(not s > 0 for s in self.pixel_std):
            raise ConfigError(f"pixel_std must be positive, got {self.pixel_std}")
        check_score_threshold(self.score_threshold)
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
