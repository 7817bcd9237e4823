"""epropnp_ros.conversions against real message classes (no ROS graph).

Quaternion order is checked against SciPy's independent (x, y, z, w) reading of the message;
undistortion against the distortion models written out analytically here.
"""

from __future__ import annotations

import array
import math
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from geometry_msgs.msg import Point, Pose, PoseArray, PoseWithCovariance, Quaternion
from rclpy.serialization import deserialize_message, serialize_message
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import Detection3DArray

from epropnp_lib.conventions import UNOBSERVED_ROTATION_VARIANCE
from epropnp_lib.data.nuscenes import NUSCENES_CLASSES
from epropnp_lib.errors import NonFiniteError, ShapeError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.pnp.problems import random_problems
from epropnp_lib.pnp.solver import solve_pnp
from epropnp_ros import conversions as cv

pytestmark = pytest.mark.ros


def _spd(dim: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    m = (a @ a.T + 0.1 * torch.eye(dim, dtype=torch.float64)).numpy()
    return 0.5 * (m + m.T)  # exactly symmetric


def _msg_rotation(q_msg: Any) -> np.ndarray:
    """Rotation matrix of a geometry_msgs/Quaternion read independently by SciPy (x, y, z, w)."""
    return Rotation.from_quat([q_msg.x, q_msg.y, q_msg.z, q_msg.w]).as_matrix()


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


# ------------------------------------------------------------------------------------ poses


def test_quaternion_order_w_last_in_message() -> None:
    # 90 degrees about the camera z axis: library (w, x, y, z) = (c, 0, 0, s).
    c = s = math.sqrt(0.5)
    msg = cv.pose_to_msg([1.0, 2.0, 3.0, c, 0.0, 0.0, s])
    o = msg.orientation
    assert (o.x, o.y, o.z) == (0.0, 0.0, pytest.approx(s)) and o.w == pytest.approx(c)
    assert (msg.position.x, msg.position.y, msg.position.z) == (1.0, 2.0, 3.0)
    rot = _msg_rotation(o)
    np.testing.assert_allclose(rot @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(cv.pose_rotation([0, 0, 0, c, 0, 0, s]), rot, atol=1e-12)


def test_pose_round_trip_generic_rotation() -> None:
    q_xyzw = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_quat()
    q_wxyz = np.roll(q_xyzw, 1)
    q_wxyz = q_wxyz if q_wxyz[0] >= 0 else -q_wxyz
    pose = np.concatenate(([0.5, -0.2, 4.0], q_wxyz))
    msg = cv.pose_to_msg(torch.tensor(pose))
    np.testing.assert_allclose(
        [msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w],
        q_wxyz[[1, 2, 3, 0]], atol=1e-12)
    np.testing.assert_allclose(cv.msg_to_pose(msg), pose, atol=1e-12)
    np.testing.assert_allclose(_msg_rotation(msg.orientation), cv.pose_rotation(pose), atol=1e-12)
    # -q is the same rotation; msg_to_pose returns the w >= 0 representative.
    neg = cv.pose_to_msg(np.concatenate((pose[:3], -q_wxyz)))
    np.testing.assert_allclose(cv.msg_to_pose(neg), pose, atol=1e-12)


def test_pose4_yaw_about_camera_y() -> None:
    yaw = 0.3
    msg = cv.pose_to_msg([1.0, 1.5, 20.0, yaw])
    o = msg.orientation
    assert o.x == 0.0 and o.z == 0.0
    assert o.y == pytest.approx(math.sin(yaw / 2)) and o.w == pytest.approx(math.cos(yaw / 2))
    np.testing.assert_allclose(_msg_rotation(o), _yaw_matrix(yaw), atol=1e-12)
    np.testing.assert_allclose(cv.msg_to_pose(msg, dof=4), [1.0, 1.5, 20.0, yaw], atol=1e-12)
    tilted = cv.pose_to_msg([0, 0, 5, math.cos(0.2), math.sin(0.2), 0, 0])
    with pytest.raises(cv.ConversionError, match="not a rotation about the camera y"):
        cv.msg_to_pose(tilted, dof=4)


def test_pose_input_errors() -> None:
    with pytest.raises(ShapeError):
        cv.pose_to_msg([1.0, 2.0, 3.0])
    with pytest.raises(NonFiniteError):
        cv.pose_to_msg([1.0, 2.0, math.nan, 0.1])
    with pytest.raises(ShapeError, match="zero quaternion"):
        cv.pose_to_msg([0, 0, 1, 0, 0, 0, 0])


# ------------------------------------------------------------------------------- covariance


def test_covariance_round_trip_6dof() -> None:
    cov = _spd(6, 0)
    ros = cv.covariance_to_msg(cov)
    assert ros.shape == (36,)
    # Row-major over (x, y, z, rot_x, rot_y, rot_z).
    assert ros[0 * 6 + 1] == cov[0, 1] and ros[3 * 6 + 3] == cov[3, 3]
    assert ros[5 * 6 + 2] == cov[5, 2]
    msg = PoseWithCovariance(covariance=ros)
    back = cv.msg_to_covariance(np.asarray(msg.covariance), dof=6)
    np.testing.assert_allclose(back, cov, rtol=0, atol=0)


def test_covariance_round_trip_4dof_large_unobserved_variances() -> None:
    cov = _spd(4, 1)
    ros = cv.covariance_to_msg(torch.tensor(cov)).reshape(6, 6)
    idx = [0, 1, 2, 4]  # x, y, z, rot_y (yaw about camera y)
    np.testing.assert_array_equal(ros[np.ix_(idx, idx)], cov)
    assert ros[3, 3] == ros[5, 5] == UNOBSERVED_ROTATION_VARIANCE == 1.0e6
    for k in (3, 5):
        assert np.count_nonzero(ros[k]) == 1 and np.count_nonzero(ros[:, k]) == 1
    np.testing.assert_array_equal(cv.msg_to_covariance(ros.reshape(-1), dof=4), cov)
    assert np.all(np.linalg.eigvalsh(ros) > 0)


@pytest.mark.parametrize("dof", [6, 4])
def test_solver_covariance_round_trip(dof: int) -> None:
    """A real Laplace covariance of the library solver: library -> ROS 6x6 -> library."""
    prob = random_problems(2, 24, dof=dof, noise_std=0.5, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(dof))
    sol = solve_pnp(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats, dof=dof)
    for pose, cov in zip(sol.pose, sol.covariance, strict=True):
        msg = cv.pose_with_covariance(pose, cov)
        ros = np.asarray(msg.covariance).reshape(6, 6)
        np.testing.assert_allclose(ros, ros.T, atol=0)
        assert np.linalg.eigvalsh(ros).min() > 0
        back = cv.msg_to_covariance(ros.reshape(-1), dof)
        np.testing.assert_allclose(back, cov.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(cv.msg_to_pose(msg.pose, dof)[:3], pose[:3].numpy())


def test_covariance_errors() -> None:
    with pytest.raises(ShapeError):
        cv.covariance_to_msg(np.eye(5))
    bad = np.eye(6)
    bad[2, 2] = math.inf
    with pytest.raises(NonFiniteError):
        cv.covariance_to_msg(bad)
    with pytest.raises(ShapeError):
        cv.msg_to_covariance(np.zeros(35), dof=6)
    with pytest.raises(ShapeError, match="covariance"):
        cv.pose_with_covariance([0, 0, 1, 0.0], np.eye(6))


# ----------------------------------------------------------------------------------- images


def _raw_image(encoding: str, h: int, w: int, step: int, data: bytes, bigendian: int = 0
               ) -> Image:
    return Image(height=h, width=w, encoding=encoding, step=step, is_bigendian=bigendian,
                 data=array.array("B", data))


def test_rgb8_round_trip_and_rgb() -> None:
    gen = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (5, 7, 3), generator=gen, dtype=torch.uint8).numpy()
    msg = cv.array_to_image(rgb, "rgb8", cv.make_header("cam", 1_500_000_001))
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 21, "rgb8")
    assert msg.header.frame_id == "cam"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1, 500_000_001)
    np.testing.assert_array_equal(cv.image_to_array(msg), rgb)
    out = cv.image_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.c_contiguous and out.dtype == np.uint8


