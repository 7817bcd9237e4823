"""Accuracy of the AMIS estimate of the log normaliser (second term of Eq. 5).

For small 4DoF problems the integral ``log int exp(-cost(y)) dy`` can be computed on a dense
grid (:func:`epropnp_lib.diagnostics.dense_log_normalizer_4dof`).  This prints, per noise
level, the bias of the AMIS estimate (mean over seeds minus the grid value) and its spread
over seeds, for the paper's setting (T=4, K'=128) and for more samples::

    .venv/bin/python bench/amis.py
"""

from __future__ import annotations

import argparse

import torch

from epropnp_lib.diagnostics import dense_log_normalizer_4dof
from epropnp_lib.epropnp import EProPnP4DoF, MonteCarloConfig
from epropnp_lib.pnp.problems import random_problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=4, help="problems per noise level")
    parser.add_argument("--points", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=16)
    args = parser.parse_args(argv)
    print("| pixel noise | T | K' | mean abs bias (nats) | max abs bias | mean std over seeds "
          "| max std |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for noise in (2.0, 8.0):
        gen = torch.Generator().manual_seed(0)
        p = random_problems(args.problems, args.points, dof=4, noise_std=noise,
                            dtype=torch.float64, generator=gen)
        for t, k in ((4, 128), (4, 512)):
            layer = EProPnP4DoF(MonteCarloConfig(num_iterations=t, num_samples=k))
            sol = layer.solve(p.x3d, p.x2d, p.w2d, p.cam_mats)
            exact = dense_log_normalizer_4dof(p.x3d, p.x2d, p.w2d, p.cam_mats, sol.pose,
                                              sol.covariance, layer.config.solver.huber)
            est = torch.stack([
                layer(p.x3d, p.x2d, p.w2d, p.cam_mats, with_step=False,
                      generator=torch.Generator().manual_seed(s)).log_normalizer
                for s in range(args.seeds)
            ])
            bias = (est.mean(0) - exact).abs()
            std = est.std(0)
            print(f"| {noise:g} | {t} | {k} | {bias.mean():.4f} | {bias.max():.4f} | "
                  f"{std.mean():.4f} | {std.max():.4f} |")


if __name__ == "__main__":
    main()
