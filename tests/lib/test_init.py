"""Closed-form initial poses (epropnp_lib.pnp.init): exactness, the SO(3) refinement of the DLT,
and how close to the optimum the refined pose starts the solver."""

from __future__ import annotations

import pytest
import torch

from epropnp_lib.geometry.pose import Pose6DoF
from epropnp_lib.geometry.rotations import (
    closest_rotation_quat,
    quat_angle_between,
    quat_exp,
    quat_multiply,
    quat_to_matrix,
)
from epropnp_lib.pnp.cost import HuberConfig, evaluate_cost
from epropnp_lib.pnp.init import (
    DltSystem,
    _dlt_rotation_block,
    _null_vector_last_fixed,
    dlt_6dof,
    dlt_gram,
    dlt_normal_matrix,
    init_6dof,
    normalized_image_points,
    refine_on_so3,
)
from epropnp_lib.pnp.problems import PnPProblem, random_problems
from epropnp_lib.pnp.solver import solve_pnp


def _dlt(p: PnPProblem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DltSystem]:
    """The DLT pieces of float64 problems."""
    xn = normalized_image_points(p.x2d, p.cam_mats)
    return dlt_6dof(p.x3d, xn, p.w2d.mean(-1))


def _rotation_block(ata: torch.Tensor) -> torch.Tensor:
    """The ``A`` block ``(B, 3, 3)`` of the DLT camera matrix with ``b_3 = 1``, by a general
    linear solve of the normal matrix ``ata: (B, 12, 12)`` over the rows of ``P``."""
    p = _null_vector_last_fixed(ata)
    return torch.cat((p, torch.ones_like(p[:, :1])), -1).view(-1, 3, 4)[:, :, :3]


