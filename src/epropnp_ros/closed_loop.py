"""The closed loop: bag -> detector node(s) -> recorded detections -> nuScenes results -> score.

``epropnp-closed-loop --bag BAG [BAG ...] --checkpoint CKPT --dataroot NUSCENES --out DIR``
starts one ``rig_detector`` node process for all cameras of the bag
(``/<cam>/image_raw/compressed`` and ``/<cam>/camera_info`` in; detections fused in ``map``
through the bag's ``/tf_static`` and ``/tf`` on ``/epropnp_rig/detections``, and each camera's
own on ``/<cam>/detections`` for the rendering) and plays the bag's key frames in *lockstep*:
the images of one sample are published, then the player waits for the fused ``Detection3DArray``
(a sample without one within ``frame_timeout`` counts its images as dropped). With
``--per-camera`` it starts one ``detector`` node process per camera instead, in the camera's
namespace (``detections`` and ``pose_samples`` out), and waits for each image's detections in
turn; the cameras are then merged when the results are written (camera frame -> global). The
detections are written as the nuScenes results JSON, scored with the devkit's ``DetectionEval``
and, unless ``--no-render``, drawn onto the images. ``DIR`` receives ``results_nusc.json``,
``scores.json``, the devkit's metrics files and ``frames/*.jpg`` + ``detections.mp4``. Several
bags (or a directory of bags, as ``epropnp-nuscenes-to-bag`` writes one per scene) are played
one after the other into one evaluation; each gets fresh node processes and publishers, so
scenes of logs with different camera extrinsics and intrinsics each see their own ``/tf_static``
and ``CameraInfo`` (their logs go to ``DIR/logs/<bag name>/``). Velocities and attributes come
from the nodes' ``DetectedObjects`` and ``detection_attributes`` of the same stamp
(:mod:`epropnp_ros.autoware`). The nodes run with their default input QoS (best effort, sensor
data) and the project's Fast DDS profile (:mod:`epropnp_ros.dds`): an image lost in transport is
a dropped frame in ``scores.json``, not hidden by a reliable override.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import rclpy
from autoware_perception_msgs.msg import DetectedObjects
from geometry_msgs.msg import PoseArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from tqdm import tqdm
from vision_msgs.msg import Classification, Detection3DArray

from epropnp_lib.data.nuscenes import (
    CameraDetections,
    load_nuscenes,
)
from epropnp_lib.errors import ConfigError, EProPnPError
from epropnp_ros.bag_player import create_publishers
from epropnp_ros.closed_loop_cameras import (
    Camera,
    collect,
    subscribe_outputs,
    wait_for_frame,
)
from epropnp_ros.closed_loop_rig import (
    RIG_NAMESPACE,
    FusedRecorder,
    fused_detections,
    rig_command,
)
from epropnp_ros.closed_loop_scoring import (
    camera_calibration,
    heading_report,
    rig_calibration,
    write_scores,
)
from epropnp_ros.dds import DISCOVERY_SETTLE_S, release_rclpy, use_profile
from epropnp_ros.detection_video import render_detections
from epropnp_ros.errors import ClosedLoopError

__all__ = ["ClosedLoopConfig", "ClosedLoopError", "ClosedLoopResult", "main", "resolve_bags",
           "run_closed_loop"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClosedLoopConfig:
    """Closed-loop settings (see the module docstring).

    Attributes:
        bags: bags written by ``epropnp-nuscenes-to-bag`` (compressed images), played in this
            order; a directory that is not a bag stands for the bags directly inside it.
        checkpoint: ``deformable_correspondence_net`` checkpoint for the detector nodes.
        dataroot: the nuScenes root the bag was made from (calibration, ego poses, evaluation).
        out: output directory.
        version: nuScenes table version.
        eval_set: devkit split to evaluate (its scenes must be in the bag).
        cameras: camera channels to run (default: every camera in the bag).
        detector_params: extra detector parameters as ``name:=value``.
        frame_timeout: seconds to wait for the detections of one image.
        startup_timeout: seconds to wait for the detector nodes to come up.
        render: draw the detections onto the images (JPEGs + MP4).
        per_camera: one ``detector`` node per camera instead of one ``rig_detector`` node.
    """

    bags: tuple[str, ...]
    checkpoint: str
    dataroot: str
    out: str
    version: str = "v1.0-mini"
    eval_set: str = "mini_val"
    cameras: tuple[str, ...] = ()
    detector_params: tuple[str, ...] = ()
    frame_timeout: float = 60.0
    startup_timeout: float = 180.0
    render: bool = True
    per_camera: bool = False

    def __post_init__(self) -> None:
        if not self.bags:
            raise ConfigError("no bag to play")
        if not (self.frame_timeout > 0 and self.startup_timeout > 0):
            raise ConfigError("frame_timeout and startup_timeout must be positive")
        for p in self.detector_params:
            if ":=" not in p:
                raise ConfigError(f"detector parameter {p!r} is not of the form name:=value")


class ClosedLoopResult(NamedTuple):
    """What the closed loop produced."""

    results_path: Path
    scores_path: Path
    scores: dict[str, Any]
    video_path: Path | None
    frames_processed: int
    frames_dropped: int


def _detector_command(camera: Camera, config: ClosedLoopConfig) -> list[str]:
    params_file = Path(__file__).resolve().parents[2] / "config" / "detector.yaml"
    cmd = [sys.executable, "-m", "epropnp_ros.nodes.detector", "--ros-args"]
    if params_file.is_file():
        cmd += ["--params-file", str(params_file)]
    cmd += [
        "-r", f"__ns:={camera.namespace}",
        "-r", "image/compressed:=image_raw/compressed",
        "-p", f"checkpoint:={Path(config.checkpoint).resolve()}",
        "-p", "autostart:=true",
        "-p", "image_transport:=compressed",
        "-p", "publish_markers:=false",
    ]
    for p in config.detector_params:
        cmd += ["-p", p]
    return cmd


class _EvalFrames(NamedTuple):
    """What is evaluated: the sample tokens of the split and the key frames
    (``(channel, stamp ns) -> sample_data token``) of every camera."""

    sample_tokens: list[str]
    key_frames: dict[tuple[str, int], str]


def _eval_frames(nusc: Any, config: ClosedLoopConfig) -> _EvalFrames:
    # nuscenes-devkit: importing it takes seconds (matplotlib ...); only running needs it.
    from nuscenes.utils.splits import create_splits_scenes

    split_scenes = set(create_splits_scenes().get(config.eval_set, ()))
    if not split_scenes:
        raise ConfigError(f"eval_set {config.eval_set!r} is not a devkit split")
    samples = [
        s["token"] for s in nusc.sample
        if nusc.get("scene", s["scene_token"])["name"] in split_scenes
    ]
    if not samples:
        raise ClosedLoopError(f"no sample of split {config.eval_set} in {config.dataroot}")
    key_frames = {
        (sd["channel"], int(sd["timestamp"]) * 1000): sd["token"]
        for sd in nusc.sample_data
        if sd["is_key_frame"] and sd["channel"].startswith("CAM_")
    }
    return _EvalFrames(samples, key_frames)


def resolve_bags(paths: Sequence[str]) -> list[Path]:
    """The bags to play: each path that is a bag (it holds ``metadata.yaml``), or the bags
    directly inside a directory that is not one (sorted by name).

    Raises:
        ClosedLoopError: a path that does not exist, a directory without bags, or a bag named
            twice.
    """
    bags: list[Path] = []
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise ClosedLoopError(f"bag not found: {path}")
        if (path / "metadata.yaml").is_file():
            bags.append(path)
            continue
        inner = sorted(p for p in path.iterdir() if (p / "metadata.yaml").is_file()) \
            if path.is_dir() else []
        if not inner:
            raise ClosedLoopError(f"{path} is neither a rosbag2 bag nor a directory of bags")
        bags += inner
    resolved = [b.resolve() for b in bags]
    if len(set(resolved)) != len(resolved):
        raise ClosedLoopError(f"a bag is named twice in {list(paths)}")
    return bags


def _bag_cameras(bag: Path, config: ClosedLoopConfig) -> tuple[list[Any], list[Camera]]:
    """The bag's connections and the cameras of it to run."""
    with Reader(bag) as reader:
        connections = list(reader.connections)
    bag_topics = {c.topic for c in connections}
    channels = config.cameras or tuple(
        sorted({t.split("/")[1].upper() for t in bag_topics if t.endswith("/image_raw/compressed")})
    )
    if not channels:
        raise ClosedLoopError(f"{bag} has no */image_raw/compressed topics")
    cameras: list[Camera] = []
    for ch in channels:
        ns = f"/{ch.lower()}"
        cam = Camera(ch, ns, f"{ns}/image_raw/compressed", f"{ns}/camera_info")
        missing = {cam.image_topic, cam.info_topic} - bag_topics
        if missing:
            raise ClosedLoopError(f"{bag} lacks {sorted(missing)}")
        cameras.append(cam)
    return connections, cameras


