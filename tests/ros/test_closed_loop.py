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
