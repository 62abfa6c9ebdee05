"""torchvision trunks, their weights, and the pooled-linear network of the mining classifier.

* ``torchvision_model``: a torchvision classification model with DEFAULT / file / no weights
  (``weakpaste.models.weights.resolve_weights`` says which); ``read_state_dict`` reads a
  weights file for it and for Mask R-CNN (``weakpaste.train.model``), with the same messages.
* ``backbone_family`` / ``trunk``: where a model's last convolutional feature map is, so that
  any torchvision classifier with one can be cut into a *trunk* (output float32 (B, C, h, w)).
* ``PooledNet``: trunk + ``nn.Linear(C, K)`` on the globally average-pooled map;
  ``pooled_net`` builds one; ``to_tensor`` normalises uint8 image batches for it.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import numpy as np
import torch
import torchvision
from torch import nn

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.errors import reason as _reason
from weakpaste.core.files import WRITE_ERRNOS, write_error, write_failure
from weakpaste.core.threads import thread_count
from weakpaste.models.inputs import IMAGENET_MEAN, IMAGENET_STD
from weakpaste.models.weights import (
    BACKBONE_FLAG,
    CHECKPOINT_FLAG,
    CROP_SIZE_FLAG,
    INPUT_SIZE_FLAG,
    WEIGHTS_FIX,
    WEIGHTS_FLAG,
    WeightsArg,
    resolve_weights,
)

EXAMPLES = "resnet50, mobilenet_v2, efficientnet_b0, convnext_tiny"
_LIST_NAMES = ('python -c "import torchvision; '
               'print(torchvision.models.list_models(module=torchvision.models))"')
_SAVE_HINT = "save the model's weights with torch.save(model.state_dict(), PATH)"
# Seed of the random initialisation, so that an untrained model is reproducible.
INIT_SEED = 0

# Name prefix -> how to cut the trunk. None: no convolutional feature map at all.
_FAMILIES: tuple[tuple[str, str | None], ...] = (
    ("resnet", "children"),
    ("resnext", "children"),
    ("wide_resnet", "children"),
    ("shufflenet", "children"),
    ("mobilenet_v2", "features"),
    ("mobilenet_v3", "features"),
    ("efficientnet", "features"),
    ("convnext", "features"),
    ("vgg", "features"),
    ("alexnet", "features"),
    ("squeezenet", "features"),
    ("densenet", "densenet"),
    ("regnet", "regnet"),
    ("mnasnet", "mnasnet"),
    ("vit_", None),
    ("swin", None),
)
# Children of the whole model that come after the last feature map.
_HEAD_CHILDREN = frozenset({"avgpool", "fc", "classifier", "dropout"})
# weakpaste files that are not plain weights: what they are, and where they go instead.
_OTHER_FILES = {
    "weakpaste-classifier": ("a trained weakpaste classifier", "load it as a classifier"),
    "weakpaste-maskrcnn": ("a weakpaste Mask R-CNN checkpoint",
                           f"evaluate it with 'weakpaste eval {CHECKPOINT_FLAG}'"),
}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator inside the block and restore its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def one_thread() -> contextlib.AbstractContextManager:
    """Run torch on one CPU thread inside the block (its thread count is restored after).

    CPU convolutions' last bits depend on the thread count: with one thread a forward pass
    gives the same bytes in the driver (``--workers 1``: torch's default threads) and in a
    worker process (one thread each).
    """
    return thread_count(torch.get_num_threads, torch.set_num_threads, 1)


# --------------------------------------------------------------------------------------------
# Weights


def default_weights_error(name: str, err: BaseException) -> WeakpasteError:
    """The one message for torchvision's DEFAULT weights that could not be had (offline)."""
    return WeakpasteError(
        f"could not load torchvision's DEFAULT weights for {name} ({_reason(err)}); on a "
        f"machine without internet pass {WEIGHTS_FLAG} PATH to a local state_dict or "
        f"{WEIGHTS_FLAG} none")


def read_state_dict(path, *, unpack: Mapping[str, str] | None = None
                    ) -> dict[str, torch.Tensor]:
    """The tensors of a weights file written by ``torch.save(model.state_dict(), PATH)``.

    Args:
        path: the file (``resolve_weights`` checked that it exists).
        unpack: weakpaste file format -> the key holding its state_dict, for weakpaste files
            that are accepted as weights (Mask R-CNN takes its own checkpoints: "model").

    Returns:
        Parameter name -> tensor; the "module." prefix of a DataParallel model is removed.

    Raises:
        WeakpasteError: unreadable file, another weakpaste file, or not a state_dict.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeakpasteError(f"{path}: not a readable weights file ({_reason(err)}); "
                             f"{_SAVE_HINT}") from None
    fmt = obj.get("format") if isinstance(obj, Mapping) else None
    if isinstance(fmt, str) and fmt.startswith("weakpaste"):
        if fmt not in (unpack or {}):
            what, use = _OTHER_FILES.get(fmt, (f"a {fmt} file", "pass it where it belongs"))
            raise WeakpasteError(f"{path}: this is {what}, not backbone weights; {use} "
                                 f"instead of passing {WEIGHTS_FLAG}")
        obj = obj.get(unpack[fmt])
    if not (isinstance(obj, Mapping) and obj and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        found = (f"a dict with keys {', '.join(repr(k) for k in list(obj)[:4])}"
                 if isinstance(obj, Mapping) and obj else f"a {type(obj).__name__}")
        raise WeakpasteError(f"{path}: not a state_dict (found {found}); {_SAVE_HINT}")
    if all(k.startswith("module.") for k in obj):
        return {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


@contextlib.contextmanager
def torch_write_errors(folder: str | os.PathLike, payload: object) -> Iterator[None]:
    """Turn a ``torch.save`` of ``payload`` into ``folder`` that fails for lack of room (a full
    disk, a quota, a read-only folder) into the one-line ``write_error`` other files give.

    torch reports such a failure as a RuntimeError about its zip writer, not as an OSError;
    ``write_failure`` finds the cause. An OSError (a file object's write) names ``folder`` too.
    Any other error passes through unchanged.
    """
    try:
        yield
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise write_error(folder, err) from None
    except RuntimeError:
        cause = write_failure(folder, _tensor_bytes(payload))
        if cause is None:
            raise
        raise write_error(folder, cause) from None


def _tensor_bytes(obj: object) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts and lists): what torch.save writes,
    less a little metadata."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def read_weakpaste_file(path, fmt: str, *, what: str, foreign: str, fix: str,
                        missing_fix: str | None = None) -> dict:
    """A file that weakpaste wrote with ``torch.save`` (a classifier, a checkpoint).

    Args:
        path: the file.
        fmt: the ``format`` field it must carry.
        what: its name in messages ("checkpoint").
        foreign: what to say of a readable file of another format.
        fix: the fix named by the messages.
        missing_fix: the fix for a missing file (default ``fix``).

    Raises:
        WeakpasteError: missing, unreadable (truncated, corrupt) or foreign file.
    """
    if not path.is_file():
        raise WeakpasteError(f"{path}: {what} not found; {missing_fix or fix}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeakpasteError(f"{path}: not a readable {what} ({_reason(err)}); {fix}") from None
    if not isinstance(obj, Mapping) or obj.get("format") != fmt:
        raise WeakpasteError(f"{path}: {foreign}; {fix}")
    return dict(obj)


def _check_state_dict(path, backbone: str, state: Mapping[str, torch.Tensor],
                      expected: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]!r}")
        raise WeakpasteError(f"{path}: not a state_dict of torchvision's {backbone} "
                             f"({'; '.join(parts)}); pass weights of torchvision.models."
                             f"{backbone}() or choose the matching {BACKBONE_FLAG}")
    for key, want in expected.items():
        if tuple(state[key].shape) != tuple(want.shape):
            raise WeakpasteError(
                f"{path}: {key!r} has shape {tuple(state[key].shape)} but torchvision's {backbone} "
                f"expects {tuple(want.shape)}; pass weights of torchvision.models.{backbone}() "
                f"with its 1000 ImageNet classes")


class SmallCnn(nn.Module):
    """``small_cnn``: six 3x3 conv-BN-ReLU layers (32, 32, 64, 64, 128, 128 channels), output
    stride 8, 0.29 M parameters; weakpaste's own, not a torchvision model.

    A from-scratch trunk for small data sets of simple objects (the demo's synthetic scenes):
    a random ImageNet-sized trunk learns too slowly from a few hundred images on a CPU, and its
    stride-32 map is 4x4 at 128 pixels, too coarse for Grad-CAM to place small objects. This
    one trains in about a minute of CPU and gives a 16x16 map at 128 pixels.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width, stride in ((32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
            layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)


# Backbones weakpaste defines itself (no pretrained weights): name -> module class.
LOCAL_BACKBONES: dict[str, type[nn.Module]] = {"small_cnn": SmallCnn}


def new_model(backbone: str) -> nn.Module:
    """A random model (seeded with ``INIT_SEED``): weakpaste's own or torchvision's."""
    with seeded(INIT_SEED):
        if backbone in LOCAL_BACKBONES:
            return LOCAL_BACKBONES[backbone]()
        return torchvision.models.get_model(backbone, weights=None)


def torchvision_model(backbone: str, weights: WeightsArg) -> nn.Module:
    """The full torchvision classification model with the requested weights, on the CPU.

    Args:
        backbone: a torchvision classification model name.
        weights: "DEFAULT" (downloaded by torchvision), a path to a ``state_dict`` of the full
            model (loaded strictly), or "none"/None (random, seeded with ``INIT_SEED``).

    Raises:
        WeakpasteError: DEFAULT weights cannot be had, or the file does not fit.
    """
    source = resolve_weights(weights)
    if source.kind == "default" and backbone in LOCAL_BACKBONES:
        raise WeakpasteError(f"backbone {backbone!r} has no pretrained weights; pass "
                             f"{WEIGHTS_FLAG} none (train it from scratch) or {WEIGHTS_FLAG} "
                             "PATH")
    if source.kind == "default":
        try:
            return torchvision.models.get_model(backbone, weights="DEFAULT")
        except Exception as err:
            raise default_weights_error(backbone, err) from None
    state = read_state_dict(source.path) if source.kind == "file" else None
    model = new_model(backbone)
    if state is not None:
        _check_state_dict(source.path, backbone, state, model.state_dict())
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise WeakpasteError(f"{source.path}: does not fit torchvision's {backbone} "
                                 f"({_reason(err)}); {WEIGHTS_FIX}") from None
    return model


# --------------------------------------------------------------------------------------------
# Trunks


def backbone_family(backbone: str) -> str:
    """How to cut ``backbone``'s trunk ("children", "features", ...).

    Raises:
        WeakpasteError: unknown name, or a model without a convolutional feature map.
    """
    if backbone in LOCAL_BACKBONES:
        return "features"
    names = torchvision.models.list_models(module=torchvision.models)
    if backbone not in names:
        raise WeakpasteError(f"unknown backbone {backbone!r}; list torchvision's classification "
                             f"models with: {_LIST_NAMES}")
    for prefix, family in _FAMILIES:
        if backbone.startswith(prefix):
            if family is None:
                raise WeakpasteError(f"backbone {backbone!r} has no convolutional feature map; "
                                     f"choose one of e.g. {EXAMPLES}")
            return family
    raise WeakpasteError(f"backbone {backbone!r} is not supported (auxiliary heads or fixed "
                         f"input size); choose one of e.g. {EXAMPLES}")


def trunk(family: str, model: nn.Module) -> nn.Sequential:
    """The part of ``model`` that outputs its last convolutional feature map (B, C, h, w)."""
    children = OrderedDict(model.named_children())
    if family == "children":
        parts = [(k, m) for k, m in children.items() if k not in _HEAD_CHILDREN]
    elif family == "features":
        parts = [("features", children["features"])]
    elif family == "densenet":
        # DenseNet applies its final ReLU in forward(), not as a module.
        parts = [("features", children["features"]), ("relu", nn.ReLU())]
    elif family == "regnet":
        parts = [("stem", children["stem"]), ("trunk_output", children["trunk_output"])]
    elif family == "mnasnet":
        parts = [("layers", children["layers"])]
    else:  # pragma: no cover - _FAMILIES and this function are kept in step
        raise AssertionError(family)
    return nn.Sequential(OrderedDict(parts))


# --------------------------------------------------------------------------------------------
# The pooled-linear network


class PooledNet(nn.Module):
    """Trunk + pooled linear head.

    With ``freeze_bn`` (pretrained trunks) BatchNorm layers never leave eval mode: their
    ImageNet statistics are worth more than those of a few small batches. A randomly
    initialised trunk has no statistics to keep (mean 0, variance 1 would leave every layer
    unnormalised), so its BatchNorm layers train.
    """

    def __init__(self, trunk: nn.Module, head: nn.Linear, freeze_bn: bool = True) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> PooledNet:
        super().train(mode)
        if self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean((2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits float32 (B, K) and pooled features float32 (B, C) of a normalised batch."""
        pooled = self.pool(self.trunk(x))
        return self.head(pooled), pooled


def pooled_net(backbone: str, model: nn.Module, num_classes: int, side: int,
               device: str | torch.device) -> PooledNet:
    """Cut ``model``'s trunk and put a fresh head (seeded with ``INIT_SEED``) on it.

    Args:
        backbone: the torchvision name of ``model``.
        model: the full torchvision classification model.
        num_classes: K outputs of the head.
        side: the smallest input side the net will see (checked with a probe forward).
        device: where the net goes.

    Raises:
        WeakpasteError: the trunk cannot take ``side`` x ``side`` inputs.
    """
    body = trunk(backbone_family(backbone), model).eval()
    try:
        with torch.inference_mode():
            fmap = body(torch.zeros(1, 3, side, side))
    except RuntimeError as err:
        raise WeakpasteError(f"backbone {backbone!r} cannot take {side}x{side} inputs "
                             f"({_reason(err)}); raise {INPUT_SIZE_FLAG} / "
                             f"{CROP_SIZE_FLAG}") from None
    if fmap.ndim != 4:  # pragma: no cover - guarded by _FAMILIES
        raise WeakpasteError(f"backbone {backbone!r} has no convolutional feature map; "
                             f"choose one of e.g. {EXAMPLES}")
    with seeded(INIT_SEED):
        head = nn.Linear(fmap.shape[1], num_classes)
    return PooledNet(body, head).to(device)


def to_tensor(batch: np.ndarray, device: torch.device, *,
              channels_last: bool = True) -> torch.Tensor:
    """uint8 (B, S, S, 3) RGB -> ImageNet-normalised float32 (B, 3, S, S) on ``device``."""
    shape = (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(shape) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(shape) * 255
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
    x = (x.permute(0, 3, 1, 2).float() - mean) / std
    # Inference is faster on CPU in the NHWC layout (channels_last), backward is not.
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


__all__ = ["EXAMPLES", "INIT_SEED", "LOCAL_BACKBONES", "PooledNet", "SmallCnn",
           "backbone_family", "default_weights_error", "new_model", "pooled_net",
           "one_thread", "read_state_dict", "read_weakpaste_file", "seeded", "to_tensor",
           "torchvision_model", "trunk"]
