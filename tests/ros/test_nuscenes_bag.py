"""nuScenes → rosbag2 conversion and the venv bag player.

The bag is read back with rosbags and, independently, with the ``mcap`` reader, and compared
with what the nuScenes devkit reports for the same (generated, format-faithful) dataset.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

SCENE = "scene-0061"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini

    root = tmp_path_factory.mktemp("nuscenes")
    generate_nuscenes_mini(
        root, scenes=(SCENE,), samples_per_scene=2, image_size=(160, 90), sweeps=True, seed=3
    )
    return root


@pytest.fixture(scope="module")
def nusc(dataset: Path) -> Any:
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(dataset), verbose=False)


@pytest.fixture(scope="module")
def bag(dataset: Path, ros_runtime: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from epropnp_ros.nuscenes_bag import ConversionConfig, convert

    out = tmp_path_factory.mktemp("bags") / "scene"
    summary = convert(ConversionConfig(dataroot=str(dataset), output=str(out)))
    assert summary.path == out and summary.scenes == (SCENE,)
    return out


def _typestore() -> Any:
    from epropnp_ros.bag_writing import typestore

    return typestore()


def _read_all(path: Path) -> list[tuple[str, int, Any]]:
    """(topic, bag time, deserialised message) with rosbags."""
    from rosbags.highlevel import AnyReader

    store = _typestore()
    with AnyReader([path], default_typestore=store) as reader:
        return [
            (c.topic, t, reader.deserialize(raw, c.msgtype))
            for c, t, raw in reader.messages()
        ]


def _raw_messages(path: Path) -> list[tuple[str, int, bytes]]:
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


def _camera_records(nusc: Any, channel: str) -> list[dict[str, Any]]:
    return sorted(
        (sd for sd in nusc.sample_data if sd["channel"] == channel),
        key=lambda sd: sd["timestamp"],
    )


def test_topics_counts_frames_stamps_and_camera_info(bag: Path, nusc: Any) -> None:
    from epropnp_ros.messages import stamp_to_ns
    from epropnp_ros.nuscenes_bag import CAMERAS, camera_frame, camera_topics

    messages = _read_all(bag)
    counts = Counter(topic for topic, _, _ in messages)
    for channel in CAMERAS:
        records = _camera_records(nusc, channel)
        assert len(records) > 2, "sweeps are converted too"
        image_topic, info_topic = camera_topics(channel)
        assert counts[image_topic] == counts[info_topic] == len(records)
        infos = [m for topic, _, m in messages if topic == info_topic]
        images = [(t, m) for topic, t, m in messages if topic == image_topic]
        for record, info, (bag_time, image) in zip(records, infos, images, strict=True):
            calib = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
            assert info.header.frame_id == image.header.frame_id == camera_frame(channel)
            assert stamp_to_ns(info.header.stamp) == stamp_to_ns(image.header.stamp) == bag_time
            assert bag_time == record["timestamp"] * 1000
            np.testing.assert_allclose(info.k.reshape(3, 3), calib["camera_intrinsic"])
            assert (info.width, info.height) == (record["width"], record["height"])
            assert info.p[3] == 0.0 and info.p[0] == calib["camera_intrinsic"][0][0]
            jpeg = (Path(nusc.dataroot) / record["filename"]).read_bytes()
            assert image.format == "jpeg" and bytes(image.data) == jpeg  # passed through
    assert counts["/tf_static"] == 1
    for topic in ("detections", "objects", "attributes"):
        assert counts[f"/ground_truth/{topic}"] == len(nusc.sample)
    ego_tokens = {sd["ego_pose_token"] for sd in nusc.sample_data if sd["channel"] in CAMERAS}
    assert counts["/tf"] == len(ego_tokens)
    times = [t for _, t, _ in messages]
    assert times == sorted(times)


def test_independent_mcap_reader_agrees(bag: Path) -> None:
    from mcap.reader import make_reader

    rosbags_view = [(topic, t) for topic, t, _ in _raw_messages(bag)]
    [mcap_file] = bag.glob("*.mcap")
    with mcap_file.open("rb") as fh:
        reader = make_reader(fh)
        summary = reader.get_summary()
        assert summary is not None
        schemas = {s.name for s in summary.schemas.values()}
        assert {"sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo",
                "tf2_msgs/msg/TFMessage", "vision_msgs/msg/Detection3DArray"} <= schemas
        assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
        mcap_view = [(ch.topic, msg.log_time) for _, ch, msg in reader.iter_messages()]
    assert sorted(mcap_view) == sorted(rosbags_view)
    metadata = (bag / "metadata.yaml").read_text()
    assert "version: 8" in metadata and "storage_identifier: mcap" in metadata


def _matrix(translation: Any, quat_xyzw: Any) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(quat_xyzw).as_matrix()
    m[:3, 3] = translation
    return m


def _tf_matrix(tf: Any) -> np.ndarray:
    t, r = tf.transform.translation, tf.transform.rotation
    return _matrix([t.x, t.y, t.z], [r.x, r.y, r.z, r.w])


def _nusc_matrix(record: dict[str, Any]) -> np.ndarray:
    w, x, y, z = record["rotation"]
    return _matrix(record["translation"], [x, y, z, w])


def test_tf_lookup_reproduces_devkit_calibration(bag: Path, nusc: Any) -> None:
    """map → base_link (/tf at the image time) ∘ base_link → optical frame (/tf_static)."""
    from epropnp_ros.nuscenes_bag import CAMERAS, camera_frame

    messages = _read_all(bag)
    [tf_static] = [m for topic, _, m in messages if topic == "/tf_static"]
    static = {tf.child_frame_id: tf for tf in tf_static.transforms}
    assert set(static) == {camera_frame(c) for c in CAMERAS}
    assert {tf.header.frame_id for tf in static.values()} == {"base_link"}
    ego = {t: m.transforms[0] for topic, t, m in messages if topic == "/tf"}
    assert {tf.header.frame_id for tf in ego.values()} == {"map"}
    for channel in CAMERAS:
        for record in _camera_records(nusc, channel)[:3]:
            calib = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
            pose = nusc.get("ego_pose", record["ego_pose_token"])
            base_to_cam = _tf_matrix(static[camera_frame(channel)])
            np.testing.assert_allclose(base_to_cam, _nusc_matrix(calib), atol=1e-9)
            map_to_base = _tf_matrix(ego[pose["timestamp"] * 1000])
            np.testing.assert_allclose(
                map_to_base @ base_to_cam, _nusc_matrix(pose) @ _nusc_matrix(calib), atol=1e-9
            )


def test_ground_truth_boxes_match_annotations(bag: Path, nusc: Any) -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    arrays = [(t, m) for topic, t, m in _read_all(bag) if topic == "/ground_truth/detections"]
    samples = sorted(nusc.sample, key=lambda s: s["timestamp"])
    for (t, array), sample in zip(arrays, samples, strict=True):
        assert t == sample["timestamp"] * 1000 and array.header.frame_id == "map"
        anns = [nusc.get("sample_annotation", a) for a in sample["anns"]]
        anns = [a for a in anns if category_to_detection_name(a["category_name"]) is not None]
        assert len(array.detections) == len(anns) > 0
        for det, ann in zip(array.detections, anns, strict=True):
            assert det.id == ann["instance_token"]
            assert det.results[0].hypothesis.class_id == category_to_detection_name(
                ann["category_name"]
            )
            c = det.bbox.center
            np.testing.assert_allclose([c.position.x, c.position.y, c.position.z],
                                       ann["translation"])
            w, length, h = ann["size"]
            np.testing.assert_allclose([det.bbox.size.x, det.bbox.size.y, det.bbox.size.z],
                                       [length, w, h])
            q = c.orientation
            np.testing.assert_allclose([q.w, q.x, q.y, q.z], ann["rotation"])


def test_ground_truth_reads_back_in_the_devkits_form(bag: Path, nusc: Any) -> None:
    """Every sample's ground truth read back from the bag (``ground_truth_boxes`` of its three
    topics) equals its annotations: positions, sizes (wlh), full orientation in the map frame,
    class, instance, the devkit's velocity and the attribute."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    from epropnp_ros.errors import BagConversionError
    from epropnp_ros.nuscenes_bag import ground_truth_boxes

    messages = _read_all(bag)
    topics = ("detections", "objects", "attributes")
    per_topic = {k: [m for topic, _, m in messages if topic == f"/ground_truth/{k}"]
                 for k in topics}
    samples = sorted(nusc.sample, key=lambda s: s["timestamp"])
    assert all(len(v) == len(samples) for v in per_topic.values())
    moving = with_attribute = 0
    for i, sample in enumerate(samples):
        anns = [nusc.get("sample_annotation", a) for a in sample["anns"]]
        anns = [a for a in anns if category_to_detection_name(a["category_name"]) is not None]
        boxes = ground_truth_boxes(*(per_topic[k][i] for k in topics))
        assert len(boxes) == len(anns) > 0
        for box, ann in zip(boxes, anns, strict=True):
            np.testing.assert_allclose(box.translation, ann["translation"])
            np.testing.assert_allclose(box.size, ann["size"])
            np.testing.assert_allclose(box.rotation, ann["rotation"])
            assert box.detection_name == category_to_detection_name(ann["category_name"])
            assert box.instance_token == ann["instance_token"]
            np.testing.assert_allclose(box.velocity, nusc.box_velocity(ann["token"]),
                                       atol=1e-9, equal_nan=True)
            names = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
            assert box.attribute_name == (names[0] if names else "")
            moving += int(np.all(np.isfinite(box.velocity)))
            with_attribute += int(bool(box.attribute_name))
    assert moving > 0 and with_attribute > 0  # the check covers both fields
    detections, objects = per_topic["detections"][0], per_topic["objects"][0]
    with pytest.raises(BagConversionError, match="0 ground-truth objects for"):
        ground_truth_boxes(detections, type(objects)(header=objects.header, objects=[]))
    detections.header.frame_id = "base_link"
    with pytest.raises(BagConversionError, match="ground truth is in 'map'"):
        ground_truth_boxes(detections)


