"""The ground truth of the nuScenes bags: the annotations of a sample, their three topics, and
the boxes read back in the devkit's form.

Per key frame, all in ``map`` (the global frame), stamped with the sample's timestamp, the ten
detection classes only, in the annotations' order:

* ``/ground_truth/detections``: ``vision_msgs/Detection3DArray``; ``bbox.center`` = the box pose
  (x forward, y left, z up), ``bbox.size`` = (length, width, height), one hypothesis (the class,
  score 1), ``id`` = the instance token;
* ``/ground_truth/objects``: ``autoware_perception_msgs/DetectedObjects`` (as the nodes publish
  them, :mod:`epropnp_ros.autoware`): the same pose (nuScenes box axes are Autoware's), the
  Autoware label, and the devkit's velocity (``NuScenes.box_velocity``) as a twist in the box
  frame (``has_twist`` false where the devkit gives NaN); no covariance;
* ``/ground_truth/attributes``: ``vision_msgs/Classification``, ``results[i]`` = the attribute
  of box ``i`` (``""``: none; score 1, else 0).

Messages are built with a ``rosbags`` typestore (:func:`ground_truth_messages`), so the converter
needs no ROS runtime; :func:`ground_truth_boxes` reads rclpy or rosbags messages alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

from epropnp_ros.autoware import NUSCENES_TO_AUTOWARE
from epropnp_ros.errors import BagConversionError

__all__ = [
    "GT_ATTRIBUTES_TOPIC",
    "GT_OBJECTS_TOPIC",
    "GT_TOPIC",
    "MAP_FRAME",
    "GroundTruthBox",
    "ground_truth_boxes",
    "ground_truth_messages",
    "sample_ground_truth",
]

MAP_FRAME = "map"
GT_TOPIC = "/ground_truth/detections"
GT_OBJECTS_TOPIC = "/ground_truth/objects"
GT_ATTRIBUTES_TOPIC = "/ground_truth/attributes"
#: ``autoware_perception_msgs/DetectedObjectKinematics.AVAILABLE`` and ``Shape.BOUNDING_BOX``.
_ORIENTATION_AVAILABLE, _BOUNDING_BOX = 2, 0


class GroundTruthBox(NamedTuple):
    """One annotation in the devkit's form (global ``map`` frame, full orientation).

    Attributes:
        translation: ``(3,)`` box centre, metres.
        size: ``(3,)`` ``(width, length, height)``, the devkit's ``wlh``.
        rotation: ``(4,)`` unit quaternion ``(w, x, y, z)`` of the box in ``map``.
        detection_name: one of the ten detection classes.
        instance_token: the annotation's instance.
        velocity: ``(3,)`` m/s in ``map`` (the devkit's ``box_velocity``; NaN when unknown).
        attribute_name: the annotation's attribute (``""``: none).
    """

    translation: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    detection_name: str
    instance_token: str
    velocity: np.ndarray
    attribute_name: str


def sample_ground_truth(nusc: Any, sample: dict[str, Any]) -> list[GroundTruthBox]:
    """The detection-class annotations of ``sample``, with velocity and attribute taken as the
    devkit's ``load_gt`` takes them.

    Raises:
        BagConversionError: an annotation with more than one attribute (the devkit refuses it).
    """
    # nuscenes-devkit: importing it takes seconds (matplotlib ...); only ground truth needs it.
    from nuscenes.eval.detection.utils import category_to_detection_name

    boxes = []
    for token in sample["anns"]:
        ann = nusc.get("sample_annotation", token)
        name = category_to_detection_name(ann["category_name"])
        if name is None:
            continue
        attrs = ann["attribute_tokens"]
        if len(attrs) > 1:
            raise BagConversionError(
                f"sample_annotation {token} has {len(attrs)} attributes (at most one)")
        attribute = nusc.get("attribute", attrs[0])["name"] if attrs else ""
        boxes.append(GroundTruthBox(
            translation=np.asarray(ann["translation"], dtype=np.float64),
            size=np.asarray(ann["size"], dtype=np.float64),
            rotation=np.asarray(ann["rotation"], dtype=np.float64),
            detection_name=name,
            instance_token=ann["instance_token"],
            velocity=np.asarray(nusc.box_velocity(token), dtype=np.float64),
            attribute_name=attribute,
        ))
    return boxes


def _rotation(wxyz: np.ndarray) -> np.ndarray:
    w, x, y, z = wxyz
    return np.asarray(Rotation.from_quat([x, y, z, w]).as_matrix())


def ground_truth_messages(
    types: dict[str, Any], header: Callable[[], Any], boxes: list[GroundTruthBox]
) -> tuple[Any, Any, Any]:
    """``(Detection3DArray, DetectedObjects, Classification)`` of one sample's boxes (module
    docstring), built with the ``rosbags`` message ``types``; ``header()`` makes a fresh header
    (``map``, the sample's stamp)."""
    t = types

    def vec(xyz: Any, name: str = "geometry_msgs/msg/Vector3") -> Any:
        x, y, z = (float(v) for v in xyz)
        return t[name](x=x, y=y, z=z)

    def pose(box: GroundTruthBox) -> Any:
        w, x, y, z = (float(v) for v in box.rotation)
        return t["geometry_msgs/msg/Pose"](
            position=vec(box.translation, "geometry_msgs/msg/Point"),
            orientation=t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w))

    detections, objects, attributes = [], [], []
    for box in boxes:
        width, length, height = (float(v) for v in box.size)
        hypothesis = t["vision_msgs/msg/ObjectHypothesisWithPose"](
            hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id=box.detection_name,
                                                             score=1.0),
            pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=pose(box),
                                                           covariance=np.zeros(36)))
        detections.append(t["vision_msgs/msg/Detection3D"](
            header=header(), results=[hypothesis], id=box.instance_token,
            bbox=t["vision_msgs/msg/BoundingBox3D"](center=pose(box),
                                                    size=vec((length, width, height)))))
        moving = bool(np.all(np.isfinite(box.velocity)))
        local = _rotation(box.rotation).T @ box.velocity if moving else np.zeros(3)
        twist = t["geometry_msgs/msg/TwistWithCovariance"](
            twist=t["geometry_msgs/msg/Twist"](linear=vec(local), angular=vec((0, 0, 0))),
            covariance=np.zeros(36))
        label = NUSCENES_TO_AUTOWARE[box.detection_name]
        objects.append(t["autoware_perception_msgs/msg/DetectedObject"](
            existence_probability=1.0,
            classification=[t["autoware_perception_msgs/msg/ObjectClassification"](
                label=label, probability=1.0)],
            kinematics=t["autoware_perception_msgs/msg/DetectedObjectKinematics"](
                pose_with_covariance=t["geometry_msgs/msg/PoseWithCovariance"](
                    pose=pose(box), covariance=np.zeros(36)),
                has_position_covariance=False,
                orientation_availability=_ORIENTATION_AVAILABLE,
                twist_with_covariance=twist, has_twist=moving, has_twist_covariance=False),
            shape=t["autoware_perception_msgs/msg/Shape"](
                type=_BOUNDING_BOX, footprint=t["geometry_msgs/msg/Polygon"](points=[]),
                dimensions=vec((length, width, height)))))
        attributes.append(t["vision_msgs/msg/ObjectHypothesis"](
            class_id=box.attribute_name, score=1.0 if box.attribute_name else 0.0))
    return (t["vision_msgs/msg/Detection3DArray"](header=header(), detections=detections),
            t["autoware_perception_msgs/msg/DetectedObjects"](header=header(), objects=objects),
            t["vision_msgs/msg/Classification"](header=header(), results=attributes))


