"""Tests of the heading metrics (epropnp_lib.heading)."""

from __future__ import annotations

import math

import pytest
import torch

from epropnp_lib.errors import ConfigError, ShapeError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.rotations import wrap_angle
from epropnp_lib.heading import (
    HeadingImage,
    hdr_contains,
    heading_calibration,
    heading_errors,
    match_boxes,
)


def boxes(xz: list[tuple[float, float]], yaw: list[float], labels: list[int],
          scores: list[float] | None = None) -> CameraBoxes:
    m = len(xz)
    return CameraBoxes(
        torch.tensor([[x, 1.0, z] for x, z in xz]).view(m, 3), torch.ones(m, 3),
        torch.tensor(yaw), torch.tensor(labels), torch.zeros(m, 2),
        torch.full((m,), -1), torch.tensor(scores if scores is not None else [1.0] * m))


def test_matching_is_greedy_by_score_within_class_and_radius() -> None:
    gt = boxes([(0.0, 10.0), (1.5, 10.0), (20.0, 30.0)], [0.0, 0.0, 0.0], [0, 0, 1])
    # detection 1 (higher score) takes gt 0 first, so detection 0 gets gt 1; detection 2 has
    # the wrong class for gt 2; detection 3 is too far from everything.
    det = boxes([(0.4, 10.0), (0.2, 10.1), (20.0, 30.0), (50.0, 50.0)], [0.0] * 4,
                [0, 0, 0, 1], scores=[0.5, 0.9, 0.8, 0.7])
    assert match_boxes(det, gt).tolist() == [1, 0, -1]
    assert match_boxes(det, gt, max_distance=0.3).tolist() == [1, -1, -1]
    assert match_boxes(CameraBoxes.empty(), gt).tolist() == [-1, -1, -1]
    assert match_boxes(det, CameraBoxes.empty()).numel() == 0
    with pytest.raises(ConfigError, match="max_distance"):
        match_boxes(det, gt, max_distance=0.0)


def test_heading_errors_wrap_around() -> None:
    gt = boxes([(0.0, 10.0), (5.0, 10.0), (9.0, 9.0)], [3.1, -0.2, 0.0], [0, 0, 0])
    det = boxes([(0.0, 10.0), (5.0, 10.0)], [-3.1, 0.3], [0, 0])
    err = heading_errors(det, gt, torch.tensor([0, 1, -1]))
    assert err.tolist() == pytest.approx([2 * math.pi - 6.2, 0.5], abs=1e-6)


def test_calibrated_posteriors_cover_the_truth_at_their_mass() -> None:
    gen = torch.Generator().manual_seed(0)
    k, s, std = 1500, 100, 0.3
    centre = (torch.rand(k, generator=gen) * 2 - 1) * math.pi
    # the truth and the samples are draws of the same wrapped normal: calibrated
    truth = wrap_angle(centre + std * torch.randn(k, generator=gen))
    samples = wrap_angle(centre + std * torch.randn(s, k, generator=gen))
    for mass in (0.5, 0.9):
        fraction = hdr_contains(samples, truth, mass).double().mean()
        assert float(fraction) == pytest.approx(mass, abs=0.03)
    # overconfident samples (a third of the spread) cover far less
    narrow = wrap_angle(centre + std / 3 * torch.randn(s, k, generator=gen))
    assert float(hdr_contains(narrow, truth).double().mean()) < 0.6


def test_bimodal_region_holds_both_modes_and_not_the_gap() -> None:
    gen = torch.Generator().manual_seed(1)
    s = 400
    modes = torch.where(torch.arange(s) % 2 == 0, 0.5, 0.5 + math.pi)
    samples = wrap_angle(modes + 0.1 * torch.randn(s, generator=gen))[:, None].expand(s, 3)
    truth = torch.tensor([0.5, 0.5 - math.pi, 0.5 + math.pi / 2])
    assert hdr_contains(samples, truth).tolist() == [True, True, False]


def test_hdr_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="mass"):
        hdr_contains(torch.zeros(5, 2), torch.zeros(2), mass=1.0)
    with pytest.raises(ConfigError, match="2 samples"):
        hdr_contains(torch.zeros(1, 2), torch.zeros(2))
    with pytest.raises(ShapeError):
        hdr_contains(torch.zeros(5, 2), torch.zeros(3))


def test_heading_calibration_over_images() -> None:
    gt = boxes([(0.0, 10.0), (5.0, 10.0), (9.0, 40.0)], [0.2, 1.0, 0.0], [0, 0, 0])
    det = boxes([(0.1, 10.0), (5.0, 10.2)], [0.25, 1.0 + math.pi], [0, 0])
    gen = torch.Generator().manual_seed(2)
    samples = det.yaw[None] + 0.05 * torch.randn(64, 2, generator=gen)
    # detection 0's posterior holds its truth, detection 1 is flipped with a narrow posterior
    images = [HeadingImage(det, samples, gt),
              HeadingImage(CameraBoxes.empty(), torch.zeros(64, 0), gt)]
    cal = heading_calibration(images)
    assert (cal.num_matched, cal.num_inside, cal.fraction) == (2, 1, 0.5)
    assert cal.mean_error == pytest.approx((0.05 + math.pi) / 2, abs=1e-5)
    empty = heading_calibration([])
    assert empty.num_matched == 0 and math.isnan(empty.fraction)
    with pytest.raises(ShapeError):
        heading_calibration([HeadingImage(det, torch.zeros(64, 3), gt)])


def test_heading_periods_wrap_symmetric_classes_and_skip_classes_without_heading() -> None:
    periods = (2 * math.pi, math.pi, math.nan)
    gt = boxes([(0.0, 10.0), (5.0, 10.0), (9.0, 9.0)], [0.2, 0.2, 0.2], [0, 1, 2])
    det = boxes([(0.0, 10.0), (5.0, 10.0), (9.0, 9.0)], [0.2 + math.pi - 0.02] * 3, [0, 1, 2])
    match = match_boxes(det, gt)
    assert heading_errors(det, gt, match, periods).tolist() == pytest.approx(
        [math.pi - 0.02, 0.02], abs=1e-6)
    gen = torch.Generator().manual_seed(3)
    samples = det.yaw[None] + 0.05 * torch.randn(64, 3, generator=gen)
    cal = heading_calibration([HeadingImage(det, samples, gt)], periods=periods)
    assert (cal.num_matched, cal.num_inside) == (2, 1)  # the barrier-like class is inside
    with pytest.raises(ConfigError, match="periods"):
        heading_errors(det, gt, match, (1.0, -1.0, 1.0))
    with pytest.raises(ConfigError, match="labels"):
        heading_errors(det, gt, match, (1.0, 1.0))
