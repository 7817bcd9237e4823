"""The fused CPU kernels (epropnp_lib.native) against the tensor code they replace: the 6DoF and
4DoF initialisations, the cost's normal equations and the orientation proposal's fit give the
same numbers (float64: to round-off; float32: the kernels sum in float64, the tensor code in
float32), the whole solve ends on the same poses with the same statuses, and every case the
kernels do not cover falls back to the tensor code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from epropnp_lib import native
from epropnp_lib.conventions import MIN_DEPTH
from epropnp_lib.distributions.angular_central_gaussian import AngularCentralGaussian
from epropnp_lib.geometry.pose import Pose4DoF, Pose6DoF, PoseSpace
from epropnp_lib.pnp.cost import HuberConfig, PointSet, augmented_normal_matrix, point_terms
from epropnp_lib.pnp.init import PLANARITY_RATIO, init_4dof, init_6dof
from epropnp_lib.pnp.problems import PnPProblem, random_problems
from epropnp_lib.pnp.solver import SolveStatus, solve_pnp


def _problems(batch: int, points: int, dtype: torch.dtype, seed: int, flatness: float = 1.0,
              noise: float = 1.0, dof: int = 6) -> PnPProblem:
    """Random problems with uneven per-axis weights and a skewed camera with fx != fy (every
    entry of the kernels' formulas non-trivial)."""
    gen = torch.Generator().manual_seed(seed)
    p = random_problems(batch, points, dof=dof, noise_std=noise, flatness=flatness, dtype=dtype,
                        generator=gen)
    w2d = 0.2 + torch.rand(p.w2d.shape, generator=gen, dtype=dtype)
    cam = p.cam_mats.clone()
    cam[:, 0, 1] = 3.0
    cam[:, 1, 1] *= 1.1
    # Re-project with the new camera so that the points stay consistent with the pose.
    space: type[PoseSpace] = Pose6DoF if dof == 6 else Pose4DoF
    cam_pts = p.x3d @ space.rotation(p.pose).mT + p.pose[:, None, :3]
    pix = cam_pts @ cam.mT
    x2d = pix[..., :2] / pix[..., 2:] + noise * torch.randn(p.x2d.shape, generator=gen,
                                                            dtype=dtype)
    return PnPProblem(p.x3d, x2d, w2d, cam, p.pose)


def test_the_kernels_are_built() -> None:
    """The package's set-up compiles the extension (a silent fallback would hide a broken
    build behind slower solves)."""
    assert native.built(), "epropnp_lib._native was not built (run `make setup`)"
    assert native.enabled()


@pytest.mark.parametrize(("points", "flatness"),
                         [(64, 1.0), (64, 0.3), (64, 0.0), (512, 0.05), (6, 1.0), (5, 1.0),
                          (4, 0.0)])
def test_init_matches_the_tensor_code_float64(points: int, flatness: float) -> None:
    """General, flat, coplanar and minimal point sets: the same candidates (both of them where
    the homography is needed) to round-off.  Below 6 points the DLT is undetermined (its
    candidate is whatever the round-off makes of a singular system: the solver starts such
    problems from P3P) and only the homography candidate is compared."""
    p = _problems(48, points, torch.float64, seed=points, flatness=flatness)
    fused = init_6dof(p.x3d, p.x2d, p.w2d, p.cam_mats)
    with native.native_kernels(False):
        tensor = init_6dof(p.x3d, p.x2d, p.w2d, p.cam_mats)
    assert fused.shape == tensor.shape
    if points < 6:
        fused, tensor = fused[1:], tensor[1:]
    torch.testing.assert_close(fused, tensor, rtol=1e-7, atol=1e-8)


def test_init_matches_the_tensor_code_float32() -> None:
    """float32: the kernel's float64 moments differ from the tensor code's float32 ones by
    round-off, far below the 1 px noise's effect on the pose."""
    p = _problems(64, 64, torch.float32, seed=3)
    fused = init_6dof(p.x3d, p.x2d, p.w2d, p.cam_mats)
    with native.native_kernels(False):
        tensor = init_6dof(p.x3d, p.x2d, p.w2d, p.cam_mats)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, tensor, rtol=1e-3, atol=1e-3)


def test_init_outputs_of_the_kernel() -> None:
    """The planarity flag follows ``det S > ratio ||S||_F^3``, and the normal matrix and centre
    are those the homography candidate is refined with."""
    flat = _problems(8, 32, torch.float64, seed=4, flatness=0.0)
    cube = _problems(8, 32, torch.float64, seed=5)
    for p, need in ((flat, True), (cube, False)):
        out = native.init_6dof_native(p.x3d, p.x2d, p.w2d, p.cam_mats, PLANARITY_RATIO)
        assert out is not None
        assert out.need_homography.tolist() == [need] * 8
        w = p.w2d.sum(-1) ** 2
        centre = (p.x3d * w[..., None]).sum(1) / w.sum(1, keepdim=True)
        torch.testing.assert_close(out.centre, centre, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.ata, out.ata.mT, rtol=0, atol=0)


