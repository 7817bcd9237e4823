"""The world of the generated nuScenes scenes: the sensor rig, the logs, the actors and their
motion, and the street they move on.

Per scene (seeded): the ego drives along a straight two-lane-per-direction street (right-hand
traffic in Boston logs, left-hand in Singapore logs) at constant speed; actors of the 10
detection classes and two other categories stand or move at constant velocity in lanes, parking
lanes, a construction zone and on the sidewalks.  Road coordinates ``(s, lat)``: ``s`` along the
road direction (global yaw ``road_yaw``), ``lat`` to its left, metres; boxes are ``(w, l, h)``
with yaw about the global z axis.  Used by :mod:`epropnp_lib.generators.nuscenes`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from epropnp_lib.geometry.rotations import quat_to_matrix

__all__ = [
    "KINDS",
    "LIDAR_CHANNEL",
    "MINI_SCENES",
    "NUSCENES_IMAGE_SIZE",
    "SENSORS",
    "TEXTURES",
    "US_TO_S",
    "Actor",
    "Kind",
    "Log",
    "Rng",
    "Scene",
    "Sensor",
    "actor_state",
    "boxes_at",
    "building_height",
    "ego_pose",
    "intrinsic_matrix",
    "plan_scene",
    "road_coords",
    "road_to_global",
    "rot_z",
    "scene_time",
    "sensor_to_ego",
]

LIDAR_CHANNEL = "LIDAR_TOP"
#: Microseconds (the tables' timestamps) to seconds.
US_TO_S = 1e-6
#: Image size (width, height) of the real nuScenes cameras.
NUSCENES_IMAGE_SIZE: tuple[int, int] = (1600, 900)


@dataclass(frozen=True)
class Sensor:
    """One sensor of the rig (calibration and trigger offset)."""

    channel: str
    modality: str
    translation: tuple[float, float, float]  # sensor -> ego, metres
    rotation: tuple[float, float, float, float]  # sensor -> ego, (w, x, y, z)
    intrinsic: tuple[float, float, float] | None  # (f, cx, cy) at 1600 x 900
    offset_us: int  # trigger time relative to the key-frame (lidar) timestamp


# Calibrations and trigger offsets modelled on the real nuScenes rig (optical camera frames).
SENSORS: tuple[Sensor, ...] = (
    Sensor("CAM_FRONT", "camera", (1.70079, 0.01595, 1.51096),
           (0.49980, -0.50303, 0.49978, -0.49737), (1266.417, 816.267, 491.507), -35186),
    Sensor("CAM_FRONT_RIGHT", "camera", (1.55085, -0.49340, 1.49575),
           (0.20603, -0.20269, 0.68245, -0.67136), (1260.847, 807.968, 495.334), -27108),
    Sensor("CAM_BACK_RIGHT", "camera", (1.01488, -0.48057, 1.56240),
           (0.12281, -0.13240, -0.70043, 0.69050), (1259.514, 807.253, 501.196), -19477),
    Sensor("CAM_BACK", "camera", (0.02833, 0.00345, 1.57910),
           (0.50379, -0.49740, -0.49419, 0.50455), (809.221, 829.220, 481.778), -10032),
    Sensor("CAM_BACK_LEFT", "camera", (1.03569, 0.48480, 1.59097),
           (0.69242, -0.70316, -0.11648, 0.11203), (1256.741, 792.113, 492.776), -185),
    Sensor("CAM_FRONT_LEFT", "camera", (1.52388, 0.49463, 1.50933),
           (0.67573, -0.67363, 0.21214, -0.21123), (1272.598, 826.615, 479.752), 7254),
    Sensor(LIDAR_CHANNEL, "lidar", (0.943713, 0.0, 1.84023),
           (0.70780, -0.00649, 0.01065, -0.70631), None, 0),
)


@dataclass(frozen=True)
class Log:
    """A recording log: file name (``<vehicle>-<date>-<time><zone>``), location, start time
    (microseconds) and the scene description."""

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
MINI_SCENES: dict[str, Log] = {
    "scene-0061": Log("n015-2018-07-24-11-22-45+0800", "singapore-onenorth", 1532402927647951,
                      "Parked truck, construction, intersection, turn left, following a van"),
    "scene-0103": Log("n008-2018-08-01-15-16-36-0400", "boston-seaport", 1533151603547590,
                      "Many peds right, wait for turning car, long bike rack left, cyclist"),
    "scene-0553": Log("n008-2018-08-28-16-43-51-0400", "boston-seaport", 1535489296047917,
                      "Wait at intersection, bicycle, large truck, peds crossing crosswalk"),
    "scene-0655": Log("n008-2018-08-27-11-48-51-0400", "boston-seaport", 1535385092150099,
                      "Parking lot, parked cars, jaywalker, bendy bus, gardening vehicles"),
    "scene-0757": Log("n008-2018-08-30-15-16-55-0400", "boston-seaport", 1535657108301131,
                      "Arrive at busy intersection, bus, wait at intersection, bicycle, peds"),
    "scene-0796": Log("n015-2018-10-02-10-50-40+0800", "singapore-queenstown", 1538448750447639,
                      "Scooter, peds on sidewalk, bus, cars, truck, fake construction worker"),
    "scene-0916": Log("n015-2018-10-08-15-36-50+0800", "singapore-queenstown", 1538984233547259,
                      "Parking lot, bicycle rack, parked bicycles, bus, many peds"),
    "scene-1077": Log("n015-2018-11-21-19-38-26+0800", "singapore-hollandvillage",
                      1542800367947771, "Night, big street, bus stop, high speed, red light"),
    "scene-1094": Log("n015-2018-11-21-19-38-26+0800", "singapore-hollandvillage",
                      1542801000947890, "Night, after rain, many peds, PMD, ped with bag"),
    "scene-1100": Log("n015-2018-11-21-19-38-26+0800", "singapore-hollandvillage",
                      1542801707947837, "Night, peds in sidewalk, peds cross crosswalk"),
}


@dataclass(frozen=True)
class Kind:
    """How a category looks: mean size (w, l, h), colour (RGB 0..1) and texture family."""

    category: str
    size: tuple[float, float, float]
    color: tuple[float, float, float]
    texture: str  # vehicle | person | cycle | cone | barrier | plain


KINDS: dict[str, Kind] = {k.category: k for k in (
    Kind("vehicle.car", (1.95, 4.62, 1.73), (0.16, 0.35, 0.80), "vehicle"),
    Kind("vehicle.truck", (2.52, 6.9, 2.9), (0.80, 0.47, 0.16), "vehicle"),
    Kind("vehicle.bus.rigid", (2.95, 11.2, 3.5), (0.15, 0.68, 0.72), "vehicle"),
    Kind("vehicle.trailer", (2.9, 11.5, 3.8), (0.25, 0.50, 0.25), "trailer"),
    Kind("vehicle.construction", (2.85, 6.4, 3.2), (0.95, 0.78, 0.10), "vehicle"),
    Kind("human.pedestrian.adult", (0.67, 0.73, 1.77), (0.80, 0.24, 0.62), "person"),
    Kind("human.pedestrian.construction_worker", (0.70, 0.75, 1.78), (0.95, 0.55, 0.75),
         "person"),
    Kind("vehicle.motorcycle", (0.77, 2.11, 1.47), (0.48, 0.24, 0.80), "cycle"),
    Kind("vehicle.bicycle", (0.60, 1.70, 1.28), (0.58, 0.82, 0.24), "cycle"),
    Kind("movable_object.trafficcone", (0.41, 0.41, 1.07), (1.00, 0.45, 0.00), "cone"),
    Kind("movable_object.barrier", (2.53, 0.50, 0.98), (0.82, 0.10, 0.10), "barrier"),
    Kind("movable_object.pushable_pullable", (0.60, 0.65, 1.05), (0.45, 0.45, 0.45), "plain"),
    Kind("static_object.bicycle_rack", (3.0, 0.7, 0.9), (0.55, 0.55, 0.58), "plain"),
)}

#: Texture families of :attr:`Kind.texture` (the renderer's texture index is a position here).
TEXTURES = ("vehicle", "trailer", "person", "cycle", "cone", "barrier", "plain")


class Rng:
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


@dataclass
class Actor:
    """An object of the scene moving at constant velocity along the road."""

    category: str
    size: tuple[float, float, float]  # (w, l, h)
    s0: float  # longitudinal road coordinate at t = 0
    lat: float  # lateral road coordinate (left positive)
    speed: float  # along the road direction, m/s
    heading: float  # yaw relative to the road direction
    attribute: str | None
    color: tuple[float, float, float]
    token: str = ""  # instance token, set by the tables writer


@dataclass
class Scene:
    """One scene: its log, the road (origin and yaw in the global frame), the ego's motion and
    the actors."""

    name: str
    log: Log
    origin: tuple[float, float]  # road origin in the global frame
    road_yaw: float
    ego_speed: float
    ego_lat: float
    pitch: float
    roll: float
    actors: list[Actor]


# ---------------------------------------------------------------------------------------------
# World planning
# ---------------------------------------------------------------------------------------------

_FORWARD, _BACKWARD = 0.0, math.pi  # actor headings along and against the road direction


def _make_actor(rng: Rng, category: str, s0: float, lat: float, speed: float, heading: float,
                attribute: str | None) -> Actor:
    kind = KINDS[category]
    scale = rng.uniform(0.92, 1.08)
    w, length, h = kind.size
    size = (round(w * rng.uniform(0.95, 1.05) * scale, 3),
            round(length * rng.uniform(0.95, 1.05) * scale, 3),
            round(h * rng.uniform(0.95, 1.05), 3))
    shade = rng.uniform(0.85, 1.1)
    color = tuple(min(1.0, c * shade) for c in kind.color)
    return Actor(category, size, s0, lat, speed, heading, attribute,
                 (color[0], color[1], color[2]))


def _along(actor_size: tuple[float, float, float], heading: float) -> float:
    """Extent of a box along the road direction."""
    w, length, _ = actor_size
    return abs(length * math.cos(heading)) + abs(w * math.sin(heading))


def _fill_line(rng: Rng, actors: list[Actor], s_lo: float, s_hi: float, lat: float,
               speed: float, pick: Callable[[], tuple[str, float, str | None]],
               gap: tuple[float, float]) -> None:
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


def plan_scene(rng: Rng, name: str, log: Log, origin: tuple[float, float],
               duration: float) -> Scene:
    """The seeded world of one scene: the ego's motion and the actors of every lane and
    sidewalk (the draws of ``rng`` follow this order)."""
    side = 1.0 if log.left_hand_traffic else -1.0  # lateral sign of the ego's direction
    ego_speed = rng.uniform(4.0, 6.5)
    ego_lat = side * 1.75
    travel = ego_speed * duration
    ahead = travel + 45.0
    actors: list[Actor] = []
    _plan_ego_lane(rng, actors, ego_speed, ego_lat)
    _plan_outer_lane(rng, actors, side, ahead)
    _plan_oncoming_lanes(rng, actors, side, ahead)
    _plan_sidewalks(rng, actors, side, ahead)
    for a in actors:
        if a.attribute == "MOVING":
            a.attribute = ("cycle.with_rider" if a.category == "vehicle.motorcycle"
                           else "vehicle.moving")
    return Scene(name, log, origin, rng.uniform(-math.pi, math.pi), ego_speed, ego_lat,
                 rng.uniform(-0.004, 0.004), rng.uniform(-0.004, 0.004), actors)


def _plan_ego_lane(rng: Rng, actors: list[Actor], ego_speed: float, ego_lat: float) -> None:
    """A vehicle followed at the ego's speed, one following the ego."""
    lead = rng.choice(("vehicle.car", "vehicle.car", "vehicle.truck"))
    actors.append(_make_actor(rng, lead, rng.uniform(13.0, 17.0), ego_lat, ego_speed, _FORWARD,
                              "vehicle.moving"))
    actors.append(_make_actor(rng, "vehicle.car", -rng.uniform(11.0, 14.0), ego_lat, ego_speed,
                              _FORWARD, "vehicle.moving"))


