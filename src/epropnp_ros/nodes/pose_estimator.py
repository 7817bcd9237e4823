"""``pose_estimator`` lifecycle node: 6DoF pose of one known object, with its uncertainty.

Runs :class:`~epropnp_ros.pipeline.PoseEstimatorPipeline` (dense correspondence network +
EPro-PnP 6DoF) on square crops of each image paired with its camera info. Regions of interest
come from the newest ``rois`` (``vision_msgs/Detection2DArray``, e.g. a 2D detector) whose stamp
is within ``roi_max_age`` of the image (optionally filtered by ``roi_class`` and ``min_score``),
else from the ``default_roi`` parameter (the whole image by default).

Publishes (see :mod:`epropnp_ros.nodes.base` for topics, threading, QoS and diagnostics):
``detections`` (Detection3DArray, full 6x6 covariance, box = the network's object cube),
``pose`` (best region), ``pose_samples`` (posterior samples), ``markers``, optional ``/tf``.

Bad regions never stop the node: an empty Detection2DArray (the frame is published with no
detection), a region outside the image and one smaller than ``min_roi_size`` are each counted
(``frames_without_rois``, ``rois_outside_image``, ``rois_too_small``), logged at most every
``warn_throttle`` seconds, and skipped; the other regions and the next frame are processed.
A detection's ``id`` is its region's Detection2D ``id`` (the index of the region when empty).

Parameters: :class:`epropnp_ros.params.PoseEstimatorParams` (``config/pose_estimator.yaml``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from rclpy.qos_overriding_options import QoSOverridingOptions
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from epropnp_ros.detections import ObjectPose3D
from epropnp_ros.messages import stamp_to_ns
from epropnp_ros.nodes.base import OUTPUT_QOS, EstimatorNode
from epropnp_ros.nodes.runner import run
from epropnp_ros.params import PoseEstimatorParams
from epropnp_ros.pipeline import (
    Intrinsics,
    PoseEstimatorPipeline,
    PoseEstimatorSettings,
    PoseOutput,
)

NODE_NAME = "pose_estimator"


def settings_from_params(params: PoseEstimatorParams) -> PoseEstimatorSettings:
    """The pipeline settings carried by the node parameters."""
    return PoseEstimatorSettings(
        num_samples=params.num_posterior_samples,
        sample_iterations=params.posterior_iterations,
        roi_padding=params.roi_padding or None,  # 0: the checkpoint's training padding
        object_class=params.object_class,
        seed=params.seed,
        multi_start=params.multi_start,
        roi_crops=params.roi_crops,
        roi_crop_shift=params.roi_crop_shift,
        likelihood_temperature=params.likelihood_temperature or None,  # 0: the checkpoint's
        weight_temperature=params.weight_temperature or None,  # 0: the checkpoint's
    )


class Regions(NamedTuple):
    """Regions of interest of one image.

    Attributes:
        rois: ``(M, 4)`` (x, y, width, height) in pixels.
        scores: ``(M,)``.
        ids: ``M`` Detection2D ids.
    """

    rois: np.ndarray
    scores: np.ndarray
    ids: tuple[str, ...]


class ScreenedRegions(NamedTuple):
    """:func:`screen_rois`' result: the usable regions and how many of each kind were left out."""

    regions: Regions
    outside_image: int
    too_small: int


def screen_rois(regions: Regions, width: int, height: int, min_size: float) -> ScreenedRegions:
    """Leave out the regions that do not overlap the ``width x height`` image and those whose
    width or height is below ``min_size`` pixels (counted separately; outside comes first)."""
    x, y, w, h = regions.rois.T if len(regions.rois) else np.zeros((4, 0))
    outside = (x + w <= 0) | (y + h <= 0) | (x >= width) | (y >= height)
    small = ~outside & ((w < min_size) | (h < min_size))
    keep = ~(outside | small)
    ids = tuple(i for i, k in zip(regions.ids, keep, strict=True) if k)
    return ScreenedRegions(Regions(regions.rois[keep], regions.scores[keep], ids),
                           int(outside.sum()), int(small.sum()))


def regions_from_detections(
    msg: Any, class_id: str = "", min_score: float = 0.0, max_count: int = 100
) -> Regions:
    """The :class:`Regions` of a Detection2DArray (rules of :func:`rois_from_detections`)."""
    rois, scores, ids = [], [], []
    for det in msg.detections:
        results = [r for r in det.results if not class_id or r.hypothesis.class_id == class_id]
        if class_id and not results:
            continue
        score = max((float(r.hypothesis.score) for r in results), default=1.0)
        w, h = float(det.bbox.size_x), float(det.bbox.size_y)
        cx, cy = float(det.bbox.center.position.x), float(det.bbox.center.position.y)
        if not (w > 0 and h > 0 and np.isfinite([cx, cy, w, h]).all()) or score < min_score:
            continue
        rois.append((cx - 0.5 * w, cy - 0.5 * h, w, h))
        scores.append(score)
        ids.append(str(det.id))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:max_count]
    return Regions(np.asarray(rois, dtype=np.float64).reshape(-1, 4)[order],
                   np.asarray(scores, dtype=np.float64)[order],
                   tuple(ids[i] for i in order))


