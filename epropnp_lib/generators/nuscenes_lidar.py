"""Lidar sweeps of the generated nuScenes scenes: rays of an HDL-32E-like spinning lidar cast
against the ground, the building facades and the actor boxes.

A sweep is ``(N, 5)`` float32 ``x, y, z, intensity, ring`` in the lidar frame (the layout of
``samples/LIDAR_TOP/*.pcd.bin``).  Every box holds points: a box that no ray reaches gets three
interior returns.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from epropnp_lib.generators.nuscenes_scene import (
    SENSORS,
    Rng,
    Scene,
    boxes_at,
    building_height,
    ego_pose,
    road_coords,
    sensor_to_ego,
)

__all__ = ["lidar_sweep"]

_LIDAR_RANGE = 70.0
_LIDAR_ELEVATIONS_DEG = tuple(-30.67 + 1.33 * i for i in range(32))  # HDL-32E-like rings


class _Rays(NamedTuple):
    origin: torch.Tensor  # (3,) lidar centre, global frame
    lidar_to_global: torch.Tensor  # (3, 3)
    directions: torch.Tensor  # (N, 3) unit, global frame; ray = ring * azimuth_steps + column
    ring: torch.Tensor  # (N,) long ring index


class _BoxHits(NamedTuple):
    distance: torch.Tensor  # (N,) float64 nearest box hit along each ray (inf: none)
    winner: torch.Tensor  # (N,) long box of that hit (-1: none)
    centers: torch.Tensor  # (A, 3) box centres, global frame
    rots: torch.Tensor  # (A, 3, 3) box -> global
    half: torch.Tensor  # (A, 3) half extents along box x (length), y (width), z


def lidar_sweep(scene: Scene, t_ego: float, t_obj: float, azimuth_steps: int,
                rng: Rng) -> tuple[np.ndarray, torch.Tensor]:
    """Points (N, 5) float32 in the lidar frame and lidar points per actor (A,) long."""
    rays = _rays(scene, t_ego, azimuth_steps)
    o, d = rays.origin, rays.directions
    n = d.shape[0]
    t_best = torch.full((n,), _LIDAR_RANGE, dtype=torch.float64)
    intensity = torch.zeros(n, dtype=torch.float64)
    hit_any = torch.zeros(n, dtype=torch.bool)

    t_g = torch.where(d[:, 2] < -1e-6, -o[2] / d[:, 2].clamp(max=-1e-6), torch.inf)
    g_hit = t_g < t_best
    t_best = torch.where(g_hit, t_g, t_best)
    hit_any |= g_hit
    pg = o + t_g.clamp(max=1e4)[:, None] * d
    _, lat = road_coords(scene, pg[:, :2])
    intensity = torch.where(g_hit, torch.where(lat.abs() < 7.0, 8.0, 20.0), intensity)

    t_w, on_wall = _facade_distance(scene, o, d)
    w_hit = (t_w > 0) & (t_w < t_best) & on_wall
    t_best = torch.where(w_hit, t_w, t_best)
    hit_any |= w_hit
    intensity = torch.where(w_hit, 30.0, intensity)

    boxes = _box_hits(scene, rays, t_obj, azimuth_steps)
    b_hit = (boxes.distance < t_best) & (boxes.winner >= 0)
    t_best = torch.where(b_hit, boxes.distance, t_best)
    hit_any |= b_hit
    intensity = torch.where(b_hit, 45.0, intensity)

    pts = o + t_best[hit_any, None] * d[hit_any]
    inten = intensity[hit_any] + torch.rand(int(hit_any.sum()), generator=rng.gen,
                                            dtype=torch.float64) * 6.0
    rings = rays.ring[hit_any].to(torch.float64)
    owner = torch.where(b_hit, boxes.winner, -1)[hit_any]
    counts = torch.bincount(owner[owner >= 0], minlength=boxes.centers.shape[0])

    extra_pts, extra_ring = _interior_returns(boxes, counts, o, rng)
    if extra_pts:
        pts = torch.cat([pts, *extra_pts])
        rings = torch.cat([rings, *extra_ring])
        inten = torch.cat([inten, torch.full((3 * len(extra_pts),), 40.0, dtype=torch.float64)])
    local_pts = (pts - o) @ rays.lidar_to_global  # global -> lidar frame
    cloud = torch.cat((local_pts, inten[:, None], rings[:, None]), -1)
    return cloud.to(torch.float32).numpy(), counts


def _rays(scene: Scene, t_ego: float, azimuth_steps: int) -> _Rays:
    lidar = SENSORS[-1]
    ego_rot, ego_trans = ego_pose(scene, t_ego)
    r_le, t_le = sensor_to_ego(lidar)
    r_lg = ego_rot @ r_le
    o = ego_rot @ t_le + ego_trans
    elev = torch.tensor(_LIDAR_ELEVATIONS_DEG, dtype=torch.float64).deg2rad()
    az = torch.arange(azimuth_steps, dtype=torch.float64) * (2 * math.pi / azimuth_steps)
    ee, aa = torch.meshgrid(elev, az, indexing="ij")
    ring = torch.arange(len(_LIDAR_ELEVATIONS_DEG)).repeat_interleave(azimuth_steps)
    d_l = torch.stack((ee.cos() * aa.cos(), ee.cos() * aa.sin(), ee.sin()), -1).reshape(-1, 3)
    return _Rays(o, r_lg, d_l @ r_lg.T, ring)


def _facade_distance(scene: Scene, o: torch.Tensor,
                     d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance ``(N,)`` along rays ``d: (N, 3)`` from ``o: (3,)`` to the facade plane on their
    side of the road, and whether the hit lies on the facade ``(N,)`` (above ground, below the
    building height)."""
    c, sn = math.cos(scene.road_yaw), math.sin(scene.road_yaw)
    d_lat = -d[:, 0] * sn + d[:, 1] * c
    _, o_lat = road_coords(scene, o[None, :2])
    wall = torch.where(d_lat >= 0, 14.0, -14.0)
    t_w = torch.where(d_lat.abs() > 1e-6, (wall - o_lat) / d_lat, torch.inf)
    pw = o + t_w.clamp(min=0, max=1e4)[:, None] * d
    s_w, _ = road_coords(scene, pw[:, :2])
    return t_w, (pw[:, 2] >= 0) & (pw[:, 2] <= building_height(s_w, wall))


