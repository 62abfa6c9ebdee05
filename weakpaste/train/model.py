"""Mask R-CNN: construction, initial weights, checkpoints and the device.

* ``build_model``: torchvision's Mask R-CNN on a ResNet-50 FPN (``resnet50``, the papers'
  R-50), a ResNet-34 or ResNet-18 FPN (``resnet34``, ``resnet18``: light, with the same
  strides 4-32, for small images on a CPU), a MobileNetV2 FPN (``mobilenet_v2``: strides
  8-32, light, GroupNorm in the FPN) or a MobileNetV3-Large FPN (``mobilenet_v3``: light, but
  both its levels have stride 32, a 4 x 4 map at 128 pixels) backbone. Weights (resolved by
  ``weakpaste.models.weights.resolve_weights``, as for the mining classifier): ``DEFAULT``
  (torchvision's ImageNet backbone weights: the weakly-supervised setting of EM-Paste §4.1; a
  detector pre-trained on COCO masks would leak mask supervision), a local file (a weakpaste
  checkpoint, a Mask R-CNN state_dict, or a torchvision classification state_dict of the
  backbone, read by ``weakpaste.models.backbones.read_state_dict``), or none (random
  initialisation under the run's seed).
* ``save_checkpoint`` / ``link_or_copy`` write atomically; ``load_checkpoint`` and
  ``model_from_checkpoint`` read them back.
* ``resolve_device``: the torch device of ``--device``.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weakpaste import __version__
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.errors import reason as _reason
from weakpaste.core.options import flag_of
from weakpaste.models.backbones import (
    default_weights_error,
    read_state_dict,
    read_weakpaste_file,
    seeded,
)
from weakpaste.models.device import resolve_device
from weakpaste.models.weights import WeightsArg, is_none, resolve_weights
from weakpaste.train.config import (
    _MAX_LAYERS,
    BACKBONES,
    ModelConfig,
    ModelOptions,
    TrainConfig,
)

FORMAT = "weakpaste-maskrcnn"
FORMAT_VERSION = 1
CHECKPOINT_FIX = ("pass a checkpoint written by 'weakpaste train' "
                  "(e.g. OUT/checkpoints/last.pt)")
# torchvision's anchor sizes for 800-pixel inputs; scaled with --image-size.
_BASE_ANCHORS = (32, 64, 128, 256, 512)
_TORCHVISION_NAMES = {"resnet50": "resnet50", "resnet34": "resnet34", "resnet18": "resnet18",
                      "mobilenet_v2": "mobilenet_v2", "mobilenet_v3": "mobilenet_v3_large"}
# MobileNetV2's ``features``: the first block of each of its 5 stages (strides 2, 4, 8, 16, 32;
# --trainable-layers counts them from the top) and the last block of the stride-8, -16 and -32
# stages, whose outputs (32, 96 and 1280 channels) feed the FPN.
_MNV2_STAGES = (0, 2, 4, 7, 14)
_MNV2_RETURNED = (6, 13, 18)
# Backbones whose torchvision classifier keeps its trunk under "features." (the rest: the root).
_FEATURES_PREFIX = ("mobilenet_v2", "mobilenet_v3")


def default_trainable_layers(backbone: str, pretrained: bool) -> int:
    """torchvision's choice: 3 stages with pre-trained weights, all of them without."""
    if pretrained:
        return 3
    return _MAX_LAYERS[backbone]


def model_config_for(config: TrainConfig, class_names: tuple[str, ...]) -> ModelConfig:
    """The architecture a training run builds: ``config``'s options for these classes."""
    pretrained = not is_none(config.weights)
    return ModelConfig(options=config.model.replace(trainable_layers=_layers(config.model,
                                                                             pretrained)),
                       class_names=class_names, frozen_bn=pretrained)


def _layers(arch: ModelOptions, pretrained: bool) -> int:
    """The trainable backbone stages: ``arch``'s, else torchvision's choice."""
    if arch.trainable_layers is not None:
        return arch.trainable_layers
    return default_trainable_layers(arch.backbone, pretrained)


def _anchor_sizes(image_size: int) -> tuple[int, ...]:
    # Anchors follow the input size so that they cover the same fraction of the image as
    # torchvision's defaults do at 800 pixels.
    scale = image_size / 800.0
    return tuple(max(4, int(round(s * scale))) for s in _BASE_ANCHORS)


