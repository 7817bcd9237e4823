"""The errors of :mod:`epropnp_ros`, all :class:`~epropnp_lib.errors.EProPnPError`.

Every malformed message or array handed to a converter or builder raises a
:class:`ConversionError` (the nodes catch that one class); bag conversion, bag playback and the
closed loop raise their own error with the reason.
"""

from __future__ import annotations

from epropnp_lib.errors import EProPnPError, NonFiniteError, ShapeError

__all__ = [
    "ArrayShapeError",
    "BagConversionError",
    "BagPlayError",
    "CalibrationError",
    "CameraInfoError",
    "ClosedLoopError",
    "ConversionError",
    "ImageConversionError",
    "ImageSizeError",
    "ImageTooLargeError",
    "NonFiniteValueError",
    "PipelineInputError",
    "TransformLookupError",
]


class ConversionError(EProPnPError, ValueError):
    """A ROS message cannot be converted (malformed, inconsistent or unsupported)."""


class ImageConversionError(ConversionError):
    """An ``Image`` / ``CompressedImage`` cannot be decoded; the message says why."""


class ImageTooLargeError(ImageConversionError):
    """An image has more pixels than allowed (a compressed one by its header, before decoding)."""


class CameraInfoError(ConversionError):
    """A ``CameraInfo`` is invalid (zero/NaN K or P, unknown distortion model, bad ROI)."""


class ArrayShapeError(ConversionError, ShapeError):
    """An array given to a message builder has the wrong shape (also a :class:`ShapeError`)."""


class NonFiniteValueError(ConversionError, NonFiniteError):
    """An array given to a message builder holds NaN/inf (also a :class:`NonFiniteError`)."""


class PipelineInputError(EProPnPError, ValueError):
    """An image or its intrinsics cannot be processed (the frame is skipped, the node goes on)."""


class ImageSizeError(PipelineInputError):
    """An image's size differs from its camera's calibration."""


class BagConversionError(EProPnPError):
    """The dataset (nuScenes, BOP) cannot be converted (missing file, broken table, bad
    selection)."""


class BagPlayError(EProPnPError):
    """The bag cannot be played (missing, unreadable, unknown message type)."""


class ClosedLoopError(EProPnPError):
    """The closed loop could not run (bag, checkpoint, dataset, or the detector nodes failed)."""


class CalibrationError(EProPnPError):
    """A covariance calibration cannot run (unreadable data or checkpoint, nothing solved)."""


class TransformLookupError(EProPnPError, LookupError):
    """A transform between two frames is unknown at the asked time (no chain of frames joins
    them, or the time lies outside the history by more than the tolerance)."""