def _plan_outer_lane(rng: Rng, actors: list[Actor], side: float, ahead: float) -> None:
    """Same-direction outer lane: construction zone, construction vehicle, parked vehicles."""
    fwd = _FORWARD
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


def _plan_oncoming_lanes(rng: Rng, actors: list[Actor], side: float, ahead: float) -> None:
    """Oncoming inner lane: moving traffic (a bus first), motorcycles with riders ("MOVING",
    resolved by :func:`plan_scene`); oncoming outer lane: a parked trailer and parked cars."""
    back = _BACKWARD
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


def _kerb_pick(rng: Rng, side: float) -> tuple[str, float, str | None]:
    """A standing pedestrian, a parked bicycle or motorcycle (facing the traffic of ``side``) or
    a pushable object (all four headings are drawn before the choice)."""
    return rng.choice((
        ("human.pedestrian.adult", rng.uniform(-math.pi, math.pi), "pedestrian.standing"),
        ("vehicle.bicycle", (side > 0) * math.pi + rng.uniform(-0.1, 0.1),
         "cycle.without_rider"),
        ("vehicle.motorcycle", (side > 0) * math.pi + rng.uniform(-0.1, 0.1),
         "cycle.without_rider"),
        ("movable_object.pushable_pullable", rng.uniform(-math.pi, math.pi), None),
    ))


