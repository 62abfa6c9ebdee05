"""Options defined once: config fields -> CLI arguments -> the same config."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from weakpaste.cli import build_parser, main
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import (
    ArgumentParser,
    Config,
    add_options,
    build,
    cli_fields,
    flag_of,
    from_args,
    option,
    parse_int_or_none,
)


@dataclass(frozen=True)
class _Inner(Config):
    sigma: float = option(2.0, range=(0, None), help="a sigma")


@dataclass(frozen=True)
class _Outer(Config):
    count: int = option(help="how many", range=(1, None))
    ratio: float | None = option(None, range=(0, 1), help="a fraction")
    mode: str = option("a", choices=("a", "b"), help="the mode")
    names: tuple[str, ...] | None = option(None, help="some names")
    scale: float = option(1.0, range=(0, None), open_low=True, help="a positive scale")
    flag: bool = option(False, help="a switch")
    inner: _Inner = option(factory=_Inner, help="nested settings")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="t")
    add_options(p, _Outer)
    return p


def test_round_trip_defaults_and_values():
    args = _parser().parse_args(["--count", "3", "--names", "x", "y", "--sigma", "0.5",
                                 "--flag"])
    cfg = from_args(_Outer, args)
    assert cfg == _Outer(count=3, names=("x", "y"), flag=True, inner=_Inner(sigma=0.5))
    assert from_args(_Outer, _parser().parse_args(["--count", "1"])) == _Outer(count=1)


def test_build_routes_flat_values_to_nested_configs():
    assert build(_Outer, count=2, sigma=4.0).inner.sigma == 4.0


def test_construction_validates_and_names_the_parameter_both_ways():
    with pytest.raises(WeakpasteError) as err:
        _Outer(count=0)
    assert str(err.value) == "count (--count) must be >= 1, got 0"
    with pytest.raises(WeakpasteError) as err:
        _Outer(count=1, ratio=1.5)
    assert str(err.value) == "ratio (--ratio) must be in [0, 1], got 1.5"
    with pytest.raises(WeakpasteError) as err:
        _Outer(count=1, scale=0.0)
    assert str(err.value) == "scale (--scale) must be > 0, got 0.0"
    with pytest.raises(WeakpasteError) as err:
        _Outer(count=1, mode="c")
    assert str(err.value) == "mode (--mode) must be one of a, b; got 'c'"
    with pytest.raises(WeakpasteError) as err:
        _Inner(sigma=float("nan"))
    assert str(err.value) == "sigma (--sigma) must be >= 0, got nan"
    cfg = _Outer(count=1)
    with pytest.raises(WeakpasteError, match=r"^count \(--count\) must be >= 1, got -2$"):
        cfg.replace(count=-2)


def test_parse_time_range_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--count", "1", "--sigma", "-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "t: error: argument --sigma: must be >= 0, got -1 (see 't --help')\n"


def test_required_field_is_required_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args([])
    assert "the following arguments are required: --count" in capsys.readouterr().err


def test_cli_fields_lists_nested_fields_with_their_defaults():
    names = {f.name: d for f, d in cli_fields(_Outer)}
    assert names["sigma"] == 2.0 and names["count"] is None and "inner" not in names
    assert [flag_of(f) for f, _ in cli_fields(_Inner)] == ["--sigma"]


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path, config", [
    (("paste",), "weakpaste.paste.run:PasteConfig"),
    (("bank", "from-coco"), "weakpaste.bank.from_coco:BankConfig"),
    (("viz",), "weakpaste.report.viz:VizConfig"),
    (("demo",), "weakpaste.demo.run:DemoConfig"),
])
def test_every_cli_default_equals_the_dataclass_default(path, config):
    import importlib

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    parser = _subparser(build_parser(), *path)
    by_dest = {a.dest: a for a in parser._actions}
    for f, default in cli_fields(cls):
        action = by_dest[f.name]
        assert action.option_strings == [flag_of(f)]
        assert action.default == default, f.name


def test_cli_refuses_out_of_range_numbers_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["paste", "--bank", str(tmp_path), "--out", str(tmp_path / "o"),
              "--num-images", "2", "--blur-sigma", "-1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err == ("weakpaste paste: error: argument --blur-sigma: must be >= 0, got -1 "
                   "(see 'weakpaste paste --help')\n")


def test_a_default_of_zero_is_shown_in_help():
    @dataclass(frozen=True)
    class Zeros(Config):
        seed: int = option(0, help="a seed")
        weight: float = option(0.0, help="a weight")
        off: bool = option(False, help="a switch")

    p = ArgumentParser(prog="t")
    add_options(p, Zeros)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["seed"] == "a seed (default: 0)"
    assert helps["weight"] == "a weight (default: 0.0)"
    assert helps["off"] == "a switch"


def test_parse_int_or_none():
    assert parse_int_or_none("7") == 7
    assert parse_int_or_none("none") is None and parse_int_or_none("NONE") is None
    with pytest.raises(ValueError, match=r"^expected an integer or none, got '1.5'$"):
        parse_int_or_none("1.5")


def _commands(parser: argparse.ArgumentParser, path=()):
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        yield " ".join(path), parser
        return
    for name, child in sub.choices.items():
        yield from _commands(child, (*path, name))


def test_every_default_in_help_is_in_the_form_its_flag_reads():
    """--objects showed its default (4, 4) as '4,4', which --objects refuses."""
    import re

    checked = 0
    for command, parser in _commands(build_parser()):
        for action in parser._actions:
            found = re.search(r"\(default: (.*)\)$", action.help or "")
            if found is None or action.default is None or action.type is None:
                continue
            words = found.group(1).split() if action.nargs == "+" else [found.group(1)]
            read = [action.type(w) for w in words]
            assert (read if action.nargs == "+" else read[0]) == (
                list(action.default) if action.nargs == "+" else action.default), \
                (command, action.dest, found.group(1))
            checked += 1
    assert checked > 50
    paste = _subparser(build_parser(), "paste")
    objects = next(a for a in paste._actions if a.dest == "objects")
    assert objects.help == "objects pasted per image, fixed or a range (default: 4)"


def test_every_argument_of_every_command_has_help():
    """bank info's BANK, viz's COCO_JSON and --out, stats' COCO_JSON had none."""
    missing = [(command, action.dest) for command, parser in _commands(build_parser())
               for action in parser._actions if not action.help]
    assert missing == []
    helps = {(c, a.dest): a.help for c, p in _commands(build_parser()) for a in p._actions}
    assert helps["bank info", "bank"] == ("segment bank folder (made by 'bank from-coco' or "
                                          "'mine')")
    assert helps["viz", "out"] == "output folder: the drawn images and contact_sheet.png"
    assert helps["viz", "coco_json"] == helps["stats", "coco_json"] == (
        "COCO or LVIS instances JSON with masks (polygons or RLE)")
