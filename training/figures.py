"""Pictures of a trained dense correspondence network (like the paper's Fig. 6 and Fig. 7).

::

    python -m epropnp_training.figures --checkpoint runs/repro/monte_carlo/checkpoint.pt \\
        --out runs/repro/figures

writes

* ``maps.png`` (Fig. 7): per held-out crop, the input, the learned X and Y weight maps (spatial
  Softmax times the global scale), the learned object-coordinate map (x, y, z scaled to RGB) and
  the ground-truth coordinates;
* ``orientation.png`` (Fig. 6): the orientation density from the Monte Carlo pose samples: the
  directions of the object's x (red), y (green) and z (blue) axes in the camera frame of
  resampled poses, on an azimuth / elevation chart, with the prediction (circles) and the truth
  (crosses).

The crops come from the held-out split of the reproduction run the checkpoint was trained in
(its ``repro_config``), or from :class:`~epropnp_training.reproduce.ReproConfig`'s defaults.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from matplotlib.figure import Figure

from epropnp_lib.dataclass_io import from_dict
from epropnp_lib.generators.objects import render_split
from epropnp_lib.geometry.rotations import quat_to_matrix
from epropnp_lib.nets.dense import DenseCorrespondenceNet

from .reproduce import ReproConfig, data_config, index_batch

logger = logging.getLogger(__name__)

_AXIS_COLOURS = ("tab:red", "tab:green", "tab:blue")


def _to_rgb(coord: torch.Tensor, extent: float) -> torch.Tensor:
    """``(3, h, w)`` coordinates in ``[-extent, extent]`` -> ``(h, w, 3)`` in [0, 1]."""
    return (coord / (2 * extent) + 0.5).clamp(0, 1).permute(1, 2, 0)


def _axis_angles(rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Azimuth and elevation (degrees) of the columns of ``rot: (..., 3, 3)`` (object axes in
    the camera frame; azimuth about the camera y axis from +z, elevation towards -y = up)."""
    x, y, z = rot[..., 0, :], rot[..., 1, :], rot[..., 2, :]
    az = torch.rad2deg(torch.atan2(x, z))
    el = torch.rad2deg(torch.asin((-y).clamp(-1, 1)))
    return az, el


@torch.no_grad()
def make_figures(
    net: DenseCorrespondenceNet, cfg: ReproConfig, out: Path, num: int = 4,
    num_samples: int = 512, seed: int = 0,
) -> list[Path]:
    """Write ``maps.png`` and ``orientation.png`` for ``num`` held-out crops; returns paths."""
    out.mkdir(parents=True, exist_ok=True)
    test = render_split(data_config(cfg, "test"))
    b = index_batch(test, torch.arange(min(num, int(test.image.shape[0]))))
    net.eval()
    res, sol = net.predict_pose(b.image, b.cam_mats)
    n = int(b.image.shape[0])
    ext = net.config.object_extent
    w = (res.weight_map * res.scale[:, :, None, None]).cpu()

    fig = Figure(figsize=(12, 2.5 * n))  # no pyplot: no global backend state
    axes = fig.subplots(n, 5, squeeze=False)
    titles = ("input", "weight X", "weight Y", "coordinates (learned)", "coordinates (truth)")
    for i in range(n):
        gt = b.coords[i] * b.mask[i]
        panels = (
            b.image[i].permute(1, 2, 0).clamp(0, 1),
            w[i, 0], w[i, 1],
            _to_rgb(res.coord_map[i].cpu(), ext),
            _to_rgb(gt, ext),
        )
        for j, img in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(img.numpy(), cmap="viridis" if img.dim() == 2 else None,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
    fig.suptitle("Learned weight and coordinate maps (cf. paper Fig. 7)")
    fig.tight_layout()
    maps_path = out / "maps.png"
    fig.savefig(maps_path, dpi=100)

    gen = torch.Generator().manual_seed(seed)
    samples = net.pnp.posterior_samples(res.x3d, res.x2d, res.w2d, res.cam_mats, num_samples,
                                        generator=gen)  # (S, B, 7)
    fig = Figure(figsize=(4 * n, 3.6))
    axes = fig.subplots(1, n, squeeze=False)
    for i in range(n):
        ax = axes[0][i]
        ok = torch.isfinite(samples[:, i]).all(-1)
        if bool(ok.any()):
            az, el = _axis_angles(quat_to_matrix(samples[ok, i, 3:]))
            for k in range(3):
                ax.scatter(az[:, k], el[:, k], s=3, alpha=0.15, color=_AXIS_COLOURS[k])
        for pose, marker in ((sol.pose[i], "o"), (b.pose[i], "x")):
            if bool(torch.isfinite(pose).all()):
                az, el = _axis_angles(quat_to_matrix(pose[3:]))
                for k in range(3):
                    if marker == "o":
                        ax.scatter(float(az[k]), float(el[k]), s=60, marker=marker,
                                   facecolors="none", edgecolors=_AXIS_COLOURS[k])
                    else:
                        ax.scatter(float(az[k]), float(el[k]), s=60, marker=marker,
                                   color=_AXIS_COLOURS[k])
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.set_xlabel("azimuth (deg)")
        if i == 0:
            ax.set_ylabel("elevation (deg)")
        ax.set_title(f"crop {i}", fontsize=9)
    fig.suptitle("Orientation density of Monte Carlo pose samples: object x/y/z axes "
                 "(o prediction, x truth; cf. paper Fig. 6)", fontsize=10)
    fig.tight_layout()
    orient_path = out / "orientation.png"
    fig.savefig(orient_path, dpi=100)
    return [maps_path, orient_path]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m epropnp_training.figures",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--num", type=int, default=4, help="held-out crops to show")
    ap.add_argument("--samples", type=int, default=512, help="pose samples per crop")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.num < 1 or args.samples < 1:
        ap.error("--num and --samples must be >= 1")
    net, extra = DenseCorrespondenceNet.from_checkpoint(args.checkpoint)
    raw = extra.get("repro_config")
    cfg = from_dict(ReproConfig, raw, where=f"{args.checkpoint}: repro_config") \
        if isinstance(raw, dict) else ReproConfig()
    cfg = replace(cfg, net=net.config, crop_size=net.config.crop_size)
    for p in make_figures(net, cfg, args.out, args.num, args.samples):
        logger.info("wrote %s", p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
