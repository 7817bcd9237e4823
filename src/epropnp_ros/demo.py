"""The main demo (``make demo``): a nuScenes-format scene → rosbag2 → detector nodes → scores.

1. Generates a small nuScenes ``v1.0-mini``-format dataset (the ``mini_val`` scene
   ``scene-0103``, six cameras) with :mod:`epropnp_lib.generators.nuscenes`.
2. Converts it to a rosbag2 (mcap) with :mod:`epropnp_ros.nuscenes_bag`.
3. Runs the closed loop (:mod:`epropnp_ros.closed_loop`): one ``rig_detector`` node for the six
   cameras (``--per-camera``: one ``detector`` node per camera) with the bundled checkpoint
   ``models/detector_small_synthetic.pt`` (see ``models/README.md``), the bag played in
   lockstep, detections recorded, written as the official results JSON and scored with the
   devkit's ``DetectionEval``; the detections are drawn onto the images (JPEGs and an MP4).

It prints where everything is. ``python -m epropnp_ros.demo --help`` lists the options (another
checkpoint, more samples, fewer cameras, output folder).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from epropnp_lib.errors import ConfigError, EProPnPError

__all__ = ["DemoConfig", "DemoResult", "default_checkpoint", "main", "run_demo"]

LOGGER = logging.getLogger(__name__)

#: File name of the bundled detector (``models/`` in the repository, ``share/epropnp/models``
#: when installed).
BUNDLED_MODEL = "detector_small_synthetic.pt"
#: The generated scene: a real ``mini_val`` name, so the devkit's split and evaluation work.
DEMO_SCENE = "scene-0103"
#: Detector parameters of the demo (the node defaults suit the bundled model; see
#: models/README.md for the score at other thresholds).
DEMO_PARAMS: tuple[str, ...] = ()


def default_checkpoint() -> Path:
    """The bundled detector: ``$EPROPNP_MODEL``, else the repository's ``models/``, else the
    installed ``share/epropnp/models``."""
    env = os.environ.get("EPROPNP_MODEL")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "models" / BUNDLED_MODEL
    if repo.is_file():
        return repo
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("epropnp")) / "models" / BUNDLED_MODEL
    except Exception:  # no ament index (plain install): report the repository path
        return repo


@dataclass(frozen=True)
class DemoConfig:
    """Demo settings.

    Attributes:
        out: output folder (its previous demo outputs are replaced).
        checkpoint: detector checkpoint (default: the bundled one).
        samples: key frames of the generated scene (2 Hz).
        image_size: ``(width, height)`` of the generated images (the bundled detector was
            trained at 640 x 360).
        cameras: camera channels (default all six).
        seed: generator seed.
        detector_params: detector parameters ``name:=value`` (after :data:`DEMO_PARAMS`).
        per_camera: one detector node per camera instead of the rig node.
    """

    out: str = "demo_out"
    checkpoint: str = ""
    samples: int = 6
    image_size: tuple[int, int] = (640, 360)
    cameras: tuple[str, ...] = ()
    seed: int = 7
    detector_params: tuple[str, ...] = ()
    per_camera: bool = False

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise ConfigError(f"samples must be >= 2, got {self.samples}")
        if min(self.image_size) < 32:
            raise ConfigError(f"image_size must be at least 32 x 32, got {self.image_size}")


class DemoResult(NamedTuple):
    """Where the demo's outputs are."""

    dataroot: Path
    bag: Path
    results: Path
    scores: Path
    video: Path | None
    frames: Path
    nds: float
    mean_ap: float


def run_demo(config: DemoConfig) -> DemoResult:
    """Generate → convert → closed loop (module docstring)."""
    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
    from epropnp_ros.closed_loop import ClosedLoopConfig, run_closed_loop
    from epropnp_ros.nuscenes_bag import CAMERAS, ConversionConfig, convert

    checkpoint = Path(config.checkpoint) if config.checkpoint else default_checkpoint()
    if not checkpoint.is_file():
        raise ConfigError(
            f"detector checkpoint not found: {checkpoint} (see models/README.md, or pass "
            "--checkpoint)"
        )
    out = Path(config.out).resolve()
    dataroot, bag, loop_out = out / "nuscenes", out / "bag", out / "closed_loop"
    for path in (dataroot, bag, loop_out):
        shutil.rmtree(path, ignore_errors=True)
    cameras = config.cameras or CAMERAS

    t0 = time.monotonic()
    _step(f"1/3 generating a nuScenes-format scene ({DEMO_SCENE}, {config.samples} samples, "
          f"{config.image_size[0]}x{config.image_size[1]}) in {dataroot}")
    generate_nuscenes_mini(dataroot, scenes=(DEMO_SCENE,), samples_per_scene=config.samples,
                           image_size=config.image_size, seed=config.seed)
    _step(f"2/3 converting it to a rosbag2 (mcap) in {bag}")
    summary = convert(ConversionConfig(dataroot=str(dataroot), output=str(bag),
                                       cameras=tuple(cameras)))
    _step(f"    {sum(summary.message_counts.values())} messages on "
          f"{len(summary.message_counts)} topics")
    nodes = (f"{len(cameras)} detector node(s)" if config.per_camera
             else f"one rig_detector node for {len(cameras)} camera(s)")
    _step(f"3/3 closed loop: bag -> {nodes} ({checkpoint.name}) -> nuScenes results -> "
          "DetectionEval")
    result = run_closed_loop(ClosedLoopConfig(
        bags=(str(bag),), checkpoint=str(checkpoint), dataroot=str(dataroot), out=str(loop_out),
        eval_set="mini_val", cameras=tuple(cameras),
        detector_params=DEMO_PARAMS + config.detector_params, per_camera=config.per_camera,
    ))
    s = result.scores
    _step(f"done in {time.monotonic() - t0:.0f} s")
    return DemoResult(dataroot, bag, result.results_path, result.scores_path, result.video_path,
                      loop_out / "frames", float(s["nds"]), float(s["mean_ap"]))


def _step(message: str) -> None:
    print(f"[epropnp demo] {message}", flush=True)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from exc
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``python -m epropnp_ros.demo``)."""
    parser = argparse.ArgumentParser(prog="epropnp-demo-closed-loop", description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    parser.add_argument("--checkpoint", default="", help="detector checkpoint (default: bundled)")
    parser.add_argument("--samples", type=int, default=6, help="key frames (default 6)")
    parser.add_argument("--image-size", type=_size, default=(640, 360), help="WxH (640x360)")
    parser.add_argument("--cameras", nargs="*", default=[], help="camera channels (all six)")
    parser.add_argument("--param", action="append", default=[], help="detector name:=value")
    parser.add_argument("--per-camera", action="store_true",
                        help="one detector node per camera instead of one rig_detector node")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_demo(DemoConfig(
            out=args.out, checkpoint=args.checkpoint, samples=args.samples,
            image_size=args.image_size, cameras=tuple(args.cameras),
            detector_params=tuple(args.param), per_camera=args.per_camera,
        ))
    except (EProPnPError, ConfigError) as exc:
        print(f"epropnp demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"\nNDS {result.nds:.3f}  mAP {result.mean_ap:.3f}  (official DetectionEval, "
          "detection_cvpr_2019, on the generated mini_val scene)")
    print("outputs:")
    print(f"  dataset (nuScenes format):  {result.dataroot}")
    print(f"  rosbag2 (mcap):             {result.bag}")
    print(f"  detections (results JSON):  {result.results}")
    print(f"  scores:                     {result.scores}")
    print(f"  rendered frames:            {result.frames}")
    if result.video is not None:
        print(f"  video:                      {result.video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
