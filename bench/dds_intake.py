"""How many raw camera frames reach the ``detector`` node over Fast DDS, with its defaults.

A plain publisher process (rclpy, ``sensor_msgs/Image`` rgb8 + ``CameraInfo``, sensor-data QoS
as camera drivers use) sends ``--frames`` frames at ``--rate`` Hz to the detector node (its own
process, ``config/detector.yaml`` defaults: raw transport, sensor-data QoS, the bundled model).
The node's ``images_received`` counter, read from its ``/diagnostics`` status, says how many
arrived. Each size runs twice, both processes with and without the project's Fast DDS profile
(``config/fastdds.xml``: a 64 MiB shared-memory segment; without it Fast DDS's 512 KiB
default).

Usage::

    .venv/bin/python bench/dds_intake.py                       # 640x360 and 1600x900, 10 Hz
    .venv/bin/python bench/dds_intake.py --sizes 1600x900 --frames 100 --rate 12
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NS = "/epropnp_intake"
PROFILE = REPO / "config" / "fastdds.xml"
MODEL = REPO / "models" / "detector_small_synthetic.pt"


def publish(width: int, height: int, frames: int, rate: float) -> None:
    """The publisher process: waits for the node's subscriptions, then ``frames`` frames."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from epropnp_ros.images import array_to_image
    from epropnp_ros.messages import make_header

    rclpy.init()
    node = rclpy.create_node("epropnp_intake_camera")
    image_pub = node.create_publisher(Image, f"{NS}/image", qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, f"{NS}/camera_info", qos_profile_sensor_data)
    deadline = time.monotonic() + 120.0
    while (image_pub.get_subscription_count() == 0 or info_pub.get_subscription_count() == 0) \
            and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    time.sleep(1.0)  # discovery of the reverse direction
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    k = np.array([[0.8 * width, 0, width / 2], [0, 0.8 * width, height / 2], [0, 0, 1.0]])
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5)
    info.k = k.reshape(-1).tolist()
    info.r = np.eye(3).reshape(-1).tolist()
    info.p = np.hstack((k, np.zeros((3, 1)))).reshape(-1).tolist()
    start = time.monotonic()
    for i in range(frames):
        header = make_header("intake_camera_optical", (1000 + i) * 1_000_000_000)
        image_pub.publish(array_to_image(rgb, "rgb8", header))
        info.header = header
        info_pub.publish(info)
        time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()


class _Counter:
    """This process: reads the node's ``images_received`` from ``/diagnostics``."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray

        rclpy.init()
        self.node = rclpy.create_node("epropnp_intake_counter")
        self.counters: dict[str, int] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_diag(self, msg: Any) -> None:
        from epropnp_ros.health import snapshot_from_values

        for status in msg.status:
            if status.name == f"{NS}/detector":
                snap = snapshot_from_values((kv.key, kv.value) for kv in status.values)
                if snap.state == "active":
                    self.counters = dict(snap.counters)

    def spin(self, seconds: float) -> None:
        import rclpy

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.shutdown()


def run(width: int, height: int, args: argparse.Namespace, profile: bool) -> dict[str, int]:
    env = dict(os.environ)
    if profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    else:
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    node = subprocess.Popen(
        [sys.executable, "-m", "epropnp_ros.nodes.detector", "--ros-args",
         "--params-file", str(REPO / "config" / "detector.yaml"), "-r", f"__ns:={NS}",
         "-p", f"checkpoint:={MODEL}", "-p", "autostart:=true",
         "-p", "diagnostics_period:=0.5", "-p", "input_scale:=0.2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counter = _Counter()
    try:
        pub = subprocess.Popen(
            [sys.executable, __file__, "--publish", f"{width}x{height}",
             "--frames", str(args.frames), "--rate", str(args.rate)], env=env)
        while pub.poll() is None:
            counter.spin(0.5)
        counter.spin(3.0)
        return dict(counter.counters)
    finally:
        counter.close()
        node.terminate()
        node.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="640x360,1600x900")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--publish", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        width, height = map(int, args.publish.split("x"))
        publish(width, height, args.frames, args.rate)
        return 0
    print(f"{args.frames} raw rgb8 frames at {args.rate:g} Hz, plain publisher -> detector node "
          "(defaults), both with / without config/fastdds.xml")
    print("| size | profile | images received by the node | frames processed |")
    print("|---|---|---|---|")
    for size in args.sizes.split(","):
        width, height = map(int, size.split("x"))
        for profile in (True, False):
            c = run(width, height, args, profile)
            got = c.get("images_received", 0)
            print(f"| {width}x{height} | {'config/fastdds.xml' if profile else 'Fast DDS default'}"
                  f" | {got} / {args.frames} ({100.0 * got / args.frames:.0f} %) | "
                  f"{c.get('frames_processed', 0)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
