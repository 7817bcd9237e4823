"""Generator of a small LineMOD-like dataset in the exact BOP layout (``<root>/lm``).

It writes what :mod:`epropnp_lib.data.bop` reads, formatted as the bop_toolkit writes it
(``inout.save_json`` / ``save_ply``, ``scripts/calc_gt_info.py`` semantics), from the procedural
objects of :mod:`epropnp_lib.generators.object_meshes` in millimetres::

    <root>/lm/camera.json, test_targets_bop19.json, models/models_info.json, models/obj_*.ply
    <root>/lm/<split>/<scene 6 digits>/scene_camera.json, scene_gt.json, scene_gt_info.json,
        rgb/<im>.png, depth/<im>.png (uint16 mm), mask/<im>_<gt>.png, mask_visib/<im>_<gt>.png

Ids: a symmetric object becomes 10 ``eggbox`` (a second one 11 ``glue``), so that the standard
protocol evaluates it with ADD-S; an asymmetric one keeps its LineMOD id when its name is a
LineMOD name, else takes the next free asymmetric id.  Each image shows ``objects_per_image``
annotated objects that may occlude each other; ``px_count_all`` and ``bbox_obj`` count the whole
silhouette, also outside the image (rendered on a larger canvas).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from epropnp_lib.data.bop import (
    LINEMOD_OBJECT_IDS,
    LINEMOD_OBJECTS,
    LINEMOD_SYMMETRIC,
    M_TO_MM,
    BopDataError,
    read_json,
)
from epropnp_lib.errors import ConfigError
from epropnp_lib.generators.object_meshes import (
    OBJECT_NAMES,
    SyntheticObject,
    make_object,
    render_object,
)
from epropnp_lib.geometry.camera import pixel_affine, project, transform_points
from epropnp_lib.geometry.rotations import quat_normalize, quat_to_matrix

logger = logging.getLogger(__name__)

__all__ = ["LINEMOD_K", "GeneratedBop", "generate_bop_lm", "main", "save_bop_json",
           "write_ply"]

#: Intrinsics of the LineMOD Kinect at 640 x 480 (BOP ``lm/camera.json``).
LINEMOD_K = ((572.4114, 0.0, 325.2611), (0.0, 573.57043, 242.04899), (0.0, 0.0, 1.0))
_LINEMOD_SIZE = (640, 480)
#: Asymmetric LineMOD ids in the order they are handed out to unnamed objects.
_FREE_IDS = (1, 2, 4, 5, 6, 8, 9, 12, 13, 14, 15)
#: Synthetic object names that stand for a LineMOD object of another name.
_LINEMOD_ALIASES = {"drill": "driller"}


class GeneratedBop(NamedTuple):
    """What :func:`generate_bop_lm` wrote.

    Attributes:
        dataset_dir: ``<root>/lm``.
        object_ids: ``{synthetic object name: BOP object id}``.
        scene_ids: the scene ids written.
        num_images: images written; num_instances: annotated instances written.
    """

    dataset_dir: Path
    object_ids: dict[str, int]
    scene_ids: tuple[int, ...]
    num_images: int
    num_instances: int


# --------------------------------------------------------------------------------------------
# Writers in the bop_toolkit's formatting
# --------------------------------------------------------------------------------------------


def save_bop_json(path: str | Path, content: Any) -> None:
    """Write JSON as ``bop_toolkit_lib.inout.save_json`` does.

    A dict is written with one top-level entry per line (keys sorted; integer keys sorted
    numerically and written as strings), each value ``json.dumps(v, sort_keys=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        items = sorted(content.items(), key=lambda kv: kv[0])
        lines = [f'  "{k}": {json.dumps(v, sort_keys=True)}' for k, v in items]
        text = "{\n" + ",\n".join(lines) + ("\n" if lines else "") + "}"
    elif isinstance(content, list):
        lines = [f"  {json.dumps(v, sort_keys=True)}" for v in content]
        text = "[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]"
    else:
        text = json.dumps(content, sort_keys=True)
    path.write_text(text, encoding="utf-8")


def write_ply(
    path: str | Path,
    vertices: np.ndarray,
    faces: np.ndarray,
    normals: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    binary: bool = False,
) -> None:
    """Write a triangle mesh as the BOP models are stored.

    Args:
        path: output file.
        vertices: ``(V, 3)`` coordinates (BOP: millimetres).
        faces: ``(F, 3)`` vertex indices.
        normals: ``(V, 3)`` unit vertex normals or ``None``.
        colors: ``(V, 3)`` uint8 RGB or ``None``.
        binary: ``binary_little_endian`` instead of ``ascii`` (both occur in BOP downloads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    props = ["property float x", "property float y", "property float z"]
    fields: list[tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        props += ["property float nx", "property float ny", "property float nz"]
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        props += ["property uchar red", "property uchar green", "property uchar blue"]
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    header = "\n".join([
        "ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
        "comment generated by epropnp_lib.generators.bop",
        f"element vertex {len(vertices)}", *props,
        f"element face {len(faces)}", "property list uchar int vertex_indices",
        "end_header"]) + "\n"
    columns = [vertices[:, i] for i in range(3)]
    if normals is not None:
        columns += [normals[:, i] for i in range(3)]
    if colors is not None:
        columns += [colors[:, i] for i in range(3)]
    if binary:
        vert = np.zeros(len(vertices), dtype=np.dtype(fields))
        for (name, _), col in zip(fields, columns, strict=True):
            vert[name] = col
        face = np.zeros(len(faces), dtype=np.dtype([("n", "u1"), ("idx", "<i4", (3,))]))
        face["n"] = 3
        face["idx"] = faces
        path.write_bytes(header.encode("ascii") + vert.tobytes() + face.tobytes())
        return
    n_float = 6 if normals is not None else 3
    rows = []
    for i in range(len(vertices)):
        vals = [f"{float(c[i]):.4f}" for c in columns[:n_float]]
        vals += [str(int(c[i])) for c in columns[n_float:]]
        rows.append(" ".join(vals))
    rows += [f"3 {a} {b} {c}" for a, b, c in faces.tolist()]
    path.write_text(header + "\n".join(rows) + "\n", encoding="ascii")


def _row_major(mat: torch.Tensor | np.ndarray) -> list[float]:
    """The entries of a matrix as a flat list of floats (BOP's row-major JSON matrices)."""
    return [float(v) for v in mat.reshape(-1)]


def calc_2d_bbox(xs: np.ndarray, ys: np.ndarray) -> list[int]:
    """``[x, y, w, h]`` of pixel coordinates, ``w = x_max - x_min`` (bop_toolkit.misc)."""
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0, int(ys.max()) - y0]


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------


class _Model(NamedTuple):
    obj_id: int
    obj: SyntheticObject
    symmetry: dict[str, Any]  # models_info symmetry entries (mm)


def assign_linemod_ids(names: Sequence[str], symmetric: Sequence[bool]) -> dict[str, int]:
    """BOP ids for synthetic objects (see the module docstring).

    A name that is a LineMOD name (or an alias such as ``drill`` -> ``driller``) keeps that id
    when the symmetry agrees with the protocol's (eggbox and glue symmetric, the rest not);
    the other symmetric objects take the free ids of (10, 11), the asymmetric ones the free ids
    of ``1, 2, 4, 5, 6, 8, 9, 12, ...``.

    Raises:
        ConfigError: more than two symmetric or more than eleven asymmetric objects.
    """
    out: dict[str, int] = {}
    for name, sym in zip(names, symmetric, strict=True):
        want = LINEMOD_OBJECT_IDS.get(_LINEMOD_ALIASES.get(name, name))
        if want is not None and (LINEMOD_OBJECTS[want] in LINEMOD_SYMMETRIC) == sym \
                and want not in out.values():
            out[name] = want
    sym_ids = [LINEMOD_OBJECT_IDS[n] for n in LINEMOD_SYMMETRIC]
    for name, sym in zip(names, symmetric, strict=True):
        if name in out:
            continue
        pool = sym_ids if sym else _FREE_IDS
        free = [i for i in pool if i not in out.values()]
        if not free:
            raise ConfigError(f"no LineMOD id left for {'symmetric' if sym else 'asymmetric'} "
                              f"object {name!r} (at most 2 symmetric and 11 asymmetric)")
        out[name] = free[0]
    return out


def _symmetry_entries(obj: SyntheticObject) -> dict[str, Any]:
    """models_info.json symmetry entries of a synthetic object (offsets in millimetres)."""
    if not obj.symmetric or obj.symmetry_order == 1:
        return {}
    axis = [float(v) for v in obj.symmetry_axis]
    if obj.symmetry_order == 0:
        return {"symmetries_continuous": [{"axis": axis, "offset": [0, 0, 0]}]}
    mats = []
    for k in range(1, obj.symmetry_order):
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(obj.symmetry_quat(2 * math.pi * k / obj.symmetry_order)
                                   ).numpy()
        m[np.abs(m) < 1e-12] = 0.0
        mats.append(_row_major(m))
    return {"symmetries_discrete": mats}


def _load_models(names: Sequence[str]) -> list[_Model]:
    objs = [make_object(n) for n in names]
    ids = assign_linemod_ids(names, [bool(o.symmetric) for o in objs])
    out = []
    for name, obj in zip(names, objs, strict=True):
        out.append(_Model(ids[name], obj, _symmetry_entries(obj)))
    return out


def _write_models(models_dir: Path, models: Sequence[_Model], binary: bool) -> None:
    info: dict[int, dict[str, Any]] = {}
    for m in models:
        # Millimetres with 4 decimals, as bop_toolkit's save_ply writes them; the box and the
        # diameter are those of the vertices as written (bop_toolkit calc_model_info).
        v = np.round(m.obj.vertices.detach().double().cpu().numpy() * M_TO_MM, 4)
        colors = (m.obj.vertex_colors.detach().cpu().numpy() * 255.0).round().clip(0, 255)
        write_ply(models_dir / f"obj_{m.obj_id:06d}.ply", v, m.obj.faces.cpu().numpy(),
                  m.obj.normals.detach().cpu().numpy(), colors.astype(np.uint8), binary=binary)
        lo, hi = v.min(0), v.max(0)
        vt = torch.from_numpy(v)
        entry: dict[str, Any] = {"diameter": round(float(torch.cdist(vt, vt).max()), 4)}
        for i, a in enumerate("xyz"):
            entry[f"min_{a}"] = round(float(lo[i]), 4)
            entry[f"size_{a}"] = round(float(hi[i] - lo[i]), 4)
        entry.update(m.symmetry)
        info[m.obj_id] = entry
    save_bop_json(models_dir / "models_info.json", info)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _random_rotation(g: torch.Generator) -> torch.Tensor:
    q = quat_normalize(torch.randn(4, generator=g, dtype=torch.float64))
    return torch.where(q[:1] < 0, -q, q)


def _background(height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """``(3, H, W)`` smooth random colour field in [0, 1]."""
    coarse = torch.rand(1, 3, 6, 8, generator=g)
    field = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic",
                                            align_corners=False)[0]
    fine = torch.rand(1, 3, height // 4 + 1, width // 4 + 1, generator=g)
    fine = torch.nn.functional.interpolate(fine, size=(height, width), mode="bilinear",
                                           align_corners=False)[0]
    return (0.75 * field + 0.25 * fine).clamp(0, 1)


class _Render(NamedTuple):
    depth: torch.Tensor  # (H, W) inf where empty (inside the image)
    color: torch.Tensor  # (3, H, W)
    px_count_all: int
    bbox_obj: list[int]


def _render_instance(model: _Model, pose: torch.Tensor, cam_mats: torch.Tensor, width: int,
                     height: int, light: torch.Tensor) -> _Render:
    """Render one object on a canvas grown to its whole silhouette (calc_gt_info semantics);
    ``pose: (7,)``, ``cam_mats: (3, 3)`` float64, ``light: (3,)`` unit direction."""
    x_cam = transform_points(model.obj.vertices.double(), quat_to_matrix(pose[3:]), pose[:3])
    uv = project(x_cam, cam_mats).x2d
    pads = (
        max(0, math.ceil(-float(uv[:, 0].min())) + 1),  # left
        max(0, math.ceil(-float(uv[:, 1].min())) + 1),  # top
        max(0, math.ceil(float(uv[:, 0].max()) - (width - 1)) + 1),  # right
        max(0, math.ceil(float(uv[:, 1].max()) - (height - 1)) + 1),  # bottom
    )
    # As calc_gt_info, at most one image size beyond each border.
    pad_l, pad_t, pad_r, pad_b = (min(p, lim) for p, lim in
                                  zip(pads, (width, height, width, height), strict=True))
    big_k = pixel_affine(1.0, (-pad_l - 0.5, -pad_t - 0.5)) @ cam_mats
    ren = render_object(model.obj, pose[None].float(), big_k[None].float(),
                        height + pad_t + pad_b, width + pad_l + pad_r)
    mask_big = ren.mask[0, 0] > 0
    ys, xs = mask_big.nonzero(as_tuple=True)
    px_all = int(mask_big.sum())
    bbox = calc_2d_bbox(xs.numpy() - pad_l, ys.numpy() - pad_t) if px_all else [-1] * 4
    sl = (slice(pad_t, pad_t + height), slice(pad_l, pad_l + width))
    mask = mask_big[sl]
    depth = torch.where(mask, ren.depth[0, 0][sl], torch.full_like(ren.depth[0, 0][sl],
                                                                   math.inf))
    shade = (ren.normals[0][(slice(None), *sl)] * light[:, None, None]).sum(0).clamp_min(0)
    color = ren.albedo[0][(slice(None), *sl)] * (0.35 + 0.65 * shade)
    return _Render(depth, color, px_all, bbox)


def _sample_pose(cam_mats: torch.Tensor, width: int, height: int, g: torch.Generator,
                 near: tuple[float, float] | None = None) -> torch.Tensor:
    """Random pose ``(7,)`` float64: uniform rotation, depth 0.55-0.95 m, centre in view of
    the camera ``cam_mats: (3, 3)``."""
    k = cam_mats
    z = 0.55 + 0.4 * float(torch.rand((), generator=g, dtype=torch.float64))
    if near is None:
        u = width * (0.3 + 0.4 * float(torch.rand((), generator=g, dtype=torch.float64)))
        v = height * (0.3 + 0.4 * float(torch.rand((), generator=g, dtype=torch.float64)))
    else:  # close to another object in the image, so that they may overlap
        off = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * 0.5 * min(width, height)
        u, v = near[0] + float(off[0]), near[1] + float(off[1])
    fx, fy, cx, cy = float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])
    t = torch.tensor([(u - cx) * z / fx, (v - cy) * z / fy, z], dtype=torch.float64)
    return torch.cat((t, _random_rotation(g)))


