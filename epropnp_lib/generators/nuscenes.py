"""A format-faithful nuScenes ``v1.0-mini`` generator (tables, camera images, lidar, maps).

The devkit (``nuscenes-devkit``) loads the result like the real release: the 13 tables of
``<root>/<version>/*.json`` with the field names, types and key order of the real files,
``samples/CAM_*/<log>__<channel>__<timestamp>.jpg`` for the six cameras (real channel names,
calibrations and trigger offsets modelled on the real rig), ``samples/LIDAR_TOP/*.pcd.bin``
(float32 ``x, y, z, intensity, ring``) and ``maps/<hash>.png`` semantic-prior masks.  Scene names
are real ``mini_train`` / ``mini_val`` names so the devkit's splits (and ``DetectionEval``) work.

The world (:mod:`~epropnp_lib.generators.nuscenes_scene`) moves at constant velocity, so the
devkit's ``box_velocity`` and its box interpolation of sweeps are exact.  Key-frame images
(:mod:`~epropnp_lib.generators.nuscenes_camera`) show the actors at the *annotation* time seen
from the ego pose at the *camera's* timestamp, so the devkit's camera-frame boxes match the
pixels; the visibility token is the visible fraction of the box silhouettes over the six
cameras.  Every box holds lidar points (:mod:`~epropnp_lib.generators.nuscenes_lidar`).  Not
generated: radar sample data (``num_radar_pts`` is filled), CAN bus, map expansion,
lidarseg/panoptic.  Deterministic: the same arguments give byte-identical files.  ``look``
(:class:`~epropnp_lib.generators.nuscenes_looks.StreetLook`, CLI ``--look``) randomises light,
colours, textures, object shapes, camera height and pitch, noise, blur and JPEG quality per
scene; the default is the original fixed look.

Example::

    >>> import tempfile
    >>> out = generate_nuscenes_mini(tempfile.mkdtemp(), scenes=("scene-0103",),
    ...                              samples_per_scene=2, image_size=(96, 54))
    >>> out.num_samples, out.version
    (2, 'v1.0-mini')
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from epropnp_lib.errors import ConfigError
from epropnp_lib.generators.nuscenes_camera import CameraView, build_mesh, render_cameras
from epropnp_lib.generators.nuscenes_lidar import lidar_sweep
from epropnp_lib.generators.nuscenes_looks import (
    SceneLook,
    StreetLook,
    draw_scene_look,
    finish_image,
    jitter_sensor_pose,
)
from epropnp_lib.generators.nuscenes_scene import (
    KINDS,
    LIDAR_CHANNEL,
    MINI_SCENES,
    NUSCENES_IMAGE_SIZE,
    SENSORS,
    US_TO_S,
    Log,
    Rng,
    Scene,
    Sensor,
    actor_state,
    ego_pose,
    intrinsic_matrix,
    plan_scene,
    road_to_global,
    rot_z,
    scene_time,
)
from epropnp_lib.geometry.rotations import matrix_to_quat

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SCENES",
    "LIDAR_CHANNEL",
    "NUSCENES_IMAGE_SIZE",
    "GeneratedNuScenes",
    "generate_nuscenes_mini",
    "main",
]

#: One scene of ``mini_train`` and one of ``mini_val``.
DEFAULT_SCENES: tuple[str, ...] = ("scene-0061", "scene-0103")

_SAMPLE_PERIOD_US = 500_000  # key frames at 2 Hz
_CAMERA_PERIOD_US = 83_333  # 12 Hz camera sweeps
_LIDAR_PERIOD_US = 50_000  # 20 Hz lidar sweeps

# The nuScenes taxonomy with the lidarseg indices of category.json.
_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("noise", "Any lidar return that does not correspond to a physical object."),
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.construction_worker", "Construction worker"),
    ("human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure bicycles."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", "Bendy bus subcategory."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.car", "Vehicle designed primarily for personal use."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.trailer", "Any vehicle trailer."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
    ("flat.driveable_surface", "Surfaces should be regarded with no concern of traffic rules."),
    ("flat.other", "All other forms of horizontal ground-level structures."),
    ("flat.sidewalk", "Sidewalk, pedestrian walkways, bike paths, etc."),
    ("flat.terrain", "Natural horizontal surfaces such as ground level horizontal vegetation."),
    ("static.manmade", "Includes man-made structures but not limited to buildings and walls."),
    ("static.other", "Points in the background that are not distinguishable."),
    ("static.vegetation", "Any vegetation in the frame that is higher than the ground."),
    ("vehicle.ego", "The vehicle on which the sensors are mounted."),
)

_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary."),
    ("vehicle.parked", "Vehicle is stationary (usually for longer duration) with no rider."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)

_VISIBILITY: tuple[tuple[str, str, float], ...] = (
    ("1", "v0-40", 0.4), ("2", "v40-60", 0.6), ("3", "v60-80", 0.8), ("4", "v80-100", 1.01),
)

#: The tables each scene adds records to, after the four static ones (file order of the dict).
_SCENE_TABLES = ("calibrated_sensor", "ego_pose", "log", "scene", "sample", "sample_data",
                 "sample_annotation", "instance", "map")

_Tables = dict[str, list[dict[str, Any]]]


class GeneratedNuScenes(NamedTuple):
    """What :func:`generate_nuscenes_mini` wrote.

    Attributes:
        root: the dataroot (``NuScenes(dataroot=root, version=version)``).
        version: the table folder name, e.g. ``"v1.0-mini"``.
        scenes: the scene names.
        num_samples: key frames over all scenes.
        num_sample_data: sample_data records (key frames and sweeps of all sensors).
        num_annotations: sample_annotation records.
        num_instances: instance records.
    """

    root: Path
    version: str
    scenes: tuple[str, ...]
    num_samples: int
    num_sample_data: int
    num_annotations: int
    num_instances: int


@dataclass(frozen=True)
class _Options:
    """The per-file settings of one generation."""

    num_samples: int
    width: int
    height: int
    sweeps: bool
    azimuth_steps: int
    jpeg_quality: int
    look: StreetLook
    seed: int


class _Tokens(NamedTuple):
    """Token maker (``tok(*parts)``, seeded) and the tokens of the static tables."""

    tok: Callable[..., str]
    category: dict[str, str]
    attribute: dict[str, str]
    sensor: dict[str, str]


class _Frame(NamedTuple):
    """One sample_data record of a sensor: timestamp (us), key frame or sweep, and the index of
    the key frame it belongs to (a sweep belongs to the next key frame)."""

    timestamp: int
    key: bool
    sample: int


def _token(seed: int, *parts: object) -> str:
    """A 32-hex-digit token (the format of the real tables), deterministic in its parts."""
    text = "|".join([str(seed), *map(str, parts)])
    return hashlib.md5(text.encode()).hexdigest()


def _quat(rot: torch.Tensor) -> list[float]:
    return [float(x) for x in matrix_to_quat(rot)]


def _vec(t: torch.Tensor | Sequence[float]) -> list[float]:
    return [float(x) for x in t]


def _write_json(path: Path, table: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(table, indent=0) + "\n")


def _check_args(scenes: Sequence[str], samples_per_scene: int, image_size: Sequence[int],
                lidar_azimuth_steps: int, jpeg_quality: int) -> None:
    if isinstance(scenes, str) or not scenes:
        raise ConfigError("scenes: give a non-empty sequence of scene names")
    unknown = [s for s in scenes if s not in MINI_SCENES]
    if unknown:
        raise ConfigError(f"scenes: {unknown} are not v1.0-mini scenes; choose from "
                          f"{sorted(MINI_SCENES)} (the devkit's mini_train/mini_val splits)")
    if len(set(scenes)) != len(scenes):
        raise ConfigError(f"scenes: duplicate names in {list(scenes)}")
    if samples_per_scene < 2:
        raise ConfigError(f"samples_per_scene must be >= 2 (velocities need two key frames), "
                          f"got {samples_per_scene}")
    if len(image_size) != 2 or min(image_size) < 16:
        raise ConfigError(f"image_size must be (width, height) >= 16 px, got {image_size}")
    if lidar_azimuth_steps < 90:
        raise ConfigError(f"lidar_azimuth_steps must be >= 90, got {lidar_azimuth_steps}")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")


def generate_nuscenes_mini(
    root: str | Path,
    *,
    scenes: Sequence[str] = DEFAULT_SCENES,
    samples_per_scene: int = 8,
    image_size: tuple[int, int] = NUSCENES_IMAGE_SIZE,
    seed: int = 0,
    sweeps: bool = False,
    lidar_azimuth_steps: int = 720,
    jpeg_quality: int = 92,
    version: str = "v1.0-mini",
    look: StreetLook | None = None,
) -> GeneratedNuScenes:
    """Write a nuScenes-format dataset under ``root`` (see the module docstring).

    Args:
        root: dataroot to create (existing files of the same names are overwritten).
        scenes: real v1.0-mini scene names (``mini_train``: scene-0061, -0553, -0655, -0757,
            -0796, -1077, -1094, -1100; ``mini_val``: scene-0103, -0916).
        samples_per_scene: key frames per scene (2 Hz), >= 2.
        image_size: ``(width, height)``; intrinsics scale from the real 1600 x 900.
        seed: everything (world, noise, tokens) follows from it.
        sweeps: also write the non-key frames (cameras 12 Hz, lidar 20 Hz) under ``sweeps/``.
        lidar_azimuth_steps: lidar columns per revolution (32 rings each).
        jpeg_quality: OpenCV JPEG quality.
        version: table folder name.
        look: appearance randomisation (default: the original fixed look).

    Returns:
        :class:`GeneratedNuScenes`.

    Raises:
        ConfigError: unknown scene names or out-of-range arguments.
    """
    _check_args(scenes, samples_per_scene, image_size, lidar_azimuth_steps, jpeg_quality)
    root = Path(root)
    opts = _Options(samples_per_scene, int(image_size[0]), int(image_size[1]), sweeps,
                    lidar_azimuth_steps, jpeg_quality, look or StreetLook(), seed)
    table_dir = root / version
    table_dir.mkdir(parents=True, exist_ok=True)
    rng = Rng(seed)
    tokens, tables = _static_tables(functools.partial(_token, seed))
    duration = (samples_per_scene - 1) * _SAMPLE_PERIOD_US * US_TO_S
    locations: dict[str, list[tuple[str, Scene]]] = {}
    total_sd = 0
    for scene_name in scenes:
        log = MINI_SCENES[scene_name]
        n_loc = len(locations.get(log.location, []))
        origin = (200.0 + 40.0 * n_loc, 200.0 + 25.0 * n_loc)  # keeps global x, y > 0
        scene = plan_scene(rng, scene_name, log, origin, duration)
        locations.setdefault(log.location, []).append((tokens.tok("log", log.logfile), scene))
        total_sd += _write_scene(root, tables, scene, opts, rng, tokens)
        logger.info("generated %s: %d key frames, %d actors", scene_name, samples_per_scene,
                    len(scene.actors))
    for location, entries in locations.items():
        filename = f"maps/{hashlib.md5(f'{seed}|{location}'.encode()).hexdigest()}.png"
        _write_map(root / filename, [s for _, s in entries])
        tables["map"].append({"category": "semantic_prior", "token": tokens.tok("map", location),
                              "filename": filename,
                              "log_tokens": list(dict.fromkeys(t for t, _ in entries))})
    for name, table in tables.items():
        _write_json(table_dir / f"{name}.json", table)
    return GeneratedNuScenes(root, version, tuple(scenes), len(tables["sample"]), total_sd,
                             len(tables["sample_annotation"]), len(tables["instance"]))


def _static_tables(tok: Callable[..., str]) -> tuple[_Tokens, _Tables]:
    """The tokens and records of the category, attribute, visibility and sensor tables, and the
    (empty) tables the scenes fill."""
    tokens = _Tokens(tok,
                     {name: tok("category", name) for name, _ in _CATEGORIES},
                     {name: tok("attribute", name) for name, _ in _ATTRIBUTES},
                     {s.channel: tok("sensor", s.channel) for s in SENSORS})
    tables: _Tables = {
        "category": [{"token": tokens.category[n], "name": n, "description": d, "index": i}
                     for i, (n, d) in enumerate(_CATEGORIES)],
        "attribute": [{"token": tokens.attribute[n], "name": n, "description": d}
                      for n, d in _ATTRIBUTES],
        "visibility": [{"description": f"visibility of whole object is between "
                                       f"{lvl[1:].split('-')[0]} and {lvl.split('-')[1]}%",
                        "token": t, "level": lvl} for t, lvl, _ in _VISIBILITY],
        "sensor": [{"token": tokens.sensor[s.channel], "channel": s.channel,
                    "modality": s.modality} for s in SENSORS],
    }
    for name in _SCENE_TABLES:
        tables[name] = []
    return tokens, tables


def _write_map(path: Path, scenes: Sequence[Scene]) -> None:
    """Semantic prior mask (0.1 m / px, origin at the bottom-left): road and sidewalks = 255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    res = 0.1
    extent = 0.0
    polys = []
    for scene in scenes:
        corners = [road_to_global(scene, s, lat) for s, lat in
                   ((-60.0, -11.0), (160.0, -11.0), (160.0, 11.0), (-60.0, 11.0))]
        polys.append(corners)
        extent = max(extent, *(max(x, y) for x, y in corners))
    size = int(math.ceil((extent + 20.0) / res))
    mask = np.zeros((size, size), dtype=np.uint8)
    for corners in polys:
        px = np.array([[x / res, size - y / res] for x, y in corners], dtype=np.float64)
        cv2.fillPoly(mask, [np.clip(np.round(px), 0, size - 1).astype(np.int32)], (255,))
    cv2.imwrite(str(path), mask)


