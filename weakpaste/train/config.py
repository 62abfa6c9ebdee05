"""The options of ``train``, ``eval`` and ``longtail``, defined once (no torch here).

* ``TrainConfig``: everything ``weakpaste train`` is told (model, augmentation, schedule,
  sampling, checkpoints); recorded in the manifest and in every checkpoint.
* ``ModelOptions``: the architecture's options, nested in ``TrainConfig`` and in
  ``ModelConfig``, what rebuilds a trained Mask R-CNN (stored in each checkpoint).
* ``EvalConfig``, ``LongtailConfig``: the settings of ``weakpaste eval`` and ``longtail``.

The command line builds its arguments from these classes (``weakpaste.core.options.add_options``),
so a default, a valid range and a help text exist once.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import (
    Config,
    build,
    device_option,
    flag_of,
    option,
    parse_float_pair,
    seed_option,
)
from weakpaste.models.weights import parse_weights

BACKBONES: tuple[str, ...] = ("resnet50", "resnet34", "resnet18", "mobilenet_v2", "mobilenet_v3")
# Backbone stages that can be trained: a ResNet and MobileNetV2 have 5, MobileNetV3-Large 6.
_MAX_LAYERS = {"resnet50": 5, "resnet34": 5, "resnet18": 5, "mobilenet_v2": 5,
               "mobilenet_v3": 6}


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


def _fail(cls: type, name: str, message: str) -> typing.NoReturn:
    raise WeakpasteError(f"{name} ({flag_of(cls, name)}) {message}")


@dataclass(frozen=True)
class ModelOptions(Config):
    """The architecture options of Mask R-CNN, nested in ``TrainConfig`` (the command line)
    and in ``ModelConfig`` (checkpoints); recorded inline in both, as before the split.

    Attributes:
        backbone: one of ``BACKBONES``.
        image_size: training crops are size x size; test images are resized to fit in it.
        trainable_layers: backbone stages that are trained (the others stay frozen); None:
            torchvision's choice, 3 with pre-trained weights, all without.
        roi_batch: sampled RoIs per image for the box head.
        rpn_proposals: RPN proposals kept per image in training (half of it at test time).
        detections_per_image: most detections per image at test time.
    """

    backbone: str = option(
        "resnet50", choices=BACKBONES,
        help="ResNet-50 FPN (the papers' R-50), the lighter ResNet-34 or ResNet-18 FPN "
             "(strides 4-32, for small images on a CPU), MobileNetV2 FPN (strides 8-32, "
             "light: a CPU or small GPU), or MobileNetV3-Large FPN (strides 32 only: for "
             "large images)")
    image_size: int = option(800, range=(32, None),
                             help="training crop side; test images are resized to fit in it")
    trainable_layers: int | None = option(None, range=(0, 6),
                                          help="backbone stages to train (default: 3 with "
                                               "pre-trained weights, all without)")
    roi_batch: int = option(512, range=(1, None), help="sampled RoIs per image")
    rpn_proposals: int = option(2000, range=(2, None),
                                help="RPN proposals per image in training (half at test time)")
    detections_per_image: int = option(100, flag="--detections", range=(1, None),
                                       help="detections per image")

    def check(self) -> None:
        super().check()
        layers, most = self.trainable_layers, _MAX_LAYERS.get(self.backbone, 6)
        if layers is not None and layers > most:
            _fail(ModelOptions, "trainable_layers",
                  f"must be <= {most} for {self.backbone}, got {layers}")


@dataclass(frozen=True)
class ModelConfig(Config):
    """Everything needed to rebuild a trained model (stored in each checkpoint).

    Attributes:
        options: the architecture (``ModelOptions``; a run's ``trainable_layers`` is
            resolved, never None, in its checkpoints).
        class_names: the K classes; label k (1..K) is ``class_names[k - 1]``, 0 is background.
        frozen_bn: FrozenBatchNorm2d in the backbone (pre-trained weights) instead of
            BatchNorm2d (random initialisation).
    """

    options: ModelOptions = option(factory=ModelOptions, inline=True,
                                   help="the architecture")
    class_names: tuple[str, ...] = option((), cli=False,
                                          help="the classes, label k is class_names[k - 1]")
    frozen_bn: bool = option(True, cli=False,
                             help="FrozenBatchNorm2d in the backbone (pre-trained weights)")

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelConfig:
        """The config of a checkpoint's ``model_config`` (keys it does not know are left)."""
        known = {f.name for f in (*dataclasses.fields(cls), *dataclasses.fields(ModelOptions))}
        kw = {k: v for k, v in d.items() if k in known}
        kw["class_names"] = tuple(kw.get("class_names", ()))
        return build(cls, **kw)


