"""Imports point down only, and none goes round in a circle.

The package's layers, from the bottom: the library (plain torch, numpy, scikit-learn and
MLflow code, usable without Kedro), the Kedro pipelines (``directclr.pipelines``), the
registry, the framework (hooks, datasets, checks) and the entry points (``settings.py``,
``__main__.py``). A module may import its own layer and those below it, with two more rules:
the library never imports Kedro, and the framework never imports a node file. Every import is
read from the source with ``ast``, at module level and inside functions alike: an import
made late still runs, and still closes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = ("library", "pipelines", "registry", "framework", "entry")


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (its folder is ``root``), by dotted name."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """What ``module`` imports: modules of the package by name (``from a import b`` is the
    module ``a.b`` where there is one, else ``a``), other packages by their top-level name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            named = {f"{base}.{alias.name}" for alias in node.names} & known
            found |= named or {base}
    return {name if name in known else name.partition(".")[0] for name in found}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Each module of the package and what it imports."""
    found = modules(root, package)
    return {module: imports(module, path, set(found)) for module, path in found.items()}


def layer(module: str, package: str) -> str:
    parts = module.split(".")[1:]
    if parts in (["settings"], ["__main__"]):
        return "entry"
    if parts[:1] == ["framework"]:
        return "framework"
    if parts == ["pipeline_registry"]:
        return "registry"
    if parts[:1] == ["pipelines"]:
        return "pipelines"
    return "library"


def is_node_file(module: str, package: str) -> bool:
    parts = module.split(".")
    return parts[:2] == [package, "pipelines"] and len(parts) == 4 and parts[3] == "nodes"


def upward_imports(graph: dict[str, set[str]], package: str) -> list[str]:
    """Every import that breaks a layer rule, as ``importer -> imported (why)``."""
    problems = []
    for module, targets in sorted(graph.items()):
        mine = layer(module, package)
        for target in sorted(targets):
            if target not in graph:
                if mine == "library" and target.startswith("kedro"):
                    problems.append(f"{module} -> {target} (the library never imports Kedro)")
                continue
            theirs = layer(target, package)
            if LAYERS.index(theirs) > LAYERS.index(mine):
                problems.append(f"{module} -> {target} ({mine} importing {theirs})")
            elif mine == "framework" and is_node_file(target, package):
                problems.append(f"{module} -> {target} (the framework importing a node file)")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the package's modules: one per strongly connected group of
    modules (Tarjan's algorithm), each as a closed path ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module] & graph.keys()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1 or module in graph[module]:
                groups.append(set(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(_closed_path(group, graph) for group in groups)


def _closed_path(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A cycle through the first module of ``group``, for the error message."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first, so the path shown is a shortest one
        module = frontier.pop(0)
        for target in sorted(graph[module] & group):
            if target == start:
                return [*paths[module], start]
            if target not in paths:
                paths[target] = [*paths[module], target]
                frontier.append(target)
    raise AssertionError(f"{group} is not a cycle")


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_walker_finds_cycles_and_upward_imports(tmp_path):
    root = tmp_path / "pkg"
    _write(root, {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def late():\n    from .c import value\n",  # inside a function, relative
        "c.py": "import pkg.a\nvalue = 1\n",
        "lib.py": "import numpy\n\ndef f():\n    from kedro.pipeline import Node\n",
        "pipelines/__init__.py": "",
        "pipelines/stage/__init__.py": "from .pipeline import create_pipeline\n",
        "pipelines/stage/pipeline.py": "from .nodes import f\n",
        "pipelines/stage/nodes.py": "from pkg.framework.hooks import X\n",
        "framework/__init__.py": "",
        "framework/hooks.py": "from pkg.pipelines.stage.nodes import f\nfrom pkg import lib\n",
    })  # fmt: skip
    graph = import_graph(root, "pkg")

    assert graph["pkg.b"] == {"pkg.c"}
    assert graph["pkg.lib"] == {"numpy", "kedro"}
    assert cycles(graph) == [
        ["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
        ["pkg.framework.hooks", "pkg.pipelines.stage.nodes", "pkg.framework.hooks"],
    ]
    assert upward_imports(graph, "pkg") == [
        "pkg.framework.hooks -> pkg.pipelines.stage.nodes (the framework importing a node file)",
        "pkg.lib -> kedro (the library never imports Kedro)",
        "pkg.pipelines.stage.nodes -> pkg.framework.hooks (pipelines importing framework)",
    ]

    _write(root, {
        "c.py": "value = 1\n",
        "lib.py": "import numpy\n",
        "pipelines/stage/nodes.py": "from pkg import lib\n",
        "framework/hooks.py": "from pkg import lib\n",
    })  # fmt: skip
    clean = import_graph(root, "pkg")
    assert cycles(clean) == []
    assert upward_imports(clean, "pkg") == []


def test_the_package_imports_point_down_with_no_cycle():
    graph = import_graph(REPO / "src" / "directclr", "directclr")
    assert "directclr.pipeline_registry" in graph["directclr.framework.hooks"]  # walked
    assert [" -> ".join(cycle) for cycle in cycles(graph)] == []
    assert upward_imports(graph, "directclr") == []


def test_the_settings_classes_live_in_the_library():
    """The map names its classes by import path, which the walk above cannot see."""
    from directclr.pipelines.sections import SETTINGS_SECTIONS

    graph = import_graph(REPO / "src" / "directclr", "directclr")
    for section, path in SETTINGS_SECTIONS.items():
        module = path.partition(":")[0]
        assert module in graph, section
        assert layer(module, "directclr") == "library", section
