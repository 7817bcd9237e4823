"""Synthetic 6DoF object crops: the procedural objects of
:mod:`~epropnp_lib.generators.object_meshes` rendered into LineMOD-like crops with their exact
ground truth (object-coordinate map, mask, pose, intrinsics).

A virtual pinhole camera sees the object at distance ``d`` and off-axis angle ``alpha``; the crop
is the square region around it, ``crop_scale`` times the projected diameter wide, resampled to
``S = image_size`` pixels.  Its intrinsics are ``[[f, 0, cx], [0, f, cy], [0, 0, 1]]`` with
``f = S d / (crop_scale * diameter)`` and the principal point putting the object centre at the
crop centre ``((S - 1) / 2, (S - 1) / 2)`` plus a jitter: ``cam_mats`` is the matrix to use with
crop pixel coordinates (pixel centres at integers).  Dense maps at a network's output stride:
:func:`epropnp_lib.geometry.camera.pixel_grid`, :func:`epropnp_lib.nets.dense_targets.
downsample_coords`.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as nnf

from epropnp_lib.errors import ConfigError
from epropnp_lib.generators.object_meshes import (
    OBJECT_NAMES,
    SyntheticObject,
    make_object,
    render_object,
)
from epropnp_lib.geometry.rotations import quat_exp, quat_multiply, quat_normalize

logger = logging.getLogger(__name__)

__all__ = [
    "BACKGROUNDS",
    "CANONICAL_QUAT",
    "SPLITS",
    "CropBatch",
    "CropSample",
    "SyntheticCropConfig",
    "SyntheticCropDataset",
    "contact_sheet",
    "render_samples",
    "render_split",
]

#: Dataset splits; each has its own random stream.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Background kinds of :class:`SyntheticCropConfig`.
BACKGROUNDS: tuple[str, ...] = ("clutter", "noise", "flat")

#: Canonical view (``max_rotation_deg`` is measured from it): the object's z axis points up in
#: the image (camera -y), its x axis to the right, and the camera looks along the object's +y
#: axis -- a rotation of +90 deg about the camera x axis.
CANONICAL_QUAT: tuple[float, float, float, float] = (
    math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0)



# --------------------------------------------------------------------------------------------
# Crop dataset
# --------------------------------------------------------------------------------------------

def _check_range(name: str, value: tuple[float, float], lo: float, hi: float | None = None,
                 ) -> None:
    if len(value) != 2:
        raise ConfigError(f"{name} must be a (min, max) pair, got {value!r}")
    a, b = value
    if not (lo <= a <= b and (hi is None or b <= hi)):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must satisfy min <= max within {bound}, got {value!r}")


@dataclass(frozen=True)
class SyntheticCropConfig:
    """Settings of the synthetic crop data (validated on construction; :class:`ConfigError`).

    Attributes:
        object_name: one of :data:`OBJECT_NAMES`.
        image_size: crop side ``S`` in pixels.
        num_samples: number of crops of the split.
        seed: base seed; each (seed, split, object, index) has its own random streams (one for
            the geometry, one for the appearance, so appearance settings never move poses).
        split: 'train', 'val' or 'test' (independent streams).
        max_rotation_deg: ``None`` for rotations uniform on SO(3); otherwise the largest angle
            (deg) from :data:`CANONICAL_QUAT`, sampled uniformly in the rotation-vector ball.
        distance_range: object distance ``d`` from the virtual full-size camera (m).
        max_off_axis_deg: largest angle between the optical axis of the full-size camera and
            the ray to the object centre (off-centre objects show perspective effects).
        crop_scale_range: crop side divided by the projected object diameter.
        center_jitter: largest offset of the projected object centre from the crop centre, as
            a fraction of ``S`` (per axis).
        background: 'clutter' (smooth colour noise + random rectangles and discs), 'noise'
            (smooth colour noise) or 'flat' (one random colour).
        ambient_range: ambient light fraction; the rest is Lambertian from a random direction
            on the camera's side.
        pixel_noise_std: standard deviation of the additive Gaussian pixel noise.
    """

    object_name: str = "drill"
    image_size: int = 64
    num_samples: int = 1000
    seed: int = 0
    split: str = "train"
    max_rotation_deg: float | None = None
    distance_range: tuple[float, float] = (0.5, 1.2)
    max_off_axis_deg: float = 20.0
    crop_scale_range: tuple[float, float] = (1.0, 1.3)
    center_jitter: float = 0.08
    background: str = "clutter"
    ambient_range: tuple[float, float] = (0.4, 0.7)
    pixel_noise_std: float = 0.02

    def __post_init__(self) -> None:
        if self.object_name not in OBJECT_NAMES:
            raise ConfigError(f"object_name must be one of {OBJECT_NAMES}, "
                              f"got {self.object_name!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"background must be one of {BACKGROUNDS}, "
                              f"got {self.background!r}")
        if not 8 <= self.image_size <= 4096:
            raise ConfigError(f"image_size must be in [8, 4096], got {self.image_size}")
        if self.num_samples < 0:
            raise ConfigError(f"num_samples must be >= 0, got {self.num_samples}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.max_rotation_deg is not None and not 0 <= self.max_rotation_deg <= 180:
            raise ConfigError(f"max_rotation_deg must be None or in [0, 180], "
                              f"got {self.max_rotation_deg}")
        _check_range("distance_range", self.distance_range, 0.05)
        _check_range("crop_scale_range", self.crop_scale_range, 0.5, 10.0)
        _check_range("ambient_range", self.ambient_range, 0.0, 1.0)
        if not 0 <= self.max_off_axis_deg < 80:
            raise ConfigError(f"max_off_axis_deg must be in [0, 80), "
                              f"got {self.max_off_axis_deg}")
        if not 0 <= self.center_jitter <= 0.5:
            raise ConfigError(f"center_jitter must be in [0, 0.5], got {self.center_jitter}")
        if not 0 <= self.pixel_noise_std <= 1:
            raise ConfigError(f"pixel_noise_std must be in [0, 1], got {self.pixel_noise_std}")


class CropSample(NamedTuple):
    """One synthetic crop (``S = image_size``).

    Attributes:
        image: ``(3, S, S)`` float32 RGB in [0, 1].
        coords: ``(3, S, S)`` float32 object coordinates (m) of the visible surface; 0 outside
            the mask.
        mask: ``(1, S, S)`` float32 in {0, 1}.
        pose: ``(7,)`` float32 object-to-camera pose ``(t, q_wxyz)`` (w >= 0).
        cam_mats: ``(3, 3)`` float32 intrinsics of the crop (pixel centres at integers).
        object_index: int64 scalar index into :data:`OBJECT_NAMES`.
    """

    image: torch.Tensor
    coords: torch.Tensor
    mask: torch.Tensor
    pose: torch.Tensor
    cam_mats: torch.Tensor
    object_index: torch.Tensor


class CropBatch(NamedTuple):
    """Stacked :class:`CropSample` fields with a leading ``N``: ``image (N, 3, S, S)``,
    ``coords (N, 3, S, S)``, ``mask (N, 1, S, S)``, ``pose (N, 7)``, ``cam_mats (N, 3, 3)``,
    ``object_index (N,)``."""

    image: torch.Tensor
    coords: torch.Tensor
    mask: torch.Tensor
    pose: torch.Tensor
    cam_mats: torch.Tensor
    object_index: torch.Tensor

    def sample(self, i: int) -> CropSample:
        """The ``i``-th crop as a :class:`CropSample`."""
        return CropSample(*(t[i] for t in self))


_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over the sequence)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


#: Random rectangles / discs per 'clutter' background.
_NUM_CLUTTER = 8


class _Params(NamedTuple):
    """Random draws of a batch of crops (float64, CPU)."""

    pose: torch.Tensor  # (N, 7)
    cam_mats: torch.Tensor  # (N, 3, 3)
    light: torch.Tensor  # (N, 3) unit direction towards the light (camera frame)
    ambient: torch.Tensor  # (N,)
    tint: torch.Tensor  # (N, 3)
    bg_coarse: torch.Tensor  # (N, 3, 3, 3)
    bg_fine: torch.Tensor  # (N, 3, 7, 7)
    clutter: torch.Tensor  # (N, K, 8): kind, cx, cy, rx, ry, rgb
    noise: torch.Tensor  # (N, 3, S, S) standard normal


def _draw(cfg: SyntheticCropConfig, obj: SyntheticObject, index: int) -> tuple[torch.Tensor, ...]:
    """The random draws of crop ``index`` (pose stream and appearance stream are separate, so
    appearance settings never change the poses)."""
    split_id = SPLITS.index(cfg.split)
    f64 = torch.float64
    g = torch.Generator().manual_seed(_mix(cfg.seed, split_id, obj.object_index, index, 0))
    if cfg.max_rotation_deg is None:
        q = quat_normalize(torch.randn(4, generator=g, dtype=f64))
    else:
        axis = nnf.normalize(torch.randn(3, generator=g, dtype=f64), dim=0)
        angle = math.radians(cfg.max_rotation_deg) * float(torch.rand(1, generator=g,
                                                                      dtype=f64)) ** (1 / 3)
        q = quat_multiply(quat_exp(axis * angle), torch.tensor(CANONICAL_QUAT, dtype=f64))
    q = torch.where(q[:1] < 0, -q, q)
    u = torch.rand(6, generator=g, dtype=f64)
    lo, hi = cfg.distance_range
    dist = lo + (hi - lo) * float(u[0])
    off = math.radians(cfg.max_off_axis_deg) * math.sqrt(float(u[1]))
    phi = 2 * math.pi * float(u[2])
    sx, sy = math.tan(off) * math.cos(phi), math.tan(off) * math.sin(phi)
    # Distance along the ray to the object centre.
    tz = dist / math.sqrt(1 + sx * sx + sy * sy)
    t = torch.tensor((sx * tz, sy * tz, tz), dtype=f64)
    slo, shi = cfg.crop_scale_range
    scale = slo + (shi - slo) * float(u[3])
    size = cfg.image_size
    focal = size * tz / (scale * obj.diameter)
    centre = (size - 1) / 2
    jx = (2 * float(u[4]) - 1) * cfg.center_jitter * size
    jy = (2 * float(u[5]) - 1) * cfg.center_jitter * size
    cam = torch.tensor(((focal, 0.0, centre + jx - focal * sx),
                        (0.0, focal, centre + jy - focal * sy), (0.0, 0.0, 1.0)), dtype=f64)
    pose = torch.cat((t, q))

    ga = torch.Generator().manual_seed(_mix(cfg.seed, split_id, obj.object_index, index, 1))
    light = nnf.normalize(torch.randn(3, generator=ga, dtype=f64), dim=0)
    light = torch.cat((light[:2], -light[2:].abs() - 0.3))  # towards the camera side
    light = nnf.normalize(light, dim=0)
    alo, ahi = cfg.ambient_range
    ambient = alo + (ahi - alo) * torch.rand(1, generator=ga, dtype=f64)
    tint = 0.85 + 0.15 * torch.rand(3, generator=ga, dtype=f64)
    bg_coarse = torch.rand(3, 3, 3, generator=ga, dtype=f64)
    bg_fine = torch.rand(3, 7, 7, generator=ga, dtype=f64)
    clutter = torch.rand(_NUM_CLUTTER, 8, generator=ga, dtype=f64)
    noise = torch.randn(3, size, size, generator=ga, dtype=torch.float32)
    return pose, cam, light, ambient, tint, bg_coarse, bg_fine, clutter, noise


def _draw_batch(cfg: SyntheticCropConfig, obj: SyntheticObject,
                indices: Sequence[int]) -> _Params:
    draws = [_draw(cfg, obj, i) for i in indices]
    p = [torch.stack(x) for x in zip(*draws, strict=True)]
    return _Params(p[0], p[1], p[2], p[3].squeeze(-1), *p[4:])


def _interp_matrix(out_size: int, in_size: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """``(out_size, in_size)`` bicubic upsampling matrix (half-pixel aligned)."""
    eye = torch.eye(in_size, dtype=dtype, device=device).view(in_size, 1, 1, in_size)
    up = nnf.interpolate(eye, size=(1, out_size), mode="bicubic", align_corners=False)
    return up.view(in_size, out_size).t()


def _background(cfg: SyntheticCropConfig, p: _Params, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """``(N, 3, S, S)`` backgrounds."""
    size = cfg.image_size
    n = p.pose.shape[0]
    if cfg.background == "flat":
        return p.bg_coarse[:, :, 0, 0].to(dtype=dtype, device=device)[..., None, None].expand(
            n, 3, size, size).contiguous()
    # Smooth colour noise: two octaves of bicubic-upsampled random grids (separable matmuls).
    bg = torch.zeros(n, 3, size, size, dtype=dtype, device=device)
    for grid, weight in ((p.bg_coarse, 0.7), (p.bg_fine, 0.3)):
        m = _interp_matrix(size, grid.shape[-1], dtype, device)
        bg += weight * (m @ grid.to(dtype=dtype, device=device) @ m.t())
    bg = bg.clamp_(0, 1)
    if cfg.background == "noise":
        return bg
    cl = p.clutter.to(dtype=dtype, device=device)  # (N, K, 8)
    coord = torch.arange(size, dtype=dtype, device=device) / size
    kind = cl[..., 0]
    rx = 0.05 + 0.25 * cl[..., 3]
    ry = 0.05 + 0.25 * cl[..., 4]
    dx = (coord.view(1, 1, size) - cl[..., 1, None]) / rx[..., None]  # (N, K, S) along x
    dy = (coord.view(1, 1, size) - cl[..., 2, None]) / ry[..., None]  # (N, K, S) along y
    # Painter's order: the last shape covering a pixel shows; top = 1 + its index, 0 = none.
    top = torch.zeros(n, size, size, dtype=torch.long, device=device)
    for k in range(cl.shape[1]):
        ax, ay = dx[:, k, None, :], dy[:, k, :, None]  # (N, 1, S), (N, S, 1)
        disc = ax * ax + ay * ay < 1
        rect = (ax.abs() < 1) & (ay.abs() < 1)
        inside = torch.where((kind[:, k] < 0.5).view(n, 1, 1), rect, disc)
        top.masked_fill_(inside, k + 1)
    colours = torch.cat((torch.zeros_like(cl[:, :1, 5:8]), cl[..., 5:8]), dim=1)  # (N, K+1, 3)
    flat_top = (top + (cl.shape[1] + 1) * torch.arange(n, device=device).view(n, 1, 1)).view(-1)
    painted = colours.reshape(-1, 3).index_select(0, flat_top)
    painted = painted.view(n, size, size, 3).permute(0, 3, 1, 2)
    return torch.where(top.unsqueeze(1) > 0, painted, bg)


def render_samples(cfg: SyntheticCropConfig, indices: Sequence[int], *,
                   obj: SyntheticObject | None = None,
                   device: torch.device | str = "cpu") -> CropBatch:
    """Render the crops ``indices`` of the split described by ``cfg`` in one batch.

    Crop ``i`` is the same whichever batch it is rendered in (its randomness comes from its
    own generators seeded by ``(seed, split, object, i)``), up to float rounding of batched
    kernels.

    Args:
        cfg: the split's settings.
        indices: crop indices (any, also beyond ``num_samples``).
        obj: the object of ``cfg.object_name`` if already built.
        device: where to render (CPU or CUDA).

    Returns:
        :class:`CropBatch` (float32).
    """
    obj = obj if obj is not None else make_object(cfg.object_name)
    if obj.name != cfg.object_name:
        raise ConfigError(f"obj is {obj.name!r} but the config asks for {cfg.object_name!r}")
    device = torch.device(device)
    size = cfg.image_size
    indices = list(indices)
    if not indices:
        def empty(*shape: int) -> torch.Tensor:
            return torch.zeros(0, *shape, device=device)

        return CropBatch(empty(3, size, size), empty(3, size, size), empty(1, size, size),
                         empty(7), empty(3, 3), torch.zeros(0, dtype=torch.long, device=device))
    p = _draw_batch(cfg, obj, indices)
    f32 = torch.float32
    pose = p.pose.to(dtype=f32, device=device)
    cam = p.cam_mats.to(dtype=f32, device=device)
    rend = render_object(obj, pose, cam, size, size)
    light = p.light.to(dtype=f32, device=device)
    lambert = torch.einsum("nc,nchw->nhw", light, rend.normals).clamp_min(0).unsqueeze(1)
    ambient = p.ambient.to(dtype=f32, device=device).view(-1, 1, 1, 1)
    shade = (ambient + (1 - ambient) * lambert) * p.tint.to(dtype=f32, device=device)[..., None,
                                                                                       None]
    fg = rend.albedo * shade
    bg = _background(cfg, p, f32, device)
    image = torch.where(rend.mask > 0, fg, bg)
    image = (image + cfg.pixel_noise_std * p.noise.to(device)).clamp(0, 1)
    index = torch.full((len(indices),), obj.object_index, dtype=torch.long, device=device)
    return CropBatch(image, rend.coords, rend.mask, pose, cam, index)


def render_split(cfg: SyntheticCropConfig, batch_size: int = 256, *,
                 device: torch.device | str = "cpu") -> CropBatch:
    """All ``cfg.num_samples`` crops of the split, rendered in batches of ``batch_size``.

    Equal (up to float rounding) to ``SyntheticCropDataset(cfg)[i]`` for every ``i``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    obj = make_object(cfg.object_name)
    parts = [render_samples(cfg, range(s, min(s + batch_size, cfg.num_samples)), obj=obj,
                            device=device)
             for s in range(0, cfg.num_samples, batch_size)]
    if not parts:
        return render_samples(cfg, [], obj=obj, device=device)
    return CropBatch(*(torch.cat(x) for x in zip(*parts, strict=True)))


