"""Pictures of 3D detections with their uncertainty, drawn onto the camera images (ROS-free).

For each detection: the projected 3D box (class colour, the front face crossed), a label with
class and score, the projected 2-sigma ellipse of the ground-plane position covariance
(camera x, z) at the box centre height, and the headings of the posterior pose samples (short
lines from each sampled centre along its sampled yaw): a tight fan means a confident
orientation, a split fan a multimodal one (e.g. front/back ambiguity).

:func:`render_detections` writes one JPEG per image and an MP4 with one frame per sample (the
six cameras tiled front row / back row).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from epropnp_lib.data.nuscenes import NUSCENES_CLASSES
from epropnp_lib.geometry.boxes import BOX_EDGES, FRONT_FACE, CameraBoxes
from epropnp_ros.errors import ConversionError
from epropnp_ros.poses import msg_to_pose

__all__ = ["CLASS_COLOURS", "draw_detections", "render_detections"]

LOGGER = logging.getLogger(__name__)

#: BGR colour per nuScenes class (index as in NUSCENES_CLASSES).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 158, 0)[::-1], (255, 99, 71)[::-1], (255, 127, 80)[::-1], (255, 140, 0)[::-1],
    (233, 150, 70)[::-1], (0, 0, 230)[::-1], (255, 61, 99)[::-1], (220, 20, 60)[::-1],
    (47, 79, 79)[::-1], (112, 128, 144)[::-1],
)
#: Tiling of the six cameras in the video (None = empty tile).
TILES: tuple[tuple[str, ...], ...] = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
#: Length (metres) of the heading tick drawn for each posterior sample.
SAMPLE_TICK_M = 0.5


def _project(points: np.ndarray, cam_mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) pixels and (N,) bool in-front mask of (N, 3) camera-frame points."""
    z = points[:, 2]
    front = z > 0.1
    uvw = points @ cam_mat.T
    uv = uvw[:, :2] / np.where(front, z, 1.0)[:, None]
    return uv, front


def _line(img: np.ndarray, a: np.ndarray, b: np.ndarray, colour: tuple[int, int, int],
          thickness: int) -> None:
    if np.isfinite(a).all() and np.isfinite(b).all() and np.abs(np.r_[a, b]).max() < 1e5:
        cv2.line(img, (int(round(a[0])), int(round(a[1]))), (int(round(b[0])), int(round(b[1]))),
                 colour, thickness, cv2.LINE_AA)


def draw_detections(
    image_bgr: np.ndarray,
    cam_mat: np.ndarray,
    boxes: CameraBoxes,
    covariances: np.ndarray,
    samples: np.ndarray | None = None,
    class_names: Sequence[str] = NUSCENES_CLASSES,
) -> np.ndarray:
    """Draw boxes, labels, 2-sigma position ellipses and sample headings onto a copy.

    Args:
        image_bgr: (H, W, 3) uint8.
        cam_mat: (3, 3) intrinsics of the image.
        boxes: M camera-frame boxes.
        covariances: (M, 4, 4) 4DoF covariances over (x, y, z, yaw).
        samples: (S, 4) posterior samples (x, y, z, yaw) of all objects, or None.
    """
    img = image_bgr.copy()
    scale = max(1, round(img.shape[0] / 450))
    cam_mat = np.asarray(cam_mat, dtype=np.float64)
    corners = boxes.corners().detach().cpu().double().numpy()  # (M, 8, 3)
    centers = boxes.center.detach().cpu().double().numpy()
    labels = boxes.labels.cpu().numpy()
    scores = boxes.scores.detach().cpu().double().numpy()
    for i in range(boxes.num_boxes):
        colour = CLASS_COLOURS[int(labels[i]) % len(CLASS_COLOURS)]
        uv, front = _project(corners[i], cam_mat)
        if not front.all():
            continue
        for a, b in BOX_EDGES:
            _line(img, uv[a], uv[b], colour, scale)
        f0, f1, f2, f3 = FRONT_FACE  # a cross on the front (+length) face
        _line(img, uv[f0], uv[f2], colour, scale)
        _line(img, uv[f1], uv[f3], colour, scale)
        # 2-sigma ellipse of the (x, z) position covariance, at the centre's height.
        cov_xz = covariances[i][np.ix_([0, 2], [0, 2])]
        if np.isfinite(cov_xz).all():
            w, v = np.linalg.eigh(0.5 * (cov_xz + cov_xz.T))
            axes = v * (2.0 * np.sqrt(np.clip(w, 0.0, None)))
            t = np.linspace(0, 2 * math.pi, 33)
            ring = (axes @ np.stack([np.cos(t), np.sin(t)]))  # (2, 33)
            pts = np.repeat(centers[i][None], 33, 0)
            pts[:, 0] += ring[0]
            pts[:, 2] += ring[1]
            ruv, rfront = _project(pts, cam_mat)
            if rfront.all():
                for a in range(32):
                    _line(img, ruv[a], ruv[a + 1], (255, 255, 255), scale)
        top = uv[:, 1].argmin()
        label = f"{class_names[int(labels[i])]} {scores[i]:.2f}"
        org = (int(np.clip(uv[top, 0], 0, img.shape[1] - 1)),
               int(np.clip(uv[top, 1] - 4, 10, img.shape[0] - 1)))
        cv2.putText(img, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, colour, scale,
                    cv2.LINE_AA)
    if samples is not None and len(samples):
        # Sample headings: short ticks from each sampled centre, blended so that dense (confident)
        # fans read as one bright stroke and spread (uncertain) ones as a faint fan.
        s = np.asarray(samples, dtype=np.float64)
        heading = np.stack([np.cos(s[:, 3]), np.zeros(len(s)), -np.sin(s[:, 3])], axis=1)
        a_uv, a_front = _project(s[:, :3], cam_mat)
        b_uv, b_front = _project(s[:, :3] + SAMPLE_TICK_M * heading, cam_mat)
        overlay = img.copy()
        for j in np.flatnonzero(a_front & b_front):
            _line(overlay, a_uv[j], b_uv[j], (0, 255, 255), 1)
        img = cv2.addWeighted(overlay, 0.45, img, 0.55, 0.0)
    return img


