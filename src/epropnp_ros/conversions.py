"""ROS messages <-> NumPy arrays: images, camera info, poses with covariance, detections.

The one module where ROS message layouts meet :mod:`epropnp_lib` conventions. It needs the
message packages (``sensor_msgs``, ``geometry_msgs``, ``std_msgs``, ``vision_msgs``,
``tf2_msgs``) but not rclpy, and no cv_bridge: images are read from the message fields with
NumPy (``encoding``, ``step`` row padding, ``is_bigendian``). Readers only touch message
attributes, so they also accept the message objects of ``rosbags``.

Conventions (see :mod:`epropnp_lib.conventions`)
    * Poses map object to camera, in the header's optical frame (x right, y down, z forward).
      Library quaternions are ``(w, x, y, z)``; ``geometry_msgs/Quaternion`` is ``(x, y, z, w)``.
      This module is the **only** place the order is swapped: :func:`poses_to_msgs` (and
      :func:`pose_to_msg` on top of it), :func:`rotations_to_quat_msgs` and :func:`msg_to_pose`.
    * 4DoF poses ``(x, y, z, yaw)``: yaw about the camera **y** axis (down);
      ``q = (cos(yaw/2), 0, sin(yaw/2), 0)``.
    * Covariance: ROS 6x6 row-major over ``(x, y, z, rot_x, rot_y, rot_z)``, fixed axes, header
      frame; produced only by :func:`epropnp_lib.pnp.covariance.to_ros_covariance`. For 4DoF
      the unobserved ``rot_x`` / ``rot_z`` variances are
      :data:`epropnp_lib.conventions.UNOBSERVED_ROTATION_VARIANCE` (1e6 rad^2), never zero.

3D boxes (``vision_msgs/BoundingBox3D``)
    ``bbox.center`` is the object pose (the box centre and the object axes); ``bbox.size`` is
    the box extent along the object's **own** x, y, z axes. For nuScenes-style boxes (size
    ``(w, l, h)`` like the devkit's ``wlh``, object x axis = length direction, yaw about the
    camera y axis so the object y axis points down = height) this is
    ``size = (l, h, w)``: see :func:`box_extents_from_wlh` and :func:`objects_from_boxes`.

Images
    :func:`image_to_array` returns the raw pixel values (``(H, W)`` or ``(H, W, C)``, native byte
    order, C-contiguous copy); :func:`image_to_rgb` returns ``(H, W, 3) uint8`` RGB for the
    networks. Every malformed message raises :class:`ImageConversionError` with the reason.

Errors
    Everything this module raises for bad input is a :class:`ConversionError` (nodes catch that
    one class): :class:`ImageConversionError`, :class:`CameraInfoError`, and for arrays handed to
    the builders :class:`ArrayShapeError` / :class:`NonFiniteValueError`, which are also the
    library's :class:`~epropnp_lib.errors.ShapeError` / :class:`~epropnp_lib.errors.NonFiniteError`.

Camera
    :func:`camera_info_to_model` validates a ``CameraInfo`` into a :class:`CameraModel`;
    :func:`undistort_points` maps 2D points of the received image to the ideal pinhole camera
    whose intrinsic matrix is :attr:`CameraModel.pinhole_matrix` (``P[:, :3]``) -- the matrix the
    pipeline must use with undistorted points, for raw and for rectified images alike.

Speed
    Builders batch the library calls (one quaternion / covariance call per message, not per
    object) and build ``Point`` / ``Pose`` lists through a checked fast path
    (:data:`FAST_MESSAGES`), since message constructors dominate large PoseArrays and markers.
"""

from __future__ import annotations

import array
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeAlias

import cv2
import numpy as np
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import (
    Point,
    Pose,
    PoseArray,
    PoseWithCovariance,
    PoseWithCovarianceStamped,
    Quaternion,
    TransformStamped,
)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import (
    Detection3D,
    Detection3DArray,
    ObjectHypothesisWithPose,
)

from epropnp_lib.data.nuscenes import NUSCENES_CLASSES
from epropnp_lib.errors import EProPnPError, NonFiniteError, ShapeError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.pose import pose_space
from epropnp_lib.geometry.rotations import matrix_to_quat, yaw_to_quat
from epropnp_lib.pnp.covariance import from_ros_covariance, to_ros_covariance

__all__ = [
    "ArrayLike",
    "ArrayShapeError",
    "FAST_MESSAGES",
    "BoxesLike",
    "CameraInfoError",
    "CameraModel",
    "ConversionError",
    "DISTORTION_MODELS",
    "ImageConversionError",
    "NonFiniteValueError",
    "ObjectPose3D",
    "SUPPORTED_ENCODINGS",
    "array_to_image",
    "as_float64",
    "box_extents_from_wlh",
    "camera_info_to_model",
    "compressed_to_rgb",
    "copy_header",
    "covariance_to_msg",
    "detection3d_array",
    "image_to_array",
    "image_to_rgb",
    "make_header",
    "msg_to_covariance",
    "msg_to_pose",
    "objects_from_boxes",
    "pose_array",
    "pose_rotation",
    "pose_to_msg",
    "poses_to_msgs",
    "points_to_msgs",
    "pose_with_covariance",
    "pose_with_covariance_stamped",
    "rotation_to_quat_msg",
    "rotations_to_quat_msgs",
    "rgb_to_compressed",
    "tf_message",
    "undistort_points",
]

