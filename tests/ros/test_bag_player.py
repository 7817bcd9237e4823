"""The bag player never stalls: long gaps in the recorded time are skipped, and SIGINT/SIGTERM
end it cleanly (exit status 0, no traceback) during a gap or in the middle of playback.

Bags are written into ``tmp_path`` with rosbags: ``std_msgs/String`` messages on ``/chatter``
at chosen recorded times. Synchronisation with the player process is by its messages (the test
subscribes and waits for them), never by fixed sleeps.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ros

TOPIC = "/chatter"
TIMEOUT = 60.0


def write_bag(path: Path, stamps_s: Sequence[float]) -> Path:
    """A bag of ``String`` messages ``"0"``, ``"1"``, ... at the recorded times ``stamps_s``."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    string = store.types["std_msgs/msg/String"]
    start = 1_700_000_000 * 10**9
    with Writer(path, version=8) as writer:
        conn = writer.add_connection(TOPIC, "std_msgs/msg/String", typestore=store)
        for i, t in enumerate(stamps_s):
            data = store.serialize_cdr(string(data=str(i)), "std_msgs/msg/String")
            writer.write(conn, start + round(t * 1e9), data)
    return path


@pytest.fixture
def listener(rclpy_node: Any) -> Iterator[list[str]]:
    """The ``data`` of every message that arrives on ``/chatter``, in a spinning executor."""
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    got: list[str] = []
    rclpy_node.create_subscription(String, TOPIC, lambda m: got.append(m.data), 100)
    executor = SingleThreadedExecutor(context=rclpy_node.context)
    executor.add_node(rclpy_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        yield got
    finally:
        executor.shutdown()
        spinner.join(timeout=5)


def _wait(pred: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_long_gaps_are_skipped(tmp_path: Path, rclpy_node: Any, listener: list[str]) -> None:
    """Two scenes a day apart replay in about their own duration; the gap is reported."""
    import rclpy

    from epropnp_ros.bag_player import PlayConfig, play

    bag = write_bag(tmp_path / "gap", [0.0, 0.1, 0.2, 86400.0, 86400.1])
    player = rclpy.create_node("gap_player", context=rclpy_node.context)
    try:
        stats = play(PlayConfig(bag=str(bag), wait_for=(TOPIC,)), node=player)
    finally:
        player.destroy_node()
    assert stats.messages == {TOPIC: 5}
    assert stats.wall_seconds < 5.0
    assert stats.skipped_seconds == pytest.approx(86399.8, abs=1e-6)
    _wait(lambda: len(listener) == 5, "the five messages")
    assert listener == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(("sig", "when"), [
    (signal.SIGTERM, "gap"), (signal.SIGTERM, "playback"), (signal.SIGINT, "playback"),
])
def test_signals_end_playback_cleanly(
    tmp_path: Path, child_env: dict[str, str], listener: list[str], sig: int, when: str
) -> None:
    """During a recorded gap the player sleeps (``--max-gap`` above it); during playback it
    publishes every 50 ms. Either way the signal ends it with status 0 and no traceback."""
    if when == "gap":
        bag = write_bag(tmp_path / "gap", [0.0, 3600.0])
        extra = ["--max-gap", "7200"]
    else:
        bag = write_bag(tmp_path / "long", [0.05 * i for i in range(1200)])
        extra = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "epropnp_ros.bag_player", str(bag), "--wait-for", TOPIC, *extra],
        env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait(lambda: len(listener) >= (1 if when == "gap" else 5), "the first messages")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err, err
    assert len(listener) < (2 if when == "gap" else 1200)
