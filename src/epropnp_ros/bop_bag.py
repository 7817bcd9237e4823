"""BOP scenes -> rosbag2: what the ``pose_estimator`` node needs, with the ground truth to score it.

One bag per split selection; the images of the selected scenes play one after another,
``period`` seconds apart (scene by scene, image ids ascending), from ``start`` seconds. Topics
(camera frame ``camera_optical_frame``):

* ``/camera/image_raw/compressed`` (the image file's bytes as stored, format ``png``/``jpeg``)
  or ``/camera/image_raw`` (decoded ``rgb8``), and ``/camera/camera_info`` (the image's
  ``cam_K``, D = 0: BOP images are undistorted);
* ``/camera/rois`` (``vision_msgs/Detection2DArray``): one region per annotated instance,
  standing in for a 2D detector -- the visible box ``bbox_visib`` (``bbox_obj`` with
  ``roi_box='obj'``; BOP boxes span pixel *centres* ``x .. x + w``, the region spans the pixels'
  extent ``x .. x + w + 1``, the node's convention) with a seeded jitter: the centre moves by
  ``N(0, jitter)`` times the box size along each axis and each side is scaled by
  ``exp(N(0, jitter))``; the noise of an instance depends only on ``(seed, scene, image, gt
  index)``, so a subset of scenes gets the same regions. ``class_id`` = the object's name,
  score 1, ``id`` = :func:`instance_id`;
* ``/ground_truth/detections`` (``Detection3DArray`` in the camera frame): the annotated poses
  (``results[0].pose``, covariance 0), ``bbox.center`` = the pose, ``bbox.size`` = the model's
  box extents (models_info ``size_*``), same ``class_id`` and ``id`` as the region;
* ``/tf_static``: ``base_link`` -> ``camera_optical_frame`` (BOP gives no extrinsics: the camera
  sits at ``base_link``'s origin, rotated into the REP 103 optical convention).

Messages are written in the order TF, camera_info, regions, image, ground truth at each stamp,
atomically (:func:`epropnp_ros.bag_writing.write_bag`). Instances below ``min_visib_fract`` get
neither a region nor a ground-truth entry.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from epropnp_lib.data.bop import BopConfig, BopDataError, BopDataset, BopInstance
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.rotations import matrix_to_quat
from epropnp_ros.bag_writing import (
    TF_STATIC_TOPIC,
    BagEvent,
    MessageBuilder,
    bind,
    typestore,
    write_bag,
)
from epropnp_ros.errors import BagConversionError

__all__ = [
    "BASE_FRAME",
    "CAMERA_FRAME",
    "GT_TOPIC",
    "BopBagConfig",
    "BopBagSummary",
    "convert",
    "instance_id",
    "jittered_roi",
    "main",
]

LOGGER = logging.getLogger(__name__)

BASE_FRAME = "base_link"
CAMERA_FRAME = "camera_optical_frame"
CAMERA_NS = "/camera"
ROI_TOPIC = f"{CAMERA_NS}/rois"
INFO_TOPIC = f"{CAMERA_NS}/camera_info"
GT_TOPIC = "/ground_truth/detections"
#: base_link (x forward, y left, z up) -> optical frame (x right, y down, z forward), (w, x, y, z).
OPTICAL_ROTATION = (0.5, -0.5, 0.5, -0.5)


@dataclass(frozen=True)
class BopBagConfig:
    """What to convert (see the module docstring).

    Attributes:
        root: BOP root folder (holds ``<dataset>/``).
        output: bag directory to create (must not exist).
        dataset: BOP dataset folder (``lm``).
        split: split folder (``test``).
        scenes: scene ids (empty: every scene of the split).
        objects: object ids or names to keep (empty: every object of ``models_info.json``).
        image_format: ``compressed`` (the files' bytes) or ``raw`` (decoded ``rgb8``).
        storage: ``mcap`` or ``sqlite3``.
        start: stamp of the first image, seconds.
        period: seconds between images.
        roi_box: ``visib`` (the visible part, what a detector sees) or ``obj`` (whole
            silhouette).
        jitter: relative standard deviation of the regions' centre and size noise (0: exact).
        seed: seed of the jitter.
        min_visib_fract: instances less visible than this are left out.
        progress: show a progress bar.
    """

    root: str
    output: str
    dataset: str = "lm"
    split: str = "test"
    scenes: tuple[int, ...] = ()
    objects: tuple[str, ...] = ()
    image_format: Literal["compressed", "raw"] = "compressed"
    storage: Literal["mcap", "sqlite3"] = "mcap"
    start: float = 1.0
    period: float = 0.1
    roi_box: Literal["visib", "obj"] = "visib"
    jitter: float = 0.05
    seed: int = 0
    min_visib_fract: float = 0.1
    progress: bool = False

    def __post_init__(self) -> None:
        if self.image_format not in ("compressed", "raw"):
            raise ConfigError(f"image_format must be 'compressed' or 'raw', "
                              f"got {self.image_format!r}")
        if self.storage not in ("mcap", "sqlite3"):
            raise ConfigError(f"storage must be 'mcap' or 'sqlite3', got {self.storage!r}")
        if self.roi_box not in ("visib", "obj"):
            raise ConfigError(f"roi_box must be 'visib' or 'obj', got {self.roi_box!r}")
        if not (self.start >= 0 and self.period > 0 and 0 <= self.jitter <= 1):
            raise ConfigError("start must be >= 0, period > 0 and jitter in [0, 1]")


class BopBagSummary(NamedTuple):
    """What was written."""

    path: Path
    message_counts: dict[str, int]
    num_images: int
    num_instances: int
    start_ns: int
    end_ns: int


def instance_id(scene_id: int, im_id: int, gt_id: int) -> str:
    """The ``id`` of an instance's region and ground truth: ``"<scene>/<image>/<gt>"``."""
    return f"{scene_id:06d}/{im_id:06d}/{gt_id:06d}"


def jittered_roi(box: Sequence[float], jitter: float, seed: int, scene_id: int, im_id: int,
                 gt_id: int) -> np.ndarray:
    """``(4,)`` region ``(x, y, w, h)`` (pixel extents) of a BOP box ``(x, y, w, h)`` (pixel
    centres) with the module's seeded jitter (centre ``+ N(0, jitter) * size``, sides
    ``* exp(N(0, jitter))``)."""
    x, y, w, h = (float(v) for v in box)
    w, h = w + 1.0, h + 1.0
    noise = np.random.default_rng([seed, scene_id, im_id, gt_id]).standard_normal(4) * jitter
    cx, cy = x + 0.5 * w + noise[0] * w, y + 0.5 * h + noise[1] * h
    w2, h2 = w * float(np.exp(noise[2])), h * float(np.exp(noise[3]))
    return np.array([cx - 0.5 * w2, cy - 0.5 * h2, w2, h2])


class _Builder(MessageBuilder):
    """The shared message builder plus BOP regions and ground truth."""

    def hypothesis(self, name: str, pose: Any = None) -> Any:
        hyp = self.t["vision_msgs/msg/ObjectHypothesis"](class_id=name, score=1.0)
        if pose is None:
            pose = self.pose((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0))
        return self.t["vision_msgs/msg/ObjectHypothesisWithPose"](
            hypothesis=hyp,
            pose=self.t["geometry_msgs/msg/PoseWithCovariance"](pose=pose,
                                                                covariance=np.zeros(36)))

    def rois(self, stamp_ns: int, items: list[tuple[str, str, np.ndarray]]) -> Any:
        """Detection2DArray of ``(id, class, (x, y, w, h))``."""
        dets = []
        for ident, name, (x, y, w, h) in items:
            centre = self.t["vision_msgs/msg/Pose2D"](
                position=self.t["vision_msgs/msg/Point2D"](x=float(x + 0.5 * w),
                                                           y=float(y + 0.5 * h)),
                theta=0.0)
            bbox = self.t["vision_msgs/msg/BoundingBox2D"](center=centre, size_x=float(w),
                                                           size_y=float(h))
            dets.append(self.t["vision_msgs/msg/Detection2D"](
                header=self.header(stamp_ns, CAMERA_FRAME), results=[self.hypothesis(name)],
                bbox=bbox, id=ident))
        return self.t["vision_msgs/msg/Detection2DArray"](
            header=self.header(stamp_ns, CAMERA_FRAME), detections=dets)

    def ground_truth(self, stamp_ns: int,
                     items: list[tuple[str, str, BopInstance, np.ndarray]]) -> Any:
        """Detection3DArray of ``(id, class, instance, box extents (3,))``."""
        dets = []
        for ident, name, inst, size in items:
            quat = matrix_to_quat(torch.as_tensor(inst.R, dtype=torch.float64)).tolist()
            pose = self.pose(inst.t.tolist(), quat)
            bbox = self.t["vision_msgs/msg/BoundingBox3D"](center=pose,
                                                           size=self.vector3(size.tolist()))
            dets.append(self.t["vision_msgs/msg/Detection3D"](
                header=self.header(stamp_ns, CAMERA_FRAME),
                results=[self.hypothesis(name, pose)], bbox=bbox, id=ident))
        return self.t["vision_msgs/msg/Detection3DArray"](
            header=self.header(stamp_ns, CAMERA_FRAME), detections=dets)


def _topic_type(topic: str) -> str:
    types = {
        TF_STATIC_TOPIC: "tf2_msgs/msg/TFMessage",
        GT_TOPIC: "vision_msgs/msg/Detection3DArray",
        ROI_TOPIC: "vision_msgs/msg/Detection2DArray",
        INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
        f"{CAMERA_NS}/image_raw": "sensor_msgs/msg/Image",
        f"{CAMERA_NS}/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
    }
    return types[topic]


def _load(config: BopBagConfig) -> BopDataset:
    try:
        return BopDataset(
            config.root, config.split,
            [int(o) if o.isdigit() else o for o in config.objects] or None,
            config=BopConfig(dataset=config.dataset, crop_size=0, render_coords=False,
                             bbox=config.roi_box, min_visib_fract=config.min_visib_fract),
            scenes=list(config.scenes) or None)
    except BopDataError as exc:
        raise BagConversionError(f"cannot read the BOP data: {exc}") from exc


def _events(data: BopDataset, config: BopBagConfig, build: _Builder) -> tuple[list[BagEvent], int]:
    """The bag's events and its number of images."""
    images: dict[tuple[int, int], list[BopInstance]] = {}
    for inst in data.instances:
        images.setdefault((inst.scene_id, inst.im_id), []).append(inst)
    image_topic = f"{CAMERA_NS}/image_raw" + ("/compressed" if config.image_format ==
                                                "compressed" else "")
    start_ns = round(config.start * 1e9)
    events = [BagEvent(start_ns, -1, TF_STATIC_TOPIC, bind(build.tf_message, [build.transform(
        start_ns, BASE_FRAME, CAMERA_FRAME,
        {"translation": (0.0, 0.0, 0.0), "rotation": OPTICAL_ROTATION})]))]
    for n, ((scene_id, im_id), insts) in enumerate(sorted(images.items())):
        stamp = start_ns + round(n * config.period * 1e9)
        rois, gts = [], []
        for inst in sorted(insts, key=lambda i: i.gt_id):
            model = data.model(inst.obj_id)
            ident = instance_id(scene_id, im_id, inst.gt_id)
            box = inst.info.bbox_visib if config.roi_box == "visib" else inst.info.bbox_obj
            rois.append((ident, model.name, jittered_roi(box, config.jitter, config.seed,
                                                         scene_id, im_id, inst.gt_id)))
            size = np.asarray(model.info.size, dtype=np.float64)
            gts.append((ident, model.name, inst, size))
        cam = insts[0].cam_mats
        events += [
            BagEvent(stamp, 1, INFO_TOPIC, bind(build.camera_info, stamp, CAMERA_FRAME,
                                                data.camera.width, data.camera.height, cam)),
            BagEvent(stamp, 2, ROI_TOPIC, bind(build.rois, stamp, rois)),
            BagEvent(stamp, 3, image_topic, bind(build.image, stamp, CAMERA_FRAME,
                                                 data.image_path(scene_id, im_id),
                                                 config.image_format)),
            BagEvent(stamp, 4, GT_TOPIC, bind(build.ground_truth, stamp, gts)),
        ]
    events.sort(key=lambda e: (e.stamp_ns, e.order, e.topic))
    return events, len(images)


def convert(config: BopBagConfig) -> BopBagSummary:
    """Convert BOP scenes to a rosbag2 (module docstring).

    Raises:
        BagConversionError: the output exists, the BOP data is missing or broken (the reader's
            reason), or no instance is left.
    """
    output = Path(config.output)
    if output.exists():
        raise BagConversionError(f"output {output} exists; remove it or choose another name")
    data = _load(config)
    store = typestore()
    events, num_images = _events(data, config, _Builder(store))
    counts = write_bag(output, events, store, _topic_type, storage=config.storage,
                       progress=config.progress)
    return BopBagSummary(output, counts, num_images, len(data.instances), events[0].stamp_ns,
                         events[-1].stamp_ns)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``epropnp-bop-to-bag --root BOP_ROOT --out BAG [--split test] [--scenes 1 2] ...``."""
    parser = argparse.ArgumentParser(
        prog="epropnp-bop-to-bag",
        description="Convert BOP scenes (images, CameraInfo, jittered ground-truth regions of "
        "interest, ground-truth poses, /tf_static) to a rosbag2 for the pose_estimator node.")
    parser.add_argument("--root", required=True, help="BOP root folder (holds <dataset>/)")
    parser.add_argument("--out", required=True, help="bag directory to create")
    parser.add_argument("--dataset", default="lm")
    parser.add_argument("--split", default="test")
    parser.add_argument("--scenes", nargs="*", type=int, default=[])
    parser.add_argument("--objects", nargs="*", default=[], help="object ids or names")
    parser.add_argument("--raw", action="store_true", help="decoded rgb8 Image")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--period", type=float, default=0.1, help="seconds between images")
    parser.add_argument("--roi-box", choices=("visib", "obj"), default="visib")
    parser.add_argument("--jitter", type=float, default=0.05,
                        help="relative noise of the regions' centre and size (0: exact boxes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-visib-fract", type=float, default=0.1)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = convert(BopBagConfig(
            root=args.root, output=args.out, dataset=args.dataset, split=args.split,
            scenes=tuple(args.scenes), objects=tuple(args.objects),
            image_format="raw" if args.raw else "compressed", storage=args.storage,
            period=args.period, roi_box=args.roi_box, jitter=args.jitter, seed=args.seed,
            min_visib_fract=args.min_visib_fract, progress=not args.quiet))
    except (BagConversionError, ConfigError) as exc:
        print(f"epropnp-bop-to-bag: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {summary.path}: {summary.num_images} images, {summary.num_instances} instances")
    for topic, count in summary.message_counts.items():
        print(f"  {topic}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
