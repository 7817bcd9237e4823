"""The main demo (``make demo``): both halves of the stack, each from generated data through a
rosbag2 and the real node processes to its official scores.

The street (4DoF detection, nuScenes):

1. Generates a small nuScenes ``v1.0-mini``-format dataset (the ``mini_val`` scene
   ``scene-0103``, six cameras) with :mod:`epropnp_lib.generators.nuscenes`.
2. Converts it to a rosbag2 (mcap) with :mod:`epropnp_ros.nuscenes_bag`.
3. Runs the closed loop (:mod:`epropnp_ros.closed_loop`): one ``rig_detector`` node for the six
   cameras (``--per-camera``: one ``detector`` node per camera) with the bundled checkpoint
   ``models/detector_small_synthetic.pt`` (see ``models/README.md``), the bag played in
   lockstep, detections recorded, written as the official results JSON and scored with the
   devkit's ``DetectionEval``; the detections are drawn onto the images (JPEGs and an MP4) with
   their posterior heading samples.

The objects (6DoF pose, LineMOD-style BOP data; ``--no-objects`` leaves them out):

4. Generates held-out BOP-format scenes of the project's four objects
   (:func:`epropnp_lib.generators.bop.generate_bop_lm`, test split, another seed than training).
5. Converts them to a rosbag2 with jittered regions of interest (:mod:`epropnp_ros.bop_bag`).
6. Runs the 6DoF closed loop (:mod:`epropnp_ros.pose_closed_loop`): one ``pose_estimator`` node
   with the bundled ``models/pose_small_synthetic.pt``; ADD(-S), n° n cm and the covariance's
   coverage; the frames are drawn with the pose axes, outlines, 2-sigma ellipses and the
   posterior samples' axis clouds.

It prints where everything is. ``python -m epropnp_ros.demo --help`` lists the options (another
checkpoint, more samples, fewer cameras, output folder).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from epropnp_lib.errors import ConfigError, EProPnPError

__all__ = ["DemoConfig", "DemoResult", "ObjectsResult", "default_checkpoint", "main", "run_demo"]

LOGGER = logging.getLogger(__name__)

#: File names of the bundled detector and pose model (``models/`` in the repository,
#: ``share/epropnp/models`` when installed).
BUNDLED_MODEL = "detector_small_synthetic.pt"
BUNDLED_POSE_MODEL = "pose_small_synthetic.pt"
#: The object half's generated images: one scene per object, 320 x 240 (the pose model's
#: training size), seed 3 (training used 0, the recipe's held-out test split 1).
OBJECT_SCENES, OBJECT_IMAGES_PER_SCENE, OBJECT_IMAGE_SIZE, OBJECT_SEED = 4, 5, (320, 240), 3
#: The generated scene: a real ``mini_val`` name, so the devkit's split and evaluation work.
DEMO_SCENE = "scene-0103"
#: Detector parameters of the demo (the node defaults suit the bundled model; see
#: models/README.md for the score at other thresholds).
DEMO_PARAMS: tuple[str, ...] = ()


def default_checkpoint(name: str = BUNDLED_MODEL, variable: str = "EPROPNP_MODEL") -> Path:
    """A bundled model (default the detector): ``$<variable>``, else the repository's
    ``models/<name>``, else the installed ``share/epropnp/models/<name>``."""
    env = os.environ.get(variable)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "models" / name
    if repo.is_file():
        return repo
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("epropnp")) / "models" / name
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
        objects: also run the object half (6DoF pose).
        pose_checkpoint: pose model (default: the bundled one, ``$EPROPNP_POSE_MODEL``).
        object_images_per_scene: generated images per object scene.
    """

    out: str = "demo_out"
    checkpoint: str = ""
    samples: int = 6
    image_size: tuple[int, int] = (640, 360)
    cameras: tuple[str, ...] = ()
    seed: int = 7
    detector_params: tuple[str, ...] = ()
    per_camera: bool = False
    objects: bool = True
    pose_checkpoint: str = ""
    object_images_per_scene: int = OBJECT_IMAGES_PER_SCENE

    def __post_init__(self) -> None:
        if self.object_images_per_scene < 1:
            raise ConfigError(
                f"object_images_per_scene must be >= 1, got {self.object_images_per_scene}")
        if self.samples < 2:
            raise ConfigError(f"samples must be >= 2, got {self.samples}")
        if min(self.image_size) < 32:
            raise ConfigError(f"image_size must be at least 32 x 32, got {self.image_size}")


