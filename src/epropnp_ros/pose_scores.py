"""Scores of 6DoF pose estimates against ground truth (ROS-free): the 6DoF closed loop's report.

Every ground-truth instance counts: an instance without an estimate (no region, a failed
solve, a dropped frame) fails every accuracy. Per object (:mod:`epropnp_lib.metrics`, LineMOD
protocol): ADD(-S) accuracy at 0.02/0.05/0.1 of the diameter (ADD-S for symmetric objects),
2°2cm, 5°5cm and 10°10cm, median errors (for a symmetric object given its symmetries, the
rotation and translation errors against the equivalent ground truth of smallest rotation
error, :func:`epropnp_lib.metrics.symmetric_pose_errors`); ``mean`` is the unweighted mean
over objects (the paper's "Mean" row). Calibration of the covariance: the squared
Mahalanobis distance of the ground truth (for a symmetric object given its symmetries, that
same closest equivalent) in the covariance's tangent convention (``delta = (t* - t, Log(R*
R^T))``, fixed axes, :func:`epropnp_lib.metrics.mahalanobis_sq`) against chi-square with 6
degrees of freedom, as the fraction of ground truths inside the nominal 50/90/95 % ellipsoids
(estimated instances).

Poses ``(7,)`` ``(t, q_wxyz)`` in metres, covariances ``(6, 6)``, model points ``(M, 3)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from epropnp_lib.data.bop import BopModel
from epropnp_lib.geometry.symmetry import Symmetries
from epropnp_lib.metrics import (
    SYMMETRY_STEPS,
    PoseErrors,
    calibration,
    closest_equivalent_pose,
    mahalanobis_sq,
    mean_over_objects,
    pose_errors,
    summarize_errors,
)

__all__ = ["COVERAGE_LEVELS", "Estimate", "ModelSpec", "mahalanobis_of", "model_specs",
           "score_estimates"]

#: Nominal coverage levels reported.
COVERAGE_LEVELS = (0.5, 0.9, 0.95)


class ModelSpec(NamedTuple):
    """An object's evaluation model: ``points: (M, 3)`` metres, diameter, ADD-S or not, and
    its symmetries for the rotation and translation errors (``None``: the plain errors)."""

    points: np.ndarray
    diameter: float
    symmetric: bool
    symmetries: Symmetries | None = None


def model_specs(models: Iterable[BopModel]) -> dict[str, ModelSpec]:
    """``{name: ModelSpec}`` of BOP object models (symmetries sampled at
    :data:`~epropnp_lib.metrics.SYMMETRY_STEPS`)."""
    return {m.name: ModelSpec(m.vertices.double().numpy(), m.diameter, m.symmetric,
                              m.symmetries(SYMMETRY_STEPS) if m.symmetric else None)
            for m in models}


class Estimate(NamedTuple):
    """One ground-truth instance and its estimate (``pose``/``covariance`` ``None`` when
    missing)."""

    object_name: str
    gt_pose: np.ndarray
    pose: np.ndarray | None = None
    covariance: np.ndarray | None = None


def _object_errors(items: Sequence[Estimate], model: ModelSpec) -> tuple[PoseErrors, np.ndarray]:
    """Errors of all ``items`` of one object (inf for the missing ones) and the ``(n,)`` bool
    mask of the estimated ones."""
    found = np.array([e.pose is not None for e in items])
    n = len(items)
    inf = torch.full((n,), math.inf, dtype=torch.float64)
    add, rot, trans = inf.clone(), inf.clone(), inf.clone()
    if found.any():
        pred = torch.as_tensor(np.stack([e.pose for e in items if e.pose is not None]))
        gt = torch.as_tensor(np.stack([e.gt_pose for e, f in zip(items, found, strict=True)
                                       if f]))
        err = pose_errors(pred.double(), gt.double(), torch.as_tensor(model.points).double(),
                          model.diameter, model.symmetric, model.symmetries)
        idx = torch.as_tensor(np.flatnonzero(found))
        add[idx], rot[idx], trans[idx] = err.add, err.rotation_deg, err.translation
    return PoseErrors(add, torch.full((n,), model.diameter, dtype=torch.float64), rot,
                      trans), found


def _calibration_truth(e: Estimate, model: ModelSpec) -> np.ndarray:
    """The ground truth an estimate's covariance is scored against: the equivalent closest to
    the estimate for an object given its symmetries."""
    if e.pose is None or model.symmetries is None or model.symmetries.num == 1:
        return e.gt_pose
    eq = closest_equivalent_pose(torch.as_tensor(e.pose).double()[None],
                                 torch.as_tensor(e.gt_pose).double()[None], model.symmetries)
    return eq[0].numpy()


def mahalanobis_of(estimates: Sequence[Estimate], models: Mapping[str, ModelSpec]
                   ) -> torch.Tensor:
    """``(M,)`` float64 squared Mahalanobis distances of the ``M`` estimates that have a pose
    and a covariance, from the ground truth they are scored against (the closest equivalent
    for a symmetric object), in the fixed-axes tangent convention.

    Raises:
        KeyError: an estimate's object has no model.
    """
    done = [(e.pose, _calibration_truth(e, models[e.object_name]), e.covariance)
            for e in estimates if e.pose is not None and e.covariance is not None]
    if not done:
        return torch.zeros(0, dtype=torch.float64)
    pred, gt, cov = (torch.as_tensor(np.stack(v)).double() for v in zip(*done, strict=True))
    return mahalanobis_sq(pred, gt, cov)


def score_estimates(estimates: Sequence[Estimate], models: Mapping[str, ModelSpec]
                    ) -> dict[str, Any]:
    """The report (module docstring) as plain JSON-able values.

    Raises:
        KeyError: an estimate's object has no model.
    """
    by_object: dict[str, list[Estimate]] = {}
    for e in estimates:
        by_object.setdefault(e.object_name, []).append(e)
    per_object: dict[str, dict[str, float]] = {}
    summaries = {}
    for name, items in sorted(by_object.items()):
        errors, found = _object_errors(items, models[name])
        summaries[name] = summarize_errors(errors)
        per_object[name] = summaries[name].to_dict()
        ok10 = (errors.rotation_deg < 10.0) & (errors.translation * 100.0 < 10.0)
        per_object[name]["deg10_cm10"] = float(ok10.double().mean()) * 100.0
        per_object[name]["estimated"] = int(found.sum())
    mean: dict[str, float] = {}
    if summaries:
        mean = mean_over_objects(summaries).to_dict()
        mean["deg10_cm10"] = float(np.mean([p["deg10_cm10"] for p in per_object.values()]))
    cal = calibration(mahalanobis_of(estimates, models), 6, COVERAGE_LEVELS)
    return {
        "protocol": "ADD(-S) at 0.02/0.05/0.1 d (ADD-S for symmetric objects), n deg n cm "
                    "and covariance coverage (symmetric objects: against the closest "
                    "equivalent ground truth), "
                    "mean over objects; a missing estimate fails; covariance coverage: "
                    "chi-square(6) of the Mahalanobis distance in the fixed-axes tangent "
                    "convention, over the estimated instances",
        "instances": len(estimates),
        "estimated": sum(e.pose is not None for e in estimates),
        "mean": mean,
        "per_object": per_object,
        "calibration": {"count": cal.count, "mean_d2": cal.mean_d2, "median_d2": cal.median_d2,
                        "coverage": {f"{lv:g}": v for lv, v in cal.coverage.items()}},
    }
