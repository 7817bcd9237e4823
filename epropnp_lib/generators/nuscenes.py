"""A format-faithful nuScenes ``v1.0-mini`` generator (tables, camera images, lidar, maps).

The devkit (``nuscenes-devkit``) loads the result like the real release: the 13 tables of
``<root>/<version>/*.json`` with the field names, types and key order of the real files,
``samples/CAM_*/<log>__<channel>__<timestamp>.jpg`` for the six cameras (real channel names,
calibrations and trigger offsets modelled on the real rig), ``samples/LIDAR_TOP/*.pcd.bin``
(float32 ``x, y, z, intensity, ring``) and ``maps/<hash>.png`` semantic-prior masks.  Scene names
are real ``mini_train`` / ``mini_val`` names so the devkit's splits (and ``DetectionEval``) work.

World model (per scene, seeded): the ego drives along a straight two-lane-per-direction street
(right-hand traffic in Boston logs, left-hand in Singapore logs) at constant speed.  Actors of the
10 detection classes -- and two non-detection categories -- are placed in lanes, parking lanes,
a construction zone and on the sidewalks; moving actors keep a constant velocity, so the
devkit's ``box_velocity`` (finite differences of the annotations) is exact, and their attributes
(``vehicle.moving`` / ``parked`` / ``stopped``, ``pedestrian.*``, ``cycle.*``) agree with the
motion.  Every box contains lidar points (ray-cast hits, plus a few interior returns for boxes no
ray reaches), so none is dropped from the evaluation.

Images: an analytic street background (ground plane with lane markings, sidewalks, building
facades, sky, distance haze) with the boxes drawn on top as shaded, class-coloured cuboids by
:func:`epropnp_lib.geometry.raster.rasterize`; each face has a texture that shows the orientation
(vehicles: windscreen and headlights on the front, tail lights at the back, wheels and windows on
the sides; pedestrians: a face on the front).  Objects are rendered at the *annotation* time of a
key frame (the sample/lidar timestamp) seen from the ego pose at the *camera's* timestamp, so the
devkit's camera-frame boxes (annotation moved with that camera's ego pose and calibration)
match the pixels exactly.  Sweeps (optional) render the actors at their own timestamps, which the
devkit's box interpolation reproduces exactly for constant-velocity motion.  The visibility
token is the visible fraction of the box silhouettes over the six cameras.

Not generated: radar sample data (``num_radar_pts`` is still filled), CAN bus, map expansion,
lidarseg/panoptic.  Deterministic: the same arguments give byte-identical tables and files.

Example::

    >>> import tempfile
    >>> out = generate_nuscenes_mini(tempfile.mkdtemp(), scenes=("scene-0103",),
    ...                              samples_per_scene=2, image_size=(96, 54))
    >>> out.num_samples, out.version
    (2, 'v1.0-mini')
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.raster import rasterize
from epropnp_lib.geometry.rotations import matrix_to_quat, quat_to_matrix

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SCENES",
    "LIDAR_CHANNEL",
    "NUSCENES_IMAGE_SIZE",
    "GeneratedNuScenes",
    "generate_nuscenes_mini",
    "main",
]

LIDAR_CHANNEL = "LIDAR_TOP"
#: Image size (width, height) of the real nuScenes cameras.
NUSCENES_IMAGE_SIZE: tuple[int, int] = (1600, 900)
#: One scene of ``mini_train`` and one of ``mini_val``.
DEFAULT_SCENES: tuple[str, ...] = ("scene-0061", "scene-0103")

_SAMPLE_PERIOD_US = 500_000  # key frames at 2 Hz
_CAMERA_PERIOD_US = 83_333  # 12 Hz camera sweeps
_LIDAR_PERIOD_US = 50_000  # 20 Hz lidar sweeps
_LIDAR_RANGE = 70.0
_LIDAR_ELEVATIONS_DEG = tuple(-30.67 + 1.33 * i for i in range(32))  # HDL-32E-like rings


@dataclass(frozen=True)
class _Sensor:
    channel: str
    modality: str
    translation: tuple[float, float, float]  # sensor -> ego, metres
    rotation: tuple[float, float, float, float]  # sensor -> ego, (w, x, y, z)
    intrinsic: tuple[float, float, float] | None  # (f, cx, cy) at 1600 x 900
    offset_us: int  # trigger time relative to the key-frame (lidar) timestamp


# Calibrations and trigger offsets modelled on the real nuScenes rig (optical camera frames).
_SENSORS: tuple[_Sensor, ...] = (
    _Sensor("CAM_FRONT", "camera", (1.70079, 0.01595, 1.51096),
            (0.49980, -0.50303, 0.49978, -0.49737), (1266.417, 816.267, 491.507), -35186),
    _Sensor("CAM_FRONT_RIGHT", "camera", (1.55085, -0.49340, 1.49575),
            (0.20603, -0.20269, 0.68245, -0.67136), (1260.847, 807.968, 495.334), -27108),
    _Sensor("CAM_BACK_RIGHT", "camera", (1.01488, -0.48057, 1.56240),
            (0.12281, -0.13240, -0.70043, 0.69050), (1259.514, 807.253, 501.196), -19477),
    _Sensor("CAM_BACK", "camera", (0.02833, 0.00345, 1.57910),
            (0.50379, -0.49740, -0.49419, 0.50455), (809.221, 829.220, 481.778), -10032),
    _Sensor("CAM_BACK_LEFT", "camera", (1.03569, 0.48480, 1.59097),
            (0.69242, -0.70316, -0.11648, 0.11203), (1256.741, 792.113, 492.776), -185),
    _Sensor("CAM_FRONT_LEFT", "camera", (1.52388, 0.49463, 1.50933),
            (0.67573, -0.67363, 0.21214, -0.21123), (1272.598, 826.615, 479.752), 7254),
    _Sensor(LIDAR_CHANNEL, "lidar", (0.943713, 0.0, 1.84023),
            (0.70780, -0.00649, 0.01065, -0.70631), None, 0),
)


@dataclass(frozen=True)
class _Log:
    logfile: str
    location: str
    start_us: int
    description: str

    @property
    def vehicle(self) -> str:
        return self.logfile[:4]

    @property
    def date(self) -> str:
        return self.logfile[5:15]

    @property
    def left_hand_traffic(self) -> bool:
        return self.location.startswith("singapore")


# The ten mini scenes with logs in the real naming pattern (date, vehicle, location).
_MINI_SCENES: dict[str, _Log] = {
    "scene-0061": _Log("n015-2018-07-24-11-22-45+0800", "singapore-onenorth", 1532402927647951,
                       "Parked truck, construction, intersection, turn left, following a van"),
    "scene-0103": _Log("n008-2018-08-01-15-16-36-0400", "boston-seaport", 1533151603547590,
                       "Many peds right, wait for turning car, long bike rack left, cyclist"),
    "scene-0553": _Log("n008-2018-08-28-16-43-51-0400", "boston-seaport", 1535489296047917,
                       "Wait at intersection, bicycle, large truck, peds crossing crosswalk"),
    "scene-0655": _Log("n008-2018-08-27-11-48-51-0400", "boston-seaport", 1535385092150099,
                       "Parking lot, parked cars, jaywalker, bendy bus, gardening vehicles"),
    "scene-0757": _Log("n008-2018-08-30-15-16-55-0400", "boston-seaport", 1535657108301131,
                       "Arrive at busy intersection, bus, wait at intersection, bicycle, peds"),
    "scene-0796": _Log("n015-2018-10-02-10-50-40+0800", "singapore-queenstown", 1538448750447639,
                       "Scooter, peds on sidewalk, bus, cars, truck, fake construction worker"),
    "scene-0916": _Log("n015-2018-10-08-15-36-50+0800", "singapore-queenstown", 1538984233547259,
                       "Parking lot, bicycle rack, parked bicycles, bus, many peds"),
    "scene-1077": _Log("n015-2018-11-21-19-38-26+0800", "singapore-hollandvillage",
                       1542800367947771, "Night, big street, bus stop, high speed, red light"),
    "scene-1094": _Log("n015-2018-11-21-19-38-26+0800", "singapore-hollandvillage",
                       1542801000947890, "Night, after rain, many peds, PMD, ped with bag"),
    "scene-1100": _Log("n015-2018-11-21-19-38-26+0800", "singapore-hollandvillage",
                       1542801707947837, "Night, peds in sidewalk, peds cross crosswalk"),
}

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


@dataclass(frozen=True)
class _Kind:
    """How a category looks: mean size (w, l, h), colour (RGB 0..1) and texture family."""

    category: str
    size: tuple[float, float, float]
    color: tuple[float, float, float]
    texture: str  # vehicle | person | cycle | cone | barrier | plain


_KINDS: dict[str, _Kind] = {k.category: k for k in (
    _Kind("vehicle.car", (1.95, 4.62, 1.73), (0.16, 0.35, 0.80), "vehicle"),
    _Kind("vehicle.truck", (2.52, 6.9, 2.9), (0.80, 0.47, 0.16), "vehicle"),
    _Kind("vehicle.bus.rigid", (2.95, 11.2, 3.5), (0.15, 0.68, 0.72), "vehicle"),
    _Kind("vehicle.trailer", (2.9, 11.5, 3.8), (0.25, 0.50, 0.25), "trailer"),
    _Kind("vehicle.construction", (2.85, 6.4, 3.2), (0.95, 0.78, 0.10), "vehicle"),
    _Kind("human.pedestrian.adult", (0.67, 0.73, 1.77), (0.80, 0.24, 0.62), "person"),
    _Kind("human.pedestrian.construction_worker", (0.70, 0.75, 1.78), (0.95, 0.55, 0.75),
          "person"),
    _Kind("vehicle.motorcycle", (0.77, 2.11, 1.47), (0.48, 0.24, 0.80), "cycle"),
    _Kind("vehicle.bicycle", (0.60, 1.70, 1.28), (0.58, 0.82, 0.24), "cycle"),
    _Kind("movable_object.trafficcone", (0.41, 0.41, 1.07), (1.00, 0.45, 0.00), "cone"),
    _Kind("movable_object.barrier", (2.53, 0.50, 0.98), (0.82, 0.10, 0.10), "barrier"),
    _Kind("movable_object.pushable_pullable", (0.60, 0.65, 1.05), (0.45, 0.45, 0.45), "plain"),
    _Kind("static_object.bicycle_rack", (3.0, 0.7, 0.9), (0.55, 0.55, 0.58), "plain"),
)}

_TEXTURES = ("vehicle", "trailer", "person", "cycle", "cone", "barrier", "plain")


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


class _Rng:
    """Seeded scalar draws from a ``torch.Generator``."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.gen, dtype=torch.float64))

    def randint(self, lo: int, hi: int) -> int:
        """Integer in [lo, hi]."""
        return int(torch.randint(lo, hi + 1, (), generator=self.gen))

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.randint(0, len(options) - 1)]

    def chance(self, p: float) -> bool:
        return self.uniform(0.0, 1.0) < p


