"""Paste plans: every random choice of the paste stage, made with an explicit Generator.

A plan is plain data (which segments, where, how scaled, rotated, flipped and blended);
``weakpaste.paste.render`` turns it into pixels without any randomness. Given the same
Generator state, ``plan_image`` returns the same plan, whatever process it runs in.

Placements (EM-Paste §3.3 and appendix §8; FreeSeg §3.3 and appendix A.4):
    * ``random``: scale ~ U(lo, hi) of the largest size that fits the image (capped at the
      segment's own size: ``max_upscale``), random location with the object inside the image;
    * ``space-max``: EM-Paste Algorithm 2 - the maximum inscribed circle of the free region
      (no background instance, no pasted object, away from the border), scale the segment by
      r_circle / r_enclosing, centre it there, update the free region, repeat;
    * ``jitter``: Simple Copy-Paste / FreeSeg - scale ~ U(0.1, 2.0) of the segment's own size,
      random centre anywhere in the image, so objects may be partly outside and get cropped.
Every placement may also flip horizontally and rotates by a random angle in ±θ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weakpaste.core.options import Config, option, parse_float_pair
from weakpaste.ops import geometry
from weakpaste.ops.blending import BLEND_MODES

PLACEMENTS = ("random", "space-max", "jitter")
SELECTIONS = ("uniform", "balanced", "weights")


@dataclass(frozen=True)
class Placement:
    """One object to paste.

    Attributes:
        slot: which of the image's selected segments (index into ``ImagePlan.segment_ids``).
        scale: uniform scale factor applied to the crop.
        angle: rotation in degrees (counter-clockwise), about ``anchor``.
        flip: mirror the crop horizontally first.
        anchor: (x, y) point of the crop (un-flipped coordinates) that lands on ``center``.
        center: (x, y) in output-image pixels.
        blend: blending mode for this object.
    """

    slot: int
    scale: float
    angle: float
    flip: bool
    anchor: tuple[float, float]
    center: tuple[float, float]
    blend: str


@dataclass(frozen=True)
class ImagePlan:
    """Everything ``render`` needs besides pixels, for one output image."""

    segment_ids: tuple[int, ...]
    placements: tuple[Placement, ...]
    skipped: int = 0  # selected segments that found no room (space-max)


@dataclass(frozen=True)
class PlanParams(Config):
    """Parameters of planning; the paste stage's ``PasteConfig`` inherits them."""

    placement: str = option("random", choices=PLACEMENTS,
                            help="random (EM-Paste Random Paste), space-max (EM-Paste "
                                 "Algorithm 2) or jitter (FreeSeg / Simple Copy-Paste)")
    rotation: float = option(15.0, range=(0, 180), help="max |rotation| in degrees")
    flip_prob: float = option(0.5, range=(0, 1), help="probability of a horizontal flip")
    random_scale: tuple[float, float] = option(
        (0.3, 1.0), parse=parse_float_pair, metavar="LO,HI",
        help="random placement: scale range of the size that fits")
    jitter_scale: tuple[float, float] = option(
        (0.1, 2.0), parse=parse_float_pair, metavar="LO,HI",
        help="jitter placement: scale range of the segment's size")
    max_upscale: float = option(1.0, range=(0, None), open_low=True,
                                help="random placement: cap of the fit-to-image scale")
    space_max_upscale: float = option(3.0, range=(0, None), open_low=True,
                                      help="space-max: cap of r_circle / r_enclosing")
    space_min_radius: float = option(4.0, range=(0, None), open_low=True,
                                     help="space-max: stop below this free-circle radius (px)")
    blend: tuple[str, ...] = option(("gaussian",), choices=BLEND_MODES,
                                    help="blending; several = random choice per object")


def parse_count_range(text: str | int) -> tuple[int, int]:
    """'4' -> (4, 4); '1-6' -> (1, 6). Raises ValueError with the expected form."""
    try:
        if isinstance(text, int):
            lo = hi = text
        elif "-" in str(text):
            a, b = str(text).split("-", 1)
            lo, hi = int(a), int(b)
        else:
            lo = hi = int(text)
    except ValueError:
        raise ValueError(f"object count {text!r} must be N or LO-HI, e.g. 4 or 1-6") from None
    if lo < 1 or hi < lo:
        raise ValueError(f"object count {text!r} must be N or LO-HI with 1 <= LO <= HI")
    return lo, hi


def format_count_range(counts: tuple[int, int]) -> str:
    """(4, 4) -> '4'; (1, 6) -> '1-6': the form ``parse_count_range`` reads."""
    lo, hi = counts
    return str(lo) if lo == hi else f"{lo}-{hi}"


