"""Heading metrics of 4DoF detections: matching to the ground truth, heading error, and the
calibration of the heading posterior (the paper's multimodal front/back posteriors, measured).

* :func:`match_boxes` -- greedy matching in the order of descending detection score, as the
  nuScenes ``DetectionEval`` does: each detection takes the nearest still-unmatched
  ground-truth box of its class whose centre lies within ``max_distance`` metres in the bird's
  eye view (camera ``x, z``; cameras are level).
* :func:`heading_errors` -- ``|wrap(yaw_det - yaw_gt)|`` (radians, in ``[0, pi]``) of the
  matched pairs; with per-class heading ``periods`` (nuScenes:
  :data:`~epropnp_lib.data.nuscenes.NUSCENES_HEADING_PERIODS`) the angle is wrapped to the
  class's period (barriers: pi) and classes of period NaN (no heading) are left out, as the
  devkit's orientation error does.
* :func:`hdr_contains` -- whether each true heading lies in the ``mass`` highest-density
  region of its posterior yaw samples.  The density is a von Mises kernel estimate on the
  circle; the region is ``{yaw: f(yaw) >= f_(1 - mass)}`` with ``f_(1 - mass)`` the
  ``1 - mass`` quantile of the density at the samples themselves (Hyndman 1996), so it may be
  two arcs (front and back) for a bimodal posterior.
* :func:`heading_calibration` -- over many images, the fraction of matched detections whose
  true heading is inside the region; a calibrated posterior gives ``mass``.

Boxes are :class:`~epropnp_lib.geometry.boxes.CameraBoxes` (yaw about the camera y axis,
:mod:`epropnp_lib.conventions`); posterior samples are the ``(S, M, 4)`` ``(x, y, z, yaw)``
poses of :class:`~epropnp_lib.nets.deformable.inference.Detections` ``.pose_samples``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch

from epropnp_lib.checks import check_shape
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.rotations import wrap_angle

__all__ = [
    "HDR_MASSES",
    "HeadingCalibration",
    "HeadingImage",
    "hdr_contains",
    "heading_calibration",
    "greedy_match",
    "heading_errors",
    "match_boxes",
    "scored_matches",
]

#: Matching radius of nuScenes' TP metrics (metres, centre distance).
MATCH_DISTANCE = 2.0

#: Masses of the highest-density regions whose coverage the evaluations report (the
#: heading posterior's calibration curve; 0.9 is the headline figure).
HDR_MASSES = (0.5, 0.9, 0.95)

#: Smallest kernel bandwidth (radians) of the density estimate (concentrated samples).
MIN_BANDWIDTH = 1.0e-3


def greedy_match(det_xy: torch.Tensor, det_labels: torch.Tensor, det_scores: torch.Tensor,
                 gt_xy: torch.Tensor, gt_labels: torch.Tensor,
                 max_distance: float = MATCH_DISTANCE) -> torch.Tensor:
    """The nuScenes matching rule on bird's-eye-view points: in the order of descending score,
    each detection takes the nearest still-unmatched ground truth of its class closer than
    ``max_distance``.

    Args:
        det_xy: ``(M, 2)`` detection centres in the ground plane; ``det_labels: (M,)``;
            ``det_scores: (M,)``.
        gt_xy: ``(G, 2)``; ``gt_labels: (G,)``.
        max_distance: the matching radius (metres).

    Returns:
        ``(G,)`` long: the index of the detection matched to each ground truth, -1 if none.
    """
    if not max_distance > 0:
        raise ConfigError(f"max_distance must be positive, got {max_distance}")
    match = torch.full((gt_xy.shape[0],), -1, dtype=torch.long)
    if det_xy.shape[0] == 0 or gt_xy.shape[0] == 0:
        return match
    dist = torch.cdist(det_xy.double().cpu(), gt_xy.double().cpu())
    same = det_labels.cpu()[:, None] == gt_labels.cpu()[None, :]
    dist = torch.where(same, dist, torch.inf)
    taken = torch.zeros(gt_xy.shape[0], dtype=torch.bool)
    for d in torch.argsort(det_scores.cpu(), descending=True, stable=True).tolist():
        row = torch.where(taken, torch.inf, dist[d])
        j = int(row.argmin())
        if float(row[j]) < max_distance:
            match[j] = d
            taken[j] = True
    return match


def match_boxes(det: CameraBoxes, gt: CameraBoxes,
                max_distance: float = MATCH_DISTANCE) -> torch.Tensor:
    """``(M_gt,)`` long: the index of the detection matched to each ground-truth box, -1 if
    none (:func:`greedy_match` on the camera ``x, z`` plane)."""
    bev = [0, 2]
    return greedy_match(det.center[:, bev], det.labels, det.scores, gt.center[:, bev],
                        gt.labels, max_distance)


def _turns(labels: torch.Tensor, periods: Sequence[float] | None) -> torch.Tensor:
    """``(K,)`` float64 factor ``2 pi / period`` of each label (1 without ``periods``; NaN
    for classes without heading)."""
    if periods is None:
        return torch.ones(labels.shape, dtype=torch.float64)
    table = torch.tensor(periods, dtype=torch.float64)
    if not bool(((table > 0) | table.isnan()).all()):
        raise ConfigError(f"periods must be positive or NaN, got {list(periods)}")
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < table.numel():
        raise ConfigError(f"labels outside the {table.numel()} classes of periods")
    return 2 * math.pi / table[labels.cpu().long()]


def scored_matches(gt: CameraBoxes, match: torch.Tensor,
                   periods: Sequence[float] | None = None) -> torch.Tensor:
    """``(M_gt,)`` bool: matched ground-truth boxes whose class has a heading."""
    check_shape(match, [gt.num_boxes], "match")
    return (match >= 0) & torch.isfinite(_turns(gt.labels, periods))


def heading_errors(det: CameraBoxes, gt: CameraBoxes, match: torch.Tensor,
                   periods: Sequence[float] | None = None) -> torch.Tensor:
    """``(K,)`` float64 absolute heading errors (radians, ``[0, period / 2]``) of the ``K``
    scored pairs of ``match: (M_gt,)`` (from :func:`match_boxes`; :func:`scored_matches`),
    in ground-truth order."""
    hit = scored_matches(gt, match, periods)
    turns = _turns(gt.labels[hit], periods)
    diff = det.yaw.cpu()[match[hit]].double() - gt.yaw.cpu()[hit].double()
    return wrap_angle(diff * turns).abs() / turns


def _bandwidth(samples: torch.Tensor) -> torch.Tensor:
    """``(K,)`` kernel bandwidths (radians) of ``samples: (S, K)``: Silverman's rule on the
    circular standard deviation ``sqrt(-2 ln R)``."""
    r = torch.stack((samples.cos().mean(0), samples.sin().mean(0))).norm(dim=0)
    std = (-2.0 * r.clamp(1e-12, 1.0).log()).clamp_min(0.0).sqrt()
    return (1.06 * std * samples.shape[0] ** -0.2).clamp_min(MIN_BANDWIDTH)


def hdr_contains(samples: torch.Tensor, truth: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Whether ``truth: (K,)`` (radians) lies in the ``mass`` highest-density region of the
    equally weighted yaw samples ``samples: (S, K)`` of each of ``K`` posteriors; ``(K,)``
    bool (see the module docstring)."""
    dims = check_shape(samples, ["S", "K"], "samples")
    check_shape(truth, ["K"], "truth", dims)
    if not 0 < mass < 1:
        raise ConfigError(f"mass must be in (0, 1), got {mass}")
    if dims["S"] < 2:
        raise ConfigError(f"need at least 2 samples per posterior, got {dims['S']}")
    s = samples.double()
    kappa = _bandwidth(s) ** -2  # (K,)

    def density(at: torch.Tensor) -> torch.Tensor:  # at: (P, K) -> (P, K), up to a constant
        # exp(kappa (cos d - 1)) keeps the kernel in [0, 1] for any concentration
        return torch.exp(kappa * (torch.cos(at[:, None, :] - s[None]) - 1.0)).mean(1)

    level = torch.quantile(density(s), 1.0 - mass, dim=0)  # (K,)
    return density(truth.double()[None])[0] >= level


