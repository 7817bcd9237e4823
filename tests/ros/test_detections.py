"""epropnp_ros.detections against real message classes: Detection3DArray fields, covariance
layout, TF, and the box convention against CameraBoxes."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from rclpy.serialization import deserialize_message, serialize_message
from scipy.spatial.transform import Rotation
from vision_msgs.msg import Detection3DArray

from epropnp_lib.conventions import UNOBSERVED_ROTATION_VARIANCE
from epropnp_lib.data.nuscenes import NUSCENES_CLASSES
from epropnp_lib.errors import ShapeError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_ros.detections import (
    ObjectPose3D,
    boxes_from_detection3d_array,
    detection3d_array,
    objects_from_boxes,
    tf_message,
)
from epropnp_ros.messages import make_header
from epropnp_ros.poses import msg_to_covariance

pytestmark = pytest.mark.ros


def _cov(dim: int, seed: int) -> np.ndarray:
    """A seeded symmetric positive definite covariance."""
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64).numpy()
    return a @ a.T + 0.1 * np.eye(dim)


def _rot(q: Any) -> np.ndarray:
    """SciPy's (x, y, z, w) reading of a message quaternion."""
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


def _yaw(yaw: float) -> np.ndarray:
    """Rotation by ``yaw`` about the camera y axis."""
    return Rotation.from_rotvec([0.0, float(yaw), 0.0]).as_matrix()


class _Boxes(NamedTuple):
    center: torch.Tensor
    size: torch.Tensor
    yaw: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    velocity: torch.Tensor
    attributes: torch.Tensor


CLASSES = ("car", "truck", "pedestrian")


def _boxes() -> tuple[_Boxes, np.ndarray]:
    boxes = _Boxes(
        center=torch.tensor([[1.0, 1.2, 15.0], [-3.0, 0.8, 30.0]]),
        size=torch.tensor([[1.9, 4.5, 1.6], [0.7, 0.8, 1.8]]),  # (w, l, h)
        yaw=torch.tensor([0.4, -2.0]),
        labels=torch.tensor([0, 2]),
        scores=torch.tensor([0.9, 0.55]),
        velocity=torch.tensor([[2.0, -5.0], [float("nan"), float("nan")]]),  # (vx, vz)
        attributes=torch.tensor([1, -1]),
    )
    return boxes, np.stack((_cov(4, 5), _cov(4, 6)))


def test_detection3d_array_fields() -> None:
    boxes, covs = _boxes()
    header = make_header("cam_front_optical", 1_700_000_000_123_456_789)
    objects = objects_from_boxes(boxes, covs, CLASSES)
    msg = detection3d_array(header, objects)
    assert msg.header.frame_id == "cam_front_optical"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert len(msg.detections) == 2
    for i, det in enumerate(msg.detections):
        assert det.header.frame_id == "cam_front_optical" and det.header.stamp == header.stamp
        assert det.id == str(i)
        w, length, h = boxes.size[i].tolist()
        # BoundingBox3D.size: extents along the object x (length), y (down: height), z (width).
        np.testing.assert_allclose([det.bbox.size.x, det.bbox.size.y, det.bbox.size.z],
                                   [length, h, w], rtol=1e-6)
        rot = _rot(det.bbox.center.orientation)
        yaw = float(boxes.yaw[i])
        np.testing.assert_allclose(rot, _yaw(yaw), atol=1e-6)
        # The box's length direction (object x) in the camera frame, per conventions.py.
        np.testing.assert_allclose(rot[:, 0], [math.cos(yaw), 0.0, -math.sin(yaw)], atol=1e-6)
        c = det.bbox.center.position
        np.testing.assert_allclose([c.x, c.y, c.z], boxes.center[i].numpy(), rtol=1e-6)
        (hyp,) = det.results
        assert hyp.hypothesis.class_id == CLASSES[int(boxes.labels[i])]
        assert hyp.hypothesis.score == pytest.approx(float(boxes.scores[i]))
        assert hyp.pose.pose == det.bbox.center
        cov = np.asarray(hyp.pose.covariance).reshape(6, 6)
        np.testing.assert_array_equal(cov, cov.T)
        assert np.linalg.eigvalsh(cov).min() > 0  # PSD (here even PD: 4DoF fills 1e6)
        assert cov[3, 3] == cov[5, 5] == UNOBSERVED_ROTATION_VARIANCE
        np.testing.assert_allclose(msg_to_covariance(cov.reshape(-1), 4), covs[i])
    # The message serialises (field types are right for the wire).
    data = serialize_message(msg)
    assert deserialize_message(data, Detection3DArray) == msg


