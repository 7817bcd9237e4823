"""Inference steps of the deformable correspondence network: the candidate queries of a batch
(:class:`Queries`: correspondences in network-input pixels, before any solve), the selection of
locations, the multi-start 4DoF PnP solve and the selection of detections (score, BEV NMS).
Shapes: ``B`` images, ``Q`` queries, ``N`` correspondences each, poses ``(Q, 4)`` =
``(x, y, z, yaw)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torchvision.ops import batched_nms, box_iou

from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.camera import image_points
from epropnp_lib.pnp.init import hypotheses_6dof, init_4dof
from epropnp_lib.pnp.solver import PnPSolution, SolverConfig, SolveStatus, solve_pnp

__all__ = [
    "Detections",
    "Queries",
    "bev_nms",
    "bev_rectangles",
    "empty_queries",
    "merge_queries",
    "no_detections",
    "select_detections",
    "solve_multi_start",
    "take_solution",
    "top_locations",
]


class Queries(NamedTuple):
    """Candidate objects of ``B`` images before the PnP solve (``Q`` queries, ``N`` points).

    Attributes:
        x3d: ``(Q, N, 3)`` object points (metres, object frame).
        x2d: ``(Q, N, 2)`` 2D points in network-input pixels.
        w2d: ``(Q, N, 2)`` weights (per network-input pixel).
        cam_mats: ``(Q, 3, 3)`` network-input intrinsics of each query's image.
        image_index: ``(Q,)`` long, the image of each query.
        labels: ``(Q,)`` long class.
        scores: ``(Q,)`` class score * 3D score.
        size: ``(Q, 3)`` box size (w, l, h).
        velocity: ``(Q, 2)`` (vx, vz), NaN without the velocity head.
        attributes: ``(Q,)`` long attribute, -1 without the attribute head.
        affines: ``(B, 3, 3)`` map from the pixels of each image to network-input pixels
            (:func:`~epropnp_lib.geometry.camera.pixel_affine`; the network intrinsics are
            ``affine @ K``).
    """

    x3d: torch.Tensor
    x2d: torch.Tensor
    w2d: torch.Tensor
    cam_mats: torch.Tensor
    image_index: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    size: torch.Tensor
    velocity: torch.Tensor
    attributes: torch.Tensor
    affines: torch.Tensor

    @property
    def num_queries(self) -> int:
        """``Q``."""
        return int(self.x3d.shape[0])

    @property
    def num_images(self) -> int:
        """``B``."""
        return int(self.affines.shape[0])

    def select(self, index: torch.Tensor) -> Queries:
        """The queries at ``index`` (a ``(Q,)`` mask or ``(M,)`` indices); all images kept."""
        return Queries._make([*(t[index] for t in self[:-1]), self.affines])

    def boxes(self, solution: PnPSolution) -> CameraBoxes:
        """``Q`` boxes with the poses of ``solution`` (a solve of these queries)."""
        return CameraBoxes(solution.pose[:, :3], self.size, solution.pose[:, 3], self.labels,
                           self.velocity, self.attributes, self.scores)

    def image_points(self) -> torch.Tensor:
        """``(Q, N, 2)`` the 2D points in the pixels of their image."""
        return image_points(self.x2d, self.affines[self.image_index])


def empty_queries(like: torch.Tensor, num_points: int, affines: torch.Tensor) -> Queries:
    """No queries (``N = num_points``) of the images of ``affines: (B, 3, 3)``, in the dtype and
    device of ``like``."""
    index = torch.zeros(0, dtype=torch.long, device=like.device)
    return Queries(like.new_zeros(0, num_points, 3), like.new_zeros(0, num_points, 2),
                   like.new_zeros(0, num_points, 2), like.new_zeros(0, 3, 3), index, index,
                   like.new_zeros(0), like.new_zeros(0, 3), like.new_zeros(0, 2), index, affines)


def merge_queries(parts: Sequence[tuple[torch.Tensor, Queries]], num_images: int) -> Queries:
    """One :class:`Queries` of ``num_images`` images from the queries of groups of them (e.g.
    one network forward per image size).

    Args:
        parts: ``(index (B_g,), queries)`` per group: the images' indices among all and the
            group's queries (``image_index`` within the group); at least one.
        num_images: ``B``, the images of all groups (each index in exactly one group).

    Returns:
        the concatenated queries, ``image_index`` and ``affines`` in the indices of ``parts``.
    """
    if len(parts) == 1 and parts[0][1].num_images == num_images:
        index, q = parts[0]
        if bool((index == torch.arange(num_images, device=index.device)).all()):
            return q
    first = parts[0][1]
    affines = first.affines.new_zeros(num_images, 3, 3)
    for index, q in parts:
        affines[index] = q.affines
    fields = [torch.cat([getattr(q, name) for _, q in parts]) for name in Queries._fields[:-1]]
    image_index = Queries._fields.index("image_index")
    fields[image_index] = torch.cat([index[q.image_index] for index, q in parts])
    return Queries._make([*fields, affines])


def top_locations(
    scores: torch.Tensor,
    level_index: torch.Tensor,
    num_levels: int,
    threshold: float,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image index (Q,), location index (Q,))`` of the query locations: per image and
    level, those whose score ``scores: (B, L)`` is at least ``threshold``, at most ``top_k``
    of highest score (``level_index: (L,)`` the level of each location)."""
    b_sel, l_sel = [], []
    for b in range(scores.shape[0]):
        for lv in range(num_levels):
            idx = (level_index == lv).nonzero().squeeze(-1)
            sc = scores[b, idx]
            keep = sc >= threshold
            idx, sc = idx[keep], sc[keep]
            if idx.numel() > top_k:
                idx = idx[sc.topk(top_k).indices]
            l_sel.append(idx)
            b_sel.append(torch.full_like(idx, b))
    return torch.cat(b_sel), torch.cat(l_sel)