def class_probabilities(class_idx: np.ndarray, num_classes: int, mode: str,
                        weights: np.ndarray | None = None) -> np.ndarray:
    """Per-segment selection probabilities.

    Args:
        class_idx: int (N,) class index of each segment in the pool.
        num_classes: K.
        mode: ``uniform`` (each segment equally likely: the pool's class distribution),
            ``balanced`` (each class equally likely), ``weights`` (class k with probability
            proportional to ``weights[k]``); inside a class segments are equally likely.
        weights: float (K,) non-negative class weights for ``weights``.

    Returns:
        float64 (N,) summing to 1.
    """
    counts = np.bincount(class_idx, minlength=num_classes).astype(np.float64)
    if mode == "uniform":
        per_class = counts.copy()
    elif mode == "balanced":
        per_class = (counts > 0).astype(np.float64)
    elif mode == "weights":
        if weights is None or weights.shape != (num_classes,):
            raise ValueError(f"selection 'weights' needs {num_classes} class weights")
        if (weights < 0).any() or not np.isfinite(weights).all():
            raise ValueError("class weights must be finite and non-negative")
        per_class = np.where(counts > 0, weights, 0.0)
    else:
        raise ValueError(f"unknown selection {mode!r}; choose one of: {', '.join(SELECTIONS)}")
    if per_class.sum() <= 0:
        raise ValueError("class weights select no segment (all zero for the classes present)")
    per_class /= per_class.sum()
    p = per_class[class_idx] / counts[class_idx]
    return p / p.sum()


def select_segments(rng: np.random.Generator, probabilities: np.ndarray,
                    count: tuple[int, int]) -> np.ndarray:
    """Draw n_p ~ U{lo..hi} pool positions (with replacement) from ``probabilities``."""
    n = int(rng.integers(count[0], count[1] + 1))
    return rng.choice(len(probabilities), size=n, p=probabilities)


def _rotated_size(h: float, w: float, angle: float) -> tuple[float, float]:
    a = math.radians(angle)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    return w * c + h * s, w * s + h * c  # (width, height) of the rotated box


def plan_image(rng: np.random.Generator, *, image_hw: tuple[int, int],
               segment_ids: np.ndarray, masks: list[np.ndarray], occupied: np.ndarray | None,
               params: PlanParams) -> ImagePlan:
    """Plan the placements of the selected segments on one background.

    Args:
        rng: the item's Generator (the only source of randomness).
        image_hw: (H, W) of the background.
        segment_ids: bank ids of the selected segments, paste order.
        masks: bool (h_i, w_i) crop mask of each selected segment.
        occupied: bool (H, W) union of the background's own instances (space-max), or None.
        params: planning parameters.

    Returns:
        The plan; under ``space-max`` segments that find no free circle of at least
        ``space_min_radius`` are skipped and counted.
    """
    if params.placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {params.placement!r}; choose one of: "
                         f"{', '.join(PLACEMENTS)}")
    H, W = image_hw
    free = None
    if params.placement == "space-max":
        free = np.ones((H, W), dtype=bool) if occupied is None else ~occupied
    placements: list[Placement] = []
    skipped = 0
    for slot, mask in enumerate(masks):
        h, w = mask.shape
        angle = float(rng.uniform(-params.rotation, params.rotation)) if params.rotation else 0.0
        flip = bool(rng.random() < params.flip_prob)
        blend = params.blend[int(rng.integers(len(params.blend)))]
        if params.placement == "random":
            rw, rh = _rotated_size(h, w, angle)
            fit = min(W / rw, H / rh, params.max_upscale)
            scale = float(rng.uniform(*params.random_scale)) * fit
            half_w, half_h = rw * scale / 2, rh * scale / 2
            cx = float(rng.uniform(half_w, max(half_w, W - half_w)))
            cy = float(rng.uniform(half_h, max(half_h, H - half_h)))
            anchor = ((w - 1) / 2, (h - 1) / 2)
        elif params.placement == "jitter":
            scale = float(rng.uniform(*params.jitter_scale))
            cx, cy = float(rng.uniform(0, W)), float(rng.uniform(0, H))
            anchor = ((w - 1) / 2, (h - 1) / 2)
        else:
            cx, cy, r1 = geometry.max_inscribed_circle(free)
            if r1 < params.space_min_radius:
                skipped += len(masks) - slot  # the free space only shrinks from here on
                break
            ax, ay, r2 = geometry.min_enclosing_circle(mask)
            scale = min(r1 / r2, params.space_max_upscale)
            anchor = (ax, ay)
        placement = Placement(slot=slot, scale=scale, angle=angle, flip=flip, anchor=anchor,
                              center=(cx, cy), blend=blend)
        if free is not None:
            warped = geometry.warp_mask(mask, placement_matrix(placement, mask.shape), (H, W))
            if warped is not None:
                win_mask, (x0, y0, x1, y1) = warped
                free[y0:y1, x0:x1] &= ~win_mask
        placements.append(placement)
    kept_ids = tuple(int(segment_ids[p.slot]) for p in placements)
    placements = [Placement(slot=i, scale=p.scale, angle=p.angle, flip=p.flip, anchor=p.anchor,
                            center=p.center, blend=p.blend) for i, p in enumerate(placements)]
    return ImagePlan(segment_ids=kept_ids, placements=tuple(placements), skipped=skipped)


def placement_matrix(p: Placement, crop_hw: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine matrix (crop -> output pixels) of a placement."""
    return geometry.segment_affine(crop_hw[0], crop_hw[1], scale=p.scale, angle_deg=p.angle,
                                   flip=p.flip, center_src=p.anchor, center_dst=p.center)
