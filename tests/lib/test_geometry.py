"""Rotations, projection and the hand-written Jacobians (float64 gradcheck + manifold FD)."""

from __future__ import annotations

import pytest
import torch

from epropnp_lib.conventions import MIN_DEPTH
from epropnp_lib.geometry.camera import image_points, pixel_affine, project, transform_points
from epropnp_lib.geometry.pose import Pose4DoF, Pose6DoF, PoseSpace
from epropnp_lib.geometry.rotations import (
    closest_rotation_quat,
    matrix_to_quat,
    quat_angle_between,
    quat_exp,
    quat_log,
    quat_multiply,
    quat_normalize,
    quat_to_matrix,
    yaw_to_matrix,
    yaw_to_quat,
)
from epropnp_lib.pnp.cost import HuberConfig, evaluate_cost
from epropnp_lib.pnp.problems import random_problems


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_quaternion_matrix_round_trip() -> None:
    q = quat_normalize(torch.randn(1000, 4, generator=_gen(), dtype=torch.float64))
    q = torch.where(q[:, :1] < 0, -q, q)
    rot = quat_to_matrix(q)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(rot @ rot.mT, eye.expand_as(rot), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(1000, dtype=torch.float64))
    assert torch.allclose(matrix_to_quat(rot), q, atol=1e-12)


def _closest_rotation_svd(m: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(m)
    d = torch.ones(m.shape[:-1], dtype=m.dtype)
    d[..., 2] = torch.linalg.det(u @ vh)
    return u @ torch.diag_embed(d) @ vh


@pytest.mark.parametrize(("noise", "atol"), [(0.0, 1e-9), (1e-3, 1e-9), (0.05, 1e-9), (0.2, 1e-6)])
def test_closest_rotation_quat_matches_the_svd(noise: float, atol: float) -> None:
    """Horn's quaternion by repeated squaring equals the SVD's closest proper rotation, and the
    returned scale is the RMS singular value, for scaled rotations with relative noise (the
    16th power separates the eigenvalues less as the noise grows)."""
    g = _gen(5)
    rot = quat_to_matrix(quat_normalize(torch.randn(500, 4, generator=g, dtype=torch.float64)))
    scale = torch.rand(500, 1, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    m = scale * rot @ (torch.eye(3, dtype=torch.float64)
                       + noise * torch.randn(500, 3, 3, generator=g, dtype=torch.float64))
    q, lam = closest_rotation_quat(m)
    ref = _closest_rotation_svd(m)
    assert (q[:, 0] >= 0).all()
    torch.testing.assert_close(quat_to_matrix(q), ref, atol=atol, rtol=0)
    torch.testing.assert_close(lam, torch.linalg.svdvals(m).square().mean(-1).sqrt())
    # A rank-2 matrix (planar points) and a reflection still give the closest proper rotation.
    flat = rot[:5] @ torch.diag(torch.tensor([1.0, 0.6, 0.0], dtype=torch.float64))
    torch.testing.assert_close(quat_to_matrix(closest_rotation_quat(flat)[0]),
                               _closest_rotation_svd(flat), atol=1e-4, rtol=0)
    q_ref, _ = closest_rotation_quat(-rot[:5])
    det = torch.linalg.det(quat_to_matrix(q_ref))
    assert torch.allclose(det, torch.ones(5, dtype=torch.float64))


def test_closest_rotation_quat_of_bad_matrices_is_the_identity() -> None:
    bad = torch.stack((torch.full((3, 3), float("nan")), torch.zeros(3, 3),
                       torch.eye(3).index_fill(0, torch.tensor([1]), float("inf"))))
    q, lam = closest_rotation_quat(bad)
    assert torch.equal(q, torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3))
    assert torch.isnan(lam[0]) and lam[1] == 0 and not torch.isfinite(lam[2])


def test_quaternion_product_matches_matrix_product() -> None:
    a = quat_normalize(torch.randn(100, 4, generator=_gen(1), dtype=torch.float64))
    b = quat_normalize(torch.randn(100, 4, generator=_gen(2), dtype=torch.float64))
    assert torch.allclose(
        quat_to_matrix(quat_multiply(a, b)), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-12
    )


@pytest.mark.parametrize("scale", [1e-9, 1e-3, 1.0, 3.0])
def test_exp_log_round_trip_and_angle(scale: float) -> None:
    phi = torch.randn(200, 3, generator=_gen(3), dtype=torch.float64)
    phi = phi / phi.norm(dim=-1, keepdim=True) * scale
    q = quat_exp(phi)
    assert torch.allclose(q.norm(dim=-1), torch.ones(200, dtype=torch.float64))
    assert torch.allclose(quat_log(q), phi, atol=1e-10, rtol=1e-8)
    ident = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand_as(q)
    assert torch.allclose(quat_angle_between(q, ident), phi.norm(dim=-1), atol=1e-12)


def test_quat_exp_has_finite_gradient_at_zero() -> None:
    phi = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quat_exp, (phi,))


