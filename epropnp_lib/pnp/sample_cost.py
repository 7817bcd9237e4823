"""The robust cost at many poses of one set of correspondences, with a hand-written backward.

The Monte Carlo loss evaluates the cost of Eq. 11 at ``K = T K'`` pose samples of each of ``B``
problems with ``N`` points: ``K B N`` projections (8.4 M for the paper's ``K = 512``, ``B = 32``,
``N = 512``).  Written with generic autograd this stores a dozen ``(K, B, N)`` intermediates and
runs one kernel per elementary op; here the projection is one batched matmul per problem
(``h = K' [R_k | t_k] [x; 1]`` for all samples at once), the few elementwise steps are written
out, and the backward is analytic:

* ``dL/dw = w * sum_k g_k rho'_k r_k^2``,  ``dL/dx2d = -w^2 * sum_k g_k rho'_k r_k``,
* ``dL/dx3d = sum_k P_k^T dL/dh_k`` (one batched matmul),
with ``g_k`` the upstream gradient, ``r`` the unweighted residual and ``rho'`` the IRLS weight.
:func:`sample_cost` equals :func:`epropnp_lib.pnp.cost.evaluate_cost` ``.cost`` (tested, with
its gradients, in float64).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from epropnp_lib.conventions import MIN_DEPTH
from epropnp_lib.geometry.pose import PoseSpace


def _projection_matrices(
    space: type[PoseSpace], pose: torch.Tensor, cam_mats: torch.Tensor
) -> torch.Tensor:
    """``(B, K, 3, 4)`` matrices ``K' [R | t]`` (``K'`` = intrinsics without the principal
    point, added after the division so that depth clamping matches :func:`project`)."""
    rt = torch.cat((space.rotation(pose), pose[..., :3, None]), dim=-1)  # (K, B, 3, 4)
    k = cam_mats.clone()
    k[..., :2, 2] = 0.0
    return (k @ rt).transpose(0, 1)


#: Elements (K * N per problem) processed per chunk: small enough for the working set of the
#: elementwise steps to stay in cache, large enough to amortise the per-op overhead.
CHUNK_ELEMENTS = 1 << 18
#: Keep the residuals for the backward (memory for speed) instead of recomputing them.
SAVE_RESIDUALS = True


class _Residuals(NamedTuple):
    cost: torch.Tensor  # (b, K)
    ru: torch.Tensor  # (b, K, N) unweighted residuals, relative to the principal point
    rv: torch.Tensor
    inv_z: torch.Tensor  # (b, K, N)
    in_front: torch.Tensor  # (b, K, N) bool
    omega: torch.Tensor | None  # (b, K, N) IRLS weights, None without kernel


class _Buffers(NamedTuple):
    """Preallocated outputs of :func:`_residuals` kept for the backward (full or a chunk)."""

    h: torch.Tensor  # (B, K, 3, N); rows 0 and 1 end up holding ru, rv
    inv_z: torch.Tensor  # (B, K, N)
    in_front: torch.Tensor  # (B, K, N) bool
    omega: torch.Tensor | None  # (B, K, N)

    def chunk(self, c: slice, ks: slice) -> _Buffers:
        om = None if self.omega is None else self.omega[c, ks]
        return _Buffers(self.h[c, ks], self.inv_z[c, ks], self.in_front[c, ks], om)


def _residuals(
    proj: torch.Tensor,
    xh: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    center: torch.Tensor,
    delta: torch.Tensor | None,
    out: _Buffers | None = None,
) -> _Residuals:
    """Costs and residuals of one chunk (shapes as :class:`_Residuals`), written into ``out``
    when given.

    Written with in-place operations: allocating the ``(b, K, N)`` arrays costs as much as
    computing them.
    """
    b, k = proj.shape[:2]
    if out is None:
        h = (proj.reshape(b, k * 3, 4) @ xh.transpose(-1, -2)).view(b, k, 3, -1)
        in_front = h[:, :, 2] > MIN_DEPTH
        inv_z = h[:, :, 2].clamp_min(MIN_DEPTH).reciprocal_()
    else:
        h = out.h
        torch.matmul(proj.reshape(b, k * 3, 4), xh.transpose(-1, -2), out=h.view(b, k * 3, -1))
        in_front = torch.gt(h[:, :, 2], MIN_DEPTH, out=out.in_front)
        inv_z = torch.clamp_min(h[:, :, 2], MIN_DEPTH, out=out.inv_z).reciprocal_()
    xu = (x2d[..., 0] - center[:, None, 0])[:, None]  # (b, 1, N)
    xv = (x2d[..., 1] - center[:, None, 1])[:, None]
    ru = h[:, :, 0].mul_(inv_z).sub_(xu)
    rv = h[:, :, 1].mul_(inv_z).sub_(xv)
    sq = ru * w2d[:, None, :, 0]
    sq.mul_(sq)
    fv = rv * w2d[:, None, :, 1]
    sq.addcmul_(fv, fv)  # |f|^2
    if delta is None:
        return _Residuals(sq.sum(-1).mul_(0.5), ru, rv, inv_z, in_front, None)
    # omega = rho' = min(1, delta / |f|) (|f| = 0: inf, clamped to 1); 1/2 rho = omega |f|^2
    # (1 - omega / 2) on both sides of the threshold, summed as sum(t) - sum(t omega) / 2 with
    # t = omega |f|^2.
    omega = sq.rsqrt() if out is None or out.omega is None else torch.rsqrt(sq, out=out.omega)
    omega.mul_(delta[:, None, None]).clamp_max_(1.0)
    t = sq.mul_(omega)
    cost = t.sum(-1)
    cost.sub_(t.mul_(omega).sum(-1), alpha=0.5)
    return _Residuals(cost, ru, rv, inv_z, in_front, omega)


def _chunks(batch: int, samples: int, points: int) -> list[tuple[slice, slice]]:
    """(problem slice, sample slice) blocks of about :data:`CHUNK_ELEMENTS` elements."""
    per_problem = samples * points
    if per_problem <= CHUNK_ELEMENTS:
        step = CHUNK_ELEMENTS // max(per_problem, 1)
        return [(slice(i, min(i + step, batch)), slice(None)) for i in range(0, batch, step)]
    k_step = max(1, CHUNK_ELEMENTS // max(points, 1))
    return [
        (slice(i, i + 1), slice(j, min(j + k_step, samples)))
        for i in range(batch)
        for j in range(0, samples, k_step)
    ]


class _SampleCost(torch.autograd.Function):
    """Robust cost ``(K, B)`` at poses given by projection matrices ``proj: (B, K, 3, 4)``.

    Works in chunks of problems and samples so that the elementwise steps run in cache; when
    a gradient is needed the residuals are kept (written chunk by chunk into preallocated
    ``(B, K, N)`` buffers) for the backward.
    """

    @staticmethod
    def forward(
        ctx: Any,
        proj: torch.Tensor,
        x3d: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        center: torch.Tensor,
        delta: torch.Tensor | None,
    ) -> torch.Tensor:
        b, k = proj.shape[:2]
        xh = torch.cat((x3d, torch.ones_like(x3d[..., :1])), dim=-1)  # (B, N, 4)
        n = x3d.shape[1]
        cost = proj.new_empty((b, k))
        bufs = None
        if SAVE_RESIDUALS and any(ctx.needs_input_grad[1:4]):
            # Keep the residuals for the backward (~17 bytes per projection) instead of
            # recomputing them there.
            def empty(*shape: int, dtype: torch.dtype = proj.dtype) -> torch.Tensor:
                return torch.empty(shape, dtype=dtype, device=proj.device)

            bufs = _Buffers(empty(b, k, 3, n), empty(b, k, n), empty(b, k, n, dtype=torch.bool),
                            None if delta is None else empty(b, k, n))
        for c, ks in _chunks(b, k, n):
            dc = None if delta is None else delta[c]
            out = None if bufs is None else bufs.chunk(c, ks)
            cost[c, ks] = _residuals(proj[c, ks], xh[c], x2d[c], w2d[c], center[c], dc, out).cost
        ctx.save_for_backward(proj, xh, x2d, w2d, center, delta)
        ctx.bufs = bufs  # consumed (modified in place) by the first backward
        return cost.transpose(0, 1)  # (K, B)

    @staticmethod
    def backward(
        ctx: Any, grad_cost: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        proj, xh, x2d, w2d, center, delta = ctx.saved_tensors
        need_x3d, need_x2d, need_w2d = ctx.needs_input_grad[1:4]
        b, k = proj.shape[:2]
        grad_g = grad_cost.transpose(0, 1)
        grad_x3d = torch.zeros_like(xh[..., :3]) if need_x3d else None
        grad_x2d = torch.zeros_like(x2d) if need_x2d else None
        grad_w2d = torch.zeros_like(w2d) if need_w2d else None
        bufs: _Buffers | None = ctx.bufs
        ctx.bufs = None  # a second backward (retain_graph) recomputes
        for c, ks in _chunks(b, k, xh.shape[1]):
            pc = proj[c, ks]
            if bufs is None:
                res = _residuals(pc, xh[c], x2d[c], w2d[c], center[c],
                                 None if delta is None else delta[c])
            else:
                buf = bufs.chunk(c, ks)
                res = _Residuals(pc.new_empty(0), buf.h[:, :, 0], buf.h[:, :, 1], buf.inv_z,
                                 buf.in_front, buf.omega)
            g = grad_g[c, ks, None]  # (b, k, 1)
            gw = g.expand_as(res.ru) if res.omega is None else res.omega.mul_(g)
            gru = gw * res.ru  # dL/df_u / w_u
            grv = gw * res.rv if res.omega is None else gw.mul_(res.rv)
            w = w2d[c]
            if grad_w2d is not None:
                grad_w2d[c, :, 0] += (gru * res.ru).sum(1) * w[..., 0]
                grad_w2d[c, :, 1] += (grv * res.rv).sum(1) * w[..., 1]
            bu = gru.mul_((w[..., 0] * w[..., 0])[:, None])  # dL/du (b, K, N)
            bv = grv.mul_((w[..., 1] * w[..., 1])[:, None])
            if grad_x2d is not None:
                grad_x2d[c, :, 0] -= bu.sum(1)
                grad_x2d[c, :, 1] -= bv.sum(1)
            if grad_x3d is not None:
                nb, nk = bu.shape[:2]
                grad_h = torch.empty((nb, nk, 3, xh.shape[1]), dtype=bu.dtype, device=bu.device)
                hu = torch.mul(bu, res.inv_z, out=grad_h[:, :, 0])  # dL/dh0
                hv = torch.mul(bv, res.inv_z, out=grad_h[:, :, 1])  # dL/dh1
                # dL/dh2 = -(dL/dh0 h0 + dL/dh1 h1) / z with h0 / z = ru + x_u (from cx)
                hz = grad_h[:, :, 2]
                torch.add(res.ru, (x2d[c, :, 0] - center[c, None, 0])[:, None], out=hz)
                hz.mul_(hu)
                hz.addcmul_(res.rv.add_((x2d[c, :, 1] - center[c, None, 1])[:, None]), hv)
                hz.mul_(res.in_front).neg_()
                grad_xh = pc.reshape(nb, nk * 3, 4).transpose(-1, -2) @ grad_h.view(
                    nb, nk * 3, -1
                )
                grad_x3d[c] += grad_xh[:, :3].transpose(-1, -2)
        return None, grad_x3d, grad_x2d, grad_w2d, None, None


def sample_cost(
    space: type[PoseSpace],
    pose: torch.Tensor,
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    delta: torch.Tensor | None,
) -> torch.Tensor:
    """Robust cost ``(K, B)`` at ``pose: (K, B, dim)`` (detached: samples carry no gradient).

    Other shapes as :func:`epropnp_lib.pnp.cost.evaluate_cost`; gradients flow to ``x3d``,
    ``x2d`` and ``w2d`` (``delta`` is a constant, see :meth:`HuberConfig.threshold`).
    """
    proj = _projection_matrices(space, pose.detach(), cam_mats.detach())
    center = cam_mats.detach()[:, :2, 2]
    d = None if delta is None else delta.detach()
    out: torch.Tensor = _SampleCost.apply(proj, x3d, x2d, w2d, center, d)
    return out
