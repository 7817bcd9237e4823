"""The nuScenes classes, attributes, cameras and categories, in the devkit's order."""

from __future__ import annotations

import math

__all__ = [
    "CAMERAS",
    "KNOWN_CATEGORIES",
    "NUSCENES_ATTRIBUTES",
    "NUSCENES_CLASSES",
    "NUSCENES_HEADING_PERIODS",
    "NUSCENES_MEAN_SIZES",
]

#: The 10 nuScenes detection classes, in the devkit's order
#: (``nuscenes.eval.detection.constants.DETECTION_NAMES``); label ``i`` is ``NUSCENES_CLASSES[i]``.
NUSCENES_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)

#: The 8 nuScenes attributes, in the devkit's order (``ATTRIBUTE_NAMES``); -1 means none.
NUSCENES_ATTRIBUTES: tuple[str, ...] = (
    "pedestrian.moving",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "cycle.with_rider",
    "cycle.without_rider",
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
)

#: Typical (width, length, height) in metres of the nuScenes classes, in
#: :data:`NUSCENES_CLASSES` order (rounded means of the training set;
#: only the reference of the log-size regression, so approximate values are harmless).
NUSCENES_MEAN_SIZES: tuple[tuple[float, float, float], ...] = (
    (1.95, 4.62, 1.73),  # car
    (2.51, 6.93, 2.84),  # truck
    (2.94, 10.50, 3.47),  # bus
    (2.90, 12.29, 3.87),  # trailer
    (2.73, 6.37, 3.19),  # construction_vehicle
    (0.67, 0.73, 1.77),  # pedestrian
    (0.77, 2.11, 1.47),  # motorcycle
    (0.60, 1.70, 1.28),  # bicycle
    (0.41, 0.41, 1.07),  # traffic_cone
    (2.49, 0.48, 0.98),  # barrier
)


#: Period (radians) of the heading of each class in :data:`NUSCENES_CLASSES` order, as the
#: devkit's orientation error uses it: barriers look the same from both ends (pi); traffic
#: cones have no heading (NaN: not scored).
NUSCENES_HEADING_PERIODS: tuple[float, ...] = (
    2 * math.pi, 2 * math.pi, 2 * math.pi, 2 * math.pi, 2 * math.pi,
    2 * math.pi, 2 * math.pi, 2 * math.pi, math.nan, math.pi,
)


#: The six cameras in the devkit's order.
CAMERAS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT",
)


#: Every category name of the nuScenes taxonomy (annotation and lidarseg categories).
KNOWN_CATEGORIES: frozenset[str] = frozenset((
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone",
    "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy", "vehicle.bus.rigid",
    "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego",
))