def rois_from_detections(
    msg: Any, class_id: str = "", min_score: float = 0.0, max_count: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Regions ``(M, 4)`` (x, y, width, height) and scores ``(M,)`` of a Detection2DArray.

    A detection's score is its best result's (matching ``class_id`` when given; a detection
    without results scores 1). Detections with a non-positive size, a score below
    ``min_score`` or no matching class are skipped; at most ``max_count``, best first.
    """
    regions = regions_from_detections(msg, class_id, min_score, max_count)
    return regions.rois, regions.scores


class PoseEstimatorNode(EstimatorNode[PoseEstimatorParams, PoseEstimatorPipeline, PoseOutput]):
    """The pose-estimator lifecycle node (module docstring); ``**kwargs`` go to
    :class:`~epropnp_ros.nodes.base.EstimatorNode`."""

    PARAMS = PoseEstimatorParams
    CHECKPOINT_KIND = "dense_correspondence_net"

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._roi_lock = threading.Lock()
        self._latest_rois: Any = None
        for name in ("rois_received", "frames_with_default_roi", "frames_without_rois",
                     "rois_outside_image", "rois_too_small"):
            self.counters[name] = 0

    def load_pipeline(self, params: PoseEstimatorParams) -> PoseEstimatorPipeline:
        return PoseEstimatorPipeline.from_checkpoint(
            params.checkpoint, params.device, settings_from_params(params)
        )

    def apply_live_params(
        self, pipeline: PoseEstimatorPipeline, params: PoseEstimatorParams
    ) -> None:
        pipeline.settings = settings_from_params(params)

    def create_extra_inputs(self, params: PoseEstimatorParams) -> list[Any]:
        with self._roi_lock:
            self._latest_rois = None
        if not params.use_roi_topic:
            return []
        return [self.create_subscription(
            Detection2DArray, "rois", self._on_rois, OUTPUT_QOS,
            qos_overriding_options=QoSOverridingOptions.with_default_policies(),
        )]

    def _on_rois(self, msg: Any) -> None:
        self.counters["rois_received"] += 1
        with self._roi_lock:
            self._latest_rois = msg

    def select_rois(
        self, header: Header, params: PoseEstimatorParams, width: int, height: int
    ) -> Regions:
        """Regions for the image of ``header``: from the newest Detection2DArray within
        ``roi_max_age`` (when enabled; bad ones counted, logged and left out), else
        ``default_roi`` (the whole image if all zero)."""
        with self._roi_lock:
            msg = self._latest_rois
        if params.use_roi_topic and msg is not None:
            age = abs(stamp_to_ns(header.stamp) - stamp_to_ns(msg.header.stamp)) * 1e-9
            if age <= params.roi_max_age:
                return self._screened(regions_from_detections(
                    msg, params.roi_class, params.min_score, params.max_objects),
                    params, width, height)
        self.counters["frames_with_default_roi"] += 1
        x, y, w, h = params.default_roi
        if w <= 0 or h <= 0:
            x, y, w, h = 0, 0, width, height
        return Regions(np.array([[x, y, w, h]], dtype=np.float64), np.ones(1), ())

    def _screened(self, regions: Regions, params: PoseEstimatorParams, width: int,
                  height: int) -> Regions:
        """``regions`` less the unusable ones, each kind counted and logged (throttled)."""
        if len(regions.rois) == 0:
            self.counters["frames_without_rois"] += 1
            self.warn("frames_without_rois", "the regions of interest of this image are "
                      "empty: nothing to estimate (an empty detection list is published)")
            return regions
        screened = screen_rois(regions, width, height, params.min_roi_size)
        if screened.outside_image:
            self.counters["rois_outside_image"] += screened.outside_image
            self.warn("rois_outside_image", f"{screened.outside_image} region(s) of interest "
                      f"lie outside the {width}x{height} image: skipped")
        if screened.too_small:
            self.counters["rois_too_small"] += screened.too_small
            self.warn("rois_too_small", f"{screened.too_small} region(s) of interest smaller "
                      f"than min_roi_size ({params.min_roi_size} px): skipped")
        return screened.regions

    def run_pipeline(
        self, pipeline: PoseEstimatorPipeline, rgb: np.ndarray, intrinsics: Intrinsics,
        header: Header, params: PoseEstimatorParams,
    ) -> PoseOutput:
        regions = self.select_rois(header, params, rgb.shape[1], rgb.shape[0])
        return pipeline.process(rgb, intrinsics, regions.rois, regions.scores, regions.ids)

    def objects(self, output: PoseOutput) -> list[ObjectPose3D]:
        ids = output.object_ids or tuple(str(i) for i in range(len(output.pose)))
        return [
            ObjectPose3D(pose=output.pose[i], size=output.size[i],
                         class_id=output.class_ids[i], score=float(output.scores[i]),
                         covariance=output.covariance[i], object_id=ids[i])
            for i in range(len(output.pose))
        ]


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point ``pose_estimator_node``: ``--ros-args --params-file
    config/pose_estimator.yaml`` (``-p autostart:=true`` configures and activates)."""
    return run(lambda: PoseEstimatorNode(), args)


if __name__ == "__main__":
    sys.exit(main())
