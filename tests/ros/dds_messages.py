"""The messages the two-process DDS test sends, and their field values as plain data.

Imported by the helper scripts ``dds_publisher.py`` / ``dds_subscriber.py`` (run as separate
processes by ``test_dds_two_processes.py``): the publisher builds its messages from
:data:`EXPECTED` and prints what it sent, the subscriber prints what it received, both through
the same ``*_to_data`` functions.
"""

from __future__ import annotations

from typing import Any

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

DETECTIONS_TOPIC = "epropnp_test/detections"
TF_TOPIC = "epropnp_test/tf"

#: Both sides' QoS: reliable and transient-local, so a message sent before the match arrives.
QOS = QoSProfile(
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

#: A symmetric positive-definite 6x6 pose covariance (x, y, z, rot_x, rot_y, rot_z), row-major,
#: with distinct diagonal entries and non-zero off-diagonal couplings.
COVARIANCE = [
    0.04 if i == j else (0.001 * (i + 1) * (j + 1) if abs(i - j) == 1 else 0.0)
    for i in range(6)
    for j in range(6)
]

EXPECTED: dict[str, Any] = {
    "detections": {
        "frame_id": "camera_optical_frame",
        "stamp": [1700000000, 123456789],
        "detections": [
            {
                "id": "object-7",
                "results": [
                    {
                        "class_id": "car",
                        "score": 0.875,
                        "position": [0.5, -0.25, 12.0],
                        "orientation_xyzw": [0.0, 0.38268343236508984, 0.0, 0.9238795325112867],
                        "covariance": COVARIANCE,
                    }
                ],
                "bbox_center": [0.5, -0.25, 12.0],
                "bbox_size": [4.5, 1.6, 1.9],
            }
        ],
    },
    "tf": {
        "transforms": [
            {
                "frame_id": "camera_optical_frame",
                "child_frame_id": "object-7",
                "stamp": [1700000000, 123456789],
                "translation": [0.5, -0.25, 12.0],
                "rotation_xyzw": [0.0, 0.38268343236508984, 0.0, 0.9238795325112867],
            }
        ]
    },
}


def build_detections() -> Any:
    """The ``vision_msgs/msg/Detection3DArray`` described by ``EXPECTED["detections"]``."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    exp = EXPECTED["detections"]
    msg = Detection3DArray()
    msg.header.frame_id = exp["frame_id"]
    msg.header.stamp.sec, msg.header.stamp.nanosec = exp["stamp"]
    for d in exp["detections"]:
        det = Detection3D()
        det.header = msg.header
        det.id = d["id"]
        for r in d["results"]:
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = r["class_id"]
            hyp.hypothesis.score = r["score"]
            p = hyp.pose.pose.position
            p.x, p.y, p.z = r["position"]
            q = hyp.pose.pose.orientation
            q.x, q.y, q.z, q.w = r["orientation_xyzw"]
            hyp.pose.covariance = r["covariance"]
            det.results.append(hyp)
        c = det.bbox.center.position
        c.x, c.y, c.z = d["bbox_center"]
        s = det.bbox.size
        s.x, s.y, s.z = d["bbox_size"]
        msg.detections.append(det)
    return msg


def build_tf() -> Any:
    """The ``tf2_msgs/msg/TFMessage`` described by ``EXPECTED["tf"]``."""
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    msg = TFMessage()
    for t in EXPECTED["tf"]["transforms"]:
        ts = TransformStamped()
        ts.header.frame_id = t["frame_id"]
        ts.header.stamp.sec, ts.header.stamp.nanosec = t["stamp"]
        ts.child_frame_id = t["child_frame_id"]
        tr = ts.transform.translation
        tr.x, tr.y, tr.z = t["translation"]
        rot = ts.transform.rotation
        rot.x, rot.y, rot.z, rot.w = t["rotation_xyzw"]
        msg.transforms.append(ts)
    return msg


def detections_to_data(msg: Any) -> dict[str, Any]:
    """Field values of a received Detection3DArray, in the layout of ``EXPECTED``."""
    return {
        "frame_id": msg.header.frame_id,
        "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
        "detections": [
            {
                "id": d.id,
                "results": [
                    {
                        "class_id": r.hypothesis.class_id,
                        "score": r.hypothesis.score,
                        "position": [
                            r.pose.pose.position.x,
                            r.pose.pose.position.y,
                            r.pose.pose.position.z,
                        ],
                        "orientation_xyzw": [
                            r.pose.pose.orientation.x,
                            r.pose.pose.orientation.y,
                            r.pose.pose.orientation.z,
                            r.pose.pose.orientation.w,
                        ],
                        "covariance": [float(v) for v in r.pose.covariance],
                    }
                    for r in d.results
                ],
                "bbox_center": [
                    d.bbox.center.position.x,
                    d.bbox.center.position.y,
                    d.bbox.center.position.z,
                ],
                "bbox_size": [d.bbox.size.x, d.bbox.size.y, d.bbox.size.z],
            }
            for d in msg.detections
        ],
    }


def tf_to_data(msg: Any) -> dict[str, Any]:
    """Field values of a received TFMessage, in the layout of ``EXPECTED``."""
    return {
        "transforms": [
            {
                "frame_id": t.header.frame_id,
                "child_frame_id": t.child_frame_id,
                "stamp": [t.header.stamp.sec, t.header.stamp.nanosec],
                "translation": [
                    t.transform.translation.x,
                    t.transform.translation.y,
                    t.transform.translation.z,
                ],
                "rotation_xyzw": [
                    t.transform.rotation.x,
                    t.transform.rotation.y,
                    t.transform.rotation.z,
                    t.transform.rotation.w,
                ],
            }
            for t in msg.transforms
        ]
    }