class _RosGraph:
    """This process's rclpy node, spun in a background thread once everything is created."""

    def __init__(self) -> None:
        use_profile()  # this process publishes the images (epropnp_ros.dds)
        rclpy.init()
        self.node = rclpy.create_node("epropnp_closed_loop")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.spinner: threading.Thread | None = None

    def spin_in_background(self) -> None:
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def close(self) -> None:
        self.executor.shutdown()
        if self.spinner is not None:
            self.spinner.join(timeout=5.0)  # it reads the context, which is destroyed below
        self.node.destroy_node()
        del self.node, self.executor
        release_rclpy()  # its shared-memory segments leave /dev/shm now


def _start_detectors(cameras: dict[str, Camera], config: ClosedLoopConfig, log_dir: Path,
                     children: list[subprocess.Popen[bytes]]) -> None:
    """One rig node process, or one detector node process per camera (appended to
    ``children``), logging to ``log_dir``."""
    env = dict(os.environ)
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    if not config.per_camera:
        cmd = rig_command([cam.namespace for cam in cameras.values()], config.checkpoint,
                          config.detector_params)
        with (log_dir / "rig_detector.log").open("wb") as log:
            children.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                             env=env))
        return
    for cam in cameras.values():
        with (log_dir / f"detector_{cam.channel.lower()}.log").open("wb") as log:
            children.append(subprocess.Popen(
                _detector_command(cam, config), stdout=log, stderr=subprocess.STDOUT, env=env,
            ))


