"""Rotations: unit quaternions (w, x, y, z), rotation matrices, yaw about the camera y axis.

All functions are batched over leading dimensions and differentiable.  Conventions are those of
:mod:`epropnp_lib.conventions`: Hamilton product, scalar first, ``q`` and ``-q`` equivalent.
"""

from __future__ import annotations

import torch

from epropnp_lib.tensor_constants import on


def quat_normalize(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalise quaternions ``q: (..., 4)`` to unit length."""
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(eps)


def _constant(key: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One of the bilinear-form constants below on ``dtype``/``device`` (copied once)."""
    return on(_CONSTANT_VALUES[key], dtype, device)


def _product_table() -> torch.Tensor:
    """``(16, 4)``: row ``4 j + k`` holds the coefficients of ``a_j b_k`` in ``a * b``."""
    table = torch.zeros(4, 4, 4, dtype=torch.float64)
    # (w, x, y, z) Hamilton product written as sum_jk T[j, k, i] a_j b_k.
    entries = [
        (0, 0, 0, 1), (1, 1, 0, -1), (2, 2, 0, -1), (3, 3, 0, -1),
        (0, 1, 1, 1), (1, 0, 1, 1), (2, 3, 1, 1), (3, 2, 1, -1),
        (0, 2, 2, 1), (1, 3, 2, -1), (2, 0, 2, 1), (3, 1, 2, 1),
        (0, 3, 3, 1), (1, 2, 3, 1), (2, 1, 3, -1), (3, 0, 3, 1),
    ]
    for j, k, i, sign in entries:
        table[j, k, i] = sign
    return table.reshape(16, 4)


def _rotation_table() -> torch.Tensor:
    """``(16, 9)``: ``R.flatten() = I.flatten() + vec(q q^T) @ table`` for unit ``q``."""
    table = torch.zeros(4, 4, 9, dtype=torch.float64)
    # (row-major index of R, [(j, k, coefficient of q_j q_k)])
    terms = {
        0: [(2, 2, -2), (3, 3, -2)], 1: [(1, 2, 2), (0, 3, -2)], 2: [(1, 3, 2), (0, 2, 2)],
        3: [(1, 2, 2), (0, 3, 2)], 4: [(1, 1, -2), (3, 3, -2)], 5: [(2, 3, 2), (0, 1, -2)],
        6: [(1, 3, 2), (0, 2, -2)], 7: [(2, 3, 2), (0, 1, 2)], 8: [(1, 1, -2), (2, 2, -2)],
    }
    for idx, items in terms.items():
        for j, k, c in items:
            table[j, k, idx] = c
    return table.reshape(16, 9)


def _m2q_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """``(9, 16)`` map and ``(16,)`` offset from ``R.flatten()`` to the rows ``4 q_k q``."""
    table = torch.zeros(9, 4, 4, dtype=torch.float64)
    offset = torch.zeros(4, 4, dtype=torch.float64)
    m = {(i, j): 3 * i + j for i in range(3) for j in range(3)}
    # row k, column c: [(entry of R, sign)] + constant
    spec = {
        (0, 0): ([((0, 0), 1), ((1, 1), 1), ((2, 2), 1)], 1.0),
        (0, 1): ([((2, 1), 1), ((1, 2), -1)], 0.0),
        (0, 2): ([((0, 2), 1), ((2, 0), -1)], 0.0),
        (0, 3): ([((1, 0), 1), ((0, 1), -1)], 0.0),
        (1, 1): ([((0, 0), 1), ((1, 1), -1), ((2, 2), -1)], 1.0),
        (1, 2): ([((1, 0), 1), ((0, 1), 1)], 0.0),
        (1, 3): ([((0, 2), 1), ((2, 0), 1)], 0.0),
        (2, 2): ([((0, 0), -1), ((1, 1), 1), ((2, 2), -1)], 1.0),
        (2, 3): ([((2, 1), 1), ((1, 2), 1)], 0.0),
        (3, 3): ([((0, 0), -1), ((1, 1), -1), ((2, 2), 1)], 1.0),
    }
    for (k, c), (entries, const) in spec.items():
        for (k2, c2) in {(k, c), (c, k)}:  # the rows form a symmetric matrix
            for idx, sign in entries:
                table[m[idx], k2, c2] = sign
            offset[k2, c2] = const
    return table.reshape(9, 16), offset.reshape(16)


_M2Q, _M2Q_OFFSET = _m2q_tables()
_CONSTANT_VALUES = {
    "m2q": _M2Q,
    "m2q_offset": _M2Q_OFFSET,
    "product": _product_table(),
    "rotation": _rotation_table(),
    "identity": torch.eye(3, dtype=torch.float64).reshape(9),
    "identity_quat": torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64),
}


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` of unit quaternions ``q: (..., 4)`` (w, x, y, z).

    Computed as one bilinear form of ``q`` (few kernel launches; this is on every hot path).

    Example::

        >>> quat_to_matrix(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    outer = (q.unsqueeze(-1) * q.unsqueeze(-2)).flatten(-2)  # (..., 16)
    table = _constant("rotation", q.dtype, q.device)
    eye = _constant("identity", q.dtype, q.device)
    return torch.addmm(eye, outer.reshape(-1, 16), table).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(rot: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` (w >= 0) of rotation matrices ``rot: (..., 3, 3)``.

    Shepperd's method without branches: the four rows ``4 q_k q`` (each linear in the entries
    of ``R``) are formed with one matrix product, and the row with the largest ``4 q_k^2`` --
    the best-conditioned one -- is normalised.
    """
    flat = rot.reshape(-1, 9)
    rows = torch.addmm(_constant("m2q_offset", rot.dtype, rot.device), flat,
                       _constant("m2q", rot.dtype, rot.device)).view(-1, 4, 4)
    best = rows.diagonal(dim1=-2, dim2=-1).argmax(-1)  # (M,)
    q = torch.take_along_dim(rows, best[:, None, None], dim=-2).squeeze(-2)
    q = quat_normalize(q)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(rot.shape[:-2] + (4,))


def closest_rotation_quat(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit quaternion ``(..., 4)`` (w >= 0) of the rotation closest to ``m: (..., 3, 3)`` in
    the Frobenius norm, and the RMS singular value ``||m||_F / sqrt(3)`` of ``m`` ``(...,)``
    (``lam`` for a scaled rotation ``m = lam R``; for a noisy one it exceeds the mean singular
    value by half their relative variance).

    Horn's method: the rotation maximising ``trace(R^T m)`` has the quaternion of the largest
    eigenvalue of the symmetric ``4 x 4`` matrix ``N(m)`` (linear in ``m``, the matrix of
    :func:`matrix_to_quat`'s rows), and that eigenvalue is ``trace(R^T m)``.  With ``s`` the
    RMS singular value, ``A = N(m / s) + I`` has eigenvalues ``4, 0, 0, 0`` for an exact
    rotation; its 16th power (four squarings) is the dominant eigenvector's projector up to
    ``(lambda_2 / lambda_1)^16`` (1e-15 for 10 % noise on a rotation, 1e-6 for a rank-2 ``m``),
    and its best-conditioned column is taken.  Where the two largest eigenvalues nearly tie
    (``m`` far from any rotation, the closest one barely defined) the result is less exact.
    Always a proper rotation (never a reflection); a non-finite ``m`` gives the identity and a
    NaN scale, a zero one the identity and scale 0.  No gradient is meant to flow (the
    initialisers use it).
    """
    flat = m.reshape(-1, 9)
    scale = torch.linalg.vector_norm(flat, dim=-1, keepdim=True) * 3.0**-0.5  # (M, 1)
    a = torch.addmm(_constant("m2q_offset", m.dtype, m.device), flat / scale,
                    _constant("m2q", m.dtype, m.device)).view(-1, 4, 4)
    a16 = torch.bmm(a, a)  # bmm: a batched @ costs several more ops for tiny matrices
    a16 = torch.bmm(a16, a16)
    a16 = torch.bmm(a16, a16)
    a16 = torch.bmm(a16, a16)
    best = a16.diagonal(dim1=-2, dim2=-1).argmax(-1)  # (M,)
    q = quat_normalize(a16.gather(-2, best.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(-2))
    ok = torch.isfinite(q).all(-1, keepdim=True)
    identity = _constant("identity_quat", q.dtype, q.device)
    q = torch.where(ok, torch.where(q[:, :1] < 0, -q, q), identity)
    return q.reshape(m.shape[:-2] + (4,)), scale.reshape(m.shape[:-2])


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of quaternions ``(..., 4)`` (broadcasting)."""
    outer = (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2)  # (..., 16)
    return outer @ _constant("product", outer.dtype, outer.device)


def quat_exp(phi: torch.Tensor) -> torch.Tensor:
    """Unit quaternion ``(..., 4)`` of the rotation vector ``phi: (..., 3)`` (angle-axis).

    Smooth at ``phi = 0``: ``sin(theta/2) / theta = sinc(theta / 2 pi) / 2`` with torch's
    ``sinc`` (exact at 0, with its derivative), and the norm's gradient is 0 at 0, so gradients
    are finite there.
    """
    theta = torch.linalg.vector_norm(phi, dim=-1, keepdim=True)  # its gradient at 0 is 0
    k = torch.sinc(theta * (0.5 / torch.pi))
    return torch.cat((torch.cos(0.5 * theta), (0.5 * k) * phi), dim=-1)


def quat_retract(q: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``q: (..., 4)`` moved by the rotation vector ``phi: (..., 3)`` applied on the left
    (``exp(phi) * q``, i.e. ``R <- Exp(phi) R``), renormalised (broadcasting)."""
    return quat_normalize(quat_multiply(quat_exp(phi), q))


def quat_log(q: torch.Tensor) -> torch.Tensor:
    """Rotation vector ``(..., 3)`` of unit quaternions ``q: (..., 4)`` (angle in [0, pi])."""
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(s, q[..., :1])
    k = torch.where(s < 1e-12, 2.0 / q[..., :1].clamp_min(1e-12), angle / s.clamp_min(1e-30))
    return k * v


def quat_angle_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation angle (radians, in [0, pi]) between unit quaternions ``a, b: (..., 4)``."""
    d = (a * b).sum(-1).abs().clamp(max=1.0)
    # 2 * atan2(|a x b part|, |dot|) is accurate for small angles, unlike 2 * acos(dot).
    rel = quat_multiply(a * a.new_tensor([1.0, -1.0, -1.0, -1.0]), b)
    return 2.0 * torch.atan2(torch.linalg.vector_norm(rel[..., 1:], dim=-1), d)


def yaw_to_matrix(yaw: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` for yaw angles ``(...)`` about the camera y axis."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    o, z = torch.ones_like(yaw), torch.zeros_like(yaw)
    return torch.stack((c, z, s, z, o, z, -s, z, c), dim=-1).unflatten(-1, (3, 3))


def yaw_to_quat(yaw: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` of yaw angles ``(...)`` about the camera y axis."""
    z = torch.zeros_like(yaw)
    return torch.stack((torch.cos(0.5 * yaw), z, torch.sin(0.5 * yaw), z), dim=-1)


def wrap_angle(a: torch.Tensor) -> torch.Tensor:
    """Wrap angles to [-pi, pi)."""
    return torch.remainder(a + torch.pi, 2 * torch.pi) - torch.pi


def skew(v: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric cross-product matrices ``(..., 3, 3)`` of ``v: (..., 3)``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack((o, -z, y, z, o, -x, -y, x, o), dim=-1).unflatten(-1, (3, 3))