def test_converting_twice_gives_identical_messages(
    bag: Path, dataset: Path, tmp_path: Path
) -> None:
    from epropnp_ros.nuscenes_bag import ConversionConfig, convert

    again = tmp_path / "again"
    convert(ConversionConfig(dataroot=str(dataset), output=str(again)))
    assert _raw_messages(again) == _raw_messages(bag)


def test_raw_images_in_sqlite3(dataset: Path, nusc: Any, tmp_path: Path) -> None:
    import cv2

    from epropnp_ros.nuscenes_bag import ConversionConfig, convert

    out = tmp_path / "raw"
    convert(ConversionConfig(dataroot=str(dataset), output=str(out), storage="sqlite3",
                             image_format="raw", cameras=("CAM_BACK",), sweeps=False,
                             ground_truth=False))
    assert list(out.glob("*.db3"))
    images = [m for topic, _, m in _read_all(out) if topic == "/cam_back/image_raw"]
    records = [r for r in _camera_records(nusc, "CAM_BACK") if r["is_key_frame"]]
    assert len(images) == len(records)
    for image, record in zip(images, records, strict=True):
        expected = cv2.imread(str(Path(nusc.dataroot) / record["filename"]))[:, :, ::-1]
        assert image.encoding == "rgb8" and image.step == image.width * 3
        assert np.array_equal(image.data.reshape(image.height, image.width, 3), expected)


