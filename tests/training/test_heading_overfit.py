"""Overfit sanity test of heading: one generated street scene, a few hundred steps of a tiny
deformable network through the training CLI, then the evaluation CLI on the same images.

The mean heading error of the detections matched to the annotations (``metrics.heading``,
:mod:`epropnp_lib.heading`) must fall below 0.1 rad: the targets, the 4DoF yaw convention, the
pose losses and the generator's front/back cues together let the network learn heading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
from epropnp_training import evaluate as evaluate_cli
from epropnp_training import train as train_cli

pytestmark = pytest.mark.usefixtures("one_thread")

#: The two cameras with the clearest views of scene-0061's actors (4 images in all).
CAMERAS = ["CAM_FRONT", "CAM_BACK"]


def overfit_config(root: Path, log_dir: Path) -> dict[str, Any]:
    """Every image in every batch; the loss weights of the synthetic recipe."""
    return {
        "task": "nuscenes", "paper_reference": "heading overfit sanity test", "seed": 0,
        "device": "cpu", "max_steps": 400, "batch_size": 4, "eval_batch_size": 4,
        "optimizer": "adamw", "lr": 1.0e-3, "grad_clip_norm": 5.0, "log_interval": 100,
        "checkpoint_interval": 400, "keep_checkpoints": 1, "progress_bar": False,
        "tensorboard": False, "find_unused_parameters": True, "eval_split": "mini_train",
        "log_dir": str(log_dir),
        "net": {
            "backbone": {"depth": 18, "base_width": 8}, "dcn_stages": [], "fpn_channels": 32,
            "fpn_levels": [3, 4, 5], "regress_edges": [48.0, 96.0], "head_convs": 1,
            "head_channels": 32, "embed_dim": 32, "num_heads": 4, "num_points": 8,
            "point_hidden": 32, "input_scale": 0.75, "score_threshold": 0.1,
            "pre_nms_top_k": 50, "max_detections": 50, "nms_iou": 0.1,
            "monte_carlo": {"num_iterations": 2, "num_samples": 32},
            "loss": {"kl_weight": 0.15, "reg_weight": 0.01, "reg_max_position_std": 1.0,
                     "reg_max_yaw_std": 0.5, "coord_weight": 1.0, "max_pose_queries": 16},
        },
        "data": {"dataroot": str(root), "version": "v1.0-mini", "train_split": "mini_train",
                 "cameras": CAMERAS, "min_visibility": 3},
    }


def test_one_scene_overfits_to_the_heading(tmp_path: Path) -> None:
    root = tmp_path / "nuscenes"
    generate_nuscenes_mini(root, scenes=("scene-0061",), samples_per_scene=2,
                           image_size=(320, 180), lidar_azimuth_steps=90)
    config = tmp_path / "overfit.yaml"
    config.write_text(yaml.safe_dump(overfit_config(root, tmp_path / "run"), sort_keys=False))
    assert train_cli.main(["--config", str(config)]) == 0
    out = tmp_path / "eval" / "metrics.json"
    assert evaluate_cli.main(["--config", str(config), "--checkpoint",
                              str(tmp_path / "run" / "model.pt"), "--out", str(out),
                              "--set", "data.num_pose_samples=16"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    heading = metrics["heading"]
    assert heading["num_matched"] >= 15, heading  # of the 29 boxes of visibility >= 3
    assert heading["mean_error"] < 0.1, heading
    # The posterior's highest-density regions: nested, so their coverage grows with the mass.
    hdr = heading["hdr_fractions"]
    assert hdr["0.9"] == heading["hdr90_fraction"]
    assert 0.0 <= hdr["0.5"] <= hdr["0.9"] <= hdr["0.95"] <= 1.0
