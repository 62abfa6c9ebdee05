"""No import cycle anywhere in weakpaste, and every import goes the way the layout says.

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
    assert "weakpaste.evaluate.detection" in graph["weakpaste.train.evaluation"]
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


# --- import direction: each unit's docstring says which units it may import ----------------
# A unit is a sub-package of weakpaste or a module at its root (``structures``). Its rule is
# the ``May import: a, b, c.`` line of its docstring (``anything`` for the command line), so
# the rule a reader sees is the rule this test enforces.


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def allowed_imports(root: Path, package: str) -> dict[str, set[str] | None]:
    """Unit -> the units it may import (None: anything), read from the units' docstrings."""
    rules = {}
    for path in sorted((root / package).iterdir()):
        init = path / "__init__.py" if path.is_dir() else path
        if not init.is_file() or init.suffix != ".py" or path.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        lines = [ln for ln in doc.splitlines() if ln.startswith("May import:")]
        assert len(lines) == 1, f"{init}: its docstring needs one 'May import: ...' line"
        rule = lines[0].removeprefix("May import:").strip().rstrip(".")
        name = path.stem if path.is_file() else path.name
        if rule.startswith("anything"):
            rules[name] = None
        elif rule == "nothing else of weakpaste":
            rules[name] = set()
        else:
            rules[name] = {u.strip() for u in rule.split(",")}
    return rules


def direction_errors(root: Path, package: str) -> list[str]:
    """'a.b imports c.d' for every import that its unit's rule does not allow."""
    rules = allowed_imports(root, package)
    errors = []
    for module, imported in sorted(import_graph(root, package).items()):
        here = _unit(module)
        if here is None or here not in rules:
            continue
        for target in sorted(imported):
            there = _unit(target)
            if there is None or there == here:
                continue
            if there not in rules:
                errors.append(f"{module} imports {target}, a unit with no rule")
            elif there == "cli":
                errors.append(f"{module} imports the command line ({target})")
            elif rules[here] is not None and there not in rules[here]:
                errors.append(f"{module} imports {target}: {here} may import "
                              f"{', '.join(sorted(rules[here])) or 'nothing'}")
    return errors


def test_weakpaste_imports_follow_its_layout():
    rules = allowed_imports(ROOT, "weakpaste")
    assert {"core", "ops", "structures", "io", "models", "bank", "mine", "evaluate", "paste",
            "backgrounds", "train", "report", "demo", "cli"} <= set(rules)
    assert rules["core"] == set() and rules["cli"] is None
    assert "evaluate" not in rules["mine"]  # the miners never see the ground truth
    assert direction_errors(ROOT, "weakpaste") == []


_LAYERED = {
    "pkg/__init__.py": "",
    "pkg/low/__init__.py": '"""Low.\n\nMay import: nothing else of weakpaste.\n"""\n',
    "pkg/low/a.py": "X = 1\n",
    "pkg/high/__init__.py": '"""High.\n\nMay import: low.\n"""\n',
    "pkg/high/b.py": "from pkg.low.a import X\n",
    "pkg/cli/__init__.py": '"""CLI.\n\nMay import: anything.\n"""\n',
    "pkg/cli/c.py": "import pkg.high.b\n",
}


def test_a_hand_made_upward_import_is_reported(tmp_path):
    _write(tmp_path, _LAYERED)
    assert direction_errors(tmp_path, "pkg") == []
    _write(tmp_path, {"pkg/low/a.py": "def f():\n    from pkg.high import b\n"})
    assert direction_errors(tmp_path, "pkg") == [
        "pkg.low.a imports pkg.high: low may import nothing",
        "pkg.low.a imports pkg.high.b: low may import nothing"]
    _write(tmp_path, {"pkg/low/a.py": "", "pkg/high/b.py": "import pkg.cli.c\n"})
    assert direction_errors(tmp_path, "pkg") == [
        "pkg.high.b imports the command line (pkg.cli)",
        "pkg.high.b imports the command line (pkg.cli.c)"]


def test_a_unit_without_a_rule_is_refused(tmp_path):
    _write(tmp_path, {**_LAYERED, "pkg/high/__init__.py": '"""High, no rule."""\n'})
    with pytest.raises(AssertionError, match="needs one 'May import"):
        allowed_imports(tmp_path, "pkg")
