"""epropnp_ros.messages: stamps <-> nanoseconds, headers, and the fast construction of Point /
Pose lists against the constructors of the real message classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, PoseArray, Quaternion
from rclpy.serialization import deserialize_message, serialize_message

from epropnp_ros.messages import (
    FAST_MESSAGES,
    copy_header,
    make_header,
    ns_to_stamp,
    points_to_msgs,
    stamp_to_ns,
)
from epropnp_ros.poses import poses_to_msgs

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("ns", [0, 5, 999_999_999, 1_000_000_000, 1_700_000_000_123_456_789])
def test_stamp_round_trip(ns: int) -> None:
    stamp = ns_to_stamp(ns)
    assert isinstance(stamp, Time)
    assert (stamp.sec, stamp.nanosec) == (ns // 1_000_000_000, ns % 1_000_000_000)
    assert stamp_to_ns(stamp) == ns
    assert stamp_to_ns(make_header("cam", ns).stamp) == ns


def test_ns_to_stamp_of_another_time_class() -> None:
    class OtherTime:  # e.g. the Time class of a rosbags typestore
        def __init__(self, sec: int, nanosec: int) -> None:
            self.sec, self.nanosec = sec, nanosec

    stamp = ns_to_stamp(3_000_000_007, OtherTime)
    assert isinstance(stamp, OtherTime) and (stamp.sec, stamp.nanosec) == (3, 7)
    assert stamp_to_ns(stamp) == 3_000_000_007


def test_headers_are_copies() -> None:
    header = make_header("cam", Time(sec=4, nanosec=2))
    copy = copy_header(header)
    assert copy == header and copy.stamp is not header.stamp
    copy.stamp.sec = 9
    assert header.stamp.sec == 4
    assert make_header("cam").stamp == Time()


def test_fast_message_construction_matches_constructors() -> None:
    """The slot-filling fast path (used in this venv) builds the same messages as __init__."""
    assert FAST_MESSAGES  # Kilted wheels: the generated classes have the expected layout
    gen = torch.Generator().manual_seed(10)
    poses = torch.randn(20, 7, generator=gen, dtype=torch.float64).numpy()
    fast = poses_to_msgs(poses)
    unit = poses[:, 3:] / np.linalg.norm(poses[:, 3:], axis=1, keepdims=True)
    slow = [Pose(position=Point(x=p[0], y=p[1], z=p[2]),
                 orientation=Quaternion(x=q[1], y=q[2], z=q[3], w=q[0]))
            for p, q in zip(poses.tolist(), unit.tolist(), strict=True)]
    assert fast == slow
    assert all(type(m.position.x) is float for m in fast)
    points = points_to_msgs(poses[:, :3])
    assert points == [Point(x=x, y=y, z=z) for x, y, z in poses[:, :3].tolist()]
    # They serialise like constructor-built messages.
    wire = serialize_message(PoseArray(poses=fast))
    assert deserialize_message(wire, PoseArray).poses == slow
    # Mutating one message never touches another.
    fast[0].position.x = 123.0
    assert fast[1].position.x != 123.0 and fast[0].orientation == slow[0].orientation