def test_yaw_is_rotation_about_camera_y() -> None:
    yaw = torch.linspace(-3, 3, 13, dtype=torch.float64)
    rot = yaw_to_matrix(yaw)
    assert torch.allclose(rot, quat_to_matrix(yaw_to_quat(yaw)), atol=1e-12)
    # +90 deg yaw maps the camera z axis (forward) onto +x (right).
    r90 = yaw_to_matrix(torch.tensor(torch.pi / 2, dtype=torch.float64))
    assert torch.allclose(
        r90 @ torch.tensor([0, 0, 1.0], dtype=torch.float64),
        torch.tensor([1.0, 0, 0], dtype=torch.float64),
        atol=1e-12,
    )
    assert torch.allclose(rot[:, 1, 1], torch.ones(13, dtype=torch.float64))


def test_projection_jacobian_gradcheck() -> None:
    p = random_problems(3, 5, dtype=torch.float64, generator=_gen(4))
    x_cam = transform_points(p.x3d, Pose6DoF.rotation(p.pose), p.pose[:, :3])
    proj = project(x_cam, p.cam_mats, with_jacobian=True)
    assert proj.jac_cam is not None
    auto = torch.autograd.functional.jacobian(lambda x: project(x, p.cam_mats).x2d, x_cam)
    # auto: (B, N, 2, B, N, 3) -> diagonal blocks
    b, n = x_cam.shape[:2]
    blocks = torch.stack([torch.stack([auto[i, j, :, i, j] for j in range(n)]) for i in range(b)])
    assert torch.allclose(blocks, proj.jac_cam, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: project(x, p.cam_mats).x2d, (x_cam.clone().requires_grad_(),)
    )


def test_points_behind_camera_are_clamped() -> None:
    x_cam = torch.tensor(
        [[[0.1, 0.2, -1.0], [0.3, 0.1, 0.0], [0.0, 0.0, 2.0]]], dtype=torch.float64
    )
    k = torch.eye(3, dtype=torch.float64)[None]
    proj = project(x_cam, k, with_jacobian=True)
    assert torch.isfinite(proj.x2d).all() and proj.jac_cam is not None
    assert torch.allclose(proj.x2d[0, 0], torch.tensor([0.1, 0.2], dtype=torch.float64) / MIN_DEPTH)
    assert torch.all(proj.jac_cam[0, :2, :, 2] == 0)  # no depth gradient where clamped
    assert torch.allclose(proj.depth, x_cam[..., 2])


