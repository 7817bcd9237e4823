"""Mixture of a von Mises and a uniform distribution on the circle: the AMIS yaw proposal.

Density with respect to the **Lebesgue measure on the circle [-pi, pi)** (D = 1)::

    p(x) = (1 - u) exp(kappa cos(x - loc)) / (2 pi I0(kappa)) + u / (2 pi)

with ``u = uniform_mix``.  The uniform component keeps the proposal's tails heavy (yaw
posteriors are often multimodal, e.g. front/back flips).  The default ``u = 0.25`` is the value of
the reference EPro-PnP implementation (its 4DoF docstring: "0.75 von Mises + 0.25 uniform").
The density is evaluated stably for any ``kappa >= 0`` as
``log I0(kappa) = log(i0e(kappa)) + kappa`` and ``cos(d) - 1 = -2 sin^2(d/2)``; it is
2 pi-periodic, so ``log_prob`` accepts any real angle.

Sampling: the von Mises part uses the exact Best-Fisher rejection sampler of
:func:`epropnp_lib.distributions._common.von_mises_centered`; the mixture component is chosen
with a generator uniform; samples are wrapped to ``[-pi, pi)``.

Example::

    >>> import torch
    >>> d = VonMisesUniformMix(torch.zeros(2), torch.tensor([1.0, 50.0]))
    >>> x = d.sample(5, torch.Generator().manual_seed(0))
    >>> x.shape, d.log_prob(x).shape
    (torch.Size([5, 2, 1]), torch.Size([5, 2]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.distributions._common import (
    Proposal,
    check_batch_param,
    check_fit_inputs,
    check_generator,
    check_num,
    normalized_weights,
    stacked_params,
    value_shape,
    von_mises_centered,
    work_dtype,
    wrap_angle,
)
from epropnp_lib.errors import ShapeError

#: Default weight of the uniform component (reference EPro-PnP).
DEFAULT_UNIFORM_MIX = 0.25
#: Largest concentration fitted by default: a yaw scale of 1 / sqrt(kappa) = 3e-6 rad, a dozen
#: float32 ulps of an angle near pi, so that sharp 4DoF posteriors get proposals as sharp as
#: they are (a lower cap samples them with much wider proposals and few effective samples).
MAX_KAPPA = 1e11
_LOG_2PI = math.log(2.0 * math.pi)


def a1_inverse(r: torch.Tensor, newton_steps: int = 3) -> torch.Tensor:
    """Solve ``A1(kappa) = I1(kappa)/I0(kappa) = r`` for ``kappa``; ``r: S`` in ``[0, 1)``.

    Starts from the approximation of Banerjee et al. (2005),
    ``kappa0 = r (2 - r^2) / (1 - r^2)`` (relative error below 5 percent), refined by
    ``newton_steps`` safeguarded Newton steps using ``A1'(k) = 1 - A1/k - A1^2`` (each step
    at most divides kappa by 10).  Computed in float64 (float32 on MPS); returns ``S`` in the
    work dtype.  ``r`` is clamped to ``[0, 1 - 1e-12]``.
    """
    wd = work_dtype(r.device)
    rr = r.to(wd).clamp(0.0, 1.0 - 1e-12)
    k = rr * (2.0 - rr * rr) / (1.0 - rr * rr)
    k = k.clamp_min(1e-12)
    for _ in range(newton_steps):
        a1 = torch.special.i1e(k) / torch.special.i0e(k)
        da1 = (1.0 - a1 / k - a1 * a1).clamp_min(torch.finfo(wd).tiny)
        k = torch.maximum(k - (a1 - rr) / da1, 0.1 * k)
    return k


class VonMisesUniformMix(Proposal):
    """Batched von Mises + uniform mixture on the circle.

    Args:
        loc: ``(*batch,)`` mean direction of the von Mises component (any real; used mod 2 pi).
        kappa: ``(*batch,)`` concentration, ``>= 0`` (not checked: checking values would
            synchronise the device).
        uniform_mix: weight ``u`` of the uniform component in ``[0, 1]``, a float or a tensor
            of shape ``()`` or ``batch``.

    Attributes:
        loc, kappa, uniform_mix: ``(*batch,)`` (``uniform_mix`` expanded).

    Raises:
        ShapeError / DTypeError / DeviceError on bad arguments.
    """

    event_dim = 1

    _param = "loc"
    _event_dims = 0

    def __init__(
        self,
        loc: torch.Tensor,
        kappa: torch.Tensor,
        uniform_mix: float | torch.Tensor = DEFAULT_UNIFORM_MIX,
    ) -> None:
        check_shape(loc, ["*"], "loc")
        check_shape(kappa, ["*"], "kappa")
        check_float_tensors(loc=loc, kappa=kappa)
        if tuple(kappa.shape) != tuple(loc.shape):
            raise ShapeError(
                f"kappa: expected the shape of loc {tuple(loc.shape)} (*batch,), "
                f"got {tuple(kappa.shape)}"
            )
        self.loc = loc
        self.kappa = kappa
        self.uniform_mix = check_batch_param(
            uniform_mix, "uniform_mix", loc.shape, loc.dtype, loc.device
        )

    @classmethod
    def stack(cls, dists: Sequence[VonMisesUniformMix]) -> VonMisesUniformMix:
        """``M`` distributions of one batch shape ``batch`` as one of batch shape
        ``(M, *batch)``."""
        loc, kappa, mix = stacked_params(dists, cls, ("loc", "kappa", "uniform_mix"))
        return cls(loc, kappa, mix)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density (w.r.t. Lebesgue measure on [-pi, pi)) of angles ``x: (*S, 1)``.

        ``x.shape[:-1]`` broadcasts with ``batch``; returns ``broadcast(x.shape[:-1], batch)``,
        e.g. ``(K, B)`` for ``x: (K, B, 1)``.
        """
        value_shape(x, 1, self.batch_shape)
        wd = work_dtype(self.device)  # kappa up to MAX_KAPPA: k d^2 needs the digits
        d = x.squeeze(-1).to(wd) - self.loc.to(wd)
        k = self.kappa.to(wd)
        u = self.uniform_mix.to(wd)
        vm = (
            torch.log1p(-u)
            - _LOG_2PI
            - torch.log(torch.special.i0e(k))
            - 2.0 * k * torch.sin(0.5 * d).square()
        )
        return torch.logaddexp(vm, torch.log(u) - _LOG_2PI).to(self.dtype)

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` angles per batch element in ``[-pi, pi)``: returns ``(num, *batch, 1)``.

        All randomness comes from ``generator`` (on the parameters' device; the global RNG
        when ``None``); a fixed amount of it is consumed whatever the parameter values.
        """
        check_num(num)
        check_generator(generator, self.device)
        shape = (num, *self.batch_shape)
        with torch.no_grad():
            theta = von_mises_centered(self.kappa.expand(shape), generator)
            wd = theta.dtype
            pick = torch.rand(shape, generator=generator, dtype=wd, device=self.device)
            unif = torch.rand(shape, generator=generator, dtype=wd, device=self.device)
            is_unif = pick < self.uniform_mix.to(wd)
            vm = wrap_angle(theta + self.loc.to(wd))
            x = torch.where(is_unif, (2.0 * unif - 1.0) * math.pi, vm)
            return wrap_angle(x.to(self.dtype)).unsqueeze(-1)

    @classmethod
    def fit(
        cls,
        samples: torch.Tensor,
        log_weights: torch.Tensor,
        uniform_mix: float | torch.Tensor = DEFAULT_UNIFORM_MIX,
        *,
        kappa_scale: float = 1.0,
        kappa_min: float = 1e-6,
        kappa_max: float = MAX_KAPPA,
    ) -> VonMisesUniformMix:
        """Fit to weighted angles ``samples: (K, *batch, 1)``, ``log_weights: (K, *batch)``.

        Weights are ``softmax(log_weights)`` over ``K`` (stable; NaN weights and non-finite
        samples get zero weight).  With ``(C, S) = sum w (cos x, sin x)``: ``loc = atan2(S, C)``
        (circular mean) and ``kappa = kappa_scale * A1^-1(R)``, ``R = sqrt(C^2 + S^2)``, by
        :func:`a1_inverse` (Banerjee approximation + Newton), clamped to
        ``[kappa_min, kappa_max]``.  The von Mises component is fitted to the samples as they
        are; ``uniform_mix`` is a fixed design choice, not estimated.  The reference EPro-PnP
        fits with the Banerjee approximation alone times 0.33 (``kappa_scale=0.33``, a wider
        proposal).  Computed in float64 (float32 on MPS); returns a distribution of batch shape
        ``batch`` and ``samples``' dtype.
        """
        batch = check_fit_inputs(samples, log_weights, 1)
        dtype, device = check_float_tensors(samples=samples, log_weights=log_weights)
        wd = work_dtype(device)  # 1 - R ~ 1 / (2 kappa): float32 resolves kappa < ~1e7 only
        samples, log_weights = samples.to(wd), log_weights.to(wd)
        with torch.no_grad():
            x = samples.squeeze(-1)
            valid = torch.isfinite(x)
            w = normalized_weights(log_weights, valid)
            x = torch.where(valid, x, torch.zeros_like(x))
            c = (w * torch.cos(x)).sum(dim=0)
            s = (w * torch.sin(x)).sum(dim=0)
            loc = torch.atan2(s, c).to(dtype)
            r = torch.sqrt(c * c + s * s)
            kappa = (kappa_scale * a1_inverse(r)).clamp(kappa_min, kappa_max).to(dtype)
            u = check_batch_param(uniform_mix, "uniform_mix", batch, dtype, device)
            return cls(loc, kappa, u)
