"""Play a rosbag2 (mcap or sqlite3) into a live ROS 2 graph, where `ros2 bag play` is absent.

``epropnp-bag-play BAG [--rate R] [--loop] [--clock] [--topics ...] [--wait-for TOPIC ...]``

* Each topic is published with the QoS recorded in the bag (``offered_qos_profiles``): a
  transient-local ``/tf_static`` stays available to late subscribers, as with ``ros2 bag play``.
* Messages are published as recorded: the CDR bytes are deserialised by rclpy into the
  message class of the recorded type (no conversion through other libraries).
* ``--clock`` publishes ``/clock`` (``rosgraph_msgs/Clock``) with the bag time of every message,
  so nodes started with ``use_sim_time:=true`` follow the bag's time.
* ``--rate`` scales playback speed (2.0 = twice as fast); ``--loop`` restarts at the end.
* A gap in recorded time longer than ``--max-gap`` seconds (default 5; e.g. between the scenes of
  a bag that spans days) is skipped, with a log line: replay never sleeps for it.
* SIGINT and SIGTERM end playback cleanly at any moment (exit status 0).
* ``--wait-for TOPIC`` waits (up to ``--wait-timeout`` s) until that topic has a subscriber
  before starting, so that no message is lost to DDS discovery (useful in tests and pipelines).

On a ROS 2 distro, ``ros2 bag play BAG`` plays the same bag.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.signals import SignalHandlerOptions
from rosbags.rosbag2 import Reader, ReaderError

from epropnp_lib.errors import ConfigError
from epropnp_ros.dds import release_rclpy, use_profile
from epropnp_ros.errors import BagPlayError
from epropnp_ros.messages import ns_to_stamp

__all__ = [
    "PlayConfig", "PlayStats", "create_publishers", "main", "message_class", "play",
    "qos_profile_of",
]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlayConfig:
    """Playback settings (see the module docstring)."""

    bag: str
    rate: float = 1.0
    loop: bool = False
    clock: bool = False
    topics: tuple[str, ...] = ()
    wait_for: tuple[str, ...] = ()
    wait_timeout: float = 10.0
    start_delay: float = 0.0
    max_gap: float = 5.0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ConfigError(f"rate must be positive, got {self.rate}")
        if not self.max_gap > 0:
            raise ConfigError(f"max_gap must be positive, got {self.max_gap}")
        if self.wait_timeout < 0 or self.start_delay < 0:
            raise ConfigError("wait_timeout and start_delay must be >= 0")


class PlayStats(NamedTuple):
    """What was published, and the recorded time skipped in gaps (seconds)."""

    messages: dict[str, int]
    loops: int
    wall_seconds: float
    skipped_seconds: float = 0.0


def message_class(type_name: str) -> Any:
    """The rclpy message class of a type name such as ``sensor_msgs/msg/Image``."""
    package, _, name = type_name.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as exc:
        raise BagPlayError(f"message type {type_name} is not installed: {exc}") from exc


def qos_profile_of(connection: Any) -> Any:
    """rclpy QoS from the first offered profile recorded for a connection (default: reliable 10)."""
    profiles = getattr(connection.ext, "offered_qos_profiles", None) or []
    if not profiles:
        return QoSProfile(depth=10)
    p = profiles[0]
    durability = (
        DurabilityPolicy.TRANSIENT_LOCAL
        if p.durability.name == "TRANSIENT_LOCAL"
        else DurabilityPolicy.VOLATILE
    )
    reliability = (
        ReliabilityPolicy.BEST_EFFORT
        if p.reliability.name == "BEST_EFFORT"
        else ReliabilityPolicy.RELIABLE
    )
    depth = max(int(p.depth), 1) if p.history.name == "KEEP_LAST" else 100
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        durability=durability,
        reliability=reliability,
    )


def create_publishers(node: Any, connections: Sequence[Any]) -> dict[int, Any]:
    """A publisher per bag connection (by connection id), of the recorded type and with the
    recorded QoS; each publisher's ``msg_type`` deserialises the connection's messages."""
    return {
        c.id: node.create_publisher(message_class(c.msgtype), c.topic, qos_profile_of(c))
        for c in connections
    }


def play(config: PlayConfig, node: Any | None = None) -> PlayStats:
    """Publish the bag's messages with their recorded timing (scaled by ``rate``).

    Args:
        config: what and how to play.
        node: an rclpy node to publish from; None creates one (rclpy must be initialised).

    Raises:
        BagPlayError: the bag is missing or unreadable, a topic asked for is not in it, a
            type is not installed, or a ``wait_for`` topic got no subscriber in time.
    """
    path = Path(config.bag)
    if not path.exists():
        raise BagPlayError(f"bag not found: {path}")
    own_node = node is None
    if node is None:
        node = rclpy.create_node("epropnp_bag_player")
    try:
        reader = Reader(path)
        reader.open()
    except ReaderError as exc:
        raise BagPlayError(f"cannot read bag {path}: {exc}") from exc
    try:
        connections = list(reader.connections)
        names = {c.topic for c in connections}
        missing = sorted(set(config.topics) - names)
        if missing:
            raise BagPlayError(f"topics {missing} are not in {path}; it has {sorted(names)}")
        if config.topics:
            connections = [c for c in connections if c.topic in config.topics]
        publishers = create_publishers(node, connections)
        clock_pub = None
        if config.clock:
            clock_cls = message_class("rosgraph_msgs/msg/Clock")
            clock_pub = node.create_publisher(clock_cls, "/clock", 10)
        _wait_for_subscribers(node, config)
        if config.start_delay:
            time.sleep(config.start_delay)

        counts: dict[str, int] = {}
        loops = 0
        skipped_ns = 0
        max_gap_ns = round(config.max_gap * 1e9)
        wall_start = time.monotonic()
        while True:
            loops += 1
            bag_start: int | None = None
            previous: int | None = None
            loop_wall_start = time.monotonic()
            loop_skipped_ns = 0
            for connection, stamp, raw in reader.messages(connections=connections):
                if bag_start is None:
                    bag_start = stamp
                if previous is not None and stamp - previous > max_gap_ns:
                    gap = stamp - previous
                    LOGGER.info("skipping a gap of %.1f s in the recorded time (more than "
                                "--max-gap %.1f s)", gap * 1e-9, config.max_gap)
                    loop_skipped_ns += gap
                    skipped_ns += gap
                previous = stamp
                due = loop_wall_start + (stamp - bag_start - loop_skipped_ns) * 1e-9 / config.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if clock_pub is not None:
                    clock_pub.publish(clock_pub.msg_type(clock=ns_to_stamp(stamp)))
                publisher = publishers[connection.id]
                publisher.publish(deserialize_message(bytes(raw), publisher.msg_type))
                counts[connection.topic] = counts.get(connection.topic, 0) + 1
            if not config.loop or not rclpy.ok(context=node.context):
                break
        return PlayStats(dict(sorted(counts.items())), loops, time.monotonic() - wall_start,
                         skipped_ns * 1e-9)
    finally:
        reader.close()
        if own_node:
            node.destroy_node()


def _wait_for_subscribers(node: Any, config: PlayConfig) -> None:
    deadline = time.monotonic() + config.wait_timeout
    for topic in config.wait_for:
        while node.count_subscribers(topic) == 0:
            if time.monotonic() > deadline:
                raise BagPlayError(
                    f"no subscriber on {topic} after {config.wait_timeout:.1f} s (--wait-for)"
                )
            time.sleep(0.02)


def _stop(signum: int, frame: Any) -> None:
    """Signal handler of the CLI: stop playback (caught in :func:`main`)."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point ``epropnp-bag-play``."""
    parser = argparse.ArgumentParser(
        prog="epropnp-bag-play", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("bag", help="bag directory (or .mcap / .db3 file)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--loop", action="store_true", help="restart at the end")
    parser.add_argument("--clock", action="store_true", help="publish /clock (use_sim_time)")
    parser.add_argument("--topics", nargs="*", default=[], help="only these topics")
    parser.add_argument("--wait-for", nargs="*", default=[], help="topics to wait a subscriber on")
    parser.add_argument("--wait-timeout", type=float, default=10.0)
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds before playing")
    parser.add_argument("--max-gap", type=float, default=5.0,
                        help="skip gaps in the recorded time longer than this (seconds)")
    args, ros_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = PlayConfig(
            bag=args.bag,
            rate=args.rate,
            loop=args.loop,
            clock=args.clock,
            topics=tuple(args.topics),
            wait_for=tuple(args.wait_for),
            wait_timeout=args.wait_timeout,
            start_delay=args.start_delay,
            max_gap=args.max_gap,
        )
    except ConfigError as exc:
        print(f"epropnp-bag-play: error: {exc}", file=sys.stderr)
        return 2
    # SIGINT and SIGTERM stop playback where it is (a sleep, a publish) and exit with 0;
    # rclpy's own handlers would shut the context down under the publisher instead.
    use_profile()  # the writer's shared-memory segment carries the images (epropnp_ros.dds)
    rclpy.init(args=ros_args, signal_handler_options=SignalHandlerOptions.NO)
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = play(config)
    except BagPlayError as exc:
        print(f"epropnp-bag-play: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        print("epropnp-bag-play: stopped", file=sys.stderr)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        release_rclpy()  # its shared-memory segments leave /dev/shm now
    total = sum(stats.messages.values())
    skipped = f", {stats.skipped_seconds:.1f} s of gaps skipped" if stats.skipped_seconds else ""
    print(f"played {total} messages in {stats.wall_seconds:.1f} s ({stats.loops} loop(s)"
          f"{skipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
