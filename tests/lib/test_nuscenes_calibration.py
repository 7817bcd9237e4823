"""epropnp_lib.data.nuscenes.calibration: matching and the coverage of predicted uncertainty."""

from __future__ import annotations

import math

import pytest
import torch

from epropnp_lib.data.nuscenes.calibration import coverage, match_and_measure


def test_calibrated_errors_cover_their_nominal_levels() -> None:
    """Detections whose errors are drawn from their own covariance: coverage at every nominal
    level within 3 standard errors of it; an over-confident covariance (halved spread) covers
    much less."""
    g = torch.Generator().manual_seed(0)
    n = 4000
    gt = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([200.0, 200.0, 2.0])
    gt[:, 0] += 300.0 * torch.arange(n, dtype=torch.float64)  # far apart: one match each
    a = torch.randn(n, 3, 3, generator=g, dtype=torch.float64) * 0.2
    cov = a @ a.transpose(1, 2) + 0.01 * torch.eye(3, dtype=torch.float64)
    err = (torch.linalg.cholesky(cov) @ torch.randn(n, 3, 1, generator=g,
                                                    dtype=torch.float64)).squeeze(-1)
    yaw_sd = 0.05 + 0.2 * torch.rand(n, generator=g, dtype=torch.float64)
    gt_yaw = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    yaw = gt_yaw + yaw_sd * torch.randn(n, generator=g, dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    errors = match_and_measure(gt - err, yaw, labels, scores, cov, yaw_sd**2, gt, gt_yaw,
                               labels, max_distance=50.0)  # every detection matches its box
    report = coverage(errors)
    assert report["matches"] == n
    for key in ("position", "heading"):
        for level, frac in report[key].items():
            assert abs(frac - level) <= 3 * math.sqrt(level * (1 - level) / n), (key, level, frac)
    tight = coverage(match_and_measure(gt - err, yaw, labels, scores, cov / 4, yaw_sd**2 / 4,
                                       gt, gt_yaw, labels, max_distance=50.0))
    assert tight["position"][0.9] < 0.6 and tight["heading"][0.9] < 0.7


def test_matching_is_per_class_greedy_and_bounded() -> None:
    gt = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    gt_labels = torch.tensor([0, 1])
    pred = torch.tensor([[0.5, 0.0, 0.0], [0.2, 0.0, 0.0], [10.1, 0.0, 0.0], [30.0, 0.0, 0.0]],
                        dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])  # the third is near box 1 but of the other class
    scores = torch.tensor([0.9, 0.5, 0.8, 0.7], dtype=torch.float64)
    cov = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    errors = match_and_measure(pred, torch.zeros(4), labels, scores, cov, torch.ones(4), gt,
                               torch.zeros(2), gt_labels)
    # Only the best-scoring class-0 detection matches box 0 (the other is left over); the
    # class-1 detection is 20 m away from its box: no match.
    assert errors.position.tolist() == pytest.approx([0.25])
    assert errors.heading.tolist() == [0.0]
    none = match_and_measure(pred[:0], torch.zeros(0), labels[:0], scores[:0], cov[:0],
                             torch.ones(0), gt, torch.zeros(2), gt_labels)
    assert none.position.numel() == 0 and coverage(none)["matches"] == 0
