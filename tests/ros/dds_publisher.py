"""Publisher process of the two-process DDS test (run by test_dds_two_processes.py).

Waits until a subscription has matched each topic (no sleeps), publishes one Detection3DArray and
one TFMessage (reliable, transient local), waits until every matched subscription acknowledged
them, prints ``SENT <json>`` (the field values it sent) and exits 0. Exits 2 on timeout, with
the reason on stderr.

Usage: python dds_publisher.py --timeout SECONDS
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import rclpy
from rclpy.duration import Duration
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from epropnp_ros.dds import release_rclpy

from dds_messages import (
    DETECTIONS_TOPIC,
    QOS,
    TF_TOPIC,
    build_detections,
    build_tf,
    detections_to_data,
    tf_to_data,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout

    rclpy.init()
    node = rclpy.create_node("epropnp_test_publisher")
    try:
        publishers = [
            node.create_publisher(Detection3DArray, DETECTIONS_TOPIC, QOS),
            node.create_publisher(TFMessage, TF_TOPIC, QOS),
        ]
        # Discovery: wait for the subscriber process. spin_once(timeout) blocks on the graph,
        # it is not a fixed sleep.
        while not all(p.get_subscription_count() > 0 for p in publishers):
            if time.monotonic() > deadline:
                print("timed out waiting for subscriptions", file=sys.stderr)
                return 2
            rclpy.spin_once(node, timeout_sec=0.05)

        detections, tf = build_detections(), build_tf()
        publishers[0].publish(detections)
        publishers[1].publish(tf)

        for pub in publishers:
            remaining = max(deadline - time.monotonic(), 0.1)
            if not pub.wait_for_all_acked(Duration(seconds=remaining)):
                print(f"timed out waiting for acks on {pub.topic_name}", file=sys.stderr)
                return 2
        sent = {"detections": detections_to_data(detections), "tf": tf_to_data(tf)}
        print("SENT " + json.dumps(sent), flush=True)
        return 0
    finally:
        node.destroy_node()
        del node
        release_rclpy()


if __name__ == "__main__":
    sys.exit(main())
