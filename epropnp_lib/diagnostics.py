"""Diagnostics: reference values for checking the Monte Carlo machinery, and a speed probe.

:func:`dense_log_normalizer_4dof` integrates ``exp(-cost)`` over ``(x, y, z, yaw)`` on a dense
grid -- exact up to the grid, and affordable only for small 4DoF problems -- to check the AMIS
estimate of the second term of Eq. 5 (``EProPnPResult.log_normalizer``).

:func:`small_op_time_us` measures what one small tensor operation costs on this machine right
now: the batched solver and the Monte Carlo layer run thousands of them, so their timings scale
with it.  The benchmarks print it next to their numbers (on a shared VM it can change 2x within
minutes).
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from epropnp_lib.geometry.pose import Pose4DoF
from epropnp_lib.pnp.cost import HuberConfig, evaluate_cost


@torch.no_grad()
def dense_log_normalizer_4dof(
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    pose: torch.Tensor,
    covariance: torch.Tensor,
    huber: HuberConfig,
    width: float = 7.0,
    num: int = 36,
    chunk: int = 200_000,
) -> torch.Tensor:
    """``log int exp(-cost(y)) dy`` over ``y = (x, y, z, yaw)`` by a dense Riemann sum.

    The grid spans ``pose +- width * std`` in each coordinate (std from ``covariance``), yaw
    over the whole circle where that interval would exceed it, ``num`` nodes per axis, in
    float64.  The measure is Lebesgue on R^3 x [-pi, pi), as in :class:`EProPnP4DoF`.

    Args:
        x3d: ``(B, N, 3)``; x2d: ``(B, N, 2)``; w2d: ``(B, N, 2)``; cam_mats: ``(B, 3, 3)``.
        pose: ``(B, 4)`` the optimum; covariance: ``(B, 4, 4)`` its Laplace covariance.
        huber: the cost's kernel settings.

    Returns:
        ``(B,)`` float64 log normalisers.
    """
    out = []
    for b in range(x3d.shape[0]):
        std = covariance[b].double().diagonal().sqrt()
        axes = []
        for d in range(4):
            half = width * float(std[d])
            if d == 3 and half > math.pi:
                axes.append(torch.linspace(-math.pi, math.pi, num + 1, dtype=torch.float64)[:-1])
            else:
                axes.append(float(pose[b, d]) + torch.linspace(-half, half, num,
                                                               dtype=torch.float64))
        cell = math.prod(float(a[1] - a[0]) for a in axes)
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 1, 4)
        p3, p2, pw, pk = (t[b : b + 1].double().cpu() for t in (x3d, x2d, w2d, cam_mats))
        delta = huber.threshold(p2, pw)
        costs = torch.cat([
            evaluate_cost(Pose4DoF, part, p3, p2, pw, pk, delta).cost[:, 0]
            for part in grid.split(chunk)
        ])
        out.append(torch.logsumexp(-costs, 0) + math.log(cell))
    return torch.stack(out)


def small_op_time_us(repeats: int = 2000, rounds: int = 5) -> float:
    """Median over ``rounds`` of the wall time (microseconds) of one elementwise product of two
    ``(32, 64)`` float32 CPU tensors, averaged over ``repeats`` calls: the per-operation
    overhead of eager PyTorch on this machine at this moment."""
    a = torch.ones(32, 64)
    out = torch.empty_like(a)
    for _ in range(100):
        torch.mul(a, a, out=out)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mul(a, a, out=out)
        times.append((time.perf_counter() - t0) / repeats * 1e6)
    return statistics.median(times)
