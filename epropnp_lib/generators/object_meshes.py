"""Procedural textured objects (meshes in metres) and their rendering.

Objects (:data:`OBJECT_NAMES`, built by :func:`make_object`), object frame centred on the
bounding-box centre, x = length, y = width, z = up:

* ``drill``  -- body box + chuck cylinder + handle + battery block; asymmetric;
* ``lblock`` -- an L of two boxes plus a side tab; asymmetric;
* ``can``    -- a closed cylinder; continuous symmetry about its z axis;
* ``eggbox`` -- a flat box with two studs placed point-symmetrically; 2-fold (180 deg) symmetry
  about its z axis.

Textures are functions of the object coordinates evaluated per pixel (stripes stay sharp
whatever the tessellation); they make the coordinates inferable from appearance except where a
symmetry makes them ambiguous by design (the symmetric objects' textures are invariant under
their symmetry).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as nnf

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.raster import rasterize
from epropnp_lib.geometry.rotations import quat_exp, quat_normalize, quat_to_matrix

__all__ = ["OBJECT_NAMES", "ObjectRender", "SyntheticObject", "make_object", "render_object"]

#: Names accepted by :func:`make_object`; ``object_index`` in the samples indexes this tuple.
OBJECT_NAMES: tuple[str, ...] = ("drill", "lblock", "can", "eggbox")


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
