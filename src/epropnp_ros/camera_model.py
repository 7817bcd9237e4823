"""The camera of a ``sensor_msgs/CameraInfo``: validated intrinsics, and undistortion of pixels.

:func:`camera_info_to_model` only reads message attributes, so this module needs no ROS message
package (``rosbags`` messages or any object with the fields work too).
:func:`undistort_points` maps pixels of the received image to the ideal pinhole camera whose
intrinsic matrix is :attr:`CameraModel.pinhole_matrix` (``P[:, :3]``), the matrix to solve
poses with, for raw and for rectified images alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from epropnp_ros.checks import ArrayLike, as_float64, check_shape
from epropnp_ros.errors import CameraInfoError

__all__ = [
    "DISTORTION_MODELS",
    "CameraInfoError",
    "CameraModel",
    "camera_info_to_model",
    "undistort_points",
]

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


def camera_info_to_model(msg: Any) -> CameraModel:
    """Validate a ``sensor_msgs/CameraInfo`` into a :class:`CameraModel`.

    A K-only CameraInfo (valid K, P and R left all zero, as some drivers publish it) is a
    monocular camera whose rectified image is the raw one's pinhole camera: R = I and
    P = [K | 0]. Points are then undistorted with K and D into K's own pixel frame.

    Raises:
        CameraInfoError: zero/NaN K, a P that is neither valid nor all zero, non-rotation R,
            zero size, unknown distortion model, D of the wrong length, or a ROI outside the
            image.
    """
    roi = msg.roi
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3).copy()
    r = np.asarray(msg.r, dtype=np.float64).reshape(3, 3).copy()
    p = np.asarray(msg.p, dtype=np.float64).reshape(3, 4).copy()
    if not p.any():
        p = np.concatenate([k, np.zeros((3, 1))], axis=1)
        if not r.any():
            r = np.eye(3)
    return CameraModel(
        k=k,
        d=np.asarray(msg.d, dtype=np.float64).reshape(-1).copy(),
        distortion_model=str(msg.distortion_model),
        r=r,
        p=p,
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
    check_shape(x, (None, 2), "pts")
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