def test_closed_form_dlt_matches_the_general_solve() -> None:
    """The block elimination of the DLT (two 3x3 inverses) gives the camera matrix of the
    general 11x11 solve of its normal matrix, and the normal matrix is the design matrix's
    ``A^T A`` (float64, 1 px noise)."""
    p = random_problems(64, 16, noise_std=1.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(6))
    xn = normalized_image_points(p.x2d, p.cam_mats)
    w = p.w2d.mean(-1)
    gram, centre = dlt_gram(p.x3d, xn, w)
    ata = dlt_normal_matrix(gram)
    # The design matrix: rows w [X^T, 0, -u X^T] and w [0, X^T, -v X^T] per point.
    xh = torch.cat((p.x3d - centre[:, None], torch.ones_like(p.x3d[..., :1])), -1)
    u, v = xn[:, :1].mT, xn[:, 1:].mT
    zero = torch.zeros_like(xh)
    design = torch.cat((torch.cat((xh, zero, -u * xh), -1), torch.cat((zero, xh, -v * xh), -1)),
                       1) * torch.cat((w, w), 1)[..., None]
    torch.testing.assert_close(ata, design.mT @ design, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_dlt_rotation_block(gram), _rotation_block(ata),
                               rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("flatness", [1.0, 0.0])
def test_init_is_exact_without_noise(flatness: float) -> None:
    """Noise-free problems (float64): the DLT candidate (general point sets) or the homography
    candidate (coplanar ones), both refined on SO(3), recover the pose."""
    p = random_problems(64, 12, noise_std=0.0, flatness=flatness, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    cands = init_6dof(p.x3d, p.x2d, p.w2d, p.cam_mats)  # (C, B, 7)
    ang = quat_angle_between(cands[..., 3:], p.pose[:, 3:]).rad2deg()
    err_t = torch.linalg.vector_norm(cands[..., :3] - p.pose[:, :3], dim=-1)
    best = ang.amin(0)
    assert best.max() < 1e-6
    assert (err_t.amin(0) / torch.linalg.vector_norm(p.pose[:, :3], dim=-1)).max() < 1e-8


def test_refine_on_so3_descends_to_the_constrained_algebraic_optimum() -> None:
    """Each step lowers the algebraic error of ``[R | b]`` or keeps the rotation; repeated
    steps reach a fixed point (zero rotation gradient), which the first step is already near."""
    p = random_problems(128, 32, noise_std=1.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    _, _, _, system = _dlt(p)
    quat, _ = closest_rotation_quat(_rotation_block(system.ata))
    rot = quat_to_matrix(quat)

    def error(rot: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z = torch.cat((rot, b.unsqueeze(-1)), -1).flatten(-2)  # vec_row([R | b])
        return torch.einsum("bi,bij,bj->b", z, system.ata, z)

    errors, quats = [], [quat]
    for _ in range(6):
        quat, rot, b = refine_on_so3(system.ata, rot)
        assert torch.allclose(quat_to_matrix(quat), rot, atol=1e-12)
        errors.append(error(rot, b))
        quats.append(quat)
    for e0, e1 in zip(errors, errors[1:], strict=False):
        assert (e1 <= e0 * (1 + 1e-9)).all()  # (round-off at the optimum)
    # Fixed point: the last step moves the rotation by nothing measurable.
    assert quat_angle_between(quats[-1], quats[-2]).max() < 1e-9
    # One step is most of the way: its error is within 1% of the optimum's.
    assert ((errors[0] - errors[-1]) / errors[-1]).max() < 1e-2


def test_refine_on_so3_keeps_the_start_when_the_step_fails() -> None:
    p = random_problems(4, 16, noise_std=1.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    _, _, _, system = _dlt(p)
    ata = system.ata.clone()
    ata[1] = torch.nan  # a non-finite system
    ata[2, :9, :9] = -ata[2, :9, :9]  # a step that can only raise the error
    start = quat_to_matrix(p.pose[:, 3:])
    quat, rot, _ = refine_on_so3(ata, start)
    assert torch.equal(rot[1], start[1]) and torch.equal(rot[2], start[2])
    assert torch.allclose(quat[2], p.pose[2, 3:], atol=1e-12)


def test_refined_init_starts_near_the_optimum() -> None:
    """Under 1 px noise the refined DLT lands well inside one posterior standard deviation of
    the optimum (Mahalanobis distance sqrt(2 (cost_init - cost_opt)), the cost being the
    negative log-likelihood), where the plain DLT lands several away; the LM solver then needs
    one step.
    """
    p = random_problems(256, 64, noise_std=1.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(3))
    opt = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
    delta = HuberConfig().threshold(p.x2d, p.w2d)

    def distance(pose: torch.Tensor) -> torch.Tensor:
        cost = evaluate_cost(Pose6DoF, pose, p.x3d, p.x2d, p.w2d, p.cam_mats, delta).cost
        return (2 * (cost - opt.cost)).clamp_min(0).sqrt()

    refined = init_6dof(p.x3d, p.x2d, p.w2d, p.cam_mats)[0]
    d = distance(refined)
    assert d.median() < 0.6 and d.quantile(0.9) < 1.0
    # The unrefined DLT rotation, with the translation of the same DLT system.
    _, _, _, system = _dlt(p)
    q0, _ = closest_rotation_quat(_rotation_block(system.ata))
    plain = torch.cat((refined[:, :3], q0), -1)  # its closest rotation alone is far off
    assert distance(plain).median() > 4.0

    sol32 = solve_pnp(p.x3d.float(), p.x2d.float(), p.w2d.float(), p.cam_mats.float())
    assert (sol32.iterations <= 2).all()


def test_init_from_a_rotated_start_converges_under_refinement() -> None:
    """The refinement is a local method: from a start 10 degrees off on noise-free data, a few
    steps return to the exact rotation (float64)."""
    p = random_problems(32, 16, noise_std=0.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(4))
    _, _, _, system = _dlt(p)
    axis = torch.nn.functional.normalize(torch.randn(32, 3, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(5)),
                                         dim=-1)
    quat = quat_multiply(quat_exp(axis * torch.deg2rad(torch.tensor(10.0))), p.pose[:, 3:])
    rot = quat_to_matrix(quat)
    for _ in range(4):
        quat, rot, _ = refine_on_so3(system.ata, rot)
    assert quat_angle_between(quat, p.pose[:, 3:]).rad2deg().max() < 1e-6


@pytest.mark.parametrize("num_points", [8, 12])
def test_refined_init_stays_near_the_optimum_for_few_points(num_points: int) -> None:
    """With few points the DLT's 3x3 block is far from a rotation, and the start of the SO(3)
    refinement decides where it lands: the initial pose (the better candidate, as the solver
    picks it) stays within a few posterior standard deviations of the optimum (the bounds
    hold with margin for the Gram-Schmidt start; a start that ruins few-point poses fails them).
    """
    p = random_problems(512, num_points, noise_std=1.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(num_points))
    opt = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
    delta = HuberConfig().threshold(p.x2d, p.w2d)

    def cost(pose: torch.Tensor) -> torch.Tensor:
        return evaluate_cost(Pose6DoF, pose, p.x3d, p.x2d, p.w2d, p.cam_mats, delta).cost

    cands = init_6dof(p.x3d, p.x2d, p.w2d, p.cam_mats)
    best = torch.stack([cost(c) for c in cands]).nan_to_num(torch.inf).amin(0)
    d = (2 * (best - opt.cost)).clamp_min(0).sqrt()
    q = d.quantile(torch.tensor([0.5, 0.9, 0.99], dtype=d.dtype))
    assert q[0] < 0.5 and q[1] < 1.0 and q[2] < 3.0, q