def test_bgr8_is_reordered() -> None:
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[0, 0] = (10, 20, 30)  # b, g, r
    rgb = cv.image_to_rgb(cv.array_to_image(bgr, "bgr8"))
    assert rgb[0, 0].tolist() == [30, 20, 10]
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[1, 2] = (1, 2, 3, 255)
    assert cv.image_to_rgb(cv.array_to_image(bgra, "bgra8"))[1, 2].tolist() == [3, 2, 1]
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[1, 2] = (1, 2, 3, 255)
    assert cv.image_to_rgb(cv.array_to_image(rgba, "rgba8"))[1, 2].tolist() == [1, 2, 3]


def test_mono8_replicated_and_mono16_scaled() -> None:
    mono = np.arange(12, dtype=np.uint8).reshape(3, 4)
    msg = cv.array_to_image(mono, "mono8")
    assert cv.image_to_array(msg).shape == (3, 4)
    rgb = cv.image_to_rgb(msg)
    assert rgb.shape == (3, 4, 3)
    for ch in range(3):
        np.testing.assert_array_equal(rgb[:, :, ch], mono)
    mono16 = np.array([[0, 257, 65535]], np.uint16)
    assert cv.image_to_rgb(cv.array_to_image(mono16, "mono16"))[0, :, 0].tolist() == [0, 1, 255]