def _write_scene(root: Path, tables: _Tables, scene: Scene, opts: _Options, rng: Rng,
                 tokens: _Tokens) -> int:
    """Write one scene's records into ``tables`` and its images / point clouds under ``root``.

    Returns the number of sample_data records written.
    """
    tok, name, num_samples = tokens.tok, scene.name, opts.num_samples
    log_token = _add_log(tables, scene.log, tok)
    look = draw_scene_look(opts.look, opts.seed, name, len(scene.actors))
    sensors = tuple(_jittered(s, look) for s in SENSORS)
    calib_tok = _add_calibrations(tables, name, tokens, opts, sensors)
    for a_i, actor in enumerate(scene.actors):
        actor.token = tok("instance", name, a_i)
    # Key-frame timestamps (2 Hz with a little jitter) and the frames of every sensor.
    sample_ts = [scene.log.start_us + k * _SAMPLE_PERIOD_US + (rng.randint(-800, 800) if k else 0)
                 for k in range(num_samples)]
    sample_tok = [tok("sample", name, k) for k in range(num_samples)]
    frames = {s.channel: _sensor_frames(s, sample_ts, opts.sweeps) for s in SENSORS}
    _add_sample_data(tables, scene, frames, sample_tok, calib_tok, tok, opts)
    visibility = _write_images(root, scene, frames, sample_ts, opts, rng, look, sensors)
    lidar_counts = _write_lidar(root, scene, frames[LIDAR_CHANNEL], opts, rng)
    for k in range(num_samples):
        tables["sample"].append({"token": sample_tok[k], "timestamp": sample_ts[k],
                                 "prev": sample_tok[k - 1] if k > 0 else "",
                                 "next": sample_tok[k + 1] if k + 1 < num_samples else "",
                                 "scene_token": tok("scene", name)})
    _add_annotations(tables, scene, sample_ts, sample_tok, visibility, lidar_counts, tokens, rng)
    tables["scene"].append({"token": tok("scene", name), "log_token": log_token,
                            "nbr_samples": num_samples, "first_sample_token": sample_tok[0],
                            "last_sample_token": sample_tok[-1], "name": name,
                            "description": scene.log.description})
    return sum(len(v) for v in frames.values())


