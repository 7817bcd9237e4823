"""The robust cost at many poses of one set of correspondences, with a hand-written backward.

The Monte Carlo loss evaluates the cost of Eq. 11 at ``K = T K'`` pose samples of each of ``B``
problems with ``N`` points: ``K B N`` projections.  Instead of a dozen stored ``(K, B, N)``
autograd intermediates, the work is a few passes over cache-sized chunks, and the backward
recomputes each chunk instead of reading stored residuals back (the derivation is in
:class:`_SampleCost`).  :func:`sample_cost` equals :func:`epropnp_lib.pnp.cost.evaluate_cost`
``.cost``, values and gradients (tested in float64, both backward paths).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from epropnp_lib.conventions import MIN_DEPTH
from epropnp_lib.geometry.pose import PoseSpace

#: Elements (samples x points) per chunk: the chunk's five planes of this size stay in the CPU's
#: caches between the passes over them, and each op still amortises its per-call overhead.
CHUNK_ELEMENTS = 1 << 18


def _projection_matrices(
    space: type[PoseSpace], pose: torch.Tensor, cam_mats: torch.Tensor
) -> torch.Tensor:
    """``(B, K, 3, 4)`` matrices ``K' [R | t]`` (``K'`` = intrinsics without the principal
    point, subtracted from the observations instead, so that depth clamping matches
    :func:`~epropnp_lib.geometry.camera.project`)."""
    rt = torch.cat((space.rotation(pose), pose[..., :3, None]), dim=-1)  # (K, B, 3, 4)
    k = cam_mats.clone()
    k[..., :2, 2] = 0.0
    return (k @ rt).transpose(0, 1)


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


class _Design(NamedTuple):
    """Per-call constants of the scaled formulation (:class:`_SampleCost`)."""

    xh: torch.Tensor  # (B, N, 4) homogeneous points
    right: torch.Tensor  # (B, 3, 4, N): rows w_u' X^T, w_v' X^T, X^T
    offset: torch.Tensor  # (B, 2, 1, N): -w' x (x = x2d - c)
    xc: torch.Tensor  # (B, N, 2): x2d - c
    w_scaled: torch.Tensor  # (B, N, 2): w' = w2d / s
    scale: torch.Tensor  # (B,): s
    factor: torch.Tensor  # (B,): s^2 (0 where delta = 0: the cost vanishes)
    robust: bool


def _design(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, center: torch.Tensor,
    delta: torch.Tensor | None,
) -> _Design:
    xh = torch.cat((x3d, torch.ones_like(x3d[..., :1])), dim=-1)
    if delta is None:
        scale = x3d.new_ones(x3d.shape[0])
        factor = scale
    else:
        positive = delta > 0
        scale = torch.where(positive, delta, 1.0)
        factor = torch.where(positive, delta * delta, 0.0)
    w_scaled = w2d / scale[:, None, None]
    xc = x2d - center[:, None]
    xt = xh.transpose(-1, -2)  # (B, 4, N)
    right = torch.stack(
        (xt * w_scaled[:, None, :, 0], xt * w_scaled[:, None, :, 1], xt), dim=1
    ).contiguous()
    offset = -(w_scaled * xc).transpose(-1, -2).unsqueeze(-2).contiguous()  # (B, 2, 1, N)
    return _Design(xh, right, offset, xc, w_scaled, scale, factor, delta is not None)


class _Workspace:
    """Chunk-sized scratch planes, reused by every chunk of a call (allocated once)."""

    def __init__(self, like: torch.Tensor, elements: int) -> None:
        self.planes = like.new_empty(3 * elements)  # G_u, G_v, z  ->  beta_u, beta_v, eps
        self.sq = like.new_empty(elements)  # |phi|^2
        self.tmp = like.new_empty(elements)  # omega

    def residuals(
        self, rows: torch.Tensor, des: _Design, c: slice, ks: slice
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The planes ``(G_u, G_v, z, sq)``, each ``(b, k, N)``, of the chunk of problems ``c``
        and samples ``ks``, from ``rows: (B, 3, K, 4)`` (the rows of ``P_k``, row-major): the
        first three filled by one batched matmul (``z = P_k2 . X_i``, not clamped yet), ``sq``
        still empty (see :meth:`finish`)."""
        left = rows[c, :, ks]
        b, _, k = left.shape[:3]
        n = des.right.shape[-1]
        planes = self.planes[: 3 * b * k * n].view(b, 3, k, n)
        torch.bmm(left.reshape(3 * b, k, 4), des.right[c].view(3 * b, 4, n),
                  out=planes.view(3 * b, k, n))
        return planes[:, 0], planes[:, 1], planes[:, 2], self.sq[: b * k * n].view(b, k, n)

    @staticmethod
    def finish(
        phi_u: torch.Tensor, phi_v: torch.Tensor, z: torch.Tensor, sq: torch.Tensor,
        offset: torch.Tensor,
    ) -> None:
        """Turn ``(G_u, G_v, z)`` into ``(phi_u, phi_v, z)`` and fill ``sq``, in place (``z``
        already clamped)."""
        torch.addcdiv(offset[:, 0], phi_u, z, out=phi_u)
        torch.addcdiv(offset[:, 1], phi_v, z, out=phi_v)
        torch.mul(phi_u, phi_u, out=sq)
        sq.addcmul_(phi_v, phi_v)


