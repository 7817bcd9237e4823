"""Detected objects -> ``vision_msgs/Detection3DArray`` and ``tf2_msgs/TFMessage``, and back.

3D boxes (``vision_msgs/BoundingBox3D``): ``bbox.center`` is the object pose (the box centre
and the object axes, see :mod:`epropnp_ros.poses`); ``bbox.size`` is the box extent along the
object's **own** x, y, z axes. For camera-frame boxes of
:class:`~epropnp_lib.geometry.boxes.CameraBoxes` (size ``(w, l, h)`` like the nuScenes devkit's
``wlh``, object x axis = length, yaw about the camera y axis so the object y axis = height)
this is ``size = (l, h, w)`` (:func:`box_extents_from_wlh`). Class names are the caller's
(e.g. :data:`epropnp_lib.data.nuscenes.NUSCENES_CLASSES` for the detector).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from geometry_msgs.msg import PoseWithCovariance, TransformStamped
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_ros.checks import ArrayLike, as_float64, check_shape
from epropnp_ros.errors import ArrayShapeError, ConversionError
from epropnp_ros.messages import copy_header
from epropnp_ros.poses import (
    checked_covariance,
    checked_pose,
    covariances_of,
    msg_to_covariance,
    msg_to_pose,
    pose_msgs_of,
)

__all__ = [
    "BoxesLike",
    "ObjectPose3D",
    "box_extents_from_wlh",
    "boxes_from_detection3d_array",
    "detection3d_array",
    "objects_from_boxes",
    "tf_message",
]


class ObjectPose3D(NamedTuple):
    """One detected object, ready for :func:`detection3d_array`, :func:`tf_message` and the
    markers of :mod:`epropnp_ros.markers`.

    Attributes:
        pose: ``(7,)`` (t, q_wxyz) or ``(4,)`` (t, yaw about camera y); object -> camera.
            The translation is the box centre.
        size: ``(3,)`` box extents along the object's own x, y, z axes (metres) -- the
            ``BoundingBox3D.size`` convention (nuScenes boxes: see :func:`box_extents_from_wlh`).
        class_id: class name (e.g. "car").
        score: detection score in [0, 1].
        covariance: ``(6, 6)`` or ``(4, 4)`` tangent covariance matching ``pose``.
        object_id: ``Detection3D.id`` (and TF child frame suffix); "" -> the index in the list.
        velocity: ``(3,)`` m/s in the header frame, or ``None`` when unknown (published in
            :func:`epropnp_ros.autoware.detected_objects`).
        attribute: attribute name (nuScenes, e.g. "vehicle.moving"); "" when none.
    """

    pose: np.ndarray
    size: np.ndarray
    class_id: str
    score: float
    covariance: np.ndarray
    object_id: str = ""
    velocity: np.ndarray | None = None
    attribute: str = ""


class BoxesLike(Protocol):
    """What :func:`objects_from_boxes` reads, e.g.
    :class:`epropnp_lib.geometry.boxes.CameraBoxes`."""

    @property
    def center(self) -> Any: ...  # (M, 3)
    @property
    def size(self) -> Any: ...  # (M, 3) (w, l, h)
    @property
    def yaw(self) -> Any: ...  # (M,)
    @property
    def labels(self) -> Any: ...  # (M,)
    @property
    def scores(self) -> Any: ...  # (M,)
    @property
    def velocity(self) -> Any: ...  # (M, 2) (vx, vz), NaN: unknown
    @property
    def attributes(self) -> Any: ...  # (M,) attribute index, -1: none


def box_extents_from_wlh(wlh: ArrayLike) -> np.ndarray:
    """Box-frame extents ``(..., 3)`` = ``(l, h, w)`` of nuScenes ``wlh: (..., 3)`` sizes.

    The 4DoF object frame has x along the box length, y along the camera y axis (down, the
    height) and z = x cross y (the width), so ``BoundingBox3D.size = (l, h, w)``.
    """
    s = as_float64(wlh, "wlh")
    if s.ndim == 0 or s.shape[-1] != 3:
        raise ArrayShapeError(f"wlh: expected (..., 3), got {s.shape}")
    return s[..., [1, 2, 0]]


def objects_from_boxes(boxes: BoxesLike, covariances: ArrayLike,
                       class_names: Sequence[str],
                       attribute_names: Sequence[str] = ()) -> list[ObjectPose3D]:
    """:class:`ObjectPose3D` list (4DoF) of one image's camera-frame boxes.

    Args:
        boxes: ``center (M, 3)``, ``size (M, 3)`` as ``(w, l, h)``, ``yaw (M,)`` about camera
            y, ``labels (M,)`` class indices, ``scores (M,)``, ``velocity (M, 2)`` (vx, vz) along
            the camera x and z axes (NaN: unknown), ``attributes (M,)`` attribute indices (-1:
            none) (numpy or torch, any device).
        covariances: ``(M, 4, 4)`` 4DoF tangent covariances.
        class_names: name of each class index.
        attribute_names: name of each attribute index (empty: no attributes published).
    """
    center = as_float64(boxes.center, "boxes.center").reshape(-1, 3)
    m = center.shape[0]
    size = box_extents_from_wlh(as_float64(boxes.size, "boxes.size").reshape(-1, 3))
    yaw = as_float64(boxes.yaw, "boxes.yaw").reshape(-1)
    labels = as_float64(boxes.labels, "boxes.labels").reshape(-1).astype(np.int64)
    scores = as_float64(boxes.scores, "boxes.scores").reshape(-1)
    cov = as_float64(covariances, "covariances")
    check_shape(cov, (m, 4, 4), "covariances")
    for name, arr in (("size", size), ("yaw", yaw), ("labels", labels), ("scores", scores)):
        if arr.shape[0] != m:
            raise ArrayShapeError(f"boxes.{name}: {arr.shape[0]} entries for {m} boxes")
    if m and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ArrayShapeError(f"boxes.labels: values outside [0, {len(class_names)})")
    vel = as_float64(boxes.velocity, "boxes.velocity").reshape(-1, 2)
    attrs = as_float64(boxes.attributes, "boxes.attributes").reshape(-1).astype(np.int64)
    if vel.shape[0] != m or attrs.shape[0] != m:
        raise ArrayShapeError(f"boxes.velocity / attributes: not {m} entries")
    return [
        ObjectPose3D(pose=np.concatenate((center[i], yaw[i:i + 1])), size=size[i],
                     class_id=class_names[labels[i]], score=float(scores[i]), covariance=cov[i],
                     object_id=str(i),
                     velocity=(np.array([vel[i, 0], 0.0, vel[i, 1]])
                               if np.all(np.isfinite(vel[i])) else None),
                     attribute=(attribute_names[attrs[i]]
                                if 0 <= attrs[i] < len(attribute_names) else ""))
        for i in range(m)
    ]


def _object_id(obj: ObjectPose3D, index: int) -> str:
    return obj.object_id or str(index)


def detection3d_array(header: Any, objects: Sequence[ObjectPose3D]) -> Detection3DArray:
    """``vision_msgs/Detection3DArray``: one ``Detection3D`` per object.

    Each detection has the array's header, ``id``, ``bbox.center`` = the object pose,
    ``bbox.size`` = :attr:`ObjectPose3D.size` (extents along the object axes) and one
    ``results[]`` entry with ``class_id``, ``score`` and ``pose`` = the object pose **with its
    covariance filled** in the ROS layout (4DoF: unobserved rotations at 1e6 rad^2).

    Raises:
        ArrayShapeError, NonFiniteValueError: a pose, size or covariance of the wrong shape,
            or NaN/inf in one (nothing is built then).
    """
    poses = [checked_pose(o.pose, f"objects[{i}].pose") for i, o in enumerate(objects)]
    covs = [checked_covariance(p, o.covariance, f"objects[{i}].covariance")
            for i, (p, o) in enumerate(zip(poses, objects, strict=True))]
    sizes = [as_float64(o.size, f"objects[{i}].size") for i, o in enumerate(objects)]
    for i, size in enumerate(sizes):
        check_shape(size, (3,), f"objects[{i}].size")
    ros_covs = covariances_of(poses, covs)
    # Two Pose lists: the result's pose and the box centre must not share one message.
    result_poses, centre_poses = pose_msgs_of(poses), pose_msgs_of(poses)
    out = Detection3DArray(header=copy_header(header))
    for i, obj in enumerate(objects):
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = str(obj.class_id)
        hyp.hypothesis.score = float(obj.score)
        hyp.pose = PoseWithCovariance(pose=result_poses[i], covariance=ros_covs[i])
        det = Detection3D(header=copy_header(header), id=_object_id(obj, i), results=[hyp])
        det.bbox.center = centre_poses[i]
        det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = sizes[i].tolist()
        out.detections.append(det)
    return out


def boxes_from_detection3d_array(
    msg: Any, class_names: Sequence[str]
) -> tuple[CameraBoxes, np.ndarray]:
    """Camera-frame boxes and ``(M, 4, 4)`` 4DoF covariances of a detector ``Detection3DArray``.

    The inverse of :func:`detection3d_array` of :func:`objects_from_boxes` (4DoF): the best
    hypothesis of each detection gives class (an entry of ``class_names``) and score, its pose
    (with covariance) the 4DoF pose; ``bbox.size`` is (length, height, width) along the object
    axes.
    """
    centers, sizes, yaws, labels, scores, covs = [], [], [], [], [], []
    for det in msg.detections:
        if not det.results:
            continue
        best = max(det.results, key=lambda r: r.hypothesis.score)
        if best.hypothesis.class_id not in class_names:
            raise ConversionError(f"unknown class id {best.hypothesis.class_id!r} in detections")
        pose = msg_to_pose(best.pose.pose, dof=4, yaw_tolerance=1e-2)
        centers.append(pose[:3])
        yaws.append(pose[3])
        length, height, width = det.bbox.size.x, det.bbox.size.y, det.bbox.size.z
        sizes.append((width, length, height))
        labels.append(class_names.index(best.hypothesis.class_id))
        scores.append(best.hypothesis.score)
        covs.append(msg_to_covariance(np.asarray(best.pose.covariance), 4))
    m = len(centers)
    f64 = torch.float64
    boxes = CameraBoxes(
        center=torch.tensor(np.asarray(centers, dtype=np.float64).reshape(m, 3), dtype=f64),
        size=torch.tensor(np.asarray(sizes, dtype=np.float64).reshape(m, 3), dtype=f64),
        yaw=torch.tensor(yaws, dtype=f64).reshape(m),
        labels=torch.tensor(labels, dtype=torch.long).reshape(m),
        velocity=torch.full((m, 2), float("nan"), dtype=f64),
        attributes=torch.full((m,), -1, dtype=torch.long),
        scores=torch.tensor(scores, dtype=f64).reshape(m),
    )
    return boxes, np.asarray(covs, dtype=np.float64).reshape(m, 4, 4)


def tf_message(header: Any, objects: Sequence[ObjectPose3D], *,
               child_frame_prefix: str = "epropnp_object_") -> TFMessage:
    """``tf2_msgs/TFMessage`` with one ``TransformStamped`` per object.

    ``header.frame_id`` (the camera optical frame) is the parent; the child frame is
    ``child_frame_prefix + object_id`` (object id or list index).
    """
    poses = pose_msgs_of(
        [checked_pose(o.pose, f"objects[{i}].pose") for i, o in enumerate(objects)])
    out = TFMessage()
    for i, (obj, pose) in enumerate(zip(objects, poses, strict=True)):
        tf = TransformStamped(header=copy_header(header),
                              child_frame_id=child_frame_prefix + _object_id(obj, i))
        tf.transform.translation.x = pose.position.x
        tf.transform.translation.y = pose.position.y
        tf.transform.translation.z = pose.position.z
        tf.transform.rotation = pose.orientation
        out.transforms.append(tf)
    return out