@pytest.mark.parametrize("space", [Pose6DoF, Pose4DoF])
@pytest.mark.parametrize("huber", [HuberConfig(), HuberConfig(relative_delta=0.02)])
def test_cost_jacobian_matches_autograd_and_manifold_fd(
    space: type[PoseSpace], huber: HuberConfig
) -> None:
    dof = space.tangent_dim
    p = random_problems(4, 7, dof=dof, noise_std=2.0, dtype=torch.float64, generator=_gen(5))
    w2d = torch.rand(p.w2d.shape, generator=_gen(6), dtype=torch.float64) + 0.1
    delta = huber.threshold(p.x2d, w2d)
    terms = evaluate_cost(space, p.pose, p.x3d, p.x2d, w2d, p.cam_mats, delta, True)
    assert terms.jacobian is not None

    def residual_at(inc: torch.Tensor) -> torch.Tensor:
        pose = space.retract(p.pose, inc)
        return evaluate_cost(space, pose, p.x3d, p.x2d, w2d, p.cam_mats, delta).residual

    zero = torch.zeros(4, dof, dtype=torch.float64)
    auto = torch.autograd.functional.jacobian(residual_at, zero)  # (B, N, 2, B, D)
    auto = torch.stack([auto[i, :, :, i] for i in range(4)])
    assert torch.allclose(auto, terms.jacobian, atol=1e-9, rtol=1e-7)
    # Central finite differences on the manifold.
    h = 1e-6
    fd = torch.stack(
        [
            (residual_at(zero + h * e) - residual_at(zero - h * e)) / (2 * h)
            for e in torch.eye(dof, dtype=torch.float64)
        ],
        dim=-1,
    )
    assert torch.allclose(fd, terms.jacobian, atol=1e-5, rtol=1e-5)
    # The robust gradient sum_i rho'_i J_i^T f_i equals d cost / d delta.
    grad_auto = torch.autograd.functional.jacobian(
        lambda inc: evaluate_cost(
            space, space.retract(p.pose, inc), p.x3d, p.x2d, w2d, p.cam_mats, delta
        ).cost.sum(),
        zero,
    )
    jw = terms.jacobian * terms.robust_weight[..., None, None]
    grad = torch.einsum("bnkd,bnk->bd", jw, terms.residual)
    assert torch.allclose(grad, grad_auto, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("space", [Pose6DoF, Pose4DoF])
def test_cost_gradcheck_wrt_correspondences(space: type[PoseSpace]) -> None:
    p = random_problems(
        2, 6, dof=space.tangent_dim, noise_std=3.0, dtype=torch.float64, generator=_gen(7)
    )
    # Some points beyond the threshold; the threshold is a (detached) constant of the cost.
    delta = HuberConfig(relative_delta=0.01).threshold(p.x2d, p.w2d)

    def cost(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor) -> torch.Tensor:
        return evaluate_cost(space, p.pose, x3d, x2d, w2d, p.cam_mats, delta).cost

    args = tuple(t.clone().requires_grad_() for t in (p.x3d, p.x2d, p.w2d))
    assert torch.autograd.gradcheck(cost, args)


def test_matrix_to_quat_at_half_turns_and_identity() -> None:
    """Every branch of Shepperd's method: identity and half turns about each axis and a
    diagonal axis (where w = 0 and the w-row is useless)."""
    s = 0.5**0.5
    quats = torch.tensor(
        [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0], [0, s, s, 0],
         [0, 0, s, -s], [s, 0, 0, s]],
        dtype=torch.float64,
    )
    back = matrix_to_quat(quat_to_matrix(quats))
    # q and -q are the same rotation: compare up to sign.
    dots = (back * quats).sum(-1).abs()
    assert torch.allclose(dots, torch.ones_like(dots), atol=1e-12)
    assert torch.allclose(quat_to_matrix(back), quat_to_matrix(quats), atol=1e-12)


