"""Camera images of the generated nuScenes scenes: actor boxes as textured, shaded cuboids on an
analytic street background.

The background (ground with lane markings, sidewalks, building facades, sky, distance haze) is
traced per pixel; the boxes are rasterised with :func:`epropnp_lib.geometry.raster.rasterize`,
each face with a texture that shows the orientation (vehicles: windscreen and headlights at the
front, tail lights at the back, wheels and windows on the sides; pedestrians: a face at the
front).  Box frame of the meshes: x along the length, y along the width, z up.  A
:class:`~epropnp_lib.generators.nuscenes_looks.SceneLook` sets the light, the colours, the
textures and the object parts (default: the original fixed look).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import torch

from epropnp_lib.generators.nuscenes_looks import (
    SceneLook,
    default_scene_look,
    part_boxes,
    pattern,
)
from epropnp_lib.generators.nuscenes_scene import (
    KINDS,
    TEXTURES,
    Actor,
    Rng,
    Scene,
    Sensor,
    boxes_at,
    building_height,
    intrinsic_matrix,
    road_coords,
    rot_z,
    sensor_to_ego,
)
from epropnp_lib.geometry.boxes import box_corners
from epropnp_lib.geometry.raster import rasterize

__all__ = ["ActorMesh", "CameraRender", "CameraView", "build_mesh", "render_cameras"]


class ActorMesh(NamedTuple):
    """The boxes of all actors as one mesh of unit boxes (scaled and posed per view)."""

    local: torch.Tensor  # (V, 3) unit-box vertices in [-0.5, 0.5]^3, box frame (x l, y w, z h)
    actor: torch.Tensor  # (V,) actor index of each vertex
    uv: torch.Tensor  # (V, 2) face coordinates in [0, 1] (v = 0 at the top of side faces)
    faces: torch.Tensor  # (F, 3)
    face_actor: torch.Tensor  # (F,)
    face_type: torch.Tensor  # (F,) 0 front +x, 1 back -x, 2 left +y, 3 right -y, 4 top +z


def _face_grid(face_type: int, nu: int, nv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices (n, 3) on the unit box face and their (u, v) (n, 2); grid nu x nv quads."""
    u = torch.linspace(0.0, 1.0, nu + 1, dtype=torch.float64)
    v = torch.linspace(0.0, 1.0, nv + 1, dtype=torch.float64)
    uu, vv = torch.meshgrid(u, v, indexing="ij")
    uu, vv = uu.reshape(-1), vv.reshape(-1)
    half = torch.full_like(uu, 0.5)
    zc = 0.5 - vv  # v = 0 at the top
    if face_type == 0:  # front, seen from the front: u from the box's right (-y) to left (+y)
        xyz = torch.stack((half, uu - 0.5, zc), -1)
    elif face_type == 1:  # back, seen from behind: u from left (+y) to right (-y)
        xyz = torch.stack((-half, 0.5 - uu, zc), -1)
    elif face_type == 2:  # left (+y): u from the back to the front
        xyz = torch.stack((0.5 - uu, half, zc), -1)
    elif face_type == 3:  # right (-y): u from the front to the back
        xyz = torch.stack((uu - 0.5, -half, zc), -1)
    else:  # top
        xyz = torch.stack((uu - 0.5, vv - 0.5, half), -1)
    return xyz, torch.stack((uu, vv), -1)