def _add_log(tables: _Tables, log: Log, tok: Callable[..., str]) -> str:
    """The log's token; its record is added once (scenes of one log share it)."""
    log_token = tok("log", log.logfile)
    if all(r["token"] != log_token for r in tables["log"]):
        tables["log"].append({"token": log_token, "logfile": log.logfile,
                              "vehicle": log.vehicle, "date_captured": log.date,
                              "location": log.location})
    return log_token


def _jittered(sensor: Sensor, look: SceneLook) -> Sensor:
    """``sensor`` moved by the scene's camera height and pitch (cameras only)."""
    if sensor.modality != "camera":
        return sensor
    translation, rotation = jitter_sensor_pose(sensor.translation, sensor.rotation, look)
    return dataclasses.replace(sensor, translation=translation, rotation=rotation)


def _add_calibrations(tables: _Tables, name: str, tokens: _Tokens, opts: _Options,
                      sensors: Sequence[Sensor]) -> dict[str, str]:
    """One calibrated_sensor record per sensor of the scene; returns their tokens by channel."""
    calib_tok = {}
    for s in sensors:
        calib_tok[s.channel] = tokens.tok("calibrated_sensor", name, s.channel)
        tables["calibrated_sensor"].append({
            "token": calib_tok[s.channel], "sensor_token": tokens.sensor[s.channel],
            "translation": list(s.translation),
            "rotation": _vec(torch.tensor(s.rotation, dtype=torch.float64)
                             / torch.tensor(s.rotation, dtype=torch.float64).norm()),
            "camera_intrinsic": (intrinsic_matrix(s, opts.width, opts.height)
                                 if s.intrinsic else []),
        })
    return calib_tok


