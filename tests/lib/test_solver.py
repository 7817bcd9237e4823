"""The batched LM solver: exact recovery, parity with OpenCV, calibration, bad input."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy import stats

from epropnp_lib.errors import DegenerateInputError, DeviceError, DTypeError, ShapeError
from epropnp_lib.geometry.camera import project, transform_points
from epropnp_lib.geometry.pose import Pose4DoF, Pose6DoF
from epropnp_lib.geometry.rotations import quat_log, quat_multiply, quat_to_matrix
from epropnp_lib.pnp.cost import HuberConfig
from epropnp_lib.pnp.covariance import from_ros_covariance, to_ros_covariance
from epropnp_lib.pnp.problems import random_problems
from epropnp_lib.pnp.solver import SolverConfig, SolverMode, SolveStatus, solve_pnp


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("num_points", [4, 5, 6, 8, 64, 1024])
@pytest.mark.parametrize("flatness", [1.0, 1e-3, 0.0])
@pytest.mark.parametrize("dof", [6, 4])
def test_noise_free_recovery_float64(num_points: int, flatness: float, dof: int) -> None:
    p = random_problems(
        64, num_points, dof=dof, flatness=flatness, dtype=torch.float64, generator=_gen(num_points)
    )
    sol = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, dof=dof)
    space = Pose6DoF if dof == 6 else Pose4DoF
    rot_err = torch.rad2deg(space.rotation_error(sol.pose, p.pose))
    rel_t = (sol.pose[:, :3] - p.pose[:, :3]).norm(dim=-1) / p.pose[:, :3].norm(dim=-1)
    assert rot_err.max() < 1e-3
    assert rel_t.max() < 1e-5
    assert (sol.status == SolveStatus.CONVERGED).all()


def test_gauss_newton_mode_and_given_initial_pose() -> None:
    p = random_problems(32, 32, noise_std=0.5, dtype=torch.float64, generator=_gen(1))
    lm = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
    gn = solve_pnp(
        p.x3d, p.x2d, p.w2d, p.cam_mats, config=SolverConfig(mode=SolverMode.GAUSS_NEWTON)
    )
    assert torch.allclose(lm.pose, gn.pose, atol=1e-5)
    # Starting from a perturbed truth converges to the same optimum.
    init = Pose6DoF.retract(
        p.pose, 0.05 * torch.randn(32, 6, generator=_gen(2), dtype=torch.float64)
    )
    warm = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, pose_init=init)
    assert torch.allclose(lm.pose, warm.pose, atol=1e-5)


def _rotation_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> float:
    c = (np.trace(rot_a.T @ rot_b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def test_noisy_accuracy_matches_opencv_iterative() -> None:
    p = random_problems(500, 32, noise_std=1.0, dtype=torch.float32, generator=_gen(3))
    ones = torch.ones_like(p.w2d)
    sol = solve_pnp(p.x3d, p.x2d, ones, p.cam_mats)
    assert (sol.status == SolveStatus.CONVERGED).all()
    ours_r = torch.rad2deg(Pose6DoF.rotation_error(sol.pose.double(), p.pose.double())).numpy()
    ours_t = (sol.pose[:, :3] - p.pose[:, :3]).double().norm(dim=-1).numpy()
    cv_r, cv_t = [], []
    true_rot = quat_to_matrix(p.pose[:, 3:].double()).numpy()
    for i in range(500):
        ok, rvec, tvec = cv2.solvePnP(
            p.x3d[i].double().numpy(),
            p.x2d[i].double().numpy(),
            p.cam_mats[i].double().numpy(),
            None,
            flags=cv2.SOLVEPNP_ITERATIVE,
        )
        assert ok
        cv_r.append(_rotation_deg(cv2.Rodrigues(rvec)[0], true_rot[i]))
        cv_t.append(np.linalg.norm(tvec.ravel() - p.pose[i, :3].double().numpy()))
    ratio_r = np.median(ours_r) / np.median(cv_r)
    ratio_t = np.median(ours_t) / np.median(cv_t)
    assert abs(ratio_r - 1) < 0.05, ratio_r
    assert abs(ratio_t - 1) < 0.05, ratio_t


def _tangent_error(est: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """``(B, 6)`` left-tangent error: est = Exp(phi) * true."""
    conj = true[:, 3:] * true.new_tensor([1.0, -1.0, -1.0, -1.0])
    phi = quat_log(quat_multiply(est[:, 3:], conj))
    return torch.cat((est[:, :3] - true[:, :3], phi), dim=-1)


@pytest.mark.parametrize("dof", [6, 4])
def test_laplace_covariance_is_calibrated(dof: int) -> None:
    sigma = 2.0
    p = random_problems(
        1000, 16, dof=dof, noise_std=sigma, dtype=torch.float64, generator=_gen(4 + dof)
    )
    sol = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, dof=dof)
    assert (sol.status == SolveStatus.CONVERGED).all()
    if dof == 6:
        err = _tangent_error(sol.pose, p.pose)
    else:
        err = sol.pose - p.pose
        err[:, 3] = torch.remainder(err[:, 3] + torch.pi, 2 * torch.pi) - torch.pi
    maha = (err[:, None, :] @ torch.linalg.solve(sol.covariance, err[..., None]))[:, 0, 0]
    assert abs(maha.mean().item() - dof) < 0.1 * dof, maha.mean().item()


def test_ros_covariance_layout_round_trip() -> None:
    a = torch.randn(5, 6, 6, generator=_gen(8), dtype=torch.float64)
    cov6 = a @ a.mT
    ros6 = to_ros_covariance(cov6)
    assert ros6.shape == (5, 36)
    assert torch.equal(from_ros_covariance(ros6, 6), cov6)
    b = torch.randn(5, 4, 4, generator=_gen(9), dtype=torch.float64)
    cov4 = b @ b.mT
    ros4 = to_ros_covariance(cov4).unflatten(-1, (6, 6))
    assert torch.equal(ros4[:, 4, 4], cov4[:, 3, 3])  # yaw is rotation about y (index 4)
    assert torch.equal(ros4[:, 0, 4], cov4[:, 0, 3])
    assert (ros4[:, 3, 3] > 1e5).all() and (ros4[:, 5, 5] > 1e5).all()
    assert torch.linalg.eigvalsh(ros4).min() > 0  # positive definite, never zero variances
    assert torch.equal(from_ros_covariance(ros4.flatten(-2), 4), cov4)
    with pytest.raises(ShapeError):
        to_ros_covariance(torch.zeros(3, 5, 5))


def test_boundary_errors() -> None:
    p = random_problems(2, 8, generator=_gen(10))
    with pytest.raises(DegenerateInputError):
        solve_pnp(p.x3d[:, :3], p.x2d[:, :3], p.w2d[:, :3], p.cam_mats)
    with pytest.raises(DegenerateInputError):
        solve_pnp(p.x3d[:, :2], p.x2d[:, :2], p.w2d[:, :2], p.cam_mats, dof=4)
    with pytest.raises(ShapeError):
        solve_pnp(p.x3d, p.x2d[:, :7], p.w2d, p.cam_mats)
    with pytest.raises(ShapeError):
        solve_pnp(p.x3d[..., :2], p.x2d, p.w2d, p.cam_mats)
    with pytest.raises(ShapeError):
        solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats[:1])
    with pytest.raises(DTypeError):
        solve_pnp(p.x3d.double(), p.x2d, p.w2d, p.cam_mats)
    with pytest.raises(DTypeError):
        solve_pnp(p.x3d.int(), p.x2d, p.w2d, p.cam_mats)
    # Mixed devices: "meta" tensors stand in for a second device on a CPU-only machine.
    with pytest.raises(DeviceError):
        solve_pnp(p.x3d.to("meta"), p.x2d, p.w2d, p.cam_mats)
    if torch.cuda.is_available():
        with pytest.raises(DeviceError):
            solve_pnp(p.x3d.cuda(), p.x2d, p.w2d, p.cam_mats)
    with pytest.raises(ShapeError):
        solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, pose_init=torch.zeros(2, 4))


def _bad_batch(kind: str) -> tuple[torch.Tensor, ...]:
    p = random_problems(512, 16, noise_std=0.5, generator=_gen(11))
    x3d, x2d, w2d, k = (t.clone() for t in (p.x3d, p.x2d, p.w2d, p.cam_mats))
    i = 137
    if kind == "nan_x2d":
        x2d[i, 3, 0] = float("nan")
    elif kind == "inf_x3d":
        x3d[i, 0, 2] = float("inf")
    elif kind == "nan_cam":
        k[i, 0, 0] = float("nan")
    elif kind == "bad_cam":
        k[i, 2] = torch.tensor([0.0, 1.0, 1.0])
    elif kind == "negative_weight":
        w2d[i, 5, 1] = -1.0
    elif kind == "inf_weight":
        w2d[i, 5, 0] = float("inf")
    elif kind == "nan_weight":
        w2d[i, 2, 1] = float("nan")
    elif kind == "zero_weights":
        w2d[i] = 0.0
    elif kind == "collinear":
        s = torch.linspace(-1, 1, 16)
        x3d[i] = torch.stack((s, 0.5 * s, 0.2 * s), -1)
        # project the line with the true pose so the data are consistent but degenerate
        rot = Pose6DoF.rotation(p.pose[i : i + 1])
        x_cam = transform_points(x3d[i : i + 1], rot, p.pose[i : i + 1, :3])
        x2d[i] = project(x_cam, k[i : i + 1]).x2d[0]
    return x3d, x2d, w2d, k, p.pose


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("nan_x2d", SolveStatus.INVALID_INPUT),
        ("inf_x3d", SolveStatus.INVALID_INPUT),
        ("nan_cam", SolveStatus.INVALID_INPUT),
        ("bad_cam", SolveStatus.INVALID_INPUT),
        ("negative_weight", SolveStatus.INVALID_INPUT),
        ("inf_weight", SolveStatus.INVALID_INPUT),
        ("nan_weight", SolveStatus.INVALID_INPUT),
        ("zero_weights", SolveStatus.DEGENERATE),
        ("collinear", SolveStatus.DEGENERATE),
    ],
)
def test_one_bad_element_in_512(kind: str, expected: SolveStatus) -> None:
    x3d, x2d, w2d, k, pose = _bad_batch(kind)
    sol = solve_pnp(x3d, x2d, w2d, k)
    i = 137
    assert sol.status[i] == expected
    assert torch.isnan(sol.covariance[i]).all()
    if expected == SolveStatus.INVALID_INPUT:
        assert torch.isnan(sol.pose[i]).all()
    others = torch.arange(512) != i
    assert (sol.status[others] == SolveStatus.CONVERGED).all()
    assert torch.isfinite(sol.covariance[others]).all()
    rot_err = torch.rad2deg(Pose6DoF.rotation_error(sol.pose[others], pose[others]))
    assert rot_err.max() < 2.0
    # The good elements are solved as well as without the bad one (same optimum; batched
    # float32 products may round differently for another batch size, so not bit for bit).
    alone = solve_pnp(x3d[others], x2d[others], w2d[others], k[others])
    assert torch.allclose(alone.cost, sol.cost[others], rtol=1e-4)
    assert torch.allclose(alone.pose, sol.pose[others], atol=1e-3)


def test_solver_config_rejects_bad_values() -> None:
    from epropnp_lib.errors import ConfigError

    with pytest.raises(ConfigError):
        SolverConfig(max_iterations=-1)
    with pytest.raises(ConfigError):
        SolverConfig(tolerance=0.0)
    with pytest.raises(TypeError):
        SolverConfig(unknown_key=1)  # type: ignore[call-arg]


def test_initial_pose_behind_camera() -> None:
    """An initial pose that puts every point behind the camera: the element either recovers
    (all points in front, exact pose) or is reported DEGENERATE; the others are unaffected."""
    p = random_problems(64, 16, dtype=torch.float64, generator=_gen(12))
    init = p.pose.clone()
    init[5, 2] = -init[5, 2]
    sol = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, pose_init=init)
    rot_err = torch.rad2deg(Pose6DoF.rotation_error(sol.pose, p.pose))
    others = torch.arange(64) != 5
    assert (sol.status[others] == SolveStatus.CONVERGED).all()
    assert rot_err[others].max() < 1e-6
    if sol.status[5] != SolveStatus.DEGENERATE:
        x_cam = transform_points(p.x3d[5], Pose6DoF.rotation(sol.pose[5]), sol.pose[5, :3])
        assert (x_cam[:, 2] > 0).all()
        assert rot_err[5] < 1e-6


def test_laplace_covariance_survives_non_finite_hessians() -> None:
    from epropnp_lib.pnp.solver import laplace_covariance

    a = torch.randn(4, 6, 6, generator=_gen(13), dtype=torch.float64)
    hess = a @ a.mT + torch.eye(6, dtype=torch.float64)
    hess[1, 2, 3] = float("nan")
    hess[2, 0, 0] = float("inf")
    cov, degenerate = laplace_covariance(hess, 1e-10)
    assert degenerate.tolist() == [False, True, True, False]
    assert torch.isnan(cov[1:3]).all()
    assert torch.allclose(cov[[0, 3]], torch.linalg.inv(hess[[0, 3]]))


@pytest.mark.parametrize("value", [1e30, -1e30, 1e-30])
def test_extreme_finite_values_in_one_element_never_abort_the_batch(value: float) -> None:
    p = random_problems(64, 16, noise_std=0.5, generator=_gen(14))
    x2d, x3d = p.x2d.clone(), p.x3d.clone()
    x2d[9] = value
    x3d[9, :4] = value
    sol = solve_pnp(x3d, x2d, p.w2d, p.cam_mats)
    others = torch.arange(64) != 9
    assert (sol.status[others] == SolveStatus.CONVERGED).all()
    assert torch.isfinite(sol.pose[others]).all()
    if sol.status[9] != SolveStatus.DEGENERATE:  # if it claims success, its numbers are finite
        assert torch.isfinite(sol.pose[9]).all() and torch.isfinite(sol.covariance[9]).all()


def test_solver_outputs_and_cached_constants_work_under_autograd(monkeypatch) -> None:
    """The solve runs in inference mode; neither its outputs nor the rotation constants it
    caches on first use may be inference tensors, or autograd code that meets them later
    fails ("Inference tensors cannot be saved for backward")."""
    from epropnp_lib import tensor_constants

    monkeypatch.setattr(tensor_constants, "_COPIES", {})  # first use happens inside the solve
    p = random_problems(4, 16, noise_std=1.0, generator=torch.Generator().manual_seed(0))
    sol = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
    assert not any(t.is_inference() for t in sol)
    copies = tensor_constants._COPIES.values()
    assert copies and not any(c.is_inference() for c in copies)
    q = p.pose[:, 3:].clone().requires_grad_(True)
    (quat_multiply(q, sol.pose[:, 3:]).sum() + (q * sol.cost[:, None]).sum()).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_adaptive_huber_threshold_is_eq_12() -> None:
    """delta = relative_delta * mean(w2d) * sqrt(var_x(x2d) + var_y(x2d)) (supplementary
    Eq. 12), by hand: the corners of a 2 px square have unbiased variances 4/3 per axis, the
    weights average 2, so delta = 0.5 * 2 * sqrt(8/3)."""
    x2d = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]], dtype=torch.float64)
    w2d = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [2.0, 2.0]]], dtype=torch.float64)
    delta = HuberConfig().threshold(x2d, w2d)
    assert delta is not None
    assert delta.item() == pytest.approx(0.5 * 2.0 * math.sqrt(8.0 / 3.0), rel=1e-12)
    # Scaling the weights scales the threshold (the weighted residuals scale alike).
    scaled = HuberConfig().threshold(x2d, 3.0 * w2d)
    assert scaled is not None and scaled.item() == pytest.approx(3.0 * delta.item(), rel=1e-12)


def test_most_weight_behind_the_camera_is_degenerate() -> None:
    """A pose that puts most of the weight behind the camera is DEGENERATE even where the
    points in front give a well-conditioned Hessian; a minority behind is not."""
    p = random_problems(2, 64, dtype=torch.float64, generator=_gen(21))
    w2d = p.w2d.clone()
    # Object-frame depth along the camera axis at the true pose: the camera sees the object's
    # points at depth t_z + (R x)_z. Shift the pose so that the plane z_cam = 0 cuts the object.
    rot = Pose6DoF.rotation(p.pose)
    depth_obj = (p.x3d @ rot.transpose(-1, -2))[..., 2]  # (B, N): (R x)_z
    pose = p.pose.clone()
    pose[:, 2] = -depth_obj.median(dim=-1).values  # half of the points at or behind the camera
    behind = depth_obj + pose[:, 2:3] <= 0
    w2d[0][behind[0]] *= 4.0  # element 0: most weight behind; element 1: a minority
    w2d[1][~behind[1]] *= 4.0
    cfg = SolverConfig(max_iterations=0)
    sol = solve_pnp(p.x3d, p.x2d, w2d, p.cam_mats, pose_init=pose, config=cfg)
    assert sol.status[0] == SolveStatus.DEGENERATE
    assert sol.status[1] == SolveStatus.MAX_ITERATIONS


@pytest.mark.parametrize(("dof", "flatness"), [(6, 1.0), (6, 0.0), (6, 0.02), (4, 1.0)])
def test_laplace_covariance_matches_the_chi_square_law(dof: int, flatness: float) -> None:
    """The squared Mahalanobis distance of the truth follows chi-square with ``dof`` degrees of
    freedom as a whole distribution (coverage at 50/90/95/99 % and the Kolmogorov-Smirnov
    statistic), also for planar and near-planar points where the cross terms of the covariance
    matter (a covariance without them fails here)."""


    p = random_problems(2000, 16, dof=dof, noise_std=1.5, flatness=flatness,
                        dtype=torch.float64, generator=_gen(30 + dof))
    sol = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, dof=dof)
    ok = sol.status == SolveStatus.CONVERGED
    assert ok.float().mean() > 0.99
    if dof == 6:
        err = _tangent_error(sol.pose, p.pose)
    else:
        err = sol.pose - p.pose
        err[:, 3] = torch.remainder(err[:, 3] + torch.pi, 2 * torch.pi) - torch.pi

    def mahalanobis_sq(cov: torch.Tensor) -> np.ndarray:
        m = (err[:, None, :] @ torch.linalg.solve(cov, err[..., None]))[:, 0, 0]
        return m[ok].numpy()

    maha = mahalanobis_sq(sol.covariance)
    for level in (0.5, 0.9, 0.95, 0.99):
        coverage = float((maha <= stats.chi2.ppf(level, dof)).mean())
        assert abs(coverage - level) < 0.03, (level, coverage)
    assert stats.kstest(maha, stats.chi2(dof).cdf).statistic < 0.05
    if flatness < 1.0:
        diagonal = torch.diag_embed(sol.covariance.diagonal(dim1=-2, dim2=-1))
        assert stats.kstest(mahalanobis_sq(diagonal), stats.chi2(dof).cdf).statistic > 0.07


@pytest.mark.parametrize("dof", [6, 4])
def test_tempered_likelihood_keeps_the_pose_and_scales_the_covariance(dof: int) -> None:
    """exp(-cost / T): the weights scaled by T^-1/2 give cost / T at every pose (the adaptive
    threshold scales with the weights), the same optimum and T x the covariance, which
    temper_solution gives without solving again."""
    from epropnp_lib.errors import ConfigError
    from epropnp_lib.pnp.cost import evaluate_cost, tempered_weights
    from epropnp_lib.pnp.solver import temper_solution

    p = random_problems(16, 32, dof=dof, noise_std=2.0, dtype=torch.float64, generator=_gen(9))
    space = Pose6DoF if dof == 6 else Pose4DoF
    t = 3.5
    w_hot = tempered_weights(p.w2d, t)
    probe = space.retract(p.pose, 0.02 * torch.randn(16, space.tangent_dim, generator=_gen(3),
                                                     dtype=torch.float64))
    huber = HuberConfig()
    cold_cost = evaluate_cost(space, probe, p.x3d, p.x2d, p.w2d, p.cam_mats,
                              huber.threshold(p.x2d, p.w2d)).cost
    hot_cost = evaluate_cost(space, probe, p.x3d, p.x2d, w_hot, p.cam_mats,
                             huber.threshold(p.x2d, w_hot)).cost
    torch.testing.assert_close(hot_cost, cold_cost / t, rtol=1e-12, atol=0.0)
    cold = solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, dof=dof)
    hot = solve_pnp(p.x3d, p.x2d, w_hot, p.cam_mats, dof=dof)
    assert (hot.status == cold.status).all()
    torch.testing.assert_close(hot.pose, cold.pose, rtol=0.0, atol=1e-7)
    tempered = temper_solution(cold, t)
    torch.testing.assert_close(tempered.covariance, hot.covariance, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(tempered.cost, hot.cost, rtol=1e-6, atol=0.0)
    assert torch.equal(tempered.pose, cold.pose) and torch.equal(tempered.status, cold.status)
    assert temper_solution(cold, 1.0) is cold and tempered_weights(p.w2d, 1.0) is p.w2d
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match="temperature"):
            tempered_weights(p.w2d, bad)
        with pytest.raises(ConfigError, match="temperature"):
            temper_solution(cold, bad)
