"""Tests of the synthetic objects and their crops (epropnp_lib.generators.object_meshes,
epropnp_lib.generators.objects)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from epropnp_lib.dataclass_io import from_dict
from epropnp_lib.errors import ConfigError, ShapeError
from epropnp_lib.generators.object_meshes import OBJECT_NAMES, make_object, render_object
from epropnp_lib.generators.objects import (
    CANONICAL_QUAT,
    CropBatch,
    SyntheticCropConfig,
    SyntheticCropDataset,
    main,
    render_samples,
    render_split,
)
from epropnp_lib.geometry.camera import pixel_grid, project, stride_intrinsics, transform_points
from epropnp_lib.geometry.rotations import quat_angle_between, quat_multiply, quat_to_matrix
from epropnp_lib.nets.dense_targets import downsample_coords
from epropnp_lib.pnp.solver import solve_pnp


@pytest.mark.parametrize("name", OBJECT_NAMES)
def test_objects_are_well_formed(name: str) -> None:
    obj = make_object(name)
    v, f = obj.vertices, obj.faces
    assert v.dtype == torch.float32 and f.dtype == torch.int64
    assert v.shape[1] == 3 and f.shape[1] == 3 and int(f.max()) < v.shape[0]
    assert obj.normals.shape == v.shape and obj.vertex_colors.shape == v.shape
    torch.testing.assert_close(obj.normals.norm(dim=-1), torch.ones(v.shape[0]))
    assert float(obj.vertex_colors.min()) >= 0 and float(obj.vertex_colors.max()) <= 1
    # Centred, LineMOD-sized.
    centre = 0.5 * (v.amin(0) + v.amax(0))
    assert float(centre.abs().max()) < 1e-6
    assert 0.1 <= obj.diameter <= 0.25
    assert obj.diameter == pytest.approx(float(torch.cdist(v, v).max()), rel=1e-6)
    pts = obj.model_points
    assert pts.shape == (1000, 3)
    assert float(torch.cdist(pts, pts).max()) <= obj.diameter + 1e-6
    assert bool((pts >= v.amin(0) - 1e-6).all() and (pts <= v.amax(0) + 1e-6).all())
    # Triangle winding and stored normals agree (both outward).
    tri = v[f]
    face_n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert bool(((face_n * obj.normals[f].mean(1)).sum(-1) > 0).all())
    assert obj.symmetric == (name in ("can", "eggbox"))
    assert obj.object_index == OBJECT_NAMES.index(name)


def test_unknown_object_raises() -> None:
    with pytest.raises(ConfigError, match="unknown object"):
        make_object("teapot")


def test_textures_respect_exactly_the_symmetries() -> None:
    g = torch.Generator().manual_seed(0)
    for name in OBJECT_NAMES:
        obj = make_object(name)
        p = obj.model_points.double()
        for angle in (math.pi, 0.7):
            rot = quat_to_matrix(obj.symmetry_quat(angle))
            same = torch.allclose(obj.texture(p @ rot.T), obj.texture(p), atol=1e-6)
            invariant = obj.symmetry_order == 0 or (obj.symmetry_order == 2 and angle == math.pi)
            assert same == invariant, (name, angle)
        # Asymmetric objects: no rotation about any axis tried keeps the texture.
        if not obj.symmetric:
            for _ in range(5):
                axis = torch.nn.functional.normalize(torch.randn(3, generator=g,
                                                                 dtype=torch.float64), dim=0)
                rot = quat_to_matrix(torch.cat((torch.zeros(1, dtype=torch.float64), axis)))
                assert not torch.allclose(obj.texture(p @ rot.T), obj.texture(p), atol=1e-3)


def _cfg(**kw: Any) -> SyntheticCropConfig:
    base: dict[str, Any] = {"object_name": "drill", "image_size": 64, "num_samples": 6,
                               "seed": 3}
    base.update(kw)
    return SyntheticCropConfig(**base)


def test_samples_are_deterministic_and_batch_independent() -> None:
    cfg = _cfg()
    ds = SyntheticCropDataset(cfg)
    a, b = ds[4], ds[4]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    batch = render_split(cfg, batch_size=4)
    assert len(ds) == 6 and batch.image.shape[0] == 6
    for x, y in zip(a, batch.sample(4), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    assert torch.equal(ds[-2].image, ds[4].image)
    with pytest.raises(IndexError):
        ds[6]
    # Streams: split, seed and object each change the draws; appearance settings do not
    # change the poses.
    poses = {k: render_samples(c, [0]).pose for k, c in {
        "base": cfg, "val": _cfg(split="val"), "seed": _cfg(seed=4), "can": _cfg(object_name="can"),
        "flat": _cfg(background="flat", pixel_noise_std=0.0)}.items()}
    for key in ("val", "seed", "can"):
        assert not torch.allclose(poses[key], poses["base"])
    assert torch.equal(poses["flat"], poses["base"])


def test_sample_shapes_dtypes_and_ranges() -> None:
    cfg = _cfg(image_size=48)
    s = SyntheticCropDataset(cfg)[0]
    assert s.image.shape == (3, 48, 48) and s.image.dtype == torch.float32
    assert s.coords.shape == (3, 48, 48) and s.mask.shape == (1, 48, 48)
    assert s.pose.shape == (7,) and s.cam_mats.shape == (3, 3)
    assert s.object_index.dtype == torch.int64 and int(s.object_index) == 0
    assert float(s.image.min()) >= 0 and float(s.image.max()) <= 1
    assert set(s.mask.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(s.pose[3:].norm(), torch.tensor(1.0))
    assert float(s.pose[3]) >= 0
    torch.testing.assert_close(s.cam_mats[2], torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("name", OBJECT_NAMES)
def test_mask_coords_pose_and_intrinsics_agree(name: str) -> None:
    cfg = _cfg(object_name=name, num_samples=4)
    batch = render_split(cfg)
    obj = make_object(name)
    m = batch.mask > 0.5
    assert bool((batch.coords * (~m) == 0).all())
    lo, hi = obj.vertices.amin(0).view(1, 3, 1, 1), obj.vertices.amax(0).view(1, 3, 1, 1)
    inside = (batch.coords >= lo - 1e-5) & (batch.coords <= hi + 1e-5)
    assert bool(inside[m.expand_as(inside)].all())
    frac = m.float().mean((1, 2, 3))
    assert float(frac.min()) > 0.05 and float(frac.max()) < 0.9
    # Every covered pixel's object coordinate projects onto the pixel's centre.
    size = cfg.image_size
    pts = batch.coords.flatten(2).transpose(1, 2)  # (N, S*S, 3)
    x2d = project(transform_points(pts, quat_to_matrix(batch.pose[:, 3:]), batch.pose[:, :3]),
                  batch.cam_mats).x2d
    grid = pixel_grid(size, size, 1)
    err = (x2d - grid).norm(dim=-1)[m.flatten(1)]
    assert float(err.max()) < 0.02
    # The object's centre lands near the crop centre (jitter of at most 8 % of the side).
    centre = project(batch.pose[:, None, :3], batch.cam_mats).x2d[:, 0]
    assert float((centre - (size - 1) / 2).abs().max()) <= 0.08 * size + 1e-3


@pytest.mark.parametrize(("name", "stride"), [("drill", 1), ("lblock", 2), ("can", 4),
                                              ("eggbox", 3), ("drill", 8)])
def test_ground_truth_correspondences_solve_back_to_the_pose(name: str, stride: int) -> None:
    size = 48 if stride == 3 else 64
    cfg = _cfg(object_name=name, num_samples=4, image_size=size)
    batch = render_split(cfg)
    coords, mask = downsample_coords(batch.coords, batch.mask, stride)
    h = size // stride
    assert coords.shape == (4, 3, h, h) and mask.shape == (4, 1, h, h)
    x2d = pixel_grid(h, h, stride).expand(4, -1, -1)
    x3d = coords.flatten(2).transpose(1, 2)
    w2d = mask.flatten(2).transpose(1, 2).expand(-1, -1, 2).contiguous()
    assert float(mask.sum((1, 2, 3)).min()) >= 6
    sol = solve_pnp(x3d.double(), x2d.double(), w2d.double(), batch.cam_mats.double())
    rot_err = torch.rad2deg(quat_angle_between(sol.pose[:, 3:], batch.pose[:, 3:].double()))
    t_err = (sol.pose[:, :3] - batch.pose[:, :3].double()).norm(dim=-1)
    assert float(rot_err.max()) < 1.0
    assert float((t_err / batch.pose[:, :3].double().norm(dim=-1)).max()) < 0.01


def test_symmetric_objects_render_the_same_under_their_symmetry() -> None:
    size = 64
    cfg = _cfg(object_name="can", num_samples=4)
    batch = render_split(cfg)
    for name, angles in (("can", (2 * math.pi * 5 / 48, 1.234)), ("eggbox", (math.pi,)),
                         ("drill", (math.pi,))):
        obj = make_object(name)
        pose = batch.pose.double()
        cam = batch.cam_mats.double()
        ref = render_object(obj, pose, cam, size, size)
        for angle in angles:
            q = quat_multiply(pose[:, 3:], obj.symmetry_quat(angle).expand(4, 4))
            rot = render_object(obj, torch.cat((pose[:, :3], q), -1), cam, size, size)
            inter = (ref.mask * rot.mask).sum((1, 2, 3))
            union = ((ref.mask + rot.mask) > 0).double().sum((1, 2, 3))
            iou = inter / union
            if not obj.symmetric:
                assert float(iou.min()) < 0.9  # the check can tell an asymmetric object
                continue
            exact = obj.symmetry_order == 2 or abs(angle * 48 / (2 * math.pi) - 5) < 1e-9
            # Exact symmetries of the mesh: identical up to pixels on a rounding edge; the
            # polygonal can under an arbitrary angle: nearly identical silhouettes.
            assert float(iou.min()) > (0.995 if exact else 0.97)
            both = (ref.mask * rot.mask) > 0
            diff = (ref.albedo - rot.albedo).abs().amax(1, keepdim=True)[both]
            assert float((diff > 1e-3).float().mean()) < 0.02


def test_limited_rotation_range() -> None:
    batch = render_split(_cfg(max_rotation_deg=10.0, num_samples=8))
    canon = torch.tensor(CANONICAL_QUAT).expand(8, 4)
    angle = torch.rad2deg(quat_angle_between(batch.pose[:, 3:], canon))
    assert float(angle.max()) <= 10.0 + 1e-3 and float(angle.max()) > 1.0


def test_pixel_grid_formula_and_order() -> None:
    g = pixel_grid(2, 3, 4, dtype=torch.float64)
    expected = torch.tensor([[1.5, 1.5], [5.5, 1.5], [9.5, 1.5],
                             [1.5, 5.5], [5.5, 5.5], [9.5, 5.5]], dtype=torch.float64)
    assert torch.equal(g, expected)
    assert torch.equal(pixel_grid(2, 2, 1), torch.tensor([[0.0, 0.0], [1.0, 0.0],
                                                          [0.0, 1.0], [1.0, 1.0]]))
    # Cell centre = mean of the centres of the pixels in the cell.
    full = pixel_grid(8, 8, 1).view(8, 8, 2)
    cell_means = full.view(2, 4, 2, 4, 2).mean((1, 3)).reshape(-1, 2)
    torch.testing.assert_close(pixel_grid(2, 2, 4), cell_means)
    with pytest.raises(ShapeError):
        pixel_grid(2, 2, 0)


def test_downsample_coords() -> None:
    coords = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    mask = torch.ones(2, 1, 4, 4)
    c1, m1 = downsample_coords(coords, mask, 1)
    assert torch.equal(c1, coords) and torch.equal(m1, mask)
    # Even stride: the average of the 2x2 central pixels (an affine map stays exact).
    c2, m2 = downsample_coords(coords, mask, 2)
    torch.testing.assert_close(c2, torch.nn.functional.avg_pool2d(coords, 2))
    mask[0, 0, 1, 1] = 0
    c2, m2 = downsample_coords(coords, mask, 2)
    assert float(m2[0, 0, 0, 0]) == 0 and float(m2.sum()) == 7
    assert bool((c2[0, :, 0, 0] == 0).all())
    # An occlusion-like jump inside one cell: rejected by the spread test, kept without it.
    jump = coords.clone()
    jump[1, :, 2, 3] += 100.0
    full = torch.ones(2, 1, 4, 4)
    assert float(downsample_coords(jump, full, 2)[1][1, 0, 1, 1]) == 0
    assert float(downsample_coords(jump, full, 2)[1].sum()) == 7
    assert float(downsample_coords(jump, full, 2, max_spread_ratio=None)[1].sum()) == 8
    with pytest.raises(ShapeError, match="divisible"):
        downsample_coords(coords, mask, 3)
    with pytest.raises(ShapeError):
        downsample_coords(coords, mask[:, :, :2], 2)


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_stride_intrinsics_render_the_cell_centres(stride: int) -> None:
    size = 48
    cfg = _cfg(object_name="lblock", num_samples=3, image_size=size)
    batch = render_split(cfg)
    obj = make_object("lblock")
    h = size // stride
    low = render_object(obj, batch.pose, stride_intrinsics(batch.cam_mats, stride), h, h)
    # The low-resolution render's coordinates project (with the crop's K) onto pixel_grid.
    pts = low.coords.flatten(2).transpose(1, 2)
    x2d = project(transform_points(pts, quat_to_matrix(batch.pose[:, 3:]), batch.pose[:, :3]),
                  batch.cam_mats).x2d
    m = low.mask.flatten(1) > 0.5
    assert m.sum() > 10
    err = (x2d - pixel_grid(h, h, stride)).norm(dim=-1)[m]
    assert float(err.max()) < 0.02
    # It agrees with downsample_coords where both are covered: exactly for odd strides; for
    # even strides up to the 2x2 average at creases and occlusion edges (a pixel footprint
    # here is ~5 mm).
    coords, mask = downsample_coords(batch.coords, batch.mask, stride)
    both = (mask * low.mask) > 0.5
    diff = (coords - low.coords).abs().amax(1, keepdim=True)[both]
    if stride % 2:
        assert float(diff.max()) < 1e-5
    else:
        assert float(diff.median()) < 1e-4 and float(diff.quantile(0.8)) < 2e-3
    with pytest.raises(ShapeError):
        stride_intrinsics(batch.cam_mats, 0)


def test_dataset_pickles_for_loader_workers() -> None:
    import pickle

    ds = SyntheticCropDataset(_cfg(object_name="eggbox", num_samples=2))
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1].image, ds[1].image)


@pytest.mark.parametrize("bad", [
    {"object_name": "teapot"}, {"split": "holdout"}, {"image_size": 4}, {"num_samples": -1},
    {"seed": -1}, {"max_rotation_deg": 200.0}, {"distance_range": (1.0, 0.5)},
    {"distance_range": (0.0, 0.5)}, {"crop_scale_range": (1.0,)}, {"center_jitter": 0.7},
    {"background": "photo"}, {"ambient_range": (0.5, 1.5)}, {"pixel_noise_std": -0.1},
    {"max_off_axis_deg": 85.0},
])
def test_bad_config_raises(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        _cfg(**bad)


def test_config_from_mapping() -> None:
    cfg = from_dict(SyntheticCropConfig, {"object_name": "can", "distance_range": [0.4, 0.9]})
    assert cfg.distance_range == (0.4, 0.9)
    with pytest.raises(ConfigError, match="bogus"):
        from_dict(SyntheticCropConfig, {"bogus": 1})
    with pytest.raises(ConfigError):
        render_split(cfg, batch_size=0)


def test_cli_writes_contact_sheet(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    assert main(["--out", str(tmp_path), "--num", "3", "--objects", "can", "--size", "32"]) == 0
    path = tmp_path / "synthetic_can_train.png"
    img = plt.imread(path)
    # One row of 8 tiles of (32 + 2) px, image row + coordinate row, upscaled 4x.
    assert img.shape[:2] == (2 * 34 * 4, 8 * 34 * 4)
    assert float(img[..., :3].std()) > 0.05


def test_empty_split() -> None:
    batch = render_split(_cfg(num_samples=0))
    assert isinstance(batch, CropBatch) and batch.image.shape == (0, 3, 64, 64)
