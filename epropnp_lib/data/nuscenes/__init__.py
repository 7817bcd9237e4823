"""nuScenes through the official devkit: the camera-frame reader, the results writer and the
official evaluation.

* :mod:`~.dataset` -- :class:`NuScenesCameraDataset`, one item per (sample, camera) of a split:
  the image, its intrinsics, the annotated boxes in that camera's optical frame and the
  :class:`CameraFrame` needed to write detections back;
* :mod:`~.frames` -- boxes between the global frame and a camera frame (the conventions);
* :mod:`~.results` -- :func:`write_results`, the official results JSON;
* :mod:`~.evaluation` -- :func:`evaluate`, the devkit's ``DetectionEval``;
* :mod:`~.taxonomy` (classes, attributes, cameras), :mod:`~.loading`, :mod:`~.errors`.

The devkit is imported where it is used, so that importing the constants stays light.
"""

from epropnp_lib.data.nuscenes.dataset import (
    NuScenesBatch,
    NuScenesCameraDataset,
    NuScenesCameraSample,
    collate_camera_samples,
)
from epropnp_lib.data.nuscenes.errors import NuScenesEvalError, NuScenesFormatError
from epropnp_lib.data.nuscenes.evaluation import NuScenesScores, evaluate
from epropnp_lib.data.nuscenes.frames import (
    CameraFrame,
    camera_frame_of,
    camera_to_global,
    global_to_camera,
)
from epropnp_lib.data.nuscenes.loading import load_nuscenes
from epropnp_lib.data.nuscenes.results import (
    DEFAULT_ATTRIBUTES,
    CameraDetections,
    ResultsMeta,
    ResultsSummary,
    write_results,
)
from epropnp_lib.data.nuscenes.taxonomy import (
    CAMERAS,
    KNOWN_CATEGORIES,
    NUSCENES_ATTRIBUTES,
    NUSCENES_CLASSES,
    NUSCENES_HEADING_PERIODS,
    NUSCENES_MEAN_SIZES,
)

__all__ = [
    "CAMERAS",
    "DEFAULT_ATTRIBUTES",
    "KNOWN_CATEGORIES",
    "NUSCENES_ATTRIBUTES",
    "NUSCENES_CLASSES",
    "NUSCENES_HEADING_PERIODS",
    "NUSCENES_MEAN_SIZES",
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
