"""Rotations: unit quaternions (w, x, y, z), rotation matrices, yaw about the camera y axis.

All functions are batched over leading dimensions and differentiable.  Conventions are those of
:mod:`epropnp_lib.conventions`: Hamilton product, scalar first, ``q`` and ``-q`` equivalent.
"""

from __future__ import annotations

import torch


def quat_normalize(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalise quaternions ``q: (..., 4)`` to unit length."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` of unit quaternions ``q: (..., 4)`` (w, x, y, z).

    Example::

        >>> quat_to_matrix(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    w, x, y, z = q.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = (
        1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
    )
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def matrix_to_quat(rot: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` (w >= 0) of rotation matrices ``rot: (..., 3, 3)``.

    Uses the numerically stable branch selection (largest of the four squared components).
    """
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * squared components, each from the best-conditioned combination.
    sq = torch.stack(
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22),
        dim=-1,
    ).clamp_min(0.0)
    cand = torch.stack(
        (
            torch.stack((sq[..., 0], m[..., 2, 1] - m[..., 1, 2],
                         m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]), -1),
            torch.stack((m[..., 2, 1] - m[..., 1, 2], sq[..., 1],
                         m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]), -1),
            torch.stack((m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1],
                         sq[..., 2], m[..., 2, 1] + m[..., 1, 2]), -1),
            torch.stack((m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                         m[..., 2, 1] + m[..., 1, 2], sq[..., 3]), -1),
        ),
        dim=-2,
    )  # (..., 4, 4): row k is 4 * q_k * q
    best = sq.argmax(dim=-1, keepdim=True)
    q = torch.take_along_dim(cand, best[..., None], dim=-2).squeeze(-2)
    q = quat_normalize(q)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of quaternions ``(..., 4)`` (broadcasting)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def quat_exp(phi: torch.Tensor) -> torch.Tensor:
    """Unit quaternion ``(..., 4)`` of the rotation vector ``phi: (..., 3)`` (angle-axis).

    Smooth at ``phi = 0`` (Taylor expansion of sin(x/2)/x), so gradients are finite there.
    """
    theta2 = (phi * phi).sum(-1, keepdim=True)
    theta = theta2.clamp_min(1e-24).sqrt()
    small = theta2 < 1e-8
    half = 0.5 * theta
    k = torch.where(small, 0.5 - theta2 / 48.0, torch.sin(half) / theta)
    w = torch.where(small, 1.0 - theta2 / 8.0, torch.cos(half))
    return torch.cat((w, k * phi), dim=-1)


def quat_log(q: torch.Tensor) -> torch.Tensor:
    """Rotation vector ``(..., 3)`` of unit quaternions ``q: (..., 4)`` (angle in [0, pi])."""
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s = v.norm(dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(s, q[..., :1])
    k = torch.where(s < 1e-12, 2.0 / q[..., :1].clamp_min(1e-12), angle / s.clamp_min(1e-30))
    return k * v


def quat_angle_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation angle (radians, in [0, pi]) between unit quaternions ``a, b: (..., 4)``."""
    d = (a * b).sum(-1).abs().clamp(max=1.0)
    # 2 * atan2(|a x b part|, |dot|) is accurate for small angles, unlike 2 * acos(dot).
    rel = quat_multiply(a * a.new_tensor([1.0, -1.0, -1.0, -1.0]), b)
    return 2.0 * torch.atan2(rel[..., 1:].norm(dim=-1), d)


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
