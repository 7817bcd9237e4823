"""Array arguments of the converters and builders: read as float64 NumPy, shape and finiteness
checked, with the typed errors of :mod:`epropnp_ros.errors`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import torch

from epropnp_ros.errors import ArrayShapeError, NonFiniteValueError

__all__ = ["ArrayLike", "as_float64", "check_finite", "check_shape"]

#: Anything :func:`numpy.asarray` accepts, or a torch tensor (any device; detached and copied).
ArrayLike: TypeAlias = "np.ndarray | torch.Tensor | Sequence[float] | Sequence[Sequence[float]]"


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


def check_shape(x: np.ndarray, shape: tuple[int | None, ...], name: str) -> None:
    """Raise :class:`ArrayShapeError` unless ``x.shape`` matches ``shape`` (``None``: any size)."""
    if x.ndim != len(shape) or any(w is not None and s != w for s, w in zip(x.shape, shape,
                                                                           strict=True)):
        want = "(" + ", ".join("N" if w is None else str(w) for w in shape) + ")"
        raise ArrayShapeError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def check_finite(x: np.ndarray, name: str) -> None:
    """Raise :class:`NonFiniteValueError` if ``x`` holds NaN or infinity."""
    if not np.all(np.isfinite(x)):
        raise NonFiniteValueError(f"{name}: contains NaN or infinity")
