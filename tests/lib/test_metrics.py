"""Tests of epropnp_lib.metrics: ADD(-S), n° n cm, summaries, covariance calibration."""

from __future__ import annotations

import math

import pytest
import torch

from epropnp_lib import metrics
from epropnp_lib.data.bop import LINEMOD_SYMMETRIC
from epropnp_lib.errors import ConfigError, DTypeError, ShapeError
from epropnp_lib.generators.object_meshes import make_object
from epropnp_lib.geometry.camera import transform_points
from epropnp_lib.geometry.pose import Pose4DoF, Pose6DoF
from epropnp_lib.geometry.rotations import (
    matrix_to_quat,
    quat_exp,
    quat_multiply,
    quat_normalize,
    quat_to_matrix,
)
from epropnp_lib.geometry.symmetry import symmetry_transforms
from epropnp_lib.pnp.cost import NO_KERNEL
from epropnp_lib.pnp.problems import random_problems
from epropnp_lib.pnp.solver import SolverConfig, SolveStatus, solve_pnp

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]


def _poses(batch: int, g: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    q = quat_normalize(torch.randn(batch, 4, generator=g, dtype=torch.float64))
    t = torch.rand(batch, 3, generator=g, dtype=torch.float64) * 0.2 - 0.1
    t[:, 2] += 0.8
    return torch.cat((t, q), dim=-1).to(dtype)


def _points(m: int, g: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return ((torch.rand(m, 3, generator=g, dtype=torch.float64) - 0.5) * 0.1).to(dtype)


def _perturb(pose: torch.Tensor, g: torch.Generator, rot: float, trans: float) -> torch.Tensor:
    """Rotation increment ~ rot rad (left, camera axes) and translation ~ trans metres."""
    phi = torch.randn(pose.shape[0], 3, generator=g, dtype=torch.float64).to(pose) * rot
    dt = torch.randn(pose.shape[0], 3, generator=g, dtype=torch.float64).to(pose) * trans
    return Pose6DoF.retract(pose, torch.cat((dt, phi), dim=-1))


def _symmetric_box(dtype: torch.dtype) -> torch.Tensor:
    """Points of an 'eggbox': a box closed under the 180° rotation about its z axis."""
    g = torch.Generator().manual_seed(3)
    half = (torch.rand(200, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor(
        [0.12, 0.07, 0.05], dtype=torch.float64)
    flipped = half * torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)
    return torch.cat((half, flipped)).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ground_truth_is_100_percent(device: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    pose = _poses(16, g, dtype).to(device)
    pts = _points(500, g, dtype).to(device)
    for sym in (False, True):
        m = metrics.summarize(pose, pose, pts, diameter=0.17, symmetric=sym)
        assert m.count == 16
        for name in ("add_002", "add_005", "add_01", "deg2", "cm2", "deg2_cm2", "deg5_cm5"):
            assert getattr(m, name) == 100.0, name
        assert m.add_mean == 100.0
        assert m.median_rotation_deg < 0.05
        assert m.median_translation_cm == 0.0
    assert bool(metrics.add_accuracy(pose, pose, pts, 0.17, threshold=0.02).all())
    assert metrics.add_distance(pose, pose, pts).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_flip_of_symmetric_object_passes_adds_and_fails_add(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    pose = _poses(8, g, dtype)
    pts = _symmetric_box(dtype)
    diameter = float(torch.cdist(pts.double(), pts.double()).max())
    flip = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype).expand(8, 4)  # 180° about object z
    flipped = torch.cat((pose[:, :3], quat_multiply(pose[:, 3:], flip)), dim=-1)
    assert torch.allclose(metrics.rotation_error_deg(flipped, pose),
                          torch.full((8,), 180.0, dtype=dtype), atol=1e-3)
    for k in metrics.ADD_THRESHOLDS:
        assert bool(metrics.add_accuracy(flipped, pose, pts, diameter, k, symmetric=True).all())
        assert not bool(metrics.add_accuracy(flipped, pose, pts, diameter, k).any())
    # Per-element flags: only the symmetric elements pass.
    sym = torch.tensor([True, False] * 4)
    acc = metrics.add_accuracy(flipped, pose, pts, diameter, 0.1, symmetric=sym)
    assert torch.equal(acc, sym)
    assert metrics.adds_distance(flipped, pose, pts).max() < 1e-5


def test_linemod_symmetric_objects() -> None:
    assert LINEMOD_SYMMETRIC == ("eggbox", "glue")
    assert metrics.ADD_THRESHOLDS == (0.02, 0.05, 0.1)


def test_golden_values_of_a_seeded_perturbation() -> None:
    g = torch.Generator().manual_seed(2026)
    pose = _poses(64, g)
    pts = _points(300, g)
    pred = _perturb(pose, g, rot=math.radians(1.5), trans=0.006)
    add = metrics.add_distance(pred, pose, pts)
    adds = metrics.adds_distance(pred, pose, pts)
    assert add.mean().item() == pytest.approx(GOLDEN["add_mean"], rel=1e-9)
    assert adds.mean().item() == pytest.approx(GOLDEN["adds_mean"], rel=1e-9)
    assert metrics.rotation_error_deg(pred, pose).mean().item() == pytest.approx(
        GOLDEN["rot_mean"], rel=1e-9)
    m = metrics.summarize(pred, pose, pts, diameter=0.17)
    got = m.to_dict()
    for key, want in GOLDEN_SUMMARY.items():
        assert got[key] == pytest.approx(want, rel=1e-9, abs=1e-9), key
    ms = metrics.summarize(pred, pose, pts, diameter=0.17, symmetric=True)
    assert ms.add_002 >= m.add_002 and ms.add_01 >= m.add_01
    assert ms.add_005 == pytest.approx(GOLDEN["adds_005"])
    assert ms.add_01 == 100.0


# Provenance: this module's output at seed 2026 (64 poses, 300 points, 1.5 deg / 6 mm
# perturbations), pinned so that any change of the metrics shows.
GOLDEN = {
    "add_mean": 0.009937653201394746,
    "adds_mean": 0.007476871253552074,
    "rot_mean": 2.431188360099762,
    "adds_005": 65.625,
}
GOLDEN_SUMMARY = {
    "count": 64, "add_002": 3.125, "add_005": 35.9375, "add_01": 93.75, "deg2": 42.1875,
    "cm2": 96.875, "deg2_cm2": 40.625, "deg5_cm5": 96.875,
    "median_rotation_deg": 2.14960408980468, "median_translation_cm": 0.9423724794247937,
    "median_add_d": 0.056061316604636875, "add_mean": 44.270833333333336,
}


@pytest.mark.parametrize("dtype", DTYPES)
def test_invariances(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    pose = _poses(32, g, dtype)
    pts = _points(400, g, dtype)
    pred = _perturb(pose, g, rot=0.3, trans=0.02)
    add = metrics.add_distance(pred, pose, pts)
    adds = metrics.adds_distance(pred, pose, pts)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert bool((adds <= add + tol).all())
    assert bool((adds > 0).all())
    # ADD equals the direct definition with transformed points.
    direct = (transform_points(pts, quat_to_matrix(pred[:, 3:]), pred[:, :3])
              - transform_points(pts, quat_to_matrix(pose[:, 3:]), pose[:, :3])).norm(dim=-1)
    torch.testing.assert_close(add, direct.mean(-1), rtol=1e-4, atol=1e-6)
    # ADD is symmetric in its arguments; the rotation and translation errors too.
    torch.testing.assert_close(metrics.add_distance(pose, pred, pts), add)
    torch.testing.assert_close(metrics.rotation_error_deg(pose, pred),
                               metrics.rotation_error_deg(pred, pose))
    torch.testing.assert_close(metrics.translation_error(pose, pred),
                               metrics.translation_error(pred, pose))
    # q and -q are the same rotation.
    neg = torch.cat((pred[:, :3], -pred[:, 3:]), dim=-1)
    torch.testing.assert_close(metrics.rotation_error_deg(neg, pose),
                               metrics.rotation_error_deg(pred, pose))
    torch.testing.assert_close(metrics.add_distance(neg, pose, pts), add)
    # Per-batch points (B, M, 3) give the same result as shared points (M, 3).
    torch.testing.assert_close(metrics.adds_distance(pred, pose, pts.expand(32, 400, 3)), adds)


def test_adds_chunking_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(6)
    pose = _poses(3, g)
    pts = _points(257, g)
    pred = _perturb(pose, g, rot=0.5, trans=0.05)
    a = transform_points(pts, quat_to_matrix(pose[:, 3:]), pose[:, :3])
    b = transform_points(pts, quat_to_matrix(pred[:, 3:]), pred[:, :3])
    brute = (a[:, :, None] - b[:, None]).norm(dim=-1).amin(-1).mean(-1)
    monkeypatch.setattr(metrics, "_ADDS_BLOCK", 3 * 257 * 10)  # chunks of 10 points, ragged end
    torch.testing.assert_close(metrics.adds_distance(pred, pose, pts), brute)


def test_adds_of_5000_points_is_chunked() -> None:
    g = torch.Generator().manual_seed(7)
    pose = _poses(2, g, torch.float32)
    pts = _points(5000, g, torch.float32)
    d = metrics.adds_distance(pose, pose, pts)
    assert d.shape == (2,)
    assert bool((d < 1e-6).all())


def test_n_deg_n_cm_thresholds() -> None:
    pose = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]] * 4, dtype=torch.float64)
    angles = torch.tensor([1.0, 3.0, 1.0, 6.0], dtype=torch.float64)
    shifts = torch.tensor([0.01, 0.01, 0.03, 0.01], dtype=torch.float64)
    phi = torch.zeros(4, 3, dtype=torch.float64)
    phi[:, 0] = torch.deg2rad(angles)
    dt = torch.zeros(4, 3, dtype=torch.float64)
    dt[:, 1] = shifts
    pred = Pose6DoF.retract(pose, torch.cat((dt, phi), dim=-1))
    torch.testing.assert_close(metrics.rotation_error_deg(pred, pose), angles)
    torch.testing.assert_close(metrics.translation_error(pred, pose), shifts)
    assert metrics.n_deg_n_cm(pred, pose, 2, 2).tolist() == [True, False, False, False]
    assert metrics.n_deg_n_cm(pred, pose, 5, 5).tolist() == [True, True, True, False]
    m = metrics.summarize(pred, pose, torch.zeros(1, 3, dtype=torch.float64), 0.1)
    assert (m.deg2, m.cm2, m.deg2_cm2, m.deg5_cm5) == (50.0, 75.0, 25.0, 75.0)


def test_add_threshold_is_strict() -> None:
    pose = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    pts = torch.tensor([[0.05, 0.0, 0.0]], dtype=torch.float64)
    pred = pose.clone()
    pred[0, 0] += 0.25  # exactly representable: ADD == 0.5 * 0.5
    assert metrics.add_distance(pred, pose, pts).item() == 0.25
    assert not bool(metrics.add_accuracy(pred, pose, pts, diameter=0.5, threshold=0.5))
    assert bool(metrics.add_accuracy(pred, pose, pts, diameter=0.5000001, threshold=0.5))
    diam = torch.tensor([0.5], dtype=torch.float64)
    assert metrics.pose_errors(pred, pose, pts, diam).diameter.tolist() == [0.5]


def test_summaries_combine() -> None:
    g = torch.Generator().manual_seed(8)
    pose = _poses(20, g)
    pts = _points(100, g)
    pred = _perturb(pose, g, rot=math.radians(2.0), trans=0.01)
    e1 = metrics.pose_errors(pred[:10], pose[:10], pts, 0.17)
    e2 = metrics.pose_errors(pred[10:], pose[10:], pts, 0.17)
    whole = metrics.summarize(pred, pose, pts, 0.17)
    assert metrics.summarize_errors(metrics.PoseErrors.cat([e1, e2])) == whole
    a, b = metrics.summarize_errors(e1), metrics.summarize_errors(e2)
    mean = metrics.mean_over_objects({"ape": a, "cat": b})
    assert mean.count == 20
    assert mean.add_01 == pytest.approx((a.add_01 + b.add_01) / 2)
    assert set(mean.to_dict()) >= {"add_002", "add_005", "add_01", "add_mean", "deg5_cm5"}


def test_bad_inputs_raise_typed_errors() -> None:
    pose = torch.zeros(2, 7)
    pose[:, 3] = 1
    with pytest.raises(ShapeError, match="pose_gt"):
        metrics.add_distance(pose, pose[:1], torch.zeros(5, 3))
    with pytest.raises(ShapeError, match="points"):
        metrics.add_distance(pose, pose, torch.zeros(5, 2))
    with pytest.raises(ShapeError, match="points"):
        metrics.adds_distance(pose, pose, torch.zeros(0, 3))
    with pytest.raises(DTypeError):
        metrics.add_distance(pose, pose.double(), torch.zeros(5, 3))
    with pytest.raises(ShapeError, match="diameter"):
        metrics.add_accuracy(pose, pose, torch.zeros(5, 3), torch.ones(3))
    with pytest.raises(ShapeError, match="covariance"):
        metrics.mahalanobis_sq(pose, pose, torch.eye(4).expand(2, 4, 4))
    with pytest.raises(ShapeError):
        metrics.summarize_errors(metrics.PoseErrors(*(torch.zeros(0),) * 4))


def test_pose_delta_inverts_retract() -> None:
    g = torch.Generator().manual_seed(9)
    pose = _poses(50, g)
    delta = torch.randn(50, 6, generator=g, dtype=torch.float64) * 0.5
    gt = Pose6DoF.retract(pose, delta)
    torch.testing.assert_close(metrics.pose_delta(pose, gt), delta)
    pose4 = torch.cat((pose[:, :3], torch.rand(50, 1, generator=g, dtype=torch.float64)), -1)
    d4 = torch.randn(50, 4, generator=g, dtype=torch.float64) * 0.5
    torch.testing.assert_close(metrics.pose_delta(pose4, Pose4DoF.retract(pose4, d4)), d4)


@pytest.mark.parametrize("dof", [6, 4])
def test_mahalanobis_of_gaussian_samples_is_chi_square(dof: int) -> None:
    g = torch.Generator().manual_seed(10)
    n = 4000
    a = torch.randn(n, dof, dof, generator=g, dtype=torch.float64) * 0.05
    cov = a @ a.transpose(-1, -2) + 1e-4 * torch.eye(dof, dtype=torch.float64)
    white = torch.randn(n, dof, generator=g, dtype=torch.float64)
    delta = (torch.linalg.cholesky(cov) @ white.unsqueeze(-1)).squeeze(-1)
    if dof == 6:
        pose = _poses(n, g)
        space: type[Pose6DoF] | type[Pose4DoF] = Pose6DoF
    else:
        pose = torch.cat((_poses(n, g)[:, :3], torch.zeros(n, 1, dtype=torch.float64)), -1)
        space = Pose4DoF
    gt = space.retract(pose, delta)
    d2 = metrics.mahalanobis_sq(pose, gt, cov)
    torch.testing.assert_close(d2, (white * white).sum(-1))
    cal = metrics.calibration(d2, dof)
    assert cal.count == n
    assert cal.mean_d2 == pytest.approx(dof, rel=0.05)
    for level, frac in cal.coverage.items():
        assert frac == pytest.approx(level, abs=0.025)
    # An over-confident covariance (4x too small) has too little coverage.
    over = metrics.calibration(metrics.mahalanobis_sq(pose, gt, cov / 4), dof)
    assert over.coverage[0.9] < 0.6


def test_mahalanobis_of_laplace_covariance_is_calibrated() -> None:
    """The solver's covariance (tangent convention of solver.py) describes its actual errors."""
    g = torch.Generator().manual_seed(11)
    prob = random_problems(400, 24, noise_std=1.0, dtype=torch.float64, generator=g)
    sol = solve_pnp(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats,
                    config=SolverConfig(huber=NO_KERNEL, max_iterations=30))
    ok = sol.status == SolveStatus.CONVERGED
    assert int(ok.sum()) > 380
    d2 = metrics.mahalanobis_sq(sol.pose[ok], prob.pose[ok], sol.covariance[ok])
    cal = metrics.calibration(d2, 6)
    assert cal.mean_d2 == pytest.approx(6.0, rel=0.15)
    assert cal.coverage[0.9] == pytest.approx(0.9, abs=0.05)


def test_mahalanobis_nan_for_invalid_covariance() -> None:
    pose = torch.zeros(3, 7, dtype=torch.float64)
    pose[:, 3] = 1
    cov = torch.eye(6, dtype=torch.float64).repeat(3, 1, 1)
    cov[1, 0, 0] = math.nan
    cov[2] = 0
    d2 = metrics.mahalanobis_sq(pose, pose, cov)
    assert d2[0].item() == 0.0
    assert math.isnan(d2[1].item()) and math.isnan(d2[2].item())
    assert metrics.calibration(d2, 6).count == 1
    assert metrics.calibration(d2[1:], 6).count == 0


def test_chi2_cdf() -> None:
    x = torch.tensor([0.0, 1.0, 10.0], dtype=torch.float64)
    # chi2(2) CDF = 1 - exp(-x/2)
    torch.testing.assert_close(metrics.chi2_cdf(x, 2), 1 - torch.exp(-x / 2))


def test_chi2_quantile_inverts_the_cdf() -> None:
    # chi2(2): the quantile of mass m is -2 ln(1 - m); chi2(6) at 0.95: 12.5916 (the tabulated
    # value, e.g. scipy.stats.chi2.ppf(0.95, 6) = 12.591587...).
    assert metrics.chi2_quantile(0.9, 2) == pytest.approx(-2 * math.log(0.1), rel=1e-12)
    assert metrics.chi2_quantile(0.95, 6) == pytest.approx(12.591587, rel=1e-6)
    for mass, dof in ((0.5, 6), (0.99, 4), (0.01, 3)):
        q = torch.tensor(metrics.chi2_quantile(mass, dof), dtype=torch.float64)
        assert float(metrics.chi2_cdf(q, dof)) == pytest.approx(mass, abs=1e-12)
    with pytest.raises(ConfigError, match="mass"):
        metrics.chi2_quantile(1.0, 6)


def test_fit_temperature_undoes_a_scaled_covariance() -> None:
    """Ground truths drawn from covariances 3x wider than predicted: T = 3 puts 95 % of them
    back inside the 95 % ellipsoid; NaNs (failed estimates) are left out."""
    g = torch.Generator().manual_seed(0)
    d2 = 3.0 * torch.randn(20000, 6, generator=g, dtype=torch.float64).square().sum(-1)
    t = metrics.fit_temperature(torch.cat((d2, torch.tensor([math.nan]))), 6, 0.95)
    assert t == pytest.approx(3.0, rel=0.03)
    assert metrics.calibration(d2 / t, 6).coverage[0.95] == pytest.approx(0.95, abs=1e-3)
    with pytest.raises(ConfigError, match="finite"):
        metrics.fit_temperature(torch.tensor([math.nan], dtype=torch.float64), 6)


@pytest.mark.parametrize("name", ["eggbox", "can"])
def test_symmetry_of_the_synthetic_objects(name: str) -> None:
    """The symmetric synthetic objects (BOP generator: eggbox -> LineMOD 10, can -> 11)."""
    obj = make_object(name)
    pts = obj.vertices.double()
    pose = torch.tensor([[0.05, -0.02, 0.8, 0.9, 0.1, -0.3, 0.2]], dtype=torch.float64)
    pose = Pose6DoF.canonical(pose)

    def turned(angle: float) -> torch.Tensor:
        q = quat_multiply(pose[:, 3:], obj.symmetry_quat(angle)[None])
        return torch.cat((pose[:, :3], q), dim=-1)

    for k in metrics.ADD_THRESHOLDS:
        flip = turned(math.pi)  # a symmetry of both (2-fold and continuous about z)
        assert bool(metrics.add_accuracy(flip, pose, pts, obj.diameter, k, symmetric=True))
        assert not bool(metrics.add_accuracy(flip, pose, pts, obj.diameter, k))
    # Not a symmetry of the 2-fold eggbox: fails both at 0.1 d.
    if obj.symmetry_order == 2:
        off = turned(1.0)
        assert not bool(metrics.add_accuracy(off, pose, pts, obj.diameter, 0.1, symmetric=True))


def _equivalent(pose: torch.Tensor, rot_s: torch.Tensor, t_s: torch.Tensor) -> torch.Tensor:
    """``(B, 7)`` poses ``(R R_s, t + R t_s)`` of ``pose: (B, 7)``."""
    rot = quat_to_matrix(pose[:, 3:])
    q = matrix_to_quat(rot @ rot_s)
    return torch.cat((pose[:, :3] + (rot @ t_s[..., None])[..., 0], q), dim=1)


def test_symmetric_pose_errors_are_zero_for_an_equivalent_pose() -> None:
    g = torch.Generator().manual_seed(4)
    offset = torch.tensor([0.0, 0.01, 0.0], dtype=torch.float64)
    mats = []
    for k in (1, 2, 3):  # 4-fold about z through ``offset``: translations too
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = quat_to_matrix(quat_exp(torch.tensor([0.0, 0.0, k * math.pi / 2],
                                                         dtype=torch.float64)))
        m[:3, 3] = offset - m[:3, :3] @ offset
        mats.append(m)
    sym = symmetry_transforms(torch.stack(mats))
    gt = torch.cat((torch.randn(6, 3, generator=g, dtype=torch.float64),
                    quat_normalize(torch.randn(6, 4, generator=g, dtype=torch.float64))), 1)
    for s in range(sym.num):
        pred = _equivalent(gt, sym.rotations[s], sym.translations[s])
        rot, trans = metrics.symmetric_pose_errors(pred, gt, sym)
        assert float(rot.max()) < 1e-5 and float(trans.max()) < 1e-9
        if s:
            assert float(metrics.rotation_error_deg(pred, gt).min()) > 89.0
        errs = metrics.pose_errors(pred, gt, torch.zeros(1, 3, dtype=torch.float64), 0.1, True,
                                   symmetries=sym)
        assert float(errs.rotation_deg.max()) < 1e-5
    # a perturbed prediction: the error against the closest equivalent, not more
    noise = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.02, 0.0, 0.0], dtype=torch.float64)
    pred = _equivalent(gt, sym.rotations[2], sym.translations[2]) + noise
    pred[:, 3:] = quat_normalize(pred[:, 3:])
    rot, trans = metrics.symmetric_pose_errors(pred, gt, sym)
    plain = metrics.rotation_error_deg(pred, _equivalent(gt, sym.rotations[2],
                                                         sym.translations[2]))
    torch.testing.assert_close(rot, plain)
    assert float(trans.max()) < 1e-9
    # the identity alone: the plain errors
    one = symmetry_transforms()
    rot, trans = metrics.symmetric_pose_errors(pred, gt, one)
    torch.testing.assert_close(rot, metrics.rotation_error_deg(pred, gt))
    torch.testing.assert_close(trans, metrics.translation_error(pred, gt))


def test_symmetric_pose_errors_of_a_continuous_symmetry() -> None:
    g = torch.Generator().manual_seed(5)
    sym = symmetry_transforms(continuous=[((0.0, 0.0, 1.0), (0.0, 0.0, 0.0))],
                              num_continuous=360)
    gt = torch.cat((torch.randn(8, 3, generator=g, dtype=torch.float64),
                    quat_normalize(torch.randn(8, 4, generator=g, dtype=torch.float64))), 1)
    angles = torch.rand(8, generator=g, dtype=torch.float64) * 2 * math.pi
    rot_s = quat_to_matrix(quat_exp(angles[:, None] * torch.tensor([0.0, 0.0, 1.0],
                                                                     dtype=torch.float64)))
    pred = _equivalent(gt, rot_s, torch.zeros(8, 3, dtype=torch.float64))
    rot, _ = metrics.symmetric_pose_errors(pred, gt, sym)
    assert float(rot.max()) <= 0.5 + 1e-6