def build_mesh(actors: Sequence[Actor], look: SceneLook | None = None) -> ActorMesh:
    """Unit-box meshes of ``actors`` (each actor one box, or its parts under ``look``), each
    face a grid of quads at most 1.5 m wide."""
    look = look or default_scene_look(len(actors))
    locals_, actor_ids, uvs, faces, face_actor, face_type = [], [], [], [], [], []
    base = 0
    for i, a in enumerate(actors):
        for centre, extent in part_boxes(KINDS[a.category].texture, look.actors[i]):
            w, length, h = (a.size[0] * extent[1], a.size[1] * extent[0], a.size[2] * extent[2])
            dims = {0: (w, h), 1: (w, h), 2: (length, h), 3: (length, h), 4: (length, w)}
            for ft, (du, dv) in dims.items():
                nu = min(6, max(1, math.ceil(du / 1.5)))
                nv = min(6, max(1, math.ceil(dv / 1.5)))
                xyz, uv = _face_grid(ft, nu, nv)
                if extent != (1.0, 1.0, 1.0):
                    xyz = xyz * torch.tensor(extent, dtype=xyz.dtype) + torch.tensor(
                        centre, dtype=xyz.dtype)
                idx = torch.arange((nu + 1) * (nv + 1)).view(nu + 1, nv + 1) + base
                a00, a10 = idx[:-1, :-1].reshape(-1), idx[1:, :-1].reshape(-1)
                a01, a11 = idx[:-1, 1:].reshape(-1), idx[1:, 1:].reshape(-1)
                tris = torch.cat((torch.stack((a00, a10, a11), -1),
                                  torch.stack((a00, a11, a01), -1)))
                locals_.append(xyz)
                uvs.append(uv)
                actor_ids.append(torch.full((xyz.shape[0],), i))
                faces.append(tris)
                face_actor.append(torch.full((tris.shape[0],), i))
                face_type.append(torch.full((tris.shape[0],), ft))
                base += xyz.shape[0]
    return ActorMesh(torch.cat(locals_), torch.cat(actor_ids), torch.cat(uvs), torch.cat(faces),
                     torch.cat(face_actor), torch.cat(face_type))


_SUN = torch.tensor([0.45, 0.3, 0.84], dtype=torch.float64)
_SUN = _SUN / _SUN.norm()


# Ground materials: grass, sidewalk, sidewalk seam, asphalt, white marking, yellow marking.
_GROUND_PALETTE = torch.tensor([[0.30, 0.43, 0.24], [0.62, 0.60, 0.57], [0.50, 0.48, 0.46],
                                [0.28, 0.28, 0.30], [0.88, 0.88, 0.86], [0.85, 0.72, 0.25]])
_HAZE = torch.tensor([0.78, 0.82, 0.88])


def _background(scene: Scene, rays: torch.Tensor, origin: torch.Tensor,
                look: SceneLook) -> torch.Tensor:
    """Colours (N, 3) in [0, 1] of rays (N, 3) (global, unit, float32) from origins (N, 3)."""
    dz = rays[:, 2]
    down = dz < -1e-6
    t_ground = torch.where(down, -origin[:, 2] / dz.clamp(max=-1e-6), torch.inf)
    c, sn = math.cos(scene.road_yaw), math.sin(scene.road_yaw)
    d_lat = -rays[:, 0] * sn + rays[:, 1] * c
    _, o_lat = road_coords(scene, origin[:, :2])
    wall = torch.where(d_lat >= 0, 14.0, -14.0)
    t_wall = (wall - o_lat) / torch.where(d_lat.abs() > 1e-6, d_lat, torch.full_like(d_lat, 1e-6))
    hit_w = origin + t_wall.clamp(0.0, 1e4)[:, None] * rays
    s_w, _ = road_coords(scene, hit_w[:, :2])
    wall_ok = (t_wall > 0) & (hit_w[:, 2] >= 0) & (hit_w[:, 2] <= building_height(s_w, wall))
    t_wall = torch.where(wall_ok, t_wall, torch.inf)
    use_wall = t_wall < t_ground
    t = torch.minimum(t_wall, t_ground)

    hit_g = origin + t_ground.clamp(max=1e4)[:, None] * rays
    s_g, l_g = road_coords(scene, hit_g[:, :2])
    al = l_g.abs()
    mat = torch.zeros(rays.shape[0], dtype=torch.long)  # grass
    sidewalk = (al >= 7.0) & (al < 11.0)
    seam = (torch.remainder(s_g, 1.5) < 0.06) | (torch.remainder(al - 7.0, 1.5) < 0.06)
    mat = torch.where(sidewalk, torch.where(seam, 2, 1), mat)
    road = al < 7.0
    dashed = torch.remainder(s_g, 9.0) < 3.0
    white = (((al - 3.5).abs() < 0.08) & dashed) | ((al - 6.85).abs() < 0.08)
    mat = torch.where(road, torch.where(al < 0.1, 5, torch.where(white, 4, 3)), mat)
    col = (_GROUND_PALETTE * torch.tensor(look.road)).to(rays.dtype)[mat]
    col = col * pattern(s_g, l_g, look)[:, None]

    block = torch.floor(s_w / 18.0)
    facade = torch.stack((0.55 + 0.2 * torch.sin(block * 1.7), 0.5 + 0.15 * torch.sin(block * 2.3),
                          0.45 + 0.15 * torch.cos(block * 1.1)), -1)
    sw, zw = torch.remainder(s_w, 3.0), torch.remainder(hit_w[:, 2], 3.2)
    window = (sw > 0.8) & (sw < 2.2) & (zw > 1.0) & (zw < 2.4)
    facade = torch.where(window[:, None], facade * 0.35 + 0.05, facade)
    facade = facade * torch.tensor(look.building, dtype=rays.dtype) * pattern(
        s_w, hit_w[:, 2], look)[:, None]
    col = torch.where(use_wall[:, None], facade, col)

    haze = (1.0 - torch.exp(-t.clamp(max=1e4) / 180.0))[:, None]
    col = col * (1 - haze) + _HAZE.to(rays.dtype) * haze
    elev = dz.clamp(-1.0, 1.0)
    sky = torch.stack((0.78 - 0.35 * elev, 0.84 - 0.25 * elev, 0.90 - 0.05 * elev), -1)
    sky = sky * torch.tensor(look.sky, dtype=rays.dtype)
    return torch.where(torch.isfinite(t)[:, None], col, sky) * look.light


