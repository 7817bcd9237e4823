"""Diagnostics and throttled warnings of the estimator nodes (a mixin of
:class:`~epropnp_ros.nodes.base.EstimatorNode`).

Every node publishes ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics`` with one status
named after the node, in every lifecycle state: the level and message come from
:func:`epropnp_ros.health.assess` over the last :data:`DROP_WINDOW_S` seconds, the values from
:func:`epropnp_ros.health.key_values`. Bad input is counted and logged at most every
``warn_throttle`` seconds per kind (:meth:`NodeDiagnostics.warn`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from epropnp_ros.health import NO_IMAGE_SYMPTOM, HealthRules, Snapshot, assess, key_values
from epropnp_ros.params import CommonParams

#: Diagnostics counter reported with each kind of throttled warning.
_WARNING_COUNTERS = {
    "no_camera_info": "images_unpaired",
    "bad_input": "bad_image",
    "pipeline_error": "pipeline_errors",
    "no_images": "images_received",
}
#: Latency samples kept for the diagnostics percentiles.
LATENCY_WINDOW = 200
#: Seconds of history behind the drop-rate rule of the diagnostics level.
DROP_WINDOW_S = 10.0
#: ``/diagnostics`` QoS (diagnostic_updater's: reliable, volatile).
DIAGNOSTICS_QOS = QoSProfile(
    depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
)


class NodeDiagnostics:
    """The diagnostics half of :class:`~epropnp_ros.nodes.base.EstimatorNode`: the state it
    reads is set by the node (``__init__`` and the frame path); the ROS node methods
    (``get_logger``, ``get_clock``, ``get_fully_qualified_name``) come from the node class."""

    params: CommonParams
    counters: dict[str, int]
    _lock: threading.Lock
    _latency_ms: deque[float]
    _last_timings: dict[str, float]
    _worker: threading.Thread | None
    _lc_state: str
    _configure_failed: bool
    _consecutive_failures: int
    _last_input: float
    _history: deque[tuple[float, Snapshot]]
    _warned: dict[str, float]
    _inputs: list[Any]
    _diag_pub: Any

    if TYPE_CHECKING:  # provided by rclpy's Node, which precedes this class in the MRO
        def get_logger(self) -> Any: ...
        def get_clock(self) -> Any: ...
        def get_fully_qualified_name(self) -> str: ...

    def warn(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        """Log ``message`` at most every ``warn_throttle`` seconds per ``kind``."""
        now = time.monotonic()
        last = self._warned.get(kind)
        if last is not None and now - last < self.params.warn_throttle:
            return
        self._warned[kind] = now
        log = self.get_logger()
        counter = _WARNING_COUNTERS.get(kind, kind)
        text = f"[{kind}] {message} ({counter}: {self.counters.get(counter, '-')})"
        if level >= logging.ERROR:
            log.error(text)
        else:
            log.warning(text)

    def diagnostics(self) -> Snapshot:
        """The node's state, device, counters (monotonic counts: images/camera infos received,
        frames paired / processed / dropped as stale, unpaired images and infos, bad images, bad
        camera infos, size mismatches, pipeline errors, failed solves, objects published),
        latency (``p50``, ``p95``, ``max``, ``last`` over the last frames: image arrival to
        published outputs, ``n``), the last frame's stage times and the fault flags that
        :func:`epropnp_ros.health.assess` reads."""
        with self._lock:
            lat = np.asarray(self._latency_ms, dtype=np.float64)
            stages = dict(self._last_timings)
        latency: dict[str, float] = {"n": float(lat.size)}
        if lat.size:
            latency.update(
                p50=float(np.percentile(lat, 50)), p95=float(np.percentile(lat, 95)),
                max=float(lat.max()), last=float(lat[-1]),
            )
        worker = self._worker
        return Snapshot(
            state=self._lc_state, device=self.params.device, counters=dict(self.counters),
            latency_ms=latency, stage_ms=stages, configure_failed=self._configure_failed,
            worker_alive=worker is not None and worker.is_alive(),
            consecutive_failures=self._consecutive_failures,
            seconds_since_image=time.monotonic() - self._last_input,
        )

    def health_rules(self) -> HealthRules:
        """The level thresholds of the ``diagnostics_*`` parameters."""
        p = self.params
        return HealthRules(
            drop_warn_fraction=p.diagnostics_drop_warn_fraction,
            input_timeout=p.diagnostics_input_timeout,
            error_after_failures=p.diagnostics_error_after_failures,
        )

    def diagnostic_status(self) -> DiagnosticStatus:
        """The node's ``DiagnosticStatus``: level and message by
        :func:`epropnp_ros.health.assess` over the last ``DROP_WINDOW_S`` seconds, values by
        :func:`epropnp_ros.health.key_values`. A status that says camera infos arrive without
        images is also logged (throttled), as the symptom of a wrong remap."""
        now_t, snap = time.monotonic(), self.diagnostics()
        history = self._history
        while len(history) > 1 and now_t - history[1][0] >= DROP_WINDOW_S:
            history.popleft()
        before = history[0][1] if history else None
        history.append((now_t, snap))
        health = assess(snap, before, self.health_rules())
        if health.message.startswith(NO_IMAGE_SYMPTOM):
            topics = ", ".join(sub.topic_name for sub in self._inputs
                               if getattr(sub, "msg_type", None) in (Image, CompressedImage))
            self.warn("no_images", f"{health.message} (listening on {topics})")
        return DiagnosticStatus(
            level=bytes([int(health.level)]), name=self.get_fully_qualified_name(),
            message=health.message, hardware_id=self.params.device,
            values=[KeyValue(key=k, value=v) for k, v in key_values(snap)],
        )

    def publish_diagnostics(self) -> None:
        """Publish :meth:`diagnostic_status` on ``/diagnostics`` (the timer calls this every
        ``diagnostics_period``)."""
        msg = DiagnosticArray(status=[self.diagnostic_status()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)
