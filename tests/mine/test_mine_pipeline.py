"""The mining pipeline's shared parts: CLI sub-commands and alias, defaults, resume checks."""

import json
from pathlib import Path

import pytest

from weakpaste.cli import build_parser, main
from weakpaste.cli.mine import rewrite_alias
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.manifest import jsonable
from weakpaste.core.options import cli_fields, flag_of, from_args
from weakpaste.mine.config import ClassifierSpec, FemConfig, FemParams, FreeSegConfig
from weakpaste.mine.pipeline import check_resumable, option_flags, run_config


@pytest.mark.parametrize("argv, expected", [
    (["mine", "--method", "freeseg", "--images", "i"], ["mine", "freeseg", "--images", "i"]),
    (["mine", "--images", "i", "--method=fem"], ["mine", "fem", "--images", "i"]),
    (["mine", "--images", "i", "--out", "o"], ["mine", "fem", "--images", "i", "--out", "o"]),
    (["mine", "freeseg", "--images", "i"], ["mine", "freeseg", "--images", "i"]),
    (["mine", "--help"], ["mine", "--help"]),
    (["mine"], ["mine"]),
    (["paste", "--method", "x"], ["paste", "--method", "x"]),
])
def test_rewrite_alias(argv, expected):
    assert rewrite_alias(argv) == expected


@pytest.mark.parametrize("method, config", [("fem", FemConfig), ("freeseg", FreeSegConfig)])
def test_cli_defaults_equal_config_defaults(method, config):
    args = build_parser().parse_args(["mine", method, "--images", "i", "--out", "o"])
    fields = cli_fields(config)
    assert len(fields) >= 15
    for f, default in fields:
        assert getattr(args, f.name) == default, flag_of(f)
    assert from_args(config, args) == config()


def test_each_method_lists_only_its_options(capsys):
    # (F-EM's --rank would pass as an abbreviation of FreeSeg's --rank-by)
    for argv in (["mine", "freeseg", "--images", "i", "--out", "o", "--pick", "evidence"],
                 ["mine", "--method", "freeseg", "--images", "i", "--out", "o", "--em-iters",
                  "1"],
                 ["mine", "fem", "--images", "i", "--out", "o", "--lore-steps", "2"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err


def test_config_values_are_checked_once_both_ways(capsys):
    with pytest.raises(WeakpasteError) as err:
        FreeSegConfig(min_drop=1.5)
    assert str(err.value) == "min_drop (--min-drop-rate) must be in [0, 1], got 1.5"
    with pytest.raises(SystemExit):
        main(["mine", "freeseg", "--images", "i", "--out", "o", "--min-drop-rate", "1.5"])
    assert "argument --min-drop-rate: must be in [0, 1], got 1.5" in capsys.readouterr().err
    with pytest.raises(WeakpasteError) as err:
        FemParams(methods=("slic", "sam"))
    assert str(err.value) == ("methods (--proposals) has sam, which needs the SAM weights: "
                              "pass sam_checkpoint (--sam-checkpoint PATH)")
    assert main(["mine", "fem", "--images", "i", "--out", "o", "--sam-checkpoint", "s.pth"]) == 2
    assert capsys.readouterr().err.strip() == (
        "weakpaste: error: sam_checkpoint (--sam-checkpoint) is set but methods (--proposals) "
        "has no sam; add sam to --proposals or drop --sam-checkpoint")
    assert ClassifierSpec(weights="none").weights == "none"
    args = build_parser().parse_args(["mine", "fem", "--images", "i", "--out", "o",
                                      "--weights", "none"])
    assert from_args(FemConfig, args).model.weights is None


# ------------------------------------------------------------------ resume checks


def _old_manifest(config: FemConfig, inputs: dict) -> dict:
    from weakpaste.mine.fem import FemMiner

    return {"config": run_config(FemMiner(config), Path("imgs"), "labels.json", {}),
            "inputs": inputs}


def _check(tmp_path, old: dict, config, inputs: dict, miner=None):
    from weakpaste.mine.fem import FemMiner

    miner = miner or FemMiner(config)
    new = run_config(miner, Path("elsewhere/imgs"), "other.json", {})
    check_resumable(tmp_path, old, new, inputs, option_flags(config), {})


def test_check_resumable_values(tmp_path):
    inputs = {"images": "a" * 64, "labels": "b" * 64}
    old = _old_manifest(FemConfig(), inputs)
    # The same options and inputs (other paths to them): accepted.
    _check(tmp_path, old, FemConfig(), dict(inputs))
    fix = "; rerun with that run's options and inputs, or pass --overwrite instead of --resume"
    cases = [
        (FemConfig(model=ClassifierSpec(epochs=2)), inputs,
         "epochs (--epochs) was 30, now 2"),
        (FemConfig(params=FemParams(cam_threshold=0.3)), inputs,
         "cam_threshold (--cam-threshold) was 0.5, now 0.3"),
        (FemConfig(params=FemParams(methods=("slic",))), inputs,
         'methods (--proposals) was ["felzenszwalb", "slic"], now ["slic"]'),
        (FemConfig(), {**inputs, "labels": "c" * 64}, "the labels file changed since that run"),
        (FemConfig(), {**inputs, "images": "c" * 64}, "the images changed since that run"),
        (FemConfig(), {**inputs, "classifier": "d" * 64},
         "the classifier changed since that run"),
    ]
    for config, new_inputs, what in cases:
        with pytest.raises(WeakpasteError) as err:
            _check(tmp_path, old, config, new_inputs)
        assert str(err.value) == f"{tmp_path}: cannot resume: {what}{fix}"


def test_check_resumable_other_method_and_changed_image(tmp_path):
    from weakpaste.mine.freeseg import FreeSegMiner

    inputs = {"images": "a" * 64}
    old = _old_manifest(FemConfig(), inputs)
    with pytest.raises(WeakpasteError, match=r"cannot resume: it was mined with 'mine fem', "
                                             r"this is 'mine freeseg'; rerun"):
        _check(tmp_path, old, FemConfig(), inputs, FreeSegMiner(FreeSegConfig()))
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "images.json").write_text(json.dumps({"a.png": "1", "b.png": "2"}))
    for hashes, detail in (({"a.png": "1", "b.png": "3"}, "b.png differs"),
                           ({"a.png": "1", "b.png": "2", "c.png": "4"}, "c.png is new"),
                           ({"a.png": "1"}, "b.png is gone")):
        with pytest.raises(WeakpasteError, match=rf"the images changed since that run "
                                                 rf"\({detail}\); rerun"):
            check_resumable(tmp_path, old, old["config"], {"images": "x"}, {}, hashes)


def test_jsonable():
    import numpy as np

    assert jsonable({"a": np.arange(2), "b": (1, 2), "c": object}) == {
        "a": [0, 1], "b": [1, 2], "c": "<class 'object'>"}
