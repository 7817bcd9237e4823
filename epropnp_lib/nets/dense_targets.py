"""Targets of the dense correspondence network at its output stride, from full-resolution
object-coordinate maps (rendered or read from a dataset): the ground truth at the cell centres of
:func:`epropnp_lib.geometry.camera.pixel_grid`."""

from __future__ import annotations

import torch

from epropnp_lib.checks import check_shape
from epropnp_lib.errors import ShapeError


def downsample_coords(coords: torch.Tensor, mask: torch.Tensor, stride: int,
                      max_spread_ratio: float | None = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth at the cell centres of
    :func:`~epropnp_lib.geometry.camera.pixel_grid` with ``stride``.

    For an odd stride the cell centre is a pixel centre and its value is taken (exact).  For an
    even stride it lies between the 2 x 2 central pixels of the cell, whose coordinates are
    averaged (bilinear interpolation at the centre), and the cell counts as covered only when
    all four are.  Where the four straddle an occlusion edge of the object with itself, their
    average lies between the two surfaces; such cells are detected by the spread of the four
    samples (largest distance to their mean) exceeding ``max_spread_ratio`` times the median
    spread of the map's covered cells, and are left out of the mask (``None`` keeps them).
    :func:`~epropnp_lib.geometry.camera.stride_intrinsics` renders exact ground truth at the
    cell centres instead.

    Args:
        coords: ``(..., 3, H, W)`` object-coordinate maps, ``H, W`` divisible by ``stride``.
        mask: ``(..., 1, H, W)`` float (> 0.5 = covered) or bool masks.
        stride: output stride.
        max_spread_ratio: occlusion-edge rejection threshold for even strides (see above).

    Returns:
        ``coords (..., 3, H / stride, W / stride)`` (0 where not covered) and
        ``mask (..., 1, H / stride, W / stride)`` float in {0, 1}.
    """
    dims = check_shape(coords, ["*", 3, "H", "W"], "coords")
    check_shape(mask, ["*", 1, "H", "W"], "mask", dims)
    if stride < 1 or dims["H"] % stride or dims["W"] % stride:
        raise ShapeError(f"downsample_coords: map size {dims['H']} x {dims['W']} is not "
                         f"divisible by stride {stride}")
    covered = mask > 0.5
    if stride % 2:
        c = (stride - 1) // 2
        out_m = covered[..., c::stride, c::stride]
        out_c = coords[..., c::stride, c::stride]
    else:
        c = stride // 2 - 1
        sl = [(slice(c + a, None, stride), slice(c + b, None, stride))
              for a in (0, 1) for b in (0, 1)]
        out_m = torch.stack([covered[..., ys, xs] for ys, xs in sl]).all(0)
        samples = torch.stack([coords[..., ys, xs] for ys, xs in sl])  # (4, ..., 3, h, w)
        out_c = samples.mean(0)
        if max_spread_ratio is not None:
            spread = (samples - out_c).norm(dim=-3, keepdim=True).amax(0)  # (..., 1, h, w)
            flat = torch.where(out_m, spread, torch.nan).reshape(-1, out_m[..., 0, :, :].
                                                                 flatten(-2).shape[-1])
            ref = flat.nanmedian(dim=-1).values.reshape(out_m.shape[:-3] + (1, 1, 1))
            out_m = out_m & ~(spread > max_spread_ratio * ref)
    maskf = out_m.to(coords.dtype)
    return out_c * maskf, maskf
