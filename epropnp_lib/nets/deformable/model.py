"""The deformable correspondence network (EPro-PnP paper 4.2, Fig. 5): an FCOS3D-style
monocular 3D detector whose 2D-3D correspondences and weights are all learned and solved by
:class:`~epropnp_lib.epropnp.EProPnP4DoF`.  torchvision only (no mmcv/mmdet).

Images enter as ``(B, 3, H, W)`` RGB, floating in [0, 1] or uint8, with their intrinsics
``cam_mats: (B, 3, 3)``; the network works in the pixels of the image resized by its input
scale (pixel centres at integer coordinates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from epropnp_lib.checks import check_shape
from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.epropnp import EProPnP4DoF
from epropnp_lib.errors import DeviceError, DTypeError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.camera import pixel_affine
from epropnp_lib.losses import MonteCarloPoseLoss
from epropnp_lib.nets.backbone import ResNetBackbone
from epropnp_lib.nets.checkpoint import CheckpointError, load_model, save_checkpoint
from epropnp_lib.nets.dcn import convert_to_deformable
from epropnp_lib.nets.deform_attention import DeformableAttention
from epropnp_lib.nets.deformable.config import (
    DeformableNetConfig,
    check_input_scale,
    check_score_threshold,
)
from epropnp_lib.nets.deformable.heads import FCOSHead
from epropnp_lib.nets.deformable.inference import (
    Detections,
    Queries,
    empty_queries,
    no_detections,
    select_detections,
    solve_multi_start,
    take_solution,
    top_locations,
)
from epropnp_lib.nets.deformable.loss import DeformableLosses, deformable_loss
from epropnp_lib.nets.fcos_targets import LevelSpec, level_locations, object_extent
from epropnp_lib.nets.fpn import FPN
from epropnp_lib.pnp.cost import tempered_weights
from epropnp_lib.pnp.solver import PnPSolution, temper_solution

__all__ = [
    "CHECKPOINT_KIND",
    "DeformableCheckpointError",
    "DeformableCorrespondenceNet",
    "DenseOutput",
    "NetworkInput",
    "QueryOutput",
]

#: Checkpoint kind of :class:`DeformableCorrespondenceNet`.
CHECKPOINT_KIND = "deformable_correspondence_net"

#: Largest |log| of the predicted weight scale (keeps exp() finite from random weights).
_MAX_LOG_SCALE = 12.0
#: Largest |log-ratio| of the predicted size to the class mean.
_MAX_LOG_SIZE = 4.0


class DeformableCheckpointError(CheckpointError):
    """A checkpoint's config or tensors do not fit :class:`DeformableCorrespondenceNet`."""


class NetworkInput(NamedTuple):
    """Images prepared for the network (:meth:`DeformableCorrespondenceNet.preprocess`).

    Attributes:
        images: ``(B, 3, H', W')`` normalised, in the network's dtype, channels-last.
        cam_mats: ``(B, 3, 3)`` intrinsics of the network input.
        affines: ``(B, 3, 3)`` map from image pixels to network-input pixels
            (:func:`~epropnp_lib.geometry.camera.pixel_affine`).
    """

    images: torch.Tensor
    cam_mats: torch.Tensor
    affines: torch.Tensor


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


