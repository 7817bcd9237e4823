"""Train a network from a YAML config, in one process or under ``torchrun``.

    python -m epropnp_training.train --config config/train/linemod_b0.yaml \\
        [--set key=value ...] [--resume [CHECKPOINT]] [--stop-after STEPS]
    torchrun --nproc-per-node 4 -m epropnp_training.train --config ...

``--set`` overrides use dotted keys into the config (``--set net.backbone.depth=18``, values
parsed as YAML).  ``--resume`` continues from the newest training-state checkpoint in the run's
``log_dir`` (or from the given file) to the exact next step.  The run directory holds
``train_log.csv``, ``checkpoints/``, the exported network ``model.pt``, the resolved
``config.yaml`` and, when ``eval_split`` is set, ``metrics.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from epropnp_lib.allocator import apply_heap_policy
from epropnp_lib.errors import EProPnPError

from .config import load_config, task_module
from .engine import train

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m epropnp_training.train", description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--config", required=True, help="training YAML (config/train/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue from the newest checkpoint in log_dir, or from CHECKPOINT")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop with a checkpoint once STEPS steps are done (time-boxed jobs; "
                             "continue later with --resume)")
    parser.add_argument("--log-level", default="INFO", help="Python logging level")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 for a config or data error)."""
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=args.log_level.upper() if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        # Freed tensor memory stays mapped for the next step (epropnp_lib.allocator; the Monte
        # Carlo loss ~7 % faster), unless EPROPNP_HEAP_POLICY=default.
        if apply_heap_policy():
            logger.info("heap policy: freed memory kept for reuse")
        cfg = load_config(args.config, args.overrides)
        task = task_module(cfg.task).build_task(cfg)
        result = train(cfg, task, resume=args.resume, stop_at_step=args.stop_after)
    except EProPnPError as exc:
        logger.error("%s", exc)
        return 2
    if rank == "0":
        logger.info("done: %d steps, last loss %.4g, checkpoint %s, model %s", result.step,
                    result.last_loss, result.checkpoint, result.model_path)
        if result.metrics is not None:
            logger.info("metrics: %s", result.metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
