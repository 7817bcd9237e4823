"""Ground truth -> bag -> the messages the nodes publish -> closed-loop results -> DetectionEval.

The ground truth of a generated ``mini_val`` scene is converted to a bag, read back from its
three topics, published as the rig node publishes fused detections (``detection3d_array``,
``detected_objects``, ``attribute_classification`` of the same objects, through CDR
serialisation) and turned into results by the closed loop's own conversion
(``closed_loop_rig.fused_detections``). Only what crosses the wire reaches the score, so NDS 1
with zero velocity and attribute errors shows that velocity and attribute survive it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

SCENE = "scene-0103"  # a mini_val scene


def _read_ground_truth(bag: Path) -> dict[int, list[Any]]:
    """``stamp -> [detections, objects, attributes]`` from the bag."""
    from rosbags.highlevel import AnyReader

    from epropnp_ros.bag_writing import typestore

    topics = ("/ground_truth/detections", "/ground_truth/objects", "/ground_truth/attributes")
    out: dict[int, list[Any]] = {}
    with AnyReader([bag], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if c.topic in topics]
        for c, t, raw in reader.messages(connections=conns):
            out.setdefault(t, [None] * 3)[topics.index(c.topic)] = reader.deserialize(
                raw, c.msgtype)
    return out


def _wire(msg: Any) -> Any:
    from rclpy.serialization import deserialize_message, serialize_message

    return deserialize_message(serialize_message(msg), type(msg))


def test_ground_truth_through_the_published_messages_scores_one(
    tmp_path: Path, ros_runtime: None
) -> None:
    from epropnp_lib.data.nuscenes import evaluate, load_nuscenes, write_results
    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
    from epropnp_ros.autoware import attribute_classification, detected_objects
    from epropnp_ros.closed_loop_rig import fused_detections
    from epropnp_ros.detections import ObjectPose3D, detection3d_array
    from epropnp_ros.messages import make_header
    from epropnp_ros.nuscenes_bag import ConversionConfig, convert
    from epropnp_ros.nuscenes_ground_truth import ground_truth_boxes

    root = tmp_path / "nuscenes"
    generate_nuscenes_mini(root, scenes=(SCENE,), samples_per_scene=3, image_size=(160, 90),
                           seed=0, lidar_azimuth_steps=360)
    bag = tmp_path / "bag"
    convert(ConversionConfig(dataroot=str(root), output=str(bag), sweeps=False))
    nusc = load_nuscenes(root, "v1.0-mini")
    samples = {int(s["timestamp"]) * 1000: s for s in nusc.sample}

    per_sample = {}
    moving = with_attribute = 0
    for stamp, (det_msg, obj_msg, attr_msg) in sorted(_read_ground_truth(bag).items()):
        sample = samples[stamp]
        objects = []
        for box in ground_truth_boxes(det_msg, obj_msg, attr_msg):
            width, length, height = box.size
            finite = bool(np.all(np.isfinite(box.velocity)))
            moving += int(finite)
            with_attribute += int(bool(box.attribute_name))
            objects.append(ObjectPose3D(
                pose=np.concatenate((box.translation, box.rotation)),
                size=np.array([length, width, height]), class_id=box.detection_name,
                score=1.0, covariance=1e-4 * np.eye(6),
                velocity=box.velocity if finite else None, attribute=box.attribute_name))
        header = make_header("map", stamp)
        detections = _wire(detection3d_array(header, objects))
        published = _wire(detected_objects(header, objects))
        attributes = _wire(attribute_classification(header, objects))
        sd_token = sample["data"]["CAM_FRONT"]
        per_sample[sample["token"]] = [
            fused_detections(detections, sample["token"], sd_token, published, attributes)]
    assert moving > 0 and with_attribute > 0

    results = tmp_path / "results.json"
    summary = write_results(results, per_sample, sample_tokens=sorted(per_sample))
    assert summary.num_default_attribute == 0
    scores = evaluate(results, root, "v1.0-mini", "mini_val", tmp_path / "eval", nusc=nusc)
    assert scores.nds >= 0.999, scores
    assert scores.tp_errors["vel_err"] < 1e-3 and scores.tp_errors["attr_err"] < 1e-3
