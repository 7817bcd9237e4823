"""The errors of the message converters and builders of :mod:`epropnp_ros`.

Every malformed message or array handed to a converter or builder raises a
:class:`ConversionError` (the nodes catch that one class), also an
:class:`~epropnp_lib.errors.EProPnPError`.
"""

from __future__ import annotations

from epropnp_lib.errors import EProPnPError, NonFiniteError, ShapeError

__all__ = [
    "ArrayShapeError",
    "CameraInfoError",
    "ConversionError",
    "ImageConversionError",
    "NonFiniteValueError",
]


class ConversionError(EProPnPError, ValueError):
    """A ROS message cannot be converted (malformed, inconsistent or unsupported)."""


class ImageConversionError(ConversionError):
    """An ``Image`` / ``CompressedImage`` cannot be decoded; the message says why."""


class CameraInfoError(ConversionError):
    """A ``CameraInfo`` is invalid (zero/NaN K or P, unknown distortion model, bad ROI)."""


class ArrayShapeError(ConversionError, ShapeError):
    """An array given to a message builder has the wrong shape (also a :class:`ShapeError`)."""


class NonFiniteValueError(ConversionError, NonFiniteError):
    """An array given to a message builder holds NaN/inf (also a :class:`NonFiniteError`)."""