def test_detection3d_6dof_and_errors() -> None:
    cov = _cov(6, 7)
    obj = ObjectPose3D(pose=np.array([0.1, 0.0, 0.8, 1.0, 0.0, 0.0, 0.0]),
                          size=np.array([0.1, 0.2, 0.3]), class_id="duck", score=1.0,
                          covariance=cov, object_id="duck_1")
    msg = detection3d_array(make_header("cam"), [obj])
    det = msg.detections[0]
    assert det.id == "duck_1" and det.results[0].hypothesis.class_id == "duck"
    np.testing.assert_allclose(np.asarray(det.results[0].pose.covariance), cov.reshape(-1))
    with pytest.raises(ShapeError, match="covariance"):
        detection3d_array(make_header("cam"), [obj._replace(covariance=np.eye(4))])
    boxes, covs = _boxes()
    with pytest.raises(ShapeError, match="labels"):
        objects_from_boxes(boxes._replace(labels=torch.tensor([0, 3])), covs, CLASSES)
    with pytest.raises(ShapeError, match="covariances"):
        objects_from_boxes(boxes, covs[:1], CLASSES)


def test_tf_message_per_object() -> None:
    boxes, covs = _boxes()
    objects = objects_from_boxes(boxes, covs, CLASSES)
    tf = tf_message(make_header("cam", 42), objects, child_frame_prefix="obj_")
    assert [t.child_frame_id for t in tf.transforms] == ["obj_0", "obj_1"]
    for t, obj in zip(tf.transforms, objects, strict=True):
        assert t.header.frame_id == "cam" and t.header.stamp.nanosec == 42
        tr = t.transform.translation
        np.testing.assert_allclose([tr.x, tr.y, tr.z], obj.pose[:3])
        np.testing.assert_allclose(_rot(t.transform.rotation),
                                   _yaw(obj.pose[3]), atol=1e-6)


def test_bbox_corners_agree_with_camera_boxes() -> None:
    """BoundingBox3D (centre pose + size along the object axes) spans CameraBoxes.corners()."""
    boxes, covs = _boxes()
    m = boxes.center.shape[0]
    cam_boxes = CameraBoxes(center=boxes.center, size=boxes.size, yaw=boxes.yaw,
                            labels=torch.tensor([0, 5]), velocity=torch.zeros(m, 2),
                            attributes=torch.full((m,), -1), scores=boxes.scores).validate()
    msg = detection3d_array(make_header("cam"),
                            objects_from_boxes(cam_boxes, covs, NUSCENES_CLASSES))
    assert [d.results[0].hypothesis.class_id for d in msg.detections] == [
        NUSCENES_CLASSES[0], NUSCENES_CLASSES[5]]
    want = cam_boxes.corners().double().numpy()
    for det, corners in zip(msg.detections, want, strict=True):
        rot = _rot(det.bbox.center.orientation)
        c = det.bbox.center.position
        half = np.array([det.bbox.size.x, det.bbox.size.y, det.bbox.size.z]) / 2
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        got = (signs * half) @ rot.T + [c.x, c.y, c.z]
        # Same 8 points (orders differ): match each corner to its nearest.
        dist = np.linalg.norm(got[:, None] - corners[None], axis=-1)
        assert dist.min(axis=1).max() < 1e-5 and len(set(dist.argmin(axis=1))) == 8


def test_detection3d_array_round_trip() -> None:
    boxes = CameraBoxes(
        center=torch.tensor([[1.0, 0.5, 12.0], [-3.0, 1.0, 20.0]], dtype=torch.float64),
        size=torch.tensor([[1.9, 4.5, 1.6], [0.6, 0.7, 1.8]], dtype=torch.float64),
        yaw=torch.tensor([0.3, -2.8], dtype=torch.float64),
        labels=torch.tensor([0, 5]),
        velocity=torch.zeros(2, 2, dtype=torch.float64),
        attributes=torch.tensor([-1, -1]),
        scores=torch.tensor([0.9, 0.4], dtype=torch.float64),
    )
    a = np.random.default_rng(0).normal(size=(2, 4, 4))
    covs = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(4)
    msg = detection3d_array(make_header("cam", 5),
                            objects_from_boxes(boxes, covs, NUSCENES_CLASSES))
    back, back_covs = boxes_from_detection3d_array(msg, NUSCENES_CLASSES)
    for name in ("center", "size", "labels", "scores"):
        assert torch.allclose(getattr(back, name).double(), getattr(boxes, name).double()), name
    assert torch.allclose(back.yaw, boxes.yaw, atol=1e-9)
    np.testing.assert_allclose(back_covs, covs, atol=1e-9)
    assert torch.isnan(back.velocity).all() and (back.attributes == -1).all()
