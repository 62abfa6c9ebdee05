"""Multi-label image classifier on a torchvision trunk: probabilities, features and Grad-CAM.

This is the classifier ``f`` of EM-Paste's F-EM miner. A torchvision classification model is cut
at its last convolutional feature map (the *trunk*, output float32 (B, C, h, w)); the head is a
single ``nn.Linear(C, K)`` on the globally average-pooled map, trained with multi-label binary
cross-entropy on image-level labels. The pooled map is also the segment feature ``phi`` that
EM-Paste compares between candidate segments and Grad-CAM anchors.

Torch stays inside ``weakpaste.models``: callers pass numpy uint8 (H, W, 3) RGB images and bool
masks and get numpy float32 arrays back. The parts, one job each:

* ``weakpaste.models.weights``: what a ``--weights`` value means (no torch);
* ``weakpaste.models.backbones``: torchvision models and weight files, trunks, ``PooledNet``;
* ``weakpaste.models.inputs``: ImageNet constants, squashing, segment crops (numpy);
* ``weakpaste.models.gradcam``: Grad-CAM resized by receptive field;
* ``weakpaste.models.training``: the linear-probe and fine-tuning loops;
* this module: the ``Classifier`` that ties them together, and its file format.

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

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.errors import reason as _reason
from weakpaste.models.backbones import (
    PooledNet,
    backbone_family,
    new_model,
    one_thread,
    pooled_net,
    read_weakpaste_file,
    to_tensor,
    torch_write_errors,
    torchvision_model,
)
from weakpaste.models.gradcam import grad_cam_outputs, traced_forward
from weakpaste.models.inputs import (
    GREY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_batch_size,
    check_image,
    image_batches,
    segment_crops,
    squash,
)
from weakpaste.models.regions import Geometry
from weakpaste.models.training import TRAIN_MODES, train_net
from weakpaste.models.weights import WEIGHTS_FLAG, is_none

__all__ = [
    "GREY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TRAIN_MODES",
    "Classifier",
    "segment_crops",
    "set_num_threads",
]

FORMAT = "weakpaste-classifier"
FORMAT_VERSION = 1

_MIN_SIZE = 32


def set_num_threads(num_threads: int) -> None:
    """Set the number of CPU threads torch uses (process-wide); only call it when asked to.

    Args:
        num_threads: at least 1.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)


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

    def __init__(self, net: PooledNet, *, backbone: str, classes: Sequence[str], input_size: int,
                 crop_size: int, device: str, mode: str = "untrained") -> None:
        self._net = net.eval()
        self._backbone = backbone
        self._classes = tuple(classes)
        self._input_size = input_size
        self._crop_size = crop_size
        self._device = torch.device(device)
        self._mode = mode
        self._feature_dim = net.head.in_features

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
                mnasnet*, shufflenet*; or ``small_cnn``, weakpaste's own small stride-8 trunk
                to train from scratch on small data (weights "none" or a PATH only).
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
        backbone_family(backbone)  # an unknown or unsuitable name fails before any download
        model = torchvision_model(backbone, weights)
        clf = cls._assemble(backbone, model, classes, device, int(input_size), int(crop_size))
        clf._net.freeze_bn = not is_none(weights)
        return clf

    @classmethod
    def _assemble(cls, backbone: str, model: nn.Module, classes: tuple[str, ...], device: str,
                  input_size: int, crop_size: int, mode: str = "untrained") -> Classifier:
        net = pooled_net(backbone, model, len(classes), min(input_size, crop_size), device)
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

    def _to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        return to_tensor(batch, self._device)

    def _image_batches(self, images: Sequence[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
        return image_batches(images, batch_size, self._input_size)

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
        return self._infer(self._image_batches(images, check_batch_size(batch_size)))[0]

    def features(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Pooled trunk features of whole images.

        Args:
            images: N uint8 (H, W, 3) RGB images of any sizes.
            batch_size: images per forward pass.

        Returns:
            float32 (N, D) globally average-pooled last feature maps.
        """
        return self._infer(self._image_batches(images, check_batch_size(batch_size)))[1]

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
            for batch in self._image_batches(images, check_batch_size(batch_size)):
                maps.append(self._net.trunk(self._to_tensor(batch)).float().cpu().numpy())
        if not maps:
            return np.zeros((0, self._feature_dim, 0, 0), np.float32)
        return np.ascontiguousarray(np.concatenate(maps), dtype=np.float32)

    def dense_map(self, image: np.ndarray, side: int) -> tuple[np.ndarray, Geometry]:
        """The trunk's last feature map of one image squashed to ``side`` and where its cells
        sit (for ``weakpaste.models.regions.region_features``).

        Args:
            image: uint8 (H, W, 3) RGB image.
            side: the squashed input's side (>= 32; larger resolves smaller objects).

        Returns:
            (float32 (C, h, w) map, ``Geometry`` of its cells on the squashed input).
        """
        if int(side) != side or side < _MIN_SIZE:
            raise ValueError(f"side must be an integer >= {_MIN_SIZE}, got {side}")
        self._net.eval()
        # One thread: the MIL head trained on these maps would amplify last-bit differences
        # between --workers 1 (torch's threads) and worker processes (one thread each).
        with torch.inference_mode(), one_thread():
            fmap, geometry = traced_forward(self._net.trunk,
                                            self._to_tensor(squash(image, int(side))[None]))
        return fmap[0].float().cpu().numpy(), geometry

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
        step = check_batch_size(batch_size)
        return self._infer(crops[i:i + step] for i in range(0, len(crops), step))

    def gradcam(self, image: np.ndarray, class_indices: Sequence[int]) -> np.ndarray:
        """Grad-CAM maps (Selvaraju et al.) of some classes on one image.

        The image is squashed to ``input_size``; the maps follow ``weakpaste.models.gradcam``
        (Grad-CAM = CAM up to the normalisation for this pooled-linear head; each feature cell
        sits at the centre of its receptive field).

        Args:
            image: uint8 (H, W, 3) RGB image.
            class_indices: indices into :attr:`classes`, repeats allowed.

        Returns:
            float32 (len(class_indices), H, W) maps in [0, 1].
        """
        return self.gradcam_outputs(image, class_indices)[0]

    def gradcam_outputs(self, image: np.ndarray, class_indices: Sequence[int]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grad-CAM maps, class probabilities and pooled features of one image, from one
        forward pass (what :meth:`gradcam`, :meth:`predict_proba` and :meth:`features` give
        separately, for a third of the cost of the three).

        Args:
            image: uint8 (H, W, 3) RGB image.
            class_indices: indices into :attr:`classes`, repeats allowed.

        Returns:
            (float32 (len(class_indices), H, W) maps in [0, 1], float32 (K,) sigmoid
            probabilities, float32 (D,) pooled features).
        """
        image = check_image(image)
        height, width = image.shape[:2]
        idx = [int(i) for i in class_indices]
        for i in idx:
            if not 0 <= i < len(self._classes):
                raise ValueError(f"class index {i} out of range for {len(self._classes)} classes")
        self._net.eval()
        maps, logits, pooled = grad_cam_outputs(self._net, squash(image, self._input_size),
                                                idx, height, width, self._device)
        probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
        return maps, probs, pooled

    # ---------------------------------------------------------------- training

    def train(self, images: Sequence[np.ndarray], labels: np.ndarray, *, mode: str = "linear",
              epochs: int = 30, lr: float | None = None, batch_size: int = 32, seed: int = 0,
              progress: bool = True) -> dict:
        """Train on image-level labels with multi-label binary cross-entropy.

        "linear" fits a linear probe on the frozen trunk's pooled features, "finetune" trains
        trunk and head with augmentation; the same seed gives the same result. The arguments,
        the result and the errors are those of ``weakpaste.models.training.train_net``.

        Args:
            images: N uint8 (H, W, 3) RGB images of any sizes.
            labels: bool or float (N, K), 1 where the class is present.
            mode, epochs, lr, batch_size, seed, progress: see ``train_net``.

        Returns:
            {"mode", "loss" (per-epoch mean), "epochs", "lr", "seconds"}.
        """
        result = train_net(self._net, images, labels, input_size=self._input_size,
                           device=self._device, mode=mode, epochs=epochs, lr=lr,
                           batch_size=batch_size, seed=seed, progress=progress)
        self._mode = mode
        return result

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
        tmp = path.with_name(path.name + ".tmp")  # its name is in the file: keep it
        try:
            with torch_write_errors(path.parent, payload):
                torch.save(payload, tmp)
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

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
        obj = read_weakpaste_file(
            path, FORMAT, what="classifier file", fix=fix,
            foreign=f"not a weakpaste classifier file (plain weights go to {WEIGHTS_FLAG})",
            missing_fix="check the path or train and save a classifier first")
        if obj.get("version") != FORMAT_VERSION:
            raise WeakpasteError(f"{path}: unsupported classifier format version "
                                 f"{obj.get('version')!r}; {fix} with this weakpaste")
        try:
            backbone = str(obj["backbone"])
            classes = _check_classes(obj["classes"])
            input_size, crop_size = int(obj["input_size"]), int(obj["crop_size"])
            mode, state = str(obj["mode"]), obj["state_dict"]
            backbone_family(backbone)
            model = new_model(backbone)
            clf = cls._assemble(backbone, model, classes, "cpu", input_size, crop_size, mode)
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
