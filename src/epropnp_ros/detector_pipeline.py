"""The detector's ROS-free inference pipeline: RGB images and their cameras in, 4DoF
detections with covariance and posterior samples out (numpy, camera frame).

:class:`DetectorPipeline` runs the deformable correspondence network on the whole image
(resized by ``input_scale``), solves every candidate once (in undistorted image pixels for a
distorted camera, :func:`~epropnp_ros.pipeline.to_image_frame`), lets the network select the
detections (score, BEV NMS) and draws their posterior samples; a batch of images (a camera
rig) shares one forward per image size, one solve and one sampling call.  The published
covariances and samples are those of the likelihood ``exp(-cost / T)``, ``T`` the
checkpoint's calibration (``epropnp-detector-calibrate``, :mod:`epropnp_ros.
detector_calibration`) unless the settings override it; the detections themselves do not
depend on ``T``.  Shared pieces
(intrinsics, outputs, timing, the pose estimator) are in :mod:`epropnp_ros.pipeline`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from epropnp_lib.data.nuscenes import NUSCENES_CLASSES
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.nets.checkpoint import CALIBRATION_KEY, stored_temperature
from epropnp_lib.nets.deformable import DeformableCheckpointError, DeformableCorrespondenceNet
from epropnp_lib.nets.deformable.inference import Queries, merge_queries, take_solution
from epropnp_lib.pnp.cost import check_temperature, tempered_weights
from epropnp_lib.pnp.solver import temper_solution
from epropnp_ros.errors import PipelineInputError
from epropnp_ros.pipeline import (
    DetectorOutput,
    Intrinsics,
    StageTimer,
    check_image,
    check_sampling,
    resolve_device,
    to_image_frame,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorSettings:
    """Live settings of :class:`DetectorPipeline`.

    Attributes:
        score_threshold: least score kept.
        max_detections: most detections kept (highest scores).
        input_scale: resize factor of the image before the network (0: the network's own).
        num_samples: posterior samples per detection (0: none).
        sample_iterations: AMIS iterations the samples are resampled from.  The heading
            posterior is often bimodal (front and back): the detector draws 64 samples from
            the paper's 4 iterations where the pose estimator's 32 from
            :data:`~epropnp_ros.pipeline.SAMPLE_ITERATIONS` suffice, and its calibration
            (``epropnp-detector-calibrate``) is fitted for this draw.
        seed: seed of the sampling generator (used when the pipeline is built).
        likelihood_temperature: ``T`` of the likelihood ``exp(-cost / T)`` the covariances
            and posterior samples are published from (the detections and their poses are
            the same for any ``T``; the covariance is ``T`` times the Laplace covariance of
            ``T = 1``); ``None``: the calibration stored in the checkpoint
            (:attr:`DetectorPipeline.stored_temperature`), else 1.
    """

    score_threshold: float = 0.15
    max_detections: int = 50
    input_scale: float = 0.0
    num_samples: int = 64
    sample_iterations: int = 4
    seed: int = 0
    likelihood_temperature: float | None = None

    def __post_init__(self) -> None:
        if self.likelihood_temperature is not None:
            check_temperature(self.likelihood_temperature)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_detections < 1:
            raise ConfigError(f"max_detections must be >= 1, got {self.max_detections}")
        if not (math.isfinite(self.input_scale) and 0 <= self.input_scale <= 4):
            raise ConfigError(f"input_scale must be in [0, 4], got {self.input_scale}")
        check_sampling(self.num_samples, self.sample_iterations)


class DetectorPipeline:
    """One image -> 4DoF detections with covariance and samples (deformable network).

    The network predicts the candidate objects of the image, resized by the live
    ``input_scale`` (0: the checkpoint's), above a score floor (:meth:`score_floor`); each is
    solved once, in network pixels or, for a distorted camera, in undistorted image pixels;
    the network selects the detections (score, BEV NMS) and draws their posterior samples;
    this pipeline applies the live score threshold and detection limit.

    Args:
        net: the deformable network (eval mode is set here).
        device: where it runs.
        settings: :class:`DetectorSettings` (replace :attr:`settings` to change them live).
        stored_temperature: the likelihood temperature the checkpoint was calibrated with,
            used when ``settings.likelihood_temperature`` is ``None`` (default 1).
    """

    def __init__(
        self,
        net: DeformableCorrespondenceNet,
        device: torch.device,
        settings: DetectorSettings | None = None,
        stored_temperature: float | None = None,
    ) -> None:
        self.net = net.to(device).eval()
        self.device = device
        self.settings = settings or DetectorSettings()
        self.stored_temperature = 1.0 if stored_temperature is None else float(stored_temperature)
        check_temperature(self.stored_temperature)
        self.class_names: tuple[str, ...] = tuple(NUSCENES_CLASSES)
        if self.net.config.num_classes != len(self.class_names):
            raise ConfigError(
                f"the detector publishes the {len(self.class_names)} nuScenes classes; the "
                f"network has {self.net.config.num_classes}"
            )
        self.generator = torch.Generator(device=device).manual_seed(self.settings.seed)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "cpu", settings: DetectorSettings | None = None
    ) -> DetectorPipeline:
        """Load a deformable-network checkpoint (``CheckpointError`` naming the file when it
        is missing, malformed or of another kind; ``ConfigError`` for an unavailable device);
        the likelihood temperature is its calibration (:func:`~epropnp_lib.nets.checkpoint.
        stored_temperature`), else 1."""
        dev = resolve_device(device)
        net, extra = DeformableCorrespondenceNet.load(path, map_location=dev)
        pipe = cls(net, dev, settings,
                   stored_temperature(extra, path, DeformableCheckpointError))
        logger.info("loaded deformable correspondence net from %s on %s; likelihood "
                    "temperature %g (%s)", path, dev, pipe.stored_temperature,
                    "calibrated" if CALIBRATION_KEY in extra else "uncalibrated")
        return pipe

    @property
    def likelihood_temperature(self) -> float:
        """The temperature the covariances and samples are published with: ``settings.
        likelihood_temperature``, else the checkpoint's calibration."""
        t = self.settings.likelihood_temperature
        return self.stored_temperature if t is None else t

    def score_floor(self, threshold: float) -> float:
        """The network's score threshold for a live ``threshold``: never below the
        checkpoint's, so that queries that would be dropped anyway are not solved, and below
        1 (the network's range; a live threshold of 1 is still applied after selection)."""
        return min(max(self.net.config.score_threshold, threshold), 0.999)

    def process(self, rgb: np.ndarray, intrinsics: Intrinsics) -> DetectorOutput:
        """Detections of one image (:meth:`process_batch` of one).

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB.
            intrinsics: the image's :class:`Intrinsics`.

        Returns:
            :class:`DetectorOutput` (scores descending).
        """
        [out] = self.process_batch([rgb], [intrinsics])
        return out

    def process_batch(
        self, rgbs: Sequence[np.ndarray], intrinsics: Sequence[Intrinsics]
    ) -> list[DetectorOutput]:
        """Detections of ``B`` images (e.g. the cameras of a rig): one network forward per
        image size (one in all for a rig of equal cameras), one PnP solve over every query of
        every image, the selection (score, BEV NMS) per image, one posterior sampling call.

        Args:
            rgbs: ``B`` ``(H_b, W_b, 3)`` uint8 RGB images.
            intrinsics: their ``B`` :class:`Intrinsics`.

        Returns:
            ``B`` :class:`DetectorOutput` (scores descending; the batch's stage timings each).
        """
        if len(rgbs) != len(intrinsics):
            raise PipelineInputError(f"{len(rgbs)} images but {len(intrinsics)} intrinsics")
        if not rgbs:
            return []
        for rgb, intr in zip(rgbs, intrinsics, strict=True):
            check_image(rgb, intr)
        cfg = self.settings
        timer = StageTimer(self.device)
        k_img = torch.as_tensor(np.stack([i.cam_mat for i in intrinsics]),
                                dtype=torch.float32, device=self.device)
        floor = self.score_floor(cfg.score_threshold)
        with torch.inference_mode():
            q = self._predict(rgbs, k_img, floor, timer)
            x2d, w2d, cams = self._image_frame(q, intrinsics, k_img)
            per_image = [(CameraBoxes.empty(dtype=q.x3d.dtype, device=q.x3d.device),
                          q.x3d.new_zeros(0, 4, 4))] * len(rgbs)
            samples: list[torch.Tensor | None] = [None] * len(rgbs)
            if q.num_queries > 0:
                sol = self.net.solve(q.x3d, x2d, w2d, cams)
                timer.lap("pnp")
                kept = self.net.select(q, sol, score_threshold=floor)
                boxes = q.boxes(sol)
                # The calibrated likelihood exp(-cost / T): the same poses, T x covariance.
                temp = self.likelihood_temperature
                sol = temper_solution(sol, temp)
                per_image = [(boxes.select(k), sol.covariance[k]) for k in kept]
                every = torch.cat(kept)
                if cfg.num_samples > 0 and every.numel() > 0:
                    drawn = self.net.pose_samples(
                        q.x3d[every], x2d[every], tempered_weights(w2d[every], temp),
                        cams[every], take_solution(sol, every), cfg.num_samples,
                        self.generator, cfg.sample_iterations)
                    samples = list(drawn.split([k.numel() for k in kept], dim=1))
                timer.lap("sampling")
        return [self._output(cfg, b, c, s, timer)
                for (b, c), s in zip(per_image, samples, strict=True)]

    def _predict(
        self, rgbs: Sequence[np.ndarray], k_img: torch.Tensor, floor: float, timer: StageTimer
    ) -> Queries:
        """The candidate queries of all images (``k_img: (B, 3, 3)``): one network forward
        per image size, merged into one :class:`Queries` (image indices of ``rgbs``)."""
        cfg = self.settings
        groups: dict[tuple[int, ...], list[int]] = {}
        for b, rgb in enumerate(rgbs):
            groups.setdefault(rgb.shape, []).append(b)
        parts = []
        for idx in groups.values():
            # (B_g, 3, H, W) uint8 views of (B_g, H, W, 3); a single image keeps the strides
            # of its own view (the convolution kernels choose their path by the strides).
            if len(idx) == 1:
                image = torch.from_numpy(np.ascontiguousarray(rgbs[idx[0]]))
                image = image.to(self.device).permute(2, 0, 1).unsqueeze(0)
            else:
                image = torch.from_numpy(np.stack([rgbs[b] for b in idx]))
                image = image.to(self.device).permute(0, 3, 1, 2)
            timer.lap("preprocess")
            q = self.net.predict(image, k_img[idx], score_threshold=floor,
                                 input_scale=cfg.input_scale or None)
            parts.append((torch.as_tensor(idx, device=self.device), q))
        timer.lap("network")
        return merge_queries(parts, len(rgbs))

    def _image_frame(
        self, q: Queries, intrinsics: Sequence[Intrinsics], k_img: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x2d, w2d (Q, N, 2), cams (Q, 3, 3))`` the PnP problems are solved with: network
        pixels, or undistorted image pixels for the queries of a distorted camera."""
        distorted = [b for b, intr in enumerate(intrinsics) if intr.undistort is not None]
        if not distorted or q.num_queries == 0:
            return q.x2d, q.w2d, q.cam_mats
        if len(intrinsics) == 1:
            undistort = intrinsics[0].undistort
            assert undistort is not None  # narrowing: distorted == [0]
            x2d, w2d = to_image_frame(q.x2d, q.w2d, q.affines[q.image_index], undistort)
            return x2d, w2d, k_img[0].expand(q.num_queries, 3, 3)
        x2d, w2d, cams = q.x2d.clone(), q.w2d.clone(), q.cam_mats.clone()
        for b in distorted:
            mask = q.image_index == b
            n = int(mask.sum())
            if n:
                x2d[mask], w2d[mask] = to_image_frame(
                    x2d[mask], w2d[mask], q.affines[b].expand(n, 3, 3),
                    intrinsics[b].undistort)  # type: ignore[arg-type]
                cams[mask] = k_img[b]
        return x2d, w2d, cams

    def _output(
        self,
        cfg: DetectorSettings,
        boxes: CameraBoxes,
        cov: torch.Tensor,
        samples: torch.Tensor | None,
        timer: StageTimer,
    ) -> DetectorOutput:
        """The live score threshold and detection limit of ``cfg`` applied to the selected
        detections (``M`` boxes, covariance ``(M, 4, 4)``, samples ``(S, M, 4)``)."""
        keep = (boxes.scores >= cfg.score_threshold).nonzero().squeeze(-1)
        keep = keep[boxes.scores[keep].argsort(descending=True)][: cfg.max_detections]
        boxes = boxes.select(keep).to("cpu")
        m = boxes.num_boxes
        pose = torch.cat((boxes.center, boxes.yaw[:, None]), dim=1).double().numpy()
        smp = (samples[:, keep].transpose(0, 1).double().cpu().numpy()
               if samples is not None else np.zeros((m, cfg.num_samples, 4)))
        timer.lap("postprocess")
        return DetectorOutput(
            pose=pose, covariance=cov[keep].double().cpu().numpy(), samples=smp,
            scores=boxes.scores.double().numpy(),
            class_ids=tuple(self.class_names[int(i)] for i in boxes.labels),
            boxes=boxes, timings=timer.total(), num_failed=0,
        )
