"""Launch the epropnp ``rig_detector`` lifecycle node: one detector for all cameras of a rig,
detections fused in ``target_frame`` (default ``base_link``).

Usage (on a ROS 2 install, after ``colcon build``), e.g. with a converted nuScenes bag::

    ros2 launch epropnp rig.launch.py target_frame:=map use_sim_time:=true
    ros2 bag play --clock 20 <bag>

The node reads ``config/rig.yaml`` (installed to ``share/epropnp/config``; ``cameras`` lists the
six nuScenes camera namespaces); the arguments below override single entries. With
``autostart:=true`` (default) the node configures and activates itself; with ``false`` drive it
with ``ros2 lifecycle set /rig_detector configure``. Topics: ``<ns>/image_raw`` (or
``<ns>/image_raw/compressed``) and ``<ns>/camera_info`` for each camera namespace, ``/tf_static``
and ``/tf`` in; ``detections``, ``objects``, ``detection_attributes``, ``pose``, ``pose_samples``,
``markers`` out, and its status on ``/diagnostics``,
in the node's namespace and in ``target_frame``. In a plain venv without launch_ros, the same
node starts with ``python -m epropnp_ros.nodes.rig_detector --ros-args --params-file
config/rig.yaml -p autostart:=true -p checkpoint:=...``.
"""

# ruff: noqa: I001 - isort takes `launch` (the ROS package) for this repository's launch/ folder.
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare("epropnp"), "config", "rig.yaml"]
            ),
            description="ros__parameters YAML of the node (default: the installed "
                        "config/rig.yaml).",
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
            "use_sim_time", default_value="false", choices=["true", "false"],
            description="Use the /clock topic as time (true when replaying a bag with "
                        "'ros2 bag play --clock'): stamps and timers of the node follow it.",
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
            "namespace", default_value="",
            description="Namespace of the node and of its output topics.",
        ),
        DeclareLaunchArgument(
            "target_frame", default_value="base_link",
            description="Frame of the fused detections (z up), reached through /tf_static "
                        "and /tf.",
        ),
        DeclareLaunchArgument(
            "image_transport", default_value="compressed", choices=["raw", "compressed"],
            description="Subscribe sensor_msgs/CompressedImage on <ns>/image_raw/compressed "
                        "(default: what the nuScenes bags and the RViz config carry) or "
                        "sensor_msgs/Image on <ns>/image_raw (raw).",
        ),
        LifecycleNode(
            package="epropnp",
            executable="rig_detector_node",
            name="rig_detector",
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
                    "target_frame": LaunchConfiguration("target_frame"),
                    "image_transport": LaunchConfiguration("image_transport"),
                },
            ],
            remappings=[],
        ),
    ])
