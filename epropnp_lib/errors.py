"""Typed errors raised at the public boundary of :mod:`epropnp_lib`."""

from __future__ import annotations


class EProPnPError(Exception):
    """Base class of every error raised by epropnp_lib."""


class ShapeError(EProPnPError, ValueError):
    """A tensor has the wrong number of dimensions or the wrong size."""


class DTypeError(EProPnPError, TypeError):
    """Tensors have an unsupported or inconsistent dtype."""


class DeviceError(EProPnPError, ValueError):
    """Tensors live on different devices."""


class NonFiniteError(EProPnPError, ValueError):
    """An input contains NaN or infinity where the whole call cannot proceed."""


class DegenerateInputError(EProPnPError, ValueError):
    """The input cannot define a solution (e.g. too few points for the problem)."""


class ConfigError(EProPnPError, ValueError):
    """A configuration has unknown keys or out-of-range values."""