def _save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: cannot write image")


def generate_bop_lm(
    root: str | Path,
    *,
    num_scenes: int = 2,
    images_per_scene: int = 4,
    objects: Sequence[str] | None = None,
    image_size: tuple[int, int] = (640, 480),
    seed: int = 0,
    split: str = "test",
    objects_per_image: int | None = None,
    binary_ply: bool = False,
    first_scene_id: int = 1,
) -> GeneratedBop:
    """Write a mini LineMOD dataset in the BOP layout under ``<root>/lm``.

    Args:
        root: BOP root folder (created if needed).
        num_scenes: number of scenes; scene ``i`` (id ``first_scene_id + i``) centres on object
            ``objects[i % len(objects)]``.
        images_per_scene: images per scene.
        objects: synthetic object names (default: all of
            :data:`epropnp_lib.generators.object_meshes.OBJECT_NAMES`).
        image_size: ``(width, height)``; the LineMOD intrinsics are scaled to it.
        seed: all randomness comes from one ``torch.Generator`` seeded from it and the split
            name (so one seed gives independent train and test images).
        split: split folder name (``test``, ``train``, ...).  Several calls with different
            splits may write into the same root (the models and camera are the same);
            ``test_targets_bop19.json`` is written for the ``test`` split.
        objects_per_image: annotated objects per image (1 = LineMOD, more = occlusions);
            default ``min(2, len(objects))``.
        binary_ply: write binary instead of ASCII PLY models.
        first_scene_id: id of the first scene: a later call with ids after the existing
            scenes adds another draw (e.g. another ``seed``) to a split (for ``test``, its
            targets are added to ``test_targets_bop19.json``).  The scenes' content does not
            depend on their ids.

    Returns:
        :class:`GeneratedBop`.
    """
    names = list(objects) if objects is not None else list(OBJECT_NAMES)
    objects_per_image = _check_args(names, num_scenes, images_per_scene, image_size,
                                    objects_per_image)
    if first_scene_id < 1:
        raise ConfigError(f"first_scene_id must be >= 1, got {first_scene_id}")
    scene_ids = tuple(range(first_scene_id, first_scene_id + num_scenes))
    width, height = image_size
    # Independent streams per split: the same seed gives different train and test images.
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(split.encode()))
    out = Path(root) / "lm"
    models = _load_models(names)
    _write_models(out / "models", models, binary_ply)
    cam_mats = linemod_intrinsics(width, height)
    k_list = _row_major(cam_mats)
    save_bop_json(out / "camera.json", {
        "cx": k_list[2], "cy": k_list[5], "depth_scale": 1.0, "fx": k_list[0],
        "fy": k_list[4], "height": height, "width": width})
    camera = _Camera(cam_mats, width, height)
    targets: list[dict[str, int]] = []
    n_inst = 0
    for s, scene_id in enumerate(scene_ids):
        scene_targets = _write_scene(out / split / f"{scene_id:06d}", scene_id, models,
                                     s % len(models), images_per_scene, objects_per_image,
                                     camera, g)
        targets += scene_targets
        n_inst += sum(t["inst_count"] for t in scene_targets)
    if split == "test":
        targets_path = out / "test_targets_bop19.json"
        if first_scene_id > 1 and targets_path.is_file():  # keep the other scenes' targets
            existing = read_json(targets_path)
            if not isinstance(existing, list):
                raise BopDataError(f"{targets_path}: not a list of targets")
            kept = [t for t in existing if t.get("scene_id") not in scene_ids]
            targets = sorted(kept + targets, key=lambda t: (t["scene_id"], t["im_id"]))
        save_bop_json(targets_path, targets)
    mapping = {m.obj.name: m.obj_id for m in models}
    logger.info("wrote %s: %d scenes, %d images, %d instances, objects %s", out, num_scenes,
                num_scenes * images_per_scene, n_inst, mapping)
    return GeneratedBop(out, mapping, scene_ids, num_scenes * images_per_scene, n_inst)


