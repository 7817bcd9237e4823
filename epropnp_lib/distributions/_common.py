"""Internal helpers shared by the proposal distributions (no public API).

Weight normalisation, a Cholesky factorisation that never raises inside a batch, boundary
checks for the shapes of ``sample``/``log_prob``/``fit`` arguments, and the two exact
generator-seeded samplers that ``torch`` does not offer with a ``torch.Generator``:

* :func:`standard_gamma` -- Marsaglia & Tsang (2000) squeeze-free rejection, with the
  ``alpha < 1`` boost ``Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha)``; :func:`chi_square`
  uses it, or the sum of squared normals for small whole-number degrees of freedom.
* :func:`von_mises_centered` -- Best & Fisher (1979) rejection for the von Mises distribution
  centred at 0.

Both run a *fixed* number of vectorised rounds (no Python loop over data, no host sync, and a
fixed amount of generator randomness per call whatever the parameter values); a draw that is
still rejected after all rounds (probability below 1e-13 per draw for the gamma sampler and
2e-15 for the von Mises sampler) falls back to an approximate draw, documented at each function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from epropnp_lib.errors import DeviceError, DTypeError, ShapeError

#: Rejection rounds of the gamma sampler, in blocks of these many vectorised rounds (10 in all;
#: acceptance >= 0.95 per round for alpha >= 1, so on the CPU the second block runs only for
#: the ~0.25 % of draws left).
GAMMA_BLOCK_ROUNDS = (2, 8)
#: Rejection rounds of the von Mises sampler, run in blocks of these many vectorised rounds (32 in
#: all; acceptance >= 0.65 per round for every kappa, so the first block settles ~98.6 % of the
#: draws and, on the CPU, the later ones run only for the few left).
VM_BLOCK_ROUNDS = (4, 8, 8, 12)


class Proposal:
    """What the proposal distributions share: batch shape, dtype, device and repr, read from
    the parameter tensor named ``_param`` whose last ``_event_dims`` dimensions are not batch."""

    _param: ClassVar[str]
    _event_dims: ClassVar[int]

    @property
    def batch_shape(self) -> torch.Size:
        """The batch shape ``batch``."""
        param: torch.Tensor = getattr(self, self._param)
        return param.shape[: param.dim() - self._event_dims]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of samples and densities."""
        return getattr(self, self._param).dtype

    @property
    def device(self) -> torch.device:
        return getattr(self, self._param).device

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, dtype={self.dtype}, "
            f"device={self.device})"
        )


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 for internal scalar work, except on devices without float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def check_num(num: int) -> None:
    """Check the sample count of ``sample``."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise ShapeError(f"num: expected a non-negative int, got {num!r}")


def check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    """Check that ``generator`` lives on the parameters' device."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected torch.Generator or None, got {type(generator)}")
    if torch.device(generator.device).type != device.type:
        raise DeviceError(
            f"generator is on {generator.device} but the distribution is on {device}"
        )


def value_shape(
    x: torch.Tensor, event_dim: int, batch_shape: torch.Size, name: str = "x"
) -> torch.Size:
    """Check ``x: (*S, event_dim)`` against ``batch_shape``; return the broadcast output shape.

    ``x.shape[:-1]`` must broadcast with ``batch_shape`` (torch broadcasting rules), e.g.
    ``x: (K, B, D)`` against ``batch_shape = (B,)`` gives ``(K, B)``.
    """
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != event_dim:
        raise ShapeError(f"{name}: expected shape (..., {event_dim}), got {tuple(x.shape)}")
    try:
        return torch.broadcast_shapes(x.shape[:-1], batch_shape)
    except RuntimeError as exc:
        raise ShapeError(
            f"{name}: shape {tuple(x.shape)} does not broadcast with the batch shape "
            f"{tuple(batch_shape)} (+ event dim {event_dim})"
        ) from exc


