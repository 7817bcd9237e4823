"""Robust inference mode: gross outliers, clean data, inlier fractions, determinism, bad input."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from epropnp_lib.epropnp import EProPnP4DoF, EProPnP6DoF
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.rotations import quat_multiply, quat_to_matrix
from epropnp_lib.pnp.problems import PnPProblem, random_problems, with_outliers
from epropnp_lib.pnp.robust import RobustConfig, RobustPnPSolution, solve_pnp_robust
from epropnp_lib.pnp.solver import PnPSolution, SolveStatus, solve_pnp


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rotation_error_deg(pose: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``(B,)`` angle of the relative rotation of 6DoF poses (float64, no acos round-off)."""
    inv = truth[:, 3:].double() * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    rel = quat_multiply(pose[:, 3:].double(), inv)
    return torch.rad2deg(2 * torch.atan2(rel[:, 1:].norm(dim=-1), rel[:, 0].abs()))


def _yaw_error_deg(pose: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    d = torch.remainder(pose[:, 3].double() - truth[:, 3].double() + math.pi, 2 * math.pi)
    return torch.rad2deg(d - math.pi).abs()


def _outlier_set(batch: int, dof: int = 6, seed: int = 0) -> tuple[PnPProblem, torch.Tensor]:
    """N = 128 points, 1 px noise, 20 % of the image points uniform in the 640x480 image."""
    clean = random_problems(batch, 128, dof=dof, noise_std=1.0, generator=_gen(100 + seed))
    out = with_outliers(clean, 0.2, generator=_gen(200 + seed))
    return out.problem, out.inliers


def _ransac_rotation_error_deg(p: PnPProblem) -> torch.Tensor:
    """``(B,)`` rotation errors of OpenCV's ``solvePnPRansac`` (its defaults) on ``p``."""
    true_rot = quat_to_matrix(p.pose[:, 3:].double()).numpy()
    errors = []
    for i in range(p.x3d.shape[0]):
        ok, rvec, _, _ = cv2.solvePnPRansac(p.x3d[i].double().numpy(), p.x2d[i].double().numpy(),
                                             p.cam_mats[i].double().numpy(), None)
        assert ok
        rot, _ = cv2.Rodrigues(rvec)
        cos = (np.trace(rot.T @ true_rot[i]) - 1.0) / 2.0
        errors.append(math.degrees(math.acos(min(1.0, max(-1.0, cos)))))
    return torch.tensor(errors, dtype=torch.float64)


def test_the_default_cost_fails_on_gross_outliers() -> None:
    """The paper's cost (documented default): outliers inflate the adaptive Huber threshold and
    pull the optimum, so many fits end far off and almost all of them report success (a few
    end DEGENERATE, e.g. dragged to the camera); robust mode exists for this input."""
    p, _ = _outlier_set(64)
    sol = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
    err = _rotation_error_deg(sol.pose, p.pose)
    failed = err > 5
    assert failed.float().mean() > 0.2
    reported_success = sol.status[failed] <= SolveStatus.MAX_ITERATIONS
    assert reported_success.float().mean() >= 0.9


def test_robust_mode_on_twenty_percent_outliers() -> None:
    """At most 1 % failures (> 5 deg), median rotation error within 1.1x OpenCV's
    solvePnPRansac on the same problems, the outliers found."""
    p, truth = _outlier_set(128)
    sol = solve_pnp_robust(p.x3d, p.x2d, p.w2d, p.cam_mats)
    err = _rotation_error_deg(sol.pose, p.pose)
    assert (err > 5).float().mean() <= 0.01
    assert err.median() <= 1.1 * _ransac_rotation_error_deg(p).median()
    assert (sol.status <= SolveStatus.MAX_ITERATIONS).all()
    # The inliers are the clean points: the fraction is 0.8 and the masks agree.
    torch.testing.assert_close(sol.inlier_fraction.median(), torch.tensor(0.8), atol=0.01, rtol=0)
    agree = (sol.inliers == truth).float().mean(-1)
    assert agree.median() >= 0.99
    assert torch.isfinite(sol.covariance).all()


def test_robust_mode_on_learned_weights() -> None:
    """Correspondences as a dense network gives them: most points (background cells) carry a
    weight near zero and fit any pose; a fifth of the weighted ones are gross outliers.  The
    subsets are drawn and the scale is measured by weight, so robust mode finds the pose; with
    every point counted alike, the near-zero ones would make the median scale vanish."""
    p, truth = _outlier_set(64, seed=3)
    g = _gen(7)
    background = torch.rand(p.x2d.shape[:2], generator=g) < 0.7  # (B, N)
    w = torch.where(background, 1e-4, 1.0)[..., None] * torch.rand(
        p.x2d.shape[:2] + (1,), generator=g).add_(0.5)
    p = p._replace(w2d=p.w2d * w)
    sol = solve_pnp_robust(p.x3d, p.x2d, p.w2d, p.cam_mats)
    err = _rotation_error_deg(sol.pose, p.pose)
    assert (err > 5).float().mean() <= 0.02, err.sort().values[-5:]
    assert err.median() < 1.0
    # The inlier mass: the clean points' share of all the weight (about 0.8; an outlier that
    # happens to land near its true projection counts as an inlier).
    mass = p.w2d.sum(-1)
    gap = (sol.inlier_fraction - (mass * truth).sum(-1) / mass.sum(-1)).abs()
    assert gap.median() <= 0.01 and gap.max() <= 0.05, gap.max()


def test_robust_mode_on_outliers_4dof() -> None:
    p, _ = _outlier_set(128, dof=4, seed=1)
    default = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, dof=4)
    sol = solve_pnp_robust(p.x3d, p.x2d, p.w2d, p.cam_mats, dof=4)
    assert (_yaw_error_deg(default.pose, p.pose) > 5).float().mean() > 0.1
    assert (_yaw_error_deg(sol.pose, p.pose) > 5).float().mean() <= 0.01
    assert sol.inlier_fraction.median() == pytest.approx(0.8, abs=0.01)


