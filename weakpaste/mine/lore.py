"""FreeSeg's ranking (§3.2): LORE pseudo boxes, the FreeSeg score and the drop rate.

LORE (MosaicOS) removes the classifier's most discriminative region until the class is no
longer predicted; the box of all that was removed is the pseudo box a segment is scored
against (:func:`freeseg_score`), and the confidence lost by removing it is the drop rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from weakpaste.ops import masks as mask_ops


@dataclass
class LoreResult:
    """Localisation by region removal of one class on one image.

    Attributes:
        box: float64 (4,) xyxy pseudo box (x1/y1 exclusive): the box of all removed regions.
        p_before: the classifier's probability of the class on the image.
        p_after: the same after the whole box is filled with grey.
        steps: regions removed.
        boxes: the removed region boxes, in order (xyxy).
        features_before: float32 (D,) pooled features of the image (None from a classifier
            that gives none).
        features_after: float32 (D,) pooled features of the image with the box filled.
    """

    box: np.ndarray
    p_before: float
    p_after: float
    steps: int
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    features_before: np.ndarray | None = None
    features_after: np.ndarray | None = None

    @property
    def drop_rate(self) -> float:
        return drop_rate(self.p_before, self.p_after)


def _fill_box(image: np.ndarray, box, fill) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    out = image.copy()
    out[y0:y1, x0:x1] = fill
    return out


def _peak_region_box(cam: np.ndarray, cam_threshold: float) -> np.ndarray | None:
    """Box of the connected region around the map's maximum above ``cam_threshold`` of it."""
    peak = float(cam.max())
    if peak <= 0:
        return None
    region = cam >= cam_threshold * peak
    n, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    region = labels == labels[y, x] if n > 1 else region
    return mask_ops.mask_box(region)


def lore_box(classifier, image: np.ndarray, class_index: int, *, cam_threshold: float = 0.5,
             max_steps: int = 5, stop: float = 0.5, fill=None) -> LoreResult:
    """LORE (MosaicOS): remove the most discriminative region until the class is not predicted.

    Each step takes the classifier's Grad-CAM of the class on the current image, thresholds it
    at ``cam_threshold`` of its maximum, takes the connected region holding the maximum and
    fills that region's box with grey. It stops when the probability of the class falls below
    ``stop``, after ``max_steps`` removals, or when the Grad-CAM is empty. At least one region
    is removed. The pseudo box is the box of everything removed. One forward pass per image
    state gives its probability and its Grad-CAM together (``gradcam_outputs``), plus one for
    the union box when several regions were removed.

    Args:
        classifier: an object with ``gradcam_outputs(image, [k]) -> ((1, H, W) map in [0, 1],
            (K,) probabilities, (D,) pooled features)`` (``Classifier``).
        image: uint8 (H, W, 3) RGB.
        class_index: column of the class.
        cam_threshold: Grad-CAM binarisation, relative to its maximum.
        max_steps: most regions removed (>= 1).
        stop: the class counts as predicted while its probability is >= stop.
        fill: RGB of removed pixels (default: the ImageNet-mean grey the classifier's segment
            crops use, i.e. "nothing").

    Returns:
        The pseudo box, the probabilities and pooled features before / after removing it.
    """
    if fill is None:
        from weakpaste.models.classifier import GREY

        fill = GREY
    fill = np.asarray(fill, dtype=np.uint8)
    H, W = image.shape[:2]
    cams, probs, feats_before = classifier.gradcam_outputs(image, [class_index])
    p_before = p = float(probs[class_index])
    feats = feats_before
    current = image
    removed = np.zeros((H, W), dtype=bool)
    boxes: list[tuple[float, float, float, float]] = []
    for step in range(max(1, int(max_steps))):
        if step > 0 and p < stop:
            break
        box = _peak_region_box(cams[0], cam_threshold)
        if box is None:
            break
        x0, y0, x1, y1 = (int(v) for v in box)
        boxes.append((float(x0), float(y0), float(x1), float(y1)))
        removed[y0:y1, x0:x1] = True
        current = _fill_box(current, box, fill)
        cams, probs, feats = classifier.gradcam_outputs(current, [class_index])
        p = float(probs[class_index])
    if not removed.any():
        return LoreResult(np.zeros(4, np.float64), p_before, p_before, 0, [],
                          feats_before, feats_before)
    box = mask_ops.mask_box(removed).astype(np.float64)
    if len(boxes) > 1:  # the union of one box is that box: no extra forward pass
        _, probs, feats = classifier.gradcam_outputs(_fill_box(image, box, fill), [])
        p = float(probs[class_index])
    return LoreResult(box, p_before, p, len(boxes), boxes, feats_before, feats)


def box_mask(box, shape: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) mask of an xyxy box (x1/y1 exclusive, clipped to the image)."""
    H, W = shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m = np.zeros((H, W), dtype=bool)
    m[max(0, y0):min(H, y1), max(0, x0):min(W, x1)] = True
    return m


def freeseg_score(mask: np.ndarray, box) -> tuple[float, float, float]:
    """FreeSeg score of a segment against a (LORE) box: mean of IoB and IoM.

    IoB = |mask ∩ box| / |box| (trusts the mask), IoM = |mask ∩ box| / |mask| (trusts the box).

    Args:
        mask: bool (H, W) segment.
        box: xyxy box in the mask's pixels.

    Returns:
        (score, IoB, IoM), each in [0, 1]; 0 for an empty mask or box.
    """
    b = box_mask(box, mask.shape)
    inter = float(np.logical_and(mask, b).sum())
    area_b, area_m = float(b.sum()), float(mask.sum())
    iob = inter / area_b if area_b else 0.0
    iom = inter / area_m if area_m else 0.0
    return 0.5 * (iob + iom), iob, iom


def drop_rate(p_before: float, p_after: float) -> float:
    """Relative confidence drop (p_before - p_after) / p_before (0 when p_before is 0)."""
    return (p_before - p_after) / p_before if p_before > 0 else 0.0


def keep_segment(score: float, drop: float, min_score: float, min_drop: float) -> bool:
    """§3.2: keep a segment when both its FreeSeg score and its drop rate are larger than
    their thresholds."""
    return score > min_score and drop > min_drop