class HeadingImage(NamedTuple):
    """What :func:`heading_calibration` needs of one image.

    Attributes:
        detections: the detected boxes (``M`` boxes).
        yaw_samples: ``(S, M)`` posterior yaw samples of each detection.
        ground_truth: the annotated boxes.
    """

    detections: CameraBoxes
    yaw_samples: torch.Tensor
    ground_truth: CameraBoxes


class HeadingCalibration(NamedTuple):
    """Heading posterior calibration over a set of images.

    Attributes:
        mass: probability mass of the highest-density regions.
        num_matched: matched detections with posterior samples.
        num_inside: of those, how many have their true heading inside the region.
        fraction: ``num_inside / num_matched`` (NaN without matches); ``mass`` if calibrated.
        mean_error: mean absolute heading error of the matched detections (radians, NaN
            without matches).
    """

    mass: float
    num_matched: int
    num_inside: int
    fraction: float
    mean_error: float


def heading_calibration(images: Iterable[HeadingImage], mass: float = 0.9,
                        max_distance: float = MATCH_DISTANCE,
                        periods: Sequence[float] | None = None) -> HeadingCalibration:
    """Calibration of the heading posteriors of the matched detections of ``images`` (classes
    wrapped to their heading ``periods``, see :func:`heading_errors`)."""
    inside, errors = [], []
    for img in images:
        check_shape(img.yaw_samples, ["S", img.detections.num_boxes], "yaw_samples")
        gt = img.ground_truth
        match = match_boxes(img.detections, gt, max_distance)
        hit = scored_matches(gt, match, periods)
        if not bool(hit.any()):
            continue
        turns = _turns(gt.labels[hit], periods)
        samples = img.yaw_samples.cpu().double()[:, match[hit]] * turns
        inside.append(hdr_contains(samples, gt.yaw.cpu().double()[hit] * turns, mass))
        errors.append(heading_errors(img.detections, gt, match, periods))
    if not inside:
        return HeadingCalibration(mass, 0, 0, math.nan, math.nan)
    flags = torch.cat(inside)
    n_in = int(flags.sum())
    return HeadingCalibration(mass, int(flags.numel()), n_in, n_in / flags.numel(),
                              float(torch.cat(errors).mean()))
