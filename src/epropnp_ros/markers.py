"""RViz ``visualization_msgs/MarkerArray`` of detected objects and their pose uncertainty.

:func:`detection_markers` builds one array per frame, all in the header frame (the camera
optical frame): a DELETEALL first (it clears the previous frame), then per object, with the
object's index as marker id, ``epropnp/boxes`` (LINE_LIST of the 12 box edges),
``epropnp/labels`` (TEXT ``"<class> <score>"`` above the box), ``epropnp/covariance`` (SPHERE:
the position covariance ellipsoid, :func:`covariance_ellipsoid`) and ``epropnp/orientations``
(LINE_LIST fan: one segment per posterior sample from the object centre along the sample's
heading, its object x axis). Colours follow the class (:data:`CLASS_PALETTE`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.boxes import BOX_EDGES, box_corners
from epropnp_ros.checks import ArrayLike, as_float64, check_finite
from epropnp_ros.detections import ObjectPose3D
from epropnp_ros.errors import ArrayShapeError
from epropnp_ros.messages import copy_header, points_to_msgs
from epropnp_ros.poses import pose_rotation, rotations_of, rotations_to_quat_msgs

__all__ = [
    "CLASS_PALETTE",
    "Ellipsoid",
    "MIN_MARKER_SCALE",
    "MarkerStyle",
    "NS_BOXES",
    "NS_COVARIANCE",
    "NS_LABELS",
    "NS_ORIENTATIONS",
    "box_marker",
    "class_color",
    "covariance_ellipsoid",
    "covariance_ellipsoid_marker",
    "delete_all_marker",
    "detection_markers",
    "object_corners",
    "orientation_fan_marker",
]

NS_BOXES = "epropnp/boxes"
NS_LABELS = "epropnp/labels"
NS_COVARIANCE = "epropnp/covariance"
NS_ORIENTATIONS = "epropnp/orientations"

#: Smallest marker scale (m) written; RViz refuses markers with a zero scale.
MIN_MARKER_SCALE = 1.0e-4

#: Ten distinguishable colours (RGB in [0, 1]); class ``i`` of ``class_names`` gets entry
#: ``i % 10``, names outside the list a colour chosen by a stable hash (CRC-32) of the name.
CLASS_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.122, 0.467, 0.706), (1.000, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133), (0.090, 0.745, 0.812),
)

#: Corner indices of the box edges, two per LINE_LIST segment (24).
_EDGE_INDEX = np.asarray(BOX_EDGES).reshape(-1)


@dataclass(frozen=True)
class MarkerStyle:
    """Appearance of :func:`detection_markers` (validated on construction).

    Attributes:
        line_width: box and fan line width (m), > 0.
        text_height: label text height (m), > 0.
        n_sigma: covariance ellipsoid size in standard deviations, > 0
            (see :func:`covariance_ellipsoid`).
        ellipsoid_alpha: ellipsoid opacity in (0, 1].
        fan_length: orientation fan segment length (m); ``None`` = half the box's x extent.
        fan_alpha: fan line opacity in (0, 1].
        lifetime_s: marker lifetime (s), >= 0; 0 = until replaced (DELETEALL clears them).
        class_names: class order for the palette (e.g. ``NUSCENES_CLASSES``).
        max_fan_samples: most samples drawn per orientation fan, >= 1 (bounds the message
            size and the per-frame cost: every sample is two points).
    """

    line_width: float = 0.03
    text_height: float = 0.4
    n_sigma: float = 2.0
    ellipsoid_alpha: float = 0.35
    fan_length: float | None = None
    fan_alpha: float = 0.6
    lifetime_s: float = 0.0
    class_names: tuple[str, ...] = ()
    max_fan_samples: int = 64

    def __post_init__(self) -> None:
        positive = {"line_width": self.line_width, "text_height": self.text_height,
                    "n_sigma": self.n_sigma}
        if self.fan_length is not None:
            positive["fan_length"] = self.fan_length
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"MarkerStyle.{name} must be > 0, got {value}")
        for name, value in (("ellipsoid_alpha", self.ellipsoid_alpha),
                            ("fan_alpha", self.fan_alpha)):
            if not 0 < value <= 1:
                raise ConfigError(f"MarkerStyle.{name} must be in (0, 1], got {value}")
        if not (math.isfinite(self.lifetime_s) and self.lifetime_s >= 0):
            raise ConfigError(f"MarkerStyle.lifetime_s must be >= 0, got {self.lifetime_s}")
        if self.max_fan_samples < 1:
            raise ConfigError(
                f"MarkerStyle.max_fan_samples must be >= 1, got {self.max_fan_samples}")


def class_color(class_id: str, class_names: Sequence[str] = (), alpha: float = 1.0
                ) -> ColorRGBA:
    """Stable colour of a class (see :data:`CLASS_PALETTE`)."""
    if class_id in class_names:
        index = list(class_names).index(class_id)
    else:
        index = zlib.crc32(class_id.encode())
    r, g, b = CLASS_PALETTE[index % len(CLASS_PALETTE)]
    return ColorRGBA(r=r, g=g, b=b, a=float(alpha))


def delete_all_marker(header: Any) -> Marker:
    """A DELETEALL marker (empty namespace: clears every marker of the display)."""
    return Marker(header=copy_header(header), action=Marker.DELETEALL)


class Ellipsoid(NamedTuple):
    """Covariance ellipsoid(s): ``diameters (..., 3)`` along the columns of
    ``rotation (..., 3, 3)``."""

    diameters: np.ndarray
    rotation: np.ndarray


def covariance_ellipsoid(cov: ArrayLike, n_sigma: float) -> Ellipsoid:
    """The ``n_sigma`` ellipsoid(s) of 3x3 position covariances.

    The covariance ``Sigma = V diag(lambda) V^T`` gives the surface
    ``(x - t)^T Sigma^-1 (x - t) = n_sigma^2``: oriented by ``V`` (made a proper rotation), with
    diameters ``2 n_sigma sqrt(lambda)``. With ``n_sigma = 2`` it holds 73.9 % of a 3D
    Gaussian's mass (``n_sigma = 1``: 19.9 %, ``2.796``: 95 %).

    Args:
        cov: ``(..., 3, 3)`` symmetric positive semi-definite (symmetrised here).
        n_sigma: > 0.

    Returns:
        The diameters (floored at :data:`MIN_MARKER_SCALE`, since RViz rejects zero scales),
        ascending, and the proper rotations (det +1) whose columns are the eigenvectors.
    """
    c = as_float64(cov, "cov")
    if c.ndim < 2 or c.shape[-2:] != (3, 3):
        raise ArrayShapeError(f"cov: expected (..., 3, 3), got {c.shape}")
    check_finite(c, "cov")
    eigval, eigvec = np.linalg.eigh(0.5 * (c + np.swapaxes(c, -1, -2)))
    flip = np.linalg.det(eigvec) < 0
    eigvec[..., :, 2] = np.where(flip[..., None], -eigvec[..., :, 2], eigvec[..., :, 2])
    diameters = np.maximum(2.0 * n_sigma * np.sqrt(np.clip(eigval, 0.0, None)), MIN_MARKER_SCALE)
    return Ellipsoid(diameters=diameters, rotation=eigvec)


def _corners(centers: np.ndarray, rotations: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``(M, 8, 3)`` corners (float64) of boxes ``centers: (M, 3)``, ``rotations: (M, 3, 3)``,
    ``sizes: (M, 3)`` (:func:`epropnp_lib.geometry.boxes.box_corners`)."""
    t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
         for a in (centers, rotations, sizes)]
    return box_corners(*t).numpy()


