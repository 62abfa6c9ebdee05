"""Options back to the command line: the flags that rebuild a config (``to_argv``).

The demo and the benchmarks print or run ``weakpaste`` commands from configs with it, so no
flag is spelt by hand outside the option definitions.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import MISSING
from typing import Any

from weakpaste.core.options import _KEY, cli_walk, flag_of


def to_argv(config: Any, *, every: bool = False, always: Sequence[str] = ()) -> list[str]:
    """The command-line arguments that rebuild ``config`` (the inverse of ``add_options`` +
    ``from_args``): ``from_args(type(config), parser.parse_args(to_argv(config)))`` equals
    ``config`` for a parser built by ``add_options``.

    Args:
        config: a ``Config`` or a stage's inputs (``core.run.StageInputs``); only its CLI
            fields are spelt (set the others in Python).
        every: every CLI field (but a None or False default, which an absent option gives);
            by default only the values that differ from the class's defaults, and the fields
            without a default (a short, copyable command).
        always: fields spelt even at their default (a printed command that must reproduce a
            run names its seed, whatever a later version's default).

    Raises:
        ValueError: a value the command line cannot say (False for a switch, None where the
            option's parser reads no "none", an empty list of a "+" option).
    """
    argv: list[str] = []
    for f, default, value in cli_walk(type(config), config):
        required = f.default is MISSING and f.default_factory is MISSING
        # An absent option is its default: None and False have no spelling of their own.
        if (required or f.name in always or value != default
                or every and value is not None and value is not False):
            argv += _spell(f, value)
    return argv


def _spell(f: dataclasses.Field, value: Any) -> list[str]:
    """The arguments that set field ``f`` to ``value``."""
    opt, flag = f.metadata[_KEY], flag_of(f)
    if opt.positional:
        return [str(value)]
    if opt.repeat:
        return [word for v in value for word in (flag, str(v))]
    if isinstance(value, bool):
        if not value:
            raise ValueError(f"{flag} is a switch: the command line cannot set it False")
        return [flag]
    if value is None or value == () and opt.parse is not None:
        if not _reads_none(opt.parse, value):
            raise ValueError(f"{flag}: the command line cannot set {value!r}")
        return [flag, "none"]
    if opt.show is not None:
        return [flag, opt.show(value)]
    if isinstance(value, tuple | list):
        if opt.parse is not None:
            return [flag, ",".join(map(str, value))]
        if not value:
            raise ValueError(f"{flag}: the command line cannot set an empty list")
        return [flag, *map(str, value)]
    return [flag, str(value)]


def _reads_none(parse: Callable[[str], Any] | None, value: Any) -> bool:
    try:
        return parse is not None and parse("none") == value
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
