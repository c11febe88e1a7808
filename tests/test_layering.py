"""The package's layering, read from its import statements (module level and inside functions).

spec -> graph -> lower / train -> deploy -> api -> commands -> cli, with layers/ under spec
and graph, and runtime/ a service that train/ and deploy/ call. What is checked:
- no import circle between graphcnn's modules (a module's imports include its package
  `__init__`'s, as Python runs them);
- spec/, graph/, layers/ and shapes/ import neither onnx nor onnxruntime;
- only commands/ and cli.py import commands/; no library module imports cli.py;
- lower/, layers/, spec/ and graph/ import nothing from train/, deploy/, runtime/, api.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "graphcnn"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of everything the file imports (`from . import x` gives pkg.x too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(package, node.module, node.level)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def resolve(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[:len(parts) - level + 1]
    return ".".join(base + ([module] if module else []))


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    g = nx.DiGraph()
    for name, path in files.items():
        g.add_node(name)
        for target in imports_of(path):
            if target in files and target != name:
                g.add_edge(name, target)
    return g


def test_no_import_circle(graph):
    cycles = [c for c in nx.simple_cycles(graph) if not is_package_init_pair(c)]
    assert cycles == [], f"import circles: {cycles[:5]}"


def is_package_init_pair(cycle) -> bool:
    """`pkg/__init__` importing `pkg.mod`, which imports a sibling through `pkg`: Python runs
    that fine and the shared import-cycle tool does not count it either."""
    return len(cycle) == 2 and any(a.startswith(b + ".") for a, b in (cycle, cycle[::-1]))


def in_area(name: str, *areas: str) -> bool:
    return any(name == f"graphcnn.{a}" or name.startswith(f"graphcnn.{a}.") for a in areas)


def test_front_end_never_imports_onnx():
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if in_area(name, "spec", "graph", "layers", "shapes"):
            heavy = {i for i in imports_of(path) if i.split(".")[0] in ("onnx", "onnxruntime")}
            assert not heavy, f"{name} imports {heavy}"


def test_command_line_is_on_top(graph):
    for source, target in graph.edges:
        if in_area(target, "commands", "cli"):
            assert in_area(source, "commands", "cli"), f"{source} imports {target}"


def test_lower_layers_do_not_reach_up(graph):
    for source, target in graph.edges:
        if in_area(source, "lower", "layers", "spec", "graph"):
            assert not in_area(target, "train", "deploy", "runtime", "api"), \
                f"{source} imports {target}"
