"""nuScenes -> rosbag2: camera images, CameraInfo, TF and ground truth that any ROS 2 user can play.

Topics, for the selected scenes and cameras (``<cam>`` = the channel in lower case, e.g.
``cam_front``, frame ``<cam>_optical_frame``; nuScenes camera frames are optical frames already):
``/<cam>/image_raw/compressed`` (the JPEG bytes as stored) or ``/<cam>/image_raw`` (``rgb8``),
``/<cam>/camera_info`` (K of the devkit's ``camera_intrinsic``, D = 0: the images are
rectified), ``/tf_static`` (``base_link`` -> each camera frame, transient local), ``/tf``
(``map`` -> ``base_link``, the ego pose of each image) and the ground truth of each key frame
in ``map`` (``/ground_truth/detections``, ``/ground_truth/objects`` with the velocities,
``/ground_truth/attributes``: :mod:`epropnp_ros.nuscenes_ground_truth`). Stamps and bag times
are the dataset's timestamps (us -> ns). Messages are built and serialised with ``rosbags``
(converting twice gives identical bytes); the bag is written under a hidden directory and
renamed into place only when complete. The CLI writes one
bag per scene by default (:func:`convert_scenes`); one bag holds one ``/tf_static``, so scenes of
logs with different camera extrinsics are refused in one bag.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from epropnp_lib.data.nuscenes import CAMERAS, NuScenesFormatError, load_nuscenes
from epropnp_lib.data.nuscenes.loading import dangling_reference
from epropnp_lib.errors import ConfigError
from epropnp_ros.bag_writing import (
    TF_STATIC_TOPIC,
    TF_TOPIC,
    BagEvent,
    MessageBuilder,
    bind,
    typestore,
    write_bag,
)
from epropnp_ros.errors import BagConversionError
from epropnp_ros.nuscenes_ground_truth import (
    GT_ATTRIBUTES_TOPIC,
    GT_OBJECTS_TOPIC,
    GT_TOPIC,
    MAP_FRAME,
    GroundTruthBox,
    ground_truth_boxes,
    ground_truth_messages,
    sample_ground_truth,
)

__all__ = [
    "CAMERAS",
    "ConversionConfig",
    "ConversionSummary",
    "camera_frame",
    "camera_topics",
    "convert",
    "convert_scenes",
    "GroundTruthBox",
    "ground_truth_boxes",
    "main",
]

LOGGER = logging.getLogger(__name__)

BASE_FRAME = "base_link"


def camera_frame(channel: str) -> str:
    """Optical frame id of a camera channel: ``CAM_FRONT`` → ``cam_front_optical_frame``."""
    return f"{channel.lower()}_optical_frame"


def camera_topics(channel: str, image_format: str = "compressed") -> tuple[str, str]:
    """(image topic, camera_info topic) of a camera channel."""
    base = f"/{channel.lower()}"
    image = f"{base}/image_raw/compressed" if image_format == "compressed" else f"{base}/image_raw"
    return image, f"{base}/camera_info"


@dataclass(frozen=True)
class ConversionConfig:
    """What to convert.

    Attributes:
        dataroot: nuScenes root (holds ``<version>/``, ``samples/``, ``sweeps/``).
        output: bag directory to create (must not exist).
        version: table version, e.g. ``v1.0-mini``.
        scenes: scene names to convert; empty = every scene of the version.
        cameras: camera channels; default all six.
        storage: ``mcap`` (default since ROS 2 Iron) or ``sqlite3``.
        image_format: ``compressed`` (JPEG as stored) or ``raw`` (decoded ``rgb8``).
        sweeps: also convert the non-key-frame camera images (12 Hz instead of 2 Hz).
        ground_truth: write ``/ground_truth/detections``.
        progress: show a progress bar.
    """

    dataroot: str
    output: str
    version: str = "v1.0-mini"
    scenes: tuple[str, ...] = ()
    cameras: tuple[str, ...] = CAMERAS
    storage: Literal["mcap", "sqlite3"] = "mcap"
    image_format: Literal["compressed", "raw"] = "compressed"
    sweeps: bool = True
    ground_truth: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.cameras) - set(CAMERAS))
        if unknown or not self.cameras:
            raise ConfigError(f"cameras must be a non-empty subset of {CAMERAS}, got {unknown}")
        if self.storage not in ("mcap", "sqlite3"):
            raise ConfigError(f"storage must be 'mcap' or 'sqlite3', got {self.storage!r}")
        if self.image_format not in ("compressed", "raw"):
            raise ConfigError(
                f"image_format must be 'compressed' or 'raw', got {self.image_format!r}"
            )


class ConversionSummary(NamedTuple):
    """What was written."""

    path: Path
    message_counts: dict[str, int]
    scenes: tuple[str, ...]
    start_ns: int
    end_ns: int


# --- reading the dataset ------------------------------------------------------------------------


def _load_nuscenes(dataroot: Path, version: str) -> Any:
    try:
        nusc = load_nuscenes(dataroot, version)
    except NuScenesFormatError as exc:  # names the missing / broken file
        raise BagConversionError(str(exc)) from exc
    check_references(nusc, dataroot / version)
    return nusc


#: The tokens the converter follows: (table, field, target table, may be empty).
FOLLOWED_TOKENS: tuple[tuple[str, str, str, bool], ...] = (
    ("scene", "first_sample_token", "sample", False),
    ("scene", "last_sample_token", "sample", False),
    ("scene", "log_token", "log", False),
    ("sample", "scene_token", "scene", False),
    ("sample", "prev", "sample", True),
    ("sample", "next", "sample", True),
    ("sample_data", "sample_token", "sample", False),
    ("sample_data", "ego_pose_token", "ego_pose", False),
    ("sample_data", "calibrated_sensor_token", "calibrated_sensor", False),
    ("sample_data", "prev", "sample_data", True),
    ("sample_data", "next", "sample_data", True),
    ("calibrated_sensor", "sensor_token", "sensor", False),
    ("sample_annotation", "sample_token", "sample", False),
)


def check_references(nusc: Any, table_root: Path) -> None:
    """Check every token the converter follows (:data:`FOLLOWED_TOKENS`) before anything is
    written: the devkit loads some broken datasets without complaint.

    Raises:
        BagConversionError: naming the table, the record, the field and the dangling token.
    """
    names = {n for table, _, target, _ in FOLLOWED_TOKENS for n in (table, target)}
    found = dangling_reference({n: getattr(nusc, n) for n in names}, FOLLOWED_TOKENS, table_root)
    if found is not None:
        raise BagConversionError(str(found))


def _scene_sample_data(
    nusc: Any, scene: dict[str, Any], channel: str, sweeps: bool
) -> Iterator[dict[str, Any]]:
    """The camera's sample_data records of a scene in time order (key frames, plus sweeps)."""
    first = nusc.get("sample", scene["first_sample_token"])
    if channel not in first["data"]:
        raise BagConversionError(f"scene {scene['name']}: no {channel} data in its first sample")
    record = nusc.get("sample_data", first["data"][channel])
    # Sweeps before the first key frame belong to the scene too: walk back to the first.
    while sweeps and record["prev"]:
        prev = nusc.get("sample_data", record["prev"])
        if nusc.get("sample", prev["sample_token"])["scene_token"] != scene["token"]:
            break
        record = prev
    while True:
        if nusc.get("sample", record["sample_token"])["scene_token"] != scene["token"]:
            return
        if sweeps or record["is_key_frame"]:
            yield record
        if not record["next"]:
            return
        record = nusc.get("sample_data", record["next"])


