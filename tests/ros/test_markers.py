"""epropnp_ros.markers: MarkerArray content checked geometrically (no ROS graph)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from rclpy.serialization import deserialize_message, serialize_message
from scipy.spatial.transform import Rotation
from visualization_msgs.msg import Marker, MarkerArray

from epropnp_lib.errors import ConfigError, ShapeError
from epropnp_ros import markers as mk
from epropnp_ros.detections import ObjectPose3D
from epropnp_ros.messages import make_header

pytestmark = pytest.mark.ros


def _rot(q: Any) -> np.ndarray:
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


def _xyz(points: Any) -> np.ndarray:
    return np.array([[p.x, p.y, p.z] for p in points])


def _spd3(seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64).numpy()
    return a @ a.T + 0.01 * np.eye(3)


def _car(yaw: float = 0.5) -> ObjectPose3D:
    cov = np.diag([0.04, 0.01, 0.25, 0.02])
    # size = (l, h, w) extents along the object x, y, z axes
    return ObjectPose3D(pose=np.array([2.0, 1.0, 12.0, yaw]), size=np.array([4.5, 1.6, 1.9]),
                        class_id="car", score=0.873, covariance=cov)


@pytest.mark.parametrize("n_sigma", [1.0, 2.0, 3.0])
def test_ellipsoid_axes_match_covariance(n_sigma: float) -> None:
    cov = _spd3(0)
    style = mk.MarkerStyle(n_sigma=n_sigma)
    marker = mk.covariance_ellipsoid_marker(make_header("cam"), [1.0, 2.0, 3.0], cov, 4, style)
    assert marker.type == Marker.SPHERE and marker.ns == mk.NS_COVARIANCE and marker.id == 4
    rot = _rot(marker.pose.orientation)
    semi = np.array([marker.scale.x, marker.scale.y, marker.scale.z]) / (2 * n_sigma)
    np.testing.assert_allclose(rot @ np.diag(semi**2) @ rot.T, cov, atol=1e-9)
    assert (marker.pose.position.x, marker.pose.position.y, marker.pose.position.z) == (1, 2, 3)


def test_ellipsoid_known_axes() -> None:
    axes = Rotation.from_rotvec([0.0, 0.0, math.radians(30)]).as_matrix()
    cov = axes @ np.diag([4.0, 1.0, 0.25]) @ axes.T
    ell = mk.covariance_ellipsoid(cov, 2.0)
    # Eigenvalues ascending: std 0.5, 1, 2 -> diameters 2 * 2 * std.
    np.testing.assert_allclose(ell.diameters, [2.0, 4.0, 8.0], atol=1e-12)
    assert np.linalg.det(ell.rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(np.abs(ell.rotation[:, 2]), np.abs(axes[:, 0]), atol=1e-12)
    # Batched: each entry equals the single-matrix result (up to eigenvector sign/order).
    covs = np.stack([_spd3(k) for k in range(4)])
    batch = mk.covariance_ellipsoid(covs, 2.0)
    assert batch.diameters.shape == (4, 3) and batch.rotation.shape == (4, 3, 3)
    for k in range(4):
        one = mk.covariance_ellipsoid(covs[k], 2.0)
        np.testing.assert_allclose(batch.diameters[k], one.diameters, rtol=1e-12)
        rot, semi = batch.rotation[k], batch.diameters[k] / 4.0
        np.testing.assert_allclose(rot @ np.diag(semi**2) @ rot.T, covs[k], atol=1e-9)
        assert np.linalg.det(rot) == pytest.approx(1.0)
    # A singular covariance still gives a valid (non-zero) marker scale.
    flat = mk.covariance_ellipsoid(np.diag([1.0, 0.0, 0.0]), 2.0)
    assert flat.diameters.min() == mk.MIN_MARKER_SCALE
    with pytest.raises(ShapeError):
        mk.covariance_ellipsoid(np.eye(4), 2.0)


def test_box_marker_edges() -> None:
    obj = _car()
    marker = mk.box_marker(make_header("cam"), obj, 0, mk.MarkerStyle())
    pts = _xyz(marker.points)
    assert marker.type == Marker.LINE_LIST and len(pts) == 24
    [corners] = mk.object_corners(obj.pose[None], obj.size[None])
    np.testing.assert_allclose(corners.mean(axis=0), obj.pose[:3], atol=1e-12)
    seg = pts[1::2] - pts[0::2]
    lengths = np.sort(np.linalg.norm(seg, axis=1))
    np.testing.assert_allclose(lengths, np.repeat(np.sort(obj.size), 4), atol=1e-9)
    # Edges of length l run along the heading (cos yaw, 0, -sin yaw) of the 4DoF convention.
    yaw = obj.pose[3]
    heading = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    long_edges = seg[np.isclose(np.linalg.norm(seg, axis=1), obj.size[0])]
    np.testing.assert_allclose(np.abs(long_edges @ heading), obj.size[0], atol=1e-9)
    # Height edges are vertical in the camera frame (y down).
    tall = seg[np.isclose(np.linalg.norm(seg, axis=1), obj.size[1])]
    np.testing.assert_allclose(np.abs(tall[:, 1]), obj.size[1], atol=1e-9)


def test_orientation_fan_follows_samples() -> None:
    gen = torch.Generator().manual_seed(1)
    yaws = torch.rand(16, generator=gen, dtype=torch.float64) * 2 * math.pi - math.pi
    samples = torch.cat((torch.zeros(16, 3, dtype=torch.float64), yaws[:, None]), dim=1)
    centre = np.array([1.0, 0.5, 10.0])
    marker = mk.orientation_fan_marker(make_header("cam"), centre, samples, 2,
                                       mk.MarkerStyle(), length=2.0, class_id="car")
    pts = _xyz(marker.points)
    assert len(pts) == 32 and marker.ns == mk.NS_ORIENTATIONS
    np.testing.assert_allclose(pts[0::2], np.broadcast_to(centre, (16, 3)))
    expected = np.stack((np.cos(yaws), np.zeros(16), -np.sin(yaws)), axis=1) * 2.0
    np.testing.assert_allclose(pts[1::2] - centre, expected, atol=1e-12)
    # 6DoF samples: heading is the rotated object x axis.
    q = Rotation.from_rotvec([[0.0, 0.0, math.pi / 2]]).as_quat()  # x, y, z, w
    s7 = np.concatenate((np.zeros((1, 3)), q[:, [3, 0, 1, 2]]), axis=1)
    m7 = mk.orientation_fan_marker(make_header("cam"), np.zeros(3), s7, 0, mk.MarkerStyle(), 1.0)
    np.testing.assert_allclose(_xyz(m7.points)[1], [0.0, 1.0, 0.0], atol=1e-12)


def test_detection_markers_array() -> None:
    objects = [_car(0.5), _car(-1.0)._replace(class_id="pedestrian", score=0.4)]
    samples = [np.zeros((8, 4)), None]
    style = mk.MarkerStyle(class_names=("car", "pedestrian"))
    header = make_header("cam_optical", 7_000_000_123)
    out = mk.detection_markers(header, objects, samples, style)
    first = out.markers[0]
    assert first.action == Marker.DELETEALL
    rest = out.markers[1:]
    assert all(m.action == Marker.ADD for m in rest)
    assert all(m.header.frame_id == "cam_optical" and m.header.stamp == header.stamp
               for m in out.markers)
    by_ns: dict[str, list[int]] = {}
    for m in rest:
        by_ns.setdefault(m.ns, []).append(m.id)
    assert by_ns == {mk.NS_BOXES: [0, 1], mk.NS_LABELS: [0, 1], mk.NS_COVARIANCE: [0, 1],
                     mk.NS_ORIENTATIONS: [0]}
    labels = [m for m in rest if m.ns == mk.NS_LABELS]
    assert [m.text for m in labels] == ["car 0.87", "pedestrian 0.40"]
    assert labels[0].pose.position.y < objects[0].pose[1] - 0.8  # above the box (y down)
    boxes = [m for m in rest if m.ns == mk.NS_BOXES]
    assert boxes[0].color != boxes[1].color
    assert (boxes[0].color.r, boxes[0].color.g, boxes[0].color.b) == pytest.approx(
        mk.CLASS_PALETTE[0])
    ell = [m for m in rest if m.ns == mk.NS_COVARIANCE][0]
    # Position block of the 4DoF covariance: diag(0.04, 0.01, 0.25) -> std (0.2, 0.1, 0.5).
    np.testing.assert_allclose(sorted([ell.scale.x, ell.scale.y, ell.scale.z]),
                               [0.4, 0.8, 2.0], atol=1e-9)
    fan = [m for m in rest if m.ns == mk.NS_ORIENTATIONS][0]
    # Default fan length: half the box's x extent (length 4.5 m).
    np.testing.assert_allclose(np.linalg.norm(_xyz(fan.points)[1] - objects[0].pose[:3]), 2.25)
    # Serialises. Colours are float32 on the wire, so compare after one round trip (CDR padding
    # bytes are not deterministic, so the bytes themselves are not compared).
    once = deserialize_message(serialize_message(out), MarkerArray)
    assert deserialize_message(serialize_message(once), MarkerArray) == once
    assert [(m.ns, m.id, len(m.points)) for m in once.markers] == [
        (m.ns, m.id, len(m.points)) for m in out.markers]
    # Fans are capped at style.max_fan_samples segments.
    capped = mk.detection_markers(header, objects[:1], [np.zeros((100, 4))],
                                  mk.MarkerStyle(max_fan_samples=10))
    assert [len(m.points) for m in capped.markers if m.ns == mk.NS_ORIENTATIONS] == [20]
    # No objects: the DELETEALL alone clears the display.
    assert len(mk.detection_markers(header, []).markers) == 1
    with pytest.raises(ShapeError, match="samples"):
        mk.detection_markers(header, objects, [None])


def test_style_validation_and_colours() -> None:
    bad: list[dict[str, Any]] = [{"n_sigma": 0.0}, {"line_width": -1.0},
                                 {"ellipsoid_alpha": 1.5}, {"fan_length": 0.0},
                                 {"lifetime_s": math.nan}, {"max_fan_samples": 0}]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            mk.MarkerStyle(**kwargs)
    names = [f"class{i}" for i in range(10)]
    colours = {(c.r, c.g, c.b) for c in (mk.class_color(n, names) for n in names)}
    assert len(colours) == 10
    assert mk.class_color("unknown") == mk.class_color("unknown")
    marker = mk.box_marker(make_header("cam"), _car(), 0, mk.MarkerStyle(lifetime_s=0.25))
    assert (marker.lifetime.sec, marker.lifetime.nanosec) == (0, 250_000_000)
