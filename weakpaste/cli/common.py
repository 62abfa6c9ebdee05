"""Parsers and helpers shared by the command modules."""

from __future__ import annotations

import argparse
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


def common(p: argparse.ArgumentParser, out: bool = True) -> None:
    """``--overwrite`` (for commands with an output folder) and ``--quiet``."""
    if out:
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing weakpaste output in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def float_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.3,1.0), got {text!r}") from None
    if hi < lo or lo <= 0:
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI, got {text!r}")
    return lo, hi


def fractions(text: str) -> tuple[float, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions like 0.667,0.889 (or none), got "
                                         f"{text!r}") from None


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



def workers(p: argparse.ArgumentParser, default: int = 1) -> None:
    """``--workers N``: processes of the per-item stage (the output does not depend on it)."""

    def count(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
        return value

    p.add_argument("--workers", type=count, default=default,
                   help=f"processes; the output is the same for any number (default: {default})")
