"""epropnp_ros: the ROS 2 glue around :mod:`epropnp_lib`.

What lives here (see DESIGN section 1):

* ``conversions`` -- ROS messages <-> NumPy arrays / tensors (images, camera info, poses with
  covariance, detections); the only place where quaternion order (w, x, y, z) <-> (x, y, z, w)
  is converted. Needs the message packages but not rclpy.
* ``pipeline`` -- the ROS-free inference pipeline (image + intrinsics in, detections with pose
  covariance out), testable without a ROS graph.
* nodes -- thin rclpy (lifecycle) nodes: parameters -> pipeline -> messages, each with a
  ``main(args=None)`` entry point declared in ``setup.py``.
* bag conversion and replay (``rosbags``), usable without a ROS install.

Imports :mod:`epropnp_lib`; :mod:`epropnp_lib` never imports this package.
"""
