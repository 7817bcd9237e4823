"""FCOS-style target assignment and 3D-box geometry for the deformable correspondence network,
written from the FCOS (Tian et al., ICCV 2019) and FCOS3D (Wang et al., ICCVW 2021) papers.

Locations are the feature-map cells of all pyramid levels, in network-input pixels (pixel
centres at integer coordinates, as in the intrinsics); ``L`` locations, ``M`` boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.camera import project
from epropnp_lib.geometry.rotations import yaw_to_matrix

#: Boxes whose centre is closer than this (metres, along the optical axis) are not assigned.
MIN_BOX_DEPTH = 0.1


class LevelSpec(NamedTuple):
    """One pyramid level: ``stride`` in input pixels, feature ``height``/``width`` and the
    regress range ``[lo, hi]`` (pixels) of the boxes it is responsible for."""

    stride: int
    height: int
    width: int
    lo: float
    hi: float


class LocationTargets(NamedTuple):
    """Targets for all locations of all levels (levels concatenated, row-major per level).

    Attributes:
        labels: ``(B, L)`` long class index of positive locations, ``num_classes`` elsewhere.
        box_index: ``(B, L)`` long index of the assigned box in its image, ``-1`` elsewhere.
        offset: ``(B, L, 2)`` offset ``(projected centre - location) / stride`` (zero on
            negatives).
    """

    labels: torch.Tensor
    box_index: torch.Tensor
    offset: torch.Tensor

    @property
    def positive(self) -> torch.Tensor:
        """``(B, L)`` bool mask of the positive locations."""
        return self.box_index >= 0


def level_locations(
    levels: Sequence[LevelSpec], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Location pixels ``(L, 2)``, strides ``(L,)`` and level indices ``(L,)`` (long) of all
    levels, concatenated in level order, each level row-major: cell ``(i, j)`` of a level of
    stride ``s`` is at pixel ``((j + 0.5) s - 0.5, (i + 0.5) s - 0.5)``."""
    locs, strides, index = [], [], []
    for k, lv in enumerate(levels):
        ys = (torch.arange(lv.height, dtype=dtype, device=device) + 0.5) * lv.stride - 0.5
        xs = (torch.arange(lv.width, dtype=dtype, device=device) + 0.5) * lv.stride - 0.5
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        locs.append(torch.stack((gx.flatten(), gy.flatten()), dim=-1))
        strides.append(torch.full((lv.height * lv.width,), float(lv.stride), dtype=dtype,
                                  device=device))
        index.append(torch.full((lv.height * lv.width,), k, dtype=torch.long, device=device))
    return torch.cat(locs), torch.cat(strides), torch.cat(index)


def object_extent(size: torch.Tensor) -> torch.Tensor:
    """Box extent ``(..., 3)`` along the object axes (length, height, width) from sizes
    ``(..., 3)`` given as ``(width, length, height)``."""
    return torch.stack((size[..., 1], size[..., 2], size[..., 0]), dim=-1)


class ProjectedBoxes(NamedTuple):
    """Image-plane description of boxes: the projected 3D centre and the 2D extent.

    Attributes:
        center: ``(M, 2)`` projected 3D centres (pixels).
        extent: ``(M, 4)`` ``(x1, y1, x2, y2)`` around the projected corners, clipped to the
            image.
        valid: ``(M,)`` bool: centre in front of the camera and a non-empty clipped extent.
    """

    center: torch.Tensor
    extent: torch.Tensor
    valid: torch.Tensor


