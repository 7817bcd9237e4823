"""RViz ``visualization_msgs/MarkerArray`` of detected objects and their pose uncertainty.

:func:`detection_markers` builds one array per frame:

=========================  ===========  ===========================================================
namespace                  type         content
=========================  ===========  ===========================================================
(none)                     DELETEALL    first marker: clears the previous frame's markers
``epropnp/boxes``          LINE_LIST    the 12 edges of each 3D box, class colour
``epropnp/labels``         TEXT         ``"<class> <score>"`` above each box
``epropnp/covariance``     SPHERE       position covariance ellipsoid at ``n_sigma`` (default 2)
``epropnp/orientations``   LINE_LIST    orientation fan: one segment per posterior sample from
                                        the object centre along the sample's heading (x axis)
=========================  ===========  ===========================================================

Marker ids are the object's index in the list, so ids are stable within a namespace and the
DELETEALL first removes objects that disappeared. All markers are in the header frame (the
camera optical frame); poses follow :mod:`epropnp_lib.conventions` (see
:mod:`epropnp_ros.poses`).

Covariance ellipsoid
    The 3x3 position block ``Sigma`` of the object's covariance is eigen-decomposed,
    ``Sigma = V diag(lambda) V^T``. The SPHERE marker is oriented by ``V`` (made a proper rotation)
    and scaled to the **diameters** ``2 * n_sigma * sqrt(lambda)``, i.e. it is the surface
    ``(x - t)^T Sigma^-1 (x - t) = n_sigma^2``. With the default ``n_sigma = 2`` it holds 73.9 %
    of a 3D Gaussian's mass (``n_sigma = 1``: 19.9 %, ``2.796``: 95 %). Diameters below
    :data:`MIN_MARKER_SCALE` are raised to it (RViz rejects zero scales).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.boxes import BOX_EDGES, CORNER_SIGNS
from epropnp_ros.checks import ArrayLike, as_float64
from epropnp_ros.detections import ObjectPose3D
from epropnp_ros.errors import ArrayShapeError, NonFiniteValueError
from epropnp_ros.messages import copy_header, points_to_msgs
from epropnp_ros.poses import pose_rotation, rotation_to_quat_msg, rotations_to_quat_msgs

__all__ = [
    "CLASS_PALETTE",
    "Ellipsoid",
    "MIN_MARKER_SCALE",
    "MarkerStyle",
    "NS_BOXES",
    "NS_COVARIANCE",
    "NS_LABELS",
    "NS_ORIENTATIONS",
    "box_corners",
    "box_marker",
    "class_color",
    "covariance_ellipsoid",
    "covariance_ellipsoid_marker",
    "delete_all_marker",
    "detection_markers",
    "label_marker",
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



@dataclass(frozen=True)
class MarkerStyle:
    """Appearance of :func:`detection_markers` (validated on construction).

    Attributes:
        line_width: box and fan line width (m), > 0.
        text_height: label text height (m), > 0.
        n_sigma: covariance ellipsoid size in standard deviations, > 0 (see module docstring).
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


def _marker(header: Any, ns: str, marker_id: int, marker_type: int, style: MarkerStyle
            ) -> Marker:
    marker = Marker(header=copy_header(header), ns=ns, id=int(marker_id), type=marker_type,
                    action=Marker.ADD)
    sec = math.floor(style.lifetime_s)
    marker.lifetime = Duration(sec=sec, nanosec=int(round((style.lifetime_s - sec) * 1e9)))
    marker.pose.orientation.w = 1.0
    return marker


def delete_all_marker(header: Any) -> Marker:
    """A DELETEALL marker (empty namespace: clears every marker of the display)."""
    return Marker(header=copy_header(header), action=Marker.DELETEALL)


_CORNER_SIGNS = np.asarray(CORNER_SIGNS)
_EDGE_INDEX = np.asarray(BOX_EDGES).reshape(-1)


def box_corners(pose: ArrayLike, size: ArrayLike) -> np.ndarray:
    """``(8, 3)`` corners in the camera frame of a box ``size: (3,)`` (extents along the object
    x, y, z axes) at ``pose: (7,)`` or ``(4,)``, ordered as
    :data:`epropnp_lib.geometry.boxes.CORNER_SIGNS`."""
    p = as_float64(pose, "pose")
    if p.shape not in ((7,), (4,)):
        raise ArrayShapeError(f"pose: expected (7,) or (4,), got {p.shape}")
    s = as_float64(size, "size")
    if s.shape != (3,):
        raise ArrayShapeError(f"size: expected (3,), got {s.shape}")
    return _corners(p[:3], pose_rotation(p), s)