def _sensor_frames(sensor: Sensor, sample_ts: Sequence[int], sweeps: bool) -> list[_Frame]:
    """The frames of a sensor: its key frames (key-frame time + trigger offset) and, with
    ``sweeps``, the sweeps at its period between them."""
    frames = []
    for k in range(len(sample_ts)):
        key_ts = sample_ts[k] + sensor.offset_us
        if sweeps and k > 0:
            prev_ts = sample_ts[k - 1] + sensor.offset_us
            period = _CAMERA_PERIOD_US if sensor.modality == "camera" else _LIDAR_PERIOD_US
            ts = prev_ts + period
            while ts < key_ts - period // 2:
                frames.append(_Frame(ts, False, k))
                ts += period
        frames.append(_Frame(key_ts, True, k))
    return frames


def _data_path(scene: Scene, channel: str, frame: _Frame, ext: str) -> str:
    """``samples|sweeps/<channel>/<log>__<channel>__<timestamp>.<ext>``."""
    folder = "samples" if frame.key else "sweeps"
    return f"{folder}/{channel}/{scene.log.logfile}__{channel}__{frame.timestamp}.{ext}"


def _add_sample_data(tables: _Tables, scene: Scene, frames: dict[str, list[_Frame]],
                     sample_tok: Sequence[str], calib_tok: dict[str, str],
                     tok: Callable[..., str], opts: _Options) -> None:
    """Sample-data records (linked per sensor) and their ego poses."""
    for s in SENSORS:
        lst = frames[s.channel]
        toks = [tok("sample_data", scene.name, s.channel, f.timestamp) for f in lst]
        is_cam = s.modality == "camera"
        for j, frame in enumerate(lst):
            ts = frame.timestamp
            ego_rot, ego_trans = ego_pose(scene, scene_time(scene, ts))
            pose_tok = tok("ego_pose", scene.name, s.channel, ts)
            tables["ego_pose"].append({"token": pose_tok, "timestamp": ts,
                                       "rotation": _quat(ego_rot),
                                       "translation": _vec(ego_trans)})
            tables["sample_data"].append({
                "token": toks[j], "sample_token": sample_tok[frame.sample],
                "ego_pose_token": pose_tok,
                "calibrated_sensor_token": calib_tok[s.channel], "timestamp": ts,
                "fileformat": "jpg" if is_cam else "pcd", "is_key_frame": frame.key,
                "height": opts.height if is_cam else 0, "width": opts.width if is_cam else 0,
                "filename": _data_path(scene, s.channel, frame, "jpg" if is_cam else "pcd.bin"),
                "prev": toks[j - 1] if j > 0 else "",
                "next": toks[j + 1] if j + 1 < len(lst) else "",
            })