def test_16uc1_keeps_values_above_255() -> None:
    depth = np.array([[0, 256, 1000], [4095, 65535, 300]], np.uint16)
    out = cv.image_to_array(cv.array_to_image(depth, "16UC1"))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, depth)
    with pytest.raises(cv.ImageConversionError, match="numeric/depth"):
        cv.image_to_rgb(cv.array_to_image(depth, "16UC1"))


def test_row_padding_via_step() -> None:
    h, w, pad = 3, 4, 5
    rgb = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    rows = [row.tobytes() + b"\xab" * pad for row in rgb]
    msg = _raw_image("rgb8", h, w, w * 3 + pad, b"".join(rows))
    np.testing.assert_array_equal(cv.image_to_array(msg), rgb)
    depth = np.array([[1, 300], [70, 65000]], np.uint16)
    rows16 = [r.astype("<u2").tobytes() + b"\x00\x00\x00" for r in depth]
    np.testing.assert_array_equal(cv.image_to_array(_raw_image("16UC1", 2, 2, 7, b"".join(rows16))),
                                  depth)


def test_big_endian_flag() -> None:
    depth = np.array([[1, 258, 65280]], np.uint16)
    big = _raw_image("16UC1", 1, 3, 6, depth.astype(">u2").tobytes(), bigendian=1)
    np.testing.assert_array_equal(cv.image_to_array(big), depth)
    assert cv.image_to_array(big).dtype.isnative
    little = _raw_image("16UC1", 1, 3, 6, depth.astype("<u2").tobytes(), bigendian=0)
    np.testing.assert_array_equal(cv.image_to_array(little), depth)
    # The same bytes read with the wrong flag are byte-swapped: the flag is honoured.
    wrong = _raw_image("16UC1", 1, 3, 6, depth.astype("<u2").tobytes(), bigendian=1)
    assert cv.image_to_array(wrong).tolist() == [[256, 513, 255]]
    f = np.array([[1.5, -2.25]], np.float32)
    big_f = _raw_image("32FC1", 1, 2, 8, f.astype(">f4").tobytes(), bigendian=1)
    np.testing.assert_array_equal(cv.image_to_array(big_f), f)


