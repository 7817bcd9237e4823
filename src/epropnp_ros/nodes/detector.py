"""``detector`` lifecycle node: monocular 3D detection with pose uncertainty (4DoF, nuScenes).

Runs :class:`~epropnp_ros.detector_pipeline.DetectorPipeline` (deformable correspondence network +
EPro-PnP 4DoF) on each image paired with its camera info, and publishes per frame (see
:mod:`epropnp_ros.nodes.base` for topics, threading, QoS and diagnostics):

* ``detections`` -- ``vision_msgs/Detection3DArray``: one Detection3D per box (class id, score,
  pose with the covariance filled; the unobserved roll/pitch variances are
  :data:`epropnp_lib.conventions.UNOBSERVED_ROTATION_VARIANCE`), box size along the object axes;
* ``pose`` -- the best-scoring detection's ``PoseWithCovarianceStamped``;
* ``pose_samples`` -- ``PoseArray`` of the posterior samples of all detections;
* ``markers`` -- boxes, labels, covariance ellipsoids, orientation fans.

Parameters: :class:`epropnp_ros.params.DetectorParams` (``config/detector.yaml``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from std_msgs.msg import Header

from epropnp_lib.data.nuscenes import NUSCENES_ATTRIBUTES, NUSCENES_CLASSES
from epropnp_ros.detections import ObjectPose3D, objects_from_boxes
from epropnp_ros.detector_pipeline import DetectorPipeline, DetectorSettings
from epropnp_ros.nodes.base import EstimatorNode
from epropnp_ros.nodes.runner import run
from epropnp_ros.params import DetectorParams
from epropnp_ros.pipeline import DetectorOutput, Intrinsics

NODE_NAME = "detector"


def settings_from_params(params: DetectorParams) -> DetectorSettings:
    """The pipeline settings carried by the node parameters."""
    return DetectorSettings(
        score_threshold=params.score_threshold,
        max_detections=params.max_detections,
        input_scale=params.input_scale,
        num_samples=params.num_posterior_samples,
        sample_iterations=params.posterior_iterations,
        likelihood_temperature=params.likelihood_temperature or None,  # 0: the checkpoint's
        seed=params.seed,
    )


class DetectorNode(EstimatorNode[DetectorParams, DetectorPipeline, DetectorOutput]):
    """The detector lifecycle node (module docstring); ``**kwargs`` go to
    :class:`~epropnp_ros.nodes.base.EstimatorNode`."""

    PARAMS = DetectorParams
    CHECKPOINT_KIND = "deformable_correspondence_net"

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)

    PUBLISHES_ATTRIBUTES = True

    def load_pipeline(self, params: DetectorParams) -> DetectorPipeline:
        return DetectorPipeline.from_checkpoint(
            params.checkpoint, params.device, settings_from_params(params)
        )

    def apply_live_params(self, pipeline: DetectorPipeline, params: DetectorParams) -> None:
        pipeline.settings = settings_from_params(params)

    def run_pipeline(
        self, pipeline: DetectorPipeline, rgb: np.ndarray, intrinsics: Intrinsics,
        header: Header, params: DetectorParams,
    ) -> DetectorOutput:
        return pipeline.process(rgb, intrinsics)

    def objects(self, output: DetectorOutput) -> list[ObjectPose3D]:
        return objects_from_boxes(output.boxes, output.covariance, NUSCENES_CLASSES,
                                  NUSCENES_ATTRIBUTES)

    def marker_class_names(self) -> tuple[str, ...]:
        return tuple(NUSCENES_CLASSES)


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point ``detector_node``: ``--ros-args --params-file config/detector.yaml``
    (``-p autostart:=true`` configures and activates at start-up)."""
    return run(lambda: DetectorNode(), args)


if __name__ == "__main__":
    sys.exit(main())
