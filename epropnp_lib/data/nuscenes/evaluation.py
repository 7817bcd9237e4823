"""Scoring a results file with the devkit's official ``DetectionEval`` (``detection_cvpr_2019``
preset; never a re-implementation of the NDS)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epropnp_lib.data.nuscenes.errors import NuScenesEvalError, NuScenesFormatError
from epropnp_lib.data.nuscenes.loading import load_nuscenes, read_json_file

logger = logging.getLogger(__name__)

__all__ = ["NuScenesScores", "evaluate"]


@dataclass(frozen=True)
class NuScenesScores:
    """Scores of ``DetectionEval`` (official ``detection_cvpr_2019`` preset).

    Attributes:
        nds: nuScenes detection score.
        mean_ap: mAP over the 10 classes (centre-distance thresholds 0.5, 1, 2, 4 m).
        tp_errors: ``trans_err`` (mATE), ``scale_err`` (mASE), ``orient_err`` (mAOE),
            ``vel_err`` (mAVE), ``attr_err`` (mAAE).
        per_class_ap: class -> AP averaged over the thresholds.
        per_class_tp_errors: class -> TP error name -> value (NaN where undefined).
        summary_path: the devkit's ``metrics_summary.json``.
    """

    nds: float
    mean_ap: float
    tp_errors: dict[str, float]
    per_class_ap: dict[str, float]
    per_class_tp_errors: dict[str, dict[str, float]]
    summary_path: Path


def _no_detection_scores(
    results_path: Path, output_dir: Path, cfg: Any, meta: Any
) -> NuScenesScores:
    """Scores of a results file without boxes (see :func:`evaluate`)."""
    logger.warning("%s holds no detections: AP 0, TP errors 1, NDS 0 (DetectionEval cannot run "
                   "on an empty box list)", results_path)
    from nuscenes.eval.detection.constants import TP_METRICS  # the devkit, imported on use

    tp_names = list(TP_METRICS)
    per_class_tp = {c: dict.fromkeys(tp_names, 1.0) for c in cfg.class_names}
    tp_errors = dict.fromkeys(tp_names, 1.0)
    per_class_ap = dict.fromkeys(cfg.class_names, 0.0)
    summary: dict[str, Any] = {
        "note": "no detections in the results file; DetectionEval was not run",
        "nd_score": 0.0,
        "mean_ap": 0.0,
        "tp_errors": tp_errors,
        "mean_dist_aps": per_class_ap,
        "label_tp_errors": per_class_tp,
        "meta": dict(meta) if isinstance(meta, dict) else meta,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    summary_path = output_dir / "metrics_summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    return NuScenesScores(0.0, 0.0, tp_errors, per_class_ap, per_class_tp, summary_path)


def evaluate(
    results_path: str | os.PathLike[str],
    dataroot: str | os.PathLike[str],
    version: str,
    eval_set: str,
    output_dir: str | os.PathLike[str],
    *,
    nusc: Any = None,
    config_name: str = "detection_cvpr_2019",
) -> NuScenesScores:
    """Score a results file with the devkit's ``DetectionEval``.

    Writes ``metrics_summary.json`` and ``metrics_details.json`` (the devkit's files) into
    ``output_dir``.  The devkit's console output is captured and logged at DEBUG level.

    A results file without a single box (a model that detected nothing) cannot go through the
    devkit (``DetectionEval`` fails on an empty box list); it scores what the devkit's
    definitions give for no detections -- every AP 0, every TP error 1, NDS 0 -- with a
    warning, and ``metrics_summary.json`` says so.

    Raises:
        NuScenesFormatError: the results file is missing or not valid JSON, or the dataset
            cannot be loaded.
        NuScenesEvalError: the devkit rejected the results (e.g. samples missing, unknown class,
            too many boxes); its message is included.
    """
    from nuscenes.eval.common.config import config_factory  # the devkit, imported on use

    results_path = Path(results_path)
    output_dir = Path(output_dir)
    content = _read_results(results_path)
    cfg = config_factory(config_name)
    if nusc is None:
        nusc = load_nuscenes(dataroot, version)
    results = content["results"]
    if isinstance(results, dict) and not any(results.values()):
        _check_split_samples(nusc, results, results_path, eval_set)
        return _no_detection_scores(results_path, output_dir, cfg, content["meta"])
    metrics, metric_data = _run_detection_eval(nusc, cfg, results_path, eval_set, output_dir)
    summary = metrics.serialize()
    summary["meta"] = dict(content["meta"])
    summary_path = output_dir / "metrics_summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    (output_dir / "metrics_details.json").write_text(json.dumps(metric_data.serialize(),
                                                                indent=2))
    return NuScenesScores(
        nds=float(summary["nd_score"]),
        mean_ap=float(summary["mean_ap"]),
        tp_errors={k: float(v) for k, v in summary["tp_errors"].items()},
        per_class_ap={k: float(v) for k, v in summary["mean_dist_aps"].items()},
        per_class_tp_errors={c: {k: float(v) for k, v in errs.items()}
                             for c, errs in summary["label_tp_errors"].items()},
        summary_path=summary_path,
    )


def _read_results(results_path: Path) -> dict[str, Any]:
    """The content of a results file: an object with ``meta`` and ``results``."""
    content = read_json_file(results_path, "results file not found")
    if not isinstance(content, dict) or not {"meta", "results"} <= set(content):
        raise NuScenesFormatError(results_path, "expected an object with 'meta' and 'results'")
    return content


def _check_split_samples(nusc: Any, results: Mapping[str, Any], results_path: Path,
                         eval_set: str) -> None:
    """The check ``DetectionEval`` would make: the results hold exactly the split's samples."""
    from nuscenes.utils.splits import create_splits_scenes  # the devkit, imported on use

    scenes = set(create_splits_scenes().get(eval_set, ()))
    wanted = {s["token"] for s in nusc.sample
              if nusc.get("scene", s["scene_token"])["name"] in scenes}
    if set(results) != wanted:
        raise NuScenesEvalError(
            f"{results_path}: the samples of the results ({len(results)}) are not the "
            f"samples of {eval_set} ({len(wanted)})")


def _run_detection_eval(nusc: Any, cfg: Any, results_path: Path, eval_set: str,
                        output_dir: Path) -> tuple[Any, Any]:
    """The devkit's ``(metrics, metric_data)``; its console output is logged at DEBUG."""
    from nuscenes.eval.detection.evaluate import DetectionEval  # the devkit, imported on use

    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            ev = DetectionEval(nusc, config=cfg, result_path=str(results_path),
                               eval_set=eval_set, output_dir=str(output_dir), verbose=False)
            return ev.evaluate()
    except (AssertionError, ValueError, KeyError) as exc:
        raise NuScenesEvalError(f"{results_path}: DetectionEval rejected the results: "
                                f"{exc!r}") from exc
    finally:
        if captured.getvalue():
            logger.debug("DetectionEval output:\n%s", captured.getvalue())
