"""The 6DoF closed loop: BOP bag -> ``pose_estimator`` node -> recorded poses -> scores.

``epropnp-pose-closed-loop --bag BAG --checkpoint CKPT --bop-root ROOT --out DIR`` starts one
``pose_estimator`` node process in ``/camera`` (``image_raw[/compressed]``, ``camera_info`` and
``rois`` in; ``detections`` with the 6x6 covariance and ``pose_samples`` out) and plays a bag of
``epropnp-bop-to-bag`` (:mod:`epropnp_ros.bop_bag`) in *lockstep*: each image's regions of
interest and camera info are published first, then the image, and the player waits for its
``Detection3DArray`` (a frame without one within ``frame_timeout`` counts as dropped). Each
estimate is matched to its ground truth by the region's id, and scored by
:func:`epropnp_ros.pose_scores.score_estimates` with the object models of the BOP dataset.
``DIR`` receives ``scores.json``, the node's log and, unless ``--no-render``, ``frames/*.jpg``
(:func:`epropnp_ros.pose_video.draw_poses`: outlines, axes, 2-sigma ellipses, sample clouds).
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

import cv2
import numpy as np
import rclpy
from geometry_msgs.msg import PoseArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from vision_msgs.msg import Detection3DArray

from epropnp_lib.data.bop import BopConfig, BopDataError, BopDataset
from epropnp_lib.dataclass_io import json_default
from epropnp_lib.errors import ConfigError, EProPnPError
from epropnp_ros.bag_player import create_publishers
from epropnp_ros.bop_bag import CAMERA_NS, GT_TOPIC, INFO_TOPIC, ROI_TOPIC
from epropnp_ros.dds import DISCOVERY_SETTLE_S, release_rclpy, use_profile
from epropnp_ros.errors import ClosedLoopError
from epropnp_ros.images import compressed_to_rgb, image_to_rgb
from epropnp_ros.messages import stamp_to_ns
from epropnp_ros.pose_scores import Estimate, model_specs, score_estimates
from epropnp_ros.pose_video import DrawnPose, draw_poses
from epropnp_ros.poses import msg_to_covariance, msg_to_pose

__all__ = ["PoseClosedLoopConfig", "PoseClosedLoopResult", "main", "run_pose_closed_loop"]

LOGGER = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PoseClosedLoopConfig:
    """Closed-loop settings (see the module docstring).

    Attributes:
        bag: bag written by ``epropnp-bop-to-bag``.
        checkpoint: ``dense_correspondence_net`` checkpoint for the node.
        bop_root: the BOP root the bag was made from (object models).
        out: output directory.
        dataset: BOP dataset folder; split: the split the bag was made from.
        node_params: extra node parameters as ``name:=value``.
        frame_timeout: seconds to wait for the poses of one image.
        startup_timeout: seconds to wait for the node to come up.
        roi_lead: seconds between publishing an image's regions and the image.
        render: draw the estimates onto the images; render_limit: at most this many frames.
    """

    bag: str
    checkpoint: str
    bop_root: str
    out: str
    dataset: str = "lm"
    split: str = "test"
    node_params: tuple[str, ...] = ()
    frame_timeout: float = 60.0
    startup_timeout: float = 180.0
    roi_lead: float = 0.05
    render: bool = True
    render_limit: int = 50

    def __post_init__(self) -> None:
        if not (self.frame_timeout > 0 and self.startup_timeout > 0 and self.roi_lead >= 0):
            raise ConfigError("frame_timeout and startup_timeout must be positive, roi_lead >= 0")
        for p in self.node_params:
            if ":=" not in p:
                raise ConfigError(f"node parameter {p!r} is not of the form name:=value")


class PoseClosedLoopResult(NamedTuple):
    """What the closed loop produced."""

    scores_path: Path
    scores: dict[str, Any]
    frames_dir: Path | None
    frames_processed: int
    frames_dropped: int


@dataclass
class _Frame:
    """One image of the bag and what came back for it."""

    image: Any = None
    camera_info: Any = None
    ground_truth: Any = None
    detections: Any = None
    samples: Any = None
    sent: float = 0.0
    received: float = 0.0


@dataclass
class _Recorder:
    frames: dict[int, _Frame] = field(default_factory=dict)
    event: threading.Condition = field(default_factory=threading.Condition)

    def on_detections(self, msg: Any) -> None:
        with self.event:
            frame = self.frames.setdefault(stamp_to_ns(msg.header.stamp), _Frame())
            frame.detections, frame.received = msg, time.monotonic()
            self.event.notify_all()

    def on_samples(self, msg: Any) -> None:
        with self.event:
            self.frames.setdefault(stamp_to_ns(msg.header.stamp), _Frame()).samples = msg

    def wait(self, stamp: int, timeout: float) -> bool:
        with self.event:
            return self.event.wait_for(
                lambda: stamp in self.frames and self.frames[stamp].detections is not None,
                timeout=timeout)


def _image_topic(bag_topics: set[str]) -> tuple[str, str]:
    """The bag's image topic and the node's ``image_transport``."""
    for topic, transport in ((f"{CAMERA_NS}/image_raw/compressed", "compressed"),
                             (f"{CAMERA_NS}/image_raw", "raw")):
        if topic in bag_topics:
            missing = {INFO_TOPIC, ROI_TOPIC, GT_TOPIC} - bag_topics
            if missing:
                raise ClosedLoopError(f"the bag lacks {sorted(missing)}")
            return topic, transport
    raise ClosedLoopError(f"the bag has no {CAMERA_NS}/image_raw[/compressed] topic: is it "
                          "from epropnp-bop-to-bag?")


def _node_command(config: PoseClosedLoopConfig, image_topic: str, transport: str) -> list[str]:
    cmd = [sys.executable, "-m", "epropnp_ros.nodes.pose_estimator", "--ros-args"]
    params_file = REPO / "config" / "pose_estimator.yaml"
    if params_file.is_file():
        cmd += ["--params-file", str(params_file)]
    cmd += ["-r", f"__ns:={CAMERA_NS}", "-r", "image:=image_raw",
            "-p", f"checkpoint:={Path(config.checkpoint).resolve()}",
            "-p", "autostart:=true", "-p", f"image_transport:={transport}",
            "-p", "publish_markers:=false"]
    # The node's default input QoS (best effort) with the Fast DDS profile (epropnp_ros.dds):
    # a frame lost in transport shows as a missing estimate, it is not hidden.
    for p in config.node_params:
        cmd += ["-p", p]
    return cmd


def _wait_for_node(node: Any, publishers: dict[str, Any], image_topic: str,
                   child: subprocess.Popen[bytes], config: PoseClosedLoopConfig,
                   log: Path) -> None:
    """Wait until the node publishes and the player's image, camera-info and region
    publishers matched its subscriptions (best effort loses what is sent before)."""
    deadline = time.monotonic() + config.startup_timeout
    inputs = [publishers[t] for t in (image_topic, INFO_TOPIC, ROI_TOPIC) if t in publishers]
    while (any(p.get_subscription_count() == 0 for p in inputs)
           or node.count_publishers(f"{CAMERA_NS}/detections") == 0):
        _check_child(child, log)
        if time.monotonic() > deadline:
            raise ClosedLoopError(f"the pose_estimator node did not come up within "
                                  f"{config.startup_timeout:.0f} s; see {log}")
        time.sleep(0.05)
    time.sleep(DISCOVERY_SETTLE_S)


def _check_child(child: subprocess.Popen[bytes], log: Path) -> None:
    if child.poll() is not None:
        raise ClosedLoopError(f"the pose_estimator node exited with status {child.returncode}; "
                              f"see {log}")


def _play(bag: Path, publishers: dict[int, Any], image_topic: str, rec: _Recorder,
          child: subprocess.Popen[bytes], config: PoseClosedLoopConfig, log: Path) -> None:
    """Publish the bag in lockstep, keeping each frame's inputs in ``rec``."""
    with Reader(bag) as reader:
        for connection, stamp, raw in reader.messages():
            publisher = publishers[connection.id]
            msg = deserialize_message(bytes(raw), publisher.msg_type)
            with rec.event:
                frame = rec.frames.setdefault(stamp, _Frame())
            if connection.topic == GT_TOPIC:
                frame.ground_truth = msg
                continue
            if connection.topic == INFO_TOPIC:
                frame.camera_info = msg
            if connection.topic != image_topic:
                publisher.publish(msg)
                continue
            time.sleep(config.roi_lead)  # the regions before the image
            frame.image, frame.sent = msg, time.monotonic()
            publisher.publish(msg)
            ok = rec.wait(stamp, config.frame_timeout)
            _check_child(child, log)
            if not ok:
                LOGGER.warning("no poses for the image at %d within %.0f s", stamp,
                               config.frame_timeout)
    time.sleep(0.2)  # let the last pose samples arrive


