"""Training loss of the deformable correspondence network: FCOS/FCOS3D target assignment
(:mod:`epropnp_lib.nets.fcos_targets`), the focal loss on all locations and, on a random draw of
positive locations (the pose queries), the EPro-PnP and object losses.  Every loss is a scalar
tensor; ``B`` images, ``Q`` pose queries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torchvision.ops import sigmoid_focal_loss

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.pose import Pose4DoF
from epropnp_lib.losses import derivative_regularization_loss
from epropnp_lib.nets.fcos_targets import assign_locations, ray_box_coordinates
from epropnp_lib.pnp.solver import SolveStatus

if TYPE_CHECKING:
    from epropnp_lib.nets.deformable.config import DeformableLossConfig
    from epropnp_lib.nets.deformable.model import DeformableCorrespondenceNet, DenseOutput

__all__ = ["DeformableLosses", "deformable_loss", "gather_boxes", "pose_determined"]


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


def deformable_loss(
    net: DeformableCorrespondenceNet,
    images: torch.Tensor,
    cam_mats: torch.Tensor,
    targets: Sequence[CameraBoxes],
    generator: torch.Generator | None = None,
) -> DeformableLosses:
    """Training losses of a batch (weights: ``net.config.loss``).

    Sigmoid focal loss on the class logits of all locations and L1 on the centre offset of the
    positive ones; on up to ``max_pose_queries`` randomly drawn positive locations: the Monte
    Carlo KL pose loss (:class:`~epropnp_lib.losses.MonteCarloPoseLoss`, Eq. 5-6, weight-scale
    normalisation), the derivative regulariser (Eq. 10; only where the pose covariance is within
    ``reg_max_position_std`` / ``reg_max_yaw_std``), L1 on the log size and the velocity,
    cross entropy on the attribute, BCE on the 3D score with target
    ``exp(-||t* - t_gt|| / tau)`` (``t*`` the detached PnP solution: the 3D localisation
    confidence), and optionally coordinate regression.  The paper's "+ coord. regr." regresses
    NOC at sparse LiDAR points; without LiDAR, this regresses, for each sampled point whose
    camera ray hits the ground-truth box, the NOC where the ray first enters the box (its
    visible faces, :func:`~epropnp_lib.nets.fcos_targets.ray_box_coordinates`); points whose
    ray misses the box contribute nothing.  The KL gradient is large and noisy early on: clip
    the gradient norm (FCOS3D clips at 35).

    Args:
        net: the network.
        images: ``(B, 3, H, W)``; cam_mats: ``(B, 3, 3)`` as in ``net.preprocess``.
        targets: ``B`` ground-truth :class:`~epropnp_lib.geometry.boxes.CameraBoxes`.
        generator: source of randomness of the query draw and the Monte Carlo samples
            (on the network's device).
    """
    cfg, lc = net.config, net.config.loss
    if len(targets) != images.shape[0]:
        raise ConfigError(f"{len(targets)} targets for {images.shape[0]} images")
    x, k, _ = net.preprocess(images, cam_mats)
    dense = net.forward_dense(x, k)
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
    zero = sum((p.view(-1)[0] * 0.0 for p in net.parameters() if p.requires_grad),
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
        gt = gather_boxes(targets, b_idx, tgt.box_index[b_idx, l_idx], x.dtype, x.device)
        terms.update(_query_losses(net, dense, b_idx, l_idx, gt, generator))
    weights = dict(offset=lc.offset_weight, kl=lc.kl_weight, reg=lc.reg_weight,
                   size=lc.size_weight, score3d=lc.score_weight,
                   velocity=lc.velocity_weight, attribute=lc.attribute_weight,
                   coord=lc.coord_weight)
    total = lc.cls_weight * loss_cls + sum(weights[k_] * v for k_, v in terms.items())
    return DeformableLosses(total, loss_cls, terms["offset"], terms["kl"], terms["reg"],
                            terms["size"], terms["score3d"], terms["velocity"],
                            terms["attribute"], terms["coord"], num_pos, n_q)


def _query_losses(
    net: DeformableCorrespondenceNet,
    dense: DenseOutput,
    b_idx: torch.Tensor,
    l_idx: torch.Tensor,
    gt: CameraBoxes,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """The point- and object-level loss terms of the pose queries at ``(b_idx, l_idx)``
    (``(Q,)`` each) with their ground-truth boxes ``gt`` (``Q`` boxes)."""
    cfg, lc = net.config, net.config.loss
    out = net.decode_queries(dense, b_idx, l_idx, gt.labels)
    x2d = out.x2d.detach() if lc.detach_x2d else out.x2d
    target_pose = gt.pose4().float()
    terms: dict[str, torch.Tensor] = {}
    # The PnP solve, the Monte Carlo KL and the regulariser run in float32 even under mixed
    # precision (autocast would run their small products in bfloat16 or float16).
    with torch.autocast(out.x3d.device.type, enabled=False):
        # The solver starts from the ground truth in training: with the still-random
        # correspondences of early training the closed-form initialisation often lands in a
        # spurious optimum behind the camera, where the Laplace proposal misses the mass
        # around the target and the Monte Carlo estimate of the normaliser fails.  The
        # optimum found is still the network's own.
        res = net.epropnp(out.x3d.float(), x2d.float(), out.w2d.float(), out.cam_mats.float(),
                          pose_target=target_pose,
                          pose_init=target_pose if lc.init_from_target else None,
                          generator=generator, with_step=lc.reg_weight > 0)
        # A DEGENERATE solve (the rule rather than the exception at initialisation: random
        # correspondences make the optimum recede to infinity) still has a usable Monte Carlo
        # KL around the layer's broad fallback proposal, and it is the signal that makes the
        # correspondences consistent; only invalid inputs are left out.
        status = torch.where(res.status == SolveStatus.DEGENERATE,
                             torch.full_like(res.status, SolveStatus.MAX_ITERATIONS), res.status)
        terms["kl"] = net.kl_loss(res._replace(status=status),
                                  norm_factor=out.weight_scale.detach().float().mean())
        if res.pose_step is not None:
            terms["reg"] = derivative_regularization_loss(
                Pose4DoF, res.pose_step, target_pose,
                pose_determined(res.valid, res.covariance, lc),
                position_weight=lc.reg_position_weight,
                orientation_weight=lc.reg_orientation_weight,
            )
    mean = net.mean_sizes.to(gt.size.dtype)[gt.labels]
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


def pose_determined(valid: torch.Tensor, covariance: torch.Tensor,
                lc: DeformableLossConfig) -> torch.Tensor:
    """``(Q,)`` valid queries whose pose covariance ``(Q, 4, 4)`` (over ``(t, yaw)``) is within
    ``lc.reg_max_position_std`` / ``lc.reg_max_yaw_std``; NaN covariances fail unless both
    limits are infinite (then every valid query counts)."""
    if math.isinf(lc.reg_max_position_std) and math.isinf(lc.reg_max_yaw_std):
        return valid
    std = covariance.diagonal(dim1=-2, dim2=-1).sqrt()  # (Q, 4); NaN where negative or NaN
    return (valid & (std[:, :3] < lc.reg_max_position_std).all(-1)
            & (std[:, 3] < lc.reg_max_yaw_std))


def gather_boxes(
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
