"""The closed loop: bag → detector node process → recorded detections → DetectionEval."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("per_camera", [False, True], ids=["rig", "per_camera"])
def test_demo_closed_loop_scores_a_tiny_scene(
    tmp_path: Path, ros_in_process: None, ros_runtime: None, detector_fixture_checkpoint: Path,
    dense_fixture_checkpoint: Path, per_camera: bool,
) -> None:
    """The main demo's path (generate → bag → rig node, or a detector node per camera →
    DetectionEval) on a tiny scene; with the rig node, also the object half (BOP scenes →
    bag → pose_estimator node → ADD(-S), n° n cm, coverage)."""
    from epropnp_ros.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(
        out=str(tmp_path / "demo"), checkpoint=str(detector_fixture_checkpoint), samples=2,
        image_size=(160, 90), cameras=("CAM_FRONT", "CAM_BACK"),
        detector_params=("score_threshold:=0.0",), per_camera=per_camera,
        objects=not per_camera, pose_checkpoint=str(dense_fixture_checkpoint),
        object_images_per_scene=1,
    ))
    if per_camera:
        assert result.objects is None
    else:
        objects = result.objects
        assert objects is not None
        assert (objects.frames_processed, objects.frames_dropped) == (4, 0)
        pose_scores = json.loads(objects.scores.read_text())
        assert pose_scores["mean"] and "coverage" in pose_scores["calibration"]
        assert objects.score_line.startswith("ADD(-S) 0.02d/0.05d/0.1d ")
        assert objects.frames is not None and len(list(objects.frames.glob("*.jpg"))) == 4
    assert (result.bag / "metadata.yaml").is_file()
    results: dict[str, Any] = json.loads(result.results.read_text())
    assert results["meta"]["use_camera"] is True and len(results["results"]) == 2
    boxes = [b for sample in results["results"].values() for b in sample]
    assert boxes and all(set(b) >= {"translation", "size", "rotation", "detection_name",
                                    "detection_score", "velocity", "attribute_name"}
                         for b in boxes)
    scores = json.loads(result.scores.read_text())
    assert (scores["frames_processed"], scores["frames_dropped"]) == (4, 0)
    assert scores["mode"] == ("per_camera" if per_camera else "rig")
    assert 0.0 <= scores["nds"] == result.nds <= 1.0 and 0.0 <= scores["mean_ap"] <= 1.0
    assert set(scores["tp_errors"]) == {"trans_err", "scale_err", "orient_err", "vel_err",
                                        "attr_err"}
    assert all(math.isfinite(v) for v in scores["tp_errors"].values())
    assert (result.results.parent / "metrics_summary.json").is_file()  # the devkit's own file
    calibration = scores["calibration"]
    assert set(calibration) == {"position", "heading", "matches", "plot", "heading_samples"}
    heading = calibration["heading_samples"]
    assert set(heading) == {"num_matched", "mean_error", "hdr90_fraction", "hdr_fractions"}
    assert set(heading["hdr_fractions"]) == {"0.5", "0.9", "0.95"}
    assert heading["hdr_fractions"]["0.9"] == heading["hdr90_fraction"] or (
        math.isnan(heading["hdr90_fraction"]) and math.isnan(heading["hdr_fractions"]["0.9"]))
    assert result.street_line.startswith(f"NDS {result.nds:.3f}  mAP ")
    assert " mAOE " in result.street_line and " heading HDR90 " in result.street_line
    assert set(calibration["position"]) == {"0.5", "0.9", "0.95", "0.99"}
    assert Path(calibration["plot"]).stat().st_size > 1000  # calibration.png
    assert result.video is not None and result.video.stat().st_size > 0
    assert len(list(result.frames.glob("cam_front_*.jpg"))) == 2
    assert len(list(result.frames.glob("cam_back_*.jpg"))) == 2


def test_demo_rejects_a_missing_checkpoint(tmp_path: Path) -> None:
    from epropnp_lib.errors import ConfigError
    from epropnp_ros.demo import DemoConfig, main, run_demo

    with pytest.raises(ConfigError, match="checkpoint not found"):
        run_demo(DemoConfig(out=str(tmp_path), checkpoint=str(tmp_path / "none.pt")))
    with pytest.raises(ConfigError, match="pose checkpoint not found"):
        run_demo(DemoConfig(out=str(tmp_path), pose_checkpoint=str(tmp_path / "none.pt")))
    assert main(["--out", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    with pytest.raises(ConfigError):
        DemoConfig(samples=1)


def test_yaw_samples_of_a_published_pose_array() -> None:
    """The closed loop reads each object's posterior yaw samples back from the PoseArray the
    node publishes (object-major)."""
    import numpy as np
    import torch

    from epropnp_ros.closed_loop_scoring import _yaw_samples
    from epropnp_ros.messages import make_header
    from epropnp_ros.poses import pose_array

    g = torch.Generator().manual_seed(0)
    samples = torch.rand(3, 5, 4, generator=g, dtype=torch.float64).numpy()  # (M, S, 4)
    samples[..., 3] = (samples[..., 3] - 0.5) * 6.0  # yaws in (-3, 3)
    msg = pose_array(make_header("cam", 0), samples.reshape(-1, 4))
    np.testing.assert_allclose(_yaw_samples(msg, 3).numpy(), samples[..., 3].T, atol=1e-9)
    assert _yaw_samples(None, 3).shape == (0, 3)


def test_fused_heading_variance_holds_the_unobserved_rotations() -> None:
    """A fused 4DoF detection from a camera pitched by 1 deg: its rot_z variance is dominated by
    the 1e6 rad^2 placeholder of the unobserved rotations; the heading variance used for the
    calibration (roll and pitch held) is the detection's own yaw variance."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    from epropnp_ros.closed_loop_scoring import _heading_variance

    optical_to_map = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    rot = Rotation.from_rotvec([0.0175, 0.0, 0.0]).as_matrix() @ optical_to_map
    cov = rot @ np.diag([1e6, 0.04, 1e6]) @ rot.T
    assert cov[2, 2] > 100.0
    assert abs(_heading_variance(cov) - 0.04) < 1e-4


