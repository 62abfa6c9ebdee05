"""Size figures of a weakpaste checkout: modules, longest functions, literal ``--flag``s.

The figures issue 25 asked for before and after a refactor::

    python benchmarks/code_figures.py                 # this checkout
    python benchmarks/code_figures.py /path/to/other  # e.g. a git worktree of an older commit
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

_FLAG = re.compile(r"--[a-z][a-z0-9-]+")


def _skipped(tree: ast.AST) -> set[int]:
    """Ids of the string nodes that declare rather than spell a flag: docstrings, ``help=``,
    ``flag=`` and ``metavar=`` values, and the values of ``*_FLAG`` constants."""
    skip: set[int] = set()
    for n in ast.walk(tree):
        body = getattr(n, "body", None)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))
        value = None
        if isinstance(n, ast.keyword) and n.arg in ("help", "flag", "metavar"):
            value = n.value
        elif isinstance(n, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.endswith("_FLAG") for t in n.targets):
            value = n.value
        if value is not None:
            skip.update(id(m) for m in ast.walk(value))
    return skip


def figures(root: Path) -> dict:
    """The figures of ``root/weakpaste`` (see the module docstring)."""
    package = root / "weakpaste"
    modules = sorted(package.rglob("*.py"))
    sizes, functions = [], []
    with_flag = spelt = 0
    for path in modules:
        text = path.read_text()
        name = path.relative_to(root).as_posix()
        sizes.append((len(text.splitlines()), name))
        tree = ast.parse(text)
        functions += [(n.end_lineno - n.lineno + 1, f"{name}:{n.name}") for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if path.relative_to(package).parts[0] == "cli":
            continue
        skip = _skipped(tree)
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and _FLAG.search(n.value):
                with_flag += 1
                spelt += 0 if id(n) in skip else len(_FLAG.findall(n.value))
    sizes.sort(reverse=True)
    functions.sort(reverse=True)
    return {
        "modules": len(modules), "lines": sum(s for s, _ in sizes), "largest": sizes[:3],
        "functions_over_80": sum(n > 80 for n, _ in functions),
        "functions_over_60": sum(n > 60 for n, _ in functions), "longest": functions[:3],
        "strings_with_a_flag_outside_cli": with_flag,
        "flags_spelt_outside_cli": spelt,
        "add_argument_in_cli": sum(p.read_text().count("add_argument(")
                                   for p in (package / "cli").rglob("*.py")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]),
                        help="the checkout (default: this one)")
    for key, value in figures(Path(parser.parse_args().root)).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