def _walker(direction: float) -> tuple[str, float, str | None]:
    """A pedestrian walking along (``direction > 0``) or against the road direction."""
    return "human.pedestrian.adult", 0.0 if direction > 0 else math.pi, "pedestrian.moving"


def _plan_sidewalks(rng: Rng, actors: list[Actor], side: float, ahead: float) -> None:
    """Sidewalks on both sides: kerb line (standing people, parked cycles, bin, bike rack), two
    walking lines (one per direction) and a bike line; then, near the start, a construction
    worker by the barriers and a bike rack on the far side."""
    for k in (1.0, -1.0):
        _fill_line(rng, actors, -15.0, ahead, k * 7.6, 0.0, functools.partial(_kerb_pick, rng, k),
                   (4.0, 12.0))
        for lat, direction in ((k * 8.5, 1.0), (k * 9.3, -1.0)):
            walk = direction * rng.uniform(1.1, 1.5)
            _fill_line(rng, actors, -15.0, ahead + 10.0, lat, walk,
                       functools.partial(_walker, direction), (6.0, 16.0))
        bike = rng.uniform(3.5, 5.0)
        _fill_line(rng, actors, -10.0, ahead, k * 10.1, bike,
                   lambda: ("vehicle.bicycle", 0.0, "cycle.with_rider"), (15.0, 30.0))
    actors.append(_make_actor(rng, "human.pedestrian.construction_worker", rng.uniform(6.0, 9.0),
                              side * 5.6, 0.0, rng.uniform(-math.pi, math.pi),
                              "pedestrian.standing"))
    actors.append(_make_actor(rng, "static_object.bicycle_rack", rng.uniform(-12.0, -4.0),
                              -side * 10.9, 0.0, math.pi / 2, None))