def test_8uc3_array_but_no_colour_meaning() -> None:
    arr = np.full((2, 2, 3), 7, np.uint8)
    msg = cv.array_to_image(arr, "8UC3")
    np.testing.assert_array_equal(cv.image_to_array(msg), arr)
    with pytest.raises(cv.ImageConversionError, match="8UC3"):
        cv.image_to_rgb(msg)


def test_bayer_and_yuv_to_rgb() -> None:
    colour = np.array([200, 100, 40], np.uint8)
    h, w = 8, 8
    mosaic = np.empty((h, w), np.uint8)  # RGGB: R at (even, even), B at (odd, odd)
    mosaic[0::2, 0::2] = colour[0]
    mosaic[0::2, 1::2] = colour[1]
    mosaic[1::2, 0::2] = colour[1]
    mosaic[1::2, 1::2] = colour[2]
    rgb = cv.image_to_rgb(cv.array_to_image(mosaic, "bayer_rggb8"))
    np.testing.assert_array_equal(rgb[2:-2, 2:-2], np.broadcast_to(colour, (h - 4, w - 4, 3)))
    uyvy = np.full((2, 4, 2), 128, np.uint8)  # Y = U = V = 128: mid grey
    rgb = cv.image_to_rgb(cv.array_to_image(uyvy, "yuv422"))
    assert rgb.shape == (2, 4, 3) and np.all(np.abs(rgb.astype(int) - 128) <= 2)


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (_raw_image("nv12", 2, 2, 2, b"\0" * 6), "unsupported image encoding 'nv12'"),
        (_raw_image("rgb8", 0, 4, 12, b""), "zero-size"),
        (_raw_image("rgb8", 4, 0, 0, b""), "zero-size"),
        (_raw_image("rgb8", 2, 2, 6, b"\0" * 11), "truncated"),
        (_raw_image("16UC1", 2, 2, 3, b"\0" * 6), "step 3 is smaller than one row"),
    ],
)
def test_image_errors(msg: Image, match: str) -> None:
    with pytest.raises(cv.ImageConversionError, match=match):
        cv.image_to_array(msg)
    with pytest.raises(cv.ImageConversionError):
        cv.image_to_rgb(msg)


def test_array_to_image_rejects_mismatch() -> None:
    with pytest.raises(cv.ImageConversionError, match="does not match"):
        cv.array_to_image(np.zeros((2, 2, 3), np.uint16), "rgb8")
    with pytest.raises(cv.ImageConversionError, match="does not match"):
        cv.array_to_image(np.zeros((2, 2), np.uint8), "rgb8")


def test_compressed_png_jpeg_and_errors() -> None:
    gen = torch.Generator().manual_seed(4)
    rgb = torch.randint(0, 256, (16, 24, 3), generator=gen, dtype=torch.uint8).numpy()
    png = cv.rgb_to_compressed(rgb, cv.make_header("cam"), fmt="png")
    assert png.format == "rgb8; png compressed bgr8" and png.header.frame_id == "cam"
    np.testing.assert_array_equal(cv.compressed_to_rgb(png), rgb)
    smooth = np.zeros((32, 32, 3), np.uint8)
    smooth[..., 0] = 200  # red, so a channel swap would show
    jpg = cv.compressed_to_rgb(cv.rgb_to_compressed(smooth, fmt="jpeg", quality=95))
    assert np.abs(jpg.astype(int) - smooth).max() <= 3
    with pytest.raises(cv.ImageConversionError, match="empty"):
        cv.compressed_to_rgb(CompressedImage(format="jpeg"))
    with pytest.raises(cv.ImageConversionError, match="could not decode"):
        cv.compressed_to_rgb(CompressedImage(format="jpeg", data=array.array("B", b"nope" * 9)))
    with pytest.raises(cv.ImageConversionError, match="depth"):
        cv.compressed_to_rgb(CompressedImage(format="16UC1; compressedDepth", data=png.data))


