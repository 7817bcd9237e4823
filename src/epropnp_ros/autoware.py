"""Detected objects -> ``autoware_perception_msgs/DetectedObjects`` (velocity on the wire), and
their nuScenes attributes -> ``vision_msgs/Classification``; and back.

``Detection3DArray`` has no field for a velocity, so the nodes publish ``DetectedObjects`` beside
it: same header, same objects in the same order. Autoware's conventions:

* **Pose**: the object frame has x forward (along the box length), y left, z up;
  ``shape`` is a ``BOUNDING_BOX`` with ``dimensions = (length, width, height)``. A 4DoF object
  of this project has x along the length, y down (the camera's y axis) and z = x cross y (left),
  so its Autoware pose is turned by 90 deg about its own x axis (new y = our z, new z = our -y).
  A turn on the right leaves the covariance over fixed axes unchanged: ``pose_with_covariance``
  carries the same ROS 6x6 covariance as the ``Detection3DArray`` (``has_position_covariance`` true,
  ``orientation_availability`` ``AVAILABLE``). 6DoF objects keep their own frame and extents.
* **Twist**: the linear velocity in the object's (Autoware) frame, m/s; ``has_twist`` where the
  detector gives one; no twist covariance (``has_twist_covariance`` false, zeros).
* **Classification**: one entry, probability = the detection score, label by
  :data:`NUSCENES_TO_AUTOWARE` (the exact nuScenes class stays in the ``Detection3DArray``):

  ==========================  =====================
  nuScenes                    Autoware label
  ==========================  =====================
  car                         CAR
  truck, construction_vehicle TRUCK
  bus                         BUS
  trailer                     TRAILER
  motorcycle                  MOTORCYCLE
  bicycle                     BICYCLE
  pedestrian                  PEDESTRIAN
  traffic_cone, barrier       UNKNOWN
  other classes               UNKNOWN
  ==========================  =====================

  ``existence_probability`` is the detection score.

**Attributes** (nuScenes ``vehicle.moving``, ``pedestrian.standing``, ...) go on a topic of
their own, ``vision_msgs/Classification``: ``results[i]`` belongs to object ``i`` of the
``Detection3DArray`` of the same stamp, ``class_id`` = the attribute name (``""``: none),
``score`` 1 (0 without an attribute). A consumer of the detections or of ``DetectedObjects`` never
sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from autoware_perception_msgs.msg import (
    DetectedObject,
    DetectedObjectKinematics,
    DetectedObjects,
    ObjectClassification,
    Shape,
)
from vision_msgs.msg import Classification, ObjectHypothesis

from epropnp_lib.conventions import BOX_AXES_FROM_4DOF
from epropnp_ros.checks import as_float64, check_finite, check_shape
from epropnp_ros.detections import ObjectPose3D
from epropnp_ros.errors import ConversionError
from epropnp_ros.messages import copy_header
from epropnp_ros.poses import (
    checked_covariance,
    checked_pose,
    covariance_to_msg,
    msg_to_pose,
    pose_rotation,
    rotations_to_quat_msgs,
)

__all__ = [
    "NUSCENES_TO_AUTOWARE",
    "attribute_classification",
    "attributes_from_classification",
    "autoware_rotation",
    "detected_objects",
    "velocities_from_detected_objects",
]

#: nuScenes detection class -> ``ObjectClassification`` label (module docstring).
NUSCENES_TO_AUTOWARE: dict[str, int] = {
    "car": ObjectClassification.CAR,
    "truck": ObjectClassification.TRUCK,
    "construction_vehicle": ObjectClassification.TRUCK,
    "bus": ObjectClassification.BUS,
    "trailer": ObjectClassification.TRAILER,
    "motorcycle": ObjectClassification.MOTORCYCLE,
    "bicycle": ObjectClassification.BICYCLE,
    "pedestrian": ObjectClassification.PEDESTRIAN,
    "traffic_cone": ObjectClassification.UNKNOWN,
    "barrier": ObjectClassification.UNKNOWN,
}

#: Our 4DoF object frame (y down, z left) -> Autoware's (y left, z up).
_TO_AUTOWARE = np.array(BOX_AXES_FROM_4DOF)


def autoware_rotation(pose: np.ndarray) -> np.ndarray:
    """``(3, 3)`` object -> header rotation of the Autoware object frame of ``pose`` ((4,)
    4DoF: turned about x, see the module docstring; (7,) 6DoF: as is)."""
    rot = pose_rotation(pose)
    return rot @ _TO_AUTOWARE if pose.shape[0] == 4 else rot


def _kinematics(obj: ObjectPose3D, index: int) -> DetectedObjectKinematics:
    pose = checked_pose(obj.pose, f"objects[{index}].pose")
    cov = checked_covariance(pose, obj.covariance, f"objects[{index}].covariance")
    rot = autoware_rotation(pose)
    kin = DetectedObjectKinematics(
        has_position_covariance=True,
        orientation_availability=DetectedObjectKinematics.AVAILABLE,
    )
    position = kin.pose_with_covariance.pose.position
    position.x, position.y, position.z = (float(x) for x in pose[:3])
    [kin.pose_with_covariance.pose.orientation] = rotations_to_quat_msgs(rot[None])
    kin.pose_with_covariance.covariance = covariance_to_msg(cov)
    if obj.velocity is not None:
        v = as_float64(obj.velocity, f"objects[{index}].velocity")
        check_shape(v, (3,), f"objects[{index}].velocity")
        check_finite(v, f"objects[{index}].velocity")
        local = rot.T @ v
        lin = kin.twist_with_covariance.twist.linear
        lin.x, lin.y, lin.z = (float(x) for x in local)
        kin.has_twist = True
    return kin


def _shape(obj: ObjectPose3D, index: int) -> Shape:
    size = as_float64(obj.size, f"objects[{index}].size")
    check_shape(size, (3,), f"objects[{index}].size")
    # 4DoF extents are (length, height, width) along our axes; Autoware wants (l, w, h).
    dims = size[[0, 2, 1]] if np.asarray(obj.pose).shape[0] == 4 else size
    shape = Shape(type=Shape.BOUNDING_BOX)
    shape.dimensions.x, shape.dimensions.y, shape.dimensions.z = (float(d) for d in dims)
    return shape


def detected_objects(header: Any, objects: Sequence[ObjectPose3D]) -> DetectedObjects:
    """``DetectedObjects`` of ``objects`` (same order as :func:`detection3d_array`; the
    conventions of the module docstring).

    Raises:
        ArrayShapeError, NonFiniteValueError: a pose, size, covariance or velocity of the wrong
            shape, or NaN/inf in one.
    """
    out = DetectedObjects(header=copy_header(header))
    for i, obj in enumerate(objects):
        label = NUSCENES_TO_AUTOWARE.get(str(obj.class_id), ObjectClassification.UNKNOWN)
        out.objects.append(DetectedObject(
            existence_probability=float(obj.score),
            classification=[ObjectClassification(label=label, probability=float(obj.score))],
            kinematics=_kinematics(obj, i),
            shape=_shape(obj, i),
        ))
    return out


def velocities_from_detected_objects(msg: Any) -> np.ndarray:
    """``(M, 3)`` velocity of each object in the header frame (NaN rows without a twist): the
    inverse of the twist of :func:`detected_objects`."""
    out = np.full((len(msg.objects), 3), np.nan)
    for i, obj in enumerate(msg.objects):
        kin = obj.kinematics
        if not kin.has_twist:
            continue
        rot = pose_rotation(msg_to_pose(kin.pose_with_covariance.pose, dof=6))
        lin = kin.twist_with_covariance.twist.linear
        out[i] = rot @ np.array([lin.x, lin.y, lin.z])
    return out


def attribute_classification(header: Any, objects: Sequence[ObjectPose3D]) -> Classification:
    """The objects' attributes as ``vision_msgs/Classification`` (module docstring)."""
    return Classification(
        header=copy_header(header),
        results=[ObjectHypothesis(class_id=obj.attribute, score=1.0 if obj.attribute else 0.0)
                 for obj in objects],
    )


def attributes_from_classification(msg: Any, count: int) -> list[str]:
    """The ``count`` attribute names of :func:`attribute_classification` (``""``: none).

    Raises:
        ConversionError: the message has another number of results than ``count`` objects.
    """
    if len(msg.results) != count:
        raise ConversionError(
            f"{len(msg.results)} attributes for {count} detections (not the same frame?)")
    return [str(r.class_id) for r in msg.results]