def _texture(texture: torch.Tensor, face_type: torch.Tensor, uv: torch.Tensor,
             base: torch.Tensor) -> torch.Tensor:
    """Per-pixel colours (N, 3) of textured faces; texture/face_type (N,), uv (N, 2)."""
    u, v = uv[:, 0], uv[:, 1]
    col = base.clone()
    front, back = face_type == 0, face_type == 1
    side = (face_type == 2) | (face_type == 3)

    def paint(mask: torch.Tensor, rgb: tuple[float, float, float]) -> None:
        col[mask] = torch.tensor(rgb, dtype=col.dtype)

    veh = (texture == TEXTURES.index("vehicle")) | (texture == TEXTURES.index("trailer"))
    is_trailer = texture == TEXTURES.index("trailer")
    col[veh & front] = (col[veh & front] * 1.15).clamp(max=1.0)
    col[veh & back] = col[veh & back] * 0.75
    paint(veh & ~is_trailer & front & (v > 0.1) & (v < 0.42) & (u > 0.12) & (u < 0.88),
          (0.12, 0.15, 0.2))
    lights = (v > 0.58) & (v < 0.76) & (((u > 0.06) & (u < 0.24)) | ((u > 0.76) & (u < 0.94)))
    paint(veh & front & lights, (1.0, 0.98, 0.85))
    paint(veh & back & lights, (0.85, 0.05, 0.05))
    paint(veh & ~is_trailer & side & (v > 0.12) & (v < 0.42) & (u > 0.1) & (u < 0.9),
          (0.18, 0.22, 0.28))
    wheels = (v > 0.78) & (((u > 0.1) & (u < 0.26)) | ((u > 0.74) & (u < 0.9)))
    paint(veh & side & wheels, (0.05, 0.05, 0.05))

    person = texture == TEXTURES.index("person")
    paint(person & front & (v < 0.16) & (u > 0.25) & (u < 0.75), (0.93, 0.76, 0.62))
    paint(person & back & (v < 0.16), (0.2, 0.14, 0.08))
    col[person & (v > 0.55)] = col[person & (v > 0.55)] * 0.45

    cycle = texture == TEXTURES.index("cycle")
    col[cycle & (v > 0.5)] = col[cycle & (v > 0.5)] * 0.35
    paint(cycle & front & (v > 0.25) & (v < 0.4) & (u > 0.3) & (u < 0.7), (1.0, 1.0, 0.8))
    paint(cycle & back & (v > 0.25) & (v < 0.4) & (u > 0.3) & (u < 0.7), (0.85, 0.05, 0.05))

    cone = texture == TEXTURES.index("cone")
    paint(cone & (face_type < 4) & (((v > 0.3) & (v < 0.42)) | ((v > 0.58) & (v < 0.68))),
          (0.95, 0.95, 0.95))

    barrier = texture == TEXTURES.index("barrier")
    stripe = torch.remainder(torch.floor((u * 2.5 + v) * 3.0), 2) == 0
    paint(barrier & (front | back) & stripe, (0.95, 0.95, 0.95))
    return col


