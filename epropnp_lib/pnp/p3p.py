"""Batched closed-form P3P: the up to four poses that map three object points onto three rays.

Grunert's formulation: with the unit rays ``f_1, f_2, f_3`` of three image points, the
distances ``s_i`` of the points along them satisfy, for the sides ``a = |X_2 - X_3|``,
``b = |X_1 - X_3|``, ``c = |X_1 - X_2|`` of the object triangle and the cosines
``c_a = f_2.f_3``, ``c_b = f_1.f_3``, ``c_g = f_1.f_2``,

    s_2^2 + s_3^2 - 2 s_2 s_3 c_a = a^2,  s_1^2 + s_3^2 - 2 s_1 s_3 c_b = b^2,
    s_1^2 + s_2^2 - 2 s_1 s_2 c_g = c^2.

With ``s_2 = u s_1``, ``s_3 = v s_1`` and ``q(v) = 1 + v^2 - 2 v c_b`` (so ``s_1^2 = b^2 /
q(v)``), the difference of the first and third equations, each divided by the second, gives
``u = n(v) / d(v)`` with ``n = K q - 1 + v^2`` (``K = (c^2 - a^2) / b^2``) and ``d = 2 (v c_a -
c_g)``; the third divided by the second, times ``d^2``, is the quartic

    n^2 - 2 c_g n d - ((c^2 / b^2) q - 1) d^2 = 0

in ``v``.  Its roots come from the eigenvalues of the companion matrix (one batched LAPACK
call; no case analysis), the camera-frame points are ``s_i f_i``, and the pose aligns the
object triangle with them (orthonormal frames of both triangles, exact for three points).

Every root gives a candidate; the real parts of complex roots too (noise turns a double root
into a complex pair), and those with non-positive depths or non-finite values are flagged
invalid.  The caller scores the candidates on all its points and refines the best
(:func:`epropnp_lib.pnp.solver.initial_pose`).  Everything runs in float64.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch

from epropnp_lib.geometry.rotations import matrix_to_quat


class P3PSolutions(NamedTuple):
    """Candidate poses of :func:`p3p`.

    Attributes:
        rot: ``(B, 4, 3, 3)`` rotations, ``x_cam = rot @ x_obj + t``.
        t: ``(B, 4, 3)`` translations.
        valid: ``(B, 4)`` whether the root gives a pose with all three points in front of
            the camera and finite entries (invalid entries are the identity and zero).
        real: ``(B, 4)`` whether the root is real (within round-off); a valid candidate from
            the real part of a complex root does not put the points exactly on their rays.
    """

    rot: torch.Tensor
    t: torch.Tensor
    valid: torch.Tensor
    real: torch.Tensor


def _poly_mul(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Product of polynomials with ascending coefficients ``p: (..., m)``, ``q: (..., n)``:
    ``(..., m + n - 1)``."""
    m, n = p.shape[-1], q.shape[-1]
    out = p.new_zeros(torch.broadcast_shapes(p.shape[:-1], q.shape[:-1]) + (m + n - 1,))
    for i in range(m):
        out[..., i:i + n] += p[..., i:i + 1] * q
    return out