def linemod_intrinsics(width: int, height: int) -> torch.Tensor:
    """``(3, 3)`` float64 intrinsics of the LineMOD camera (:data:`LINEMOD_K`, 640 x 480)
    resampled to ``width x height`` (:func:`~epropnp_lib.geometry.camera.pixel_affine`)."""
    scale = (width / _LINEMOD_SIZE[0], height / _LINEMOD_SIZE[1])
    return pixel_affine(scale, (-0.5, -0.5)) @ torch.tensor(LINEMOD_K, dtype=torch.float64)


def _check_args(names: Sequence[str], num_scenes: int, images_per_scene: int,
                image_size: tuple[int, int], objects_per_image: int | None) -> int:
    """Validate the arguments of :func:`generate_bop_lm`; returns ``objects_per_image``."""
    width, height = image_size
    if num_scenes < 1 or images_per_scene < 1:
        raise ConfigError("num_scenes and images_per_scene must be >= 1")
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"objects must be distinct names, got {names}")
    if width < 16 or height < 16:
        raise ConfigError(f"image_size must be at least 16 x 16, got {image_size}")
    if objects_per_image is None:
        objects_per_image = min(2, len(names))
    if not 1 <= objects_per_image <= len(names):
        raise ConfigError(f"objects_per_image must lie in [1, {len(names)}], "
                          f"got {objects_per_image}")
    unknown = [n for n in names if n not in OBJECT_NAMES]
    if unknown:
        raise ConfigError(f"unknown synthetic objects {unknown}; known: "
                          f"{list(OBJECT_NAMES)}")
    return objects_per_image