def object_corners(poses: ArrayLike, sizes: ArrayLike) -> np.ndarray:
    """``(M, 8, 3)`` camera-frame corners of boxes at ``poses: (M, 7)`` or ``(M, 4)`` with
    extents ``sizes: (M, 3)`` along the object x, y, z axes, ordered as
    :data:`epropnp_lib.geometry.boxes.CORNER_SIGNS`."""
    p = as_float64(poses, "poses")
    s = as_float64(sizes, "sizes")
    if p.ndim != 2 or p.shape[1] not in (7, 4) or s.shape != (len(p), 3):
        raise ArrayShapeError(
            f"poses, sizes: expected (M, 7) or (M, 4) and (M, 3), got {p.shape}, {s.shape}")
    return _corners(p[:, :3], pose_rotation(p), s)


# --- one marker ----------------------------------------------------------------------------
def _marker(header: Any, ns: str, marker_id: int, marker_type: int, style: MarkerStyle
            ) -> Marker:
    marker = Marker(header=copy_header(header), ns=ns, id=int(marker_id), type=marker_type,
                    action=Marker.ADD)
    sec = math.floor(style.lifetime_s)
    marker.lifetime = Duration(sec=sec, nanosec=int(round((style.lifetime_s - sec) * 1e9)))
    marker.pose.orientation.w = 1.0
    return marker


