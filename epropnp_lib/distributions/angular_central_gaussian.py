"""Angular central Gaussian (ACG) on S^3: the AMIS proposal for unit quaternions.

Quaternions are in **(w, x, y, z)** order (see :mod:`epropnp_lib.conventions`).  Density with
respect to the **uniform surface measure on S^3** (total area ``2 pi^2``; D = 4)::

    p(x) = |Lambda|^(-1/2) (x^T Lambda^-1 x)^(-2) / (2 pi^2),     |x| = 1

(Tyler 1987; exponent ``-D/2 = -2``).  It is the law of ``z / |z|`` for ``z ~ N(0, Lambda)``,
is antipodally symmetric (``q`` and ``-q``, the same rotation, have the same density) and is
invariant to the scale of ``Lambda``.  The induced rotation has density ``2 pi^2 p(q)`` w.r.t.
the normalised Haar measure on SO(3) -- only a constant differs, and the Monte Carlo KL loss
only needs one consistent measure.  The parameter is ``scale_tril``, the lower Cholesky factor
``L`` of ``Lambda = L L^T``.

Precision.  A sharp orientation posterior makes ``Lambda`` very ill-conditioned (eigenvalue
ratio ~ 1 / (orientation scale in rad)^2: 1e8 for 0.006 deg), beyond what float32 can factorise
or invert.  So ``Lambda``, its factor and all the linear algebra live in float64 (float32 on
devices without float64, e.g. MPS, where the concentration cap is raised to match), whatever
the distribution's dtype; samples and densities are returned in the distribution's dtype.

Example::

    >>> import torch
    >>> d = AngularCentralGaussian(torch.eye(4).expand(2, 4, 4))
    >>> q = d.sample(5, torch.Generator().manual_seed(0))
    >>> q.shape, d.log_prob(q).shape
    (torch.Size([5, 2, 4]), torch.Size([5, 2]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.distributions._common import (
    Proposal,
    apply_tril,
    check_fit_inputs,
    check_generator,
    check_num,
    mahalanobis_sq,
    normalized_weights,
    safe_cholesky,
    stacked_params,
    value_shape,
    work_dtype,
)
from epropnp_lib.errors import DTypeError
from epropnp_lib.native import acg_fit_native

_LOG_AREA_S3 = math.log(2.0 * math.pi**2)
#: Default number of Tyler fixed-point iterations in :meth:`AngularCentralGaussian.fit`.
DEFAULT_FIT_ITERS = 10
#: Default relative regulariser of Lambda (normalised to trace 4) in ``fit``/``from_matrix``.
#: It caps the concentration (eigenvalue ratio ~ 4 / eps, an orientation scale of ~2 sqrt(eps)
#: rad: 2e-6 rad for 1e-12, ten times a float32 quaternion's resolution), so that the proposals
#: of sharp posteriors are not wider than the posterior; it needs the float64 linear algebra.
DEFAULT_ACG_EPS = 1e-12
#: The smallest ``eps`` honoured where the work dtype is float32 (no float64 on the device).
MIN_EPS_FLOAT32 = 1e-6


def _work(device: torch.device, eps: float) -> tuple[torch.dtype, float]:
    """The work dtype on ``device`` and ``eps`` raised to what it can represent."""
    wd = work_dtype(device)
    return wd, (max(eps, MIN_EPS_FLOAT32) if wd == torch.float32 else eps)


def _regularised(lam: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetrise, normalise to trace 4, add ``eps I``; returns ``(matrix, jitter (*b,))``."""
    lam = 0.5 * (lam + lam.transpose(-1, -2))
    tr = lam.diagonal(dim1=-2, dim2=-1).sum(-1)
    tiny = torch.finfo(lam.dtype).tiny
    ok = torch.isfinite(tr) & (tr > tiny)
    eye = torch.eye(4, dtype=lam.dtype, device=lam.device)
    lam = torch.where(ok[..., None, None], lam * (4.0 / tr.clamp_min(tiny))[..., None, None], eye)
    jitter = torch.full(tr.shape, eps, dtype=lam.dtype, device=lam.device)
    return lam + eps * eye, jitter


