"""Field checks shared by the networks' config dataclasses (raising ``ConfigError``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from epropnp_lib.errors import ConfigError

__all__ = ["check_non_negative"]


def check_non_negative(config: object, names: Iterable[str], prefix: str = "") -> None:
    """``ConfigError`` ``"<prefix><name> must be >= 0, got <value>"`` for the first field of
    ``config`` among ``names`` (loss weights, ...) that is negative, NaN or infinite."""
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{prefix}{name} must be >= 0, got {value}")
