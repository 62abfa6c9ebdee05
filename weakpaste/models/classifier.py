"""Multi-label image classifier on a torchvision trunk: probabilities, features and Grad-CAM.

This is the classifier ``f`` of EM-Paste's F-EM miner. A torchvision classification model is cut
at its last convolutional feature map (the *trunk*, output float32 (B, C, h, w)); the head is a
single ``nn.Linear(C, K)`` on the globally average-pooled map, trained with multi-label binary
cross-entropy on image-level labels. The pooled map is also the segment feature ``phi`` that
EM-Paste compares between candidate segments and Grad-CAM anchors.

Torch stays inside this module: callers pass numpy uint8 (H, W, 3) RGB images and bool masks and
get numpy float32 arrays back.

Preprocessing uses the ImageNet mean/std. Whole images are squashed (resized without keeping the
aspect ratio) to ``input_size`` x ``input_size``; segments are cut out as EM-Paste's appendix
describes (see :func:`segment_crops`) and resized to ``crop_size`` x ``crop_size``.

BatchNorm layers are always in eval mode, also while fine-tuning: the statistics of the small
multi-label batches used here would be poor estimates, and some weight files (e.g. a MobileNetV2
converted from TFLite with batch norm folded into the convolutions) carry identity statistics
that must not be overwritten.

Example:
    >>> import numpy as np
    >>> clf = Classifier.build("resnet18", weights=None, classes=["cat", "dog"], input_size=64)
    >>> clf.predict_proba([np.zeros((48, 80, 3), np.uint8)]).shape
    (1, 2)
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from weakpaste.errors import WeakpasteError
from weakpaste.errors import reason as _reason

__all__ = [
    "GREY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TRAIN_MODES",
    "Classifier",
    "segment_crops",
    "set_num_threads",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
GREY: tuple[int, int, int] = tuple(round(255 * m) for m in IMAGENET_MEAN)
"""The ImageNet-mean grey (124, 116, 104) that fills segment crops outside the mask."""

TRAIN_MODES: tuple[str, ...] = ("linear", "finetune")

FORMAT = "weakpaste-classifier"
FORMAT_VERSION = 1

_EXAMPLES = "resnet50, mobilenet_v2, efficientnet_b0, convnext_tiny"
_LIST_NAMES = ('python -c "import torchvision; '
               'print(torchvision.models.list_models(module=torchvision.models))"')
_WEIGHTS_FIX = ("pass --weights PATH to a torchvision state_dict, --weights DEFAULT or "
                "--weights none")

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
# Seed of the random initialisation, so that an untrained model is reproducible.
_INIT_SEED = 0
_LINEAR_LR = 1e-2
_LINEAR_WEIGHT_DECAY = 1e-4
_FINETUNE_LR = 1e-2
_FINETUNE_WEIGHT_DECAY = 1e-4
_CROP_SCALE = (0.6, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)
_MIN_SIZE = 32


def set_num_threads(num_threads: int) -> None:
    """Set the number of CPU threads torch uses (process-wide); only call it when asked to.

    Args:
        num_threads: at least 1.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)


# --------------------------------------------------------------------------------------------
# Network


class _Net(nn.Module):
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

    def train(self, mode: bool = True) -> _Net:
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


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator inside the block and restore its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _family(backbone: str) -> str:
    names = torchvision.models.list_models(module=torchvision.models)
    if backbone not in names:
        raise WeakpasteError(f"unknown backbone {backbone!r}; list torchvision's classification "
                             f"models with: {_LIST_NAMES}")
    for prefix, family in _FAMILIES:
        if backbone.startswith(prefix):
            if family is None:
                raise WeakpasteError(f"backbone {backbone!r} has no convolutional feature map; "
                                     f"choose one of e.g. {_EXAMPLES}")
            return family
    raise WeakpasteError(f"backbone {backbone!r} is not supported (auxiliary heads or fixed "
                         f"input size); choose one of e.g. {_EXAMPLES}")


def _trunk(family: str, model: nn.Module) -> nn.Sequential:
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


def _is_none(weights: str | os.PathLike | None) -> bool:
    return weights is None or (isinstance(weights, str) and weights.lower() == "none")


def _is_default(weights: str | os.PathLike | None) -> bool:
    return isinstance(weights, str) and weights.upper() == "DEFAULT"


