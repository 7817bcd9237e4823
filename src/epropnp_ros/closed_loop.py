"""The closed loop: bag → ``detector`` nodes → recorded detections → nuScenes results → score.

``epropnp-closed-loop --bag BAG --checkpoint CKPT --dataroot NUSCENES --out DIR``

1. Starts one ``detector`` node process per camera of the bag (the same entry point and
   parameters as ``ros2 launch epropnp detector.launch.py``), in the camera's namespace
   (``/cam_front/detector``: subscribes ``/cam_front/image_raw/compressed`` and
   ``/cam_front/camera_info``, publishes ``/cam_front/detections``, ``pose_samples``, ...).
2. Plays the bag into the graph in *lockstep*: each image (with its CameraInfo and TF) is
   published, then the player waits for that camera's ``Detection3DArray`` with the image's
   stamp before the next image, so every frame is processed whatever the CPU speed (a frame
   whose detections do not arrive within ``frame_timeout`` is counted as dropped).
3. Records the detections (and the posterior pose samples) of the key frames, converts them to
   the nuScenes results JSON (camera frame → global with the devkit's calibration and ego
   poses, cameras merged) and scores them with the official ``DetectionEval``
   (``detection_cvpr_2019``).
4. Writes into ``DIR``: ``results_nusc.json``, ``scores.json`` (NDS, mAP, TP errors, per-class
   AP, frame counts, latencies), the devkit's ``metrics_summary.json`` / ``metrics_details.json``
   and, unless ``--no-render``, ``frames/*.jpg`` + ``detections.mp4``: every camera image with
   the detected boxes, labels, the projected 2-sigma position ellipse and the posterior samples'
   headings (the pose uncertainty).

Detection3D has no velocity or attribute field, so the results carry velocity 0 and each
class's default attribute (mAVE and mAAE reflect that).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from epropnp_lib.errors import ConfigError, EProPnPError

__all__ = ["ClosedLoopConfig", "ClosedLoopError", "ClosedLoopResult", "main", "run_closed_loop"]

LOGGER = logging.getLogger(__name__)


class ClosedLoopError(EProPnPError):
    """The closed loop could not run (bag, checkpoint, dataset, or the detector nodes failed)."""


@dataclass(frozen=True)
class ClosedLoopConfig:
    """Closed-loop settings (see the module docstring).

    Attributes:
        bag: bag written by ``epropnp-nuscenes-to-bag`` (compressed images).
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
    """

    bag: str
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

    def __post_init__(self) -> None:
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


@dataclass
class _Recorded:
    """Outputs of the detector for one image."""

    detections: Any = None
    samples: Any = None
    received: float = 0.0


@dataclass
class _Camera:
    channel: str
    namespace: str
    image_topic: str
    info_topic: str
    results: dict[int, _Recorded] = field(default_factory=dict)
    event: threading.Condition = field(default_factory=threading.Condition)


def _detector_command(camera: _Camera, config: ClosedLoopConfig) -> list[str]:
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
        # Lockstep: the player waits for every frame; reliable input loses none.
        "-p", f"qos_overrides.{camera.image_topic}.subscription.reliability:=reliable",
        "-p", f"qos_overrides.{camera.info_topic}.subscription.reliability:=reliable",
        "-p", f"qos_overrides.{camera.image_topic}.subscription.depth:=10",
        "-p", f"qos_overrides.{camera.info_topic}.subscription.depth:=10",
    ]
    for p in config.detector_params:
        cmd += ["-p", p]
    return cmd


def run_closed_loop(config: ClosedLoopConfig) -> ClosedLoopResult:  # noqa: C901
    """Run the closed loop (module docstring); returns the scores and where the outputs are.

    Raises:
        ClosedLoopError: missing bag/checkpoint, a detector node that exits or never comes up,
            a bag without compressed camera images.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from epropnp_lib.data.nuscenes import (
        NUSCENES_CLASSES,
        CameraDetections,
        ResultsMeta,
        camera_frame_of,
        evaluate,
        load_nuscenes,
        write_results,
    )
    from epropnp_ros.bag_player import message_class, qos_profile_of
    from epropnp_ros.detections import boxes_from_detection3d_array

    out = Path(config.out)
    bag = Path(config.bag)
    if not bag.exists():
        raise ClosedLoopError(f"bag not found: {bag}")
    if not Path(config.checkpoint).is_file():
        raise ClosedLoopError(f"checkpoint not found: {config.checkpoint}")
    out.mkdir(parents=True, exist_ok=True)
    nusc = load_nuscenes(config.dataroot, config.version)
    from nuscenes.utils.splits import create_splits_scenes

    split_scenes = set(create_splits_scenes().get(config.eval_set, ()))
    if not split_scenes:
        raise ConfigError(f"eval_set {config.eval_set!r} is not a devkit split")
    eval_samples = [
        s["token"] for s in nusc.sample
        if nusc.get("scene", s["scene_token"])["name"] in split_scenes
    ]
    if not eval_samples:
        raise ClosedLoopError(f"no sample of split {config.eval_set} in {config.dataroot}")
    key_frames = {
        (sd["channel"], int(sd["timestamp"]) * 1000): sd["token"]
        for sd in nusc.sample_data
        if sd["is_key_frame"] and sd["channel"].startswith("CAM_")
    }

    with Reader(bag) as reader:
        connections = list(reader.connections)
        bag_topics = {c.topic for c in connections}
    channels = config.cameras or tuple(
        sorted({t.split("/")[1].upper() for t in bag_topics if t.endswith("/image_raw/compressed")})
    )
    if not channels:
        raise ClosedLoopError(f"{bag} has no */image_raw/compressed topics")
    cameras: dict[str, _Camera] = {}
    for ch in channels:
        ns = f"/{ch.lower()}"
        cam = _Camera(ch, ns, f"{ns}/image_raw/compressed", f"{ns}/camera_info")
        missing = {cam.image_topic, cam.info_topic} - bag_topics
        if missing:
            raise ClosedLoopError(f"{bag} lacks {sorted(missing)}")
        cameras[cam.image_topic] = cam

    rclpy.init()
    node = rclpy.create_node("epropnp_closed_loop")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    children: list[subprocess.Popen[bytes]] = []
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)
    try:
        from geometry_msgs.msg import PoseArray
        from vision_msgs.msg import Detection3DArray

        def on_detections(msg: Any, cam: _Camera) -> None:
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            with cam.event:
                rec = cam.results.setdefault(stamp, _Recorded())
                rec.detections, rec.received = msg, time.monotonic()
                cam.event.notify_all()

        def on_samples(msg: Any, cam: _Camera) -> None:
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            with cam.event:
                cam.results.setdefault(stamp, _Recorded()).samples = msg

        for cam in cameras.values():
            node.create_subscription(
                Detection3DArray, f"{cam.namespace}/detections",
                lambda m, c=cam: on_detections(m, c), 50,
            )
            node.create_subscription(
                PoseArray, f"{cam.namespace}/pose_samples", lambda m, c=cam: on_samples(m, c), 50
            )
        publishers: dict[int, Any] = {}
        classes: dict[int, Any] = {}
        for c in connections:
            classes[c.id] = message_class(c.msgtype)
            publishers[c.id] = node.create_publisher(classes[c.id], c.topic, qos_profile_of(c))
        spinner.start()

        env = dict(os.environ)
        env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
        for cam in cameras.values():
            with (log_dir / f"detector_{cam.channel.lower()}.log").open("wb") as log:
                children.append(subprocess.Popen(
                    _detector_command(cam, config), stdout=log, stderr=subprocess.STDOUT,
                    env=env,
                ))
        _wait_for_detectors(node, cameras, children, config, log_dir)

        processed = dropped = 0
        latencies: list[float] = []
        with Reader(bag) as reader:
            for connection, stamp, raw in reader.messages():
                msg = deserialize_message(bytes(raw), classes[connection.id])
                target = cameras.get(connection.topic)
                if target is None:
                    if connection.topic.endswith("/image_raw/compressed"):
                        continue  # a camera not selected
                    publishers[connection.id].publish(msg)
                    continue
                if (target.channel, stamp) not in key_frames:
                    continue  # sweeps are not evaluated: skip their inference
                sent = time.monotonic()
                publishers[connection.id].publish(msg)
                ok = _wait_for_frame(target, stamp, config.frame_timeout)
                _check_children(children, log_dir)
                if ok:
                    processed += 1
                    latencies.append(target.results[stamp].received - sent)
                else:
                    dropped += 1
                    LOGGER.warning("no detections for %s at %d within %.0f s",
                                   target.channel, stamp, config.frame_timeout)
        time.sleep(0.2)  # let the last pose samples arrive

        per_sample: dict[str, list[Any]] = {}
        frames_for_render = []
        for cam in cameras.values():
            for stamp, rec in sorted(cam.results.items()):
                sd_token = key_frames.get((cam.channel, stamp))
                if sd_token is None or rec.detections is None:
                    continue
                frame = camera_frame_of(nusc, sd_token)
                boxes, covs = boxes_from_detection3d_array(rec.detections, NUSCENES_CLASSES)
                if frame.sample_token in eval_samples:
                    per_sample.setdefault(frame.sample_token, []).append(
                        CameraDetections(boxes, frame)
                    )
                frames_for_render.append((sd_token, boxes, covs, rec.samples))
        results_path = out / "results_nusc.json"
        summary = write_results(results_path, per_sample, sample_tokens=eval_samples,
                                meta=ResultsMeta())
        scores = evaluate(results_path, config.dataroot, config.version, config.eval_set,
                          out, nusc=nusc)
        lat = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
        report = {
            "nds": scores.nds,
            "mean_ap": scores.mean_ap,
            "tp_errors": scores.tp_errors,
            "per_class_ap": scores.per_class_ap,
            "frames_processed": processed,
            "frames_dropped": dropped,
            "boxes_written": summary.num_boxes,
            "latency_ms": {"p50": float(np.percentile(lat, 50)),
                           "p95": float(np.percentile(lat, 95))},
            "eval_set": config.eval_set,
            "cameras": list(channels),
            "checkpoint": str(config.checkpoint),
        }
        scores_path = out / "scores.json"
        scores_path.write_text(json.dumps(report, indent=2, default=_json_default))
        video = None
        if config.render:
            from epropnp_ros.detection_video import render_detections

            video = render_detections(nusc, frames_for_render, out)
        return ClosedLoopResult(results_path, scores_path, report, video, processed, dropped)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def _wait_for_frame(camera: _Camera, stamp: int, timeout: float) -> bool:
    """Wait until the detections of ``camera`` for the image at ``stamp`` arrived."""

    def arrived() -> bool:
        rec = camera.results.get(stamp)
        return rec is not None and rec.detections is not None

    with camera.event:
        return camera.event.wait_for(arrived, timeout=timeout)