def _imagenet_weights(backbone: str):
    from torchvision.models import get_model_weights

    return get_model_weights(_TORCHVISION_NAMES[backbone]).DEFAULT


def _backbone(config: ModelConfig, imagenet) -> tuple[nn.Module, Any, list[str]]:
    """(FPN backbone, anchor generator, RoI feature levels) of ``config``."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    arch = config.options
    layers = _layers(arch, config.frozen_bn)
    norm = FrozenBatchNorm2d if config.frozen_bn else nn.BatchNorm2d
    sizes = _anchor_sizes(arch.image_size)
    if arch.backbone == "mobilenet_v2":
        # Levels of strides 8, 16, 32 (+ 64 from max-pooling): MobileNetV2's three deepest
        # stages. torchvision's five anchor sizes (32-512 at 800 px) on four levels: two per
        # level, (32, 64) at stride 8 up to (256, 512) at stride 64, so that the smallest
        # objects keep an anchor without a stride-4 level.
        pairs = tuple((a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        return (_mobilenet_v2_fpn(imagenet, norm, layers),
                AnchorGenerator(pairs, ((0.5, 1.0, 2.0),) * 4), ["0", "1", "2"])
    if arch.backbone.startswith("resnet"):
        backbone = resnet_fpn_backbone(backbone_name=arch.backbone, weights=imagenet,
                                       norm_layer=norm, trainable_layers=layers)
        return (backbone, AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * 5),
                ["0", "1", "2", "3"])
    backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=imagenet,
                                  fpn=True, norm_layer=norm,
                                  trainable_layers=layers)
    return backbone, AnchorGenerator((sizes,) * 3, ((0.5, 1.0, 2.0),) * 3), ["0", "1"]


def _mobilenet_v2_fpn(imagenet, norm: type[nn.Module], trainable_layers: int) -> nn.Module:
    """An FPN (256 channels) over MobileNetV2's stride-8/16/32 stages.

    torchvision's ``mobilenet_backbone`` finds stages by the ``_is_cn`` mark that only
    MobileNetV3's blocks carry, so for MobileNetV2 it would return the stem and the last layer
    only; the stages are named here instead.
    """
    from torchvision.models import mobilenet_v2
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    features = mobilenet_v2(weights=imagenet, norm_layer=norm).features
    stages = len(_MNV2_STAGES)
    frozen = len(features) if trainable_layers == 0 else _MNV2_STAGES[stages - trainable_layers]
    for block in features[:frozen]:
        block.requires_grad_(False)
    channels = [features[i].out_channels for i in _MNV2_RETURNED]
    # GroupNorm in the FPN: MobileNetV2's stage outputs are linear bottlenecks (no ReLU), 5-10x
    # larger than a ResNet's; un-normalised, they gave mask logits of +-20 at initialisation
    # (mask loss 19.6, not 0.69) and the loss diverged within 15 iterations at lr 0.02.
    return BackboneWithFPN(features, {str(i): str(k) for k, i in enumerate(_MNV2_RETURNED)},
                           channels, 256, extra_blocks=LastLevelMaxPool(),
                           norm_layer=functools.partial(nn.GroupNorm, 32))


def build_model(config: ModelConfig, *, weights: WeightsArg = None,
                seed: int = 0) -> tuple[nn.Module, list[str]]:
    """Build a Mask R-CNN.

    Args:
        config: architecture (see ``ModelConfig``).
        weights: "DEFAULT" (torchvision's ImageNet backbone weights, downloaded by
            torchvision into its cache), a path (see ``load_weights_file``) or None / "none".
        seed: seeds the random initialisation (inside a forked torch RNG, so nothing else is
            affected).

    Returns:
        (the model on the CPU in train mode, notes about what was loaded).

    Raises:
        WeakpasteError: DEFAULT weights cannot be fetched, or the file does not fit.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.ops import MultiScaleRoIAlign

    arch = config.options
    source = resolve_weights(weights)
    imagenet = _imagenet_weights(arch.backbone) if source.kind == "default" else None
    with seeded(seed):
        try:
            backbone, anchors, levels = _backbone(config, imagenet)
        except Exception as err:
            if imagenet is None:
                raise
            raise default_weights_error(_TORCHVISION_NAMES[arch.backbone], err) from None
        half = max(1, arch.rpn_proposals // 2)
        model = MaskRCNN(
            backbone, num_classes=config.num_classes, min_size=arch.image_size,
            max_size=arch.image_size, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
            mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
            rpn_pre_nms_top_n_train=arch.rpn_proposals,
            rpn_post_nms_top_n_train=arch.rpn_proposals,
            rpn_pre_nms_top_n_test=half, rpn_post_nms_top_n_test=half,
            box_batch_size_per_image=arch.roi_batch,
            box_detections_per_img=arch.detections_per_image)
    notes = []
    if imagenet is not None:
        notes.append(f"backbone initialised with torchvision's {imagenet} weights")
    elif source.kind == "file":
        notes.append(load_weights_file(model, source.path, arch.backbone))
    return model, notes


def load_weights_file(model: nn.Module, path: Path, backbone: str) -> str:
    """Initialise ``model`` from a local file; returns a note saying what was loaded.

    Accepted: a weakpaste checkpoint, a Mask R-CNN state_dict (class-specific head tensors
    whose shape differs, e.g. another number of classes, keep their initial values), or a
    torchvision classification state_dict of the backbone (``torchvision.models.resnet50``,
    ``resnet34``, ``resnet18``, ``mobilenet_v2`` or ``mobilenet_v3_large``; its classifier is
    ignored).

    Raises:
        WeakpasteError: missing or unreadable file, or neither kind of state_dict.
    """
    state = read_state_dict(path, unpack={FORMAT: "model"})
    own = model.state_dict()
    same = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if len(same) >= len(own) // 2:
        model.load_state_dict(same, strict=False)
        other = sum(1 for k, v in state.items()
                    if k in own and tuple(own[k].shape) != tuple(v.shape))
        return (f"loaded {len(same)} of {len(own)} tensors from {path}"
                + (f"; {other} with another shape (class-specific heads) keep their initial "
                   "values" if other else ""))
    body = model.backbone.body
    prefix = "features." if backbone in _FEATURES_PREFIX else ""
    mapped = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    want = body.state_dict()
    bad = [k for k, v in want.items()
           if k not in mapped or tuple(mapped[k].shape) != tuple(v.shape)]
    if bad:
        raise WeakpasteError(
            f"{path}: neither a Mask R-CNN state_dict nor one of torchvision's "
            f"{_TORCHVISION_NAMES[backbone]} ({len(bad)} of {len(want)} backbone tensors missing "
            f"or of another shape, e.g. {prefix + bad[0]!r}); pass a matching "
            f"{flag_of(ModelOptions, 'backbone')}, a weakpaste checkpoint, DEFAULT or none")
    body.load_state_dict({k: mapped[k] for k in want}, strict=True)
    return f"backbone initialised from {path} ({len(want)} tensors)"


# --------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: Path, payload: Mapping) -> None:
    """``torch.save`` atomically: readers see the old file or the complete new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(dict(payload), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically (a hard link, else a copy)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by ``weakpaste train``.

    Raises:
        WeakpasteError: missing, unreadable (truncated, corrupt) or foreign file.
    """
    path = Path(path)
    obj = read_weakpaste_file(path, FORMAT, what="checkpoint", fix=CHECKPOINT_FIX,
                              foreign="not a weakpaste Mask R-CNN checkpoint")
    if obj.get("format_version") != FORMAT_VERSION:
        raise WeakpasteError(f"{path}: checkpoint format version {obj.get('format_version')} "
                             f"is not supported by weakpaste {__version__}; {CHECKPOINT_FIX}")
    for key in ("model", "model_config", "iteration"):
        if key not in obj:
            raise WeakpasteError(f"{path}: corrupt checkpoint (no {key!r}); {CHECKPOINT_FIX}")
    return obj


def model_from_checkpoint(ckpt: Mapping, path: str | os.PathLike = "checkpoint"
                          ) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the trained model of a checkpoint (CPU, eval mode)."""
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
        model, _ = build_model(config, weights=None)
        model.load_state_dict(ckpt["model"], strict=True)
    except WeakpasteError:
        raise
    except Exception as err:
        raise WeakpasteError(f"{path}: corrupt checkpoint ({_reason(err)}); pass a checkpoint "
                             "written by 'weakpaste train'") from None
    return model.eval(), config


__all__ = ["BACKBONES", "CHECKPOINT_FIX", "FORMAT", "FORMAT_VERSION", "build_model",
           "default_trainable_layers", "link_or_copy", "load_checkpoint", "load_weights_file",
           "model_config_for", "model_from_checkpoint", "resolve_device", "save_checkpoint"]
