"""The per-camera side of the closed loop (:mod:`epropnp_ros.closed_loop`, ``--per-camera``):
one ``detector`` node per camera, whose outputs are recorded by stamp and read back as the
camera's detections (boxes, covariances, velocities, attributes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from autoware_perception_msgs.msg import DetectedObjects
from geometry_msgs.msg import PoseArray
from vision_msgs.msg import Classification, Detection3DArray

from epropnp_lib.data.nuscenes import NUSCENES_CLASSES, CameraDetections, camera_frame_of
from epropnp_ros.closed_loop_scoring import with_velocity_and_attributes
from epropnp_ros.detections import boxes_from_detection3d_array
from epropnp_ros.messages import stamp_to_ns

__all__ = ["Camera", "Recorded", "collect", "subscribe_outputs", "wait_for_frame"]


@dataclass
class Recorded:
    """Outputs of the detector for one image."""

    detections: Any = None
    samples: Any = None
    objects: Any = None
    attributes: Any = None
    received: float = 0.0

    @property
    def complete(self) -> bool:
        """Whether the detections, objects and attributes of the image all arrived."""
        return (self.detections is not None and self.objects is not None
                and self.attributes is not None)


@dataclass
class Camera:
    channel: str
    namespace: str
    image_topic: str
    info_topic: str
    results: dict[int, Recorded] = field(default_factory=dict)
    event: threading.Condition = field(default_factory=threading.Condition)


def subscribe_outputs(node: Any, cameras: dict[str, Camera]) -> None:
    """Record each camera's detections and pose samples by stamp."""

    def on_detections(msg: Any, cam: Camera) -> None:
        with cam.event:
            rec = cam.results.setdefault(stamp_to_ns(msg.header.stamp), Recorded())
            rec.detections, rec.received = msg, time.monotonic()
            cam.event.notify_all()

    def on_samples(msg: Any, cam: Camera) -> None:
        with cam.event:
            cam.results.setdefault(stamp_to_ns(msg.header.stamp), Recorded()).samples = msg

    def on_objects(msg: Any, cam: Camera) -> None:
        with cam.event:
            cam.results.setdefault(stamp_to_ns(msg.header.stamp), Recorded()).objects = msg
            cam.event.notify_all()

    def on_attributes(msg: Any, cam: Camera) -> None:
        with cam.event:
            cam.results.setdefault(stamp_to_ns(msg.header.stamp), Recorded()).attributes = msg
            cam.event.notify_all()

    for cam in cameras.values():
        node.create_subscription(
            DetectedObjects, f"{cam.namespace}/objects", lambda m, c=cam: on_objects(m, c), 50)
        node.create_subscription(
            Classification, f"{cam.namespace}/detection_attributes",
            lambda m, c=cam: on_attributes(m, c), 50)
        node.create_subscription(
            Detection3DArray, f"{cam.namespace}/detections",
            lambda m, c=cam: on_detections(m, c), 50,
        )
        node.create_subscription(
            PoseArray, f"{cam.namespace}/pose_samples", lambda m, c=cam: on_samples(m, c), 50
        )


def collect(nusc: Any, cameras: dict[str, Camera], sample_tokens: Sequence[str],
            key_frames: dict[tuple[str, int], str]
            ) -> tuple[dict[str, list[CameraDetections]], list[tuple[str, Any, Any, Any]]]:
    """The recorded detections of the key frames: per evaluated sample, and per image (for
    rendering: sample_data token, boxes, covariances, PoseArray of samples)."""
    per_sample: dict[str, list[CameraDetections]] = {}
    rendered = []
    for cam in cameras.values():
        for stamp, rec in sorted(cam.results.items()):
            sd_token = key_frames.get((cam.channel, stamp))
            if sd_token is None or rec.detections is None:
                continue
            frame = camera_frame_of(nusc, sd_token)
            boxes, covs = boxes_from_detection3d_array(rec.detections, NUSCENES_CLASSES)
            boxes = with_velocity_and_attributes(boxes, rec.objects, rec.attributes)
            if frame.sample_token in sample_tokens:
                per_sample.setdefault(frame.sample_token, []).append(
                    CameraDetections(boxes, frame)
                )
            rendered.append((sd_token, boxes, covs, rec.samples))
    return per_sample, rendered


def wait_for_frame(camera: Camera, stamp: int, timeout: float) -> bool:
    """Wait until the detections of ``camera`` for the image at ``stamp`` arrived."""

    def arrived() -> bool:
        rec = camera.results.get(stamp)
        return rec is not None and rec.complete

    with camera.event:
        return camera.event.wait_for(arrived, timeout=timeout)
