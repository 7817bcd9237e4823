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
    per_camera: bool,
) -> None:
    """The main demo's path (generate → bag → rig node, or a detector node per camera →
    DetectionEval) on a tiny scene."""
    from epropnp_ros.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(
        out=str(tmp_path / "demo"), checkpoint=str(detector_fixture_checkpoint), samples=2,
        image_size=(160, 90), cameras=("CAM_FRONT", "CAM_BACK"),
        detector_params=("score_threshold:=0.0",), per_camera=per_camera,
    ))
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
    assert set(calibration["heading_samples"]) == {"num_matched", "mean_error", "hdr90_fraction"}
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