def _corners(t: np.ndarray, rot: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``(8, 3)`` corners of a box with centre ``t: (3,)``, axes ``rot: (3, 3)``, extents
    ``size: (3,)``."""
    return (_CORNER_SIGNS * size) @ rot.T + t


def box_marker(header: Any, obj: ObjectPose3D, marker_id: int, style: MarkerStyle
               ) -> Marker:
    """LINE_LIST of the 12 box edges (24 points) in the class colour."""
    return _box_marker(header, obj, box_corners(obj.pose, obj.size), marker_id, style)


def _box_marker(header: Any, obj: ObjectPose3D, corners: np.ndarray, marker_id: int,
                style: MarkerStyle) -> Marker:
    marker = _marker(header, NS_BOXES, marker_id, Marker.LINE_LIST, style)
    marker.points = points_to_msgs(corners[_EDGE_INDEX])
    marker.scale.x = style.line_width
    marker.color = class_color(obj.class_id, style.class_names)
    return marker


def label_marker(header: Any, obj: ObjectPose3D, marker_id: int, style: MarkerStyle
                 ) -> Marker:
    """TEXT_VIEW_FACING ``"<class> <score>"`` just above the box (camera -y side)."""
    return _label_marker(header, obj, box_corners(obj.pose, obj.size), marker_id, style)


def _label_marker(header: Any, obj: ObjectPose3D, corners: np.ndarray, marker_id: int,
                  style: MarkerStyle) -> Marker:
    marker = _marker(header, NS_LABELS, marker_id, Marker.TEXT_VIEW_FACING, style)
    centre = corners.mean(axis=0)
    marker.pose.position = Point(x=float(centre[0]),
                                 y=float(corners[:, 1].min() - 0.6 * style.text_height),
                                 z=float(centre[2]))
    marker.scale.z = style.text_height
    marker.color = class_color(obj.class_id, style.class_names)
    marker.text = f"{obj.class_id} {obj.score:.2f}"
    return marker


class Ellipsoid(NamedTuple):
    """Covariance ellipsoid(s): ``diameters (..., 3)`` along the columns of
    ``rotation (..., 3, 3)``."""

    diameters: np.ndarray
    rotation: np.ndarray


def covariance_ellipsoid(cov: ArrayLike, n_sigma: float) -> Ellipsoid:
    """The ``n_sigma`` ellipsoid(s) of 3x3 position covariances (see module docstring).

    Args:
        cov: ``(..., 3, 3)`` symmetric positive semi-definite (symmetrised here).
        n_sigma: > 0.

    Returns:
        ``diameters = 2 n_sigma sqrt(lambda)`` (floored at :data:`MIN_MARKER_SCALE`), ascending,
        and the proper rotations (det +1) whose columns are the eigenvectors.
    """
    c = as_float64(cov, "cov")
    if c.ndim < 2 or c.shape[-2:] != (3, 3):
        raise ArrayShapeError(f"cov: expected (..., 3, 3), got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise NonFiniteValueError("cov: contains NaN or infinity")
    eigval, eigvec = np.linalg.eigh(0.5 * (c + np.swapaxes(c, -1, -2)))
    flip = np.linalg.det(eigvec) < 0
    eigvec[..., :, 2] = np.where(flip[..., None], -eigvec[..., :, 2], eigvec[..., :, 2])
    diameters = np.maximum(2.0 * n_sigma * np.sqrt(np.clip(eigval, 0.0, None)), MIN_MARKER_SCALE)
    return Ellipsoid(diameters=diameters, rotation=eigvec)


def covariance_ellipsoid_marker(header: Any, center: ArrayLike, cov: ArrayLike, marker_id: int,
                                style: MarkerStyle, class_id: str = "") -> Marker:
    """SPHERE marker of the position covariance ``cov: (3, 3)`` at ``center: (3,)``."""
    ellipsoid = covariance_ellipsoid(cov, style.n_sigma)
    return _ellipsoid_marker(header, as_float64(center, "center").reshape(3),
                             ellipsoid.diameters, rotation_to_quat_msg(ellipsoid.rotation),
                             marker_id, style, class_id)


def _ellipsoid_marker(header: Any, center: np.ndarray, diameters: np.ndarray,
                      orientation: Quaternion, marker_id: int, style: MarkerStyle,
                      class_id: str) -> Marker:
    marker = _marker(header, NS_COVARIANCE, marker_id, Marker.SPHERE, style)
    x, y, z = center.tolist()
    marker.pose = Pose(position=Point(x=x, y=y, z=z), orientation=orientation)
    marker.scale.x, marker.scale.y, marker.scale.z = diameters.tolist()
    marker.color = class_color(class_id, style.class_names, style.ellipsoid_alpha)
    return marker


def orientation_fan_marker(header: Any, center: ArrayLike, samples: ArrayLike, marker_id: int,
                           style: MarkerStyle, length: float, class_id: str = "") -> Marker:
    """LINE_LIST: for each sample a segment of ``length`` from ``center: (3,)`` along the
    sample's heading (its object x axis, ``R[:, 0]``); ``samples: (S, 7)`` or ``(S, 4)``."""
    s = _samples(samples, "samples")
    return _fan_marker(header, as_float64(center, "center").reshape(3),
                       pose_rotation(s)[:, :, 0], marker_id, style, length, class_id)


def _samples(samples: ArrayLike, name: str) -> np.ndarray:
    s = as_float64(samples, name)
    if s.ndim != 2 or s.shape[1] not in (7, 4):
        raise ArrayShapeError(f"{name}: expected (S, 7) or (S, 4), got {s.shape}")
    return s


def _fan_marker(header: Any, center: np.ndarray, headings: np.ndarray, marker_id: int,
                style: MarkerStyle, length: float, class_id: str) -> Marker:
    """Fan marker from ``center: (3,)`` along unit ``headings: (S, 3)``."""
    marker = _marker(header, NS_ORIENTATIONS, marker_id, Marker.LINE_LIST, style)
    segments = np.empty((len(headings), 2, 3))
    segments[:, 0] = center
    segments[:, 1] = center + length * headings
    marker.points = points_to_msgs(segments.reshape(-1, 3))
    marker.scale.x = 0.5 * style.line_width
    marker.color = class_color(class_id, style.class_names, style.fan_alpha)
    return marker


def _batched_rotations(poses: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Rotation matrices of pose arrays ``(..., 7)`` / ``(..., 4)`` with one library call per
    pose kind (rather than one per object)."""
    out: list[np.ndarray] = [np.empty(0)] * len(poses)
    for dim in (7, 4):
        idx = [i for i, p in enumerate(poses) if p.shape[-1] == dim]
        if not idx:
            continue
        flat = [poses[i].reshape(-1, dim) for i in idx]
        rots = pose_rotation(np.concatenate(flat))
        offsets = np.cumsum([0] + [len(f) for f in flat])
        for k, i in enumerate(idx):
            out[i] = rots[offsets[k]:offsets[k + 1]].reshape(poses[i].shape[:-1] + (3, 3))
    return out


def detection_markers(header: Any, objects: Sequence[ObjectPose3D],
                      samples: Sequence[ArrayLike | None] | None = None,
                      style: MarkerStyle | None = None) -> MarkerArray:
    """All markers of one frame: DELETEALL, then boxes, labels, ellipsoids and fans.

    Args:
        header: frame id (camera optical frame) and stamp, copied into every marker.
        objects: the detections (pose, box extents, class, score, covariance).
        samples: per object ``(S, 7)`` / ``(S, 4)`` posterior pose samples (or ``None``) for the
            orientation fans; ``None`` = no fans. At most ``style.max_fan_samples`` of each
            object's samples are drawn (the first ones; samples are equally weighted).
        style: appearance; default :class:`MarkerStyle()`.
    """
    style = style or MarkerStyle()
    if samples is not None and len(samples) != len(objects):
        raise ArrayShapeError(f"samples: {len(samples)} entries for {len(objects)} objects")
    poses, sizes = [], []
    for i, obj in enumerate(objects):
        pose = as_float64(obj.pose, f"objects[{i}].pose")
        if pose.shape not in ((7,), (4,)):
            raise ArrayShapeError(f"objects[{i}].pose: expected (7,) or (4,), got {pose.shape}")
        size = as_float64(obj.size, f"objects[{i}].size")
        if size.shape != (3,):
            raise ArrayShapeError(f"objects[{i}].size: expected (3,), got {size.shape}")
        poses.append(pose)
        sizes.append(size)
    fan_samples: list[np.ndarray] = []
    fan_index: list[int] = []
    for i in range(len(objects)) if samples is not None else ():
        obj_samples = samples[i] if samples is not None else None
        if obj_samples is not None:
            fan_samples.append(_samples(obj_samples, f"samples[{i}]")[: style.max_fan_samples])
            fan_index.append(i)
    rotations = _batched_rotations(poses)
    covs = [as_float64(o.covariance, f"objects[{i}].covariance") for i, o in enumerate(objects)]
    for i, (pose, cov) in enumerate(zip(poses, covs, strict=True)):
        want = (6, 6) if pose.shape[0] == 7 else (4, 4)
        if cov.shape != want:
            raise ArrayShapeError(f"objects[{i}].covariance: expected {want}, got {cov.shape}")
    ellipsoids = covariance_ellipsoid(
        np.stack([c[:3, :3] for c in covs]) if covs else np.zeros((0, 3, 3)), style.n_sigma)
    orientations = rotations_to_quat_msgs(ellipsoids.rotation)
    headings = [r[:, :, 0] for r in _batched_rotations(fan_samples)]
    fans = dict(zip(fan_index, headings, strict=True))
    out = MarkerArray(markers=[delete_all_marker(header)])
    for i, obj in enumerate(objects):
        corners = _corners(poses[i][:3], rotations[i], sizes[i])
        out.markers.append(_box_marker(header, obj, corners, i, style))
        out.markers.append(_label_marker(header, obj, corners, i, style))
        out.markers.append(_ellipsoid_marker(header, poses[i][:3], ellipsoids.diameters[i],
                                             orientations[i], i, style, obj.class_id))
        if i in fans:
            length = style.fan_length or 0.5 * float(sizes[i][0])
            out.markers.append(_fan_marker(header, poses[i][:3], fans[i], i, style,
                                           max(length, MIN_MARKER_SCALE), obj.class_id))
    return out
