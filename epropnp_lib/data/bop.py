"""Reader of 6DoF pose datasets in the BOP layout (LineMOD ``lm``, Occluded LineMOD ``lmo``, ...).

The on-disk layout is the BOP-scenewise format of the bop_toolkit
(``docs/bop_datasets_format.md``)::

    <root>/<dataset>/                       e.g. <root>/lm/
        camera.json                         {"cx", "cy", "depth_scale", "fx", "fy", "height",
                                              "width"}
        models/models_info.json             {"<obj_id>": {"diameter", "min_x", "min_y", "min_z",
                                              "size_x", "size_y", "size_z",
                                              ["symmetries_discrete"], ["symmetries_continuous"]}}
        models/obj_<obj_id 6 digits>.ply    ASCII or binary PLY: x y z [nx ny nz] [red green blue],
                                            triangle faces ``vertex_indices``; millimetres
        <split>/<scene_id 6 digits>/        split = test | train | train_pbr | val ...
            scene_camera.json               {"<im_id>": {"cam_K": [9 floats, row-major],
                                              "depth_scale", ["cam_R_w2c"], ["cam_t_w2c"]}}
            scene_gt.json                   {"<im_id>": [{"cam_R_m2c": [9, row-major],
                                              "cam_t_m2c": [3, mm], "obj_id": int}, ...]}
            scene_gt_info.json              {"<im_id>": [{"bbox_obj": [x, y, w, h], "bbox_visib",
                                              "px_count_all", "px_count_valid", "px_count_visib",
                                              "visib_fract"}, ...]}  (same order as scene_gt)
            rgb/<im_id 6 digits>.png|.jpg
            mask/<im_id>_<gt_id>.png        full silhouette of annotation gt_id (0 / 255)
            mask_visib/<im_id>_<gt_id>.png  its visible part
            depth/<im_id>.png               (not read)

**Units.**  BOP stores millimetres (models, ``cam_t_m2c``, diameters, models_info boxes).  Every
tensor this module returns is in **metres** (multiplied by :data:`MM_TO_M`); poses follow
:mod:`epropnp_lib.conventions` (``(t, q_wxyz)``, object to OpenCV camera frame).

**Boxes.**  ``bbox_*`` are ``(x, y, w, h)`` with ``(x, y)`` the top-left pixel and ``w, h`` the
differences of the extreme pixel indices (``w = x_max - x_min`` as ``bop_toolkit.misc.calc_2d_bbox``
computes it); ``[-1, -1, -1, -1]`` marks an invisible instance.  Pixel centres are at integer
coordinates (the convention of :mod:`epropnp_lib.geometry.raster` and OpenCV).

**Crops.**  With ``crop_size = S`` every instance becomes a square crop of side
``crop_scale * max(w, h)`` pixels centred on its box, resampled to ``S x S``; the crop's
intrinsic matrix is ``A K`` where ``A`` is the affine map from image to crop pixels, so that
projecting with it lands on crop pixels (the dense network's input).  Object-coordinate maps are
rendered from the model with :func:`epropnp_lib.geometry.raster.rasterize` under the ground-truth
pose and the crop camera, and masked with the visible mask.

**Bad data** raises :class:`BopDataError` (a :class:`~epropnp_lib.errors.ConfigError`) naming the
file: a missing file or image, invalid or truncated JSON/PLY, an unknown object id, an empty
scene, inconsistent annotations.  Instances a user expects to be filtered (visible fraction
below ``min_visib_fract``, no visible pixel) are skipped, counted in
:attr:`BopDataset.skipped`, and reported in one warning per reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.camera import pixel_affine
from epropnp_lib.geometry.rotations import matrix_to_quat

logger = logging.getLogger(__name__)

__all__ = [
    "LINEMOD_OBJECTS",
    "LINEMOD_SYMMETRIC",
    "LINEMOD_OBJECT_IDS",
    "LINEMOD_13",
    "MM_TO_M",
    "M_TO_MM",
    "BopCamera",
    "BopConfig",
    "BopDataError",
    "BopDataset",
    "BopGt",
    "BopGtInfo",
    "BopModel",
    "BopSample",
    "BopSceneCamera",
    "PlyMesh",
    "read_camera",
    "read_json",
    "read_models_info",
    "read_ply",
    "read_scene_camera",
    "read_scene_gt",
    "read_scene_gt_info",
]

#: Millimetres (BOP) to metres (epropnp tensors).
MM_TO_M = 1.0e-3
#: Metres to millimetres (what the BOP files store).
M_TO_MM = 1000.0

#: BOP ``lm`` object ids and the LineMOD object names.
LINEMOD_OBJECTS: dict[int, str] = {
    1: "ape", 2: "benchvise", 3: "bowl", 4: "camera", 5: "can", 6: "cat", 7: "cup",
    8: "driller", 9: "duck", 10: "eggbox", 11: "glue", 12: "holepuncher", 13: "iron",
    14: "lamp", 15: "phone",
}
#: LineMOD object name -> BOP object id.
LINEMOD_OBJECT_IDS: dict[str, int] = {name: i for i, name in LINEMOD_OBJECTS.items()}
#: LineMOD objects evaluated with ADD-S (standard protocol; BOP ``lm`` object ids 10 and 11).
LINEMOD_SYMMETRIC: tuple[str, ...] = ("eggbox", "glue")
#: The 13 objects of the standard LineMOD protocol (bowl and cup excluded).
LINEMOD_13: tuple[int, ...] = tuple(i for i in LINEMOD_OBJECTS if i not in (3, 7))

_SCENE_DIR = re.compile(r"^\d{6}$")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif")


class BopDataError(ConfigError):
    """Missing, malformed or inconsistent BOP data; the message names the file."""


# --------------------------------------------------------------------------------------------
# JSON files
# --------------------------------------------------------------------------------------------


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


class BopCamera(NamedTuple):
    """``camera.json``: the sensor's nominal intrinsics ``K (3, 3)`` float64, image size, depth
    scale (depth image units to millimetres)."""

    K: np.ndarray
    width: int
    height: int
    depth_scale: float


def read_camera(path: str | Path) -> BopCamera:
    """Read a dataset's ``camera.json``."""
    path = Path(path)
    data = _as_mapping(read_json(path), path, "camera")
    fx, fy, cx, cy = (_number(_field(data, k, path, "camera"), path, k)
                      for k in ("fx", "fy", "cx", "cy"))
    k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    width = _integer(_field(data, "width", path, "camera"), path, "width")
    height = _integer(_field(data, "height", path, "camera"), path, "height")
    scale = _number(data.get("depth_scale", 1.0), path, "depth_scale")
    return BopCamera(k, width, height, scale)


