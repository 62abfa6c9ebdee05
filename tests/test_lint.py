import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed; install the test extras: pip install -e '.[test]'")
    result = subprocess.run([ruff, "check", "weakpaste", "tests", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- sizes (issue 25): no function over 80 lines, no module over 500 --------------------------
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
# Exceptions, each with its reason; none today.
LONG_MODULES_ALLOWED: set[str] = set()
LONG_FUNCTIONS_ALLOWED: set[tuple[str, str]] = set()


def too_long(root: Path, package: str) -> tuple[list[str], list[str]]:
    """(modules over MAX_MODULE_LINES, functions over MAX_FUNCTION_LINES) under root/package,
    each as "path: N lines" or "path:name: N lines", paths relative to root."""
    modules, functions = [], []
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES and rel not in LONG_MODULES_ALLOWED:
            modules.append(f"{rel}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_FUNCTIONS_ALLOWED:
                    functions.append(f"{rel}:{node.name}: {n} lines")
    return modules, functions


def test_no_long_function_or_module():
    modules, functions = too_long(ROOT, "weakpaste")
    assert not modules, f"modules over {MAX_MODULE_LINES} lines (split them): {modules}"
    assert not functions, f"functions over {MAX_FUNCTION_LINES} lines (split them): {functions}"


def test_the_size_check_sees_long_code(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(f"def f():\n{body}\n")  # 81 lines
    (tmp_path / "pkg" / "b.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "pkg" / "c.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    modules, functions = too_long(tmp_path, "pkg")
    assert modules == [f"pkg/b.py: {MAX_MODULE_LINES + 1} lines"]
    assert functions == [f"pkg/a.py:f: {MAX_FUNCTION_LINES + 1} lines"]
