"""Batched closed-form initial poses that need no external solver.

6DoF: two candidates per problem, each one batched linear least-squares solve,
  (a) the weighted DLT on centred object points (exact for >= 6 non-coplanar points),
  (b) a plane-induced homography on the best-fit plane of the 3D points (exact for coplanar
      points, >= 4), decomposed into (R, t),
  each then refined by one Gauss-Newton step on SO(3) of the DLT's algebraic error with the
  rotation constrained and the translation eliminated (:func:`refine_on_so3`; a few 3x3 to
  12x12 products, independent of N).  Under pixel noise the unconstrained DLT lands ~8
  standard deviations of the pose posterior from the optimum (its 11 projective parameters
  absorb noise that the rotation projection cannot undo); the refined pose lands within ~0.5,
  which saves the solver a whole iteration.
  The solver keeps the candidate of lower robust cost, so near-planar sets get the better one.
4DoF: the yaw-only problem is linear in ``(cos, sin, t)``: weighted linear least squares, then
  the translation is re-solved for the normalised yaw.

The DLT's 3x3 block is orthonormalised (Gram-Schmidt) before its refinement; the homography's
rotation is the closest rotation to its columns (Horn's quaternion method,
:func:`~epropnp_lib.geometry.rotations.closest_rotation_quat`).  The DLT's per-point work (its
moments, :func:`dlt_gram`) runs in the input dtype, everything after it (12x12 and 9x9
systems) and the homography in float64; the candidates are returned in the input dtype.
From float32 inputs the candidates then differ from an all-float64 initialisation by at most
~1e-3 posterior standard deviations at N = 64 (the moments sum over centred points), and the
solves end on the same optima.

On the CPU, :func:`init_6dof` (but for the homography candidate) and :func:`init_4dof` run as
fused kernels (:mod:`epropnp_lib.native`: the same formulas in one pass per problem, all in
float64); the functions here are their reference and run everywhere else.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from epropnp_lib.geometry.rotations import (
    closest_rotation_quat,
    matrix_to_quat,
    quat_exp,
    quat_to_matrix,
    skew,
)
from epropnp_lib.native import init_4dof_native, init_6dof_native
from epropnp_lib.tensor_constants import on


def normalized_image_points(x2d: torch.Tensor, cam_mats: torch.Tensor) -> torch.Tensor:
    """``(B, N, 2)`` pixel points to normalised camera coordinates ``K^-1 [u, v, 1]``, returned
    component-major ``(B, 2, N)`` (``K`` with last row ``(0, 0, 1)``: only its 2x2 block is
    inverted; a singular one gives non-finite points, reported by the solver)."""
    # Closed-form 2x2 inverse (a LAPACK call costs several times more for such a size).
    k00, k01, cx, k10, k11, cy = cam_mats.flatten(1)[:, :6].unbind(1)
    inv = torch.stack((k11, k01.neg(), k10.neg(), k00), -1).view(-1, 2, 2)
    inv = inv / torch.addcmul(k00 * k11, k01, k10, value=-1.0)[:, None, None]
    d = (x2d - torch.stack((cx, cy), -1).unsqueeze(1)).mT  # (B, 2, N)
    # two broadcast products (a batch of 2x2 matrix products costs twice as much)
    return torch.addcmul(inv[:, :, :1] * d[:, :1], inv[:, :, 1:], d[:, 1:])


def _inv3_sym(m: torch.Tensor) -> torch.Tensor:
    """Inverses ``(B, 3, 3)`` of symmetric ``m: (B, 3, 3)`` by the adjugate (with the rows
    ``r_i`` of ``m``, its rows are ``r_{i+1} x r_{i+2}``; the adjugate of a symmetric matrix is
    symmetric) over the determinant; non-finite where ``m`` is singular.  For float64 systems
    of this size it is exact enough and several times cheaper than a LAPACK solve."""
    rows = torch.cat((m, m[:, :2]), 1)  # r0 r1 r2 r0 r1
    adj = torch.linalg.cross(rows[:, 1:4], rows[:, 2:5], dim=-1)
    return adj / torch.linalg.vecdot(adj[:, :1], m[:, :1]).unsqueeze(-1)


def _weighted_center_scale(
    pts: torch.Tensor, w: torch.Tensor, target: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted centroid ``(B, D)`` and isotropic scale ``(B,)`` making the mean distance
    ``target``, for ``pts: (B, N, D)``, ``w: (B, N)``."""
    wsum = w.sum(-1, keepdim=True).clamp_min(1e-30)
    c = (pts * w[..., None]).sum(-2) / wsum
    dist = torch.linalg.vector_norm(pts - c[..., None, :], dim=-1)
    mean_dist = (dist * w).sum(-1) / wsum[..., 0]
    return c, target / mean_dist.clamp_min(1e-12)