@pytest.mark.parametrize("space", [Pose6DoF, Pose4DoF])
def test_normal_equations_match_the_jacobian(space: type[PoseSpace]) -> None:
    """The solver's one-product normal equations (component-major rows, residual as an extra
    column) equal sum_i rho'_i J_i^T J_i and sum_i rho'_i J_i^T f_i built from the
    (..., N, 2, D) Jacobian, for one pose per problem and for K poses per problem."""
    from epropnp_lib.pnp.cost import PointSet, augmented_normal_matrix, point_terms
    from epropnp_lib.pnp.solver import normal_equations

    dof = space.tangent_dim
    p = random_problems(5, 12, dof=dof, noise_std=2.0, dtype=torch.float64, generator=_gen(31))
    delta = HuberConfig(relative_delta=0.02).threshold(p.x2d, p.w2d)
    poses = p.pose + 0.05 * torch.randn(3, *p.pose.shape, dtype=torch.float64,
                                        generator=_gen(32))
    poses = space.canonical(poses)
    for pose in (poses[0], poses):
        terms = evaluate_cost(space, pose, p.x3d, p.x2d, p.w2d, p.cam_mats, delta, True)
        assert terms.jacobian is not None
        assert (terms.robust_weight < 1).any()  # some points beyond the Huber threshold
        jac = terms.jacobian.flatten(-3, -2)  # S + (2N, D)
        rw = terms.robust_weight.repeat_interleave(2, dim=-1)
        res = terms.residual.flatten(-2)
        hess_ref = torch.einsum("...ni,...n,...nj->...ij", jac, rw, jac)
        grad_ref = torch.einsum("...ni,...n,...n->...i", jac, rw, res)
        hess, grad = normal_equations(terms)
        torch.testing.assert_close(hess, hess_ref)
        torch.testing.assert_close(grad, grad_ref)
        pts = PointSet.from_tensors(p.x3d, p.x2d, p.w2d, p.cam_mats, delta)
        soa = point_terms(space, pose, pts, with_jacobian=True)
        assert soa.rows is not None
        m = augmented_normal_matrix(soa.rows, soa.robust_weight)
        torch.testing.assert_close(m[..., :dof, :dof], hess_ref)
        torch.testing.assert_close(m[..., :dof, dof], grad_ref)
        torch.testing.assert_close(m[..., dof, dof], (rw * res * res).sum(-1))


# --- image affines ---------------------------------------------------------------------------
@pytest.mark.parametrize(("scale", "origin"), [((0.4, 0.5), (-0.5, -0.5)), (2.0, (10.25, -3.0))])
def test_pixel_affine_intrinsics_project_to_resampled_pixels(
    scale: float | tuple[float, float], origin: tuple[float, float]
) -> None:
    """Projecting with ``A @ K`` equals projecting with ``K`` and then resampling the pixels:
    ``u' = s (u - x0) - 0.5``; the region's corner ``origin`` maps to ``(-0.5, -0.5)``."""
    k = torch.tensor([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    pts = torch.tensor([[0.3, -0.2, 5.0], [-1.0, 0.4, 8.0]], dtype=torch.float64)
    a = pixel_affine(scale, origin)
    s = torch.tensor(scale if isinstance(scale, tuple) else (scale, scale), dtype=torch.float64)
    expected = s * (project(pts, k).x2d - torch.tensor(origin, dtype=torch.float64)) - 0.5
    torch.testing.assert_close(project(pts, a @ k).x2d, expected)
    corner = a @ torch.tensor([origin[0], origin[1], 1.0], dtype=torch.float64)
    torch.testing.assert_close(corner[:2], torch.tensor([-0.5, -0.5], dtype=torch.float64))


def test_image_points_invert_pixel_affine() -> None:
    a = torch.stack([pixel_affine((0.4, 0.5), (-0.5, -0.5)), pixel_affine(2.0, (10.25, -3.0))])
    pts = torch.tensor([[3.0, 4.0], [-1.5, 200.0]], dtype=torch.float64)
    resampled = pts @ a[:, :2, :2].transpose(-1, -2) + a[:, None, :2, 2]  # (2, 2, 2)
    torch.testing.assert_close(image_points(resampled, a), pts.expand(2, 2, 2))
