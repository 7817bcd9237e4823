"""The 6DoF closed loop: its scores (ADD(-S), n deg n cm, covariance coverage), its pictures, and
BOP -> bag -> pose_estimator node -> scores end to end on a tiny generated scene."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from epropnp_lib.geometry.pose import Pose6DoF
from epropnp_lib.geometry.rotations import (
    matrix_to_quat,
    quat_exp,
    quat_normalize,
    quat_to_matrix,
)
from epropnp_lib.geometry.symmetry import symmetry_transforms

pytestmark = pytest.mark.ros


def _poses(n: int, g: torch.Generator) -> torch.Tensor:
    """``(n, 7)`` float64 random poses about 0.7 m in front of the camera."""
    t = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.05
    t[:, 2] += 0.7
    return torch.cat((t, quat_normalize(torch.randn(n, 4, generator=g, dtype=torch.float64))),
                     dim=1)


def _cube(side: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(8, 3)`` vertices and ``(12, 3)`` faces of a cube centred on the origin."""
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * side / 2
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, faces


def test_scores_of_exact_missing_and_calibrated_estimates() -> None:
    from epropnp_ros.pose_scores import Estimate, ModelSpec, score_estimates

    g = torch.Generator().manual_seed(0)
    points, _ = _cube()
    models = {"cube": ModelSpec(points, 0.1 * math.sqrt(3), False),
              "sym": ModelSpec(points, 0.1 * math.sqrt(3), True)}
    n = 4000
    pred = _poses(n, g)
    # covariances A A^T + small diagonal, and ground truths drawn from them: calibrated
    a = torch.randn(n, 6, 6, generator=g, dtype=torch.float64) * 0.01
    cov = a @ a.transpose(1, 2) + 1e-6 * torch.eye(6, dtype=torch.float64)
    delta = (torch.linalg.cholesky(cov) @ torch.randn(n, 6, 1, generator=g,
                                                      dtype=torch.float64))[..., 0]
    gt = Pose6DoF.retract(pred, delta)
    est = [Estimate("cube", gt[i].numpy(), pred[i].numpy(), cov[i].numpy()) for i in range(n)]
    report = score_estimates(est, models)
    coverage = report["calibration"]["coverage"]
    assert set(coverage) == {"0.5", "0.9", "0.95"} and report["calibration"]["count"] == n
    for level, value in coverage.items():
        assert abs(value - float(level)) < 0.03, coverage
    # too small a covariance (over-confident): low coverage
    tight = [e._replace(covariance=e.covariance * 0.1) for e in est]
    assert score_estimates(tight, models)["calibration"]["coverage"]["0.9"] < 0.5

    # exact estimates pass everything; missing ones fail everything
    exact = [Estimate("sym", p.numpy(), p.numpy(), np.eye(6) * 1e-4) for p in _poses(3, g)]
    missing = [Estimate("sym", p.numpy()) for p in _poses(1, g)]
    report = score_estimates(exact + missing, models)
    sym = report["per_object"]["sym"]
    assert (report["instances"], report["estimated"], sym["estimated"]) == (4, 3, 3)
    for key in ("add_002", "add_005", "add_01", "deg2_cm2", "deg5_cm5", "deg10_cm10"):
        assert sym[key] == pytest.approx(75.0), key
    assert report["mean"]["add_01"] == pytest.approx(75.0)
    json.dumps(report)  # plain values


