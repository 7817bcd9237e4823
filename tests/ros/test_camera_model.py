"""epropnp_ros.camera_model: CameraInfo validation, and undistortion against the distortion
models written out analytically here."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo

from epropnp_lib.errors import ShapeError
from epropnp_ros.camera_model import camera_info_to_model, undistort_points
from epropnp_ros.errors import CameraInfoError

pytestmark = pytest.mark.ros


K = [600.0, 0.0, 330.0, 0.0, 610.0, 245.0, 0.0, 0.0, 1.0]
P_NEW = [480.0, 0.0, 320.0, 0.0, 0.0, 490.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
EYE = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def _info(model: str = "plumb_bob", d: list[float] | None = None, **kw: object) -> CameraInfo:
    msg = CameraInfo(width=640, height=480, distortion_model=model,
                     d=[-0.25, 0.08, 0.001, -0.002, 0.01] if d is None else d,
                     k=K, r=EYE, p=P_NEW)
    msg.header.frame_id = "cam_optical"
    for key, value in kw.items():
        setattr(msg, key, value)
    return msg


def test_camera_info_to_model() -> None:
    model = camera_info_to_model(_info())
    np.testing.assert_array_equal(model.k, np.reshape(K, (3, 3)))
    np.testing.assert_array_equal(model.p, np.reshape(P_NEW, (3, 4)))
    np.testing.assert_array_equal(model.pinhole_matrix, np.reshape(P_NEW, (3, 4))[:, :3])
    assert (model.width, model.height, model.frame_id) == (640, 480, "cam_optical")
    assert model.distortion_model == "plumb_bob" and model.d.shape == (5,) and model.is_distorted
    assert model.image_size == (480, 640)


def _zeros(n: int) -> list[float]:
    return [0.0] * n


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": _zeros(9)}, "K is not an intrinsic matrix|K has non-positive"),
        ({"k": [math.nan] + K[1:]}, "K contains NaN"),
        ({"p": [0.0] + P_NEW[1:]}, "P has non-positive"),  # all-zero P: K-only, accepted
        ({"p": P_NEW[:5] + [math.inf] + P_NEW[6:]}, "P contains NaN"),
        ({"distortion_model": "fancy_model"}, "unknown distortion model 'fancy_model'"),
        ({"d": [0.1, 0.2, 0.0]}, "needs 5 coefficients, D has 3"),
        ({"distortion_model": "equidistant"}, "needs 4 coefficients"),
        ({"d": [0.1, math.nan, 0, 0, 0]}, "D contains NaN"),
        ({"r": _zeros(9)}, "R is not a rotation"),
        ({"width": 0}, "zero image size"),
    ],
)
def test_camera_info_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(CameraInfoError, match=match):
        camera_info_to_model(_info(**kwargs))


def _distort(xy: np.ndarray, model: str, d: list[float]) -> np.ndarray:
    """Normalised ideal coordinates -> normalised distorted coordinates (the ROS models)."""
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    if model == "equidistant":
        r = np.sqrt(r2)
        theta = np.arctan(r)
        k1, k2, k3, k4 = d
        theta_d = theta * (1 + k1 * theta**2 + k2 * theta**4 + k3 * theta**6 + k4 * theta**8)
        return xy * (theta_d / r)[:, None]
    k1, k2, p1, p2, k3 = d[:5]
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    if model == "rational_polynomial":
        k4, k5, k6 = d[5:]
        radial = radial / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack((xd, yd), axis=1)


def test_k_only_camera_info_is_a_monocular_camera() -> None:
    """P and R left at zero (drivers that fill K and D only): R = I, P = [K | 0], and points
    are undistorted into K's pixel frame."""
    zero_p, zero_r = [0.0] * 12, [0.0] * 9
    model = camera_info_to_model(_info(p=zero_p, r=zero_r))
    np.testing.assert_array_equal(model.r, np.eye(3))
    np.testing.assert_array_equal(model.p, np.hstack([np.reshape(K, (3, 3)), np.zeros((3, 1))]))
    np.testing.assert_array_equal(model.pinhole_matrix, np.reshape(K, (3, 3)))
    full = camera_info_to_model(_info(p=K[:3] + [0.0] + K[3:6] + [0.0] + K[6:] + [0.0]))
    pts = np.array([[10.0, 20.0], [320.0, 240.0], [600.0, 400.0]])
    np.testing.assert_allclose(undistort_points(model, pts), undistort_points(full, pts))
    # K itself zero is still an uncalibrated camera, with that reason.
    with pytest.raises(CameraInfoError, match="uncalibrated"):
        camera_info_to_model(_info(k=[0.0] * 9, p=zero_p, r=zero_r))


