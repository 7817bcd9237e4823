"""The rig side of the closed loop (:mod:`epropnp_ros.closed_loop`): the ``rig_detector`` node's
command line, lockstep playback one sample at a time, and its fused detections as results.

The rig node fuses the six cameras in :data:`RIG_FRAME` (``map``, the nuScenes global frame of
the bags: each camera's detections go through ``/tf_static`` and the ego pose on ``/tf`` at
its own image stamp). A fused ``Detection3DArray`` becomes one
:class:`~epropnp_lib.data.nuscenes.CameraDetections` of a virtual optical camera at the origin
of ``map`` (:data:`MAP_OPTICAL`: x right = -y, y down = -z, z forward = x), so that
:func:`~epropnp_lib.data.nuscenes.write_results` writes it unchanged (one camera per sample: no
further merging).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epropnp_lib.data.nuscenes import NUSCENES_ATTRIBUTES, NUSCENES_CLASSES, CameraDetections
from epropnp_lib.data.nuscenes.frames import CameraFrame, global_to_camera
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_ros.autoware import attributes_from_classification, velocities_from_detected_objects
from epropnp_ros.errors import ConversionError
from epropnp_ros.messages import stamp_to_ns
from epropnp_ros.poses import msg_to_pose

__all__ = ["MAP_OPTICAL", "RIG_FRAME", "RIG_NAMESPACE", "FusedRecorder", "fused_detections",
           "rig_command"]

#: Namespace of the rig node (its fused outputs: ``<ns>/detections``, ``<ns>/pose_samples``).
RIG_NAMESPACE = "/epropnp_rig"
#: Frame the closed loop fuses in.
RIG_FRAME = "map"
#: ``(4, 4)`` map <- virtual optical camera at the origin of ``map``.
MAP_OPTICAL = torch.tensor([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],
                            [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)


def rig_command(namespaces: Sequence[str], checkpoint: str, params: Sequence[str]) -> list[str]:
    """The ``rig_detector`` node process for the cameras ``namespaces`` (``/cam_front`` ...):
    compressed input with the default (sensor-data) QoS, fused in :data:`RIG_FRAME`, each
    camera's own detections on ``<ns>/detections`` too; ``params`` (``name:=value``) last."""
    params_file = Path(__file__).resolve().parents[2] / "config" / "rig.yaml"
    cmd = [sys.executable, "-m", "epropnp_ros.nodes.rig_detector", "--ros-args"]
    if params_file.is_file():
        cmd += ["--params-file", str(params_file)]
    cmd += [
        "-r", f"__ns:={RIG_NAMESPACE}",
        "-p", f"checkpoint:={Path(checkpoint).resolve()}",
        "-p", "autostart:=true",
        "-p", "image_transport:=compressed",
        "-p", "publish_markers:=false",
        "-p", f"cameras:=[{', '.join(namespaces)}]",
        "-p", f"target_frame:={RIG_FRAME}",
        "-p", "per_camera_outputs:=true",
    ]
    for p in params:
        cmd += ["-p", p]
    return cmd


@dataclass
class FusedRecorder:
    """The rig node's fused detections (and pose samples) by stamp, for the lockstep player."""

    detections: dict[int, Any] = field(default_factory=dict)
    samples: dict[int, Any] = field(default_factory=dict)
    objects: dict[int, Any] = field(default_factory=dict)
    attributes: dict[int, Any] = field(default_factory=dict)
    received: dict[int, float] = field(default_factory=dict)
    event: threading.Condition = field(default_factory=threading.Condition)

    def on_detections(self, msg: Any) -> None:
        with self.event:
            stamp = stamp_to_ns(msg.header.stamp)
            self.detections[stamp] = msg
            self.received[stamp] = time.monotonic()
            self.event.notify_all()

    def on_samples(self, msg: Any) -> None:
        with self.event:
            self.samples[stamp_to_ns(msg.header.stamp)] = msg

    def on_objects(self, msg: Any) -> None:
        with self.event:
            self.objects[stamp_to_ns(msg.header.stamp)] = msg

    def on_attributes(self, msg: Any) -> None:
        with self.event:
            self.attributes[stamp_to_ns(msg.header.stamp)] = msg

    def wait(self, stamps: Sequence[int], timeout: float,
             check: Callable[[], None] = lambda: None) -> int | None:
        """The stamp among ``stamps`` whose fused detections arrived (the slot's stamp is its
        first arrived frame's), or ``None`` after ``timeout`` s; ``check`` runs every 0.5 s
        (e.g. to fail when the node process died)."""
        deadline = time.monotonic() + timeout
        with self.event:
            while True:
                found = next((s for s in stamps if s in self.detections
                              and s in self.objects and s in self.attributes), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self.event.wait(timeout=min(left, 0.5))
                check()


def fused_detections(msg: Any, sample_token: str, sample_data_token: str,
                     objects: Any = None, attributes: Any = None) -> CameraDetections:
    """A fused ``Detection3DArray`` in ``map`` as the detections of the virtual camera
    :data:`MAP_OPTICAL` of ``sample_token`` (module docstring); ``bbox.size`` is (length,
    width, height) along the box axes (x forward, z up), the heading is the box x axis. The
    ``DetectedObjects`` and attribute ``Classification`` of the same stamp, when given, carry
    the velocities and attributes (else NaN velocity and no attribute)."""
    kept = [det for det in msg.detections if det.results]
    m = len(kept)
    velocity = (velocities_from_detected_objects(objects) if objects is not None
                else np.full((len(msg.detections), 3), np.nan))
    names = (attributes_from_classification(attributes, len(msg.detections))
             if attributes is not None else [""] * len(msg.detections))
    if velocity.shape[0] != len(msg.detections):
        raise ConversionError(f"{velocity.shape[0]} objects for {len(msg.detections)} detections")
    keep = [i for i, det in enumerate(msg.detections) if det.results]
    translation, rotation, sizes, labels, scores = [], [], [], [], []
    for det in kept:
        best = max(det.results, key=lambda r: r.hypothesis.score)
        if best.hypothesis.class_id not in NUSCENES_CLASSES:
            raise ConversionError(f"unknown class id {best.hypothesis.class_id!r} in detections")
        pose = msg_to_pose(best.pose.pose, dof=6)
        translation.append(pose[:3])
        rotation.append(pose[3:])
        sizes.append((det.bbox.size.y, det.bbox.size.x, det.bbox.size.z))  # (w, l, h)
        labels.append(NUSCENES_CLASSES.index(best.hypothesis.class_id))
        scores.append(best.hypothesis.score)
    f64 = torch.float64
    center, yaw, vel_cam = global_to_camera(
        torch.tensor(np.asarray(translation, dtype=np.float64).reshape(m, 3)),
        torch.tensor(np.asarray(rotation, dtype=np.float64).reshape(m, 4)),
        torch.from_numpy(velocity[keep].reshape(m, 3)), MAP_OPTICAL)
    attrs = [NUSCENES_ATTRIBUTES.index(names[i]) if names[i] in NUSCENES_ATTRIBUTES else -1
             for i in keep]
    boxes = CameraBoxes(center, torch.tensor(np.asarray(sizes, dtype=np.float64).reshape(m, 3)),
                        yaw, torch.tensor(labels, dtype=torch.long).reshape(m), vel_cam,
                        torch.tensor(attrs, dtype=torch.long).reshape(m),
                        torch.tensor(scores, dtype=f64).reshape(m))
    frame = CameraFrame("RIG", sample_token, sample_data_token, MAP_OPTICAL,
                        torch.eye(4, dtype=f64))
    return CameraDetections(boxes, frame)
