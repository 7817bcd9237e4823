"""epropnp_ros.poses and epropnp_ros.messages against real message classes.

Quaternion order is checked against SciPy's independent (x, y, z, w) reading of the message."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from geometry_msgs.msg import PoseWithCovariance
from scipy.spatial.transform import Rotation

from epropnp_lib.conventions import UNOBSERVED_ROTATION_VARIANCE
from epropnp_lib.errors import NonFiniteError, ShapeError
from epropnp_lib.pnp.problems import random_problems
from epropnp_lib.pnp.solver import solve_pnp
from epropnp_ros.errors import ConversionError
from epropnp_ros.messages import make_header
from epropnp_ros.poses import (
    covariance_to_msg,
    msg_to_covariance,
    msg_to_pose,
    pose_array,
    pose_rotation,
    pose_to_msg,
    pose_with_covariance,
    pose_with_covariance_stamped,
)

pytestmark = pytest.mark.ros


def _spd(dim: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    m = (a @ a.T + 0.1 * torch.eye(dim, dtype=torch.float64)).numpy()
    return 0.5 * (m + m.T)  # exactly symmetric


def _msg_rotation(q_msg: Any) -> np.ndarray:
    """Rotation matrix of a geometry_msgs/Quaternion read independently by SciPy (x, y, z, w)."""
    return Rotation.from_quat([q_msg.x, q_msg.y, q_msg.z, q_msg.w]).as_matrix()


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def test_quaternion_order_w_last_in_message() -> None:
    # 90 degrees about the camera z axis: library (w, x, y, z) = (c, 0, 0, s).
    c = s = math.sqrt(0.5)
    msg = pose_to_msg([1.0, 2.0, 3.0, c, 0.0, 0.0, s])
    o = msg.orientation
    assert (o.x, o.y, o.z) == (0.0, 0.0, pytest.approx(s)) and o.w == pytest.approx(c)
    assert (msg.position.x, msg.position.y, msg.position.z) == (1.0, 2.0, 3.0)
    rot = _msg_rotation(o)
    np.testing.assert_allclose(rot @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(pose_rotation([0, 0, 0, c, 0, 0, s]), rot, atol=1e-12)


def test_pose_round_trip_generic_rotation() -> None:
    q_xyzw = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_quat()
    q_wxyz = np.roll(q_xyzw, 1)
    q_wxyz = q_wxyz if q_wxyz[0] >= 0 else -q_wxyz
    pose = np.concatenate(([0.5, -0.2, 4.0], q_wxyz))
    msg = pose_to_msg(torch.tensor(pose))
    np.testing.assert_allclose(
        [msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w],
        q_wxyz[[1, 2, 3, 0]], atol=1e-12)
    np.testing.assert_allclose(msg_to_pose(msg), pose, atol=1e-12)
    np.testing.assert_allclose(_msg_rotation(msg.orientation), pose_rotation(pose), atol=1e-12)
    # -q is the same rotation; msg_to_pose returns the w >= 0 representative.
    neg = pose_to_msg(np.concatenate((pose[:3], -q_wxyz)))
    np.testing.assert_allclose(msg_to_pose(neg), pose, atol=1e-12)


def test_pose4_yaw_about_camera_y() -> None:
    yaw = 0.3
    msg = pose_to_msg([1.0, 1.5, 20.0, yaw])
    o = msg.orientation
    assert o.x == 0.0 and o.z == 0.0
    assert o.y == pytest.approx(math.sin(yaw / 2)) and o.w == pytest.approx(math.cos(yaw / 2))
    np.testing.assert_allclose(_msg_rotation(o), _yaw_matrix(yaw), atol=1e-12)
    np.testing.assert_allclose(msg_to_pose(msg, dof=4), [1.0, 1.5, 20.0, yaw], atol=1e-12)
    tilted = pose_to_msg([0, 0, 5, math.cos(0.2), math.sin(0.2), 0, 0])
    with pytest.raises(ConversionError, match="not a rotation about the camera y"):
        msg_to_pose(tilted, dof=4)


def test_pose_input_errors() -> None:
    with pytest.raises(ShapeError):
        pose_to_msg([1.0, 2.0, 3.0])
    with pytest.raises(NonFiniteError):
        pose_to_msg([1.0, 2.0, math.nan, 0.1])
    with pytest.raises(ShapeError, match="zero quaternion"):
        pose_to_msg([0, 0, 1, 0, 0, 0, 0])


def test_covariance_round_trip_6dof() -> None:
    cov = _spd(6, 0)
    ros = covariance_to_msg(cov)
    assert ros.shape == (36,)
    # Row-major over (x, y, z, rot_x, rot_y, rot_z).
    assert ros[0 * 6 + 1] == cov[0, 1] and ros[3 * 6 + 3] == cov[3, 3]
    assert ros[5 * 6 + 2] == cov[5, 2]
    msg = PoseWithCovariance(covariance=ros)
    back = msg_to_covariance(np.asarray(msg.covariance), dof=6)
    np.testing.assert_allclose(back, cov, rtol=0, atol=0)


def test_covariance_round_trip_4dof_large_unobserved_variances() -> None:
    cov = _spd(4, 1)
    ros = covariance_to_msg(torch.tensor(cov)).reshape(6, 6)
    idx = [0, 1, 2, 4]  # x, y, z, rot_y (yaw about camera y)
    np.testing.assert_array_equal(ros[np.ix_(idx, idx)], cov)
    assert ros[3, 3] == ros[5, 5] == UNOBSERVED_ROTATION_VARIANCE == 1.0e6
    for k in (3, 5):
        assert np.count_nonzero(ros[k]) == 1 and np.count_nonzero(ros[:, k]) == 1
    np.testing.assert_array_equal(msg_to_covariance(ros.reshape(-1), dof=4), cov)
    assert np.all(np.linalg.eigvalsh(ros) > 0)


@pytest.mark.parametrize("dof", [6, 4])
def test_solver_covariance_round_trip(dof: int) -> None:
    """A real Laplace covariance of the library solver: library -> ROS 6x6 -> library."""
    prob = random_problems(2, 24, dof=dof, noise_std=0.5, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(dof))
    sol = solve_pnp(prob.x3d, prob.x2d, prob.w2d, prob.cam_mats, dof=dof)
    for pose, cov in zip(sol.pose, sol.covariance, strict=True):
        msg = pose_with_covariance(pose, cov)
        ros = np.asarray(msg.covariance).reshape(6, 6)
        np.testing.assert_allclose(ros, ros.T, atol=0)
        assert np.linalg.eigvalsh(ros).min() > 0
        back = msg_to_covariance(ros.reshape(-1), dof)
        np.testing.assert_allclose(back, cov.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(msg_to_pose(msg.pose, dof)[:3], pose[:3].numpy())


def test_covariance_errors() -> None:
    with pytest.raises(ShapeError):
        covariance_to_msg(np.eye(5))
    bad = np.eye(6)
    bad[2, 2] = math.inf
    with pytest.raises(NonFiniteError):
        covariance_to_msg(bad)
    with pytest.raises(ShapeError):
        msg_to_covariance(np.zeros(35), dof=6)
    with pytest.raises(ShapeError, match="covariance"):
        pose_with_covariance([0, 0, 1, 0.0], np.eye(6))


def test_pose_with_covariance_stamped_copies_header() -> None:
    header = make_header("cam", 5)
    msg = pose_with_covariance_stamped(header, [0.0, 0.0, 3.0, 0.1], _spd(4, 8))
    header.frame_id = "changed"
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 5
    assert msg.pose.covariance[3 * 6 + 3] == UNOBSERVED_ROTATION_VARIANCE


def test_pose_array_from_samples() -> None:
    gen = torch.Generator().manual_seed(9)
    s4 = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    arr = pose_array(make_header("cam", 1), s4)
    assert len(arr.poses) == 50 and arr.header.frame_id == "cam"
    for pose, sample in zip(arr.poses, s4.numpy(), strict=True):
        np.testing.assert_allclose(_msg_rotation(pose.orientation), _yaw_matrix(sample[3]),
                                   atol=1e-12)
        assert pose.position.z == sample[2]
    s7 = torch.cat((torch.zeros(3, 3), torch.tensor([[0.0, 0.0, 0.0, 2.0]] * 3)), dim=1)
    arr7 = pose_array(make_header("cam"), s7)
    assert [p.orientation.z for p in arr7.poses] == [1.0] * 3
    assert [p.orientation.w for p in arr7.poses] == [0.0] * 3
    with pytest.raises(ShapeError):
        pose_array(make_header("cam"), torch.zeros(3, 6))


def test_builder_errors_are_conversion_errors() -> None:
    for call in (lambda: pose_to_msg([1.0]),
                 lambda: covariance_to_msg(np.full((6, 6), math.nan)),
                 lambda: pose_array(make_header("c"), np.zeros((2, 5)))):
        with pytest.raises(ConversionError):
            call()


def test_covariance_to_msg_batched() -> None:
    covs = np.stack((_spd(4, 11), _spd(4, 12), _spd(4, 13)))
    rows = covariance_to_msg(covs)
    assert rows.shape == (3, 36)
    for row, cov in zip(rows, covs, strict=True):
        np.testing.assert_array_equal(row, covariance_to_msg(cov))
