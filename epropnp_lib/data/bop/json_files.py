"""Readers of the BOP JSON files (``camera.json``, ``scene_camera.json``, ``scene_gt.json``,
``scene_gt_info.json``, ``models/models_info.json``), validated field by field.

BOP stores millimetres; every length these readers return is in metres (:data:`MM_TO_M`).
Matrices are row-major lists in the files.  A missing file, invalid JSON or a malformed field
raises :class:`~epropnp_lib.data.bop.errors.BopDataError` naming the file and the entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from epropnp_lib.data.bop.errors import BopDataError

__all__ = [
    "MM_TO_M",
    "M_TO_MM",
    "BopCamera",
    "BopGt",
    "BopGtInfo",
    "BopModelInfo",
    "BopSceneCamera",
    "read_camera",
    "read_json",
    "read_models_info",
    "read_scene_camera",
    "read_scene_gt",
    "read_scene_gt_info",
]

#: Millimetres (BOP) to metres (epropnp tensors).
MM_TO_M = 1.0e-3
#: Metres to millimetres (what the BOP files store).
M_TO_MM = 1000.0

_T = TypeVar("_T")
#: Parser of one value of a file keyed by ids: ``(path, where, value) -> parsed``.
_Parse = Callable[[Path, str, Any], _T]


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, raising :class:`BopDataError` naming it when missing or invalid."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BopDataError(f"{path}: file not found") from None
    except OSError as exc:
        raise BopDataError(f"{path}: cannot read ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BopDataError(f"{path}: invalid or truncated JSON ({exc})") from exc


def _as_mapping(value: Any, path: Path, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BopDataError(f"{path}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def _int_key(key: str, path: Path) -> int:
    try:
        return int(key)
    except ValueError:
        raise BopDataError(f"{path}: key {key!r} is not an integer id") from None


def _field(entry: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(entry, Mapping):
        raise BopDataError(f"{path}: {where} must be a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise BopDataError(f"{path}: {where}: missing key {key!r}")
    return entry[key]


def _numbers(value: Any, n: int, path: Path, where: str) -> np.ndarray:
    """A flat list of ``n`` finite numbers as float64 ``(n,)``."""
    ok = (isinstance(value, list) and len(value) == n
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    if not ok:
        raise BopDataError(f"{path}: {where}: expected a list of {n} numbers, got {value!r:.80}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise BopDataError(f"{path}: {where}: non-finite value in {value!r:.80}")
    return arr


def _number(value: Any, path: Path, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise BopDataError(f"{path}: {where}: expected a finite number, got {value!r:.80}")
    return float(value)


def _integer(value: Any, path: Path, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BopDataError(f"{path}: {where}: expected an integer, got {value!r:.80}")
    return value


def _read_id_map(path: str | Path, what: str, parse: _Parse[_T]) -> dict[int, _T]:
    """``{id: parse(path, key, value)}`` of a JSON object keyed by integer ids (``what`` names
    the content in errors)."""
    path = Path(path)
    data = _as_mapping(read_json(path), path, what)
    return {_int_key(key, path): parse(path, key, value) for key, value in data.items()}


def _per_annotation(parse: _Parse[_T], noun: str) -> _Parse[list[_T]]:
    """A parser of an image's list of annotations (list order = gt_id) from one of an
    annotation."""

    def parse_list(path: Path, key: str, entries: Any) -> list[_T]:
        if not isinstance(entries, list):
            raise BopDataError(f"{path}: image {key}: expected a list of {noun}")
        return [parse(path, f"image {key}, annotation {gt_id}", entry)
                for gt_id, entry in enumerate(entries)]

    return parse_list


class BopCamera(NamedTuple):
    """``camera.json``: the sensor's nominal intrinsics ``cam_mats (3, 3)`` float64, image size,
    depth scale (depth image units to millimetres)."""

    cam_mats: np.ndarray
    width: int
    height: int
    depth_scale: float


def read_camera(path: str | Path) -> BopCamera:
    """Read a dataset's ``camera.json``."""
    path = Path(path)
    data = _as_mapping(read_json(path), path, "camera")
    fx, fy, cx, cy = (_number(_field(data, k, path, "camera"), path, k)
                      for k in ("fx", "fy", "cx", "cy"))
    cam_mats = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    width = _integer(_field(data, "width", path, "camera"), path, "width")
    height = _integer(_field(data, "height", path, "camera"), path, "height")
    scale = _number(data.get("depth_scale", 1.0), path, "depth_scale")
    return BopCamera(cam_mats, width, height, scale)


class BopSceneCamera(NamedTuple):
    """One entry of ``scene_camera.json``: ``cam_mats (3, 3)`` float64 (the file's ``cam_K``)
    and the depth scale."""

    cam_mats: np.ndarray
    depth_scale: float


def _parse_scene_camera(path: Path, key: str, entry: Any) -> BopSceneCamera:
    where = f"image {key}"
    k = _numbers(_field(entry, "cam_K", path, where), 9, path, f"{where}: cam_K")
    scale = _number(entry.get("depth_scale", 1.0), path, f"{where}: depth_scale")
    return BopSceneCamera(k.reshape(3, 3), scale)


def read_scene_camera(path: str | Path) -> dict[int, BopSceneCamera]:
    """Read ``scene_camera.json``: ``{im_id: BopSceneCamera}``."""
    return _read_id_map(path, "scene_camera", _parse_scene_camera)