def _stop_detectors(children: Sequence[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _progress(reader: Reader, cameras: dict[str, Camera],
              key_frames: dict[tuple[str, int], str]) -> tqdm[Any]:
    """A progress bar over the key-frame images of the selected cameras in the bag (shown on a
    terminal only)."""
    start, end = reader.start_time, reader.end_time
    channels = {cam.channel for cam in cameras.values()}
    total = sum(1 for channel, stamp in key_frames
                if channel in channels and start <= stamp <= end)
    return tqdm(total=total, desc="closed loop", unit="image", disable=None)


class _PlayStats(NamedTuple):
    processed: int
    dropped: int
    latencies: list[float]  # seconds from publishing an image to its detections


def _play_lockstep(bag: Path, publishers: dict[int, Any], cameras: dict[str, Camera],
                   key_frames: dict[tuple[str, int], str],
                   children: Sequence[subprocess.Popen[bytes]], config: ClosedLoopConfig,
                   log_dir: Path) -> _PlayStats:
    """Publish the bag; each key-frame image of a selected camera waits for its detections."""
    processed = dropped = 0
    latencies: list[float] = []
    with Reader(bag) as reader, _progress(reader, cameras, key_frames) as bar:
        for connection, stamp, raw in reader.messages():
            publisher = publishers[connection.id]
            msg = deserialize_message(bytes(raw), publisher.msg_type)
            target = cameras.get(connection.topic)
            if target is None:
                if connection.topic.endswith("/image_raw/compressed"):
                    continue  # a camera not selected
                publisher.publish(msg)
                continue
            if (target.channel, stamp) not in key_frames:
                continue  # sweeps are not evaluated: skip their inference
            sent = time.monotonic()
            publisher.publish(msg)
            ok = wait_for_frame(target, stamp, config.frame_timeout)
            _check_children(children, log_dir)
            bar.update(1)
            if ok:
                processed += 1
                latencies.append(target.results[stamp].received - sent)
            else:
                dropped += 1
                LOGGER.warning("no detections for %s at %d within %.0f s",
                               target.channel, stamp, config.frame_timeout)
    time.sleep(0.2)  # let the last pose samples arrive
    return _PlayStats(processed, dropped, latencies)


def _play_rig_lockstep(bag: Path, publishers: dict[int, Any], cameras: dict[str, Camera],
                       frames: _EvalFrames, sample_of: dict[str, str], fused: FusedRecorder,
                       children: Sequence[subprocess.Popen[bytes]], config: ClosedLoopConfig,
                       log_dir: Path) -> tuple[_PlayStats, dict[str, tuple[int, str]]]:
    """Publish the bag; the key-frame images of one sample are published together, then the
    player waits for their fused detections. Returns the stats (per image) and, per sample,
    the fused output's stamp and the sample_data token of one of its images."""
    processed = dropped = 0
    latencies: list[float] = []
    by_sample: dict[str, tuple[int, str]] = {}
    group: list[tuple[int, str]] = []  # (stamp, sample_data token) published
    sent = 0.0

    def finish() -> None:
        nonlocal processed, dropped
        if not group:
            return
        stamp = fused.wait([s for s, _ in group], config.frame_timeout,
                           lambda: _check_children(children, log_dir))
        if stamp is None:
            dropped += len(group)
            LOGGER.warning("no fused detections for sample %s within %.0f s",
                           sample_of[group[0][1]], config.frame_timeout)
        else:
            processed += len(group)
            latencies.append(fused.received[stamp] - sent)
            by_sample[sample_of[group[0][1]]] = (stamp, group[0][1])
        bar.update(len(group))
        group.clear()

    with Reader(bag) as reader, _progress(reader, cameras, frames.key_frames) as bar:
        for connection, stamp, raw in reader.messages():
            publisher = publishers[connection.id]
            target = cameras.get(connection.topic)
            if target is None:
                if not connection.topic.endswith("/image_raw/compressed"):
                    publisher.publish(deserialize_message(bytes(raw), publisher.msg_type))
                continue
            sd_token = frames.key_frames.get((target.channel, stamp))
            if sd_token is None:
                continue  # sweeps are not evaluated: skip their inference
            if group and sample_of[group[0][1]] != sample_of[sd_token]:
                finish()
            if not group:
                sent = time.monotonic()
            publisher.publish(deserialize_message(bytes(raw), publisher.msg_type))
            group.append((stamp, sd_token))
            if len(group) == len(cameras):
                finish()
        finish()
    time.sleep(0.2)  # let the last pose samples and per-camera detections arrive
    return _PlayStats(processed, dropped, latencies), by_sample


def _score(nusc: Any, per_sample: dict[str, list[CameraDetections]], frames: _EvalFrames,
           stats: _PlayStats, cameras: dict[str, Camera], config: ClosedLoopConfig,
           calibration: dict[str, Any], bags: Sequence[Path]) -> tuple[Path, Path, dict[str, Any]]:
    """:func:`~epropnp_ros.closed_loop_scoring.write_scores` of this run."""
    lat = np.asarray(stats.latencies) * 1000 if stats.latencies else np.zeros(1)
    run = {
        "frames_processed": stats.processed,
        "frames_dropped": stats.dropped,
        "latency_ms": {"p50": float(np.percentile(lat, 50)),
                       "p95": float(np.percentile(lat, 95))},
        "eval_set": config.eval_set,
        "cameras": [cam.channel for cam in cameras.values()],
        "bags": [str(b) for b in bags],
        "mode": "per_camera" if config.per_camera else "rig",
        "calibration": calibration,
        "checkpoint": str(config.checkpoint),
    }
    return write_scores(nusc, per_sample, frames.sample_tokens, config.dataroot,
                        config.version, config.eval_set, Path(config.out), run)


def run_closed_loop(config: ClosedLoopConfig) -> ClosedLoopResult:
    """Run the closed loop (module docstring); returns the scores and where the outputs are.

    Raises:
        ClosedLoopError: missing bag/checkpoint, a detector node that exits or never comes up,
            a bag without compressed camera images.
    """
    out = Path(config.out)
    bags = resolve_bags(config.bags)
    if not Path(config.checkpoint).is_file():
        raise ClosedLoopError(f"checkpoint not found: {config.checkpoint}")
    out.mkdir(parents=True, exist_ok=True)
    nusc = load_nuscenes(config.dataroot, config.version)
    frames = _eval_frames(nusc, config)
    plan: list[tuple[Path, list[Any], dict[str, Camera]]] = []
    cameras: dict[str, Camera] = {}  # every bag's cameras by image topic, recorded across bags
    for bag in bags:
        connections, channels = _bag_cameras(bag, config)
        shared = {cam.image_topic: cameras.setdefault(cam.image_topic, cam)
                  for cam in channels}
        plan.append((bag, connections, shared))
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)
    graph = _RosGraph()
    fused = FusedRecorder()
    by_sample: dict[str, tuple[int, str]] = {}
    sample_of = {sd: nusc.get("sample_data", sd)["sample_token"]
                 for sd in frames.key_frames.values()}
    played: list[_PlayStats] = []
    try:
        subscribe_outputs(graph.node, cameras)
        if not config.per_camera:
            graph.node.create_subscription(Detection3DArray, f"{RIG_NAMESPACE}/detections",
                                           fused.on_detections, 50)
            graph.node.create_subscription(PoseArray, f"{RIG_NAMESPACE}/pose_samples",
                                           fused.on_samples, 50)
            graph.node.create_subscription(DetectedObjects, f"{RIG_NAMESPACE}/objects",
                                           fused.on_objects, 50)
            graph.node.create_subscription(Classification,
                                           f"{RIG_NAMESPACE}/detection_attributes",
                                           fused.on_attributes, 50)
        graph.spin_in_background()
        for bag, connections, bag_cameras in plan:
            bag_log = log_dir if len(plan) == 1 else log_dir / bag.name
            bag_log.mkdir(exist_ok=True)
            stats, bag_samples = _play_bag(graph.node, bag, connections, bag_cameras, frames,
                                           sample_of, fused, config, bag_log)
            played.append(stats)
            by_sample.update(bag_samples)
    finally:
        graph.close()
    stats = _PlayStats(sum(p.processed for p in played), sum(p.dropped for p in played),
                       [lat for p in played for lat in p.latencies])
    per_sample, rendered = collect(nusc, cameras, frames.sample_tokens, frames.key_frames)
    if not config.per_camera:
        per_sample = {
            sample: [fused_detections(fused.detections[stamp], sample, sd_token,
                                      fused.objects.get(stamp), fused.attributes.get(stamp))]
            for sample, (stamp, sd_token) in by_sample.items()
            if sample in frames.sample_tokens
        }
    evaluated = set(frames.sample_tokens)
    if config.per_camera:
        images = [(sd, boxes, covs) for sd, boxes, covs, _ in rendered]
        calibration = camera_calibration(nusc, images, evaluated, out)
    else:
        fused_by_sample = {sample: fused.detections[stamp]
                           for sample, (stamp, _) in by_sample.items()}
        calibration = rig_calibration(nusc, fused_by_sample, evaluated, out)
    calibration["heading_samples"] = heading_report(
        nusc, [(sd, boxes, samples) for sd, boxes, _, samples in rendered], evaluated)
    results_path, scores_path, report = _score(nusc, per_sample, frames, stats, cameras, config,
                                               calibration, bags)
    video = render_detections(nusc, rendered, out) if config.render else None
    return ClosedLoopResult(results_path, scores_path, report, video, stats.processed,
                            stats.dropped)


def _play_bag(node: Any, bag: Path, connections: list[Any], cameras: dict[str, Camera],
              frames: _EvalFrames, sample_of: dict[str, str], fused: FusedRecorder,
              config: ClosedLoopConfig, log_dir: Path,
              ) -> tuple[_PlayStats, dict[str, tuple[int, str]]]:
    """One bag through fresh detector processes and publishers: start them, play in lockstep,
    stop them and wait until they have left the graph (so that the next bag's nodes neither
    receive this bag's latched ``/tf_static`` nor are mistaken for these ones)."""
    publishers = create_publishers(node, connections)
    children: list[subprocess.Popen[bytes]] = []
    by_sample: dict[str, tuple[int, str]] = {}
    try:
        _start_detectors(cameras, config, log_dir, children)
        by_topic = {c.topic: publishers[c.id] for c in connections}
        _wait_for_detectors(node, cameras, by_topic, children, config, log_dir)
        if config.per_camera:
            stats = _play_lockstep(bag, publishers, cameras, frames.key_frames, children,
                                   config, log_dir)
        else:
            stats, by_sample = _play_rig_lockstep(bag, publishers, cameras, frames, sample_of,
                                                  fused, children, config, log_dir)
    finally:
        _stop_detectors(children)
        for publisher in publishers.values():
            node.destroy_publisher(publisher)
    _wait_for_departure(node, cameras, config)
    return stats, by_sample


def _output_topics(cameras: dict[str, Camera], config: ClosedLoopConfig) -> list[str]:
    """The detection topics whose publishers are the detector nodes."""
    if config.per_camera:
        return [f"{cam.namespace}/detections" for cam in cameras.values()]
    return [f"{RIG_NAMESPACE}/detections"]


def _wait_for_departure(node: Any, cameras: dict[str, Camera], config: ClosedLoopConfig,
                        timeout: float = 10.0) -> None:
    """Wait (at most ``timeout`` s) until the stopped nodes' publishers left the ROS graph."""
    deadline = time.monotonic() + timeout
    while any(node.count_publishers(t) for t in _output_topics(cameras, config)):
        if time.monotonic() > deadline:
            LOGGER.warning("stopped detector nodes still in the ROS graph after %.0f s", timeout)
            return
        time.sleep(0.05)


def _check_children(children: Sequence[subprocess.Popen[bytes]], log_dir: Path) -> None:
    for child in children:
        if child.poll() is not None:
            raise ClosedLoopError(
                f"a detector node exited with status {child.returncode}; see the logs in {log_dir}"
            )


def _wait_for_detectors(
    node: Any,
    cameras: dict[str, Camera],
    publishers: dict[str, Any],
    children: Sequence[subprocess.Popen[bytes]],
    config: ClosedLoopConfig,
    log_dir: Path,
) -> None:
    """Wait until the detector nodes publish and the player's image and camera-info publishers
    matched their subscriptions (best effort: an image sent before the match is lost)."""
    deadline = time.monotonic() + config.startup_timeout
    while not config.per_camera and node.count_publishers(f"{RIG_NAMESPACE}/detections") == 0:
        _check_children(children, log_dir)
        if time.monotonic() > deadline:
            raise ClosedLoopError(f"the rig detector did not come up within "
                                  f"{config.startup_timeout:.0f} s; see {log_dir}")
        time.sleep(0.05)
    for cam in cameras.values():
        while (
            publishers[cam.image_topic].get_subscription_count() == 0
            or publishers[cam.info_topic].get_subscription_count() == 0
            or (config.per_camera and node.count_publishers(f"{cam.namespace}/detections") == 0)
        ):
            _check_children(children, log_dir)
            if time.monotonic() > deadline:
                raise ClosedLoopError(
                    f"the {cam.channel} detector did not come up within "
                    f"{config.startup_timeout:.0f} s; see {log_dir}"
                )
            time.sleep(0.05)
    time.sleep(DISCOVERY_SETTLE_S)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point ``epropnp-closed-loop``."""
    parser = argparse.ArgumentParser(
        prog="epropnp-closed-loop",
        description="Play a nuScenes bag through the detector nodes and score the detections "
        "with the official nuScenes evaluation.",
    )
    parser.add_argument("--bag", required=True, nargs="+",
                        help="bag(s), or a directory of bags (one per scene), played in order")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--eval-set", default="mini_val")
    parser.add_argument("--cameras", nargs="*", default=[])
    parser.add_argument("--param", action="append", default=[],
                        help="extra detector parameter name:=value (repeatable)")
    parser.add_argument("--frame-timeout", type=float, default=60.0)
    parser.add_argument("--no-render", action="store_true")
    parser.add_argument("--per-camera", action="store_true",
                        help="one detector node per camera instead of one rig_detector node")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_closed_loop(ClosedLoopConfig(
            bags=tuple(args.bag), checkpoint=args.checkpoint, dataroot=args.dataroot, out=args.out,
            version=args.version, eval_set=args.eval_set, cameras=tuple(args.cameras),
            detector_params=tuple(args.param), frame_timeout=args.frame_timeout,
            render=not args.no_render, per_camera=args.per_camera,
        ))
    except (EProPnPError, ConfigError) as exc:
        print(f"epropnp-closed-loop: error: {exc}", file=sys.stderr)
        return 2
    s = result.scores
    print(f"NDS {s['nds']:.4f}  mAP {s['mean_ap']:.4f}  "
          + "  ".join(f"{k} {v:.3f}" for k, v in s["tp_errors"].items()))
    print(f"frames processed {result.frames_processed}, dropped {result.frames_dropped}; "
          f"latency p50 {s['latency_ms']['p50']:.0f} ms")
    print(f"results: {result.results_path}\nscores:  {result.scores_path}")
    if result.video_path is not None:
        print(f"video:   {result.video_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