class AngularCentralGaussian(Proposal):
    """Batched angular central Gaussian on the unit quaternions S^3.

    Args:
        scale_tril: ``(*batch, 4, 4)`` lower-triangular Cholesky factor of ``Lambda``,
            positive diagonal (not checked: checking values would synchronise the device).
        dtype: the dtype of samples and densities; default ``scale_tril.dtype``.

    Attributes:
        scale_tril: ``(*batch, 4, 4)``, kept in the work dtype (float64; float32 on devices
            without float64), see the module docstring.

    Raises:
        ShapeError / DTypeError on bad arguments.
    """

    event_dim = 4

    _param = "scale_tril"
    _event_dims = 2

    def __init__(self, scale_tril: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        check_shape(scale_tril, ["*", 4, 4], "scale_tril")
        check_float_tensors(scale_tril=scale_tril)
        if dtype is not None and not dtype.is_floating_point:
            raise DTypeError(f"dtype: expected a floating point dtype, got {dtype}")
        self._dtype = scale_tril.dtype if dtype is None else dtype
        self.scale_tril = scale_tril.to(work_dtype(scale_tril.device))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of samples and densities (``scale_tril`` is in the work dtype)."""
        return self._dtype

    @staticmethod
    def work_dtype(device: torch.device) -> torch.dtype:
        """The dtype of ``Lambda`` and its factor on ``device`` (float64, or float32 where the
        device has no float64): form matrices for :meth:`from_matrix` in it."""
        return work_dtype(device)

    @classmethod
    def from_matrix(
        cls, lam: torch.Tensor, eps: float = DEFAULT_ACG_EPS, dtype: torch.dtype | None = None
    ) -> AngularCentralGaussian:
        """Build from a symmetric positive (semi-)definite ``lam: (*batch, 4, 4)``.

        ``lam`` is normalised to trace 4 (the density is scale invariant), ``eps * I`` is
        added, and it is factorised with jitter on failure (never raises inside a batch), in
        the work dtype; the distribution's dtype is ``dtype`` (default ``lam``'s).  A
        non-finite or zero-trace element becomes the uniform distribution (``Lambda = I``).
        """
        check_shape(lam, ["*", 4, 4], "lam")
        check_float_tensors(lam=lam)
        wd, eps = _work(lam.device, eps)
        mat, jitter = _regularised(lam.to(wd), eps)
        return cls(safe_cholesky(mat, jitter), lam.dtype if dtype is None else dtype)

    @property
    def matrix(self) -> torch.Tensor:
        """``Lambda = L L^T``: ``(*batch, 4, 4)``, in the work dtype."""
        return self.scale_tril @ self.scale_tril.transpose(-1, -2)

    @classmethod
    def stack(cls, dists: Sequence[AngularCentralGaussian]) -> AngularCentralGaussian:
        """``M`` distributions of one batch shape ``batch`` as one of batch shape
        ``(M, *batch)``."""
        (tril,) = stacked_params(dists, cls, ("scale_tril",))
        return cls(tril, dists[0].dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density (w.r.t. the uniform surface measure on S^3) of ``x: (*S, 4)``.

        ``x`` is projected onto the sphere (``x / |x|``) first; ``x.shape[:-1]`` broadcasts
        with ``batch``; returns ``broadcast(x.shape[:-1], batch)``, e.g. ``(K, B)`` for
        ``x: (K, B, 4)``.
        """
        value_shape(x, 4, self.batch_shape)
        xw = x.to(self.scale_tril.dtype)
        m = mahalanobis_sq(self.scale_tril, xw) / xw.square().sum(-1)
        half_log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return (-half_log_det - 2.0 * torch.log(m) - _LOG_AREA_S3).to(self._dtype)

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` unit quaternions per batch element: returns ``(num, *batch, 4)``.

        ``x = L n / |L n|``, ``n ~ N(0, I)`` from ``generator`` (on the parameters' device;
        the global RNG when ``None``); the sign is random (both hemispheres).
        """
        check_num(num)
        check_generator(generator, self.device)
        shape = (num, *self.batch_shape)
        with torch.no_grad():
            wd = self.scale_tril.dtype
            n = torch.randn((*shape, 4), generator=generator, dtype=wd, device=self.device)
            z = apply_tril(self.scale_tril, n)
            norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
            tiny = torch.finfo(wd).tiny
            unit_w = torch.zeros_like(z)
            unit_w[..., 0] = 1.0
            return torch.where(norm > tiny, z / norm.clamp_min(tiny), unit_w).to(self._dtype)

    @classmethod
    def fit(
        cls,
        samples: torch.Tensor,
        log_weights: torch.Tensor,
        *,
        num_iter: int = DEFAULT_FIT_ITERS,
        eps: float = DEFAULT_ACG_EPS,
    ) -> AngularCentralGaussian:
        """Weighted maximum-likelihood fit (Tyler's fixed point) to unit quaternions.

        ``samples: (K, *batch, 4)`` (normalised to unit length here), ``log_weights: (K, *batch)``;
        weights ``w = softmax(log_weights)`` over ``K`` (stable; NaN weights and non-finite or
        zero samples get zero weight).  Starts from the weighted second moment
        ``sum w x x^T`` and runs ``num_iter`` iterations of

            Lambda <- D sum_k w_k x_k x_k^T / (x_k^T Lambda^-1 x_k) / sum_k w_k

        each followed by normalisation to trace 4 and ``+ eps I`` (relative to the mean
        eigenvalue 1), so Lambda stays positive definite even for collapsed weights; Cholesky
        failures get jitter, never an exception.  ``eps`` bounds the concentration:
        ``Lambda`` eigenvalue ratios stay below about ``4 / eps``.  Computed in the work
        dtype; returns a distribution of batch shape ``batch`` and ``samples``' dtype.
        """
        check_fit_inputs(samples, log_weights, 4)
        dtype, _ = check_float_tensors(samples=samples, log_weights=log_weights)
        if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 0:
            raise ValueError(f"num_iter: expected a non-negative int, got {num_iter!r}")
        wd, eps = _work(samples.device, eps)
        samples, log_weights = samples.to(wd), log_weights.to(wd)
        with torch.no_grad():
            norm = torch.linalg.vector_norm(samples, dim=-1)
            tiny = torch.finfo(wd).tiny
            valid = torch.isfinite(norm) & (norm > tiny)
            x = torch.where(
                valid.unsqueeze(-1),
                samples / norm.clamp_min(tiny).unsqueeze(-1),
                torch.zeros_like(samples),
            )
            w = normalized_weights(log_weights, valid)  # 0 where not valid (and x = 0)
            fused = acg_fit_native(x, w, num_iter, eps)  # the fused CPU kernel where it applies
            if fused is not None:
                return cls(fused, dtype)
            xs = x.movedim(0, -2)  # (*batch, K, 4): the samples of an element as rows
            ws = w.movedim(0, -1).unsqueeze(-1)  # (*batch, K, 1)
            lam, jitter = _regularised(xs.mT @ (ws * xs), eps)
            for _ in range(num_iter):
                tril = safe_cholesky(lam, jitter)
                m = mahalanobis_sq(tril, x).movedim(0, -1).unsqueeze(-1)  # (*batch, K, 1)
                lam, _ = _regularised(xs.mT @ (ws / m.clamp_min(tiny) * xs), eps)
            return cls(safe_cholesky(lam, jitter), dtype)
