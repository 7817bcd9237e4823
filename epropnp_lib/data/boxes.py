"""3D boxes of one image in the camera (optical) frame, and the nuScenes detection taxonomy.

Box convention (used by the nuScenes reader, the deformable network, the ROS conversions):

* ``center``: box centre in the camera frame (x right, y down, z forward), metres.
* ``size``: ``(width, length, height)`` in metres -- the order of the nuScenes devkit's ``wlh``.
  Length is along the object's x axis (its heading), width along its z axis, height along its
  y axis (the camera's y axis, pointing down, since 4DoF boxes only yaw about it).
* ``yaw``: rotation about the camera y axis, the 4DoF convention of
  :mod:`epropnp_lib.conventions`: ``R_y(yaw)`` maps the object frame to the camera frame, so the
  heading (object x axis) in the camera frame is ``(cos yaw, 0, -sin yaw)``.
* ``velocity``: ``(vx, vz)`` in m/s along the camera x and z axes (nuScenes ignores vertical
  velocity).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from epropnp_lib.checks import check_float_tensors, check_shape

__all__ = ["NUSCENES_ATTRIBUTES", "NUSCENES_CLASSES", "CameraBoxes"]

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


class CameraBoxes(NamedTuple):
    """The 3D boxes of one image in its camera frame (see the module docstring).

    Attributes:
        center: (M, 3) metres.
        size: (M, 3) (width, length, height) metres.
        yaw: (M,) radians about the camera y axis.
        labels: (M,) long, index into :data:`NUSCENES_CLASSES`.
        velocity: (M, 2) m/s along camera (x, z); NaN where unknown.
        attributes: (M,) long, index into :data:`NUSCENES_ATTRIBUTES`, -1 for none.
        scores: (M,) confidence in [0, 1]; 1 for ground truth.
    """

    center: torch.Tensor
    size: torch.Tensor
    yaw: torch.Tensor
    labels: torch.Tensor
    velocity: torch.Tensor
    attributes: torch.Tensor
    scores: torch.Tensor

    @classmethod
    def empty(
        cls, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> CameraBoxes:
        """No boxes (M = 0)."""
        f = torch.zeros(0, dtype=dtype, device=device)
        i = torch.zeros(0, dtype=torch.long, device=device)
        return cls(f.view(0, 3), f.view(0, 3), f, i, f.view(0, 2), i.clone(), f.clone())

    @property
    def num_boxes(self) -> int:
        """Number of boxes M (``len()`` of a NamedTuple is its number of fields)."""
        return int(self.center.shape[0])

    def validate(self) -> CameraBoxes:
        """Check shapes and dtypes (typed errors from :mod:`epropnp_lib.checks`); return self."""
        dims = check_shape(self.center, ["M", 3], "center")
        check_shape(self.size, ["M", 3], "size", dims)
        check_shape(self.yaw, ["M"], "yaw", dims)
        check_shape(self.labels, ["M"], "labels", dims)
        check_shape(self.velocity, ["M", 2], "velocity", dims)
        check_shape(self.attributes, ["M"], "attributes", dims)
        check_shape(self.scores, ["M"], "scores", dims)
        check_float_tensors(
            center=self.center, size=self.size, yaw=self.yaw, velocity=self.velocity,
            scores=self.scores,
        )
        return self

    def select(self, index: torch.Tensor) -> CameraBoxes:
        """Boxes at ``index`` (a (M,) bool mask or (K,) long indices)."""
        return CameraBoxes(*(field[index] for field in self))

    def to(self, device: torch.device | str) -> CameraBoxes:
        """The same boxes on ``device``."""
        return CameraBoxes(*(field.to(device) for field in self))

    def pose4(self) -> torch.Tensor:
        """(M, 4) 4DoF poses ``(x, y, z, yaw)`` of the boxes (object frame at the box centre)."""
        return torch.cat([self.center, self.yaw[:, None]], dim=-1)

    def corners(self) -> torch.Tensor:
        """(M, 8, 3) box corners in the camera frame.

        Order: the 4 corners at object ``y = +h/2`` (bottom, since y points down) then the 4 at
        ``y = -h/2``; each group runs (+l, +w), (+l, -w), (-l, -w), (-l, +w) over (object x, z).
        """
        w, length, h = self.size.unbind(-1)
        sx = self.size.new_tensor([1, 1, -1, -1, 1, 1, -1, -1])
        sy = self.size.new_tensor([1, 1, 1, 1, -1, -1, -1, -1])
        sz = self.size.new_tensor([1, -1, -1, 1, 1, -1, -1, 1])
        local = torch.stack(
            [sx * length[:, None] / 2, sy * h[:, None] / 2, sz * w[:, None] / 2], dim=-1
        )  # (M, 8, 3)
        c, s = torch.cos(self.yaw)[:, None], torch.sin(self.yaw)[:, None]
        x = c * local[..., 0] + s * local[..., 2]
        z = -s * local[..., 0] + c * local[..., 2]
        return torch.stack([x, local[..., 1], z], dim=-1) + self.center[:, None, :]