class BopGt(NamedTuple):
    """One annotation of ``scene_gt.json``.

    Attributes:
        obj_id: BOP object id.
        R: ``(3, 3)`` float64 rotation model -> camera (``cam_R_m2c``, row-major in the file).
        t: ``(3,)`` float64 translation in **metres** (``cam_t_m2c`` is in millimetres).
    """

    obj_id: int
    R: np.ndarray
    t: np.ndarray


def _parse_gt(path: Path, where: str, entry: Any) -> BopGt:
    rot = _numbers(_field(entry, "cam_R_m2c", path, where), 9, path,
                   f"{where}: cam_R_m2c").reshape(3, 3)
    t = _numbers(_field(entry, "cam_t_m2c", path, where), 3, path, f"{where}: cam_t_m2c")
    obj = _integer(_field(entry, "obj_id", path, where), path, f"{where}: obj_id")
    if abs(np.linalg.det(rot) - 1.0) > 1e-3 or not np.allclose(rot @ rot.T, np.eye(3),
                                                                atol=1e-3):
        raise BopDataError(f"{path}: {where}: cam_R_m2c is not a rotation matrix")
    return BopGt(obj, rot, t * MM_TO_M)


def read_scene_gt(path: str | Path) -> dict[int, list[BopGt]]:
    """Read ``scene_gt.json``: ``{im_id: [BopGt, ...]}`` (list order = gt_id)."""
    return _read_id_map(path, "scene_gt", _per_annotation(_parse_gt, "annotations"))


class BopGtInfo(NamedTuple):
    """One entry of ``scene_gt_info.json`` (pixels; boxes ``(x, y, w, h)``, -1 if invisible)."""

    bbox_obj: tuple[int, int, int, int]
    bbox_visib: tuple[int, int, int, int]
    px_count_all: int
    px_count_valid: int
    px_count_visib: int
    visib_fract: float


def _parse_gt_info(path: Path, where: str, e: Any) -> BopGtInfo:
    boxes: list[tuple[int, int, int, int]] = []
    for name in ("bbox_obj", "bbox_visib"):
        b = _numbers(_field(e, name, path, where), 4, path, f"{where}: {name}")
        boxes.append((int(b[0]), int(b[1]), int(b[2]), int(b[3])))
    counts = [_integer(_field(e, name, path, where), path, f"{where}: {name}")
              for name in ("px_count_all", "px_count_valid", "px_count_visib")]
    fract = _number(_field(e, "visib_fract", path, where), path, f"{where}: visib_fract")
    return BopGtInfo(boxes[0], boxes[1], counts[0], counts[1], counts[2], fract)


def read_scene_gt_info(path: str | Path) -> dict[int, list[BopGtInfo]]:
    """Read ``scene_gt_info.json``: ``{im_id: [BopGtInfo, ...]}`` (same order as scene_gt)."""
    return _read_id_map(path, "scene_gt_info", _per_annotation(_parse_gt_info, "entries"))


class BopModelInfo(NamedTuple):
    """One entry of ``models_info.json``, in **metres**.

    Attributes:
        diameter: largest distance between model vertices.
        min: ``(3,)`` corner of the 3D bounding box; size: ``(3,)`` its extent.
        symmetries_discrete: ``(K, 4, 4)`` rigid symmetry transforms (translation in metres).
        symmetries_continuous: list of ``(axis (3,), offset (3,) metres)``.
    """

    diameter: float
    min: np.ndarray
    size: np.ndarray
    symmetries_discrete: np.ndarray
    symmetries_continuous: list[tuple[np.ndarray, np.ndarray]]


def _parse_model_info(path: Path, key: str, e: Any) -> BopModelInfo:
    where = f"object {key}"
    diameter = _number(_field(e, "diameter", path, where), path, f"{where}: diameter")
    lo = np.array([_number(_field(e, f"min_{a}", path, where), path, f"{where}: min_{a}")
                   for a in "xyz"])
    size = np.array([_number(_field(e, f"size_{a}", path, where), path,
                             f"{where}: size_{a}") for a in "xyz"])
    disc = []
    for i, m in enumerate(e.get("symmetries_discrete", [])):
        mat = _numbers(m, 16, path, f"{where}: symmetries_discrete[{i}]").reshape(4, 4)
        mat[:3, 3] *= MM_TO_M
        disc.append(mat)
    cont = []
    for i, s in enumerate(e.get("symmetries_continuous", [])):
        axis = _numbers(_field(s, "axis", path, f"{where}: symmetries_continuous[{i}]"), 3,
                        path, f"{where}: symmetries_continuous[{i}].axis")
        offset = _numbers(_field(s, "offset", path, f"{where}: symmetries_continuous[{i}]"),
                          3, path, f"{where}: symmetries_continuous[{i}].offset")
        cont.append((axis, offset * MM_TO_M))
    return BopModelInfo(
        diameter * MM_TO_M, lo * MM_TO_M, size * MM_TO_M,
        np.stack(disc) if disc else np.zeros((0, 4, 4)), cont)


def read_models_info(path: str | Path) -> dict[int, BopModelInfo]:
    """Read ``models/models_info.json``: ``{obj_id: BopModelInfo}`` (converted to metres)."""
    return _read_id_map(path, "models_info", _parse_model_info)
