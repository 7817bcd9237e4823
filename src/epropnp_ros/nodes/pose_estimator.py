"""``pose_estimator`` lifecycle node: 6DoF pose of one known object, with its uncertainty.

Runs :class:`~epropnp_ros.pipeline.PoseEstimatorPipeline` (dense correspondence network +
EPro-PnP 6DoF) on square crops of each image paired with its camera info. Regions of interest
come from the newest ``rois`` (``vision_msgs/Detection2DArray``, e.g. a 2D detector) whose stamp
is within ``roi_max_age`` of the image (optionally filtered by ``roi_class`` and ``min_score``),
else from the ``default_roi`` parameter (the whole image by default).

Publishes (see :mod:`epropnp_ros.nodes.base` for topics, threading, QoS and diagnostics):
``detections`` (Detection3DArray, full 6x6 covariance, box = the network's object cube),
``pose`` (best region), ``pose_samples`` (posterior samples), ``markers``, optional ``/tf``.

Parameters: :class:`epropnp_ros.params.PoseEstimatorParams` (``config/pose_estimator.yaml``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from rclpy.qos_overriding_options import QoSOverridingOptions
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from epropnp_ros.detections import ObjectPose3D
from epropnp_ros.messages import stamp_to_ns
from epropnp_ros.nodes.base import OUTPUT_QOS, EstimatorNode, run
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
        roi_padding=params.roi_padding,
        object_class=params.object_class,
        seed=params.seed,
    )


def rois_from_detections(
    msg: Any, class_id: str = "", min_score: float = 0.0, max_count: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Regions ``(M, 4)`` (x, y, width, height) and scores ``(M,)`` of a Detection2DArray.

    A detection's score is its best result's (matching ``class_id`` when given; a detection
    without results scores 1). Detections with a non-positive size, a score below
    ``min_score`` or no matching class are skipped; at most ``max_count``, best first.
    """
    rois, scores = [], []
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
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:max_count]
    return (np.asarray(rois, dtype=np.float64).reshape(-1, 4)[order],
            np.asarray(scores, dtype=np.float64)[order])


class PoseEstimatorNode(EstimatorNode[PoseEstimatorParams, PoseEstimatorPipeline, PoseOutput]):
    """The pose-estimator lifecycle node (module docstring); ``**kwargs`` go to
    :class:`~epropnp_ros.nodes.base.EstimatorNode`."""

    PARAMS = PoseEstimatorParams
    CHECKPOINT_KIND = "dense_correspondence_net"

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._roi_lock = threading.Lock()
        self._latest_rois: Any = None
        self.counters["rois_received"] = 0
        self.counters["frames_with_default_roi"] = 0

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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Regions for the image of ``header``: from the newest Detection2DArray within
        ``roi_max_age`` (when enabled), else ``default_roi`` (the whole image if all zero)."""
        with self._roi_lock:
            msg = self._latest_rois
        if params.use_roi_topic and msg is not None:
            age = abs(stamp_to_ns(header.stamp) - stamp_to_ns(msg.header.stamp)) * 1e-9
            if age <= params.roi_max_age:
                return rois_from_detections(msg, params.roi_class, params.min_score,
                                            params.max_objects)
        self.counters["frames_with_default_roi"] += 1
        x, y, w, h = params.default_roi
        if w <= 0 or h <= 0:
            x, y, w, h = 0, 0, width, height
        return np.array([[x, y, w, h]], dtype=np.float64), np.ones(1)

    def run_pipeline(
        self, pipeline: PoseEstimatorPipeline, rgb: np.ndarray, intrinsics: Intrinsics,
        header: Header, params: PoseEstimatorParams,
    ) -> PoseOutput:
        rois, scores = self.select_rois(header, params, rgb.shape[1], rgb.shape[0])
        return pipeline.process(rgb, intrinsics, rois, scores)

    def objects(self, output: PoseOutput) -> list[ObjectPose3D]:
        return [
            ObjectPose3D(pose=output.pose[i], size=output.size[i],
                              class_id=output.class_ids[i], score=float(output.scores[i]),
                              covariance=output.covariance[i], object_id=str(i))
            for i in range(len(output.pose))
        ]


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point ``pose_estimator_node``: ``--ros-args --params-file
    config/pose_estimator.yaml`` (``-p autostart:=true`` configures and activates)."""
    return run(lambda: PoseEstimatorNode(), args)


if __name__ == "__main__":
    sys.exit(main())