def check_fit_inputs(
    samples: torch.Tensor, log_weights: torch.Tensor, event_dim: int
) -> torch.Size:
    """Check ``samples: (K, *batch, D)``, ``log_weights: (K, *batch)``; return ``batch``."""
    for name, t in (("samples", samples), ("log_weights", log_weights)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if samples.dim() < 2 or samples.shape[-1] != event_dim:
        raise ShapeError(
            f"samples: expected shape (K, *batch, {event_dim}), got {tuple(samples.shape)}"
        )
    if samples.shape[0] < 1:
        raise ShapeError("samples: need at least one sample (K >= 1)")
    if tuple(log_weights.shape) != tuple(samples.shape[:-1]):
        raise ShapeError(
            f"log_weights: expected shape {tuple(samples.shape[:-1])} (K, *batch), "
            f"got {tuple(log_weights.shape)}"
        )
    return samples.shape[1:-1]


def check_batch_param(
    value: float | torch.Tensor,
    name: str,
    batch_shape: torch.Size,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A python float or a tensor of shape ``()`` or ``batch_shape`` -> tensor ``batch_shape``."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 and tuple(value.shape) != tuple(batch_shape):
            raise ShapeError(
                f"{name}: expected a scalar or shape {tuple(batch_shape)}, "
                f"got {tuple(value.shape)}"
            )
        if value.device != device:
            raise DeviceError(f"{name} is on {value.device} but the parameters on {device}")
        t = value.to(dtype)
    else:
        t = torch.tensor(float(value), dtype=dtype, device=device)
    return t.expand(batch_shape)


def stacked_params(
    dists: Sequence[Any], cls: type, names: tuple[str, ...]
) -> list[torch.Tensor]:
    """The parameters ``names`` of ``dists`` (instances of ``cls`` of one batch shape ``batch``),
    each stacked into ``(M, *batch, ...)`` (for the ``stack`` classmethods)."""
    if len(dists) == 0:
        raise ShapeError(f"{cls.__name__}.stack: need at least one distribution")
    for d in dists:
        if type(d) is not cls:
            raise TypeError(f"{cls.__name__}.stack: got a {type(d).__name__}")
    shapes = {tuple(d.batch_shape) for d in dists}
    if len(shapes) > 1:
        raise ShapeError(f"{cls.__name__}.stack: batch shapes differ: {sorted(shapes)}")
    dtypes = {d.dtype for d in dists}
    if len(dtypes) > 1:
        raise DTypeError(f"{cls.__name__}.stack: dtypes differ: {sorted(map(str, dtypes))}")
    return [torch.stack([getattr(d, name) for d in dists]) for name in names]


def normalized_weights(log_weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax of ``log_weights: (K, *batch)`` over ``K``, computed stably.

    NaN log-weights and samples flagged invalid (``valid: (K, *batch)`` False) get zero
    weight; ``+inf`` is treated as the largest finite value.  A batch element whose weights
    are all zero falls back to uniform weights over its valid samples (all zero if none is
    valid).  Returns ``(K, *batch)``, summing to 1 over ``K`` where any sample is valid.
    """
    neg_inf = float("-inf")
    lw = torch.nan_to_num(
        log_weights, nan=neg_inf, posinf=torch.finfo(log_weights.dtype).max, neginf=neg_inf
    )
    lw = lw.masked_fill(~valid, neg_inf)
    m = lw.amax(dim=0, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lw - m)
    s = w.sum(dim=0, keepdim=True)
    v = valid.to(w.dtype)
    uniform = v / v.sum(dim=0, keepdim=True).clamp_min(1.0)
    return torch.where(s > 0, w / s.clamp_min(torch.finfo(w.dtype).tiny), uniform)


def safe_cholesky(
    mat: torch.Tensor, jitter: torch.Tensor, rounds: int = 4
) -> torch.Tensor:
    """Lower Cholesky factor of symmetric ``mat: (*batch, n, n)`` that never raises.

    Elements whose factorisation fails (or is non-finite) are retried with
    ``jitter * 10^i * I`` added, ``i = 1..rounds`` (``jitter: (*batch,)``, positive); an element
    that still fails gets the diagonal factor ``diag(sqrt(max(diag(mat), jitter)))`` (1 where
    that is not finite).  Fixed work, no host synchronisation.
    """
    n = mat.shape[-1]
    eye = torch.eye(n, dtype=mat.dtype, device=mat.device)
    tril, info = torch.linalg.cholesky_ex(mat)
    bad = (info != 0) | ~torch.isfinite(tril).all(dim=-1).all(dim=-1)
    on_cpu = mat.device.type == "cpu"
    for i in range(rounds):
        # On the CPU a check costs nothing: skip the retries when every element factorised.
        # On accelerators all rounds run, so nothing waits on the device.
        if on_cpu and not bool(bad.any()):
            return tril
        scale = jitter * (10.0 ** (i + 1))
        tril_j, info_j = torch.linalg.cholesky_ex(mat + scale[..., None, None] * eye)
        ok_j = (info_j == 0) & torch.isfinite(tril_j).all(dim=-1).all(dim=-1)
        take = bad & ok_j
        tril = torch.where(take[..., None, None], tril_j, tril)
        bad = bad & ~ok_j
    diag = torch.maximum(mat.diagonal(dim1=-2, dim2=-1), jitter[..., None]).sqrt()
    diag = torch.where(torch.isfinite(diag), diag, torch.ones_like(diag))
    return torch.where(bad[..., None, None], torch.diag_embed(diag), tril)


def _batched_apply(mat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mat x`` for ``mat: (*b, n, n)`` and ``x: (*S, n)`` broadcasting with ``b``: returns
    ``broadcast(S, b) + (n,)``.  Where ``x`` is ``(*lead, *b, n)`` the leading samples are
    stacked into one batched product over ``b`` (a broadcast ``@`` would expand ``mat`` to
    every sample and multiply a batch of tiny matrices, several times slower on the CPU)."""
    batch = mat.shape[:-2]
    nb, n = len(batch), mat.shape[-1]
    if x.dim() > nb + 1 and x.shape[x.dim() - 1 - nb : -1] == batch:
        lead = x.shape[: x.dim() - 1 - nb]
        xs = x.reshape(math.prod(lead), *batch, n).movedim(0, -2)  # (*b, M, n)
        return (xs @ mat.transpose(-1, -2)).movedim(-2, 0).reshape(*lead, *batch, n)
    return torch.einsum("...ij,...j->...i", mat, x)


def apply_tril(tril: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``L z`` for ``tril: (*b, n, n)`` and ``z: (*S, n)`` broadcasting with ``b`` (drawing
    from ``N(0, L L^T)``): ``broadcast(S, b) + (n,)``."""
    return _batched_apply(tril, z)


def mahalanobis_sq(tril: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``|L^-1 x|^2`` for ``tril: (*b, n, n)`` (lower) and ``x: (*S, n)`` broadcasting with ``b``.

    Inverts the (small) batch of factors once and applies it with one broadcast ``einsum``:
    much cheaper than a triangular solve per sample on the CPU.  Returns
    ``broadcast(S, b)``.
    """
    n = tril.shape[-1]
    eye = torch.eye(n, dtype=tril.dtype, device=tril.device).expand(tril.shape)
    inv = torch.linalg.solve_triangular(tril, eye, upper=False)
    return _batched_apply(inv, x).square().sum(-1)


def _first_accepted(
    accept: torch.Tensor, candidates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element, the first accepted candidate over dim 0 and whether any was accepted."""
    rounds = accept.shape[0]
    # Round r scores rounds - r if accepted, 0 if not: the maximum marks the first accepted
    # (a float max over the leading dim is ~10x cheaper on the CPU than argmax or int64 min).
    score = torch.arange(rounds, 0, -1, dtype=torch.float32, device=accept.device)
    best = (accept * score.view(-1, *([1] * (accept.dim() - 1)))).amax(dim=0, keepdim=True)
    idx = (rounds - best).to(torch.int64)  # rounds: none accepted
    first = candidates.gather(0, idx.clamp_max(rounds - 1)).squeeze(0)
    return first, best.squeeze(0) > 0


def _rejection_blocks(
    block_rounds: tuple[int, ...],
    params: tuple[torch.Tensor, ...],
    propose: Callable[[tuple[torch.Tensor, ...], int, bool], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised rejection sampling in blocks of rounds, one draw per element of ``params``
    (tensors of one shape ``S``).

    ``propose(p, rounds, last)`` draws ``rounds`` rounds for the elements of ``p`` (``params``
    or a subset of them, same layout) and returns the first accepted candidate and whether any
    was; ``last`` marks the final block.  On the CPU a block after the first draws only for the
    elements not accepted yet, and the loop ends once all are (a check costs nothing there); on
    accelerators every block runs over every element, so nothing waits on the device.

    Returns:
        the values ``S`` (unspecified where nothing was accepted) and the accepted flags ``S``.
    """
    on_cpu = params[0].device.type == "cpu"
    value: torch.Tensor | None = None
    done = torch.zeros(params[0].shape, dtype=torch.bool, device=params[0].device)
    todo: tuple[torch.Tensor, ...] | None = None  # CPU, after a block: the draws left
    for block, rounds in enumerate(block_rounds):
        last = block + 1 == len(block_rounds)
        sub = params if todo is None else tuple(p[todo] for p in params)
        cand, accepted = propose(sub, rounds, last)
        if value is None:
            value, done = cand, accepted
        elif todo is None:
            value = torch.where(done, value, cand)
            done = done | accepted
        else:
            value = value.index_put(todo, cand)  # every one of them was still to draw
            done = done.index_put(todo, accepted)
        if on_cpu and not last:
            if bool(done.all()):
                break
            todo = (~done).nonzero(as_tuple=True)
    assert value is not None
    return value, done


def standard_gamma(alpha: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw of ``Gamma(alpha, rate=1)`` per element of ``alpha: S`` (shape ``S``).

    Marsaglia & Tsang (2000): for ``a >= 1``, ``d = a - 1/3``, ``c = 1/sqrt(9d)``, draw
    ``x ~ N(0, 1)``, ``u ~ U(0, 1)``, ``v = (1 + c x)^3`` and accept ``d v`` when ``v > 0`` and
    ``log u < x^2/2 + d - d v + d log v`` (exact).  10 vectorised rounds are drawn (in the
    blocks of :data:`GAMMA_BLOCK_ROUNDS`) and the first accepted one is used; if none is
    (probability below ``0.05^10`` per draw) the last proposal ``d max(v, tiny)`` -- essentially
    the Wilson-Hilferty cube-root normal approximation -- is returned.  For ``alpha < 1`` the
    draw is ``Gamma(alpha + 1) * U^(1/alpha)`` (exact), computed in log space.  The result is
    clamped to the smallest positive normal number of the dtype.  Dtype and device follow
    ``alpha``.
    """
    shape = alpha.shape
    dt, dev = alpha.dtype, alpha.device
    boost = alpha < 1
    a = torch.where(boost, alpha + 1, alpha)
    d = a - 1.0 / 3.0
    c = torch.rsqrt(9.0 * d)
    tiny = torch.finfo(alpha.dtype).tiny

    def propose(
        p: tuple[torch.Tensor, ...], rounds: int, last: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        db, cb = p
        x = torch.randn((rounds, *db.shape), generator=generator, dtype=dt, device=dev)
        u = torch.rand((rounds, *db.shape), generator=generator, dtype=dt, device=dev)
        v = (1.0 + cb * x) ** 3
        v_pos = v.clamp_min(tiny)
        accept = (v > 0) & (torch.log(u) < 0.5 * x * x + db - db * v_pos + db * torch.log(v_pos))
        first, any_acc = _first_accepted(accept, v_pos)
        # Rejected in every round of the last block: its last proposal (see above).
        return db * (torch.where(any_acc, first, v_pos[-1]) if last else first), any_acc

    g, _ = _rejection_blocks(GAMMA_BLOCK_ROUNDS, (d, c), propose)
    ub = torch.rand(shape, generator=generator, dtype=dt, device=dev)
    log_g = torch.log(g) + torch.where(boost, torch.log(ub) / alpha, torch.zeros_like(ub))
    return torch.exp(log_g).clamp_min(tiny)


#: Degrees of freedom up to which :func:`chi_square` draws whole-number ``df`` as a sum of
#: squared normals (on the CPU).
MAX_SUM_OF_SQUARES_DF = 16


def chi_square(df: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw of ``chi2(df)`` per element of ``df: S`` (shape ``S``; dtype and device of
    ``df``).

    Where every ``df`` is a whole number up to :data:`MAX_SUM_OF_SQUARES_DF` and the tensors
    are on the CPU (where the check costs nothing), the draw is the definition itself, the sum
    of ``df`` squared standard normals (one ``randn`` and a masked sum: exact, a few times
    cheaper than rejection); otherwise ``2 Gamma(df / 2)`` (:func:`standard_gamma`).  Either
    way the draw is clamped to the dtype's smallest positive normal number.
    """
    if df.device.type == "cpu" and df.numel():
        top = float(df.max())
        if float(df.min()) >= 1 and top <= MAX_SUM_OF_SQUARES_DF and bool((df == df.round()).all()):
            k = int(top)
            z = torch.randn((k, *df.shape), generator=generator, dtype=df.dtype)
            if float(df.min()) < k:  # mixed degrees of freedom: only the first df terms
                steps = torch.arange(k, dtype=df.dtype).view(k, *([1] * df.dim()))
                z = z * (steps < df)
            return z.square().sum(0).clamp_min(torch.finfo(df.dtype).tiny)
    return 2.0 * standard_gamma(0.5 * df, generator)


def von_mises_centered(kappa: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw of the von Mises distribution with mean 0 and concentration ``kappa: S``.

    Best & Fisher (1979) wrapped-Cauchy rejection, exact: with
    ``tau = 1 + sqrt(1 + 4 kappa^2)``, ``rho = 2 kappa / (tau + sqrt(2 tau))`` (a cancellation-
    free form of the textbook ``(tau - sqrt(2 tau)) / (2 kappa)``), ``r = (1 + rho^2)/(2 rho)``,
    draw ``u1, u2, u3 ~ U(0, 1)``, ``z = cos(pi u1)``, ``f = (1 + r z)/(r + z)``,
    ``c = kappa (r - f)``; accept when ``c (2 - c) > u2`` or ``log(c / u2) + 1 - c >= 0`` and
    return ``sign(u3 - 1/2) acos(f)``.  32 vectorised rounds in the blocks of
    :data:`VM_BLOCK_ROUNDS`; a draw rejected in all of them (probability at most
    ``0.343^32 ~ 1.4e-15``) falls back to the wrapped normal with the same mean resultant
    length, ``sigma^2 = -2 log A1(kappa)``.

    ``kappa`` is clamped below at 1e-8 (indistinguishable from uniform).  Computed in float64
    (float32 on MPS) for accuracy at large ``kappa``; returns the work dtype, not wrapped.
    """
    wd = work_dtype(kappa.device)
    shape = kappa.shape
    dt, dev = wd, kappa.device
    k = kappa.to(wd).clamp_min(1e-8)
    tau = 1.0 + torch.sqrt(1.0 + 4.0 * k * k)
    rho = 2.0 * k / (tau + torch.sqrt(2.0 * tau))
    r = (1.0 + rho * rho) / (2.0 * rho)

    def propose(
        p: tuple[torch.Tensor, ...], rounds: int, last: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kb, rb = p
        u = torch.rand((3, rounds, *kb.shape), generator=generator, dtype=dt, device=dev)
        u1, u2, u3 = u.unbind(0)
        z = torch.cos(math.pi * u1)
        f = (1.0 + rb * z) / (rb + z)
        c = kb * (rb - f)
        accept = (c * (2.0 - c) > u2) | (torch.log(c / u2) + 1.0 - c >= 0)
        f_first, any_acc = _first_accepted(accept, f)
        u3_first, _ = _first_accepted(accept, u3)
        cand = torch.acos(f_first.clamp(-1.0, 1.0))
        return torch.where(u3_first < 0.5, -cand, cand), any_acc

    theta, done = _rejection_blocks(VM_BLOCK_ROUNDS, (k, r), propose)
    on_cpu = kappa.device.type == "cpu"
    if on_cpu and bool(done.all()):
        return theta  # (the fallback below is only needed for a draw rejected throughout)
    a1 = (torch.special.i1e(k) / torch.special.i0e(k)).clamp(torch.finfo(wd).tiny, 1.0)
    sigma = torch.sqrt(-2.0 * torch.log(a1))
    fallback = sigma * torch.randn(shape, generator=generator, dtype=dt, device=dev)
    return torch.where(done, theta, fallback)


def wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Wrap angles to ``[-pi, pi)`` (also after rounding to ``x.dtype``)."""
    y = torch.remainder(x + math.pi, 2.0 * math.pi) - math.pi
    return torch.where(y >= math.pi, y - 2.0 * math.pi, y)

