"""Mask kernels: compressed run-length encoding, boxes and areas of bool masks.

The compressed form is pycocotools' RLE (a dict with ``size`` [H, W] and ``counts``). It is a
generic compact mask encoding, so it is used for masks at rest everywhere; only ``io.coco``
knows the COCO-specific quirks (polygons, ``bbox`` in xywh, ``iscrowd``, bytes vs str counts).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

Rle = dict  # {"size": [H, W], "counts": str}


def encode(mask: np.ndarray) -> Rle:
    """Encode one mask.

    Args:
        mask: bool (H, W).

    Returns:
        RLE dict with ``size`` = [H, W] and ``counts`` as ``str`` (JSON-ready).
    """
    if mask.ndim != 2:
        raise ValueError(f"encode: expected a 2-D mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def encode_many(masks: np.ndarray) -> list[Rle]:
    """Encode a stack of masks (N, H, W) bool in one pycocotools call.

    pycocotools wants column-major (H, W, N) data; stacks made by ``decode_many`` or by the
    paste renderer already have that layout, so they are encoded without a copy.
    """
    if masks.ndim != 3:
        raise ValueError(f"encode_many: expected (N, H, W) masks, got shape {masks.shape}")
    if len(masks) == 0:
        return []
    hwn = masks.transpose(1, 2, 0)
    hwn = hwn.view(np.uint8) if hwn.dtype == bool else hwn.astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(hwn))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode()}
            for r in rles]


def _as_bytes(rle: Rle) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str)
            else counts}


def decode(rle: Rle) -> np.ndarray:
    """Decode one RLE into a bool (H, W) mask."""
    return mask_utils.decode(_as_bytes(rle)).astype(bool)


def decode_many(rles: list[Rle], height: int, width: int) -> np.ndarray:
    """Decode RLEs into a bool (N, H, W) stack; an empty list gives shape (0, H, W).

    The stack is a view of pycocotools' column-major (H, W, N) output: no copy. It indexes
    like any (N, H, W) array; only its memory order differs.
    """
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    out = mask_utils.decode([_as_bytes(r) for r in rles])
    return out.transpose(2, 0, 1).view(bool)


def rle_area(rle: Rle) -> int:
    """Number of foreground pixels of an RLE, without decoding it."""
    return int(mask_utils.area(_as_bytes(rle)))


def rle_boxes(rles: list[Rle]) -> np.ndarray:
    """Tight ``xyxy`` boxes of RLEs as float64 (N, 4), without decoding them."""
    if not rles:
        return np.zeros((0, 4), dtype=np.float64)
    xywh = mask_utils.toBbox([_as_bytes(r) for r in rles]).astype(np.float64).reshape(-1, 4)
    xywh[:, 2:] += xywh[:, :2]
    return xywh


class RleStack:
    """A (N, H, W) stack of compressed masks, decoded one mask at a time on demand.

    The paste renderer takes a background's instances in this form: most of them are never
    touched by a pasted object, so decoding them and encoding them again would be wasted work
    (about a fifth of a paste's time on COCO scenes); their RLE is reused as it is.
    """

    def __init__(self, rles: list[Rle] | tuple[Rle, ...], height: int, width: int) -> None:
        self.rles = tuple(rles)
        self.shape = (len(self.rles), int(height), int(width))

    def __len__(self) -> int:
        return len(self.rles)

    def decode(self, k: int) -> np.ndarray:
        """Mask ``k``, bool (H, W)."""
        return decode(self.rles[k])

    def areas(self) -> list[int]:
        """Foreground pixels per mask."""
        return [rle_area(r) for r in self.rles]

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Tight (x0, y0, x1, y1) integer boxes, x1/y1 exclusive (zeros for an empty mask)."""
        return [tuple(int(v) for v in b) for b in rle_boxes(list(self.rles))]

    def any(self) -> np.ndarray:
        """bool (H, W): the union of all masks."""
        return decode_many(list(self.rles), *self.shape[1:]).any(axis=0)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight box of a mask.

    Args:
        mask: bool (H, W).

    Returns:
        float64 (4,) ``xyxy`` in absolute pixels, x1/y1 exclusive (a one-pixel mask at (x, y)
        gives [x, y, x+1, y+1]); all zeros for an empty mask.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(4, dtype=np.float64)
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def masks_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight ``xyxy`` boxes of a (N, H, W) bool stack as float64 (N, 4)."""
    return np.stack([mask_box(m) for m in masks]) if len(masks) else np.zeros((0, 4))
