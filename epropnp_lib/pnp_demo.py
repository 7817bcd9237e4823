"""The main job on an embedded default: solve a generated PnP problem with EPro-PnP.

Until the detector lands, ``make demo`` runs this: it generates a seeded batch of noisy 6DoF and
4DoF problems, solves them, prints the pose, the Laplace covariance in the ROS 6x6 layout,
posterior samples, the Monte Carlo KL loss and timings.

    python -m epropnp_lib.pnp_demo [--batch 512] [--points 64] [--noise 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch

from epropnp_lib.epropnp import EProPnP4DoF, EProPnP6DoF
from epropnp_lib.losses import MonteCarloPoseLoss
from epropnp_lib.pnp.covariance import to_ros_covariance
from epropnp_lib.pnp.problems import random_problems
from epropnp_lib.pnp.solver import SolveStatus


def _fmt(values: torch.Tensor, digits: int = 4) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values.tolist()) + "]"


def run(batch: int, points: int, noise: float, seed: int, device: str) -> None:
    """Solve and print (see the module docstring)."""
    torch.manual_seed(seed)
    for layer in (EProPnP6DoF(), EProPnP4DoF()):
        dof = layer.space.tangent_dim
        gen = torch.Generator().manual_seed(seed)
        prob = random_problems(batch, points, dof=dof, noise_std=noise, generator=gen,
                               device=device)
        layer.solve(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats)  # warm-up (first-call costs)
        t0 = time.perf_counter()
        sol = layer.solve(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats)
        solve_ms = (time.perf_counter() - t0) * 1e3
        rot_err = torch.rad2deg(layer.space.rotation_error(sol.pose, prob.pose))
        t_err = (sol.pose[:, :3] - prob.pose[:, :3]).norm(dim=-1)
        counts = {s.name: int((sol.status == s).sum()) for s in SolveStatus}
        print(f"=== EPro-PnP {dof}DoF: B={batch} problems, N={points} points, "
              f"{noise} px noise, weights 1/sigma, device {device} ===")
        print(f"solve (second call): {solve_ms:.1f} ms for the batch "
              f"({solve_ms / batch * 1e3:.1f} us/problem), "
              f"status {counts}")
        print(f"median error: rotation {rot_err.median():.4f} deg, "
              f"translation {t_err.median():.5f} (units of the object points)")
        print(f"element 0 true pose     {_fmt(prob.pose[0])}")
        print(f"element 0 solved pose   {_fmt(sol.pose[0])}")
        ros = to_ros_covariance(sol.covariance[0]).reshape(6, 6)
        print("element 0 covariance, ROS layout (x, y, z, rot_x, rot_y, rot_z):")
        for row in ros:
            print("   " + " ".join(f"{v:11.3e}" for v in row.tolist()))
        gen_mc = torch.Generator(device=device).manual_seed(seed)
        sub = slice(0, min(batch, 32))
        for _ in range(2):  # the second call is timed
            t0 = time.perf_counter()
            res = layer(prob.x3d[sub], prob.x2d[sub], prob.w2d[sub], prob.cam_mats[sub],
                        pose_target=prob.pose[sub], generator=gen_mc.manual_seed(seed))
            loss = MonteCarloPoseLoss()(res)
            mc_ms = (time.perf_counter() - t0) * 1e3
        post = layer.posterior_samples(prob.x3d[:1], prob.x2d[:1], prob.w2d[:1],
                                       prob.cam_mats[:1], 1000, gen_mc)[:, 0]
        pos_std = post[:, :3].std(dim=0)
        rot_rms = torch.rad2deg(layer.space.rotation_error(post, sol.pose[:1])).square()
        print(f"Monte Carlo (T=4, K'=128) on {sub.stop} problems: KL loss {loss.item():.3f}, "
              f"{mc_ms:.1f} ms")
        print(f"element 0 posterior (1000 equally weighted samples): position std "
              f"{_fmt(pos_std)}, rotation RMS {rot_rms.mean().sqrt():.4f} deg")
        print()


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``epropnp-pnp-demo``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="problems per batch")
    parser.add_argument("--points", type=int, default=64, help="correspondences per problem")
    parser.add_argument("--noise", type=float, default=1.0, help="pixel noise std")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.points < 4 or not args.noise > 0:
        parser.error("need --batch >= 1, --points >= 4 and --noise > 0")
    run(args.batch, args.points, args.noise, args.seed, args.device)


if __name__ == "__main__":
    main()
