"""The TF buffer against real tf2_msgs messages: static and dynamic transforms, chains of frames,
interpolation, the tolerance outside the history, bounded history, refused transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from geometry_msgs.msg import TransformStamped
from scipy.spatial.transform import Rotation
from tf2_msgs.msg import TFMessage

from epropnp_lib.errors import ConfigError
from epropnp_ros.errors import TransformLookupError
from epropnp_ros.messages import make_header
from epropnp_ros.tf_buffer import TransformBuffer

S = 1_000_000_000


def stamped(parent: str, child: str, stamp_ns: int, t: tuple[float, float, float],
            rotvec: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> TransformStamped:
    ts = TransformStamped(header=make_header(parent, stamp_ns), child_frame_id=child)
    ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = t
    x, y, z, w = Rotation.from_rotvec(rotvec).as_quat()
    r = ts.transform.rotation
    r.x, r.y, r.z, r.w = float(x), float(y), float(z), float(w)
    return ts


def apply(buf: TransformBuffer, target: str, source: str, stamp_ns: int,
          point: tuple[float, float, float]) -> np.ndarray:
    tf = buf.lookup(target, source, stamp_ns)
    return tf.apply(torch.as_tensor(np.asarray(point, dtype=np.float64))[None])[0].numpy()


def test_static_chain_and_inverse() -> None:
    """map <- base_link (dynamic), base_link <- cam (static); lookups along and across the tree
    equal the composed scipy transforms."""
    buf = TransformBuffer()
    static = TFMessage(transforms=[
        stamped("base_link", "cam_front", 0, (1.5, 0.0, 1.6), (-math.pi / 2, 0.0, -math.pi / 2)),
        stamped("base_link", "cam_left", 0, (1.0, 0.5, 1.6), (0.0, 0.0, 0.7)),
    ])
    assert buf.add_message(static, static=True) == 2
    buf.add_message(TFMessage(transforms=[stamped("map", "base_link", 10 * S, (100.0, 5.0, 0.0),
                                                  (0.0, 0.0, 0.3))]), static=False)
    p = (0.2, -0.1, 4.0)
    r_front = Rotation.from_rotvec((-math.pi / 2, 0.0, -math.pi / 2))
    want = r_front.apply(p) + (1.5, 0.0, 1.6)
    np.testing.assert_allclose(apply(buf, "base_link", "cam_front", 10 * S, p), want)
    in_map = Rotation.from_rotvec((0, 0, 0.3)).apply(want) + (100.0, 5.0, 0.0)
    np.testing.assert_allclose(apply(buf, "map", "cam_front", 10 * S, p), in_map)
    np.testing.assert_allclose(apply(buf, "cam_front", "map", 10 * S, in_map), p, atol=1e-12)
    # Across the tree: cam_left <- cam_front.
    r_left = Rotation.from_rotvec((0.0, 0.0, 0.7))
    across = r_left.inv().apply(want - (1.0, 0.5, 1.6))
    np.testing.assert_allclose(apply(buf, "cam_left", "/cam_front", 0, p), across, atol=1e-12)
    # Static transforms hold at any time; an identity lookup needs no frame at all.
    np.testing.assert_allclose(apply(buf, "base_link", "cam_front", 123 * S, p), want)
    np.testing.assert_allclose(apply(buf, "nowhere", "nowhere", 0, p), p)


def test_dynamic_interpolation_and_tolerance() -> None:
    buf = TransformBuffer(tolerance=0.05)
    for sec, x, yaw in ((10, 0.0, 0.0), (11, 2.0, 0.4)):
        buf.add_message(TFMessage(transforms=[stamped("odom", "base_link", sec * S, (x, 0.0, 0.0),
                                                      (0.0, 0.0, yaw))]), static=False)
    # Halfway: linear translation, slerp rotation (half the angle).
    mid = buf.lookup("odom", "base_link", 10 * S + S // 2)
    np.testing.assert_allclose(mid.translation.numpy(), (1.0, 0.0, 0.0))
    rot = Rotation.from_matrix(mid.matrix().numpy()).as_rotvec()
    np.testing.assert_allclose(rot, (0.0, 0.0, 0.2), atol=1e-12)
    # Outside the history: the nearest entry within the tolerance, else an error naming the span.
    np.testing.assert_allclose(
        buf.lookup("odom", "base_link", 11 * S + 40_000_000).translation.numpy(), (2.0, 0, 0))
    with pytest.raises(TransformLookupError, match="tolerance"):
        buf.lookup("odom", "base_link", 11 * S + 60_000_000)
    with pytest.raises(TransformLookupError, match="tolerance"):
        buf.lookup("odom", "base_link", 9 * S)
    # Time 0: the newest.
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 0).translation.numpy(), (2, 0, 0))
    assert buf.can_transform("odom", "base_link", 10 * S)
    assert not buf.can_transform("odom", "base_link", 20 * S)


def test_unconnected_frames_raise_and_history_is_bounded() -> None:
    buf = TransformBuffer(cache_time=1.0, max_history=5)
    with pytest.raises(TransformLookupError, match="not connected"):
        buf.lookup("base_link", "cam")
    for k in range(20):
        buf.add_message(TFMessage(transforms=[stamped("odom", "base_link", k * S // 10,
                                                      (float(k), 0.0, 0.0))]), static=False)
    # At most max_history entries, none older than cache_time behind the newest.
    with pytest.raises(TransformLookupError):
        buf.lookup("odom", "base_link", 14 * S // 10 - 1)  # evicted (only the last 5 remain)
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 15 * S // 10).translation.numpy(),
                               (15.0, 0, 0))
    with pytest.raises(TransformLookupError, match="not connected"):
        buf.lookup("map", "base_link")
    assert buf.frames() == {"odom", "base_link"}


def test_bad_transforms_are_refused_and_counted() -> None:
    buf = TransformBuffer()
    nan = stamped("base_link", "cam", 0, (math.nan, 0.0, 0.0))
    zero_q = stamped("base_link", "cam2", 0, (0.0, 0.0, 0.0))
    zero_q.transform.rotation.w = 0.0
    own_parent = stamped("cam3", "cam3", 0, (0.0, 0.0, 0.0))
    no_parent = stamped("", "cam4", 0, (0.0, 0.0, 0.0))
    good = stamped("base_link", "cam5", 0, (1.0, 0.0, 0.0))
    msg = TFMessage(transforms=[nan, zero_q, own_parent, no_parent, good])
    assert buf.add_message(msg, static=True) == 1
    assert buf.rejected == 4
    assert buf.frames() == {"base_link", "cam5"}
    with pytest.raises(ConfigError):
        TransformBuffer(cache_time=-1.0)
    with pytest.raises(ConfigError):
        TransformBuffer(max_history=0)
