"""Tests of the BOP reader (epropnp_lib.data.bop) and the mini-LineMOD generator.

Two kinds of fixtures, both written into ``tmp_path``:

* hand-written files that follow the official format description (bop_toolkit
  ``docs/bop_datasets_format.md``; JSON laid out as ``bop_toolkit_lib.inout.save_json`` writes
  it; PLY headers as in the ``lm`` model files) -- they check the reader against the format,
  independently of our own writer;
* a mini dataset from :func:`epropnp_lib.generators.bop.generate_bop_lm` -- round trip.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from epropnp_lib import metrics
from epropnp_lib.data.bop import (
    CANONICAL_CONTINUOUS_STEPS,
    BopConfig,
    BopDataError,
    BopDataset,
    crop_transform,
    jitter_box,
    read_ply,
)
from epropnp_lib.errors import ConfigError
from epropnp_lib.generators import bop as bop_generate
from epropnp_lib.generators.bop import GeneratedBop, generate_bop_lm
from epropnp_lib.geometry.raster import rasterize
from epropnp_lib.geometry.rotations import quat_to_matrix
from epropnp_lib.pnp.solver import solve_pnp

# --------------------------------------------------------------------------------------------
# PLY
# --------------------------------------------------------------------------------------------

# A unit square (mm) as one quad plus one triangle, with normals and colours: the property
# layout of the BOP lm models.
ASCII_PLY = """ply
format ascii 1.0
comment created by hand after the BOP lm model header
element vertex 5
property float x
property float y
property float z
property float nx
property float ny
property float nz
property uchar red
property uchar green
property uchar blue
element face 2
property list uchar int vertex_indices
end_header
0 0 0 0 0 1 255 0 0
10 0 0 0 0 1 0 255 0
10 10 0 0 0 1 0 0 255
0 10 0 0 0 1 10 20 30
5 5 7.5 0 0 1 1 2 3
4 0 1 2 3
3 0 1 4
"""


def _binary_ply(endian: str) -> bytes:
    fmt = "binary_little_endian" if endian == "<" else "binary_big_endian"
    header = (f"ply\nformat {fmt} 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
              "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              "element face 1\nproperty list uchar int vertex_indices\nend_header\n")
    rows = [(1.5, 2.0, -3.0, 1, 2, 3), (4.0, 5.0, 6.0, 4, 5, 6), (7.0, 8.0, 9.25, 7, 8, 9)]
    body = b"".join(struct.pack(endian + "fffBBB", *v) for v in rows)
    body += struct.pack(endian + "Biii", 3, 0, 1, 2)
    return header.encode() + body


def test_read_ply_ascii_with_quad(tmp_path: Path) -> None:
    path = tmp_path / "obj_000001.ply"
    path.write_text(ASCII_PLY)
    mesh = read_ply(path)
    assert mesh.vertices.shape == (5, 3)
    assert mesh.vertices[4].tolist() == [5.0, 5.0, 7.5]
    assert mesh.normals is not None and mesh.normals[:, 2].tolist() == [1.0] * 5
    assert mesh.colors is not None and mesh.colors[3].tolist() == [10, 20, 30]
    # The quad is fan-triangulated.
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 4]]


@pytest.mark.parametrize("endian", ["<", ">"])
def test_read_ply_binary(tmp_path: Path, endian: str) -> None:
    path = tmp_path / "m.ply"
    path.write_bytes(_binary_ply(endian))
    mesh = read_ply(path)
    assert mesh.vertices.tolist() == [[1.5, 2.0, -3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.25]]
    assert mesh.normals is None
    assert mesh.colors is not None and mesh.colors[2].tolist() == [7, 8, 9]
    assert mesh.faces.tolist() == [[0, 1, 2]]


def test_read_ply_bad_files(tmp_path: Path) -> None:
    with pytest.raises(BopDataError, match="missing.ply"):
        read_ply(tmp_path / "missing.ply")
    trunc = tmp_path / "trunc.ply"
    trunc.write_bytes(_binary_ply("<")[:-6])
    with pytest.raises(BopDataError, match=r"trunc\.ply.*truncated"):
        read_ply(trunc)
    short = tmp_path / "short.ply"
    short.write_text(ASCII_PLY.rsplit("4 0 1 2 3", 1)[0])
    with pytest.raises(BopDataError, match=r"short\.ply.*truncated"):
        read_ply(short)
    bad = tmp_path / "bad.ply"
    bad.write_text("solid stl\nfacet\n")
    with pytest.raises(BopDataError, match=r"bad\.ply.*not a PLY"):
        read_ply(bad)
    oob = tmp_path / "oob.ply"
    oob.write_text(ASCII_PLY.replace("3 0 1 4", "3 0 1 9"))
    with pytest.raises(BopDataError, match=r"oob\.ply.*out of range"):
        read_ply(oob)


# --------------------------------------------------------------------------------------------
# A hand-written scene in the official format
# --------------------------------------------------------------------------------------------

# A cube of side 40 mm centred at the origin (8 vertices, 12 triangles).
_CUBE_V = [(x, y, z) for x in (-20, 20) for y in (-20, 20) for z in (-20, 20)]
_CUBE_F = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
           (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
CUBE_PLY = (
    "ply\nformat ascii 1.0\nelement vertex 8\nproperty float x\nproperty float y\n"
    "property float z\nproperty float nx\nproperty float ny\nproperty float nz\n"
    "property uchar red\nproperty uchar green\nproperty uchar blue\n"
    "element face 12\nproperty list uchar int vertex_indices\nend_header\n"
    + "".join(f"{x} {y} {z} 0 0 1 200 100 50\n" for x, y, z in _CUBE_V)
    + "".join(f"3 {a} {b} {c}\n" for a, b, c in _CUBE_F))

# models_info.json as save_json writes it; object 10 carries a discrete symmetry like the lm
# eggbox (a 180 degree rotation about z).
MODELS_INFO = """{
  "1": {"diameter": 69.282, "min_x": -20.0, "min_y": -20.0, "min_z": -20.0, "size_x": 40.0, "size_y": 40.0, "size_z": 40.0},
  "10": {"diameter": 69.282, "min_x": -20.0, "min_y": -20.0, "min_z": -20.0, "size_x": 40.0, "size_y": 40.0, "size_z": 40.0, "symmetries_discrete": [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]}
}"""  # noqa: E501

CAMERA = """{
  "cx": 40.0,
  "cy": 30.0,
  "depth_scale": 1.0,
  "fx": 100.0,
  "fy": 100.0,
  "height": 60,
  "width": 80
}"""

# Object 1 at 0.4 m, rotated 90 degrees about the camera z axis; object 10 further right.
SCENE_GT = """{
  "0": [{"cam_R_m2c": [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0], "cam_t_m2c": [0.0, 0.0, 400.0], "obj_id": 1}, {"cam_R_m2c": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "cam_t_m2c": [100.0, 0.0, 500.0], "obj_id": 10}]
}"""  # noqa: E501

SCENE_CAMERA = """{
  "0": {"cam_K": [100.0, 0.0, 40.0, 0.0, 100.0, 30.0, 0.0, 0.0, 1.0], "depth_scale": 1.0}
}"""

SCENE_GT_INFO = """{
  "0": [{"bbox_obj": [35, 25, 10, 10], "bbox_visib": [35, 25, 10, 10], "px_count_all": 121, "px_count_valid": 121, "px_count_visib": 121, "visib_fract": 1.0}, {"bbox_obj": [56, 26, 7, 7], "bbox_visib": [56, 26, 7, 7], "px_count_all": 64, "px_count_valid": 64, "px_count_visib": 64, "visib_fract": 1.0}]
}"""  # noqa: E501


def _box_mask(box: list[int], shape: tuple[int, int] = (60, 80)) -> np.ndarray:
    x, y, w, h = box
    m = np.zeros(shape, np.uint8)
    m[y:y + h + 1, x:x + w + 1] = 255
    return m


def write_hand_scene(root: Path) -> Path:
    """A one-image ``lm`` dataset written from the literal texts above."""
    lm = root / "lm"
    (lm / "models").mkdir(parents=True)
    (lm / "camera.json").write_text(CAMERA)
    (lm / "models" / "models_info.json").write_text(MODELS_INFO)
    (lm / "models" / "obj_000001.ply").write_text(CUBE_PLY)
    (lm / "models" / "obj_000010.ply").write_text(CUBE_PLY)
    scene = lm / "test" / "000002"
    for sub in ("rgb", "mask", "mask_visib", "depth"):
        (scene / sub).mkdir(parents=True)
    (scene / "scene_gt.json").write_text(SCENE_GT)
    (scene / "scene_camera.json").write_text(SCENE_CAMERA)
    (scene / "scene_gt_info.json").write_text(SCENE_GT_INFO)
    img = np.zeros((60, 80, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    img[30, 40] = (255, 0, 0)  # one blue pixel at the principal point
    cv2.imwrite(str(scene / "rgb" / "000000.png"), img)
    for gt_id, box in enumerate(([35, 25, 10, 10], [56, 26, 7, 7])):
        for sub in ("mask", "mask_visib"):
            cv2.imwrite(str(scene / sub / f"000000_{gt_id:06d}.png"), _box_mask(box))
    return lm


def test_hand_written_scene_whole_images(tmp_path: Path) -> None:
    write_hand_scene(tmp_path)
    ds = BopDataset(tmp_path, "test", config=BopConfig(crop_size=0, render_coords=False))
    assert ds.object_ids == (1, 10)
    assert len(ds) == 2
    s0, s1 = ds[0], ds[1]
    # Units: millimetres in the files, metres in the tensors.
    torch.testing.assert_close(s0.pose[:3], torch.tensor([0.0, 0.0, 0.4]))
    torch.testing.assert_close(s1.pose[:3], torch.tensor([0.1, 0.0, 0.5]))
    torch.testing.assert_close(quat_to_matrix(s0.pose[3:]),
                               torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(s0.cam_mats, torch.tensor(
        [[100.0, 0.0, 40.0], [0.0, 100.0, 30.0], [0.0, 0.0, 1.0]]))
    assert s0.diameter.item() == pytest.approx(0.069282)
    assert (s0.obj_id.item(), s1.obj_id.item()) == (1, 10)
    assert (s0.object_index.item(), s1.object_index.item()) == (0, 1)
    assert s0.scene_id.item() == 2 and s0.im_id.item() == 0 and s1.gt_id.item() == 1
    # LineMOD protocol: obj 10 (eggbox) is symmetric, obj 1 (ape) is not.
    assert not bool(s0.symmetric) and bool(s1.symmetric)
    assert ds.model(10).name == "eggbox"
    assert ds.model(10).info.symmetries_discrete.shape == (1, 4, 4)
    assert ds.model(1).vertices.abs().max().item() == pytest.approx(0.02)
    assert s0.model_points.shape == (8, 3)
    # Image: RGB order, [0, 1]; masks as written.
    assert s0.image.shape == (3, 60, 80)
    torch.testing.assert_close(s0.image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(s0.image[:, 30, 40], torch.tensor([0.0, 0.0, 1.0]))
    assert s0.mask.sum().item() == 121 and s1.mask_full.sum().item() == 64
    # The model projected with the file's pose and K lands in the annotated box.
    verts = ds.model(1).vertices
    x_cam = verts @ quat_to_matrix(s0.pose[3:]).T + s0.pose[:3]
    uv = (x_cam @ s0.cam_mats.T)[:, :2] / x_cam[:, 2:]
    assert uv[:, 0].min().item() >= 35 - 1 and uv[:, 0].max().item() <= 45 + 1
    assert uv[:, 1].min().item() >= 25 - 1 and uv[:, 1].max().item() <= 35 + 1


def test_hand_written_scene_crops(tmp_path: Path) -> None:
    write_hand_scene(tmp_path)
    ds = BopDataset(tmp_path, "test", objects=["ape"], config=BopConfig(crop_size=32))
    assert len(ds) == 1
    s = ds[0]
    assert s.image.shape == (3, 32, 32) and s.coords.shape == (3, 32, 32)
    # The box (35..45, 25..35) has centre (40, 30); with side 1.5 * 11 its crop maps the centre
    # to the crop centre (15.5, 15.5).
    a = crop_transform([35, 25, 10, 10], 32, 1.5)
    torch.testing.assert_close(s.cam_mats, torch.from_numpy(a).float() @ torch.tensor(
        [[100.0, 0.0, 40.0], [0.0, 100.0, 30.0], [0.0, 0.0, 1.0]]))
    centre = a @ np.array([40.0, 30.0, 1.0])
    assert centre[:2].tolist() == pytest.approx([15.5, 15.5])
    # The blue pixel at (40, 30) lands at its mapped position in the crop.
    u, v, _ = a @ np.array([40.0, 30.0, 1.0])
    blue = s.image[2] - s.image[0]
    peak = divmod(int(blue.argmax()), 32)
    assert abs(peak[0] - v) <= 1 and abs(peak[1] - u) <= 1
    # Coordinates are rendered only where the mask is, and lie on the cube (|c| <= 2 cm).
    has = s.coords.abs().sum(0) > 0
    assert bool((has <= (s.mask[0] > 0)).all()) and int(has.sum()) > 100
    assert s.coords.abs().max().item() <= 0.02 + 1e-5
    # The camera-facing side of the cube is at object z = -0.02 (R keeps z, t_z = 0.4).
    torch.testing.assert_close(s.coords[2][has], torch.full((int(has.sum()),), -0.02),
                               atol=1e-5, rtol=0)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="bbox"):
        BopConfig(bbox="tight")
    with pytest.raises(ConfigError, match="min_visib_fract"):
        BopConfig(min_visib_fract=1.5)
    with pytest.raises(ConfigError, match="symmetric"):
        BopConfig(symmetric="yes")
    with pytest.raises(ConfigError, match="crop_scale"):
        BopConfig(crop_scale=0)


def _scene(root: Path) -> Path:
    return root / "lm" / "test" / "000002"


#: A scene file replaced by bad content, and the error that names it.
BAD_SCENE_FILES = [
    pytest.param("scene_gt.json", SCENE_GT[: len(SCENE_GT) // 2],
                 r"scene_gt\.json: invalid or truncated JSON", id="truncated"),
    pytest.param("scene_gt.json", SCENE_GT.replace('"cam_t_m2c"', '"cam_t"'),
                 r"scene_gt\.json: image 0, annotation 0: missing key 'cam_t_m2c'",
                 id="missing-key"),
    pytest.param("scene_gt.json", SCENE_GT.replace("[0.0, 0.0, 400.0]", "[0.0, 400.0]"),
                 r"cam_t_m2c: expected a list of 3 numbers", id="wrong-length"),
    pytest.param("scene_gt.json", SCENE_GT.replace('"obj_id": 10', '"obj_id": 99'),
                 r"scene_gt\.json: image 0, annotation 1: unknown object id 99",
                 id="unknown-object"),
    pytest.param("scene_gt.json", "{}", r"scene_gt\.json: empty scene", id="empty-scene"),
    pytest.param("scene_gt_info.json", '{\n  "0": []\n}',
                 r"scene_gt_info\.json: image 0 has 0 entries", id="gt-info-inconsistent"),
]


@pytest.mark.parametrize(("name", "content", "error"), BAD_SCENE_FILES)
def test_bad_scene_file_is_named(tmp_path: Path, name: str, content: str, error: str) -> None:
    write_hand_scene(tmp_path)
    (_scene(tmp_path) / name).write_text(content)
    with pytest.raises(BopDataError, match=error):
        BopDataset(tmp_path, "test", config=BopConfig(crop_size=0, render_coords=False))


def test_bad_data_hand_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = BopConfig(crop_size=0, render_coords=False)
    write_hand_scene(tmp_path)
    # Unknown object id / name requested.
    with pytest.raises(BopDataError, match=r"models_info\.json.*unknown object id 7"):
        BopDataset(tmp_path, "test", objects=[7], config=cfg)
    with pytest.raises(BopDataError, match="unknown object name"):
        BopDataset(tmp_path, "test", objects=["teapot"], config=cfg)
    # Missing split.
    with pytest.raises(BopDataError, match="train.*split folder not found"):
        BopDataset(tmp_path, "train", config=cfg)
    # Missing image: at construction, naming the file ...
    img = _scene(tmp_path) / "rgb" / "000000.png"
    moved = img.with_suffix(".bak")
    img.rename(moved)
    with pytest.raises(BopDataError, match=r"rgb/000000\.png: image not found"):
        BopDataset(tmp_path, "test", config=cfg)
    # ... or at access time when file checks are off.
    ds = BopDataset(tmp_path, "test", config=BopConfig(crop_size=0, render_coords=False,
                                                       check_files=False))
    with pytest.raises(BopDataError, match=r"000000\.png: image not found"):
        ds[0]
    # A corrupt image.
    img.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(BopDataError, match=r"000000\.png: cannot decode"):
        ds[0]
    moved.replace(img)
    # Missing mask.
    mask = _scene(tmp_path) / "mask_visib" / "000000_000001.png"
    mask.unlink()
    with pytest.raises(BopDataError, match=r"mask_visib/000000_000001\.png: mask not found"):
        BopDataset(tmp_path, "test", config=cfg)
    cv2.imwrite(str(mask), _box_mask([56, 26, 7, 7]))
    # Low visibility: skipped with a counted warning, not an error.
    info = _scene(tmp_path) / "scene_gt_info.json"
    info.write_text(SCENE_GT_INFO.replace('"visib_fract": 1.0}, {', '"visib_fract": 0.05}, {'))
    with caplog.at_level(logging.WARNING, logger="epropnp_lib.data.bop"):
        ds = BopDataset(tmp_path, "test", config=BopConfig(crop_size=0, render_coords=False,
                                                           min_visib_fract=0.1))
    assert len(ds) == 1 and ds[0].obj_id.item() == 10
    assert ds.skipped == {"visib_fract < 0.1": 1}
    assert "skipped 1 instance(s): visib_fract < 0.1" in caplog.text
    # Nothing left at all: a clear error.
    with pytest.raises(BopDataError, match="no instance of objects"):
        BopDataset(tmp_path, "test", objects=[1], config=BopConfig(
            crop_size=0, render_coords=False, min_visib_fract=0.1))
    # Missing models_info.json / camera.json name the file.
    (tmp_path / "lm" / "camera.json").unlink()
    with pytest.raises(BopDataError, match=r"camera\.json: file not found"):
        BopDataset(tmp_path, "test", config=cfg)
    (tmp_path / "lm" / "models" / "models_info.json").write_text('{"1": {"diameter": 1}}')
    with pytest.raises(BopDataError, match=r"models_info\.json: object 1: missing key 'min_x'"):
        BopDataset(tmp_path, "test", config=cfg)


# --------------------------------------------------------------------------------------------
# Generated mini dataset: the reader reads what the generator writes
# --------------------------------------------------------------------------------------------

GEN_SIZE = (160, 120)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> GeneratedBop:
    root = tmp_path_factory.mktemp("bop")
    return generate_bop_lm(root, num_scenes=2, images_per_scene=2, image_size=GEN_SIZE,
                           seed=3, objects_per_image=3)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))


def test_generated_layout_and_json_types(generated: GeneratedBop) -> None:
    lm = generated.dataset_dir
    assert generated.object_ids == {"drill": 8, "lblock": 1, "can": 11, "eggbox": 10}
    assert generated.num_instances == 12 and generated.scene_ids == (1, 2)
    cam = json.loads((lm / "camera.json").read_text())
    assert sorted(cam) == ["cx", "cy", "depth_scale", "fx", "fy", "height", "width"]
    assert (cam["width"], cam["height"]) == GEN_SIZE
    info = json.loads((lm / "models" / "models_info.json").read_text())
    assert sorted(info, key=int) == ["1", "8", "10", "11"]
    assert info["10"]["symmetries_discrete"][0][:3] == [-1.0, 0.0, 0.0]
    assert info["11"]["symmetries_continuous"] == [{"axis": [0.0, 0.0, 1.0],
                                                    "offset": [0, 0, 0]}]
    assert "symmetries_discrete" not in info["8"]
    scene = lm / "test" / "000001"
    text = (scene / "scene_gt.json").read_text()
    assert text.startswith('{\n  "0": [{"cam_R_m2c": [') and text.endswith("\n}")
    gt = json.loads(text)
    entry = gt["0"][0]
    assert sorted(entry) == ["cam_R_m2c", "cam_t_m2c", "obj_id"]
    assert isinstance(entry["obj_id"], int) and len(entry["cam_R_m2c"]) == 9
    gi = json.loads((scene / "scene_gt_info.json").read_text())["0"][0]
    assert sorted(gi) == ["bbox_obj", "bbox_visib", "px_count_all", "px_count_valid",
                          "px_count_visib", "visib_fract"]
    assert all(isinstance(v, int) for v in gi["bbox_obj"] + gi["bbox_visib"])
    assert isinstance(gi["visib_fract"], float)
    sc = json.loads((scene / "scene_camera.json").read_text())["1"]
    assert sorted(sc) == ["cam_K", "depth_scale"] and len(sc["cam_K"]) == 9
    depth = cv2.imread(str(scene / "depth" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (120, 160)
    assert depth[depth > 0].min() > 400 and depth.max() < 1200  # millimetres
    targets = json.loads((lm / "test_targets_bop19.json").read_text())
    assert sum(t["inst_count"] for t in targets) == 12


def test_generated_whole_images_are_consistent(generated: GeneratedBop) -> None:
    root = generated.dataset_dir.parent
    ds = BopDataset(root, "test", config=BopConfig(crop_size=0, render_coords=False))
    assert len(ds) + sum(ds.skipped.values()) == generated.num_instances
    assert {o: ds.model(o).symmetric for o in ds.object_ids} == {
        1: False, 8: False, 10: True, 11: True}
    assert ds.model(10).name == "eggbox" and ds.model(11).name == "glue"
    for i in range(len(ds)):
        s = ds[i]
        inst = ds.instances[i]
        model = ds.model(int(s.obj_id))
        mask, full = s.mask[0] > 0, s.mask_full[0] > 0
        assert bool((mask <= full).all())
        assert int(mask.sum()) == inst.info.px_count_visib
        assert inst.info.px_count_valid == int(full.sum()) <= inst.info.px_count_all
        assert inst.info.visib_fract == pytest.approx(
            inst.info.px_count_visib / inst.info.px_count_all)
        ys, xs = mask.nonzero(as_tuple=True)
        assert list(inst.info.bbox_visib) == [int(xs.min()), int(ys.min()),
                                              int(xs.max() - xs.min()), int(ys.max() - ys.min())]
        # The model read back from the PLY, under the pose and K read back from the JSON,
        # covers the full mask: its projected vertices span it, its silhouette matches it.
        x_cam = model.vertices @ quat_to_matrix(s.pose[3:]).T + s.pose[:3]
        uv = (x_cam @ s.cam_mats.T)[:, :2] / x_cam[:, 2:]
        assert xs.min() >= uv[:, 0].min() - 0.5 and xs.max() <= uv[:, 0].max() + 0.5
        assert ys.min() >= uv[:, 1].min() - 0.5 and ys.max() <= uv[:, 1].max() + 0.5
        ras = rasterize(model.vertices, model.faces, model.vertices, s.pose[None],
                        s.cam_mats[None], GEN_SIZE[1], GEN_SIZE[0])
        assert _iou(ras.mask[0], full) > 0.97


def test_generated_crops_solve_back_to_the_pose(generated: GeneratedBop) -> None:
    root = generated.dataset_dir.parent
    ds = BopDataset(root, "test", objects=["driller", "ape"],
                    config=BopConfig(crop_size=64, min_visib_fract=0.3, num_model_points=100))
    assert set(ds.object_ids) == {1, 8} and len(ds) >= 2
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert batch.image.shape == (len(ds), 3, 64, 64)
    assert batch.model_points.shape == (len(ds), 100, 3)
    for i in range(len(ds)):
        coords, mask = batch.coords[i], batch.mask[i, 0] > 0
        has = coords.abs().sum(0) > 0
        assert bool((has <= mask).all()) and int(has.sum()) > 0.9 * int(mask.sum())
        v, u = has.nonzero(as_tuple=True)
        x2d = torch.stack((u, v), -1).double()[None]
        x3d = coords[:, v, u].T.double()[None]
        sol = solve_pnp(x3d, x2d, torch.ones_like(x2d), batch.cam_mats[i].double()[None])
        pose = batch.pose[i].double()[None]
        assert metrics.rotation_error_deg(sol.pose, pose).item() < 0.5
        assert metrics.translation_error(sol.pose, pose).item() < 0.005 * pose[0, 2].item()
    # ADD(-S) of the ground truth is 0 for every sample (the metrics accept the batch).
    acc = metrics.add_accuracy(batch.pose, batch.pose, batch.model_points, batch.diameter,
                               0.02, batch.symmetric)
    assert bool(acc.all())


def test_canonical_symmetric_targets(generated: GeneratedBop) -> None:
    """``canonical_symmetric``: a symmetric object's pose (and the pose its coordinate map is
    rendered with) is its equivalent closest to the identity; other objects are unchanged."""
    root = generated.dataset_dir.parent
    cfg = BopConfig(crop_size=64, min_visib_fract=0.3)
    plain = BopDataset(root, "test", config=cfg)
    canon = BopDataset(root, "test", config=replace(cfg, canonical_symmetric=True))
    seen = set()
    for i in range(len(plain)):
        a, b = plain[i], canon[i]
        obj = int(a.obj_id)
        sym = plain.model(obj).symmetries(CANONICAL_CONTINUOUS_STEPS)
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
        if sym.num == 1:
            assert torch.equal(a.pose, b.pose) and torch.equal(a.coords, b.coords)
            continue
        seen.add(obj)
        r_a, r_b = quat_to_matrix(a.pose[3:].double()), quat_to_matrix(b.pose[3:].double())
        # an equivalent pose: (R R_s, t + R t_s) for some symmetry s ...
        rel = r_a.T @ r_b
        d = (sym.rotations - rel).abs().amax((-1, -2))
        s_idx = int(d.argmin())
        assert float(d[s_idx]) < 1e-5
        torch.testing.assert_close(b.pose[:3].double(),
                                   a.pose[:3].double() + r_a @ sym.translations[s_idx],
                                   atol=1e-6, rtol=0)
        # ... the closest to the identity among them ...
        traces = torch.diagonal(r_a @ sym.rotations, dim1=-2, dim2=-1).sum(-1)
        assert float(torch.trace(r_b)) == pytest.approx(float(traces.max()), abs=1e-5)
        # ... and the map is rendered with it: the same surface points in the camera, in the
        # symmetric frame (x_a = R_s x_b + t_s), up to the rasteriser's edge pixels
        has = (a.coords.abs().sum(0) > 0) & (b.coords.abs().sum(0) > 0)
        x_a, x_b = a.coords[:, has].T.double(), b.coords[:, has].T.double()
        moved = x_b @ sym.rotations[s_idx].T + sym.translations[s_idx]
        assert float((moved - x_a).norm(dim=-1).median()) < 1e-4
        # canonical poses of symmetric objects solve back from their maps like any other
        v, u = has.nonzero(as_tuple=True)
        x2d = torch.stack((u, v), -1).double()[None]
        sol = solve_pnp(x_b[None], x2d, torch.ones_like(x2d), b.cam_mats.double()[None])
        assert metrics.rotation_error_deg(sol.pose, b.pose.double()[None]).item() < 0.5
    assert seen == {10, 11}  # eggbox (2-fold) and can (continuous)


def test_jitter_box_range() -> None:
    box = (10, 20, 30, 50)  # pixel extents 31 x 51, centre (25, 45)
    assert jitter_box(box, 0.0, np.random.default_rng(0)) == (10.0, 20.0, 30.0, 50.0)
    j = 0.2
    rng = np.random.default_rng(1)
    out = np.array([jitter_box(box, j, rng) for _ in range(2000)])
    cx, cy = out[:, 0] + 0.5 * out[:, 2], out[:, 1] + 0.5 * out[:, 3]
    k = (out[:, 2] + 1.0) / 31.0
    assert np.abs(cx - 25.0).max() <= j * 31 and np.abs(cy - 45.0).max() <= j * 51
    assert k.min() >= 1 - j and k.max() <= 1 + j
    np.testing.assert_allclose((out[:, 3] + 1.0) / 51.0, k)  # aspect kept
    # the draws fill the range (uniform), both ways
    assert np.abs(cx - 25.0).max() > 0.9 * j * 31 and k.min() < 1 - 0.9 * j < 1 + 0.9 * j < k.max()
    side = crop_transform(box, 64, 1.5)[0, 0] / np.array(
        [crop_transform(b, 64, 1.5)[0, 0] for b in out])
    np.testing.assert_allclose(side, k)  # the crop's side scales by the same factor


def test_box_jitter_is_seeded_by_seed_epoch_and_index(generated: GeneratedBop) -> None:
    root = generated.dataset_dir.parent
    cfg = BopConfig(crop_size=32, min_visib_fract=0.3, render_coords=False)
    plain = BopDataset(root, "test", config=cfg)
    jit = replace(cfg, box_jitter=0.15)
    a, b = BopDataset(root, "test", config=jit, seed=7), BopDataset(root, "test", config=jit,
                                                                     seed=7)
    other = BopDataset(root, "test", config=jit, seed=8)
    zero = BopDataset(root, "test", config=replace(cfg, box_jitter=0.0), seed=7)
    for i in range(len(plain)):
        p, x, y = plain[i], a[i], b[i]
        assert torch.equal(x.image, y.image) and torch.equal(x.bbox, y.bbox)
        assert not torch.equal(x.bbox, p.bbox) and not torch.equal(x.bbox, other[i].bbox)
        assert torch.equal(zero[i].image, p.image) and torch.equal(zero[i].bbox, p.bbox)
        # the crop, its intrinsics and the reported box agree
        inst = a.instances[i]
        want = crop_transform(x.bbox.double().tolist(), 32, cfg.crop_scale) @ inst.cam_mats
        np.testing.assert_allclose(x.cam_mats.numpy(), want, rtol=1e-5, atol=1e-4)
    first = [a[i].bbox for i in range(len(a))]
    a.set_epoch(1)
    assert all(not torch.equal(a[i].bbox, first[i]) for i in range(len(a)))
    a.set_epoch(0)
    assert all(torch.equal(a[i].bbox, first[i]) for i in range(len(a)))
    with pytest.raises(ConfigError, match="box_jitter"):
        BopConfig(box_jitter=0.8)


def test_generated_binary_ply_and_determinism(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"num_scenes": 1, "images_per_scene": 1, "objects": ["eggbox"],
                          "image_size": (64, 48), "seed": 5}
    a = generate_bop_lm(tmp_path / "a", **kw)
    b = generate_bop_lm(tmp_path / "b", binary_ply=True, **kw)
    assert a.object_ids == {"eggbox": 10}
    ply_a, ply_b = (read_ply(g.dataset_dir / "models" / "obj_000010.ply") for g in (a, b))
    head = (b.dataset_dir / "models" / "obj_000010.ply").read_bytes()[:40]
    assert b"format binary_little_endian 1.0" in head
    np.testing.assert_allclose(ply_a.vertices, ply_b.vertices, atol=1e-4)
    assert np.array_equal(ply_a.faces, ply_b.faces)
    assert ply_a.colors is not None and ply_b.colors is not None
    assert np.array_equal(ply_a.colors, ply_b.colors)
    scene = Path("test") / "000001"
    for rel in ("scene_gt.json", "scene_gt_info.json", "rgb/000000.png", "mask/000000_000000.png"):
        assert (a.dataset_dir / scene / rel).read_bytes() == (b.dataset_dir / scene / rel
                                                              ).read_bytes(), rel


def test_generator_cli_and_config_errors(tmp_path: Path) -> None:
    assert bop_generate.main(["--out", str(tmp_path), "--num-scenes", "1",
                              "--images-per-scene", "1", "--objects", "lblock",
                              "--width", "48", "--height", "40"]) == 0
    # The CLI's default split is the training data.
    train = BopDataset(tmp_path, "train", config=BopConfig(crop_size=16))
    assert train.object_ids == (1,) and len(train) == 1
    assert not (tmp_path / "lm" / "test").exists()
    # A test split next to it: same models, other images (independent stream per split).
    assert bop_generate.main(["--out", str(tmp_path), "--num-scenes", "1",
                              "--images-per-scene", "1", "--objects", "lblock",
                              "--width", "48", "--height", "40", "--split", "test"]) == 0
    ds = BopDataset(tmp_path, "test", config=BopConfig(crop_size=16))
    assert len(ds) == 1 and not torch.equal(train[0].pose, ds[0].pose)
    assert (tmp_path / "lm" / "test_targets_bop19.json").is_file()
    with pytest.raises(ConfigError, match="unknown synthetic objects"):
        generate_bop_lm(tmp_path, objects=["teapot"])
    with pytest.raises(ConfigError, match="objects_per_image"):
        generate_bop_lm(tmp_path, objects=["can"], objects_per_image=2)
    with pytest.raises(SystemExit):
        bop_generate.main(["--out", str(tmp_path), "--objects", "teapot"])


def test_a_second_draw_appended_after_the_existing_scenes(tmp_path: Path) -> None:
    """``first_scene_id`` adds scenes of another seed to a split: their content is that of
    the same draw written on its own (ids do not enter the content), the reader sees both
    draws, and the test split's targets keep the first draw's entries."""
    kw: dict[str, Any] = {"num_scenes": 2, "images_per_scene": 1, "objects": ["lblock", "can"],
                          "image_size": (64, 48)}
    for split in ("train", "test"):
        generate_bop_lm(tmp_path / "both", seed=0, split=split, **kw)
        more = generate_bop_lm(tmp_path / "both", seed=2, split=split, first_scene_id=3, **kw)
        alone = generate_bop_lm(tmp_path / "alone", seed=2, split=split, **kw)
        assert more.scene_ids == (3, 4) and alone.scene_ids == (1, 2)
        for new_id, alone_id in ((3, 1), (4, 2)):
            for rel in ("scene_gt.json", "scene_camera.json", "rgb/000000.png"):
                assert ((more.dataset_dir / split / f"{new_id:06d}" / rel).read_bytes()
                        == (alone.dataset_dir / split / f"{alone_id:06d}" / rel).read_bytes())
        ds = BopDataset(tmp_path / "both", split, config=BopConfig(crop_size=16))
        assert sorted({i.scene_id for i in ds.instances}) == [1, 2, 3, 4]
    targets = json.loads((tmp_path / "both" / "lm" / "test_targets_bop19.json").read_text())
    assert sorted({t["scene_id"] for t in targets}) == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match="first_scene_id"):
        generate_bop_lm(tmp_path / "bad", first_scene_id=0, **kw)
    assert bop_generate.main(["--out", str(tmp_path / "cli"), "--num-scenes", "1",
                              "--images-per-scene", "1", "--objects", "lblock", "--width", "48",
                              "--height", "40", "--first-scene-id", "5"]) == 0
    assert (tmp_path / "cli" / "lm" / "train" / "000005" / "scene_gt.json").is_file()


def test_assign_linemod_ids() -> None:
    ids = bop_generate.assign_linemod_ids(["can", "duck", "cube", "eggbox"],
                                          [True, False, False, True])
    assert ids == {"eggbox": 10, "can": 11, "duck": 9, "cube": 1}
    with pytest.raises(ConfigError, match="no LineMOD id left"):
        bop_generate.assign_linemod_ids(["a", "b", "c"], [True, True, True])


def test_generated_bad_data(generated: GeneratedBop, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(generated.dataset_dir, copy / "lm")
    info = copy / "lm" / "test" / "000002" / "scene_gt_info.json"
    info.write_text(info.read_text()[:-40])
    with pytest.raises(BopDataError, match=r"000002/scene_gt_info\.json: invalid or truncated"):
        BopDataset(copy, "test")
    # Reading only the intact scene works.
    assert len(BopDataset(copy, "test", scenes=[1], config=BopConfig(render_coords=False))) > 0
    with pytest.raises(BopDataError, match="000007: scene folder not found"):
        BopDataset(copy, "test", scenes=[7])
    # An image subset (e.g. the standard LineMOD split) keeps only those images.
    sub = BopDataset(copy, "test", scenes=[1], images={1: [1]},
                     config=BopConfig(render_coords=False))
    assert {inst.im_id for inst in sub.instances} == {1}
    with pytest.raises(BopDataError, match=r"scene_gt\.json: requested images \[9\]"):
        BopDataset(copy, "test", scenes=[1], images={1: [1, 9]})
