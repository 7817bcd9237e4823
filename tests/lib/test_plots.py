"""epropnp_lib.plots: the calibration diagram."""

from __future__ import annotations

from pathlib import Path

from matplotlib.image import imread

from epropnp_lib.plots import calibration_diagram


def test_calibration_diagram(tmp_path: Path) -> None:
    out = calibration_diagram(
        {"position": {0.5: 0.45, 0.9: 0.85, 0.95: 0.91, 0.99: 0.97},
         "heading": {0.5: 0.5, 0.9: 0.9, 0.95: float("nan"), 0.99: 0.99}},
        tmp_path / "calibration.png", title="closed loop")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(out)[..., :3].std() > 0.05  # something is drawn