class BopSceneCamera(NamedTuple):
    """One entry of ``scene_camera.json``: ``K (3, 3)`` float64 and the depth scale."""

    K: np.ndarray
    depth_scale: float


def read_scene_camera(path: str | Path) -> dict[int, BopSceneCamera]:
    """Read ``scene_camera.json``: ``{im_id: BopSceneCamera}``."""
    path = Path(path)
    data = _as_mapping(read_json(path), path, "scene_camera")
    out: dict[int, BopSceneCamera] = {}
    for key, entry in data.items():
        im_id = _int_key(key, path)
        where = f"image {key}"
        k = _numbers(_field(entry, "cam_K", path, where), 9, path, f"{where}: cam_K")
        scale = _number(entry.get("depth_scale", 1.0), path, f"{where}: depth_scale")
        out[im_id] = BopSceneCamera(k.reshape(3, 3), scale)
    return out


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


def read_scene_gt(path: str | Path) -> dict[int, list[BopGt]]:
    """Read ``scene_gt.json``: ``{im_id: [BopGt, ...]}`` (list order = gt_id)."""
    path = Path(path)
    data = _as_mapping(read_json(path), path, "scene_gt")
    out: dict[int, list[BopGt]] = {}
    for key, entries in data.items():
        im_id = _int_key(key, path)
        if not isinstance(entries, list):
            raise BopDataError(f"{path}: image {key}: expected a list of annotations")
        gts = []
        for gt_id, entry in enumerate(entries):
            where = f"image {key}, annotation {gt_id}"
            rot = _numbers(_field(entry, "cam_R_m2c", path, where), 9, path,
                           f"{where}: cam_R_m2c").reshape(3, 3)
            t = _numbers(_field(entry, "cam_t_m2c", path, where), 3, path, f"{where}: cam_t_m2c")
            obj = _integer(_field(entry, "obj_id", path, where), path, f"{where}: obj_id")
            if abs(np.linalg.det(rot) - 1.0) > 1e-3 or not np.allclose(rot @ rot.T, np.eye(3),
                                                                        atol=1e-3):
                raise BopDataError(f"{path}: {where}: cam_R_m2c is not a rotation matrix")
            gts.append(BopGt(obj, rot, t * MM_TO_M))
        out[im_id] = gts
    return out


