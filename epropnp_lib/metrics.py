"""Pose-estimation metrics of the paper: ADD(-S), n° n cm, and covariance calibration.

Definitions follow the standard LineMOD protocol used by the paper (Sec. 5.1) and the
bop_toolkit's ``add`` / ``adi`` errors:

* **ADD** -- mean distance between the model points transformed by the predicted and by the
  ground-truth pose: ``mean_i ||(R x_i + t) - (R* x_i + t*)||``.
* **ADD-S** -- for symmetric objects, the mean over the ground-truth-transformed points of the
  distance to the *closest* predicted-transformed point:
  ``mean_i min_j ||(R* x_i + t*) - (R x_j + t)||``.  ADD-S <= ADD always.
* **ADD(-S) accuracy at k d** -- ADD (ADD-S for symmetric objects, on LineMOD the eggbox and
  the glue, :data:`epropnp_lib.data.bop.LINEMOD_SYMMETRIC`) strictly below ``k`` times the
  object diameter; the paper reports k = 0.02, 0.05, 0.1 (:data:`ADD_THRESHOLDS`).
* **n° n cm** -- rotation error strictly below ``n`` degrees and translation error strictly
  below ``n`` centimetres.  This assumes poses in **metres** (the unit of every tensor in
  epropnp; the BOP reader converts from millimetres).  For a symmetric object given its
  symmetries (:func:`symmetric_pose_errors`), both errors are those against the equivalent
  ground truth ``(R* R_s, t* + R* t_s)`` of smallest rotation error.
* **Mahalanobis distance** -- ``delta^T Sigma^-1 delta`` of the ground truth relative to the
  prediction in the library tangent convention (:mod:`epropnp_lib.conventions`): for 6DoF
  ``delta = (t* - t, Log(R* R^T))`` -- the rotation increment on the left, about the camera's
  fixed axes, exactly as :meth:`epropnp_lib.geometry.pose.Pose6DoF.retract` applies it -- so
  that ``retract(pose_pred, delta) == pose_gt``.  For a calibrated covariance it follows a
  chi-square law with ``D`` (6 or 4) degrees of freedom (:func:`calibration`).

All functions take poses ``(B, 7)`` = ``(t, q_wxyz)`` in float32 or float64 on any device;
model points are ``(M, 3)`` (one object for the whole batch) or ``(B, M, 3)``, in the units of
the translations.  Accuracies are returned per element as bool ``(B,)``; :func:`summarize`
turns them into the percentages the paper reports.

Example::

    >>> import torch
    >>> pose = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    >>> pts = torch.tensor([[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0]])
    >>> moved = pose + torch.tensor([[0.001, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    >>> add_distance(moved, pose, pts)
    tensor([0.0010])
    >>> add_accuracy(moved, pose, pts, diameter=0.2, threshold=0.02)
    tensor([True])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.errors import ConfigError, ShapeError
from epropnp_lib.geometry.pose import Pose4DoF, Pose6DoF
from epropnp_lib.geometry.rotations import (
    matrix_to_quat,
    quat_log,
    quat_multiply,
    quat_normalize,
    quat_to_matrix,
    wrap_angle,
)
from epropnp_lib.geometry.symmetry import Symmetries, canonical_pose

#: Steps a continuous symmetry is discretised into for :func:`symmetric_pose_errors` (1
#: degree: the rotation error is at most 0.5 degree above the continuous minimum).
SYMMETRY_STEPS = 360

#: Fractions of the object diameter at which the paper reports ADD(-S) accuracy.
ADD_THRESHOLDS = (0.02, 0.05, 0.1)
#: Largest number of point pairs (batch x chunk x points) one ADD-S distance block holds.
_ADDS_BLOCK = 1 << 22


def _check_poses(pose_pred: torch.Tensor, pose_gt: torch.Tensor) -> dict[str, int]:
    dims = check_shape(pose_pred, ["B", 7], "pose_pred")
    dims = check_shape(pose_gt, ["B", 7], "pose_gt", dims)
    check_float_tensors(pose_pred=pose_pred, pose_gt=pose_gt)
    return dims


def _check_points(points: torch.Tensor, dims: dict[str, int], ref: torch.Tensor) -> torch.Tensor:
    """Validate model points ``(M, 3)`` or ``(B, M, 3)``; return them as ``(B or 1, M, 3)``."""
    if isinstance(points, torch.Tensor) and points.dim() == 2:
        check_shape(points, ["M", 3], "points")
        points = points.unsqueeze(0)
    else:
        check_shape(points, ["B", "M", 3], "points", dims)
    check_float_tensors(pose_pred=ref, points=points)
    if points.shape[1] == 0:
        raise ShapeError("points: need at least one model point, got M = 0")
    return points


def _relative_in_gt_frame(
    pose_pred: torch.Tensor, pose_gt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R*^T R (B, 3, 3), R*^T (t - t*) (B, 3))``: the prediction seen from the gt object frame.

    Distances between transformed points are invariant under the rigid map ``x -> R*^T (x - t*)``,
    which brings them to object-size magnitudes (accurate in float32 far from the camera).
    """
    rot_gt_t = Pose6DoF.rotation(pose_gt).transpose(-1, -2)
    rot_rel = rot_gt_t @ Pose6DoF.rotation(pose_pred)
    t_rel = (rot_gt_t @ (pose_pred[:, :3] - pose_gt[:, :3]).unsqueeze(-1)).squeeze(-1)
    return rot_rel, t_rel


