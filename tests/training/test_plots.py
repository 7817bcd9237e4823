"""epropnp_training.plots: training curves from a CSV log and the calibration diagram."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from epropnp_training.plots import calibration_diagram, main, training_curves


def _png(path: Path) -> np.ndarray:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def test_training_curves_from_a_csv_log(tmp_path: Path) -> None:
    log = tmp_path / "run" / "train_log.csv"
    log.parent.mkdir()
    rows = ["step,epoch,loss,kl,lr"] + [
        f"{s},{s // 10},{10 * math.exp(-s / 20)},{5 * math.exp(-s / 30)},{1e-3}"
        for s in range(1, 60)]
    log.write_text("\n".join(rows) + "\n")
    out = training_curves(log)
    assert out == log.with_name("training_curves.png")
    img = _png(out)
    assert img.shape[0] > 100 and img.shape[1] > 300  # three panels side by side
    assert img[..., :3].std() > 0.05  # something is drawn
    assert main([str(log), "--out", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").is_file()


def test_training_curves_refuse_an_empty_log(tmp_path: Path) -> None:
    log = tmp_path / "train_log.csv"
    log.write_text("step,loss\n")
    with pytest.raises(ValueError, match="no 'step' column or no rows"):
        training_curves(log)
    assert main([str(log)]) == 2


def test_calibration_diagram(tmp_path: Path) -> None:
    out = calibration_diagram(
        {"position": {0.5: 0.45, 0.9: 0.85, 0.95: 0.91, 0.99: 0.97},
         "heading": {0.5: 0.5, 0.9: 0.9, 0.95: float("nan"), 0.99: 0.99}},
        tmp_path / "calibration.png", title="closed loop")
    assert _png(out)[..., :3].std() > 0.05