class ObjectsResult(NamedTuple):
    """Where the object half's outputs are, and its headline scores."""

    bop_root: Path
    bag: Path
    scores: Path
    frames: Path | None
    score_line: str
    frames_processed: int
    frames_dropped: int


class DemoResult(NamedTuple):
    """Where the demo's outputs are (``objects``: None with ``objects=False``)."""

    dataroot: Path
    bag: Path
    results: Path
    scores: Path
    video: Path | None
    frames: Path
    nds: float
    mean_ap: float
    objects: ObjectsResult | None = None
    street_line: str = ""


def street_score_line(scores: dict[str, Any]) -> str:
    """The street's score line of a closed loop's ``scores.json``: NDS, mAP, mAOE and the
    fraction of true headings inside the 90 % highest-density region of the posterior
    samples (with the number of matched detections)."""
    heading = scores.get("calibration", {}).get("heading_samples", {})
    frac = heading.get("hdr90_fraction", math.nan)
    hdr = f"{frac:.2f}" if math.isfinite(frac) else "n/a"
    return (f"NDS {scores['nds']:.3f}  mAP {scores['mean_ap']:.3f}  "
            f"mAOE {scores['tp_errors']['orient_err']:.2f} rad  heading HDR90 {hdr} "
            f"({heading.get('num_matched', 0)} matched)")


def run_demo(config: DemoConfig) -> DemoResult:
    """Generate → convert → closed loop, for the street and then the objects (module
    docstring)."""
    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
    from epropnp_ros.closed_loop import ClosedLoopConfig, run_closed_loop
    from epropnp_ros.nuscenes_bag import CAMERAS, ConversionConfig, convert

    checkpoint = Path(config.checkpoint) if config.checkpoint else default_checkpoint()
    if not checkpoint.is_file():
        raise ConfigError(
            f"detector checkpoint not found: {checkpoint} (see models/README.md, or pass "
            "--checkpoint)"
        )
    pose_checkpoint = (Path(config.pose_checkpoint) if config.pose_checkpoint
                       else default_checkpoint(BUNDLED_POSE_MODEL, "EPROPNP_POSE_MODEL"))
    if config.objects and not pose_checkpoint.is_file():
        raise ConfigError(
            f"pose checkpoint not found: {pose_checkpoint} (see models/README.md, pass "
            "--pose-checkpoint, or --no-objects)"
        )
    out = Path(config.out).resolve()
    dataroot, bag, loop_out = out / "nuscenes", out / "bag", out / "closed_loop"
    for path in (dataroot, bag, loop_out, out / "bop", out / "bop_bag", out / "pose_closed_loop"):
        shutil.rmtree(path, ignore_errors=True)
    cameras = config.cameras or CAMERAS
    total = 6 if config.objects else 3

    t0 = time.monotonic()
    _step(f"1/{total} generating a nuScenes-format scene ({DEMO_SCENE}, {config.samples} "
          f"samples, {config.image_size[0]}x{config.image_size[1]}) in {dataroot}")
    generate_nuscenes_mini(dataroot, scenes=(DEMO_SCENE,), samples_per_scene=config.samples,
                           image_size=config.image_size, seed=config.seed)
    _step(f"2/{total} converting it to a rosbag2 (mcap) in {bag}")
    summary = convert(ConversionConfig(dataroot=str(dataroot), output=str(bag),
                                       cameras=tuple(cameras)))
    _step(f"    {sum(summary.message_counts.values())} messages on "
          f"{len(summary.message_counts)} topics")
    nodes = (f"{len(cameras)} detector node(s)" if config.per_camera
             else f"one rig_detector node for {len(cameras)} camera(s)")
    _step(f"3/{total} closed loop: bag -> {nodes} ({checkpoint.name}) -> nuScenes results -> "
          "DetectionEval")
    result = run_closed_loop(ClosedLoopConfig(
        bags=(str(bag),), checkpoint=str(checkpoint), dataroot=str(dataroot), out=str(loop_out),
        eval_set="mini_val", cameras=tuple(cameras),
        detector_params=DEMO_PARAMS + config.detector_params, per_camera=config.per_camera,
    ))
    s = result.scores
    line = street_score_line(s)
    _step(f"    {line}")
    objects = _run_objects(config, pose_checkpoint, out) if config.objects else None
    _step(f"done in {time.monotonic() - t0:.0f} s")
    return DemoResult(dataroot, bag, result.results_path, result.scores_path, result.video_path,
                      loop_out / "frames", float(s["nds"]), float(s["mean_ap"]), objects,
                      line)