class Detections(NamedTuple):
    """Detections of one image (``M`` boxes, ``N`` correspondences, ``S`` posterior samples).

    Attributes:
        boxes: :class:`~epropnp_lib.geometry.boxes.CameraBoxes` (pose from the PnP solve, predicted
            size, class, score = class score * 3D score, velocity (NaN without the head),
            attribute (-1 without the head)).
        covariance: ``(M, 4, 4)`` Laplace covariance of ``(x, y, z, yaw)``.
        x2d: ``(M, N, 2)`` 2D points in the original image's pixels.
        x3d: ``(M, N, 3)`` object points (metres, object frame).
        w2d: ``(M, N, 2)`` weights.
        pose_samples: ``(S, M, 4)`` equally weighted posterior samples, or ``None``.
    """

    boxes: CameraBoxes
    covariance: torch.Tensor
    x2d: torch.Tensor
    x3d: torch.Tensor
    w2d: torch.Tensor
    pose_samples: torch.Tensor | None


def no_detections(like: torch.Tensor, num_points: int, num_pose_samples: int) -> Detections:
    """Empty :class:`Detections` in the dtype and device of ``like`` (``N = num_points``)."""
    boxes = CameraBoxes.empty(dtype=like.dtype, device=like.device)
    return Detections(boxes, like.new_zeros(0, 4, 4), like.new_zeros(0, num_points, 2),
                      like.new_zeros(0, num_points, 3), like.new_zeros(0, num_points, 2),
                      like.new_zeros(num_pose_samples, 0, 4) if num_pose_samples > 0 else None)


@torch.no_grad()
def solve_multi_start(
    x3d: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    cam_mats: torch.Tensor,
    solver: SolverConfig,
    max_iterations: int = 0,
    multi_start: bool = True,
) -> PnPSolution:
    """4DoF PnP solve of ``Q`` objects' correspondences (``x3d: (Q, N, 3)``, ``x2d, w2d:
    (Q, N, 2)``, ``cam_mats: (Q, 3, 3)``) with ``solver`` (``max_iterations > 0`` replaces its
    iteration limit).

    Learned correspondences often mislead the closed-form 4DoF initialisation (a linear
    relaxation) into an optimum behind the camera or a wrong local optimum; with
    ``multi_start`` the solve therefore also starts from the four yaw rotations among
    :func:`~epropnp_lib.pnp.init.hypotheses_6dof`'s poses (yaw 0, 90, 180, 270 degrees,
    translation from the weighted 2D/3D centroids and spreads) and keeps, per object, the
    usable solution of lowest cost (among none usable, the closed-form start's).
    """
    if max_iterations > 0:
        solver = dataclasses.replace(solver, max_iterations=max_iterations)
    if not multi_start or x3d.shape[0] == 0:
        return solve_pnp(x3d, x2d, w2d, cam_mats, dof=4, config=solver)
    q = x3d.shape[0]
    hyp = hypotheses_6dof(x3d, x2d, w2d, cam_mats)  # (24, Q, 7)
    quat = hyp[:, 0, 3:]
    about_y = (quat[:, 1].abs() < 1e-6) & (quat[:, 3].abs() < 1e-6)
    hyp = hyp[about_y]  # (4, Q, 7): yaw 0, 90, 180, 270 degrees
    yaw = 2.0 * torch.atan2(hyp[..., 5], hyp[..., 3])
    starts = torch.cat((init_4dof(x3d, x2d, w2d, cam_mats),
                        torch.cat((hyp[..., :3], yaw[..., None]), dim=-1)))  # (S, Q, 4)
    n = starts.shape[0]
    sol = solve_pnp(
        x3d.repeat(n, 1, 1), x2d.repeat(n, 1, 1), w2d.repeat(n, 1, 1),
        cam_mats.repeat(n, 1, 1), dof=4, pose_init=starts.flatten(0, 1), config=solver,
    )
    usable = (sol.status <= SolveStatus.MAX_ITERATIONS) & torch.isfinite(sol.cost)
    cost = torch.where(usable, sol.cost, torch.inf).view(n, q)
    best = torch.where(torch.isfinite(cost).any(0), cost.argmin(0), 0)
    flat = best * q + torch.arange(q, device=best.device)
    return PnPSolution(*(t[flat] for t in sol))