@dataclass(frozen=True)
class TrainConfig(Config):
    """Training options (the CLI flags of ``weakpaste train``)."""

    model: ModelOptions = option(factory=ModelOptions, inline=True, help="the model")
    weights: str | None = option(
        "DEFAULT", parse=parse_weights, metavar="DEFAULT|PATH|none",
        help="DEFAULT (torchvision ImageNet backbone, downloaded), PATH (weakpaste checkpoint, "
             "Mask R-CNN or backbone state_dict) or none")
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
    momentum: float = option(0.9, range=(0, 1), open_high=True, help="SGD momentum")
    weight_decay: float = option(1e-4, range=(0, None), help="SGD weight decay")
    warmup_iters: int = option(1000, flag="--warmup", range=(0, None),
                               help="linear warm-up iterations")
    warmup_factor: float = option(0.001, range=(0, 1), open_low=True,
                                  help="learning-rate factor at the first iteration")
    steps: tuple[float, ...] = option(
        (0.667, 0.889), parse=parse_fractions, metavar="F,F", range=(0, 1), open_low=True,
        open_high=True, help="decay the rate by --gamma at these fractions of a stage (or none)")
    gamma: float = option(0.1, range=(0, 1), open_low=True,
                          help="learning-rate decay factor at each step")
    clip_grad: float = option(0.0, range=(0, None),
                              help="clip the gradient norm to this (0: no clipping)")
    repeat_threshold: float = option(
        0.001, range=(0, None),
        help="repeat-factor sampling threshold t (LVIS: 0.001); 0 switches it off")
    keep_empty: bool = option(False, help="train on images without annotations as background")
    checkpoint_every: int = option(
        5000, range=(1, None), metavar="N",
        help="write OUT/checkpoints/iter_N.pt and last.pt every N iterations")
    log_every: int = option(20, range=(1, None), metavar="N",
                            help="append averaged losses, lr and it/s to OUT/metrics.jsonl")
    device: str = device_option("cpu")
    # Recorded as "workers" (the manifests' and checkpoints' key); on the command line
    # --loader-workers, since --workers of every other command runs items in processes.
    workers: int = option(0, flag="--loader-workers", range=(0, None), metavar="N",
                          help="data-loading processes (torch DataLoader workers) that read "
                               "and augment the training images")
    seed: int = seed_option()

    def check(self) -> None:
        super().check()
        if not 0 < self.jitter[0] <= self.jitter[1]:
            _fail(TrainConfig, "jitter", f"needs 0 < LO <= HI, got {self.jitter}")


@dataclass(frozen=True)
class EvalConfig(Config):
    """Options of ``weakpaste eval`` (inputs are the arguments of ``run_eval``)."""

    device: str = device_option("cpu")
    mask_threshold: float = option(
        0.5, range=(0, 1), help="mask probability above which a pixel is the instance's")


@dataclass(frozen=True)
class LongtailConfig(Config):
    """Options of ``weakpaste longtail``: the Pareto reference of EM-Paste appendix §11."""

    shape: float = option(6.0, range=(0, None), open_low=True,
                          help="Pareto shape b (decay rate)")
    max_count: int = option(800, flag="--max", range=(1, None),
                            help="instances of the largest class")
    min_count: int = option(1, flag="--min", range=(1, None),
                            help="count the tail decays towards")
    seed: int = seed_option("seed of the image choice")

    def check(self) -> None:
        super().check()
        if self.min_count > self.max_count:
            low, high = (flag_of(LongtailConfig, n) for n in ("min_count", "max_count"))
            _fail(LongtailConfig, "min_count",
                  f"must be <= max_count ({high}), got {low} {self.min_count} {high} "
                  f"{self.max_count}")


__all__ = ["BACKBONES", "EvalConfig", "LongtailConfig", "ModelConfig", "TrainConfig",
           "ModelOptions", "parse_fractions"]
