"""End-to-end latency and throughput of the ``detector`` node over the real DDS path.

This process publishes ``sensor_msgs/Image`` (rgb8) + ``CameraInfo`` and receives the node's
``Detection3DArray``; the node runs in its own process (``python -m epropnp_ros.nodes.detector``,
autostart) on localhost Fast DDS, exactly as deployed in a venv.

* **latency** (closed loop): publish one frame, wait for its detections, repeat; the latency is
  the time from ``publish()`` of the image to the arrival of the detections with its stamp
  (transport of a full-size raw image both ways included), p50 / p95 over the frames after
  warm-up;
* **throughput** (open loop): publish at ``--rate`` Hz for ``--seconds``; processed frames per
  second (the node drops stale frames by design, so this is the node's capacity);
* the node's own ``stage_ms`` (from its ``/diagnostics`` status) of the last frame.

Model: :func:`epropnp_lib.nets.deformable.small_config` (ResNet-18 width 32, P3-P5, 4x8 points,
AMIS 4x64), weights from a fixed seed. With ``score_threshold`` 0 every frame carries up to
``--detections`` queries into the PnP solve; the network's bird's-eye-view NMS then removes
overlapping boxes, and the table reports how many detections (with their posterior samples)
were published per frame, so the load is stated, not hidden.

With ``--checkpoint`` (e.g. the bundled ``models/detector_small_synthetic.pt``) the node runs
that model at its default score threshold on a generated nuScenes-format street image
(``CAM_FRONT`` of ``scene-0103`` at the requested size, with its intrinsics), so the load is that
of a real scene: the objects the model actually detects, with their posterior samples.

Usage::

    .venv/bin/python bench/node_latency.py            # 1600x900 (scale 0.4) and 640x480 (1.0)
    .venv/bin/python bench/node_latency.py --frames 30 --sizes 1600x900:0.4
    .venv/bin/python bench/node_latency.py --checkpoint models/detector_small_synthetic.pt \
        --sizes 1600x900:0.2,640x480:0.5
    .venv/bin/python bench/node_latency.py ... --threads 2 --wait-policy PASSIVE --contended

``--contended`` runs one busy-looping process beside the node during the closed-loop frames
(another node on the robot's cores); ``--wait-policy`` sets the node's ``OMP_WAIT_POLICY``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# ROS, torch and the package are imported inside the functions, after main() has set the ROS
# environment (AMENT_PREFIX_PATH, ROS_DOMAIN_ID, discovery range).
REPO = Path(__file__).resolve().parents[1]
NS = "/epropnp_bench"


def make_checkpoint(path: Path, detections: int) -> None:
    """The benchmark's seeded small detector (module docstring)."""
    import torch

    from epropnp_lib.nets.deformable import DeformableCorrespondenceNet, small_config

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DeformableCorrespondenceNet(
            small_config(score_threshold=0.0, pre_nms_top_k=detections,
                         max_detections=detections)
        )
    net.save(path, extra={"note": "benchmark fixture: seeded random weights"})


def camera_info(width: int, height: int) -> Any:
    from sensor_msgs.msg import CameraInfo

    f = 1.2 * width
    k = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    msg.k = k.reshape(-1).tolist()
    msg.d = [0.0] * 5
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack((k, np.zeros((3, 1)))).reshape(-1).tolist()
    return msg