def _write_images(root: Path, scene: Scene, frames: dict[str, list[_Frame]],
                  sample_ts: Sequence[int], opts: _Options, rng: Rng, look: SceneLook,
                  sensors: Sequence[Sensor]) -> torch.Tensor:
    """Render and write the camera images (one slot of the six cameras at a time); returns the
    visible fraction ``(K, A)`` float64 of each actor's silhouette over the key frames."""
    visibility = torch.zeros(opts.num_samples, len(scene.actors), dtype=torch.float64)
    mesh = build_mesh(scene.actors, look)
    by_slot: dict[tuple[int, int], list[tuple[Sensor, _Frame]]] = {}
    image_index = 0
    for s in sensors:
        if s.modality != "camera":
            continue
        per_k: dict[int, int] = {}
        for frame in frames[s.channel]:
            j = per_k.get(frame.sample, 0)
            per_k[frame.sample] = j + 1
            by_slot.setdefault((frame.sample, -1 if frame.key else j), []).append((s, frame))
    for (k, _), entries in sorted(by_slot.items()):
        hull = torch.zeros(len(scene.actors), dtype=torch.float64)
        vis = torch.zeros(len(scene.actors), dtype=torch.float64)
        for s, frame in entries:  # one camera at a time bounds the memory at 1600 x 900
            ts = frame.timestamp
            ego_rot, ego_trans = ego_pose(scene, scene_time(scene, ts))
            view = CameraView(s, ego_rot, ego_trans,
                              scene_time(scene, sample_ts[k] if frame.key else ts))
            render = render_cameras(scene, mesh, [view], opts.width, opts.height, rng, look)
            path = root / _data_path(scene, s.channel, frame, "jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            image, quality = finish_image(render.images[0], look, image_index)
            image_index += 1
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY,
                                                   quality or opts.jpeg_quality])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {path}")
            path.write_bytes(buf.tobytes())
            hull += render.hull_px[0]
            vis += render.visible_px[0]
        if all(frame.key for _, frame in entries):
            visibility[k] = torch.where(hull > 0, (vis / hull.clamp(min=1.0)).clamp(max=1.0), 0.0)
    return visibility