def _pose_array_to_samples(msg: Any) -> np.ndarray | None:
    if msg is None:
        return None
    out = []
    for pose in msg.poses:
        try:
            out.append(msg_to_pose(pose, dof=4, yaw_tolerance=1e-2))
        except ConversionError:
            continue
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def render_detections(
    nusc: Any,
    frames: Sequence[tuple[str, CameraBoxes, np.ndarray, Any]],
    out: str | Path,
    *,
    fps: float = 2.0,
    tile_width: int = 640,
) -> Path | None:
    """Draw each frame's detections onto its image; write ``out/frames/*.jpg`` and
    ``out/detections.mp4`` (one frame per sample, cameras tiled). Returns the video path (None
    when there is nothing to draw).

    Args:
        nusc: the devkit's ``NuScenes`` (images, calibration).
        frames: ``(sample_data token, boxes, covariances (M, 4, 4), PoseArray of samples or
            None)`` per image.
    """
    out = Path(out)
    frame_dir = out / "frames"
    frame_dir.mkdir(parents=True, exist_ok=True)
    by_sample: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    stamps: dict[str, int] = {}
    for sd_token, boxes, covs, samples_msg in frames:
        sd = nusc.get("sample_data", sd_token)
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        path = Path(nusc.dataroot) / sd["filename"]
        image = cv2.imread(str(path))
        if image is None:
            LOGGER.warning("cannot read %s; not rendered", path)
            continue
        drawn = draw_detections(image, np.asarray(cs["camera_intrinsic"]), boxes, covs,
                                _pose_array_to_samples(samples_msg))
        cv2.imwrite(str(frame_dir / f"{sd['channel'].lower()}_{sd['timestamp']}.jpg"), drawn)
        by_sample[sd["sample_token"]][sd["channel"]] = drawn
        stamps[sd["sample_token"]] = min(stamps.get(sd["sample_token"], sd["timestamp"]),
                                         sd["timestamp"])
    if not by_sample:
        return None
    any_image = next(iter(next(iter(by_sample.values())).values()))
    tile_h = round(tile_width * any_image.shape[0] / any_image.shape[1])
    video_path = out / "detections.mp4"
    size = (tile_width * len(TILES[0]), tile_h * len(TILES))
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        LOGGER.warning("OpenCV cannot write %s; the JPEG frames are in %s", video_path, frame_dir)
        return None
    try:
        for sample_token in sorted(by_sample, key=stamps.__getitem__):
            rows = []
            for row in TILES:
                tiles = []
                for channel in row:
                    img = by_sample[sample_token].get(channel)
                    tile = (np.zeros((tile_h, tile_width, 3), np.uint8) if img is None
                            else cv2.resize(img, (tile_width, tile_h),
                                            interpolation=cv2.INTER_AREA))
                    cv2.putText(tile, channel, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                                (255, 255, 255), 1, cv2.LINE_AA)
                    tiles.append(tile)
                rows.append(np.concatenate(tiles, axis=1))
            writer.write(np.concatenate(rows, axis=0))
    finally:
        writer.release()
    return video_path
