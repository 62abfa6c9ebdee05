"""F-EM's ``saliency`` proposals: connected foreground regions of a salient-object map.

A salient-object network (IS-Net) run on the whole image finds the dominant objects; run on a
crop around a Grad-CAM region (the box enlarged x1.5) it finds the object the classifier looks
at, even when it is small or not the dominant one. Every 8-connected foreground region
(``saliency >= threshold``) of at least ``min_area`` of the image is a candidate, and so is the
union of the regions when there are several (a person split by a bag strap, a group).

On PennFudan (50 pairs, IS-Net at 512 px) these candidates, 4.4 per pair, hold a segment of
IoU >= 0.5 with a pedestrian for 92% of the pairs, against 78% for all 300 Felzenszwalb/SLIC
proposals (see benchmarks/README.md). Maps are cached on disk
(``weakpaste.mine.saliency.SaliencyCache``): a crop's map under the image's SHA-256 and the box.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


def cam_regions(cam: np.ndarray, threshold: float = 0.5, expand: float = 1.5,
                min_side: int = 64) -> np.ndarray:
    """Boxes around the connected regions of a thresholded Grad-CAM, enlarged for cropping.

    Each 8-connected component of ``cam >= threshold`` gives its tight box, scaled by
    ``expand`` about its centre; a side is at least ``min_side`` pixels and at least half of
    the other side (salient-object networks want some context around the object), and the box
    is clipped to the image. Boxes under 16 pixels on a side after clipping are dropped.

    Args:
        cam: float (H, W) Grad-CAM in [0, 1].
        threshold: binarisation threshold.
        expand: box scale factor (>= 1).
        min_side: smallest box side before clipping, in pixels.

    Returns:
        int64 (R, 4) boxes ``xyxy`` (x1/y1 exclusive), largest region first.

    Raises:
        ValueError: ``expand`` < 1.
    """
    if expand < 1:
        raise ValueError(f"cam_regions: expand must be >= 1, got {expand}")
    h, w = cam.shape
    labels, n = ndimage.label(cam >= threshold, structure=_EIGHT)
    slices = ndimage.find_objects(labels)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    out = []
    for k in np.argsort(-areas, kind="stable"):
        ys, xs = slices[k]
        cx, cy = (xs.start + xs.stop) / 2, (ys.start + ys.stop) / 2
        bw = max((xs.stop - xs.start) * expand, min_side)
        bh = max((ys.stop - ys.start) * expand, min_side)
        bw, bh = max(bw, bh / 2), max(bh, bw / 2)
        box = (max(0, round(cx - bw / 2)), max(0, round(cy - bh / 2)),
               min(w, round(cx + bw / 2)), min(h, round(cy + bh / 2)))
        if box[2] - box[0] >= 16 and box[3] - box[1] >= 16:
            out.append(box)
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def saliency_segments(saliency: np.ndarray, threshold: float = 0.5, min_area: float = 0.002,
                      box: Sequence[int] | None = None, shape: tuple[int, int] | None = None,
                      union: bool = True) -> np.ndarray:
    """Candidate masks from a salient-object map: its connected foreground regions.

    Args:
        saliency: float (h, w) map in [0, 1] (of the image, or of the crop ``box``).
        threshold: foreground threshold.
        min_area: smallest region, as a fraction of the whole image.
        box: ``xyxy`` int crop the map covers, or None for the whole image.
        shape: (H, W) of the whole image when ``box`` is given.
        union: also return the union of the regions when there are several.

    Returns:
        bool (K, H, W) masks at the image's size, largest region first (the union last).

    Raises:
        ValueError: a box without ``shape``, or a map whose shape is not the box's.
    """
    if box is None:
        shape, (x0, y0) = saliency.shape, (0, 0)
    elif shape is None:
        raise ValueError("saliency_segments: pass the image shape with a crop box")
    else:
        x0, y0 = int(box[0]), int(box[1])
        if saliency.shape != (int(box[3]) - y0, int(box[2]) - x0):
            raise ValueError(f"saliency_segments: map shape {saliency.shape} does not match "
                             f"the box {tuple(int(v) for v in box)}")
    h, w = saliency.shape
    labels, n = ndimage.label(saliency >= threshold, structure=_EIGHT)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = [k + 1 for k in np.argsort(-areas, kind="stable")
            if areas[k] >= min_area * shape[0] * shape[1]]
    masks = np.zeros((len(keep) + (union and len(keep) > 1), *shape), dtype=bool)
    for i, k in enumerate(keep):
        masks[i, y0:y0 + h, x0:x0 + w] = labels == k
    if len(masks) > len(keep):
        masks[-1] = masks[:-1].any(0)
    return masks


def crop_digest(digest: str, box: Sequence[int]) -> str:
    """The cache name of a crop's map: the image's SHA-256 and the box."""
    text = f"{digest}:{','.join(str(int(v)) for v in box)}"
    return hashlib.sha256(text.encode()).hexdigest()


def to_working(masks: np.ndarray, working_shape: tuple[int, int]) -> np.ndarray:
    """Full-resolution masks at the proposals' working resolution (area majority).

    Args:
        masks: bool (K, H, W).
        working_shape: (h, w), at most (H, W).

    Returns:
        bool (K', h, w): the masks still non-empty there (empty ones are dropped).
    """
    if masks.shape[1:] == tuple(working_shape):
        return masks[masks.any((1, 2))]
    h, w = working_shape
    small = np.stack([cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
                      >= 0.5 for m in masks]) if len(masks) else np.zeros((0, h, w), bool)
    return small[small.any((1, 2))]


class SaliencyProposer:
    """The saliency candidates of one image: whole-image regions + regions in CAM crops.

    Args:
        backend: a saliency backend (``weakpaste.mine.saliency``).
        cache: a ``SaliencyCache`` or None.
        threshold: foreground threshold of the maps.
        min_area: smallest region (fraction of the image).
        expand: Grad-CAM region box scale for the crops.
        cam_threshold: Grad-CAM binarisation for the crop boxes.
    """

    def __init__(self, backend, cache=None, *, threshold: float = 0.5, min_area: float = 0.002,
                 expand: float = 1.5, cam_threshold: float = 0.5):
        self.backend, self.cache = backend, cache
        self.threshold, self.min_area = threshold, min_area
        self.expand, self.cam_threshold = expand, cam_threshold
        self.calls = 0  # maps computed (not from the cache)

    def _map(self, image: np.ndarray, digest: str) -> np.ndarray:
        from weakpaste.mine.saliency import cached_saliency

        sal, hit = cached_saliency(self.backend, image, digest, self.cache)
        self.calls += not hit
        return sal

    def whole(self, image: np.ndarray, digest: str) -> np.ndarray:
        """bool (K, H, W) regions of the whole image's map."""
        return saliency_segments(self._map(image, digest), self.threshold, self.min_area)

    def in_cam(self, image: np.ndarray, digest: str, cam: np.ndarray) -> np.ndarray:
        """bool (K, H, W) regions of the maps of the crops around ``cam``'s regions."""
        parts = [saliency_segments(self._map(np.ascontiguousarray(image[y0:y1, x0:x1]),
                                             crop_digest(digest, (x0, y0, x1, y1))),
                                   self.threshold, self.min_area, box=(x0, y0, x1, y1),
                                   shape=image.shape[:2])
                 for x0, y0, x1, y1 in cam_regions(cam, self.cam_threshold, self.expand)]
        return np.concatenate(parts) if parts else np.zeros((0, *image.shape[:2]), bool)
