"""Sanity check that the deformable correspondence network learns: overfit two synthetic images.

Usage::

    python bench/deformable_overfit.py --steps 300

Two random-texture images (160x96, f = 120 px) with three boxes are trained for ``--steps``
AdamW steps (lr 1e-3, gradient clipping at 35 as in FCOS3D) with all losses of
:meth:`~epropnp_lib.nets.deformable.DeformableCorrespondenceNet.loss`; then ``detect`` runs on
the same images and, for every ground-truth box, the nearest detection's centre error, yaw
error, class and score are printed.  This is a memorisation test of the whole path (targets,
queries, deformable sampling, point subnet, EPro-PnP KL loss, PnP solve, NMS), not a
benchmark of accuracy.
"""

from __future__ import annotations

import argparse
import time

import torch

from epropnp_lib.epropnp import MonteCarloConfig
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.rotations import wrap_angle
from epropnp_lib.nets.backbone import BackboneConfig
from epropnp_lib.nets.deformable import (
    DeformableCorrespondenceNet,
    DeformableLossConfig,
    small_config,
)


def boxes(centers: list[list[float]], labels: list[int]) -> CameraBoxes:
    m = len(centers)
    return CameraBoxes(
        torch.tensor(centers), torch.tensor([[1.9, 4.6, 1.7]] * m), torch.full((m,), 0.3),
        torch.tensor(labels), torch.tensor([[1.0, -2.0]] * m), torch.full((m,), 5),
        torch.ones(m),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = small_config(
        backbone=BackboneConfig(depth=18, base_width=16), fpn_channels=32, head_channels=32,
        embed_dim=32, num_heads=4, num_points=4, point_hidden=32, input_scale=1.0,
        monte_carlo=MonteCarloConfig(num_iterations=2, num_samples=32),
        loss=DeformableLossConfig(max_pose_queries=8),
    )
    net = DeformableCorrespondenceNet(cfg)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 96, 160, generator=gen)
    cam = torch.tensor([[120.0, 0.0, 79.5], [0.0, 120.0, 47.5], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    targets = [boxes([[0.0, 0.5, 12.0], [-3.0, 0.5, 20.0]], [0, 5]),
               boxes([[2.0, 0.5, 15.0]], [1])]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for step in range(args.steps):
        out = net.loss(images, cam, targets, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 35.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: total {out.total.item():.3f} kl {out.kl.item():.3f} "
                  f"cls {out.cls.item():.3f} reg {out.reg.item():.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    net.eval()
    for det, gt in zip(net.detect(images, cam), targets, strict=True):
        for i in range(gt.num_boxes):
            if det.boxes.num_boxes == 0:
                print(f"box at {gt.center[i].tolist()}: no detection")
                continue
            dist = (det.boxes.center - gt.center[i]).norm(dim=-1)
            j = int(dist.argmin())
            yaw_err = float(wrap_angle(det.boxes.yaw[j] - gt.yaw[i]).abs())
            print(f"box at {gt.center[i].tolist()} class {int(gt.labels[i])}: nearest detection "
                  f"centre error {float(dist[j]):.2f} m, yaw error {yaw_err:.3f} rad, class "
                  f"{int(det.boxes.labels[j])}, score {float(det.boxes.scores[j]):.2f}")


if __name__ == "__main__":
    main()
