"""The ROS 2 lifecycle nodes of epropnp (thin: parameters -> pipeline -> messages).

* :mod:`epropnp_ros.nodes.detector` -- ``detector_node``: 4DoF 3D detections (deformable
  correspondence network, nuScenes classes).
* :mod:`epropnp_ros.nodes.pose_estimator` -- ``pose_estimator_node``: 6DoF poses of one object
  in regions of interest (dense correspondence network).
* :mod:`epropnp_ros.nodes.base` -- the shared lifecycle / threading / publishing machinery.

Each module has ``main(args=None)`` (console entry point). In a plain venv (no lifecycle manager,
no ``ros2 launch``) start a node already active with::

    python -m epropnp_ros.nodes.detector --ros-args --params-file config/detector.yaml \\
        -p autostart:=true -r image:=/camera/image_raw -r camera_info:=/camera/camera_info
"""
