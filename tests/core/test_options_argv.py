"""Open bounds both ways, ``to_argv`` (the inverse of parsing) for every stage config, and
option ranges against the kernels that consume them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest

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
)


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