def street_image(width: int, height: int, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB CAM_FRONT image of a generated scene and its (3, 3) intrinsics."""
    import cv2

    from epropnp_lib.data.nuscenes import load_nuscenes
    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini

    root = tmp / f"nuscenes_{width}x{height}"
    generate_nuscenes_mini(root, scenes=("scene-0103",), samples_per_scene=2,
                           image_size=(width, height), seed=7)
    nusc = load_nuscenes(root)
    sd = next(r for r in nusc.sample_data if r["channel"] == "CAM_FRONT" and r["is_key_frame"])
    k = np.asarray(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])[
        "camera_intrinsic"], dtype=np.float64)
    bgr = cv2.imread(str(root / sd["filename"]))
    return np.ascontiguousarray(bgr[:, :, ::-1]), k


def _node_command(scale: float, args: argparse.Namespace, ckpt: Path) -> list[str]:
    """The detector node process, started active, with reliable inputs."""
    return [
        sys.executable, "-m", "epropnp_ros.nodes.detector", "--ros-args",
        "--params-file", str(REPO / "config" / "detector.yaml"),
        "-r", f"__ns:={NS}", "-p", f"checkpoint:={ckpt}", "-p", "autostart:=true",
        *(["-p", "score_threshold:=0.0"] if not args.checkpoint else []),
        "-p", f"input_scale:={scale}",
        *(["-p", f"num_posterior_samples:={args.samples}"] if args.samples is not None else []),
        *(["-p", f"posterior_iterations:={args.iterations}"]
          if args.iterations is not None else []),
        "-p", f"torch_threads:={args.threads}",
        "-p", "diagnostics_period:=0.5",
        "-p", f"qos_overrides.{NS}/image.subscription.reliability:=reliable",
        "-p", f"qos_overrides.{NS}/camera_info.subscription.reliability:=reliable",
    ]


def _frame(width: int, height: int, args: argparse.Namespace, log: Path
           ) -> tuple[np.ndarray, Any]:
    """The image published every frame and its CameraInfo: a generated street scene with
    ``--checkpoint``, else random pixels (content only: not torch code)."""
    info = camera_info(width, height)
    if not args.checkpoint:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8), info
    rgb, k = street_image(width, height, log.parent / f"{log.stem}_data")
    info.k = k.reshape(-1).tolist()
    info.p = np.hstack((k, np.zeros((3, 1)))).reshape(-1).tolist()
    return rgb, info


class _Driver:
    """This process's side: publishes frames, records when each frame's detections arrive."""

    def __init__(self, proc: subprocess.Popen[bytes], rgb: np.ndarray, info: Any) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from vision_msgs.msg import Detection3DArray

        from epropnp_ros.images import array_to_image
        from epropnp_ros.messages import make_header

        self.array_to_image, self.make_header = array_to_image, make_header
        self.proc, self.rgb, self.info = proc, rgb, info
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("epropnp_bench_driver", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, f"{NS}/image", qos)
        self.info_pub = self.node.create_publisher(CameraInfo, f"{NS}/camera_info", qos)
        self.arrived: dict[int, float] = {}
        self.counts: dict[int, int] = {}
        self.diag: dict[str, Any] = {}
        self.node.create_subscription(Detection3DArray, f"{NS}/detections", self._on_det, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, qos)

    def _on_diag(self, msg: Any) -> None:
        from epropnp_ros.health import snapshot_from_values

        for status in msg.status:
            if status.name == f"{NS}/detector":
                snap = snapshot_from_values((kv.key, kv.value) for kv in status.values)
                self.diag.update(stage_ms=snap.stage_ms, counters=snap.counters)

    def _on_det(self, msg: Any) -> None:
        self.arrived[msg.header.stamp.sec] = time.monotonic()
        self.counts[msg.header.stamp.sec] = len(msg.detections)

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def spin_until(self, pred: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            self.executor.spin_once(timeout_sec=0.01)
        return True

    def send(self, sec: int) -> float:
        """Publish the frame stamped ``sec`` seconds; returns when (monotonic)."""
        header = self.make_header("bench_camera_optical", sec * 1_000_000_000)
        self.info.header = header
        msg = self.array_to_image(self.rgb, "rgb8", header)
        t = time.monotonic()
        self.image_pub.publish(msg)
        self.info_pub.publish(self.info)
        return t


def _closed_loop(driver: _Driver, args: argparse.Namespace, log: Path) -> list[float]:
    """Latencies (ms) of frames sent one at a time, each after the previous one's output."""
    latencies = []
    for i in range(args.warmup + args.frames):
        sec = 1000 + i
        t = driver.send(sec)
        if not driver.spin_until(lambda s=sec: s in driver.arrived, 60.0):
            raise RuntimeError(f"no output for frame {sec}; log:\n{log.read_text()[-3000:]}")
        if i >= args.warmup:
            latencies.append(1000.0 * (driver.arrived[sec] - t))
    return latencies


def _open_loop(driver: _Driver, args: argparse.Namespace) -> tuple[int, int, float]:
    """Publish at ``--rate`` for ``--seconds``: frames sent, processed, and the seconds until
    the last one's output."""
    first = 5000
    done_before = len(driver.arrived)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < args.seconds:
        driver.send(first + i)
        i += 1
        next_t = t0 + i / args.rate
        while time.monotonic() < next_t:
            driver.executor.spin_once(timeout_sec=max(0.0, min(0.005, next_t - time.monotonic())))
    last = first + i - 1
    driver.spin_until(lambda: last in driver.arrived, 60.0)
    elapsed = driver.arrived.get(last, time.monotonic()) - t0
    return i, len(driver.arrived) - done_before, elapsed


def run_size(
    width: int, height: int, scale: float, args: argparse.Namespace, ckpt: Path, env: dict[str, str]
) -> dict[str, Any]:
    """Start the node for one image size and measure it (module docstring)."""
    log = Path(tempfile.mkstemp(prefix="node_latency_", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(_node_command(scale, args, ckpt), env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO)
    driver = _Driver(proc, *_frame(width, height, args, log))
    try:
        if not driver.spin_until(lambda: driver.image_pub.get_subscription_count() > 0
                                 and driver.info_pub.get_subscription_count() > 0, 120.0):
            raise RuntimeError(f"node did not start; log:\n{log.read_text()[-3000:]}")
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) \
            if args.contended else None
        try:
            lat = np.asarray(_closed_loop(driver, args, log))
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        n_det = sorted(set(driver.counts.values()))
        stage = dict(driver.diag.get("stage_ms", {}))
        sent, processed, elapsed = _open_loop(driver, args)
        return {
            "size": f"{width}x{height}",
            "input_scale": scale,
            "detections_per_frame": n_det,
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p95_ms": float(np.percentile(lat, 95)),
            "closed_loop_fps": float(1000.0 / lat.mean()),
            "open_loop_sent": sent,
            "open_loop_processed": processed,
            "open_loop_fps": processed / elapsed,
            "stage_ms": {k: round(v, 1) for k, v in stage.items()},
        }
    finally:
        driver.close()
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _samples_text(args: argparse.Namespace) -> str:
    """The posterior draw of the run, as the table reports it."""
    defaults = yaml.safe_load((REPO / "config" / "detector.yaml").read_text())
    node = defaults["/**"]["ros__parameters"]
    samples = node["num_posterior_samples"] if args.samples is None else args.samples
    iterations = node["posterior_iterations"] if args.iterations is None else args.iterations
    return f"{samples} (from {iterations} AMIS iterations)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1600x900:0.4,640x480:1.0",
                        help="comma-separated WxH:input_scale")
    parser.add_argument("--frames", type=int, default=30, help="closed-loop frames measured")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--detections", type=int, default=10)
    parser.add_argument("--samples", type=int, default=None,
                        help="posterior samples per object (default: config/detector.yaml's)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="AMIS iterations of the samples (default: config/detector.yaml's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the node")
    parser.add_argument("--rate", type=float, default=20.0, help="open-loop publish rate (Hz)")
    parser.add_argument("--seconds", type=float, default=5.0, help="open-loop duration")
    parser.add_argument("--wait-policy", choices=("default", "PASSIVE", "ACTIVE"),
                        default="default",
                        help="OMP_WAIT_POLICY of the node process (default: the node's own)")
    parser.add_argument("--contended", action="store_true",
                        help="one busy-looping process beside the node while measuring")
    parser.add_argument("--checkpoint", default="",
                        help="detector checkpoint (default: seeded random weights)")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "_ROS_WHEELS_BOOTSTRAP_COMPLETE"}
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env["OMP_NUM_THREADS"] = str(args.threads)
    env.pop("OMP_WAIT_POLICY", None)
    if args.wait_policy != "default":
        env["OMP_WAIT_POLICY"] = args.wait_policy
    os.environ.update({k: env[k] for k in
                       ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "AMENT_PREFIX_PATH")})
    import torch

    from epropnp_lib.diagnostics import small_op_time_us

    before = small_op_time_us()
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            ckpt = Path(args.checkpoint).resolve()
        else:
            ckpt = Path(tmp) / "bench_detector.ckpt"
            make_checkpoint(ckpt, args.detections)
        results = []
        for spec in args.sizes.split(","):
            size, scale = spec.split(":")
            w, h = (int(v) for v in size.split("x"))
            results.append(run_size(w, h, float(scale), args, ckpt, env))
    print(f"Model: {ckpt.name if args.checkpoint else 'seeded random small_config'}; "
          f"Device: CPU {platform.machine()}, node torch threads {args.threads}, "
          f"OMP_WAIT_POLICY {args.wait_policy}, "
          f"{'one busy process beside the node, ' if args.contended else ''}"
          f"{os.cpu_count()} cores; torch {torch.__version__}; {_samples_text(args)} posterior "
          f"samples per detection. CPU speed probe (one small tensor op, "
          f"`epropnp_lib.diagnostics.small_op_time_us`): {before:.2f} us before, "
          f"{small_op_time_us():.2f} us after.")
    print()
    print("| image | net input | detections | latency p50 (ms) | latency p95 (ms) | "
          "closed-loop fps | open-loop fps | node stages (ms, last frame) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        w, h = (int(v) for v in r["size"].split("x"))
        net_in = f"{round(w * r['input_scale'])}x{round(h * r['input_scale'])}"
        stages = ", ".join(f"{k} {v}" for k, v in r["stage_ms"].items())
        print(f"| {r['size']} | {net_in} | {r['detections_per_frame']} | "
              f"{r['latency_p50_ms']:.0f} | {r['latency_p95_ms']:.0f} | "
              f"{r['closed_loop_fps']:.1f} | {r['open_loop_fps']:.1f} | {stages} |")
    print()
    print("RAW " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
