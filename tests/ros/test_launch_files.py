"""Static checks of launch/*.launch.py, config/*.yaml and config/epropnp.rviz.

``launch`` / ``launch_ros`` are not installable in the venv, so the launch files are checked by
parsing their source: every argument used is declared (with a description), every declared
argument is used, the executable is a console entry point of setup.py that resolves to the
node's ``main``, the parameter file exists and is installed, parameter overrides and remapped
topics belong to the node. The parameter YAMLs must hold exactly the node's declared
parameters, with valid values of the declared types.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from epropnp_ros.params import (
    CommonParams,
    DetectorParams,
    PoseEstimatorParams,
    RigDetectorParams,
    param_specs,
    params_from_values,
)

REPO = Path(__file__).resolve().parents[2]

#: launch file -> (executable, entry point target, node name, params class, input topics)
LAUNCH_FILES: dict[str, tuple[str, str, str, type[CommonParams], set[str]]] = {
    "detector.launch.py": (
        "detector_node", "epropnp_ros.nodes.detector:main", "detector", DetectorParams,
        {"image", "image/compressed", "camera_info"},
    ),
    "pose_estimator.launch.py": (
        "pose_estimator_node", "epropnp_ros.nodes.pose_estimator:main", "pose_estimator",
        PoseEstimatorParams, {"image", "image/compressed", "camera_info", "rois"},
    ),
    # The rig node's inputs are named by its `cameras` parameter, not remapped.
    "rig.launch.py": (
        "rig_detector_node", "epropnp_ros.nodes.rig_detector:main", "rig_detector",
        RigDetectorParams, set(),
    ),
}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)
    ]


def _const(node: ast.AST | None) -> Any:
    assert node is not None, "expected a literal, found nothing"
    return ast.literal_eval(node)


def _kwarg(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _console_scripts() -> dict[str, str]:
    """``name -> target`` of setup.py's console_scripts (parsed, not executed)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    [setup] = _calls(tree, "setup")
    entry_points = _kwarg(setup, "entry_points")
    assert entry_points is not None
    scripts = _const(entry_points)["console_scripts"]
    return {s.split("=")[0].strip(): s.split("=")[1].strip() for s in scripts}


@pytest.mark.parametrize("launch_file", sorted(LAUNCH_FILES))
def test_launch_file_is_consistent(launch_file: str) -> None:
    executable, target, node_name, params_cls, inputs = LAUNCH_FILES[launch_file]
    path = REPO / "launch" / launch_file
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    compile(tree, str(path), "exec")
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"
               for n in tree.body)

    # Arguments: declared with a description, and declared == used.
    declared = {}
    for call in _calls(tree, "DeclareLaunchArgument"):
        name = _const(call.args[0])
        description = _kwarg(call, "description")
        assert description is not None, f"{launch_file}: argument {name!r} has no description"
        assert len(_const(description)) > 10
        declared[name] = call
    used = {_const(c.args[0]) for c in _calls(tree, "LaunchConfiguration")}
    assert used == set(declared), (
        f"{launch_file}: used but undeclared {sorted(used - set(declared))}, "
        f"declared but unused {sorted(set(declared) - used)}"
    )
    assert "checkpoint" in declared
    # Every launch file takes use_sim_time (for bag replay with --clock) and passes it on.
    assert "use_sim_time" in declared
    assert _const(_kwarg(declared["image_transport"], "default_value")) == "compressed"
    # Default: the bundled demo model of the node's kind, installed by setup.py to
    # share/epropnp/models.
    default = _kwarg(declared["checkpoint"], "default_value")
    assert isinstance(default, ast.Call) and isinstance(default.args[0], ast.List)
    parts = [_const(e) for e in default.args[0].elts[1:]]
    assert parts[0] == "models" and (REPO / "models" / parts[1]).is_file(), parts
    bundled = {"detector.launch.py": "detector_small_synthetic.pt",
               "rig.launch.py": "detector_small_synthetic.pt",
               "pose_estimator.launch.py": "pose_small_synthetic.pt"}
    assert parts[1] == bundled[launch_file]

    # The node: package, executable (a console entry point resolving to main), name.
    [node] = _calls(tree, "LifecycleNode")
    package_xml = ET.parse(REPO / "package.xml").getroot()
    assert _const(_kwarg(node, "package")) == package_xml.findtext("name") == "epropnp"
    assert _const(_kwarg(node, "executable")) == executable
    assert _const(_kwarg(node, "name")) == node_name
    scripts = _console_scripts()
    assert scripts.get(executable) == target, (
        f"setup.py console_scripts must contain '{executable} = {target}' (found {scripts})"
    )
    module_name, func = target.split(":")
    module = importlib.import_module(module_name)
    main = getattr(module, func)
    assert list(inspect.signature(main).parameters) == ["args"]
    assert inspect.signature(main).parameters["args"].default is None
    assert node_name == module.NODE_NAME

    # Parameter file: <share>/config/<file>, present and installed by setup.py.
    share_paths = [
        [_const(e) for e in c.args[0].elts[1:]]  # type: ignore[attr-defined]
        for c in _calls(tree, "PathJoinSubstitution")
        if c is not default  # the checkpoint default, checked above
    ]
    assert share_paths, f"{launch_file}: no parameter file"
    for parts in share_paths:
        assert parts[0] == "config"
        assert (REPO.joinpath(*parts)).is_file(), parts
    assert '_files("config/*")' in (REPO / "setup.py").read_text()
    for c in _calls(tree, "FindPackageShare"):
        assert _const(c.args[0]) == "epropnp"

    # Parameter overrides are declared parameters of the node.
    parameters = _kwarg(node, "parameters")
    assert isinstance(parameters, ast.List)
    overrides = [e for e in parameters.elts if isinstance(e, ast.Dict)]
    names = {f.name for f in dataclasses.fields(params_cls)} | {"use_sim_time"}
    for d in overrides:
        for key in d.keys:
            assert key is not None and _const(key) in names, _const(key)

    # Remapped topics are inputs of the node.
    remappings = _kwarg(node, "remappings")
    assert isinstance(remappings, ast.List)
    remapped = {_const(t.elts[0]) for t in remappings.elts}  # type: ignore[attr-defined]
    assert remapped == inputs


