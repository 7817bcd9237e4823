"""tools/setup_env.sh: cheap paths only (the real venv is never rebuilt by a test).

* On the venv running these tests (if tools/setup_env.sh built it): ``--check`` reports it up to
  date and a second run is a quick no-op.
* A missing, non-running or wrong-version interpreter stops with a clear message and a non-zero
  exit, before anything is created; no stamp is left behind.
* A mistyped EPROPNP_VENV pointing at a non-venv directory is never deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "setup_env.sh"
STAMP_NAME = ".epropnp-setup-stamp"


def _run(
    venv: Path, python: str | None = None, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "_ROS_WHEELS_BOOTSTRAP_COMPLETE"}
    env["EPROPNP_VENV"] = str(venv)
    if python is not None:
        env["EPROPNP_PYTHON"] = python
    else:
        env.pop("EPROPNP_PYTHON", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _fake_python(tmp_path: Path, version: str) -> Path:
    stub = tmp_path / f"python{version}"
    stub.write_text(f'#!/bin/sh\necho "{version} {version}.0 /opt/fake-python"\n')
    stub.chmod(0o755)
    return stub


@pytest.fixture
def built_venv() -> Path:
    """The venv running these tests, if tools/setup_env.sh built it and it is up to date."""
    venv = Path(sys.prefix)
    if not (venv / STAMP_NAME).is_file():
        pytest.skip(f"{venv} was not built by tools/setup_env.sh")
    check = _run(venv, None, "--check")
    if check.returncode != 0:
        pytest.skip(f"{venv} is not up to date: {check.stderr.strip()}")
    return venv


def test_second_run_is_a_quick_noop(built_venv: Path) -> None:
    stamp = built_venv / STAMP_NAME
    before = (stamp.read_text(), stamp.stat().st_mtime_ns)
    t0 = time.monotonic()
    result = _run(built_venv)
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stderr
    assert "building venv" not in result.stderr
    assert elapsed < 15, f"no-op set-up took {elapsed:.1f} s"
    assert (stamp.read_text(), stamp.stat().st_mtime_ns) == before


@pytest.mark.parametrize(
    ("python", "message"),
    [
        ("/nonexistent/bin/python3.11", "was not found"),
        ("/bin/false", "does not run as a Python interpreter"),
    ],
)
def test_unusable_python_fails_clearly(tmp_path: Path, python: str, message: str) -> None:
    venv = tmp_path / "venv"
    result = _run(venv, python)
    assert result.returncode != 0
    assert "Python 3.11 is required" in result.stderr
    assert message in result.stderr
    assert not venv.exists()


def test_wrong_python_version_fails_clearly(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = _run(venv, str(_fake_python(tmp_path, "3.10")))
    assert result.returncode != 0
    assert "Python 3.11 is required" in result.stderr
    assert "is Python 3.10" in result.stderr
    assert not venv.exists()


def test_check_reports_missing_venv_without_creating_it(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = _run(venv, None, "--check")
    assert result.returncode == 1
    assert "would be rebuilt" in result.stderr
    assert not venv.exists()


def test_refuses_to_delete_a_directory_that_is_not_a_venv(tmp_path: Path) -> None:
    precious = tmp_path / "not-a-venv"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    (precious / STAMP_NAME).write_text("stale")
    result = _run(precious)
    assert result.returncode != 0
    assert "refusing to delete" in result.stderr
    assert (precious / "thesis.tex").read_text() == "keep me"


def test_project_installed_editable_with_ament_entries(built_venv: Path) -> None:
    from ament_index_python.packages import get_package_share_directory

    import epropnp_ros
    import epropnp_training

    assert Path(epropnp_ros.__file__).resolve() == REPO / "src" / "epropnp_ros" / "__init__.py"
    assert Path(epropnp_training.__file__).resolve() == REPO / "training" / "__init__.py"
    assert (built_venv / "bin" / "epropnp-pnp-demo").is_file()

    share = Path(get_package_share_directory("epropnp"))
    assert (share / "package.xml").resolve() == REPO / "package.xml"
    for d in ("launch", "config"):
        assert (share / d).resolve() == REPO / d


def test_missing_build_tools_fail_before_anything_is_created(tmp_path: Path) -> None:
    """Without cmake/ninja the script stops at once, naming them, instead of after the download."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name not in {"cmake", "ninja", "ninja-build"}:
            (fake_bin / tool.name).symlink_to(tool)
    base_python = getattr(sys, "_base_executable", "") or sys.executable
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in {"ROS_DISTRO", "EPROPNP_PYTHON"}}
    env.update(PATH=str(fake_bin), EPROPNP_VENV=str(venv), EPROPNP_PYTHON=base_python)
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "needs cmake >= 3.22, ninja" in result.stderr
    assert not venv.exists()


def test_failed_wheel_install_stops_with_the_step_and_package_and_no_stamp(
    tmp_path: Path,
) -> None:
    """A pinned package that cannot be installed stops the set-up, naming the step (and pip
    names the package); the half-built venv carries no stamp, so the next run rebuilds it."""
    lock = tmp_path / "lock.txt"
    lock.write_text("epropnp-no-such-package==0.0.1\n")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items()
           if k not in {"_ROS_WHEELS_BOOTSTRAP_COMPLETE", "EPROPNP_PYTHON"}}
    env.update(EPROPNP_VENV=str(venv), EPROPNP_LOCK=str(lock),
               EPROPNP_PYTHON=getattr(sys, "_base_executable", "") or sys.executable)
    result = subprocess.run(
        ["bash", str(SCRIPT)], env=env, cwd=str(REPO), capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert result.returncode != 0
    assert "step 'pip install -r requirements/lock.txt' failed" in result.stderr
    assert "epropnp-no-such-package" in result.stdout + result.stderr
    assert not (venv / STAMP_NAME).exists()
    check = _run(venv, getattr(sys, "_base_executable", "") or sys.executable, "--check")
    assert check.returncode == 1  # not up to date: would be rebuilt
