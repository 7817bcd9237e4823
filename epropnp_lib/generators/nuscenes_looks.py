"""Domain randomisation of the generated street scenes: how a scene looks, drawn per scene.

:class:`StreetLook` holds the knobs as ranges ``(lo, hi)`` drawn uniformly once per scene (per
actor for the object colours and shapes, per image for blur and JPEG quality);
:func:`draw_scene_look` turns them into the :class:`SceneLook` the renderer applies.  The
default ``StreetLook()`` is the fixed look of the original generator: every range is a single
value with no effect, nothing is drawn, and the images are byte-identical to it.  Presets:
:meth:`StreetLook.training` (the ranges a model is trained on) and :meth:`StreetLook.shifted`
(a validation look with settings outside them).

Colour factors multiply linear RGB in [0, 1].  Textures are a procedural pattern
``1 + contrast * sin(a u + p) * sin(b v + q)`` (``u, v`` face or ground coordinates).  Shape
variants keep the annotated box as the bounding box: a vehicle becomes a body and a lower
bonnet at its front (its silhouette now tells front from back by itself); a pedestrian a torso
and two legs.  Lidar still sees the full boxes.  Camera jitter moves every camera of the rig
by the same height offset and pitch, written to ``calibrated_sensor`` so that the annotations
stay exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.rotations import quat_multiply

__all__ = ["ActorLook", "SceneLook", "StreetLook", "draw_scene_look", "finish_image",
           "jitter_sensor_pose", "part_boxes"]

Range = tuple[float, float]


@dataclass(frozen=True)
class StreetLook:
    """Appearance knobs of the street generator (ranges ``(lo, hi)``, drawn per scene).

    Attributes:
        sun_azimuth_deg / sun_elevation_deg: sun direction (degrees; azimuth about the global
            vertical from the global x axis, elevation above the horizon); ``None`` (both):
            the original fixed sun.
        light_intensity: factor on the direct (Lambert) light of the objects and on the
            brightness of the whole image.
        ambient: ambient share of the object shading (the rest is Lambert).
        sky_tint / road_tint / building_tint / object_tint: per-channel colour factors of the
            sky, the ground (road, markings, sidewalks, grass), the facades and each object
            (drawn per channel, so they also shift the hue).
        texture_contrast: amplitude of the procedural texture on objects, ground and facades.
        shape_variant_prob: probability that a vehicle / pedestrian is drawn as parts (body +
            bonnet, torso + legs) instead of one cuboid.
        bonnet_length / bonnet_height: the bonnet's share of the vehicle's length and height.
        camera_height_m: offset of every camera's mounting height (metres).
        camera_pitch_deg: extra pitch of every camera (degrees, positive looks down).
        noise_std: standard deviation of the Gaussian pixel noise (units of 1/255, per scene).
        blur_sigma: standard deviation of the Gaussian blur (pixels of the written image, 0: none).
        jpeg_quality: JPEG quality of the written images (drawn per image, rounded).
    """

    sun_azimuth_deg: Range | None = None
    sun_elevation_deg: Range | None = None
    light_intensity: Range = (1.0, 1.0)
    ambient: Range = (0.5, 0.5)
    sky_tint: Range = (1.0, 1.0)
    road_tint: Range = (1.0, 1.0)
    building_tint: Range = (1.0, 1.0)
    object_tint: Range = (1.0, 1.0)
    texture_contrast: Range = (0.0, 0.0)
    shape_variant_prob: float = 0.0
    bonnet_length: Range = (0.3, 0.3)
    bonnet_height: Range = (0.55, 0.55)
    camera_height_m: Range = (0.0, 0.0)
    camera_pitch_deg: Range = (0.0, 0.0)
    noise_std: Range = (2.5, 2.5)
    blur_sigma: Range = (0.0, 0.0)
    jpeg_quality: Range | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and not (len(value) == 2 and value[0] <= value[1]):
                raise ConfigError(f"StreetLook.{f.name} must be a range (lo, hi), lo <= hi, "
                                  f"got {value}")
        lows = {n: getattr(self, n)[0] for n in (
            "light_intensity", "sky_tint", "road_tint", "building_tint", "object_tint",
            "texture_contrast", "noise_std", "blur_sigma")}
        if min(lows.values()) < 0:
            raise ConfigError(f"StreetLook: these ranges must be >= 0: {lows}")
        if not (self.ambient[0] >= 0 and self.ambient[1] <= 1
                and 0 <= self.shape_variant_prob <= 1):
            raise ConfigError("StreetLook.ambient and shape_variant_prob must be in [0, 1]")
        if not (self.bonnet_length[0] > 0 and self.bonnet_length[1] < 1
                and self.bonnet_height[0] > 0 and self.bonnet_height[1] < 1):
            raise ConfigError("StreetLook.bonnet_length / bonnet_height must be in (0, 1)")
        if self.jpeg_quality is not None and not (self.jpeg_quality[0] >= 1
                                                  and self.jpeg_quality[1] <= 100):
            raise ConfigError(f"StreetLook.jpeg_quality must be in [1, 100], got "
                              f"{self.jpeg_quality}")

    @property
    def is_default(self) -> bool:
        """Whether this is the generator's fixed original look."""
        return self == StreetLook()

    @classmethod
    def training(cls) -> StreetLook:
        """The randomised look a model is trained on."""
        return cls(sun_azimuth_deg=(-180.0, 180.0), sun_elevation_deg=(25.0, 80.0),
                   light_intensity=(0.7, 1.3), ambient=(0.35, 0.65), sky_tint=(0.8, 1.15),
                   road_tint=(0.75, 1.25), building_tint=(0.7, 1.3), object_tint=(0.7, 1.3),
                   texture_contrast=(0.0, 0.15), shape_variant_prob=0.5,
                   bonnet_length=(0.2, 0.35), bonnet_height=(0.45, 0.65),
                   camera_height_m=(-0.15, 0.15), camera_pitch_deg=(-1.5, 1.5),
                   noise_std=(0.0, 6.0), blur_sigma=(0.0, 0.8), jpeg_quality=(60.0, 95.0))

    @classmethod
    def shifted(cls) -> StreetLook:
        """A validation look outside the :meth:`training` ranges (low sun, dim light, tints,
        texture, parts on every object, camera height and pitch, noise, blur, JPEG)."""
        return cls(sun_azimuth_deg=(-180.0, 180.0), sun_elevation_deg=(8.0, 15.0),
                   light_intensity=(0.45, 0.6), ambient=(0.2, 0.3), sky_tint=(0.55, 0.75),
                   road_tint=(1.3, 1.5), building_tint=(0.4, 0.65), object_tint=(0.4, 0.65),
                   texture_contrast=(0.2, 0.3), shape_variant_prob=1.0,
                   bonnet_length=(0.38, 0.45), bonnet_height=(0.3, 0.42),
                   camera_height_m=(0.2, 0.3), camera_pitch_deg=(2.0, 3.0),
                   noise_std=(8.0, 10.0), blur_sigma=(1.0, 1.4), jpeg_quality=(35.0, 50.0))


