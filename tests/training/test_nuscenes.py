"""nuScenes: the generated v1.0-mini set, the devkit reader, the results writer, DetectionEval."""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from epropnp_lib.data.nuscenes import (
    CAMERAS,
    NUSCENES_ATTRIBUTES,
    NUSCENES_CLASSES,
    CameraDetections,
    NuScenesCameraDataset,
    NuScenesEvalError,
    NuScenesFormatError,
    camera_to_global,
    collate_camera_samples,
    evaluate,
    global_to_camera,
    load_nuscenes,
    write_results,
)
from epropnp_lib.errors import ConfigError
from epropnp_lib.generators.nuscenes import generate_nuscenes_mini, main
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.rotations import quat_exp, quat_to_matrix

SIZE = (192, 108)

# Field names (and their order) of the real v1.0 tables.
FIELDS = {
    "attribute": ["token", "name", "description"],
    "calibrated_sensor": ["token", "sensor_token", "translation", "rotation", "camera_intrinsic"],
    "category": ["token", "name", "description", "index"],
    "ego_pose": ["token", "timestamp", "rotation", "translation"],
    "instance": ["token", "category_token", "nbr_annotations", "first_annotation_token",
                 "last_annotation_token"],
    "log": ["token", "logfile", "vehicle", "date_captured", "location"],
    "map": ["category", "token", "filename", "log_tokens"],
    "sample": ["token", "timestamp", "prev", "next", "scene_token"],
    "sample_annotation": ["token", "sample_token", "instance_token", "visibility_token",
                          "attribute_tokens", "translation", "size", "rotation", "prev", "next",
                          "num_lidar_pts", "num_radar_pts"],
    "sample_data": ["token", "sample_token", "ego_pose_token", "calibrated_sensor_token",
                    "timestamp", "fileformat", "is_key_frame", "height", "width", "filename",
                    "prev", "next"],
    "scene": ["token", "log_token", "nbr_samples", "first_sample_token", "last_sample_token",
              "name", "description"],
    "sensor": ["token", "channel", "modality"],
    "visibility": ["description", "token", "level"],
}


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nuscenes") / "data"
    generate_nuscenes_mini(root, samples_per_scene=3, image_size=SIZE, seed=0,
                           lidar_azimuth_steps=360)
    return root


@pytest.fixture(scope="module")
def nusc(mini: Path) -> Any:
    return load_nuscenes(mini, "v1.0-mini")


@pytest.fixture(scope="module")
def val(mini: Path, nusc: Any) -> NuScenesCameraDataset:
    return NuScenesCameraDataset(mini, "v1.0-mini", "mini_val", nusc=nusc)


@pytest.fixture(scope="module")
def gt_detections(val: NuScenesCameraDataset) -> dict[str, list[CameraDetections]]:
    out: dict[str, list[CameraDetections]] = defaultdict(list)
    for i in range(len(val)):
        item = val[i]
        out[item.frame.sample_token].append(CameraDetections(item.boxes, item.frame))
    return out


def _copy(mini: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(mini, dst)
    return dst


def test_tables_have_the_real_schema_and_the_devkit_loads_them(mini: Path, nusc: Any) -> None:
    from nuscenes.utils.splits import create_splits_scenes

    for name, fields in FIELDS.items():
        table = json.loads((mini / "v1.0-mini" / f"{name}.json").read_text())
        assert table, name
        for record in table:
            assert list(record) == fields, name
            assert len(record["token"]) == 32 or name == "visibility"
            int(record["token"], 16)
    splits = create_splits_scenes()
    assert sorted(s["name"] for s in nusc.scene) == ["scene-0061", "scene-0103"]
    assert {s["name"] for s in nusc.scene} <= set(splits["mini_train"]) | set(splits["mini_val"])
    assert len(nusc.sample) == 6
    cats = {nusc.get("category", i["category_token"])["name"] for i in nusc.instance}
    assert {"vehicle.car", "vehicle.truck", "human.pedestrian.adult", "movable_object.barrier",
            "movable_object.trafficcone", "static_object.bicycle_rack"} <= cats
    for sample in nusc.sample:
        assert set(sample["data"]) == {*CAMERAS, "LIDAR_TOP"}
        assert sample["timestamp"] == nusc.get("sample_data",
                                               sample["data"]["LIDAR_TOP"])["timestamp"]
        for cam in CAMERAS:
            sd = nusc.get("sample_data", sample["data"][cam])
            assert (sd["width"], sd["height"]) == SIZE and sd["fileformat"] == "jpg"
            assert sd["filename"].startswith(f"samples/{cam}/")
            assert (mini / sd["filename"]).is_file()
            assert abs(sd["timestamp"] - sample["timestamp"]) < 50_000
    for sample in nusc.sample:  # the ego drives on the semantic prior (road) of its map
        pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])[
            "ego_pose_token"])
        log = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])
        mask = nusc.get("map", log["map_token"])["mask"]
        assert mask.is_on_mask(pose["translation"][0], pose["translation"][1])[0]
        assert not mask.is_on_mask(pose["translation"][0] + 300, pose["translation"][1])[0]
    for ann in nusc.sample_annotation:
        assert ann["num_lidar_pts"] > 0 and len(ann["attribute_tokens"]) <= 1


