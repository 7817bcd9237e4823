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

from typing import Any

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


class _SampleCost(torch.autograd.Function):
    """Robust cost ``(K, B)`` at poses given by projection matrices ``proj: (B, K, 3, 4)``.

    Written with in-place operations: the ``(B, K, N)`` arrays are large, and on the CPU
    allocating (and page-faulting) them costs as much as computing them.
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
        h = (proj.reshape(b, k * 3, 4) @ xh.transpose(-1, -2)).view(b, k, 3, -1)
        in_front = h[:, :, 2] > MIN_DEPTH
        inv_z = h[:, :, 2].clamp_min(MIN_DEPTH).reciprocal_()  # (B, K, N)
        xu = (x2d[..., 0] - center[:, None, 0])[:, None]  # (B, 1, N), relative to (cx, cy)
        xv = (x2d[..., 1] - center[:, None, 1])[:, None]
        wu, wv = w2d[:, None, :, 0], w2d[:, None, :, 1]
        ru = h[:, :, 0].mul_(inv_z).sub_(xu)  # unweighted residuals (B, K, N), in place in h
        rv = h[:, :, 1].mul_(inv_z).sub_(xv)
        sq = (ru * wu).square_()
        tmp = (rv * wv).square_()
        sq.add_(tmp)
        del tmp
        omega = None
        if delta is None:
            cost = sq.sum(-1).mul_(0.5)
        else:
            # omega = rho' = min(1, delta / |f|); 1/2 rho = omega |f|^2 (1 - omega / 2) on both
            # sides of the threshold.
            omega = sq.sqrt().reciprocal_().mul_(delta[:, None, None]).clamp_max_(1.0)
            cost = (1.0 - 0.5 * omega).mul_(omega).mul_(sq).sum(-1)
        del sq
        ctx.save_for_backward(proj, x2d, w2d, center, ru, rv, inv_z, in_front, omega)
        return cost.transpose(0, 1)  # (K, B)

    @staticmethod
    def backward(
        ctx: Any, grad_cost: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        proj, x2d, w2d, center, ru, rv, inv_z, in_front, omega = ctx.saved_tensors
        need_x3d, need_x2d, need_w2d = ctx.needs_input_grad[1:4]
        g = grad_cost.transpose(0, 1)[..., None]  # (B, K, 1)
        gw = g.expand_as(ru) if omega is None else omega * g  # (B, K, N)
        wu, wv = w2d[:, None, :, 0], w2d[:, None, :, 1]
        grad_x3d = grad_x2d = grad_w2d = None
        gru = gw * ru  # dL/df_u / w_u
        grv = gw * rv
        del gw
        if need_w2d:
            grad_w2d = torch.stack(
                ((gru * ru).sum(1) * w2d[..., 0], (grv * rv).sum(1) * w2d[..., 1]), dim=-1
            )
        bu = gru.mul_(wu * wu)  # dL/du (B, K, N)
        bv = grv.mul_(wv * wv)
        if need_x2d:
            grad_x2d = -torch.stack((bu.sum(1), bv.sum(1)), dim=-1)
        if need_x3d:
            b, k = proj.shape[:2]
            grad_h = torch.empty((b, k, 3, ru.shape[-1]), dtype=ru.dtype, device=ru.device)
            hu = torch.mul(bu, inv_z, out=grad_h[:, :, 0])  # dL/dh0
            hv = torch.mul(bv, inv_z, out=grad_h[:, :, 1])  # dL/dh1
            # dL/dh2 = -(dL/dh0 * h0 + dL/dh1 * h1) / z, h0 / z = ru + x_u (relative to cx)
            hz = grad_h[:, :, 2]
            torch.add(ru, (x2d[..., 0] - center[:, None, 0])[:, None], out=hz)
            hz.mul_(hu)
            tmp = (rv + (x2d[..., 1] - center[:, None, 1])[:, None]).mul_(hv)
            hz.add_(tmp).mul_(in_front).neg_()
            del tmp
            grad_xh = proj.reshape(b, k * 3, 4).transpose(-1, -2) @ grad_h.view(b, k * 3, -1)
            grad_x3d = grad_xh[:, :3].transpose(-1, -2)
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
