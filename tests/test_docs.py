"""The documentation's examples run, so they cannot rot.

Conventions (kept few on purpose; a README block that breaks one fails here):

* ```python blocks of README.md, then of docs/api.md, run in order in one namespace per file,
  in a fresh empty temporary folder (the current directory while they run).
* README.md's ```bash / ```sh / ```console blocks run in order, each with
  ``bash -euo pipefail``, all in one temporary folder, so that a block uses what an earlier
  one wrote (the "Each use" blocks work on the quick start's ``weakpaste-demo/``). There
  ``weakpaste`` is this checkout's ``python -m weakpaste.cli``, and ``weakpaste demo`` runs
  with ``DEMO_SIZES`` appended (the full demo takes 2-3 CPU-minutes; later flags win).
* Commands that cannot run offline in a test are checked instead of run: ``pip install``
  (each extra it names must exist in pyproject.toml, torch's index must be its CPU one),
  ``git clone``, and ``python -m pytest`` (this suite). A line ``A && B`` is split at ``&&``.
* ```text / ```json blocks are output, not run. Any block of any page that shows a
  ``weakpaste`` command has its flags checked against that command's parser, and every
  relative link and ``weakpaste.*`` module name of the pages must exist.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API = ROOT / "docs" / "api.md"
PAGES = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "console"}
DEMO_SIZES = "--num-scenes 16 --num-images 8 --epochs 3"
CHECKED = ("pip install ", "git clone ", "python -m pytest")


def blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, first line number, text) of every fenced code block of ``path``."""
    out, lang, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if lang is None and line.startswith("```"):
            lang, start, lines = line[3:].strip(), number + 1, []
        elif lang is not None and line.startswith("```"):
            out.append((lang, start, "\n".join(lines)))
            lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, f"{path.name}: a code block is not closed"
    return out


def commands(text: str) -> list[str]:
    """The logical lines of a shell block: continuations joined, comments and prompts gone."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.removeprefix("$ ") if not pending else raw
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line and not line.startswith("#"):
            out.append(re.sub(r"\s+#.*$", "", line))
    return out


def _check_offline(part: str, where: str) -> None:
    """Check a command that is not run (see the module docstring)."""
    if part.startswith("pip install "):
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"]
        words = shlex.split(part)[2:]
        for word in words:
            named = re.fullmatch(r"(?:\.|weakpaste)\[([\w,-]+)\]", word)
            for extra in named.group(1).split(",") if named else ():
                assert extra in extras, f"{where}: no extra [{extra}] in pyproject.toml"
        if "torch" in words:
            assert "https://download.pytorch.org/whl/cpu" in words, where
        if "-e" in words:
            assert (ROOT / "pyproject.toml").is_file(), where
    elif part.startswith("python -m pytest"):
        assert (ROOT / "tests").is_dir(), where


def runnable(text: str, where: str) -> str:
    """The block as bash runs it: checked-only commands removed (and checked)."""
    keep = []
    for line in commands(text):
        parts = [p.strip() for p in line.split("&&")]
        for part in parts:
            if part.startswith(CHECKED):
                _check_offline(part, where)
        rest = [p for p in parts if not p.startswith(CHECKED)]
        if rest:
            keep.append(" && ".join(rest))
    return "\n".join(keep)


def _shim(bin_dir: Path) -> dict[str, str]:
    """An environment whose ``weakpaste`` is this checkout's CLI."""
    bin_dir.mkdir()
    script = bin_dir / "weakpaste"
    script.write_text(f'#!/bin/sh\nif [ "$1" = demo ]; then\n'
                      f'  exec "{sys.executable}" -m weakpaste.cli "$@" {DEMO_SIZES} --quiet\n'
                      f'fi\nexec "{sys.executable}" -m weakpaste.cli "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("RAY_ADDRESS", None)
    return env


def test_readme_shell_blocks_run(tmp_path):
    env = _shim(tmp_path / "bin")
    work = tmp_path / "work"
    work.mkdir()
    ran = 0
    for lang, line, text in blocks(README):
        if lang not in SHELL:
            continue
        where = f"README.md:{line}"
        script = runnable(text, where)
        if not script:
            continue
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (f"{where}: the block failed (exit {done.returncode}):\n"
                                      f"{script}\n--- stderr ---\n{done.stderr[-3000:]}")
        ran += 1
    assert ran >= 5, "the README's command blocks were not found"
    assert (work / "weakpaste-demo" / "viz_mined" / "contact_sheet.png").is_file()


@pytest.mark.parametrize("page", [README, API], ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace: dict = {"__name__": "__docs__"}
    for lang, line, text in blocks(page):
        if lang == "python":
            exec(compile(text, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)


def _subcommands(parser) -> dict:
    import argparse

    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return {} if sub is None else sub.choices


def _flags_of(argv: list[str]) -> tuple[str, set[str]]:
    """The command named by ``argv`` (``mine fem``) and its option strings."""
    from weakpaste.cli import build_parser

    parser, names = build_parser(), []
    for word in argv:
        children = _subcommands(parser)
        if word not in children:
            break
        parser = children[word]
        names.append(word)
    flags = {s for a in parser._actions for s in a.option_strings}
    return " ".join(names), flags


def test_weakpaste_commands_on_every_page_use_existing_flags():
    bad = []
    for page in PAGES:
        for _, line, text in blocks(page):
            for cmd in commands(text):
                for part in cmd.split("&&"):
                    words = part.split()
                    if not words or words[0] != "weakpaste" or len(words) < 2:
                        continue
                    name, flags = _flags_of(words[1:])
                    for word in words[1:]:
                        flag = word.split("=", 1)[0]
                        if flag.startswith("--") and flag not in flags:
                            bad.append(f"{page.relative_to(ROOT)}:{line}: weakpaste {name} "
                                       f"has no {flag}")
    assert not bad, "\n".join(bad)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    out, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_relative_links_and_anchors_exist():
    bad = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                bad.append(f"{page.relative_to(ROOT)}: {target}: no such heading")
    assert not bad, "\n".join(bad)


def _defines(module_file: Path, name: str) -> bool:
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name
                                                    for a in node.names):
            return True
    return False


def test_module_names_on_every_page_exist():
    """``weakpaste.a.b`` is a module, or ``weakpaste.a.b.name`` a name defined in one."""
    bad = []
    for page in [*PAGES, *([API] if API.exists() else [])]:
        for dotted in sorted(set(re.findall(r"\bweakpaste(?:\.\w+)+",
                                            page.read_text(encoding="utf-8")))):
            parts = dotted.split(".")
            for k in range(len(parts), 0, -1):
                try:
                    spec = importlib.util.find_spec(".".join(parts[:k]))
                except ModuleNotFoundError:  # a name inside a module, not a package
                    spec = None
                if spec is not None:
                    break
            rest = parts[k:]
            ok = not rest or (len(rest) == 1 and spec.origin is not None
                              and _defines(Path(spec.origin), rest[0]))
            if not ok:
                bad.append(f"{page.relative_to(ROOT)}: {dotted}")
        for path in re.findall(r"(?<![\w/.~-])(?:weakpaste|tests|benchmarks)/[\w/.]*\w",
                               page.read_text(encoding="utf-8")):
            if not (ROOT / path).exists():
                bad.append(f"{page.relative_to(ROOT)}: {path}")
    assert not bad, "\n".join(bad)