class BopGtInfo(NamedTuple):
    """One entry of ``scene_gt_info.json`` (pixels; boxes ``(x, y, w, h)``, -1 if invisible)."""

    bbox_obj: tuple[int, int, int, int]
    bbox_visib: tuple[int, int, int, int]
    px_count_all: int
    px_count_valid: int
    px_count_visib: int
    visib_fract: float


def read_scene_gt_info(path: str | Path) -> dict[int, list[BopGtInfo]]:
    """Read ``scene_gt_info.json``: ``{im_id: [BopGtInfo, ...]}`` (same order as scene_gt)."""
    path = Path(path)
    data = _as_mapping(read_json(path), path, "scene_gt_info")
    out: dict[int, list[BopGtInfo]] = {}
    for key, entries in data.items():
        im_id = _int_key(key, path)
        if not isinstance(entries, list):
            raise BopDataError(f"{path}: image {key}: expected a list of entries")
        infos = []
        for gt_id, e in enumerate(entries):
            where = f"image {key}, annotation {gt_id}"
            boxes: list[tuple[int, int, int, int]] = []
            for name in ("bbox_obj", "bbox_visib"):
                b = _numbers(_field(e, name, path, where), 4, path, f"{where}: {name}")
                boxes.append((int(b[0]), int(b[1]), int(b[2]), int(b[3])))
            counts = [_integer(_field(e, name, path, where), path, f"{where}: {name}")
                      for name in ("px_count_all", "px_count_valid", "px_count_visib")]
            fract = _number(_field(e, "visib_fract", path, where), path, f"{where}: visib_fract")
            infos.append(BopGtInfo(boxes[0], boxes[1], counts[0], counts[1], counts[2], fract))
        out[im_id] = infos
    return out


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


def read_models_info(path: str | Path) -> dict[int, BopModelInfo]:
    """Read ``models/models_info.json``: ``{obj_id: BopModelInfo}`` (converted to metres)."""
    path = Path(path)
    data = _as_mapping(read_json(path), path, "models_info")
    out: dict[int, BopModelInfo] = {}
    for key, e in data.items():
        obj = _int_key(key, path)
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
        out[obj] = BopModelInfo(
            diameter * MM_TO_M, lo * MM_TO_M, size * MM_TO_M,
            np.stack(disc) if disc else np.zeros((0, 4, 4)), cont)
    return out


# --------------------------------------------------------------------------------------------
# PLY meshes
# --------------------------------------------------------------------------------------------

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class PlyMesh(NamedTuple):
    """A triangle mesh read from a PLY file, in the file's units (BOP: millimetres).

    Attributes:
        vertices: ``(V, 3)`` float64.
        normals: ``(V, 3)`` float64 or ``None``.
        colors: ``(V, 3)`` uint8 (red, green, blue) or ``None``.
        faces: ``(F, 3)`` int64 (polygons are fan-triangulated; ``(0, 3)`` for a point cloud).
    """

    vertices: np.ndarray
    normals: np.ndarray | None
    colors: np.ndarray | None
    faces: np.ndarray


class _PlyElement(NamedTuple):
    name: str
    size: int
    # (name, dtype) for scalars, (name, count dtype, item dtype) for lists
    props: list[tuple[str, ...]]


def _parse_ply_header(data: bytes, path: Path) -> tuple[str, list[_PlyElement], int]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise BopDataError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    nl = data.find(b"\n", end)
    body = len(data) if nl < 0 else nl + 1
    fmt = ""
    elements: list[_PlyElement] = []
    for raw in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        tok = raw.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        try:
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "element":
                elements.append(_PlyElement(tok[1], int(tok[2]), []))
            elif tok[0] == "property" and tok[1] == "list":
                elements[-1].props.append((tok[4], _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]]))
            elif tok[0] == "property":
                elements[-1].props.append((tok[2], _PLY_TYPES[tok[1]]))
            else:
                raise ValueError(raw)
        except (IndexError, KeyError, ValueError):
            raise BopDataError(f"{path}: malformed PLY header line {raw!r}") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise BopDataError(f"{path}: unsupported PLY format {fmt!r}")
    return fmt, elements, body