def test_lidar_points_lie_inside_the_boxes_as_counted(mini: Path, nusc: Any) -> None:
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box
    from pyquaternion import Quaternion

    sample = nusc.sample[1]
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    raw = np.fromfile(mini / sd["filename"], dtype=np.float32)
    assert raw.size % 5 == 0 and raw.size > 0
    assert set(np.unique(raw.reshape(-1, 5)[:, 4])) <= set(range(32))  # ring index
    pc = LidarPointCloud.from_file(str(mini / sd["filename"]))
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    ground = np.abs(pc.points[2]) < 0.05
    assert ground.mean() > 0.3  # many returns from the road plane (global z = 0)
    for token in sample["anns"]:
        ann = nusc.get("sample_annotation", token)
        inside = points_in_box(nusc.get_box(token), pc.points[:3]).sum()
        assert inside == ann["num_lidar_pts"], ann["category_name"]


def test_motion_attributes_and_velocities_agree(nusc: Any) -> None:
    moving = {"vehicle.moving", "pedestrian.moving", "cycle.with_rider"}
    static = {"vehicle.parked", "vehicle.stopped", "pedestrian.standing", "cycle.without_rider"}
    names = {a["token"]: a["name"] for a in nusc.attribute}
    counts = {"moving": 0, "static": 0}
    for ann in nusc.sample_annotation:
        speed = float(np.linalg.norm(nusc.box_velocity(ann["token"])[:2]))
        assert math.isfinite(speed)
        attr = names[ann["attribute_tokens"][0]] if ann["attribute_tokens"] else ""
        if attr in moving:
            assert speed > 0.8, attr
            counts["moving"] += 1
        elif attr in static or attr == "":
            assert speed < 1e-6, attr
            counts["static"] += 1
    assert counts["moving"] > 10 and counts["static"] > 10
    vis = {ann["visibility_token"] for ann in nusc.sample_annotation}
    assert {"1", "4"} <= vis


