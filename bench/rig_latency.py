"""A six-camera rig over DDS: one ``rig_detector`` node against six ``detector`` node processes.

A separate publisher process (this script with ``--publish``) plays the six cameras of a
generated nuScenes-format street scene (``scene-0103``, 1600x900 JPEGs as ``CompressedImage``,
their ``CameraInfo``, ``/tf_static`` base_link -> cameras) at ``--rate`` Hz, each camera at its
nuScenes trigger offset within the cycle (42 ms from first to last), stamped with the wall clock
at its trigger. This process runs the node(s) and receives their outputs:

* **rig**: one ``rig_detector`` node (fused in ``base_link``); latency of a cycle = arrival of
  its fused ``Detection3DArray`` - the stamp of the cycle's last camera;
* **per-camera**: six ``detector`` nodes (one per camera namespace); latency of a cycle = the
  arrival of the last of its six ``Detection3DArray`` - the same stamp.

Reported per run: cycle latency p50 / p95 over the measured cycles, dropped cycles (no output;
for per-camera, a cycle missing any camera's output), the latency of every output message
(arrival - its own stamp: the rig's fused output carries its slot's first stamp), the node
processes' CPU (% of one core, summed) and RSS (summed peak ``VmHWM``). ``--loads contended``
runs one busy-looping process beside the nodes while measuring. Input QoS is reliable (depth
2) for now: this VM's Fast DDS loses large best-effort messages (a Fast DDS profile is in the
works).

Usage::

    .venv/bin/python bench/rig_latency.py --rates 2,12 --seconds 20
    .venv/bin/python bench/rig_latency.py --modes rig --rates 2 --loads quiet,contended \
        --settings 1:default,2:default,2:PASSIVE --rounds 2
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

# ROS, torch and the package are imported inside the functions, after main() has set the ROS
# environment (AMENT_PREFIX_PATH, ROS_DOMAIN_ID, discovery range).
REPO = Path(__file__).resolve().parents[1]
RIG_NS = "/bench_rig"
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT",
           "CAM_FRONT_LEFT")
#: Seconds between the publisher's readiness and its first cycle (the nodes' discovery).
LEAD_S = 2.0


# --- the scene ---------------------------------------------------------------------------------
def make_scene(root: Path, width: int, height: int) -> Path:
    """Generate the scene and write ``rig.json``: per camera the JPEG path, K, the base_link
    <- camera transform and the trigger offset (s, from the cycle's first camera)."""
    from epropnp_lib.data.nuscenes import load_nuscenes
    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
    from epropnp_lib.generators.nuscenes_scene import SENSORS

    generate_nuscenes_mini(root, scenes=("scene-0103",), samples_per_scene=2,
                           image_size=(width, height), seed=7)
    nusc = load_nuscenes(root)
    offsets = {s.channel: s.offset_us * 1e-6 for s in SENSORS if s.channel in CAMERAS}
    first = min(offsets.values())
    cams = []
    for ch in CAMERAS:
        sd = next(r for r in nusc.sample_data if r["channel"] == ch and r["is_key_frame"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        cams.append({"channel": ch, "jpeg": str(root / sd["filename"]), "k": cs[
            "camera_intrinsic"], "rotation_wxyz": cs["rotation"], "translation": cs[
            "translation"], "offset_s": offsets[ch] - first, "width": width, "height": height})
    spec = root / "rig.json"
    spec.write_text(json.dumps(cams))
    return spec


# --- the publisher process ---------------------------------------------------------------------
def publish(spec_path: str, rate: float, seconds: float, subscribers: int) -> int:
    """The publisher process: wait for ``subscribers`` subscriptions on every image topic,
    print ``T0 <ns>`` (the first cycle's time), then play the cycles until ``seconds``."""
    import rclpy
    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage
    from tf2_msgs.msg import TFMessage

    from epropnp_ros.messages import make_header
    from epropnp_ros.nuscenes_bag import camera_frame

    cams = json.loads(Path(spec_path).read_text())
    rclpy.init()
    node = rclpy.create_node("epropnp_rig_bench_publisher")
    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    tf_pub = node.create_publisher(TFMessage, "/tf_static", latched)
    transforms = []
    pubs = []
    for cam in cams:
        ns = f"/{cam['channel'].lower()}"
        ts = TransformStamped(header=make_header("base_link", 0),
                              child_frame_id=camera_frame(cam["channel"]))
        t, q = cam["translation"], cam["rotation_wxyz"]
        ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = t
        r = ts.transform.rotation
        r.w, r.x, r.y, r.z = q
        transforms.append(ts)
        k = np.asarray(cam["k"], dtype=np.float64)
        info = CameraInfo(width=cam["width"], height=cam["height"], distortion_model="plumb_bob")
        info.k = k.reshape(-1).tolist()
        info.d = [0.0] * 5
        info.r = np.eye(3).reshape(-1).tolist()
        info.p = np.hstack((k, np.zeros((3, 1)))).reshape(-1).tolist()
        image = CompressedImage(format="jpeg", data=Path(cam["jpeg"]).read_bytes())
        pubs.append((node.create_publisher(CompressedImage, f"{ns}/image_raw/compressed", qos),
                     node.create_publisher(CameraInfo, f"{ns}/camera_info", qos),
                     image, info, camera_frame(cam["channel"]), float(cam["offset_s"])))
    tf_pub.publish(TFMessage(transforms=transforms))
    deadline = time.monotonic() + 120.0
    while any(p[0].get_subscription_count() < subscribers or p[1].get_subscription_count()
              < subscribers for p in pubs):
        if time.monotonic() > deadline:
            print("ERROR subscribers did not come", flush=True)
            return 1
        rclpy.spin_once(node, timeout_sec=0.05)
    t0 = (time.time_ns() // 1_000_000_000 + int(LEAD_S) + 1) * 1_000_000_000
    print(f"T0 {t0}", flush=True)
    period_ns = round(1e9 / rate)
    events = sorted((k * period_ns + round(p[5] * 1e9), i)
                    for k in range(int(seconds * rate)) for i, p in enumerate(pubs))
    for offset, i in events:
        image_pub, info_pub, image, info, frame, _ = pubs[i]
        when = t0 + offset
        while (now := time.time_ns()) < when:
            time.sleep(min(0.002, (when - now) / 1e9))
        header = make_header(frame, when)
        image.header, info.header = header, header
        image_pub.publish(image)
        info_pub.publish(info)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()
    return 0


# --- the nodes ---------------------------------------------------------------------------------
def _common(args: argparse.Namespace) -> list[str]:
    """Parameters of every node (``args.threads``: torch threads, 0 = the node's default)."""
    return ["-p", f"checkpoint:={Path(args.checkpoint).resolve()}", "-p", "autostart:=true",
            "-p", "image_transport:=compressed", "-p", f"input_scale:={args.input_scale}",
            "-p", f"torch_threads:={args.threads}"]


def _qos(topics: list[str]) -> list[str]:
    out = []
    for t in topics:
        out += ["-p", f"qos_overrides.{t}.subscription.reliability:=reliable",
                "-p", f"qos_overrides.{t}.subscription.depth:=2"]
    return out


def node_commands(mode: str, args: argparse.Namespace) -> list[list[str]]:
    namespaces = [f"/{ch.lower()}" for ch in CAMERAS]
    if mode == "rig":
        topics = [t for ns in namespaces for t in (f"{ns}/image_raw/compressed",
                                                   f"{ns}/camera_info")]
        return [[sys.executable, "-m", "epropnp_ros.nodes.rig_detector", "--ros-args",
                 "--params-file", str(REPO / "config" / "rig.yaml"), "-r", f"__ns:={RIG_NS}",
                 *_common(args), "-p", f"cameras:=[{', '.join(namespaces)}]", *_qos(topics)]]
    return [[sys.executable, "-m", "epropnp_ros.nodes.detector", "--ros-args",
             "--params-file", str(REPO / "config" / "detector.yaml"), "-r", f"__ns:={ns}",
             "-r", "image/compressed:=image_raw/compressed", *_common(args),
             *_qos([f"{ns}/image_raw/compressed", f"{ns}/camera_info"])]
            for ns in namespaces]


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class _Outputs:
    """This process's subscriptions to the node outputs: arrival wall time by stamp."""

    def __init__(self, mode: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from vision_msgs.msg import Detection3DArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("epropnp_rig_bench_driver", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        topics = [f"{RIG_NS}/detections"] if mode == "rig" else [
            f"/{ch.lower()}/detections" for ch in CAMERAS]
        self.arrived: dict[str, dict[int, int]] = {t: {} for t in topics}
        self.subs = [self.node.create_subscription(
            Detection3DArray, t, lambda m, t=t: self._on(t, m), qos) for t in topics]

    def _on(self, topic: str, msg: Any) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.arrived[topic].setdefault(stamp, time.time_ns())

    def ready(self) -> bool:
        return all(self.node.count_publishers(t) > 0 for t in self.arrived)

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _cycle_latencies(outputs: _Outputs, t0: int, rate: float, cycles: int, first: int,
                     last_offset_ns: int) -> tuple[list[float], int]:
    """Latencies (ms) of cycles ``first..cycles-1`` with an output on every topic, and how many
    had none (dropped)."""
    period = 1e9 / rate
    per_cycle: dict[int, list[int]] = {}
    for arrivals in outputs.arrived.values():
        seen: dict[int, int] = {}
        for stamp, t in arrivals.items():
            k = int(round((stamp - t0) / period))
            seen[k] = min(seen.get(k, t), t)
        for k, t in seen.items():
            per_cycle.setdefault(k, []).append(t)
    lat, dropped = [], 0
    for k in range(first, cycles):
        ts = per_cycle.get(k, [])
        if len(ts) < len(outputs.arrived):
            dropped += 1
            continue
        lat.append((max(ts) - (t0 + k * period + last_offset_ns)) / 1e6)
    return lat, dropped


def run(mode: str, rate: float, args: argparse.Namespace, spec: Path, env: dict[str, str],
        log_dir: Path) -> dict[str, Any]:
    """Start the node(s), play ``args.seconds`` at ``rate``, measure (module docstring)."""
    nodes = []
    for i, cmd in enumerate(node_commands(mode, args)):
        log = (log_dir / f"{mode}_{rate:g}hz_{i}.log").open("wb")
        nodes.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      cwd=REPO))
    outputs = _Outputs(mode)
    busy = None
    try:
        deadline = time.monotonic() + 180.0
        while not outputs.ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in nodes):
                raise RuntimeError(f"{mode}: nodes did not come up; logs in {log_dir}")
            outputs.executor.spin_once(timeout_sec=0.05)
        publisher = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--publish", str(spec),
             "--rates", str(rate), "--seconds", str(args.seconds)],
            env={k: v for k, v in env.items() if k != "OMP_WAIT_POLICY"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        assert publisher.stdout is not None
        seen = []
        while not (line := publisher.stdout.readline()).startswith("T0 "):
            seen.append(line)
            if not line or line.startswith("ERROR"):
                raise RuntimeError(f"publisher: {''.join(seen)}{publisher.stdout.read()}")
        t0 = int(line.split()[1])
        warm = t0 + round(args.warmup * 1e9)
        cpu0: list[float] = []
        wall0 = 0.0
        end = t0 + round(args.seconds * 1e9) + round(args.drain * 1e9)
        while time.time_ns() < end:
            if not cpu0 and time.time_ns() >= warm:
                if args.contended:
                    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                cpu0, wall0 = [_proc_cpu_s(p.pid) for p in nodes], time.monotonic()
            outputs.executor.spin_once(timeout_sec=0.01)
        cpu = sum(_proc_cpu_s(p.pid) for p in nodes) - sum(cpu0)
        wall = time.monotonic() - wall0
        rss = sum(_proc_peak_rss_mb(p.pid) for p in nodes)
        publisher.wait(timeout=30)
        cams = json.loads(spec.read_text())
        last = round(max(c["offset_s"] for c in cams) * 1e9)
        cycles = int(args.seconds * rate)
        lat, dropped = _cycle_latencies(outputs, t0, rate, cycles,
                                        int(np.ceil(args.warmup * rate)), last)
        arr = np.asarray(lat) if lat else np.full(1, np.nan)
        first_ns = t0 + round(args.warmup * 1e9)
        per_output = np.asarray([(t - s) / 1e6 for arrivals in outputs.arrived.values()
                                 for s, t in arrivals.items() if s >= first_ns]) \
            if any(outputs.arrived.values()) else np.full(1, np.nan)
        return {"mode": mode, "rate_hz": rate, "cycles": cycles - int(np.ceil(args.warmup * rate)),
                "processed": len(lat), "dropped": dropped,
                "latency_p50_ms": float(np.percentile(arr, 50)),
                "latency_p95_ms": float(np.percentile(arr, 95)),
                "outputs": int(per_output.size),
                "output_latency_p50_ms": float(np.percentile(per_output, 50)),
                "output_latency_p95_ms": float(np.percentile(per_output, 95)),
                "cpu_percent": 100.0 * cpu / wall, "rss_mb": rss}
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        outputs.close()
        for p in nodes:
            if p.poll() is None:
                p.send_signal(2)
        for p in nodes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="rig,per-camera", help="rig and/or per-camera")
    parser.add_argument("--rates", default="2,12", help="comma-separated cycle rates (Hz)")
    parser.add_argument("--seconds", type=float, default=20.0, help="played per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not measured")
    parser.add_argument("--drain", type=float, default=3.0, help="seconds after the last cycle")
    parser.add_argument("--image-size", default="1600x900")
    parser.add_argument("--input-scale", type=float, default=0.2,
                        help="network input scale (0.2: 320x180, the bundled model's scale)")
    parser.add_argument("--settings", default="0:PASSIVE",
                        help="comma-separated THREADS:WAIT_POLICY of the node processes (torch "
                             "threads, 0: torch's default; OMP_WAIT_POLICY default = libgomp's "
                             "own, PASSIVE (the nodes' default) or ACTIVE), run interleaved")
    parser.add_argument("--loads", default="quiet",
                        help="quiet and/or contended (one busy-looping process beside the "
                             "nodes while measuring)")
    parser.add_argument("--rounds", type=int, default=1, help="repeats of every combination")
    parser.add_argument("--checkpoint", default=str(REPO / "models" /
                                                    "detector_small_synthetic.pt"))
    parser.add_argument("--publish", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        return publish(args.publish, float(args.rates), args.seconds,
                       int(os.environ.get("RIG_BENCH_SUBSCRIBERS", "1")))

    env = {k: v for k, v in os.environ.items() if k != "_ROS_WHEELS_BOOTSTRAP_COMPLETE"}
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    os.environ.update({k: env[k] for k in
                       ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "AMENT_PREFIX_PATH")})
    width, height = (int(v) for v in args.image_size.split("x"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_scene(Path(tmp) / "scene", width, height)
        log_dir = Path(tempfile.mkdtemp(prefix="rig_latency_logs_"))
        combos = [(rnd, setting, load, float(rate), mode)
                  for rnd in range(args.rounds) for setting in args.settings.split(",")
                  for load in args.loads.split(",") for rate in args.rates.split(",")
                  for mode in args.modes.split(",")]
        for rnd, setting, load, rate, mode in combos:
            threads, policy = setting.split(":")
            args.threads, args.contended = int(threads), load == "contended"
            env.pop("OMP_NUM_THREADS", None)
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            # "default": libgomp's own policy (spin a while, then sleep); an empty value
            # overrides the nodes' PASSIVE default (epropnp_ros.nodes.THREAD_POLICY_ENV).
            env["OMP_WAIT_POLICY"] = "" if policy == "default" else policy
            r = run(mode, rate, args, spec, env, log_dir)
            r.update(round=rnd + 1, threads=args.threads, wait_policy=policy, load=load)
            results.append(r)
            print("RUN " + json.dumps(r), flush=True)
    print(f"\nCPU {platform.machine()}, {os.cpu_count()} cores; {width}x{height} JPEGs, input "
          f"scale {args.input_scale}; {args.seconds:g} s per run ({args.warmup:g} s warm-up); "
          f"reliable input QoS; torch threads 0 = torch's default. Logs: {log_dir}\n")
    print("| round | mode | torch threads | OMP_WAIT_POLICY | load | rate | cycles | dropped | "
          "cycle latency p50 / p95 (ms) | outputs | output latency p50 / p95 (ms) | "
          "CPU (% of a core) | RSS (MB) |")
    print("|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['round']} | {r['mode']} | {r['threads']} | {r['wait_policy']} | "
              f"{r['load']} | {r['rate_hz']:g} Hz | {r['cycles']} | {r['dropped']} | "
              f"{r['latency_p50_ms']:.0f} / {r['latency_p95_ms']:.0f} | {r['outputs']} | "
              f"{r['output_latency_p50_ms']:.0f} / {r['output_latency_p95_ms']:.0f} | "
              f"{r['cpu_percent']:.0f} | {r['rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
