"""Closed-form P3P (epropnp_lib.pnp.p3p) and the solver's minimal path built on it (6DoF
problems of 4 and 5 points)."""

from __future__ import annotations

import pytest
import torch

from epropnp_lib.geometry.rotations import quat_angle_between, quat_to_matrix
from epropnp_lib.pnp.init import normalized_image_points
from epropnp_lib.pnp.p3p import p3p, p3p_candidates
from epropnp_lib.pnp.problems import random_problems
from epropnp_lib.pnp.solver import SolveStatus, solve_pnp


def _rays(x3d: torch.Tensor, rot: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``(B, 3, 3)`` of ``x3d: (B, 3, 3)`` under ``(rot, t)``."""
    return x3d @ rot.mT + t[:, None]


def test_p3p_recovers_the_pose_among_its_candidates() -> None:
    """Property test over random triangles and poses (float64, noise-free): one valid candidate
    is the true pose."""
    p = random_problems(500, 3, noise_std=0.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    rot = quat_to_matrix(p.pose[:, 3:])
    sol = p3p(p.x3d, _rays(p.x3d, rot, p.pose[:, :3]))
    err_r = torch.linalg.matrix_norm(sol.rot - rot[:, None])
    err_t = torch.linalg.vector_norm(sol.t - p.pose[:, None, :3], dim=-1)
    err = torch.where(sol.valid, err_r + err_t, torch.inf).amin(-1)
    # (a double root of the quartic is found to the square root of the round-off)
    assert err.median() < 1e-9
    assert err.max() < 1e-5


def test_every_valid_candidate_puts_the_points_on_their_rays() -> None:
    """Each valid candidate is a rotation; each from a real root is a P3P solution: the three
    transformed points lie on the three rays in front of the camera (the other real roots of
    the quartic included)."""
    p = random_problems(300, 3, noise_std=0.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    rays = _rays(p.x3d, quat_to_matrix(p.pose[:, 3:]), p.pose[:, :3])
    sol = p3p(p.x3d, rays)
    ortho = sol.rot @ sol.rot.mT - torch.eye(3, dtype=torch.float64)
    cam = p.x3d[:, None] @ sol.rot.mT + sol.t[:, :, None]  # (B, 4, 3, 3)
    unit = rays / torch.linalg.vector_norm(rays, dim=-1, keepdim=True)
    along = (cam * unit[:, None]).sum(-1)  # distance along each ray
    off_ray = torch.linalg.vector_norm(cam - along[..., None] * unit[:, None], dim=-1)
    v = sol.valid
    assert v.sum() >= 500  # some problems have several solutions
    assert torch.linalg.matrix_norm(ortho)[v].max() < 1e-9
    assert torch.linalg.det(sol.rot)[v].sub(1.0).abs().max() < 1e-9
    real = v & sol.real
    assert real.sum(-1).min() >= 1
    assert (off_ray.amax(-1) / along.amax(-1))[real].max() < 1e-6
    assert (along[real] > 0).all()


def test_collinear_triangle_gives_no_candidate() -> None:
    x3d = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]], dtype=torch.float64)
    rays = x3d + torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)
    assert not p3p(x3d, rays).valid.any()


@pytest.mark.parametrize(("num_points", "flatness"), [(4, 1.0), (5, 1.0), (4, 0.0)])
def test_minimal_problems_are_solved_exactly(num_points: int, flatness: float) -> None:
    """Noise-free 4- and 5-point problems, general and coplanar (a square marker's case): the
    solver returns the true pose."""
    p = random_problems(256, num_points, noise_std=0.0, flatness=flatness,
                        generator=torch.Generator().manual_seed(2))
    sol = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
    ang = quat_angle_between(sol.pose[:, 3:], p.pose[:, 3:]).rad2deg()
    assert (sol.status == SolveStatus.CONVERGED).all()
    assert ang.max() < 0.05
    assert torch.linalg.vector_norm(sol.pose[:, :3] - p.pose[:, :3], dim=-1).max() < 1e-3


@pytest.mark.parametrize("num_points", [4, 5])
def test_minimal_path_reaches_the_optimum_around_the_truth(num_points: int) -> None:
    """Noisy minimal problems (2 px): the solve from the P3P candidates ends at a cost no higher
    than the optimum reached from the true pose in at least 99 % of the problems (the optimum
    near the truth is not always the global one: the remainder may be lower)."""
    p = random_problems(1000, num_points, noise_std=2.0,
                        generator=torch.Generator().manual_seed(3))
    ours = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
    from_truth = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, pose_init=p.pose)
    not_worse = ours.cost <= from_truth.cost * (1.0 + 1e-3) + 1e-6
    assert not_worse.float().mean() >= 0.99


def test_candidates_are_nan_where_invalid_and_cover_every_triple() -> None:
    p = random_problems(8, 5, noise_std=0.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(4))
    xn = normalized_image_points(p.x2d, p.cam_mats).mT
    cands = p3p_candidates(p.x3d, xn)
    assert cands.shape == (4 * 10, 8, 7)
    finite = cands.isfinite().all(-1)
    assert (cands.isnan().all(-1) | finite).all()
    ang = quat_angle_between(cands[..., 3:].nan_to_num(1.0), p.pose[:, 3:]).rad2deg()
    # every triple of a noise-free problem recovers the pose: 10 exact candidates per problem
    assert ((ang < 1e-5) & finite).sum(0).min() >= 10


def test_minimal_path_never_fails_a_batch() -> None:
    """A NaN point, a collinear point set and all-zero weights in a batch of 4-point problems:
    each is reported, and the other elements are bitwise what solving them alone gives."""
    p = random_problems(64, 4, noise_std=1.0, generator=torch.Generator().manual_seed(7))
    x3d, x2d, w2d = p.x3d.clone(), p.x2d.clone(), p.w2d.clone()
    x3d[3, 1, 0] = float("nan")
    x3d[5] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    w2d[9] = 0.0
    sol = solve_pnp(x3d, x2d, w2d, p.cam_mats)
    assert sol.status[3] == SolveStatus.INVALID_INPUT
    assert sol.status[5] == SolveStatus.DEGENERATE
    assert sol.status[9] == SolveStatus.DEGENERATE
    good = [i for i in range(64) if i not in (3, 5, 9)]
    alone = solve_pnp(x3d[good], x2d[good], w2d[good], p.cam_mats[good])
    assert torch.equal(sol.pose[good], alone.pose)
    assert (alone.status == SolveStatus.CONVERGED).all()