def _torchvision_model(backbone: str, weights: str | os.PathLike | None) -> nn.Module:
    """The full torchvision model with the requested weights, on the CPU."""
    if _is_none(weights):
        with _seeded(_INIT_SEED):
            return torchvision.models.get_model(backbone, weights=None)
    if _is_default(weights):
        try:
            return torchvision.models.get_model(backbone, weights="DEFAULT")
        except Exception as err:
            raise WeakpasteError(
                f"could not load torchvision's DEFAULT weights for {backbone} ({_reason(err)}); "
                f"on a machine without internet pass --weights PATH to a local state_dict or "
                f"--weights none") from err
    path = Path(weights)
    state = _read_state_dict(path)
    with _seeded(_INIT_SEED):
        model = torchvision.models.get_model(backbone, weights=None)
    _check_state_dict(path, backbone, state, model.state_dict())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeakpasteError(f"{path}: does not fit torchvision's {backbone} ({_reason(err)}); "
                             f"{_WEIGHTS_FIX}") from None
    return model


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise WeakpasteError(f"{path}: weights file not found; {_WEIGHTS_FIX}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeakpasteError(f"{path}: cannot read weights ({_reason(err)}); save them with "
                             f"torch.save(model.state_dict(), PATH)") from None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        raise WeakpasteError(f"{path}: this is a trained weakpaste classifier, not backbone "
                             f"weights; load it as a classifier instead of passing --weights")
    if not (isinstance(obj, Mapping) and obj
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        found = (f"a dict with keys {', '.join(repr(k) for k in list(obj)[:4])}"
                 if isinstance(obj, Mapping) and obj else f"a {type(obj).__name__}")
        raise WeakpasteError(f"{path}: not a state_dict (found {found}); save the model's "
                             f"weights with torch.save(model.state_dict(), PATH)")
    return obj


def _check_state_dict(path: Path, backbone: str, state: Mapping[str, torch.Tensor],
                      expected: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]!r}")
        fix = ("strip the 'module.' prefix of its keys"
               if all(k.startswith("module.") for k in state) else
               f"pass weights of torchvision.models.{backbone}() or choose the matching --backbone")
        raise WeakpasteError(f"{path}: not a state_dict of torchvision's {backbone} "
                             f"({'; '.join(parts)}); {fix}")
    for key, want in expected.items():
        if tuple(state[key].shape) != tuple(want.shape):
            raise WeakpasteError(
                f"{path}: {key!r} has shape {tuple(state[key].shape)} but torchvision's {backbone} "
                f"expects {tuple(want.shape)}; pass weights of torchvision.models.{backbone}() "
                f"with its 1000 ImageNet classes")


# --------------------------------------------------------------------------------------------
# Where the feature cells sit in the input

_PAD_LAYERS = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
_GRID_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, *_PAD_LAYERS)


def _at(value: int | tuple[int, ...], axis: int) -> int:
    return value[axis] if isinstance(value, tuple) else value


def _layer_geometry(module: nn.Module, axis: int) -> tuple[float, float]:
    """(stride, shift): output cell i of ``module`` is centred on its input cell stride*i+shift."""
    if isinstance(module, _PAD_LAYERS):
        left, _right, top, _bottom = module.padding
        return 1.0, -float(top if axis == 0 else left)
    kernel = _at(module.kernel_size, axis)
    stride = _at(module.stride if module.stride is not None else module.kernel_size, axis)
    dilation = _at(getattr(module, "dilation", 1), axis)
    padding = module.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        padding = dilation * (kernel - 1) // 2  # torch puts the odd extra pixel on the right
    return float(stride), -float(_at(padding, axis)) + dilation * (kernel - 1) / 2


class _GridTracer:
    """Follows a trunk's forward pass to find the input pixel each feature cell is centred on.

    Each convolution, pooling or padding layer that takes the current main-path resolution is
    composed in; a layer that sees an older resolution is a parallel branch (e.g. a residual
    shortcut that runs after the strided convolution it parallels) and is skipped.
    """

    def __init__(self, height: int, width: int) -> None:
        self.res = (height, width)
        self.axes = [(1.0, 0.0), (1.0, 0.0)]  # per axis: cell i sits at a*i + b

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...],
                 output: torch.Tensor) -> None:
        if tuple(inputs[0].shape[-2:]) != self.res:
            return
        for axis in (0, 1):
            stride, shift = _layer_geometry(module, axis)
            a, b = self.axes[axis]
            self.axes[axis] = (a * stride, a * shift + b)
        self.res = tuple(output.shape[-2:])