def _check_children(children: Sequence[subprocess.Popen[bytes]], log_dir: Path) -> None:
    for child in children:
        if child.poll() is not None:
            raise ClosedLoopError(
                f"a detector node exited with status {child.returncode}; see the logs in {log_dir}"
            )


def _wait_for_detectors(
    node: Any,
    cameras: dict[str, _Camera],
    children: Sequence[subprocess.Popen[bytes]],
    config: ClosedLoopConfig,
    log_dir: Path,
) -> None:
    deadline = time.monotonic() + config.startup_timeout
    for cam in cameras.values():
        while (
            node.count_subscribers(cam.image_topic) == 0
            or node.count_subscribers(cam.info_topic) == 0
            or node.count_publishers(f"{cam.namespace}/detections") == 0
        ):
            _check_children(children, log_dir)
            if time.monotonic() > deadline:
                raise ClosedLoopError(
                    f"the {cam.channel} detector did not come up within "
                    f"{config.startup_timeout:.0f} s; see {log_dir}"
                )
            time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point ``epropnp-closed-loop``."""
    parser = argparse.ArgumentParser(
        prog="epropnp-closed-loop",
        description="Play a nuScenes bag through the detector nodes and score the detections "
        "with the official nuScenes evaluation.",
    )
    parser.add_argument("--bag", required=True)
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_closed_loop(ClosedLoopConfig(
            bag=args.bag, checkpoint=args.checkpoint, dataroot=args.dataroot, out=args.out,
            version=args.version, eval_set=args.eval_set, cameras=tuple(args.cameras),
            detector_params=tuple(args.param), frame_timeout=args.frame_timeout,
            render=not args.no_render,
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