# ----------------------------------------------------------------------------------- camera

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
    model = cv.camera_info_to_model(_info())
    np.testing.assert_array_equal(model.k, np.reshape(K, (3, 3)))
    np.testing.assert_array_equal(model.p, np.reshape(P_NEW, (3, 4)))
    np.testing.assert_array_equal(model.pinhole_matrix, np.reshape(P_NEW, (3, 4))[:, :3])
    assert (model.width, model.height, model.frame_id) == (640, 480, "cam_optical")
    assert model.distortion_model == "plumb_bob" and model.d.shape == (5,) and model.is_distorted
    assert model.image_size == (480, 640)
    model.check_image_size(480, 640)
    with pytest.raises(cv.CameraInfoError, match="image is 320x240 but CameraInfo"):
        model.check_image_size(240, 320)


def _zeros(n: int) -> list[float]:
    return [0.0] * n


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": _zeros(9)}, "K is not an intrinsic matrix|K has non-positive"),
        ({"k": [math.nan] + K[1:]}, "K contains NaN"),
        ({"p": _zeros(12)}, "P has non-positive"),
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
    with pytest.raises(cv.CameraInfoError, match=match):
        cv.camera_info_to_model(_info(**kwargs))


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
    cam = cv.camera_info_to_model(_info(model, d, r=rect.reshape(-1).tolist()))
    u, v = np.meshgrid(np.linspace(-0.45, 0.45, 7), np.linspace(-0.35, 0.35, 5))
    ideal = np.stack((u.ravel(), v.ravel()), axis=1)
    distorted = _distort(ideal, model, d)
    pixels = distorted @ cam.k[:2, :2].T + cam.k[:2, 2]
    out = cv.undistort_points(cam, pixels)
    rays = np.concatenate((ideal, np.ones((len(ideal), 1))), axis=1) @ rect.T
    expected = rays[:, :2] / rays[:, 2:] @ cam.pinhole_matrix[:2, :2].T + cam.pinhole_matrix[:2, 2]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.abs(pixels - expected).max() > 5.0  # the distortion is not negligible


def test_undistort_rectified_binning_roi_and_empty() -> None:
    pts = np.array([[10.0, 20.0], [100.5, 7.25]])
    cam = cv.camera_info_to_model(_info())
    np.testing.assert_array_equal(cv.undistort_points(cam, pts, rectified=True), pts)
    assert cv.undistort_points(cam, np.zeros((0, 2))).shape == (0, 2)
    binned = cv.camera_info_to_model(_info(binning_x=2, binning_y=2))
    assert binned.image_size == (240, 320)
    np.testing.assert_array_equal(cv.undistort_points(binned, pts, rectified=True), pts * 2)
    info = _info()
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 100, 50, 200, 120
    roi = cv.camera_info_to_model(info)
    assert roi.image_size == (120, 200)
    np.testing.assert_array_equal(cv.undistort_points(roi, pts, rectified=True),
                                  pts + [100, 50])
    with pytest.raises(ShapeError):
        cv.undistort_points(cam, np.zeros((3, 3)))


def test_no_distortion_maps_k_to_p() -> None:
    cam = cv.camera_info_to_model(_info("", []))
    assert not cam.is_distorted
    pix = np.array([[330.0, 245.0], [930.0, 855.0]])  # principal point; (+1, +1) normalised
    np.testing.assert_allclose(cv.undistort_points(cam, pix), [[320.0, 240.0], [800.0, 730.0]],
                               atol=1e-9)


# ------------------------------------------------------------------------------- detections


class _Boxes(NamedTuple):
    center: torch.Tensor
    size: torch.Tensor
    yaw: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor


CLASSES = ("car", "truck", "pedestrian")


def _boxes() -> tuple[_Boxes, np.ndarray]:
    boxes = _Boxes(
        center=torch.tensor([[1.0, 1.2, 15.0], [-3.0, 0.8, 30.0]]),
        size=torch.tensor([[1.9, 4.5, 1.6], [0.7, 0.8, 1.8]]),  # (w, l, h)
        yaw=torch.tensor([0.4, -2.0]),
        labels=torch.tensor([0, 2]),
        scores=torch.tensor([0.9, 0.55]),
    )
    return boxes, np.stack((_spd(4, 5), _spd(4, 6)))


