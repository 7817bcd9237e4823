"""Rig fusion (ROS-free logic): camera detections moved into the target frame (poses, covariance,
samples) and cross-camera duplicates removed by the class-aware BEV NMS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from epropnp_lib.conventions import UNOBSERVED_ROTATION_VARIANCE
from epropnp_lib.data.nuscenes import NUSCENES_CLASSES
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.rigid import RigidTransform
from epropnp_lib.geometry.rotations import quat_log, quat_multiply
from epropnp_ros.fusion import fuse, fused_objects, to_target_frame
from epropnp_ros.pipeline import DetectorOutput

CONJ = torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)


def camera_transform(rotvec: tuple[float, float, float], t: tuple[float, float, float]
                     ) -> RigidTransform:
    """base_link <- optical frame of a camera looking along base_link's x axis (optical x, y, z
    = base -y, -z, x), turned by ``rotvec`` and placed at ``t``."""
    optical = Rotation.from_matrix(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    x, y, z, w = (Rotation.from_rotvec(rotvec) * optical).as_quat()
    return RigidTransform(torch.tensor([w, x, y, z], dtype=torch.float64),
                          torch.tensor(t, dtype=torch.float64))


def output(pose: np.ndarray, cov: np.ndarray, samples: np.ndarray, labels: list[int],
           scores: list[float]) -> DetectorOutput:
    m = len(pose)
    size = torch.tensor([[1.9, 4.5, 1.6]] * m, dtype=torch.float64)  # (w, l, h)
    boxes = CameraBoxes(torch.from_numpy(pose[:, :3]), size, torch.from_numpy(pose[:, 3]),
                        torch.tensor(labels), torch.full((m, 2), math.nan),
                        torch.full((m,), -1), torch.tensor(scores, dtype=torch.float64))
    return DetectorOutput(pose, cov, samples, np.asarray(scores), tuple(
        NUSCENES_CLASSES[i] for i in labels), boxes, {}, 0)


def test_covariance_in_target_frame_matches_moved_samples() -> None:
    """4DoF samples drawn from the camera covariance, moved into base_link and read in base_link's
    tangent space: their covariance is the published one, less the unobserved roll/pitch
    variance rotated the same way (within 5 standard errors per entry)."""
    g = torch.Generator().manual_seed(7)
    tf = camera_transform((0.1, -0.05, 0.9), (1.2, 0.4, 1.6))
    pose = np.array([[2.0, 0.5, 15.0, 0.4]])
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    corr = (a @ a.T + 4.0 * torch.eye(4, dtype=torch.float64)).numpy()
    d = np.diag(np.array([0.3, 0.1, 0.8, 0.05]) / np.sqrt(np.diag(corr)))
    cov = d @ corr @ d
    n = 20000
    delta = torch.randn(n, 4, generator=g, dtype=torch.float64).numpy() @ np.linalg.cholesky(cov).T
    samples = (pose + delta)[None]  # (1, S, 4)
    fused = to_target_frame(output(pose, cov[None], samples, [0], [0.9]), tf, camera=2)
    assert fused.camera.tolist() == [2] and fused.samples.shape == (1, n, 7)
    mean = torch.from_numpy(fused.pose[0])
    moved = torch.from_numpy(fused.samples[0])
    dt = moved[:, :3] - mean[:3]
    dphi = quat_log(quat_multiply(moved[:, 3:], mean[3:] * CONJ))
    dd = torch.cat((dt, dphi), -1).numpy()
    sample_cov = np.cov(dd.T)
    r = tf.matrix().numpy()
    unobserved = np.zeros((6, 6))
    unobserved[3:, 3:] = r @ np.diag([UNOBSERVED_ROTATION_VARIANCE, 0.0,
                                      UNOBSERVED_ROTATION_VARIANCE]) @ r.T
    # The published covariance is the moved one conditioned on roll and pitch (fusion._level):
    # the same conditioning of the samples' covariance (plus the rotated placeholders) gives it,
    # within 5 standard errors per entry of the kept (x, y, z, rot_z) block.
    from epropnp_ros.fusion import _level

    keep = [0, 1, 2, 5]
    moved = _level(torch.from_numpy(sample_cov + unobserved)[None])[0].numpy()
    got = fused.covariance[0]
    want = moved[np.ix_(keep, keep)]
    var = np.clip(np.diag(want), 1e-12, None)
    stderr = np.sqrt((var[:, None] * var[None, :] + want**2) / n) + 1e-9
    diff = got[np.ix_(keep, keep)] - want
    assert np.all(np.abs(diff) <= 5.0 * stderr), diff / stderr
    # Roll and pitch: the placeholder, uncorrelated; rot_z: the heading's own variance.
    assert got[3, 3] == got[4, 4] == UNOBSERVED_ROTATION_VARIANCE
    assert not got[[3, 4]][:, keep].any()
    assert abs(got[5, 5] - cov[3, 3]) < 0.05 * cov[3, 3]
    # The pose itself: the box centre moved by the transform.
    centre = tf.apply(torch.from_numpy(pose[:, :3]))[0].numpy()
    np.testing.assert_allclose(fused.pose[0, :3], centre)
    assert fused.size.tolist() == [[4.5, 1.9, 1.6]]  # (length, width, height)


def test_fused_boxes_are_z_up_with_velocity_and_attribute() -> None:
    """A level camera: the fused box's z axis is base_link's z (up), its x axis the heading;
    the camera-frame velocity (vx, vz) is rotated into base_link; the attribute is carried."""
    from epropnp_lib.data.nuscenes import NUSCENES_ATTRIBUTES

    tf = camera_transform((0.0, 0.0, 0.5), (1.5, 0.0, 1.6))
    pose = np.array([[1.0, 0.8, 12.0, 0.3]])
    out = output(pose, np.eye(4)[None] * 0.01, np.repeat(pose[None], 3, axis=1), [0], [0.9])
    boxes = out.boxes._replace(velocity=torch.tensor([[2.0, -1.0]], dtype=torch.float64),
                               attributes=torch.tensor([1]))
    fused = to_target_frame(out._replace(boxes=boxes), tf, 0, NUSCENES_ATTRIBUTES)
    rot = Rotation.from_quat(np.roll(fused.pose[0, 3:], -1)).as_matrix()
    np.testing.assert_allclose(rot[:, 2], [0.0, 0.0, 1.0], atol=1e-12)
    optical_heading = np.array([math.cos(0.3), 0.0, -math.sin(0.3)])
    np.testing.assert_allclose(rot[:, 0], tf.matrix().numpy() @ optical_heading, atol=1e-12)
    for sample in fused.samples[0]:  # the samples share the box axes
        np.testing.assert_allclose(sample, fused.pose[0], atol=1e-12)
    np.testing.assert_allclose(fused.velocity[0],
                               tf.matrix().numpy() @ np.array([2.0, 0.0, -1.0]), atol=1e-12)
    assert fused.attributes == (NUSCENES_ATTRIBUTES[1],)
    [obj] = fused_objects(fused)
    assert obj.attribute == NUSCENES_ATTRIBUTES[1] and obj.velocity is not None
    assert fused_objects(to_target_frame(out, tf, 0))[0].velocity is None  # NaN: unknown


def test_object_seen_by_two_cameras_comes_out_once() -> None:
    """Two overlapping cameras see the same car (and each something else): the fused output has
    the car once (the better score), the other objects kept; a pedestrian at the car's place
    is another class and stays."""
    front = camera_transform((0.0, 0.0, 0.0), (1.5, 0.0, 1.6))
    left = camera_transform((0.0, 0.0, 0.8), (1.3, 0.5, 1.6))
    car_base = np.array([12.0, 3.0, 0.8])
    yaw_base = 0.3

    def seen_from(tf: RigidTransform, centre: np.ndarray) -> np.ndarray:
        inv = tf.inverse()
        c = inv.apply(torch.from_numpy(centre)[None])[0].numpy()
        # Yaw about the optical y axis (down) of a heading yaw_base about base_link z.
        heading = inv.matrix().numpy() @ np.array([math.cos(yaw_base), math.sin(yaw_base), 0.0])
        return np.array([*c, math.atan2(-heading[2], heading[0])])

    other = np.array([20.0, -4.0, 0.8])
    poses_f = np.stack([seen_from(front, car_base), seen_from(front, other)])
    poses_l = np.stack([seen_from(left, car_base + [0.2, -0.1, 0.0]),
                        seen_from(left, car_base)])
    cov = np.tile(np.diag([0.1, 0.1, 0.5, 0.02]), (2, 1, 1))
    smp_f = np.repeat(poses_f[:, None], 3, axis=1)
    smp_l = np.repeat(poses_l[:, None], 3, axis=1)
    car, ped = NUSCENES_CLASSES.index("car"), NUSCENES_CLASSES.index("pedestrian")
    parts = [to_target_frame(output(poses_f, cov, smp_f, [car, car], [0.6, 0.5]), front, 0),
             to_target_frame(output(poses_l, cov, smp_l, [car, ped], [0.8, 0.4]), left, 1)]
    fused = fuse(parts, nms_iou=0.3, max_detections=10)
    assert fused.class_ids == ("car", "car", "pedestrian")
    np.testing.assert_allclose(fused.scores, [0.8, 0.5, 0.4])
    assert fused.camera.tolist() == [1, 0, 1]
    np.testing.assert_allclose(fused.pose[0, :3], car_base + [0.2, -0.1, 0.0], atol=1e-9)
    np.testing.assert_allclose(fused.pose[1, :3], other, atol=1e-9)
    # The car's heading in base_link is yaw_base about z.
    rot = Rotation.from_quat(np.roll(fused.pose[0, 3:], -1)).as_matrix()
    np.testing.assert_allclose(rot[:, 0], [math.cos(yaw_base), math.sin(yaw_base), 0.0],
                               atol=1e-9)
    assert fused.samples.shape == (3, 3, 7)
    objects = fused_objects(fused)
    assert [o.class_id for o in objects] == list(fused.class_ids)
    assert objects[0].covariance.shape == (6, 6) and objects[0].pose.shape == (7,)
    assert fuse(parts, nms_iou=0.3, max_detections=1).class_ids == ("car",)


def test_fuse_of_nothing_is_empty() -> None:
    empty = output(np.zeros((0, 4)), np.zeros((0, 4, 4)), np.zeros((0, 2, 4)), [], [])
    tf = camera_transform((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    fused = fuse([to_target_frame(empty, tf, 0)], nms_iou=0.5, max_detections=5)
    assert fused.pose.shape == (0, 7) and fused.class_ids == () and fused_objects(fused) == []
    assert pytest.approx(0.0) == float(fused.scores.sum())


def test_one_cameras_own_detections_never_suppress_each_other() -> None:
    """Two overlapping cars of one camera (its own NMS kept both) stay; the same two seen by a
    second camera with lower scores are its duplicates and go."""
    tf = camera_transform((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    pose = np.array([[0.0, 0.0, 10.0, 0.0], [0.3, 0.0, 10.5, 0.0]])
    cov = np.tile(np.eye(4) * 0.1, (2, 1, 1))
    smp = np.repeat(pose[:, None], 2, axis=1)
    car = NUSCENES_CLASSES.index("car")
    first = to_target_frame(output(pose, cov, smp, [car, car], [0.9, 0.8]), tf, 0)
    second = to_target_frame(output(pose, cov, smp, [car, car], [0.7, 0.6]), tf, 1)
    fused = fuse([first, second], nms_iou=0.3, max_detections=10)
    assert fused.camera.tolist() == [0, 0]
    np.testing.assert_allclose(fused.scores, [0.9, 0.8])
