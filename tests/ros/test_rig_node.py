"""The rig detector node in its own process, driven over DDS by this test process: three cameras,
small images, fused output in ``base_link``.

The node process is the real entry point (``python -m epropnp_ros.nodes.rig_detector --ros-args
--params-file config/rig.yaml ...``) with the seeded test fixture checkpoint of
``conftest.make_detector_checkpoint`` (meaningless but deterministic boxes, at most 4 per image).
This process publishes ``/tf_static`` (base_link -> three camera frames), then images and camera
infos per camera, and reads the fused and per-camera outputs and the diagnostics.

Cameras ``a`` and ``b`` are mounted at the same place and see the same image (every object of one
is visible in the other); camera ``c`` is 1 km away, looking backwards, and sees another image.
Synchronisation is by DDS matching and awaited messages; every wait has a timeout.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
NS = "/rig_test"
CAMERAS = ("/rig_test/cam_a", "/rig_test/cam_b", "/rig_test/cam_c")
FRAMES = ("cam_a_optical", "cam_b_optical", "cam_c_optical")
WIDTH, HEIGHT = 160, 120
K = np.array([[150.0, 0.0, 80.0], [0.0, 150.0, 60.0], [0.0, 0.0, 1.0]])
#: base_link <- optical frame of a camera looking along base_link x (optical x, y, z = -y, -z, x),
#: as a quaternion (x, y, z, w).
FORWARD_XYZW = (-0.5, 0.5, -0.5, 0.5)
#: The same camera turned to look along -x (base_link z by pi after the optical rotation).
BACKWARD_XYZW = (0.5, 0.5, -0.5, -0.5)
DEADLINE = 0.5
TIMEOUT = 60.0


def texture(seed: int) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (HEIGHT, WIDTH, 3), generator=g, dtype=torch.uint8).numpy()


class RigDriver:
    """This process's side: the rig's publishers, output subscriptions, waiting."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage
        from vision_msgs.msg import Detection3DArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("epropnp_rig_test_driver", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.tf_static = self.node.create_publisher(TFMessage, "/tf_static", latched)
        self.images = [self.node.create_publisher(Image, f"{ns}/image_raw", reliable)
                       for ns in CAMERAS]
        self.infos = [self.node.create_publisher(CameraInfo, f"{ns}/camera_info", reliable)
                      for ns in CAMERAS]
        self.fused: list[Any] = []
        self.samples: list[Any] = []
        self.per_camera: dict[str, list[Any]] = {ns: [] for ns in CAMERAS}
        self.diagnostics: dict[str, Any] | None = None
        self.node.create_subscription(Detection3DArray, f"{NS}/detections", self.fused.append,
                                      reliable)
        self.node.create_subscription(PoseArray, f"{NS}/pose_samples", self.samples.append,
                                      reliable)
        for ns in CAMERAS:
            self.node.create_subscription(Detection3DArray, f"{ns}/detections",
                                          self.per_camera[ns].append, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics,
                                      reliable)

    def _on_diagnostics(self, msg: Any) -> None:
        """The node's status as ``{"counters": ..., "rig": {"cameras": {ns: counters}}}``."""
        from epropnp_ros.health import snapshot_from_values

        for status in msg.status:
            if status.name != f"{NS}/rig_detector":
                continue
            snap = snapshot_from_values((kv.key, kv.value) for kv in status.values)
            cameras: dict[str, dict[str, int]] = {ns: {} for ns in CAMERAS}
            for key, value in snap.extra.items():
                if key.startswith("rig.cameras."):
                    ns, _, counter = key.removeprefix("rig.cameras.").rpartition(".")
                    cameras.setdefault(ns, {})[counter] = int(value)
            tf_frames = snap.extra.get("rig.tf_frames", "")
            self.diagnostics = {"counters": snap.counters, "rig": {
                "cameras": cameras, "target_frame": snap.extra.get("rig.target_frame"),
                "tf_frames": tf_frames.split(",") if tf_frames else []}}

    def close(self) -> None:
        from epropnp_ros.dds import release_rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        del self.node, self.executor
        release_rclpy(self.context)

    def wait_until(self, predicate: Callable[[], bool], what: str | Callable[[], str],
                   timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for "
                            f"{what() if callable(what) else what}")
            self.executor.spin_once(timeout_sec=0.05)

    def publish_tf_static(self) -> None:
        from geometry_msgs.msg import TransformStamped
        from tf2_msgs.msg import TFMessage

        from epropnp_ros.messages import make_header

        transforms = []
        for frame, t, q in ((FRAMES[0], (1.5, 0.0, 1.6), FORWARD_XYZW),
                            (FRAMES[1], (1.5, 0.0, 1.6), FORWARD_XYZW),
                            (FRAMES[2], (-1000.0, 0.0, 1.6), BACKWARD_XYZW)):
            ts = TransformStamped(header=make_header("base_link", 0), child_frame_id=frame)
            ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = t
            r = ts.transform.rotation
            r.x, r.y, r.z, r.w = q
            transforms.append(ts)
        self.tf_static.publish(TFMessage(transforms=transforms))

    def wait_for_node_inputs(self) -> None:
        self.wait_until(lambda: all(p.get_subscription_count() > 0
                                    for p in (*self.images, *self.infos)),
                        "the rig node's image and camera_info subscriptions")

    def send(self, camera: int, sec: int, seed: int, frame_id: str | None = None) -> None:
        from sensor_msgs.msg import CameraInfo

        from epropnp_ros.images import array_to_image
        from epropnp_ros.messages import make_header

        header = make_header(frame_id or FRAMES[camera], sec * 1_000_000_000)
        info = CameraInfo(header=header, width=WIDTH, height=HEIGHT, distortion_model="plumb_bob")
        info.k = K.reshape(-1).tolist()
        info.d = [0.0] * 5
        info.r = np.eye(3).reshape(-1).tolist()
        info.p = np.hstack((K, np.zeros((3, 1)))).reshape(-1).tolist()
        self.images[camera].publish(array_to_image(texture(seed), "rgb8", header))
        self.infos[camera].publish(info)

    def with_stamp(self, msgs: list[Any], sec: int) -> Any:
        return next((m for m in msgs if m.header.stamp.sec == sec), None)

    def wait_fused(self, sec: int, what: str) -> Any:
        self.wait_until(lambda: self.with_stamp(self.fused, sec) is not None,
                        lambda: f"fused detections of {what} (stamp {sec}); diagnostics "
                                f"{self.diagnostics}")
        return self.with_stamp(self.fused, sec)

    def counters(self) -> dict[str, Any]:
        assert self.diagnostics is not None
        return self.diagnostics

    def wait_counter(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
        self.wait_until(lambda: self.diagnostics is not None and predicate(self.diagnostics),
                        lambda: f"{what}; diagnostics {self.diagnostics}")


@pytest.fixture(scope="module")
def rig_process(
    ros_runtime: None, child_env: Mapping[str, str], tmp_path_factory: pytest.TempPathFactory,
    session_detector_checkpoint: Path,
    stop_ros_child: Callable[[subprocess.Popen[bytes]], None],
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    tmp = tmp_path_factory.mktemp("rig_node")
    ckpt = session_detector_checkpoint
    log = tmp / "node.log"
    qos = []
    for ns in CAMERAS:
        for topic in ("image_raw", "camera_info"):
            qos += ["-p", f"qos_overrides.{ns}/{topic}.subscription.reliability:=reliable",
                    "-p", f"qos_overrides.{ns}/{topic}.subscription.depth:=50"]
    cmd = [
        sys.executable, "-m", "epropnp_ros.nodes.rig_detector", "--ros-args",
        "--params-file", str(REPO / "config" / "rig.yaml"),
        "-r", f"__ns:={NS}",
        "-p", f"checkpoint:={ckpt}",
        "-p", "autostart:=true",
        "-p", f"cameras:=[{', '.join(CAMERAS)}]",
        "-p", "score_threshold:=0.0",
        "-p", "num_posterior_samples:=4",
        "-p", "fusion_nms_iou:=0.5",
        "-p", f"slot_deadline:={DEADLINE}",
        "-p", "per_camera_outputs:=true",
        "-p", "diagnostics_period:=0.1",
        "-p", "warn_throttle:=0.0",
        "-p", "torch_threads:=1",
        *qos,
    ]
    env = dict(child_env)
    env["OMP_NUM_THREADS"] = "1"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield proc, log
    finally:
        stop_ros_child(proc)


@pytest.fixture(scope="module")
def rig(ros_in_process: None, ros_runtime: None,
        rig_process: tuple[subprocess.Popen[bytes], Path]) -> Iterator[RigDriver]:
    d = RigDriver()
    try:
        d.publish_tf_static()
        d.wait_for_node_inputs()
        yield d
    finally:
        d.close()


def _log(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def _centres(msg: Any) -> list[tuple[str, np.ndarray]]:
    return [(d.results[0].hypothesis.class_id,
             np.array([d.bbox.center.position.x, d.bbox.center.position.y,
                       d.bbox.center.position.z])) for d in msg.detections]


def test_fused_output_is_in_base_link_and_duplicates_come_out_once(
    rig: RigDriver, rig_process: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, log = rig_process
    # The latched /tf_static reaches the node on its own subscription: wait until it is known.
    rig.wait_counter(lambda d: set(FRAMES) <= set(d["rig"]["tf_frames"]),
                     "the camera transforms in the node's TF buffer")
    for cam, seed in ((0, 1), (1, 1), (2, 2)):
        rig.send(cam, 100, seed)
    fused = rig.wait_fused(100, "a complete slot")
    assert fused.header.frame_id == "base_link", _log(log)
    rig.wait_until(lambda: all(rig.with_stamp(rig.per_camera[ns], 100) is not None
                               for ns in CAMERAS), "per-camera detections")
    per = [rig.with_stamp(rig.per_camera[ns], 100) for ns in CAMERAS]
    assert [p.header.frame_id for p in per] == list(FRAMES)
    n_a, n_b, n_c = (len(p.detections) for p in per)
    assert n_a == n_b >= 1 and n_c >= 1
    # a and b see the same objects from the same place: each comes out once.
    assert len(fused.detections) == n_a + n_c
    # Every fused detection is one of a camera's, moved into base_link: a's in front of the
    # car (forward camera at x = 1.5 m, looking along +x), c's 1 km behind.
    front = [c for _, c in _centres(fused) if c[0] > -500.0]
    behind = [c for _, c in _centres(fused) if c[0] <= -500.0]
    assert (len(front), len(behind)) == (n_a, n_c)
    cam_a = {(k, tuple(np.round(c, 6))) for k, c in _centres(per[0])}
    # Optical (x, y, z) of camera a = base_link (z + 1.5, -x, -y + 1.6).
    moved = {(k, tuple(np.round([c[2] + 1.5, -c[0], -c[1] + 1.6], 6))) for k, c in
             _centres(per[0])}
    assert len(cam_a) == n_a
    got = {(k, tuple(np.round(c, 6))) for k, c in _centres(fused) if c[0] > -500.0}
    assert got == moved
    for det in fused.detections:
        cov = np.asarray(det.results[0].pose.covariance).reshape(6, 6)
        assert np.all(np.isfinite(cov)) and np.allclose(cov, cov.T, rtol=1e-9, atol=1e-9)
        assert np.linalg.eigvalsh(cov).min() > -1e-6 * np.abs(cov).max()
        q = det.bbox.center.orientation
        assert math.isclose(q.x**2 + q.y**2 + q.z**2 + q.w**2, 1.0, rel_tol=1e-9)
    rig.wait_until(lambda: rig.with_stamp(rig.samples, 100) is not None, "pose samples")
    samples = rig.with_stamp(rig.samples, 100)
    assert samples.header.frame_id == "base_link"
    assert len(samples.poses) == 4 * len(fused.detections)
    assert proc.poll() is None


def test_silent_camera_slot_is_processed_at_the_deadline_and_counted(
    rig: RigDriver, rig_process: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, log = rig_process
    rig.wait_counter(lambda d: d["counters"]["slots_processed"] >= 1, "the first slot")
    before = rig.counters()["rig"]["cameras"][CAMERAS[2]]["frames_silent"]
    t0 = time.monotonic()
    rig.send(0, 200, 1)
    rig.send(1, 200, 1)  # camera c stays silent
    fused = rig.wait_fused(200, "a slot without camera c")
    waited = time.monotonic() - t0
    assert waited >= DEADLINE * 0.9, waited  # processed at the deadline, not before
    rig.wait_until(lambda: rig.with_stamp(rig.per_camera[CAMERAS[0]], 200) is not None,
                   "camera a's own detections")
    per_a = rig.with_stamp(rig.per_camera[CAMERAS[0]], 200)
    assert len(fused.detections) == len(per_a.detections)  # b duplicates a, c is absent
    rig.wait_counter(lambda d: d["rig"]["cameras"][CAMERAS[2]]["frames_silent"] == before + 1,
                     "camera c counted silent")
    diag = rig.counters()
    assert diag["counters"]["slots_expired"] >= 1
    assert diag["rig"]["cameras"][CAMERAS[0]]["frames_silent"] == 0
    assert "[slots_expired]" in _log(log) and CAMERAS[2] in _log(log)
    # c's frame arriving afterwards is late: dropped and counted, nothing published for it.
    rig.send(2, 200, 2)
    rig.wait_counter(lambda d: d["rig"]["cameras"][CAMERAS[2]]["frames_late"] >= 1,
                     "camera c's late frame counted")
    assert proc.poll() is None


def test_missing_transform_is_warned_counted_and_never_fused(
    rig: RigDriver, rig_process: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, log = rig_process
    rig.send(0, 300, 1)
    rig.send(1, 300, 3, frame_id="cam_unknown_optical")  # no transform to base_link
    rig.send(2, 300, 2)
    fused = rig.wait_fused(300, "a slot with one camera of unknown frame")
    assert fused.header.frame_id == "base_link"
    rig.wait_until(lambda: all(rig.with_stamp(rig.per_camera[ns], 300) is not None
                               for ns in CAMERAS), "per-camera detections")
    per = [rig.with_stamp(rig.per_camera[ns], 300) for ns in CAMERAS]
    # b's detections exist, in b's own frame only; the fused output holds a's and c's.
    assert per[1].header.frame_id == "cam_unknown_optical" and len(per[1].detections) >= 1
    assert len(fused.detections) == len(per[0].detections) + len(per[2].detections)
    rig.wait_counter(lambda d: d["rig"]["cameras"][CAMERAS[1]]["missing_transform"] >= 1,
                     "camera b's missing transform counted")
    assert rig.counters()["counters"]["missing_transform"] >= 1
    assert "[missing_transform]" in _log(log) and "cam_unknown_optical" in _log(log)
    assert proc.poll() is None, _log(log)