class ActorLook(NamedTuple):
    """The drawn look of one actor: colour factor ``(3,)``, whether it is drawn as parts, and
    the bonnet's share of the length and height (vehicles)."""

    tint: tuple[float, float, float]
    parts: bool
    bonnet: tuple[float, float]


class SceneLook(NamedTuple):
    """The drawn look of one scene (see :class:`StreetLook` for the meaning of each value)."""

    look: StreetLook
    sun: tuple[float, float, float] | None  # unit direction, global frame; None: original
    light: float
    ambient: float
    sky: tuple[float, float, float]
    road: tuple[float, float, float]
    building: tuple[float, float, float]
    contrast: float
    pattern: tuple[float, float, float, float]  # texture frequencies (a, b) and phases (p, q)
    noise: float  # pixel noise std, units of 1/255
    camera_height: float
    camera_pitch: float  # radians
    actors: tuple[ActorLook, ...]
    seed: int  # of the per-image draws (noise, blur, JPEG)


def _seed(seed: int, name: str) -> int:
    return int(hashlib.md5(f"look|{seed}|{name}".encode()).hexdigest()[:15], 16)


def draw_scene_look(look: StreetLook, seed: int, scene_name: str, num_actors: int) -> SceneLook:
    """The look of one scene, drawn from its own generator (``seed`` and the scene's name), so
    the world and the pixel noise of the original generator are drawn as before."""
    gen = torch.Generator().manual_seed(_seed(seed, scene_name))

    def u(r: Range) -> float:
        return r[0] + (r[1] - r[0]) * float(torch.rand((), generator=gen, dtype=torch.float64))

    def rgb(r: Range) -> tuple[float, float, float]:
        return (u(r), u(r), u(r))

    sun = None
    if look.sun_azimuth_deg is not None or look.sun_elevation_deg is not None:
        az = math.radians(u(look.sun_azimuth_deg or (33.7, 33.7)))
        el = math.radians(u(look.sun_elevation_deg or (57.1, 57.1)))
        sun = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
    light, ambient = u(look.light_intensity), u(look.ambient)
    sky, road, building = rgb(look.sky_tint), rgb(look.road_tint), rgb(look.building_tint)
    contrast = u(look.texture_contrast)
    texture = (u((4.0, 14.0)), u((4.0, 14.0)), u((0.0, 6.3)), u((0.0, 6.3)))
    noise, height = u(look.noise_std), u(look.camera_height_m)
    pitch = math.radians(u(look.camera_pitch_deg))
    actors = tuple(ActorLook(rgb(look.object_tint), u((0.0, 1.0)) < look.shape_variant_prob,
                             (u(look.bonnet_length), u(look.bonnet_height)))
                   for _ in range(num_actors))
    return SceneLook(look, sun, light, ambient, sky, road, building, contrast, texture, noise,
                     height, pitch, actors, _seed(seed, scene_name + "|images"))


