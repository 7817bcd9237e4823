"""Tests of epropnp_lib.distributions: normalisation, sampling vs density, fitting, seeding.

Statistical tests use fixed seeds, so they are deterministic; their tolerances are several
standard errors (or KS p-values > 1e-3) so that a correct implementation passes for any seed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.stats as st
import torch
from scipy.special import i0e, i1e

from epropnp_lib.distributions import (
    AngularCentralGaussian,
    MultivariateT,
    VonMisesUniformMix,
    a1_inverse,
)
from epropnp_lib.distributions._common import chi_square, standard_gamma
from epropnp_lib.errors import DeviceError, DTypeError, ShapeError

F64 = torch.float64


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_tril(n: int, batch: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    g = gen(seed)
    a = torch.randn(batch, n, n, generator=g, dtype=dtype)
    cov = a @ a.transpose(-1, -2) + 0.5 * torch.eye(n, dtype=dtype)
    return torch.linalg.cholesky(cov)


def random_rotation(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen(seed), dtype=F64))
    return q


def acg_tril(eigs: list[float], seed: int) -> torch.Tensor:
    rot = random_rotation(4, seed)
    lam = rot @ torch.diag(torch.tensor(eigs, dtype=F64)) @ rot.T
    return torch.linalg.cholesky(lam)


def normalised(lam: torch.Tensor) -> torch.Tensor:
    return 4.0 * lam / lam.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]


def uniform_s3(num: int, seed: int) -> torch.Tensor:
    z = torch.randn(num, 4, generator=gen(seed), dtype=F64)
    return z / z.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Gamma sampler
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.2, 0.7, 1.0, 2.5, 30.0])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_standard_gamma_matches_scipy(alpha: float, dtype: torch.dtype) -> None:
    a = torch.full((20000,), alpha, dtype=dtype)
    x = standard_gamma(a, gen(1))
    assert x.dtype == dtype and bool((x > 0).all())
    assert st.kstest(x.double().numpy(), st.gamma(alpha).cdf).pvalue > 1e-3


@pytest.mark.parametrize("dfs", [(3.0,), (2.5,), (1.0, 4.0), (20.0,)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_chi_square_matches_scipy(dfs: tuple[float, ...], dtype: torch.dtype) -> None:
    """Both paths (sum of squared normals: 3, mixed 1 and 4; gamma: 2.5, 20 beyond the sum's
    range) draw chi2(df); the same generator state gives the same draws."""
    df = torch.tensor(dfs, dtype=dtype).repeat(20000 // len(dfs)).view(-1, len(dfs))
    x = chi_square(df, gen(2))
    assert x.dtype == dtype and bool((x > 0).all())
    assert torch.equal(x, chi_square(df, gen(2)))
    for j, v in enumerate(dfs):
        assert st.kstest(x[:, j].double().numpy(), st.chi2(v).cdf).pvalue > 1e-3


# --------------------------------------------------------------------------------------------
# Multivariate t
# --------------------------------------------------------------------------------------------


def t_params(batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    loc = torch.randn(batch, 3, generator=gen(seed), dtype=F64) * 2.0
    return loc, random_tril(3, batch, seed + 1)


def test_t_log_prob_matches_scipy() -> None:
    loc, tril = t_params()
    df = torch.tensor([1.5, 3.0, 7.0], dtype=F64)
    d = MultivariateT(loc, tril, df)
    x = torch.randn(50, 3, 3, generator=gen(2), dtype=F64) * 3.0
    lp = d.log_prob(x)
    assert lp.shape == (50, 3)
    for b in range(3):
        ref = st.multivariate_t(
            loc[b].numpy(), (tril[b] @ tril[b].T).numpy(), df=float(df[b])
        ).logpdf(x[:, b].numpy())
        np.testing.assert_allclose(lp[:, b].numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("df", [2.5, 3.0, 10.0])
def test_t_integrates_to_one_radially(df: float) -> None:
    """Whitening x = loc + L r u maps dx to |L| r^2 dr du; p must not depend on the direction
    u (checked), and the radial integral over [0, inf) (r = tan(theta), Gauss-Legendre in
    theta) of p |L| 4 pi r^2 must be 1 to 1e-8."""
    loc, tril = t_params(batch=2, seed=5)
    d = MultivariateT(loc, tril, df)
    nodes, weights = np.polynomial.legendre.leggauss(400)
    theta = torch.tensor((nodes + 1.0) * math.pi / 4.0, dtype=F64)
    wq = torch.tensor(weights * math.pi / 4.0, dtype=F64)
    r = torch.tan(theta)
    dirs = uniform_s3(7, 3)[:, :3]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    # x: (n_theta, n_dir, B, 3)
    x = loc + torch.einsum("bij,nj->nbi", tril, dirs)[None] * r[:, None, None, None]
    lp = d.log_prob(x)
    torch.testing.assert_close(lp, lp[:, :1].expand_as(lp), rtol=1e-11, atol=1e-11)
    det = tril.diagonal(dim1=-2, dim2=-1).prod(-1)
    integrand = lp[:, 0].exp() * det * 4.0 * math.pi * (r**2 / torch.cos(theta) ** 2)[:, None]
    total = (wq[:, None] * integrand).sum(0)
    torch.testing.assert_close(total, torch.ones(2, dtype=F64), rtol=0, atol=1e-8)


def test_t_sample_covariance_and_mean_df5() -> None:
    loc, tril = t_params(batch=2, seed=7)
    df = 5.0
    d = MultivariateT(loc, tril, df)
    x = d.sample(100000, gen(8))
    assert x.shape == (100000, 2, 3) and x.dtype == F64
    cov_true = df / (df - 2.0) * tril @ tril.transpose(-1, -2)
    mean = x.mean(0)
    dev = x - mean
    cov = torch.einsum("kbi,kbj->bij", dev, dev) / x.shape[0]
    scale = cov_true.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((mean - loc).abs() / scale).max() < 0.02
    rel = (cov - cov_true).norm(dim=(-2, -1)) / cov_true.norm(dim=(-2, -1))
    assert rel.max() < 0.05


@pytest.mark.parametrize("df", [1.5, 3.0, 5.0])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_t_mahalanobis_follows_f_distribution(df: float, dtype: torch.dtype) -> None:
    """(x - loc)^T Sigma^-1 (x - loc) / 3 ~ F(3, df) for x ~ t_df(loc, Sigma)."""
    loc, tril = t_params(batch=2, seed=11)
    d = MultivariateT(loc.to(dtype), tril.to(dtype), df)
    x = d.sample(20000, gen(12))
    assert x.dtype == dtype
    z = torch.linalg.solve_triangular(
        tril.expand(20000, 2, 3, 3), (x.double() - loc).unsqueeze(-1), upper=False
    )
    m = z.squeeze(-1).square().sum(-1) / 3.0
    for b in range(2):
        assert st.kstest(m[:, b].numpy(), st.f(3, df).cdf).pvalue > 1e-3


def test_t_fit_equal_weights_recovers_parameters() -> None:
    loc, tril = t_params(batch=2, seed=13)
    df = 6.0
    x = MultivariateT(loc, tril, df).sample(100000, gen(14))
    fitted = MultivariateT.fit(x, torch.zeros(x.shape[:2], dtype=F64), df)
    sigma = tril @ tril.transpose(-1, -2)
    sigma_fit = fitted.scale_tril @ fitted.scale_tril.transpose(-1, -2)
    assert (sigma_fit - sigma).norm(dim=(-2, -1)).max() / sigma.norm(dim=(-2, -1)).min() < 0.04
    assert ((fitted.loc - loc).abs() / sigma.diagonal(dim1=-2, dim2=-1).sqrt()).max() < 0.02
    # without moment matching the scale is the sample covariance itself
    wide = MultivariateT.fit(x, torch.zeros(x.shape[:2], dtype=F64), df, moment_match=False)
    torch.testing.assert_close(
        wide.scale_tril @ wide.scale_tril.mT, sigma_fit * df / (df - 2.0), rtol=1e-5, atol=1e-8
    )


def test_t_fit_importance_weights_recovers_target() -> None:
    loc, tril = t_params(batch=2, seed=15)
    target = MultivariateT(loc, tril, 5.0)
    proposal = MultivariateT(loc + 0.3 * tril[..., 0], 2.0 * tril, 3.0)
    x = proposal.sample(150000, gen(16))
    logw = target.log_prob(x) - proposal.log_prob(x)
    fitted = MultivariateT.fit(x, logw + 1000.0, 5.0)  # offset: softmax is shift invariant
    sigma = tril @ tril.mT
    sigma_fit = fitted.scale_tril @ fitted.scale_tril.mT
    assert ((sigma_fit - sigma).norm(dim=(-2, -1)) / sigma.norm(dim=(-2, -1))).max() < 0.08
    assert ((fitted.loc - loc).abs() / sigma.diagonal(dim1=-2, dim2=-1).sqrt()).max() < 0.03


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_t_fit_degenerate_inputs_never_raise(dtype: torch.dtype) -> None:
    k, b = 16, 5
    x = torch.randn(k, b, 3, generator=gen(17), dtype=dtype)
    logw = torch.randn(k, b, generator=gen(18), dtype=dtype)
    x[:, 0] = 1.0  # all samples identical -> zero covariance
    logw[:, 1] = float("-inf")  # all weights zero -> uniform fallback
    logw[:, 2] = -1e30
    logw[3, 2] = 0.0  # all weight on one sample
    x[2, 3] = float("nan")  # a non-finite sample gets zero weight
    logw[5, 3] = float("nan")  # a NaN weight is zero weight
    x[:, 4, 2] = 0.0  # rank-deficient covariance
    fitted = MultivariateT.fit(x, logw)
    assert fitted.scale_tril.dtype == dtype
    assert bool(torch.isfinite(fitted.scale_tril).all()) and bool(torch.isfinite(fitted.loc).all())
    assert bool((fitted.scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all())
    torch.testing.assert_close(fitted.loc[2], x[3, 2])
    torch.testing.assert_close(fitted.loc[1], x[:, 1].mean(0))
    assert bool(torch.isfinite(fitted.log_prob(x.nan_to_num())).all())
    assert bool(torch.isfinite(fitted.sample(8, gen(0))).all())


def test_from_scale_matrix_handles_indefinite() -> None:
    scale = torch.stack([torch.eye(3), -torch.eye(3), torch.full((3, 3), float("nan"))])
    d = MultivariateT.from_scale_matrix(torch.zeros(3, 3), scale)
    assert bool(torch.isfinite(d.scale_tril).all())
    torch.testing.assert_close(d.scale_tril[0], torch.eye(3), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Von Mises + uniform
# --------------------------------------------------------------------------------------------

KAPPAS = [0.0, 0.01, 1.0, 50.0, 1000.0, 1e5]


@pytest.mark.parametrize("u", [0.0, 0.25, 1.0])
def test_vm_log_prob_matches_scipy(u: float) -> None:
    loc = torch.tensor([3.0, -1.0, 0.5, 2.0, -3.1], dtype=F64)
    kappa = torch.tensor([0.01, 1.0, 50.0, 1000.0, 3.0], dtype=F64)
    d = VonMisesUniformMix(loc, kappa, u)
    x = (torch.rand(40, 5, 1, generator=gen(3), dtype=F64) * 2 - 1) * math.pi
    x[0] = loc[:, None] + 1e-3
    lp = d.log_prob(x)
    assert lp.shape == (40, 5)
    for b in range(5):
        log_vm = st.vonmises(float(kappa[b]), loc=float(loc[b])).logpdf(x[:, b, 0].numpy())
        with np.errstate(divide="ignore"):
            ref = np.logaddexp(np.log1p(-u) + log_vm, np.log(u / (2 * math.pi)))
        np.testing.assert_allclose(lp[:, b].numpy(), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("u", [0.0, 0.25])
def test_vm_integrates_to_one(u: float) -> None:
    """Periodic trapezoid rule on 2^16 points (spectrally accurate for these widths)."""
    n = 2**16
    x = torch.arange(n, dtype=F64) * (2 * math.pi / n) - math.pi
    kappa = torch.tensor(KAPPAS, dtype=F64)
    loc = torch.linspace(-3.1, 3.1, len(KAPPAS), dtype=F64)
    d = VonMisesUniformMix(loc, kappa, u)
    total = d.log_prob(x[:, None, None]).exp().sum(0) * (2 * math.pi / n)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kappa", [0.01, 1.0, 50.0, 1000.0])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_vm_samples_ks_against_cdf(kappa: float, dtype: torch.dtype) -> None:
    loc = torch.tensor([3.1, -3.13, 0.3], dtype=dtype)  # near +-pi: exercises the wrap
    u = torch.tensor([0.0, 0.25, 0.5], dtype=dtype)
    d = VonMisesUniformMix(loc, torch.full((3,), kappa, dtype=dtype), u)
    n = 10000
    x = d.sample(n, gen(21))
    assert x.shape == (n, 3, 1) and x.dtype == dtype
    pi = torch.tensor(math.pi, dtype=dtype)
    assert bool((x >= -pi).all()) and bool((x < pi).all())
    wrapped = torch.remainder(x.double().squeeze(-1) - loc.double() + math.pi, 2 * math.pi)
    centred = (wrapped - math.pi).numpy()
    for b in range(3):
        ub = float(u[b])

        def cdf(t: np.ndarray, ub: float = ub) -> np.ndarray:
            return (1 - ub) * st.vonmises(kappa).cdf(t) + ub * (t + math.pi) / (2 * math.pi)

        assert st.kstest(centred[:, b], cdf).pvalue > 1e-3
        # first trigonometric moment E cos(x - loc) = (1 - u) A1(kappa)
        a1 = (1 - ub) * i1e(kappa) / i0e(kappa)
        assert abs(np.cos(centred[:, b]).mean() - a1) < 5 * 0.71 / math.sqrt(n)


def test_a1_inverse_accuracy() -> None:
    ks = np.logspace(-5, 5, 101)
    r = torch.tensor(i1e(ks) / i0e(ks), dtype=F64)
    np.testing.assert_allclose(a1_inverse(r).numpy(), ks, rtol=1e-7)
    np.testing.assert_allclose(a1_inverse(torch.zeros(1)).numpy(), [0.0], atol=1e-10)


@pytest.mark.parametrize("kappa", [0.5, 5.0, 100.0])
def test_vm_fit_equal_weights_recovers_parameters(kappa: float) -> None:
    loc = torch.tensor([3.0, -2.0], dtype=F64)
    n = 40000
    x = VonMisesUniformMix(loc, torch.full((2,), kappa, dtype=F64), 0.0).sample(n, gen(31))
    fitted = VonMisesUniformMix.fit(x, torch.zeros(n, 2, dtype=F64), uniform_mix=0.1)
    torch.testing.assert_close(fitted.uniform_mix, torch.full((2,), 0.1, dtype=F64))
    err = torch.remainder(fitted.loc - loc + math.pi, 2 * math.pi) - math.pi
    assert err.abs().max() < 5.0 / math.sqrt(n * kappa * 0.5)
    assert ((fitted.kappa - kappa).abs() / kappa).max() < 0.06


def test_vm_fit_importance_weights_and_options() -> None:
    target = VonMisesUniformMix(torch.tensor([2.5, -0.5]), torch.tensor([8.0, 1.5]), 0.0)
    proposal = VonMisesUniformMix(torch.zeros(2), torch.zeros(2), 1.0)  # uniform
    x = proposal.sample(100000, gen(32))
    logw = target.log_prob(x) - proposal.log_prob(x)
    fitted = VonMisesUniformMix.fit(x, logw)
    assert fitted.kappa.dtype == torch.float32
    torch.testing.assert_close(fitted.loc, target.loc, rtol=0, atol=0.02)
    torch.testing.assert_close(fitted.kappa, target.kappa, rtol=0.04, atol=0)
    scaled = VonMisesUniformMix.fit(x, logw, kappa_scale=0.33, kappa_max=2.0)
    torch.testing.assert_close(scaled.kappa, torch.minimum(0.33 * fitted.kappa, torch.tensor(2.0)))
    # collapsed weights -> kappa_max, never NaN
    logw_c = torch.full_like(logw, float("-inf"))
    logw_c[0] = 0.0
    collapsed = VonMisesUniformMix.fit(x, logw_c, kappa_max=1e6)
    torch.testing.assert_close(collapsed.kappa, torch.full((2,), 1e6))
    # by default as concentrated as A1^-1 resolves (R = 1 - 1e-12): ~5e10
    sharpest = VonMisesUniformMix.fit(x, logw_c).kappa
    assert bool(torch.isfinite(sharpest).all()) and float(sharpest.min()) > 1e10
    torch.testing.assert_close(collapsed.loc, x[0, :, 0])


# --------------------------------------------------------------------------------------------
# Angular central Gaussian
# --------------------------------------------------------------------------------------------


def test_acg_log_prob_formula_and_symmetries() -> None:
    tril = random_tril(4, 3, 41)
    d = AngularCentralGaussian(tril)
    x = torch.randn(20, 3, 4, generator=gen(42), dtype=F64)
    x = x / x.norm(dim=-1, keepdim=True)
    lam = tril @ tril.mT
    m = torch.einsum("kbi,bij,kbj->kb", x, torch.linalg.inv(lam), x)
    ref = -0.5 * torch.logdet(lam) - 2.0 * torch.log(m) - math.log(2 * math.pi**2)
    torch.testing.assert_close(d.log_prob(x), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.log_prob(-x), ref, rtol=1e-12, atol=1e-12)  # antipodal
    torch.testing.assert_close(d.log_prob(3.0 * x), ref, rtol=1e-12, atol=1e-12)  # projected
    scaled = AngularCentralGaussian(7.0 * tril)  # scale invariance of Lambda
    torch.testing.assert_close(scaled.log_prob(x), ref, rtol=1e-12, atol=1e-12)
    uniform = AngularCentralGaussian(torch.eye(4, dtype=F64).expand(3, 4, 4))
    torch.testing.assert_close(
        uniform.log_prob(x), torch.full((20, 3), -math.log(2 * math.pi**2), dtype=F64)
    )


def test_acg_integrates_to_one_monte_carlo() -> None:
    """Mildly anisotropic Lambda: E_uniform[2 pi^2 p(x)] = 1, checked to 5 standard errors."""
    d = AngularCentralGaussian(acg_tril([4.0, 2.0, 1.0, 0.5], 43))
    x = uniform_s3(400000, 44)
    v = d.log_prob(x[:, None]).exp().squeeze(1) * (2 * math.pi**2)
    se = v.std() / math.sqrt(v.numel())
    assert abs(v.mean() - 1.0) < 5 * se
    assert se < 0.01


def test_acg_integrates_to_one_quadrature() -> None:
    """Anisotropic Lambda (eigenvalue ratio 100), hyperspherical coordinates:
    dS = sin^2(a) sin(b) da db dc; Gauss-Legendre in a, b and the periodic trapezoid in c."""
    d = AngularCentralGaussian(acg_tril([1.0, 0.1, 0.03, 0.01], 45))
    n = 80  # error 7e-9 here (5e-7 at n = 60, 1e-13 at n = 120)
    nodes, weights = np.polynomial.legendre.leggauss(n)
    a = torch.tensor((nodes + 1) * math.pi / 2, dtype=F64)
    wa = torch.tensor(weights * math.pi / 2, dtype=F64)
    c = torch.arange(2 * n, dtype=F64) * (math.pi / n)
    wc = math.pi / n
    aa, bb, cc = torch.meshgrid(a, a, c, indexing="ij")
    x = torch.stack(
        [
            torch.cos(aa),
            torch.sin(aa) * torch.cos(bb),
            torch.sin(aa) * torch.sin(bb) * torch.cos(cc),
            torch.sin(aa) * torch.sin(bb) * torch.sin(cc),
        ],
        dim=-1,
    )
    jac = torch.sin(aa) ** 2 * torch.sin(bb) * wa[:, None, None] * wa[None, :, None] * wc
    total = (d.log_prob(x[..., None, :]).squeeze(-1).exp() * jac).sum()
    assert abs(float(total) - 1.0) < 1e-7


def test_acg_sample_moments_match_density() -> None:
    """E[x x^T] (sign invariant) of samples vs. the density, by self-normalised importance
    sampling from the uniform distribution (4 standard errors on each entry)."""
    d = AngularCentralGaussian(acg_tril([4.0, 2.0, 1.0, 0.5], 46))
    s = d.sample(200000, gen(47))
    assert s.shape == (200000, 4)
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(200000, dtype=F64))
    u = uniform_s3(800000, 48)
    w = d.log_prob(u[:, None]).squeeze(1).exp() * (2 * math.pi**2)
    outer_s = s[:, :, None] * s[:, None, :]
    outer_u = u[:, :, None] * u[:, None, :]
    mom_s = outer_s.mean(0)
    mom_u = (w[:, None, None] * outer_u).sum(0) / w.sum()
    se_s = outer_s.std(0) / math.sqrt(200000)
    se_u = (w[:, None, None] * (outer_u - mom_u)).std(0) / math.sqrt(800000)
    assert bool(((mom_s - mom_u).abs() < 4 * (se_s**2 + se_u**2).sqrt() + 1e-12).all())


def test_acg_fit_equal_weights_recovers_lambda() -> None:
    tril = torch.stack([acg_tril([1.0, 0.3, 0.1, 0.05], 51), acg_tril([2.0, 1.5, 1.0, 1.0], 52)])
    x = AngularCentralGaussian(tril).sample(100000, gen(53))
    fitted = AngularCentralGaussian.fit(x, torch.zeros(100000, 2, dtype=F64))
    lam_true = normalised(tril @ tril.mT)
    lam_fit = normalised(fitted.matrix)
    rel = (lam_fit - lam_true).norm(dim=(-2, -1)) / lam_true.norm(dim=(-2, -1))
    assert rel.max() < 0.03
    # Tyler's iteration improves on the (biased) second-moment start
    start = AngularCentralGaussian.fit(x, torch.zeros(100000, 2, dtype=F64), num_iter=0)
    rel0 = (normalised(start.matrix) - lam_true).norm(dim=(-2, -1)) / lam_true.norm(dim=(-2, -1))
    assert bool((rel < rel0).all())


def test_acg_fit_importance_weights_recovers_target() -> None:
    target = AngularCentralGaussian(acg_tril([3.0, 1.0, 0.6, 0.4], 54).float())
    x = AngularCentralGaussian(torch.eye(4).expand(1, 4, 4)).sample(200000, gen(55))
    logw = target.log_prob(x)  # uniform proposal: constant log density dropped
    fitted = AngularCentralGaussian.fit(x, logw)
    assert fitted.dtype == torch.float32 and fitted.scale_tril.dtype == F64  # work dtype
    lam_true = normalised(target.matrix)
    rel = (normalised(fitted.matrix) - lam_true).norm() / lam_true.norm()
    assert rel < 0.05


def test_acg_represents_sharp_orientations_in_float32() -> None:
    """A float32 ACG of a very sharp orientation (eigenvalue ratio 1e9, ~0.004 deg) keeps its
    linear algebra in float64: the float32 density agrees with float64 and a fit to its float32
    samples recovers Lambda in its own metric (all generalised eigenvalues of
    (Lambda_true, Lambda_fit) equal up to sampling error), which a float32 factorisation of
    Lambda could not give.
    """
    tril64 = acg_tril([1.0, 3e-9, 2e-9, 1e-9], 58)
    d32 = AngularCentralGaussian(tril64, dtype=torch.float32)
    d64 = AngularCentralGaussian(tril64)
    x = d32.sample(50000, gen(59))
    assert x.dtype == torch.float32 and d32.log_prob(x).dtype == torch.float32
    torch.testing.assert_close(d32.log_prob(x).double(), d64.log_prob(x.double()),
                               rtol=1e-6, atol=1e-6)
    fitted = AngularCentralGaussian.fit(x, torch.zeros(50000, dtype=torch.float32))
    assert fitted.dtype == torch.float32
    # (L^-1 Lambda_fit L^-T) has equal eigenvalues when the fit is exact (up to scale).
    inv = torch.linalg.solve_triangular(tril64, torch.eye(4, dtype=F64), upper=False)
    eig = torch.linalg.eigvalsh(inv @ fitted.matrix @ inv.mT)
    assert float(eig.max() / eig.min()) < 1.1


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_acg_fit_collapsed_weights(dtype: torch.dtype) -> None:
    x = uniform_s3(64, 56).to(dtype)[:, None].expand(64, 3, 4).clone()
    logw = torch.full((64, 3), float("-inf"), dtype=dtype)
    logw[5] = 0.0  # all weight on one sample
    logw[:, 1] = float("nan")  # nothing valid -> uniform fallback
    x[:, 2] = 0.0  # all-zero samples -> Lambda = I
    fitted = AngularCentralGaussian.fit(x, logw)
    assert bool(torch.isfinite(fitted.scale_tril).all())
    lp = fitted.log_prob(x[5:6, 0:1])
    assert bool(torch.isfinite(lp).all()) and float(lp[0, 0]) > 10.0
    s = fitted.sample(100, gen(57))[:, 0]
    assert float((s @ x[5, 0]).abs().min()) > 0.99  # samples near +-q
    torch.testing.assert_close(fitted.matrix[2], torch.eye(4, dtype=F64), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Common behaviour: broadcasting, seeding, dtype/device, errors
# --------------------------------------------------------------------------------------------


def make_all(dtype: torch.dtype = torch.float32, device: str = "cpu") -> list[Any]:
    loc, tril3 = t_params(batch=2, seed=61)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype=dtype, device=device)

    return [
        MultivariateT(cast(loc), cast(tril3), 3.0),
        VonMisesUniformMix(cast(torch.tensor([0.3, 3.0])), cast(torch.tensor([2.0, 40.0]))),
        AngularCentralGaussian(
            cast(torch.stack([acg_tril([1, 0.5, 0.2, 0.1], 62), acg_tril([1, 1, 1, 0.1], 63)]))
        ),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_seeding_dtype_and_global_rng(dtype: torch.dtype) -> None:
    for d in make_all(dtype):
        state = torch.get_rng_state()
        a = d.sample(64, gen(7))
        b = d.sample(64, gen(7))
        c = d.sample(64, gen(8))
        assert torch.equal(torch.get_rng_state(), state), "global RNG touched"
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.shape == (64, 2, d.event_dim) and a.dtype == dtype
        lp = d.log_prob(a)
        assert lp.shape == (64, 2) and lp.dtype == dtype and bool(torch.isfinite(lp).all())
        fitted = type(d).fit(a, lp)
        assert fitted.dtype == dtype and fitted.batch_shape == (2,)
        assert d.sample(0, gen(0)).shape == (0, 2, d.event_dim)


def test_log_prob_broadcasts_over_stacked_proposals() -> None:
    """``stack`` turns I proposals of batch (B,) into one of batch (I, B), and K samples are
    evaluated under all of them in one call, as the AMIS mixture needs: x (K, 1, B, D) or
    (K, I, B, D) -> (K, I, B)."""
    d0, d1 = make_all(F64), make_all(F64, "cpu")
    d1[0] = MultivariateT(d1[0].loc + 1.0, d1[0].scale_tril * 2.0, 4.0)
    d1[1] = VonMisesUniformMix(d1[1].loc + 1, d1[1].kappa, 0.1)
    d1[2] = AngularCentralGaussian(d1[2].scale_tril.flip(0))
    for a, b in zip(d0, d1, strict=True):
        s: Any = type(a).stack([a, b])
        assert s.batch_shape == (2, 2)
        x = a.sample(10, gen(1))
        for lp in (s.log_prob(x[:, None]), s.log_prob(x[:, None].expand(-1, 2, -1, -1))):
            assert lp.shape == (10, 2, 2)
            torch.testing.assert_close(lp[:, 0], a.log_prob(x))
            torch.testing.assert_close(lp[:, 1], b.log_prob(x))
        with pytest.raises(ShapeError):
            type(a).stack([])
        with pytest.raises(ShapeError):  # batch shapes (2,) and (1,)
            type(a).stack([a, type(a).fit(x[:, :1], torch.zeros(10, 1, dtype=F64))])
    with pytest.raises(TypeError):
        MultivariateT.stack([d0[0], d0[1]])
    with pytest.raises(DTypeError):
        AngularCentralGaussian.stack([d0[2], make_all(torch.float32)[2]])


def test_bad_shapes_raise_shape_error() -> None:
    z = torch.zeros
    with pytest.raises(ShapeError):
        MultivariateT(z(2, 3), z(2, 3, 2))
    with pytest.raises(ShapeError):
        MultivariateT(z(2, 3), z(3, 3, 3))
    with pytest.raises(ShapeError):
        MultivariateT(z(2, 4), torch.eye(4).expand(2, 4, 4))
    with pytest.raises(ShapeError):
        MultivariateT(z(2, 3), torch.eye(3).expand(2, 3, 3), df=torch.ones(3))
    with pytest.raises(ShapeError):
        VonMisesUniformMix(z(2), z(3))
    with pytest.raises(ShapeError):
        VonMisesUniformMix(z(2), z(2), uniform_mix=torch.ones(3))
    with pytest.raises(ShapeError):
        AngularCentralGaussian(torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ShapeError):
        AngularCentralGaussian(z(4))
    t, vm, acg = make_all()
    with pytest.raises(ShapeError):
        t.log_prob(z(5, 2, 4))
    with pytest.raises(ShapeError):
        t.log_prob(z(5, 3, 3))  # batch 3 does not broadcast with 2
    with pytest.raises(ShapeError):
        vm.log_prob(z(5, 2))  # missing event dim
    with pytest.raises(ShapeError):
        acg.log_prob(z(5, 2, 3))
    with pytest.raises(ShapeError):
        t.sample(-1)
    with pytest.raises(ShapeError):
        MultivariateT.fit(z(5, 2, 3), z(5, 3))
    with pytest.raises(ShapeError):
        VonMisesUniformMix.fit(z(5, 2), z(5, 2))
    with pytest.raises(ShapeError):
        AngularCentralGaussian.fit(z(0, 2, 4), z(0, 2))
    with pytest.raises(DTypeError):
        MultivariateT(z(2, 3), torch.eye(3, dtype=F64).expand(2, 3, 3))
    with pytest.raises(DTypeError):
        VonMisesUniformMix(z(2, dtype=torch.int64), z(2, dtype=torch.int64))


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_device_end_to_end(device: str) -> None:
    """Sample / log_prob / fit on ``device`` (the CPU run checks the test itself; the CUDA run
    happens only where a GPU exists): device and dtype kept, seeding reproducible, log_prob
    and fit equal to the CPU ones on the same samples."""
    for dtype in (torch.float32, F64):
        for d_cpu, d_dev in zip(make_all(dtype), make_all(dtype, device), strict=True):
            if device != "cpu":
                with pytest.raises(DeviceError):
                    d_dev.sample(4, gen(0))
            x = d_dev.sample(20000, gen(3, device))
            assert x.device.type == device and x.dtype == dtype
            assert torch.equal(x, d_dev.sample(20000, gen(3, device)))
            lp = d_dev.log_prob(x)
            assert lp.device.type == device and lp.dtype == dtype
            torch.testing.assert_close(lp.cpu(), d_cpu.log_prob(x.cpu()), rtol=1e-4, atol=1e-4)
            fitted = type(d_dev).fit(x, lp)
            assert fitted.dtype == dtype and fitted.device.type == device
            fitted_cpu = type(d_cpu).fit(x.cpu(), lp.cpu())
            torch.testing.assert_close(
                fitted.log_prob(x).cpu(), fitted_cpu.log_prob(x.cpu()), rtol=1e-3, atol=1e-3
            )