def test_bad_data_gives_clear_errors(dataset: Path, tmp_path: Path) -> None:
    import shutil

    from epropnp_ros.errors import BagConversionError
    from epropnp_ros.nuscenes_bag import ConversionConfig, convert, convert_scenes

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    out = tmp_path / "out"
    with pytest.raises(BagConversionError, match="unknown-scene"):
        convert(ConversionConfig(dataroot=str(broken), output=str(out), scenes=("unknown-scene",)))
    with pytest.raises(BagConversionError, match="unknown-scene"):  # before any bag is written
        convert_scenes(ConversionConfig(dataroot=str(broken), output=str(out),
                                        scenes=(SCENE, "unknown-scene")))
    assert not out.exists()

    jpg = next((broken / "samples" / "CAM_FRONT").glob("*.jpg"))
    jpg.unlink()
    with pytest.raises(BagConversionError, match="image file missing: .*" + re.escape(jpg.name)):
        convert(ConversionConfig(dataroot=str(broken), output=str(out)))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]

    table = broken / "v1.0-mini" / "sample_data.json"
    table.write_text(table.read_text()[:500])
    with pytest.raises(BagConversionError, match="sample_data.json: not valid JSON"):
        convert(ConversionConfig(dataroot=str(broken), output=str(out)))
    table.unlink()
    with pytest.raises(BagConversionError, match="sample_data.json: table file is missing"):
        convert(ConversionConfig(dataroot=str(broken), output=str(out)))

    out.mkdir()
    with pytest.raises(BagConversionError, match="exists"):
        convert(ConversionConfig(dataroot=str(dataset), output=str(out)))


KILL_SCRIPT = """
import os, signal, sys
import epropnp_ros.nuscenes_bag as nb
calls = 0
original = nb._Builder.image
def dying_image(*args):
    global calls
    calls += 1
    if calls == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args)
nb._Builder.image = dying_image
nb.convert(nb.ConversionConfig(dataroot=sys.argv[1], output=sys.argv[2]))
"""