def test_robust_mode_on_clean_data_matches_the_default() -> None:
    """Without outliers the robust fit keeps every inlier that matters: median rotation and
    translation errors within 2 % of the default solve's, inlier fractions near 1."""
    p = random_problems(512, 128, noise_std=1.0, generator=_gen(7))
    default = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
    sol = solve_pnp_robust(p.x3d, p.x2d, p.w2d, p.cam_mats)
    rot_d = _rotation_error_deg(default.pose, p.pose).median()
    rot_r = _rotation_error_deg(sol.pose, p.pose).median()
    tr_d = (default.pose[:, :3] - p.pose[:, :3]).norm(dim=-1).median()
    tr_r = (sol.pose[:, :3] - p.pose[:, :3]).norm(dim=-1).median()
    assert rot_r <= 1.02 * rot_d and tr_r <= 1.02 * tr_d
    assert sol.inlier_fraction.mean() > 0.995 and sol.inlier_fraction.min() > 0.95
    # The robust scale estimates the pixel noise (weights 1 / sigma: scale 1).
    assert sol.scale.median().item() == pytest.approx(1.0, abs=0.05)


def test_robust_mode_is_seeded_and_batched_consistently() -> None:
    p, _ = _outlier_set(16, seed=2)
    a = solve_pnp_robust(p.x3d, p.x2d, p.w2d, p.cam_mats)
    b = solve_pnp_robust(p.x3d, p.x2d, p.w2d, p.cam_mats)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, equal_nan=True)
    c = solve_pnp_robust(p.x3d, p.x2d, p.w2d, p.cam_mats, generator=_gen(5))
    assert (_rotation_error_deg(c.pose, p.pose) < 5).all()


def test_robust_mode_masks_bad_elements_and_zero_weights() -> None:
    p, _ = _outlier_set(8, seed=3)
    x2d, w2d = p.x2d.clone(), p.w2d.clone()
    x2d[2, 5, 0] = float("nan")
    w2d[4, :64] = 0.0  # half of the points switched off: the fraction counts the others
    sol = solve_pnp_robust(p.x3d, x2d, w2d, p.cam_mats)
    assert sol.status[2] == SolveStatus.INVALID_INPUT and torch.isnan(sol.inlier_fraction[2])
    assert not sol.inliers[2].any() and not sol.inliers[4, :64].any()
    ok = torch.arange(8) != 2
    assert (_rotation_error_deg(sol.pose[ok], p.pose[ok]) < 5).all()
    assert 0.6 < float(sol.inlier_fraction[4]) <= 1.0


def test_layer_solve_robust() -> None:
    p, _ = _outlier_set(8, seed=4)
    layer = EProPnP6DoF()
    plain = layer.solve(p.x3d, p.x2d, p.w2d, p.cam_mats)
    robust = layer.solve(p.x3d, p.x2d, p.w2d, p.cam_mats, robust=True)
    custom = layer.solve(p.x3d, p.x2d, p.w2d, p.cam_mats,
                         robust=RobustConfig(num_hypotheses=48), generator=_gen(1))
    assert isinstance(plain, PnPSolution) and isinstance(robust, RobustPnPSolution)
    assert (_rotation_error_deg(robust.pose, p.pose) < 5).all()
    assert (_rotation_error_deg(custom.pose, p.pose) < 5).all()
    # The robust solution feeds the posterior sampler like a plain one.
    samples = layer.posterior_samples(p.x3d, p.x2d, p.w2d * robust.inliers[..., None],
                                      p.cam_mats, 16, _gen(0), solution=robust.solution())
    assert samples.shape == (16, 8, 7) and torch.isfinite(samples).all()
    four, _ = _outlier_set(8, dof=4, seed=5)
    sol4 = EProPnP4DoF().solve(four.x3d, four.x2d, four.w2d, four.cam_mats, robust=True)
    assert (_yaw_error_deg(sol4.pose, four.pose) < 5).all()


@pytest.mark.parametrize(
    "kwargs",
    [{"num_hypotheses": 0}, {"subset_size": 0}, {"refine_rounds": 0},
     {"hypothesis_iterations": -1}, {"inlier_sigmas": 0.0}, {"inlier_sigmas": math.nan},
     {"confidence": 1.0}, {"num_hypotheses": 32, "max_hypotheses": 16}],
)
def test_robust_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RobustConfig(**kwargs)  # type: ignore[arg-type]
