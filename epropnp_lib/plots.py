"""Plots of the library's quantities (PNG; matplotlib's object API only: ``Figure``, no pyplot
state, so they can be made from any thread or process without a display).

* :func:`calibration_diagram`: empirical against nominal coverage of a predicted uncertainty
  (the fraction of ground truths inside the nominal 50/90/95/99 % regions,
  :func:`epropnp_lib.metrics.calibration`), one line per quantity (e.g. position and heading); a
  calibrated model lies on the diagonal, an over-confident one below it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["calibration_diagram"]


def calibration_diagram(
    coverage: Mapping[str, Mapping[float, float]], out_path: str | Path, *, title: str = ""
) -> Path:
    """Plot empirical against nominal coverage.

    Args:
        coverage: ``{quantity: {nominal level: empirical fraction}}``, e.g.
            ``{"position": {0.5: 0.48, 0.9: 0.87, ...}, "heading": {...}}`` (NaN fractions are
            left out).
        out_path: the PNG to write.
        title: the figure's title.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(4.6, 4.4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    for name, levels in coverage.items():
        pts = sorted((float(k), float(v)) for k, v in levels.items() if math.isfinite(v))
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", lw=1.5, label=name)
        for x, y in pts:
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("nominal coverage of the predicted region")
    ax.set_ylabel("fraction of ground truths inside")
    ax.set_title(title or "uncertainty calibration", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
