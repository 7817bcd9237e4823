"""The way of one frame through the detector node is straight: traced module by module.

The detector node runs in-process (configured with the seeded fixture checkpoint of
``conftest.make_detector_checkpoint``) and processes one frame under :func:`sys.setprofile`.
Every call that crosses from one module of ``epropnp_ros`` to another is an *entry*; calls
inside the library (``epropnp_lib``, below the pipeline) are the library's own business and not
counted. The node must enter each module of the ROS glue at most twice, and below the node every
call must go down the layers of the glue (:data:`LAYER`): no module calls back up.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

WIDTH, HEIGHT = 160, 120
NODES = "epropnp_ros.nodes"
#: The layers of the glue, top down; a module only calls modules of a lower layer.
LAYER = {
    "epropnp_ros.nodes.base": 0, "epropnp_ros.nodes.detector": 0,
    "epropnp_ros.detector_pipeline": 1, "epropnp_ros.markers": 1,
    "epropnp_ros.pipeline": 2,
    "epropnp_ros.detections": 3, "epropnp_ros.autoware": 3,
    "epropnp_ros.poses": 4, "epropnp_ros.images": 4, "epropnp_ros.camera_model": 4,
    "epropnp_ros.messages": 5,
    "epropnp_ros.checks": 6, "epropnp_ros.errors": 6,
}
K = np.array([[150.0, 0.0, 80.0], [0.0, 150.0, 60.0], [0.0, 0.0, 1.0]])


def _module(frame: FrameType | None) -> str:
    return "" if frame is None else str(frame.f_globals.get("__name__", ""))


def _frame_messages() -> tuple[Any, Any]:
    """An ``Image`` (a fixed texture) and its ``CameraInfo`` with the same header."""
    import torch
    from sensor_msgs.msg import CameraInfo

    from epropnp_ros.images import array_to_image
    from epropnp_ros.messages import make_header

    header = make_header("test_camera_optical", 5 * 1_000_000_000)
    rgb = torch.randint(0, 256, (HEIGHT, WIDTH, 3), generator=torch.Generator().manual_seed(1),
                        dtype=torch.uint8).numpy()
    info = CameraInfo(header=header, width=WIDTH, height=HEIGHT, distortion_model="plumb_bob")
    info.k = K.reshape(-1).tolist()
    info.d = [0.0] * 5
    info.r = np.eye(3).reshape(-1).tolist()
    info.p = np.hstack((K, np.zeros((3, 1)))).reshape(-1).tolist()
    return array_to_image(rgb, "rgb8", header), info


def test_one_frame_enters_each_ros_module_at_most_twice(
    ros_in_process: None, ros_runtime: None, detector_fixture_checkpoint: Path
) -> None:
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from epropnp_ros.dds import release_rclpy
    from epropnp_ros.nodes.base import Frame
    from epropnp_ros.nodes.detector import DetectorNode

    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [Parameter("checkpoint", value=str(detector_fixture_checkpoint)),
                 Parameter("publish_tf", value=True)]
    node = DetectorNode(context=context, namespace="/epropnp_path_test",
                        parameter_overrides=overrides)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        image, info = _frame_messages()
        node.process_frame(Frame(image, info, time.monotonic()))  # warm: lazy imports, caches
        assert node.counters["frames_processed"] == 1

        entries: list[tuple[str, str]] = []

        def profile(frame: FrameType, event: str, arg: object) -> None:
            if event != "call":
                return
            callee, caller = _module(frame), _module(frame.f_back)
            if (callee.startswith("epropnp_ros.") and caller.startswith("epropnp_ros.")
                    and callee != caller):
                entries.append((caller, callee))

        sys.setprofile(profile)
        try:
            node.process_frame(Frame(image, info, time.monotonic()))
        finally:
            sys.setprofile(None)
        assert node.counters["frames_processed"] == 2
    finally:
        node.destroy_node()
        del node
        release_rclpy(context)

    # 1. The node enters each module of the glue at most twice (subclass hooks of the node's
    #    own package are the node itself).
    from_node = Counter(callee for caller, callee in entries
                        if caller.startswith(NODES) and not callee.startswith(NODES))
    assert from_node, "the trace recorded nothing"
    assert max(from_node.values()) <= 2, from_node
    assert {"epropnp_ros.images", "epropnp_ros.camera_model", "epropnp_ros.pipeline",
            "epropnp_ros.detector_pipeline", "epropnp_ros.detections", "epropnp_ros.poses",
            "epropnp_ros.markers"} <= set(from_node)
    # 2. Below the node every call goes down the layers: nothing calls back up (no ping-pong
    #    between a builder and its helpers).
    up = [(caller, callee) for caller, callee in entries
          if not caller.startswith(NODES) and LAYER[callee] <= LAYER[caller]]
    assert not up, up


@pytest.mark.parametrize(("remap", "topic"), [
    ("image:=/cam/image_raw", "/cam/image_raw/compressed"),  # the README's remap
    ("image/compressed:=/cam/jpeg", "/cam/jpeg"),  # an explicit remap still applies
    (None, "/epropnp_remap_test/image/compressed"),
])
def test_compressed_input_follows_the_image_remap(
    ros_in_process: None, ros_runtime: None, detector_fixture_checkpoint: Path,
    remap: str | None, topic: str,
) -> None:
    """In compressed mode the node subscribes ``<image>/compressed`` (image_transport's
    convention): remapping ``image`` moves it, and a frame published there is processed."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage

    from epropnp_ros.dds import release_rclpy
    from epropnp_ros.images import image_to_rgb, rgb_to_compressed
    from epropnp_ros.nodes.detector import DetectorNode

    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [Parameter("checkpoint", value=str(detector_fixture_checkpoint)),
                 Parameter("image_transport", value="compressed")]
    node = DetectorNode(context=context, namespace="/epropnp_remap_test",
                        parameter_overrides=overrides,
                        cli_args=["--ros-args", "-r", remap] if remap else None)
    driver = rclpy.create_node("epropnp_remap_driver", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(driver)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert topic in [sub.topic_name for sub in node._inputs]
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = driver.create_publisher(CompressedImage, topic, reliable)
        info_pub = driver.create_publisher(CameraInfo, "/epropnp_remap_test/camera_info",
                                           reliable)
        image, info = _frame_messages()
        jpeg = rgb_to_compressed(image_to_rgb(image), image.header)
        deadline = time.monotonic() + 30.0
        next_send = 0.0  # one frame pair, again every 2 s until one is processed (discovery)
        while node.counters["frames_processed"] == 0:
            assert time.monotonic() < deadline, f"no frame processed: {node.counters}"
            ready = image_pub.get_subscription_count() and info_pub.get_subscription_count()
            if ready and time.monotonic() >= next_send:
                info_pub.publish(info)
                image_pub.publish(jpeg)
                next_send = time.monotonic() + 2.0
            executor.spin_once(timeout_sec=0.05)
    finally:
        node._stop_inputs()
        executor.shutdown()
        node.destroy_node()
        driver.destroy_node()
        del node, driver, executor
        release_rclpy(context)
