"""Fixtures for tests that talk ROS 2 (DDS) -- in this process or in child processes.

Rules:

* DDS discovery stays on this machine: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``. If the
  environment asks for anything else, every ROS test fails with an explanation instead of
  multicasting on a shared network.
* One ``ROS_DOMAIN_ID`` per test session: taken from the environment (``.ci/run`` picks a random
  one) or drawn at random here, so runs beside each other do not see each other's topics.
* ``ROS_LOG_DIR`` is kept if set, else a session temporary directory (never ``~/.ros/log``).
* ``FASTDDS_DEFAULT_PROFILES_FILE`` is kept if set, else ``config/fastdds.xml`` (as in
  ``tools/env.sh``).
* Child processes run this interpreter (``sys.executable``, i.e. the venv's python) without the
  ``_ROS_WHEELS_BOOTSTRAP_COMPLETE`` guard, so the ROS wheels' bootstrapper sets up
  ``LD_LIBRARY_PATH`` for them itself (see notes/ros2-in-a-venv.md).
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
BOOTSTRAP_GUARD = "_ROS_WHEELS_BOOTSTRAP_COMPLETE"


def require_modules(*modules: str) -> None:
    """Import ``modules``; if one is missing skip (outside CI) or fail (in CI)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            message = f"{module} is not importable ({exc}); run ROS tests in the venv (make test)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)


