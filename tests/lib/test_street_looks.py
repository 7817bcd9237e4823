"""Tests of the street generator's domain randomisation (epropnp_lib.generators.nuscenes_looks)
and of its effect on generated nuScenes data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from epropnp_lib.errors import ConfigError
from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
from epropnp_lib.generators.nuscenes_looks import (
    ActorLook,
    StreetLook,
    draw_scene_look,
    finish_image,
    jitter_sensor_pose,
    part_boxes,
)
from epropnp_lib.geometry.rotations import quat_to_matrix

#: Mean and standard deviation of the BGR colour of each decoded JPEG of scene-0103 (2 samples,
#: 96 x 54, the six cameras in path order) as the generator drew them before it had looks:
#: computed with the default look on an AMD EPYC machine, where the code path is the pre-looks
#: one (on the machine the looks were written on, the byte md5 of commit a0f43d1's images held).
#: JPEG bytes and float rounding differ between CPUs, so the check is on colour statistics
#: within half a level, not on bytes.
ORIGINAL_MEAN_BGR = [
    [135.79, 120.12, 107.78], [138.03, 120.19, 107.39], [116.84, 81.15, 69.86],
    [115.37, 90.45, 90.46], [118.48, 104.06, 104.32], [128.49, 113.49, 115.6],
    [111.22, 112.9, 113.33], [113.77, 111.01, 109.93], [111.64, 87.59, 80.55],
    [117.97, 97.56, 89.87], [133.58, 123.72, 129.91], [125.35, 116.14, 130.55],
]
ORIGINAL_STD_BGR = [
    [63.23, 60.19, 56.61], [64.0, 58.03, 55.07], [35.98, 32.22, 40.91], [40.02, 41.87, 46.57],
    [44.24, 40.06, 38.66], [38.58, 37.87, 37.22], [76.04, 60.71, 53.61], [75.84, 61.44, 56.51],
    [45.17, 43.34, 57.85], [46.8, 40.83, 55.82], [49.22, 43.27, 40.9], [55.17, 50.44, 41.46],
]


def _generate(root: Path, look: StreetLook | None) -> tuple[str, np.ndarray, np.ndarray]:
    """md5 of the JPEG bytes, ``(12, 3)`` mean and ``(12, 3)`` standard deviation of the BGR
    colour of the decoded images."""
    generate_nuscenes_mini(root, scenes=("scene-0103",), samples_per_scene=2,
                           image_size=(96, 54), lidar_azimuth_steps=90, look=look)
    h = hashlib.md5()
    pixels = []
    for p in sorted((root / "samples").rglob("*.jpg")):
        data = p.read_bytes()
        h.update(data)
        pixels.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                      .reshape(-1, 3).astype(np.float64))
    return (h.hexdigest(), np.asarray([x.mean(0) for x in pixels]),
            np.asarray([x.std(0) for x in pixels]))


def test_default_look_is_the_original_and_training_looks_change_only_pixels_and_cameras(
        tmp_path: Path) -> None:
    default_md5, default_means, default_stds = _generate(tmp_path / "default", None)
    np.testing.assert_allclose(default_means, ORIGINAL_MEAN_BGR, rtol=0, atol=0.5)
    np.testing.assert_allclose(default_stds, ORIGINAL_STD_BGR, rtol=0, atol=0.5)  # a blur: 5
    assert _generate(tmp_path / "explicit", StreetLook())[0] == default_md5  # bitwise no-op
    training_md5, training_means, _ = _generate(tmp_path / "training", StreetLook.training())
    assert training_md5 != default_md5
    assert np.abs(training_means - default_means).max() > 5.0  # visibly another look

    def table(name: str, which: str) -> list[dict[str, object]]:
        return json.loads((tmp_path / which / "v1.0-mini" / f"{name}.json").read_text())

    # the world and its boxes do not change (visibility is measured on the new pixels); the
    # cameras move, the lidar does not
    def boxes(which: str) -> list[dict[str, object]]:
        return [{k: v for k, v in r.items() if k != "visibility_token"}
                for r in table("sample_annotation", which)]

    assert boxes("default") == boxes("training")
    calib = {which: {r["token"]: r for r in table("calibrated_sensor", which)}
             for which in ("default", "training")}
    moved = [t for t, r in calib["default"].items() if r != calib["training"][t]]
    assert len(moved) == 6
    assert all(calib["default"][t]["camera_intrinsic"] for t in moved)


def test_presets_validate_and_shifted_lies_outside_the_training_ranges() -> None:
    train, shifted = StreetLook.training(), StreetLook.shifted()
    assert StreetLook().is_default and not train.is_default
    same = {"sun_azimuth_deg"}  # any sun direction in both
    for f in dataclasses.fields(StreetLook):
        a, b = getattr(train, f.name), getattr(shifted, f.name)
        if f.name in same or not isinstance(a, tuple):
            continue
        assert b[1] < a[0] or b[0] > a[1], f.name  # disjoint ranges
    assert shifted.shape_variant_prob > train.shape_variant_prob
    with pytest.raises(ConfigError, match="range"):
        StreetLook(light_intensity=(1.2, 0.8))
    with pytest.raises(ConfigError, match=">= 0"):
        StreetLook(noise_std=(-1.0, 1.0))
    with pytest.raises(ConfigError, match="jpeg_quality"):
        StreetLook(jpeg_quality=(0.0, 90.0))


def test_scene_looks_are_drawn_within_the_ranges_and_reproducibly() -> None:
    look = StreetLook.training()
    a = draw_scene_look(look, 0, "scene-0061", 5)
    assert a == draw_scene_look(look, 0, "scene-0061", 5)
    assert a != draw_scene_look(look, 0, "scene-0553", 5)
    assert look.light_intensity[0] <= a.light <= look.light_intensity[1]
    assert a.sun is not None and math.isclose(float(np.linalg.norm(a.sun)), 1.0)
    assert math.degrees(math.asin(a.sun[2])) >= look.sun_elevation_deg[0] - 1e-9
    assert all(look.object_tint[0] <= c <= look.object_tint[1]
               for actor in a.actors for c in actor.tint)
    assert draw_scene_look(StreetLook(), 0, "x", 2).sun is None


@pytest.mark.parametrize("texture", ["vehicle", "person", "cone"])
def test_object_parts_fill_the_annotated_box(texture: str) -> None:
    parts = part_boxes(texture, ActorLook((1.0, 1.0, 1.0), True, (0.3, 0.5)))
    centre = torch.tensor([c for c, _ in parts])
    half = 0.5 * torch.tensor([s for _, s in parts])
    lo, hi = (centre - half).amin(0), (centre + half).amax(0)
    assert torch.allclose(lo, torch.full((3,), -0.5)) and torch.allclose(hi, torch.full((3,), 0.5))
    assert len(parts) == {"vehicle": 2, "person": 3, "cone": 1}[texture]
    if texture == "vehicle":  # the lower part (bonnet) is at the front, +x
        bonnet = min(parts, key=lambda p: p[1][2])
        assert bonnet[0][0] > 0


def test_camera_jitter_raises_and_pitches_down() -> None:
    look = draw_scene_look(StreetLook(camera_height_m=(0.2, 0.2), camera_pitch_deg=(3.0, 3.0)),
                           0, "s", 0)
    rotation = (0.49980, -0.50303, 0.49978, -0.49737)  # CAM_FRONT, optical -> ego
    t, q = jitter_sensor_pose((1.7, 0.0, 1.5), rotation, look)
    assert t == pytest.approx((1.7, 0.0, 1.7))

    def axis_z(quat: tuple[float, ...]) -> float:  # ego z of the optical axis
        qt = torch.tensor(quat, dtype=torch.float64)
        return float((quat_to_matrix(qt / qt.norm()) @ torch.tensor([0.0, 0.0, 1.0],
                                                                    dtype=torch.float64))[2])

    assert axis_z(q) - axis_z(rotation) == pytest.approx(-math.sin(math.radians(3.0)), abs=2e-3)


def test_finish_image_blurs_and_draws_the_jpeg_quality() -> None:
    img = np.zeros((20, 30, 3), dtype=np.uint8)
    img[:, 15:] = 255
    plain = draw_scene_look(StreetLook(), 0, "s", 0)
    assert finish_image(img, plain, 0)[1] is None and finish_image(img, plain, 0)[0] is img
    look = draw_scene_look(StreetLook(blur_sigma=(1.0, 1.0), jpeg_quality=(40.0, 50.0)), 0,
                           "s", 0)
    out, quality = finish_image(img, look, 3)
    assert quality is not None and 40 <= quality <= 50
    assert 0 < int(out[10, 15, 0]) < 255  # the edge is blurred