class SyntheticCropDataset(torch.utils.data.Dataset[CropSample]):
    """Map-style dataset of the crops of ``cfg`` (rendered on access, deterministic: the same
    sample for the same ``(seed, split, object, index)`` on every access, in any worker)."""

    def __init__(self, cfg: SyntheticCropConfig) -> None:
        self.cfg = cfg
        self.object = make_object(cfg.object_name)

    def __len__(self) -> int:
        return self.cfg.num_samples

    def __getitem__(self, index: int) -> CropSample:
        if not -self.cfg.num_samples <= index < self.cfg.num_samples:
            raise IndexError(f"index {index} out of range for {self.cfg.num_samples} samples")
        index %= self.cfg.num_samples
        return render_samples(self.cfg, [index], obj=self.object).sample(0)


# --------------------------------------------------------------------------------------------
# CLI: contact sheet
# --------------------------------------------------------------------------------------------

def contact_sheet(batch: CropBatch, obj: SyntheticObject, columns: int = 8) -> torch.Tensor:
    """``(3, H, W)`` float image: rows of crops, each followed by a row of their normalised
    coordinate maps (black outside the mask)."""
    n, _, s, _ = batch.image.shape
    half = obj.vertices.abs().amax(0).view(1, 3, 1, 1).to(batch.coords)
    cmap = (0.5 + 0.5 * batch.coords / half).clamp(0, 1) * batch.mask
    rows = []
    for start in range(0, n, columns):
        for imgs in (batch.image[start:start + columns], cmap[start:start + columns]):
            pad = columns - imgs.shape[0]
            if pad:
                imgs = torch.cat((imgs, imgs.new_ones(pad, 3, s, s)))
            imgs = nnf.pad(imgs, (1, 1, 1, 1), value=1.0)
            rows.append(torch.cat(list(imgs), dim=-1))
    return torch.cat(rows, dim=-2)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m epropnp_lib.generators.objects --out DIR --num 16``: write one PNG
    contact sheet per object (crops and their coordinate maps)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--num", type=int, default=16, help="crops per object")
    parser.add_argument("--objects", nargs="*", default=list(OBJECT_NAMES),
                        choices=OBJECT_NAMES)
    parser.add_argument("--size", type=int, default=64, help="crop side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--background", default="clutter", choices=BACKGROUNDS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.objects:
        cfg = SyntheticCropConfig(object_name=name, image_size=args.size, num_samples=args.num,
                                  seed=args.seed, split=args.split, background=args.background)
        obj = make_object(name)
        batch = render_split(cfg)
        sheet = contact_sheet(batch, obj)
        scale = max(1, 128 // args.size)
        sheet = sheet.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        path = args.out / f"synthetic_{name}_{args.split}.png"
        plt.imsave(path, sheet.permute(1, 2, 0).clamp(0, 1).numpy())
        logger.info("wrote %s (%d crops of %s)", path, args.num, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
