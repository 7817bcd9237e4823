"""Two processes exchange a vision_msgs/Detection3DArray and a tf2_msgs/TFMessage over Fast DDS.

The messages come from the interface packages built into the venv (interfaces/); the test proves
their type support works end to end across processes on localhost, including a non-trivial pose
covariance. Synchronisation is by DDS matching (subscription count, acknowledgements), never by
sleeping; every wait has a timeout.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from typing import Any

import pytest

pytestmark = pytest.mark.ros

TIMEOUT_S = 20.0


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"process {proc.args!r} did not finish in {timeout:.0f} s\n{out}\n{err}")


def _payload(stdout: str, tag: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith(tag + " "):
            data: dict[str, Any] = json.loads(line[len(tag) + 1 :])
            return data
    pytest.fail(f"no {tag} line in output:\n{stdout}")


def test_detections_and_tf_cross_process(spawn_ros: Any) -> None:
    t0 = time.monotonic()
    timeout = ["--timeout", str(TIMEOUT_S)]
    subscriber = spawn_ros("dds_subscriber.py", timeout)
    publisher = spawn_ros("dds_publisher.py", timeout)

    pub_out, pub_err = _finish(publisher, TIMEOUT_S + 5)
    sub_out, sub_err = _finish(subscriber, TIMEOUT_S + 5)
    assert publisher.returncode == 0, f"publisher failed:\n{pub_out}\n{pub_err}"
    assert subscriber.returncode == 0, f"subscriber failed:\n{sub_out}\n{sub_err}"

    sent = _payload(pub_out, "SENT")
    received = _payload(sub_out, "RECEIVED")
    assert received == sent

    # Spot checks on literal values, so that an empty or default message cannot pass.
    det = received["detections"]
    assert det["frame_id"] == "camera_optical_frame"
    assert det["stamp"] == [1700000000, 123456789]
    [detection] = det["detections"]
    assert detection["id"] == "object-7"
    assert detection["bbox_size"] == [4.5, 1.6, 1.9]
    [result] = detection["results"]
    assert result["class_id"] == "car"
    assert result["score"] == 0.875
    cov = result["covariance"]
    assert len(cov) == 36
    assert cov[0] == cov[35] == 0.04
    assert cov[1] == cov[6] == pytest.approx(0.002)  # (x, y) coupling, symmetric
    assert cov[4 * 6 + 5] == pytest.approx(0.030)  # (rot_y, rot_z) coupling
    assert sum(v != 0.0 for v in cov) == 6 + 10
    [tf] = received["tf"]["transforms"]
    assert (tf["frame_id"], tf["child_frame_id"]) == ("camera_optical_frame", "object-7")
    assert tf["translation"] == [0.5, -0.25, 12.0]
    assert math.isclose(sum(q * q for q in tf["rotation_xyzw"]), 1.0)

    assert time.monotonic() - t0 < 30.0
