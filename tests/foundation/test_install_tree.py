"""The install tree that colcon's ament_python build makes (the same setuptools commands, run
here without colcon): executables in ``lib/epropnp`` that start with ``#!/usr/bin/env python3``
(so they run in the environment active at run time, not the build's), and the package's share
directory (manifest, launch files, configuration, bundled model, ament index marker)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXECUTABLES = ("detector_node", "pose_estimator_node", "epropnp-closed-loop",
               "epropnp-nuscenes-to-bag", "epropnp-bag-play", "epropnp-train",
               "epropnp-bop-to-bag", "epropnp-pose-closed-loop")


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<prefix>``: the package built and installed as colcon's ament_python task does."""
    root = tmp_path_factory.mktemp("colcon")
    build, prefix = root / "build", root / "install"
    build.mkdir()
    cmd = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(build),
           "build", "--build-base", str(build), "install", "--prefix", str(prefix),
           "--record", str(root / "record.txt"), "--single-version-externally-managed"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=600)
    return prefix


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
    """The three Python packages come from the install prefix, not the source tree."""
    site = next((install / "lib").glob("python3*/site-packages"))
    env = dict(os.environ, PYTHONPATH=str(site))
    code = ("import epropnp_lib, epropnp_ros.pipeline, epropnp_training; "
            "print(epropnp_lib.__file__, epropnp_ros.__file__, epropnp_training.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert all(path.startswith(str(site)) for path in out.split())
