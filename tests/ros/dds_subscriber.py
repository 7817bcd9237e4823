"""Subscriber process of the two-process DDS test (run by test_dds_two_processes.py).

Subscribes to the Detection3DArray and TFMessage topics (reliable, transient local), prints
``READY`` once its subscriptions exist, and when both messages arrived prints one line
``RECEIVED {"detections": ..., "tf": ...}`` with their field values and exits 0. Exits 2 on timeout.

Usage: python dds_subscriber.py --timeout SECONDS
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import rclpy
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from epropnp_ros.dds import release_rclpy

from dds_messages import DETECTIONS_TOPIC, QOS, TF_TOPIC, detections_to_data, tf_to_data


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout

    received: dict[str, Any] = {}
    rclpy.init()
    node = rclpy.create_node("epropnp_test_subscriber")
    try:
        node.create_subscription(
            Detection3DArray,
            DETECTIONS_TOPIC,
            lambda m: received.setdefault("detections", detections_to_data(m)),
            QOS,
        )
        node.create_subscription(
            TFMessage, TF_TOPIC, lambda m: received.setdefault("tf", tf_to_data(m)), QOS
        )
        print("READY", flush=True)
        while len(received) < 2:
            if time.monotonic() > deadline:
                print(f"timed out; received only {sorted(received)}", file=sys.stderr)
                return 2
            rclpy.spin_once(node, timeout_sec=0.1)
        print("RECEIVED " + json.dumps(received), flush=True)
        return 0
    finally:
        node.destroy_node()
        del node
        release_rclpy()


if __name__ == "__main__":
    sys.exit(main())