# --- message building (rosbags message classes: pure Python, deterministic CDR) ------------------


class _Builder(MessageBuilder):
    """The shared message builder plus the nuScenes ground truth (built once per sample)."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self._ground_truth: dict[str, tuple[Any, ...]] = {}

    def ground_truth(self, nusc: Any, sample: dict[str, Any], stamp_ns: int) -> tuple[Any, ...]:
        """The sample's three ground-truth messages (:mod:`epropnp_ros.nuscenes_ground_truth`),
        built once per sample."""
        cached = self._ground_truth.get(sample["token"])
        if cached is None:
            cached = ground_truth_messages(self.t, lambda: self.header(stamp_ns, MAP_FRAME),
                                           sample_ground_truth(nusc, sample))
            self._ground_truth = {sample["token"]: cached}
        return cached


# --- writing --------------------------------------------------------------------------------------


def _same_extrinsics(
    first: tuple[dict[str, Any], str], calib: dict[str, Any], log: str, channel: str
) -> None:
    """Refuse to put two different extrinsics of one camera into one bag's ``/tf_static``:
    ``first`` is the calibration (and its log) the bag already holds for ``channel``."""
    held, held_log = first
    if not (np.allclose(held["translation"], calib["translation"], rtol=0.0, atol=1e-9)
            and np.allclose(held["rotation"], calib["rotation"], rtol=0.0, atol=1e-12)):
        raise BagConversionError(
            f"{channel} is calibrated differently in log {held_log} and in log {log}: one bag "
            f"has one /tf_static, so convert the scenes of these logs into separate bags"
        )


def _events(
    nusc: Any, config: ConversionConfig, dataroot: Path, build: _Builder
) -> tuple[list[BagEvent], list[str]]:
    scenes = {s["name"]: s for s in nusc.scene}
    names = list(config.scenes) or sorted(scenes)
    missing = [n for n in names if n not in scenes]
    if missing:
        raise BagConversionError(
            f"scene(s) {missing} not in {dataroot / config.version / 'scene.json'}; "
            f"available: {sorted(scenes)}"
        )
    events: list[BagEvent] = []
    static: dict[str, tuple[dict[str, Any], str]] = {}  # frame -> (calibration, its log)
    first_stamp: int | None = None
    ego_seen: set[str] = set()
    for name in names:
        scene = scenes[name]
        if scene["nbr_samples"] == 0 or not scene["first_sample_token"]:
            raise BagConversionError(f"scene {name} has no samples")
        log = nusc.get("log", scene["log_token"])["logfile"]
        for channel in config.cameras:
            frame = camera_frame(channel)
            image_topic, info_topic = camera_topics(channel, config.image_format)
            for sd in _scene_sample_data(nusc, scene, channel, config.sweeps):
                stamp = int(sd["timestamp"]) * 1000
                first_stamp = stamp if first_stamp is None else min(first_stamp, stamp)
                calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
                _same_extrinsics(static.setdefault(frame, (calib, log)), calib, log, channel)
                if sd["ego_pose_token"] not in ego_seen:
                    ego_seen.add(sd["ego_pose_token"])
                    ego = nusc.get("ego_pose", sd["ego_pose_token"])
                    ego_stamp = int(ego["timestamp"]) * 1000
                    events.append(BagEvent(ego_stamp, 0, TF_TOPIC, bind(
                        _ego_tf, build, ego_stamp, ego)))
                w, h, k = sd["width"], sd["height"], calib["camera_intrinsic"]
                events.append(BagEvent(stamp, 1, info_topic, bind(
                    build.camera_info, stamp, frame, w, h, k)))
                events.append(BagEvent(stamp, 2, image_topic, bind(
                    build.image, stamp, frame, dataroot / sd["filename"], config.image_format)))
        if config.ground_truth:
            token = scene["first_sample_token"]
            while token:
                sample = nusc.get("sample", token)
                stamp = int(sample["timestamp"]) * 1000
                for k, topic in enumerate((GT_TOPIC, GT_OBJECTS_TOPIC, GT_ATTRIBUTES_TOPIC)):
                    events.append(BagEvent(stamp, 3 + k, topic, bind(
                        _nth, build.ground_truth, k, nusc, sample, stamp)))
                token = sample["next"]
    if first_stamp is None:
        raise BagConversionError("nothing to convert: no camera data in the selected scenes")
    tf_static = [
        build.transform(first_stamp, BASE_FRAME, frame, calib)
        for frame, (calib, _) in sorted(static.items())
    ]
    events.append(BagEvent(first_stamp, -1, TF_STATIC_TOPIC, bind(build.tf_message, tf_static)))
    events.sort(key=lambda e: (e.stamp_ns, e.order, e.topic))
    return events, names


def _ego_tf(build: _Builder, stamp_ns: int, ego: dict[str, Any]) -> Any:
    return build.tf_message([build.transform(stamp_ns, MAP_FRAME, BASE_FRAME, ego)])


def _nth(fn: Callable[..., tuple[Any, ...]], k: int, *args: Any) -> Any:
    return fn(*args)[k]


TOPIC_TYPES = {
    "image_raw/compressed": "sensor_msgs/msg/CompressedImage",
    "image_raw": "sensor_msgs/msg/Image",
    "camera_info": "sensor_msgs/msg/CameraInfo",
}


def _topic_type(topic: str) -> str:
    if topic in (TF_TOPIC, TF_STATIC_TOPIC):
        return "tf2_msgs/msg/TFMessage"
    if topic == GT_TOPIC:
        return "vision_msgs/msg/Detection3DArray"
    if topic == GT_OBJECTS_TOPIC:
        return "autoware_perception_msgs/msg/DetectedObjects"
    if topic == GT_ATTRIBUTES_TOPIC:
        return "vision_msgs/msg/Classification"
    for suffix, type_name in TOPIC_TYPES.items():
        if topic.endswith("/" + suffix):
            return type_name
    raise AssertionError(f"no type for topic {topic}")  # internal: every topic is listed above


def convert(config: ConversionConfig) -> ConversionSummary:
    """Convert nuScenes scenes to a rosbag2 (see the module docstring for its contents).

    The bag is written into a hidden staging directory beside ``output`` and moved into place
    when complete; staging directories of killed runs are removed by the next run.

    Raises:
        BagConversionError: a table or image file is missing or broken (named), a scene is
            unknown or empty, or the output exists.
    """
    output = Path(config.output)
    if output.exists():
        raise BagConversionError(f"output {output} exists; remove it or choose another name")
    return _convert_loaded(_load_nuscenes(Path(config.dataroot), config.version), config)


def convert_scenes(config: ConversionConfig) -> list[ConversionSummary]:
    """One bag per scene: ``config.output / <scene name>`` for each of ``config.scenes`` (every
    scene of the version when empty), each with its own log's ``/tf_static``.

    Raises:
        BagConversionError: as :func:`convert`; every output is checked before any is written.
    """
    dataroot, root = Path(config.dataroot), Path(config.output)
    nusc = _load_nuscenes(dataroot, config.version)
    known = {s["name"] for s in nusc.scene}
    names = list(config.scenes) or sorted(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BagConversionError(f"scene(s) {unknown} not in "
                                 f"{dataroot / config.version / 'scene.json'}; available: "
                                 f"{sorted(known)}")
    outputs = [root / name for name in names]
    existing = [str(p) for p in outputs if p.exists()]
    if existing:
        raise BagConversionError(f"outputs {existing} exist; remove them or choose another --out")
    return [_convert_loaded(nusc, dataclasses.replace(config, scenes=(name,), output=str(out)))
            for name, out in zip(names, outputs, strict=True)]


def _convert_loaded(nusc: Any, config: ConversionConfig) -> ConversionSummary:
    """:func:`convert` of a loaded dataset."""
    dataroot = Path(config.dataroot)
    output = Path(config.output)
    store = typestore()
    events, scenes = _events(nusc, config, dataroot, _Builder(store))
    counts = write_bag(output, events, store, _topic_type, storage=config.storage,
                       progress=config.progress)
    return ConversionSummary(
        output, counts, tuple(scenes), events[0].stamp_ns, events[-1].stamp_ns
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``epropnp-nuscenes-to-bag --dataroot DIR --out DIR [--scenes ...] [--merge] ...``:
    one bag per scene (``DIR/<scene>``), or one bag at ``--out`` with ``--merge``."""
    parser = argparse.ArgumentParser(
        prog="epropnp-nuscenes-to-bag",
        description="Convert nuScenes scenes (camera images, CameraInfo, TF, ground truth) to a "
        "rosbag2 that `ros2 bag play` and `epropnp-bag-play` replay.",
    )
    parser.add_argument("--dataroot", required=True, help="nuScenes root folder")
    parser.add_argument("--out", required=True,
                        help="directory of the bags, one per scene (with --merge: the bag)")
    parser.add_argument("--merge", action="store_true",
                        help="one bag for all the scenes (refused when their logs' camera "
                        "calibrations differ)")
    parser.add_argument("--version", default="v1.0-mini", help="table version (default v1.0-mini)")
    parser.add_argument("--scenes", nargs="*", default=[], help="scene names (default: all)")
    parser.add_argument("--cameras", nargs="*", default=list(CAMERAS), help="camera channels")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--raw", action="store_true", help="decoded rgb8 Image instead of JPEG")
    parser.add_argument("--key-frames-only", action="store_true", help="skip camera sweeps")
    parser.add_argument("--no-ground-truth", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = ConversionConfig(
            dataroot=args.dataroot,
            output=args.out,
            version=args.version,
            scenes=tuple(args.scenes),
            cameras=tuple(args.cameras),
            storage=args.storage,
            image_format="raw" if args.raw else "compressed",
            sweeps=not args.key_frames_only,
            ground_truth=not args.no_ground_truth,
            progress=not args.quiet,
        )
        summaries = [convert(config)] if args.merge else convert_scenes(config)
    except (BagConversionError, ConfigError) as exc:
        print(f"epropnp-nuscenes-to-bag: error: {exc}", file=sys.stderr)
        return 2
    for summary in summaries:
        print(f"wrote {summary.path}")
        for topic, count in summary.message_counts.items():
            print(f"  {topic}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
