"""epropnp_ros: the ROS 2 glue around :mod:`epropnp_lib` (which never imports this package).

* Messages <-> arrays, one concern per module: :mod:`~epropnp_ros.images`,
  :mod:`~epropnp_ros.camera_model` (CameraInfo and undistortion; no message package needed),
  :mod:`~epropnp_ros.messages` (headers, stamps, Point/Pose lists), :mod:`~epropnp_ros.poses`
  (the only place the quaternion order is swapped), :mod:`~epropnp_ros.detections`,
  :mod:`~epropnp_ros.markers`; their errors in :mod:`~epropnp_ros.errors`.
* :mod:`~epropnp_ros.pipeline`: the ROS-free inference (image + intrinsics in, poses with
  covariance out), testable without a ROS graph.
* :mod:`epropnp_ros.nodes`: thin rclpy lifecycle nodes (parameters in
  :mod:`~epropnp_ros.params`, image / camera info pairing in :mod:`~epropnp_ros.pairing`).
* Bags and the closed loop: :mod:`~epropnp_ros.nuscenes_bag`, :mod:`~epropnp_ros.bag_player`,
  :mod:`~epropnp_ros.closed_loop`, :mod:`~epropnp_ros.detection_video`,
  :mod:`~epropnp_ros.demo`.
"""