def take_solution(solution: PnPSolution, index: torch.Tensor) -> PnPSolution:
    """The elements ``index`` of a batched solution."""
    return PnPSolution(*(t[index] for t in solution))


def select_detections(
    queries: Queries,
    solution: PnPSolution,
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
) -> list[torch.Tensor]:
    """Per image, the indices ``(M_b,)`` of the queries kept as detections, best first: a
    usable solve (converged or at the iteration limit, finite pose) and a score of at least
    ``score_threshold``, then class-aware NMS (:func:`torchvision.ops.batched_nms`) at
    ``nms_iou`` on :func:`bev_rectangles`, at most ``max_detections``."""
    ok = (solution.status <= SolveStatus.MAX_ITERATIONS) & (
        queries.scores >= score_threshold) & torch.isfinite(solution.pose).all(-1)
    boxes = queries.boxes(solution)
    kept = []
    for b in range(queries.num_images):
        sel = ((queries.image_index == b) & ok).nonzero().squeeze(-1)
        if sel.numel() > 0:
            nms = bev_nms(boxes.select(sel).corners()[..., [0, 2]], queries.scores[sel],
                          queries.labels[sel], nms_iou)
            sel = sel[nms[:max_detections]]
        kept.append(sel)
    return kept


def bev_rectangles(boxes: CameraBoxes) -> torch.Tensor:
    """``(M, 4)`` axis-aligned ``(x1, z1, x2, z2)`` around the footprints in the camera x-z
    plane: the boxes of the bird's-eye-view NMS, so that objects that overlap in the image at
    different depths are not suppressed."""
    return _rectangles(boxes.corners()[..., [0, 2]])


def _rectangles(footprints: torch.Tensor) -> torch.Tensor:
    """``(M, 4)`` axis-aligned rectangles around ``footprints: (M, K, 2)``."""
    return torch.cat((footprints.amin(1), footprints.amax(1)), dim=-1)


def bev_nms(
    footprints: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou: float,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-aware bird's-eye-view NMS: indices ``(K,)`` of the kept boxes, best score first.

    Args:
        footprints: ``(M, K, 2)`` box corners projected onto the ground plane (camera x-z for
            camera-frame boxes, x-y of a z-up frame such as ``base_link``).
        scores: ``(M,)`` box scores.
        labels: ``(M,)`` classes (boxes of different classes never suppress each other).
        iou: IoU above which the lower-scoring box of a pair is dropped.
        groups: ``(M,)`` optional group of each box (e.g. the camera that saw it): boxes of the
            same group never suppress each other either (each group was NMS-ed already).
    """
    rect = _rectangles(footprints)
    if groups is None:
        return batched_nms(rect, scores, labels, iou)
    order = scores.argsort(descending=True, stable=True)
    rivals = (box_iou(rect, rect) > iou) & (labels[:, None] == labels[None, :]) & (
        groups[:, None] != groups[None, :])
    removed = torch.zeros_like(labels, dtype=torch.bool)
    kept = []
    for i in order.tolist():
        if not removed[i]:
            kept.append(i)
            removed |= rivals[i]
    return torch.tensor(kept, dtype=torch.long, device=scores.device)
