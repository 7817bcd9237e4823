"""epropnp-pose-calibrate: the weight and likelihood temperatures fitted on a held-out BOP
split, stored in a copy of the checkpoint, and used by the pose estimator from there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from epropnp_lib.data.bop import BopConfig, BopDataset
from epropnp_lib.errors import ConfigError
from epropnp_lib.metrics import fit_temperature
from epropnp_lib.nets.checkpoint import CALIBRATION_KEY, load_checkpoint
from epropnp_ros.errors import CalibrationError
from epropnp_ros.pipeline import PoseEstimatorPipeline, PoseEstimatorSettings
from epropnp_ros.pose_calibration import (
    WEIGHT_TEMPERATURES,
    PoseCalibrationConfig,
    _estimates,
    calibrate,
    main,
    pose_accuracy,
)
from epropnp_ros.pose_scores import mahalanobis_of, model_specs


@pytest.fixture(scope="module")
def val_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from epropnp_lib.generators.bop import generate_bop_lm

    root = tmp_path_factory.mktemp("calibration") / "bop"
    generate_bop_lm(root, num_scenes=1, images_per_scene=3, objects=["lblock", "eggbox"],
                    image_size=(96, 72), seed=5, split="val")
    return root


def test_the_fitted_temperature_is_stored_and_used(
        val_root: Path, dense_fixture_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated.ckpt"
    config = PoseCalibrationConfig(checkpoint=dense_fixture_checkpoint, bop_root=val_root,
                                   out=out, split="val")
    report = calibrate(config)
    assert report["instances"] == 6 and report["solved"] == 6
    # The weight temperature is the first of the grid with the best pose accuracy, each
    # accuracy that of the node's processing at that temperature.
    accuracy = {float(k): v for k, v in report["pose_accuracy"].items()}
    assert list(accuracy) == list(WEIGHT_TEMPERATURES)
    tau = report["weight_temperature"]
    assert tau == next(k for k, v in accuracy.items() if v == max(accuracy.values()))
    data = BopDataset(val_root, "val", config=BopConfig(crop_size=0, render_coords=False,
                                                        min_visib_fract=config.min_visib_fract))
    specs = model_specs(data.models.values())
    pipe = PoseEstimatorPipeline.from_checkpoint(
        dense_fixture_checkpoint, "cpu",
        PoseEstimatorSettings(num_samples=0, weight_temperature=tau))
    estimates = _estimates(pipe, data, config)
    assert pose_accuracy(estimates, specs) == pytest.approx(accuracy[tau])
    # The likelihood temperature is fit_temperature of the uncalibrated distances of the same
    # instances at that weight temperature.
    d2 = mahalanobis_of(estimates, specs)
    t = report["likelihood_temperature"]
    assert t == pytest.approx(fit_temperature(d2, 6, 0.95), rel=1e-9)
    # The copy: the same weights, the calibration in its extra; the pipeline's default.
    before, after = load_checkpoint(dense_fixture_checkpoint), load_checkpoint(out)
    assert after.config == before.config
    for name, value in before.state_dict.items():
        assert torch.equal(after.state_dict[name], value), name
    stored = after.extra[CALIBRATION_KEY]
    assert stored["likelihood_temperature"] == t and stored["weight_temperature"] == tau
    assert (stored["roi_crops"], stored["roi_crop_shift"], stored["mass"]) == (5, 0.05, 0.95)
    calibrated = PoseEstimatorPipeline.from_checkpoint(out)
    assert (calibrated.likelihood_temperature, calibrated.weight_temperature) == (t, tau)
    coverage = report["coverage_after"]
    assert set(coverage) == {"0.5", "0.9", "0.95"}
    assert all(0.0 <= v <= 1.0 for v in coverage.values())
    assert np.isfinite(t) and t > 0


def test_bad_input_is_an_error_not_a_traceback(
        val_root: Path, dense_fixture_checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CalibrationError, match="none.ckpt"):
        calibrate(PoseCalibrationConfig(checkpoint=tmp_path / "none.ckpt", bop_root=val_root,
                                        out=tmp_path / "x.ckpt"))
    with pytest.raises(CalibrationError, match="test"):  # the split does not exist
        calibrate(PoseCalibrationConfig(checkpoint=dense_fixture_checkpoint,
                                        bop_root=val_root, out=tmp_path / "x.ckpt",
                                        split="test"))
    assert main(["--checkpoint", str(tmp_path / "none.ckpt"), "--bop-root", str(val_root),
                 "--out", str(tmp_path / "x.ckpt")]) == 1
    assert "epropnp-pose-calibrate: cannot calibrate" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()


def test_a_grid_of_one_keeps_the_weights_as_trained(
        val_root: Path, dense_fixture_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated.ckpt"
    report = calibrate(PoseCalibrationConfig(checkpoint=dense_fixture_checkpoint,
                                             bop_root=val_root, out=out, split="val",
                                             weight_temperatures=(1.0,)))
    assert report["weight_temperature"] == 1.0 and list(report["pose_accuracy"]) == ["1"]
    assert PoseEstimatorPipeline.from_checkpoint(out).weight_temperature == 1.0


@pytest.mark.parametrize("grid", [(), (1.0, 0.0), (float("nan"),), (-2.0,)])
def test_a_bad_weight_temperature_grid_is_refused(grid: tuple[float, ...], tmp_path: Path
                                                   ) -> None:
    with pytest.raises(ConfigError, match="weight_temperature"):
        PoseCalibrationConfig(checkpoint=tmp_path / "a.ckpt", bop_root=tmp_path,
                              out=tmp_path / "b.ckpt", weight_temperatures=grid)
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(tmp_path / "a.ckpt"), "--bop-root", str(tmp_path),
              "--out", str(tmp_path / "b.ckpt"), "--weight-temperatures", "0"])
    assert exc.value.code == 2


def test_a_split_without_estimates_is_an_error(
        val_root: Path, dense_fixture_checkpoint: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import epropnp_ros.pose_calibration as pose_calibration

    monkeypatch.setattr(pose_calibration, "_estimates", lambda *args: [])
    with pytest.raises(CalibrationError, match="nothing to calibrate on"):
        calibrate(PoseCalibrationConfig(checkpoint=dense_fixture_checkpoint, bop_root=val_root,
                                        out=tmp_path / "x.ckpt", split="val"))
    assert not (tmp_path / "x.ckpt").exists()