def project_boxes(
    boxes: CameraBoxes, cam_mats: torch.Tensor, image_size: tuple[int, int]
) -> ProjectedBoxes:
    """Project boxes into an image: the projected 3D centre and the 2D extent, the
    axis-aligned rectangle around the eight projected corners, clipped to the image.  Boxes
    whose centre lies less than :data:`MIN_BOX_DEPTH` in front of the camera are invalid.

    Args:
        boxes: M boxes (:class:`~epropnp_lib.geometry.boxes.CameraBoxes`).
        cam_mats: ``(3, 3)`` intrinsics of the image.
        image_size: ``(height, width)`` in pixels.
    """
    height, width = image_size
    center = boxes.center
    corners = boxes.corners()  # (M, 8, 3)
    corners = torch.cat((corners[..., :2], corners[..., 2:].clamp_min(MIN_BOX_DEPTH)), dim=-1)
    uv = project(corners, cam_mats).x2d  # (M, 8, 2)
    c2d = project(center[:, None, :], cam_mats).x2d[:, 0]
    x1 = uv[..., 0].amin(-1).clamp(-0.5, width - 0.5)
    x2 = uv[..., 0].amax(-1).clamp(-0.5, width - 0.5)
    y1 = uv[..., 1].amin(-1).clamp(-0.5, height - 0.5)
    y2 = uv[..., 1].amax(-1).clamp(-0.5, height - 0.5)
    extent = torch.stack((x1, y1, x2, y2), dim=-1)
    valid = (center[:, 2] > MIN_BOX_DEPTH) & (x2 > x1) & (y2 > y1)
    return ProjectedBoxes(c2d, extent, valid)


def assign_locations(
    levels: Sequence[LevelSpec],
    boxes: Sequence[CameraBoxes],
    cam_mats: torch.Tensor,
    image_size: tuple[int, int],
    num_classes: int,
    center_radius: float = 1.5,
) -> LocationTargets:
    """FCOS/FCOS3D assignment of ground-truth boxes to locations.

    * Boxes are described in the image by :func:`project_boxes`.
    * Centre sampling: a location is a candidate for a box only inside the square of
      half-size ``center_radius * s`` (``s`` its stride) around the projected centre, clipped
      to the 2D extent (so a box whose projected centre falls outside the image gets no
      location).
    * Regress ranges: a location of level ``l`` only takes boxes whose largest distance from
      the location to the sides of the 2D extent, ``max(l, t, r, b)``, lies in
      ``[lo_l, hi_l]``.
    * Ambiguity: a location that is a candidate for several boxes takes the box whose
      projected centre is nearest (FCOS3D's distance-based rule; FCOS uses the smallest area).

    The targets of a positive location are its class, the index of its box and the offset
    from the location to the projected centre in units of the stride.

    Args:
        levels: the pyramid levels, in the order the network concatenates them.
        boxes: per image, its ground-truth boxes.
        cam_mats: ``(B, 3, 3)`` intrinsics of the network input.
        image_size: ``(height, width)`` of the network input.
        num_classes: label given to negative locations.
        center_radius: centre-sampling radius in strides.

    Returns:
        :class:`LocationTargets` with ``L = sum_l H_l W_l``.
    """
    dtype, device = cam_mats.dtype, cam_mats.device
    locs, strides, lvl = level_locations(levels, dtype, device)
    lo = torch.tensor([lv.lo for lv in levels], dtype=dtype, device=device)[lvl]
    hi = torch.tensor([lv.hi for lv in levels], dtype=dtype, device=device)[lvl]
    n_loc = locs.shape[0]
    labels_out, index_out, offset_out = [], [], []
    for b, image_boxes in enumerate(boxes):
        label_b = torch.full((n_loc,), num_classes, dtype=torch.long, device=device)
        index_b = torch.full((n_loc,), -1, dtype=torch.long, device=device)
        offset_b = torch.zeros(n_loc, 2, dtype=dtype, device=device)
        if image_boxes.num_boxes > 0:
            gt = CameraBoxes(*(f.to(device) for f in image_boxes))
            gt = gt._replace(center=gt.center.to(dtype), size=gt.size.to(dtype),
                             yaw=gt.yaw.to(dtype))
            proj = project_boxes(gt, cam_mats[b], image_size)
            c2d, ext = proj.center, proj.extent
            x, y = locs[:, 0:1], locs[:, 1:2]  # (L, 1)
            dist_sides = torch.stack(
                (x - ext[None, :, 0], y - ext[None, :, 1], ext[None, :, 2] - x,
                 ext[None, :, 3] - y), dim=-1,
            )  # (L, M, 4)
            max_side = dist_sides.amax(-1)
            in_range = (max_side >= lo[:, None]) & (max_side <= hi[:, None])
            r = center_radius * strides[:, None]
            cx0 = torch.maximum(c2d[None, :, 0] - r, ext[None, :, 0])
            cy0 = torch.maximum(c2d[None, :, 1] - r, ext[None, :, 1])
            cx1 = torch.minimum(c2d[None, :, 0] + r, ext[None, :, 2])
            cy1 = torch.minimum(c2d[None, :, 1] + r, ext[None, :, 3])
            in_center = (x > cx0) & (x < cx1) & (y > cy0) & (y < cy1)
            cand = in_center & in_range & proj.valid[None, :]
            dist = (locs[:, None, :] - c2d[None]).square().sum(-1)
            dist = torch.where(cand, dist, torch.full_like(dist, torch.inf))
            best, arg = dist.min(dim=1)
            pos = torch.isfinite(best)
            index_b = torch.where(pos, arg, index_b)
            label_b = torch.where(pos, gt.labels.long()[arg], label_b)
            off = (c2d[arg] - locs) / strides[:, None]
            offset_b = torch.where(pos[:, None], off, offset_b)
        labels_out.append(label_b)
        index_out.append(index_b)
        offset_out.append(offset_b)
    return LocationTargets(torch.stack(labels_out), torch.stack(index_out),
                           torch.stack(offset_out))


