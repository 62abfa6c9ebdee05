"""Flags are named from their declarations: messages derive them, help texts name real ones.

The command line's flags are declared once, on the config and inputs dataclasses
(``core.options.option``); a message that typed ``--images`` went stale the day a command
named its folder otherwise (``train`` said "pass ... with --images", a flag it has not).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from weakpaste.core.argv import to_argv
from weakpaste.core.options import DEVICE_FLAG, add_options, flag_of, flags_of, from_args

PACKAGE = Path(__file__).resolve().parents[1] / "weakpaste"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
# Flags of other programs that a message may name ('ray start --head', argparse's --help).
FOREIGN = {"--head", "--help"}


def _exempt(tree: ast.AST) -> set[int]:
    """The string nodes that may spell a flag: docstrings, the ``help=`` and ``flag=`` of a
    declaration (help texts are checked against their command below) and the ``*_FLAG``
    constants that declarations pass as ``flag=``."""
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            exempt.add(id(node.value))  # docstrings, and strings standing alone
        elif isinstance(node, ast.keyword) and node.arg in ("help", "flag"):
            exempt.update(id(s) for s in ast.walk(node.value))
        elif isinstance(node, ast.Assign):
            names = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            if names and all(n.endswith("_FLAG") for n in names):
                exempt.update(id(s) for s in ast.walk(node.value))
    return exempt


def typed_flags(source: str) -> list[tuple[int, str]]:
    """(line, flag) of every flag typed in a string of ``source`` that is not exempt: a
    message, a hint, a command line spelt for the user, an argument (``option="--data"``)."""
    tree = ast.parse(source)
    exempt = _exempt(tree)
    return sorted({(node.lineno, flag) for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)
                   and id(node) not in exempt
                   for flag in FLAG.findall(node.value) if flag not in FOREIGN})


def test_the_scanner_catches_typed_flags():
    source = ('"""Module doc naming --doc."""\n'
              'IMAGES_FLAG = "--images"\n'
              'def f(x):\n'
              '    g(x, option="--data", help="see --help-text")\n'
              '    h(flag="--declared")\n'
              '    fix = f"rerun with {x} --resume"\n'
              '    raise WeakpasteError(f"{x}: pass --images DIR or \'ray start --head\'")\n')
    assert typed_flags(source) == [(4, "--data"), (6, "--resume"), (7, "--images")]


def test_no_message_outside_the_command_line_types_a_flag():
    typed = [f"{path.relative_to(PACKAGE.parent)}:{line}: {flag}"
             for path in sorted(PACKAGE.rglob("*.py")) if "cli" not in path.parts
             for line, flag in typed_flags(path.read_text())]
    assert typed == []


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    from weakpaste.cli import build_parser
    from weakpaste.cli.common import build_commands

    parser = build_parser()
    build_commands(parser, None)
    found, todo = [], [("weakpaste", parser)]
    while todo:
        name, p = todo.pop()
        found.append((name, p))
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {n}", child) for n, child in action.choices.items()]
    return found


def test_every_flag_a_help_text_names_is_an_option_of_its_command():
    wrong, commands = [], _commands()
    assert len(commands) >= 15  # every command and sub-command was built
    for name, parser in commands:
        own = {s for a in parser._actions for s in a.option_strings}
        for action in parser._actions:
            for flag in FLAG.findall(action.help or ""):
                if flag not in own:
                    wrong.append(f"{name} {'/'.join(action.option_strings) or action.dest}: "
                                 f"{flag}")
    assert wrong == []


def test_flags_named_below_their_declarations_match_them():
    from weakpaste.bank.from_coco import BankConfig
    from weakpaste.demo.run import DemoConfig
    from weakpaste.mine.config import ClassifierSpec
    from weakpaste.models import weights
    from weakpaste.paste.run import PasteConfig
    from weakpaste.train.config import TrainConfig

    for cls in (ClassifierSpec, TrainConfig, DemoConfig):
        assert flag_of(cls, "weights") == weights.WEIGHTS_FLAG
        assert flag_of(cls, "backbone") == weights.BACKBONE_FLAG
    assert flag_of(ClassifierSpec, "input_size") == weights.INPUT_SIZE_FLAG
    assert flag_of(ClassifierSpec, "crop_size") == weights.CROP_SIZE_FLAG
    assert flag_of(ClassifierSpec, "device") == DEVICE_FLAG
    # bank.store names --classes for paste and bank from-coco, which it may not import.
    assert flag_of(PasteConfig, "classes") == flag_of(BankConfig, "classes")


def test_inputs_are_options_built_from_the_command_line():
    from weakpaste.mine.pipeline import MineInputs
    from weakpaste.train.evaluation import EvalInputs
    from weakpaste.train.loop import TrainInputs

    assert flags_of(MineInputs) == {"images": "--images", "labels": "--labels"}
    parser = argparse.ArgumentParser()
    add_options(parser, TrainInputs)
    args = parser.parse_args(["--train", "a.json:a", "--train", "b.json:b", "--val", "v:v"])
    assert from_args(TrainInputs, args) == TrainInputs(("a.json:a", "b.json:b"), (), "v:v")
    with pytest.raises(SystemExit):  # --train is required
        parser.parse_args(["--val", "v:v"])
    group = argparse.ArgumentParser().add_mutually_exclusive_group(required=True)
    add_options(group, EvalInputs, only=("checkpoint", "predictions"))
    assert [a.dest for a in group._group_actions] == ["checkpoint", "predictions"]


def test_to_argv_spells_inputs_positionals_and_repeats():
    from weakpaste.report.stats import StatsInputs
    from weakpaste.train.loop import TrainInputs

    assert flag_of(StatsInputs, "coco_json") == "coco_json"  # as argparse's usage names it
    assert to_argv(StatsInputs("x.json", "imgs")) == ["x.json", "--images", "imgs"]
    inputs = TrainInputs(("a:a", "b:b"), ("c:c",))
    argv = to_argv(inputs)
    assert argv == ["--train", "a:a", "--train", "b:b", "--stage2", "c:c"]
    parser = argparse.ArgumentParser()
    add_options(parser, TrainInputs)
    assert from_args(TrainInputs, parser.parse_args(argv)) == inputs
    assert [f.name for f in dataclasses.fields(TrainInputs)] == ["train", "stage2", "val"]