def test_symmetric_object_rotated_by_a_symmetry_has_no_error() -> None:
    from epropnp_lib.metrics import SYMMETRY_STEPS
    from epropnp_ros.pose_scores import Estimate, ModelSpec, score_estimates

    g = torch.Generator().manual_seed(1)
    points, _ = _cube()
    # the cube's 4-fold symmetry about z, and a continuous one (a can) about z
    quarter = np.eye(4)
    quarter[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    four = symmetry_transforms(quarter[None] @ np.stack([np.eye(4), quarter, quarter @ quarter]))
    can = symmetry_transforms(continuous=[((0.0, 0.0, 1.0), (0.0, 0.0, 0.0))],
                              num_continuous=SYMMETRY_STEPS)
    diameter = 0.1 * math.sqrt(3)
    models = {"plain": ModelSpec(points, diameter, True),
              "cube": ModelSpec(points, diameter, True, four),
              "can": ModelSpec(points, diameter, True, can)}
    gt = _poses(6, g)
    rot_gt = quat_to_matrix(gt[:, 3:])
    turned = {"cube": rot_gt @ four.rotations[1],
              "can": rot_gt @ quat_to_matrix(quat_exp(torch.tensor([0.0, 0.0, 1.234],
                                                                   dtype=torch.float64)))}
    turned["plain"] = turned["cube"]
    est = [Estimate(name, gt[i].numpy(),
                    torch.cat((gt[i, :3], matrix_to_quat(rot[i]))).numpy(), np.eye(6) * 1e-4)
           for name, rot in turned.items() for i in range(len(gt))]
    per = score_estimates(est, models)["per_object"]
    assert per["cube"]["median_rotation_deg"] < 1e-4
    assert per["can"]["median_rotation_deg"] < 0.5
    assert per["cube"]["add_002"] == pytest.approx(100.0)  # (the can's points are a cube's)
    for name in ("cube", "can"):
        assert per[name]["deg2_cm2"] == pytest.approx(100.0), name
    # without its symmetries the quarter turn is a 90 degree error (ADD-S still passes)
    assert per["plain"]["median_rotation_deg"] == pytest.approx(90.0)
    assert per["plain"]["deg10_cm10"] == 0.0 and per["plain"]["add_002"] == pytest.approx(100.0)
    # the covariance is scored against the closest equivalent too: inside every ellipsoid
    for name, inside in (("cube", 1.0), ("plain", 0.0)):
        cal = score_estimates([e for e in est if e.object_name == name], models)["calibration"]
        assert cal["coverage"]["0.5"] == inside, name


def test_draw_poses_marks_the_object_axes_and_sample_clouds() -> None:
    from epropnp_ros.pose_video import DrawnPose, draw_poses

    k = np.array([[300.0, 0.0, 80.0], [0.0, 300.0, 60.0], [0.0, 0.0, 1.0]])
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    v, f = _cube(0.05)
    pose = np.array([0.0, 0.0, 0.6, 1.0, 0.0, 0.0, 0.0])
    samples = np.repeat(pose[None], 5, 0)
    samples[:, 0] += np.linspace(-0.02, 0.02, 5)
    cov = np.diag([1e-4, 1e-4, 1e-3, 1e-2, 1e-2, 1e-2])
    out = draw_poses(image, k, [DrawnPose(pose, cov, samples, v, f, pose, "cube")])
    assert out.shape == image.shape and out.dtype == np.uint8 and not image.any()
    # the cube's outline: a square of side 0.05 * 300 / 0.6 = 25 px around the centre
    assert out[60, 80 - 13:80 - 11].any() and out[60 - 13:60 - 11, 80].any()
    # the x axis (red in BGR) runs to the right of the centre
    assert out[60, 90:100, 2].max() > 100
    assert not out[:, :50].any()  # nothing far from the object
    assert np.array_equal(draw_poses(image, k, []), image)


def test_bop_bag_through_the_node_to_scores(
    tmp_path: Path, ros_in_process: None, ros_runtime: None, dense_fixture_checkpoint: Path
) -> None:
    """BOP -> bag -> pose_estimator node -> ADD(-S), n deg n cm, coverage (the fixture network
    is untrained: the check is that every stage runs and reports, not the accuracy)."""
    from epropnp_lib.generators.bop import generate_bop_lm
    from epropnp_ros.bop_bag import BopBagConfig, convert
    from epropnp_ros.pose_closed_loop import PoseClosedLoopConfig, main, run_pose_closed_loop

    generate_bop_lm(tmp_path / "bop", num_scenes=1, images_per_scene=2,
                    objects=["lblock", "eggbox"], image_size=(96, 72), seed=2, split="test")
    bag = convert(BopBagConfig(root=str(tmp_path / "bop"), output=str(tmp_path / "bag"))).path
    result = run_pose_closed_loop(PoseClosedLoopConfig(
        bag=str(bag), checkpoint=str(dense_fixture_checkpoint), bop_root=str(tmp_path / "bop"),
        out=str(tmp_path / "loop"), node_params=("num_posterior_samples:=4",)))
    assert (result.frames_processed, result.frames_dropped) == (2, 0)
    scores = json.loads(result.scores_path.read_text())
    assert scores["instances"] == 4 and scores["estimated"] == 4
    assert set(scores["per_object"]) == {"ape", "eggbox"}  # lblock takes ape's LineMOD id
    for key in ("add_002", "add_005", "add_01", "deg2_cm2", "deg5_cm5", "deg10_cm10"):
        assert 0.0 <= scores["mean"][key] <= 100.0
    assert scores["calibration"]["count"] == 4
    assert all(0.0 <= v <= 1.0 for v in scores["calibration"]["coverage"].values())
    assert result.frames_dir is not None
    assert sorted(p.name for p in result.frames_dir.iterdir()) == ["000000.jpg", "000001.jpg"]
    # the CLI: a missing checkpoint is an error with status 2
    assert main(["--bag", str(bag), "--checkpoint", str(tmp_path / "none.pt"),
                 "--bop-root", str(tmp_path / "bop"), "--out", str(tmp_path / "x")]) == 2