@pytest.mark.parametrize(
    ("yaml_file", "params_cls"),
    [("detector.yaml", DetectorParams), ("pose_estimator.yaml", PoseEstimatorParams),
     ("rig.yaml", RigDetectorParams)],
)
def test_parameter_yaml_matches_declared_parameters(
    yaml_file: str, params_cls: type[CommonParams]
) -> None:
    data = yaml.safe_load((REPO / "config" / yaml_file).read_text())
    assert list(data) == ["/**"]
    values = data["/**"]["ros__parameters"]
    specs = {s.name: s for s in param_specs(params_cls)}
    assert list(values) == list(specs), "YAML keys must be the declared parameters, in order"
    for name, value in values.items():
        default = specs[name].default
        expected = list if isinstance(default, tuple) else type(default)
        # ROS parameter types are strict: a float parameter needs a float literal.
        assert type(value) is expected, f"{yaml_file}: {name}={value!r} is not {expected}"
        assert specs[name].check(value) is None
    params = params_from_values(params_cls, values, where=yaml_file)
    # The shipped defaults are the dataclass defaults, so both worlds start the same way.
    assert params == params_cls()


def test_rviz_config_shows_the_node_outputs() -> None:
    data = yaml.safe_load((REPO / "config" / "epropnp.rviz").read_text())
    displays = {d["Class"]: d for d in data["Visualization Manager"]["Displays"]}
    expected = {
        # RViz takes a trailing /compressed as the image_transport to use, as the launch
        # default and the bags do.
        "rviz_default_plugins/Image": "/cam_front/image_raw/compressed",
        "rviz_default_plugins/MarkerArray": "/markers",
        "rviz_default_plugins/PoseWithCovariance": "/pose",
        "rviz_default_plugins/PoseArray": "/pose_samples",
    }
    for cls, topic in expected.items():
        assert displays[cls]["Topic"]["Value"] == topic
        assert displays[cls]["Enabled"] is True
    from epropnp_ros.markers import NS_BOXES, NS_COVARIANCE, NS_LABELS, NS_ORIENTATIONS

    namespaces = displays["rviz_default_plugins/MarkerArray"]["Namespaces"]
    assert set(namespaces) == {NS_BOXES, NS_LABELS, NS_COVARIANCE, NS_ORIENTATIONS}
    assert data["Visualization Manager"]["Global Options"]["Fixed Frame"] == (
        "cam_front_optical_frame"
    )