class _Camera(NamedTuple):
    cam_mats: torch.Tensor  # (3, 3) float64
    width: int
    height: int


def _write_scene(scene_dir: Path, scene_id: int, models: Sequence[_Model], main: int,
                 images_per_scene: int, objects_per_image: int, camera: _Camera,
                 g: torch.Generator) -> list[dict[str, int]]:
    """Write the images of one scene (centred on ``models[main]``) and its three JSON files;
    returns its ``test_targets_bop19.json`` entries."""
    scene_gt: dict[int, list[dict[str, Any]]] = {}
    scene_info: dict[int, list[dict[str, Any]]] = {}
    scene_cam: dict[int, dict[str, Any]] = {}
    k_list = _row_major(camera.cam_mats)
    targets: list[dict[str, int]] = []
    for im_id in range(images_per_scene):
        others = [i for i in range(len(models)) if i != main]
        perm = torch.randperm(len(others), generator=g).tolist()
        chosen = [models[i] for i in [main] + [others[i] for i in perm[:objects_per_image - 1]]]
        gts, infos = _write_image(scene_dir, im_id, chosen, camera, g)
        scene_gt[im_id] = gts
        scene_info[im_id] = infos
        scene_cam[im_id] = {"cam_K": k_list, "depth_scale": 1.0}
        counts: dict[int, int] = {}
        for gt in gts:
            counts[gt["obj_id"]] = counts.get(gt["obj_id"], 0) + 1
        targets += [{"im_id": im_id, "inst_count": c, "obj_id": o, "scene_id": scene_id}
                    for o, c in sorted(counts.items())]
    save_bop_json(scene_dir / "scene_gt.json", scene_gt)
    save_bop_json(scene_dir / "scene_gt_info.json", scene_info)
    save_bop_json(scene_dir / "scene_camera.json", scene_cam)
    return targets


