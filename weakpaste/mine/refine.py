"""FreeSeg's refinement (§3.1, appendix A.3): a gray-scale foreground map to one segment.

Gaussian filter, Li threshold, erosion then dilation, the largest connected component
(:func:`refine_map`); :func:`refine_steps` keeps the intermediate maps the ranking cues of
``weakpaste.mine.ranking`` read.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np


def _side_pixels(shape: tuple[int, int], fraction: float, minimum: float) -> float:
    return max(minimum, fraction * min(shape))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool (H, W) mask (ties: the first in raster
    order); an empty mask stays empty."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, dtype=bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


class Refined(NamedTuple):
    """What the refinement made of a raw map (``refine_steps``).

    Attributes:
        mask: bool (H, W) segment, possibly empty.
        threshold: Li's threshold on the smoothed map (NaN for a constant map).
        smooth: float32 (H, W) the Gaussian-filtered raw map.
        binary: bool (H, W) ``smooth > threshold`` (before the opening and the largest
            component).
    """

    mask: np.ndarray
    threshold: float
    smooth: np.ndarray
    binary: np.ndarray


def refine_map(raw: np.ndarray, *, sigma: float = 0.01, morph: float = 0.02
               ) -> tuple[np.ndarray, float]:
    """Binarise a gray-scale foreground map as FreeSeg A.3 does.

    Gaussian filter (sigma = ``sigma`` x the shorter side, at least 0.5 px), Li's minimum
    cross-entropy threshold, erosion then dilation with an elliptical kernel of radius
    ``morph`` x the shorter side (at least 1 px), and the largest connected component. When
    the erosion removes everything (a thin or tiny object) the un-eroded binary map is used, so
    that small images still give a segment.

    Args:
        raw: float (H, W) map, larger = more foreground.
        sigma: Gaussian sigma as a fraction of the shorter side.
        morph: kernel radius as a fraction of the shorter side.

    Returns:
        (bool (H, W) mask, possibly empty; the Li threshold on the smoothed map, NaN for a
        constant map).

    Raises:
        ValueError: ``raw`` is not 2-D.
    """
    refined = refine_steps(raw, sigma=sigma, morph=morph)
    return refined.mask, refined.threshold


def refine_steps(raw: np.ndarray, *, sigma: float = 0.01, morph: float = 0.02) -> Refined:
    """``refine_map`` with its intermediate maps, which the ranking cues read."""
    from skimage.filters import threshold_li

    if raw.ndim != 2:
        raise ValueError(f"expected a (H, W) map, got shape {raw.shape}")
    smooth = cv2.GaussianBlur(raw.astype(np.float32), (0, 0),
                              _side_pixels(raw.shape, sigma, 0.5))
    if not np.isfinite(smooth).all() or float(smooth.max() - smooth.min()) < 1e-6:
        empty = np.zeros(raw.shape, dtype=bool)
        return Refined(empty, float("nan"), smooth, empty)
    t = float(threshold_li(smooth))
    binary = smooth > t
    r = int(round(_side_pixels(raw.shape, morph, 1.0)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    opened = cv2.dilate(cv2.erode(binary.astype(np.uint8), kernel), kernel).astype(bool)
    return Refined(largest_component(opened if opened.any() else binary), t, smooth, binary)
