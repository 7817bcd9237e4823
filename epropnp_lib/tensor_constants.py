"""Module-level constant tensors on the dtype and device of the data, copied once.

Hot paths multiply by small constant matrices (the bilinear forms of the rotation
conversions, the DLT assembly matrix).  ``constant.to(device)`` in every call would copy them
to the GPU every time; :func:`on` keeps one copy per constant, dtype and device.  The copies
are never inference tensors, so autograd code may save them for backward even when they were
first made inside ``torch.inference_mode`` (where the solver runs).
"""

from __future__ import annotations

import torch

_COPIES: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def on(value: torch.Tensor, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``value`` on ``dtype`` and ``device``.

    ``value`` must be a module-level constant that lives as long as the process: the cache
    is keyed on its identity.
    """
    device = torch.device(device)
    if value.dtype == dtype and value.device == device:
        return value
    key = (id(value), dtype, device)
    copy = _COPIES.get(key)
    if copy is None:
        with torch.inference_mode(False):
            copy = value.to(dtype=dtype, device=device)
        _COPIES[key] = copy
    return copy
