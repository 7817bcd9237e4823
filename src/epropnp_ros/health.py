"""A node's health: the level rules and the key/value form of its ``diagnostic_msgs`` status.

ROS-free (the nodes wrap the result in ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics``,
where rqt_robot_monitor, the diagnostic aggregator and Foxglove read it).

A node's snapshot (:class:`Snapshot`) holds its lifecycle state, device, monotonic counters,
latency percentiles and the last frame's stage times. :func:`assess` turns the snapshot now and
the one ``window`` seconds ago into a level and a message, by these rules, first match wins:

* ``ERROR``: a fault stops processing: the model failed to load (``configure_failed``), the
  inference worker died while active (``worker_alive`` false), or the last
  ``error_after_failures`` frames in a row failed inside the pipeline.
* ``WARN``:
  - the node is not active (unconfigured, inactive, finalized);
  - active, and no image arrived for ``input_timeout`` seconds: "camera_info arrives but no
    image" when CameraInfos did arrive (the symptom of a wrong image remap or transport), else
    "no input";
  - more than ``drop_warn_fraction`` of the images of the window were dropped (stale, unpaired,
    unreadable, too large, of the wrong size, refused, or failed in the pipeline).
* ``OK`` otherwise.

Key/value form (:func:`key_values`, inverse :func:`snapshot_from_values`): ``state``,
``device``, one key per counter (its name, e.g. ``frames_processed``), ``latency_ms.p50``,
``latency_ms.p95``, ``latency_ms.max``, ``latency_ms.last``, ``latency_ms.n`` (image arrival to
published outputs, over the last frames), ``stage_ms.<stage>`` (the last frame's pipeline
stages and ``publish``) and a node's own dotted keys (e.g. the rig node's
``rig.cameras.<ns>.<counter>``). Values are decimal strings.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

#: The start of the WARN message of an active node that receives camera infos but no image.
NO_IMAGE_SYMPTOM = "camera_info arrives but no image"

#: Counters whose increase means an image that was not turned into outputs.
DROP_COUNTERS = (
    "frames_dropped_stale", "images_unpaired", "bad_image", "image_too_large", "bad_camera_info",
    "size_mismatch", "pipeline_errors",
)


class Level(enum.IntEnum):
    """``diagnostic_msgs/DiagnosticStatus`` levels (the message stores them as one byte)."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


@dataclass(frozen=True)
class HealthRules:
    """Thresholds of :func:`assess` (the node parameters of the same names, less the
    ``diagnostics_`` prefix).

    Attributes:
        drop_warn_fraction: WARN when more than this fraction of the window's images were
            dropped.
        input_timeout: WARN when an active node received no image for this many seconds.
        error_after_failures: ERROR after this many consecutive frames failed in the pipeline.
    """

    drop_warn_fraction: float = 0.5
    input_timeout: float = 5.0
    error_after_failures: int = 3


@dataclass(frozen=True)
class Snapshot:
    """What a node reports about itself at one moment.

    Attributes:
        state: lifecycle state label (``unconfigured``, ``inactive``, ``active``, ``finalized``).
        device: the torch device of the model.
        counters: monotonic counts since start (names in the node's docs).
        latency_ms: ``p50``, ``p95``, ``max``, ``last`` (ms) and ``n`` over the last frames.
        stage_ms: the last frame's stage times (ms).
        configure_failed: the last configure transition failed (the model did not load).
        worker_alive: the inference worker runs (always true when not active).
        consecutive_failures: frames in a row that failed inside the pipeline.
        seconds_since_image: seconds since the last image arrived (or since activation).
        extra: a node's own values under dotted keys (``rig.target_frame``, ...), as strings.
    """

    state: str
    device: str
    counters: Mapping[str, int]
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    stage_ms: Mapping[str, float] = field(default_factory=dict)
    configure_failed: bool = False
    worker_alive: bool = True
    consecutive_failures: int = 0
    seconds_since_image: float = 0.0
    extra: Mapping[str, str] = field(default_factory=dict)


class Health(NamedTuple):
    """A level and its one-line reason."""

    level: Level
    message: str


def assess(now: Snapshot, before: Snapshot | None, rules: HealthRules) -> Health:
    """The level of ``now`` by the rules of the module docstring; ``before`` is the snapshot at
    the start of the drop-rate window (``None``: no window yet, no drop rule)."""
    if now.configure_failed:
        return Health(Level.ERROR, "the model failed to load (configure failed)")
    if now.state == "active" and not now.worker_alive:
        return Health(Level.ERROR, "the inference worker stopped")
    if now.consecutive_failures >= rules.error_after_failures:
        return Health(
            Level.ERROR, f"the last {now.consecutive_failures} frames failed in the pipeline"
        )
    if now.state != "active":
        return Health(Level.WARN, f"not processing: the node is {now.state}")
    if now.seconds_since_image >= rules.input_timeout:
        infos = now.counters.get("camera_infos_received", 0)
        infos_before = before.counters.get("camera_infos_received", 0) if before else 0
        if infos > infos_before:
            return Health(
                Level.WARN,
                f"{NO_IMAGE_SYMPTOM} for {now.seconds_since_image:.0f} s: check the image topic "
                "remap and image_transport",
            )
        return Health(Level.WARN, f"no input for {now.seconds_since_image:.0f} s")
    if before is not None:
        received = now.counters.get("images_received", 0) - before.counters.get(
            "images_received", 0)
        dropped = sum(now.counters.get(k, 0) - before.counters.get(k, 0) for k in DROP_COUNTERS)
        if received > 0 and dropped > rules.drop_warn_fraction * received:
            return Health(Level.WARN, f"{dropped} of {received} images dropped recently")
    return Health(Level.OK, "processing")


def key_values(snapshot: Snapshot) -> list[tuple[str, str]]:
    """The snapshot as ``(key, value)`` string pairs (the keys of the module docstring)."""
    pairs = [("state", snapshot.state), ("device", snapshot.device)]
    pairs += [(name, str(int(v))) for name, v in snapshot.counters.items()]
    for prefix, values in (("latency_ms", snapshot.latency_ms), ("stage_ms", snapshot.stage_ms)):
        for name, v in values.items():
            text = str(int(v)) if name == "n" else f"{float(v):.3f}"
            pairs.append((f"{prefix}.{name}", text))
    pairs += [(k, str(v)) for k, v in snapshot.extra.items()]
    return pairs


def snapshot_from_values(pairs: Iterable[tuple[str, str]]) -> Snapshot:
    """Inverse of :func:`key_values` (state, device, counters, latency and stage times, the
    other dotted keys; the fault flags, which the pairs do not carry, take their defaults)."""
    state = device = ""
    counters: dict[str, int] = {}
    latency: dict[str, float] = {}
    stages: dict[str, float] = {}
    extra: dict[str, str] = {}
    for key, value in pairs:
        if key == "state":
            state = value
        elif key == "device":
            device = value
        elif key.startswith("latency_ms."):
            latency[key.removeprefix("latency_ms.")] = float(value)
        elif key.startswith("stage_ms."):
            stages[key.removeprefix("stage_ms.")] = float(value)
        elif "." in key:
            extra[key] = value
        else:
            counters[key] = int(value)
    return Snapshot(state, device, counters, latency, stages, extra=extra)
