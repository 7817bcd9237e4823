"""The diagnostics level rules and key/value form (epropnp_ros.health)."""

from __future__ import annotations

import pytest

from epropnp_ros.health import (
    DROP_COUNTERS,
    HealthRules,
    Level,
    Snapshot,
    assess,
    key_values,
    snapshot_from_values,
)

RULES = HealthRules(drop_warn_fraction=0.5, input_timeout=5.0, error_after_failures=3)


def snap(state: str = "active", **kw: object) -> Snapshot:
    counters = {"images_received": 0, "camera_infos_received": 0, "frames_processed": 0}
    counters.update({name: 0 for name in DROP_COUNTERS})
    counters.update({k: v for k, v in kw.items() if k in counters})  # type: ignore[misc]
    flags = {k: v for k, v in kw.items() if k not in counters}
    return Snapshot(state=state, device="cpu", counters=counters, **flags)  # type: ignore[arg-type]


def test_ok_while_processing() -> None:
    before = snap(images_received=10, frames_processed=10)
    now = snap(images_received=20, frames_processed=19, frames_dropped_stale=1)
    assert assess(now, before, RULES) == (Level.OK, "processing")
    assert assess(now, None, RULES).level == Level.OK


@pytest.mark.parametrize(
    ("now", "level", "words"),
    [
        (snap("unconfigured", configure_failed=True), Level.ERROR, "failed to load"),
        (snap(worker_alive=False), Level.ERROR, "worker stopped"),
        (snap(consecutive_failures=3), Level.ERROR, "last 3 frames failed"),
        (snap("inactive"), Level.WARN, "node is inactive"),
        (snap(seconds_since_image=6.0), Level.WARN, "no input for 6 s"),
        (snap(seconds_since_image=6.0, camera_infos_received=7), Level.WARN,
         "camera_info arrives but no image"),
        (snap(images_received=10, bad_image=3, size_mismatch=3), Level.WARN,
         "6 of 10 images dropped"),
    ],
)
def test_each_rule(now: Snapshot, level: Level, words: str) -> None:
    health = assess(now, snap(), RULES)
    assert health.level == level and words in health.message, health


def test_rule_boundaries() -> None:
    # Two failures in a row, half the images dropped, just under the timeout: still OK.
    assert assess(snap(consecutive_failures=2), None, RULES).level == Level.OK
    half = snap(images_received=10, frames_dropped_stale=5)
    assert assess(half, snap(), RULES).level == Level.OK
    assert assess(snap(seconds_since_image=4.9), None, RULES).level == Level.OK
    # A worker that is not running is no fault while the node is not active.
    assert assess(snap("inactive", worker_alive=False), None, RULES).level == Level.WARN
    # The drop rule counts only the window (counters are monotonic).
    old = snap(images_received=100, bad_image=90)
    assert assess(snap(images_received=110, bad_image=90), old, RULES).level == Level.OK


def test_key_values_round_trip() -> None:
    s = Snapshot("active", "cuda", {"frames_processed": 3, "bad_image": 1},
                 {"n": 4.0, "p50": 12.5, "p95": 20.25}, {"network": 7.125, "publish": 0.5},
                 extra={"rig.target_frame": "base_link", "rig.cameras./cam_a.frames_late": "2"})
    pairs = key_values(s)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)
    assert ("latency_ms.n", "4") in pairs and ("frames_processed", "3") in pairs
    back = snapshot_from_values(pairs)
    assert back == s