def add_distance(
    pose_pred: torch.Tensor, pose_gt: torch.Tensor, points: torch.Tensor
) -> torch.Tensor:
    """ADD: mean distance of the model points under the two poses.

    Args:
        pose_pred: ``(B, 7)`` predicted poses ``(t, q_wxyz)``.
        pose_gt: ``(B, 7)`` ground-truth poses.
        points: ``(M, 3)`` or ``(B, M, 3)`` model points (same unit as ``t``).

    Returns:
        ``(B,)`` mean point distance, in the unit of ``t``.
    """
    dims = _check_poses(pose_pred, pose_gt)
    pts = _check_points(points, dims, pose_pred)
    rot_rel, t_rel = _relative_in_gt_frame(pose_pred, pose_gt)
    # (R_rel - I) x + t_rel: no cancellation between two large camera-frame points.
    eye = torch.eye(3, dtype=rot_rel.dtype, device=rot_rel.device)
    diff = pts @ (rot_rel - eye).transpose(-1, -2) + t_rel.unsqueeze(-2)  # (B, M, 3)
    return diff.norm(dim=-1).mean(-1)


def adds_distance(
    pose_pred: torch.Tensor, pose_gt: torch.Tensor, points: torch.Tensor
) -> torch.Tensor:
    """ADD-S: mean over gt-posed model points of the distance to the closest predicted one.

    Computed in chunks of ground-truth points so that the pairwise block never exceeds
    about 4 M pairs (``M = 5000`` points and more fit in memory on any device).

    Args:
        pose_pred: ``(B, 7)`` predicted poses ``(t, q_wxyz)``.
        pose_gt: ``(B, 7)`` ground-truth poses.
        points: ``(M, 3)`` or ``(B, M, 3)`` model points (same unit as ``t``).

    Returns:
        ``(B,)`` mean closest-point distance, in the unit of ``t``; ``<= add_distance``.
    """
    dims = _check_poses(pose_pred, pose_gt)
    pts = _check_points(points, dims, pose_pred)
    rot_rel, t_rel = _relative_in_gt_frame(pose_pred, pose_gt)
    batch, m = pose_pred.shape[0], pts.shape[1]
    pred = pts @ rot_rel.transpose(-1, -2) + t_rel.unsqueeze(-2)  # (B, M, 3), gt object frame
    gt = pts.expand(batch, m, 3)
    chunk = max(1, _ADDS_BLOCK // max(1, batch * m))
    total = pred.new_zeros(batch)
    for start in range(0, m, chunk):
        block = torch.cdist(gt[:, start:start + chunk], pred,
                            compute_mode="donot_use_mm_for_euclid_dist")  # (B, c, M)
        total = total + block.amin(dim=-1).sum(-1)
    return total / m


def rotation_error_deg(pose_pred: torch.Tensor, pose_gt: torch.Tensor) -> torch.Tensor:
    """Angle of the relative rotation, in degrees ``[0, 180]``: ``(B, 7), (B, 7) -> (B,)``.

    Symmetric in its arguments; ``q`` and ``-q`` give the same error.
    """
    _check_poses(pose_pred, pose_gt)
    return torch.rad2deg(Pose6DoF.rotation_error(pose_pred, pose_gt))


def translation_error(pose_pred: torch.Tensor, pose_gt: torch.Tensor) -> torch.Tensor:
    """Euclidean translation error ``(B,)`` (metres for library poses) of ``(B, 7)`` poses."""
    _check_poses(pose_pred, pose_gt)
    return (pose_pred[:, :3] - pose_gt[:, :3]).norm(dim=-1)


def closest_equivalent_pose(
    pose_pred: torch.Tensor, pose_gt: torch.Tensor, symmetries: Symmetries
) -> torch.Tensor:
    """The equivalent ground truth ``(R* R_s, t* + R* t_s)`` (``s`` over ``symmetries``,
    identity included) of smallest rotation error to the prediction.

    Args:
        pose_pred: ``(B, 7)`` predicted poses.
        pose_gt: ``(B, 7)`` ground-truth poses.
        symmetries: the object's :class:`~epropnp_lib.geometry.symmetry.Symmetries`
            (``(S, 3, 3)``, ``(S, 3)``, in the unit of the translations).

    Returns:
        ``(B, 7)`` poses.
    """
    _check_poses(pose_pred, pose_gt)
    rot_gt = quat_to_matrix(quat_normalize(pose_gt[:, 3:]))  # (B, 3, 3)
    rot_pred = quat_to_matrix(quat_normalize(pose_pred[:, 3:]))
    # Largest trace(R_pred^T R* R_s) = smallest rotation angle to the prediction.
    rot, trans, _ = canonical_pose(rot_gt, pose_gt[:, :3], symmetries, reference=rot_pred)
    return torch.cat((trans, matrix_to_quat(rot)), -1)


def symmetric_pose_errors(
    pose_pred: torch.Tensor, pose_gt: torch.Tensor, symmetries: Symmetries
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation (degrees) and translation errors of a symmetric object: those against
    :func:`closest_equivalent_pose` (arguments as there).

    Returns:
        ``(rotation_deg (B,), translation (B,))``; with the identity alone,
        :func:`rotation_error_deg` and :func:`translation_error` (up to rounding).
    """
    eq = closest_equivalent_pose(pose_pred, pose_gt, symmetries)
    return rotation_error_deg(pose_pred, eq), translation_error(pose_pred, eq)


def _per_element(value: float | torch.Tensor, batch: int, ref: torch.Tensor,
                 name: str) -> torch.Tensor:
    """Broadcast a scalar or ``(B,)`` value to ``(B,)`` on ``ref``'s device."""
    out = torch.as_tensor(value, device=ref.device)
    if out.dim() == 0:
        return out.expand(batch)
    check_shape(out, [batch], name)
    return out


def add_accuracy(
    pose_pred: torch.Tensor,
    pose_gt: torch.Tensor,
    points: torch.Tensor,
    diameter: float | torch.Tensor,
    threshold: float = 0.1,
    symmetric: bool | torch.Tensor = False,
) -> torch.Tensor:
    """ADD(-S) accuracy: ADD (ADD-S where ``symmetric``) ``< threshold * diameter``.

    Args:
        pose_pred: ``(B, 7)`` predicted poses.
        pose_gt: ``(B, 7)`` ground-truth poses.
        points: ``(M, 3)`` or ``(B, M, 3)`` model points.
        diameter: object diameter, a float or ``(B,)``, same unit as the points.
        threshold: fraction of the diameter (the paper uses 0.02, 0.05 and 0.1).
        symmetric: use ADD-S; a bool or a ``(B,)`` bool tensor.

    Returns:
        ``(B,)`` bool.
    """
    dist = add_s_distance(pose_pred, pose_gt, points, symmetric)
    diam = _per_element(diameter, dist.shape[0], dist, "diameter").to(dist.dtype)
    return dist < threshold * diam


def add_s_distance(
    pose_pred: torch.Tensor,
    pose_gt: torch.Tensor,
    points: torch.Tensor,
    symmetric: bool | torch.Tensor = False,
) -> torch.Tensor:
    """ADD(-S) distance ``(B,)``: ADD, or ADD-S where ``symmetric`` (bool or ``(B,)`` bool).

    Poses ``(B, 7)``; points ``(M, 3)`` or ``(B, M, 3)``.  ADD-S is only computed when some
    element is symmetric.
    """
    add = add_distance(pose_pred, pose_gt, points)
    sym = _per_element(symmetric, add.shape[0], add, "symmetric").to(torch.bool)
    if not bool(sym.any()):
        return add
    return torch.where(sym, adds_distance(pose_pred, pose_gt, points), add)


def n_deg_n_cm(
    pose_pred: torch.Tensor, pose_gt: torch.Tensor, deg: float, cm: float
) -> torch.Tensor:
    """``(B,)`` bool: rotation error ``< deg`` degrees and translation error ``< cm`` cm.

    Poses ``(B, 7)`` with translations in metres.
    """
    rot_ok = rotation_error_deg(pose_pred, pose_gt) < deg
    return rot_ok & (translation_error(pose_pred, pose_gt) * 100.0 < cm)


def pose_delta(pose_pred: torch.Tensor, pose_gt: torch.Tensor) -> torch.Tensor:
    """Tangent increment from the prediction to the ground truth (see the module docstring).

    Args:
        pose_pred: ``(B, 7)`` or ``(B, 4)`` predicted poses (6DoF or 4DoF).
        pose_gt: poses of the same shape.

    Returns:
        ``(B, 6)`` ``(t* - t, Log(q* q^-1))`` for 6DoF, ``(B, 4)`` ``(t* - t, wrap(yaw* - yaw))``
        for 4DoF, such that ``retract(pose_pred, delta) == pose_gt``.
    """
    dims = check_shape(pose_pred, ["B", "D"], "pose_pred")
    check_shape(pose_gt, ["B", "D"], "pose_gt", dims)
    check_float_tensors(pose_pred=pose_pred, pose_gt=pose_gt)
    dt = pose_gt[:, :3] - pose_pred[:, :3]
    if dims["D"] == Pose6DoF.dim:
        inv = quat_normalize(pose_pred[:, 3:]) * pose_pred.new_tensor([1.0, -1.0, -1.0, -1.0])
        rel = quat_multiply(quat_normalize(pose_gt[:, 3:]), inv)
        return torch.cat((dt, quat_log(rel)), dim=-1)
    if dims["D"] == Pose4DoF.dim:
        return torch.cat((dt, wrap_angle(pose_gt[:, 3:] - pose_pred[:, 3:])), dim=-1)
    raise ShapeError(f"pose_pred: expected (B, 7) or (B, 4), got {tuple(pose_pred.shape)}")


def mahalanobis_sq(
    pose_pred: torch.Tensor, pose_gt: torch.Tensor, covariance: torch.Tensor
) -> torch.Tensor:
    """Squared Mahalanobis distance of the ground truth under the predicted covariance.

    Args:
        pose_pred: ``(B, 7)`` (or ``(B, 4)`` 4DoF) predicted poses.
        pose_gt: ground-truth poses, same shape.
        covariance: ``(B, 6, 6)`` (``(B, 4, 4)`` for 4DoF) covariance in the library tangent
            convention, as :attr:`epropnp_lib.pnp.solver.PnPSolution.covariance` returns it.

    Returns:
        ``(B,)`` ``delta^T Sigma^-1 delta`` with ``delta = pose_delta(pose_pred, pose_gt)``;
        NaN where the covariance is not finite or not positive definite.
    """
    delta = pose_delta(pose_pred, pose_gt)
    d = delta.shape[-1]
    check_shape(covariance, [delta.shape[0], d, d], "covariance")
    check_float_tensors(pose_pred=pose_pred, covariance=covariance)
    finite = torch.isfinite(covariance).flatten(-2).all(-1)
    eye = torch.eye(d, dtype=covariance.dtype, device=covariance.device)
    cov = torch.where(finite[:, None, None], 0.5 * (covariance + covariance.transpose(-1, -2)),
                      eye)
    chol, info = torch.linalg.cholesky_ex(cov)
    ok = finite & (info == 0)
    chol = torch.where(ok[:, None, None], chol, eye)
    white = torch.linalg.solve_triangular(chol, delta.unsqueeze(-1), upper=False).squeeze(-1)
    d2 = (white * white).sum(-1)
    return torch.where(ok, d2, torch.full_like(d2, math.nan))


def chi2_cdf(d2: torch.Tensor, dof: int) -> torch.Tensor:
    """CDF of the chi-square law with ``dof`` degrees of freedom at ``d2`` (any shape)."""
    return torch.special.gammainc(torch.full_like(d2, 0.5 * dof), 0.5 * d2.clamp_min(0))


def chi2_quantile(mass: float, dof: int) -> float:
    """The ``mass`` quantile of the chi-square law with ``dof`` degrees of freedom (bisection
    of :func:`chi2_cdf` to float64 round-off)."""
    if not 0.0 < mass < 1.0:
        raise ConfigError(f"mass must be in (0, 1), got {mass}")
    lo, hi = 0.0, float(dof)
    while float(chi2_cdf(torch.tensor(hi, dtype=torch.float64), dof)) < mass:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if float(chi2_cdf(torch.tensor(mid, dtype=torch.float64), dof)) < mass:
            lo = mid
        else:
            hi = mid
    return hi


def fit_temperature(d2: torch.Tensor, dof: int, mass: float = 0.95) -> float:
    """The factor ``T`` of the covariances whose squared Mahalanobis distances are ``d2: (N,)``
    (NaNs dropped) that puts a fraction ``mass`` of the truths inside the nominal ``mass``
    ellipsoid: ``d2 / T`` has the chi-square(dof) ``mass`` quantile as its own ``mass``
    quantile.  ``T > 1`` widens over-confident covariances.  Fitted on held-out data, it is
    the covariance's post-hoc calibration (temperature scaling of the likelihood: ``exp(-cost
    / T)`` has ``T`` times the Laplace covariance).

    Raises:
        ConfigError: no finite distance, or ``mass`` outside (0, 1).
    """
    check_shape(d2, ["N"], "d2")
    vals = d2[torch.isfinite(d2)].double()
    if vals.numel() == 0:
        raise ConfigError("fit_temperature needs at least one finite distance")
    return float(torch.quantile(vals, mass)) / chi2_quantile(mass, dof)


#: Nominal coverage levels reported by :func:`calibration`.
CALIBRATION_LEVELS = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class CalibrationSummary:
    """How well predicted covariances describe the actual errors.

    Attributes:
        count: number of finite Mahalanobis distances used.
        dof: tangent dimension (6 or 4); a calibrated covariance has ``mean_d2 == dof``.
        mean_d2: mean squared Mahalanobis distance.
        median_d2: its median (the chi-square median is about ``dof - 2/3``).
        coverage: ``{level: empirical fraction}`` -- the fraction of ground truths inside the
            nominal ``level`` confidence ellipsoid; equal to ``level`` when calibrated, below
            it for an over-confident covariance.
    """

    count: int
    dof: int
    mean_d2: float
    median_d2: float
    coverage: dict[float, float]


def calibration(
    d2: torch.Tensor, dof: int, levels: Sequence[float] = CALIBRATION_LEVELS
) -> CalibrationSummary:
    """Summarise squared Mahalanobis distances ``d2: (N,)`` (NaNs dropped) against chi2(dof)."""
    check_shape(d2, ["N"], "d2")
    vals = d2[torch.isfinite(d2)].double()
    if vals.numel() == 0:
        nan = math.nan
        return CalibrationSummary(0, dof, nan, nan, {float(lv): nan for lv in levels})
    cdf = chi2_cdf(vals, dof)
    coverage = {float(lv): float((cdf <= lv).double().mean()) for lv in levels}
    return CalibrationSummary(
        count=int(vals.numel()),
        dof=dof,
        mean_d2=float(vals.mean()),
        median_d2=float(vals.median()),
        coverage=coverage,
    )


class PoseErrors(NamedTuple):
    """Per-element errors from which :class:`PoseMetrics` are computed.

    Attributes:
        add: ``(N,)`` ADD(-S) distance (ADD-S for symmetric objects), unit of the poses.
        diameter: ``(N,)`` object diameter, same unit.
        rotation_deg: ``(N,)`` rotation error in degrees.
        translation: ``(N,)`` translation error in metres.
    """

    add: torch.Tensor
    diameter: torch.Tensor
    rotation_deg: torch.Tensor
    translation: torch.Tensor

    @staticmethod
    def cat(parts: Sequence[PoseErrors]) -> PoseErrors:
        """Concatenate errors of several batches (moved to the CPU, float64)."""
        if not parts:
            raise ShapeError("PoseErrors.cat: nothing to concatenate")
        return PoseErrors(*(torch.cat([p[i].detach().cpu().double() for p in parts])
                            for i in range(4)))


def pose_errors(
    pose_pred: torch.Tensor,
    pose_gt: torch.Tensor,
    points: torch.Tensor,
    diameter: float | torch.Tensor,
    symmetric: bool | torch.Tensor = False,
    symmetries: Symmetries | None = None,
) -> PoseErrors:
    """All per-element errors of one batch: poses ``(B, 7)``, points ``(M, 3)``/``(B, M, 3)``,
    ``diameter`` float or ``(B,)``, ``symmetric`` bool or ``(B,)``; with ``symmetries`` (of
    the one object of the batch) the rotation and translation errors are
    :func:`symmetric_pose_errors`."""
    add = add_s_distance(pose_pred, pose_gt, points, symmetric)
    diam = _per_element(diameter, add.shape[0], add, "diameter").to(add.dtype)
    if symmetries is not None and symmetries.num > 1:
        rot, trans = symmetric_pose_errors(pose_pred, pose_gt, symmetries)
    else:
        rot, trans = rotation_error_deg(pose_pred, pose_gt), translation_error(pose_pred, pose_gt)
    return PoseErrors(add, diam, rot, trans)


@dataclass(frozen=True)
class PoseMetrics:
    """Accuracies in percent (0-100) and median errors, as the paper reports them.

    Attributes:
        count: number of evaluated instances.
        add_002: ADD(-S) accuracy at 0.02 d.
        add_005: ADD(-S) accuracy at 0.05 d.
        add_01: ADD(-S) accuracy at 0.1 d.
        deg2: rotation error < 2°.
        cm2: translation error < 2 cm.
        deg2_cm2: 2°, 2 cm.
        deg5_cm5: 5°, 5 cm.
        median_rotation_deg: median rotation error (degrees).
        median_translation_cm: median translation error (centimetres).
        median_add_d: median ADD(-S) distance as a fraction of the diameter.
    """

    count: int
    add_002: float
    add_005: float
    add_01: float
    deg2: float
    cm2: float
    deg2_cm2: float
    deg5_cm5: float
    median_rotation_deg: float
    median_translation_cm: float
    median_add_d: float

    @property
    def add_mean(self) -> float:
        """Mean of the three ADD(-S) accuracies (the "Mean" column of the paper's Table 1)."""
        return (self.add_002 + self.add_005 + self.add_01) / 3.0

    def to_dict(self) -> dict[str, float]:
        """Plain ``{name: value}`` (JSON-able), including ``add_mean``."""
        out: dict[str, float] = asdict(self)
        out["add_mean"] = self.add_mean
        return out


def summarize_errors(errors: PoseErrors) -> PoseMetrics:
    """Percentages and medians of per-element errors (``(N,)`` tensors, ``N >= 1``)."""
    n = int(errors.add.shape[0])
    if n == 0:
        raise ShapeError("summarize_errors: no element to summarise")
    add = errors.add.detach().double().cpu()
    diam = errors.diameter.detach().double().cpu()
    rot = errors.rotation_deg.detach().double().cpu()
    trans_cm = errors.translation.detach().double().cpu() * 100.0

    def pct(mask: torch.Tensor) -> float:
        return float(mask.double().mean()) * 100.0

    return PoseMetrics(
        count=n,
        add_002=pct(add < ADD_THRESHOLDS[0] * diam),
        add_005=pct(add < ADD_THRESHOLDS[1] * diam),
        add_01=pct(add < ADD_THRESHOLDS[2] * diam),
        deg2=pct(rot < 2.0),
        cm2=pct(trans_cm < 2.0),
        deg2_cm2=pct((rot < 2.0) & (trans_cm < 2.0)),
        deg5_cm5=pct((rot < 5.0) & (trans_cm < 5.0)),
        median_rotation_deg=float(rot.median()),
        median_translation_cm=float(trans_cm.median()),
        median_add_d=float((add / diam).median()),
    )


def summarize(
    pose_pred: torch.Tensor,
    pose_gt: torch.Tensor,
    points: torch.Tensor,
    diameter: float | torch.Tensor,
    symmetric: bool | torch.Tensor = False,
) -> PoseMetrics:
    """:class:`PoseMetrics` of one batch (arguments as :func:`pose_errors`)."""
    return summarize_errors(pose_errors(pose_pred, pose_gt, points, diameter, symmetric))


def mean_over_objects(per_object: Mapping[str, PoseMetrics]) -> PoseMetrics:
    """Unweighted mean over objects (the LineMOD "average" row; each object counts once).

    ``count`` is the total number of instances; medians are averaged over objects too.
    """
    if not per_object:
        raise ShapeError("mean_over_objects: no object given")
    items = list(per_object.values())
    fields = [f for f in asdict(items[0]) if f != "count"]
    means = {f: sum(getattr(m, f) for m in items) / len(items) for f in fields}
    return PoseMetrics(count=sum(m.count for m in items), **means)
