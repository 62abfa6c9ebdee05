"""Parsers and helpers shared by the command modules."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

Builder = Callable[[argparse.ArgumentParser], None]


def command(sub: argparse._SubParsersAction, name: str, help: str, build: Builder,
            **kwargs) -> argparse.ArgumentParser:
    """Add command ``name`` whose arguments ``build`` adds only when the command is used.

    Building a command's arguments imports its config dataclasses (and so OpenCV or torch);
    ``weakpaste --help`` and the other commands must not pay for that.
    """
    parser = sub.add_parser(name, help=help, description=help, **kwargs)
    parser._weakpaste_build = build  # type: ignore[attr-defined]
    return parser


def build_commands(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Build the arguments of the commands named in ``argv`` (all of them when None)."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return
    words = None if argv is None else [w for w in argv if not w.startswith("-")]
    for name, child in sub.choices.items():
        if words is not None and (not words or words[0] != name):
            continue
        build = getattr(child, "_weakpaste_build", None)
        if build is not None:
            del child._weakpaste_build  # type: ignore[attr-defined]
            build(child)
        build_commands(child, None if words is None else words[1:])


def add_run_options(p: argparse.ArgumentParser, *names: str, out_required: bool = True,
                    helps: dict[str, str] | None = None, out_metavar: str | None = None,
                    defaults: dict | None = None) -> None:
    """Add the run options (``weakpaste.core.run.RunOptions``) that a stage supports.

    Args:
        p: the command's parser.
        names: the ``RunOptions`` fields the stage supports ("out", "workers", ...); the
            others keep their defaults (``run_options`` leaves them out).
        out_required: whether ``--out`` must be given (else its default is used).
        helps: field -> the stage's own help (``--out``: what the stage writes there).
        out_metavar: the stage's own metavar of ``--out`` (a file rather than a folder).
        defaults: command-specific defaults (the demo's folder and workers).
    """
    from weakpaste.core.options import add_options
    from weakpaste.core.run import RUN_FIELDS, RunOptions

    unknown = set(names) - set(RUN_FIELDS)
    if unknown:
        raise ValueError(f"not run options: {sorted(unknown)}")
    add_options(p, RunOptions, exclude=[n for n in RUN_FIELDS if n not in names],
                defaults=defaults)
    # Which fields are the command's: a stage option may share a name (train's --workers is
    # its DataLoader's), and run_options must not take it for a run option.
    p.set_defaults(_run_options=tuple(names))
    fields = {f.name: f for f in dataclasses.fields(RunOptions)}
    for action in p._actions:
        if action.dest == "out":
            action.required = out_required and not (defaults and "out" in defaults)
            action.metavar = out_metavar or action.metavar
        if helps and action.dest in helps:
            # Keep the generated "(default: X)".
            generic = fields[action.dest].metadata["weakpaste"].help
            action.help = helps[action.dest] + action.help[len(generic):]


def run_options(args: argparse.Namespace):
    """The ``RunOptions`` of parsed arguments: the run options the command registered
    (``add_run_options``); the others keep their defaults."""
    from weakpaste.core.run import RunOptions

    names = getattr(args, "_run_options", ())
    return RunOptions(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def torch_threads(threads: int | None) -> None:
    """Set up torch for a training or evaluation command (call before importing torch).

    Idle OpenMP threads sleep instead of spinning: spinning threads fight the data loader and
    any other process for the cores, and on a busy 2-core machine made a Mask R-CNN step ten
    times slower. An explicit OMP_WAIT_POLICY in the environment wins.
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads:
        import torch

        torch.set_num_threads(threads)


def count(text: str) -> int:
    """argparse ``type`` of a count >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def threads(p: argparse.ArgumentParser) -> None:
    """``--threads N``: torch CPU threads (see ``torch_threads``)."""
    p.add_argument("--threads", type=count, help="torch CPU threads (default: torch's choice)")