def _box_marker(header: Any, edges: list[Point], class_id: str, marker_id: int,
                style: MarkerStyle) -> Marker:
    """LINE_LIST of the box edges (24 points)."""
    marker = _marker(header, NS_BOXES, marker_id, Marker.LINE_LIST, style)
    marker.points = edges
    marker.scale.x = style.line_width
    marker.color = class_color(class_id, style.class_names)
    return marker


def _label_marker(header: Any, corners: np.ndarray, class_id: str, score: float,
                  marker_id: int, style: MarkerStyle) -> Marker:
    """TEXT_VIEW_FACING ``"<class> <score>"`` just above the box (camera -y side)."""
    marker = _marker(header, NS_LABELS, marker_id, Marker.TEXT_VIEW_FACING, style)
    centre = corners.mean(axis=0)
    marker.pose.position = Point(x=float(centre[0]),
                                 y=float(corners[:, 1].min() - 0.6 * style.text_height),
                                 z=float(centre[2]))
    marker.scale.z = style.text_height
    marker.color = class_color(class_id, style.class_names)
    marker.text = f"{class_id} {score:.2f}"
    return marker


def _ellipsoid_marker(header: Any, center: np.ndarray, diameters: np.ndarray,
                      orientation: Quaternion, marker_id: int, style: MarkerStyle,
                      class_id: str) -> Marker:
    marker = _marker(header, NS_COVARIANCE, marker_id, Marker.SPHERE, style)
    x, y, z = center.tolist()
    marker.pose = Pose(position=Point(x=x, y=y, z=z), orientation=orientation)
    marker.scale.x, marker.scale.y, marker.scale.z = diameters.tolist()
    marker.color = class_color(class_id, style.class_names, style.ellipsoid_alpha)
    return marker


def _fan_segments(center: np.ndarray, headings: np.ndarray, length: float) -> np.ndarray:
    """``(2 S, 3)`` segment end points from ``center: (3,)`` along unit ``headings: (S, 3)``."""
    segments = np.empty((len(headings), 2, 3))
    segments[:, 0] = center
    segments[:, 1] = center + length * headings
    return segments.reshape(-1, 3)


def _fan_marker(header: Any, points: list[Point], marker_id: int, style: MarkerStyle,
                class_id: str) -> Marker:
    marker = _marker(header, NS_ORIENTATIONS, marker_id, Marker.LINE_LIST, style)
    marker.points = points
    marker.scale.x = 0.5 * style.line_width
    marker.color = class_color(class_id, style.class_names, style.fan_alpha)
    return marker


def _samples(samples: ArrayLike, name: str) -> np.ndarray:
    s = as_float64(samples, name)
    if s.ndim != 2 or s.shape[1] not in (7, 4):
        raise ArrayShapeError(f"{name}: expected (S, 7) or (S, 4), got {s.shape}")
    return s


def box_marker(header: Any, obj: ObjectPose3D, marker_id: int, style: MarkerStyle
               ) -> Marker:
    """LINE_LIST of the 12 box edges (24 points) of ``obj`` in the class colour."""
    [corners] = object_corners(as_float64(obj.pose, "pose")[None],
                               as_float64(obj.size, "size")[None])
    return _box_marker(header, points_to_msgs(corners[_EDGE_INDEX]), obj.class_id, marker_id,
                       style)


def covariance_ellipsoid_marker(header: Any, center: ArrayLike, cov: ArrayLike, marker_id: int,
                                style: MarkerStyle, class_id: str = "") -> Marker:
    """SPHERE marker of the position covariance ``cov: (3, 3)`` at ``center: (3,)``."""
    ellipsoid = covariance_ellipsoid(cov, style.n_sigma)
    [orientation] = rotations_to_quat_msgs(ellipsoid.rotation[None])
    return _ellipsoid_marker(header, as_float64(center, "center").reshape(3),
                             ellipsoid.diameters, orientation, marker_id, style, class_id)


def orientation_fan_marker(header: Any, center: ArrayLike, samples: ArrayLike, marker_id: int,
                           style: MarkerStyle, length: float, class_id: str = "") -> Marker:
    """LINE_LIST: for each sample a segment of ``length`` from ``center: (3,)`` along the
    sample's heading (its object x axis, ``R[:, 0]``); ``samples: (S, 7)`` or ``(S, 4)``."""
    headings = pose_rotation(_samples(samples, "samples"))[:, :, 0]
    segments = _fan_segments(as_float64(center, "center").reshape(3), headings, length)
    return _fan_marker(header, points_to_msgs(segments), marker_id, style, class_id)