def _token(seed: int, *parts: object) -> str:
    """A 32-hex-digit token (the format of the real tables), deterministic in its parts."""
    text = "|".join([str(seed), *map(str, parts)])
    return hashlib.md5(text.encode()).hexdigest()


@dataclass
class _Actor:
    category: str
    size: tuple[float, float, float]  # (w, l, h)
    s0: float  # longitudinal road coordinate at t = 0
    lat: float  # lateral road coordinate (left positive)
    speed: float  # along the road direction, m/s
    heading: float  # yaw relative to the road direction
    attribute: str | None
    color: tuple[float, float, float]
    token: str = ""
    ann_tokens: list[str] = field(default_factory=list)


@dataclass
class _Scene:
    name: str
    log: _Log
    origin: tuple[float, float]  # road origin in the global frame
    road_yaw: float
    ego_speed: float
    ego_lat: float
    pitch: float
    roll: float
    actors: list[_Actor]


# ---------------------------------------------------------------------------------------------
# World planning
# ---------------------------------------------------------------------------------------------

def _make_actor(rng: _Rng, category: str, s0: float, lat: float, speed: float, heading: float,
                attribute: str | None) -> _Actor:
    kind = _KINDS[category]
    scale = rng.uniform(0.92, 1.08)
    w, length, h = kind.size
    size = (round(w * rng.uniform(0.95, 1.05) * scale, 3),
            round(length * rng.uniform(0.95, 1.05) * scale, 3),
            round(h * rng.uniform(0.95, 1.05), 3))
    shade = rng.uniform(0.85, 1.1)
    color = tuple(min(1.0, c * shade) for c in kind.color)
    return _Actor(category, size, s0, lat, speed, heading, attribute,
                  (color[0], color[1], color[2]))


def _along(actor_size: tuple[float, float, float], heading: float) -> float:
    """Extent of a box along the road direction."""
    w, length, _ = actor_size
    return abs(length * math.cos(heading)) + abs(w * math.sin(heading))


def _fill_line(rng: _Rng, actors: list[_Actor], s_lo: float, s_hi: float, lat: float,
               speed: float, pick: Any, gap: tuple[float, float]) -> None:
    """Place actors one after another along a lateral line between s_lo and s_hi."""
    s = s_lo + rng.uniform(*gap)
    while True:
        category, heading, attribute = pick()
        actor = _make_actor(rng, category, 0.0, lat, speed, heading, attribute)
        ext = _along(actor.size, heading)
        if s + ext > s_hi:
            return
        actor.s0 = s + ext / 2
        actors.append(actor)
        s += ext + rng.uniform(*gap)


