"""nuScenes through the official devkit: camera-frame reader, results writer and evaluation.

* :class:`NuScenesCameraDataset` -- one item per (sample, camera) of a split, loaded with
  ``nuscenes-devkit``: the image, its intrinsics, the annotated boxes in that camera's optical
  frame as :class:`~epropnp_lib.geometry.boxes.CameraBoxes` and the calibration / ego pose needed to
  write detections back.
* :func:`write_results` -- camera-frame detections back to the global frame, merged over the six
  cameras, written as the official results JSON (every sample of the split present).
* :func:`evaluate` -- the official ``DetectionEval`` with the ``detection_cvpr_2019`` preset
  (never a re-implementation of the NDS).

Frames and conversions (the inverse of each other, tested as a round trip):

* camera -> global is ``T = ego_to_global @ cam_to_ego`` (4 x 4, from the camera sample_data's
  own ego pose and calibration, as the devkit's ``get_sample_data`` uses them);
* ``center``: the box centre moved with ``T^-1``;
* ``yaw`` (about the camera y axis): the direction of the box heading (its length axis) in the
  camera frame, ``yaw = atan2(-h_z, h_x)``; cameras are almost level, so this is the 4DoF yaw of
  :mod:`epropnp_lib.conventions`.  Written back as the global yaw (about the global z axis)
  whose heading has exactly that camera yaw;
* ``velocity``: the devkit's ground velocity ``(vx, vy, 0)`` rotated into the camera frame and
  reduced to its ``(x, z)`` components; written back as the horizontal global velocity with
  those camera components (a 2 x 2 solve, exact for any camera tilt).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import torch

from epropnp_lib.atomic_io import atomic_write
from epropnp_lib.errors import ConfigError, EProPnPError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.rotations import quat_to_matrix

logger = logging.getLogger(__name__)

#: The 10 nuScenes detection classes, in the devkit's order
#: (``nuscenes.eval.detection.constants.DETECTION_NAMES``); label ``i`` is ``NUSCENES_CLASSES[i]``.
NUSCENES_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)

#: The 8 nuScenes attributes, in the devkit's order (``ATTRIBUTE_NAMES``); -1 means none.
NUSCENES_ATTRIBUTES: tuple[str, ...] = (
    "pedestrian.moving",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "cycle.with_rider",
    "cycle.without_rider",
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
)

#: Typical (width, length, height) in metres of the nuScenes classes, in
#: :data:`NUSCENES_CLASSES` order (rounded means of the training set;
#: only the reference of the log-size regression, so approximate values are harmless).
NUSCENES_MEAN_SIZES: tuple[tuple[float, float, float], ...] = (
    (1.95, 4.62, 1.73),  # car
    (2.51, 6.93, 2.84),  # truck
    (2.94, 10.50, 3.47),  # bus
    (2.90, 12.29, 3.87),  # trailer
    (2.73, 6.37, 3.19),  # construction_vehicle
    (0.67, 0.73, 1.77),  # pedestrian
    (0.77, 2.11, 1.47),  # motorcycle
    (0.60, 1.70, 1.28),  # bicycle
    (0.41, 0.41, 1.07),  # traffic_cone
    (2.49, 0.48, 0.98),  # barrier
)

__all__ = [
    "CAMERAS",
    "NUSCENES_ATTRIBUTES",
    "NUSCENES_CLASSES",
    "NUSCENES_MEAN_SIZES",
    "DEFAULT_ATTRIBUTES",
    "KNOWN_CATEGORIES",
    "CameraDetections",
    "CameraFrame",
    "NuScenesBatch",
    "NuScenesCameraDataset",
    "NuScenesCameraSample",
    "NuScenesEvalError",
    "NuScenesFormatError",
    "NuScenesScores",
    "ResultsMeta",
    "ResultsSummary",
    "camera_frame_of",
    "camera_to_global",
    "collate_camera_samples",
    "evaluate",
    "global_to_camera",
    "load_nuscenes",
    "write_results",
]

#: The six cameras in the devkit's order.
CAMERAS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT",
)

#: Attribute written for a detection without one (-1), per class (the usual defaults of
#: camera detectors; barrier and traffic_cone have no attributes).
DEFAULT_ATTRIBUTES: dict[str, str] = {
    "car": "vehicle.parked", "truck": "vehicle.parked", "bus": "vehicle.moving",
    "trailer": "vehicle.parked", "construction_vehicle": "vehicle.parked",
    "pedestrian": "pedestrian.moving", "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider", "traffic_cone": "", "barrier": "",
}

_TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
           "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")

# Foreign keys checked when the devkit cannot load a dataset: (table, field, target table).
_REFERENCES = (
    ("instance", "category_token", "category"),
    ("calibrated_sensor", "sensor_token", "sensor"),
    ("scene", "log_token", "log"),
    ("sample", "scene_token", "scene"),
    ("sample_data", "sample_token", "sample"),
    ("sample_data", "ego_pose_token", "ego_pose"),
    ("sample_data", "calibrated_sensor_token", "calibrated_sensor"),
    ("sample_annotation", "sample_token", "sample"),
    ("sample_annotation", "instance_token", "instance"),
    ("sample_annotation", "visibility_token", "visibility"),
    ("sample_annotation", "attribute_tokens", "attribute"),
    ("map", "log_tokens", "log"),
)

#: Every category name of the nuScenes taxonomy (annotation and lidarseg categories).
KNOWN_CATEGORIES: frozenset[str] = frozenset((
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone",
    "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy", "vehicle.bus.rigid",
    "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego",
))


class NuScenesFormatError(EProPnPError, ValueError):
    """A nuScenes file is missing, unreadable or inconsistent; ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class NuScenesEvalError(EProPnPError, ValueError):
    """The official evaluation rejected a results file (message of the devkit included)."""


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _load_table(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise NuScenesFormatError(path, "table file is missing")
    try:
        table = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NuScenesFormatError(path, f"not valid JSON ({exc}); truncated or corrupt?") from exc
    if not isinstance(table, list) or not all(isinstance(r, dict) and "token" in r
                                               for r in table):
        raise NuScenesFormatError(path, "expected a JSON list of records with a 'token'")
    return table


def _diagnose(dataroot: Path, version: str) -> NuScenesFormatError | None:
    """The first file-level problem of a dataset the devkit failed to load, if one is found."""
    table_root = dataroot / version
    tables: dict[str, list[dict[str, Any]]] = {}
    for name in _TABLES:
        try:
            tables[name] = _load_table(table_root / f"{name}.json")
        except NuScenesFormatError as exc:
            return exc
    tokens = {name: {r["token"] for r in table} for name, table in tables.items()}
    for name, key, target in _REFERENCES:
        for record in tables[name]:
            if key not in record:
                return NuScenesFormatError(table_root / f"{name}.json",
                                           f"record {record['token']} lacks the field {key!r}")
            refs = record[key] if isinstance(record[key], list) else [record[key]]
            for ref in refs:
                if ref not in tokens[target]:
                    return NuScenesFormatError(
                        table_root / f"{name}.json",
                        f"record {record['token']}: {key} {ref!r} is not in {target}.json")
    if not tables["map"]:
        return NuScenesFormatError(table_root / "map.json", "the map table is empty")
    for record in tables["map"]:
        if not (dataroot / record["filename"]).is_file():
            return NuScenesFormatError(dataroot / record["filename"], "map mask file is missing")
    return None


def load_nuscenes(dataroot: str | os.PathLike[str], version: str = "v1.0-mini") -> Any:
    """``nuscenes.nuscenes.NuScenes(version, dataroot)`` with errors that name the bad file.

    Raises:
        NuScenesFormatError: a missing version folder or table, a truncated/invalid JSON table,
            a dangling token, or a missing map mask.
    """
    from nuscenes.nuscenes import NuScenes

    root = Path(dataroot)
    if not (root / version).is_dir():
        raise NuScenesFormatError(root / version, "nuScenes version folder not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return NuScenes(version=version, dataroot=str(root), verbose=False)
    except Exception as exc:
        found = _diagnose(root, version)
        if found is not None:
            raise found from exc
        raise NuScenesFormatError(root / version,
                                  f"the devkit failed to load it: {exc!r}") from exc


# ---------------------------------------------------------------------------------------------
# Frames and conversions
# ---------------------------------------------------------------------------------------------

class CameraFrame(NamedTuple):
    """Where one camera image sits in the world (everything :func:`write_results` needs).

    Attributes:
        camera: channel, e.g. ``"CAM_FRONT"``.
        sample_token: the key frame's sample.
        sample_data_token: the image's sample_data record.
        cam_to_ego: ``(4, 4)`` float64, camera (optical) -> ego, from calibrated_sensor.
        ego_to_global: ``(4, 4)`` float64, ego -> global, the ego pose at the image timestamp.
    """

    camera: str
    sample_token: str
    sample_data_token: str
    cam_to_ego: torch.Tensor
    ego_to_global: torch.Tensor

    @property
    def cam_to_global(self) -> torch.Tensor:
        """``(4, 4)`` float64 camera -> global."""
        return self.ego_to_global @ self.cam_to_ego


def _transform(rotation_wxyz: Sequence[float], translation: Sequence[float]) -> torch.Tensor:
    q = torch.tensor(rotation_wxyz, dtype=torch.float64)
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = quat_to_matrix(q / q.norm())
    out[:3, 3] = torch.tensor(translation, dtype=torch.float64)
    return out


def camera_frame_of(nusc: Any, sample_data_token: str) -> CameraFrame:
    """The :class:`CameraFrame` of a camera ``sample_data`` record (calibration, ego pose)."""
    sd = nusc.get("sample_data", sample_data_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return CameraFrame(sd["channel"], sd["sample_token"], sample_data_token,
                       _transform(cs["rotation"], cs["translation"]),
                       _transform(pose["rotation"], pose["translation"]))


def global_to_camera(
    translation: torch.Tensor, rotation: torch.Tensor, velocity: torch.Tensor,
    cam_to_global: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global boxes to the camera frame (see the module docstring).

    Args:
        translation: ``(M, 3)`` global box centres.
        rotation: ``(M, 4)`` global box rotations (w, x, y, z).
        velocity: ``(M, 2)`` or ``(M, 3)`` global velocity (only x, y are used; NaN kept).
        cam_to_global: ``(4, 4)``.

    Returns:
        ``center (M, 3)``, ``yaw (M,)`` about the camera y axis, ``velocity (M, 2)`` camera
        ``(x, z)``; float64.
    """
    t = cam_to_global.to(torch.float64)
    rot, origin = t[:3, :3], t[:3, 3]
    center = (translation.to(torch.float64) - origin) @ rot
    box_rot = quat_to_matrix(rotation.to(torch.float64))
    heading = box_rot[:, :, 0] @ rot  # (M, 3) camera frame
    yaw = torch.atan2(-heading[:, 2], heading[:, 0])
    v = torch.zeros(translation.shape[0], 3, dtype=torch.float64)
    v[:, :2] = velocity[:, :2].to(torch.float64)
    v_cam = v @ rot
    return center, yaw, v_cam[:, [0, 2]]


def camera_to_global(
    center: torch.Tensor, yaw: torch.Tensor, velocity: torch.Tensor, cam_to_global: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera-frame boxes back to the global frame: the inverse of :func:`global_to_camera`.

    Args:
        center: ``(M, 3)``, yaw ``(M,)``, velocity ``(M, 2)`` camera ``(x, z)``.
        cam_to_global: ``(4, 4)``.

    Returns:
        ``translation (M, 3)``, ``yaw (M,)`` about the global z axis, ``velocity (M, 2)``
        global ``(vx, vy)``; float64.
    """
    t = cam_to_global.to(torch.float64)
    rot, origin = t[:3, :3], t[:3, 3]
    translation = center.to(torch.float64) @ rot.T + origin
    yaw = yaw.to(torch.float64)
    s, c = torch.sin(yaw)[:, None], torch.cos(yaw)[:, None]
    # Heading (cos p, sin p, 0) has camera yaw `yaw` iff it is orthogonal to w (and points
    # along the camera-frame heading, fixing the sign).
    w = s * rot[:2, 0] + c * rot[:2, 2]  # (M, 2)
    cand = torch.stack((-w[:, 1], w[:, 0]), -1)
    cand = cand / cand.norm(dim=-1, keepdim=True)
    d = cand @ rot[:2, :]  # (M, 3) heading in camera coordinates
    flip = (d[:, 0] * c[:, 0] - d[:, 2] * s[:, 0]) < 0
    cand = torch.where(flip[:, None], -cand, cand)
    yaw_g = torch.atan2(cand[:, 1], cand[:, 0])
    a = torch.stack((rot[:2, 0], rot[:2, 2]))  # (2, 2): camera (x, z) of global (vx, vy)
    vel = torch.linalg.solve(a, velocity.to(torch.float64).T).T
    return translation, yaw_g, vel


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------

class NuScenesCameraSample(NamedTuple):
    """One (sample, camera) item of :class:`NuScenesCameraDataset`.

    Attributes:
        image: ``(3, H, W)`` uint8 RGB (``None`` if the dataset was made with
            ``load_images=False``).
        cam_mat: ``(3, 3)`` float32 intrinsics.
        boxes: :class:`CameraBoxes` (float32, scores 1) of the kept annotations.
        frame: :class:`CameraFrame` (pass it back to :func:`write_results`).
        timestamp: image timestamp, microseconds.
        ann_tokens: sample_annotation token of each box.
        visibility: ``(M,)`` long visibility level 1..4 of each box.
        num_points: ``(M,)`` long lidar + radar points of each box.
    """

    image: torch.Tensor | None
    cam_mat: torch.Tensor
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
        from nuscenes.eval.detection.utils import category_to_detection_name
        from nuscenes.utils.splits import create_splits_scenes

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
        splits = create_splits_scenes()
        if split not in splits:
            raise ConfigError(f"split {split!r} is not a devkit split; choose from "
                              f"{sorted(splits)}")
        if split.startswith("mini") != version.endswith("mini"):
            raise ConfigError(f"split {split!r} does not belong to version {version!r}")

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

        # Categories: detection class index (or None) per category token.
        self._class_of: dict[str, int | None] = {}
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
                self._class_of[cat["name"]] = None
                continue
            det = category_to_detection_name(cat["name"])
            self._class_of[cat["name"]] = None if det is None else NUSCENES_CLASSES.index(det)
        self._attr_index = {a["token"]: (NUSCENES_ATTRIBUTES.index(a["name"])
                                         if a["name"] in NUSCENES_ATTRIBUTES else -1)
                            for a in self.nusc.attribute}

        wanted = set(splits[split])
        scenes = [s for s in self.nusc.scene if s["name"] in wanted]
        if not scenes:
            raise NuScenesFormatError(table_root / "scene.json",
                                      f"no scene of split {split!r} in this dataset")
        self.scene_names = tuple(s["name"] for s in scenes)
        self.sample_tokens: tuple[str, ...] = ()
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
                    if load_images and not path.is_file():
                        if missing_images == "error":
                            raise NuScenesFormatError(path, "image file is missing")
                        self.skipped["missing_image"] += 1
                        logger.warning("%s: image file is missing; item skipped", path)
                        continue
                    items.append((token, cam, sd_token))
                token = sample["next"]
        if not items:
            raise NuScenesFormatError(table_root, f"split {split!r} has no usable images")
        self.sample_tokens = tuple(sample_tokens)
        self._items = items

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
        k = torch.tensor(cs["camera_intrinsic"], dtype=torch.float64)
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
        keep = self._in_image(boxes, k, width, height)
        idx = keep.nonzero().flatten()
        return NuScenesCameraSample(
            image=image, cam_mat=k.float(), boxes=boxes.select(idx), frame=frame,
            timestamp=int(sd["timestamp"]),
            ann_tokens=tuple(anns[i] for i in idx.tolist()),
            visibility=torch.tensor(vis, dtype=torch.long)[idx],
            num_points=torch.tensor(pts, dtype=torch.long)[idx])

    def _in_image(self, boxes: CameraBoxes, k: torch.Tensor, width: int,
                  height: int) -> torch.Tensor:
        """(M,) bool: centre in front and the projected box overlaps the image."""
        if boxes.num_boxes == 0:
            return torch.zeros(0, dtype=torch.bool)
        kf = k.float()
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
    from epropnp_lib.errors import ShapeError

    images = None
    if items and all(it.image is not None for it in items):
        shapes = {tuple(it.image.shape) for it in items if it.image is not None}
        if len(shapes) > 1:
            raise ShapeError(f"images of different sizes {sorted(shapes)} in one batch")
        images = torch.stack([it.image for it in items if it.image is not None])
    return NuScenesBatch(images, torch.stack([it.cam_mat for it in items]),
                         [it.boxes for it in items], [it.frame for it in items])


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResultsMeta:
    """The ``meta`` block of a results file (which modalities the method used)."""

    use_camera: bool = True
    use_lidar: bool = False
    use_radar: bool = False
    use_map: bool = False
    use_external: bool = False

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if not isinstance(value, bool):
                raise ConfigError(f"ResultsMeta.{key} must be a bool, got {value!r}")


class CameraDetections(NamedTuple):
    """Detections of one camera image: boxes in its frame and the frame itself."""

    boxes: CameraBoxes
    frame: CameraFrame


class ResultsSummary(NamedTuple):
    """What :func:`write_results` wrote.

    Attributes:
        path: the results JSON.
        num_samples: samples in the file (all of ``sample_tokens``).
        num_boxes: boxes written.
        num_merged: cross-camera duplicates removed.
        num_truncated: boxes beyond ``max_boxes_per_sample`` dropped (lowest scores).
        num_nan_velocity: boxes whose NaN velocity was written as 0.
        num_default_attribute: boxes given the class's default attribute.
    """

    path: Path
    num_samples: int
    num_boxes: int
    num_merged: int
    num_truncated: int
    num_nan_velocity: int
    num_default_attribute: int


def _attribute_name(label: str, attr: int) -> tuple[str, bool]:
    from nuscenes.eval.detection.utils import detection_name_to_rel_attributes

    relevant = detection_name_to_rel_attributes(label)
    if 0 <= attr < len(NUSCENES_ATTRIBUTES) and NUSCENES_ATTRIBUTES[attr] in relevant:
        return NUSCENES_ATTRIBUTES[attr], False
    default = DEFAULT_ATTRIBUTES[label]
    return default, bool(relevant)


def write_results(
    path: str | os.PathLike[str],
    detections: Mapping[str, Sequence[CameraDetections]],
    *,
    sample_tokens: Sequence[str],
    meta: ResultsMeta | None = None,
    merge_radius: float | None = 1.0,
    max_boxes_per_sample: int = 500,
) -> ResultsSummary:
    """Write camera-frame detections as an official nuScenes detection results JSON.

    Each camera's boxes go to the global frame with :func:`camera_to_global`; the cameras of a
    sample are merged (a box is dropped when a higher-scoring box of the same class from
    *another* camera lies within ``merge_radius`` metres in the ground plane -- the same object
    seen in two overlapping images); every token of ``sample_tokens`` gets a (possibly empty)
    list, as ``DetectionEval`` requires.  Written atomically (temporary file + rename).

    Args:
        path: output JSON.
        detections: sample token -> the :class:`CameraDetections` of its images.
        sample_tokens: all samples of the evaluated split (e.g. ``dataset.sample_tokens``).
        meta: modalities used (default: camera only).
        merge_radius: cross-camera duplicate radius (metres); ``None`` keeps every box.
        max_boxes_per_sample: the devkit's limit; extra lowest-score boxes are dropped.

    Returns:
        :class:`ResultsSummary`.

    Raises:
        NuScenesFormatError: a detection for a sample outside ``sample_tokens``, or a frame of
            another sample (``path`` names the output).
    """
    path = Path(path)
    meta = meta or ResultsMeta()
    wanted = list(dict.fromkeys(sample_tokens))
    extra = set(detections) - set(wanted)
    if extra:
        raise NuScenesFormatError(path, f"detections for {len(extra)} sample(s) outside "
                                        f"sample_tokens, e.g. {sorted(extra)[0]}")
    merged = truncated = nan_vel = defaulted = 0
    results: dict[str, list[dict[str, Any]]] = {}
    total = 0
    for token in wanted:
        rows: list[tuple[float, int, int, list[float], list[float], float, list[float], int]] = []
        for cam_index, det in enumerate(detections.get(token, ())):
            if det.frame.sample_token != token:
                raise NuScenesFormatError(path, f"a frame of sample {det.frame.sample_token} "
                                                f"is listed under sample {token}")
            b = CameraBoxes(*(field.detach().cpu() for field in det.boxes.validate()))
            if b.num_boxes == 0:
                continue
            vel = b.velocity.to(torch.float64)
            bad = ~torch.isfinite(vel).all(-1)
            nan_vel += int(bad.sum())
            vel = torch.where(bad[:, None], torch.zeros_like(vel), vel)
            trans, yaw, vel_g = camera_to_global(b.center, b.yaw, vel, det.frame.cam_to_global)
            for i in range(b.num_boxes):
                rows.append((float(b.scores[i]), cam_index, int(b.labels[i]),
                             trans[i].tolist(), b.size[i].tolist(), float(yaw[i]),
                             vel_g[i].tolist(), int(b.attributes[i])))
        rows.sort(key=lambda r: -r[0])
        kept: list[tuple[float, int, int, list[float], list[float], float, list[float], int]] = []
        for row in rows:
            if merge_radius is not None and any(
                    k[2] == row[2] and k[1] != row[1]
                    and math.dist(k[3][:2], row[3][:2]) < merge_radius for k in kept):
                merged += 1
                continue
            kept.append(row)
        if len(kept) > max_boxes_per_sample:
            truncated += len(kept) - max_boxes_per_sample
            kept = kept[:max_boxes_per_sample]
        out = []
        for score, _, label, trans_i, size, yaw_i, vel_i, attr in kept:
            name = NUSCENES_CLASSES[label]
            attr_name, was_default = _attribute_name(name, attr)
            defaulted += int(was_default)
            out.append({
                "sample_token": token,
                "translation": trans_i,
                "size": size,
                "rotation": [math.cos(yaw_i / 2), 0.0, 0.0, math.sin(yaw_i / 2)],
                "velocity": vel_i,
                "detection_name": name,
                "detection_score": min(1.0, max(0.0, score)),
                "attribute_name": attr_name,
            })
        total += len(out)
        results[token] = out
    if truncated:
        logger.warning("%s: %d boxes beyond %d per sample dropped", path, truncated,
                       max_boxes_per_sample)
    if nan_vel:
        logger.warning("%s: %d boxes with unknown (NaN) velocity written as 0", path, nan_vel)
    with atomic_write(path, "w") as f:
        json.dump({"meta": asdict(meta), "results": results}, f)
    return ResultsSummary(path, len(results), total, merged, truncated, nan_vel, defaulted)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

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
    from nuscenes.eval.detection.constants import TP_METRICS

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
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    results_path = Path(results_path)
    output_dir = Path(output_dir)
    if not results_path.is_file():
        raise NuScenesFormatError(results_path, "results file not found")
    try:
        content = json.loads(results_path.read_text())
    except json.JSONDecodeError as exc:
        raise NuScenesFormatError(results_path, f"not valid JSON ({exc})") from exc
    if not isinstance(content, dict) or not {"meta", "results"} <= set(content):
        raise NuScenesFormatError(results_path, "expected an object with 'meta' and 'results'")
    cfg = config_factory(config_name)
    if nusc is None:
        nusc = load_nuscenes(dataroot, version)
    results = content["results"]
    if isinstance(results, dict) and not any(results.values()):
        from nuscenes.utils.splits import create_splits_scenes

        scenes = set(create_splits_scenes().get(eval_set, ()))
        wanted = {s["token"] for s in nusc.sample
                  if nusc.get("scene", s["scene_token"])["name"] in scenes}
        if set(results) != wanted:  # the check DetectionEval would make
            raise NuScenesEvalError(
                f"{results_path}: the samples of the results ({len(results)}) are not the "
                f"samples of {eval_set} ({len(wanted)})")
        return _no_detection_scores(results_path, output_dir, cfg, content["meta"])
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            ev = DetectionEval(nusc, config=cfg, result_path=str(results_path),
                               eval_set=eval_set, output_dir=str(output_dir), verbose=False)
            metrics, metric_data = ev.evaluate()
    except (AssertionError, ValueError, KeyError) as exc:
        raise NuScenesEvalError(f"{results_path}: DetectionEval rejected the results: "
                                f"{exc!r}") from exc
    finally:
        if captured.getvalue():
            logger.debug("DetectionEval output:\n%s", captured.getvalue())
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