def _null_vector_last_fixed(ata: torch.Tensor) -> torch.Tensor:
    """Least-squares null vector of a design matrix given its normal matrix ``ata: (B, D, D)``,
    with the last entry fixed to 1: its other ``(B, D - 1)`` entries (one batched LU solve of
    the ridged ``(D - 1)``-square system; far cheaper than an eigen-decomposition on the CPU).
    A singular system gives non-finite entries, which the solver reports.

    Both uses below fix an entry that equals ``lambda * depth`` of the (weighted) centroid, which
    is non-zero for any object in front of the camera.
    """
    a = ata[..., :-1, :-1].clone()
    diag = a.diagonal(dim1=-2, dim2=-1)
    diag.add_(1e-12 * diag.sum(-1, keepdim=True).clamp_min(1e-300))
    return torch.linalg.solve_ex(a, ata[..., :-1, -1])[0].neg_()


def _finite_or_identity(m: torch.Tensor) -> torch.Tensor:
    """``m: (B, D, D)`` with non-finite matrices replaced by the identity: LAPACK routines
    (SVD, eigh) may fail for a whole batch on one NaN matrix.  Such elements end up with a
    poor initial pose, which the solver reports; the batch is never aborted."""
    ok = torch.isfinite(m).flatten(-2).all(-1)
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    return torch.where(ok[..., None, None], m, eye)