# --- all markers of one frame --------------------------------------------------------------
def _checked_objects(objects: Sequence[ObjectPose3D]
                     ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Poses (``(7,)`` / ``(4,)`` each), sizes ``(M, 3)`` and position covariances
    ``(M, 3, 3)`` of ``objects``, shapes checked."""
    poses, sizes, covs = [], [], []
    for i, obj in enumerate(objects):
        pose = as_float64(obj.pose, f"objects[{i}].pose")
        if pose.shape not in ((7,), (4,)):
            raise ArrayShapeError(f"objects[{i}].pose: expected (7,) or (4,), got {pose.shape}")
        size = as_float64(obj.size, f"objects[{i}].size")
        if size.shape != (3,):
            raise ArrayShapeError(f"objects[{i}].size: expected (3,), got {size.shape}")
        cov = as_float64(obj.covariance, f"objects[{i}].covariance")
        want = (6, 6) if pose.shape[0] == 7 else (4, 4)
        if cov.shape != want:
            raise ArrayShapeError(f"objects[{i}].covariance: expected {want}, got {cov.shape}")
        poses.append(pose)
        sizes.append(size)
        covs.append(cov[:3, :3])
    m = len(objects)
    return poses, np.asarray(sizes).reshape(m, 3), np.asarray(covs).reshape(m, 3, 3)


def detection_markers(header: Any, objects: Sequence[ObjectPose3D],
                      samples: Sequence[ArrayLike | None] | None = None,
                      style: MarkerStyle | None = None) -> MarkerArray:
    """All markers of one frame: DELETEALL, then boxes, labels, ellipsoids and fans.

    The geometry of all objects is computed in one batched call per step (rotations, corners,
    ellipsoids, quaternions, points).

    Args:
        header: frame id (camera optical frame) and stamp, copied into every marker.
        objects: the detections (pose, box extents, class, score, covariance).
        samples: per object ``(S, 7)`` / ``(S, 4)`` posterior pose samples (or ``None``) for the
            orientation fans; ``None`` = no fans. At most ``style.max_fan_samples`` of each
            object's samples are drawn (the first ones; samples are equally weighted).
        style: appearance; default :class:`MarkerStyle()`.
    """
    style = style or MarkerStyle()
    m = len(objects)
    if samples is not None and len(samples) != m:
        raise ArrayShapeError(f"samples: {len(samples)} entries for {m} objects")
    poses, sizes, position_covs = _checked_objects(objects)
    fans = {i: _samples(s, f"samples[{i}]")[: style.max_fan_samples]
            for i, s in enumerate(samples or ()) if s is not None}
    rotations = rotations_of([*poses, *fans.values()])
    centers = np.asarray([p[:3] for p in poses]).reshape(m, 3)
    corners = _corners(centers, np.asarray(rotations[:m]).reshape(m, 3, 3), sizes)
    ellipsoids = covariance_ellipsoid(position_covs, style.n_sigma)
    orientations = rotations_to_quat_msgs(ellipsoids.rotation)
    edges = points_to_msgs(corners[:, _EDGE_INDEX].reshape(-1, 3))
    fan_points: dict[int, list[Point]] = {}
    if fans:
        lengths = {i: max(style.fan_length or 0.5 * float(sizes[i][0]), MIN_MARKER_SCALE)
                   for i in fans}
        segments = [_fan_segments(centers[i], rot[:, :, 0], lengths[i])
                    for i, rot in zip(fans, rotations[m:], strict=True)]
        points = points_to_msgs(np.concatenate(segments))
        offsets = np.cumsum([0] + [len(s) for s in segments])
        fan_points = {i: points[offsets[k]:offsets[k + 1]] for k, i in enumerate(fans)}
    n_edge = len(_EDGE_INDEX)
    out = MarkerArray(markers=[delete_all_marker(header)])
    for i, obj in enumerate(objects):
        out.markers.append(_box_marker(header, edges[n_edge * i:n_edge * (i + 1)],
                                       obj.class_id, i, style))
        out.markers.append(_label_marker(header, corners[i], obj.class_id, obj.score, i, style))
        out.markers.append(_ellipsoid_marker(header, centers[i], ellipsoids.diameters[i],
                                             orientations[i], i, style, obj.class_id))
        if i in fan_points:
            out.markers.append(_fan_marker(header, fan_points[i], i, style, obj.class_id))
    return out
