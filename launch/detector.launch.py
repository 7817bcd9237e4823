"""Launch the epropnp ``detector`` lifecycle node (4DoF 3D detection with pose uncertainty).

Usage (on a ROS 2 install, after ``colcon build``)::

    ros2 launch epropnp detector.launch.py checkpoint:=/path/to/detector.ckpt \\
        camera:=/cam_front image_transport:=compressed

The node reads ``config/detector.yaml`` (installed to ``share/epropnp/config``); the arguments
below override single entries. With ``autostart:=true`` (default) the node configures and
activates itself; with ``false`` drive it with ``ros2 lifecycle set /detector configure``.
Topics: ``<camera>/image_raw`` (or ``<camera>/image_raw/compressed``) and
``<camera>/camera_info`` in (the topic layout of the nuScenes bags, ``bags/``); ``detections``,
``pose``, ``pose_samples``, ``markers``, ``~/diagnostics`` (and ``/tf``) out, in the node's
namespace. In a plain venv without launch_ros, the same node starts with
``python -m epropnp_ros.nodes.detector --ros-args --params-file config/detector.yaml
-p autostart:=true -p checkpoint:=... -r image:=/cam_front/image_raw
-r camera_info:=/cam_front/camera_info``.
"""

# ruff: noqa: I001 - isort takes `launch` (the ROS package) for this repository's launch/ folder.
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    camera = LaunchConfiguration("camera")
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare("epropnp"), "config", "detector.yaml"]
            ),
            description="ros__parameters YAML of the node (default: the installed "
                        "config/detector.yaml).",
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value=PathJoinSubstitution(
                [FindPackageShare("epropnp"), "models", "detector_small_synthetic.pt"]
            ),
            description="Path of the deformable_correspondence_net checkpoint (default: the "
                        "bundled demo detector for synthetic scenes, see models/README.md; the "
                        "node never runs with random weights).",
        ),
        DeclareLaunchArgument(
            "device", default_value="cpu", choices=["cpu", "cuda"],
            description="Inference device.",
        ),
        DeclareLaunchArgument(
            "autostart", default_value="true", choices=["true", "false"],
            description="Configure and activate the lifecycle node at start-up.",
        ),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="Namespace of the node and of its output topics.",
        ),
        DeclareLaunchArgument(
            "camera", default_value="/cam_front",
            description="Camera topic prefix: <camera>/image_raw[/compressed] and "
                        "<camera>/camera_info are subscribed.",
        ),
        DeclareLaunchArgument(
            "image_transport", default_value="raw", choices=["raw", "compressed"],
            description="Subscribe sensor_msgs/Image (raw) or sensor_msgs/CompressedImage.",
        ),
        LifecycleNode(
            package="epropnp",
            executable="detector_node",
            name="detector",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"),
                                                 value_type=str),
                    "device": LaunchConfiguration("device"),
                    "autostart": ParameterValue(LaunchConfiguration("autostart"),
                                                value_type=bool),
                    "image_transport": LaunchConfiguration("image_transport"),
                },
            ],
            remappings=[
                ("image", [camera, "/image_raw"]),
                ("image/compressed", [camera, "/image_raw/compressed"]),
                ("camera_info", [camera, "/camera_info"]),
            ],
        ),
    ])