def _image_normalizer(xn: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Hartley similarity ``(B, 3, 3)`` mapping normalised image points to zero mean, mean
    distance sqrt(2)."""
    c2, s2 = _weighted_center_scale(xn, w, 2.0**0.5)
    t2 = torch.zeros(xn.shape[:-2] + (3, 3), dtype=xn.dtype, device=xn.device)
    t2[..., 0, 0] = s2
    t2[..., 1, 1] = s2
    t2[..., :2, 2] = -s2[..., None] * c2
    t2[..., 2, 2] = 1.0
    return t2


def _apply_h(t: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply the affine ``t: (B, 3, 3)`` to ``pts: (B, N, 2)``."""
    return pts @ t[..., :2, :2].transpose(-1, -2) + t[..., None, :2, 2]


def _moment_gram(xh: torch.Tensor, xi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The Gram matrix ``G = Y Y^T`` ``(B, 3k, 3k)`` of ``Y = [w X, w u X, w v X]`` ``(B, 3k,
    N)``, for the homogeneous points ``X = xh: (B, k, N)``, the image points ``(u, v) = xi:
    (B, 2, N)`` and the weights ``w: (B, N)``: all moments of a weighted DLT in one batched
    product (:func:`dlt_normal_matrix`)."""
    wx = xh * w.unsqueeze(1)
    uv1 = torch.cat((torch.ones_like(xi[:, :1]), xi), 1)  # (B, 3, N): 1, u, v
    y = (uv1.unsqueeze(2) * wx.unsqueeze(1)).flatten(1, 2)  # (B, 3k, N)
    return torch.bmm(y, y.mT)


def dlt_gram(
    x3d: torch.Tensor, xn: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The moments of the weighted 6DoF DLT: the :func:`_moment_gram` ``(B, 12, 12)`` of the
    homogeneous points ``X = (x - c, 1)`` centred on their ``w^2``-weighted centroid ``c: (B,
    3)`` (returned too) and the image points ``(u, v)``.  ``G_00`` is ``diag(S, sum w^2)`` up
    to round-off, with ``S`` the ``w^2``-weighted scatter of the points about ``c``.

    Args:
        x3d: ``(B, N, 3)``; xn: ``(B, 2, N)`` normalised image points; w: ``(B, N)``.
    """
    w2 = w * w
    pts = x3d.mT  # (B, 3, N)
    centre = torch.bmm(pts, w2.unsqueeze(-1)).squeeze(-1)
    centre = centre / w2.sum(-1, keepdim=True).clamp_min(torch.finfo(w2.dtype).tiny)
    xh = torch.cat((pts - centre.unsqueeze(-1), torch.ones_like(pts[:, :1])), 1)
    return _moment_gram(xh, xn, w), centre


def dlt_normal_matrix(gram: torch.Tensor) -> torch.Tensor:
    """Normal matrix ``A^T A`` ``(B, 3k, 3k)`` of a weighted DLT system over the rows ``(p_1,
    p_2, p_3)`` of its ``3 x k`` matrix, from the Gram matrix ``gram: (B, 3k, 3k)`` of
    :func:`_moment_gram`.

    Each point contributes the rows ``w [X^T, 0, -u X^T]`` and ``w [0, X^T, -v X^T]``; with
    ``M = sum w^2 X X^T`` and its ``u``-, ``v``- and ``u^2 + v^2``-weighted versions (the
    ``k x k`` blocks ``M = G_00``, ``M_u = G_01``, ``M_v = G_02``, ``M_uv = G_11 + G_22``) the
    matrix is ``[[M, 0, -M_u], [0, M, -M_v], [-M_u, -M_v, M_uv]]``, so no ``(B, 2N, 3k)``
    design matrix is ever formed.
    """
    k = gram.shape[-1] // 3
    m, mu, mv = gram[:, :k].split(k, dim=-1)
    muv = gram[:, k:2 * k, k:2 * k] + gram[:, 2 * k:, 2 * k:]
    zero = torch.zeros_like(m)
    return torch.cat((torch.cat((m, zero, mu.neg()), -1), torch.cat((zero, m, mv.neg()), -1),
                      torch.cat((mu.neg(), mv.neg(), muv), -1)), -2)


def _dlt_rotation_block(gram: torch.Tensor) -> torch.Tensor:
    """The ``A`` block ``(B, 3, 3)`` of the DLT camera matrix ``P = [A | b]`` whose last entry
    ``b_3`` is fixed to 1, from the Gram matrix ``gram: (B, 12, 12)`` of :func:`dlt_gram`.

    With the blocks of :func:`dlt_normal_matrix`, the rows ``p_1 = M^-1 M_u p_3`` and
    ``p_2 = M^-1 M_v p_3`` minimise the algebraic error for a given ``p_3``, which leaves
    ``p_3^T C p_3`` with ``C = M_uv - M_u M^-1 M_u - M_v M^-1 M_v`` (``4x4``), minimised over
    ``p_3 = (q, 1)`` by ``C_qq q = -C_q1``.  The points are centred on the ``w^2``-weighted
    centroid, so ``M = diag(S, sum w^2)`` with ``S`` the ``3x3`` scatter: two ``3x3``
    inverses in all (coplanar points, singular ``S``: non-finite, like any singular system).
    Fixing ``b_3 = 1`` picks ``A = lam R`` with ``lam > 0``: ``b_3`` is ``lam`` times the
    depth of the centroid, positive for points in front of the camera.
    """
    m_uv = gram[:, :4, 4:]  # (B, 4, 8): [M_u | M_v]
    k = torch.cat((torch.bmm(_inv3_sym(gram[:, :3, :3]), m_uv[:, :3]),
                   m_uv[:, 3:] / gram[:, 3:4, 3:4]), 1)  # (B, 4, 8): M^-1 [M_u | M_v]
    k = k.unflatten(-1, (2, 4)).transpose(1, 2).reshape(-1, 8, 4)  # [M^-1 M_u; M^-1 M_v]
    c = torch.baddbmm(gram[:, 4:8, 4:8] + gram[:, 8:, 8:], m_uv, k, alpha=-1.0)
    q = torch.bmm(_inv3_sym(c[:, :3, :3]), c[:, :3, 3:]).neg_()  # (B, 3, 1)
    p12 = torch.bmm(k, torch.cat((q, torch.ones_like(q[:, :1])), 1))  # (B, 8, 1)
    return torch.cat((p12[:, :3], p12[:, 4:7], q), -1).mT


def _rotation_jacobian_map() -> torch.Tensor:
    """``(9, 36)``: ``vec_row(R)`` times this matrix is the flattened ``(9, 4)`` matrix
    ``[d vec_row(Exp(w) R) / dw, vec_row(R)]`` at ``w = 0`` (column ``k < 3``: ``[e_k]_x R``,
    linear in ``R``)."""
    gen = skew(torch.eye(3, dtype=torch.float64))  # (3, 3, 3): [e_k]_x
    out = torch.zeros(3, 3, 3, 3, 4, dtype=torch.float64)  # (l, j) -> (i, j), column k
    for j in range(3):
        # ([e_k]_x R)[i, j] = sum_l [e_k]_x[i, l] R[l, j]
        out[:, j, :, j, :3] = gen.permute(2, 1, 0)  # [l, i, k]
        out[j, :, j, :, 3] = torch.eye(3, dtype=torch.float64)  # R itself
    return out.reshape(9, 36)


_ROTATION_JACOBIAN = _rotation_jacobian_map()


def refine_on_so3(
    ata: torch.Tensor, rot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Gauss-Newton step of the DLT's algebraic error over rotations.

    ``ata: (B, 12, 12)`` is the DLT normal matrix over the rows ``(p_1, p_2, p_3)`` of the
    camera matrix ``P = [A | b]`` (``p_r = (A_r, b_r)``, see :func:`dlt_normal_matrix`), so the
    algebraic error of ``[R | b]`` is the quadratic form ``z^T ata z`` with ``z = vec_row([R |
    b])``.  Its minimum over ``b`` is linear in ``R`` (``b = -S vec(R)``, ``S = ata_bb^-1
    ata_bR``), leaving ``vec(R)^T C vec(R)`` with ``C`` the Schur complement; a Gauss-Newton
    step in the rotation vector ``w`` of ``R <- Exp(w) R`` is then a 3x3 solve.  Unlike the
    DLT's free 3x4 matrix, ``[R | b]`` has exactly the pose's degrees of freedom, so its
    optimum is close to the reprojection optimum.

    Args:
        ata: ``(B, 12, 12)`` float64; rot: ``(B, 3, 3)`` starting rotations.

    Returns:
        ``quat: (B, 4)`` (w >= 0), its matrix ``rot: (B, 3, 3)`` and ``b: (B, 3)``.  An
        element whose step does not lower the error (or is not finite) keeps its starting
        rotation, with the best ``b`` for it.
    """
    blocks = ata.view(-1, 3, 4, 3, 4)  # (B, row, col, row, col) of P
    m_rr = blocks[:, :, :3, :, :3].reshape(-1, 9, 9)
    m_rb, m_bb = blocks[:, :, :3, :, 3].reshape(-1, 9, 3), blocks[:, :, 3, :, 3]
    sol = torch.bmm(_inv3_sym(m_bb), m_rb.mT)  # (B, 3, 9): S
    schur = torch.baddbmm(m_rr, m_rb, sol, alpha=-1.0)  # (B, 9, 9): C
    # [d vec(Exp(w) R) / dw, vec(R)]: one product gives the normal equations and the error.
    jac = torch.mm(rot.flatten(-2), on(_ROTATION_JACOBIAN, rot.dtype, rot.device)).view(-1, 9, 4)
    normal = torch.bmm(jac.mT, torch.bmm(schur, jac))  # (B, 4, 4): [[H, g], [g^T, error]]
    step = torch.bmm(_inv3_sym(normal[:, :3, :3]), normal[:, :3, 3:]).squeeze(-1).neg_()
    rot1 = torch.bmm(quat_to_matrix(quat_exp(step)), rot)
    r1 = rot1.flatten(-2).unsqueeze(-1)
    better = (r1 * torch.bmm(schur, r1)).sum((-2, -1)) <= normal[:, 3, 3]  # False for NaN
    rot = torch.where(better[:, None, None], rot1, rot)
    b = torch.bmm(sol, rot.flatten(-2).unsqueeze(-1)).squeeze(-1).neg_()
    return matrix_to_quat(rot), rot, b


def _orthonormalize(m: torch.Tensor) -> torch.Tensor:
    """A rotation ``(B, 3, 3)`` near ``m: (B, 3, 3)`` (a positive multiple of a noisy rotation):
    Gram-Schmidt on its first two rows, the third their cross product; the identity where ``m``
    is not finite.  As a start for :func:`refine_on_so3` it is as good as the closest rotation
    (which takes several times the ops): one Gauss-Newton step lands on the same optimum."""
    norm = torch.linalg.vector_norm
    r0 = m[:, 0] / norm(m[:, 0], dim=-1, keepdim=True)
    r1 = torch.addcmul(m[:, 1], r0, torch.linalg.vecdot(m[:, 1], r0).unsqueeze(-1), value=-1.0)
    r1 = r1 / norm(r1, dim=-1, keepdim=True)
    r2 = torch.linalg.cross(r0, r1, dim=-1)  # all NaN if anything above is not finite
    eye = torch.eye(3, dtype=m.dtype, device=m.device)
    return torch.where(torch.isfinite(r2).all(-1)[:, None, None],
                       torch.stack((r0, r1, r2), dim=-2), eye)


def dlt_6dof(
    x3d: torch.Tensor, xn: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DltSystem]:
    """Weighted DLT refined on SO(3) (:func:`refine_on_so3`).

    The object points are centred on their ``w^2``-weighted centroid ``c`` (the DLT weighs
    each point's equations by ``w``, so its moments carry ``w^2``); the image points are the
    normalised camera coordinates themselves (unscaled image coordinates keep the algebraic
    error an isotropic depth-weighted reprojection error).  Neither is rescaled: the SO(3)
    refinement is invariant to the scale of the points, and the systems are float64.

    All moments come from one batched product (:func:`dlt_gram`).

    Args:
        x3d: ``(B, N, 3)`` object points.
        xn: ``(B, 2, N)`` normalised image points.
        w: ``(B, N)`` non-negative point weights (the moments are summed in their dtype, the
            rest runs in float64).

    Returns:
        ``quat: (B, 4)`` (w >= 0), ``t: (B, 3)``, the ``(B, 3, 3)`` ``w^2``-weighted scatter
        matrix of the object points about ``c``, for the planarity test, and the
        :class:`DltSystem` (to refine other candidates of the same problems).
    """
    gram, centre = dlt_gram(x3d, xn, w)
    gram, centre = gram.double(), centre.double()
    ata = dlt_normal_matrix(gram)
    a = _dlt_rotation_block(gram)
    system = DltSystem(ata, centre)
    quat, t = system.refine(_orthonormalize(a))
    return quat, t, gram[:, :3, :3], system


class DltSystem(NamedTuple):
    """The DLT normal matrix of :func:`dlt_6dof` and the centre of the object points behind it.

    Attributes:
        ata: ``(B, 12, 12)`` over the rows of ``P`` (:func:`dlt_normal_matrix`) for the
            points ``x - centre``.
        centre: ``(B, 3)``.
    """

    ata: torch.Tensor
    centre: torch.Tensor

    def select(self, idx: torch.Tensor) -> DltSystem:
        """The problems ``idx: (M,)``."""
        return DltSystem(self.ata[idx], self.centre[idx])

    def refine(self, rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(quat, t)`` ``(B, 4), (B, 3)`` after :func:`refine_on_so3` from ``rot: (B, 3, 3)``:
        ``[R | R centre + t]`` is the refined ``[R | b]``."""
        quat, rot, b = refine_on_so3(self.ata, rot)
        return quat, b - torch.bmm(rot, self.centre.unsqueeze(-1)).squeeze(-1)


def homography_6dof(
    x3d: torch.Tensor, xn: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose from the homography of the best-fit plane of ``x3d``; shapes as :func:`dlt_6dof`."""
    c3, _ = _weighted_center_scale(x3d, w, 1.0)
    xc = x3d - c3[..., None, :]
    cov = (xc * w[..., None]).transpose(-1, -2) @ xc
    _, evecs = torch.linalg.eigh(_finite_or_identity(cov))
    e1, e2 = evecs[..., 2], evecs[..., 1]
    basis = torch.stack((e1, e2, torch.linalg.cross(e1, e2, dim=-1)), dim=-1)  # columns
    ab = (xc.unsqueeze(-2) @ basis[..., :2].unsqueeze(-3)).squeeze(-2)  # (B, N, 2)
    tp = _image_normalizer(ab, w)
    t2 = _image_normalizer(xn, w)
    abn = _apply_h(tp, ab)
    xi = _apply_h(t2, xn)
    ah = torch.cat((abn, torch.ones_like(abn[..., :1])), dim=-1)  # (B, N, 3)
    h = _null_vector_last_fixed(dlt_normal_matrix(_moment_gram(ah.mT, xi.mT, w)))
    h = torch.cat((h, torch.ones_like(h[..., :1])), dim=-1).unflatten(-1, (3, 3))
    h = torch.linalg.solve(t2, h) @ tp  # maps (a, b, 1) to normalised image points
    # h = lam [R e1, R e2, R c3 + t]; the plane centre has positive depth.
    h = h * torch.where(h[..., 2, 2] < 0, -1.0, 1.0).to(h.dtype)[..., None, None]
    r1, r2 = h[..., 0], h[..., 1]
    norm = torch.linalg.vector_norm
    lam = (norm(r1, dim=-1) * norm(r2, dim=-1)).sqrt().clamp_min(1e-30)
    r1 = r1 / lam[..., None]
    r2 = r2 / lam[..., None]
    rp = quat_to_matrix(closest_rotation_quat(
        torch.stack((r1, r2, torch.linalg.cross(r1, r2, dim=-1)), dim=-1))[0])
    rot = rp @ basis.transpose(-1, -2)
    t = h[..., 2] / lam[..., None] - (rot @ c3.unsqueeze(-1)).squeeze(-1)
    return rot, t


#: Point sets whose 3D scatter ``S`` (``w^2``-weighted, about that centroid) has ``det S <= ratio
#: ||S||_F^3`` (or with fewer than 6 points) also get the homography candidate.  With ``l_min
#: <= l_mid <= l_max`` its eigenvalues, ``l_min >= det S / l_max^2`` and ``l_max <= ||S||_F``,
#: so ``det S / ||S||_F^3`` is a lower bound of ``l_min / l_max`` (a few ops, no eigenvalues).
#: Clearly non-planar sets (a cube's points: 0.19) skip the homography, as the DLT alone is
#: exact for them; flatter ones (a box flattened to 0.4 of its width: 0.05) get both.
PLANARITY_RATIO = 0.05


def init_6dof(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, cam_mats: torch.Tensor
) -> torch.Tensor:
    """Candidate initial 6DoF poses ``(C, B, 7)`` (DLT, homography) in the input dtype.

    For clearly non-planar point sets (see :data:`PLANARITY_RATIO`) the second candidate
    repeats the DLT; when that holds for the whole batch only the DLT is returned (``C = 1``),
    so the solver does not evaluate the same pose twice.

    Args:
        x3d: ``(B, N, 3)``; x2d: ``(B, N, 2)`` pixels; w2d: ``(B, N, 2)``; cam_mats: ``(B, 3, 3)``.
    """
    dtype = x3d.dtype
    # Per-point weight (B, N): the sum of the two axes' (any positive multiple of the mean
    # gives the same candidates; a reduction over the size-2 dim is several times slower).
    wu, wv = w2d.unbind(-1)
    w = wu + wv
    native = init_6dof_native(x3d, x2d, w2d, cam_mats, PLANARITY_RATIO)
    xn: torch.Tensor | None = None
    if native is not None:  # the fused CPU kernel (epropnp_lib.native)
        dlt, need = native.pose, native.need_homography
        system = DltSystem(native.ata, native.centre)
    else:
        xn = normalized_image_points(x2d, cam_mats)  # (B, 2, N)
        quat, t, scatter, system = dlt_6dof(x3d, xn, w)
        dlt = torch.cat((t, quat), dim=-1)
        if x3d.shape[-2] < 6:
            need = torch.ones_like(w[..., 0], dtype=torch.bool)
        else:
            det = (scatter[:, 0] * torch.linalg.cross(scatter[:, 1], scatter[:, 2],
                                                      dim=-1)).sum(-1)
            frob = torch.linalg.matrix_norm(scatter)
            need = ~(det > PLANARITY_RATIO * frob.pow(3))  # NaN-safe
    idx = need.nonzero().squeeze(-1)
    if idx.numel() == 0:
        return dlt.unsqueeze(0).to(dtype)  # one candidate: nothing to compare
    xn = normalized_image_points(x2d[idx], cam_mats[idx]) if xn is None else xn[idx]
    homog = dlt.clone()
    rot_h, _ = homography_6dof(x3d[idx].double(), xn.mT.double(), w[idx].double())
    quat_h, t_h = system.select(idx).refine(rot_h)
    homog[idx] = torch.cat((t_h, quat_h), dim=-1)
    return torch.stack((dlt, homog)).to(dtype)


def init_4dof(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, cam_mats: torch.Tensor
) -> torch.Tensor:
    """Initial 4DoF poses ``(1, B, 4)`` by linear least squares; shapes as :func:`init_6dof`.

    With ``c = cos(yaw)``, ``s = sin(yaw)`` and normalised image point ``(xn, yn)``, each point
    gives two equations linear in ``u = (c, s, tx, ty, tz)``:
    ``c (xn Z - X) - s (xn X + Z) - tx + xn tz = 0`` and ``c yn Z - s yn X - ty + yn tz = Y``.
    """
    native = init_4dof_native(x3d, x2d, w2d, cam_mats)
    if native is not None:  # the fused CPU kernel (epropnp_lib.native)
        return native.unsqueeze(0)
    dtype = x3d.dtype
    x3d64, k64 = x3d.double(), cam_mats.double()
    xn = normalized_image_points(x2d.double(), k64)
    wrow = w2d.double() * torch.stack((k64[..., 0, 0], k64[..., 1, 1]), -1)[..., None, :]
    big_x, big_y, big_z = x3d64.unbind(-1)
    u, v = xn.unbind(1)
    o, z = torch.ones_like(u), torch.zeros_like(u)
    row_u = torch.stack((u * big_z - big_x, -(u * big_x + big_z), -o, z, u), dim=-1)
    row_v = torch.stack((v * big_z, -v * big_x, z, -o, v), dim=-1)
    a = torch.stack((row_u, row_v), dim=-2) * wrow[..., None]  # (B, N, 2, 5)
    b = torch.stack((z, big_y), dim=-1) * wrow  # (B, N, 2)
    a, b = a.flatten(-3, -2), b.flatten(-2, -1)
    ata = a.transpose(-1, -2) @ a
    ridge = 1e-9 * ata.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-30)
    ata = ata + ridge[..., None, None] * torch.eye(5, dtype=ata.dtype, device=ata.device)
    sol = torch.linalg.solve_ex(ata, (a.transpose(-1, -2) @ b.unsqueeze(-1)))[0].squeeze(-1)
    yaw = torch.atan2(sol[..., 1], sol[..., 0])
    # Re-solve the translation with the normalised (cos, sin).
    c, s = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]
    const_u = c * (u * big_z - big_x) - s * (u * big_x + big_z)
    const_v = c * v * big_z - s * v * big_x - big_y
    at = torch.stack(
        (torch.stack((-o, z, u), -1), torch.stack((z, -o, v), -1)), dim=-2
    ) * wrow[..., None]
    bt = -torch.stack((const_u, const_v), dim=-1) * wrow
    at, bt = at.flatten(-3, -2), bt.flatten(-2, -1)
    atat = at.transpose(-1, -2) @ at
    atat = atat + 1e-12 * torch.eye(3, dtype=atat.dtype, device=atat.device)
    t = torch.linalg.solve_ex(atat, at.transpose(-1, -2) @ bt.unsqueeze(-1))[0].squeeze(-1)
    return torch.cat((t, yaw[..., None]), dim=-1).unsqueeze(0).to(dtype)


def _octahedral_quats(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 24 rotations of the cube ``(24, 4)``, well spread over SO(3) (max gap ~63 deg)."""
    s = 0.5**0.5
    q: list[list[float]] = [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]
    q += [[0.5, 0.5 * b, 0.5 * c, 0.5 * d] for b in (1, -1) for c in (1, -1) for d in (1, -1)]
    for i in range(4):
        for j in range(i + 1, 4):
            for sign in (1, -1):
                v = [0.0] * 4
                v[i], v[j] = s, sign * s
                q.append(v)
    return torch.tensor(q, dtype=dtype, device=device)


def hypotheses_6dof(
    x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, cam_mats: torch.Tensor
) -> torch.Tensor:
    """24 multi-start poses ``(24, B, 7)``: the cube rotations, each with the translation that
    puts the weighted 3D centroid on the ray of the weighted 2D centroid at the depth implied by
    the ratio of 3D to 2D spread.  Shapes as :func:`init_6dof`."""
    w = w2d.mean(-1)
    c3, s3 = _weighted_center_scale(x3d, w, 1.0)
    c2, s2 = _weighted_center_scale(x2d, w, 1.0)
    focal = 0.5 * (cam_mats[..., 0, 0] + cam_mats[..., 1, 1])
    depth = focal * s2 / s3.clamp_min(1e-30)  # mean-distance ratio (s = 1 / mean distance)
    ray = torch.cat((c2, torch.ones_like(c2[..., :1])), -1)
    ray = (torch.linalg.inv(cam_mats) @ ray.unsqueeze(-1)).squeeze(-1)
    quats = _octahedral_quats(x3d.dtype, x3d.device)
    rot = quat_to_matrix(quats)  # (24, 3, 3)
    t = (depth[..., None] * ray).unsqueeze(0) - (rot.unsqueeze(1) @ c3[..., None]).squeeze(-1)
    q = quats[:, None, :].expand(-1, x3d.shape[0], 4)
    return torch.cat((t, q), dim=-1)
