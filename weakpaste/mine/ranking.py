"""Ranking mined segments without labels: mask-quality cues, their combination, the cut-off.

FreeSeg (§3.2) ranks each refined segment by the agreement of the mask with a LORE pseudo box
(the FreeSeg score) and by the classifier's drop rate. On small data sets both say little (see
docs/mining.md, FreeSeg), so the segments are also graded by cues that need no labels and
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
class) and ``weakpaste.evaluate.funnel.precision_yield`` is the curve that shows what a
cut-off buys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from weakpaste.mine.config import RANK_CUES as CUES  # every score a ranking may use

__all__ = ["CUES", "border_contact", "centre_offset", "crossfit_folds", "crossfit_probabilities",
           "fragment_share", "keep_mask", "rank_average", "saliency_contrast", "segment_cues",
           "threshold_stability", "top_count"]

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
        {cue name: value} for the five label-free cues above.
    """
    return {"stability": threshold_stability(smooth, threshold, delta),
            "contrast": saliency_contrast(saliency, mask),
            "border": border_contact(mask),
            "centre": centre_offset(mask),
            "fragments": fragment_share(binary, mask)}


def top_count(fraction: float, n: int) -> int:
    """How many of ``n`` items the top ``fraction`` holds: ceil(fraction x n), without the
    float error that would make ceil(0.55 x 20) 12."""
    return min(n, int(np.ceil(fraction * n - 1e-9)))


def keep_mask(scores: Sequence[float], *, keep_top: float = 1.0, min_score: float = 0.0,
              groups: Sequence | None = None) -> np.ndarray:
    """Which segments a cut-off keeps: score >= ``min_score``, and among those the
    ``keep_top`` fraction of highest score, over all segments or within each group.

    Args:
        scores: N scores (larger = better).
        keep_top: the share kept of the segments that pass ``min_score``, in (0, 1].
        min_score: the least score kept.
        groups: N group labels (e.g. classes): ``keep_top`` applies within each group, so
            that every class keeps its share; None: one global cut-off.

    Returns:
        bool (N,); ties in score keep the earlier segment.
    """
    s = np.asarray(scores, dtype=np.float64)
    ok = s >= min_score
    if keep_top >= 1.0:
        return ok
    _, group = np.unique(np.asarray(groups if groups is not None else np.zeros(len(s))),
                         return_inverse=True)
    keep = np.zeros(len(s), dtype=bool)
    for g in np.unique(group):
        idx = np.flatnonzero(ok & (group == g))
        best = idx[np.argsort(-s[idx], kind="stable")]
        keep[best[:top_count(keep_top, len(idx))]] = True
    return keep


# --------------------------------------------------------------------------------------------
# Cross-fitting: classifier scores of images the scoring head never trained on


def crossfit_folds(labels: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """The fold of each image: every class's images, in a seeded random order, dealt out over
    the folds in turn, each class starting where the previous one stopped (so that the folds
    hold every class evenly and have equal sizes within one).

    Args:
        labels: N class names, one per image.
        folds: number of folds (>= 2).
        seed: seeds the order (``np.random.default_rng``).

    Returns:
        int64 (N,) fold indices in [0, folds).
    """
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=np.int64)
    names, owner = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    start = 0
    for c in range(len(names)):
        idx = np.flatnonzero(owner == c)
        idx = idx[rng.permutation(len(idx))]
        out[idx] = (start + np.arange(len(idx))) % folds
        start += len(idx)
    return out


def crossfit_probabilities(features: Mapping[str, np.ndarray], labels: Sequence[str],
                           classes: Sequence[str], folds: np.ndarray, *, train: str = "before",
                           epochs: int = 30, lr: float | None = None, batch_size: int = 32,
                           seed: int = 0) -> dict[str, np.ndarray]:
    """Each image's probability of its own class from a linear probe that never saw it.

    For every fold, a linear head (``weakpaste.models.training.linear_probe``, the linear
    mode's probe) is fitted on the pooled features ``features[train]`` of the other folds'
    images, one-hot on ``classes``, and scores the fold's images; a classifier trained on an
    image grades it near 1 whatever it shows, a held-out one says whether the image looks
    like its class.

    Args:
        features: name -> float (N, D) pooled features, one row per image (e.g. "before":
            the image, "after": the image with its LORE box filled).
        labels: N class names.
        classes: the K classes of the heads (every label among them).
        folds: int (N,) fold of each image (``crossfit_folds``).
        train: the features the heads are fitted on.
        epochs, lr, batch_size, seed: the probe's training.

    Returns:
        name -> float64 (N,) probabilities of each image's own class, for every name of
        ``features`` (NaN when every image is in one fold).
    """
    from weakpaste.models.training import linear_probe

    column = {c: k for k, c in enumerate(classes)}
    own = np.array([column[c] for c in labels], dtype=np.int64)
    targets = np.zeros((len(own), len(classes)), dtype=np.float32)
    targets[np.arange(len(own)), own] = 1.0
    out = {name: np.zeros(len(own), dtype=np.float64) for name in features}
    x = np.asarray(features[train], dtype=np.float32)
    for f in np.unique(folds):
        held = folds == f
        if held.all():  # nothing left to train on: no evidence either way
            for name in out:
                out[name][held] = np.nan
            continue
        weight, bias = linear_probe(x[~held], targets[~held], epochs=epochs, lr=lr,
                                    batch_size=batch_size, seed=seed)
        for name, feats in features.items():
            rows = np.asarray(feats, dtype=np.float32)[held]
            logits = np.einsum("nd,nd->n", rows, weight[own[held]]) + bias[own[held]]
            out[name][held] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return out
