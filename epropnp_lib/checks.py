"""Boundary checks that raise the typed errors of :mod:`epropnp_lib.errors`.

Use them where data enters the library (public functions and layers); internals trust their
inputs.

Example::

    >>> import torch
    >>> dims = check_shape(torch.zeros(2, 5, 3), ["B", "N", 3], "x3d")
    >>> dims["B"], dims["N"]
    (2, 5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from epropnp_lib.errors import DeviceError, DTypeError, ShapeError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_shape(
    x: torch.Tensor,
    spec: Sequence[str | int],
    name: str,
    dims: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Check ``x`` against a shape spec and return the bound symbolic sizes.

    Args:
        x: the tensor to check.
        spec: one entry per dimension: an ``int`` (exact size) or a ``str`` (a symbol bound on
            first use and required to agree afterwards, also across calls through ``dims``).
            A leading ``"*"`` accepts any number of leading dimensions.
        name: the argument name used in the error message.
        dims: symbols already bound by earlier checks.

    Returns:
        ``dims`` extended with the symbols bound by this check.

    Raises:
        ShapeError: wrong rank, wrong size or inconsistent symbol.
    """
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    bound = dict(dims or {})
    spec = list(spec)
    shape = tuple(x.shape)
    if spec and spec[0] == "*":
        spec = spec[1:]
        if len(shape) < len(spec):
            raise ShapeError(f"{name}: expected at least {len(spec)} dims {spec}, got {shape}")
        shape = shape[len(shape) - len(spec):]
    elif len(shape) != len(spec):
        raise ShapeError(f"{name}: expected shape {_fmt(spec)}, got {tuple(x.shape)}")
    for size, want in zip(shape, spec, strict=True):
        if isinstance(want, int):
            if size != want:
                raise ShapeError(f"{name}: expected shape {_fmt(spec)}, got {tuple(x.shape)}")
        else:
            if want in bound and bound[want] != size:
                raise ShapeError(
                    f"{name}: dimension {want} is {size} but {bound[want]} elsewhere "
                    f"(shape {tuple(x.shape)}, expected {_fmt(spec)})"
                )
            bound[want] = size
    return bound


def check_float_tensors(**tensors: torch.Tensor | None) -> tuple[torch.dtype, torch.device]:
    """Check that all given tensors are floating point, of one dtype and on one device.

    ``None`` entries are skipped.  Returns the common ``(dtype, device)``.

    Raises:
        DTypeError: a non-floating tensor or mixed dtypes.
        DeviceError: tensors on different devices.
    """
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    first = ""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise DTypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise DTypeError(f"{name}: expected a floating dtype, got {t.dtype}")
        if dtype is None:
            dtype, device, first = t.dtype, t.device, name
            continue
        if t.dtype != dtype:
            raise DTypeError(f"{name} has dtype {t.dtype} but {first} has {dtype}")
        if t.device != device:
            raise DeviceError(f"{name} is on {t.device} but {first} is on {device}")
    if dtype is None or device is None:
        raise DTypeError("no tensor given")
    return dtype, device


def _fmt(spec: Sequence[str | int]) -> str:
    return "(" + ", ".join(str(s) for s in spec) + ")"