def _run_node(config: PoseClosedLoopConfig, out: Path) -> _Recorder:
    """Start the node, play the bag, stop the node; returns what was recorded."""
    bag = Path(config.bag)
    with Reader(bag) as reader:
        connections = list(reader.connections)
    image_topic, transport = _image_topic({c.topic for c in connections})
    log = out / "pose_estimator.log"
    use_profile()  # this process publishes the images (epropnp_ros.dds)
    rclpy.init()
    node = rclpy.create_node("epropnp_pose_closed_loop")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    rec = _Recorder()
    child: subprocess.Popen[bytes] | None = None
    spinner = threading.Thread(target=executor.spin, daemon=True)
    try:
        node.create_subscription(Detection3DArray, f"{CAMERA_NS}/detections",
                                 rec.on_detections, 50)
        node.create_subscription(PoseArray, f"{CAMERA_NS}/pose_samples", rec.on_samples, 50)
        publishers = create_publishers(node, connections)
        spinner.start()
        env = dict(os.environ)
        env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
        with log.open("wb") as fh:
            child = subprocess.Popen(_node_command(config, image_topic, transport), stdout=fh,
                                     stderr=subprocess.STDOUT, env=env)
        by_topic = {c.topic: publishers[c.id] for c in connections}
        _wait_for_node(node, by_topic, image_topic, child, config, log)
        _play(bag, publishers, image_topic, rec, child, config, log)
    finally:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        executor.shutdown()
        if spinner.is_alive():
            spinner.join(timeout=5.0)  # it reads the context, which is destroyed below
        node.destroy_node()
        del node, executor, spinner  # the thread holds executor.spin until it has run
        release_rclpy()  # its shared-memory segments leave /dev/shm now
    return rec