class CameraView(NamedTuple):
    """One camera image to render: the sensor, the ego pose at the image time and the scene
    time at which the actors are drawn."""

    sensor: Sensor
    ego_rot: torch.Tensor  # (3, 3) ego -> global
    ego_trans: torch.Tensor  # (3,)
    object_time: float  # scene time (s) of the actors' positions


class CameraRender(NamedTuple):
    """Rendered images of ``B`` views of a scene with ``A`` actors."""

    images: np.ndarray  # (B, H, W, 3) uint8 BGR
    visible_px: torch.Tensor  # (B, A) visible pixels per actor
    hull_px: torch.Tensor  # (B, A) silhouette area (pixels) inside the image


class _ViewGeometry(NamedTuple):
    cam_to_global: torch.Tensor  # (3, 3) float64 camera -> global rotation
    origin: torch.Tensor  # (3,) float64 camera centre in the global frame
    cam_mats: torch.Tensor  # (3, 3) float64 intrinsics


def render_cameras(scene: Scene, mesh: ActorMesh, views: Sequence[CameraView], width: int,
                   height: int, rng: Rng, look: SceneLook | None = None) -> CameraRender:
    """Render the scene in ``views`` (``B`` images of ``height x width``): street background,
    textured and shaded actor boxes (parts as in ``mesh``), pixel noise drawn from ``rng``;
    ``look`` (default: the original look) sets the light, colours, textures and noise."""
    look = look or default_scene_look(len(scene.actors))
    batch = len(views)
    num_actors = len(scene.actors)
    geoms, verts = [], []
    hull = torch.zeros(batch, num_actors, dtype=torch.float64)
    for b, view in enumerate(views):
        geom = _view_geometry(view, width, height)
        geoms.append(geom)
        centers, rots, sizes = boxes_at(scene, view.object_time)
        r_gc = geom.cam_to_global.T
        scaled = mesh.local * sizes[mesh.actor][:, [1, 0, 2]]
        world = (rots[mesh.actor] @ scaled[:, :, None]).squeeze(-1) + centers[mesh.actor]
        verts.append((world - geom.origin) @ r_gc.T)
        corners = (box_corners(centers, rots, sizes[:, [1, 0, 2]]) - geom.origin) @ r_gc.T
        hull[b] = _hull_areas(corners, geom.cam_mats, width, height)
    vertices = torch.stack(verts).float()
    cam_mats = torch.stack([g.cam_mats for g in geoms]).float()
    pose = torch.zeros(batch, 7)
    pose[:, 3] = 1.0
    raster = rasterize(vertices, mesh.faces, mesh.uv.float(), pose, cam_mats, height, width,
                       znear=0.05)
    face = raster.face_index.reshape(batch, -1)
    image = _background_pixels(scene, geoms, face >= 0, width, height, look)
    uv = raster.attributes.permute(0, 2, 3, 1).reshape(batch, -1, 2)
    visible = _shade_actors(scene, mesh, face, uv, image, look)
    noise = torch.randn(image.shape, generator=rng.gen) * (look.noise / 255.0)
    rgb = ((image + noise).clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    bgr = rgb.view(batch, height, width, 3).flip(-1).numpy()
    return CameraRender(np.ascontiguousarray(bgr), visible, hull)


def _view_geometry(view: CameraView, width: int, height: int) -> _ViewGeometry:
    r_se, t_se = sensor_to_ego(view.sensor)
    r_sg = view.ego_rot @ r_se  # camera -> global
    t_sg = view.ego_rot @ t_se + view.ego_trans
    k = torch.tensor(intrinsic_matrix(view.sensor, width, height), dtype=torch.float64)
    return _ViewGeometry(r_sg, t_sg, k)


def _hull_areas(corners: torch.Tensor, cam_mats: torch.Tensor, width: int,
                height: int) -> torch.Tensor:
    """``(A,)`` float64 area (pixels) inside the image of the convex hull of each box's
    projected corners in front of the camera; ``corners: (A, 8, 3)`` camera frame."""
    image_rect = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    hull = torch.zeros(corners.shape[0], dtype=torch.float64)
    for i in range(corners.shape[0]):
        c = corners[i]
        front = c[c[:, 2] > 0.1]
        if front.shape[0] == 0:
            continue
        px = (front @ cam_mats.T)[:, :2] / front[:, 2:3]
        pts = px.numpy().astype(np.float32)
        if not np.isfinite(pts).all():
            continue
        hull_pts = cv2.convexHull(pts)
        area, _ = cv2.intersectConvexConvex(hull_pts, image_rect)
        hull[i] = float(area)
    return hull


def _background_pixels(scene: Scene, geoms: Sequence[_ViewGeometry], covered: torch.Tensor,
                       width: int, height: int, look: SceneLook) -> torch.Tensor:
    """``(B, H * W, 3)`` float32 image with the street background at the pixels no actor
    covers (``covered: (B, H * W)`` bool) and 0 elsewhere."""
    batch = len(geoms)
    image = torch.zeros(batch, height * width, 3)
    vs, us = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing="ij")
    pix = torch.stack((us.reshape(-1), vs.reshape(-1), torch.ones(height * width)), -1)
    for b, geom in enumerate(geoms):
        free = (~covered[b]).nonzero().squeeze(-1)
        # Global ray directions R_sg K^-1 (u, v, 1) of the free pixels.
        to_global = (geom.cam_to_global @ torch.linalg.inv(geom.cam_mats)).float()
        d = pix[free] @ to_global.T
        d = d / d.norm(dim=-1, keepdim=True)
        image[b, free] = _background(scene, d, geom.origin.float().expand(free.shape[0], 3),
                                     look)
    return image


