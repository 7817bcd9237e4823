"""Synthetic 6DoF object crops: procedural textured meshes rendered into LineMOD-like crops.

The data stands in for LineMOD/BOP when no dataset is available: every crop comes with its exact
ground truth (object-coordinate map, mask, pose, intrinsics), so the dense correspondence network
and EPro-PnP can be trained and checked end to end on a laptop.

Objects (:data:`OBJECT_NAMES`, built by :func:`make_object`), in metres, object frame centred on
the bounding-box centre, x = length, y = width, z = up:

* ``drill``  -- body box + chuck cylinder + handle + battery block; asymmetric;
* ``lblock`` -- an L of two boxes plus a side tab; asymmetric;
* ``can``    -- a closed cylinder; continuous symmetry about its z axis;
* ``eggbox`` -- a flat box with two studs placed point-symmetrically; 2-fold (180 deg) symmetry
  about its z axis.

Textures are procedural functions of the object coordinates evaluated per pixel (so stripes stay
sharp whatever the tessellation): a smooth colour field of the coordinates plus stripes and
patches that make the coordinates inferable from appearance -- except where a symmetry makes them
ambiguous by design (the symmetric objects' textures are invariant under their symmetry).

Crops (:class:`SyntheticCropConfig`, :class:`SyntheticCropDataset`, :func:`render_split`) are
rendered directly by a virtual pinhole camera: the object sits at distance ``d`` and off-axis
angle ``alpha`` in front of a full-size camera, and the crop is the square region around it,
``crop_scale`` times the object's projected diameter wide, resampled to ``image_size`` pixels.
The crop's intrinsics are therefore ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` with
``f = S d / (crop_scale * diameter)`` and the principal point chosen so the object centre lands
at the crop centre ``((S - 1) / 2, (S - 1) / 2)`` plus a jitter; ``cam_K`` is exactly the matrix
to use with pixel coordinates in the crop (pixel centres at integer coordinates).

Dense maps at a network's output stride use :func:`epropnp_lib.geometry.camera.pixel_grid` (the
2D points) and :func:`epropnp_lib.nets.dense_targets.downsample_coords` (the ground truth).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as nnf

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.raster import rasterize
from epropnp_lib.geometry.rotations import quat_exp, quat_multiply, quat_normalize, quat_to_matrix

logger = logging.getLogger(__name__)

__all__ = [
    "OBJECT_NAMES",
    "SPLITS",
    "CropBatch",
    "CropSample",
    "ObjectRender",
    "SyntheticCropConfig",
    "SyntheticCropDataset",
    "SyntheticObject",
    "make_object",
    "render_object",
    "render_samples",
    "render_split",
]

#: Names accepted by :func:`make_object`; ``object_index`` in the samples indexes this tuple.
OBJECT_NAMES: tuple[str, ...] = ("drill", "lblock", "can", "eggbox")
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
# Meshes
# --------------------------------------------------------------------------------------------

class _Part(NamedTuple):
    """A closed primitive of a compound mesh: ``kind`` 'box' (``size`` = full extents) or
    'cylinder' (``size`` = (radius, length, axis index))."""

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]


def _box_mesh(center: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Box with 4 vertices per side (flat normals): verts (24, 3), normals (24, 3), faces
    (12, 3) oriented outwards."""
    verts: list[torch.Tensor] = []
    normals: list[torch.Tensor] = []
    faces: list[list[int]] = []
    eye = torch.eye(3, dtype=torch.float64)
    for a in range(3):
        b, c = (a + 1) % 3, (a + 2) % 3
        for s in (1.0, -1.0):
            base = len(verts)
            for u, v in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                verts.append(center + 0.5 * size * (s * eye[a] + u * eye[b] + v * eye[c]))
                normals.append(s * eye[a])
            tris = ((0, 1, 2), (0, 2, 3)) if s > 0 else ((0, 2, 1), (0, 3, 2))
            faces += [[base + i for i in tri] for tri in tris]
    return torch.stack(verts), torch.stack(normals), torch.tensor(faces)


