"""Rigid transforms: composition, inverse, interpolation, and poses / covariances moved by them
(property tests: the covariance transform matches the sample covariance of moved samples)."""

from __future__ import annotations

import math

import pytest
import torch

from epropnp_lib.geometry.pose import Pose6DoF
from epropnp_lib.geometry.rigid import (
    RigidTransform,
    interpolate_transforms,
    transform_covariance,
    transform_poses,
)
from epropnp_lib.geometry.rotations import quat_log, quat_multiply, quat_normalize

CONJ = torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)


def random_transform(g: torch.Generator, batch: tuple[int, ...] = ()) -> RigidTransform:
    q = quat_normalize(torch.randn(*batch, 4, generator=g, dtype=torch.float64))
    return RigidTransform(q, 3.0 * torch.randn(*batch, 3, generator=g, dtype=torch.float64))


def random_covariance(g: torch.Generator, scale: torch.Tensor) -> torch.Tensor:
    """A random SPD ``(6, 6)`` covariance with standard deviations about ``scale: (6,)``."""
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    corr = a @ a.T + 6.0 * torch.eye(6, dtype=torch.float64)
    d = torch.diag(scale / torch.sqrt(torch.diagonal(corr)))
    return d @ corr @ d


@pytest.mark.parametrize("seed", range(5))
def test_compose_inverse_and_apply_agree(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = random_transform(g), random_transform(g)
    pts = torch.randn(10, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(a.compose(b).apply(pts), a.apply(b.apply(pts)))
    torch.testing.assert_close(a.inverse().apply(a.apply(pts)), pts)
    ident = a.compose(a.inverse())
    torch.testing.assert_close(ident.apply(pts), pts)


def test_interpolation_ends_and_midpoint() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = random_transform(g), random_transform(g)
    pts = torch.randn(5, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(interpolate_transforms(a, b, 0.0).apply(pts), a.apply(pts))
    torch.testing.assert_close(interpolate_transforms(a, b, 1.0).apply(pts), b.apply(pts))
    mid = interpolate_transforms(a, b, 0.5)
    # Constant angular rate: the midpoint is half the relative angle from each end.
    ang = lambda x, y: float(quat_log(quat_multiply(y.rotation, x.rotation * CONJ)).norm())  # noqa: E731
    assert ang(a, mid) == pytest.approx(ang(mid, b), rel=1e-9)
    assert ang(a, mid) == pytest.approx(0.5 * ang(a, b), rel=1e-9)
    torch.testing.assert_close(mid.translation, 0.5 * (a.translation + b.translation))


def test_4dof_pose_moves_like_its_6dof_twin() -> None:
    g = torch.Generator().manual_seed(4)
    tf = random_transform(g)
    yaw = torch.tensor([0.3, -2.0], dtype=torch.float64)
    pose4 = torch.cat((torch.randn(2, 3, generator=g, dtype=torch.float64), yaw[:, None]), -1)
    q = torch.stack((torch.cos(yaw / 2), 0 * yaw, torch.sin(yaw / 2), 0 * yaw), -1)
    pose7 = torch.cat((pose4[:, :3], q), -1)
    torch.testing.assert_close(transform_poses(tf, pose4), transform_poses(tf, pose7))
    # The moved pose maps object points as the transform after the pose.
    pts = torch.randn(4, 3, generator=g, dtype=torch.float64)
    moved = transform_poses(tf, pose7)
    for i in range(2):
        obj = RigidTransform(pose7[i, 3:], pose7[i, :3])
        new = RigidTransform(moved[i, 3:], moved[i, :3])
        torch.testing.assert_close(new.apply(pts), tf.apply(obj.apply(pts)))


@pytest.mark.parametrize("seed", range(3))
def test_covariance_transform_matches_moved_samples(seed: int) -> None:
    """Samples drawn from N(0, cov) in the source tangent space, retracted, moved into the target
    frame and read back in the target tangent space have the covariance J cov J^T (within
    sampling error: 5 standard errors of each entry)."""
    g = torch.Generator().manual_seed(100 + seed)
    tf = random_transform(g)
    mean = Pose6DoF.canonical(torch.cat((torch.randn(3, generator=g, dtype=torch.float64),
                                         torch.randn(4, generator=g, dtype=torch.float64))))
    scale = torch.tensor([0.3, 0.2, 0.5, 0.05, 0.08, 0.03], dtype=torch.float64)
    cov = random_covariance(g, scale)
    n = 20000
    delta = torch.randn(n, 6, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    samples = Pose6DoF.retract(mean.expand(n, 7), delta)
    moved, moved_mean = transform_poses(tf, samples), transform_poses(tf, mean)
    dt = moved[:, :3] - moved_mean[:3]
    dphi = quat_log(quat_multiply(moved[:, 3:], moved_mean[3:] * CONJ))
    d = torch.cat((dt, dphi), -1)
    sample_cov = (d - d.mean(0)).T @ (d - d.mean(0)) / (n - 1)
    want = transform_covariance(tf, cov)
    var = torch.diagonal(want)
    stderr = torch.sqrt((var[:, None] * var[None, :] + want**2) / n)
    assert bool(((sample_cov - want).abs() <= 5.0 * stderr).all()), (sample_cov - want) / stderr
    # Variances are preserved in total (a rotation of each 3x3 block).
    assert float(torch.trace(want[:3, :3])) == pytest.approx(float(torch.trace(cov[:3, :3])))
    assert math.isfinite(float(want.sum()))
