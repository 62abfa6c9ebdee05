"""No import cycle anywhere in weakpaste.

The graph is read from the source with ``ast``: an edge A -> B for every ``import`` of B in
module A, wherever it stands (inside a function or an ``if TYPE_CHECKING:`` block too: a cycle
through a lazy import is still a cycle of design). Importing ``p.q.m`` also runs the
``__init__`` of the packages ``p.q`` and ``p``, so they are edges too, unless A lies inside
them (they are running already): ``weakpaste.cli`` imports every command module, so a stage
that imported ``weakpaste.cli.common`` would close a cycle through it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file below ``root / package``."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load (absolute; ``from X import y`` gives both
    ``X`` and ``X.y``, since y may be a submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = here.split(".") if is_package else here.split(".")[:-1]
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (see the module docstring)."""
    modules = _module_names(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported(node, name, is_package):
                parts = target.split(".")
                # The module itself and every package above it that is not already running.
                for i in range(len(parts), 0, -1):
                    prefix = ".".join(parts[:i])
                    # Not a module, or this module or a package around it: already running.
                    if prefix in modules and not (name + ".").startswith(prefix + "."):
                        graph[name].add(prefix)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_weakpaste_has_no_import_cycle():
    graph = import_graph(ROOT, "weakpaste")
    assert "weakpaste.train.loop" in graph and "weakpaste.models.classifier" in graph
    assert "weakpaste.train.model" in graph["weakpaste.train.evaluation"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


_LAZY_PAIR = {
    "pkg/__init__.py": "",
    "pkg/a.py": "from pkg import b\n\nX = 1\n",
    "pkg/b.py": "def f():\n    from .a import X\n    return X\n",
}
# A stage that imports a helper of the CLI package, whose __init__ imports every command.
_THROUGH_INIT = {
    "pkg/__init__.py": "",
    "pkg/cli/__init__.py": "from pkg.cli import run\n",
    "pkg/cli/run.py": "def main():\n    import pkg.stage\n",
    "pkg/cli/common.py": "",
    "pkg/stage.py": "from pkg.cli.common import *\n",
}
# The same package, but the stage does not import the CLI: siblings are no cycle.
_SIBLINGS = {
    "pkg/__init__.py": "",
    "pkg/cli/__init__.py": "from pkg.cli import common, run\n",
    "pkg/cli/run.py": "from pkg.cli.common import helper\nfrom ..core import x\n",
    "pkg/cli/common.py": "def helper():\n    pass\n",
    "pkg/core.py": "import os\n\nx = 1\n",
}


@pytest.mark.parametrize(("files", "edges", "cycle"), [
    (_LAZY_PAIR, {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}, ["pkg.a", "pkg.b", "pkg.a"]),
    (_THROUGH_INIT, {"pkg.stage": {"pkg.cli", "pkg.cli.common"}, "pkg.cli.run": {"pkg.stage"}},
     ["pkg.cli", "pkg.cli.run", "pkg.stage", "pkg.cli"]),
    (_SIBLINGS, {"pkg.cli.run": {"pkg.cli.common", "pkg.core"}, "pkg": set()}, None),
])
def test_hand_made_packages(tmp_path, files, edges, cycle):
    _write(tmp_path, files)
    graph = import_graph(tmp_path, "pkg")
    for module, imported in edges.items():
        assert graph[module] == imported, module
    assert find_cycle(graph) == cycle
