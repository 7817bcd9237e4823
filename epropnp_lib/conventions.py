"""Conventions used everywhere in epropnp, stated once.

Frames
    Camera frame: OpenCV / REP 103 *optical* frame -- x right, y down, z forward.
    A pose ``y = (R, t)`` maps object coordinates to camera coordinates::

        x_cam = R @ x_obj + t

Rotations
    Library quaternions are unit quaternions in **(w, x, y, z)** order (scalar first), with the
    Hamilton product.  ROS messages use (x, y, z, w); conversion happens only in
    ``epropnp_ros.poses``.  ``q`` and ``-q`` denote the same rotation.

4DoF poses (nuScenes-style)
    Translation plus a yaw angle about the camera's **y axis** (pointing down).  The rotation of
    yaw ``theta`` is ``R_y(theta) = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]``.  The object
    frame of a 4DoF pose has x along the box length, y down and z = x cross y; a nuScenes /
    REP 103 box frame (x forward, y left, z up) is ``R @ BOX_AXES_FROM_4DOF``.

Pose vectors (their sizes are ``Pose6DoF.dim`` / ``Pose4DoF.dim`` of
:mod:`epropnp_lib.geometry.pose`, with ``tangent_dim`` for the increments)
    6DoF pose tensor: ``(..., 7)`` = ``(tx, ty, tz, qw, qx, qy, qz)``.
    4DoF pose tensor: ``(..., 4)`` = ``(tx, ty, tz, yaw)``.

Local increments (tangent space)
    6DoF: ``delta = (dt (3), dphi (3))``; the updated pose is
    ``t' = t + dt``, ``R' = Exp(dphi) @ R`` (rotation increment on the left, i.e. about the
    camera's fixed axes, so that the rotational part of the covariance is expressed in the
    header/camera frame as ROS expects).
    4DoF: ``delta = (dt (3), dyaw)`` with ``yaw' = yaw + dyaw``.

Covariance order
    The library's 6DoF covariance is over ``(tx, ty, tz, phi_x, phi_y, phi_z)`` -- the same order
    as the ROS ``PoseWithCovariance`` 6x6 row-major layout (x, y, z, rot_x, rot_y, rot_z), fixed
    axes, in the camera (header) frame.  :func:`epropnp_lib.pnp.covariance.to_ros_covariance`
    is the one function that produces the ROS layout (it also handles 4DoF, where the
    unobserved roll/pitch blocks get :data:`UNOBSERVED_ROTATION_VARIANCE`).

Tensors
    Leading batch dimensions; docstrings name every shape, e.g. ``x3d: (B, N, 3)``,
    ``x2d: (B, N, 2)``, ``w2d: (B, N, 2)``, ``cam_mats: (B, 3, 3)``.
"""

from __future__ import annotations

#: Variance (rad^2) reported for the rotations a 4DoF pose does not observe (roll/pitch about
#: the camera x and z axes).  ROS tools treat a very large variance as "unknown"; zero would
#: wrongly claim certainty.
UNOBSERVED_ROTATION_VARIANCE = 1.0e6

#: The turn from a 4DoF object frame (x length, y down, z left) to a z-up box frame (x forward,
#: y left, z up): 90 degrees about x, applied on the right (``R_box = R @ BOX_AXES_FROM_4DOF``);
#: a right factor leaves a fixed-axes covariance as it is.
BOX_AXES_FROM_4DOF = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))

#: Smallest depth (in the units of x3d/t) a point may have in front of the camera; points at or
#: behind the camera are clamped to this depth during projection.
MIN_DEPTH = 1.0e-4
