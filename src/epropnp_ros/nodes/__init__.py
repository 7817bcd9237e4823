"""The ROS 2 lifecycle nodes of epropnp (thin: parameters -> pipeline -> messages).

* :mod:`epropnp_ros.nodes.detector` -- ``detector_node``: 4DoF 3D detections (deformable
  correspondence network, nuScenes classes).
* :mod:`epropnp_ros.nodes.pose_estimator` -- ``pose_estimator_node``: 6DoF poses of one object
  in regions of interest (dense correspondence network).
* :mod:`epropnp_ros.nodes.rig_detector` -- ``rig_detector_node``: the detector for a whole
  camera rig, detections fused in one frame.
* :mod:`epropnp_ros.nodes.base` -- the shared lifecycle / threading / publishing machinery,
  with :mod:`epropnp_ros.nodes.diagnostics` (``/diagnostics``, throttled warnings) and
  :mod:`epropnp_ros.nodes.runner` (the executables' init / spin / shutdown).

Importing this package sets the thread policy's environment defaults
(:data:`THREAD_POLICY_ENV`) before any node module imports torch.

Each module has ``main(args=None)`` (console entry point). In a plain venv (no lifecycle manager,
no ``ros2 launch``) start a node already active with::

    python -m epropnp_ros.nodes.detector --ros-args --params-file config/detector.yaml \\
        -p autostart:=true -r image:=/camera/image_raw -r camera_info:=/camera/camera_info
"""

import os

#: Environment defaults of the node processes, set before torch (and its OpenMP runtime) loads:
#: idle OpenMP threads sleep instead of spinning, so that a node never burns a core that a
#: neighbour on the robot needs (bench/README.md, "Thread policy of the nodes"). A value set in
#: the environment (or by a launch file) wins.
THREAD_POLICY_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

for _name, _value in THREAD_POLICY_ENV.items():
    os.environ.setdefault(_name, _value)
