"""The options of ``train``, ``eval`` and ``longtail``, defined once (no torch here).

* ``TrainConfig``: everything ``weakpaste train`` is told (model, augmentation, schedule,
  sampling, checkpoints); recorded in the manifest and in every checkpoint.
* ``ModelConfig``: what rebuilds a trained Mask R-CNN (stored in each checkpoint); its fields
  share their description with ``TrainConfig``'s (``_MODEL``).
* ``EvalConfig``, ``LongtailConfig``: the settings of ``weakpaste eval`` and ``longtail``.

The command line builds its arguments from these classes (``weakpaste.core.options.add_options``),
so a default, a valid range and a help text exist once. Option ranges may exclude their lower
bound (``open_low``: a learning rate > 0); an upper bound to exclude (momentum < 1) is carried
by the field's ``parse=`` (``_below``), which refuses it at parse time and which ``check``
reads back for the Python API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import Config, Opt, check_device, flag_of, option, parse_float_pair
from weakpaste.models.weights import parse_weights

BACKBONES: tuple[str, ...] = ("resnet50", "resnet34", "resnet18", "mobilenet_v2", "mobilenet_v3")
# Backbone stages that can be trained: a ResNet and MobileNetV2 have 5, MobileNetV3-Large 6.
_MAX_LAYERS = {"resnet50": 5, "resnet34": 5, "resnet18": 5, "mobilenet_v2": 5,
               "mobilenet_v3": 6}


def _outside_below(value: float, hi: float) -> bool:
    return not value < hi  # NaN too


def _below(kind: Callable[[str], Any], hi: float):
    """A ``parse=`` for numbers that must stay below ``hi`` (option ranges include their upper
    bound); ``_Checked.check`` reads ``hi`` back from ``.below`` for the Python API."""

    def parse(text: str) -> Any:
        value = kind(text)
        if _outside_below(value, hi):
            raise ValueError(f"must be < {hi:g}, got {text}")
        return value

    parse.__name__ = getattr(kind, "__name__", "value")
    parse.below = hi  # type: ignore[attr-defined]
    return parse


def parse_fractions(text: str) -> tuple[float, ...]:
    """``--steps``: ``"0.667,0.889"`` -> (0.667, 0.889), ``"none"`` -> ().

    Raises:
        ValueError: not numbers, or a number outside (0, 1).
    """
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected fractions like 0.667,0.889 (or none), got {text!r}") from None
    if any(not 0 < v < 1 for v in values):
        raise ValueError(f"fractions must be in (0, 1), got {text}")
    return values


parse_fractions.below = 1  # type: ignore[attr-defined]


class _Checked(Config):
    """``Config`` that also checks the open upper bounds carried by ``_below`` parsers."""

    def check(self) -> None:
        # Fields with an open upper bound first, with their whole range in the message.
        for f in dataclasses.fields(self):
            opt = next((m for m in f.metadata.values() if isinstance(m, Opt)), None)
            hi = getattr(opt.parse, "below", None) if opt is not None else None
            value = getattr(self, f.name)
            if hi is None or value is None:
                continue
            lo = opt.range[0] if opt.range else None
            for v in value if isinstance(value, tuple | list) else (value,):
                if _outside_below(v, hi) or (lo is not None and (
                        not v > lo if opt.open_low else not v >= lo)):
                    bounds = (f"< {hi:g}" if lo is None else
                              f"in {'(' if opt.open_low else '['}{lo:g}, {hi:g})")
                    raise WeakpasteError(f"{f.name} ({flag_of(f)}) must be {bounds}, got {v}")
        super().check()

    def _fail(self, name: str, message: str) -> None:
        f = next(f for f in dataclasses.fields(self) if f.name == name)
        raise WeakpasteError(f"{name} ({flag_of(f)}) {message}")


# The model's options, shared by TrainConfig (the command line) and ModelConfig (checkpoints).
_MODEL: dict[str, dict[str, Any]] = {
    "backbone": dict(choices=BACKBONES,
                     help="ResNet-50 FPN (the papers' R-50), the lighter ResNet-34 or ResNet-18 "
                          "FPN (strides 4-32, for small images on a CPU), MobileNetV2 FPN "
                          "(strides 8-32, light: a CPU or small GPU), or MobileNetV3-Large "
                          "FPN (strides 32 only: for large images)"),
    "image_size": dict(range=(32, None),
                       help="training crop side; test images are resized to fit in it"),
    "trainable_layers": dict(range=(0, 6),
                             help="backbone stages to train (default: 3 with pre-trained "
                                  "weights, all without)"),
    "roi_batch": dict(range=(1, None), help="sampled RoIs per image"),
    "rpn_proposals": dict(range=(2, None),
                          help="RPN proposals per image in training (half at test time)"),
    "detections_per_image": dict(flag="--detections", range=(1, None),
                                 help="detections per image"),
}


def _check_layers(config: _Checked, backbone: str, layers: int | None) -> None:
    if layers is not None and layers > _MAX_LAYERS.get(backbone, 6):
        config._fail("trainable_layers", f"must be <= {_MAX_LAYERS[backbone]} for {backbone}, "
                                         f"got {layers}")


@dataclass(frozen=True)
class ModelConfig(_Checked):
    """Everything needed to rebuild a trained model (stored in each checkpoint).

    Attributes:
        backbone: one of ``BACKBONES``.
        class_names: the K classes; label k (1..K) is ``class_names[k - 1]``, 0 is background.
        image_size: training crops are size x size; test images are resized to fit in it.
        frozen_bn: FrozenBatchNorm2d in the backbone (pre-trained weights) instead of
            BatchNorm2d (random initialisation).
        trainable_layers: backbone stages that are trained (the others stay frozen).
        roi_batch: sampled RoIs per image for the box head.
        rpn_proposals: RPN proposals kept per image in training (half of it at test time).
        detections_per_image: most detections per image at test time.
    """

    backbone: str = option(**_MODEL["backbone"])
    class_names: tuple[str, ...] = option(help="the classes, label k is class_names[k - 1]",
                                          cli=False)
    image_size: int = option(800, **_MODEL["image_size"])
    frozen_bn: bool = option(True, cli=False,
                             help="FrozenBatchNorm2d in the backbone (pre-trained weights)")
    trainable_layers: int = option(3, **_MODEL["trainable_layers"])
    roi_batch: int = option(512, **_MODEL["roi_batch"])
    rpn_proposals: int = option(2000, **_MODEL["rpn_proposals"])
    detections_per_image: int = option(100, **_MODEL["detections_per_image"])

    def check(self) -> None:
        super().check()
        _check_layers(self, self.backbone, self.trainable_layers)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["class_names"] = tuple(kw["class_names"])
        return cls(**kw)


@dataclass(frozen=True)
class TrainConfig(_Checked):
    """Training options (the CLI flags of ``weakpaste train``)."""

    backbone: str = option("resnet50", **_MODEL["backbone"])
    weights: str | None = option(
        "DEFAULT", parse=parse_weights, metavar="DEFAULT|PATH|none",
        help="DEFAULT (torchvision ImageNet backbone, downloaded), PATH (weakpaste checkpoint, "
             "Mask R-CNN or backbone state_dict) or none")
    image_size: int = option(800, **_MODEL["image_size"])
    jitter: tuple[float, float] = option(
        (0.1, 2.0), parse=parse_float_pair, metavar="LO,HI", range=(0, None), open_low=True,
        help="large-scale jittering scale range (1,1: resize and pad only)")
    brightness: float = option(0.4, range=(0, None), help="ColorJitter brightness")
    contrast: float = option(0.4, range=(0, None), help="ColorJitter contrast")
    color_prob: float = option(0.5, range=(0, 1),
                               help="probability of the brightness/contrast jitter")
    flip_prob: float = option(0.5, range=(0, 1), help="probability of a horizontal flip")
    batch_size: int = option(8, range=(1, None), help="images per iteration")
    iterations: int = option(90000, range=(1, None), help="stage-1 iterations")
    stage2_iterations: int | None = option(None, range=(0, None), metavar="N",
                                           help="stage-2 iterations (default: --iterations)")
    lr: float = option(0.01, range=(0, None), open_low=True, help="SGD base learning rate")
    momentum: float = option(0.9, parse=_below(float, 1), range=(0, 1), help="SGD momentum")
    weight_decay: float = option(1e-4, range=(0, None), help="SGD weight decay")
    warmup_iters: int = option(1000, flag="--warmup", range=(0, None),
                               help="linear warm-up iterations")
    warmup_factor: float = option(0.001, range=(0, 1), open_low=True,
                                  help="learning-rate factor at the first iteration")
    steps: tuple[float, ...] = option(
        (0.667, 0.889), parse=parse_fractions, metavar="F,F", range=(0, 1), open_low=True,
        help="decay the rate by --gamma at these fractions of a stage (or none)")
    gamma: float = option(0.1, range=(0, 1), open_low=True,
                          help="learning-rate decay factor at each step")
    clip_grad: float = option(0.0, range=(0, None),
                              help="clip the gradient norm to this (0: no clipping)")
    repeat_threshold: float = option(
        0.001, range=(0, None),
        help="repeat-factor sampling threshold t (LVIS: 0.001); 0 switches it off")
    keep_empty: bool = option(False, help="train on images without annotations as background")
    trainable_layers: int | None = option(None, **_MODEL["trainable_layers"])
    roi_batch: int = option(512, **_MODEL["roi_batch"])
    rpn_proposals: int = option(2000, **_MODEL["rpn_proposals"])
    detections_per_image: int = option(100, **_MODEL["detections_per_image"])
    checkpoint_every: int = option(
        5000, range=(1, None), metavar="N",
        help="write OUT/checkpoints/iter_N.pt and last.pt every N iterations")
    log_every: int = option(20, range=(1, None), metavar="N",
                            help="append averaged losses, lr and it/s to OUT/metrics.jsonl")
    device: str = option("cpu", help="cpu or cuda")
    workers: int = option(0, range=(0, None), help="data loading processes")
    seed: int = option(0, range=(0, None), help="the run's seed")

    def check(self) -> None:
        super().check()
        if not 0 < self.jitter[0] <= self.jitter[1]:
            self._fail("jitter", f"needs 0 < LO <= HI, got {self.jitter}")
        _check_layers(self, self.backbone, self.trainable_layers)
        check_device(self.device)


@dataclass(frozen=True)
class EvalConfig(_Checked):
    """Options of ``weakpaste eval`` (inputs are the arguments of ``run_eval``)."""

    device: str = option("cpu", help="cpu or cuda")
    mask_threshold: float = option(
        0.5, range=(0, 1), help="mask probability above which a pixel is the instance's")

    def check(self) -> None:
        super().check()
        check_device(self.device)


@dataclass(frozen=True)
class LongtailConfig(_Checked):
    """Options of ``weakpaste longtail``: the Pareto reference of EM-Paste appendix §11."""

    shape: float = option(6.0, range=(0, None), open_low=True,
                          help="Pareto shape b (decay rate)")
    max_count: int = option(800, flag="--max", range=(1, None),
                            help="instances of the largest class")
    min_count: int = option(1, flag="--min", range=(1, None),
                            help="count the tail decays towards")
    seed: int = option(0, range=(0, None), help="seed of the image choice")

    def check(self) -> None:
        super().check()
        if self.min_count > self.max_count:
            self._fail("min_count", f"must be <= max_count (--max), got --min {self.min_count} "
                                    f"--max {self.max_count}")


__all__ = ["BACKBONES", "EvalConfig", "LongtailConfig", "ModelConfig", "TrainConfig",
           "parse_fractions"]