class RayHits(NamedTuple):
    """Result of :func:`ray_box_coordinates`.

    Attributes:
        noc: ``(Q, N, 3)`` normalised object coordinates (object-frame point divided by the
            extent (length, height, width), so in ``[-0.5, 0.5]``) of the first hit.
        hit: ``(Q, N)`` bool: the ray enters the box in front of the camera.
    """

    noc: torch.Tensor
    hit: torch.Tensor


def ray_box_coordinates(
    x2d: torch.Tensor,
    cam_mats: torch.Tensor,
    center: torch.Tensor,
    size: torch.Tensor,
    yaw: torch.Tensor,
) -> RayHits:
    """Where the camera rays through pixels ``x2d`` first enter each box (slab method).

    This is the visible surface of the box, a dense proxy for the object surface (the paper's
    "+ coord. regr." uses sparse LiDAR points on the object instead).

    Args:
        x2d: ``(Q, N, 2)`` pixels; cam_mats: ``(Q, 3, 3)``; center: ``(Q, 3)``; size:
            ``(Q, 3)`` (w, l, h); yaw: ``(Q,)``.
    """
    ones = torch.ones_like(x2d[..., :1])
    pix = torch.cat((x2d, ones), dim=-1)  # (Q, N, 3)
    rays = torch.linalg.solve(cam_mats[:, None], pix.unsqueeze(-1)).squeeze(-1)  # (Q, N, 3)
    rot = yaw_to_matrix(yaw)  # (Q, 3, 3)
    # Object frame: x_obj = R^T (x_cam - t); the ray x_cam = s * d starts at the camera.
    d_obj = rays @ rot  # (R^T d)^T = d^T R
    o_obj = -(center[:, None, :] @ rot)  # (Q, 1, 3)
    half = 0.5 * object_extent(size)[:, None, :]  # (Q, 1, 3)
    safe = torch.where(d_obj.abs() < 1e-12, torch.full_like(d_obj, 1e-12), d_obj)
    t1 = (-half - o_obj) / safe
    t2 = (half - o_obj) / safe
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    hit = (t_near <= t_far) & (t_near > 0)
    point = o_obj + t_near[..., None] * d_obj
    noc = point / (2.0 * half).clamp_min(1e-6)
    noc = torch.where(hit[..., None], noc.clamp(-0.5, 0.5), torch.zeros_like(noc))
    return RayHits(noc, hit)
