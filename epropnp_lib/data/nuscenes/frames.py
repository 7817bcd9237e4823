"""Where a camera image sits in the world, and nuScenes boxes between the global and a camera
frame.

Conversions (the inverse of each other, tested as a round trip):

* camera -> global is ``T = ego_to_global @ cam_to_ego`` (4 x 4, from the camera sample_data's
  own ego pose and calibration, as the devkit's ``get_sample_data`` uses them);
* ``center``: the box centre moved with ``T^-1``;
* ``yaw`` (about the camera y axis): the direction of the box heading (its length axis) in the
  camera frame, ``yaw = atan2(-h_z, h_x)``; cameras are almost level, so this is the 4DoF yaw of
  :mod:`epropnp_lib.conventions`.  Written back as the global yaw (about the global z axis)
  whose heading has exactly that camera yaw;
* ``velocity``: the devkit's ground velocity ``(vx, vy, 0)`` rotated into the camera frame and
  reduced to its ``(x, z)`` components; written back as the horizontal global velocity with
  those camera components (a 2 x 2 solve, exact for any camera tilt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from epropnp_lib.geometry.rotations import quat_to_matrix

__all__ = ["CameraFrame", "camera_frame_of", "camera_to_global", "global_to_camera"]


class CameraFrame(NamedTuple):
    """Where one camera image sits in the world (everything :func:`write_results` needs).

    Attributes:
        camera: channel, e.g. ``"CAM_FRONT"``.
        sample_token: the key frame's sample.
        sample_data_token: the image's sample_data record.
        cam_to_ego: ``(4, 4)`` float64, camera (optical) -> ego, from calibrated_sensor.
        ego_to_global: ``(4, 4)`` float64, ego -> global, the ego pose at the image timestamp.
    """

    camera: str
    sample_token: str
    sample_data_token: str
    cam_to_ego: torch.Tensor
    ego_to_global: torch.Tensor

    @property
    def cam_to_global(self) -> torch.Tensor:
        """``(4, 4)`` float64 camera -> global."""
        return self.ego_to_global @ self.cam_to_ego


def _transform(rotation_wxyz: Sequence[float], translation: Sequence[float]) -> torch.Tensor:
    q = torch.tensor(rotation_wxyz, dtype=torch.float64)
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = quat_to_matrix(q / q.norm())
    out[:3, 3] = torch.tensor(translation, dtype=torch.float64)
    return out


def camera_frame_of(nusc: Any, sample_data_token: str) -> CameraFrame:
    """The :class:`CameraFrame` of a camera ``sample_data`` record (calibration, ego pose)."""
    sd = nusc.get("sample_data", sample_data_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return CameraFrame(sd["channel"], sd["sample_token"], sample_data_token,
                       _transform(cs["rotation"], cs["translation"]),
                       _transform(pose["rotation"], pose["translation"]))


def global_to_camera(
    translation: torch.Tensor, rotation: torch.Tensor, velocity: torch.Tensor,
    cam_to_global: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global boxes to the camera frame (see the module docstring).

    Args:
        translation: ``(M, 3)`` global box centres.
        rotation: ``(M, 4)`` global box rotations (w, x, y, z).
        velocity: ``(M, 2)`` or ``(M, 3)`` global velocity (only x, y are used; NaN kept).
        cam_to_global: ``(4, 4)``.

    Returns:
        ``center (M, 3)``, ``yaw (M,)`` about the camera y axis, ``velocity (M, 2)`` camera
        ``(x, z)``; float64.
    """
    t = cam_to_global.to(torch.float64)
    rot, origin = t[:3, :3], t[:3, 3]
    center = (translation.to(torch.float64) - origin) @ rot
    box_rot = quat_to_matrix(rotation.to(torch.float64))
    heading = box_rot[:, :, 0] @ rot  # (M, 3) camera frame
    yaw = torch.atan2(-heading[:, 2], heading[:, 0])
    v = torch.zeros(translation.shape[0], 3, dtype=torch.float64)
    v[:, :2] = velocity[:, :2].to(torch.float64)
    v_cam = v @ rot
    return center, yaw, v_cam[:, [0, 2]]


def camera_to_global(
    center: torch.Tensor, yaw: torch.Tensor, velocity: torch.Tensor, cam_to_global: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera-frame boxes back to the global frame: the inverse of :func:`global_to_camera`.

    Args:
        center: ``(M, 3)``, yaw ``(M,)``, velocity ``(M, 2)`` camera ``(x, z)``.
        cam_to_global: ``(4, 4)``.

    Returns:
        ``translation (M, 3)``, ``yaw (M,)`` about the global z axis, ``velocity (M, 2)``
        global ``(vx, vy)``; float64.
    """
    t = cam_to_global.to(torch.float64)
    rot, origin = t[:3, :3], t[:3, 3]
    translation = center.to(torch.float64) @ rot.T + origin
    yaw = yaw.to(torch.float64)
    s, c = torch.sin(yaw)[:, None], torch.cos(yaw)[:, None]
    # Heading (cos p, sin p, 0) has camera yaw `yaw` iff it is orthogonal to w (and points
    # along the camera-frame heading, fixing the sign).
    w = s * rot[:2, 0] + c * rot[:2, 2]  # (M, 2)
    cand = torch.stack((-w[:, 1], w[:, 0]), -1)
    cand = cand / cand.norm(dim=-1, keepdim=True)
    d = cand @ rot[:2, :]  # (M, 3) heading in camera coordinates
    flip = (d[:, 0] * c[:, 0] - d[:, 2] * s[:, 0]) < 0
    cand = torch.where(flip[:, None], -cand, cand)
    yaw_g = torch.atan2(cand[:, 1], cand[:, 0])
    a = torch.stack((rot[:2, 0], rot[:2, 2]))  # (2, 2): camera (x, z) of global (vx, vy)
    vel = torch.linalg.solve(a, velocity.to(torch.float64).T).T
    return translation, yaw_g, vel