def _plan_scene(rng: _Rng, name: str, log: _Log, origin: tuple[float, float],
                duration: float) -> _Scene:
    side = 1.0 if log.left_hand_traffic else -1.0  # lateral sign of the ego's direction
    ego_speed = rng.uniform(4.0, 6.5)
    ego_lat = side * 1.75
    travel = ego_speed * duration
    ahead = travel + 45.0
    actors: list[_Actor] = []
    fwd, back = 0.0, math.pi

    # Ego lane: a vehicle followed at the ego's speed, one following the ego.
    lead = rng.choice(("vehicle.car", "vehicle.car", "vehicle.truck"))
    actors.append(_make_actor(rng, lead, rng.uniform(13.0, 17.0), ego_lat, ego_speed, fwd,
                              "vehicle.moving"))
    actors.append(_make_actor(rng, "vehicle.car", -rng.uniform(11.0, 14.0), ego_lat, ego_speed,
                              fwd, "vehicle.moving"))

    # Same-direction outer lane: construction zone, construction vehicle, parked vehicles.
    outer = side * 5.25
    s = rng.uniform(8.0, 11.0)
    for _ in range(rng.randint(3, 4)):  # barriers across the lane edge
        a = _make_actor(rng, "movable_object.barrier", s, outer - side * 0.6, 0.0,
                        math.pi / 2 + rng.uniform(-0.05, 0.05), None)
        actors.append(a)
        s += a.size[0] + rng.uniform(0.2, 0.5)
    cone_s = rng.uniform(8.0, 10.0)
    for _ in range(rng.randint(3, 4)):
        actors.append(_make_actor(rng, "movable_object.trafficcone", cone_s,
                                  outer + side * 1.2, 0.0, rng.uniform(-math.pi, math.pi), None))
        cone_s += rng.uniform(2.2, 3.2)
    s = max(s, cone_s) + 1.5
    cv = _make_actor(rng, "vehicle.construction", 0.0, outer, 0.0, fwd + rng.uniform(-0.1, 0.1),
                     rng.choice(("vehicle.parked", "vehicle.stopped")))
    cv.s0 = s + cv.size[1] / 2
    actors.append(cv)
    truck = _make_actor(rng, "vehicle.truck", 0.0, outer, 0.0, fwd + rng.uniform(-0.05, 0.05),
                        rng.choice(("vehicle.parked", "vehicle.stopped")))
    truck.s0 = cv.s0 + cv.size[1] / 2 + rng.uniform(1.5, 4.0) + truck.size[1] / 2
    actors.append(truck)
    _fill_line(rng, actors, truck.s0 + truck.size[1] / 2, ahead, outer, 0.0,
               lambda: (rng.choice(("vehicle.car", "vehicle.car", "vehicle.truck")),
                        fwd + rng.uniform(-0.06, 0.06),
                        rng.choice(("vehicle.parked", "vehicle.parked", "vehicle.stopped"))),
               (1.0, 6.0))
    _fill_line(rng, actors, -30.0, 4.0, outer, 0.0,
               lambda: ("vehicle.car", fwd + rng.uniform(-0.06, 0.06), "vehicle.parked"),
               (1.0, 6.0))

    # Oncoming inner lane: moving traffic (a bus first), motorcycle with rider.
    onc_speed = -rng.uniform(5.0, 8.0)
    onc_lat = -side * 1.75
    first = rng.uniform(30.0, 38.0)
    bus = _make_actor(rng, "vehicle.bus.rigid", first, onc_lat, onc_speed, back, "vehicle.moving")
    actors.append(bus)
    _fill_line(rng, actors, first + bus.size[1] / 2, first + 90.0, onc_lat, onc_speed,
               lambda: (rng.choice(("vehicle.car", "vehicle.car", "vehicle.truck",
                                    "vehicle.motorcycle")), back,
                        "MOVING"), (8.0, 16.0))
    _fill_line(rng, actors, -40.0, first - bus.size[1] / 2 - 6.0, onc_lat, onc_speed,
               lambda: (rng.choice(("vehicle.car", "vehicle.motorcycle")), back, "MOVING"),
               (8.0, 16.0))

    # Oncoming outer lane: a parked trailer and parked cars.
    far = -side * 5.25
    trailer = _make_actor(rng, "vehicle.trailer", rng.uniform(18.0, 26.0), far, 0.0,
                          back + rng.uniform(-0.05, 0.05), "vehicle.parked")
    actors.append(trailer)
    _fill_line(rng, actors, trailer.s0 + trailer.size[1] / 2, ahead, far, 0.0,
               lambda: ("vehicle.car", back + rng.uniform(-0.06, 0.06), "vehicle.parked"),
               (1.5, 7.0))
    _fill_line(rng, actors, -30.0, trailer.s0 - trailer.size[1] / 2 - 1.0, far, 0.0,
               lambda: ("vehicle.car", back + rng.uniform(-0.06, 0.06), "vehicle.parked"),
               (1.5, 7.0))

    # Sidewalks on both sides: kerb line (standing people, parked cycles, bin, bike rack),
    # two walking lines (one per direction) and a bike line.
    for k in (1.0, -1.0):
        _fill_line(rng, actors, -15.0, ahead, k * 7.6, 0.0,
                   lambda kk=k: rng.choice((
                       ("human.pedestrian.adult", rng.uniform(-math.pi, math.pi),
                        "pedestrian.standing"),
                       ("vehicle.bicycle", (kk > 0) * math.pi + rng.uniform(-0.1, 0.1),
                        "cycle.without_rider"),
                       ("vehicle.motorcycle", (kk > 0) * math.pi + rng.uniform(-0.1, 0.1),
                        "cycle.without_rider"),
                       ("movable_object.pushable_pullable", rng.uniform(-math.pi, math.pi), None),
                   )), (4.0, 12.0))
        for lat, direction in ((k * 8.5, 1.0), (k * 9.3, -1.0)):
            walk = direction * rng.uniform(1.1, 1.5)
            _fill_line(rng, actors, -15.0, ahead + 10.0, lat, walk,
                       lambda d=direction: ("human.pedestrian.adult",
                                            0.0 if d > 0 else math.pi, "pedestrian.moving"),
                       (6.0, 16.0))
        bike = rng.uniform(3.5, 5.0)
        _fill_line(rng, actors, -10.0, ahead, k * 10.1, bike,
                   lambda: ("vehicle.bicycle", 0.0, "cycle.with_rider"), (15.0, 30.0))
    # Guaranteed near the start: a construction worker by the barriers, a bike rack far side.
    actors.append(_make_actor(rng, "human.pedestrian.construction_worker", rng.uniform(6.0, 9.0),
                              side * 5.6, 0.0, rng.uniform(-math.pi, math.pi),
                              "pedestrian.standing"))
    actors.append(_make_actor(rng, "static_object.bicycle_rack", rng.uniform(-12.0, -4.0),
                              -side * 10.9, 0.0, math.pi / 2, None))

    for a in actors:
        if a.attribute == "MOVING":
            a.attribute = ("cycle.with_rider" if a.category == "vehicle.motorcycle"
                           else "vehicle.moving")
    return _Scene(name, log, origin, rng.uniform(-math.pi, math.pi), ego_speed, ego_lat,
                  rng.uniform(-0.004, 0.004), rng.uniform(-0.004, 0.004), actors)


# ---------------------------------------------------------------------------------------------
# Poses
# ---------------------------------------------------------------------------------------------