def _direct_chunk_grads(
    proj: torch.Tensor, x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor,
    center: torch.Tensor, delta: torch.Tensor | None, grad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(x3d, x2d, w2d)`` of ``sum_k grad_k cost_k`` for one chunk, written out
    directly (valid with clamped depths): ``proj: (b, k, 3, 4)``, ``grad: (b, k)``, others
    ``(b, N, .)``, ``delta: (b,)`` or ``None``."""
    b, k = proj.shape[:2]
    xh = torch.cat((x3d, torch.ones_like(x3d[..., :1])), dim=-1)
    h = (proj.reshape(b, k * 3, 4) @ xh.transpose(-1, -2)).view(b, k, 3, -1)
    in_front = h[:, :, 2] > MIN_DEPTH
    inv_z = h[:, :, 2].clamp_min(MIN_DEPTH).reciprocal()
    xu = (x2d[..., 0] - center[:, None, 0])[:, None]  # (b, 1, N)
    xv = (x2d[..., 1] - center[:, None, 1])[:, None]
    ru = h[:, :, 0] * inv_z - xu  # unweighted residuals
    rv = h[:, :, 1] * inv_z - xv
    wu, wv = w2d[:, None, :, 0], w2d[:, None, :, 1]
    gw = grad[..., None].expand_as(ru)
    if delta is not None:  # IRLS weight rho' = min(1, delta / |f|)
        norm = torch.sqrt((ru * wu) ** 2 + (rv * wv) ** 2)
        d = delta[:, None, None]
        gw = gw * torch.where(norm > d, d / norm, 1.0)
    gru, grv = gw * ru, gw * rv  # dL/df / w
    grad_w2d = torch.stack(((gru * ru).sum(1) * w2d[..., 0], (grv * rv).sum(1) * w2d[..., 1]),
                           dim=-1)
    bu, bv = gru * wu * wu, grv * wv * wv  # dL/du, dL/dv
    grad_x2d = -torch.stack((bu.sum(1), bv.sum(1)), dim=-1)
    hu, hv = bu * inv_z, bv * inv_z  # dL/dh0, dL/dh1
    hz = -(hu * (ru + xu) + hv * (rv + xv)) * in_front  # dL/dh2 (h0 / z = ru + xu)
    grad_h = torch.stack((hu, hv, hz), dim=2)  # (b, k, 3, N)
    grad_xh = proj.reshape(b, k * 3, 4).transpose(-1, -2) @ grad_h.view(b, k * 3, -1)
    return grad_xh[:, :3].transpose(-1, -2), grad_x2d, grad_w2d


class _SampleCost(torch.autograd.Function):
    """Robust cost ``(K, B)`` at poses given by projection matrices ``proj: (B, K, 3, 4)``.

    Works in chunks of problems and samples (:func:`_chunks`) in a reused scratch
    :class:`_Workspace`; the backward recomputes each chunk.

    Formulation.  With ``P_k = K' [R_k | t_k]`` (``K'``: intrinsics without the principal point,
    which is subtracted from the observations instead), homogeneous points ``X_i = (x3d_i, 1)``,
    ``c = (c_u, c_v)`` the principal point and ``s`` the kernel's scale (``s = delta``, or 1 without
    the kernel), the residual in units of ``s`` is

        phi_u = G_u / z - w_u' (x2d_u - c_u),   G_u = w_u' (P_k0 . X_i),   w_u' = w_u / s,
        z = max(P_k2 . X_i, MIN_DEPTH)           (and the same for v),

    so that one batched matmul gives ``(G_u, G_v, z)`` for every sample and point with the weights
    already applied.  The cost is ``s^2 sum_i H(|phi_i|)`` with the unit Huber function
    ``H(r) = r^2 / 2`` for ``r <= 1`` and ``r - 1/2`` beyond (``H(r) = r^2 / 2`` everywhere without
    the kernel), which equals ``1/2 sum_i rho(||f_i||^2)`` of :mod:`epropnp_lib.pnp.cost`.

    Backward.  ``dH/dphi = omega phi`` with ``omega = min(1, 1 / |phi|)``.  Where every depth of a
    chunk is in front of the camera (``z = P_k2 . X_i``), all gradients follow from three ``(k, N)``
    planes ``beta_u = omega phi_u / z``, ``beta_v``, ``eps = omega |phi|^2 / z`` and one batched
    matmul that sums them over the samples with the rows of ``P_k`` (weighted by the upstream
    gradient ``g_k`` and ``s^2``):

        A_u = sum_k g_k s^2 beta_u P_k0,  B_u = sum_k g_k s^2 beta_u P_k2,
        E = sum_k g_k s^2 eps P_k2,
        dL/dX_i = w_u' (A_u - x_u B_u) + w_v' (A_v - x_v B_v) - E,
        dL/dx2d_u = -w_u' X_i . B_u,    dL/dw_u = (X_i . A_u - x_u X_i . B_u) / s,

    (``x_u = x2d_u - c_u``; 4-vectors per point).  A chunk with a clamped depth (a sample that puts
    a point at or behind the camera) takes the direct path, :func:`_direct_chunk_grads`.
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
        n = x3d.shape[1]
        des = _design(x3d, x2d, w2d, center, delta)
        chunks = _chunks(b, k, n)
        ws = _Workspace(
            proj, max((len(range(b)[c]) * len(range(k)[ks]) * n for c, ks in chunks), default=0)
        )
        cost = proj.new_empty((b, k))
        # Smallest depth per chunk (only needed by the backward).
        min_depth = proj.new_empty(len(chunks) if any(ctx.needs_input_grad) else 0)
        rows = proj.permute(0, 2, 1, 3).contiguous()  # (B, 3, K, 4)
        for i, (c, ks) in enumerate(chunks):
            phi_u, phi_v, z, sq = ws.residuals(rows, des, c, ks)
            if min_depth.numel():
                torch.amin(z, out=min_depth[i]) if z.numel() else min_depth[i].fill_(torch.inf)
            z.clamp_min_(MIN_DEPTH)
            ws.finish(phi_u, phi_v, z, sq, des.offset[c])
            if des.robust:  # sum H = sum t - 1/2 sum t omega, t = |phi|^2 omega
                omega = torch.rsqrt(sq, out=ws.tmp[: sq.numel()].view_as(sq)).clamp_max_(1.0)
                total = sq.mul_(omega).sum(-1)
                total.sub_(sq.mul_(omega).sum(-1), alpha=0.5)
            else:
                total = sq.sum(-1).mul_(0.5)
            cost[c, ks] = total.mul_(des.factor[c, None])
        ctx.save_for_backward(proj, x3d, x2d, w2d, center, delta, min_depth)
        ctx.workspace, ctx.design, ctx.rows = ws, des, rows
        return cost.transpose(0, 1)  # (K, B)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_cost: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        proj, x3d, x2d, w2d, center, delta, min_depth = ctx.saved_tensors
        b, k = proj.shape[:2]
        n = x3d.shape[1]
        ws: _Workspace = ctx.workspace
        des: _Design = ctx.design
        grad = grad_cost.transpose(0, 1)  # (B, K)
        rows: torch.Tensor = ctx.rows  # (B, 3, K, 4), from the forward
        # Left factors of the sums (B, 3, 8, K), weighted by g_k s^2:
        # [g P0; g P2], [g P1; g P2], [g P2; 0] (P_r: (4, K)).
        gp = (rows * (grad * des.factor[:, None])[:, None, :, None]).transpose(-1, -2)
        left = gp.new_zeros((b, 3, 8, k))
        left[:, :2, :4] = gp[:, :2]
        left[:, :2, 4:] = gp[:, 2:3]
        left[:, 2, :4] = gp[:, 2]
        # Sums over the samples, per point: (B, 3, 8, N) = [A_u; B_u], [A_v; B_v], [E; 0].
        sums = proj.new_zeros((b, 3, 8, n))
        direct = [proj.new_zeros(x3d.shape), proj.new_zeros(x2d.shape),
                  proj.new_zeros(w2d.shape)]
        clamped = (min_depth <= MIN_DEPTH).tolist()
        for (c, ks), has_clamped in zip(_chunks(b, k, n), clamped, strict=True):
            if has_clamped:
                parts = _direct_chunk_grads(proj[c, ks], x3d[c], x2d[c], w2d[c], center[c],
                                            None if delta is None else delta[c], grad[c, ks])
                for acc, part in zip(direct, parts, strict=True):
                    acc[c] += part
                continue
            phi_u, phi_v, z, sq = ws.residuals(rows, des, c, ks)
            ws.finish(phi_u, phi_v, z, sq, des.offset[c])
            if des.robust:  # omega / z
                omega = torch.rsqrt(sq, out=ws.tmp[: sq.numel()].view_as(sq)).clamp_max_(1.0)
                torch.div(omega, z, out=z)
            else:
                z.reciprocal_()
            phi_u.mul_(z)  # beta_u
            phi_v.mul_(z)  # beta_v
            z.mul_(sq)  # eps
            lc = left[c, :, :, ks]
            nb, nk = lc.shape[0], lc.shape[-1]
            acc = sums[c].view(3 * nb, 8, n)  # each chunk adds its samples' share
            torch.baddbmm(acc, lc.reshape(3 * nb, 8, nk),
                          ws.planes[: 3 * nb * nk * n].view(3 * nb, nk, n), out=acc)
        xt = des.xh.transpose(-1, -2)[:, None]  # (B, 1, 4, N)
        a_u, b_u = sums[:, 0, :4], sums[:, 0, 4:]  # (B, 4, N)
        a_v, b_v = sums[:, 1, :4], sums[:, 1, 4:]
        e = sums[:, 2, :4]
        wu, wv = des.w_scaled[..., 0][:, None], des.w_scaled[..., 1][:, None]  # (B, 1, N)
        xu, xv = des.xc[..., 0][:, None], des.xc[..., 1][:, None]
        need_x3d, need_x2d, need_w2d = ctx.needs_input_grad[1:4]
        grad_x3d = grad_x2d = grad_w2d = None
        if need_x3d:
            gx = wu * (a_u - xu * b_u) + wv * (a_v - xv * b_v) - e  # (B, 4, N)
            grad_x3d = gx[:, :3].transpose(-1, -2) + direct[0]
        xa = (xt * sums[:, :2, :4]).sum(-2)  # (B, 2, N): X . A_u, X . A_v
        xb = (xt * sums[:, :2, 4:]).sum(-2)  # X . B_u, X . B_v
        if need_x2d:
            grad_x2d = -(des.w_scaled.transpose(-1, -2) * xb).transpose(-1, -2) + direct[1]
        if need_w2d:
            gw = (xa - des.xc.transpose(-1, -2) * xb) / des.scale[:, None, None]
            grad_w2d = gw.transpose(-1, -2) + direct[2]
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
