"""Multivariate Student t distribution on R^3: the AMIS proposal for the position.

Density with respect to the **Lebesgue measure on R^3** (D = 3)::

    p(x) = Gamma((df + D)/2) / (Gamma(df/2) (df pi)^(D/2) |L|)
           * (1 + |L^-1 (x - loc)|^2 / df)^(-(df + D)/2)

with ``L = scale_tril`` the lower Cholesky factor of the *scale* matrix ``Sigma = L L^T``.  For
``df > 2`` the covariance is ``df / (df - 2) * Sigma``.  The default ``df = 3`` is the one of the
reference EPro-PnP implementation.

Sampling: ``x = loc + L z sqrt(df / w)`` with ``z ~ N(0, I)`` and ``w ~ chi2(df)``
(:func:`epropnp_lib.distributions._common.chi_square`: a sum of squared normals for small
whole-number ``df`` on the CPU, else ``2 Gamma(df/2)`` by the exact Marsaglia-Tsang rejection
sampler), seeded by the passed generator.

Example::

    >>> import torch
    >>> d = MultivariateT(torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3))
    >>> x = d.sample(5, torch.Generator().manual_seed(0))
    >>> x.shape, d.log_prob(x).shape
    (torch.Size([5, 2, 3]), torch.Size([5, 2]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.distributions._common import (
    Proposal,
    apply_tril,
    check_batch_param,
    check_fit_inputs,
    check_generator,
    check_num,
    chi_square,
    mahalanobis_sq,
    normalized_weights,
    safe_cholesky,
    stacked_params,
    value_shape,
)
from epropnp_lib.errors import ShapeError

#: Default degrees of freedom (reference EPro-PnP).
DEFAULT_DF = 3.0


class MultivariateT(Proposal):
    """Batched 3D multivariate t distribution.

    Args:
        loc: ``(*batch, 3)`` location (the mode; the mean for ``df > 1``).
        scale_tril: ``(*batch, 3, 3)`` lower-triangular Cholesky factor of the scale matrix,
            positive diagonal (not checked: checking values would synchronise the device).
        df: degrees of freedom, a float or a tensor of shape ``()`` or ``batch``; positive.

    Attributes:
        loc: ``(*batch, 3)``; scale_tril: ``(*batch, 3, 3)``; df: ``(*batch,)`` (expanded).

    Raises:
        ShapeError: shapes that do not follow the above; DTypeError / DeviceError: mixed
            dtypes or devices.
    """

    event_dim = 3

    _param = "loc"
    _event_dims = 1

    def __init__(
        self,
        loc: torch.Tensor,
        scale_tril: torch.Tensor,
        df: float | torch.Tensor = DEFAULT_DF,
    ) -> None:
        check_shape(loc, ["*", 3], "loc")
        check_shape(scale_tril, ["*", 3, 3], "scale_tril")
        if loc.shape[:-1] != scale_tril.shape[:-2]:
            raise ShapeError(
                f"loc (*batch, 3) and scale_tril (*batch, 3, 3) disagree on batch: "
                f"{tuple(loc.shape)} vs {tuple(scale_tril.shape)}"
            )
        dtype, device = check_float_tensors(loc=loc, scale_tril=scale_tril)
        self.loc = loc
        self.scale_tril = scale_tril
        self.df = check_batch_param(df, "df", loc.shape[:-1], dtype, device)

    @classmethod
    def from_scale_matrix(
        cls,
        loc: torch.Tensor,
        scale: torch.Tensor,
        df: float | torch.Tensor = DEFAULT_DF,
        eps: float = 1e-6,
        min_variance: float = 1e-12,
    ) -> MultivariateT:
        """Build from a symmetric scale matrix ``scale: (*batch, 3, 3)``, ``loc: (*batch, 3)``.

        ``scale`` is regularised as in :meth:`fit` (``+ (eps * trace/3 + min_variance) I``) and
        factorised with :func:`torch.linalg.cholesky_ex`; failing elements get jitter, never
        an exception.
        """
        check_shape(scale, ["*", 3, 3], "scale")
        scale = 0.5 * (scale + scale.transpose(-1, -2))
        reg = eps * scale.diagonal(dim1=-2, dim2=-1).sum(-1).abs() / 3.0 + min_variance
        eye = torch.eye(3, dtype=scale.dtype, device=scale.device)
        tril = safe_cholesky(scale + reg[..., None, None] * eye, reg)
        return cls(loc, tril, df)

    @classmethod
    def stack(cls, dists: Sequence[MultivariateT]) -> MultivariateT:
        """``M`` distributions of one batch shape ``batch`` as one of batch shape
        ``(M, *batch)`` (e.g. to evaluate samples under several proposals in one call)."""
        loc, tril, df = stacked_params(dists, cls, ("loc", "scale_tril", "df"))
        return cls(loc, tril, df)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density (w.r.t. Lebesgue measure on R^3) of ``x: (*S, 3)``.

        ``x.shape[:-1]`` broadcasts with ``batch`` (typically ``x: (K, *batch, 3)``); returns
        ``broadcast(x.shape[:-1], batch)``, e.g. ``(K, B)`` for ``x: (K, B, 3)``.
        """
        value_shape(x, 3, self.batch_shape)
        maha = mahalanobis_sq(self.scale_tril, x - self.loc)
        half_log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        df = self.df
        d = float(self.event_dim)
        log_norm = (
            torch.lgamma(0.5 * (df + d))
            - torch.lgamma(0.5 * df)
            - 0.5 * d * torch.log(df * math.pi)
            - half_log_det
        )
        return log_norm - 0.5 * (df + d) * torch.log1p(maha / df)

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` samples per batch element: returns ``(num, *batch, 3)``.

        All randomness comes from ``generator`` (on the parameters' device; the global RNG
        when ``None``).  Not differentiable (the AMIS proposal is fitted under no_grad).
        """
        check_num(num)
        check_generator(generator, self.device)
        shape = (num, *self.batch_shape)
        with torch.no_grad():
            z = torch.randn(
                (*shape, 3), generator=generator, dtype=self.dtype, device=self.device
            )
            df = self.df.expand(shape)
            chi2 = chi_square(df, generator)
            y = apply_tril(self.scale_tril, z)
            return self.loc + y * torch.sqrt(df / chi2).unsqueeze(-1)

    @classmethod
    def fit(
        cls,
        samples: torch.Tensor,
        log_weights: torch.Tensor,
        df: float | torch.Tensor = DEFAULT_DF,
        *,
        moment_match: bool = True,
        eps: float = 1e-6,
        min_variance: float = 1e-12,
    ) -> MultivariateT:
        """Fit to weighted samples ``samples: (K, *batch, 3)``, ``log_weights: (K, *batch)``.

        Weights are ``softmax(log_weights)`` over ``K`` (stable; NaN log-weights and
        non-finite samples get zero weight; all-zero weights fall back to uniform).  ``loc`` is
        the weighted mean and ``C`` the weighted (biased, ``sum w = 1``) covariance.  The scale
        matrix is

        * ``moment_match=True`` (default): ``C (df - 2) / df`` for ``df > 2``, so that the
          fitted t has covariance ``C``; ``C`` itself where ``df <= 2`` (infinite variance);
        * ``moment_match=False``: ``C`` (what the reference EPro-PnP does -- a proposal wider
          by ``sqrt(df / (df - 2))``, i.e. ``sqrt(3)`` for ``df = 3``).

        A regulariser ``(eps * trace(scale)/3 + min_variance) I`` is added, then
        :func:`torch.linalg.cholesky_ex`; elements that still fail get growing jitter and
        finally a diagonal factor -- never an exception inside a batch.  ``min_variance`` is in
        the squared units of the samples.  Returns a distribution of batch shape ``batch``.
        """
        batch = check_fit_inputs(samples, log_weights, 3)
        dtype, device = check_float_tensors(samples=samples, log_weights=log_weights)
        with torch.no_grad():
            valid = torch.isfinite(samples).all(dim=-1)
            w = normalized_weights(log_weights, valid)
            x = torch.where(valid.unsqueeze(-1), samples, torch.zeros_like(samples))
            mean = (w.unsqueeze(-1) * x).sum(dim=0)
            dev = torch.where(valid.unsqueeze(-1), x - mean, torch.zeros_like(x))
            cov = torch.einsum("k...i,k...j->...ij", w.unsqueeze(-1) * dev, dev)
            dft = check_batch_param(df, "df", batch, dtype, device)
            if moment_match:
                factor = torch.where(dft > 2, (dft - 2) / dft, torch.ones_like(dft))
                cov = cov * factor[..., None, None]
            return cls.from_scale_matrix(mean, cov, dft, eps=eps, min_variance=min_variance)