def _traced_forward(trunk: nn.Module, x: torch.Tensor
                    ) -> tuple[torch.Tensor, tuple[tuple[float, float], tuple[float, float]]]:
    """Feature map float32 (B, C, h, w) of ``x`` and, per axis, (a, b) such that cell i is
    centred on input pixel a*i + b (pixel centres at integers)."""
    tracer = _GridTracer(x.shape[-2], x.shape[-1])
    handles = [m.register_forward_hook(tracer) for m in trunk.modules()
               if isinstance(m, _GRID_LAYERS)]
    try:
        fmap = trunk(x)
    finally:
        for handle in handles:
            handle.remove()
    if tracer.res == tuple(fmap.shape[-2:]):
        return fmap, (tracer.axes[0], tracer.axes[1])
    # Unknown layers changed the resolution: assume each cell covers an equal tile.
    grid = []
    for axis in (0, 1):
        a = x.shape[2 + axis] / fmap.shape[2 + axis]
        grid.append((a, (a - 1) / 2))
    return fmap, (grid[0], grid[1])


def _upsample_matrix(n_out: int, side: int, cells: int, a: float, b: float,
                     device: torch.device) -> torch.Tensor:
    """Bilinear weights float32 (n_out, cells) from cells centred at a*i + b on a ``side``-pixel
    input axis to ``n_out`` pixels spanning the same extent (clamped at the outer cells)."""
    pos = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (side / n_out) - 0.5
    u = ((pos - b) / a).clamp(0, cells - 1)
    lo = u.floor().long().clamp(max=cells - 1)
    hi = (lo + 1).clamp(max=cells - 1)
    frac = u - lo
    weights = torch.zeros(n_out, cells, dtype=torch.float64)
    weights.scatter_add_(1, lo[:, None], (1 - frac)[:, None])
    weights.scatter_add_(1, hi[:, None], frac[:, None])
    return weights.float().to(device)


# --------------------------------------------------------------------------------------------
# Image preparation (numpy, uint8)


def _check_image(image: np.ndarray) -> np.ndarray:
    if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3
            or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1):
        got = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise ValueError(f"images must be uint8 (H, W, 3) RGB arrays, got {got}")
    return image


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    # INTER_AREA averages when shrinking (no aliasing); it degrades to nearest when enlarging.
    interp = cv2.INTER_AREA if height <= h and width <= w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def _squash(image: np.ndarray, size: int) -> np.ndarray:
    return _resize(_check_image(image), size, size)