def _models(config: PoseClosedLoopConfig) -> dict[str, Any]:
    """``{object name: BopModel}`` of the dataset the bag was made from."""
    try:
        data = BopDataset(config.bop_root, config.split, config=BopConfig(
            dataset=config.dataset, crop_size=0, render_coords=False, check_files=False))
    except BopDataError as exc:
        raise ClosedLoopError(f"cannot read the object models: {exc}") from exc
    return {m.name: m for m in data.models.values()}


class _Matched(NamedTuple):
    estimates: list[Estimate]
    samples: list[np.ndarray]  # (S, 7) per estimate (S may be 0)


def _match(frame: _Frame) -> _Matched:
    """The frame's ground-truth instances with the estimate of the same id (if any)."""
    found: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if frame.detections is not None:
        dets = list(frame.detections.detections)
        poses = list(frame.samples.poses) if frame.samples is not None else []
        per = len(poses) // len(dets) if dets else 0
        for i, det in enumerate(dets):
            hyp = det.results[0].pose
            smp = np.array([msg_to_pose(p) for p in poses[i * per:(i + 1) * per]]).reshape(-1, 7)
            found[det.id] = (msg_to_pose(hyp.pose), msg_to_covariance(hyp.covariance, 6), smp)
    estimates, samples = [], []
    for gt in frame.ground_truth.detections:
        pose, cov, smp = found.get(gt.id, (None, None, np.zeros((0, 7))))
        estimates.append(Estimate(gt.results[0].hypothesis.class_id,
                                  msg_to_pose(gt.results[0].pose.pose), pose, cov))
        samples.append(smp)
    return _Matched(estimates, samples)


def _render(frame: _Frame, matched: _Matched, models: dict[str, Any], path: Path) -> None:
    img = frame.image
    rgb = compressed_to_rgb(img) if hasattr(img, "format") else image_to_rgb(img)
    k = np.asarray(frame.camera_info.k, dtype=np.float64).reshape(3, 3)
    objects = [
        DrawnPose(e.pose, e.covariance, smp, models[e.object_name].vertices.numpy(),
                  models[e.object_name].faces.numpy(), e.gt_pose, e.object_name)
        for e, smp in zip(matched.estimates, matched.samples, strict=True)
        if e.pose is not None and e.covariance is not None
    ]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    cv2.imwrite(str(path), draw_poses(bgr, k, objects))


