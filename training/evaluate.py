"""Evaluate a trained network on a split and write the metrics JSON.

    python -m epropnp_training.evaluate --config config/train/linemod_b0.yaml \\
        --checkpoint runs/linemod_b0/model.pt --out metrics.json [--split test] [--set k=v ...]

The checkpoint is either the exported network (``model.pt``, the task's network kind) or a
training state (``checkpoints/step_*.pt``).  A network calibrated after training
(``epropnp-detector-calibrate``) has its covariances and posterior samples scored at its stored
likelihood temperature, as the nodes publish them (``--likelihood-temperature`` overrides it;
training states and uncalibrated networks: 1); a dense network calibrated with
``epropnp-pose-calibrate`` runs at its stored weight temperature, as the pose estimator does.
LineMOD reports ADD(-S) at 0.02/0.05/0.1 of the
diameter, 2°2cm and 5°5cm; nuScenes writes the official results JSON next to ``--out`` and
scores it with the devkit's ``DetectionEval`` (``detection_cvpr_2019``).  The default split is
the config's ``eval_split``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from epropnp_lib.errors import ConfigError, EProPnPError
from epropnp_lib.nets.checkpoint import stored_temperature
from epropnp_lib.nets.dense import stored_weight_temperature
from epropnp_lib.pnp.cost import check_temperature

from .config import load_config, task_module
from .engine import run_evaluation
from .training_state import load_weights

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m epropnp_training.evaluate", description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--config", required=True, help="the training YAML of the model")
    parser.add_argument("--checkpoint", required=True, help="model.pt or a training state")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--split", default=None, help="split to evaluate (default: eval_split)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"),
                        help="default: the config's device")
    parser.add_argument("--likelihood-temperature", type=float, default=0.0,
                        help="T of the scored posterior exp(-cost / T) (default 0: the "
                             "checkpoint's calibration, 1 without one)")
    parser.add_argument("--log-level", default="INFO", help="Python logging level")
    return parser


def evaluate_checkpoint(
    config_path: str, checkpoint: str, out: str, *, split: str | None = None,
    overrides: Sequence[str] = (), device: str | None = None,
    likelihood_temperature: float | None = None,
) -> dict[str, Any]:
    """Load the config and checkpoint, evaluate, write ``out``; returns the metrics.
    ``likelihood_temperature``: ``None`` for the checkpoint's calibration (1 without one)."""
    if likelihood_temperature is not None:
        check_temperature(likelihood_temperature)
    cfg = load_config(config_path, overrides)
    split = split or cfg.eval_split
    if split is None:
        raise ConfigError(f"{config_path}: no eval_split configured; pass --split")
    dev_name = device or cfg.device
    if dev_name == "auto":
        dev_name = "cuda" if torch.cuda.is_available() else "cpu"
    if dev_name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available")
    dev = torch.device(dev_name)
    task = task_module(cfg.task).build_task(cfg)
    module = task.build_module()
    ckpt = load_weights(module, checkpoint, net_kind=task.net_checkpoint_kind, model_only=True)
    stored = stored_temperature(ckpt.extra, checkpoint)
    temperature = likelihood_temperature or stored or 1.0
    weight_temperature = stored_weight_temperature(ckpt.extra, checkpoint) or 1.0
    logger.info("loaded %s (%s); likelihood temperature %g (%s); weight temperature %g",
                checkpoint, ckpt.kind, temperature, "given" if likelihood_temperature else
                "the checkpoint's calibration" if stored else "uncalibrated",
                weight_temperature)
    module.to(dev)
    out_path = Path(out)
    return run_evaluation(task, module, split=split, out_dir=out_path.parent, device=dev,
                          metrics_path=out_path, likelihood_temperature=temperature,
                          weight_temperature=weight_temperature)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 for a config or data error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        metrics = evaluate_checkpoint(args.config, args.checkpoint, args.out, split=args.split,
                                      overrides=args.overrides, device=args.device,
                                      likelihood_temperature=args.likelihood_temperature or None)
    except EProPnPError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("metrics written to %s:\n%s", args.out, json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