class DeformableCorrespondenceNet(nn.Module):
    """FCOS3D-style detector with deformable 2D-3D correspondences.

    * :class:`~epropnp_lib.nets.backbone.ResNetBackbone` (optionally with DCNv2 in the last
      stages, :func:`~epropnp_lib.nets.dcn.convert_to_deformable`) and an
      :class:`~epropnp_lib.nets.fpn.FPN` (FCOS3D: P3-P7);
    * the dense :class:`~epropnp_lib.nets.deformable.heads.FCOSHead`: per location, class logits
      and an *object query*: an embedding and a reference point = location + ``stride *
      offset`` (the offset to the projected 3D centre);
    * :class:`~epropnp_lib.nets.deform_attention.DeformableAttention` samples ``N = heads *
      points`` locations around each query's reference point: the ``x2d`` of its
      correspondences, with point-wise and object-level features;
    * the point subnet and the object heads (:meth:`decode_queries`).

    Training: :meth:`loss`; inference: :meth:`detect` = :meth:`predict` (correspondences of
    the candidate objects), :meth:`solve`, :meth:`select` and :meth:`pose_samples`.

    Example::

        >>> from epropnp_lib.nets.deformable import small_config
        >>> net = DeformableCorrespondenceNet(small_config(score_threshold=0.0,
        ...                                                 pre_nms_top_k=2)).eval()
        >>> images = torch.rand(1, 3, 90, 160)
        >>> cam_mats = torch.tensor([[[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]]])
        >>> dets = net.detect(images, cam_mats)
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
        self, images: torch.Tensor, cam_mats: torch.Tensor, input_scale: float | None = None
    ) -> NetworkInput:
        """Validate, resize by ``input_scale`` (None: the config's) and normalise.

        Args:
            images: ``(B, 3, H, W)`` RGB, floating in [0, 1] or uint8.
            cam_mats: ``(B, 3, 3)`` intrinsics of ``images``.
            input_scale: resize factor of the images.

        Returns:
            :class:`NetworkInput` in the network's dtype.
        """
        dims = check_shape(images, ["B", 3, "H", "W"], "images")
        check_shape(cam_mats, ["B", 3, 3], "cam_mats", dims)
        param = self.pixel_mean
        for name, t in (("images", images), ("cam_mats", cam_mats)):
            if t.device != param.device:
                raise DeviceError(f"{name} is on {t.device} but the network on {param.device}")
        if not cam_mats.is_floating_point():
            raise DTypeError(f"cam_mats must be floating point, got {cam_mats.dtype}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise DTypeError(f"images must be uint8 or floating point, got {images.dtype}")
        if not torch.isfinite(cam_mats).all():
            raise DTypeError("cam_mats contains NaN or infinity")
        k = cam_mats.to(self._dtype())
        x = images
        s = self.config.input_scale if input_scale is None else input_scale
        h, w = dims["H"], dims["W"]
        nh, nw = (max(1, round(h * s)), max(1, round(w * s))) if s != 1.0 else (h, w)
        affine = pixel_affine((nw / w, nh / h), (-0.5, -0.5)).to(k)
        if s != 1.0:
            if x.dtype == torch.uint8 and x.device.type != "cpu":
                x = x.to(self._dtype()) / 255.0
            # uint8 images are resized as uint8 on the CPU: a vectorised kernel, faster than
            # resizing the float image.
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=s < 1.0)
            k = affine @ k
        x = x.to(self._dtype()) / 255.0 if x.dtype == torch.uint8 else x.to(self._dtype())
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        # Channels-last activations: faster convolutions on the CPU (oneDNN), and the layout
        # tensor cores prefer on CUDA.
        return NetworkInput(x.contiguous(memory_format=torch.channels_last), k,
                            affine.expand(dims["B"], 3, 3))

    def _dtype(self) -> torch.dtype:
        return self.point_embed.dtype

    # --- network ----------------------------------------------------------------------------
    def forward_dense(self, x: torch.Tensor, cam_mats: torch.Tensor) -> DenseOutput:
        """Backbone, FPN and dense head on a preprocessed batch ``x: (B, 3, H', W')`` with its
        intrinsics ``cam_mats: (B, 3, 3)``."""
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
        return DenseOutput(feats, levels, logits, offset, embed, locs, loc_strides, lvl,
                           cam_mats, (x.shape[-2], x.shape[-1]))

    def decode_queries(
        self,
        dense: DenseOutput,
        batch_index: torch.Tensor,
        location_index: torch.Tensor,
        labels: torch.Tensor,
    ) -> QueryOutput:
        """Correspondences and object properties of the queries at ``location_index: (Q,)``
        of images ``batch_index: (Q,)``; ``labels: (Q,)`` select the class mean size.

        The point subnet maps each sampled point's feature (plus the query, the point's offset
        from the reference point and a learned per-point embedding) to normalised object
        coordinates (NOC, MonoRUN) and two weight logits: ``x3d = NOC * (length, height,
        width)`` along the object axes (x = length/heading, y = height/down, z = width, as in
        :mod:`epropnp_lib.geometry.boxes`) and ``w2d = softmax over the N points * weight
        scale``.  The object heads read the object feature: 3D score (localisation
        confidence), global weight scale ``(2,)`` (``exp`` of a clamped log), box size
        (log-ratio to the class mean size), velocity ``(vx, vz)`` and attribute logits (both
        optional).
        """
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
        cam_mats: torch.Tensor,
        targets: Sequence[CameraBoxes],
        generator: torch.Generator | None = None,
    ) -> DeformableLosses:
        """Training losses of a batch
        (:func:`~epropnp_lib.nets.deformable.loss.deformable_loss`).

        Args:
            images: ``(B, 3, H, W)``; cam_mats: ``(B, 3, 3)`` as in :meth:`preprocess`.
            targets: ``B`` ground-truth :class:`~epropnp_lib.geometry.boxes.CameraBoxes`.
            generator: source of randomness of the query draw and the Monte Carlo samples
                (on the network's device).
        """
        return deformable_loss(self, images, cam_mats, targets, generator)

    # --- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        cam_mats: torch.Tensor,
        *,
        score_threshold: float | None = None,
        input_scale: float | None = None,
    ) -> Queries:
        """The candidate objects of a batch, before the PnP solve.

        Per image and level, the locations whose best class score is at least
        ``score_threshold`` (one query per location, its best class), the ``pre_nms_top_k``
        of highest score per level; each query's correspondences, size, velocity and attribute
        (:meth:`decode_queries`) and its score = class score * 3D score.  The score does not
        depend on the pose: queries below the threshold are dropped here, before the PnP
        solve, the most expensive step of inference.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1] (floating) or uint8.
            cam_mats: ``(B, 3, 3)`` intrinsics of ``images``.
            score_threshold: least score in [0, 1) (None: the config's).
            input_scale: resize factor in (0, 4] of the images (None: the config's).

        Returns:
            :class:`~epropnp_lib.nets.deformable.inference.Queries` in network-input pixels.
        """
        cfg = self.config
        threshold = cfg.score_threshold if score_threshold is None else score_threshold
        check_score_threshold(threshold)
        if input_scale is not None:
            check_input_scale(input_scale)
        x, k, affines = self.preprocess(images, cam_mats, input_scale)
        dense = self.forward_dense(x, k)
        scores, labels = dense.cls_logits.sigmoid().max(dim=-1)  # (B, L)
        b_idx, l_idx = top_locations(scores, dense.level_index, len(dense.levels), threshold,
                                     cfg.pre_nms_top_k)
        if b_idx.numel() == 0:
            return empty_queries(x, cfg.num_correspondences, affines)
        labels = labels[b_idx, l_idx]
        out = self.decode_queries(dense, b_idx, l_idx, labels)
        attributes = (out.attribute_logits.argmax(-1) if cfg.num_attributes > 0
                      else torch.full_like(labels, -1))
        queries = Queries(out.x3d, out.x2d, out.w2d, out.cam_mats, b_idx, labels,
                          scores[b_idx, l_idx] * out.score3d_logit.sigmoid(), out.size,
                          out.velocity, attributes, affines)
        above = queries.scores >= threshold
        return queries if bool(above.all()) else queries.select(above)

    @torch.no_grad()
    def select(
        self, queries: Queries, solution: PnPSolution, *, score_threshold: float | None = None
    ) -> list[torch.Tensor]:
        """Per image, the indices into ``queries`` of its detections, best first, given the
        ``solution`` of their solve (:meth:`solve`): usable solves scoring at least
        ``score_threshold`` (None: the config's), class-aware NMS on bird's-eye-view boxes
        (:func:`~epropnp_lib.nets.deformable.inference.select_detections`), at most
        ``max_detections``."""
        cfg = self.config
        threshold = cfg.score_threshold if score_threshold is None else score_threshold
        return select_detections(queries, solution, threshold, cfg.nms_iou, cfg.max_detections)

    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        cam_mats: torch.Tensor,
        num_pose_samples: int = 0,
        generator: torch.Generator | None = None,
        sample_iterations: int | None = None,
        likelihood_temperature: float = 1.0,
    ) -> list[Detections]:
        """Detect 3D boxes: :meth:`predict`, :meth:`solve` (pose and Laplace covariance of each
        query in network-input pixels), :meth:`select`, :meth:`pose_samples` of the kept
        detections.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1] (floating) or uint8.
            cam_mats: ``(B, 3, 3)`` intrinsics of ``images``.
            num_pose_samples: equally weighted posterior samples per detection (0: none).
            generator: randomness of the posterior samples.
            sample_iterations: AMIS iterations of the posterior samples (default: the
                Monte Carlo config's).
            likelihood_temperature: ``T`` of the likelihood ``exp(-cost / T)`` the
                covariances and samples are of (a calibration; the detections do not depend
                on it).

        Returns:
            ``B`` :class:`~epropnp_lib.nets.deformable.inference.Detections`.
        """
        q = self.predict(images, cam_mats)
        if q.num_queries == 0:
            n = self.config.num_correspondences
            return [no_detections(q.x3d, n, num_pose_samples) for _ in range(q.num_images)]
        sol = self.solve(q.x3d, q.x2d, q.w2d, q.cam_mats)
        boxes = q.boxes(sol)
        x2d_image = q.image_points()
        results = []
        kept = self.select(q, sol)
        sol = temper_solution(sol, likelihood_temperature)
        w2d = tempered_weights(q.w2d, likelihood_temperature)
        for sel in kept:
            samples = None
            if num_pose_samples > 0:
                samples = self.pose_samples(
                    q.x3d[sel], q.x2d[sel], w2d[sel], q.cam_mats[sel], take_solution(sol, sel),
                    num_pose_samples, generator, sample_iterations,
                ) if sel.numel() > 0 else q.x3d.new_zeros(num_pose_samples, 0, 4)
            results.append(Detections(boxes.select(sel), sol.covariance[sel], x2d_image[sel],
                                      q.x3d[sel], q.w2d[sel], samples))
        return results

    @torch.no_grad()
    def solve(
        self,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        cam_mats: torch.Tensor,
    ) -> PnPSolution:
        """Inference PnP solve of ``Q`` objects' correspondences (``x3d: (Q, N, 3)``,
        ``x2d, w2d: (Q, N, 2)``, ``cam_mats: (Q, 3, 3)``): the layer's solver with the
        config's ``solve_iterations``, multi-start when ``config.multi_start``
        (:func:`~epropnp_lib.nets.deformable.inference.solve_multi_start`)."""
        return solve_multi_start(x3d, x2d, w2d, cam_mats, self.epropnp.config.solver,
                                 self.config.solve_iterations, self.config.multi_start)

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
        """Build the network stored in ``path`` (:func:`~epropnp_lib.nets.checkpoint.load_model`).

        Raises:
            CheckpointError: missing, truncated or malformed file, or another kind.
            DeformableCheckpointError: the stored config is invalid or the tensors do not fit
                it (the message names the file and the first offending keys).
        """
        return cls.load(path, map_location)[0]

    @classmethod
    def load(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> tuple[DeformableCorrespondenceNet, dict[str, Any]]:
        """:meth:`from_checkpoint`, and the checkpoint's ``extra`` (e.g. its calibration,
        :data:`~epropnp_lib.nets.checkpoint.CALIBRATION_KEY`).  Raises as there."""
        net, ckpt = load_model(path, kind=CHECKPOINT_KIND, config_class=DeformableNetConfig,
                               build=cls, error=DeformableCheckpointError,
                               name="deformable network", map_location=map_location)
        return net, ckpt.extra