def test_detection3d_array_fields() -> None:
    boxes, covs = _boxes()
    header = cv.make_header("cam_front_optical", 1_700_000_000_123_456_789)
    objects = cv.objects_from_boxes(boxes, covs, CLASSES)
    msg = cv.detection3d_array(header, objects)
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
        rot = _msg_rotation(det.bbox.center.orientation)
        yaw = float(boxes.yaw[i])
        np.testing.assert_allclose(rot, _yaw_matrix(yaw), atol=1e-6)
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
        np.testing.assert_allclose(cv.msg_to_covariance(cov.reshape(-1), 4), covs[i])
    # The message serialises (field types are right for the wire).
    data = serialize_message(msg)
    assert deserialize_message(data, Detection3DArray) == msg


def test_detection3d_6dof_and_errors() -> None:
    cov = _spd(6, 7)
    obj = cv.ObjectPose3D(pose=np.array([0.1, 0.0, 0.8, 1.0, 0.0, 0.0, 0.0]),
                          size=np.array([0.1, 0.2, 0.3]), class_id="duck", score=1.0,
                          covariance=cov, object_id="duck_1")
    msg = cv.detection3d_array(cv.make_header("cam"), [obj])
    det = msg.detections[0]
    assert det.id == "duck_1" and det.results[0].hypothesis.class_id == "duck"
    np.testing.assert_allclose(np.asarray(det.results[0].pose.covariance), cov.reshape(-1))
    with pytest.raises(ShapeError, match="covariance"):
        cv.detection3d_array(cv.make_header("cam"), [obj._replace(covariance=np.eye(4))])
    boxes, covs = _boxes()
    with pytest.raises(ShapeError, match="labels"):
        cv.objects_from_boxes(boxes._replace(labels=torch.tensor([0, 3])), covs, CLASSES)
    with pytest.raises(ShapeError, match="covariances"):
        cv.objects_from_boxes(boxes, covs[:1], CLASSES)


def test_pose_with_covariance_stamped_copies_header() -> None:
    header = cv.make_header("cam", 5)
    msg = cv.pose_with_covariance_stamped(header, [0.0, 0.0, 3.0, 0.1], _spd(4, 8))
    header.frame_id = "changed"
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 5
    assert msg.pose.covariance[3 * 6 + 3] == UNOBSERVED_ROTATION_VARIANCE


def test_pose_array_from_samples() -> None:
    gen = torch.Generator().manual_seed(9)
    s4 = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    arr = cv.pose_array(cv.make_header("cam", 1), s4)
    assert len(arr.poses) == 50 and arr.header.frame_id == "cam"
    for pose, sample in zip(arr.poses, s4.numpy(), strict=True):
        np.testing.assert_allclose(_msg_rotation(pose.orientation), _yaw_matrix(sample[3]),
                                   atol=1e-12)
        assert pose.position.z == sample[2]
    s7 = torch.cat((torch.zeros(3, 3), torch.tensor([[0.0, 0.0, 0.0, 2.0]] * 3)), dim=1)
    arr7 = cv.pose_array(cv.make_header("cam"), s7)
    assert [p.orientation.z for p in arr7.poses] == [1.0] * 3
    assert [p.orientation.w for p in arr7.poses] == [0.0] * 3
    with pytest.raises(ShapeError):
        cv.pose_array(cv.make_header("cam"), torch.zeros(3, 6))