def _cylinder_mesh(center: torch.Tensor, radius: float, length: float, axis: int,
                   segments: int) -> tuple[torch.Tensor, ...]:
    """Closed cylinder along object axis ``axis`` with smooth side normals and flat caps."""
    eye = torch.eye(3, dtype=torch.float64)
    ea, eb, ec = eye[axis], eye[(axis + 1) % 3], eye[(axis + 2) % 3]
    ang = torch.arange(segments, dtype=torch.float64) * (2 * math.pi / segments)
    radial = torch.cos(ang)[:, None] * eb + torch.sin(ang)[:, None] * ec  # (n, 3)
    half = 0.5 * length * ea
    n = segments
    k = torch.arange(n)
    k1 = (k + 1) % n
    # Side: bottom ring 0..n-1, top ring n..2n-1.
    side_v = torch.cat((center - half + radius * radial, center + half + radius * radial))
    side_n = torch.cat((radial, radial))
    side_f = torch.cat((torch.stack((k, k1, n + k1), -1), torch.stack((k, n + k1, n + k), -1)))
    verts, normals, faces = [side_v], [side_n], [side_f]
    offset = 2 * n
    for s in (-1.0, 1.0):
        ring = center + s * half + radius * radial
        cap_v = torch.cat(((center + s * half)[None], ring))
        cap_f = torch.stack((torch.zeros_like(k), 1 + k, 1 + k1), -1)
        if s < 0:
            cap_f = cap_f[:, [0, 2, 1]]
        verts.append(cap_v)
        normals.append((s * ea).expand(n + 1, 3))
        faces.append(cap_f + offset)
        offset += n + 1
    return torch.cat(verts), torch.cat(normals), torch.cat(faces)


def _inside_part(points: torch.Tensor, part: _Part, margin: float = 1e-6) -> torch.Tensor:
    """``(M,)`` bool: points ``(M, 3)`` strictly inside the primitive."""
    rel = points - torch.tensor(part.center, dtype=points.dtype)
    if part.kind == "box":
        half = 0.5 * torch.tensor(part.size, dtype=points.dtype)
        return (rel.abs() < half - margin).all(-1)
    radius, length, axis = part.size
    ax = int(axis)
    radial = torch.cat((rel[:, :ax], rel[:, ax + 1:]), dim=-1).norm(dim=-1)
    return (radial < radius - margin) & (rel[:, ax].abs() < 0.5 * length - margin)


# --------------------------------------------------------------------------------------------
# Textures (functions of object coordinates (..., 3) -> albedo (..., 3) in [0, 1])
# --------------------------------------------------------------------------------------------