def _frame(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Orthonormal frames ``(..., 3, 3)`` (columns) of triangles ``p_i: (..., 3)``: the first
    axis along ``p1 - p0``, the third normal to the triangle."""
    e0 = p1 - p0
    e0 = e0 / torch.linalg.vector_norm(e0, dim=-1, keepdim=True)
    e2 = torch.linalg.cross(e0, p2 - p0, dim=-1)
    e2 = e2 / torch.linalg.vector_norm(e2, dim=-1, keepdim=True)
    return torch.stack((e0, torch.linalg.cross(e2, e0, dim=-1), e2), dim=-1)


def p3p(x3d: torch.Tensor, rays: torch.Tensor) -> P3PSolutions:
    """The poses that put three object points on three rays.

    Args:
        x3d: ``(B, 3, 3)`` object points (one per row).
        rays: ``(B, 3, 3)`` their rays in the camera frame (any positive length, pointing
            to the front, ``z > 0`` for a pinhole camera).

    Returns:
        :class:`P3PSolutions` (float64).  A collinear triangle or rays gives no valid
        candidate.
    """
    x3d, rays = x3d.double(), rays.double()
    f = rays / torch.linalg.vector_norm(rays, dim=-1, keepdim=True)
    f1, f2, f3 = f.unbind(-2)
    x1, x2, x3 = x3d.unbind(-2)
    a2 = (x2 - x3).square().sum(-1)
    b2 = (x1 - x3).square().sum(-1)
    c2 = (x1 - x2).square().sum(-1)
    ca = (f2 * f3).sum(-1)
    cb = (f1 * f3).sum(-1)
    cg = (f1 * f2).sum(-1)
    k = (c2 - a2) / b2
    one = torch.ones_like(k)
    q = torch.stack((one, -2.0 * cb, one), -1)  # q(v), ascending
    n = torch.stack((k - 1.0, -2.0 * k * cb, k + 1.0), -1)  # n(v) = K q - 1 + v^2
    d = torch.stack((-2.0 * cg, 2.0 * ca), -1)  # d(v) = 2 (v c_a - c_g)
    r = (c2 / b2)[..., None] * q
    r[..., 0] -= 1.0
    nd = torch.nn.functional.pad(_poly_mul(n, d), (0, 1))  # cubic, as a quartic
    quartic = _poly_mul(n, n) - 2.0 * cg[..., None] * nd - _poly_mul(r, _poly_mul(d, d))
    v, real = _real_roots(quartic)  # (B, 4)
    qv = 1.0 + v * v - 2.0 * v * cb[..., None]
    nv = (k - 1.0)[..., None] - 2.0 * (k * cb)[..., None] * v + (k + 1.0)[..., None] * v * v
    dv = 2.0 * (v * ca[..., None] - cg[..., None])
    u = nv / dv
    s1 = (b2[..., None] / qv).sqrt()
    depths = torch.stack((s1, u * s1, v * s1), dim=-1)  # (B, 4, 3)
    cam = depths[..., None] * f[:, None]  # (B, 4, 3, 3): camera-frame points
    frame_cam = _frame(*cam.unbind(-2))
    frame_obj = _frame(x1, x2, x3)[:, None]
    rot = frame_cam @ frame_obj.mT
    t = cam[..., 0, :] - (rot @ x1[:, None, :, None]).squeeze(-1)
    finite = torch.isfinite(rot).flatten(-2).all(-1) & torch.isfinite(t).all(-1)
    valid = (depths > 0).all(-1) & finite
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    rot = torch.where(valid[..., None, None], rot, eye)
    t = torch.where(valid[..., None], t, 0.0)
    return P3PSolutions(rot, t, valid, real)


def _real_roots(coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real parts ``(B, 4)`` of the roots of the quartics with ascending coefficients
    ``coeffs: (B, 5)``, each polished by two Newton steps (NaN where the leading coefficient
    vanishes or a coefficient is not finite), and whether each root is real ``(B, 4)``."""
    lead = coeffs[..., 4:]
    ok = torch.isfinite(coeffs).all(-1) & (lead[..., 0].abs() > 1e-300)
    monic = torch.where(ok[..., None], coeffs[..., :4] / lead, 0.0)  # c_0..c_3 of v^4 + ...
    comp = coeffs.new_zeros(coeffs.shape[:-1] + (4, 4))
    comp[..., 1:, :3] = torch.eye(3, dtype=coeffs.dtype, device=coeffs.device)
    comp[..., :, 3] = -monic
    roots = torch.linalg.eigvals(comp)
    v = roots.real
    real = roots.imag.abs() <= 1e-6 * (1.0 + v.abs())
    c0, c1, c2, c3 = monic.unsqueeze(-1).unbind(-2)  # (B, 1) each
    for _ in range(2):
        val = (((v + c3) * v + c2) * v + c1) * v + c0
        der = ((4.0 * v + 3.0 * c3) * v + 2.0 * c2) * v + c1
        step = val / der
        v = torch.where(torch.isfinite(step) & (step.abs() < 0.1 * (1.0 + v.abs())), v - step, v)
    return torch.where(ok[..., None], v, torch.nan), real & ok[..., None]


def p3p_candidates(x3d: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
    """Candidate 6DoF poses ``(C, B, 7)`` (``t``, ``q_wxyz``) from P3P on every triple of the
    ``N`` points: ``C = 4 * binom(N, 3)``; invalid candidates are NaN.

    Args:
        x3d: ``(B, N, 3)`` object points; xn: ``(B, N, 2)`` normalised image points
            ``K^-1 (u, v, 1)``.  Meant for small ``N`` (the minimal problems).
    """
    num = x3d.shape[-2]
    triples = torch.tensor(list(itertools.combinations(range(num), 3)), device=x3d.device)
    rays = torch.cat((xn, torch.ones_like(xn[..., :1])), dim=-1)
    sel3 = x3d[:, triples].flatten(0, 1)  # (B * T, 3, 3)
    selr = rays[:, triples].flatten(0, 1)
    sol = p3p(sel3, selr)
    pose = torch.cat((sol.t, matrix_to_quat(sol.rot)), dim=-1)  # (B * T, 4, 7)
    pose = pose.masked_fill(~sol.valid[..., None], torch.nan)
    return pose.unflatten(0, (x3d.shape[0], -1)).flatten(1, 2).transpose(0, 1)


__all__ = ["P3PSolutions", "p3p", "p3p_candidates"]