#: Anything :func:`numpy.asarray` accepts, or a torch tensor (any device; detached and copied).
ArrayLike: TypeAlias = "np.ndarray | torch.Tensor | Sequence[float] | Sequence[Sequence[float]]"


class ConversionError(EProPnPError, ValueError):
    """A ROS message cannot be converted (malformed, inconsistent or unsupported)."""


class ImageConversionError(ConversionError):
    """An ``Image`` / ``CompressedImage`` cannot be decoded; the message says why."""


class CameraInfoError(ConversionError):
    """A ``CameraInfo`` is invalid (zero/NaN K or P, unknown distortion model, size mismatch)."""


class ArrayShapeError(ConversionError, ShapeError):
    """An array given to a message builder has the wrong shape (also a :class:`ShapeError`)."""


class NonFiniteValueError(ConversionError, NonFiniteError):
    """An array given to a message builder holds NaN/inf (also a :class:`NonFiniteError`)."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def as_float64(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 NumPy array (torch tensors are detached and moved to the CPU).

    Raises:
        ArrayShapeError: ``x`` is not numeric (the message names ``name``).
    """
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ArrayShapeError(f"{name}: not a numeric array ({exc})") from exc


def _check(x: np.ndarray, shape: tuple[int | None, ...], name: str) -> None:
    """Raise :class:`ShapeError` unless ``x.shape`` matches ``shape`` (``None`` = any size)."""
    if x.ndim != len(shape) or any(w is not None and s != w for s, w in zip(x.shape, shape,
                                                                           strict=True)):
        want = "(" + ", ".join("N" if w is None else str(w) for w in shape) + ")"
        raise ArrayShapeError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def _finite(x: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(x)):
        raise NonFiniteValueError(f"{name}: contains NaN or infinity")


def make_header(frame_id: str, stamp: Time | int | None = None) -> Header:
    """A ``std_msgs/Header``; ``stamp`` is a ``Time`` message or integer nanoseconds."""
    header = Header(frame_id=frame_id)
    if isinstance(stamp, int):
        header.stamp = Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)
    elif stamp is not None:
        header.stamp = Time(sec=stamp.sec, nanosec=stamp.nanosec)
    return header


def copy_header(header: Any) -> Header:
    """A new ``Header`` equal to ``header`` (messages are mutable; never share sub-messages)."""
    return make_header(header.frame_id, header.stamp)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

_U8, _U16 = np.dtype(np.uint8), np.dtype(np.uint16)

#: Named encodings of ``sensor_msgs/image_encodings.hpp``: (dtype, channels).
_NAMED_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (_U8, 3), "bgr8": (_U8, 3), "rgba8": (_U8, 4), "bgra8": (_U8, 4),
    "rgb16": (_U16, 3), "bgr16": (_U16, 3), "rgba16": (_U16, 4), "bgra16": (_U16, 4),
    "mono8": (_U8, 1), "mono16": (_U16, 1),
    "bayer_rggb8": (_U8, 1), "bayer_bggr8": (_U8, 1),
    "bayer_gbrg8": (_U8, 1), "bayer_grbg8": (_U8, 1),
    "bayer_rggb16": (_U16, 1), "bayer_bggr16": (_U16, 1),
    "bayer_gbrg16": (_U16, 1), "bayer_grbg16": (_U16, 1),
    "yuv422": (_U8, 2), "uyvy": (_U8, 2), "yuv422_yuy2": (_U8, 2), "yuyv": (_U8, 2),
}
_NUMERIC_ENCODING = re.compile(r"^(8|16|32|64)([USF])C([1-4])$")
_NUMERIC_DTYPES = {
    ("8", "U"): np.uint8, ("8", "S"): np.int8, ("16", "U"): np.uint16, ("16", "S"): np.int16,
    ("32", "S"): np.int32, ("32", "F"): np.float32, ("64", "F"): np.float64,
}
#: Every encoding :func:`image_to_array` reads (the numeric ``{8,16,32,64}{U,S,F}C{1..4}``
#: family is listed for its valid depth/type pairs).
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_NAMED_ENCODINGS) + tuple(
    f"{bits}{kind}C{c}" for (bits, kind) in _NUMERIC_DTYPES for c in range(1, 5)
)

# OpenCV demosaicing codes (OpenCV names Bayer patterns by the second row's first two pixels).
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB,
}


# OpenCV conversions of the other colour layouts to RGB (keys: encoding without bit depth).
_TO_RGB = {"bgr": cv2.COLOR_BGR2RGB, "rgba": cv2.COLOR_RGBA2RGB, "bgra": cv2.COLOR_BGRA2RGB,
           "mono": cv2.COLOR_GRAY2RGB}


def _encoding_format(encoding: str) -> tuple[np.dtype, int]:
    """(dtype, channels) of an encoding, or :class:`ImageConversionError`."""
    named = _NAMED_ENCODINGS.get(encoding.lower())
    if named is not None:
        return named
    match = _NUMERIC_ENCODING.match(encoding.upper())
    if match is not None:
        dtype = _NUMERIC_DTYPES.get((match.group(1), match.group(2)))
        if dtype is not None:
            return np.dtype(dtype), int(match.group(3))
    raise ImageConversionError(
        f"unsupported image encoding {encoding!r}; supported: rgb8, bgr8, rgba8, bgra8, rgb16, "
        "bgr16, rgba16, bgra16, mono8, mono16, bayer_*8/16, yuv422 (uyvy), yuv422_yuy2 (yuyv), "
        "and {8U,8S,16U,16S,32S,32F,64F}C{1..4}"
    )