def _random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop of 60-100% of the area (aspect 3/4-4/3), squashed, flipped half the time."""
    image = _check_image(image)
    h, w = image.shape[:2]
    crop = image
    log_ratio = (math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1]))
    for _ in range(10):
        area = h * w * rng.uniform(*_CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = image[y:y + ch, x:x + cw]
            break
    out = _resize(crop, size, size)
    return out[:, ::-1] if rng.random() < 0.5 else out


def _as_masks(masks: np.ndarray | Sequence[np.ndarray], height: int,
              width: int) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray) and masks.ndim == 3:
        out = list(masks)
    elif isinstance(masks, np.ndarray):
        raise ValueError(f"masks must be (M, H, W), got shape {masks.shape}")
    else:
        out = [np.asarray(m) for m in masks]
    for m in out:
        if m.shape != (height, width):
            raise ValueError(f"each mask must be ({height}, {width}) like the image, "
                             f"got {m.shape}")
    return [m if m.dtype == bool else m != 0 for m in out]


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (y0, y1, x0, x1), end-exclusive, of a bool mask; None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def segment_crops(rgb: np.ndarray, masks: np.ndarray | Sequence[np.ndarray], size: int, *,
                  erode: int = 2) -> np.ndarray:
    """Cut each segment out of an image as EM-Paste's appendix prescribes.

    For every mask: erode it by ``erode`` iterations of a 3x3 kernel (as ``cv2.erode`` on the
    whole image; if that empties it, the un-eroded mask is used), cut the mask's tight box, set
    the pixels outside the mask to the ImageNet-mean :data:`GREY`, pad the box to a square with
    that grey (object centred) and resize the square to ``size`` x ``size``. An empty mask gives
    an all-grey crop.

    Args:
        rgb: uint8 (H, W, 3) RGB image.
        masks: bool (M, H, W) array, or a sequence of M bool (H, W) masks.
        size: side of the square crops, in pixels.
        erode: erosion iterations, at least 0.

    Returns:
        uint8 (M, size, size, 3) RGB crops.
    """
    rgb = _check_image(rgb)
    if erode < 0:
        raise ValueError(f"erode must be >= 0, got {erode}")
    height, width = rgb.shape[:2]
    masks = _as_masks(masks, height, width)
    grey = np.array(GREY, np.uint8)
    out = np.empty((len(masks), size, size, 3), np.uint8)
    out[:] = grey
    kernel = np.ones((3, 3), np.uint8)
    for crop, mask in zip(out, masks, strict=True):
        box = _box(mask)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        if erode > 0:
            # Eroding a window that reaches `erode` pixels beyond the box gives exactly the
            # whole-image result: cv2's default border never erodes from the image edge.
            wy0, wy1 = max(0, y0 - erode), min(height, y1 + erode)
            wx0, wx1 = max(0, x0 - erode), min(width, x1 + erode)
            eroded = cv2.erode(mask[wy0:wy1, wx0:wx1].view(np.uint8), kernel,
                               iterations=erode).view(bool)
            inner = _box(eroded)
            if inner is not None:
                ey0, ey1, ex0, ex1 = inner
                mask = eroded[ey0:ey1, ex0:ex1]
                y0, y1, x0, x1 = ey0 + wy0, ey1 + wy0, ex0 + wx0, ex1 + wx0
            else:
                mask = mask[y0:y1, x0:x1]
        else:
            mask = mask[y0:y1, x0:x1]
        patch = np.where(mask[..., None], rgb[y0:y1, x0:x1], grey)
        h, w = patch.shape[:2]
        scale = size / max(h, w)
        nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
        oy, ox = (size - nh) // 2, (size - nw) // 2
        crop[oy:oy + nh, ox:ox + nw] = _resize(patch, nw, nh)
    return out


# --------------------------------------------------------------------------------------------
# Classifier


class Classifier:
    """Multi-label classifier ``f``: torchvision trunk + linear head on pooled features.

    Build one with :meth:`build` or :meth:`load`; the constructor is internal.

    Attributes:
        classes: class names, in the order of the probability columns.
        feature_dim: D, channels of the trunk's last feature map (resnet18: 512,
            resnet50: 2048, mobilenet_v2: 1280).
        device: torch device name the model runs on.
        backbone: torchvision model name.
        input_size: side of the squashed whole-image input.
        crop_size: side of the segment crops.
        mode: "untrained", "linear" or "finetune" (how the head was last trained).
    """

    def __init__(self, net: _Net, *, backbone: str, classes: Sequence[str], input_size: int,
                 crop_size: int, device: str, mode: str = "untrained") -> None:
        self._net = net.eval()
        self._backbone = backbone
        self._classes = tuple(classes)
        self._input_size = input_size
        self._crop_size = crop_size
        self._device = torch.device(device)
        self._mode = mode
        self._feature_dim = net.head.in_features
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self._device).view(shape) * 255
        self._std = torch.tensor(IMAGENET_STD, device=self._device).view(shape) * 255

    # ---------------------------------------------------------------- construction

    @classmethod
    def build(cls, backbone: str = "resnet50", weights: str | os.PathLike | None = "DEFAULT",
              classes: Sequence[str] = (), *, device: str = "cpu", input_size: int = 384,
              crop_size: int = 224) -> Classifier:
        """A classifier with a fresh head on a torchvision trunk.

        Args:
            backbone: torchvision classification model name (``torchvision.models.get_model``)
                with a convolutional feature map: resnet/resnext/wide_resnet, mobilenet_v2/v3,
                efficientnet*, regnet*, convnext*, densenet*, vgg*, alexnet, squeezenet*,
                mnasnet*, shufflenet*.
            weights: "DEFAULT" for torchvision's ImageNet weights (downloaded by torchvision),
                a path to a ``state_dict`` of the full torchvision model (loaded strictly), or
                "none"/None for a random initialisation (seeded, so reproducible).
            classes: K >= 1 distinct class names.
            device: torch device, e.g. "cpu" or "cuda".
            input_size: whole images are squashed to input_size x input_size (>= 32).
            crop_size: segment crops are crop_size x crop_size (>= 32).

        Returns:
            An untrained classifier (head initialised with a fixed seed).

        Raises:
            WeakpasteError: unknown or unsupported backbone, unusable weights.
            ValueError: invalid classes or sizes.
        """
        classes = _check_classes(classes)
        for name, value in (("input_size", input_size), ("crop_size", crop_size)):
            if int(value) != value or value < _MIN_SIZE:
                raise ValueError(f"{name} must be an integer >= {_MIN_SIZE}, got {value}")
        family = _family(backbone)
        model = _torchvision_model(backbone, weights)
        clf = cls._assemble(backbone, family, model, classes, device, int(input_size),
                            int(crop_size))
        clf._net.freeze_bn = not _is_none(weights)
        return clf

    @classmethod
    def _assemble(cls, backbone: str, family: str, model: nn.Module, classes: tuple[str, ...],
                  device: str, input_size: int, crop_size: int,
                  mode: str = "untrained") -> Classifier:
        trunk = _trunk(family, model).eval()
        side = min(input_size, crop_size)
        try:
            with torch.inference_mode():
                fmap = trunk(torch.zeros(1, 3, side, side))
        except RuntimeError as err:
            raise WeakpasteError(f"backbone {backbone!r} cannot take {side}x{side} inputs "
                                 f"({_reason(err)}); raise --input-size / --crop-size") from None
        if fmap.ndim != 4:  # pragma: no cover - guarded by _FAMILIES
            raise WeakpasteError(f"backbone {backbone!r} has no convolutional feature map; "
                                 f"choose one of e.g. {_EXAMPLES}")
        with _seeded(_INIT_SEED):
            head = nn.Linear(fmap.shape[1], len(classes))
        net = _Net(trunk, head).to(device)
        return cls(net, backbone=backbone, classes=classes, input_size=input_size,
                   crop_size=crop_size, device=device, mode=mode)

    # ---------------------------------------------------------------- properties

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def backbone(self) -> str:
        return self._backbone

    @property
    def input_size(self) -> int:
        return self._input_size

    @property
    def crop_size(self) -> int:
        return self._crop_size

    @property
    def mode(self) -> str:
        return self._mode

    def __repr__(self) -> str:
        return (f"Classifier(backbone={self._backbone!r}, classes={len(self._classes)}, "
                f"feature_dim={self._feature_dim}, input_size={self._input_size}, "
                f"crop_size={self._crop_size}, mode={self._mode!r}, device={self.device!r})")

    # ---------------------------------------------------------------- tensors

    def _to_tensor(self, batch: np.ndarray, *, channels_last: bool = True) -> torch.Tensor:
        """uint8 (B, S, S, 3) RGB -> normalised float32 (B, 3, S, S)."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
        x = (x.permute(0, 3, 1, 2).float() - self._mean) / self._std
        # Inference is faster on CPU in the NHWC layout (channels_last), backward is not.
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def _image_batches(self, images: Sequence[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
        # Integer indexing only: ``images`` may be any sequence, e.g. one that reads files lazily.
        for start in range(0, len(images), batch_size):
            stop = min(start + batch_size, len(images))
            yield np.stack([_squash(images[i], self._input_size) for i in range(start, stop)])

    def _infer(self, batches: Iterator[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        probs, feats = [], []
        self._net.eval()
        with torch.inference_mode():
            for batch in batches:
                logits, pooled = self._net(self._to_tensor(batch))
                probs.append(torch.sigmoid(logits).float().cpu().numpy())
                feats.append(pooled.float().cpu().numpy())
        if not probs:
            return (np.zeros((0, len(self._classes)), np.float32),
                    np.zeros((0, self._feature_dim), np.float32))
        return np.concatenate(probs), np.concatenate(feats)

    # ---------------------------------------------------------------- inference

    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Class probabilities of whole images.

        Args:
            images: N uint8 (H, W, 3) RGB images of any sizes.
            batch_size: images per forward pass.

        Returns:
            float32 (N, K) sigmoid probabilities.
        """
        return self._infer(self._image_batches(images, _check_batch_size(batch_size)))[0]

    def features(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Pooled trunk features of whole images.

        Args:
            images: N uint8 (H, W, 3) RGB images of any sizes.
            batch_size: images per forward pass.

        Returns:
            float32 (N, D) globally average-pooled last feature maps.
        """
        return self._infer(self._image_batches(images, _check_batch_size(batch_size)))[1]

    def feature_maps(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """The trunk's last feature map of whole images (dense features, e.g. for
        co-segmentation); images are squashed to ``input_size`` as in :meth:`features`.

        Args:
            images: N uint8 (H, W, 3) RGB images of any sizes.
            batch_size: images per forward pass.

        Returns:
            float32 (N, D, h, w); the pooled features are their spatial means.
        """
        maps = []
        self._net.eval()
        with torch.inference_mode():
            for batch in self._image_batches(images, _check_batch_size(batch_size)):
                maps.append(self._net.trunk(self._to_tensor(batch)).float().cpu().numpy())
        if not maps:
            return np.zeros((0, self._feature_dim, 0, 0), np.float32)
        return np.ascontiguousarray(np.concatenate(maps), dtype=np.float32)

    def segment_batch(self, rgb: np.ndarray, masks: np.ndarray | Sequence[np.ndarray], *,
                      erode: int = 2) -> np.ndarray:
        """The crops :meth:`score_segments` feeds the network (see :func:`segment_crops`).

        Args:
            rgb: uint8 (H, W, 3) RGB image.
            masks: bool (M, H, W) array or M bool (H, W) masks.
            erode: erosion iterations of a 3x3 kernel before cutting.

        Returns:
            uint8 (M, crop_size, crop_size, 3) RGB crops, grey outside the masks.
        """
        return segment_crops(rgb, masks, self._crop_size, erode=erode)

    def score_segments(self, rgb: np.ndarray, masks: np.ndarray | Sequence[np.ndarray], *,
                       erode: int = 2, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and features ``phi`` of the segments of one image.

        Args:
            rgb: uint8 (H, W, 3) RGB image.
            masks: bool (M, H, W) array or M bool (H, W) masks (M may be 0).
            erode: erosion iterations of a 3x3 kernel before cutting.
            batch_size: crops per forward pass.

        Returns:
            (float32 (M, K) sigmoid probabilities, float32 (M, D) pooled last feature maps).
        """
        crops = self.segment_batch(rgb, masks, erode=erode)
        step = _check_batch_size(batch_size)
        return self._infer(crops[i:i + step] for i in range(0, len(crops), step))

    def gradcam(self, image: np.ndarray, class_indices: Sequence[int]) -> np.ndarray:
        """Grad-CAM maps (Selvaraju et al.) of some classes on one image.

        The image is squashed to ``input_size``; A = the trunk's last feature map (C, h, w). For
        class c the weights are the spatial means of d logit_c / d A (autograd), the map is
        ReLU(sum_k w_k A_k), bilinearly resized to the image and divided by its maximum (an
        all-zero map stays zero). With a global-average-pool + linear head the gradient is
        W[c] / (h w) everywhere, so Grad-CAM here equals CAM (Zhou et al.) up to the
        normalisation.

        The resize puts every feature cell at the centre of its receptive field, traced from
        the trunk's convolutions and pools, rather than at the centre of an equal tile: the
        padded stride-2 layers of ResNets and MobileNets centre cell i on input pixel 32 i, half
        a cell (16 input pixels) above and left of where a plain resize would put it.

        Args:
            image: uint8 (H, W, 3) RGB image.
            class_indices: indices into :attr:`classes`, repeats allowed.

        Returns:
            float32 (len(class_indices), H, W) maps in [0, 1].
        """
        image = _check_image(image)
        height, width = image.shape[:2]
        idx = [int(i) for i in class_indices]
        for i in idx:
            if not 0 <= i < len(self._classes):
                raise ValueError(f"class index {i} out of range for {len(self._classes)} classes")
        if not idx:
            return np.zeros((0, height, width), np.float32)
        self._net.eval()
        side = self._input_size
        # inference_mode(False): Grad-CAM needs autograd even inside a caller's inference_mode.
        with torch.inference_mode(False):
            x = self._to_tensor(_squash(image, side)[None])
            with torch.no_grad():
                fmap, ((ay, by), (ax, bx)) = _traced_forward(self._net.trunk, x)
                fmap = fmap.float()
            with torch.enable_grad():
                # One copy of A per class so that one backward pass gives every class's gradient.
                acts = fmap.expand(len(idx), -1, -1, -1).clone().requires_grad_(True)
                logits = self._net.head(self._net.pool(acts))
                chosen = logits[torch.arange(len(idx)), torch.tensor(idx, device=logits.device)]
                (grads,) = torch.autograd.grad(chosen.sum(), acts)
            with torch.no_grad():
                weights = grads.mean((2, 3))
                cam = F.relu(torch.einsum("nc,nchw->nhw", weights, acts.detach()))
                h, w = cam.shape[1:]
                rows = _upsample_matrix(height, side, h, ay, by, cam.device)
                cols = _upsample_matrix(width, side, w, ax, bx, cam.device)
                cam = rows @ cam @ cols.T
                peak = cam.amax((1, 2), keepdim=True)
                cam = torch.where(peak > 0, cam / peak.clamp_min(1e-30), torch.zeros_like(cam))
        return cam.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32, copy=False)

    # ---------------------------------------------------------------- training

    def train(self, images: Sequence[np.ndarray], labels: np.ndarray, *, mode: str = "linear",
              epochs: int = 30, lr: float | None = None, batch_size: int = 32, seed: int = 0,
              progress: bool = True) -> dict:
        """Train on image-level labels with multi-label binary cross-entropy.

        "linear" (linear probe): the trunk stays frozen; pooled features of every image and of
        its horizontal flip are computed once, standardised, and a linear head is fitted with
        Adam (lr default 1e-2) from zero; the standardisation is then folded into the head.
        "finetune": trunk and head are trained from their current weights with SGD (momentum
        0.9, lr default 1e-2, cosine decay), random resized crops (60-100% of the area) and
        horizontal flips; only one batch of images is resized and held as tensors at a time.
        BatchNorm statistics stay frozen in both modes for a pretrained trunk and train for a
        randomly initialised one (see ``_Net``). The same seed gives the same result.

        Args:
            images: N uint8 (H, W, 3) RGB images of any sizes.
            labels: bool or float (N, K), 1 where the class is present.
            mode: "linear" or "finetune".
            epochs: passes over the data, at least 1.
            lr: learning rate, or None for the mode's default.
            batch_size: images per optimisation step (and per feature pass).
            seed: seed of the shuffling, the augmentation and any dropout.
            progress: show tqdm progress bars.

        Returns:
            {"mode": str, "loss": per-epoch mean training loss (list of float), "epochs": int,
            "lr": float, "seconds": float}.

        Raises:
            ValueError: unknown mode, labels of the wrong shape, invalid numbers.
        """
        if mode not in TRAIN_MODES:
            raise ValueError(f"unknown training mode {mode!r}; choose 'linear' or 'finetune'")
        if len(images) == 0:
            raise ValueError("no images to train on")
        targets = _check_labels(labels, len(images), len(self._classes))
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        batch_size = _check_batch_size(batch_size)
        if lr is not None and not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        start = time.perf_counter()
        with torch.inference_mode(False), _seeded(seed):
            if mode == "linear":
                lr = _LINEAR_LR if lr is None else float(lr)
                losses = self._train_linear(images, targets, epochs, lr, batch_size, seed,
                                            progress)
            else:
                lr = _FINETUNE_LR if lr is None else float(lr)
                losses = self._train_finetune(images, targets, epochs, lr, batch_size, seed,
                                              progress)
        self._net.eval()
        self._mode = mode
        return {"mode": mode, "loss": losses, "epochs": epochs, "lr": lr,
                "seconds": time.perf_counter() - start}

    def _train_linear(self, images: Sequence[np.ndarray], targets: np.ndarray, epochs: int,
                      lr: float, batch_size: int, seed: int, progress: bool) -> list[float]:
        from tqdm import tqdm

        feats, ys = [], []
        self._net.eval()
        bar = tqdm(total=len(images), desc="features", unit="img", disable=not progress)
        with torch.inference_mode():
            for i, batch in enumerate(self._image_batches(images, batch_size)):
                x = self._to_tensor(batch)
                fmap = self._net.trunk(torch.cat([x, x.flip(3)]))
                feats.append(self._net.pool(fmap).float())
                y = targets[i * batch_size:i * batch_size + len(batch)]
                ys += [y, y]
                bar.update(len(batch))
        bar.close()
        # clone(): inference tensors cannot be saved for backward.
        feats_t = torch.cat(feats).clone()
        ys_t = torch.from_numpy(np.concatenate(ys)).to(feats_t.device)
        mean = feats_t.mean(0)
        std = feats_t.std(0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        z = (feats_t - mean) / std

        n, k = ys_t.shape
        weight = torch.zeros(k, z.shape[1], device=z.device, requires_grad=True)
        # Starting from the class priors makes the first epoch's loss meaningful.
        prior = ys_t.mean(0).clamp(0.01, 0.99)
        bias = torch.log(prior / (1 - prior)).detach().requires_grad_(True)
        opt = torch.optim.Adam([weight, bias], lr=lr, weight_decay=_LINEAR_WEIGHT_DECAY)
        gen = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        for _ in tqdm(range(epochs), desc="linear probe", unit="epoch", disable=not progress):
            order = torch.randperm(n, generator=gen).to(z.device)
            total = 0.0
            for s in range(0, n, batch_size):
                sel = order[s:s + batch_size]
                loss = F.binary_cross_entropy_with_logits(z[sel] @ weight.T + bias, ys_t[sel])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(sel)
            losses.append(total / n)

        with torch.no_grad():
            folded = weight / std
            head = self._net.head
            head.weight.copy_(folded.to(head.weight.dtype))
            head.bias.copy_((bias - folded @ mean).to(head.bias.dtype))
        return losses

    def _train_finetune(self, images: Sequence[np.ndarray], targets: np.ndarray, epochs: int,
                        lr: float, batch_size: int, seed: int, progress: bool) -> list[float]:
        from tqdm import tqdm

        net = self._net
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=_FINETUNE_WEIGHT_DECAY)
        n = len(images)
        steps = epochs * math.ceil(n / batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps)))
        rng = np.random.default_rng(seed)
        ys_t = torch.from_numpy(targets).to(self._device)
        losses: list[float] = []
        net.train()
        try:
            for _ in tqdm(range(epochs), desc="finetune", unit="epoch", disable=not progress):
                order = rng.permutation(n)
                total = 0.0
                # Near-equal batches: a trailing batch of one image would give training
                # BatchNorm (random-init trunks) a single value per channel.
                for sel in np.array_split(order, math.ceil(n / batch_size)):
                    batch = np.stack([_random_resized_crop(images[int(i)], self._input_size,
                                                           rng) for i in sel])
                    net.train(len(sel) > 1 or net.freeze_bn)
                    logits, _ = net(self._to_tensor(batch, channels_last=False))
                    loss = F.binary_cross_entropy_with_logits(logits, ys_t[sel])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(sel)
                losses.append(total / n)
        finally:
            net.eval()
        return losses

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the classifier (architecture, classes, sizes, weights) to one file.

        Args:
            path: output file, conventionally ``*.pt``; written atomically.
        """
        path = Path(path)
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone": self._backbone,
            "classes": list(self._classes),
            "input_size": self._input_size,
            "crop_size": self._crop_size,
            "mode": self._mode,
            "freeze_bn": self._net.freeze_bn,
            "state_dict": {k: v.detach().cpu() for k, v in self._net.state_dict().items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> Classifier:
        """Read a classifier written by :meth:`save`; needs no weights file and no internet.

        Args:
            path: file written by :meth:`save`.
            device: torch device to run on.

        Returns:
            The classifier, in eval mode.

        Raises:
            WeakpasteError: missing, corrupt or foreign file.
        """
        path = Path(path)
        fix = "train and save the classifier again"
        if not path.is_file():
            raise WeakpasteError(f"{path}: classifier file not found; check the path or train "
                                 f"and save a classifier first")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeakpasteError(f"{path}: not a readable classifier file ({_reason(err)}); "
                                 f"{fix}") from None
        if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
            raise WeakpasteError(f"{path}: not a weakpaste classifier file (plain weights go to "
                                 f"--weights); {fix}")
        if obj.get("version") != FORMAT_VERSION:
            raise WeakpasteError(f"{path}: unsupported classifier format version "
                                 f"{obj.get('version')!r}; {fix} with this weakpaste")
        try:
            backbone = str(obj["backbone"])
            classes = _check_classes(obj["classes"])
            input_size, crop_size = int(obj["input_size"]), int(obj["crop_size"])
            mode, state = str(obj["mode"]), obj["state_dict"]
            family = _family(backbone)
            with _seeded(_INIT_SEED):
                model = torchvision.models.get_model(backbone, weights=None)
            clf = cls._assemble(backbone, family, model, classes, "cpu", input_size, crop_size,
                                mode)
            clf._net.load_state_dict(state, strict=True)
            clf._net.freeze_bn = bool(obj.get("freeze_bn", True))
        except (KeyError, TypeError, ValueError, RuntimeError, WeakpasteError) as err:
            raise WeakpasteError(f"{path}: corrupt classifier file ({_reason(err)}); "
                                 f"{fix}") from None
        if torch.device(device) != clf._device:
            clf = cls(clf._net.to(device), backbone=backbone, classes=classes,
                      input_size=input_size, crop_size=crop_size, device=device, mode=mode)
        return clf


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str):
        raise ValueError(f"classes must be a sequence of names, not the string {classes!r}")
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes must not be empty")
    if not all(isinstance(c, str) and c for c in classes):
        raise ValueError("class names must be non-empty strings")
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise ValueError(f"class {dup!r} is listed twice")
    return classes


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    return int(batch_size)


def _check_labels(labels: np.ndarray, n: int, k: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n, k):
        raise ValueError(f"labels must have shape (N, K) = ({n}, {k}), got {y.shape}")
    y = y.astype(np.float32)
    if not np.all((y >= 0) & (y <= 1)):
        raise ValueError("labels must be 0/1 (or probabilities in [0, 1])")
    return y