def _write_image(scene_dir: Path, im_id: int, chosen: Sequence[_Model], camera: _Camera,
                 g: torch.Generator) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Render one image of the ``chosen`` objects (the first one in view, the others near it)
    and write its rgb, depth and masks; returns its scene_gt and scene_gt_info entries."""
    k, width, height = camera
    # Unit direction towards the light, roughly from the camera.
    light = torch.nn.functional.normalize(
        torch.randn(3, generator=g) + torch.tensor([0.0, 0.0, -2.0]), dim=0)
    poses = [_sample_pose(k, width, height, g)]
    centre = project(poses[0][None, :3], k).x2d[0]
    for _ in chosen[1:]:
        poses.append(_sample_pose(k, width, height, g, near=(float(centre[0]), float(centre[1]))))
    renders = [_render_instance(m, p, k, width, height, light)
               for m, p in zip(chosen, poses, strict=True)]
    depth_all = torch.stack([r.depth for r in renders]).amin(0)
    image = _background(height, width, g)
    gts, infos = [], []
    for gt_id, (model, pose, r) in enumerate(zip(chosen, poses, renders, strict=True)):
        mask = torch.isfinite(r.depth)
        visib = mask & (r.depth <= depth_all)
        image = torch.where(visib[None], r.color, image)
        _save_png(scene_dir / "mask" / f"{im_id:06d}_{gt_id:06d}.png",
                  mask.numpy().astype(np.uint8) * 255)
        _save_png(scene_dir / "mask_visib" / f"{im_id:06d}_{gt_id:06d}.png",
                  visib.numpy().astype(np.uint8) * 255)
        rot = quat_to_matrix(pose[3:]).numpy()
        gts.append({"cam_R_m2c": _row_major(rot),
                    "cam_t_m2c": [float(v) * M_TO_MM for v in pose[:3]],
                    "obj_id": model.obj_id})
        infos.append(_gt_info(r, mask, visib))
    noise = torch.randn(image.shape, generator=g) * 0.01
    rgb = ((image + noise).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    _save_png(scene_dir / "rgb" / f"{im_id:06d}.png", np.ascontiguousarray(rgb[..., ::-1]))
    depth_mm = torch.where(torch.isfinite(depth_all), depth_all * M_TO_MM,
                           torch.zeros_like(depth_all))
    _save_png(scene_dir / "depth" / f"{im_id:06d}.png",
              depth_mm.round().clamp(0, 65535).numpy().astype(np.uint16))
    return gts, infos


def _gt_info(r: _Render, mask: torch.Tensor, visib: torch.Tensor) -> dict[str, Any]:
    """The scene_gt_info entry of an instance (``calc_gt_info.py`` semantics); ``mask`` and
    ``visib``: ``(H, W)`` bool silhouette and visible part inside the image."""
    n_visib = int(visib.sum())
    ys, xs = visib.nonzero(as_tuple=True)
    return {
        "bbox_obj": r.bbox_obj if n_visib else [-1, -1, -1, -1],
        "bbox_visib": calc_2d_bbox(xs.numpy(), ys.numpy()) if n_visib else [-1, -1, -1, -1],
        "px_count_all": r.px_count_all,
        "px_count_valid": int(mask.sum()),
        "px_count_visib": n_visib,
        "visib_fract": n_visib / r.px_count_all if r.px_count_all else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``python -m epropnp_lib.generators.bop --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m epropnp_lib.generators.bop",
        description="Write a mini LineMOD dataset in the BOP layout (<out>/lm).")
    parser.add_argument("--out", required=True, type=Path, help="BOP root folder to write")
    parser.add_argument("--num-scenes", type=int, default=2)
    parser.add_argument("--images-per-scene", type=int, default=4)
    parser.add_argument("--objects", nargs="+", default=None,
                        help=f"synthetic objects (default: all of "
                             f"{list(OBJECT_NAMES)})")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train",
                        help="split folder to write (default train: training data; the "
                             "held-out scenes: --split test with another --seed)")
    parser.add_argument("--objects-per-image", type=int, default=None)
    parser.add_argument("--binary-ply", action="store_true")
    parser.add_argument("--first-scene-id", type=int, default=1,
                        help="id of the first scene written (after the existing scenes: "
                             "adds another draw, e.g. another --seed, to the split)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        res = generate_bop_lm(
            args.out, num_scenes=args.num_scenes, images_per_scene=args.images_per_scene,
            objects=args.objects, image_size=(args.width, args.height), seed=args.seed,
            split=args.split, objects_per_image=args.objects_per_image,
            binary_ply=args.binary_ply, first_scene_id=args.first_scene_id)
    except ConfigError as exc:
        parser.error(str(exc))
    logger.debug("generated %s", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
