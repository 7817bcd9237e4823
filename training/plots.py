"""PNG plots written next to the numbers they show.

* :func:`training_curves`: every logged value of ``train_log.csv`` against the step (one panel
  each; the losses on a log scale when positive), written as ``training_curves.png`` beside the
  log at the end of every training run;
* :func:`calibration_diagram`: empirical against nominal coverage of the predicted
  uncertainty (the fraction of ground truths inside the nominal 50/90/95/99 % regions), one line
  per quantity (e.g. position and heading); a calibrated model lies on the diagonal, an
  over-confident one below it.

    python -m epropnp_training.plots runs/nuscenes_small/train_log.csv   # -> training_curves.png

Matplotlib's object API only (``Figure``, no pyplot state), so plots can be made from any
thread or process without a display.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["calibration_diagram", "main", "training_curves"]

#: Columns of ``train_log.csv`` that are not curves.
_NOT_CURVES = ("step", "epoch")


def _read_log(path: Path) -> dict[str, list[float]]:
    """The numeric columns of a CSV log (empty cells as NaN)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[float]] = {}
    for name in (rows[0].keys() if rows else ()):
        values = []
        for row in rows:
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):
                values.append(math.nan)
        columns[name] = values
    return columns


def training_curves(log_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Plot ``train_log.csv`` (``step`` plus any numeric columns) into a PNG.

    Args:
        log_path: the CSV log of a training run.
        out_path: the PNG (default: ``training_curves.png`` beside the log).

    Returns:
        The path written.

    Raises:
        ValueError: the log has no ``step`` column or no rows.
    """
    log_path = Path(log_path)
    out = Path(out_path) if out_path is not None else log_path.with_name("training_curves.png")
    columns = _read_log(log_path)
    if "step" not in columns or not columns["step"]:
        raise ValueError(f"{log_path}: no 'step' column or no rows to plot")
    steps = columns["step"]
    names = [n for n in columns if n not in _NOT_CURVES]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = columns[name]
        ax.plot(steps, values, lw=1.2)
        finite = [v for v in values if math.isfinite(v)]
        if finite and min(finite) > 0 and name != "lr" and max(finite) / min(finite) > 20:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"training curves: {log_path.parent.name}", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


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


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m epropnp_training.plots LOG.csv [--out PNG]``."""
    parser = argparse.ArgumentParser(prog="python -m epropnp_training.plots",
                                     description="Plot a train_log.csv into a PNG.")
    parser.add_argument("log", help="train_log.csv of a run")
    parser.add_argument("--out", default=None, help="PNG (default: beside the log)")
    args = parser.parse_args(argv)
    try:
        print(training_curves(args.log, args.out))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
