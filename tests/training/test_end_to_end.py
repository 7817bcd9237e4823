"""End to end on the generated mini datasets, through the CLIs: train -> checkpoint ->
evaluate -> metrics JSON, for LineMOD (BOP ``lm`` layout, dense network) and nuScenes
(``v1.0-mini`` layout, deformable network, official results JSON scored by DetectionEval).

Tiny networks and a few steps: these tests check the plumbing and the formats, not accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from epropnp_lib.generators.bop import generate_bop_lm
from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
from epropnp_lib.nets.checkpoint import CALIBRATION_KEY, load_checkpoint
from epropnp_lib.nets.deformable import CHECKPOINT_KIND as DEFORMABLE_KIND
from epropnp_lib.nets.deformable import DeformableCorrespondenceNet
from epropnp_lib.nets.dense import CHECKPOINT_KIND as DENSE_KIND
from epropnp_lib.nets.dense import DenseCorrespondenceNet, training_crop_scale
from epropnp_training import evaluate as evaluate_cli
from epropnp_training import train as train_cli
from epropnp_training.training_state import TRAINING_STATE_KIND

pytestmark = pytest.mark.usefixtures("one_thread")

ENGINE: dict[str, Any] = {
    "seed": 0, "device": "cpu", "epochs": 1, "max_steps": 3, "lr": 1e-3,
    "grad_clip_norm": 5.0, "log_interval": 1, "checkpoint_interval": 2, "progress_bar": False,
}


def _write_config(path: Path, mapping: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


def _train_then_evaluate(tmp_path: Path, mapping: dict[str, Any]) -> tuple[dict[str, Any],
                                                                            dict[str, Any]]:
    run = tmp_path / "run"
    config = _write_config(tmp_path / "run.yaml", {**mapping, "log_dir": str(run)})
    assert train_cli.main(["--config", str(config)]) == 0
    # checkpoints: the training states of steps 2 and 3, and the exported network
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_00000002.pt", "step_00000003.pt"]
    state = load_checkpoint(run / "checkpoints" / "step_00000003.pt", kind=TRAINING_STATE_KIND)
    assert state.extra["step"] == 3 and state.config["task"] == mapping["task"]
    rows = (run / "train_log.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("step,epoch,lr,loss")
    assert all(math.isfinite(float(r.split(",")[3])) for r in rows[1:])
    trained = json.loads((run / "metrics.json").read_text())
    out = tmp_path / "eval" / "metrics.json"
    assert evaluate_cli.main(["--config", str(config), "--checkpoint", str(run / "model.pt"),
                              "--out", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["task"] == trained["task"] == mapping["task"]
    assert evaluated["split"] == mapping["eval_split"]
    assert evaluated["paper_reference"] == mapping["paper_reference"]
    return trained["metrics"], evaluated["metrics"]


def test_linemod_bop_train_checkpoint_evaluate(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "bop"
    for split, seed in (("train", 0), ("test", 1)):
        generate_bop_lm(root, num_scenes=2, images_per_scene=2, objects=["lblock", "eggbox"],
                        image_size=(160, 120), seed=seed, split=split, objects_per_image=1)
    mapping = {
        "task": "linemod", "paper_reference": "e2e test (Table 1 B1 set-up, tiny)", **ENGINE,
        "optimizer": "rmsprop", "batch_size": 2, "eval_batch_size": 4, "eval_split": "test",
        "net": {
            "backbone": {"depth": 18, "base_width": 8}, "crop_size": 64, "output_stride": 8,
            "head_channels": 16, "monte_carlo": {"num_iterations": 2, "num_samples": 16},
            "loss": {"pose_weight": 0.02, "coord_weight": 1.0, "reg_weight": 0.1},
        },
        # the training-only options on: jittered boxes, canonical poses of the eggbox
        "data": {"root": str(root), "train_split": "train",
                 "bop": {"crop_size": 64, "crop_scale": 1.4, "box_jitter": 0.1,
                         "canonical_symmetric": True}},
    }
    trained, evaluated = _train_then_evaluate(tmp_path, mapping)
    assert evaluated == trained  # the exported network gives the training run's numbers
    mean = evaluated["mean"]
    assert mean["count"] == evaluated["num_instances"] == 4
    for key in ("add_002", "add_005", "add_01", "deg2_cm2", "deg5_cm5", "add_mean"):
        assert 0.0 <= mean[key] <= 100.0
    # eggbox is BOP object 10: evaluated with ADD-S; the L-block maps to a LineMOD name
    assert set(evaluated["per_object"]) == {"ape", "eggbox"}
    net, extra = DenseCorrespondenceNet.from_checkpoint(tmp_path / "run" / "model.pt")
    assert net.config.crop_size == 64
    # the reader options travel with the network: the node crops with the same scale
    assert training_crop_scale(extra) == 1.4 and extra["bop"]["box_jitter"] == 0.1
    assert load_checkpoint(tmp_path / "run" / "model.pt").kind == DENSE_KIND
    # A calibrated network is evaluated at its stored weight temperature, as the node runs it.
    calibrated = tmp_path / "calibrated.pt"
    net.save(calibrated, extra={**extra, CALIBRATION_KEY: {"weight_temperature": 2.5}})
    seen: list[float] = []
    forward = DenseCorrespondenceNet.forward

    def spy(self: DenseCorrespondenceNet, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("weight_temperature", args[2] if len(args) > 2 else 1.0))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(DenseCorrespondenceNet, "forward", spy)
    assert evaluate_cli.main(["--config", str(tmp_path / "run.yaml"), "--checkpoint",
                              str(calibrated), "--out", str(tmp_path / "warm.json")]) == 0
    assert seen and set(seen) == {2.5}


def test_nuscenes_mini_train_checkpoint_evaluate(tmp_path: Path) -> None:
    root = tmp_path / "nuscenes"
    generate_nuscenes_mini(root, samples_per_scene=2, image_size=(320, 180),
                           lidar_azimuth_steps=180)
    mapping = {
        "task": "nuscenes", "paper_reference": "e2e test (Table 4 basic set-up, tiny)",
        **ENGINE, "optimizer": "adamw", "batch_size": 2, "eval_batch_size": 6,
        "find_unused_parameters": True, "eval_split": "mini_val",
        "lr_mult": {"sampling_offsets": 0.1},
        "net": {
            "backbone": {"depth": 18, "base_width": 8}, "dcn_stages": [], "fpn_channels": 16,
            "fpn_levels": [3, 4, 5], "regress_edges": [48.0, 96.0], "head_convs": 1,
            "head_channels": 16, "embed_dim": 16, "num_heads": 2, "num_points": 4,
            "point_hidden": 16, "score_threshold": 0.0, "pre_nms_top_k": 10,
            "max_detections": 10, "monte_carlo": {"num_iterations": 2, "num_samples": 16},
            "loss": {"max_pose_queries": 8},
        },
        "data": {"dataroot": str(root), "version": "v1.0-mini", "train_split": "mini_train",
                 "min_visibility": 0},
    }
    trained, evaluated = _train_then_evaluate(tmp_path, mapping)
    for metrics in (trained, evaluated):
        assert 0.0 <= metrics["nds"] <= 1.0 and 0.0 <= metrics["mean_ap"] <= 1.0
        assert set(metrics["tp_errors"]) == {"trans_err", "scale_err", "orient_err",
                                             "vel_err", "attr_err"}
        assert len(metrics["per_class_ap"]) == 10
        calibration = metrics["calibration"]  # the covariance's coverage, and its diagram
        assert set(calibration) == {"position", "heading", "matches", "plot"}
        assert {float(k) for k in calibration["position"]} == {0.5, 0.9, 0.95, 0.99}
        assert Path(calibration["plot"]).stat().st_size > 1000
    assert evaluated["nds"] == pytest.approx(trained["nds"])
    # the official results file: every mini_val sample present, devkit field names
    results = json.loads(Path(evaluated["results_file"]).read_text())
    assert results["meta"]["use_camera"] is True
    assert len(results["results"]) == evaluated["num_samples"] == 2
    boxes = [b for dets in results["results"].values() for b in dets]
    assert len(boxes) == evaluated["num_boxes_written"]
    for box in boxes[:5]:
        assert {"sample_token", "translation", "size", "rotation", "velocity",
                "detection_name", "detection_score", "attribute_name"} <= set(box)
    assert Path(evaluated["summary_file"]).is_file()
    net = DeformableCorrespondenceNet.from_checkpoint(tmp_path / "run" / "model.pt")
    assert net.config.num_heads == 2
    assert load_checkpoint(tmp_path / "run" / "model.pt").kind == DEFORMABLE_KIND
    # A calibrated copy is scored at its stored temperature, unless the caller gives another.
    assert evaluated["likelihood_temperature"] == 1.0
    calibrated = tmp_path / "calibrated.pt"
    net.save(calibrated, extra={CALIBRATION_KEY: {"likelihood_temperature": 3.0}})
    config = str(tmp_path / "run.yaml")
    hot = evaluate_cli.evaluate_checkpoint(config, str(calibrated),
                                           str(tmp_path / "hot" / "metrics.json"))
    assert hot["likelihood_temperature"] == 3.0
    assert hot["nds"] == pytest.approx(evaluated["nds"])
    assert hot["num_detections"] == evaluated["num_detections"]
    cold = evaluate_cli.evaluate_checkpoint(config, str(calibrated),
                                            str(tmp_path / "cold" / "metrics.json"),
                                            likelihood_temperature=1.0)
    assert cold["likelihood_temperature"] == 1.0
    # The detections written do not depend on it (the covariances: test_deformable_net).
    written = [json.loads(Path(m["results_file"]).read_text())["results"]
               for m in (evaluated, hot, cold)]
    assert written[0] == written[1] == written[2]
    assert evaluate_cli.main(["--config", config, "--checkpoint", str(calibrated), "--out",
                              str(tmp_path / "bad.json"), "--likelihood-temperature", "-1"]) == 2
    assert not (tmp_path / "bad.json").exists()