def run_pose_closed_loop(config: PoseClosedLoopConfig) -> PoseClosedLoopResult:
    """Run the closed loop (module docstring); returns the scores and where they are.

    Raises:
        ClosedLoopError: missing bag/checkpoint/models, a node that exits or never comes up,
            a bag that is not from ``epropnp-bop-to-bag``.
    """
    out, bag = Path(config.out), Path(config.bag)
    if not bag.exists():
        raise ClosedLoopError(f"bag not found: {bag}")
    if not Path(config.checkpoint).is_file():
        raise ClosedLoopError(f"checkpoint not found: {config.checkpoint}")
    models = _models(config)
    out.mkdir(parents=True, exist_ok=True)
    rec = _run_node(config, out)
    frames = [f for _, f in sorted(rec.frames.items()) if f.image is not None]
    processed = [f for f in frames if f.detections is not None]
    estimates: list[Estimate] = []
    frames_dir = out / "frames" if config.render else None
    if frames_dir is not None:
        frames_dir.mkdir(exist_ok=True)
    for n, frame in enumerate(frames):
        if frame.ground_truth is None:
            continue
        matched = _match(frame)
        estimates += matched.estimates
        if frames_dir is not None and n < config.render_limit and frame.detections is not None:
            _render(frame, matched, models, frames_dir / f"{n:06d}.jpg")
    unknown = sorted({e.object_name for e in estimates} - set(models))
    if unknown:
        raise ClosedLoopError(f"ground-truth objects {unknown} have no model in "
                              f"{config.bop_root}/{config.dataset}")
    scores = score_estimates(estimates, model_specs(models.values()))
    latencies = sorted(1000.0 * (f.received - f.sent) for f in processed)
    scores.update(frames_processed=len(processed), frames_dropped=len(frames) - len(processed),
                  latency_ms={"p50": float(np.percentile(latencies, 50)) if latencies else None,
                              "p90": float(np.percentile(latencies, 90)) if latencies else None})
    scores_path = out / "scores.json"
    scores_path.write_text(json.dumps(scores, indent=2, default=json_default) + "\n")
    return PoseClosedLoopResult(scores_path, scores, frames_dir, len(processed),
                                len(frames) - len(processed))


def score_line(scores: dict[str, Any]) -> str:
    """One line of the headline scores."""
    m, cov = scores["mean"], scores["calibration"]["coverage"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.1f}"

    return (f"ADD(-S) 0.02d/0.05d/0.1d {pct(m.get('add_002'))}/{pct(m.get('add_005'))}/"
            f"{pct(m.get('add_01'))}  2°2cm {pct(m.get('deg2_cm2'))}  5°5cm "
            f"{pct(m.get('deg5_cm5'))}  10°10cm {pct(m.get('deg10_cm10'))}  coverage 50/90/95% "
            + "/".join(pct(None if v is None else 100.0 * v) for v in cov.values()))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point ``epropnp-pose-closed-loop``."""
    parser = argparse.ArgumentParser(
        prog="epropnp-pose-closed-loop",
        description="Play a BOP bag (epropnp-bop-to-bag) through the pose_estimator node and "
        "score the poses: ADD(-S), n deg n cm, covariance coverage.")
    parser.add_argument("--bag", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--bop-root", required=True, help="BOP root the bag was made from")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dataset", default="lm")
    parser.add_argument("--split", default="test")
    parser.add_argument("--param", action="append", default=[],
                        help="extra pose_estimator parameter name:=value (repeatable)")
    parser.add_argument("--frame-timeout", type=float, default=60.0)
    parser.add_argument("--no-render", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_pose_closed_loop(PoseClosedLoopConfig(
            bag=args.bag, checkpoint=args.checkpoint, bop_root=args.bop_root, out=args.out,
            dataset=args.dataset, split=args.split, node_params=tuple(args.param),
            frame_timeout=args.frame_timeout, render=not args.no_render))
    except (EProPnPError, ConfigError) as exc:
        print(f"epropnp-pose-closed-loop: error: {exc}", file=sys.stderr)
        return 2
    print(score_line(result.scores))
    print(f"frames processed {result.frames_processed}, dropped {result.frames_dropped}")
    print(f"scores: {result.scores_path}")
    if result.frames_dir is not None:
        print(f"frames: {result.frames_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