def _rot_z(yaw: float) -> torch.Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _ego_pose(scene: _Scene, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ego -> global rotation (3, 3) and translation (3,) at scene time t (seconds)."""
    s = scene.ego_speed * t
    xy = _road_to_global(scene, s, scene.ego_lat)
    pitch = scene.pitch + 0.002 * math.sin(2 * math.pi * 0.7 * t)
    roll = scene.roll + 0.002 * math.sin(2 * math.pi * 1.1 * t)
    cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    r_y = torch.tensor([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]], dtype=torch.float64)
    r_x = torch.tensor([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]], dtype=torch.float64)
    rot = _rot_z(scene.road_yaw) @ r_y @ r_x
    return rot, torch.tensor([xy[0], xy[1], 0.0], dtype=torch.float64)


def _road_to_global(scene: _Scene, s: float, lat: float) -> tuple[float, float]:
    c, sn = math.cos(scene.road_yaw), math.sin(scene.road_yaw)
    return (scene.origin[0] + s * c - lat * sn, scene.origin[1] + s * sn + lat * c)


def _actor_state(scene: _Scene, actor: _Actor, t: float) -> tuple[list[float], float]:
    """Global box centre [x, y, z] and yaw about global z at scene time t."""
    x, y = _road_to_global(scene, actor.s0 + actor.speed * t, actor.lat)
    return [x, y, actor.size[2] / 2], scene.road_yaw + actor.heading


def _boxes_at(scene: _Scene, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres (A, 3), rotations (A, 3, 3) box -> global, and sizes (A, 3) (w, l, h)."""
    states = [_actor_state(scene, a, t) for a in scene.actors]
    centers = torch.tensor([c for c, _ in states], dtype=torch.float64)
    rots = torch.stack([_rot_z(y) for _, y in states])
    sizes = torch.tensor([a.size for a in scene.actors], dtype=torch.float64)
    return centers, rots, sizes


def _sensor_to_ego(sensor: _Sensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.tensor(sensor.rotation, dtype=torch.float64)
    return quat_to_matrix(q / q.norm()), torch.tensor(sensor.translation, dtype=torch.float64)


def _intrinsic(sensor: _Sensor, width: int, height: int) -> list[list[float]]:
    if sensor.intrinsic is None:
        raise ValueError(f"{sensor.channel} is not a camera")
    f, cx, cy = sensor.intrinsic
    sx, sy = width / NUSCENES_IMAGE_SIZE[0], height / NUSCENES_IMAGE_SIZE[1]
    return [[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]]


# ---------------------------------------------------------------------------------------------
# Meshes and rendering
# ---------------------------------------------------------------------------------------------

class _Mesh(NamedTuple):
    local: torch.Tensor  # (V, 3) unit-box vertices in [-0.5, 0.5]^3, box frame (x l, y w, z h)
    actor: torch.Tensor  # (V,) actor index of each vertex
    uv: torch.Tensor  # (V, 2) face coordinates in [0, 1] (v = 0 at the top of side faces)
    faces: torch.Tensor  # (F, 3)
    face_actor: torch.Tensor  # (F,)
    face_type: torch.Tensor  # (F,) 0 front +x, 1 back -x, 2 left +y, 3 right -y, 4 top +z


def _face_grid(face_type: int, nu: int, nv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices (n, 3) on the unit box face and their (u, v) (n, 2); grid nu x nv quads."""
    u = torch.linspace(0.0, 1.0, nu + 1, dtype=torch.float64)
    v = torch.linspace(0.0, 1.0, nv + 1, dtype=torch.float64)
    uu, vv = torch.meshgrid(u, v, indexing="ij")
    uu, vv = uu.reshape(-1), vv.reshape(-1)
    half = torch.full_like(uu, 0.5)
    zc = 0.5 - vv  # v = 0 at the top
    if face_type == 0:  # front, seen from the front: u from the box's right (-y) to left (+y)
        xyz = torch.stack((half, uu - 0.5, zc), -1)
    elif face_type == 1:  # back, seen from behind: u from left (+y) to right (-y)
        xyz = torch.stack((-half, 0.5 - uu, zc), -1)
    elif face_type == 2:  # left (+y): u from the back to the front
        xyz = torch.stack((0.5 - uu, half, zc), -1)
    elif face_type == 3:  # right (-y): u from the front to the back
        xyz = torch.stack((uu - 0.5, -half, zc), -1)
    else:  # top
        xyz = torch.stack((uu - 0.5, vv - 0.5, half), -1)
    return xyz, torch.stack((uu, vv), -1)


def _build_mesh(actors: Sequence[_Actor]) -> _Mesh:
    locals_, actor_ids, uvs, faces, face_actor, face_type = [], [], [], [], [], []
    base = 0
    for i, a in enumerate(actors):
        w, length, h = a.size
        dims = {0: (w, h), 1: (w, h), 2: (length, h), 3: (length, h), 4: (length, w)}
        for ft, (du, dv) in dims.items():
            nu = min(6, max(1, math.ceil(du / 1.5)))
            nv = min(6, max(1, math.ceil(dv / 1.5)))
            xyz, uv = _face_grid(ft, nu, nv)
            idx = torch.arange((nu + 1) * (nv + 1)).view(nu + 1, nv + 1) + base
            a00, a10 = idx[:-1, :-1].reshape(-1), idx[1:, :-1].reshape(-1)
            a01, a11 = idx[:-1, 1:].reshape(-1), idx[1:, 1:].reshape(-1)
            tris = torch.cat((torch.stack((a00, a10, a11), -1), torch.stack((a00, a11, a01), -1)))
            locals_.append(xyz)
            uvs.append(uv)
            actor_ids.append(torch.full((xyz.shape[0],), i))
            faces.append(tris)
            face_actor.append(torch.full((tris.shape[0],), i))
            face_type.append(torch.full((tris.shape[0],), ft))
            base += xyz.shape[0]
    return _Mesh(torch.cat(locals_), torch.cat(actor_ids), torch.cat(uvs), torch.cat(faces),
                 torch.cat(face_actor), torch.cat(face_type))


def _corners(centers: torch.Tensor, rots: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """(A, 8, 3) global box corners."""
    signs = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)],
                         dtype=torch.float64)
    local = signs * sizes[:, None, [1, 0, 2]]
    return local @ rots.transpose(-1, -2) + centers[:, None]


_SUN = torch.tensor([0.45, 0.3, 0.84], dtype=torch.float64)
_SUN = _SUN / _SUN.norm()


def _road_coords(scene: _Scene, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Road (s, lat) of global points (..., 2)."""
    c, sn = math.cos(scene.road_yaw), math.sin(scene.road_yaw)
    dx = xy[..., 0] - scene.origin[0]
    dy = xy[..., 1] - scene.origin[1]
    return dx * c + dy * sn, -dx * sn + dy * c


def _building_height(s: torch.Tensor, lat_sign: torch.Tensor) -> torch.Tensor:
    block = torch.floor(s / 18.0) * 2 + (lat_sign > 0)
    return 6.0 + 10.0 * torch.frac(torch.sin(block * 12.9898) * 43758.5453).abs()


# Ground materials: grass, sidewalk, sidewalk seam, asphalt, white marking, yellow marking.
_GROUND_PALETTE = torch.tensor([[0.30, 0.43, 0.24], [0.62, 0.60, 0.57], [0.50, 0.48, 0.46],
                                [0.28, 0.28, 0.30], [0.88, 0.88, 0.86], [0.85, 0.72, 0.25]])
_HAZE = torch.tensor([0.78, 0.82, 0.88])


def _background(scene: _Scene, rays: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Colours (N, 3) in [0, 1] of rays (N, 3) (global, unit, float32) from origins (N, 3)."""
    dz = rays[:, 2]
    down = dz < -1e-6
    t_ground = torch.where(down, -origin[:, 2] / dz.clamp(max=-1e-6), torch.inf)
    c, sn = math.cos(scene.road_yaw), math.sin(scene.road_yaw)
    d_lat = -rays[:, 0] * sn + rays[:, 1] * c
    _, o_lat = _road_coords(scene, origin[:, :2])
    wall = torch.where(d_lat >= 0, 14.0, -14.0)
    t_wall = (wall - o_lat) / torch.where(d_lat.abs() > 1e-6, d_lat, torch.full_like(d_lat, 1e-6))
    hit_w = origin + t_wall.clamp(0.0, 1e4)[:, None] * rays
    s_w, _ = _road_coords(scene, hit_w[:, :2])
    wall_ok = (t_wall > 0) & (hit_w[:, 2] >= 0) & (hit_w[:, 2] <= _building_height(s_w, wall))
    t_wall = torch.where(wall_ok, t_wall, torch.inf)
    use_wall = t_wall < t_ground
    t = torch.minimum(t_wall, t_ground)

    hit_g = origin + t_ground.clamp(max=1e4)[:, None] * rays
    s_g, l_g = _road_coords(scene, hit_g[:, :2])
    al = l_g.abs()
    mat = torch.zeros(rays.shape[0], dtype=torch.long)  # grass
    sidewalk = (al >= 7.0) & (al < 11.0)
    seam = (torch.remainder(s_g, 1.5) < 0.06) | (torch.remainder(al - 7.0, 1.5) < 0.06)
    mat = torch.where(sidewalk, torch.where(seam, 2, 1), mat)
    road = al < 7.0
    dashed = torch.remainder(s_g, 9.0) < 3.0
    white = (((al - 3.5).abs() < 0.08) & dashed) | ((al - 6.85).abs() < 0.08)
    mat = torch.where(road, torch.where(al < 0.1, 5, torch.where(white, 4, 3)), mat)
    col = _GROUND_PALETTE.to(rays.dtype)[mat]

    block = torch.floor(s_w / 18.0)
    facade = torch.stack((0.55 + 0.2 * torch.sin(block * 1.7), 0.5 + 0.15 * torch.sin(block * 2.3),
                          0.45 + 0.15 * torch.cos(block * 1.1)), -1)
    sw, zw = torch.remainder(s_w, 3.0), torch.remainder(hit_w[:, 2], 3.2)
    window = (sw > 0.8) & (sw < 2.2) & (zw > 1.0) & (zw < 2.4)
    facade = torch.where(window[:, None], facade * 0.35 + 0.05, facade)
    col = torch.where(use_wall[:, None], facade, col)

    haze = (1.0 - torch.exp(-t.clamp(max=1e4) / 180.0))[:, None]
    col = col * (1 - haze) + _HAZE.to(rays.dtype) * haze
    elev = dz.clamp(-1.0, 1.0)
    sky = torch.stack((0.78 - 0.35 * elev, 0.84 - 0.25 * elev, 0.90 - 0.05 * elev), -1)
    return torch.where(torch.isfinite(t)[:, None], col, sky)


def _texture(texture: torch.Tensor, face_type: torch.Tensor, uv: torch.Tensor,
             base: torch.Tensor) -> torch.Tensor:
    """Per-pixel colours (N, 3) of textured faces; texture/face_type (N,), uv (N, 2)."""
    u, v = uv[:, 0], uv[:, 1]
    col = base.clone()
    front, back = face_type == 0, face_type == 1
    side = (face_type == 2) | (face_type == 3)

    def paint(mask: torch.Tensor, rgb: tuple[float, float, float]) -> None:
        col[mask] = torch.tensor(rgb, dtype=col.dtype)

    veh = (texture == _TEXTURES.index("vehicle")) | (texture == _TEXTURES.index("trailer"))
    is_trailer = texture == _TEXTURES.index("trailer")
    col[veh & front] = (col[veh & front] * 1.15).clamp(max=1.0)
    col[veh & back] = col[veh & back] * 0.75
    paint(veh & ~is_trailer & front & (v > 0.1) & (v < 0.42) & (u > 0.12) & (u < 0.88),
          (0.12, 0.15, 0.2))
    lights = (v > 0.58) & (v < 0.76) & (((u > 0.06) & (u < 0.24)) | ((u > 0.76) & (u < 0.94)))
    paint(veh & front & lights, (1.0, 0.98, 0.85))
    paint(veh & back & lights, (0.85, 0.05, 0.05))
    paint(veh & ~is_trailer & side & (v > 0.12) & (v < 0.42) & (u > 0.1) & (u < 0.9),
          (0.18, 0.22, 0.28))
    wheels = (v > 0.78) & (((u > 0.1) & (u < 0.26)) | ((u > 0.74) & (u < 0.9)))
    paint(veh & side & wheels, (0.05, 0.05, 0.05))

    person = texture == _TEXTURES.index("person")
    paint(person & front & (v < 0.16) & (u > 0.25) & (u < 0.75), (0.93, 0.76, 0.62))
    paint(person & back & (v < 0.16), (0.2, 0.14, 0.08))
    col[person & (v > 0.55)] = col[person & (v > 0.55)] * 0.45

    cycle = texture == _TEXTURES.index("cycle")
    col[cycle & (v > 0.5)] = col[cycle & (v > 0.5)] * 0.35
    paint(cycle & front & (v > 0.25) & (v < 0.4) & (u > 0.3) & (u < 0.7), (1.0, 1.0, 0.8))
    paint(cycle & back & (v > 0.25) & (v < 0.4) & (u > 0.3) & (u < 0.7), (0.85, 0.05, 0.05))

    cone = texture == _TEXTURES.index("cone")
    paint(cone & (face_type < 4) & (((v > 0.3) & (v < 0.42)) | ((v > 0.58) & (v < 0.68))),
          (0.95, 0.95, 0.95))

    barrier = texture == _TEXTURES.index("barrier")
    stripe = torch.remainder(torch.floor((u * 2.5 + v) * 3.0), 2) == 0
    paint(barrier & (front | back) & stripe, (0.95, 0.95, 0.95))
    return col


class _CameraView(NamedTuple):
    sensor: _Sensor
    ego_rot: torch.Tensor  # (3, 3) ego -> global
    ego_trans: torch.Tensor  # (3,)
    object_time: float  # scene time (s) of the actors' positions


class _Render(NamedTuple):
    images: np.ndarray  # (B, H, W, 3) uint8 BGR
    visible_px: torch.Tensor  # (B, A) visible pixels per actor
    hull_px: torch.Tensor  # (B, A) silhouette area (pixels) inside the image


def _render(scene: _Scene, mesh: _Mesh, views: Sequence[_CameraView], width: int, height: int,
            rng: _Rng) -> _Render:
    batch = len(views)
    num_actors = len(scene.actors)
    rots_cg, trans_cg, cams, origins = [], [], [], []
    verts = []
    hull = torch.zeros(batch, num_actors, dtype=torch.float64)
    image_rect = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    for b, view in enumerate(views):
        r_se, t_se = _sensor_to_ego(view.sensor)
        r_sg = view.ego_rot @ r_se  # camera -> global
        t_sg = view.ego_rot @ t_se + view.ego_trans
        r_gc = r_sg.T
        centers, rots, sizes = _boxes_at(scene, view.object_time)
        scaled = mesh.local * sizes[mesh.actor][:, [1, 0, 2]]
        world = (rots[mesh.actor] @ scaled[:, :, None]).squeeze(-1) + centers[mesh.actor]
        verts.append((world - t_sg) @ r_gc.T)
        k = torch.tensor(_intrinsic(view.sensor, width, height), dtype=torch.float64)
        cams.append(k)
        rots_cg.append(r_gc)
        trans_cg.append(t_sg)
        origins.append(t_sg)
        corners = (_corners(centers, rots, sizes) - t_sg) @ r_gc.T  # (A, 8, 3)
        for i in range(num_actors):
            c = corners[i]
            front = c[c[:, 2] > 0.1]
            if front.shape[0] == 0:
                continue
            px = (front @ k.T)[:, :2] / front[:, 2:3]
            pts = px.numpy().astype(np.float32)
            if not np.isfinite(pts).all():
                continue
            hull_pts = cv2.convexHull(pts)
            area, _ = cv2.intersectConvexConvex(hull_pts, image_rect)
            hull[b, i] = float(area)
    vertices = torch.stack(verts).float()
    cam_mats = torch.stack(cams).float()
    pose = torch.zeros(batch, 7)
    pose[:, 3] = 1.0
    raster = rasterize(vertices, mesh.faces, mesh.uv.float(), pose, cam_mats, height, width,
                       znear=0.05)

    # Background: the rays of the pixels no object covers.
    face = raster.face_index.reshape(batch, -1)
    covered = face >= 0
    image = torch.zeros(batch, height * width, 3)
    vs, us = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing="ij")
    pix = torch.stack((us.reshape(-1), vs.reshape(-1), torch.ones(height * width)), -1)
    for b in range(batch):
        free = (~covered[b]).nonzero().squeeze(-1)
        # Global ray directions R_sg K^-1 (u, v, 1) of the free pixels.
        to_global = (rots_cg[b].T @ torch.linalg.inv(cams[b])).float()
        d = pix[free] @ to_global.T
        d = d / d.norm(dim=-1, keepdim=True)
        image[b, free] = _background(scene, d, origins[b].float().expand(free.shape[0], 3))

    # Objects: texture and Lambert shading.
    visible = torch.zeros(batch, num_actors, dtype=torch.float64)
    if bool(covered.any()):
        b_idx, p_idx = covered.nonzero(as_tuple=True)
        f = face[b_idx, p_idx]
        actor = mesh.face_actor[f]
        ftype = mesh.face_type[f]
        uv = raster.attributes.permute(0, 2, 3, 1).reshape(batch, -1, 2)[b_idx, p_idx]
        colors = torch.tensor([a.color for a in scene.actors], dtype=torch.float32)
        textures = torch.tensor([_TEXTURES.index(_KINDS[a.category].texture)
                                 for a in scene.actors])
        col = _texture(textures[actor], ftype, uv, colors[actor])
        normals_local = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0],
                                      [0, 0, 1.0]], dtype=torch.float64)
        yaws = torch.tensor([scene.road_yaw + a.heading for a in scene.actors],
                            dtype=torch.float64)
        rz = torch.stack([_rot_z(float(y)) for y in yaws])  # (A, 3, 3)
        lambert = (torch.einsum("aij,fj->afi", rz, normals_local) @ _SUN).clamp(min=0.0)
        shade = (0.5 + 0.5 * lambert).float()[actor, ftype]
        image[b_idx, p_idx] = col * shade[:, None]
        visible.index_put_((b_idx, actor), torch.ones_like(actor, dtype=torch.float64),
                           accumulate=True)
    noise = torch.randn(image.shape, generator=rng.gen) * (2.5 / 255.0)
    rgb = ((image + noise).clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    bgr = rgb.view(batch, height, width, 3).flip(-1).numpy()
    return _Render(np.ascontiguousarray(bgr), visible, hull)


# ---------------------------------------------------------------------------------------------
# Lidar
# ---------------------------------------------------------------------------------------------

def _lidar_sweep(scene: _Scene, t_ego: float, t_obj: float, azimuth_steps: int,
                 rng: _Rng) -> tuple[np.ndarray, torch.Tensor]:
    """Points (N, 5) float32 in the lidar frame and lidar points per actor (A,) long."""
    lidar = _SENSORS[-1]
    ego_rot, ego_trans = _ego_pose(scene, t_ego)
    r_le, t_le = _sensor_to_ego(lidar)
    r_lg = ego_rot @ r_le
    o = ego_rot @ t_le + ego_trans
    elev = torch.tensor(_LIDAR_ELEVATIONS_DEG, dtype=torch.float64).deg2rad()
    az = torch.arange(azimuth_steps, dtype=torch.float64) * (2 * math.pi / azimuth_steps)
    ee, aa = torch.meshgrid(elev, az, indexing="ij")
    ring = torch.arange(len(_LIDAR_ELEVATIONS_DEG)).repeat_interleave(azimuth_steps)
    d_l = torch.stack((ee.cos() * aa.cos(), ee.cos() * aa.sin(), ee.sin()), -1).reshape(-1, 3)
    d = d_l @ r_lg.T  # (N, 3) global
    n = d.shape[0]
    t_best = torch.full((n,), _LIDAR_RANGE, dtype=torch.float64)
    intensity = torch.zeros(n, dtype=torch.float64)
    hit_any = torch.zeros(n, dtype=torch.bool)

    t_g = torch.where(d[:, 2] < -1e-6, -o[2] / d[:, 2].clamp(max=-1e-6), torch.inf)
    g_hit = t_g < t_best
    t_best = torch.where(g_hit, t_g, t_best)
    hit_any |= g_hit
    pg = o + t_g.clamp(max=1e4)[:, None] * d
    _, lat = _road_coords(scene, pg[:, :2])
    intensity = torch.where(g_hit, torch.where(lat.abs() < 7.0, 8.0, 20.0), intensity)

    c, sn = math.cos(scene.road_yaw), math.sin(scene.road_yaw)
    d_lat = -d[:, 0] * sn + d[:, 1] * c
    _, o_lat = _road_coords(scene, o[None, :2])
    wall = torch.where(d_lat >= 0, 14.0, -14.0)
    t_w = torch.where(d_lat.abs() > 1e-6, (wall - o_lat) / d_lat, torch.inf)
    pw = o + t_w.clamp(min=0, max=1e4)[:, None] * d
    s_w, _ = _road_coords(scene, pw[:, :2])
    w_hit = (t_w > 0) & (t_w < t_best) & (pw[:, 2] >= 0) & (pw[:, 2] <= _building_height(s_w,
                                                                                          wall))
    t_best = torch.where(w_hit, t_w, t_best)
    hit_any |= w_hit
    intensity = torch.where(w_hit, 30.0, intensity)

    centers, rots, sizes = _boxes_at(scene, t_obj)
    half = sizes[:, [1, 0, 2]] / 2  # (A, 3) along box x (length), y (width), z
    num_actors = centers.shape[0]
    # Candidate (box, ray) pairs: the azimuth columns each box's bounding cylinder spans.
    step = 2 * math.pi / azimuth_steps
    rings_n = len(_LIDAR_ELEVATIONS_DEG)
    c_l = (centers - o) @ r_lg  # (A, 3) lidar frame
    pair_box, pair_ray = [], []
    for i in range(num_actors):
        rho = float(c_l[i, :2].norm())
        radius = float(half[i, :2].norm()) + 0.05
        if rho <= radius:
            cols = torch.arange(azimuth_steps)
        else:
            az_c = math.atan2(float(c_l[i, 1]), float(c_l[i, 0]))
            spread = math.asin(radius / rho)
            lo = math.floor((az_c - spread) / step) - 1
            hi = math.ceil((az_c + spread) / step) + 1
            cols = torch.remainder(torch.arange(lo, hi + 1), azimuth_steps)
        rays_i = (torch.arange(rings_n)[:, None] * azimuth_steps + cols[None, :]).reshape(-1)
        pair_ray.append(rays_i)
        pair_box.append(torch.full_like(rays_i, i))
    pb, pr = torch.cat(pair_box), torch.cat(pair_ray)
    o_b = ((o - centers)[:, None, :] @ rots).squeeze(1)[pb]  # (P, 3) box frame
    d_b = (d[pr][:, None, :] @ rots[pb]).squeeze(1)  # (P, 3)
    safe = torch.where(d_b.abs() < 1e-12, torch.full_like(d_b, 1e-12), d_b)
    t1 = (-half[pb] - o_b) / safe
    t2 = (half[pb] - o_b) / safe
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    box_hit = (t_far >= t_near) & (t_near > 0)
    # Hit points lie inside the box: 2 cm (at most half the chord) past the entry.
    t_in = torch.where(box_hit, t_near + torch.clamp((t_far - t_near) / 2, max=0.02), torch.inf)
    t_box = torch.full((n,), torch.inf, dtype=torch.float64).scatter_reduce(
        0, pr, t_in, "amin")
    winner = torch.full((n,), -1, dtype=torch.long).scatter_reduce(
        0, pr[t_in == t_box[pr]], pb[t_in == t_box[pr]], "amax")
    b_hit = (t_box < t_best) & (winner >= 0)
    t_best = torch.where(b_hit, t_box, t_best)
    hit_any |= b_hit
    intensity = torch.where(b_hit, 45.0, intensity)

    pts = o + t_best[hit_any, None] * d[hit_any]
    inten = intensity[hit_any] + torch.rand(int(hit_any.sum()), generator=rng.gen,
                                            dtype=torch.float64) * 6.0
    rings = ring[hit_any].to(torch.float64)
    owner = torch.where(b_hit, winner, -1)[hit_any]
    counts = torch.bincount(owner[owner >= 0], minlength=num_actors)

    # A few interior returns for boxes that no ray reaches (every box holds points).
    extra_pts, extra_ring = [], []
    for i in torch.nonzero(counts == 0).flatten().tolist():
        local = (torch.rand(3, 3, generator=rng.gen, dtype=torch.float64) - 0.5) * 1.6 * half[i]
        p = local @ rots[i].T + centers[i]
        extra_pts.append(p)
        el = torch.atan2(p[:, 2] - o[2], (p[:, :2] - o[:2]).norm(dim=-1)).rad2deg()
        extra_ring.append(((el + 30.67) / 1.33).round().clamp(0, 31))
        counts[i] = 3
    if extra_pts:
        pts = torch.cat([pts, *extra_pts])
        rings = torch.cat([rings, *extra_ring])
        inten = torch.cat([inten, torch.full((3 * len(extra_pts),), 40.0, dtype=torch.float64)])
    local_pts = (pts - o) @ r_lg  # global -> lidar frame
    cloud = torch.cat((local_pts, inten[:, None], rings[:, None]), -1)
    return cloud.to(torch.float32).numpy(), counts


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

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
    unknown = [s for s in scenes if s not in _MINI_SCENES]
    if unknown:
        raise ConfigError(f"scenes: {unknown} are not v1.0-mini scenes; choose from "
                          f"{sorted(_MINI_SCENES)} (the devkit's mini_train/mini_val splits)")
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

    Returns:
        :class:`GeneratedNuScenes`.

    Raises:
        ConfigError: unknown scene names or out-of-range arguments.
    """
    _check_args(scenes, samples_per_scene, image_size, lidar_azimuth_steps, jpeg_quality)
    root = Path(root)
    width, height = int(image_size[0]), int(image_size[1])
    table_dir = root / version
    table_dir.mkdir(parents=True, exist_ok=True)
    rng = _Rng(seed)
    tok = functools.partial(_token, seed)

    category_tok = {name: tok("category", name) for name, _ in _CATEGORIES}
    attribute_tok = {name: tok("attribute", name) for name, _ in _ATTRIBUTES}
    sensor_tok = {s.channel: tok("sensor", s.channel) for s in _SENSORS}
    tables: dict[str, list[dict[str, Any]]] = {
        "category": [{"token": category_tok[n], "name": n, "description": d, "index": i}
                     for i, (n, d) in enumerate(_CATEGORIES)],
        "attribute": [{"token": attribute_tok[n], "name": n, "description": d}
                      for n, d in _ATTRIBUTES],
        "visibility": [{"description": f"visibility of whole object is between "
                                       f"{lvl[1:].split('-')[0]} and {lvl.split('-')[1]}%",
                        "token": t, "level": lvl} for t, lvl, _ in _VISIBILITY],
        "sensor": [{"token": sensor_tok[s.channel], "channel": s.channel, "modality": s.modality}
                   for s in _SENSORS],
    }
    for name in ("calibrated_sensor", "ego_pose", "log", "scene", "sample", "sample_data",
                 "sample_annotation", "instance", "map"):
        tables[name] = []
    duration = (samples_per_scene - 1) * _SAMPLE_PERIOD_US * 1e-6
    locations: dict[str, list[tuple[str, _Scene]]] = {}
    total_sd = 0
    for scene_name in scenes:
        log = _MINI_SCENES[scene_name]
        n_loc = len(locations.get(log.location, []))
        origin = (200.0 + 40.0 * n_loc, 200.0 + 25.0 * n_loc)  # keeps global x, y > 0
        scene = _plan_scene(rng, scene_name, log, origin, duration)
        locations.setdefault(log.location, []).append((tok("log", log.logfile), scene))
        total_sd += _write_scene(root, tables, scene, samples_per_scene, width,
                                 height, sweeps, lidar_azimuth_steps, jpeg_quality, rng, tok,
                                 category_tok, attribute_tok, sensor_tok)
        logger.info("generated %s: %d key frames, %d actors", scene_name, samples_per_scene,
                    len(scene.actors))
    for location, entries in locations.items():
        filename = f"maps/{hashlib.md5(f'{seed}|{location}'.encode()).hexdigest()}.png"
        _write_map(root / filename, [s for _, s in entries])
        tables["map"].append({"category": "semantic_prior", "token": tok("map", location),
                              "filename": filename,
                              "log_tokens": list(dict.fromkeys(t for t, _ in entries))})
    for name, table in tables.items():
        _write_json(table_dir / f"{name}.json", table)
    return GeneratedNuScenes(root, version, tuple(scenes), len(tables["sample"]), total_sd,
                             len(tables["sample_annotation"]), len(tables["instance"]))


def _write_map(path: Path, scenes: Sequence[_Scene]) -> None:
    """Semantic prior mask (0.1 m / px, origin at the bottom-left): road and sidewalks = 255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    res = 0.1
    extent = 0.0
    polys = []
    for scene in scenes:
        corners = [_road_to_global(scene, s, lat) for s, lat in
                   ((-60.0, -11.0), (160.0, -11.0), (160.0, 11.0), (-60.0, 11.0))]
        polys.append(corners)
        extent = max(extent, *(max(x, y) for x, y in corners))
    size = int(math.ceil((extent + 20.0) / res))
    mask = np.zeros((size, size), dtype=np.uint8)
    for corners in polys:
        px = np.array([[x / res, size - y / res] for x, y in corners], dtype=np.float64)
        cv2.fillPoly(mask, [np.clip(np.round(px), 0, size - 1).astype(np.int32)], (255,))
    cv2.imwrite(str(path), mask)


def _write_scene(root: Path, tables: dict[str, list[dict[str, Any]]], scene: _Scene,
                 num_samples: int, width: int, height: int, sweeps: bool,
                 azimuth_steps: int, jpeg_quality: int, rng: _Rng, tok: Any,
                 category_tok: dict[str, str], attribute_tok: dict[str, str],
                 sensor_tok: dict[str, str]) -> int:
    """Write one scene's records into ``tables`` and its images / point clouds under ``root``.

    Returns the number of sample_data records written.
    """
    log = scene.log
    name = scene.name
    log_token = tok("log", log.logfile)  # scenes of one log share its record
    if all(r["token"] != log_token for r in tables["log"]):
        tables["log"].append({"token": log_token, "logfile": log.logfile,
                              "vehicle": log.vehicle, "date_captured": log.date,
                              "location": log.location})
    calib_tok = {}
    for s in _SENSORS:
        calib_tok[s.channel] = tok("calibrated_sensor", name, s.channel)
        tables["calibrated_sensor"].append({
            "token": calib_tok[s.channel], "sensor_token": sensor_tok[s.channel],
            "translation": list(s.translation),
            "rotation": _vec(torch.tensor(s.rotation, dtype=torch.float64)
                             / torch.tensor(s.rotation, dtype=torch.float64).norm()),
            "camera_intrinsic": _intrinsic(s, width, height) if s.intrinsic else [],
        })
    mesh = _build_mesh(scene.actors)
    for a_i, actor in enumerate(scene.actors):
        actor.token = tok("instance", name, a_i)

    # Key-frame timestamps (2 Hz with a little jitter) and the frames of every sensor.
    sample_ts = [log.start_us + k * _SAMPLE_PERIOD_US + (rng.randint(-800, 800) if k else 0)
                 for k in range(num_samples)]
    sample_tok = [tok("sample", name, k) for k in range(num_samples)]
    frames: dict[str, list[tuple[int, bool, int]]] = {}  # channel -> (timestamp, key, sample k)
    for s in _SENSORS:
        lst = []
        for k in range(num_samples):
            key_ts = sample_ts[k] + s.offset_us
            if sweeps and k > 0:
                prev_ts = sample_ts[k - 1] + s.offset_us
                period = _CAMERA_PERIOD_US if s.modality == "camera" else _LIDAR_PERIOD_US
                ts = prev_ts + period
                while ts < key_ts - period // 2:
                    lst.append((ts, False, k))
                    ts += period
            lst.append((key_ts, True, k))
        frames[s.channel] = lst

    def t_of(ts: int) -> float:
        return (ts - log.start_us) * 1e-6

    # Sample-data records (linked per sensor) and their ego poses.
    sd_tok: dict[tuple[str, int], str] = {}
    for s in _SENSORS:
        lst = frames[s.channel]
        toks = [tok("sample_data", name, s.channel, ts) for ts, _, _ in lst]
        for j, (ts, key, k) in enumerate(lst):
            folder = "samples" if key else "sweeps"
            ext = "jpg" if s.modality == "camera" else "pcd.bin"
            ego_rot, ego_trans = _ego_pose(scene, t_of(ts))
            pose_tok = tok("ego_pose", name, s.channel, ts)
            tables["ego_pose"].append({"token": pose_tok, "timestamp": ts,
                                       "rotation": _quat(ego_rot),
                                       "translation": _vec(ego_trans)})
            is_cam = s.modality == "camera"
            tables["sample_data"].append({
                "token": toks[j], "sample_token": sample_tok[k], "ego_pose_token": pose_tok,
                "calibrated_sensor_token": calib_tok[s.channel], "timestamp": ts,
                "fileformat": "jpg" if is_cam else "pcd", "is_key_frame": key,
                "height": height if is_cam else 0, "width": width if is_cam else 0,
                "filename": f"{folder}/{s.channel}/{log.logfile}__{s.channel}__{ts}.{ext}",
                "prev": toks[j - 1] if j > 0 else "",
                "next": toks[j + 1] if j + 1 < len(lst) else "",
            })
            sd_tok[(s.channel, ts)] = toks[j]

    cameras = [s for s in _SENSORS if s.modality == "camera"]
    num_actors = len(scene.actors)
    visibility = torch.zeros(num_samples, num_actors, dtype=torch.float64)
    lidar_counts = torch.zeros(num_samples, num_actors, dtype=torch.long)
    # Camera images: one batched render per key frame / sweep slot of the six cameras.
    by_slot: dict[tuple[int, int], list[tuple[_Sensor, int, bool]]] = {}
    for s in cameras:
        per_k: dict[int, int] = {}
        for ts, key, k in frames[s.channel]:
            j = per_k.get(k, 0)
            per_k[k] = j + 1
            by_slot.setdefault((k, -1 if key else j), []).append((s, ts, key))
    for (k, _), entries in sorted(by_slot.items()):
        hull = torch.zeros(num_actors, dtype=torch.float64)
        vis = torch.zeros(num_actors, dtype=torch.float64)
        for s, ts, key in entries:  # one camera at a time bounds the memory at 1600 x 900
            ego_rot, ego_trans = _ego_pose(scene, t_of(ts))
            view = _CameraView(s, ego_rot, ego_trans, t_of(sample_ts[k] if key else ts))
            render = _render(scene, mesh, [view], width, height, rng)
            folder = "samples" if key else "sweeps"
            path = root / folder / s.channel / f"{log.logfile}__{s.channel}__{ts}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", render.images[0],
                                   [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {path}")
            path.write_bytes(buf.tobytes())
            hull += render.hull_px[0]
            vis += render.visible_px[0]
        if all(key for _, _, key in entries):
            visibility[k] = torch.where(hull > 0, (vis / hull.clamp(min=1.0)).clamp(max=1.0), 0.0)
    # Lidar.
    for ts, key, k in frames[LIDAR_CHANNEL]:
        cloud, counts = _lidar_sweep(scene, t_of(ts), t_of(ts), azimuth_steps, rng)
        folder = "samples" if key else "sweeps"
        path = root / folder / LIDAR_CHANNEL / f"{log.logfile}__{LIDAR_CHANNEL}__{ts}.pcd.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cloud.tobytes())
        if key:
            lidar_counts[k] = counts

    # Samples, annotations, instances, scene.
    for k in range(num_samples):
        tables["sample"].append({"token": sample_tok[k], "timestamp": sample_ts[k],
                                 "prev": sample_tok[k - 1] if k > 0 else "",
                                 "next": sample_tok[k + 1] if k + 1 < num_samples else "",
                                 "scene_token": tok("scene", name)})
    for a_i, actor in enumerate(scene.actors):
        ann = [tok("sample_annotation", name, a_i, k) for k in range(num_samples)]
        for k in range(num_samples):
            center, yaw = _actor_state(scene, actor, t_of(sample_ts[k]))
            frac = float(visibility[k, a_i])
            vis_token = next(t for t, _, hi in _VISIBILITY if frac < hi)
            radar = 0
            if _KINDS[actor.category].texture in ("vehicle", "trailer"):
                ego_rot, ego_trans = _ego_pose(scene, t_of(sample_ts[k]))
                dist = math.dist(center[:2], _vec(ego_trans[:2]))
                radar = rng.randint(0, 4) if dist < 60.0 else 0
            tables["sample_annotation"].append({
                "token": ann[k], "sample_token": sample_tok[k], "instance_token": actor.token,
                "visibility_token": vis_token,
                "attribute_tokens": [attribute_tok[actor.attribute]] if actor.attribute else [],
                "translation": center, "size": list(actor.size),
                "rotation": _quat(_rot_z(yaw)),
                "prev": ann[k - 1] if k > 0 else "", "next": ann[k + 1] if k + 1 < num_samples
                else "",
                "num_lidar_pts": int(lidar_counts[k, a_i]), "num_radar_pts": radar,
            })
        tables["instance"].append({"token": actor.token,
                                   "category_token": category_tok[actor.category],
                                   "nbr_annotations": num_samples,
                                   "first_annotation_token": ann[0],
                                   "last_annotation_token": ann[-1]})
    tables["scene"].append({"token": tok("scene", name), "log_token": log_token,
                            "nbr_samples": num_samples, "first_sample_token": sample_tok[0],
                            "last_sample_token": sample_tok[-1], "name": name,
                            "description": log.description})
    return sum(len(v) for v in frames.values())


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = generate_nuscenes_mini(
            args.out, scenes=args.scenes, samples_per_scene=args.samples_per_scene,
            image_size=(args.image_size[0], args.image_size[1]), seed=args.seed,
            sweeps=args.sweeps, lidar_azimuth_steps=args.lidar_azimuth_steps)
    except ConfigError as exc:
        parser.error(str(exc))
    logger.info("wrote %s (%s): %d scenes, %d samples, %d sample_data, %d annotations",
                out.root, out.version, len(out.scenes), out.num_samples, out.num_sample_data,
                out.num_annotations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
