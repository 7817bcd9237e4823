"""epropnp-detector-calibrate: the likelihood temperature fitted on a held-out nuScenes-format
split for the heading posterior's calibration, stored in a copy of the checkpoint, and used by
the detector from there."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from epropnp_lib.data.nuscenes import NuScenesCameraDataset
from epropnp_lib.nets.checkpoint import CALIBRATION_KEY, load_checkpoint
from epropnp_ros.detector_calibration import (
    DetectorCalibrationConfig,
    calibrate,
    heading_fraction,
    main,
)
from epropnp_ros.detector_pipeline import DetectorPipeline, DetectorSettings
from epropnp_ros.errors import CalibrationError

REPO = Path(__file__).resolve().parents[2]
#: The bundled demo detector: it detects the generated street's objects, so its headings match.
BUNDLED = REPO / "models" / "detector_small_synthetic.pt"


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini

    root = tmp_path_factory.mktemp("detector_calibration") / "nuscenes"
    generate_nuscenes_mini(root, scenes=("scene-0061",), samples_per_scene=2,
                           image_size=(640, 360), lidar_azimuth_steps=90, seed=11)
    return root


def test_the_fitted_temperature_is_stored_and_used(street: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated.pt"
    config = DetectorCalibrationConfig(checkpoint=BUNDLED, dataroot=street, out=out,
                                       temperatures=(1.0, 2.0, 4.0), num_samples=16,
                                       sample_iterations=2)
    report = calibrate(config)
    assert report["images"] == 12 and report["matched"] > 10
    fractions = {float(t): f for t, f in report["fraction_by_temperature"].items()}
    assert set(fractions) == {1.0, 2.0, 4.0}
    assert all(0.0 <= f <= 1.0 for f in fractions.values())
    # The temperature is the grid's nearest to the mass (ties: the smaller).
    t = report["likelihood_temperature"]
    assert t == min(fractions, key=lambda k: (abs(fractions[k] - 0.9), k))
    assert report["fraction_after"] == fractions[t] and report["fraction_before"] == fractions[1.0]
    # The copy: the same weights, the calibration in its extra; the pipeline's default, and it
    # reproduces the fraction (same draw, same seed).
    before, after = load_checkpoint(BUNDLED), load_checkpoint(out)
    assert after.config == before.config
    for name, value in before.state_dict.items():
        assert torch.equal(after.state_dict[name], value), name
    stored = after.extra[CALIBRATION_KEY]
    assert stored["likelihood_temperature"] == t
    assert (stored["num_samples"], stored["sample_iterations"], stored["mass"]) == (16, 2, 0.9)
    pipe = DetectorPipeline.from_checkpoint(out, "cpu", DetectorSettings(
        score_threshold=config.score_threshold, num_samples=16, sample_iterations=2))
    assert pipe.likelihood_temperature == t
    data = NuScenesCameraDataset(street, "v1.0-mini", "mini_train")
    items = [data[i] for i in range(len(data))]
    by_sample: dict[str, list] = {}
    for item in items:
        by_sample.setdefault(item.frame.sample_token, []).append(item)
    again = heading_fraction(pipe, list(by_sample.values()), 0.9)
    assert again.num_matched == report["matched"]
    assert again.fraction == pytest.approx(fractions[t], abs=1e-12)
    # A hotter posterior holds more true headings than the uncalibrated one here.
    assert max(fractions[2.0], fractions[4.0]) >= fractions[1.0]


def test_bad_input_is_an_error_not_a_traceback(
        street: Path, tmp_path: Path, write_detector_checkpoint,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.pt"
    base = DetectorCalibrationConfig(checkpoint=BUNDLED, dataroot=street, out=out,
                                     temperatures=(1.0, 2.0), num_samples=4,
                                     sample_iterations=1)
    with pytest.raises(CalibrationError, match="none.pt"):
        calibrate(replace(base, checkpoint=tmp_path / "none.pt"))
    with pytest.raises(CalibrationError, match="mini_val"):  # no scene of that split
        calibrate(replace(base, split="mini_val"))
    # Nothing detected, nothing matched: nothing to fit.
    with pytest.raises(CalibrationError, match="no detection"):
        calibrate(replace(base, score_threshold=1.0))
    # A network of random weights detects boxes that match nothing.
    random_net = write_detector_checkpoint(tmp_path / "random.pt")
    with pytest.raises(CalibrationError, match="nothing to calibrate"):
        calibrate(replace(base, checkpoint=random_net))
    # An unreadable image of the split.
    broken = tmp_path / "broken"
    shutil.copytree(street, broken)
    jpeg = sorted((broken / "samples" / "CAM_FRONT").glob("*.jpg"))[0]
    jpeg.write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationError, match=re.escape(jpeg.name)):
        calibrate(replace(base, dataroot=broken))
    for bad in ({"mass": 1.0}, {"temperatures": ()}, {"temperatures": (0.0,)},
                {"num_samples": 1}):
        with pytest.raises(CalibrationError):
            replace(base, **bad)
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--dataroot", str(street),
                 "--out", str(out)]) == 1
    assert "epropnp-detector-calibrate: cannot calibrate" in capsys.readouterr().err
    assert not out.exists()
