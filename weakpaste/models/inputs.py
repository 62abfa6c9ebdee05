"""Image preparation for the mining classifier: numpy uint8 in, numpy uint8 out (no torch).

Whole images are squashed (resized without keeping the aspect ratio) to the classifier's
``input_size``; segments are cut out as EM-Paste's appendix describes (``segment_crops``) and
resized to its ``crop_size``; fine-tuning sees random resized crops (``random_resized_crop``).
The ImageNet mean/std here are those of the networks' input normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
GREY: tuple[int, int, int] = tuple(round(255 * m) for m in IMAGENET_MEAN)
"""The ImageNet-mean grey (124, 116, 104) that fills segment crops outside the mask."""

_CROP_SCALE = (0.6, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` as an int >= 1 (raises ValueError otherwise)."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    return int(batch_size)


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` if it is a uint8 (H, W, 3) RGB array (raises ValueError otherwise)."""
    if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3
            or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1):
        got = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise ValueError(f"images must be uint8 (H, W, 3) RGB arrays, got {got}")
    return image


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (height, width, 3); the same array when already that size."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    # INTER_AREA averages when shrinking (no aliasing); it degrades to nearest when enlarging.
    interp = cv2.INTER_AREA if height <= h and width <= w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def squash(image: np.ndarray, size: int) -> np.ndarray:
    """A checked uint8 (H, W, 3) image resized to (size, size, 3), aspect ratio ignored."""
    return resize(check_image(image), size, size)


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop of 60-100% of the area (aspect 3/4-4/3), squashed, flipped half the time."""
    image = check_image(image)
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
    out = resize(crop, size, size)
    return out[:, ::-1] if rng.random() < 0.5 else out


def as_masks(masks: np.ndarray | Sequence[np.ndarray], height: int,
             width: int) -> list[np.ndarray]:
    """M bool (height, width) masks from a (M, H, W) array or a sequence (raises ValueError
    for another shape)."""
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


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
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
    rgb = check_image(rgb)
    if erode < 0:
        raise ValueError(f"erode must be >= 0, got {erode}")
    height, width = rgb.shape[:2]
    masks = as_masks(masks, height, width)
    grey = np.array(GREY, np.uint8)
    out = np.empty((len(masks), size, size, 3), np.uint8)
    out[:] = grey
    kernel = np.ones((3, 3), np.uint8)
    for crop, mask in zip(out, masks, strict=True):
        box = mask_box(mask)
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
            inner = mask_box(eroded)
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
        crop[oy:oy + nh, ox:ox + nw] = resize(patch, nw, nh)
    return out


def image_batches(images: Sequence[np.ndarray], batch_size: int, size: int
                  ) -> Iterator[np.ndarray]:
    """uint8 (B, size, size, 3) batches of the squashed ``images``, in order."""
    # Integer indexing only: ``images`` may be any sequence, e.g. one that reads files lazily.
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        yield np.stack([squash(images[i], size) for i in range(start, stop)])


__all__ = ["GREY", "IMAGENET_MEAN", "IMAGENET_STD", "as_masks", "check_batch_size",
           "check_image", "image_batches", "mask_box", "random_resized_crop", "resize",
           "segment_crops", "squash"]