def _box_hits(scene: Scene, rays: _Rays, t_obj: float, azimuth_steps: int) -> _BoxHits:
    """Nearest box hit per ray (slab test of the candidate (box, ray) pairs: the azimuth columns
    each box's bounding cylinder spans)."""
    o, r_lg, d = rays.origin, rays.lidar_to_global, rays.directions
    n = d.shape[0]
    centers, rots, sizes = boxes_at(scene, t_obj)
    half = sizes[:, [1, 0, 2]] / 2  # (A, 3) along box x (length), y (width), z
    step = 2 * math.pi / azimuth_steps
    rings_n = len(_LIDAR_ELEVATIONS_DEG)
    c_l = (centers - o) @ r_lg  # (A, 3) lidar frame
    pair_box, pair_ray = [], []
    for i in range(centers.shape[0]):
        rho = float(c_l[i, :2].norm())
        radius = float(half[i, :2].norm()) + 0.05
        if rho <= radius:
            cols = torch.arange(azimuth_steps)
        else:
            az_c = math.atan2(float(c_l[i, 1]), float(c_l[i, 0]))
            spread = math.asin(radius / rho)
            lo = math.floor((az_c - spread) / step) - 1
            hi = math.ceil((az_c + spread) / step) + 1
            cols = torch.remainder(torch.arange(lo, hi + 1), azimuth_steps)
        rays_i = (torch.arange(rings_n)[:, None] * azimuth_steps + cols[None, :]).reshape(-1)
        pair_ray.append(rays_i)
        pair_box.append(torch.full_like(rays_i, i))
    pb, pr = torch.cat(pair_box), torch.cat(pair_ray)
    o_b = ((o - centers)[:, None, :] @ rots).squeeze(1)[pb]  # (P, 3) box frame
    d_b = (d[pr][:, None, :] @ rots[pb]).squeeze(1)  # (P, 3)
    safe = torch.where(d_b.abs() < 1e-12, torch.full_like(d_b, 1e-12), d_b)
    t1 = (-half[pb] - o_b) / safe
    t2 = (half[pb] - o_b) / safe
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    box_hit = (t_far >= t_near) & (t_near > 0)
    # Hit points lie inside the box: 2 cm (at most half the chord) past the entry.
    t_in = torch.where(box_hit, t_near + torch.clamp((t_far - t_near) / 2, max=0.02), torch.inf)
    t_box = torch.full((n,), torch.inf, dtype=torch.float64).scatter_reduce(
        0, pr, t_in, "amin")
    winner = torch.full((n,), -1, dtype=torch.long).scatter_reduce(
        0, pr[t_in == t_box[pr]], pb[t_in == t_box[pr]], "amax")
    return _BoxHits(t_box, winner, centers, rots, half)


def _interior_returns(boxes: _BoxHits, counts: torch.Tensor, o: torch.Tensor,
                      rng: Rng) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Three random interior points ``(3, 3)`` (and their rings ``(3,)``) per box without a
    return; ``counts: (A,)`` is set to 3 for those boxes."""
    extra_pts, extra_ring = [], []
    for i in torch.nonzero(counts == 0).flatten().tolist():
        local = ((torch.rand(3, 3, generator=rng.gen, dtype=torch.float64) - 0.5) * 1.6
                 * boxes.half[i])
        p = local @ boxes.rots[i].T + boxes.centers[i]
        extra_pts.append(p)
        el = torch.atan2(p[:, 2] - o[2], (p[:, :2] - o[:2]).norm(dim=-1)).rad2deg()
        extra_ring.append(((el + 30.67) / 1.33).round().clamp(0, 31))
        counts[i] = 3
    return extra_pts, extra_ring
