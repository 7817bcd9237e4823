"""Camera-frame detections written back as the official nuScenes results JSON (global frame, the
six cameras of a sample merged, every sample of the split present)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from epropnp_lib.atomic_io import atomic_write
from epropnp_lib.data.nuscenes.errors import NuScenesFormatError
from epropnp_lib.data.nuscenes.frames import CameraFrame, camera_to_global
from epropnp_lib.data.nuscenes.taxonomy import NUSCENES_ATTRIBUTES, NUSCENES_CLASSES
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.boxes import CameraBoxes

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "CameraDetections",
    "ResultsMeta",
    "ResultsSummary",
    "write_results",
]

#: Attribute written for a detection without one (-1), per class (the usual defaults of
#: camera detectors; barrier and traffic_cone have no attributes).
DEFAULT_ATTRIBUTES: dict[str, str] = {
    "car": "vehicle.parked", "truck": "vehicle.parked", "bus": "vehicle.moving",
    "trailer": "vehicle.parked", "construction_vehicle": "vehicle.parked",
    "pedestrian": "pedestrian.moving", "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider", "traffic_cone": "", "barrier": "",
}



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
    """The attribute written for class ``label`` and attribute index ``attr``, and whether it is
    the class's default (``attr`` not relevant to the class, e.g. -1)."""
    from nuscenes.eval.detection.utils import detection_name_to_rel_attributes  # devkit on use

    relevant = detection_name_to_rel_attributes(label)
    if 0 <= attr < len(NUSCENES_ATTRIBUTES) and NUSCENES_ATTRIBUTES[attr] in relevant:
        return NUSCENES_ATTRIBUTES[attr], False
    default = DEFAULT_ATTRIBUTES[label]
    return default, bool(relevant)


class _Row(NamedTuple):
    """One box in the global frame, before merging."""

    score: float
    camera: int  # index of the camera image in the sample's detections
    label: int
    translation: list[float]
    size: list[float]
    yaw: float
    velocity: list[float]
    attribute: int


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
        rows: list[_Row] = []
        for cam_index, det in enumerate(detections.get(token, ())):
            if det.frame.sample_token != token:
                raise NuScenesFormatError(path, f"a frame of sample {det.frame.sample_token} "
                                                f"is listed under sample {token}")
            cam_rows, n_nan = _global_rows(det, cam_index)
            rows += cam_rows
            nan_vel += n_nan
        rows.sort(key=lambda r: -r.score)
        kept, n_merged = _merge_cameras(rows, merge_radius)
        merged += n_merged
        if len(kept) > max_boxes_per_sample:
            truncated += len(kept) - max_boxes_per_sample
            kept = kept[:max_boxes_per_sample]
        out, n_default = _records(token, kept)
        defaulted += n_default
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


def _global_rows(det: CameraDetections, cam_index: int) -> tuple[list[_Row], int]:
    """The boxes of one camera image in the global frame, and how many of them had a NaN
    velocity (written as 0)."""
    b = CameraBoxes(*(field.detach().cpu() for field in det.boxes.validate()))
    if b.num_boxes == 0:
        return [], 0
    vel = b.velocity.to(torch.float64)
    bad = ~torch.isfinite(vel).all(-1)
    vel = torch.where(bad[:, None], torch.zeros_like(vel), vel)
    trans, yaw, vel_g = camera_to_global(b.center, b.yaw, vel, det.frame.cam_to_global)
    rows = [_Row(float(b.scores[i]), cam_index, int(b.labels[i]), trans[i].tolist(),
                 b.size[i].tolist(), float(yaw[i]), vel_g[i].tolist(), int(b.attributes[i]))
            for i in range(b.num_boxes)]
    return rows, int(bad.sum())


def _merge_cameras(rows: Sequence[_Row], merge_radius: float | None) -> tuple[list[_Row], int]:
    """Rows (sorted by decreasing score) without the cross-camera duplicates, and how many
    were dropped."""
    kept: list[_Row] = []
    merged = 0
    for row in rows:
        if merge_radius is not None and any(
                k.label == row.label and k.camera != row.camera
                and math.dist(k.translation[:2], row.translation[:2]) < merge_radius
                for k in kept):
            merged += 1
            continue
        kept.append(row)
    return kept, merged


def _records(token: str, kept: Sequence[_Row]) -> tuple[list[dict[str, Any]], int]:
    """The results records of a sample, and how many got their class's default attribute."""
    out = []
    defaulted = 0
    for row in kept:
        name = NUSCENES_CLASSES[row.label]
        attr_name, was_default = _attribute_name(name, row.attribute)
        defaulted += int(was_default)
        out.append({
            "sample_token": token,
            "translation": row.translation,
            "size": row.size,
            "rotation": [math.cos(row.yaw / 2), 0.0, 0.0, math.sin(row.yaw / 2)],
            "velocity": row.velocity,
            "detection_name": name,
            "detection_score": min(1.0, max(0.0, row.score)),
            "attribute_name": attr_name,
        })
    return out, defaulted
