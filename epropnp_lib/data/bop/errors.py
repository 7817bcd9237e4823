"""The error of the BOP reader."""

from __future__ import annotations

from epropnp_lib.errors import ConfigError

__all__ = ["BopDataError"]


class BopDataError(ConfigError):
    """Missing, malformed or inconsistent BOP data; the message names the file."""