def _shade_actors(scene: Scene, mesh: ActorMesh, face: torch.Tensor, uv: torch.Tensor,
                  image: torch.Tensor, look: SceneLook) -> torch.Tensor:
    """Paint the covered pixels of ``image: (B, H * W, 3)`` (``face: (B, H * W)`` index of the
    visible face, -1 where none; ``uv: (B, H * W, 2)``) with texture and Lambert shading;
    returns the visible pixels per actor ``(B, A)`` float64."""
    covered = face >= 0
    visible = torch.zeros(face.shape[0], len(scene.actors), dtype=torch.float64)
    if not bool(covered.any()):
        return visible
    b_idx, p_idx = covered.nonzero(as_tuple=True)
    f = face[b_idx, p_idx]
    actor = mesh.face_actor[f]
    ftype = mesh.face_type[f]
    colors = torch.tensor([a.color for a in scene.actors], dtype=torch.float32)
    colors = (colors * torch.tensor([al.tint for al in look.actors])).clamp(max=1.0)
    textures = torch.tensor([TEXTURES.index(KINDS[a.category].texture) for a in scene.actors])
    uv_px = uv[b_idx, p_idx]
    col = _texture(textures[actor], ftype, uv_px, colors[actor])
    col = col * pattern(uv_px[:, 0], uv_px[:, 1], look)[:, None]
    normals_local = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0],
                                  [0, 0, 1.0]], dtype=torch.float64)
    yaws = torch.tensor([scene.road_yaw + a.heading for a in scene.actors], dtype=torch.float64)
    rz = torch.stack([rot_z(float(y)) for y in yaws])  # (A, 3, 3)
    sun = _SUN if look.sun is None else torch.tensor(look.sun, dtype=torch.float64)
    lambert = (torch.einsum("aij,fj->afi", rz, normals_local) @ sun).clamp(min=0.0)
    shade = (look.ambient + (1.0 - look.ambient) * look.light * lambert).float()[actor, ftype]
    image[b_idx, p_idx] = col * shade[:, None]
    visible.index_put_((b_idx, actor), torch.ones_like(actor, dtype=torch.float64),
                       accumulate=True)
    return visible