@pytest.mark.parametrize("dof", [6, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", [True, False])
def test_state_matches_the_tensor_code(dof: int, dtype: torch.dtype, kernel: bool) -> None:
    """Cost, augmented normal matrix and depths at poses off the optimum, with and without the
    Huber kernel, including points behind the camera (clamped depth, zero depth derivative)."""
    space: type[PoseSpace] = Pose6DoF if dof == 6 else Pose4DoF
    p = _problems(16, 40, dtype, seed=6, dof=dof)
    noise = torch.randn(p.pose.shape, dtype=dtype, generator=torch.Generator().manual_seed(7))
    pose = space.canonical(p.pose + 0.05 * noise)
    pose[0, 2] = -3.0  # the whole object (within 1.8 of its origin) behind the camera
    pose[1, 2] = 0.3  # partly behind
    delta = HuberConfig().threshold(p.x2d, p.w2d) if kernel else None
    pts = PointSet.from_tensors(p.x3d, p.x2d, p.w2d, p.cam_mats, delta)
    fused = native.state_native(dof, pose, pts.x, pts.wk, pts.wc, pts.delta, MIN_DEPTH)
    assert fused is not None
    terms = point_terms(space, pose, pts, with_jacobian=True)
    assert terms.rows is not None
    normal = augmented_normal_matrix(terms.rows, terms.robust_weight)
    assert fused.normal.shape == normal.shape == (16, dof + 1, dof + 1)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    scale = normal.abs().amax((-2, -1), keepdim=True)
    torch.testing.assert_close(fused.normal / scale, normal / scale, rtol=tol, atol=tol)
    torch.testing.assert_close(fused.cost, terms.half_rho.sum(-1), rtol=tol, atol=tol)
    torch.testing.assert_close(fused.depth, terms.depth, rtol=tol, atol=tol)
    assert bool((terms.depth[0] < 0).all()) and bool((terms.depth[1] < MIN_DEPTH).any())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_init_4dof_matches_the_tensor_code(dtype: torch.dtype) -> None:
    """The 4DoF linear initialisation, noisy and noise-free (then exact)."""
    for noise in (1.0, 0.0):
        p = _problems(64, 32, dtype, seed=11, noise=noise, dof=4)
        fused = init_4dof(p.x3d, p.x2d, p.w2d, p.cam_mats)
        with native.native_kernels(False):
            tensor = init_4dof(p.x3d, p.x2d, p.w2d, p.cam_mats)
        assert fused.shape == tensor.shape == (1, 64, 4) and fused.dtype == dtype
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(fused, tensor, rtol=tol, atol=tol)
        if noise == 0.0 and dtype == torch.float64:
            torch.testing.assert_close(fused[0], p.pose, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("dof", [6, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_solve_with_and_without_the_kernels(dof: int, dtype: torch.dtype) -> None:
    """The whole solve, with a poisoned element and a degenerate one among ordinary problems:
    the same statuses and iterations, the same poses (to the dtype's round-off), and the
    poisoned element leaves the others alone."""
    p = _problems(32, 48, dtype, seed=8, dof=dof)
    x3d, x2d, w2d = p.x3d.clone(), p.x2d.clone(), p.w2d.clone()
    x2d[3, 5, 0] = float("nan")  # invalid input
    w2d[7] = 0.0  # no weight at all: degenerate
    fused = solve_pnp(x3d, x2d, w2d, p.cam_mats, dof=dof)
    with native.native_kernels(False):
        tensor = solve_pnp(x3d, x2d, w2d, p.cam_mats, dof=dof)
    assert fused.status[3] == SolveStatus.INVALID_INPUT
    assert fused.status[7] == SolveStatus.DEGENERATE
    assert fused.status.tolist() == tensor.status.tolist()
    ok = fused.status <= SolveStatus.MAX_ITERATIONS
    tol = 1e-8 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(fused.pose[ok], tensor.pose[ok], rtol=tol, atol=tol)
    assert (fused.iterations[ok] - tensor.iterations[ok]).abs().max() <= (
        0 if dtype == torch.float64 else 1)
    alone = solve_pnp(p.x3d[:3], p.x2d[:3], p.w2d[:3], p.cam_mats[:3], dof=dof)
    torch.testing.assert_close(fused.pose[:3], alone.pose, rtol=0, atol=0)


def test_cases_the_kernels_leave_to_the_tensor_code() -> None:
    """No kernel for tensors that need gradients, other dtypes, mixed dtypes or when turned
    off; the callers then run the tensor code."""
    p = _problems(4, 16, torch.float32, seed=9)
    args = (p.x3d, p.x2d, p.w2d, p.cam_mats, PLANARITY_RATIO)
    assert native.init_6dof_native(*args) is not None
    assert native.init_6dof_native(p.x3d.half(), p.x2d.half(), p.w2d.half(), p.cam_mats.half(),
                                   PLANARITY_RATIO) is None
    assert native.init_6dof_native(p.x3d.double(), *args[1:]) is None
    with native.native_kernels(False):
        assert native.init_6dof_native(*args) is None
    assert native.init_4dof_native(p.x3d.double(), *args[1:4]) is None
    pts = PointSet.from_tensors(p.x3d, p.x2d, p.w2d, p.cam_mats, None)
    pose = p.pose.clone().requires_grad_()
    assert native.state_native(6, pose, pts.x, pts.wk, pts.wc, None, MIN_DEPTH) is None
    assert native.state_native(6, p.pose[None], pts.x, pts.wk, pts.wc, None,
                               MIN_DEPTH) is None  # (K, B, 7): several poses per problem
    assert native.state_native(4, p.pose, pts.x, pts.wk, pts.wc, None,
                               MIN_DEPTH) is None  # a 6DoF pose given as 4DoF


def test_empty_batch() -> None:
    """An empty batch gives empty results without calling into C."""
    x3d = torch.zeros(0, 8, 3)
    out = native.init_6dof_native(x3d, torch.zeros(0, 8, 2), torch.ones(0, 8, 2),
                                  torch.zeros(0, 3, 3), PLANARITY_RATIO)
    assert out is not None and out.pose.shape == (0, 7) and out.ata.shape == (0, 12, 12)


def test_environment_variable_turns_the_kernels_off() -> None:
    code = "from epropnp_lib import native; print(native.built(), native.enabled())"
    env = dict(os.environ, **{native.ENV_VAR: "0"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "False"]


@pytest.mark.parametrize("num_iter", [10, 0])
@pytest.mark.parametrize("samples", [128, 7])
def test_acg_fit_matches_the_tensor_code(num_iter: int, samples: int) -> None:
    """Tyler's fit of the orientation proposal: concentrated, diffuse, collapsed-weight and
    NaN-sample elements give the tensor code's factor (Lambda has trace 4, so its factor's
    entries are O(1); Tyler's iteration carries the float64 round-off of the two paths along,
    most with few samples: up to ~5e-7 at 7)."""
    gen = torch.Generator().manual_seed(12)
    base = torch.nn.functional.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64),
                                         dim=-1)
    x = base + 0.05 * torch.randn(samples, 6, 4, generator=gen, dtype=torch.float64)
    x[:, 0] = torch.randn(samples, 4, generator=gen, dtype=torch.float64)  # diffuse
    x[1, 2] = float("nan")  # one invalid sample
    x[:, 3] = base[3]  # all samples equal: a rank-1 moment, regularised by eps
    log_w = 3.0 * torch.randn(samples, 6, generator=gen, dtype=torch.float64)
    log_w[:, 4] = float("-inf")  # no weight at all: uniform fallback
    log_w[:, 5] = 0.0
    log_w[0, 5] = 50.0  # one sample carries all the weight
    for dtype in (torch.float64, torch.float32):
        fused = AngularCentralGaussian.fit(x.to(dtype), log_w.to(dtype), num_iter=num_iter)
        with native.native_kernels(False):
            tensor = AngularCentralGaussian.fit(x.to(dtype), log_w.to(dtype), num_iter=num_iter)
        assert fused.scale_tril.dtype == tensor.scale_tril.dtype == torch.float64
        torch.testing.assert_close(fused.scale_tril, tensor.scale_tril, rtol=1e-6, atol=1e-6)
        q = torch.nn.functional.normalize(torch.randn(5, 6, 4, generator=gen, dtype=dtype),
                                          dim=-1)
        # (element 5's proposal is as sharp as eps allows: its densities amplify round-off)
        torch.testing.assert_close(fused.log_prob(q), tensor.log_prob(q), rtol=1e-4, atol=1e-5)


def test_acg_fit_batch_shapes() -> None:
    """Batch shapes beyond one dimension are flattened and restored; no kernel for inputs that
    are not (K, *batch, 4) float64 CPU tensors."""
    gen = torch.Generator().manual_seed(13)
    x = torch.nn.functional.normalize(torch.randn(16, 2, 3, 4, generator=gen,
                                                  dtype=torch.float64), dim=-1)
    w = torch.full((16, 2, 3), 1.0 / 16, dtype=torch.float64)
    out = native.acg_fit_native(x, w, 5, 1e-12)
    assert out is not None and out.shape == (2, 3, 4, 4)
    alone = native.acg_fit_native(x[:, 1, 2], w[:, 1, 2], 5, 1e-12)
    assert alone is not None
    torch.testing.assert_close(out[1, 2], alone, rtol=0, atol=0)
    assert native.acg_fit_native(x.float(), w.float(), 5, 1e-12) is None
    assert native.acg_fit_native(x[..., :3], w, 5, 1e-12) is None


def test_a_stale_extension_is_not_used() -> None:
    """An extension built from older sources (an entry point missing) is ignored with a
    warning, and the tensor code runs."""
    code = (
        "import sys, types, warnings\n"
        "fake = types.ModuleType('epropnp_lib._native')\n"
        "fake.__file__ = 'stale.so'\n"
        "fake.init6 = fake.state = lambda *args: None\n"
        "sys.modules['epropnp_lib._native'] = fake\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from epropnp_lib import native\n"
        "print(native.built(), any('stale' in str(w.message) for w in caught))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True"]