def test_closed_loop_scores_bags_of_logs_with_different_extrinsics(
    tmp_path: Path, ros_in_process: None, ros_runtime: None, detector_fixture_checkpoint: Path,
) -> None:
    """mini_val's two scenes come from two logs whose camera mounts differ (randomised look):
    they cannot share one bag, so the closed loop plays a directory of per-scene bags, each
    through fresh nodes, into one DetectionEval of both scenes."""
    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
    from epropnp_lib.generators.nuscenes_looks import StreetLook
    from epropnp_ros.closed_loop import ClosedLoopConfig, run_closed_loop
    from epropnp_ros.errors import BagConversionError
    from epropnp_ros.nuscenes_bag import ConversionConfig, convert, convert_scenes

    root, bags = tmp_path / "nuscenes", tmp_path / "bags"
    cameras = ("CAM_FRONT", "CAM_BACK")
    generate_nuscenes_mini(root, scenes=("scene-0103", "scene-0916"), samples_per_scene=2,
                           image_size=(160, 90), look=StreetLook.training())
    conversion = ConversionConfig(dataroot=str(root), output=str(bags), cameras=cameras,
                                  sweeps=False, progress=False)
    with pytest.raises(BagConversionError, match="calibrated differently"):
        convert(ConversionConfig(dataroot=str(root), output=str(tmp_path / "merged"),
                                 cameras=cameras, sweeps=False, progress=False))
    convert_scenes(conversion)
    result = run_closed_loop(ClosedLoopConfig(
        bags=(str(bags),), checkpoint=str(detector_fixture_checkpoint), dataroot=str(root),
        out=str(tmp_path / "loop"), detector_params=("score_threshold:=0.0",), render=False,
    ))
    scores = json.loads(result.scores_path.read_text())
    assert (result.frames_processed, result.frames_dropped) == (8, 0)
    assert [Path(b).name for b in scores["bags"]] == ["scene-0103", "scene-0916"]
    results = json.loads(result.results_path.read_text())["results"]
    assert len(results) == 4 and all(results.values())  # every sample of both scenes
    for scene in ("scene-0103", "scene-0916"):
        assert (tmp_path / "loop" / "logs" / scene / "rig_detector.log").is_file()


def test_closed_loop_refuses_what_is_not_a_bag(tmp_path: Path) -> None:
    from epropnp_lib.errors import ConfigError
    from epropnp_ros.closed_loop import ClosedLoopConfig, ClosedLoopError, resolve_bags

    (tmp_path / "empty").mkdir()
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    with pytest.raises(ClosedLoopError, match="not found"):
        resolve_bags([str(tmp_path / "none")])
    with pytest.raises(ClosedLoopError, match="neither a rosbag2 bag nor a directory of bags"):
        resolve_bags([str(tmp_path / "empty")])
    with pytest.raises(ClosedLoopError, match="named twice"):
        resolve_bags([str(tmp_path / "bag"), str(tmp_path)])
    assert resolve_bags([str(tmp_path)]) == [tmp_path / "bag"]
    with pytest.raises(ConfigError, match="no bag"):
        ClosedLoopConfig(bags=(), checkpoint="c", dataroot="d", out="o")
