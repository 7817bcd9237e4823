"""CameraBoxes: conventions, corners, selection."""

from __future__ import annotations

import math

import pytest
import torch

from epropnp_lib.data.nuscenes import NUSCENES_ATTRIBUTES, NUSCENES_CLASSES
from epropnp_lib.errors import ShapeError
from epropnp_lib.geometry.boxes import BOX_EDGES, FRONT_FACE, CameraBoxes
from epropnp_lib.geometry.rotations import yaw_to_matrix


def _boxes(yaw: float) -> CameraBoxes:
    return CameraBoxes(
        center=torch.tensor([[1.0, 0.5, 10.0]]),
        size=torch.tensor([[2.0, 4.0, 1.5]]),  # w, l, h
        yaw=torch.tensor([yaw]),
        labels=torch.tensor([0]),
        velocity=torch.tensor([[0.0, 1.0]]),
        attributes=torch.tensor([-1]),
        scores=torch.tensor([1.0]),
    ).validate()


def test_taxonomy_matches_devkit() -> None:
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, DETECTION_NAMES

    assert list(NUSCENES_CLASSES) == list(DETECTION_NAMES)
    assert list(NUSCENES_ATTRIBUTES) == list(ATTRIBUTE_NAMES)


@pytest.mark.parametrize("yaw", [0.0, 0.7, -2.5])
def test_corners_are_the_rotated_box(yaw: float) -> None:
    b = _boxes(yaw)
    corners = b.corners()[0]
    rot = yaw_to_matrix(torch.tensor(yaw))
    local = (corners - b.center) @ rot  # back to the object frame (R^T x)
    assert torch.allclose(local.abs().amax(0), torch.tensor([2.0, 0.75, 1.0]), atol=1e-5)
    # edge lengths (corner bits 2, 1, 0 = object x, y, z): length along object x, height
    # along y, width along z
    assert torch.dist(corners[0], corners[4]).item() == pytest.approx(4.0, abs=1e-5)
    assert torch.dist(corners[0], corners[2]).item() == pytest.approx(1.5, abs=1e-5)
    assert torch.dist(corners[0], corners[1]).item() == pytest.approx(2.0, abs=1e-5)
    # bottom face (bit 1 set: object y = +h/2) has the larger y (camera y points down)
    bottom = [i for i in range(8) if i & 2]
    top = [i for i in range(8) if not i & 2]
    assert (corners[bottom, 1] > corners[top, 1].max()).all()
    # heading: the front face's centre lies along (cos yaw, 0, -sin yaw) from the centre
    front = corners[list(FRONT_FACE)].mean(0) - b.center[0]
    assert torch.allclose(front, 2.0 * torch.tensor([math.cos(yaw), 0.0, -math.sin(yaw)]),
                          atol=1e-5)


def test_empty_select_pose4_and_validation() -> None:
    e = CameraBoxes.empty(torch.float64).validate()
    assert e.num_boxes == 0 and e.center.dtype == torch.float64 and e.corners().shape == (0, 8, 3)
    b = _boxes(0.3)
    assert b.select(torch.tensor([True])).num_boxes == 1
    assert b.select(torch.tensor([False])).num_boxes == 0
    assert torch.allclose(b.pose4(), torch.tensor([[1.0, 0.5, 10.0, 0.3]]))
    with pytest.raises(ShapeError):
        b._replace(yaw=torch.zeros(2)).validate()


def test_box_edges_are_the_twelve_edges() -> None:
    """Every edge joins corners that differ in one sign: 4 along each object axis."""
    diffs = sorted((a ^ b) for a, b in BOX_EDGES)
    assert len(set(BOX_EDGES)) == 12 and diffs == [1] * 4 + [2] * 4 + [4] * 4
    assert all(i & 4 for i in FRONT_FACE)
