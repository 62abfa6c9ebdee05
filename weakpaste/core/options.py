"""Options defined once: a config field carries its default, help, flag, choices and range.

Every stage's settings are a frozen dataclass deriving from ``Config``. A field declared with
``option(...)`` holds everything the command line needs (help text, flag, metavar, choices, a
valid range, a parser for structured values), so ``add_options`` builds a command's arguments
from the dataclass and ``from_args`` builds the dataclass back from parsed arguments. The
Python API and the CLI therefore share one default and one validation: a ``Config`` validates
itself once, at construction (``__post_init__``), and its errors name the parameter both ways,
e.g. ``blur_sigma (--blur-sigma) must be >= 0, got -1.0``.

Nested configs (a field whose type is a ``Config``) contribute their own options to the same
command, so shared parts (the mining classifier, the Mask R-CNN architecture, the device) are
declared once and reused: nesting is the one way options are shared. A nested config declared
``inline=True`` is recorded flat, its fields beside its parent's (``Config.to_dict``), so that
splitting a config in parts keeps the layout of manifests and checkpoints.

``to_argv`` is the inverse of parsing: the flags that rebuild a config, for a printed
equivalent command or a benchmark that runs the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any

from weakpaste.core.errors import WeakpasteError

_KEY = "weakpaste"


@dataclass(frozen=True)
class Opt:
    """The command-line side of a config field (see ``option``)."""

    help: str
    flag: str | None = None
    metavar: str | None = None
    choices: tuple | None = None
    range: tuple[float | None, float | None] | None = None
    parse: Callable[[str], Any] | None = None
    nargs: str | None = None
    cli: bool = True
    open_low: bool = False
    open_high: bool = False
    show: Callable[[Any], str] | None = None
    check: Callable[[Any], str | None] | None = None
    inline: bool = False
    positional: bool = False
    repeat: bool = False


def option(default: Any = MISSING, *, help: str, flag: str | None = None,
           metavar: str | None = None, choices: Sequence | None = None,
           range: tuple[float | None, float | None] | None = None,
           parse: Callable[[str], Any] | None = None, nargs: str | None = None,
           cli: bool = True, factory: Callable[[], Any] | None = None,
           open_low: bool = False, open_high: bool = False,
           show: Callable[[Any], str] | None = None,
           check: Callable[[Any], str | None] | None = None, inline: bool = False,
           positional: bool = False, repeat: bool = False) -> Any:
    """A dataclass field with its command-line description.

    Args:
        default: the default (the same for the CLI and the Python API).
        help: one-line help; "(default: X)" is appended on the command line.
        flag: the flag (default ``--`` + the field name with dashes).
        metavar: the value's name in ``--help``.
        choices: the allowed values.
        range: (lo, hi) bounds of a number, or of every number of a tuple, inclusive unless
            ``open_low``/``open_high``; None for an unbounded side.
        parse: str -> value for structured values (a range "1-6", a pair "0.3,1.0", a JSON
            file); its ``ValueError``/``ArgumentTypeError`` becomes a one-line usage error.
        nargs: argparse nargs (tuple[str, ...] fields get "+" by default).
        cli: False for a setting that only the Python API sets.
        factory: a default factory (nested configs, mutable defaults).
        open_low: the range's lower bound is excluded (``> 0`` rather than ``>= 0``).
        open_high: the range's upper bound is excluded (``< 1`` rather than ``<= 1``).
        show: value -> the text ``parse`` reads, for the default in ``--help`` (by default a
            tuple is shown as "A,B" when ``parse`` is given, as "A B" otherwise); ``to_argv``
            spells the value with it too.
        check: value -> None when valid, else the complaint ("must be ..."), for a rule a
            range cannot say (``device_option``); checked at construction, after the range.
        inline: a nested config recorded flat by ``to_dict`` (its fields beside the parent's).
        positional: a positional argument (a stage's main input), named by its field.
        repeat: a tuple given by repeating the flag (``--train A --train B``) rather than
            by several values after one flag.

    Returns:
        A ``dataclasses.field``.
    """
    meta = {_KEY: Opt(help=help, flag=flag, metavar=metavar,
                      choices=tuple(choices) if choices is not None else None, range=range,
                      parse=parse, nargs=nargs, cli=cli, open_low=open_low,
                      open_high=open_high, show=show, check=check, inline=inline,
                      positional=positional, repeat=repeat)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def reuse_option(cls: type, name: str, *, default: Any = MISSING, help: str | None = None
                 ) -> Any:
    """Option ``name`` of config ``cls`` (its flag, parser, metavar, choices, range) in another
    config, with that config's ``default`` and ``help`` (the demo's ``--weights`` picks a
    preset); nesting ``cls`` shares all its options, this one."""
    f = cls.__dataclass_fields__[name]
    opt = f.metadata[_KEY] if help is None else dataclasses.replace(f.metadata[_KEY], help=help)
    return field(default=f.default if default is MISSING else default, metadata={_KEY: opt})


def flag_of(f: dataclasses.Field | type, name: str | None = None) -> str:
    """The command-line flag of a config field: ``flag_of(field)``, or ``flag_of(Config,
    "name")`` for the field ``name`` of a config class or of a config nested in it, so that
    a message names a flag from its definition (``flag_of(TrainConfig, "warmup_iters")`` is
    ``--warmup``).

    Raises:
        KeyError: ``name`` is no field of the class or of its nested configs.
    """
    if name is not None:
        found = _find_field(f, name)
        if found is None:
            raise KeyError(f"{f.__name__} has no option {name!r}")
        f = found
    opt = f.metadata.get(_KEY)
    if opt is not None and opt.positional:
        return opt.metavar or f.name  # as argparse's usage line names it
    return (opt.flag if opt is not None and opt.flag else None) or "--" + f.name.replace("_", "-")


def _find_field(cls: type, name: str) -> dataclasses.Field | None:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    for f in dataclasses.fields(cls):
        if _is_config(hints[f.name]):
            found = _find_field(hints[f.name], name)
            if found is not None:
                return found
    return None


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def range_text(lo: float | None, hi: float | None, open_low: bool = False,
               open_high: bool = False) -> str:
    """``>= 0``, ``> 0``, ``<= 1``, ``< 1``, ``in [0, 1]``, ``in (0, 1]``, ``in [0, 1)``..."""
    if lo is not None and hi is not None:
        return (f"in {'(' if open_low else '['}{_fmt(lo)}, {_fmt(hi)}"
                f"{')' if open_high else ']'}")
    if lo is not None:
        return f"{'>' if open_low else '>='} {_fmt(lo)}"
    return f"{'<' if open_high else '<='} {_fmt(hi)}"


def _outside(v: float, opt: Opt) -> bool:
    lo, hi = opt.range
    if math.isnan(v):
        return True
    if hi is not None and (v >= hi if opt.open_high else v > hi):
        return True
    return lo is not None and (v <= lo if opt.open_low else v < lo)


def _range_text(opt: Opt) -> str:
    return range_text(*opt.range, opt.open_low, opt.open_high)


def _numbers(value: Any) -> list:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, tuple | list):
        return [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    return []


def check_value(name: str, flag: str, opt: Opt, value: Any) -> None:
    """Raise a WeakpasteError naming ``name (flag)`` if ``value`` breaks ``opt``'s rules."""
    if value is None:
        return
    if opt.choices is not None:
        values = value if isinstance(value, tuple | list) else (value,)
        for v in values:
            if v not in opt.choices:
                raise WeakpasteError(f"{name} ({flag}) must be one of "
                                     f"{', '.join(map(str, opt.choices))}; got {v!r}")
    if opt.range is not None:
        for v in _numbers(value):
            if _outside(v, opt):
                raise WeakpasteError(f"{name} ({flag}) must be {_range_text(opt)}, got {v}")
    complaint = opt.check(value) if opt.check is not None else None
    if complaint:
        raise WeakpasteError(f"{name} ({flag}) {complaint}")


class Config:
    """Base of the frozen stage configs: validated once, at construction.

    Subclasses are ``@dataclass(frozen=True)`` and may override ``check`` for rules that
    involve several fields (call ``super().check()`` first).
    """

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Check every field's choices and range (raises WeakpasteError)."""
        for f in dataclasses.fields(self):
            opt = f.metadata.get(_KEY)
            if opt is not None:
                check_value(f.name, flag_of(f), opt, getattr(self, f.name))

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (validated again); a name that is no field of this
        config changes the nested config that has it, as ``build`` routes names."""
        own = {f.name for f in dataclasses.fields(self)}
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            if f.name not in changes and _is_config(hints[f.name]):
                inner = {k: v for k, v in changes.items()
                         if k not in own and _find_field(hints[f.name], k) is not None}
                if inner:
                    changes[f.name] = getattr(self, f.name).replace(**inner)
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in own})

    def to_dict(self) -> dict:
        """The settings for the manifest, nested configs as dicts (an ``inline`` one's fields
        beside this config's own)."""
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            opt = f.metadata.get(_KEY)
            if opt is not None and opt.inline:
                out.update(getattr(self, f.name).to_dict())
                del out[f.name]
        return out


def _hints(cls: type) -> dict[str, Any]:
    import sys

    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, vars(module) if module else None)


def _is_union(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union


def _unwrap_optional(tp: Any) -> Any:
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Config) and dataclasses.is_dataclass(tp)


def _checked(convert: Callable[[str], Any], name: str, opt: Opt, flag: str):
    """An argparse ``type`` that converts and checks the range at parse time."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err) or f"invalid value {text!r}") from None
        bad = [v for v in _numbers(value) if opt.range is not None and _outside(v, opt)]
        if bad:
            lo, hi = opt.range
            # A value at or past an exclusive upper bound hears that bound alone ("< 1"):
            # the edge it tried is the one that is left out.
            if opt.open_high and lo is not None and not math.isnan(bad[0]) and bad[0] >= hi:
                raise argparse.ArgumentTypeError(f"must be < {_fmt(hi)}, got {text}")
            raise argparse.ArgumentTypeError(f"must be {_range_text(opt)}, got {text}")
        return value

    parse.__name__ = convert.__name__ if hasattr(convert, "__name__") else "value"
    return parse


def _kwargs(f: dataclasses.Field, tp: Any, opt: Opt) -> dict:
    flag = flag_of(f)
    required = f.default is MISSING and f.default_factory is MISSING
    default = f.default if f.default is not MISSING else None
    kw: dict[str, Any] = {"default": default, "help": opt.help}
    if not opt.positional:
        kw["dest"] = f.name
        if required:
            kw["required"] = True
    base = _unwrap_optional(tp)
    if _is_union(base) and str in typing.get_args(base):
        base = str  # a path, ``str | os.PathLike``: the command line gives a str
    if base is bool:
        if default:
            raise TypeError(f"{f.name}: a boolean option must default to False")
        kw["action"] = "store_true"
        return kw
    if opt.metavar:
        kw["metavar"] = opt.metavar
    if opt.choices is not None and opt.parse is None:
        kw["choices"] = list(opt.choices)
    convert = opt.parse
    if convert is None:
        if opt.repeat:  # a tuple (or Sequence) of str, one per flag given
            kw["action"], kw["default"], convert = "append", list(default or ()), str
        elif typing.get_origin(base) is tuple and opt.nargs is None:
            kw["nargs"] = "+"
            elem = typing.get_args(base)[0]
            convert = elem if elem in (int, float, str) else str
        elif base in (int, float, str):
            convert = base
        else:
            raise TypeError(f"{f.name}: option type {base!r} needs parse=")
    if opt.nargs is not None:
        kw["nargs"] = opt.nargs
    if convert is not str or opt.range is not None:
        kw["type"] = _checked(convert, f.name, opt, flag)
    # By identity: ``0 in (False, ...)`` is true, which hid every default of 0 (the seeds).
    if not (default is None or default is False or default is MISSING or default == ()):
        if opt.show is not None:
            shown = opt.show(default)
        elif isinstance(default, tuple):
            shown = ("," if opt.parse is not None else " ").join(map(str, default))
        else:
            shown = default
        kw["help"] = f"{opt.help} (default: {shown})".replace("%", "%%")
    else:
        kw["help"] = opt.help.replace("%", "%%")
    return kw


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                exclude: Sequence[str] = (), defaults: dict[str, Any] | None = None,
                only: Sequence[str] | None = None) -> None:
    """Add an argument for every CLI field of config class ``cls`` (nested configs too).

    Args:
        parser: the (sub)parser or argument group.
        cls: a ``Config`` dataclass or a stage's inputs (``core.run.StageInputs``).
        exclude: field names to leave out (set by the command itself).
        only: the field names to add (e.g. two inputs of a mutually exclusive group); None:
            all.
        defaults: command-specific defaults overriding the dataclass's (the demo's output
            folder and workers); ``from_args`` then passes them on explicitly.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_config(tp) and f.name not in exclude:
            add_options(parser, tp, exclude=exclude, defaults=defaults, only=only)
            continue
        if f.name in exclude or (only is not None and f.name not in only):
            continue
        opt = f.metadata.get(_KEY)
        if opt is None or not opt.cli:
            continue
        kw = _kwargs(f, tp, opt)
        if defaults and f.name in defaults:
            kw["default"] = defaults[f.name]
            kw["help"] = kw["help"].split(" (default:")[0] + f" (default: {defaults[f.name]})"
        parser.add_argument(f.name if opt.positional else flag_of(f), **kw)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Build config ``cls`` from parsed arguments (fields not on the command line keep their
    dataclass defaults; ``overrides`` win)."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
        elif _is_config(tp):
            kwargs[f.name] = from_args(tp, args, **overrides)
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def build(cls: type, **values: Any):
    """Build config ``cls`` from flat keyword values routed to nested configs by field name,
    e.g. ``build(PasteConfig, num_images=10, placement="space-max")``."""
    return from_args(cls, argparse.Namespace(**values))