# ---------------------------------------------------------------------------------------------
# Poses
# ---------------------------------------------------------------------------------------------

def rot_z(yaw: float) -> torch.Tensor:
    """``(3, 3)`` float64 rotation by ``yaw`` about the z axis."""
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def ego_pose(scene: Scene, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ego -> global rotation (3, 3) and translation (3,) at scene time t (seconds)."""
    s = scene.ego_speed * t
    xy = road_to_global(scene, s, scene.ego_lat)
    pitch = scene.pitch + 0.002 * math.sin(2 * math.pi * 0.7 * t)
    roll = scene.roll + 0.002 * math.sin(2 * math.pi * 1.1 * t)
    cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    r_y = torch.tensor([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]], dtype=torch.float64)
    r_x = torch.tensor([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]], dtype=torch.float64)
    rot = rot_z(scene.road_yaw) @ r_y @ r_x
    return rot, torch.tensor([xy[0], xy[1], 0.0], dtype=torch.float64)


def scene_time(scene: Scene, timestamp_us: int) -> float:
    """Seconds since the scene's log started, of a timestamp in microseconds."""
    return (timestamp_us - scene.log.start_us) * US_TO_S


def road_to_global(scene: Scene, s: float, lat: float) -> tuple[float, float]:
    """Global ``(x, y)`` of the road coordinates ``(s, lat)``."""
    c, sn = math.cos(scene.road_yaw), math.sin(scene.road_yaw)
    return (scene.origin[0] + s * c - lat * sn, scene.origin[1] + s * sn + lat * c)


def actor_state(scene: Scene, actor: Actor, t: float) -> tuple[list[float], float]:
    """Global box centre [x, y, z] and yaw about global z at scene time t."""
    x, y = road_to_global(scene, actor.s0 + actor.speed * t, actor.lat)
    return [x, y, actor.size[2] / 2], scene.road_yaw + actor.heading


def boxes_at(scene: Scene, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres (A, 3), rotations (A, 3, 3) box -> global, and sizes (A, 3) (w, l, h)."""
    states = [actor_state(scene, a, t) for a in scene.actors]
    centers = torch.tensor([c for c, _ in states], dtype=torch.float64)
    rots = torch.stack([rot_z(y) for _, y in states])
    sizes = torch.tensor([a.size for a in scene.actors], dtype=torch.float64)
    return centers, rots, sizes


def sensor_to_ego(sensor: Sensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sensor -> ego rotation ``(3, 3)`` and translation ``(3,)``, float64."""
    q = torch.tensor(sensor.rotation, dtype=torch.float64)
    return quat_to_matrix(q / q.norm()), torch.tensor(sensor.translation, dtype=torch.float64)


def road_coords(scene: Scene, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Road (s, lat) of global points (..., 2)."""
    c, sn = math.cos(scene.road_yaw), math.sin(scene.road_yaw)
    dx = xy[..., 0] - scene.origin[0]
    dy = xy[..., 1] - scene.origin[1]
    return dx * c + dy * sn, -dx * sn + dy * c


def building_height(s: torch.Tensor, lat_sign: torch.Tensor) -> torch.Tensor:
    """Height (m) of the facade at road coordinate ``s`` on the side of ``lat_sign`` (same
    shapes): one pseudo-random height per 18 m block and side."""
    block = torch.floor(s / 18.0) * 2 + (lat_sign > 0)
    return 6.0 + 10.0 * torch.frac(torch.sin(block * 12.9898) * 43758.5453).abs()


def intrinsic_matrix(sensor: Sensor, width: int, height: int) -> list[list[float]]:
    """The ``(3, 3)`` intrinsics of a generated camera of ``width x height``: the real
    calibration's ``f, cx, cy`` times ``width / 1600`` and ``height / 900``.  This defines the
    generated camera (images are rendered with it), it does not describe a resampled image."""
    if sensor.intrinsic is None:
        raise ValueError(f"{sensor.channel} is not a camera")
    f, cx, cy = sensor.intrinsic
    sx, sy = width / NUSCENES_IMAGE_SIZE[0], height / NUSCENES_IMAGE_SIZE[1]
    return [[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]]