def _buffer(data: Any) -> np.ndarray:
    """The bytes of a message ``data`` field (array.array, bytes, ndarray, list) as uint8."""
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_array(msg: Any) -> np.ndarray:
    """Pixel values of a ``sensor_msgs/Image``.

    Honours ``encoding`` (see :data:`SUPPORTED_ENCODINGS`), ``step`` (row padding is dropped)
    and ``is_bigendian`` (multi-byte values are returned in native byte order).

    Args:
        msg: a ``sensor_msgs/Image`` (or any object with its fields).

    Returns:
        ``(H, W)`` for one-channel encodings, else ``(H, W, C)``, dtype of the encoding
        (``uint16`` for ``16UC1``/``mono16``, ``float32`` for ``32FC1`` ...); an owned,
        C-contiguous copy (it does not alias the message).

    Raises:
        ImageConversionError: unsupported encoding, zero-size image, ``step`` smaller than a
            row, or ``data`` shorter than ``step * height``.
    """
    encoding = str(msg.encoding)
    dtype, channels = _encoding_format(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"zero-size image ({width}x{height}, encoding {encoding})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than one row ({width} px x {channels} ch x "
            f"{dtype.itemsize} B = {row_bytes} B, encoding {encoding})"
        )
    buf = _buffer(msg.data)
    if buf.size < step * height:
        raise ImageConversionError(
            f"truncated image data: {buf.size} B < step {step} x height {height} = "
            f"{step * height} B (encoding {encoding})"
        )
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    pixels = np.ascontiguousarray(rows).view(wire).astype(dtype.newbyteorder("="), copy=True)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.reshape(shape)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """16-bit values scaled to 8 bit (``round(v * 255 / 65535)``); 8-bit unchanged."""
    if x.dtype == np.uint8:
        return x
    return ((x.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def image_to_rgb(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/Image`` as ``(H, W, 3) uint8`` RGB, the networks' input.

    Colour encodings are reordered (bgr -> rgb, alpha dropped), mono is replicated to three
    channels, Bayer is demosaiced and YUV 4:2:2 converted with OpenCV, 16-bit colour/mono is
    scaled to 8 bit (``v * 255 / 65535``).

    Raises:
        ImageConversionError: everything :func:`image_to_array` raises, and encodings that are
            not images of colour or intensity: depth / numeric ones (``16UC1``, ``32FC1``,
            ``8UC3`` -- no channel order is defined, as in cv_bridge).
    """
    encoding = str(msg.encoding).lower()
    if encoding not in _NAMED_ENCODINGS:
        _encoding_format(str(msg.encoding))  # unsupported encodings get the generic message
        raise ImageConversionError(
            f"encoding {msg.encoding!r} is a numeric/depth format without a colour meaning; "
            "publish rgb8, bgr8, mono8 (or another colour encoding) for the detector"
        )
    pixels = image_to_array(msg)
    if encoding.startswith("bayer_"):
        rgb = cv2.cvtColor(pixels, _BAYER_TO_RGB[encoding[6:10]])
        return np.ascontiguousarray(_to_uint8(rgb))
    if encoding in ("yuv422", "uyvy"):
        return cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_UYVY)
    if encoding in ("yuv422_yuy2", "yuyv"):
        return cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_YUY2)
    pixels = _to_uint8(pixels)
    if encoding in ("rgb8", "rgb16"):
        return pixels
    return cv2.cvtColor(pixels, _TO_RGB[encoding[:-2] if encoding.endswith("16") else
                                         encoding[:-1]])


def array_to_image(arr: np.ndarray, encoding: str, header: Any | None = None) -> Image:
    """A ``sensor_msgs/Image`` holding ``arr`` (no row padding, native byte order).

    Args:
        arr: ``(H, W)`` or ``(H, W, C)`` with the dtype and channel count of ``encoding``
            (e.g. ``(H, W, 3) uint8`` for ``rgb8``, ``(H, W) uint16`` for ``16UC1``).
        encoding: a name from :data:`SUPPORTED_ENCODINGS`.
        header: copied into the message (frame id and stamp); default an empty header.

    Raises:
        ImageConversionError: unsupported encoding, zero size, or dtype/channels that do not
            match the encoding.
    """
    dtype, channels = _encoding_format(encoding)
    arr = np.asarray(arr)
    got_channels = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else -1)
    if got_channels != channels or arr.dtype != dtype:
        raise ImageConversionError(
            f"array {arr.dtype} {tuple(arr.shape)} does not match encoding {encoding!r} "
            f"({dtype} with {channels} channel(s))"
        )
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"zero-size image ({width}x{height})")
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(arr).tobytes())
    return Image(
        header=copy_header(header) if header is not None else Header(),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(sys.byteorder == "big"),
        step=width * channels * dtype.itemsize,
        data=data,
    )


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (JPEG or PNG) as ``(H, W, 3) uint8`` RGB.

    Raises:
        ImageConversionError: empty data, ``compressedDepth`` payloads, or bytes OpenCV cannot
            decode (the format string is named in the message).
    """
    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(f"format {fmt!r} is a depth image, not a colour image")
    buf = _buffer(msg.data)
    if buf.size == 0:
        raise ImageConversionError(f"empty compressed image (format {fmt!r})")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(
            f"could not decode {buf.size} B of compressed image data (format {fmt!r})"
        )
    return np.ascontiguousarray(bgr[:, :, ::-1])


def rgb_to_compressed(
    rgb: np.ndarray, header: Any | None = None, *, fmt: str = "jpeg", quality: int = 90
) -> CompressedImage:
    """Encode ``rgb: (H, W, 3) uint8`` as a ``CompressedImage`` (``fmt`` "jpeg" or "png").

    The format string follows image_transport: ``"rgb8; jpeg compressed bgr8"``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ImageConversionError(f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    if fmt not in ("jpeg", "png"):
        raise ImageConversionError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"),
                               np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode the image as {fmt}")
    data = array.array("B")
    data.frombytes(encoded.tobytes())
    return CompressedImage(
        header=copy_header(header) if header is not None else Header(),
        format=f"rgb8; {fmt} compressed bgr8",
        data=data,
    )


# --------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------

#: Distortion models of ``sensor_msgs/distortion_models.hpp`` we support: number of D values.
#: "" (no model) is accepted only with an empty or all-zero D.
DISTORTION_MODELS: dict[str, int] = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}

_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)


@dataclass(frozen=True)
class CameraModel:
    """A validated ``sensor_msgs/CameraInfo`` (construction validates; see :meth:`validate`).

    Attributes:
        k: ``(3, 3)`` intrinsic matrix of the raw (distorted) image.
        d: ``(n,)`` distortion coefficients of ``distortion_model``.
        distortion_model: "plumb_bob", "rational_polynomial", "equidistant", or "" (none).
        r: ``(3, 3)`` rectification rotation (identity for monocular cameras).
        p: ``(3, 4)`` projection matrix of the rectified image.
        width, height: full sensor resolution the calibration refers to (pixels).
        frame_id: the optical frame of the camera.
        binning_x, binning_y: binning (>= 1; 0 in the message means 1).
        roi: ``(x_offset, y_offset, width, height)`` in full-resolution pixels; zero width or
            height means the full image.
    """

    k: np.ndarray
    d: np.ndarray
    distortion_model: str
    r: np.ndarray
    p: np.ndarray
    width: int
    height: int
    frame_id: str = ""
    binning_x: int = 1
    binning_y: int = 1
    roi: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`CameraInfoError` naming the first invalid field."""
        where = f"CameraInfo (frame {self.frame_id!r})"
        for name, value, shape in (("K", self.k, (3, 3)), ("R", self.r, (3, 3)),
                                   ("P", self.p, (3, 4))):
            if value.shape != shape:
                raise CameraInfoError(f"{where}: {name} has shape {value.shape}, not {shape}")
            if not np.all(np.isfinite(value)):
                raise CameraInfoError(f"{where}: {name} contains NaN or infinity")
        for name, mat in (("K", self.k), ("P", self.p)):
            if not (mat[0, 0] > 0 and mat[1, 1] > 0):
                raise CameraInfoError(
                    f"{where}: {name} has non-positive focal lengths fx={mat[0, 0]}, "
                    f"fy={mat[1, 1]} (an uncalibrated camera publishes zeros)"
                )
            if not np.allclose(mat[2, :3], (0.0, 0.0, 1.0)) or mat[1, 0] != 0.0:
                raise CameraInfoError(f"{where}: {name} is not an intrinsic matrix: {mat.tolist()}")
        if not (np.allclose(self.r @ self.r.T, np.eye(3), atol=1e-5)
                and np.linalg.det(self.r) > 0):
            raise CameraInfoError(f"{where}: R is not a rotation matrix: {self.r.tolist()}")
        if self.width <= 0 or self.height <= 0:
            raise CameraInfoError(f"{where}: zero image size {self.width}x{self.height}")
        if self.binning_x < 1 or self.binning_y < 1:
            raise CameraInfoError(f"{where}: binning must be >= 1")
        x_off, y_off, roi_w, roi_h = self.roi
        if roi_w and roi_h and (x_off + roi_w > self.width or y_off + roi_h > self.height):
            raise CameraInfoError(f"{where}: ROI {self.roi} exceeds {self.width}x{self.height}")
        if not np.all(np.isfinite(self.d)):
            raise CameraInfoError(f"{where}: D contains NaN or infinity")
        model = self.distortion_model
        if model == "":
            if np.any(self.d != 0):
                raise CameraInfoError(f"{where}: D is non-zero but distortion_model is empty")
        elif model not in DISTORTION_MODELS:
            raise CameraInfoError(
                f"{where}: unknown distortion model {model!r}; supported: "
                + ", ".join(DISTORTION_MODELS)
            )
        elif self.d.shape != (DISTORTION_MODELS[model],):
            raise CameraInfoError(
                f"{where}: distortion model {model!r} needs {DISTORTION_MODELS[model]} "
                f"coefficients, D has {self.d.size}"
            )

    @property
    def pinhole_matrix(self) -> np.ndarray:
        """``(3, 3)`` = ``P[:, :3]``: the intrinsics to use with :func:`undistort_points`."""
        return self.p[:, :3].copy()

    @property
    def is_distorted(self) -> bool:
        """Whether D has a non-zero coefficient."""
        return bool(np.any(self.d != 0))

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the images this info describes (after ROI and binning)."""
        _, _, roi_w, roi_h = self.roi
        full_w, full_h = (roi_w, roi_h) if roi_w and roi_h else (self.width, self.height)
        return full_h // self.binning_y, full_w // self.binning_x

    def check_image_size(self, height: int, width: int) -> None:
        """Raise :class:`CameraInfoError` if an image of ``height x width`` does not match."""
        want_h, want_w = self.image_size
        if (height, width) != (want_h, want_w):
            raise CameraInfoError(
                f"image is {width}x{height} but CameraInfo (frame {self.frame_id!r}) describes "
                f"{want_w}x{want_h}"
            )


def camera_info_to_model(msg: Any) -> CameraModel:
    """Validate a ``sensor_msgs/CameraInfo`` into a :class:`CameraModel`.

    Raises:
        CameraInfoError: zero/NaN K or P, non-rotation R, zero size, unknown distortion model,
            D of the wrong length, or a ROI outside the image.
    """
    roi = msg.roi
    return CameraModel(
        k=np.asarray(msg.k, dtype=np.float64).reshape(3, 3).copy(),
        d=np.asarray(msg.d, dtype=np.float64).reshape(-1).copy(),
        distortion_model=str(msg.distortion_model),
        r=np.asarray(msg.r, dtype=np.float64).reshape(3, 3).copy(),
        p=np.asarray(msg.p, dtype=np.float64).reshape(3, 4).copy(),
        width=int(msg.width),
        height=int(msg.height),
        frame_id=str(msg.header.frame_id),
        binning_x=max(int(msg.binning_x), 1),
        binning_y=max(int(msg.binning_y), 1),
        roi=(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)),
    )


def undistort_points(model: CameraModel, pts: ArrayLike, *, rectified: bool = False
                     ) -> np.ndarray:
    """Map 2D points of the received image to the ideal (distortion-free) pinhole camera.

    The result is in pixel coordinates of the camera with intrinsic matrix
    ``model.pinhole_matrix`` (= ``P[:, :3]``): **the pipeline must use P[:, :3], not K, as the
    camera matrix for these points.** Poses solved that way are in the rectified frame, which
    is the header (optical) frame whenever ``R`` is the identity (every monocular calibration).
    ``P[:, 3]`` (a stereo baseline term) is ignored.

    Args:
        model: the camera.
        pts: ``(N, 2)`` pixel coordinates in the received image (after binning/ROI).
        rectified: ``True`` if the image is already rectified (``image_rect``): its pixels are
            P-coordinates already, only binning/ROI are undone. ``False`` (``image_raw``):
            the points are undistorted with K and D (plumb_bob / rational_polynomial with
            ``cv2.undistortPointsIter``, equidistant with ``cv2.fisheye.undistortPoints``),
            rotated by R and projected with ``P[:, :3]``.

    Returns:
        ``(N, 2)`` float64 undistorted pixel coordinates.
    """
    x = as_float64(pts, "pts")
    _check(x, (None, 2), "pts")
    # Undo binning and ROI (image_geometry convention: u_full = u * binning + offset).
    full = x * (model.binning_x, model.binning_y) + model.roi[:2]
    if rectified or x.shape[0] == 0:
        return full
    src = np.ascontiguousarray(full.reshape(-1, 1, 2))
    new_k = model.pinhole_matrix
    if model.distortion_model == "equidistant":
        out = cv2.fisheye.undistortPoints(src, model.k, model.d, R=model.r, P=new_k,
                                          criteria=_UNDISTORT_CRITERIA)
    else:
        d = model.d if model.d.size else np.zeros(5)
        out = cv2.undistortPointsIter(src, model.k, d, model.r, new_k, _UNDISTORT_CRITERIA)
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


# --------------------------------------------------------------------------------------------
# Fast construction of the hot message types
# --------------------------------------------------------------------------------------------
# A PoseArray of a few thousand posterior samples or a LINE_LIST of a few thousand points is
# dominated by the Python constructors of the generated message classes (~15 us per Pose: each
# __init__ builds default sub-messages and runs every property setter). The generated classes
# (rosidl_generator_py, Jazzy and later) keep each field ``f`` in the slot ``_f`` plus
# ``_check_fields``; filling those slots directly is ~15x faster (3840 poses: 61 -> 4 ms). The
# fast path is used only when the classes have exactly that layout and a probe built that way
# equals one built by the constructors; otherwise the constructors are used.


def _slots(cls: Any) -> frozenset[str]:
    return frozenset(getattr(cls, "__slots__", ()))


_FAST_LAYOUT = (
    _slots(Point) == {"_x", "_y", "_z", "_check_fields"}
    and _slots(Quaternion) == {"_x", "_y", "_z", "_w", "_check_fields"}
    and _slots(Pose) == {"_position", "_orientation", "_check_fields"}
)
_CHECK_FIELDS_DEFAULT = bool(getattr(Point(), "_check_fields", False)) if _FAST_LAYOUT else False


def _point_ctor(x: float, y: float, z: float) -> Point:
    return Point(x=x, y=y, z=z)


def _pose_ctor(t: Sequence[float], q_xyzw: Sequence[float]) -> Pose:
    return Pose(position=Point(x=t[0], y=t[1], z=t[2]),
                orientation=Quaternion(x=q_xyzw[0], y=q_xyzw[1], z=q_xyzw[2], w=q_xyzw[3]))


def _point_slots(x: float, y: float, z: float) -> Point:
    p = Point.__new__(Point)
    p._x, p._y, p._z, p._check_fields = x, y, z, _CHECK_FIELDS_DEFAULT
    return p


def _pose_slots(t: Sequence[float], q_xyzw: Sequence[float]) -> Pose:
    q = Quaternion.__new__(Quaternion)
    q._x, q._y, q._z, q._w = q_xyzw
    q._check_fields = _CHECK_FIELDS_DEFAULT
    pose = Pose.__new__(Pose)
    pose._position, pose._orientation = _point_slots(*t), q
    pose._check_fields = _CHECK_FIELDS_DEFAULT
    return pose


def _fast_path_works() -> bool:
    if not _FAST_LAYOUT:
        return False
    t, q = [0.5, -1.0, 2.0], [0.1, -0.2, 0.3, 0.9]
    try:
        return bool(_pose_slots(t, q) == _pose_ctor(t, q)
                    and _point_slots(*t) == _point_ctor(*t))
    except (AttributeError, TypeError):
        return False


#: Whether :func:`points_to_msgs` / :func:`poses_to_msgs` fill the message slots directly.
FAST_MESSAGES: bool = _fast_path_works()
_make_point = _point_slots if FAST_MESSAGES else _point_ctor
_make_pose = _pose_slots if FAST_MESSAGES else _pose_ctor


def points_to_msgs(xyz: ArrayLike) -> list[Point]:
    """``geometry_msgs/Point`` list of ``xyz: (N, 3)``."""
    p = as_float64(xyz, "xyz")
    _check(p, (None, 3), "xyz")
    return [_make_point(x, y, z) for x, y, z in p.tolist()]


# --------------------------------------------------------------------------------------------
# Poses and covariance
# --------------------------------------------------------------------------------------------


def _pose_vector(pose: ArrayLike, name: str = "pose") -> np.ndarray:
    """``pose`` as a finite float64 ``(7,)`` or ``(4,)`` vector."""
    p = as_float64(pose, name)
    if p.shape not in ((7,), (4,)):
        raise ArrayShapeError(
            f"{name}: expected (7,) (t, q_wxyz) or (4,) (t, yaw), got {p.shape}"
        )
    _finite(p, name)
    return p


def _pose_batch(poses: ArrayLike, name: str) -> np.ndarray:
    """Finite ``(S, 7)`` / ``(S, 4)`` float64 poses."""
    p = as_float64(poses, name)
    if p.ndim != 2 or p.shape[1] not in (7, 4):
        raise ArrayShapeError(f"{name}: expected (S, 7) or (S, 4), got {p.shape}")
    _finite(p, name)
    return p


def _unit_quats(poses: np.ndarray, name: str) -> np.ndarray:
    """``(S, 4)`` unit quaternions (w, x, y, z) of ``(S, 7)`` or ``(S, 4)`` poses."""
    if poses.shape[1] == 4:
        return yaw_to_quat(torch.from_numpy(poses[:, 3])).numpy()
    q = poses[:, 3:]
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ArrayShapeError(f"{name}: zero quaternion")
    return q / norm


def poses_to_msgs(poses: ArrayLike) -> list[Pose]:
    """``geometry_msgs/Pose`` list of library poses (quaternion order swapped here).

    Args:
        poses: ``(S, 7)`` = ``(tx, ty, tz, qw, qx, qy, qz)`` (quaternions normalised here) or
            ``(S, 4)`` = ``(tx, ty, tz, yaw)`` with yaw about the camera y axis.

    Returns:
        ``S`` poses with ``orientation = (x, y, z, w)``.

    Raises:
        ArrayShapeError, NonFiniteValueError: wrong shape, zero quaternion, NaN/inf.
    """
    p = _pose_batch(poses, "poses")
    q_xyzw = _unit_quats(p, "poses")[:, [1, 2, 3, 0]]
    return [_make_pose(t, q) for t, q in zip(p[:, :3].tolist(), q_xyzw.tolist(), strict=True)]


def pose_to_msg(pose: ArrayLike) -> Pose:
    """``geometry_msgs/Pose`` of one library pose.

    Args:
        pose: ``(7,)`` = ``(tx, ty, tz, qw, qx, qy, qz)`` (normalised here) or ``(4,)`` =
            ``(tx, ty, tz, yaw)`` with yaw about the camera y axis.

    Returns:
        The pose with ``orientation = (x, y, z, w)``: with :func:`poses_to_msgs` and
        :func:`msg_to_pose` the only places the quaternion order is swapped.
    """
    return poses_to_msgs(_pose_vector(pose)[None])[0]


def msg_to_pose(msg: Any, dof: int = 6, *, yaw_tolerance: float = 1e-3) -> np.ndarray:
    """Library pose of a ``geometry_msgs/Pose`` (inverse of :func:`pose_to_msg`).

    Args:
        msg: the pose message (orientation ``x, y, z, w``).
        dof: 6 -> ``(7,)`` ``(t, q_wxyz)`` (unit, ``w >= 0``); 4 -> ``(4,)`` ``(t, yaw)``.
        yaw_tolerance: for ``dof=4``, the largest tilt (rad) of the object y axis away from
            the camera y axis that is still accepted as a pure yaw rotation.

    Raises:
        ConversionError: zero/non-finite quaternion, or (4DoF) a rotation that is not about y.
    """
    o, t = msg.orientation, msg.position
    q = np.array([o.w, o.x, o.y, o.z], dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not math.isfinite(norm) or norm < 1e-12:
        raise ConversionError(f"invalid orientation quaternion {q.tolist()} (w, x, y, z)")
    q = q / norm
    q = -q if q[0] < 0 else q
    xyz = np.array([t.x, t.y, t.z], dtype=np.float64)
    if dof == 6:
        return np.concatenate((xyz, q))
    if dof != 4:
        raise ArrayShapeError(f"dof must be 4 or 6, got {dof}")
    rot = pose_rotation(np.concatenate((xyz, q)))
    tilt = math.acos(min(1.0, max(-1.0, float(rot[1, 1]))))
    if tilt > yaw_tolerance:
        raise ConversionError(
            f"orientation is not a rotation about the camera y axis (tilt {tilt:.3g} rad)"
        )
    return np.concatenate((xyz, [math.atan2(rot[0, 2], rot[2, 2])]))


def pose_rotation(pose: ArrayLike) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of poses ``(..., 7)`` or ``(..., 4)`` (float64)."""
    p = as_float64(pose, "pose")
    if p.ndim == 0 or p.shape[-1] not in (7, 4):
        raise ArrayShapeError(f"pose: expected (..., 7) or (..., 4), got {p.shape}")
    t = torch.from_numpy(p)
    if p.shape[-1] == 7:
        t = torch.cat((t[..., :3], t[..., 3:] / t[..., 3:].norm(dim=-1, keepdim=True)), dim=-1)
    return pose_space(6 if p.shape[-1] == 7 else 4).rotation(t).numpy()


def covariance_to_msg(cov: ArrayLike) -> np.ndarray:
    """ROS row-major covariance(s) of library covariances (the ``covariance`` field).

    Args:
        cov: ``(..., 6, 6)`` 6DoF tangent covariance(s) or ``(..., 4, 4)`` 4DoF ones (see
            :mod:`epropnp_lib.pnp.covariance`); symmetrised here.

    Returns:
        ``(..., 36)`` float64 over ``(x, y, z, rot_x, rot_y, rot_z)``; for 4DoF the ``rot_x``
        and ``rot_z`` variances are ``UNOBSERVED_ROTATION_VARIANCE`` (1e6 rad^2) with zero
        correlations.

    Raises:
        ArrayShapeError, NonFiniteValueError: wrong shape or NaN/infinite entries.
    """
    c = as_float64(cov, "cov")
    if c.ndim < 2 or c.shape[-2:] not in ((6, 6), (4, 4)):
        raise ArrayShapeError(f"cov: expected (..., 6, 6) or (..., 4, 4), got {c.shape}")
    _finite(c, "cov")
    c = 0.5 * (c + np.swapaxes(c, -1, -2))
    return to_ros_covariance(torch.from_numpy(c)).numpy().copy()


def msg_to_covariance(ros_cov: ArrayLike, dof: int) -> np.ndarray:
    """Library ``(dof, dof)`` covariance of a ROS ``(36,)`` covariance (inverse of
    :func:`covariance_to_msg`)."""
    c = as_float64(ros_cov, "ros_cov")
    _check(c, (36,), "ros_cov")
    return from_ros_covariance(torch.from_numpy(c), dof).numpy().copy()


def _cov_for(pose: np.ndarray, cov: ArrayLike, name: str = "cov") -> np.ndarray:
    """``cov`` checked to be the ``(6, 6)`` / ``(4, 4)`` covariance of ``pose``."""
    c = as_float64(cov, name)
    want = (6, 6) if pose.shape[0] == 7 else (4, 4)
    if c.shape != want:
        raise ArrayShapeError(f"{name}: a {pose.shape} pose needs a {want} covariance, "
                              f"got {c.shape}")
    return c


def pose_with_covariance(pose: ArrayLike, cov: ArrayLike) -> PoseWithCovariance:
    """``geometry_msgs/PoseWithCovariance`` of a ``(7,)``/``(4,)`` pose and its covariance."""
    p = _pose_vector(pose)
    c = _cov_for(p, cov)
    return PoseWithCovariance(pose=pose_to_msg(p), covariance=covariance_to_msg(c))


def pose_with_covariance_stamped(header: Any, pose: ArrayLike, cov: ArrayLike
                                 ) -> PoseWithCovarianceStamped:
    """``geometry_msgs/PoseWithCovarianceStamped`` (header copied; see
    :func:`pose_with_covariance`)."""
    return PoseWithCovarianceStamped(header=copy_header(header),
                                     pose=pose_with_covariance(pose, cov))


def pose_array(header: Any, samples: ArrayLike) -> PoseArray:
    """``geometry_msgs/PoseArray`` of equally weighted pose samples.

    Args:
        header: copied into the message.
        samples: ``(S, 7)`` 6DoF or ``(S, 4)`` 4DoF poses (e.g. resampled posterior samples).
    """
    return PoseArray(header=copy_header(header), poses=poses_to_msgs(samples))


# --------------------------------------------------------------------------------------------
# Detections
# --------------------------------------------------------------------------------------------


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
    """

    pose: np.ndarray
    size: np.ndarray
    class_id: str
    score: float
    covariance: np.ndarray
    object_id: str = ""


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
                       class_names: Sequence[str] = NUSCENES_CLASSES) -> list[ObjectPose3D]:
    """:class:`ObjectPose3D` list (4DoF) of one image's camera-frame boxes.

    Args:
        boxes: ``center (M, 3)``, ``size (M, 3)`` as ``(w, l, h)``, ``yaw (M,)`` about camera
            y, ``labels (M,)`` class indices, ``scores (M,)`` (numpy or torch, any device).
        covariances: ``(M, 4, 4)`` 4DoF tangent covariances.
        class_names: name of each class index (default ``NUSCENES_CLASSES``).
    """
    center = as_float64(boxes.center, "boxes.center").reshape(-1, 3)
    m = center.shape[0]
    size = box_extents_from_wlh(as_float64(boxes.size, "boxes.size").reshape(-1, 3))
    yaw = as_float64(boxes.yaw, "boxes.yaw").reshape(-1)
    labels = as_float64(boxes.labels, "boxes.labels").reshape(-1).astype(np.int64)
    scores = as_float64(boxes.scores, "boxes.scores").reshape(-1)
    cov = as_float64(covariances, "covariances")
    _check(cov, (m, 4, 4), "covariances")
    for name, arr in (("size", size), ("yaw", yaw), ("labels", labels), ("scores", scores)):
        if arr.shape[0] != m:
            raise ArrayShapeError(f"boxes.{name}: {arr.shape[0]} entries for {m} boxes")
    if m and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ArrayShapeError(f"boxes.labels: values outside [0, {len(class_names)})")
    return [
        ObjectPose3D(pose=np.concatenate((center[i], yaw[i:i + 1])), size=size[i],
                     class_id=class_names[labels[i]], score=float(scores[i]), covariance=cov[i],
                     object_id=str(i))
        for i in range(m)
    ]


def _object_id(obj: ObjectPose3D, index: int) -> str:
    return obj.object_id or str(index)


def _grouped(poses: Sequence[np.ndarray]) -> list[tuple[list[int], np.ndarray]]:
    """Indices and stacked poses of each pose kind (7 or 4) present, for batched library calls."""
    groups = []
    for dim in (7, 4):
        idx = [i for i, p in enumerate(poses) if p.shape[0] == dim]
        if idx:
            groups.append((idx, np.stack([poses[i] for i in idx])))
    return groups


def _object_pose_msgs(poses: Sequence[np.ndarray]) -> list[Pose]:
    """One ``Pose`` per checked pose vector (batched per pose kind)."""
    out: list[Pose] = [Pose()] * len(poses)
    for idx, stacked in _grouped(poses):
        for i, msg in zip(idx, poses_to_msgs(stacked), strict=True):
            out[i] = msg
    return out


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
    poses = [_pose_vector(o.pose, f"objects[{i}].pose") for i, o in enumerate(objects)]
    covs = [_cov_for(p, o.covariance, f"objects[{i}].covariance")
            for i, (p, o) in enumerate(zip(poses, objects, strict=True))]
    sizes = [as_float64(o.size, f"objects[{i}].size") for i, o in enumerate(objects)]
    for i, size in enumerate(sizes):
        _check(size, (3,), f"objects[{i}].size")
    ros_covs: list[np.ndarray] = [np.empty(0)] * len(objects)
    for idx, _ in _grouped(poses):
        for i, row in zip(idx, covariance_to_msg(np.stack([covs[j] for j in idx])), strict=True):
            ros_covs[i] = row
    result_poses, centre_poses = _object_pose_msgs(poses), _object_pose_msgs(poses)
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
    msg: Any, class_names: Sequence[str] = NUSCENES_CLASSES
) -> tuple[CameraBoxes, np.ndarray]:
    """Camera-frame boxes and (M, 4, 4) 4DoF covariances of a detector ``Detection3DArray``.

    The inverse of :func:`detection3d_array` of :func:`objects_from_boxes` (4DoF): the best
    hypothesis of each detection gives class and score, its pose (with covariance) the
    4DoF pose; ``bbox.size`` is (length, height, width) along the object axes.
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
    poses = _object_pose_msgs(
        [_pose_vector(o.pose, f"objects[{i}].pose") for i, o in enumerate(objects)])
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


def rotation_to_quat_msg(rot: ArrayLike) -> Quaternion:
    """``geometry_msgs/Quaternion`` (x, y, z, w) of a rotation matrix ``rot: (3, 3)``."""
    return rotations_to_quat_msgs(as_float64(rot, "rot")[None])[0]


def rotations_to_quat_msgs(rots: ArrayLike) -> list[Quaternion]:
    """``geometry_msgs/Quaternion`` (x, y, z, w) list of rotation matrices ``rots: (M, 3, 3)``
    (one batched :func:`~epropnp_lib.geometry.rotations.matrix_to_quat` call)."""
    r = as_float64(rots, "rots")
    _check(r, (None, 3, 3), "rots")
    quats = matrix_to_quat(torch.from_numpy(r)).tolist() if len(r) else []
    return [Quaternion(x=x, y=y, z=z, w=w) for w, x, y, z in quats]