def ground_truth_boxes(detections: Any, objects: Any = None,
                       attributes: Any = None) -> list[GroundTruthBox]:
    """The boxes of one sample's ground-truth messages (rclpy or rosbags messages alike): the
    ``Detection3DArray`` and, when given, the ``DetectedObjects`` (velocity; NaN without) and
    the ``Classification`` (attributes; ``""`` without) of the same stamp.

    Raises:
        BagConversionError: a message not in the ``map`` frame, a detection without a class, or
            objects / attributes that do not match the detections one for one.
    """
    for msg in (detections, objects, attributes):
        if msg is not None and msg.header.frame_id != MAP_FRAME:
            raise BagConversionError(
                f"ground truth is in {MAP_FRAME!r}, this message in {msg.header.frame_id!r}")
    n = len(detections.detections)
    if objects is not None and len(objects.objects) != n:
        raise BagConversionError(f"{len(objects.objects)} ground-truth objects for {n} detections")
    if attributes is not None and len(attributes.results) != n:
        raise BagConversionError(
            f"{len(attributes.results)} ground-truth attributes for {n} detections")
    boxes = []
    for i, det in enumerate(detections.detections):
        if not det.results:
            raise BagConversionError(f"ground-truth detection {det.id!r} has no class")
        c, q, s = det.bbox.center.position, det.bbox.center.orientation, det.bbox.size
        rotation = np.array([q.w, q.x, q.y, q.z])
        velocity = np.full(3, np.nan)
        if objects is not None and objects.objects[i].kinematics.has_twist:
            lin = objects.objects[i].kinematics.twist_with_covariance.twist.linear
            velocity = _rotation(rotation) @ np.array([lin.x, lin.y, lin.z])
        boxes.append(GroundTruthBox(
            translation=np.array([c.x, c.y, c.z]),
            size=np.array([s.y, s.x, s.z]),  # bbox.size is (length, width, height)
            rotation=rotation,
            detection_name=det.results[0].hypothesis.class_id,
            instance_token=det.id,
            velocity=velocity,
            attribute_name=str(attributes.results[i].class_id) if attributes is not None else "",
        ))
    return boxes
