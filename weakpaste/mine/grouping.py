"""Selective search for F-EM's proposals: base segmentations and their hierarchical grouping.

The kernels behind :func:`weakpaste.mine.proposals.generate_proposals` (see its module for the
pipeline): the working-resolution grid, Felzenszwalb / SLIC base segmentations, Lab colour
histograms, region adjacency, the greedy merging of the most similar adjacent pair (Uijlings
et al. 2013) with its stability order, and EM-Paste's size filters and de-duplication.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import felzenszwalb, slic

from weakpaste.mine.config import MIN_IMAGE_SIDE
from weakpaste.ops.grid import Grid, nearest_index

DUPLICATE_IOU = 0.9
"""Two candidates overlapping more than this are near-duplicates: only the first is kept."""



@dataclass(frozen=True)
class _Strategy:
    """Weights of the similarity terms of one selective-search grouping."""

    colour: float
    size: float
    fill: float


# Colour + size + fill, and size + fill alone (compact growth along the base regions'
# boundaries, blind to colour, which varies inside many objects). A gradient-orientation
# (texture) histogram term was tried too: it lowered coco_mini recall (79.8% -> 77.6% at IoU 0.5
# on 100 images) and cost ~20 ms, so it is left out.
_CSF = _Strategy(colour=1.0, size=1.0, fill=1.0)
_SF = _Strategy(colour=0.0, size=1.0, fill=1.0)


@dataclass(frozen=True)
class _BaseSpec:
    """One base segmentation and the groupings run on it.

    ``downscale`` > 1 runs the segmentation on the working image shrunk by up to that factor
    (never below :data:`_SEGMENT_MIN_SIDE` on the longer side) and upsamples the labels:
    skimage's Felzenszwalb costs ~0.2 s at 512 px on one core here, and on coco_mini the
    coarser over-segmentations cost no recall once regions are grouped (60 images, no cap:
    Felzenszwalb at 512 / 256 px 74.2% / 73.2%, SLIC at 512 / 256 px 73.2% / 74.7%).
    """

    method: str
    param: float  # felzenszwalb: scale; slic: n_segments
    downscale: int
    strategies: tuple[_Strategy, ...]


# Chosen by greedy forward selection among 6 base segmentations x 4 strategies on 100 coco_mini
# images, for recall at 300 candidates (figures in the module docstring).
BASE_SPECS: dict[str, tuple[_BaseSpec, ...]] = {
    "felzenszwalb": (_BaseSpec("felzenszwalb", 100.0, 2, (_SF,)),
                     _BaseSpec("felzenszwalb", 300.0, 2, (_SF, _CSF)),
                     _BaseSpec("felzenszwalb", 50.0, 2, (_SF,))),
    "slic": (_BaseSpec("slic", 200.0, 2, (_CSF,)),),
}
_SEGMENT_MIN_SIDE = 256
_FELZ_SIGMA = 0.8
# Felzenszwalb's smallest region, as a fraction of the (segmented) image area: ~16 px at 256 px.
_FELZ_MIN_SIZE = 2.5e-4
_SLIC_COMPACTNESS = 10.0
_COLOUR_BINS = 25


# --------------------------------------------------------------------------------------------
# Working-resolution grid
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Proposals
# --------------------------------------------------------------------------------------------


def extents_to_boxes(ext: np.ndarray, grid: Grid) -> np.ndarray:
    """Full-resolution ``xyxy`` boxes (x1/y1 exclusive), float64 (M, 4), of working-resolution
    extents int (M, 4) rmin, rmax, cmin, cmax."""
    return np.stack([grid.col_start[ext[:, 2]], grid.row_start[ext[:, 0]],
                     grid.col_start[ext[:, 3]] + grid.col_count[ext[:, 3]],
                     grid.row_start[ext[:, 1]] + grid.row_count[ext[:, 1]]],
                    axis=1).astype(np.float64)


def region_extents(labels: np.ndarray, n_regions: int) -> np.ndarray:
    """Working-resolution extents of each region, int64 (R, 4): rmin, rmax, cmin, cmax.

    A region id absent from the map gets an empty extent that no min/max can pick.
    """
    ext = np.empty((n_regions, 4), dtype=np.int64)
    ext[:, [0, 2]] = np.iinfo(np.int32).max
    ext[:, [1, 3]] = -1
    for r, sl in enumerate(ndimage.find_objects(labels + 1, max_label=n_regions)):
        if sl is not None:
            ext[r] = (sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1)
    return ext


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def as_rgb(image: np.ndarray, who: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB from uint8/float grayscale, RGB or RGBA (alpha dropped)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise ValueError(f"{who}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape "
                         f"{img.shape}")
    if img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif np.issubdtype(img.dtype, np.floating):
        # Float images follow skimage's convention: values in [0, 1].
        img = np.clip(np.rint(np.nan_to_num(img) * 255.0), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"{who}: expected a uint8 or float image, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    h, w = img.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(f"{who}: image is {h}x{w} pixels; proposals need at least "
                         f"{MIN_IMAGE_SIDE} pixels on each side")
    return np.ascontiguousarray(img)


def working_image(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """The image shrunk (never enlarged) so that its longer side is at most ``max_side``."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------
# Base segmentations
# --------------------------------------------------------------------------------------------


