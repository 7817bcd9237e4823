"""epropnp_ros.autoware: DetectedObjects beside Detection3DArray (same objects, same order, the
same covariance, the velocity as a twist in Autoware's object frame) and the attributes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from autoware_perception_msgs.msg import DetectedObjectKinematics, ObjectClassification, Shape
from rclpy.serialization import deserialize_message, serialize_message
from scipy.spatial.transform import Rotation

from epropnp_lib.data.nuscenes import NUSCENES_ATTRIBUTES, NUSCENES_CLASSES
from epropnp_ros.autoware import (
    NUSCENES_TO_AUTOWARE,
    attribute_classification,
    attributes_from_classification,
    detected_objects,
    velocities_from_detected_objects,
)
from epropnp_ros.detections import ObjectPose3D, detection3d_array, objects_from_boxes
from epropnp_ros.errors import ConversionError
from epropnp_ros.messages import make_header

pytestmark = pytest.mark.ros


class _Boxes:
    def __init__(self) -> None:
        self.center = torch.tensor([[1.0, 1.2, 15.0], [-3.0, 0.8, 30.0], [0.5, 1.0, 8.0]])
        self.size = torch.tensor([[1.9, 4.5, 1.6], [0.7, 0.8, 1.8], [0.6, 1.8, 1.4]])  # wlh
        self.yaw = torch.tensor([0.4, -2.0, 1.2])
        self.labels = torch.tensor([NUSCENES_CLASSES.index(c)
                                    for c in ("car", "pedestrian", "construction_vehicle")])
        self.scores = torch.tensor([0.9, 0.55, 0.3])
        self.velocity = torch.tensor([[2.0, -5.0], [float("nan"), float("nan")], [0.0, 0.5]])
        self.attributes = torch.tensor([NUSCENES_ATTRIBUTES.index("vehicle.moving"), -1,
                                        NUSCENES_ATTRIBUTES.index("vehicle.parked")])


def _objects() -> list[ObjectPose3D]:
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64).numpy()
    covs = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(4)
    return objects_from_boxes(_Boxes(), covs, NUSCENES_CLASSES, NUSCENES_ATTRIBUTES)


def _rot(q: Any) -> np.ndarray:
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


def test_detected_objects_match_the_detections_object_for_object() -> None:
    header = make_header("cam_front_optical_frame", 1_700_000_000_500_000_000)
    objects = _objects()
    dets = detection3d_array(header, objects)
    msg = deserialize_message(serialize_message(detected_objects(header, objects)),
                              type(detected_objects(header, objects)))
    assert msg.header == dets.header and len(msg.objects) == len(dets.detections) == 3
    for obj, det, src in zip(msg.objects, dets.detections, objects, strict=True):
        kin = obj.kinematics
        hyp = det.results[0]
        # Same position and the same ROS covariance (a turn on the right of the pose).
        p, q = kin.pose_with_covariance.pose.position, hyp.pose.pose.position
        assert (p.x, p.y, p.z) == pytest.approx((q.x, q.y, q.z))
        np.testing.assert_allclose(kin.pose_with_covariance.covariance, hyp.pose.covariance)
        assert kin.has_position_covariance
        assert kin.orientation_availability == DetectedObjectKinematics.AVAILABLE
        # Autoware's object frame: x along the length (ours), z up (-camera y).
        r_aw = _rot(kin.pose_with_covariance.pose.orientation)
        r_ours = _rot(hyp.pose.pose.orientation)
        np.testing.assert_allclose(r_aw[:, 0], r_ours[:, 0], atol=1e-12)
        np.testing.assert_allclose(r_aw[:, 2], [0.0, -1.0, 0.0], atol=1e-12)
        np.testing.assert_allclose(r_aw[:, 1], np.cross(r_aw[:, 2], r_aw[:, 0]), atol=1e-12)
        # Shape (length, width, height) from the box's (l, h, w) extents.
        assert obj.shape.type == Shape.BOUNDING_BOX
        s = det.bbox.size
        assert (obj.shape.dimensions.x, obj.shape.dimensions.y, obj.shape.dimensions.z) == (
            pytest.approx((s.x, s.z, s.y)))
        [cls] = obj.classification
        assert cls.label == NUSCENES_TO_AUTOWARE[src.class_id]
        assert cls.probability == pytest.approx(src.score) == obj.existence_probability
        assert not kin.has_twist_covariance
    labels = [o.classification[0].label for o in msg.objects]
    assert labels == [ObjectClassification.CAR, ObjectClassification.PEDESTRIAN,
                      ObjectClassification.TRUCK]


def test_velocity_round_trip_through_the_object_frame_twist() -> None:
    header = make_header("cam", 0)
    objects = _objects()
    msg = detected_objects(header, objects)
    assert [o.kinematics.has_twist for o in msg.objects] == [True, False, True]
    back = velocities_from_detected_objects(msg)
    np.testing.assert_allclose(back[0], [2.0, 0.0, -5.0], atol=1e-9)
    assert np.all(np.isnan(back[1]))
    np.testing.assert_allclose(back[2], [0.0, 0.0, 0.5], atol=1e-9)
    # The twist is in the object frame: a car moving along its own length has only a
    # forward (x) component.
    yaw = 0.7
    forward = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])  # the object x axis in the camera
    along = ObjectPose3D(pose=np.array([0.0, 1.0, 10.0, yaw]), size=np.ones(3),
                         class_id="car", score=1.0, covariance=np.eye(4),
                         velocity=3.0 * forward)
    lin = detected_objects(header, [along]).objects[0].kinematics.twist_with_covariance.twist
    assert (lin.linear.x, lin.linear.y, lin.linear.z) == pytest.approx((3.0, 0.0, 0.0))


def test_six_dof_objects_keep_their_frame() -> None:
    q = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_quat()  # x, y, z, w
    pose = np.array([0.1, 0.0, 0.8, q[3], q[0], q[1], q[2]])
    obj = ObjectPose3D(pose=pose, size=np.array([0.1, 0.2, 0.3]), class_id="duck", score=0.7,
                       covariance=np.eye(6) * 1e-3)
    [out] = detected_objects(make_header("cam", 0), [obj]).objects
    np.testing.assert_allclose(_rot(out.kinematics.pose_with_covariance.pose.orientation),
                               Rotation.from_quat(q).as_matrix(), atol=1e-12)
    assert (out.shape.dimensions.x, out.shape.dimensions.y, out.shape.dimensions.z) == (
        pytest.approx((0.1, 0.2, 0.3)))
    assert out.classification[0].label == ObjectClassification.UNKNOWN
    assert not out.kinematics.has_twist


def test_attributes_round_trip_and_count_check() -> None:
    objects = _objects()
    msg = attribute_classification(make_header("cam", 0), objects)
    assert attributes_from_classification(msg, 3) == ["vehicle.moving", "", "vehicle.parked"]
    assert [r.score for r in msg.results] == [1.0, 0.0, 1.0]
    with pytest.raises(ConversionError, match="3 attributes for 2 detections"):
        attributes_from_classification(msg, 2)