def test_killed_converter_leaves_no_complete_looking_bag(
    dataset: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    out = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(dataset), str(out)],
        env=child_env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -9, proc.stderr
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.partial-")]
    assert len(leftovers) == 1  # the hidden staging directory of the killed run, nothing else
    # The next run removes it (its process no longer lives) and writes the bag.
    from epropnp_ros.nuscenes_bag import ConversionConfig, convert

    convert(ConversionConfig(dataroot=str(dataset), output=str(out), cameras=("CAM_FRONT",),
                             sweeps=False))
    assert out.is_dir()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_cli(dataset: Path, tmp_path: Path, child_env: dict[str, str]) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "epropnp_ros.nuscenes_bag", "--dataroot", str(dataset), "--out",
         str(out), "--cameras", "CAM_FRONT", "--key-frames-only", "--quiet"],
        env=child_env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # One bag per scene by default: <out>/<scene>.
    assert f"wrote {out / SCENE}" in proc.stdout and (out / SCENE / "metadata.yaml").is_file()
    assert "/cam_front/image_raw/compressed: 2" in proc.stdout
    merged = tmp_path / "merged"
    proc = subprocess.run(
        [sys.executable, "-m", "epropnp_ros.nuscenes_bag", "--dataroot", str(dataset), "--out",
         str(merged), "--cameras", "CAM_FRONT", "--key-frames-only", "--quiet", "--merge"],
        env=child_env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (merged / "metadata.yaml").is_file()
    proc = subprocess.run(
        [sys.executable, "-m", "epropnp_ros.nuscenes_bag", "--dataroot", str(tmp_path / "none"),
         "--out", str(tmp_path / "x")],
        env=child_env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "version folder not found" in proc.stderr


def test_player_publishes_with_recorded_qos_and_clock(bag: Path, rclpy_node: Any) -> None:
    """Every message arrives; /tf_static is still delivered to a subscriber that comes late."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, CompressedImage
    from tf2_msgs.msg import TFMessage

    from epropnp_ros.bag_player import PlayConfig, play

    node = rclpy_node
    received: Counter[str] = Counter()
    clock_stamps: list[int] = []
    for topic, cls in (("/cam_front/image_raw/compressed", CompressedImage),
                       ("/cam_front/camera_info", CameraInfo)):
        node.create_subscription(cls, topic, lambda _m, t=topic: received.update([t]), 100)
    node.create_subscription(
        Clock, "/clock", lambda m: clock_stamps.append(m.clock.sec * 10**9 + m.clock.nanosec), 100
    )
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        player = rclpy.create_node("bag_player_under_test", context=node.context)
        stats = play(
            PlayConfig(bag=str(bag), rate=20.0, clock=True,
                       wait_for=("/cam_front/image_raw/compressed", "/clock")),
            node=player,
        )
        expected = Counter(topic for topic, _, _ in _raw_messages(bag))
        assert stats.messages == dict(sorted(expected.items()))
        topics = ("/cam_front/image_raw/compressed", "/cam_front/camera_info")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(received[t] < expected[t] for t in topics):
            time.sleep(0.05)
        assert [received[t] for t in topics] == [expected[t] for t in topics]
        # /clock follows the bag time (KEEP_LAST 10: a slow subscriber may miss some ticks, never
        # the order or the last one).
        last_time = max(t for _, t, _ in _raw_messages(bag))
        deadline = time.monotonic() + 10
        while (not clock_stamps or clock_stamps[-1] != last_time) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert clock_stamps == sorted(clock_stamps) and clock_stamps[-1] == last_time
        assert len(clock_stamps) <= sum(expected.values())

        late: list[Any] = []
        node.create_subscription(
            TFMessage, "/tf_static", late.append,
            QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL),
        )
        deadline = time.monotonic() + 10
        while not late and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(late) == 1 and len(late[0].transforms) == 6
        player.destroy_node()
    finally:
        executor.shutdown()
        spinner.join(timeout=5)


def test_player_errors(tmp_path: Path, bag: Path, rclpy_node: Any) -> None:
    from epropnp_lib.errors import ConfigError
    from epropnp_ros.bag_player import PlayConfig, play
    from epropnp_ros.errors import BagPlayError

    with pytest.raises(BagPlayError, match="bag not found"):
        play(PlayConfig(bag=str(tmp_path / "none")), node=rclpy_node)
    with pytest.raises(BagPlayError, match="not in"):
        play(PlayConfig(bag=str(bag), topics=("/nope",)), node=rclpy_node)
    with pytest.raises(BagPlayError, match="no subscriber on /nobody"):
        play(PlayConfig(bag=str(bag), wait_for=("/nobody",), wait_timeout=0.2), node=rclpy_node)
    with pytest.raises(ConfigError):
        PlayConfig(bag="x", rate=0.0)


@pytest.mark.parametrize(("table", "field"), [
    ("scene", "first_sample_token"), ("scene", "last_sample_token"), ("sample", "scene_token"),
    ("sample", "next"), ("sample_data", "sample_token"), ("sample_data", "ego_pose_token"),
    ("sample_data", "calibrated_sensor_token"), ("sample_data", "prev"),
])
def test_dangling_tokens_are_refused_before_anything_is_written(
    dataset: Path, tmp_path: Path, table: str, field: str
) -> None:
    """Each token the converter follows, made dangling in one record: a BagConversionError that
    names the table, the field and the token; no bag and no staging directory."""
    import json
    import shutil

    from epropnp_ros.errors import BagConversionError
    from epropnp_ros.nuscenes_bag import ConversionConfig, convert

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    path = broken / "v1.0-mini" / f"{table}.json"
    records = json.loads(path.read_text())
    victim = next(r for r in records if r[field])  # a record whose link is set
    victim[field] = "dangling0123456789abcdef"
    path.write_text(json.dumps(records))
    out = tmp_path / "out"
    with pytest.raises(BagConversionError,
                       match=rf"{table}\.json: record .*: {field} 'dangling0123456789abcdef'"):
        convert(ConversionConfig(dataroot=str(broken), output=str(out)))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_logs_with_different_extrinsics_never_share_a_bag(tmp_path: Path) -> None:
    """Two scenes of two logs whose CAM_FRONT was mounted 0.5 m apart: one bag for both is
    refused (naming the camera and both logs); each scene alone converts, and its /tf_static
    carries its own log's extrinsics."""
    import json

    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
    from epropnp_ros.errors import BagConversionError
    from epropnp_ros.nuscenes_bag import ConversionConfig, camera_frame, convert, convert_scenes

    root = tmp_path / "two_logs"
    generate_nuscenes_mini(root, scenes=("scene-0103", "scene-0916"), samples_per_scene=2,
                           image_size=(160, 90), seed=3)
    tables = root / "v1.0-mini"

    def load(name: str) -> list[dict[str, Any]]:
        return json.loads((tables / f"{name}.json").read_text())

    scenes = {s["name"]: s for s in load("scene")}
    logs = {lg["token"]: lg["logfile"] for lg in load("log")}
    sample_scene = {s["token"]: s["scene_token"] for s in load("sample")}
    channel = {s["token"]: s["channel"] for s in load("sensor")}
    calibs = load("calibrated_sensor")
    front = {c["token"] for c in calibs if channel[c["sensor_token"]] == "CAM_FRONT"}
    moved = next(sd["calibrated_sensor_token"] for sd in load("sample_data")
                 if sd["calibrated_sensor_token"] in front
                 and sample_scene[sd["sample_token"]] == scenes["scene-0916"]["token"])
    for c in calibs:
        if c["token"] == moved:
            c["translation"][0] += 0.5
            moved_translation = c["translation"]
    (tables / "calibrated_sensor.json").write_text(json.dumps(calibs))

    # By default: one bag per scene, each with its own log's extrinsics (below).
    summaries = convert_scenes(ConversionConfig(dataroot=str(root), output=str(tmp_path / "per")))
    assert [s.path.name for s in summaries] == ["scene-0103", "scene-0916"]
    with pytest.raises(BagConversionError) as err:
        convert(ConversionConfig(dataroot=str(root), output=str(tmp_path / "both")))
    message = str(err.value)
    assert "CAM_FRONT" in message
    assert all(logs[scenes[s]["log_token"]] in message for s in ("scene-0103", "scene-0916"))
    assert not (tmp_path / "both").exists()

    translations = {}
    for name in ("scene-0103", "scene-0916"):
        out = tmp_path / "per" / name
        (tf_static,) = [m for topic, _, m in _read_all(out) if topic == "/tf_static"]
        (cam,) = [t for t in tf_static.transforms
                  if t.child_frame_id == camera_frame("CAM_FRONT")]
        translations[name] = [cam.transform.translation.x, cam.transform.translation.y,
                              cam.transform.translation.z]
    np.testing.assert_allclose(translations["scene-0916"], moved_translation, atol=1e-9)
    np.testing.assert_allclose(np.subtract(translations["scene-0916"],
                                           translations["scene-0103"]), [0.5, 0.0, 0.0],
                               atol=1e-9)