def _compact_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel to consecutive ids 0..R-1 (in order of the old ids), int32."""
    labels = labels.astype(np.int64, copy=False)
    present = np.bincount(labels.reshape(-1)) > 0
    lut = (np.cumsum(present) - 1).astype(np.int32)
    return lut[labels]


def base_segmentation(spec: _BaseSpec, rgb: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """One base segmentation of the working image, int32 (h, w) consecutive region ids."""
    h, w = rgb.shape[:2]
    factor = min(float(spec.downscale), max(h, w) / _SEGMENT_MIN_SIDE)
    if factor > 1.0:
        size = (max(1, round(w / factor)), max(1, round(h / factor)))
        small_rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        small_lab = cv2.resize(lab, size, interpolation=cv2.INTER_AREA)
    else:
        small_rgb, small_lab = rgb, lab
    sh, sw = small_rgb.shape[:2]
    if spec.method == "felzenszwalb":
        min_size = max(4, round(_FELZ_MIN_SIZE * sh * sw))
        labels = felzenszwalb(small_rgb, scale=spec.param, sigma=_FELZ_SIGMA, min_size=min_size,
                              channel_axis=-1)
    elif spec.method == "slic":
        labels = slic(small_lab, n_segments=int(spec.param), compactness=_SLIC_COMPACTNESS,
                      start_label=0, convert2lab=False, channel_axis=-1)
    else:  # pragma: no cover - specs are internal
        raise AssertionError(spec.method)
    if (sh, sw) != (h, w):
        labels = labels[nearest_index(h, sh)][:, nearest_index(w, sw)]
    return _compact_labels(labels)


# --------------------------------------------------------------------------------------------
# Selective-search grouping
# --------------------------------------------------------------------------------------------


def colour_codes(lab_u8: np.ndarray) -> np.ndarray:
    """Histogram bin of each pixel in each Lab channel, int64 (3, h*w), bins 0..24."""
    return (lab_u8.reshape(-1, 3).T.astype(np.int64) * _COLOUR_BINS) // 256


def _colour_histograms(labels_flat: np.ndarray, n: int, codes: np.ndarray) -> np.ndarray:
    """L1-normalised per-region Lab histograms, float64 (n, 3 * 25)."""
    hist = np.concatenate(
        [np.bincount(labels_flat * _COLOUR_BINS + c, minlength=n * _COLOUR_BINS)
         .reshape(n, _COLOUR_BINS) for c in codes], axis=1).astype(np.float64)
    hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    return hist


def _adjacent_pairs(labels: np.ndarray, n: int) -> np.ndarray:
    """Distinct 4-adjacent region pairs (a < b), int64 (P, 2)."""
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        diff = a != b
        lo = np.minimum(a[diff], b[diff]).astype(np.int64)
        hi = np.maximum(a[diff], b[diff]).astype(np.int64)
        pairs.append(lo * n + hi)
    codes = np.concatenate(pairs)
    # n*n bins stay small (a few hundred regions) and bincount beats sorting for np.unique.
    codes = np.flatnonzero(np.bincount(codes, minlength=n * n)) if n <= 4096 else np.unique(codes)
    return np.stack([codes // n, codes % n], axis=1)


@dataclass(frozen=True)
class _Hierarchy:
    """Every node of one selective-search grouping of a label map with R regions.

    Rows 0..R-1 are the base regions, row R+t the region made by merge t (T = 2R-1 rows when
    the regions form one connected graph).

    Attributes:
        member: bool (T, R) which base regions each node unions.
        extent: int64 (T, 4) working-resolution rmin, rmax, cmin, cmax.
        stability: float64 (T,) similarity of the merge that made the node (the maximum
            possible for base regions) minus that of the merge that absorbed it (0 for the
            root): how long the node stood out from its surroundings while regions grew.
    """

    member: np.ndarray
    extent: np.ndarray
    stability: np.ndarray


def hierarchies(labels: np.ndarray, codes: np.ndarray, strategies: Sequence[_Strategy]
                 ) -> list[_Hierarchy]:
    """Selective-search grouping of one base segmentation, once per strategy.

    Args:
        labels: int32 (h, w) consecutive region ids 0..R-1.
        codes: int64 (3, h*w) colour bins of the working image's pixels.
        strategies: similarity weights, one grouping each.

    Returns:
        One :class:`_Hierarchy` per strategy.
    """
    n = int(labels.max()) + 1
    flat = labels.reshape(-1).astype(np.int64)
    colour = _colour_histograms(flat, n, codes)
    size = np.bincount(flat, minlength=n).astype(np.float64)
    ext = region_extents(labels, n)
    pairs = _adjacent_pairs(labels, n) if n > 1 else np.zeros((0, 2), dtype=np.int64)
    return [_group(colour, size, ext, pairs, float(labels.size), s) for s in strategies]


def _similarity(strat: _Strategy, colour: np.ndarray, size: np.ndarray, ext: np.ndarray,
                a: np.ndarray | int, b: np.ndarray, im_size: float) -> np.ndarray:
    """Similarity of regions ``a`` and ``b`` (broadcast), float64; each term is in [0, 1]."""
    sim = np.zeros(b.size)
    if strat.colour:
        sim += strat.colour * np.minimum(colour[a], colour[b]).sum(axis=1)
    joint = size[a] + size[b]
    if strat.size:
        # Favours merging small regions first, so that regions of all sizes grow evenly.
        sim += strat.size * (1.0 - joint / im_size)
    if strat.fill:
        # Favours pairs that fill their joint box: merges that close holes and gaps.
        box_h = np.maximum(ext[a, 1], ext[b, 1]) - np.minimum(ext[a, 0], ext[b, 0]) + 1
        box_w = np.maximum(ext[a, 3], ext[b, 3]) - np.minimum(ext[a, 2], ext[b, 2]) + 1
        sim += strat.fill * (1.0 - (box_h * box_w - joint) / im_size)
    return sim


def _group(colour0: np.ndarray, size0: np.ndarray, ext0: np.ndarray, pairs: np.ndarray,
           im_size: float, strat: _Strategy) -> _Hierarchy:
    """Greedy hierarchical grouping of R regions; see :func:`hierarchies`.

    Region state lives in arrays of 2R-1 rows (merged nodes appended), pair similarities in a
    heap with lazy deletion; no pixel is touched after the initial histograms.
    """
    n = size0.size
    total = 2 * n - 1
    colour = np.zeros((total, colour0.shape[1]))
    colour[:n] = colour0
    size = np.zeros(total)
    size[:n] = size0
    ext = np.zeros((total, 4), dtype=np.int64)
    ext[:n] = ext0
    member = np.zeros((total, n), dtype=bool)
    member[np.arange(n), np.arange(n)] = True
    top = strat.colour + strat.size + strat.fill
    created = np.full(total, top)
    absorbed = np.zeros(total)
    alive = np.zeros(total, dtype=bool)
    alive[:n] = True
    neighbours: list[set[int]] = [set() for _ in range(total)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)

    heap: list[tuple[float, int, int]] = []
    if len(pairs):
        sim = _similarity(strat, colour, size, ext, pairs[:, 0], pairs[:, 1], im_size)
        heap = list(zip((-sim).tolist(), pairs[:, 0].tolist(), pairs[:, 1].tolist(),
                        strict=True))
        heapq.heapify(heap)
    k = n
    while heap:
        neg_sim, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue  # a stale pair: one side was merged already
        created[k] = absorbed[i] = absorbed[j] = -neg_sim
        si, sj = size[i], size[j]
        size[k] = si + sj
        colour[k] = (si * colour[i] + sj * colour[j]) / size[k]
        ext[k] = (min(ext[i, 0], ext[j, 0]), max(ext[i, 1], ext[j, 1]),
                  min(ext[i, 2], ext[j, 2]), max(ext[i, 3], ext[j, 3]))
        np.logical_or(member[i], member[j], out=member[k])
        alive[i] = alive[j] = False
        alive[k] = True
        nbrs = (neighbours[i] | neighbours[j]) - {i, j}
        for m in nbrs:
            neighbours[m].discard(i)
            neighbours[m].discard(j)
            neighbours[m].add(k)
        neighbours[k] = nbrs
        neighbours[i] = neighbours[j] = set()
        if nbrs:
            others = np.fromiter(sorted(nbrs), dtype=np.int64, count=len(nbrs))
            sims = _similarity(strat, colour, size, ext, k, others, im_size)
            for s, m in zip((-sims).tolist(), others.tolist(), strict=True):
                heapq.heappush(heap, (s, m, k))
        k += 1
    # Regions that do not form one connected graph stop short of a single root.
    return _Hierarchy(member[:k], ext[:k], created[:k] - absorbed[:k])


# --------------------------------------------------------------------------------------------
# Filters and the public entry point
# --------------------------------------------------------------------------------------------


def size_ok(areas: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int], *,
             min_area: float, max_span: float) -> np.ndarray:
    """bool (M,): area (fraction) at least ``min_area`` and box under ``max_span`` both ways."""
    big_h, big_w = image_shape
    return ((areas >= min_area)
            & (boxes[:, 2] - boxes[:, 0] < max_span * big_w)
            & (boxes[:, 3] - boxes[:, 1] < max_span * big_h))


class Candidates(Protocol):
    """What the filters below need of :class:`weakpaste.mine.proposals.Proposals`.

    A protocol rather than the class, because ``proposals`` imports this module.
    """

    @property
    def image_shape(self) -> tuple[int, int]: ...

    def __len__(self) -> int: ...

    def candidate(self, i: int) -> tuple[int, np.ndarray]: ...

    def select(self, indices: Sequence[int] | np.ndarray) -> Self: ...

    def areas(self) -> np.ndarray: ...

    def boxes(self) -> np.ndarray: ...

    def ious(self) -> np.ndarray: ...


def dedup_cap(props: Candidates, groups: Sequence[np.ndarray], max_candidates: int
              ) -> Candidates:
    """Drop near-duplicates and cap the number of candidates.

    Args:
        props: the candidates.
        groups: disjoint int64 arrays of candidate indices, each in its own priority
            order (e.g. one per hierarchy). The final order interleaves them round-robin, so
            that the cap keeps a share of every group; of two near-duplicates the earlier in
            that order is kept.
        max_candidates: most candidates kept.

    Returns:
        The surviving candidates, in interleaved priority order.
    """
    order: list[int] = []
    longest = max((g.size for g in groups), default=0)
    for rank in range(longest):
        order.extend(int(g[rank]) for g in groups if rank < g.size)
    # Identical region sets first (cheap), then IoU on what is left.
    seen: set[tuple[int, bytes]] = set()
    unique = []
    for i in order:
        source, ids = props.candidate(i)
        key = (source, ids.tobytes())
        if key not in seen:
            seen.add(key)
            unique.append(i)
    props = props.select(unique)
    if len(props) == 0:
        return props
    iou = props.ious()
    suppressed = np.zeros(len(props), dtype=bool)
    keep = []
    for i in range(len(props)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == max_candidates:
            break
        suppressed |= iou[i] > DUPLICATE_IOU
    return props.select(keep)


def filter_candidates(props: Candidates, groups: Sequence[np.ndarray], *, min_area: float,
                      max_span: float, max_candidates: int) -> Candidates:
    """EM-Paste's filters on existing proposals: size and span, then duplicates and the cap."""
    ok = size_ok(props.areas(), props.boxes(), props.image_shape, min_area=min_area,
                  max_span=max_span)
    return dedup_cap(props, [g[ok[g]] for g in groups], max_candidates)


def check_options(max_side: int, min_area: float, max_span: float, max_candidates: int,
                   who: str) -> None:
    """Raise a ValueError, naming ``who``, for a proposal option out of its range."""
    if not (isinstance(max_side, int | np.integer) and max_side >= MIN_IMAGE_SIDE):
        raise ValueError(f"{who}: max_side must be an integer >= {MIN_IMAGE_SIDE}, "
                         f"got {max_side!r}")
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"{who}: min_area must be in [0, 1), got {min_area!r}")
    if not max_span > 0.0:
        raise ValueError(f"{who}: max_span must be > 0 (above 1 disables the filter), "
                         f"got {max_span!r}")
    if not (isinstance(max_candidates, int | np.integer) and max_candidates >= 1):
        raise ValueError(f"{who}: max_candidates must be an integer >= 1, "
                         f"got {max_candidates!r}")
