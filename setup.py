"""Setuptools build of the ROS 2 package ``epropnp`` (ament_python).

Ships three Python packages:

* ``epropnp_lib``       -- the ROS-free PyTorch library (repository root),
* ``epropnp_ros``       -- ROS glue and nodes (``src/epropnp_ros``),
* ``epropnp_training``  -- training / evaluation CLIs (``training/``),

plus the ament resource marker, ``package.xml``, launch files and configuration files, and the
solver's fused CPU kernels (``epropnp_lib._native``, plain C against the Python headers: an
optional extension, so a machine without a C compiler builds the package without it and the
solver runs its tensor code; see ``epropnp_lib/native.py``).
``colcon build`` on a ROS 2 distro and ``pip install -e .`` in the venv both use this file.
"""

from __future__ import annotations

from glob import glob
from pathlib import Path

from setuptools import Extension, find_packages, setup

PACKAGE_NAME = "epropnp"
HERE = Path(__file__).resolve().parent


def _files(pattern: str) -> list[str]:
    """Plain files matching ``pattern`` (relative to this file), READMEs excluded, sorted."""
    return sorted(
        p
        for p in glob(pattern, root_dir=HERE)
        if (HERE / p).is_file() and not Path(p).name.startswith("README")
    )


packages = (
    find_packages(include=["epropnp_lib", "epropnp_lib.*"])
    + ["epropnp_ros"]
    + ["epropnp_ros." + p for p in find_packages(where="src/epropnp_ros")]
    + ["epropnp_training"]
    + ["epropnp_training." + p for p in find_packages(where="training")]
)

setup(
    name=PACKAGE_NAME,
    version="0.1.0",
    packages=packages,
    package_dir={
        "epropnp_ros": "src/epropnp_ros",
        "epropnp_training": "training",
    },
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE_NAME]),
        ("share/" + PACKAGE_NAME, ["package.xml"]),
        ("share/" + PACKAGE_NAME + "/launch", _files("launch/*.launch.py")),
        ("share/" + PACKAGE_NAME + "/config", _files("config/*")),
        ("share/" + PACKAGE_NAME + "/config/train", _files("config/train/*.yaml")),
        ("share/" + PACKAGE_NAME + "/models", _files("models/*.pt")),
    ],
    ext_modules=[
        Extension("epropnp_lib._native", ["epropnp_lib/_native.c"],
                  depends=["epropnp_lib/_native_kernels.h"], optional=True),
    ],
    install_requires=["setuptools"],
    maintainer="epropnp maintainers",
    maintainer_email="maintainers@epropnp.dev",
    description="EPro-PnP probabilistic pose estimation for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "epropnp-pnp-demo = epropnp_lib.pnp_demo:main",
            "epropnp-nuscenes-to-bag = epropnp_ros.nuscenes_bag:main",
            "epropnp-bop-to-bag = epropnp_ros.bop_bag:main",
            "epropnp-bag-play = epropnp_ros.bag_player:main",
            "epropnp-closed-loop = epropnp_ros.closed_loop:main",
            "epropnp-pose-closed-loop = epropnp_ros.pose_closed_loop:main",
            "epropnp-pose-calibrate = epropnp_ros.pose_calibration:main",
            "epropnp-detector-calibrate = epropnp_ros.detector_calibration:main",
            "epropnp-train = epropnp_training.train:main",
            "epropnp-evaluate = epropnp_training.evaluate:main",
            # ROS nodes (launch/*.launch.py refers to them by these names).
            "detector_node = epropnp_ros.nodes.detector:main",
            "pose_estimator_node = epropnp_ros.nodes.pose_estimator:main",
            "rig_detector_node = epropnp_ros.nodes.rig_detector:main",
        ],
    },
)
