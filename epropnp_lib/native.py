"""Fused CPU kernels (``epropnp_lib/_native.c``) of the PnP solver and of the AMIS orientation
proposal, with the batched tensor code as the fallback.

At small and medium batches the solve on a CPU costs per tensor op, not per flop (a few µs
each; the 6DoF initialisation alone dispatches ~220 ops).  The C extension ``_native`` does, in
one pass per problem and in float64:

- the initialisations of :func:`epropnp_lib.pnp.init.init_6dof` (normalised image points, DLT
  moments, the DLT's rotation block, Gram-Schmidt, the Gauss-Newton step on SO(3), the
  planarity test) and :func:`~epropnp_lib.pnp.init.init_4dof`;
- each evaluation of the cost's normal equations in the solver's loop
  (:func:`~epropnp_lib.pnp.cost.point_terms` reduced by
  :func:`~epropnp_lib.pnp.cost.augmented_normal_matrix`, 6DoF and 4DoF);
- Tyler's fixed point of :meth:`~epropnp_lib.distributions.angular_central_gaussian.
  AngularCentralGaussian.fit` (the 6DoF orientation proposal of every AMIS iteration).

It is built with the package (``setup.py``, an optional extension: where no C compiler is
found the build goes on without it) and used for CPU tensors of float32 or float64 that need no
gradient; CUDA tensors, a missing extension or ``EPROPNP_NATIVE=0`` in the environment run the
tensor code, which gives the same results up to round-off (the extension sums in float64 where
the tensor code sums the DLT moments and the normal equations in the input dtype).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import torch

#: The extension's entry points; an extension built from older sources that lacks one is not
#: used (a stale in-place build: ``make setup`` or ``pip install -e .`` rebuilds it).
_FUNCTIONS = ("init6", "init4", "state", "acg_fit")

try:
    from epropnp_lib import _native  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the tensor code runs
    _native = None
if _native is not None and not all(hasattr(_native, f) for f in _FUNCTIONS):
    warnings.warn(f"{_native.__file__} is stale (built from older sources): the fused CPU "
                  "kernels are off until it is rebuilt (make setup / pip install -e .)",
                  RuntimeWarning, stacklevel=1)
    _native = None

#: ``EPROPNP_NATIVE=0`` turns the kernels off (read at import; :func:`native_kernels` in code).
ENV_VAR = "EPROPNP_NATIVE"
_enabled = os.environ.get(ENV_VAR, "1").strip() not in ("0", "false", "no", "off")


def built() -> bool:
    """Whether the C extension was built and imports."""
    return _native is not None


def enabled() -> bool:
    """Whether the kernels run for CPU tensors (built and not turned off)."""
    return _native is not None and _enabled


@contextlib.contextmanager
def native_kernels(on: bool) -> Iterator[None]:
    """Turn the kernels on or off inside the ``with`` block (for comparisons and tests;
    process-wide, not thread-local)."""
    global _enabled
    before = _enabled
    _enabled = on
    try:
        yield
    finally:
        _enabled = before


class NativeInit(NamedTuple):
    """The DLT candidate of :func:`init_6dof_native` and what the homography candidate needs.

    Attributes:
        pose: ``(B, 7)`` float64 ``(t, q_wxyz)``, the DLT refined on SO(3).
        need_homography: ``(B,)`` bool, near-planar point sets (or fewer than 6 points).
        ata: ``(B, 12, 12)`` float64 DLT normal matrix (``init.dlt_normal_matrix``) of the
            points centred on ``centre``.
        centre: ``(B, 3)`` float64 ``w^2``-weighted centroid of the object points.
    """

    pose: torch.Tensor
    need_homography: torch.Tensor
    ata: torch.Tensor
    centre: torch.Tensor


def init_6dof_native(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, cam_mats: torch.Tensor,
    planarity_ratio: float,
) -> NativeInit | None:
    """The 6DoF DLT candidate from the fused kernel, or ``None`` where the kernel does not
    apply (turned off or not built, not a CPU tensor, not float32/float64, mixed dtypes,
    tensors that require grad, or shapes other than these).

    Args:
        x3d: ``(B, N, 3)``; x2d: ``(B, N, 2)`` pixels; w2d: ``(B, N, 2)``; cam_mats: ``(B, 3,
            3)`` with last row ``(0, 0, 1)``.
        planarity_ratio: the threshold of ``init.PLANARITY_RATIO``.
    """
    if x3d.dim() != 3 or not _applies(x3d.dtype, x3d, x2d, w2d, cam_mats):
        return None
    dtype = x3d.dtype
    batch, points = x3d.shape[:2]
    shapes = (x3d.shape, x2d.shape, w2d.shape, cam_mats.shape)
    if shapes != ((batch, points, 3), (batch, points, 2), (batch, points, 2), (batch, 3, 3)):
        return None  # the tensor code raises or broadcasts as it does
    x3d, x2d, w2d, cam_mats = (t.contiguous() for t in (x3d, x2d, w2d, cam_mats))
    out = torch.empty(batch, _native.OUT_STRIDE, dtype=torch.float64)
    if batch:
        _native.init6(batch, points, x3d.data_ptr(), x2d.data_ptr(), w2d.data_ptr(),
                      cam_mats.data_ptr(), out.data_ptr(), dtype == torch.float64,
                      float(planarity_ratio))
    return NativeInit(out[:, :7], out[:, 7] != 0.0, out[:, 8:152].view(batch, 12, 12),
                      out[:, 152:155])


class NativeState(NamedTuple):
    """The robust cost and its normal equations at one pose per problem (see
    :func:`state_native`), in the dtype of the pose; ``D`` is the tangent dimension.

    Attributes:
        cost: ``(B,)`` ``1/2 sum_i rho(||f_i||^2)``.
        normal: ``(B, D + 1, D + 1)`` ``[[H, g], [g^T, sum_i rho'_i |f_i|^2]]``
            (:func:`epropnp_lib.pnp.cost.augmented_normal_matrix`).
        depth: ``(B, N)`` camera-frame depth of the points before clamping.
    """

    cost: torch.Tensor
    normal: torch.Tensor
    depth: torch.Tensor


def _applies(dtype: torch.dtype, *tensors: torch.Tensor) -> bool:
    """Whether the kernels take ``tensors``: turned on, CPU, float32 or float64, all of
    ``dtype``, none requiring grad."""
    return enabled() and dtype in (torch.float32, torch.float64) and all(
        t.dtype == dtype and t.device.type == "cpu" and not t.requires_grad for t in tensors)


def state_native(
    dof: int, pose: torch.Tensor, x: torch.Tensor, wk: torch.Tensor, wc: torch.Tensor,
    delta: torch.Tensor | None, min_depth: float,
) -> NativeState | None:
    """:func:`~epropnp_lib.pnp.cost.point_terms` with the Jacobian, reduced to the cost and the
    augmented normal matrix, for the poses ``pose: (B, 7)`` (``dof`` 6, ``(t, q_wxyz)``) or
    ``(B, 4)`` (``dof`` 4, ``(t, yaw)``) and the arrays of a
    :class:`~epropnp_lib.pnp.cost.PointSet` (``x: (3, B, N)``, ``wk: (2, 2, B, N)``, ``wc: (2,
    B, N)``, ``delta: (B, 1)`` or ``None``), summed in float64; ``None`` where the kernel does
    not apply (as :func:`init_6dof_native`, and for tensors that require grad or several poses
    per problem)."""
    if dof not in (4, 6) or x.dim() != 3:
        return None
    tensors = (pose, x, wk, wc) if delta is None else (pose, x, wk, wc, delta)
    if not _applies(pose.dtype, *tensors):
        return None
    batch, points = x.shape[1:]
    if pose.shape != (batch, 7 if dof == 6 else 4) or wk.shape != (2, 2, batch, points) or (
            wc.shape != (2, batch, points)) or (delta is not None and delta.numel() != batch):
        return None
    pose, x, wk, wc = (t.contiguous() for t in (pose, x, wk, wc))
    if delta is not None:
        delta = delta.contiguous()
    dtype = pose.dtype
    cost = torch.empty(batch, dtype=dtype)
    normal = torch.empty(batch, dof + 1, dof + 1, dtype=dtype)
    depth = torch.empty(batch, points, dtype=dtype)
    if batch:
        _native.state(batch, points, dof, pose.data_ptr(), x.data_ptr(), wk.data_ptr(),
                      wc.data_ptr(), 0 if delta is None else delta.data_ptr(),
                      cost.data_ptr(), normal.data_ptr(), depth.data_ptr(),
                      dtype == torch.float64, float(min_depth))
    return NativeState(cost, normal, depth)


def init_4dof_native(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, cam_mats: torch.Tensor,
) -> torch.Tensor | None:
    """The 4DoF initial poses ``(B, 4)`` ``(t, yaw)`` of :func:`epropnp_lib.pnp.init.init_4dof`
    from the fused kernel (in float64, returned in the input dtype), or ``None`` where it does
    not apply (as :func:`init_6dof_native`).  Shapes as there."""
    if x3d.dim() != 3 or not _applies(x3d.dtype, x3d, x2d, w2d, cam_mats):
        return None
    batch, points = x3d.shape[:2]
    shapes = (x3d.shape, x2d.shape, w2d.shape, cam_mats.shape)
    if shapes != ((batch, points, 3), (batch, points, 2), (batch, points, 2), (batch, 3, 3)):
        return None
    x3d, x2d, w2d, cam_mats = (t.contiguous() for t in (x3d, x2d, w2d, cam_mats))
    out = torch.empty(batch, 4, dtype=x3d.dtype)
    if batch:
        _native.init4(batch, points, x3d.data_ptr(), x2d.data_ptr(), w2d.data_ptr(),
                      cam_mats.data_ptr(), out.data_ptr(), x3d.dtype == torch.float64)
    return out


def acg_fit_native(
    x: torch.Tensor, w: torch.Tensor, num_iter: int, eps: float
) -> torch.Tensor | None:
    """Tyler's fixed point of :meth:`epropnp_lib.distributions.angular_central_gaussian.
    AngularCentralGaussian.fit` from its prepared inputs: ``x: (K, *batch, 4)`` unit
    quaternions (zero rows for invalid samples) and their normalised weights ``w: (K,
    *batch)``, both float64 on the CPU; returns the Cholesky factor ``(*batch, 4, 4)`` (float64)
    of the fitted ``Lambda``, or ``None`` where the kernel does not apply."""
    if x.dim() < 2 or x.shape[0] == 0 or not _applies(torch.float64, x, w):
        return None
    batch_shape = x.shape[1:-1]
    if x.shape[-1] != 4 or w.shape != x.shape[:-1]:
        return None
    x, w = x.contiguous(), w.contiguous()
    batch = w[0].numel()
    out = torch.empty(*batch_shape, 4, 4, dtype=torch.float64)
    if batch:
        _native.acg_fit(x.shape[0], batch, x.data_ptr(), w.data_ptr(), out.data_ptr(),
                        int(num_iter), float(eps))
    return out
