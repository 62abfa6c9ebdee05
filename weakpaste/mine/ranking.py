"""Ranking mined segments without labels: mask-quality cues, their combination, the cut-off.

FreeSeg (§3.2) ranks each refined segment by the agreement of the mask with a LORE pseudo box
(the FreeSeg score) and by the classifier's drop rate. On small data sets both say little (see
the README's FreeSeg section), so the segments are also graded by cues that need no labels and
no classifier, read off the maps the segment came from:

* ``stability``: how little the mask changes when the threshold moves (SAM's stability
  score): |map > t + d| / |map > t - d| on the smoothed raw map around Li's threshold t. A
  right object stands out of its background with a steep edge; a wrong one (a region of
  clutter, half of two objects) is a plateau that grows or shrinks with the threshold.
* ``contrast``: mean saliency inside the mask minus outside. The salient-object model is sure
  of a clear object and unsure of an ambiguous image.
* ``border``: share of the image's border pixels the mask covers. In an object-centric photo
  the object lies inside the frame; a mask that runs out of it has spilled into the
  background or onto a neighbour.
* ``centre``: distance of the mask's centroid from the image centre, over the half diagonal.
  An object-centric photo is centred on its object (the co-segmentation's prior, too).
* ``fragments``: share of the thresholded foreground that the kept (largest) component holds.
  A map that breaks into several pieces did not find one object.

Each cue is a number per segment; ``rank_average`` turns the columns into percentile ranks
(direction: ``CUES``), so that no cue's scale or unit weighs, and averages them: an
unsupervised combination with no weight fitted to any ground truth. ``keep_mask`` applies the
user's cut-off (``--min-score`` on that average, ``--keep-top`` fraction, optionally per
class) and ``precision_yield`` is the curve that shows what a cut-off buys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

CUES: dict[str, int] = {
    "stability": +1,
    "contrast": +1,
    "border": -1,
    "centre": -1,
    "fragments": +1,
}
"""Label-free cues and their direction (+1: larger is better, -1: smaller is better)."""


def threshold_stability(smooth: np.ndarray, threshold: float, delta: float = 0.1) -> float:
    """SAM's stability score of a thresholded map: |map > t + d| / |map > t - d|.

    The nested masks' IoU is that ratio; 1 when no pixel lies within ``delta`` of the
    threshold (a steep edge), near 0 for a plateau around it.

    Args:
        smooth: float (H, W) map.
        threshold: the threshold t the mask was cut at.
        delta: the shift d, in the map's units.

    Returns:
        A value in [0, 1]; 0 when nothing lies above t - d.
    """
    low = int(np.count_nonzero(smooth > threshold - delta))
    high = int(np.count_nonzero(smooth > threshold + delta))
    return high / low if low else 0.0


def saliency_contrast(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Mean saliency inside ``mask`` minus outside (an empty side counts as 0).

    Args:
        saliency: float (H, W) in [0, 1].
        mask: bool (H, W).

    Returns:
        A value in [-1, 1].
    """
    inside = float(saliency[mask].mean()) if mask.any() else 0.0
    outside = float(saliency[~mask].mean()) if not mask.all() else 0.0
    return inside - outside


def border_contact(mask: np.ndarray) -> float:
    """Share of the image's border pixels (the outermost rows and columns) inside ``mask``.

    Args:
        mask: bool (H, W).

    Returns:
        A value in [0, 1] (corner pixels count once).
    """
    h, w = mask.shape
    if h <= 2 or w <= 2:
        return float(mask.mean()) if mask.size else 0.0
    ring = int(mask[0].sum() + mask[-1].sum() + mask[1:-1, 0].sum() + mask[1:-1, -1].sum())
    return ring / (2 * w + 2 * (h - 2))


def centre_offset(mask: np.ndarray) -> float:
    """Distance of the mask's centroid from the image centre over the half diagonal.

    Pixel centres are at (i + 0.5) / size in normalised coordinates, so a mask symmetric
    about the centre gives 0 and a corner pixel of a large image nearly 1.

    Args:
        mask: bool (H, W), not empty.

    Returns:
        A value in [0, 1]; 1 for an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return 1.0
    h, w = mask.shape
    dy = (ys.mean() + 0.5) / h - 0.5
    dx = (xs.mean() + 0.5) / w - 0.5
    return float(np.hypot(dy, dx) / np.hypot(0.5, 0.5))


def fragment_share(binary: np.ndarray, mask: np.ndarray) -> float:
    """Share of the thresholded foreground ``binary`` that the kept ``mask`` covers.

    Args:
        binary: bool (H, W), the map above its threshold (before the largest component).
        mask: bool (H, W), the segment kept from it.

    Returns:
        A value in [0, 1] (1 when the foreground was one piece; 0 when it is empty).
    """
    total = int(np.count_nonzero(binary))
    return int(np.count_nonzero(mask & binary)) / total if total else 0.0


def rank_average(values: Mapping[str, Sequence[float]], directions: Mapping[str, int]
                 ) -> np.ndarray:
    """Mean percentile rank of each segment over the cues (unsupervised combination).

    Each cue's column becomes ranks in (0, 1] (ties: their mean rank; a NaN, a cue that is
    not defined for a segment, takes the middle 0.5), turned round for a cue whose smaller
    values are better, and the ranks are averaged with equal weights.

    Args:
        values: cue name -> N values (one per segment).
        directions: cue name -> +1 (larger is better) or -1; only these cues are used.

    Returns:
        float64 (N,) in (0, 1]; larger = better. N = 0 gives an empty array.

    Raises:
        ValueError: no cue, a cue missing from ``values`` or columns of different lengths.
    """
    from scipy.stats import rankdata

    if not directions:
        raise ValueError("rank_average needs at least one cue")
    missing = [k for k in directions if k not in values]
    if missing:
        raise ValueError(f"cue {missing[0]!r} has no values")
    cols = [np.asarray(values[k], dtype=np.float64) * np.sign(directions[k]) for k in directions]
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise ValueError("every cue needs one value per segment")
    if n == 0:
        return np.zeros(0, np.float64)
    ranks = []
    for col in cols:
        ok = np.isfinite(col)
        r = np.full(n, 0.5)
        if ok.any():
            r[ok] = rankdata(col[ok]) / ok.sum()
        ranks.append(r)
    return np.mean(ranks, axis=0)


def segment_cues(saliency: np.ndarray, smooth: np.ndarray, threshold: float,
                 binary: np.ndarray, mask: np.ndarray, *, delta: float = 0.1
                 ) -> dict[str, float]:
    """Every label-free cue of one refined segment (see the module docstring).

    Args:
        saliency: float (H, W) saliency map in [0, 1].
        smooth: float (H, W) smoothed raw map the segment was thresholded from.
        threshold: the threshold it was cut at.
        binary: bool (H, W) ``smooth > threshold``.
        mask: bool (H, W) the segment (not empty).
        delta: the stability's threshold shift.

    Returns:
        {cue name: value} for every name of ``CUES``.
    """
    return {"stability": threshold_stability(smooth, threshold, delta),
            "contrast": saliency_contrast(saliency, mask),
            "border": border_contact(mask),
            "centre": centre_offset(mask),
            "fragments": fragment_share(binary, mask)}