def _smooth_field(p: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Colour = normalised object coordinates, squeezed into [0.15, 0.85]."""
    return 0.5 + 0.35 * (p / half).clamp(-1, 1)


def _texture_asymmetric(p: torch.Tensor, half: tuple[float, float, float],
                        spots: tuple[tuple[float, float, float, float], ...]) -> torch.Tensor:
    h = torch.tensor(half, dtype=p.dtype, device=p.device)
    colour = _smooth_field(p, h)
    # Stripes across the length (x) and a finer band pattern along z on one side (y > 0 only),
    # so that the two sides differ in appearance.
    stripe = torch.sin(p[..., 0] / h[0] * 3.5 * math.pi) > 0.85
    band = (torch.sin(p[..., 2] / h[2] * 6.0 * math.pi) > 0.6) & (p[..., 1] > 0)
    colour = torch.where(stripe[..., None], colour * 0.35, colour)
    colour = torch.where(band[..., None], 1.0 - 0.6 * colour, colour)
    for x, y, z, r in spots:
        centre = torch.tensor((x, y, z), dtype=p.dtype, device=p.device)
        near = (p - centre).norm(dim=-1) < r
        colour = torch.where(near[..., None], torch.tensor((0.95, 0.95, 0.1), dtype=p.dtype,
                                                           device=p.device), colour)
    return colour.clamp(0, 1)


def _texture_can(p: torch.Tensor, half: tuple[float, float, float]) -> torch.Tensor:
    """Invariant under rotations about z: a function of (radius, z) only."""
    h = torch.tensor(half, dtype=p.dtype, device=p.device)
    z = (p[..., 2] / h[2]).clamp(-1, 1)
    r = (p[..., :2].norm(dim=-1) / h[0]).clamp(0, 1)
    colour = torch.stack((0.5 + 0.4 * z, 0.3 + 0.3 * r, 0.5 - 0.4 * z), dim=-1)
    rings = torch.sin(z * 5.0 * math.pi) > 0.8
    label = (z.abs() < 0.3) & (r > 0.97)
    colour = torch.where(rings[..., None], colour * 0.4, colour)
    colour = torch.where(label[..., None], torch.full_like(colour, 0.9), colour)
    return colour.clamp(0, 1)


def _texture_eggbox(p: torch.Tensor, half: tuple[float, float, float]) -> torch.Tensor:
    """Invariant under the 180 deg rotation about z, (x, y, z) -> (-x, -y, z), only."""
    h = torch.tensor(half, dtype=p.dtype, device=p.device)
    x, y, z = (p / h).clamp(-1, 1).unbind(-1)
    colour = torch.stack((0.2 + 0.6 * x * x, 0.5 + 0.4 * x * y, 0.5 + 0.35 * z), dim=-1)
    stripes = torch.sin((x + y) * 4.0 * math.pi) * torch.sin((x - y) * 2.0 * math.pi) > 0.7
    colour = torch.where(stripes[..., None], 1.0 - colour, colour)
    return colour.clamp(0, 1)


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SyntheticObject:
    """A procedural textured mesh (see the module docstring).

    Attributes:
        name: one of :data:`OBJECT_NAMES`.
        vertices: ``(V, 3)`` float32 object-frame vertices in metres (centred).
        faces: ``(F, 3)`` int64 triangles.
        normals: ``(V, 3)`` float32 unit outward vertex normals (flat on box sides and caps,
            smooth on cylinder sides; vertices are duplicated where normals differ).
        vertex_colors: ``(V, 3)`` float32 albedo in [0, 1] (the texture at the vertices).
        diameter: largest distance between two points of the object (between mesh vertices).
        symmetric: whether a proper rotation other than the identity maps the textured object
            onto itself.
        symmetry: a short description of the symmetry ("none" for asymmetric objects).
        symmetry_axis: ``(3,)`` object-frame axis of the symmetry (z for the symmetric ones).
        symmetry_order: 1 = none, 0 = continuous, k >= 2 = k-fold (rotations by 360/k deg).
        model_points: ``(M, 3)`` float32 points sampled uniformly on the outer surface (for
            ADD / ADD-S).
        texture: albedo of surface points: ``(..., 3)`` object coordinates -> ``(..., 3)``
            colours in [0, 1] (any float dtype/device).
    """

    name: str
    vertices: torch.Tensor
    faces: torch.Tensor
    normals: torch.Tensor
    vertex_colors: torch.Tensor
    diameter: float
    symmetric: bool
    symmetry: str
    symmetry_axis: tuple[float, float, float]
    symmetry_order: int
    model_points: torch.Tensor
    texture: Callable[[torch.Tensor], torch.Tensor]

    @property
    def object_index(self) -> int:
        """Index of the object in :data:`OBJECT_NAMES`."""
        return OBJECT_NAMES.index(self.name)

    def symmetry_quat(self, angle: float) -> torch.Tensor:
        """``(4,)`` float64 quaternion of the object-frame rotation by ``angle`` (rad) about the
        symmetry axis; the object is invariant under it when ``symmetry_order`` is 0, or when
        ``angle`` is a multiple of ``2 pi / symmetry_order``."""
        axis = torch.tensor(self.symmetry_axis, dtype=torch.float64)
        return quat_exp(axis * angle)


def _object_spec(name: str) -> tuple[list[_Part], str, int]:
    """Parts, symmetry description and order of a named object (before centring)."""
    if name == "drill":
        parts = [
            _Part("box", (0.0, 0.0, 0.0), (0.13, 0.05, 0.06)),
            _Part("cylinder", (0.085, 0.0, 0.005), (0.016, 0.05, 0)),
            _Part("box", (-0.025, 0.0, -0.07), (0.04, 0.042, 0.09)),
            _Part("box", (-0.015, 0.0, -0.125), (0.075, 0.06, 0.028)),
        ]
        return parts, "none", 1
    if name == "lblock":
        parts = [
            _Part("box", (0.0, 0.0, 0.0), (0.12, 0.045, 0.03)),
            _Part("box", (-0.04, 0.0, 0.055), (0.04, 0.045, 0.08)),
            _Part("box", (0.035, 0.035, 0.0), (0.03, 0.03, 0.02)),
        ]
        return parts, "none", 1
    if name == "can":
        return ([_Part("cylinder", (0.0, 0.0, 0.0), (0.035, 0.12, 2))],
                "continuous rotation about the z axis (texture depends on radius and z only)", 0)
    if name == "eggbox":
        parts = [
            _Part("box", (0.0, 0.0, 0.0), (0.12, 0.08, 0.04)),
            _Part("cylinder", (0.035, 0.02, 0.03), (0.012, 0.025, 2)),
            _Part("cylinder", (-0.035, -0.02, 0.03), (0.012, 0.025, 2)),
        ]
        return parts, "180 deg rotation about the z axis", 2
    raise ConfigError(f"unknown object {name!r}; known: {', '.join(OBJECT_NAMES)}")


def make_object(name: str, num_model_points: int = 1000) -> SyntheticObject:
    """Build the named procedural object (deterministic).

    Args:
        name: one of :data:`OBJECT_NAMES`.
        num_model_points: size ``M`` of the surface sample in ``model_points``.

    Raises:
        ConfigError: unknown name or ``num_model_points < 1``.
    """
    if num_model_points < 1:
        raise ConfigError(f"num_model_points must be >= 1, got {num_model_points}")
    parts, symmetry, order = _object_spec(name)
    verts, normals, faces, owner = [], [], [], []
    offset = 0
    for i, part in enumerate(parts):
        centre = torch.tensor(part.center, dtype=torch.float64)
        if part.kind == "box":
            v, n, f = _box_mesh(centre, torch.tensor(part.size, dtype=torch.float64))
        else:
            radius, length, axis = part.size
            v, n, f = _cylinder_mesh(centre, radius, length, int(axis), 48 if name == "can" else 24)
        verts.append(v)
        normals.append(n)
        faces.append(f + offset)
        owner.append(torch.full((f.shape[0],), i))
        offset += v.shape[0]
    vertices = torch.cat(verts)
    shift = 0.5 * (vertices.amin(0) + vertices.amax(0))
    if order != 1:
        shift[:2] = 0.0  # keep the symmetry axis through the origin
    vertices = vertices - shift
    parts = [p._replace(center=tuple((torch.tensor(p.center) - shift.float()).tolist()))
             for p in parts]
    face_t = torch.cat(faces)
    face_owner = torch.cat(owner)
    half = tuple((0.5 * (vertices.amax(0) - vertices.amin(0))).tolist())
    texture: Callable[[torch.Tensor], torch.Tensor]
    if name == "can":
        texture = _TextureFn(_texture_can, half)
    elif name == "eggbox":
        texture = _TextureFn(_texture_eggbox, half)
    else:
        spots = ((half[0] * 0.6, -half[1], half[2] * 0.3, 0.012),
                 (-half[0] * 0.5, half[1] * 0.2, half[2], 0.01))
        texture = _TextureFn(_texture_asymmetric, half, spots)

    model_points = _surface_sample(vertices, face_t, face_owner, parts, num_model_points, name)
    diameter = float(torch.cdist(vertices, vertices).max())
    return SyntheticObject(
        name=name,
        vertices=vertices.float(),
        faces=face_t.long(),
        normals=torch.cat(normals).float(),
        vertex_colors=texture(vertices).float(),
        diameter=diameter,
        symmetric=order != 1,
        symmetry=symmetry,
        symmetry_axis=(0.0, 0.0, 1.0),
        symmetry_order=order,
        model_points=model_points.float(),
        texture=texture,
    )


class _TextureFn:
    """A picklable texture closure (the dataset may be sent to DataLoader workers)."""

    def __init__(self, fn: Callable[..., torch.Tensor], *args: object) -> None:
        self.fn = fn
        self.args = args

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        return self.fn(p, *self.args)


def _surface_sample(vertices: torch.Tensor, faces: torch.Tensor, owner: torch.Tensor,
                    parts: Sequence[_Part], num: int, name: str) -> torch.Tensor:
    """``(num, 3)`` points uniform on the outer surface (points of a part's surface that lie
    inside another part are rejected)."""
    g = torch.Generator().manual_seed(sum(ord(c) * 131 ** i for i, c in enumerate(name)) % 2**31)
    tri = vertices[faces]  # (F, 3, 3)
    area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    chosen: list[torch.Tensor] = []
    have = 0
    while have < num:
        k = 4 * num
        idx = torch.multinomial(area, k, replacement=True, generator=g)
        r = torch.rand(k, 2, generator=g, dtype=vertices.dtype)
        s = r[:, :1].sqrt()
        w = torch.cat((1 - s, s * (1 - r[:, 1:]), s * r[:, 1:]), dim=-1)
        pts = (w[:, :, None] * tri[idx]).sum(1)
        hidden = torch.zeros(k, dtype=torch.bool)
        for j, part in enumerate(parts):
            hidden |= (owner[idx] != j) & _inside_part(pts, part)
        chosen.append(pts[~hidden])
        have += int((~hidden).sum())
    return torch.cat(chosen)[:num]


# --------------------------------------------------------------------------------------------
# Rendering an object
# --------------------------------------------------------------------------------------------

class ObjectRender(NamedTuple):
    """Result of :func:`render_object` (``N`` images of ``H x W``).

    Attributes:
        coords: ``(N, 3, H, W)`` object coordinates of the visible surface (0 outside the mask).
        mask: ``(N, 1, H, W)`` float coverage in {0, 1}.
        normals: ``(N, 3, H, W)`` unit surface normals in the camera frame (0 outside).
        albedo: ``(N, 3, H, W)`` texture colour (0 outside).
        depth: ``(N, 1, H, W)`` camera depth (0 outside).
    """

    coords: torch.Tensor
    mask: torch.Tensor
    normals: torch.Tensor
    albedo: torch.Tensor
    depth: torch.Tensor


def render_object(obj: SyntheticObject, pose: torch.Tensor, cam_mats: torch.Tensor,
                  height: int, width: int) -> ObjectRender:
    """Render ``obj`` under poses ``pose: (N, 7)`` with intrinsics ``cam_mats: (N, 3, 3)``.

    The computation dtype/device are those of ``pose``; see :func:`epropnp_lib.geometry.raster.
    rasterize` for the pixel conventions.
    """
    check_shape(pose, ["N", 7], "pose")
    dtype, device = check_float_tensors(pose=pose, cam_mats=cam_mats)
    verts = obj.vertices.to(dtype=dtype, device=device)
    attrs = torch.cat((verts, obj.normals.to(dtype=dtype, device=device)), dim=-1)
    r = rasterize(verts, obj.faces.to(device), attrs, pose, cam_mats, height, width)
    n = pose.shape[0]
    # Normals and texture only at the covered pixels.
    flat = r.attributes.permute(0, 2, 3, 1).reshape(-1, 6)  # (N*H*W, 6)
    idx = r.mask.reshape(-1).nonzero().squeeze(-1)
    img = idx // (height * width)
    rot = quat_to_matrix(quat_normalize(pose[:, 3:]))
    sel = flat.index_select(0, idx)
    pts = sel[:, :3]
    n_cam = (rot.index_select(0, img) @ nnf.normalize(sel[:, 3:], dim=-1).unsqueeze(-1))
    values = torch.cat((n_cam.squeeze(-1), obj.texture(pts).to(dtype)), dim=-1)
    out = flat.new_zeros(flat.shape[0], 6).index_copy_(0, idx, values)
    out = out.view(n, height, width, 6).permute(0, 3, 1, 2)
    mask = r.mask.unsqueeze(1)
    depth = torch.where(mask, r.depth.unsqueeze(1), 0.0)
    return ObjectRender(r.attributes[:, :3], mask.to(dtype), out[:, :3], out[:, 3:], depth)


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
        cam_K: ``(3, 3)`` float32 intrinsics of the crop (pixel centres at integers).
        object_index: int64 scalar index into :data:`OBJECT_NAMES`.
    """

    image: torch.Tensor
    coords: torch.Tensor
    mask: torch.Tensor
    pose: torch.Tensor
    cam_K: torch.Tensor  # noqa: N815 (the name used across the project)
    object_index: torch.Tensor


class CropBatch(NamedTuple):
    """Stacked :class:`CropSample` fields with a leading ``N``: ``image (N, 3, S, S)``,
    ``coords (N, 3, S, S)``, ``mask (N, 1, S, S)``, ``pose (N, 7)``, ``cam_K (N, 3, 3)``,
    ``object_index (N,)``."""

    image: torch.Tensor
    coords: torch.Tensor
    mask: torch.Tensor
    pose: torch.Tensor
    cam_K: torch.Tensor  # noqa: N815
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
    cam_K: torch.Tensor  # noqa: N815 (N, 3, 3)
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
    cam = p.cam_K.to(dtype=f32, device=device)
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
