"""Launch the epropnp ``pose_estimator`` lifecycle node (6DoF object pose with uncertainty).

Usage (on a ROS 2 install, after ``colcon build``)::

    ros2 launch epropnp pose_estimator.launch.py camera:=/camera rois:=/detections_2d
    # checkpoint:=/path/to/dense.ckpt for your own model (default: the bundled
    # models/pose_small_synthetic.pt, a demo model for generated objects)

The node reads ``config/pose_estimator.yaml`` (installed to ``share/epropnp/config``); the
arguments below override single entries. Regions of interest come from the ``rois`` topic
(``vision_msgs/Detection2DArray``), else from the ``default_roi`` parameter. With
``autostart:=true`` (default) the node configures and activates itself. In a plain venv without
launch_ros: ``python -m epropnp_ros.nodes.pose_estimator --ros-args --params-file
config/pose_estimator.yaml -p autostart:=true -p checkpoint:=... -r image:=/camera/image_raw
-r camera_info:=/camera/camera_info -r rois:=/detections_2d``.
"""

# ruff: noqa: I001 - isort takes `launch` (the ROS package) for this repository's launch/ folder.
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    camera = LaunchConfiguration("camera")
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare("epropnp"), "config", "pose_estimator.yaml"]
            ),
            description="ros__parameters YAML of the node (default: the installed "
                        "config/pose_estimator.yaml).",
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value=PathJoinSubstitution(
                [FindPackageShare("epropnp"), "models", "pose_small_synthetic.pt"]
            ),
            description="Path of the dense_correspondence_net checkpoint (default: the bundled "
                        "demo pose model for generated objects, see models/README.md; the node "
                        "never runs with random weights).",
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
            "fastdds_profile",
            default_value=EnvironmentVariable(
                "FASTDDS_DEFAULT_PROFILES_FILE",
                default_value=PathJoinSubstitution(
                    [FindPackageShare("epropnp"), "config", "fastdds.xml"]
                ),
            ),
            description="Fast DDS profile of the node (default: $FASTDDS_DEFAULT_PROFILES_FILE if "
                        "set, else the installed config/fastdds.xml: large images over shared "
                        "memory; export it for the image publishers too, README Troubleshooting).",
        ),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                               LaunchConfiguration("fastdds_profile")),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=["true", "false"],
            description="Use the /clock topic as time (true when replaying a bag with "
                        "'ros2 bag play --clock'): stamps and timers of the node follow it.",
        ),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="Namespace of the node and of its output topics.",
        ),
        DeclareLaunchArgument(
            "camera", default_value="/camera",
            description="Camera topic prefix: <camera>/image_raw[/compressed] and "
                        "<camera>/camera_info are subscribed.",
        ),
        DeclareLaunchArgument(
            "image_transport", default_value="compressed", choices=["raw", "compressed"],
            description="Subscribe sensor_msgs/CompressedImage on <camera>/image_raw/compressed "
                        "(default: what the nuScenes bags and the RViz config carry) or "
                        "sensor_msgs/Image on <camera>/image_raw (raw).",
        ),
        DeclareLaunchArgument(
            "rois", default_value="detections_2d",
            description="vision_msgs/Detection2DArray topic with the regions of interest.",
        ),
        LifecycleNode(
            package="epropnp",
            executable="pose_estimator_node",
            name="pose_estimator",
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
                    "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"),
                                                   value_type=bool),
                    "image_transport": LaunchConfiguration("image_transport"),
                },
            ],
            remappings=[
                ("image", [camera, "/image_raw"]),
                ("image/compressed", [camera, "/image_raw/compressed"]),
                ("camera_info", [camera, "/camera_info"]),
                ("rois", LaunchConfiguration("rois")),
            ],
        ),
    ])