def default_scene_look(num_actors: int) -> SceneLook:
    """The original look (what :func:`draw_scene_look` gives for ``StreetLook()``)."""
    return draw_scene_look(StreetLook(), 0, "", num_actors)


def part_boxes(texture: str, actor: ActorLook) -> list[tuple[tuple[float, float, float],
                                                             tuple[float, float, float]]]:
    """The parts of an actor as ``(centre, size)`` in unit-box coordinates (x length, y width,
    z up, the box is ``[-0.5, 0.5]^3``): one part unless the actor is drawn as parts."""
    if not actor.parts:
        return [((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))]
    if texture == "vehicle":
        bl, bh = actor.bonnet
        return [((-0.5 * bl, 0.0, 0.0), (1.0 - bl, 1.0, 1.0)),  # body
                ((0.5 - 0.5 * bl, 0.0, -0.5 + 0.5 * bh), (bl, 1.0, bh))]  # bonnet at the front
    if texture == "person":
        return [((0.0, 0.0, 0.25), (1.0, 1.0, 0.5)),  # torso and head
                ((0.0, 0.27, -0.25), (0.45, 0.4, 0.5)), ((0.0, -0.27, -0.25), (0.45, 0.4, 0.5))]
    return [((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))]


def pattern(u: torch.Tensor, v: torch.Tensor, scene: SceneLook) -> torch.Tensor:
    """``(N,)`` texture factor ``1 + contrast sin(a u + p) sin(b v + q)`` (1 at contrast 0)."""
    if scene.contrast == 0.0:
        return torch.ones_like(u)
    a, b, p, q = scene.pattern
    return 1.0 + scene.contrast * torch.sin(a * u + p) * torch.sin(b * v + q)


def jitter_sensor_pose(translation: tuple[float, float, float],
                       rotation: tuple[float, float, float, float], scene: SceneLook
                       ) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    """A camera's sensor -> ego translation and (w, x, y, z) rotation after the scene's height
    offset and extra pitch (about the camera's own x axis: positive looks down)."""
    if scene.camera_height == 0.0 and scene.camera_pitch == 0.0:
        return translation, rotation
    x, y, z = translation
    half = -0.5 * scene.camera_pitch
    # optical frame (x right, y down, z forward): R_x(a) turns the optical axis to
    # (0, -sin a, cos a), upwards for a > 0; a positive pitch looks down
    pitch = torch.tensor([math.cos(half), math.sin(half), 0.0, 0.0], dtype=torch.float64)
    q = torch.tensor(rotation, dtype=torch.float64)
    rot = quat_multiply(q / q.norm(), pitch)
    w, qx, qy, qz = (float(c) for c in rot)
    return (x, y, z + scene.camera_height), (w, qx, qy, qz)


def finish_image(bgr: np.ndarray, scene: SceneLook, index: int) -> tuple[np.ndarray, int | None]:
    """Blur of the written image ``(H, W, 3)`` uint8 and its JPEG quality (``None``: the
    generator's), drawn for image ``index`` of the scene."""
    look = scene.look
    if look.blur_sigma == (0.0, 0.0) and look.jpeg_quality is None:
        return bgr, None
    gen = torch.Generator().manual_seed(scene.seed + 7919 * index)
    draws = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
    sigma = look.blur_sigma[0] + (look.blur_sigma[1] - look.blur_sigma[0]) * draws[0]
    if sigma > 0:
        bgr = cv2.GaussianBlur(bgr, (0, 0), sigmaX=sigma)
    quality = None
    if look.jpeg_quality is not None:
        lo, hi = look.jpeg_quality
        quality = int(round(lo + (hi - lo) * draws[1]))
    return bgr, quality