@pytest.mark.parametrize(
    ("model", "d"),
    [
        ("plumb_bob", [-0.25, 0.08, 0.001, -0.002, 0.01]),
        ("rational_polynomial", [0.3, -0.05, 0.0005, 0.001, 0.002, 0.35, -0.04, 0.003]),
        ("equidistant", [0.05, -0.01, 0.002, -0.0005]),
    ],
)
def test_undistort_inverts_the_distortion_model(model: str, d: list[float]) -> None:
    # Stereo-like rectification rotation, so R is exercised too.
    rect = Rotation.from_rotvec([0.0, 0.02, -0.01]).as_matrix()
    cam = camera_info_to_model(_info(model, d, r=rect.reshape(-1).tolist()))
    u, v = np.meshgrid(np.linspace(-0.45, 0.45, 7), np.linspace(-0.35, 0.35, 5))
    ideal = np.stack((u.ravel(), v.ravel()), axis=1)
    distorted = _distort(ideal, model, d)
    pixels = distorted @ cam.k[:2, :2].T + cam.k[:2, 2]
    out = undistort_points(cam, pixels)
    rays = np.concatenate((ideal, np.ones((len(ideal), 1))), axis=1) @ rect.T
    expected = rays[:, :2] / rays[:, 2:] @ cam.pinhole_matrix[:2, :2].T + cam.pinhole_matrix[:2, 2]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.abs(pixels - expected).max() > 5.0  # the distortion is not negligible


def test_undistort_rectified_binning_roi_and_empty() -> None:
    pts = np.array([[10.0, 20.0], [100.5, 7.25]])
    cam = camera_info_to_model(_info())
    np.testing.assert_array_equal(undistort_points(cam, pts, rectified=True), pts)
    assert undistort_points(cam, np.zeros((0, 2))).shape == (0, 2)
    binned = camera_info_to_model(_info(binning_x=2, binning_y=2))
    assert binned.image_size == (240, 320)
    np.testing.assert_array_equal(undistort_points(binned, pts, rectified=True), pts * 2)
    info = _info()
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 100, 50, 200, 120
    roi = camera_info_to_model(info)
    assert roi.image_size == (120, 200)
    np.testing.assert_array_equal(undistort_points(roi, pts, rectified=True),
                                  pts + [100, 50])
    with pytest.raises(ShapeError):
        undistort_points(cam, np.zeros((3, 3)))


def test_no_distortion_maps_k_to_p() -> None:
    cam = camera_info_to_model(_info("", []))
    assert not cam.is_distorted
    pix = np.array([[330.0, 245.0], [930.0, 855.0]])  # principal point; (+1, +1) normalised
    np.testing.assert_allclose(undistort_points(cam, pix), [[320.0, 240.0], [800.0, 730.0]],
                               atol=1e-9)


#: Imports epropnp_ros.camera_model with the ROS message packages (and rclpy) refused, builds a
#: CameraModel from a plain attribute object and undistorts a point with it.
_WITHOUT_MESSAGES = """
import sys
from types import SimpleNamespace

BLOCKED = {"sensor_msgs", "geometry_msgs", "std_msgs", "vision_msgs", "tf2_msgs",
           "builtin_interfaces", "rclpy"}


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked")
        return None


sys.meta_path.insert(0, Refuse())
from epropnp_ros.camera_model import camera_info_to_model, undistort_points

info = SimpleNamespace(
    k=K, d=[0.0] * 5, distortion_model="plumb_bob", r=EYE, p=P_NEW, width=640, height=480,
    header=SimpleNamespace(frame_id="cam"), binning_x=0, binning_y=0,
    roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0),
)
model = camera_info_to_model(info)
print(model.image_size, undistort_points(model, [[330.0, 245.0]]).tolist())
print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""


def test_camera_model_imports_without_message_packages() -> None:
    code = f"K, P_NEW, EYE = {K!r}, {P_NEW!r}, {EYE!r}\n" + _WITHOUT_MESSAGES
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["(480, 640) [[320.0, 240.0]]", "[]"], res.stdout