def test_boxes_never_overlap(nusc: Any) -> None:
    from pyquaternion import Quaternion

    def rect(ann: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        w, length, _ = ann["size"]
        yaw = Quaternion(ann["rotation"]).yaw_pitch_roll[0]
        rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
        local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * [length / 2, w / 2]
        return local @ rot.T + ann["translation"][:2], rot

    for sample in nusc.sample:
        rects = [rect(nusc.get("sample_annotation", t)) for t in sample["anns"]]
        for i, (p, rp) in enumerate(rects):
            for q, rq in rects[i + 1:]:
                # Separating axis theorem on the two rectangles' edge normals.
                assert any((p @ ax).max() < (q @ ax).min() or (q @ ax).max() < (p @ ax).min()
                           for ax in (*rp.T, *rq.T))


def test_camera_boxes_match_the_devkit_camera_frame(val: NuScenesCameraDataset,
                                                    nusc: Any) -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils.geometry_utils import BoxVisibility

    item = val[0]
    assert item.image is not None and item.image.shape == (3, SIZE[1], SIZE[0])
    assert item.image.dtype == torch.uint8 and item.image.float().std() > 10
    assert item.boxes.validate().num_boxes > 3
    _, boxes, k = nusc.get_sample_data(item.frame.sample_data_token,
                                       box_vis_level=BoxVisibility.NONE)
    by_token = {b.token: b for b in boxes}
    torch.testing.assert_close(item.cam_mats, torch.tensor(k, dtype=torch.float32))
    for i, token in enumerate(item.ann_tokens):
        ref = by_token[token]
        torch.testing.assert_close(item.boxes.center[i], torch.tensor(ref.center).float(),
                                   atol=1e-4, rtol=0)
        heading = ref.orientation.rotation_matrix[:, 0]
        yaw = math.atan2(-heading[2], heading[0])
        assert abs(math.remainder(float(item.boxes.yaw[i]) - yaw, 2 * math.pi)) < 1e-5
        assert abs(heading[1]) < 0.02  # cameras are nearly level: 4DoF is faithful
        torch.testing.assert_close(item.boxes.size[i], torch.tensor(ref.wlh).float())
        assert NUSCENES_CLASSES[int(item.boxes.labels[i])] == category_to_detection_name(
            ref.name)
    # Boxes kept overlap the image, are in front; attributes are devkit attributes.
    assert bool((item.boxes.center[:, 2] > 0.5).all())
    assert {int(a) for a in item.boxes.attributes} <= set(range(-1, len(NUSCENES_ATTRIBUTES)))
    batch = collate_camera_samples([val[0], val[1]])
    assert batch.images is not None and batch.images.shape == (2, 3, SIZE[1], SIZE[0])
    assert batch.cam_mats.shape == (2, 3, 3) and len(batch.boxes) == 2
    # The visibility filter keeps a strict subset (levels 1..4 = 0-40 % ... 80-100 %).
    visible = NuScenesCameraDataset(val.dataroot, "v1.0-mini", "mini_val", min_visibility=4,
                                    nusc=nusc, load_images=False)
    n_all = sum(val[i].boxes.num_boxes for i in range(len(val)))
    n_vis = sum(visible[i].boxes.num_boxes for i in range(len(visible)))
    assert 0 < n_vis < n_all
    assert all(bool((visible[i].visibility == 4).all()) for i in range(len(visible)))


def test_conversions_are_inverse_for_tilted_cameras() -> None:
    g = torch.Generator().manual_seed(3)
    m = 50
    cam_to_global = torch.eye(4, dtype=torch.float64)
    base = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
                        dtype=torch.float64)  # optical frame looking along global x
    tilt = quat_to_matrix(quat_exp(0.05 * torch.randn(3, generator=g, dtype=torch.float64)))
    cam_to_global[:3, :3] = tilt @ base
    cam_to_global[:3, 3] = torch.tensor([400.0, 1100.0, 1.6], dtype=torch.float64)
    trans = torch.randn(m, 3, generator=g, dtype=torch.float64) * 20 + cam_to_global[:3, 3]
    yaw = (torch.rand(m, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    zeros = torch.zeros_like(yaw)
    rot = torch.stack((torch.cos(yaw / 2), zeros, zeros, torch.sin(yaw / 2)), -1)
    vel = torch.randn(m, 2, generator=g, dtype=torch.float64) * 5
    center, cam_yaw, cam_vel = global_to_camera(trans, rot, vel, cam_to_global)
    trans2, yaw2, vel2 = camera_to_global(center, cam_yaw, cam_vel, cam_to_global)
    torch.testing.assert_close(trans2, trans)
    torch.testing.assert_close(torch.remainder(yaw2 - yaw + math.pi, 2 * math.pi) - math.pi,
                               zeros, atol=1e-9, rtol=0)
    torch.testing.assert_close(vel2, vel)
    # A level camera gives the plain 4DoF relation: camera yaw = -(global yaw) + const.
    level = cam_to_global.clone()
    level[:3, :3] = base
    _, y_level, _ = global_to_camera(trans, rot, vel, level)
    # (camera x = -global y, camera z = global x): heading (-sin, 0, cos) -> yaw = -yaw_g - pi/2.
    torch.testing.assert_close(
        torch.remainder(y_level + yaw + 1.5 * math.pi, 2 * math.pi) - math.pi, zeros,
        atol=1e-9, rtol=0)


def test_ground_truth_results_score_one_and_round_trip(
    mini: Path, nusc: Any, val: NuScenesCameraDataset,
    gt_detections: dict[str, list[CameraDetections]], tmp_path: Path,
) -> None:
    from nuscenes.eval.common.loaders import load_gt, load_prediction
    from nuscenes.eval.common.utils import quaternion_yaw
    from nuscenes.eval.detection.data_classes import DetectionBox
    from pyquaternion import Quaternion

    path = tmp_path / "results.json"
    summary = write_results(path, gt_detections, sample_tokens=val.sample_tokens)
    assert summary.num_samples == 3 and summary.num_merged > 0
    assert summary.num_nan_velocity == 0 and summary.num_default_attribute == 0
    content = json.loads(path.read_text())
    assert content["meta"]["use_camera"] is True and set(content["results"]) == set(
        val.sample_tokens)

    # Round trip: the written boxes are the devkit's ground-truth boxes.
    pred, _ = load_prediction(str(path), 500, DetectionBox)
    gt = load_gt(nusc, "mini_val", DetectionBox)
    for token in val.sample_tokens:
        gt_boxes, pred_boxes = gt[token], pred[token]
        assert len(pred_boxes) == len(gt_boxes)
        for box in gt_boxes:
            match = min(pred_boxes, key=lambda p: math.dist(p.translation, box.translation))
            assert math.dist(match.translation, box.translation) < 1e-4
            assert match.size == pytest.approx(box.size, abs=1e-5)
            d = quaternion_yaw(Quaternion(match.rotation)) - quaternion_yaw(
                Quaternion(box.rotation))
            assert abs(math.remainder(d, 2 * math.pi)) < 1e-5
            assert match.velocity == pytest.approx(box.velocity, abs=1e-4)
            assert (match.detection_name, match.attribute_name) == (box.detection_name,
                                                                     box.attribute_name)

    scores = evaluate(path, mini, "v1.0-mini", "mini_val", tmp_path / "eval", nusc=nusc)
    assert scores.nds == pytest.approx(1.0, abs=1e-6)
    assert scores.mean_ap == pytest.approx(1.0, abs=1e-9)
    assert all(ap == pytest.approx(1.0) for ap in scores.per_class_ap.values())
    assert set(scores.per_class_ap) == set(NUSCENES_CLASSES)
    assert all(err < 1e-5 for err in scores.tp_errors.values())
    assert json.loads(scores.summary_path.read_text())["nd_score"] == pytest.approx(1.0)


def _perturb(boxes: CameraBoxes, g: torch.Generator) -> CameraBoxes:
    m = boxes.num_boxes
    return boxes._replace(
        center=boxes.center + 0.4 * torch.randn(m, 3, generator=g),
        size=boxes.size * (1 + 0.1 * torch.randn(m, 3, generator=g)).clamp(min=0.5),
        yaw=boxes.yaw + 0.3 * torch.randn(m, generator=g),
        velocity=boxes.velocity + 0.5 * torch.randn(m, 2, generator=g),
        scores=torch.rand(m, generator=g),
    )


def test_seeded_perturbation_gives_the_golden_scores(
    mini: Path, nusc: Any, val: NuScenesCameraDataset,
    gt_detections: dict[str, list[CameraDetections]], tmp_path: Path,
) -> None:
    g = torch.Generator().manual_seed(0)
    perturbed = {token: [CameraDetections(_perturb(d.boxes, g), d.frame) for d in dets]
                 for token, dets in sorted(gt_detections.items())}
    path = tmp_path / "perturbed.json"
    write_results(path, perturbed, sample_tokens=val.sample_tokens)
    scores = evaluate(path, mini, "v1.0-mini", "mini_val", tmp_path / "eval", nusc=nusc)
    # Golden values: DetectionEval on the generated mini (seed 0, 3 samples/scene, 192x108,
    # 360 lidar columns) with the perturbation above (torch seed 0).
    assert scores.mean_ap == pytest.approx(GOLDEN_MAP, abs=1e-4)
    assert scores.nds == pytest.approx(GOLDEN_NDS, abs=1e-4)
    assert scores.tp_errors["trans_err"] == pytest.approx(GOLDEN_MATE, abs=1e-4)
    assert scores.tp_errors["attr_err"] == 0.0  # attributes were not perturbed


GOLDEN_MAP = 0.8365267
GOLDEN_NDS = 0.7711120
GOLDEN_MATE = 0.4482051


def test_generation_is_deterministic_and_the_cli_writes_it(tmp_path: Path) -> None:
    args: dict[str, Any] = dict(scenes=("scene-0103",), samples_per_scene=2,
                                image_size=(64, 36), lidar_azimuth_steps=90)
    a = generate_nuscenes_mini(tmp_path / "a", seed=5, **args)
    assert main(["--out", str(tmp_path / "b"), "--scenes", "scene-0103", "--samples-per-scene",
                 "2", "--image-size", "64", "36", "--lidar-azimuth-steps", "90",
                 "--seed", "5"]) == 0
    generate_nuscenes_mini(tmp_path / "c", seed=6, **args)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert len(files) == 13 + 1 + a.num_sample_data
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert ((tmp_path / "a" / "v1.0-mini" / "sample_annotation.json").read_bytes()
            != (tmp_path / "c" / "v1.0-mini" / "sample_annotation.json").read_bytes())


@pytest.mark.parametrize("kwargs", [
    {"scenes": ("scene-9999",)}, {"samples_per_scene": 1}, {"image_size": (8, 8)},
    {"scenes": ("scene-0061", "scene-0061")},
])
def test_generator_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        generate_nuscenes_mini(tmp_path, **kwargs)


def test_reader_rejects_bad_arguments(mini: Path, nusc: Any) -> None:
    with pytest.raises(ConfigError, match="does not belong"):
        NuScenesCameraDataset(mini, "v1.0-mini", "val", nusc=nusc)
    with pytest.raises(ConfigError, match="cameras"):
        NuScenesCameraDataset(mini, "v1.0-mini", "mini_val", cameras=("CAM_TOP",), nusc=nusc)
    with pytest.raises(NuScenesFormatError, match="version folder"):
        load_nuscenes(mini, "v1.0-trainval")


def test_missing_image_is_an_error_or_a_counted_skip(mini: Path, tmp_path: Path) -> None:
    root = _copy(mini, tmp_path)
    victim = sorted((root / "samples" / "CAM_BACK").glob("n008*.jpg"))[0]
    victim.unlink()
    with pytest.raises(NuScenesFormatError) as info:
        NuScenesCameraDataset(root, "v1.0-mini", "mini_val")
    assert info.value.path == victim and victim.name in str(info.value)
    ds = NuScenesCameraDataset(root, "v1.0-mini", "mini_val", missing_images="skip")
    assert len(ds) == 3 * 6 - 1 and ds.skipped["missing_image"] == 1


def _truncated(text: str) -> str:
    return text[: len(text) // 2]


def _dangling_category(text: str) -> str:
    records = json.loads(text)
    records[0]["category_token"] = "0" * 32
    return json.dumps(records)


@pytest.mark.parametrize(("name", "corrupt", "error"), [
    pytest.param("sample_annotation.json", _truncated, "sample_annotation.json.*truncated",
                 id="truncated"),
    pytest.param("instance.json", _dangling_category, "category_token", id="dangling-token"),
])
def test_bad_table_is_named(mini: Path, tmp_path: Path, name: str,
                            corrupt: Callable[[str], str], error: str) -> None:
    root = _copy(mini, tmp_path)
    table = root / "v1.0-mini" / name
    table.write_text(corrupt(table.read_text()))
    with pytest.raises(NuScenesFormatError, match=error) as info:
        load_nuscenes(root)
    assert info.value.path == table


def test_unknown_category_is_an_error_or_a_counted_skip(mini: Path, tmp_path: Path) -> None:
    root = _copy(mini, tmp_path)
    table = root / "v1.0-mini" / "category.json"
    records = json.loads(table.read_text())
    car = next(r for r in records if r["name"] == "vehicle.car")
    car["name"] = "vehicle.hovercraft"
    table.write_text(json.dumps(records, indent=0))
    with pytest.raises(NuScenesFormatError, match="hovercraft") as info:
        NuScenesCameraDataset(root, "v1.0-mini", "mini_val")
    assert info.value.path == table
    ds = NuScenesCameraDataset(root, "v1.0-mini", "mini_val", unknown_categories="skip",
                               load_images=False)
    assert ds.skipped["unknown_category"] == 1
    labels = torch.cat([ds[i].boxes.labels for i in range(len(ds))])
    assert labels.numel() > 0 and NUSCENES_CLASSES.index("car") not in labels.tolist()


def test_empty_scene_is_a_counted_skip(mini: Path, tmp_path: Path) -> None:
    root = _copy(mini, tmp_path)
    table = root / "v1.0-mini" / "scene.json"
    scenes = json.loads(table.read_text())
    scenes.append({**scenes[0], "token": "f" * 32, "name": "scene-0553", "nbr_samples": 0,
                   "first_sample_token": "", "last_sample_token": ""})
    table.write_text(json.dumps(scenes, indent=0))
    ds = NuScenesCameraDataset(root, "v1.0-mini", "mini_train", load_images=False)
    assert ds.skipped["empty_scene"] == 1 and ds.scene_names == ("scene-0061", "scene-0553")
    assert len(ds) == 3 * 6


def test_evaluation_rejects_incomplete_results(
    mini: Path, nusc: Any, val: NuScenesCameraDataset,
    gt_detections: dict[str, list[CameraDetections]], tmp_path: Path,
) -> None:
    path = tmp_path / "partial.json"
    write_results(path, {}, sample_tokens=val.sample_tokens[:1])
    with pytest.raises(NuScenesEvalError, match="partial.json"):
        evaluate(path, mini, "v1.0-mini", "mini_val", tmp_path / "eval", nusc=nusc)
    with pytest.raises(NuScenesFormatError, match="outside sample_tokens"):
        write_results(tmp_path / "x.json", gt_detections, sample_tokens=val.sample_tokens[:1])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(NuScenesFormatError, match="broken.json"):
        evaluate(tmp_path / "broken.json", mini, "v1.0-mini", "mini_val", tmp_path / "e",
                 nusc=nusc)


def test_sweeps_are_linked_between_key_frames(tmp_path: Path) -> None:
    from nuscenes.utils.data_classes import LidarPointCloud

    out = generate_nuscenes_mini(tmp_path, scenes=("scene-0061",), samples_per_scene=2,
                                 image_size=(64, 36), lidar_azimuth_steps=90, sweeps=True)
    # 12 Hz cameras: 5 sweeps between two key frames; 20 Hz lidar: 9.
    assert out.num_sample_data == 6 * (2 + 5) + (2 + 9)
    nusc = load_nuscenes(tmp_path)
    last = nusc.sample[-1]
    for channel, n_sweeps in (("CAM_BACK", 5), ("LIDAR_TOP", 9)):
        sd = nusc.get("sample_data", last["data"][channel])
        chain = []
        while sd["prev"]:
            sd = nusc.get("sample_data", sd["prev"])
            chain.append(sd)
        assert [r["is_key_frame"] for r in chain] == [False] * n_sweeps + [True]
        assert all(r["filename"].startswith(f"sweeps/{channel}/") for r in chain[:-1])
        assert all(r["sample_token"] == last["token"] for r in chain[:-1])
        stamps = [r["timestamp"] for r in chain]
        assert stamps == sorted(stamps, reverse=True)
        assert all((tmp_path / r["filename"]).is_file() for r in chain)
    lidar_sweep = chain[0]
    cloud = LidarPointCloud.from_file(str(tmp_path / lidar_sweep["filename"]))
    assert cloud.points.shape[0] == 4 and cloud.points.shape[1] > 100
    # The devkit interpolates the annotations to a sweep's timestamp.
    assert len(nusc.get_boxes(lidar_sweep["token"])) == len(last["anns"])


def test_results_without_detections_score_zero(
    mini: Path, nusc: Any, val: NuScenesCameraDataset, tmp_path: Path
) -> None:
    """DetectionEval cannot run on an empty box list; evaluate() reports the no-detection scores."""
    path = tmp_path / "empty.json"
    write_results(path, {}, sample_tokens=val.sample_tokens)
    scores = evaluate(path, mini, "v1.0-mini", "mini_val", tmp_path / "out", nusc=nusc)
    assert scores.nds == 0.0 and scores.mean_ap == 0.0
    assert scores.tp_errors == {k: 1.0 for k in
                                ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")}
    assert set(scores.per_class_ap) == set(NUSCENES_CLASSES)
    summary = json.loads(scores.summary_path.read_text())
    assert summary["nd_score"] == 0.0 and "no detections" in summary["note"]
