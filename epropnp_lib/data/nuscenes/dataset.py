"""The nuScenes camera dataset: one item per (sample, camera) of a split, read with the devkit:
the image, its intrinsics, the annotated boxes in the camera's optical frame
(:class:`~epropnp_lib.geometry.boxes.CameraBoxes`) and the :class:`CameraFrame` that writes
detections back (:mod:`~epropnp_lib.data.nuscenes.frames`)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import torch

from epropnp_lib.data.nuscenes.errors import NuScenesFormatError
from epropnp_lib.data.nuscenes.frames import CameraFrame, camera_frame_of, global_to_camera
from epropnp_lib.data.nuscenes.loading import load_nuscenes
from epropnp_lib.data.nuscenes.taxonomy import (
    CAMERAS,
    KNOWN_CATEGORIES,
    NUSCENES_ATTRIBUTES,
    NUSCENES_CLASSES,
)
from epropnp_lib.errors import ConfigError, ShapeError
from epropnp_lib.geometry.boxes import CameraBoxes

logger = logging.getLogger(__name__)

__all__ = [
    "NuScenesBatch",
    "NuScenesCameraDataset",
    "NuScenesCameraSample",
    "collate_camera_samples",
]


class NuScenesCameraSample(NamedTuple):
    """One (sample, camera) item of :class:`NuScenesCameraDataset`.

    Attributes:
        image: ``(3, H, W)`` uint8 RGB (``None`` if the dataset was made with
            ``load_images=False``).
        cam_mats: ``(3, 3)`` float32 intrinsics.
        boxes: :class:`CameraBoxes` (float32, scores 1) of the kept annotations.
        frame: :class:`CameraFrame` (pass it back to :func:`write_results`).
        timestamp: image timestamp, microseconds.
        ann_tokens: sample_annotation token of each box.
        visibility: ``(M,)`` long visibility level 1..4 of each box.
        num_points: ``(M,)`` long lidar + radar points of each box.
    """

    image: torch.Tensor | None
    cam_mats: torch.Tensor
    boxes: CameraBoxes
    frame: CameraFrame
    timestamp: int
    ann_tokens: tuple[str, ...]
    visibility: torch.Tensor
    num_points: torch.Tensor


class NuScenesCameraDataset(torch.utils.data.Dataset[NuScenesCameraSample]):
    """Per-(sample, camera) items of a nuScenes split, read with the devkit.

    Args:
        dataroot: the nuScenes root (holding ``<version>/``, ``samples/``, ``maps/``).
        version: e.g. ``"v1.0-mini"``, ``"v1.0-trainval"``.
        split: a devkit split (``"mini_train"``, ``"mini_val"``, ``"train"``, ``"val"``, ...).
        cameras: channels to use.
        min_visibility: keep boxes whose visibility level (1..4 = 0-40 %, ... 80-100 %) is at
            least this (0 keeps all).
        min_points: keep boxes with at least this many lidar + radar points (``DetectionEval``
            drops ground-truth boxes with none).
        min_depth: boxes whose centre is closer than this (camera z, metres) are dropped.
        require_center_in_image: also drop boxes whose projected centre is outside the image
            (by default a box is kept when its projected corners overlap the image).
        load_images: read the JPEGs in ``__getitem__``.
        missing_images: ``"error"`` (raise :class:`NuScenesFormatError` at construction) or
            ``"skip"`` (drop the item with a counted warning, see :attr:`skipped`).
        unknown_categories: what to do with category names outside the nuScenes taxonomy:
            ``"error"`` or ``"skip"`` (their annotations are ignored, counted).
        nusc: an already loaded ``NuScenes`` to reuse.

    Attributes:
        skipped: ``Counter`` of what was skipped with a warning (``missing_image``,
            ``empty_scene``, ``unknown_category``, ``extra_attribute``).
    """

    def __init__(
        self,
        dataroot: str | os.PathLike[str],
        version: str = "v1.0-mini",
        split: str = "mini_train",
        *,
        cameras: Sequence[str] = CAMERAS,
        min_visibility: int = 0,
        min_points: int = 0,
        min_depth: float = 0.5,
        require_center_in_image: bool = False,
        load_images: bool = True,
        missing_images: str = "error",
        unknown_categories: str = "error",
        nusc: Any = None,
    ) -> None:
        splits = _check_options(version, split, cameras, min_visibility, min_points, min_depth,
                                missing_images, unknown_categories)
        self.dataroot = Path(dataroot)
        self.version = version
        self.split = split
        self.cameras = tuple(cameras)
        self.min_visibility = min_visibility
        self.min_points = min_points
        self.min_depth = float(min_depth)
        self.require_center_in_image = require_center_in_image
        self.load_images = load_images
        self.skipped: Counter[str] = Counter()
        self.nusc = nusc if nusc is not None else load_nuscenes(dataroot, version)
        table_root = self.dataroot / version
        self._class_of = self._category_classes(table_root, unknown_categories)
        self._attr_index = {a["token"]: (NUSCENES_ATTRIBUTES.index(a["name"])
                                         if a["name"] in NUSCENES_ATTRIBUTES else -1)
                            for a in self.nusc.attribute}
        wanted = set(splits[split])
        scenes = [s for s in self.nusc.scene if s["name"] in wanted]
        if not scenes:
            raise NuScenesFormatError(table_root / "scene.json",
                                      f"no scene of split {split!r} in this dataset")
        self.scene_names = tuple(s["name"] for s in scenes)
        self.sample_tokens, self._items = self._index_items(scenes, table_root, missing_images)
        if not self._items:
            raise NuScenesFormatError(table_root, f"split {split!r} has no usable images")

    def _category_classes(self, table_root: Path,
                          unknown_categories: str) -> dict[str, int | None]:
        """Detection class index (or ``None``) per category name."""
        # the devkit is imported on use: importing this package for its constants stays light
        from nuscenes.eval.detection.utils import category_to_detection_name

        class_of: dict[str, int | None] = {}
        for cat in self.nusc.category:
            if cat["name"] not in KNOWN_CATEGORIES:
                if unknown_categories == "error":
                    raise NuScenesFormatError(
                        table_root / "category.json",
                        f"unknown category {cat['name']!r} (not in the nuScenes taxonomy); "
                        f"pass unknown_categories='skip' to ignore its annotations")
                self.skipped["unknown_category"] += 1
                logger.warning("%s: ignoring the annotations of unknown category %r",
                               table_root / "category.json", cat["name"])
                class_of[cat["name"]] = None
                continue
            det = category_to_detection_name(cat["name"])
            class_of[cat["name"]] = None if det is None else NUSCENES_CLASSES.index(det)
        return class_of

    def _index_items(self, scenes: Sequence[dict[str, Any]], table_root: Path,
                     missing_images: str) -> tuple[tuple[str, ...], list[tuple[str, str, str]]]:
        """The sample tokens of ``scenes`` and the ``(sample, camera, sample_data)`` tokens of
        the items (images that are missing are skipped or raise, per ``missing_images``)."""
        items: list[tuple[str, str, str]] = []
        sample_tokens: list[str] = []
        for scene in scenes:
            token = scene["first_sample_token"]
            if scene["nbr_samples"] == 0 or not token:
                self.skipped["empty_scene"] += 1
                logger.warning("%s: scene %s has no samples; skipped",
                               table_root / "scene.json", scene["name"])
                continue
            while token:
                try:
                    sample = self.nusc.get("sample", token)
                except KeyError as exc:
                    raise NuScenesFormatError(
                        table_root / "scene.json",
                        f"scene {scene['name']}: sample {token!r} is not in sample.json") from exc
                sample_tokens.append(token)
                for cam in self.cameras:
                    sd_token = sample["data"].get(cam)
                    if sd_token is None:
                        raise NuScenesFormatError(
                            table_root / "sample_data.json",
                            f"sample {token} has no key frame of {cam}")
                    path = self.dataroot / self.nusc.get("sample_data", sd_token)["filename"]
                    if self.load_images and not path.is_file():
                        if missing_images == "error":
                            raise NuScenesFormatError(path, "image file is missing")
                        self.skipped["missing_image"] += 1
                        logger.warning("%s: image file is missing; item skipped", path)
                        continue
                    items.append((token, cam, sd_token))
                token = sample["next"]
        return tuple(sample_tokens), items

    def __len__(self) -> int:
        return len(self._items)

    def frame(self, index: int) -> CameraFrame:
        """The :class:`CameraFrame` of item ``index`` (no image read)."""
        return camera_frame_of(self.nusc, self._items[index][2])

    def __getitem__(self, index: int) -> NuScenesCameraSample:
        sample_token, cam, sd_token = self._items[index]
        nusc = self.nusc
        sd = nusc.get("sample_data", sd_token)
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        frame = self.frame(index)
        cam_mats = torch.tensor(cs["camera_intrinsic"], dtype=torch.float64)
        width, height = int(sd["width"]), int(sd["height"])
        image = None
        if self.load_images:
            path = self.dataroot / sd["filename"]
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise NuScenesFormatError(path, "image file is missing or not a readable image")
            if bgr.shape[:2] != (height, width):
                raise NuScenesFormatError(path, f"image is {bgr.shape[1]} x {bgr.shape[0]} but "
                                                f"sample_data says {width} x {height}")
            image = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).contiguous()

        anns, labels, attrs, vis, pts, trans, rots, sizes, vels = [], [], [], [], [], [], [], [], []
        for ann_token in nusc.get("sample", sample_token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            label = self._class_of.get(ann["category_name"])
            if label is None:
                continue
            level = int(ann["visibility_token"]) if ann["visibility_token"] else 0
            num_pts = int(ann["num_lidar_pts"]) + int(ann["num_radar_pts"])
            if level < self.min_visibility or num_pts < self.min_points:
                continue
            attr_tokens = ann["attribute_tokens"]
            if len(attr_tokens) > 1:
                self.skipped["extra_attribute"] += 1
            anns.append(ann_token)
            labels.append(label)
            attrs.append(self._attr_index[attr_tokens[0]] if attr_tokens else -1)
            vis.append(level)
            pts.append(num_pts)
            trans.append(ann["translation"])
            rots.append(ann["rotation"])
            sizes.append(ann["size"])
            vels.append(nusc.box_velocity(ann_token)[:2].tolist())
        m = len(anns)
        if m:
            center, yaw, vel = global_to_camera(
                torch.tensor(trans, dtype=torch.float64), torch.tensor(rots, dtype=torch.float64),
                torch.tensor(vels, dtype=torch.float64), frame.cam_to_global)
        else:
            center = torch.zeros(0, 3, dtype=torch.float64)
            yaw = torch.zeros(0, dtype=torch.float64)
            vel = torch.zeros(0, 2, dtype=torch.float64)
        boxes = CameraBoxes(
            center=center.float(), size=torch.tensor(sizes, dtype=torch.float32).view(m, 3),
            yaw=yaw.float(), labels=torch.tensor(labels, dtype=torch.long),
            velocity=vel.float(), attributes=torch.tensor(attrs, dtype=torch.long),
            scores=torch.ones(m))
        keep = self._in_image(boxes, cam_mats, width, height)
        idx = keep.nonzero().flatten()
        return NuScenesCameraSample(
            image=image, cam_mats=cam_mats.float(), boxes=boxes.select(idx), frame=frame,
            timestamp=int(sd["timestamp"]),
            ann_tokens=tuple(anns[i] for i in idx.tolist()),
            visibility=torch.tensor(vis, dtype=torch.long)[idx],
            num_points=torch.tensor(pts, dtype=torch.long)[idx])

    def _in_image(self, boxes: CameraBoxes, cam_mats: torch.Tensor, width: int,
                  height: int) -> torch.Tensor:
        """(M,) bool: centre in front and the projected box overlaps the image (``cam_mats:
        (3, 3)``)."""
        if boxes.num_boxes == 0:
            return torch.zeros(0, dtype=torch.bool)
        kf = cam_mats.float()
        corners = boxes.corners()  # (M, 8, 3)
        front = corners[..., 2] > 0.1
        z = corners[..., 2:3].clamp(min=0.1)
        px = (corners / z) @ kf.T
        inf = torch.tensor(torch.inf)
        lo = torch.where(front[..., None], px[..., :2], inf).amin(1)
        hi = torch.where(front[..., None], px[..., :2], -inf).amax(1)
        overlap = ((lo[:, 0] < width) & (hi[:, 0] > 0) & (lo[:, 1] < height) & (hi[:, 1] > 0)
                   & front.any(1))
        keep = overlap & (boxes.center[:, 2] > self.min_depth)
        if self.require_center_in_image:
            c = (boxes.center / boxes.center[:, 2:3].clamp(min=1e-3)) @ kf.T
            keep &= (c[:, 0] >= 0) & (c[:, 0] < width) & (c[:, 1] >= 0) & (c[:, 1] < height)
        return keep


class NuScenesBatch(NamedTuple):
    """A batch of :class:`NuScenesCameraSample` (images of one size, boxes kept per image).

    Attributes:
        images: ``(B, 3, H, W)`` uint8 RGB, or ``None`` when the items carry no image.
        cam_mats: ``(B, 3, 3)`` float32.
        boxes: ``B`` :class:`CameraBoxes` (``M_b`` boxes each).
        frames: ``B`` :class:`CameraFrame`.
    """

    images: torch.Tensor | None
    cam_mats: torch.Tensor
    boxes: list[CameraBoxes]
    frames: list[CameraFrame]


def collate_camera_samples(items: Sequence[NuScenesCameraSample]) -> NuScenesBatch:
    """``collate_fn`` for a ``DataLoader`` over :class:`NuScenesCameraDataset`.

    Raises:
        ShapeError: images of different sizes in one batch.
    """
    images = None
    if items and all(it.image is not None for it in items):
        shapes = {tuple(it.image.shape) for it in items if it.image is not None}
        if len(shapes) > 1:
            raise ShapeError(f"images of different sizes {sorted(shapes)} in one batch")
        images = torch.stack([it.image for it in items if it.image is not None])
    return NuScenesBatch(images, torch.stack([it.cam_mats for it in items]),
                         [it.boxes for it in items], [it.frame for it in items])


def _check_options(version: str, split: str, cameras: Sequence[str], min_visibility: int,
                   min_points: int, min_depth: float, missing_images: str,
                   unknown_categories: str) -> dict[str, list[str]]:
    """Validate the options of :class:`NuScenesCameraDataset`; returns the devkit's splits
    (scene names by split)."""
    from nuscenes.utils.splits import create_splits_scenes  # the devkit, imported on use

    unknown_cams = [c for c in cameras if c not in CAMERAS]
    if unknown_cams or not cameras:
        raise ConfigError(f"cameras: unknown {unknown_cams}; choose from {list(CAMERAS)}")
    if not 0 <= min_visibility <= 4:
        raise ConfigError(f"min_visibility must be in 0..4, got {min_visibility}")
    if min_points < 0 or not min_depth > 0:
        raise ConfigError(f"min_points must be >= 0 and min_depth > 0, got {min_points}, "
                          f"{min_depth}")
    for name, value in (("missing_images", missing_images),
                        ("unknown_categories", unknown_categories)):
        if value not in ("error", "skip"):
            raise ConfigError(f"{name} must be 'error' or 'skip', got {value!r}")
    splits: dict[str, list[str]] = create_splits_scenes()
    if split not in splits:
        raise ConfigError(f"split {split!r} is not a devkit split; choose from "
                          f"{sorted(splits)}")
    if split.startswith("mini") != version.endswith("mini"):
        raise ConfigError(f"split {split!r} does not belong to version {version!r}")
    return splits