def _write_lidar(root: Path, scene: Scene, frames: Sequence[_Frame], opts: _Options,
                 rng: Rng) -> torch.Tensor:
    """Write the lidar sweeps; returns the lidar points ``(K, A)`` long per actor and key
    frame."""
    lidar_counts = torch.zeros(opts.num_samples, len(scene.actors), dtype=torch.long)
    for frame in frames:
        t = scene_time(scene, frame.timestamp)
        cloud, counts = lidar_sweep(scene, t, t, opts.azimuth_steps, rng)
        path = root / _data_path(scene, LIDAR_CHANNEL, frame, "pcd.bin")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cloud.tobytes())
        if frame.key:
            lidar_counts[frame.sample] = counts
    return lidar_counts


def _add_annotations(tables: _Tables, scene: Scene, sample_ts: Sequence[int],
                     sample_tok: Sequence[str], visibility: torch.Tensor,
                     lidar_counts: torch.Tensor, tokens: _Tokens, rng: Rng) -> None:
    """The sample_annotation records of every actor and key frame, and the instance records."""
    num_samples = len(sample_ts)
    for a_i, actor in enumerate(scene.actors):
        ann = [tokens.tok("sample_annotation", scene.name, a_i, k) for k in range(num_samples)]
        for k in range(num_samples):
            t = scene_time(scene, sample_ts[k])
            center, yaw = actor_state(scene, actor, t)
            frac = float(visibility[k, a_i])
            vis_token = next(tv for tv, _, hi in _VISIBILITY if frac < hi)
            radar = 0
            if KINDS[actor.category].texture in ("vehicle", "trailer"):
                _, ego_trans = ego_pose(scene, t)
                dist = math.dist(center[:2], _vec(ego_trans[:2]))
                radar = rng.randint(0, 4) if dist < 60.0 else 0
            tables["sample_annotation"].append({
                "token": ann[k], "sample_token": sample_tok[k], "instance_token": actor.token,
                "visibility_token": vis_token,
                "attribute_tokens": ([tokens.attribute[actor.attribute]] if actor.attribute
                                     else []),
                "translation": center, "size": list(actor.size),
                "rotation": _quat(rot_z(yaw)),
                "prev": ann[k - 1] if k > 0 else "",
                "next": ann[k + 1] if k + 1 < num_samples else "",
                "num_lidar_pts": int(lidar_counts[k, a_i]), "num_radar_pts": radar,
            })
        tables["instance"].append({"token": actor.token,
                                   "category_token": tokens.category[actor.category],
                                   "nbr_annotations": num_samples,
                                   "first_annotation_token": ann[0],
                                   "last_annotation_token": ann[-1]})


_LOOKS: dict[str, Callable[[], StreetLook]] = {
    "default": StreetLook, "training": StreetLook.training, "shifted": StreetLook.shifted}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m epropnp_lib.generators.nuscenes --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="dataroot to write")
    parser.add_argument("--scenes", nargs="+", default=list(DEFAULT_SCENES))
    parser.add_argument("--samples-per-scene", type=int, default=8)
    parser.add_argument("--image-size", type=int, nargs=2, default=list(NUSCENES_IMAGE_SIZE),
                        metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweeps", action="store_true", help="also write non-key frames")
    parser.add_argument("--lidar-azimuth-steps", type=int, default=720)
    parser.add_argument("--look", choices=sorted(_LOOKS), default="default",
                        help="appearance: the original fixed look, the randomised training "
                             "look, or the shifted validation look (StreetLook presets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = generate_nuscenes_mini(
            args.out, scenes=args.scenes, samples_per_scene=args.samples_per_scene,
            image_size=(args.image_size[0], args.image_size[1]), seed=args.seed,
            sweeps=args.sweeps, lidar_azimuth_steps=args.lidar_azimuth_steps,
            look=_LOOKS[args.look]())
    except ConfigError as exc:
        parser.error(str(exc))
    logger.info("wrote %s (%s): %d scenes, %d samples, %d sample_data, %d annotations",
                out.root, out.version, len(out.scenes), out.num_samples, out.num_sample_data,
                out.num_annotations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