def test_tf_message_per_object() -> None:
    boxes, covs = _boxes()
    objects = cv.objects_from_boxes(boxes, covs, CLASSES)
    tf = cv.tf_message(cv.make_header("cam", 42), objects, child_frame_prefix="obj_")
    assert [t.child_frame_id for t in tf.transforms] == ["obj_0", "obj_1"]
    for t, obj in zip(tf.transforms, objects, strict=True):
        assert t.header.frame_id == "cam" and t.header.stamp.nanosec == 42
        tr = t.transform.translation
        np.testing.assert_allclose([tr.x, tr.y, tr.z], obj.pose[:3])
        np.testing.assert_allclose(_msg_rotation(t.transform.rotation),
                                   _yaw_matrix(obj.pose[3]), atol=1e-6)


def test_bbox_corners_agree_with_camera_boxes() -> None:
    """BoundingBox3D (centre pose + size along the object axes) spans CameraBoxes.corners()."""
    boxes, covs = _boxes()
    m = boxes.center.shape[0]
    cam_boxes = CameraBoxes(center=boxes.center, size=boxes.size, yaw=boxes.yaw,
                            labels=torch.tensor([0, 5]), velocity=torch.zeros(m, 2),
                            attributes=torch.full((m,), -1), scores=boxes.scores).validate()
    msg = cv.detection3d_array(cv.make_header("cam"), cv.objects_from_boxes(cam_boxes, covs))
    assert [d.results[0].hypothesis.class_id for d in msg.detections] == [
        NUSCENES_CLASSES[0], NUSCENES_CLASSES[5]]
    want = cam_boxes.corners().double().numpy()
    for det, corners in zip(msg.detections, want, strict=True):
        rot = _msg_rotation(det.bbox.center.orientation)
        c = det.bbox.center.position
        half = np.array([det.bbox.size.x, det.bbox.size.y, det.bbox.size.z]) / 2
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        got = (signs * half) @ rot.T + [c.x, c.y, c.z]
        # Same 8 points (orders differ): match each corner to its nearest.
        dist = np.linalg.norm(got[:, None] - corners[None], axis=-1)
        assert dist.min(axis=1).max() < 1e-5 and len(set(dist.argmin(axis=1))) == 8


def test_builder_errors_are_conversion_errors() -> None:
    for call in (lambda: cv.pose_to_msg([1.0]),
                 lambda: cv.covariance_to_msg(np.full((6, 6), math.nan)),
                 lambda: cv.pose_array(cv.make_header("c"), np.zeros((2, 5)))):
        with pytest.raises(cv.ConversionError):
            call()


def test_fast_message_construction_matches_constructors() -> None:
    """The slot-filling fast path (used in this venv) builds the same messages as __init__."""
    assert cv.FAST_MESSAGES  # Kilted wheels: the generated classes have the expected layout
    gen = torch.Generator().manual_seed(10)
    poses = torch.randn(20, 7, generator=gen, dtype=torch.float64).numpy()
    fast = cv.poses_to_msgs(poses)
    unit = poses[:, 3:] / np.linalg.norm(poses[:, 3:], axis=1, keepdims=True)
    slow = [Pose(position=Point(x=p[0], y=p[1], z=p[2]),
                 orientation=Quaternion(x=q[1], y=q[2], z=q[3], w=q[0]))
            for p, q in zip(poses.tolist(), unit.tolist(), strict=True)]
    assert fast == slow
    assert all(type(m.position.x) is float for m in fast)
    points = cv.points_to_msgs(poses[:, :3])
    assert points == [Point(x=x, y=y, z=z) for x, y, z in poses[:, :3].tolist()]
    # They serialise like constructor-built messages.
    wire = serialize_message(PoseArray(poses=fast))
    assert deserialize_message(wire, PoseArray).poses == slow
    # Mutating one message never touches another.
    fast[0].position.x = 123.0
    assert fast[1].position.x != 123.0 and fast[0].orientation == slow[0].orientation


def test_covariance_to_msg_batched() -> None:
    covs = np.stack((_spd(4, 11), _spd(4, 12), _spd(4, 13)))
    rows = cv.covariance_to_msg(covs)
    assert rows.shape == (3, 36)
    for row, cov in zip(rows, covs, strict=True):
        np.testing.assert_array_equal(row, cv.covariance_to_msg(cov))
