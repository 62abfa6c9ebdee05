"""Options defined once: config fields -> CLI arguments -> the same config; open bounds both
ways; ``to_argv`` (the inverse of parsing) for every stage config; option ranges against the
kernels that consume them."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest

from weakpaste.cli import build_parser, main
from weakpaste.core.argv import to_argv
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

@dataclass(frozen=True)
class _Bounds(Config):
    below_one: float = option(0.5, range=(0, 1), open_high=True, help="[0, 1)")
    inside: float = option(0.5, range=(0, 1), open_low=True, open_high=True, help="(0, 1)")
    under: float = option(0.0, range=(None, 2), open_high=True, help="< 2")


@pytest.mark.parametrize(("changes", "message"), [
    ({"below_one": 1.0}, "below_one (--below-one) must be in [0, 1), got 1.0"),
    ({"inside": 0.0}, "inside (--inside) must be in (0, 1), got 0.0"),
    ({"inside": 1.0}, "inside (--inside) must be in (0, 1), got 1.0"),
    ({"under": 2.0}, "under (--under) must be < 2, got 2.0"),
])
def test_open_bounds_both_ways(changes, message, capsys):
    with pytest.raises(WeakpasteError) as err:
        _Bounds(**changes)
    assert str(err.value) == message
    assert _Bounds(below_one=0.0, inside=0.999, under=1.999).below_one == 0.0
    p = ArgumentParser(prog="t")
    add_options(p, _Bounds)
    name = next(iter(changes))
    flag = flag_of(_Bounds, name)
    with pytest.raises(SystemExit):
        p.parse_args([flag, str(changes[name])])
    assert f"argument {flag}: must be " in capsys.readouterr().err


def test_flag_of_a_class_finds_nested_fields():
    from weakpaste.mine.config import FemConfig
    from weakpaste.train.config import TrainConfig

    assert flag_of(TrainConfig, "warmup_iters") == "--warmup"
    assert flag_of(TrainConfig, "detections_per_image") == "--detections"
    assert flag_of(TrainConfig, "workers") == "--loader-workers"
    assert flag_of(FemConfig, "methods") == "--proposals"
    with pytest.raises(KeyError):
        flag_of(TrainConfig, "nothing")


def _stage_configs() -> list[Config]:
    """A default instance of every stage config (the required fields set)."""
    from weakpaste.backgrounds.run import BackgroundsConfig
    from weakpaste.bank.from_coco import BankConfig
    from weakpaste.core.runners import ExecutorConfig
    from weakpaste.demo.run import DemoConfig, demo_mine_config
    from weakpaste.mine.config import FemConfig, FreeSegConfig
    from weakpaste.paste.run import PasteConfig
    from weakpaste.report.viz import VizConfig
    from weakpaste.train.config import EvalConfig, LongtailConfig, TrainConfig

    return [FemConfig(), FreeSegConfig(), PasteConfig(num_images=3), BankConfig(), VizConfig(),
            BackgroundsConfig(), TrainConfig(), EvalConfig(), LongtailConfig(), DemoConfig(),
            ExecutorConfig(), demo_mine_config(seed=3), demo_mine_config(weights="DEFAULT")]


def _parse(cls: type, argv: list[str]) -> Config:
    p = ArgumentParser(prog="t")
    add_options(p, cls)
    return from_args(cls, p.parse_args(argv))


def _other_values(f: dataclasses.Field, default):
    """Values other than ``default`` that field ``f`` may take (some may be refused)."""
    opt = f.metadata["weakpaste"]
    if isinstance(default, bool):
        return [True]
    if opt.choices is not None:
        return [c if not isinstance(default, tuple) else (c,) for c in opt.choices
                if c != default and (c,) != default]
    if isinstance(default, tuple) and default and isinstance(default[0], int | float):
        return [tuple(v * 0.5 if isinstance(v, float) else v + 1 for v in default)]
    if isinstance(default, float):
        return [default * 0.5, default + 0.25, 0.125]
    if isinstance(default, int):
        return [default + 1, 2]
    kind = str(f.type)
    if "dict" in kind:  # read from a file (--class-weights): its own tests
        return []
    if "tuple" in kind:
        return [(0.25,)] if "float" in kind else [(3,)] if "int" in kind else [("x",)]
    return [0.25] if "float" in kind else [3] if "int" in kind else ["x"]


@pytest.mark.parametrize("config", _stage_configs(), ids=lambda c: type(c).__name__)
def test_to_argv_round_trips_every_stage_config(config):
    cls = type(config)
    assert _parse(cls, to_argv(config)) == config
    assert _parse(cls, to_argv(config, every=True)) == config
    changed = 0
    for f, default in cli_fields(cls):
        for value in _other_values(f, default):
            if value == default:
                continue
            try:
                other = config.replace(**{f.name: value})
            except (WeakpasteError, TypeError, ValueError):
                continue
            argv = to_argv(other)
            assert flag_of(f) in argv, f.name
            assert _parse(cls, argv) == other, (f.name, argv)
            changed += 1
            break
    assert changed >= 1


def test_to_argv_always_spells_the_named_fields_at_their_default():
    from weakpaste.mine.config import FemConfig

    config = FemConfig()
    assert "--seed" not in to_argv(config)
    argv = to_argv(config, always=("seed",))
    assert argv[argv.index("--seed") + 1] == "0"
    assert _parse(FemConfig, argv) == config


def _extremes(opt) -> list[float]:
    """The extreme values an option's range lets through (an open bound nudged inside; an
    unbounded side stands for a large value)."""
    lo, hi = opt.range
    out = []
    if lo is not None:
        out.append(lo + 1e-6 if opt.open_low else lo)
    out.append(1e3 if hi is None else (hi - 1e-6 if opt.open_high else hi))
    return out


def _ranged(cls: type) -> list[tuple[str, object, float]]:
    """(field, its default, an extreme value) of every ranged numeric option of ``cls``."""
    rows = []
    for f in dataclasses.fields(cls):
        opt = f.metadata.get("weakpaste")
        if opt is None or opt.range is None:
            continue
        default = f.default
        for v in _extremes(opt):
            if isinstance(default, tuple):
                v = (v, v) if len(default) == 2 else (v,)
            elif isinstance(default, int) and not isinstance(default, bool):
                if not float(v).is_integer():
                    continue
                v = int(v)
            rows.append((f.name, default, v))
    return rows


def _paste_kernels(plan_params, render_params) -> None:
    from weakpaste.paste.plan import plan_image
    from weakpaste.paste.render import render

    rng = np.random.default_rng(0)
    bg = np.full((64, 64, 3), 90, np.uint8)
    bg_masks = np.zeros((1, 64, 64), bool)
    bg_masks[0, 5:20, 5:30] = True
    occupied = bg_masks.any(0)
    seg_mask = np.zeros((16, 12), bool)
    seg_mask[2:14, 2:10] = True
    segments = [(np.full((16, 12, 3), 200, np.uint8), seg_mask, "obj")] * 2
    plan = plan_image(rng, image_hw=(64, 64), segment_ids=np.array([1, 2]),
                      masks=[s[1] for s in segments], occupied=occupied, params=plan_params)
    render(bg, bg_masks, ("old",), segments[:len(plan.segment_ids)], plan, render_params)


def _paste_cases():
    from weakpaste.paste.plan import PLACEMENTS, PlanParams
    from weakpaste.paste.render import RenderParams

    cases = [(cls, name, v, placement) for cls in (PlanParams, RenderParams)
             for name, _, v in _ranged(cls) for placement in PLACEMENTS]
    return [pytest.param(*c, id=f"{c[0].__name__}.{c[1]}={c[2]}-{c[3]}") for c in cases]


@pytest.mark.parametrize(("cls", "name", "value", "placement"), _paste_cases())
def test_paste_kernels_take_every_value_their_options_let_through(cls, name, value,
                                                                  placement):
    """A value at an extreme of an option's range is refused by the config in one line, or
    the planning and rendering kernels take it (never a worker's traceback)."""
    from weakpaste.paste.plan import PlanParams
    from weakpaste.paste.render import RenderParams

    try:
        params = cls(**{name: value})
    except WeakpasteError:
        return
    for blend in ("none", "gaussian", "poisson"):
        plan = (params if cls is PlanParams else PlanParams()).replace(placement=placement,
                                                                       blend=(blend,))
        _paste_kernels(plan, params if cls is RenderParams else RenderParams())


@pytest.mark.parametrize(("name", "value"),
                         [(n, v) for n, _, v in _ranged(__import__(
                             "weakpaste.train.config", fromlist=["TrainConfig"]).TrainConfig)
                          if n in ("warmup_iters", "warmup_factor", "steps", "gamma")])
def test_learning_rate_schedule_takes_every_value_its_options_let_through(name, value):
    from weakpaste.train.config import TrainConfig
    from weakpaste.train.loop import lr_factor

    try:
        config = build(TrainConfig, **{name: value})
    except WeakpasteError:
        return
    for i in (0, 1, 50, 99):
        factor = lr_factor(i, 100, warmup_iters=config.warmup_iters,
                           warmup_factor=config.warmup_factor, steps=config.steps,
                           gamma=config.gamma)
        assert math.isfinite(factor) and factor > 0, (name, value, i)


def test_reuse_option_keeps_the_declaration_and_takes_a_new_default_and_help():
    from weakpaste.core.options import reuse_option

    @dataclass(frozen=True)
    class Source(Config):
        size: int = option(8, range=(1, None), metavar="N", help="the size")

    @dataclass(frozen=True)
    class User(Config):
        size: int | None = reuse_option(Source, "size", default=None, help="its size, or none")

    assert User().size is None
    with pytest.raises(WeakpasteError, match=r"^size \(--size\) must be >= 1, got 0$"):
        User(size=0)
    parser = argparse.ArgumentParser()
    add_options(parser, User)
    action = next(a for a in parser._actions if a.dest == "size")
    assert (action.metavar, action.help) == ("N", "its size, or none")
    assert Source.__dataclass_fields__["size"].metadata["weakpaste"].help == "the size"


def test_seed_option_is_zero_by_default_and_refuses_a_negative_seed():
    from weakpaste.core.options import seed_option

    @dataclass(frozen=True)
    class Seeded(Config):
        seed: int = seed_option("the draw's seed")

    assert Seeded().seed == 0 and Seeded(seed=7).seed == 7
    with pytest.raises(WeakpasteError, match=r"^seed \(--seed\) must be >= 0, got -1$"):
        Seeded(seed=-1)
    parser = argparse.ArgumentParser()
    add_options(parser, Seeded)
    assert next(a for a in parser._actions if a.dest == "seed").help == (
        "the draw's seed (default: 0)")
