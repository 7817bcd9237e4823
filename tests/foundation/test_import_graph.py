"""The import graph of the project's packages: imports only point down.

Read statically from the sources (every ``import`` statement that runs, at any depth of a module;
those under ``if TYPE_CHECKING:`` never run), so the test needs neither ROS nor torch. The rules
(``DESIGN.md``, "rules of the house"):

* ``epropnp_lib`` never imports ``epropnp_ros``, ``epropnp_training``, rclpy or ROS messages;
* no module of ``epropnp_lib`` outside ``epropnp_lib.generators`` imports a generator;
* ``epropnp_training`` never imports ``epropnp_ros``;
* the graph of the project's modules has no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Package name -> source directory.
PACKAGES = {
    "epropnp_lib": REPO / "epropnp_lib",
    "epropnp_ros": REPO / "src" / "epropnp_ros",
    "epropnp_training": REPO / "training",
}
ROS_MODULES = ("rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "vision_msgs", "tf2_msgs",
               "visualization_msgs", "builtin_interfaces", "diagnostic_msgs", "lifecycle_msgs",
               "autoware_perception_msgs")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """The nodes of ``tree`` outside ``if TYPE_CHECKING:`` blocks (imports there never run)."""
    for node in ast.iter_child_nodes(tree):
        test = node.test if isinstance(node, ast.If) else None
        if test is not None and "TYPE_CHECKING" in ast.unparse(test):
            yield from (n for child in node.orelse for n in _runtime_nodes_and_self(child))
            continue
        yield from _runtime_nodes_and_self(node)


def _runtime_nodes_and_self(node: ast.AST) -> Iterator[ast.AST]:
    yield node
    yield from _runtime_nodes(node)


def _imports(name: str, path: Path) -> Iterator[str]:
    """Absolute names of everything ``name`` (at ``path``) imports when it runs."""
    is_package = path.name == "__init__.py"
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (submodule imports resolved)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for imp in _imports(name, path):
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    return graph


def _external(name: str) -> set[str]:
    return {imp.split(".")[0] for imp in _imports(name, _modules()[name])}


def test_the_library_imports_neither_ros_nor_training() -> None:
    bad = {
        name: sorted(_external(name) & {*ROS_MODULES, "epropnp_ros", "epropnp_training"})
        for name in _modules() if name.startswith("epropnp_lib")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_core_module_imports_a_generator() -> None:
    graph = _graph()
    bad = {
        name: sorted(d for d in deps if d.startswith("epropnp_lib.generators"))
        for name, deps in graph.items()
        if name.startswith("epropnp_lib") and not name.startswith("epropnp_lib.generators")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_training_does_not_import_ros() -> None:
    bad = {name: sorted(_external(name) & {*ROS_MODULES, "epropnp_ros"})
           for name in _modules() if name.startswith("epropnp_training")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_module_graph_has_no_cycle() -> None:
    graph = _graph()
    # A package's __init__ may re-export its own submodules: those edges point down.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not d.startswith(name + ".")}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
