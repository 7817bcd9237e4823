"""The BOP dataset reader: one item per annotated object instance, as a crop around it with
its intrinsics, object-coordinate map and masks.

Units and conventions: every tensor is in **metres**; poses are ``(t, q_wxyz)`` object to OpenCV
camera frame (:mod:`epropnp_lib.conventions`).  BOP boxes are ``(x, y, w, h)`` with ``(x, y)``
the top-left pixel and ``w = x_max - x_min`` (``bop_toolkit.misc.calc_2d_bbox``); pixel centres
are at integer coordinates.  With ``crop_size = S`` an instance becomes the square crop of side
``crop_scale * max(w, h)`` around its box resampled to ``S x S`` (:func:`crop_transform`), with
intrinsics ``A K``; its object-coordinate map is rendered from the model under the ground-truth
pose and masked with the visible mask.  With ``canonical_symmetric`` the pose of an object
with symmetries (models_info.json) is replaced by its canonical equivalent
(:func:`~epropnp_lib.geometry.symmetry.canonical_pose`) before the map is rendered, so that the
target of a symmetric object is a function of its appearance.  With ``box_jitter`` the box a
crop is centred on is moved and scaled at random (:func:`jitter_box`) from a generator seeded
by ``(seed, epoch, index)`` (:meth:`BopDataset.set_epoch`), like the boxes of a 2D detector;
an item still depends on its index and epoch only.  Bad data raises
:class:`BopDataError` naming the file; instances below ``min_visib_fract`` or without a
visible pixel are skipped, counted in :attr:`BopDataset.skipped` and reported in one warning
per reason.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from epropnp_lib.data.bop.errors import BopDataError
from epropnp_lib.data.bop.json_files import (
    MM_TO_M,
    BopGtInfo,
    BopModelInfo,
    read_camera,
    read_models_info,
    read_scene_camera,
    read_scene_gt,
    read_scene_gt_info,
)
from epropnp_lib.data.bop.linemod import LINEMOD_OBJECT_IDS, LINEMOD_OBJECTS, LINEMOD_SYMMETRIC
from epropnp_lib.data.bop.ply import read_ply
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.camera import pixel_affine
from epropnp_lib.geometry.raster import rasterize
from epropnp_lib.geometry.rotations import matrix_to_quat
from epropnp_lib.geometry.symmetry import (
    DEFAULT_CONTINUOUS_STEPS,
    Symmetries,
    canonical_pose,
    symmetry_transforms,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CANONICAL_CONTINUOUS_STEPS",
    "BopConfig",
    "BopDataset",
    "BopInstance",
    "BopModel",
    "BopSample",
    "crop_transform",
    "jitter_box",
]

_SCENE_DIR = re.compile(r"^\d{6}$")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif")
#: Rotations a continuous symmetry is discretised into when picking canonical poses: the pick
#: is within 0.5 degree of the continuous optimum.
CANONICAL_CONTINUOUS_STEPS = 360


@dataclass(frozen=True)
class BopConfig:
    """Options of :class:`BopDataset` (all validated).

    Attributes:
        dataset: sub-folder of the BOP root (``lm``, ``lmo``, ...).
        crop_size: side ``S`` of the square instance crops in pixels; ``0`` returns whole images
            with the original intrinsics.
        crop_scale: crop side = ``crop_scale * max(w, h)`` of the instance box (CDPN uses 1.5).
        bbox: which box the crop is centred on: ``"visib"`` (visible part, what a detector
            sees) or ``"obj"`` (whole silhouette, including occluded and truncated parts).
        min_visib_fract: instances with a smaller visible fraction are skipped and counted.
        render_coords: render the object-coordinate map of each crop (needs model faces).
        num_model_points: number of model points per sample (a fixed, evenly strided subset of
            the vertices so that samples of different objects collate); ``0`` keeps all vertices.
        symmetric: ``"linemod"`` -- ADD-S for the LineMOD eggbox and glue
            (:data:`LINEMOD_SYMMETRIC`), the standard protocol;
            ``"models_info"`` -- ADD-S for every object with symmetries in models_info.json;
            ``"auto"`` -- ``linemod`` for ``lm``/``lmo``, else ``models_info``.
        check_files: verify at construction that every image and mask exists.
        box_jitter: ``j``, random error of the crop boxes as a fraction of the box size (as
            a 2D detector's): the centre moves by up to ``j`` times the box width and height,
            the crop side is scaled by a factor in ``[1 - j, 1 + j]`` (:func:`jitter_box`);
            in ``[0, 0.5]``, ``0`` crops the annotated box exactly.
        canonical_symmetric: give objects with symmetries in models_info.json (whatever
            ``symmetric`` says) their canonical pose (:func:`~epropnp_lib.geometry.symmetry.
            canonical_pose`, rotation closest to the identity) as ``pose`` and as the pose
            their coordinate map is rendered with; ``False`` keeps the annotated pose.
    """

    dataset: str = "lm"
    crop_size: int = 256
    crop_scale: float = 1.5
    bbox: str = "visib"
    min_visib_fract: float = 0.0
    render_coords: bool = True
    num_model_points: int = 0
    symmetric: str = "auto"
    check_files: bool = True
    box_jitter: float = 0.0
    canonical_symmetric: bool = False

    def __post_init__(self) -> None:
        if not self.dataset or "/" in self.dataset:
            raise ConfigError(f"BopConfig.dataset must be a folder name, got {self.dataset!r}")
        if self.crop_size < 0:
            raise ConfigError(f"BopConfig.crop_size must be >= 0, got {self.crop_size}")
        if not self.crop_scale > 0:
            raise ConfigError(f"BopConfig.crop_scale must be positive, got {self.crop_scale}")
        if self.bbox not in ("visib", "obj"):
            raise ConfigError(f"BopConfig.bbox must be 'visib' or 'obj', got {self.bbox!r}")
        if not 0.0 <= self.min_visib_fract <= 1.0:
            raise ConfigError(
                f"BopConfig.min_visib_fract must lie in [0, 1], got {self.min_visib_fract}")
        if self.num_model_points < 0:
            raise ConfigError(
                f"BopConfig.num_model_points must be >= 0, got {self.num_model_points}")
        if not 0.0 <= self.box_jitter <= 0.5:
            raise ConfigError(f"BopConfig.box_jitter must lie in [0, 0.5], got {self.box_jitter}")
        if self.symmetric not in ("auto", "linemod", "models_info"):
            raise ConfigError("BopConfig.symmetric must be 'auto', 'linemod' or 'models_info', "
                              f"got {self.symmetric!r}")


@dataclass(frozen=True)
class BopModel:
    """An object model in metres (see :func:`read_ply`, :func:`read_models_info`).

    Attributes:
        obj_id: BOP object id; name: LineMOD name for lm/lmo, else ``obj_<id>``.
        vertices: ``(V, 3)`` float32 metres; faces: ``(F, 3)`` int64;
        colors: ``(V, 3)`` float32 in [0, 1] or ``None``.
        info: the models_info.json entry (metres); diameter: ``info.diameter``.
        symmetric: evaluate with ADD-S (see :attr:`BopConfig.symmetric`).

    :meth:`symmetries` lists the rigid symmetries of ``info`` (whatever ``symmetric`` says).
    """

    obj_id: int
    name: str
    vertices: torch.Tensor
    faces: torch.Tensor
    colors: torch.Tensor | None
    info: BopModelInfo
    symmetric: bool

    @property
    def diameter(self) -> float:
        return self.info.diameter

    def symmetries(self, num_continuous: int = DEFAULT_CONTINUOUS_STEPS) -> Symmetries:
        """The model's symmetries from models_info.json, identity first: ``rotations (S, 3,
        3)``, ``translations (S, 3)`` metres, float64; continuous ones discretised into
        ``num_continuous`` steps (:func:`~epropnp_lib.geometry.symmetry.symmetry_transforms`).
        """
        return symmetry_transforms(self.info.symmetries_discrete,
                                   self.info.symmetries_continuous, num_continuous)


class BopInstance(NamedTuple):
    """Index entry of one annotated object instance."""

    scene_id: int
    im_id: int
    gt_id: int
    obj_id: int
    cam_mats: np.ndarray  # (3, 3) float64
    R: np.ndarray  # (3, 3) float64
    t: np.ndarray  # (3,) float64 metres
    info: BopGtInfo


class BopSample(NamedTuple):
    """One object instance, as :meth:`BopDataset.__getitem__` returns it.

    The first six fields match :class:`epropnp_lib.generators.objects.CropSample`.

    Attributes:
        image: ``(3, S, S)`` float32 RGB in [0, 1] (``(3, H, W)`` whole image if crop_size 0).
        coords: ``(3, S, S)`` float32 object coordinates in metres at pixels of the visible
            mask, 0 elsewhere (all 0 when ``render_coords`` is off).
        mask: ``(1, S, S)`` float32 visible mask (``mask_visib``).
        pose: ``(7,)`` float32 ground-truth pose ``(t [m], q_wxyz)``.
        cam_mats: ``(3, 3)`` float32 intrinsics of the crop (``A K``) or of the image.
        object_index: int64 index into :attr:`BopDataset.object_ids`.
        mask_full: ``(1, S, S)`` float32 full silhouette (``mask``).
        obj_id: int64 BOP object id.
        diameter: float32 object diameter in metres.
        symmetric: bool, evaluate with ADD-S.
        model_points: ``(P, 3)`` float32 model points in metres.
        bbox: ``(4,)`` float32 ``(x, y, w, h)`` box the crop is centred on (image pixels).
        visib_fract: float32 visible fraction from scene_gt_info.json.
        scene_id, im_id, gt_id: int64 BOP identifiers.
    """

    image: torch.Tensor
    coords: torch.Tensor
    mask: torch.Tensor
    pose: torch.Tensor
    cam_mats: torch.Tensor
    object_index: torch.Tensor
    mask_full: torch.Tensor
    obj_id: torch.Tensor
    diameter: torch.Tensor
    symmetric: torch.Tensor
    model_points: torch.Tensor
    bbox: torch.Tensor
    visib_fract: torch.Tensor
    scene_id: torch.Tensor
    im_id: torch.Tensor
    gt_id: torch.Tensor


def crop_transform(bbox: Sequence[float], size: int, scale: float) -> np.ndarray:
    """Affine map ``A (3, 3)`` from image to crop pixels for a box ``(x, y, w, h)``.

    The box spans the pixel centres ``x .. x + w`` and ``y .. y + h`` (BOP convention), i.e.
    ``w + 1`` by ``h + 1`` pixels centred on ``(x + w / 2, y + h / 2)``.  The crop is the square
    of side ``scale * (max(w, h) + 1)`` pixels around that centre, resampled to ``size x size``;
    its continuous extent maps to ``[-0.5, size - 0.5]`` so that pixel centres stay at integer
    coordinates (as in :func:`cv2.warpAffine`).  The crop's intrinsics are ``A @ K``.
    """
    x, y, w, h = (float(v) for v in bbox)
    side = scale * (max(w, h) + 1.0)
    cx, cy = x + 0.5 * w, y + 0.5 * h
    return pixel_affine(size / side, (cx - 0.5 * side, cy - 0.5 * side)).numpy()


def jitter_box(box: Sequence[float], jitter: float, rng: np.random.Generator
               ) -> tuple[float, float, float, float]:
    """A BOP box ``(x, y, w, h)`` (pixel centres ``x .. x + w``) moved and scaled at random.

    The centre moves by ``u * (w + 1, h + 1)`` with ``u`` uniform in ``[-jitter, jitter]`` per
    axis; both sides' pixel extents ``w + 1`` and ``h + 1`` are scaled by one factor uniform in
    ``[1 - jitter, 1 + jitter]``, so that the side of :func:`crop_transform`'s square scales by
    it too.  Three draws from ``rng``.
    """
    x, y, w, h = (float(v) for v in box)
    du, dv, k = rng.uniform(-jitter, jitter, size=3)
    cx, cy = x + 0.5 * w + du * (w + 1.0), y + 0.5 * h + dv * (h + 1.0)
    w2, h2 = (w + 1.0) * (1.0 + k) - 1.0, (h + 1.0) * (1.0 + k) - 1.0
    return cx - 0.5 * w2, cy - 0.5 * h2, w2, h2


class BopDataset(Dataset[BopSample]):
    """Object instances of one split of a BOP dataset (see the module docstring).

    Args:
        root: the BOP root folder holding ``<config.dataset>/``.
        split: split folder name (``test``, ``train``, ``train_pbr``, ``val``, ...).
        objects: object ids (or LineMOD names) to keep; ``None`` keeps every object of
            models_info.json.  Unknown ids raise :class:`BopDataError`.
        config: :class:`BopConfig`.
        scenes: scene ids to read (default: every 6-digit folder of the split).
        images: optional ``{scene_id: image ids}`` to keep (e.g. the standard LineMOD
            train/test split of Brachmann et al., which the BOP ``lm`` test folders do not
            encode); scenes absent from it are read whole.
        seed: seed of the box jitter (``config.box_jitter``).

    Attributes:
        object_ids: sorted kept object ids (``object_index`` indexes this).
        models: ``{obj_id: BopModel}``.
        instances: the index (:class:`BopInstance` per sample).
        skipped: ``{reason: count}`` of instances left out.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        objects: Iterable[int | str] | None = None,
        config: BopConfig | None = None,
        scenes: Iterable[int] | None = None,
        images: Mapping[int, Iterable[int]] | None = None,
        seed: int = 0,
    ) -> None:
        self.config = cfg = config or BopConfig()
        self.seed = seed
        self.epoch = 0
        self.root = Path(root) / cfg.dataset
        if not self.root.is_dir():
            raise BopDataError(f"{self.root}: BOP dataset folder not found")
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise BopDataError(f"{self.split_dir}: split folder not found")
        models_dir = self.root / "models"
        info_path = models_dir / "models_info.json"
        infos = read_models_info(info_path)
        self.object_ids = self._resolve_objects(objects, infos, info_path)
        self.camera = read_camera(self.root / "camera.json")
        self.models = {o: self._load_model(o, infos[o], models_dir) for o in self.object_ids}
        self.skipped: Counter[str] = Counter()
        self.instances: list[BopInstance] = []
        scene_ids = self._scene_ids(scenes)
        keep = {int(k): {int(i) for i in v} for k, v in images.items()} if images else {}
        for scene_id in scene_ids:
            self._index_scene(scene_id, set(infos), keep.get(scene_id))
        for reason, n in sorted(self.skipped.items()):
            logger.warning("%s: skipped %d instance(s): %s", self.split_dir, n, reason)
        if not self.instances:
            raise BopDataError(
                f"{self.split_dir}: no instance of objects {list(self.object_ids)} in "
                f"{len(scene_ids)} scene(s) (skipped: {dict(self.skipped)})")
        self._index_of = {o: i for i, o in enumerate(self.object_ids)}
        self._points = {o: self._model_points(m) for o, m in self.models.items()}
        self._symmetries = ({o: m.symmetries(CANONICAL_CONTINUOUS_STEPS)
                             for o, m in self.models.items()}
                            if cfg.canonical_symmetric else {})

    # -- construction ------------------------------------------------------------------------

    def _resolve_objects(self, objects: Iterable[int | str] | None,
                         infos: Mapping[int, BopModelInfo], info_path: Path) -> tuple[int, ...]:
        if objects is None:
            return tuple(sorted(infos))
        ids = []
        for o in objects:
            if isinstance(o, str):
                if o not in LINEMOD_OBJECT_IDS:
                    raise BopDataError(f"{info_path}: unknown object name {o!r} (LineMOD names: "
                                       f"{', '.join(LINEMOD_OBJECT_IDS)})")
                o = LINEMOD_OBJECT_IDS[o]
            if o not in infos:
                raise BopDataError(f"{info_path}: unknown object id {o} (known: "
                                   f"{sorted(infos)})")
            ids.append(int(o))
        if not ids:
            raise BopDataError(f"{info_path}: no object selected")
        return tuple(sorted(set(ids)))

    def _is_symmetric(self, obj_id: int, info: BopModelInfo) -> bool:
        mode = self.config.symmetric
        if mode == "auto":
            mode = "linemod" if self.config.dataset in ("lm", "lmo") else "models_info"
        if mode == "linemod":
            return LINEMOD_OBJECTS.get(obj_id) in LINEMOD_SYMMETRIC
        return bool(len(info.symmetries_discrete) or info.symmetries_continuous)

    def _load_model(self, obj_id: int, info: BopModelInfo, models_dir: Path) -> BopModel:
        path = models_dir / f"obj_{obj_id:06d}.ply"
        mesh = read_ply(path)
        if len(mesh.vertices) == 0:
            raise BopDataError(f"{path}: model has no vertex")
        if self.config.render_coords and len(mesh.faces) == 0:
            raise BopDataError(f"{path}: model has no faces; coordinate maps need a mesh "
                               "(set render_coords=False to read a point cloud)")
        name = (LINEMOD_OBJECTS.get(obj_id, f"obj_{obj_id:06d}")
                if self.config.dataset in ("lm", "lmo") else f"obj_{obj_id:06d}")
        colors = (torch.from_numpy(mesh.colors.astype(np.float32) / 255.0)
                  if mesh.colors is not None else None)
        return BopModel(
            obj_id=obj_id,
            name=name,
            vertices=torch.from_numpy((mesh.vertices * MM_TO_M).astype(np.float32)),
            faces=torch.from_numpy(mesh.faces.astype(np.int64)),
            colors=colors,
            info=info,
            symmetric=self._is_symmetric(obj_id, info),
        )

    def _model_points(self, model: BopModel) -> torch.Tensor:
        n = self.config.num_model_points
        v = model.vertices
        if n == 0 or n >= len(v):
            return v if n == 0 else v[torch.arange(n) % len(v)]
        return v[torch.linspace(0, len(v) - 1, n).round().long()]

    def _scene_ids(self, scenes: Iterable[int] | None) -> list[int]:
        present = sorted(int(p.name) for p in self.split_dir.iterdir()
                         if p.is_dir() and _SCENE_DIR.match(p.name))
        if scenes is None:
            if not present:
                raise BopDataError(f"{self.split_dir}: no scene folder (6-digit names)")
            return present
        wanted = sorted(set(int(s) for s in scenes))
        for s in wanted:
            if s not in present:
                raise BopDataError(f"{self.split_dir / f'{s:06d}'}: scene folder not found")
        return wanted

    def _index_scene(self, scene_id: int, known_objects: set[int],
                     keep_images: set[int] | None) -> None:
        scene_dir = self.split_dir / f"{scene_id:06d}"
        gt_path = scene_dir / "scene_gt.json"
        scene_gt = read_scene_gt(gt_path)
        if not scene_gt:
            raise BopDataError(f"{gt_path}: empty scene (no image annotated)")
        cam_path = scene_dir / "scene_camera.json"
        scene_cam = read_scene_camera(cam_path)
        info_path = scene_dir / "scene_gt_info.json"
        gt_info = read_scene_gt_info(info_path)
        wanted = set(self.object_ids)
        rgb_files = self._listing(scene_dir / "rgb")
        mask_files = self._listing(scene_dir / "mask_visib")
        full_files = self._listing(scene_dir / "mask")
        if keep_images is not None and not keep_images <= set(scene_gt):
            missing = sorted(keep_images - set(scene_gt))[:5]
            raise BopDataError(f"{gt_path}: requested images {missing} are not annotated")
        for im_id in sorted(scene_gt):
            if keep_images is not None and im_id not in keep_images:
                continue
            gts = scene_gt[im_id]
            if im_id not in scene_cam:
                raise BopDataError(f"{cam_path}: no entry for image {im_id} of scene_gt.json")
            infos = gt_info.get(im_id)
            if infos is None or len(infos) != len(gts):
                raise BopDataError(
                    f"{info_path}: image {im_id} has {0 if infos is None else len(infos)} "
                    f"entries but scene_gt.json has {len(gts)}")
            for gt_id, (gt, info) in enumerate(zip(gts, infos, strict=True)):
                if gt.obj_id not in known_objects:
                    raise BopDataError(f"{gt_path}: image {im_id}, annotation {gt_id}: unknown "
                                       f"object id {gt.obj_id} (not in models_info.json)")
                if gt.obj_id not in wanted:
                    continue
                if info.px_count_visib <= 0:
                    self.skipped["no visible pixel"] += 1
                    continue
                if info.visib_fract < self.config.min_visib_fract:
                    self.skipped[f"visib_fract < {self.config.min_visib_fract}"] += 1
                    continue
                box = info.bbox_visib if self.config.bbox == "visib" else info.bbox_obj
                if box[2] < 0 or box[3] < 0:
                    raise BopDataError(f"{info_path}: image {im_id}, annotation {gt_id}: "
                                       f"invalid box {list(box)} for a visible instance")
                if self.config.check_files:
                    self._image_path(scene_dir, im_id, rgb_files)
                    for folder, files in (("mask_visib", mask_files), ("mask", full_files)):
                        name = f"{im_id:06d}_{gt_id:06d}.png"
                        if name not in files:
                            raise BopDataError(f"{scene_dir / folder / name}: mask not found")
                self.instances.append(BopInstance(
                    scene_id, im_id, gt_id, gt.obj_id, scene_cam[im_id].cam_mats, gt.R, gt.t, info))

    @staticmethod
    def _listing(folder: Path) -> set[str]:
        try:
            return {p.name for p in folder.iterdir()}
        except FileNotFoundError:
            raise BopDataError(f"{folder}: folder not found") from None

    @staticmethod
    def _image_path(scene_dir: Path, im_id: int, files: set[str] | None = None) -> Path:
        for ext in _IMAGE_EXTS:
            name = f"{im_id:06d}{ext}"
            if (name in files) if files is not None else (scene_dir / "rgb" / name).is_file():
                return scene_dir / "rgb" / name
        raise BopDataError(f"{scene_dir / 'rgb' / f'{im_id:06d}.png'}: image not found")

    # -- access ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.instances)

    def set_epoch(self, epoch: int) -> None:
        """Draw the box jitter of the items of ``epoch`` (the training engine calls it before
        each epoch, before its loader workers start)."""
        self.epoch = epoch

    def model(self, obj_id: int) -> BopModel:
        """The :class:`BopModel` of ``obj_id``."""
        return self.models[obj_id]

    def image_path(self, scene_id: int, im_id: int) -> Path:
        """The colour image file of an image of the split (``rgb/<im>.png`` or ``.jpg``)."""
        return self._image_path(self.split_dir / f"{scene_id:06d}", im_id)

    def __getitem__(self, index: int) -> BopSample:
        inst = self.instances[index]
        scene_dir = self.split_dir / f"{inst.scene_id:06d}"
        image = _read_image(self._image_path(scene_dir, inst.im_id), color=True)
        name = f"{inst.im_id:06d}_{inst.gt_id:06d}.png"
        mask = _read_image(scene_dir / "mask_visib" / name, color=False) > 0
        mask_full = _read_image(scene_dir / "mask" / name, color=False) > 0
        h, w = image.shape[:2]
        if mask.shape != (h, w) or mask_full.shape != (h, w):
            raise BopDataError(f"{scene_dir / 'mask_visib' / name}: mask size {mask.shape} "
                               f"differs from the image's {(h, w)}")
        box: Sequence[float] = (inst.info.bbox_visib if self.config.bbox == "visib"
                                else inst.info.bbox_obj)
        if self.config.box_jitter > 0:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            box = jitter_box(box, self.config.box_jitter, rng)
        cam_mats = inst.cam_mats
        size = self.config.crop_size
        if size > 0:
            a = crop_transform(box, size, self.config.crop_scale)
            cam_mats = a @ cam_mats
            image = cv2.warpAffine(image, a[:2], (size, size), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0))
            mask, mask_full = (
                cv2.warpAffine(m.astype(np.uint8), a[:2], (size, size), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0)) > 0
                for m in (mask, mask_full))
        model = self.models[inst.obj_id]
        rot, trans = torch.from_numpy(inst.R), torch.from_numpy(inst.t)
        sym = self._symmetries.get(inst.obj_id)
        if sym is not None and sym.num > 1:
            rot, trans, _ = canonical_pose(rot, trans, sym)
        pose = torch.cat((trans, matrix_to_quat(rot))).float()
        cam_t = torch.from_numpy(cam_mats).float()
        mask_t = torch.from_numpy(mask).float().unsqueeze(0)
        out_h, out_w = mask.shape
        if self.config.render_coords:
            ras = rasterize(model.vertices, model.faces, model.vertices, pose[None],
                            cam_t[None], out_h, out_w)
            coords = ras.attributes[0] * mask_t
        else:
            coords = torch.zeros(3, out_h, out_w)
        return BopSample(
            image=torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
            coords=coords,
            mask=mask_t,
            pose=pose,
            cam_mats=cam_t,
            object_index=_long(self._index_of[inst.obj_id]),
            mask_full=torch.from_numpy(mask_full).float().unsqueeze(0),
            obj_id=_long(inst.obj_id),
            diameter=torch.tensor(model.diameter, dtype=torch.float32),
            symmetric=torch.tensor(model.symmetric),
            model_points=self._points[inst.obj_id],
            bbox=torch.tensor(box, dtype=torch.float32),
            visib_fract=torch.tensor(inst.info.visib_fract, dtype=torch.float32),
            scene_id=_long(inst.scene_id),
            im_id=_long(inst.im_id),
            gt_id=_long(inst.gt_id),
        )


def _long(value: int) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.int64)


def _read_image(path: Path, color: bool) -> np.ndarray:
    """``(H, W, 3)`` RGB uint8 or ``(H, W)`` grey uint8 (OpenCV converts 16-bit files to 8-bit
    with these flags); :class:`BopDataError` if missing or unreadable."""
    if not path.is_file():
        raise BopDataError(f"{path}: image not found")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise BopDataError(f"{path}: cannot decode image (corrupt or truncated)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if color else img