def cli_walk(cls: type, config: Config | None = None
             ) -> list[tuple[dataclasses.Field, Any, Any]]:
    """(field, class default or MISSING, value in ``config`` or None) of every command-line
    field of ``cls``, nested configs included."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        value = None if config is None else getattr(config, f.name)
        if _is_config(hints[f.name]):
            out.extend(cli_walk(hints[f.name], value))
            continue
        opt = f.metadata.get(_KEY)
        if opt is not None and opt.cli:
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else MISSING)
            out.append((f, default, value))
    return out


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """Every (field, resolved default: None where there is none) on the command line."""
    return [(f, None if d is MISSING else d) for f, d, _ in cli_walk(cls)]


def flags_of(cls: type) -> dict[str, str]:
    """Field name -> command-line flag of every CLI option of ``cls`` (nested configs too),
    to name a parameter both ways in a message."""
    return {f.name: flag_of(f) for f, _ in cli_fields(cls)}


def parse_float_pair(text: str) -> tuple[float, float]:
    """'0.3,1.0' -> (0.3, 1.0). Raises ValueError with the expected form."""
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"expected LO,HI (e.g. 0.3,1.0), got {text!r}") from None
    if hi < lo or lo <= 0:
        raise ValueError(f"expected 0 < LO <= HI, got {text!r}")
    return lo, hi


def parse_int_or_none(text: str) -> int | None:
    """'7' -> 7, 'none' (any case) -> None: an optional integer whose None is spelt on the
    command line as ``--weights`` spells it. Raises ValueError with the expected form."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer or none, got {text!r}") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``weakpaste paste: error: argument --x: ...`` and exit 2
    (argparse's default prints the whole usage first)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def seed_option(help: str = "the run's seed") -> Any:
    """A stage's ``seed`` (default 0, any integer >= 0): its random choices derive from it."""
    return option(0, range=(0, None), help=help)


def device_problem(device: Any, *, auto: bool = False) -> str | None:
    """None if ``device`` names a torch device (cpu, cuda or cuda:N; also auto where
    ``auto``), else the complaint."""
    names = ("auto", "cpu", "cuda") if auto else ("cpu", "cuda")
    if isinstance(device, str) and (device in names or (
            device.startswith("cuda:") and device[5:].isdigit())):
        return None
    return f"must be {', '.join(names)} or cuda:N, got {device!r}"


DEVICE_FLAG = "--device"
"""The flag of ``device_option`` (every stage names its field ``device``)."""


def check_device(device: str, *, auto: bool = False) -> None:
    """Raise a WeakpasteError unless ``device`` is cpu, cuda or cuda:N (or auto where
    ``auto``): the one check of every stage's ``device`` option (``device_option``)."""
    problem = device_problem(device, auto=auto)
    if problem:
        raise WeakpasteError(f"device ({DEVICE_FLAG}) {problem}")


def device_option(default: str = "cpu", *, auto: bool = False, note: str = "") -> Any:
    """The ``device`` option of a stage that runs a model (declare it as ``device: str =
    device_option(...)``): cpu, cuda or cuda:N, and auto (cuda when there is one) where
    ``auto``; checked by ``check_device``'s rule when the config is built.

    Args:
        default: the stage's default device.
        auto: whether "auto" is accepted.
        note: appended to the help text (e.g. what the stage does differently on cuda).
    """
    names = "auto, cpu, cuda or cuda:N" if auto else "cpu, cuda or cuda:N"
    return option(default, flag=DEVICE_FLAG, help=names + (f" ({note})" if note else ""),
                  check=lambda value: device_problem(value, auto=auto))
