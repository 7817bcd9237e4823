"""Tests of the parts of the deformable correspondence network: FCOS targets, ray-box
coordinates, deformable attention, FPN and DCN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.nets.backbone import BackboneConfig, ResNetBackbone
from epropnp_lib.nets.dcn import DeformConv2d, convert_to_deformable
from epropnp_lib.nets.deform_attention import DeformableAttention
from epropnp_lib.nets.fcos_targets import (
    LevelSpec,
    assign_locations,
    level_locations,
    project_boxes,
    ray_box_coordinates,
)
from epropnp_lib.nets.fpn import FPN

#: 128x128 image, f = 100, principal point at the image centre (63.5, 63.5).
K = torch.tensor([[100.0, 0.0, 63.5], [0.0, 100.0, 63.5], [0.0, 0.0, 1.0]])
LEVELS = [LevelSpec(8, 16, 16, 0.0, 32.0), LevelSpec(16, 8, 8, 32.0, math.inf)]
NUM_CLASSES = 10


def boxes(centers: list[list[float]], sizes: list[list[float]], labels: list[int],
          yaw: float = 0.0) -> CameraBoxes:
    m = len(centers)
    return CameraBoxes(
        torch.tensor(centers).view(m, 3), torch.tensor(sizes).view(m, 3), torch.full((m,), yaw),
        torch.tensor(labels, dtype=torch.long), torch.zeros(m, 2),
        torch.full((m,), -1, dtype=torch.long), torch.ones(m),
    )


def flat(level: int, i: int, j: int) -> int:
    """Index of cell (i, j) of ``LEVELS[level]`` in the concatenated locations."""
    start = sum(lv.height * lv.width for lv in LEVELS[:level])
    return start + i * LEVELS[level].width + j


# --- FCOS targets -------------------------------------------------------------------------------
def test_level_locations_are_cell_centres() -> None:
    locs, strides, index = level_locations(LEVELS, torch.float32, torch.device("cpu"))
    assert locs.shape == (16 * 16 + 8 * 8, 2)
    torch.testing.assert_close(locs[flat(0, 0, 0)], torch.tensor([3.5, 3.5]))
    torch.testing.assert_close(locs[flat(0, 2, 5)], torch.tensor([43.5, 19.5]))
    torch.testing.assert_close(locs[flat(1, 3, 5)], torch.tensor([87.5, 55.5]))
    assert strides[flat(1, 0, 0)] == 16 and index[flat(1, 0, 0)] == 1 and index[0] == 0


def test_assignment_on_a_hand_made_scene() -> None:
    # A: a 1 m cube 10 m ahead on the optical axis -> centre (63.5, 63.5), 2D extent +-5.3 px:
    #    small, so level 0; centre sampling (radius 12 px, clipped to the extent) keeps the
    #    four stride-8 cells whose centres are 59.5 and 67.5.
    # B: a 2 m cube at (1, 0, 5) -> centre (83.5, 63.5), extent x [63.5, 113.5], y [38.5, 88.5].
    scene = boxes([[0.0, 0.0, 10.0], [1.0, 0.0, 5.0]], [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]],
                  [3, 1])
    proj = project_boxes(scene, K, (128, 128))
    torch.testing.assert_close(proj.center, torch.tensor([[63.5, 63.5], [83.5, 63.5]]))
    torch.testing.assert_close(proj.extent[1], torch.tensor([63.5, 38.5, 113.5, 88.5]))
    tgt = assign_locations(LEVELS, [scene], K[None], (128, 128), NUM_CLASSES)
    assert tgt.labels.shape == (1, 16 * 16 + 8 * 8) and tgt.offset.shape == (1, 320, 2)
    a_cells = {flat(0, i, j) for i in (7, 8) for j in (7, 8)}
    assert set((tgt.box_index[0] == 0).nonzero().flatten().tolist()) == a_cells
    for idx in a_cells:
        assert tgt.labels[0, idx] == 3
        assert tgt.offset[0, idx].abs().tolist() == [0.5, 0.5]
    torch.testing.assert_close(tgt.offset[0, flat(0, 7, 7)], torch.tensor([0.5, 0.5]))
    # B at level 1: cell (3, 5) = pixel (87.5, 55.5), max side distance 33 px > 32.
    b1 = flat(1, 3, 5)
    assert tgt.box_index[0, b1] == 1 and tgt.labels[0, b1] == 1
    torch.testing.assert_close(tgt.offset[0, b1], torch.tensor([-0.25, 0.5]))
    # B at level 0: cell (7, 10) = pixel (83.5, 59.5), max side distance 30 px <= 32.
    assert tgt.box_index[0, flat(0, 7, 10)] == 1
    # Far from every centre: negative, background label, zero offset.
    assert tgt.box_index[0, flat(0, 0, 0)] == -1 and tgt.labels[0, flat(0, 0, 0)] == NUM_CLASSES
    assert tgt.offset[0, flat(0, 0, 0)].abs().sum() == 0
    assert int(tgt.positive.sum()) == int((tgt.box_index >= 0).sum())


def test_ambiguous_location_takes_the_nearest_centre() -> None:
    # Two cubes whose projected centres are 63.5 and 64.7: cell centres 59.5 and 67.5 sit in
    # both boxes; each takes the nearer centre.
    scene = boxes([[0.0, 0.0, 10.0], [0.12, 0.0, 10.0]], [[1.0, 1.0, 1.0]] * 2, [0, 2])
    tgt = assign_locations(LEVELS, [scene], K[None], (128, 128), NUM_CLASSES)
    assert tgt.box_index[0, flat(0, 7, 7)] == 0 and tgt.labels[0, flat(0, 7, 7)] == 0
    assert tgt.box_index[0, flat(0, 7, 8)] == 1 and tgt.labels[0, flat(0, 7, 8)] == 2


def test_boxes_behind_the_camera_and_empty_images_get_no_location() -> None:
    behind = boxes([[0.0, 0.0, -5.0]], [[1.0, 1.0, 1.0]], [0])
    tgt = assign_locations(LEVELS, [behind, CameraBoxes.empty()], K.expand(2, 3, 3), (128, 128),
                           NUM_CLASSES)
    assert tgt.box_index.shape == (2, 320)
    assert not tgt.positive.any() and (tgt.labels == NUM_CLASSES).all()


def test_ray_box_coordinates() -> None:
    # A box 10 m ahead, length 4 along camera x, height 1.5, width 2 along camera z: its front
    # face is at z = 9.
    c = torch.tensor([[0.0, 0.0, 10.0]])
    size = torch.tensor([[2.0, 4.0, 1.5]])  # (w, l, h)
    x2d = torch.tensor([[[63.5, 63.5], [63.5 + 100 * 1.5 / 9, 63.5], [0.0, 63.5]]])
    hits = ray_box_coordinates(x2d, K[None], c, size, torch.zeros(1))
    assert hits.hit.tolist() == [[True, True, False]]
    torch.testing.assert_close(hits.noc[0, 0], torch.tensor([0.0, 0.0, -0.5]))
    torch.testing.assert_close(hits.noc[0, 1], torch.tensor([0.375, 0.0, -0.5]))
    # Turned by 90 degrees, the object x axis points at the camera (heading (0, 0, -1)): the
    # front face is now the end of the length axis, 2 m before the centre.
    hits = ray_box_coordinates(x2d[:, :1], K[None], c, size, torch.full((1,), math.pi / 2))
    torch.testing.assert_close(hits.noc[0, 0], torch.tensor([0.5, 0.0, 0.0]), atol=1e-5,
                               rtol=0)


# --- deformable attention -----------------------------------------------------------------------
def coordinate_maps(strides: list[int], size: int = 128) -> list[torch.Tensor]:
    """Maps whose two channels hold the input-pixel x and y of each cell centre."""
    maps = []
    for s in strides:
        n = size // s
        c = (torch.arange(n, dtype=torch.float64) + 0.5) * s - 0.5
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        maps.append(torch.stack((gx, gy))[None].expand(2, 2, n, n).clone())
    return maps


def test_deformable_attention_samples_at_its_points() -> None:
    torch.manual_seed(0)
    att = DeformableAttention(2, 2, num_heads=2, num_points=3, num_levels=2).double()
    with torch.no_grad():
        att.value_proj.weight.copy_(torch.eye(2))
        att.value_proj.bias.zero_()
    q = torch.randn(3, 2, dtype=torch.float64)
    # Every point stays between the outermost cell centres of both maps (7.5 and 119.5).
    ref = torch.tensor([[30.0, 31.0], [40.5, 40.0], [60.0, 64.0]], dtype=torch.float64)
    stride = torch.tensor([8.0, 8.0, 16.0], dtype=torch.float64)
    out = att(coordinate_maps([8, 16]), [8, 16], q, ref, stride, torch.tensor([0, 1, 1]))
    assert out.points.shape == (3, 6, 2) and out.point_features.shape == (3, 6, 2)
    assert out.object_features.shape == (3, 2)
    torch.testing.assert_close(out.points, ref[:, None] + out.offsets * stride[:, None, None])
    # Initial offsets: head h on the ray at angle pi h, points at radii 2/3, 4/3, 2 strides.
    torch.testing.assert_close(out.offsets[0, :3, 0], torch.tensor(
        [2 / 3, 4 / 3, 2.0], dtype=torch.float64))
    # Bilinear sampling of a linear function is exact inside the map: features = points.
    torch.testing.assert_close(out.point_features, out.points)


def test_deformable_attention_gradients_and_config() -> None:
    att = DeformableAttention(4, 8, num_heads=2, num_points=2, num_levels=1)
    feats = [torch.randn(1, 4, 8, 8, requires_grad=True)]
    q = torch.randn(2, 8, requires_grad=True)
    out = att(feats, [8], q, torch.full((2, 2), 30.0), torch.full((2,), 8.0),
              torch.zeros(2, dtype=torch.long))
    (out.point_features.square().sum() + out.object_features[:, 0].sum()).backward()
    assert feats[0].grad is not None and feats[0].grad.abs().sum() > 0
    assert q.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="divisible"):
        DeformableAttention(4, 7, num_heads=2, num_points=2, num_levels=1)


# --- FPN and DCN --------------------------------------------------------------------------------
def test_fpn_levels_and_shapes() -> None:
    backbone = ResNetBackbone(BackboneConfig(depth=18, base_width=8))
    feats = backbone(torch.randn(1, 3, 100, 130))
    fpn = FPN(backbone.out_channels, 16, (3, 4, 5, 6, 7))
    outs = fpn(feats)
    assert fpn.strides == (8, 16, 32, 64, 128)
    assert [tuple(o.shape[-2:]) for o in outs] == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]
    assert all(o.shape[:2] == (1, 16) for o in outs)
    assert [tuple(o.shape[-2:]) for o in FPN(backbone.out_channels, 8, (2, 3))(feats)] == [
        (25, 33), (13, 17)]
    with pytest.raises(ConfigError, match="consecutive"):
        FPN(backbone.out_channels, 16, (3, 5))
    with pytest.raises(ConfigError, match="consecutive"):
        FPN(backbone.out_channels, 16, (1, 2))


def test_deform_conv_starts_as_the_plain_convolution_and_trains() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(2, 4, 9, 11, requires_grad=True)
    expected = conv(x)
    dcn = DeformConv2d(conv)
    assert dcn.weight is conv.weight
    out = dcn(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        dcn.offset.weight.normal_(std=0.1)
    out = dcn(x)
    assert not torch.allclose(out, expected, atol=1e-3)
    out.square().sum().backward()
    for p in (dcn.weight, dcn.offset.weight, x):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_convert_to_deformable_keeps_pretrained_keys() -> None:
    plain = ResNetBackbone(BackboneConfig(depth=18, base_width=8))
    converted = ResNetBackbone(BackboneConfig(depth=18, base_width=8))
    assert convert_to_deformable(converted, (3, 4)) == 4
    result = converted.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".offset." in k for k in result.missing_keys)
    with pytest.raises(ConfigError, match="stages"):
        convert_to_deformable(converted, (5,))
