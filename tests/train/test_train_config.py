"""weakpaste.train.config: the options of train, eval and longtail, validated once."""

from __future__ import annotations

import pytest
from train_helpers import tiny_train_config

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import build
from weakpaste.train.config import (
    EvalConfig,
    LongtailConfig,
    ModelConfig,
    TrainConfig,
    parse_fractions,
)


@pytest.mark.parametrize(("changes", "message"), [
    ({"backbone": "vgg"},
     "backbone (--backbone) must be one of resnet50, resnet34, resnet18, mobilenet_v2, "
     "mobilenet_v3; got 'vgg'"),
    ({"steps": (0.5, 2.0)}, "steps (--steps) must be in (0, 1), got 2.0"),
    ({"steps": (0.5, 1.0)}, "steps (--steps) must be in (0, 1), got 1.0"),
    ({"lr": 0.0}, "lr (--lr) must be > 0, got 0.0"),
    ({"lr": -0.1}, "lr (--lr) must be > 0, got -0.1"),
    ({"momentum": 1.0}, "momentum (--momentum) must be in [0, 1), got 1.0"),
    ({"iterations": 0}, "iterations (--iterations) must be >= 1, got 0"),
    ({"warmup_iters": -1}, "warmup_iters (--warmup) must be >= 0, got -1"),
    ({"color_prob": 1.5}, "color_prob (--color-prob) must be in [0, 1], got 1.5"),
    ({"jitter": (2.0, 1.0)}, "jitter (--jitter) needs 0 < LO <= HI, got (2.0, 1.0)"),
    ({"backbone": "resnet50", "trainable_layers": 6},
     "trainable_layers (--trainable-layers) must be <= 5 for resnet50, got 6"),
    ({"backbone": "resnet18", "trainable_layers": 6},
     "trainable_layers (--trainable-layers) must be <= 5 for resnet18, got 6"),
    ({"rpn_proposals": 1}, "rpn_proposals (--rpn-proposals) must be >= 2, got 1"),
    ({"detections_per_image": 0}, "detections_per_image (--detections) must be >= 1, got 0"),
    ({"device": "gpu"}, "device (--device) must be cpu, cuda or cuda:N, got 'gpu'"),
])
def test_bad_train_options_are_named(changes, message):
    with pytest.raises(WeakpasteError) as err:
        tiny_train_config(**changes)
    assert str(err.value) == message


def test_configs_are_frozen_and_replace_validates():
    config = TrainConfig()
    with pytest.raises(AttributeError):
        config.lr = 1.0  # type: ignore[misc]
    assert config.replace(lr=0.5).lr == 0.5
    with pytest.raises(WeakpasteError, match=r"lr \(--lr\) must be > 0"):
        config.replace(lr=0.0)


def test_model_config_round_trip_and_checks():
    config = build(ModelConfig, backbone="mobilenet_v3", class_names=("a", "b"),
                   trainable_layers=6)
    d = config.to_dict()
    assert d["class_names"] == ["a", "b"] and config.num_classes == 3
    assert ModelConfig.from_dict({**d, "unknown": 1}) == config
    with pytest.raises(WeakpasteError) as err:
        build(ModelConfig, backbone="resnet50", class_names=("a",), image_size=16)
    assert str(err.value) == "image_size (--image-size) must be >= 32, got 16"


def test_eval_and_longtail_options():
    assert EvalConfig().mask_threshold == 0.5
    with pytest.raises(WeakpasteError, match=r"mask_threshold \(--mask-threshold\) must be in"):
        EvalConfig(mask_threshold=2.0)
    with pytest.raises(WeakpasteError) as err:
        LongtailConfig(shape=0.0)
    assert str(err.value) == "shape (--shape) must be > 0, got 0.0"
    with pytest.raises(WeakpasteError) as err:
        LongtailConfig(min_count=0)
    assert str(err.value) == "min_count (--min) must be >= 1, got 0"


def test_parse_fractions():
    assert parse_fractions("0.5,0.75") == (0.5, 0.75)
    assert parse_fractions("none") == () == parse_fractions("")
    with pytest.raises(ValueError) as err:
        parse_fractions("0.5,x")
    assert str(err.value) == "expected fractions like 0.667,0.889 (or none), got '0.5,x'"
    with pytest.raises(ValueError, match=r"fractions must be in \(0, 1\), got 0.5,1"):
        parse_fractions("0.5,1")
