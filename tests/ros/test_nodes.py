"""The detector lifecycle node in its own process, driven over DDS by this test process.

The node process is the real entry point (``python -m epropnp_ros.nodes.detector --ros-args
--params-file config/detector.yaml ...``). This process publishes ``Image`` + ``CameraInfo``,
calls the standard lifecycle and parameter services, and checks what comes back.

Test fixture (documented in ``conftest.make_detector_checkpoint``, not a product checkpoint): a
deformable correspondence network of
:func:`~epropnp_lib.nets.deformable.small_config` with weights initialised from a fixed seed
(``torch.random.fork_rng`` + ``manual_seed(0)``, so the global RNG is untouched), a score
threshold of 0 and at most 4 detections, saved into ``tmp_path`` with ``net.save``. Its boxes are
meaningless but deterministic: the test checks the message plumbing (frame ids, stamps,
covariance layout and positive semi-definiteness, lifecycle, robustness, load behaviour),
not accuracy.

Synchronisation is by DDS matching, service responses and awaited messages, never by fixed
sleeps; every wait has a timeout.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
NS = "/epropnp_test"
NODE = "detector"
FRAME = "test_camera_optical"
WIDTH, HEIGHT = 160, 120
K = np.array([[150.0, 0.0, 80.0], [0.0, 150.0, 60.0], [0.0, 0.0, 1.0]])
MAX_PIXELS = 2 * WIDTH * HEIGHT  # the node's max_image_pixels
START_TIMEOUT = 60.0
TIMEOUT = 30.0


# --- fixtures ----------------------------------------------------------------------------------
def texture_image() -> np.ndarray:
    """``(HEIGHT, WIDTH, 3)`` uint8: a fixed pseudo-random texture (torch.Generator)."""
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (HEIGHT, WIDTH, 3), generator=g, dtype=torch.uint8).numpy()




class Driver:
    """This process's side: publishers, subscriptions, service clients, and waiting."""

    def __init__(self) -> None:
        import rclpy
        from autoware_perception_msgs.msg import DetectedObjects
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import SetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage
        from vision_msgs.msg import Classification, Detection3DArray
        from visualization_msgs.msg import MarkerArray

        #: The node process's log file, whose tail a timed-out wait prints.
        self.node_log: Path | None = None
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("epropnp_test_driver", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, f"{NS}/image", reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, f"{NS}/camera_info", reliable)
        self.received: dict[str, list[Any]] = {
            k: [] for k in ("detections", "objects", "attributes", "pose", "pose_samples",
                            "markers", "tf")
        }
        self.diagnostics: dict[str, Any] | None = None
        self.diagnostics_count = 0
        #: (level, message) of every status of the node received, in order.
        self.levels: list[tuple[int, str]] = []
        self.arrival: dict[tuple[int, int], float] = {}
        for key, msg_type, topic in (
            ("detections", Detection3DArray, f"{NS}/detections"),
            ("objects", DetectedObjects, f"{NS}/objects"),
            ("attributes", Classification, f"{NS}/detection_attributes"),
            ("pose", PoseWithCovarianceStamped, f"{NS}/pose"),
            ("pose_samples", PoseArray, f"{NS}/pose_samples"),
            ("markers", MarkerArray, f"{NS}/markers"),
            ("tf", TFMessage, "/tf"),
        ):
            self.node.create_subscription(msg_type, topic, self._collector(key), reliable)
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable
        )
        self.change_state: Any = self.node.create_client(
            ChangeState, f"{NS}/{NODE}/change_state")
        self.get_state: Any = self.node.create_client(GetState, f"{NS}/{NODE}/get_state")
        self.set_params: Any = self.node.create_client(
            SetParameters, f"{NS}/{NODE}/set_parameters")

    def _collector(self, key: str) -> Callable[[Any], None]:
        def collect(msg: Any) -> None:
            self.received[key].append(msg)
            if key == "detections":
                stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
                self.arrival.setdefault(stamp, time.monotonic())

        return collect

    def _on_diagnostics(self, msg: Any) -> None:
        from epropnp_ros.health import snapshot_from_values

        for status in msg.status:
            if status.name != f"{NS}/{NODE}":
                continue
            snap = snapshot_from_values((kv.key, kv.value) for kv in status.values)
            self.diagnostics = {"counters": snap.counters, "latency_ms": snap.latency_ms,
                                "stage_ms": snap.stage_ms, "state": snap.state}
            self.levels.append((status.level[0], status.message))
            self.diagnostics_count += 1

    def close(self) -> None:
        from epropnp_ros.dds import release_rclpy

        self.node.destroy_node()
        del self.node
        release_rclpy(self.context)

    # --- waiting ---------------------------------------------------------------------------
    def wait_until(self, predicate: Callable[[], bool], what: str | Callable[[], str],
                   timeout: float = TIMEOUT) -> None:
        """Spin until ``predicate()``; fail after ``timeout`` s with ``what`` (a string, or a
        callable giving one at the time of the failure, e.g. with the counters' values)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                text = what() if callable(what) else what
                log = "" if self.node_log is None else "\nnode log (tail):\n" + _log(self.node_log)
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {text}{log}")
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, client: Any, request: Any, timeout: float = TIMEOUT,
             resend_after: float | None = None) -> Any:
        """Call ``client`` and wait for the response. ``resend_after`` (idempotent requests
        only): send the request again when no response came within that many seconds. A
        response can be lost while discovery is incomplete: ``service_is_ready`` means this
        side matched the service, yet the service's reply writer may not have matched this
        client's reply reader yet (Fast DDS then drops the reply)."""
        self.wait_until(lambda: client.service_is_ready(), f"service {client.srv_name}",
                        START_TIMEOUT)
        futures = [client.call_async(request)]
        sent = time.monotonic()

        def answered() -> bool:
            nonlocal sent
            if any(f.done() for f in futures):
                return True
            if resend_after is not None and time.monotonic() - sent > resend_after:
                futures.append(client.call_async(request))
                sent = time.monotonic()
            return False

        self.wait_until(answered, lambda: f"response of {client.srv_name} "
                        f"({len(futures)} request(s) sent)", timeout)
        return next(f for f in futures if f.done()).result()

    # --- lifecycle & parameters ------------------------------------------------------------
    def state(self) -> str:
        """The node's lifecycle state label. GetState is idempotent, so it is re-sent when a
        response is late; the first call thereby also completes the discovery that the other
        (non-idempotent) service calls rely on."""
        from lifecycle_msgs.srv import GetState

        label: str = self.call(self.get_state, GetState.Request(), timeout=START_TIMEOUT,
                               resend_after=5.0).current_state.label
        return label

    def transition(self, transition_id: int) -> bool:
        from lifecycle_msgs.srv import ChangeState

        req = ChangeState.Request()
        req.transition.id = transition_id
        ok: bool = self.call(self.change_state, req, timeout=120.0).success
        return ok

    def set_parameter(self, name: str, value: Any) -> Any:
        from rclpy.parameter import Parameter

        req = self.set_params.srv_type.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]
        )
        return self.call(self.set_params, req).results[0]

    def counters(self) -> dict[str, int]:
        assert self.diagnostics is not None
        counters: dict[str, int] = self.diagnostics["counters"]
        return counters

    def settled(self) -> bool:
        """Whether the latest diagnostics show every paired frame finished: processed, skipped
        as bad input, failed, or dropped as stale. False while a frame waits in the node's slot or
        is being processed (its counter moves only after its outputs are published, so a
        diagnostics message sent between the outputs and that increment is one frame behind)."""
        if self.diagnostics is None:
            return False
        c = self.counters()
        finished = sum(c[k] for k in ("frames_processed", "frames_dropped_stale", "bad_image",
                                      "bad_camera_info", "size_mismatch", "pipeline_errors"))
        return finished == c["frames_paired"]

    def wait_counter(self, name: str, at_least: int, what: str) -> None:
        self.wait_until(
            lambda: self.diagnostics is not None and self.counters()[name] >= at_least,
            f"{what} (diagnostics counter {name} >= {at_least})",
        )

    # --- input -----------------------------------------------------------------------------
    def wait_for_node_inputs(self) -> None:
        self.wait_until(
            lambda: self.image_pub.get_subscription_count() > 0
            and self.info_pub.get_subscription_count() > 0,
            "the node's image and camera_info subscriptions",
        )

    def send(
        self, sec: int, image: Any = None, info: Any = None, *, with_info: bool = True
    ) -> tuple[int, int]:
        """Publish one image (default: the good test image) and its camera info."""
        from epropnp_ros.images import array_to_image
        from epropnp_ros.messages import make_header

        header = make_header(FRAME, sec * 1_000_000_000)
        img = image if image is not None else array_to_image(texture_image(), "rgb8", header)
        img.header = header
        self.image_pub.publish(img)
        if with_info:
            ci = info if info is not None else camera_info()
            ci.header = header
            self.info_pub.publish(ci)
        return (sec, 0)

    def detections_with_stamp(self, stamp: tuple[int, int]) -> Any:
        for msg in self.received["detections"]:
            if (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp:
                return msg
        return None

    def wait_output(self, stamp: tuple[int, int], what: str, timeout: float = TIMEOUT) -> Any:
        self.wait_until(lambda: self.detections_with_stamp(stamp) is not None,
                        f"detections of {what} (stamp {stamp})", timeout)
        return self.detections_with_stamp(stamp)


def camera_info(width: int = WIDTH, height: int = HEIGHT) -> Any:
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    msg.k = K.reshape(-1).tolist()
    msg.d = [0.0] * 5
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack((K, np.zeros((3, 1)))).reshape(-1).tolist()
    return msg


@pytest.fixture(scope="module")
def detector_process(
    ros_runtime: None, child_env: Mapping[str, str], tmp_path_factory: pytest.TempPathFactory,
    stop_ros_child: Callable[[subprocess.Popen[bytes]], None],
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """The node process, started unconfigured with a checkpoint path that does not exist yet
    (the test writes it after checking that configure fails); yields (process, checkpoint,
    log file)."""
    tmp = tmp_path_factory.mktemp("detector_node")
    ckpt = tmp / "detector_fixture.ckpt"
    log = tmp / "node.log"
    cmd = [
        sys.executable, "-m", "epropnp_ros.nodes.detector", "--ros-args",
        "--params-file", str(REPO / "config" / "detector.yaml"),
        "-r", f"__ns:={NS}",
        "-p", f"checkpoint:={ckpt}",
        "-p", "score_threshold:=0.0",
        "-p", "num_posterior_samples:=8",
        "-p", "publish_tf:=true",
        "-p", "diagnostics_period:=0.1",
        "-p", "warn_throttle:=0.0",
        "-p", "torch_threads:=1",
        "-p", f"max_image_pixels:={MAX_PIXELS}",
        # The burst test must not lose frames in DDS: a reliable image subscription, via the
        # standard QoS override parameters.
        "-p", f"qos_overrides.{NS}/image.subscription.reliability:=reliable",
        "-p", f"qos_overrides.{NS}/image.subscription.depth:=200",
        "-p", f"qos_overrides.{NS}/camera_info.subscription.reliability:=reliable",
        "-p", f"qos_overrides.{NS}/camera_info.subscription.depth:=200",
    ]
    env = dict(child_env)
    env["OMP_NUM_THREADS"] = "1"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield proc, ckpt, log
    finally:
        stop_ros_child(proc)


@pytest.fixture(scope="module")
def driver(ros_in_process: None, ros_runtime: None) -> Iterator[Driver]:
    d = Driver()
    try:
        yield d
    finally:
        d.close()


def _reached(deadline: float) -> bool:
    return time.monotonic() >= deadline


def _log(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def _check_covariance(cov36: Any) -> np.ndarray:
    cov = np.asarray(cov36, dtype=np.float64).reshape(6, 6)
    assert np.all(np.isfinite(cov))
    np.testing.assert_allclose(cov, cov.T, rtol=1e-9, atol=1e-12)
    eig = np.linalg.eigvalsh(cov)
    assert eig.min() >= -1e-9 * max(1.0, eig.max()), eig
    return cov


# --- the test ----------------------------------------------------------------------------------
def test_detector_node_end_to_end(
    detector_process: tuple[subprocess.Popen[bytes], Path, Path], driver: Driver,
    write_detector_checkpoint: Callable[[Path], Path],
) -> None:
    from lifecycle_msgs.msg import Transition

    proc, ckpt, log = detector_process
    driver.node_log = log

    # 1. Unconfigured at start; configure fails with the reason logged while the checkpoint
    #    does not exist (never random weights), and the node stays unconfigured.
    assert driver.state() == "unconfigured", _log(log)
    assert driver.transition(Transition.TRANSITION_CONFIGURE) is False
    assert driver.state() == "unconfigured"
    assert proc.poll() is None
    assert "configure failed" in _log(log) and str(ckpt) in _log(log)
    # ... and its /diagnostics status says so (ERROR).
    driver.wait_until(lambda: any(lvl == 2 and "failed to load" in m for lvl, m in driver.levels),
                      lambda: f"an ERROR status after the failed configure: {driver.levels[-3:]}")

    # 2. Out-of-range and invalid parameter values are rejected with a reason.
    res = driver.set_parameter("score_threshold", 1.5)
    assert not res.successful and "score_threshold" in res.reason, res.reason
    res = driver.set_parameter("device", "tpu")
    assert not res.successful and "tpu" in res.reason, res.reason
    res = driver.set_parameter("score_threshold", 0.0)
    assert res.successful, res.reason

    # 3. With the fixture checkpoint: configure -> inactive, activate -> active.
    write_detector_checkpoint(ckpt)
    assert driver.transition(Transition.TRANSITION_CONFIGURE) is True, _log(log)
    assert driver.state() == "inactive"
    assert driver.transition(Transition.TRANSITION_ACTIVATE) is True, _log(log)
    assert driver.state() == "active"
    driver.wait_for_node_inputs()

    # 4. A good frame: every output arrives with the image's frame id and stamp.
    stamp = driver.send(1000)
    det = driver.wait_output(stamp, "the first good frame", timeout=60.0)
    driver.wait_until(
        lambda: all(
            any((m.header.stamp.sec, m.header.stamp.nanosec) == stamp for m in driver.received[k])
            for k in ("pose", "pose_samples")
        ) and any(
            mk.header.stamp.sec == stamp[0] for m in driver.received["markers"]
            for mk in m.markers
        ) and bool(driver.received["tf"]),
        "pose, pose_samples, markers and tf of the first frame",
    )
    assert det.header.frame_id == FRAME
    assert 1 <= len(det.detections) <= 4
    for d in det.detections:
        assert d.header.frame_id == FRAME and (d.header.stamp.sec, d.header.stamp.nanosec) == stamp
        [hyp] = d.results
        assert hyp.hypothesis.class_id in {
            "car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian",
            "motorcycle", "bicycle", "traffic_cone", "barrier",
        }
        cov = _check_covariance(hyp.pose.covariance)
        # 4DoF: the unobserved rotations (about camera x and z) carry the documented variance.
        assert cov[3, 3] == cov[5, 5] == 1.0e6
        assert 0.0 < cov[4, 4] < 1.0e6
        q = hyp.pose.pose.orientation
        assert math.isclose(q.x**2 + q.y**2 + q.z**2 + q.w**2, 1.0, rel_tol=1e-6)
        assert abs(q.x) < 1e-9 and abs(q.z) < 1e-9  # a yaw about the camera y axis
        assert d.bbox.size.x > 0 and d.bbox.size.y > 0 and d.bbox.size.z > 0
    [pose] = [m for m in driver.received["pose"]
              if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp]
    assert pose.header.frame_id == FRAME
    _check_covariance(pose.pose.covariance)
    best = max(det.detections, key=lambda d: d.results[0].hypothesis.score)
    assert pose.pose.pose.position.x == best.results[0].pose.pose.position.x
    [samples] = [m for m in driver.received["pose_samples"]
                 if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp]
    assert samples.header.frame_id == FRAME
    assert len(samples.poses) == 8 * len(det.detections)
    markers = [mk for m in driver.received["markers"] for mk in m.markers
               if mk.header.stamp.sec == stamp[0]]
    assert markers and all(mk.header.frame_id == FRAME for mk in markers)
    assert {mk.ns for mk in markers} >= {"epropnp/boxes", "epropnp/covariance"}
    tf = driver.received["tf"][-1].transforms
    assert len(tf) == len(det.detections)
    assert all(t.header.frame_id == FRAME for t in tf)
    # DetectedObjects and the attributes: the same objects in the same order, with the
    # covariance and the velocity (the fixture network has a velocity head) filled.
    def stamped(key: str) -> Any:
        driver.wait_until(lambda: any((m.header.stamp.sec, m.header.stamp.nanosec) == stamp
                                      for m in driver.received[key]), f"{key} of the first frame")
        return next(m for m in driver.received[key]
                    if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp)

    objects, attributes = stamped("objects"), stamped("attributes")
    assert objects.header.frame_id == FRAME and len(objects.objects) == len(det.detections)
    assert len(attributes.results) == len(det.detections)
    for obj, d in zip(objects.objects, det.detections, strict=True):
        kin, hyp = obj.kinematics, d.results[0]
        assert kin.pose_with_covariance.pose.position == hyp.pose.pose.position
        np.testing.assert_allclose(kin.pose_with_covariance.covariance, hyp.pose.covariance)
        assert kin.has_twist and kin.has_position_covariance
        assert obj.existence_probability == pytest.approx(hyp.hypothesis.score)
    # The node's /diagnostics status: OK while it processes, with the documented keys.
    driver.wait_until(lambda: bool(driver.levels) and driver.levels[-1] == (0, "processing")
                      and driver.counters()["frames_processed"] >= 1,
                      lambda: f"an OK status after the first frame: {driver.levels[-3:]}")
    assert driver.diagnostics is not None and driver.diagnostics["state"] == "active"
    assert {"frames_processed", "images_received", "image_too_large", "bad_image",
            "frames_dropped_stale"} <= set(driver.counters())
    assert {"p50", "p95", "n"} <= set(driver.diagnostics["latency_ms"])
    assert "total" in driver.diagnostics["stage_ms"]

    # 5. Bad input never kills the node: each case -> counter (+ warning), then a good frame
    #    is processed.
    from epropnp_ros.images import array_to_image
    from epropnp_ros.messages import make_header

    rgb = texture_image()
    unsupported = array_to_image(rgb, "rgb8", None)
    unsupported.encoding = "nv21"
    empty = array_to_image(rgb, "rgb8", None)
    empty.width = empty.height = empty.step = 0
    empty.data = []
    truncated = array_to_image(rgb, "rgb8", None)
    truncated.data = bytes(truncated.data)[: len(truncated.data) // 2]
    nan_info = camera_info()
    nan_info.k[0] = float("nan")
    small = array_to_image(np.ascontiguousarray(rgb[: HEIGHT // 2, : WIDTH // 2]), "rgb8", None)
    oversized = array_to_image(np.zeros((2 * HEIGHT, 2 * WIDTH, 3), np.uint8), "rgb8", None)
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("unsupported encoding", "bad_image", {"image": unsupported}),
        ("zero-size image", "bad_image", {"image": empty}),
        ("truncated image", "bad_image", {"image": truncated}),
        ("NaN camera info", "bad_camera_info", {"info": nan_info}),
        ("size mismatch", "size_mismatch", {"image": small}),
        ("oversized image", "image_too_large", {"image": oversized}),
        ("missing camera info", "images_unpaired", {"with_info": False}),
    ]
    driver.wait_until(lambda: driver.diagnostics is not None, "diagnostics")
    sec = 2000
    for what, counter, kwargs in cases:
        before = driver.counters()[counter]
        driver.send(sec, **kwargs)
        if counter == "images_unpaired":
            # The unpaired image is dropped (and counted) once a newer frame pairs.
            sec += 1
            good = driver.send(sec)
            driver.wait_counter(counter, before + 1, what)
        else:
            driver.wait_counter(counter, before + 1, what)
            sec += 1
            good = driver.send(sec)
        driver.wait_output(good, f"the good frame after a {what}")
        sec += 1
        assert proc.poll() is None, _log(log)
    text = _log(log)
    for kind in ("bad_image", "bad_camera_info", "size_mismatch", "no_camera_info",
                 "image_too_large"):
        assert f"[{kind}]" in text, f"no warning of kind {kind} in the node log:\n{text}"

    # 6. A burst of 100 frames at 100 Hz: the newest frame is processed, stale ones are dropped
    #    and counted, latency stays bounded (no backlog).
    driver.wait_until(driver.settled, lambda: f"the node to settle: {driver.counters()}")
    c0 = dict(driver.counters())
    frame_ms = float(driver.diagnostics["stage_ms"]["total"])
    diag_before = driver.diagnostics_count
    t_start = time.monotonic()
    last = None
    for i in range(100):
        last = driver.send(3000 + i)
        driver.executor.spin_once(timeout_sec=0.0)
        # 100 Hz pacing of the publisher (not a synchronisation).
        time.sleep(max(0.0, t_start + 0.01 * (i + 1) - time.monotonic()))
    t_sent = time.monotonic()
    assert last is not None
    driver.wait_output(last, "the newest frame of the burst", timeout=60.0)
    delay = driver.arrival[last] - t_sent
    # The executor kept serving its other callbacks while the model was busy: the 10 Hz
    # diagnostics timer fired throughout the burst (a blocked executor would stall it).
    busy_s = driver.arrival[last] - t_start
    assert driver.diagnostics_count - diag_before >= max(3, int(busy_s * 10 * 0.3)), (
        driver.diagnostics_count - diag_before, busy_s)
    # Every image of the burst is accounted for: paired, then processed or dropped as stale,
    # or dropped unpaired (the pairer keeps a few per kind: under heavy load the images can
    # run ahead of their camera infos) -- never lost silently.
    def delta(name: str) -> int:
        return int(driver.counters()[name]) - int(c0[name])

    burst = ("images_received", "frames_paired", "images_unpaired", "frames_processed",
             "frames_dropped_stale", "bad_image", "pipeline_errors")
    driver.wait_until(
        lambda: delta("frames_paired") + delta("images_unpaired") == 100
        and delta("frames_processed") + delta("frames_dropped_stale") == delta("frames_paired"),
        lambda: "burst accounting: each of the 100 images paired (then processed or dropped) or "
        f"counted unpaired; counter deltas: { {k: delta(k) for k in burst} }",
    )
    c1 = driver.counters()
    processed = c1["frames_processed"] - c0["frames_processed"]
    dropped = c1["frames_dropped_stale"] - c0["frames_dropped_stale"]
    burst_stamps = sorted(
        m.header.stamp.sec for m in driver.received["detections"] if m.header.stamp.sec >= 3000
    )
    assert burst_stamps[-1] == 3099 and len(burst_stamps) == processed
    assert dropped > 0 and processed < 100
    # Bounded latency: the newest frame comes out within a few frame times of the end of the
    # burst (a backlog of ~100 frames would take ~100 frame times).
    assert delay < 4 * frame_ms / 1000.0 + 3.0, (delay, frame_ms)
    latency = driver.diagnostics["latency_ms"]
    assert latency["n"] > 0 and latency["p95"] < 4 * frame_ms + 3000.0, latency
    # Most of the burst was dropped as stale: the status turned WARN and says so.
    driver.wait_until(
        lambda: any(lvl == 1 and "dropped" in m for lvl, m in driver.levels[-20:]),
        lambda: f"a WARN status on the burst's drops: {driver.levels[-5:]}")

    # 6b. Camera infos that arrive late (1 s after their images, as DDS can deliver them):
    #     every frame waits for its info and is processed; none is dropped for waiting.
    driver.wait_until(driver.settled, lambda: f"the node to settle: {driver.counters()}")
    c0 = dict(driver.counters())
    period = max(0.2, 2.0 * frame_ms / 1000.0)
    delay, n_late = 1.0, 8
    schedule = sorted([(i * period, "image", i) for i in range(n_late)]
                      + [(i * period + delay, "info", i) for i in range(n_late)])
    t0 = time.monotonic()
    for at, kind, i in schedule:
        driver.wait_until(partial(_reached, t0 + at), "the publishing schedule")
        header = make_header(FRAME, 5000 * 1_000_000_000 + round(i * period * 1e9))
        if kind == "image":
            driver.image_pub.publish(array_to_image(rgb, "rgb8", header))
        else:
            info = camera_info()
            info.header = header
            driver.info_pub.publish(info)
    driver.wait_until(lambda: delta("frames_processed") == n_late,
                      lambda: f"the {n_late} late-info frames: { {k: delta(k) for k in burst} }")
    assert delta("images_unpaired") == 0 and delta("frames_dropped_stale") == 0

    # 7. Deactivate: the inputs are gone (no more subscriptions); cleanup -> unconfigured.
    assert driver.transition(Transition.TRANSITION_DEACTIVATE) is True
    assert driver.state() == "inactive"
    driver.wait_until(lambda: driver.image_pub.get_subscription_count() == 0,
                      "the node's image subscription to go away")
    assert driver.transition(Transition.TRANSITION_CLEANUP) is True
    assert driver.state() == "unconfigured"

    # 8. Configure and activate again (publishers, parameters and QoS overrides re-created),
    #    then a clean shutdown on SIGINT (Ctrl-C) while frames are being processed: exit 0.
    assert driver.transition(Transition.TRANSITION_CONFIGURE) is True, _log(log)
    assert driver.transition(Transition.TRANSITION_ACTIVATE) is True, _log(log)
    driver.wait_for_node_inputs()
    again = driver.send(4000)
    driver.wait_output(again, "a frame after re-activation")
    for i in range(20):
        driver.send(4001 + i)
    offset = len(log.read_text(errors="replace"))
    segments = _shared_memory_files(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"node did not exit on SIGINT:\n{_log(log)}")
    assert rc == 0, _log(log)
    after = log.read_text(errors="replace")[offset:]
    assert "Traceback" not in after and "ERROR" not in after, after
    # 9. Its Fast DDS shared-memory segments left /dev/shm with it (each is 64 MiB with the
    #    project's profile; left behind, they fill the machine's memory run after run).
    assert not [f for f in segments if f.exists()], segments


def _shared_memory_files(pid: int) -> list[Path]:
    """The Fast DDS shared-memory files a process holds open (its segments' ``_el`` locks,
    and the segments), from ``/proc/<pid>/fd``; empty where there is no ``/proc``."""
    fd_dir = Path(f"/proc/{pid}/fd")
    held = set()
    for fd in fd_dir.iterdir() if fd_dir.is_dir() else ():
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.parent == Path("/dev/shm") and target.name.startswith("fastdds_") \
                and target.name.endswith("_el") and "port" not in target.name:
            held |= {target, target.with_name(target.name[:-3])}
    return sorted(held)


# --- the pose estimator, in this process -----------------------------------------------------
class InProcess:
    """A node under test and a driver node in one private rclpy context and executor; a
    context manager that cleans both up."""

    def __init__(self, make_node: Callable[[Any], Any], driver_name: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = make_node(self.context)
        self.driver = rclpy.create_node(driver_name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.driver)

    def wait(self, pred: Callable[[], bool], what: str) -> None:
        """Spin until ``pred()``; fail after ``TIMEOUT`` s naming ``what`` and the counters."""
        deadline = time.monotonic() + TIMEOUT
        while not pred():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}: {self.node.counters}")
            self.executor.spin_once(timeout_sec=0.05)

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:

        from epropnp_ros.dds import release_rclpy

        self.node._stop_inputs()
        self.executor.shutdown()
        self.node.destroy_node()
        self.driver.destroy_node()
        del self.node, self.driver, self.executor
        release_rclpy(self.context)


def test_rois_from_detections_filters_and_orders() -> None:
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    from epropnp_ros.nodes.pose_estimator import rois_from_detections

    msg = Detection2DArray()
    for cls, score, (cx, cy, w, h) in (
        ("duck", 0.5, (50.0, 40.0, 20.0, 10.0)),
        ("cat", 0.9, (100.0, 60.0, 30.0, 30.0)),
        ("duck", 0.8, (20.0, 20.0, 0.0, 10.0)),  # zero width: skipped
        ("duck", 0.95, (120.0, 90.0, 16.0, 16.0)),
    ):
        det = Detection2D()
        det.bbox.center.position.x, det.bbox.center.position.y = cx, cy
        det.bbox.size_x, det.bbox.size_y = w, h
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = cls, score
        det.results.append(hyp)
        msg.detections.append(det)
    rois, scores = rois_from_detections(msg)
    np.testing.assert_allclose(scores, [0.95, 0.9, 0.5])
    np.testing.assert_allclose(rois[0], [112.0, 82.0, 16.0, 16.0])
    rois, scores = rois_from_detections(msg, class_id="duck", min_score=0.6)
    np.testing.assert_allclose(scores, [0.95])
    rois, scores = rois_from_detections(msg, max_count=1)
    assert rois.shape == (1, 4) and scores.tolist() == [0.95]


def test_pose_estimator_node_in_process(
    ros_in_process: None, ros_runtime: None, tmp_path: Path, dense_fixture_checkpoint: Path
) -> None:
    """Lifecycle, compressed input, regions from a Detection2DArray and the default region,
    6DoF covariance, parameter rejection -- node and driver in one process."""
    from geometry_msgs.msg import PoseArray
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage
    from vision_msgs.msg import Detection2D, Detection2DArray, Detection3DArray

    from epropnp_ros.images import rgb_to_compressed
    from epropnp_ros.messages import make_header
    from epropnp_ros.nodes.pose_estimator import PoseEstimatorNode

    ns = "/epropnp_pe_test"
    overrides = [
        Parameter("checkpoint", value=str(dense_fixture_checkpoint)),
        Parameter("image_transport", value="compressed"),
        Parameter("object_class", value="duck"),
        Parameter("num_posterior_samples", value=4),
        Parameter("roi_max_age", value=0.5),
        Parameter("diagnostics_period", value=0.1),
    ]
    with InProcess(lambda context: PoseEstimatorNode(
            context=context, namespace=ns, parameter_overrides=overrides),
            "epropnp_pe_driver") as graph:
        node, driver, wait = graph.node, graph.driver, graph.wait
        reliable = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = driver.create_publisher(CompressedImage, f"{ns}/image/compressed", reliable)
        info_pub = driver.create_publisher(CameraInfo, f"{ns}/camera_info", reliable)
        roi_pub = driver.create_publisher(Detection2DArray, f"{ns}/rois", reliable)
        got: dict[int, Any] = {}
        samples: dict[int, Any] = {}
        driver.create_subscription(Detection3DArray, f"{ns}/detections",
                                   lambda m: got.setdefault(m.header.stamp.sec, m), reliable)
        driver.create_subscription(PoseArray, f"{ns}/pose_samples",
                                   lambda m: samples.setdefault(m.header.stamp.sec, m), reliable)

        # Parameters: out of range (descriptor range) and invalid (dataclass check) rejected.
        [res] = node.set_parameters([Parameter("roi_padding", value=0.5)])
        assert not res.successful and "roi_padding" in res.reason
        [res] = node.set_parameters([Parameter("default_roi", value=[1, 2, 3])])
        assert not res.successful and "default_roi" in res.reason
        [res] = node.set_parameters([Parameter("min_score", value=0.1)])
        assert res.successful and node.params.min_score == 0.1

        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state == "inactive"
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state == "active"
        wait(lambda: image_pub.get_subscription_count() > 0
             and roi_pub.get_subscription_count() > 0, "the node's subscriptions")

        def send(sec: int) -> None:
            header = make_header(FRAME, sec * 1_000_000_000)
            image_pub.publish(rgb_to_compressed(texture_image(), header, fmt="png"))
            info = camera_info()
            info.header = header
            info_pub.publish(info)

        # Two regions from a Detection2DArray of the same stamp (one below min_score).
        rois = Detection2DArray(header=make_header(FRAME, 10 * 1_000_000_000))
        for cx, cy, w, h in ((40.0, 40.0, 40.0, 30.0), (110.0, 70.0, 50.0, 50.0),
                             (80.0, 60.0, 20.0, 20.0)):
            det = Detection2D()
            det.bbox.center.position.x, det.bbox.center.position.y = cx, cy
            det.bbox.size_x, det.bbox.size_y = w, h
            det.results.append(ObjectHypothesis(0.05 if cx == 80.0 else 0.9))
            rois.detections.append(det)
        roi_pub.publish(rois)
        wait(lambda: node.counters["rois_received"] == 1, "the regions of interest")
        send(10)
        wait(lambda: 10 in got, "detections of frame 10")
        msg = got[10]
        assert msg.header.frame_id == FRAME
        assert len(msg.detections) == 2 and node.counters["failed_solves"] == 0
        for d in msg.detections:
            [hyp] = d.results
            assert hyp.hypothesis.class_id == "duck"
            cov = _check_covariance(hyp.pose.covariance)
            assert cov.max() < 1.0e6  # 6DoF: every rotation observed, no placeholder
            assert d.bbox.size.x == pytest.approx(0.2)
        wait(lambda: 10 in samples, "pose samples of frame 10")
        assert len(samples[10].poses) == 4 * len(msg.detections)

        # A frame far from the regions' stamp: the default region (whole image) is used.
        assert node.counters["frames_with_default_roi"] == 0
        send(20)
        wait(lambda: 20 in got, "detections of frame 20")
        assert node.counters["frames_with_default_roi"] == 1
        assert len(got[20].detections) <= 1

        # A compressed image whose header declares 20000x20000: refused before decoding and
        # counted; the next frame is processed.
        huge = rgb_to_compressed(texture_image(), make_header(FRAME, 30 * 1_000_000_000),
                                 fmt="png")
        data = bytearray(huge.data)
        data[16:24] = (20000).to_bytes(4, "big") * 2  # the PNG IHDR's width and height
        huge.data = bytes(data)
        image_pub.publish(huge)
        wait(lambda: node.counters["image_too_large"] == 1, "the oversized image to be refused")
        send(31)
        wait(lambda: 31 in got, "detections of the frame after the oversized one")
        assert 30 not in got

        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state == "unconfigured" and node.pipeline is None


def test_roi_padding_and_multi_start_parameters() -> None:
    from epropnp_lib.errors import ConfigError
    from epropnp_ros.nodes.pose_estimator import settings_from_params
    from epropnp_ros.params import PoseEstimatorParams

    # 0.0 (the default): the pipeline's training padding; a value set by the user wins
    assert settings_from_params(PoseEstimatorParams()).roi_padding is None
    assert settings_from_params(PoseEstimatorParams(roi_padding=1.3)).roi_padding == 1.3
    assert settings_from_params(PoseEstimatorParams()).multi_start is True
    assert settings_from_params(PoseEstimatorParams(multi_start=False)).multi_start is False
    with pytest.raises(ConfigError, match="roi_padding"):
        PoseEstimatorParams(roi_padding=0.5)


def test_screen_rois_leaves_out_regions_outside_the_image_and_tiny_ones() -> None:
    from epropnp_ros.nodes.pose_estimator import Regions, screen_rois

    rois = np.array([[10.0, 10.0, 30.0, 30.0],  # kept
                     [-50.0, 10.0, 50.0, 20.0],  # right edge on the image's left border
                     [160.0, 0.0, 10.0, 10.0],  # beyond the right border (width 160)
                     [5.0, 5.0, 1.0, 1.0],  # 1 x 1 px
                     [-10.0, -10.0, 20.0, 20.0]])  # partly inside: kept
    screened = screen_rois(Regions(rois, np.arange(5.0), ("a", "b", "c", "d", "e")),
                           160, 120, 8)
    assert (screened.outside_image, screened.too_small) == (2, 1)
    assert screened.regions.ids == ("a", "e") and screened.regions.scores.tolist() == [0, 4]
    empty = screen_rois(Regions(np.zeros((0, 4)), np.zeros(0), ()), 160, 120, 8)
    assert len(empty.regions.rois) == 0 and empty[1:] == (0, 0)


def test_pose_estimator_counts_bad_regions_and_goes_on(
    ros_in_process: None, ros_runtime: None, dense_fixture_checkpoint: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A region outside the image, an empty region list and a 1 x 1 px region: each counted and
    logged, and the next frame processed; detections carry their region's id."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2D, Detection2DArray, Detection3DArray

    from epropnp_ros.images import array_to_image
    from epropnp_ros.messages import make_header
    from epropnp_ros.nodes.pose_estimator import PoseEstimatorNode

    ns = "/epropnp_bad_rois_test"
    overrides = [Parameter("checkpoint", value=str(dense_fixture_checkpoint)),
                 Parameter("num_posterior_samples", value=0)]
    with InProcess(lambda context: PoseEstimatorNode(
            context=context, namespace=ns, parameter_overrides=overrides),
            "epropnp_bad_rois_driver") as graph:
        node, driver, wait = graph.node, graph.driver, graph.wait
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = driver.create_publisher(Image, f"{ns}/image", reliable)
        info_pub = driver.create_publisher(CameraInfo, f"{ns}/camera_info", reliable)
        roi_pub = driver.create_publisher(Detection2DArray, f"{ns}/rois", reliable)
        got: dict[int, Any] = {}
        driver.create_subscription(Detection3DArray, f"{ns}/detections",
                                   lambda m: got.setdefault(m.header.stamp.sec, m), reliable)
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait(lambda: image_pub.get_subscription_count() > 0
             and roi_pub.get_subscription_count() > 0, "the node's subscriptions")

        def frame(sec: int, boxes: list[tuple[str, float, float, float, float]]) -> Any:
            header = make_header(FRAME, sec * 1_000_000_000)
            rois = Detection2DArray(header=header)
            for ident, cx, cy, w, h in boxes:
                det = Detection2D(id=ident)
                det.bbox.center.position.x, det.bbox.center.position.y = cx, cy
                det.bbox.size_x, det.bbox.size_y = w, h
                rois.detections.append(det)
            received = node.counters["rois_received"]
            roi_pub.publish(rois)
            wait(lambda: node.counters["rois_received"] == received + 1, f"regions {sec}")
            image_pub.publish(array_to_image(texture_image(), "rgb8", header))
            info = camera_info()
            info.header = header
            info_pub.publish(info)
            wait(lambda: sec in got, f"the detections of frame {sec}")
            return got[sec]

        good = ("good", 80.0, 60.0, 60.0, 60.0)
        out = frame(10, [("out", -300.0, 60.0, 40.0, 40.0), good])
        assert [d.id for d in out.detections] == ["good"]
        assert frame(11, []).detections == []
        assert frame(12, [("tiny", 50.0, 50.0, 1.0, 1.0)]).detections == []
        assert [d.id for d in frame(13, [good]).detections] == ["good"]
        # A frame counts as processed once all its outputs are published.
        wait(lambda: node.counters["frames_processed"] == 4, "the last frame to be counted")
        counters = node.diagnostics().counters
        assert (counters["rois_outside_image"], counters["frames_without_rois"],
                counters["rois_too_small"], counters["frames_processed"]) == (1, 1, 1, 4)
        assert counters["frames_with_default_roi"] == 0
        log = "".join(capfd.readouterr())
        for kind in ("rois_outside_image", "frames_without_rois", "rois_too_small"):
            assert f"[{kind}]" in log and f"({kind}: 1)" in log, log
        assert node.lifecycle_state == "active"


class _FailingOncePipeline:
    """A stub pose-estimator pipeline: its first frame raises an unexpected ``RuntimeError``,
    later frames give one fixed 6DoF pose."""

    def __init__(self) -> None:
        self.settings: Any = None
        self.calls = 0

    def process(self, rgb: np.ndarray, intrinsics: Any, rois: Any = None,
                roi_scores: Any = None, roi_ids: Any = ()) -> Any:
        from epropnp_ros.pipeline import PoseOutput

        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("injected pipeline failure")
        return PoseOutput(
            pose=np.array([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]]),
            covariance=0.01 * np.eye(6)[None], samples=np.zeros((1, 0, 7)), scores=np.ones(1),
            class_ids=("duck",), size=np.full((1, 3), 0.2),
            rois=np.array([[0.0, 0.0, WIDTH, HEIGHT]]), timings={"total": 1.0}, num_failed=0,
        )


def test_unexpected_pipeline_error_is_counted_and_the_next_frame_published(
    ros_in_process: None, ros_runtime: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """The worker's catch-all: a pipeline exception other than bad input is counted in the
    diagnostics (``pipeline_errors``) and logged, and the next frame is processed and
    published."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection3DArray

    from epropnp_ros.images import array_to_image
    from epropnp_ros.messages import make_header
    from epropnp_ros.nodes.pose_estimator import PoseEstimatorNode
    from epropnp_ros.params import PoseEstimatorParams

    class StubPipelineNode(PoseEstimatorNode):
        def load_pipeline(self, params: PoseEstimatorParams) -> Any:
            return _FailingOncePipeline()

    ns = "/epropnp_catch_all_test"
    overrides = [Parameter("checkpoint", value="stub"), Parameter("use_roi_topic", value=False)]
    with InProcess(lambda context: StubPipelineNode(
            context=context, namespace=ns, parameter_overrides=overrides),
            "epropnp_catch_all_driver") as graph:
        node, driver, wait = graph.node, graph.driver, graph.wait
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = driver.create_publisher(Image, f"{ns}/image", reliable)
        info_pub = driver.create_publisher(CameraInfo, f"{ns}/camera_info", reliable)
        got: dict[int, Any] = {}
        driver.create_subscription(Detection3DArray, f"{ns}/detections",
                                   lambda m: got.setdefault(m.header.stamp.sec, m), reliable)

        def send(sec: int) -> None:
            header = make_header(FRAME, sec * 1_000_000_000)
            image_pub.publish(array_to_image(texture_image(), "rgb8", header))
            info = camera_info()
            info.header = header
            info_pub.publish(info)

        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait(lambda: image_pub.get_subscription_count() > 0
             and info_pub.get_subscription_count() > 0, "the node's subscriptions")

        send(10)
        wait(lambda: node.counters["pipeline_errors"] == 1, "the failed frame to be counted")
        send(11)
        wait(lambda: 11 in got, "the detections of the next frame")
        # The frame counts as processed once all its outputs are published.
        wait(lambda: node.counters["frames_processed"] == 1, "the next frame to be counted")
        assert 10 not in got and len(got[11].detections) == 1
        counters = node.diagnostics().counters
        assert (counters["pipeline_errors"], counters["frames_processed"]) == (1, 1)
        assert counters["bad_image"] == counters["size_mismatch"] == 0
        log = "".join(capfd.readouterr())
        assert ("[pipeline_error] frame failed: RuntimeError: injected pipeline failure "
                "(pipeline_errors: 1)") in log, log
        assert node.lifecycle_state == "active"


def ObjectHypothesis(score: float) -> Any:  # noqa: N802 - reads like the message it builds
    """An ``ObjectHypothesisWithPose`` of class "duck" with ``score``."""
    from vision_msgs.msg import ObjectHypothesisWithPose

    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id, hyp.hypothesis.score = "duck", score
    return hyp


def test_invalid_startup_parameter_exits_with_reason(child_env: Mapping[str, str]) -> None:
    """An out-of-range value in the start-up parameters: exit status 2 and the reason, no
    traceback."""
    cmd = [sys.executable, "-m", "epropnp_ros.nodes.detector", "--ros-args",
           "--params-file", str(REPO / "config" / "detector.yaml"),
           "-p", "score_threshold:=3.0"]
    res = subprocess.run(cmd, env=dict(child_env), capture_output=True, text=True,
                         timeout=START_TIMEOUT, cwd=REPO)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "score_threshold" in out and "out of range" in out, out
    assert "Traceback" not in out, out