def _triangulate(polys: list[list[int]], path: Path) -> np.ndarray:
    tris: list[list[int]] = []
    for p in polys:
        if len(p) < 3:
            raise BopDataError(f"{path}: a face has fewer than 3 vertices")
        tris.extend([p[0], p[i], p[i + 1]] for i in range(1, len(p) - 1))
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def _read_ascii(text: list[bytes], elements: list[_PlyElement], path: Path
                ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    line = 0
    for el in elements:
        rows = text[line:line + el.size]
        if len(rows) < el.size:
            raise BopDataError(f"{path}: truncated PLY: element {el.name!r} has {len(rows)} of "
                               f"{el.size} lines")
        line += el.size
        has_list = any(len(p) == 3 for p in el.props)
        if not has_list:
            try:
                vals = np.array(b" ".join(rows).split(), dtype=np.float64)
                vals = vals.reshape(el.size, len(el.props))
            except ValueError:
                raise BopDataError(f"{path}: malformed PLY data in element {el.name!r}") from None
            out[el.name] = {p[0]: vals[:, i] for i, p in enumerate(el.props)}
            continue
        lists: dict[str, list[list[int]]] = {p[0]: [] for p in el.props if len(p) == 3}
        for r in rows:
            tok = r.split()
            pos = 0
            try:
                for p in el.props:
                    if len(p) == 3:
                        n = int(tok[pos])
                        lists[p[0]].append([int(float(v)) for v in tok[pos + 1:pos + 1 + n]])
                        if len(lists[p[0]][-1]) != n:
                            raise ValueError
                        pos += 1 + n
                    else:
                        pos += 1
            except (IndexError, ValueError):
                raise BopDataError(f"{path}: malformed PLY line in element {el.name!r}") from None
        out[el.name] = dict(lists)
    return out


def _read_binary(body: bytes, elements: list[_PlyElement], endian: str, path: Path
                 ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    for el in elements:
        scalar = [p for p in el.props if len(p) == 2]
        lists = [p for p in el.props if len(p) == 3]
        if not lists:
            dt = np.dtype([(p[0], endian + p[1]) for p in el.props])
            need = dt.itemsize * el.size
            if offset + need > len(body):
                raise BopDataError(f"{path}: truncated PLY: element {el.name!r} needs {need} "
                                   f"bytes, {len(body) - offset} left")
            arr = np.frombuffer(body, dtype=dt, count=el.size, offset=offset)
            out[el.name] = {p[0]: arr[p[0]].astype(np.float64) for p in scalar}
            offset += need
            continue
        # Fast path: every list holds 3 items (triangle meshes).
        fields: list[tuple[Any, ...]] = []
        for p in el.props:
            if len(p) == 3:
                fields += [(p[0] + "__n", endian + p[1]), (p[0], endian + p[2], (3,))]
            else:
                fields.append((p[0], endian + p[1]))
        dt = np.dtype(fields)
        need = dt.itemsize * el.size
        if offset + need <= len(body):
            arr = np.frombuffer(body, dtype=dt, count=el.size, offset=offset)
            if all((arr[p[0] + "__n"] == 3).all() for p in lists):
                out[el.name] = {p[0]: arr[p[0]].astype(np.int64) for p in lists}
                offset += need
                continue
        # General path: variable-length lists, element by element.
        parsed: dict[str, list[list[int]]] = {p[0]: [] for p in lists}
        try:
            for _ in range(el.size):
                for p in el.props:
                    cdt = np.dtype(endian + p[1])
                    n_or_v = np.frombuffer(body, dtype=cdt, count=1, offset=offset)[0]
                    offset += cdt.itemsize
                    if len(p) == 3:
                        idt = np.dtype(endian + p[2])
                        items = np.frombuffer(body, dtype=idt, count=int(n_or_v), offset=offset)
                        offset += idt.itemsize * int(n_or_v)
                        parsed[p[0]].append(items.astype(np.int64).tolist())
        except ValueError:
            raise BopDataError(f"{path}: truncated PLY in element {el.name!r}") from None
        out[el.name] = dict(parsed)
    return out


def read_ply(path: str | Path) -> PlyMesh:
    """Read an ASCII or binary PLY mesh (vertex x y z [nx ny nz] [red green blue], faces).

    Raises:
        BopDataError: missing file, not a PLY, unsupported format, truncated or malformed data,
            no x/y/z properties, face indices out of range.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BopDataError(f"{path}: model file not found") from None
    fmt, elements, start = _parse_ply_header(data, path)
    if fmt == "ascii":
        rows = [r for r in data[start:].splitlines() if r.strip()]
        parsed = _read_ascii(rows, elements, path)
    else:
        parsed = _read_binary(data[start:], elements, "<" if "little" in fmt else ">", path)
    vert = parsed.get("vertex", {})
    if not all(k in vert for k in ("x", "y", "z")):
        raise BopDataError(f"{path}: PLY has no vertex element with x, y, z")
    vertices = np.stack([vert["x"], vert["y"], vert["z"]], axis=-1).astype(np.float64)
    normals = (np.stack([vert["nx"], vert["ny"], vert["nz"]], axis=-1)
               if all(k in vert for k in ("nx", "ny", "nz")) else None)
    colors = (np.stack([vert["red"], vert["green"], vert["blue"]], axis=-1).astype(np.uint8)
              if all(k in vert for k in ("red", "green", "blue")) else None)
    face_el = parsed.get("face", {})
    idx = face_el.get("vertex_indices", face_el.get("vertex_index"))
    if idx is None:
        faces = np.zeros((0, 3), dtype=np.int64)
    elif isinstance(idx, np.ndarray):
        faces = idx.reshape(-1, 3)
    else:
        faces = _triangulate(idx, path)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise BopDataError(f"{path}: face indices out of range [0, {len(vertices)})")
    if not np.isfinite(vertices).all():
        raise BopDataError(f"{path}: non-finite vertex coordinates")
    return PlyMesh(vertices, normals, colors, faces)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


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


class BopInstance(NamedTuple):
    """Index entry of one annotated object instance."""

    scene_id: int
    im_id: int
    gt_id: int
    obj_id: int
    K: np.ndarray  # (3, 3) float64
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
        cam_K: ``(3, 3)`` float32 intrinsics of the crop (``A K``) or of the image.
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
    cam_K: torch.Tensor  # noqa: N815 (the name CropSample uses)
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
    ) -> None:
        self.config = cfg = config or BopConfig()
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
                    scene_id, im_id, gt_id, gt.obj_id, scene_cam[im_id].K, gt.R, gt.t, info))

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

    def model(self, obj_id: int) -> BopModel:
        """The :class:`BopModel` of ``obj_id``."""
        return self.models[obj_id]

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
        box = inst.info.bbox_visib if self.config.bbox == "visib" else inst.info.bbox_obj
        k = inst.K
        size = self.config.crop_size
        if size > 0:
            a = crop_transform(box, size, self.config.crop_scale)
            k = a @ k
            image = cv2.warpAffine(image, a[:2], (size, size), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0))
            mask, mask_full = (
                cv2.warpAffine(m.astype(np.uint8), a[:2], (size, size), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0)) > 0
                for m in (mask, mask_full))
        model = self.models[inst.obj_id]
        quat = matrix_to_quat(torch.from_numpy(inst.R))
        pose = torch.cat((torch.from_numpy(inst.t), quat)).float()
        cam_k = torch.from_numpy(k).float()
        mask_t = torch.from_numpy(mask).float().unsqueeze(0)
        out_h, out_w = mask.shape
        if self.config.render_coords:
            from epropnp_lib.geometry.raster import rasterize  # local: only needed for coords

            ras = rasterize(model.vertices, model.faces, model.vertices, pose[None],
                            cam_k[None], out_h, out_w)
            coords = ras.attributes[0] * mask_t
        else:
            coords = torch.zeros(3, out_h, out_w)
        return BopSample(
            image=torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
            coords=coords,
            mask=mask_t,
            pose=pose,
            cam_K=cam_k,
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