def _run_objects(config: DemoConfig, checkpoint: Path, out: Path) -> ObjectsResult:
    """Steps 4-6: BOP scenes → rosbag2 → pose_estimator node → ADD(-S), n° n cm, coverage."""
    from epropnp_lib.generators.bop import generate_bop_lm
    from epropnp_ros.bop_bag import BopBagConfig
    from epropnp_ros.bop_bag import convert as convert_bop
    from epropnp_ros.pose_closed_loop import (
        PoseClosedLoopConfig,
        run_pose_closed_loop,
        score_line,
    )

    root, bag, loop_out = out / "bop", out / "bop_bag", out / "pose_closed_loop"
    w, h = OBJECT_IMAGE_SIZE
    n = OBJECT_SCENES * config.object_images_per_scene
    _step(f"4/6 generating held-out BOP-format object scenes ({n} images, {w}x{h}) in {root}")
    generate_bop_lm(root, num_scenes=OBJECT_SCENES,
                    images_per_scene=config.object_images_per_scene, image_size=(w, h),
                    seed=OBJECT_SEED, split="test")
    _step(f"5/6 converting them to a rosbag2 with jittered regions of interest in {bag}")
    summary = convert_bop(BopBagConfig(root=str(root), output=str(bag)))
    _step(f"    {summary.num_images} images, {summary.num_instances} objects")
    _step(f"6/6 closed loop: bag -> pose_estimator node ({checkpoint.name}) -> ADD(-S), "
          "n° n cm, covariance coverage")
    result = run_pose_closed_loop(PoseClosedLoopConfig(
        bag=str(bag), checkpoint=str(checkpoint), bop_root=str(root), out=str(loop_out)))
    line = score_line(result.scores)
    _step(f"    {line}")
    return ObjectsResult(root, bag, result.scores_path, result.frames_dir, line,
                         result.frames_processed, result.frames_dropped)


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
    parser.add_argument("--no-objects", action="store_true",
                        help="the street only (leave out the 6DoF object half)")
    parser.add_argument("--pose-checkpoint", default="", help="pose model (default: bundled)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_demo(DemoConfig(
            out=args.out, checkpoint=args.checkpoint, samples=args.samples,
            image_size=args.image_size, cameras=tuple(args.cameras),
            detector_params=tuple(args.param), per_camera=args.per_camera,
            objects=not args.no_objects, pose_checkpoint=args.pose_checkpoint,
        ))
    except (EProPnPError, ConfigError) as exc:
        print(f"epropnp demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"\nstreet:  {result.street_line}  (official DetectionEval, detection_cvpr_2019, "
          "on the generated mini_val scene)")
    objects = result.objects
    if objects is not None:
        print(f"objects: {objects.score_line}  (held-out generated BOP scenes, "
              f"{objects.frames_processed} images)")
    print("outputs:")
    print(f"  dataset (nuScenes format):  {result.dataroot}")
    print(f"  rosbag2 (mcap):             {result.bag}")
    print(f"  detections (results JSON):  {result.results}")
    print(f"  scores:                     {result.scores}")
    print(f"  rendered frames:            {result.frames}")
    if result.video is not None:
        print(f"  video:                      {result.video}")
    if objects is not None:
        print(f"  object scenes (BOP):        {objects.bop_root}")
        print(f"  object rosbag2:             {objects.bag}")
        print(f"  object scores:              {objects.scores}")
        if objects.frames is not None:
            print(f"  object frames:              {objects.frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
