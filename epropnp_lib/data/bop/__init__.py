"""Reader of 6DoF pose datasets in the BOP layout (LineMOD ``lm``, Occluded LineMOD ``lmo``, ...).

The BOP-scenewise format of the bop_toolkit (``docs/bop_datasets_format.md``)::

    <root>/<dataset>/camera.json              fx, fy, cx, cy, width, height, depth_scale
    <root>/<dataset>/models/models_info.json  per object: diameter, min_*, size_*, symmetries
    <root>/<dataset>/models/obj_<id>.ply      ASCII or binary PLY mesh, millimetres
    <root>/<dataset>/<split>/<scene>/         split = test | train | train_pbr | val ...
        scene_camera.json                     per image: cam_K (9, row-major), depth_scale
        scene_gt.json                         per image: [{cam_R_m2c, cam_t_m2c (mm), obj_id}]
        scene_gt_info.json                    per image: [{bbox_obj, bbox_visib, px_count_*,
                                              visib_fract}] (same order as scene_gt)
        rgb/<im>.png|.jpg, mask/<im>_<gt>.png (full silhouette), mask_visib/<im>_<gt>.png

Modules: :mod:`~.json_files` (the JSON readers, millimetres to metres), :mod:`~.ply` (meshes),
:mod:`~.dataset` (:class:`BopDataset`: instance crops with their intrinsics, coordinate maps
and masks), :mod:`~.linemod` (LineMOD ids and protocol sets), :mod:`~.errors`.
"""

from epropnp_lib.data.bop.dataset import (
    CANONICAL_CONTINUOUS_STEPS,
    BopConfig,
    BopDataset,
    BopInstance,
    BopModel,
    BopSample,
    crop_transform,
    jitter_box,
)
from epropnp_lib.data.bop.errors import BopDataError
from epropnp_lib.data.bop.json_files import (
    M_TO_MM,
    MM_TO_M,
    BopCamera,
    BopGt,
    BopGtInfo,
    BopModelInfo,
    BopSceneCamera,
    read_camera,
    read_json,
    read_models_info,
    read_scene_camera,
    read_scene_gt,
    read_scene_gt_info,
)
from epropnp_lib.data.bop.linemod import (
    LINEMOD_13,
    LINEMOD_OBJECT_IDS,
    LINEMOD_OBJECTS,
    LINEMOD_SYMMETRIC,
)
from epropnp_lib.data.bop.ply import PlyMesh, read_ply

__all__ = [
    "CANONICAL_CONTINUOUS_STEPS",
    "LINEMOD_13",
    "LINEMOD_OBJECTS",
    "LINEMOD_OBJECT_IDS",
    "LINEMOD_SYMMETRIC",
    "MM_TO_M",
    "M_TO_MM",
    "BopCamera",
    "BopConfig",
    "BopDataError",
    "BopDataset",
    "BopGt",
    "BopGtInfo",
    "BopInstance",
    "BopModel",
    "BopModelInfo",
    "BopSample",
    "BopSceneCamera",
    "PlyMesh",
    "crop_transform",
    "jitter_box",
    "read_camera",
    "read_json",
    "read_models_info",
    "read_ply",
    "read_scene_camera",
    "read_scene_gt",
    "read_scene_gt_info",
]
