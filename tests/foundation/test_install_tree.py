"""The install tree of a real ``colcon build`` (colcon from ``<venv>/colcon``,
``requirements/colcon.txt``) of this package in a scratch workspace: executables in
``lib/epropnp`` that start with ``#!/usr/bin/env python3`` (so they run in the environment active
at run time, not the build's), the package's share directory (manifest, launch files,
configuration, bundled model, ament index marker), Python packages (and the solver's C
extension, compiled by the build) imported from the install prefix, and the installed
``detector_node`` started to ``active`` with the installed model."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXECUTABLES = ("detector_node", "pose_estimator_node", "epropnp-closed-loop",
               "epropnp-nuscenes-to-bag", "epropnp-bag-play", "epropnp-train",
               "epropnp-bop-to-bag", "epropnp-pose-closed-loop")
COLCON = Path(sys.prefix) / "colcon"


def _copy_sources(dest: Path) -> None:
    """The repository's tracked files (what a clone holds) into ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                            check=False)
    if listed.returncode != 0:  # not a git checkout: the tree without build products
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
            ".venv", ".git", ".ros_log", "*.egg-info", "__pycache__", "*.so", "demo_out", "runs"))
        return
    for name in listed.stdout.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A colcon workspace with this package in ``src/epropnp``, built with
    ``colcon build --packages-select epropnp`` (the README's recipe)."""
    if not (COLCON / "colcon_core").is_dir():
        pytest.fail(f"colcon is not installed in {COLCON} (run tools/setup_env.sh)")
    ws = tmp_path_factory.mktemp("colcon_ws")
    _copy_sources(ws / "src" / "epropnp")
    env = dict(os.environ, PYTHONPATH=str(COLCON))
    cmd = [sys.executable, "-c", "import sys; from colcon_core.command import main; "
           "sys.exit(main())", "build", "--packages-select", "epropnp",
           "--event-handlers", "console_direct-"]
    res = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return ws


@pytest.fixture(scope="module")
def install(workspace: Path) -> Path:
    """``<prefix>`` of the package in the workspace's install space."""
    return workspace / "install" / "epropnp"


def test_executables_use_the_runtime_interpreter(install: Path) -> None:
    for name in EXECUTABLES:
        script = install / "lib" / "epropnp" / name
        assert script.is_file(), name
        assert script.read_text().splitlines()[0] == "#!/usr/bin/env python3", name


def test_share_directory_and_ament_index(install: Path) -> None:
    share = install / "share" / "epropnp"
    assert (share / "package.xml").read_text() == (REPO / "package.xml").read_text()
    assert {p.name for p in (share / "launch").iterdir()} == {
        p.name for p in (REPO / "launch").glob("*.launch.py")}
    assert (share / "config" / "detector.yaml").is_file()
    assert (share / "models" / "detector_small_synthetic.pt").is_file()
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "epropnp").is_file()


def test_installed_packages_import_from_the_prefix(install: Path, tmp_path: Path) -> None:
    """The three Python packages, and the solver's compiled kernels, come from the install
    prefix, not the source tree."""
    site = next((install / "lib").glob("python3*/site-packages"))
    env = dict(os.environ, PYTHONPATH=str(site))
    code = ("import epropnp_lib, epropnp_ros.pipeline, epropnp_training; "
            "from epropnp_lib import _native; "
            "print(epropnp_lib.__file__, epropnp_ros.__file__, epropnp_training.__file__, "
            "_native.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert all(path.startswith(str(site)) for path in out.split())


def test_installed_detector_node_goes_active(install: Path, tmp_path: Path) -> None:
    """The installed executable, run as ``ros2 run`` would (its own shebang, the install prefix
    on the path), loads the installed model and reaches ``active``; SIGINT ends it cleanly."""
    site = next((install / "lib").glob("python3*/site-packages"))
    env = dict(os.environ, PYTHONPATH=str(site),
               AMENT_PREFIX_PATH=os.pathsep.join(
                   [str(install), os.environ.get("AMENT_PREFIX_PATH", sys.prefix)]),
               PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "")]),
               ROS_LOG_DIR=str(tmp_path / "ros_log"), PYTHONUNBUFFERED="1")
    model = install / "share" / "epropnp" / "models" / "detector_small_synthetic.pt"
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(install / "lib" / "epropnp" / "detector_node"), "--ros-args",
             "-r", "__ns:=/epropnp_install_test", "-p", "autostart:=true",
             "-p", f"checkpoint:={model}"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120.0
        while "activated" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert "Traceback" not in log.read_text(errors="replace")