@pytest.fixture(scope="session")
def ros_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The ROS-relevant environment variables for this session (see module docstring)."""
    discovery = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if discovery != "LOCALHOST":
        pytest.fail(
            f"refusing to run ROS tests with ROS_AUTOMATIC_DISCOVERY_RANGE={discovery!r}: "
            "tests must not discover beyond this machine; unset it or set it to LOCALHOST"
        )
    domain = os.environ.get("ROS_DOMAIN_ID") or str(random.SystemRandom().randint(1, 100))
    if not domain.isdigit() or not 0 <= int(domain) <= 101:
        pytest.fail(f"ROS_DOMAIN_ID={domain!r} is not a valid Fast DDS domain (0..101)")
    log_dir = os.environ.get("ROS_LOG_DIR") or str(tmp_path_factory.mktemp("ros_log"))
    return {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": domain,
        "ROS_LOG_DIR": log_dir,
        # ament_index finds the wheels and the interface packages built into the venv.
        "AMENT_PREFIX_PATH": os.environ.get("AMENT_PREFIX_PATH") or sys.prefix,
        # Large images over shared memory (config/fastdds.xml), as tools/env.sh sets it.
        "FASTDDS_DEFAULT_PROFILES_FILE": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
        or str(HERE.parents[1] / "config" / "fastdds.xml"),
    }


@pytest.fixture(scope="session")
def child_env(ros_env: Mapping[str, str]) -> dict[str, str]:
    """Full environment for a ROS child process started with :func:`start_ros_child`."""
    env = {k: v for k, v in os.environ.items() if k != BOOTSTRAP_GUARD}
    env.update(ros_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def ros_in_process(ros_env: Mapping[str, str]) -> Iterator[None]:
    """Apply :func:`ros_env` to this process, for tests that call ``rclpy.init`` in-process."""
    saved = {k: os.environ.get(k) for k in ros_env}
    os.environ.update(ros_env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def ros_runtime() -> None:
    """rclpy and the interface packages built into the venv (skip outside the venv, fail in CI)."""
    require_modules("rclpy", "vision_msgs.msg", "tf2_msgs.msg")


@pytest.fixture
def rclpy_node(
    ros_runtime: None, ros_in_process: None, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """A node in a private rclpy context, shut down after the test."""
    import rclpy

    from epropnp_ros.dds import release_rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    name = "epropnp_test_" + "".join(c if c.isalnum() else "_" for c in request.node.name)
    node = rclpy.create_node(name[:200], context=context)
    try:
        yield node
    finally:
        node.destroy_node()
        del node
        release_rclpy(context)  # its shared-memory segments leave /dev/shm now


SpawnRos = Callable[[str, Sequence[str]], "subprocess.Popen[str]"]


@pytest.fixture
def spawn_ros(ros_runtime: None, child_env: Mapping[str, str]) -> Iterator[SpawnRos]:
    """Start ``tests/ros/<script> args...`` with this interpreter (the venv's python).

    Children still running at teardown are killed, so a failing test leaves no process behind.
    """
    children: list[subprocess.Popen[str]] = []

    def spawn(script: str, args: Sequence[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / script), *args],
            env=dict(child_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(HERE),
        )
        children.append(proc)
        return proc

    yield spawn
    for proc in children:
        stop_child(proc)


@pytest.fixture(scope="session")
def stop_ros_child() -> Callable[[subprocess.Popen[Any]], None]:
    """:func:`stop_child`, for fixtures that start their own ROS child processes."""
    return stop_child


def stop_child(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a ROS child process still running: SIGINT (Ctrl-C), so that it shuts rclpy down
    and its Fast DDS segments leave /dev/shm; SIGKILL only if it has not exited in ``timeout``
    s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=timeout)


@pytest.fixture
def detector_fixture_checkpoint(tmp_path: Path) -> Path:
    """Path of :func:`make_detector_checkpoint` written into ``tmp_path``."""
    return make_detector_checkpoint(tmp_path / "detector_fixture.pt")


@pytest.fixture(scope="session")
def session_detector_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`make_detector_checkpoint` written once per session (for module-scoped node
    processes)."""
    return make_detector_checkpoint(tmp_path_factory.mktemp("ckpt") / "detector_fixture.pt")


@pytest.fixture
def write_detector_checkpoint() -> Callable[[Path], Path]:
    """:func:`make_detector_checkpoint`, for tests that write it at a chosen moment."""
    return make_detector_checkpoint


def make_detector_checkpoint(path: Path) -> Path:
    """Test fixture checkpoint (not a product model): a deformable correspondence network of
    :func:`~epropnp_lib.nets.deformable.small_config` with weights initialised from a fixed seed
    (``torch.random.fork_rng`` + ``manual_seed(0)``: the global RNG is untouched), a score
    threshold of 0 and at most 4 detections. Its boxes are meaningless but deterministic: tests
    use it to check message plumbing, not accuracy."""
    import torch

    from epropnp_lib.nets.deformable import DeformableCorrespondenceNet, small_config

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DeformableCorrespondenceNet(
            small_config(score_threshold=0.0, pre_nms_top_k=4, max_detections=4,
                         input_scale=1.0)
        )
    net.save(path, extra={"note": "test fixture: seeded random weights, not trained"})
    return path


@pytest.fixture
def dense_fixture_checkpoint(tmp_path: Path) -> Path:
    """Path of :func:`make_dense_checkpoint` written into ``tmp_path``."""
    return make_dense_checkpoint(tmp_path / "dense_fixture.ckpt")


def make_dense_checkpoint(path: Path) -> Path:
    """Test fixture: a tiny dense correspondence network, weights from a fixed seed (last
    layer rescaled, see below)."""
    import torch

    from epropnp_lib.nets.backbone import BackboneConfig
    from epropnp_lib.nets.dense import DenseCorrespondenceNet, DenseNetConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DenseCorrespondenceNet(DenseNetConfig(
            backbone=BackboneConfig(depth=18, base_width=16), crop_size=64, output_stride=8,
            head_channels=16, object_extent=0.1,
        ))
        # Undo the 0.1 damping of the last layer's initialisation, so that the random object
        # coordinates span the object cube and the PnP problems are well posed.
        final = net.head[-1]
        assert isinstance(final, torch.nn.Conv2d)
        with torch.no_grad():
            final.weight.mul_(10.0)
    net.save(path, extra={"note": "test fixture: seeded random weights, not trained"})
    return path
