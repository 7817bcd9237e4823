"""3D boxes: their corners and edges, and the boxes of one image in its camera (optical) frame.

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
from epropnp_lib.geometry.rotations import yaw_to_matrix

__all__ = ["BOX_EDGES", "FRONT_FACE", "CameraBoxes", "box_corners"]

#: Signs ``(8, 3)`` of the box corners along the object x, y, z axes: corner ``i`` is
#: ``(+-x/2, +-y/2, +-z/2)`` with the signs of bits 2, 1, 0 of ``i`` (0 = minus).
CORNER_SIGNS: tuple[tuple[float, float, float], ...] = tuple(
    (((i >> 2) & 1) - 0.5, ((i >> 1) & 1) - 0.5, (i & 1) - 0.5) for i in range(8)
)

#: Corner index pairs of the 12 box edges (corners as in :data:`CORNER_SIGNS`).
BOX_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 3), (3, 2), (2, 0),  # x = -x/2 face
    (4, 5), (5, 7), (7, 6), (6, 4),  # x = +x/2 face (the front: the heading points out of it)
    (0, 4), (1, 5), (2, 6), (3, 7),  # along x
)

#: Corner indices of the front face (object ``x = +x/2``), in cyclic order.
FRONT_FACE: tuple[int, int, int, int] = (4, 5, 7, 6)


def box_corners(center: torch.Tensor, rotation: torch.Tensor, extents: torch.Tensor
                ) -> torch.Tensor:
    """Corners of boxes: ``center: (..., 3)``, ``rotation: (..., 3, 3)`` (object axes in the
    parent frame), ``extents: (..., 3)`` (full lengths along the object x, y, z axes) ->
    ``(..., 8, 3)`` in the parent frame, ordered as :data:`CORNER_SIGNS`."""
    signs = torch.tensor(CORNER_SIGNS, dtype=extents.dtype, device=extents.device)
    local = signs * extents[..., None, :]  # (..., 8, 3)
    return local @ rotation.transpose(-1, -2) + center[..., None, :]


class CameraBoxes(NamedTuple):
    """The 3D boxes of one image in its camera frame (see the module docstring).

    Attributes:
        center: (M, 3) metres.
        size: (M, 3) (width, length, height) metres.
        yaw: (M,) radians about the camera y axis.
        labels: (M,) long, class index (nuScenes:
            :data:`epropnp_lib.data.nuscenes.NUSCENES_CLASSES`).
        velocity: (M, 2) m/s along camera (x, z); NaN where unknown.
        attributes: (M,) long, attribute index (nuScenes:
            :data:`~epropnp_lib.data.nuscenes.NUSCENES_ATTRIBUTES`), -1 for none.
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
        """(M, 8, 3) box corners in the camera frame, ordered as :data:`CORNER_SIGNS` over the
        object axes (x = length, y = height, z = width); :data:`FRONT_FACE` is the +length
        face."""
        return box_corners(self.center, yaw_to_matrix(self.yaw), self.size[:, [1, 2, 0]])
