"""Type hashes (RIHS01) of the interface packages built from interfaces/ match upstream.

Three independent sources must agree for every type:

1. runtime -- the hash the generated type support reports through rclpy/rmw (the hash a
   publisher advertises in discovery, ``TopicEndpointInfo.topic_type_hash``);
2. text -- the hash ``rosbags`` computes from the ``.msg`` definitions alone (repository files for
   vision_msgs/tf2_msgs, the installed share/ files for the stock dependencies);
3. upstream -- for the vendored packages, the hash compiled into the C type support of an
   upstream (ros2 branch / Jazzy+) build of the same packages (golden values below).

Equal hashes are what lets our messages interoperate with nodes built against the real packages
(Jazzy and later refuse to match endpoints whose type hashes differ). sensor_msgs/Image, a stock
message from the wheels, is checked the same way as a control. The autoware_perception_msgs
subset is checked by the first two sources (no upstream build's hashes are at hand).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]

# Golden values: RIHS01 hashes in the generated C type support (<type>__description.c,
# `*_get_type_hash`) of upstream builds of ros-perception/vision_msgs (ros2 branch, 4.1.x) and
# ros2/geometry2 tf2_msgs (Jazzy+; TFMessage is unchanged since ROS 1).
UPSTREAM_RIHS01 = {
    "vision_msgs/msg/Detection3DArray": (
        "793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018"
    ),
    "vision_msgs/msg/Detection3D": (
        "ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b"
    ),
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc"
    ),
    "vision_msgs/msg/ObjectHypothesis": (
        "51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90"
    ),
    "vision_msgs/msg/BoundingBox3D": (
        "bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698"
    ),
    "vision_msgs/msg/BoundingBox2D": (
        "008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f"
    ),
    "vision_msgs/msg/Pose2D": "b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "vision_msgs/msg/Point2D": "eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "vision_msgs/msg/VisionClass": (
        "1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a"
    ),
    "vision_msgs/msg/LabelInfo": (
        "3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783"
    ),
    "tf2_msgs/msg/TFMessage": "e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087",
}

CHECKED_TYPES = [
    "vision_msgs/msg/Detection3DArray",
    "vision_msgs/msg/Detection3D",
    "vision_msgs/msg/ObjectHypothesisWithPose",
    "vision_msgs/msg/ObjectHypothesis",
    "vision_msgs/msg/BoundingBox3D",
    "vision_msgs/msg/BoundingBox2D",
    "vision_msgs/msg/Detection2DArray",
    "vision_msgs/msg/LabelInfo",
    "vision_msgs/msg/VisionInfo",
    "tf2_msgs/msg/TFMessage",
    "tf2_msgs/msg/TF2Error",
    "autoware_perception_msgs/msg/DetectedObjects",
    "autoware_perception_msgs/msg/DetectedObject",
    "autoware_perception_msgs/msg/DetectedObjectKinematics",
    "autoware_perception_msgs/msg/ObjectClassification",
    "autoware_perception_msgs/msg/Shape",
    "sensor_msgs/msg/Image",  # control: a stock message from the wheels
]

VENDORED = ("vision_msgs", "tf2_msgs", "autoware_perception_msgs")
STOCK_DEPENDENCIES = ("builtin_interfaces", "std_msgs", "geometry_msgs", "sensor_msgs")


def _msg_dir(package: str) -> Path:
    if package in VENDORED:
        return REPO / "interfaces" / package / "msg"
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(package)) / "msg"


@pytest.fixture(scope="module")
def text_typestore(ros_runtime: None, ros_in_process: None) -> Any:
    """A rosbags typestore built only from .msg texts (no built-in definitions)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.EMPTY)
    types: dict[str, Any] = {}
    for package in STOCK_DEPENDENCIES + VENDORED:
        files = sorted(_msg_dir(package).glob("*.msg"))
        assert files, f"no .msg files for {package}"
        for f in files:
            types.update(get_types_from_msg(f.read_text(), f"{package}/msg/{f.stem}"))
    store.register(types)
    return store


@pytest.fixture(scope="module")
def runtime_hashes(ros_runtime: None, ros_in_process: None) -> Iterator[dict[str, str]]:
    """RIHS01 strings reported by rclpy for a publisher of each checked type."""
    import importlib

    import rclpy

    from epropnp_ros.dds import release_rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("epropnp_test_type_hashes", context=context)
    try:
        hashes: dict[str, str] = {}
        for i, type_name in enumerate(CHECKED_TYPES):
            package, _, name = type_name.split("/")
            msg_type = getattr(importlib.import_module(f"{package}.msg"), name)
            topic = f"epropnp_test/type_hash_{i}"
            node.create_publisher(msg_type, topic, 1)
            [info] = node.get_publishers_info_by_topic(topic)
            assert info.topic_type == type_name
            hashes[type_name] = str(info.topic_type_hash)
        yield hashes
    finally:
        node.destroy_node()
        del node
        release_rclpy(context)


@pytest.mark.parametrize("type_name", CHECKED_TYPES)
def test_runtime_hash_equals_hash_of_msg_text(
    type_name: str, runtime_hashes: dict[str, str], text_typestore: Any
) -> None:
    runtime = runtime_hashes[type_name]
    assert runtime.startswith("RIHS01_")
    assert runtime == text_typestore.hash_rihs01(type_name)


@pytest.mark.parametrize("type_name", sorted(UPSTREAM_RIHS01))
def test_hash_equals_upstream_build(
    type_name: str, runtime_hashes: dict[str, str], text_typestore: Any
) -> None:
    expected = "RIHS01_" + UPSTREAM_RIHS01[type_name]
    assert text_typestore.hash_rihs01(type_name) == expected
    if type_name in runtime_hashes:
        assert runtime_hashes[type_name] == expected


def test_rosbags_kilted_store_agrees_on_stock_types(text_typestore: Any) -> None:
    """rosbags' own Kilted definitions give the same hashes as the installed .msg files."""
    from rosbags.typesys import Stores, get_typestore

    kilted = get_typestore(Stores.ROS2_KILTED)
    for type_name in ("sensor_msgs/msg/Image", "tf2_msgs/msg/TFMessage"):
        assert kilted.hash_rihs01(type_name) == text_typestore.hash_rihs01(type_name)
