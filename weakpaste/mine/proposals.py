"""Class-agnostic region proposals: the candidate masks that F-EM chooses object masks from.

Pipeline (:func:`generate_proposals`):

1. The image is shrunk so that its longer side is at most ``max_side`` (the *working
   resolution*); everything below runs there and masks are mapped back to full resolution only
   when asked for.
2. Base segmentations over-segment the image: Felzenszwalb-Huttenlocher graph segmentation at
   scales 50, 100 and 300 and SLIC superpixels (200 segments), at half the working resolution
   (but at least 256 px on the longer side).
3. Selective search (Uijlings et al. 2013) groups each base segmentation hierarchically: starting
   from its regions, the most similar pair of adjacent regions is merged until one region is
   left. Similarity is a sum of Lab colour-histogram intersection (25 bins per channel), size
   similarity (small regions merge first) and fill similarity (the pair fills its joint box);
   five groupings use either all three terms or size + fill alone. Every region of every
   hierarchy, base regions included, is a candidate.
4. EM-Paste's filters (appendix §6): candidates under ``min_area`` of the image or whose box
   spans almost the whole width or height are dropped, near-duplicates (same regions, or IoU
   above 0.9) too, and at most ``max_candidates`` are kept: the hierarchies take turns, each
   offering its most *stable* candidates first (those that stood out longest from their
   surroundings while regions grew).

Measured on coco_mini (one core, 640 px images, defaults): 0.31 s per image, ~296 candidates;
GT instances of at least 1% of the image with a candidate of IoU >= 0.5: 80.0% on the first 40
images (mean best IoU 0.63), 79.5% on the first 100 (used for tuning), 69.3% on the other 96.

Candidates are stored as unions of base regions (:mod:`weakpaste.mine.candidates`), never as
a mask stack.

Example:
    >>> import numpy as np
    >>> from weakpaste.demo.synthetic import make_scene
    >>> scene = make_scene(np.random.default_rng(0))
    >>> props = generate_proposals(scene.image)
    >>> props.masks([0]).shape == (1, *scene.image.shape[:2])
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
from scipy import sparse

from weakpaste.mine.candidates import RegionUnions
from weakpaste.mine.config import METHODS, MIN_IMAGE_SIDE
from weakpaste.mine.grouping import (
    BASE_SPECS,
    as_rgb,
    base_segmentation,
    check_options,
    colour_codes,
    dedup_cap,
    extents_to_boxes,
    filter_candidates,
    hierarchies,
    region_extents,
    size_ok,
    working_image,
)
from weakpaste.ops.grid import Grid


class MaskProposer(Protocol):
    """A model that proposes explicit masks (SAM): ``propose(rgb, max_side) -> Proposals``."""

    def propose(self, image: np.ndarray, *, max_side: int = 512) -> Proposals: ...


__all__ = [
    "METHODS",
    "MIN_IMAGE_SIDE",
    "Proposals",
    "generate_proposals",
]


class Proposals(RegionUnions):
    """Candidate masks of one image and their statistics, all computed per base region.

    Storage and constructor as :class:`weakpaste.mine.candidates.RegionUnions` (candidate
    ``i`` is the union of regions ``ids`` of ``label_maps[source]``, or explicit mask
    ``explicit_masks[ids[0]]`` when ``source == -1``). Statistics (areas, boxes, distances,
    overlaps) are exact for the full-resolution masks, up to the distance of a working pixel
    being taken at its block's centre.
    """

    # -- per-candidate statistics ------------------------------------------------------------

    def areas(self) -> np.ndarray:
        """Area of each candidate's full-resolution mask as a fraction of the image.

        Returns:
            float64 (M,) in (0, 1].
        """
        return self._pixel_areas() / float(self._image_shape[0] * self._image_shape[1])

    def boxes(self) -> np.ndarray:
        """Tight boxes of the full-resolution masks.

        Returns:
            float64 (M, 4) ``xyxy`` in full-resolution pixels, x1/y1 exclusive (the same as
            :func:`weakpaste.ops.masks.masks_boxes` of :meth:`masks`).
        """
        cached = self._cache.get("boxes")
        if cached is not None:
            return cached.copy()  # type: ignore[union-attr]
        h, w = self._working_shape
        ext = np.zeros((len(self), 4), dtype=np.int64)  # working rmin, rmax, cmin, cmax
        for sel, flat, starts in self._groups():
            source = self._source_of(sel)
            if source >= 0:
                reg = region_extents(self._maps[source], self._n_regions[source])
            else:
                masks = self._explicit
                rows, cols = masks.any(axis=2), masks.any(axis=1)
                reg = np.stack([rows.argmax(1), h - 1 - rows[:, ::-1].argmax(1),
                                cols.argmax(1), w - 1 - cols[:, ::-1].argmax(1)], axis=1)
            ext[sel, 0] = np.minimum.reduceat(reg[flat, 0], starts)
            ext[sel, 1] = np.maximum.reduceat(reg[flat, 1], starts)
            ext[sel, 2] = np.minimum.reduceat(reg[flat, 2], starts)
            ext[sel, 3] = np.maximum.reduceat(reg[flat, 3], starts)
        boxes = extents_to_boxes(ext, self._grid)
        self._cache["boxes"] = boxes
        return boxes.copy()

    def mean_distance(self, anchor_xy: Sequence[float] | np.ndarray) -> np.ndarray:
        """Mean Euclidean distance of each candidate's pixels to a point.

        Args:
            anchor_xy: (x, y) in full-resolution pixel coordinates (pixel centres are integers).

        Returns:
            float64 (M,) in full-resolution pixels. Exact when the working resolution is the
            full one; otherwise each working pixel counts at its block's centre.
        """
        ax, ay = (float(v) for v in np.asarray(anchor_xy, dtype=np.float64).reshape(2))
        g = self._grid
        dist = np.hypot((g.centre_x - ax)[None, :], (g.centre_y - ay)[:, None])
        return self._sum(dist * g.weight) / self._pixel_areas()

    def overlap(self, weight_map: np.ndarray) -> np.ndarray:
        """Mean of a weight map inside each candidate (e.g. the mean CAM value).

        Args:
            weight_map: float (H, W) at full resolution or (h, w) at working resolution (a
                working pixel then weighs as much as the full-resolution pixels it stands for).

        Returns:
            float64 (M,): sum of the map over the full-resolution mask / the mask's area.

        Raises:
            ValueError: the map's shape is neither (H, W) nor (h, w).
        """
        wm = np.asarray(weight_map, dtype=np.float64)
        if wm.shape == self._image_shape:
            per_pixel = self._grid.block_sum(wm)
        elif wm.shape == self._working_shape:
            per_pixel = wm * self._grid.weight
        else:
            raise ValueError(f"Proposals.overlap: weight map shape {wm.shape} is neither the "
                             f"image shape {self._image_shape} nor the working shape "
                             f"{self._working_shape}")
        return self._sum(per_pixel) / self._pixel_areas()

    def separable_sums(self, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
        """Sum over each candidate's full-resolution pixels of ``ry[row] x rx[col]``.

        With ``ry`` / ``rx`` the bilinear weights of every working row / column on a feature
        map's cells, row k is the candidate's soft membership of each cell (mask pooling, see
        :func:`weakpaste.models.regions.region_features`). Computed per base region (a
        sparse product), never per candidate mask.

        Args:
            ry: float (h, a) per working row (the block's centre), weights on a cell rows.
            rx: float (w, b) per working column, weights on b cell columns.

        Returns:
            float64 (M, a * b), cell (i, j) at column i * b + j.

        Raises:
            ValueError: ``ry`` / ``rx`` do not have h / w rows.
        """
        g, (h, w) = self._grid, self._working_shape
        ry, rx = np.asarray(ry, np.float64), np.asarray(rx, np.float64)
        if ry.ndim != 2 or rx.ndim != 2 or len(ry) != h or len(rx) != w:
            raise ValueError(f"Proposals.separable_sums: expected ({h}, a) and ({w}, b) "
                             f"weights, got {ry.shape} and {rx.shape}")
        # Row y * w + x: the working pixel's block size times its cell weights.
        per_pixel = sparse.kron(sparse.csr_matrix(ry * g.row_count[:, None]),
                                sparse.csr_matrix(rx * g.col_count[:, None]), format="csr")
        out = np.zeros((len(self), per_pixel.shape[1]))
        n_pix = h * w
        for sel, flat, starts in self._groups():
            source = self._source_of(sel)
            if source >= 0:
                rows = self._maps[source].reshape(-1)
                cols = np.arange(n_pix)
                n_rows = self._n_regions[source]
            else:
                cols, pstarts = self._explicit_pixels()
                rows = np.repeat(np.arange(len(pstarts)), np.diff(np.append(pstarts, cols.size)))
                n_rows = len(self._explicit)
            member = sparse.csr_matrix((np.ones(cols.size), (rows, cols)), shape=(n_rows, n_pix))
            per_region = (member @ per_pixel).toarray()
            out[sel] = np.add.reduceat(per_region[flat], starts, axis=0)
        return out

    def cover_mean(self, values: np.ndarray) -> np.ndarray:
        """Per working pixel, the mean of ``values`` over the candidates that contain it.

        Turns per-candidate scores into a map: a pixel inside the object is covered by the
        object's candidates and its parts, a pixel of the background by other candidates.

        Args:
            values: float (M,) one value per candidate.

        Returns:
            float64 (h, w); 0 where no candidate covers the pixel.

        Raises:
            ValueError: not one value per candidate.
        """
        values = np.asarray(values, np.float64).reshape(-1)
        if len(values) != len(self):
            raise ValueError(f"Proposals.cover_mean: {len(values)} values for {len(self)} "
                             "candidates")
        total, count = np.zeros(self._working_shape), np.zeros(self._working_shape)
        for sel, flat, starts in self._groups():
            source = self._source_of(sel)
            # Every id of a candidate gets its value: repeat it over its ids.
            each = np.repeat(values[sel], np.diff(np.append(starts, flat.size)))
            if source >= 0:
                n = self._n_regions[source]
                lut_sum = np.bincount(flat, weights=each, minlength=n)
                lut_count = np.bincount(flat, minlength=n).astype(np.float64)
                total += lut_sum[self._maps[source]]
                count += lut_count[self._maps[source]]
            else:
                masks = self._explicit.reshape(len(self._explicit), -1).astype(np.float64)
                k = np.bincount(flat, weights=each, minlength=len(self._explicit))
                c = np.bincount(flat, minlength=len(self._explicit)).astype(np.float64)
                total += (k @ masks).reshape(self._working_shape)
                count += (c @ masks).reshape(self._working_shape)
        return np.divide(total, count, out=np.zeros_like(total), where=count > 0)

    # -- pairwise overlaps -------------------------------------------------------------------

    def _indicators(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per label map: (candidate indices, float64 (M_l, R_l) region indicator)."""
        out = {}
        for sel, flat, starts in self._groups():
            source = self._source_of(sel)
            if source < 0:
                continue
            ind = np.zeros((sel.size, self._n_regions[source]))
            rows = np.repeat(np.arange(sel.size), np.diff(np.append(starts, flat.size)))
            ind[rows, flat] = 1.0
            out[source] = (sel, ind)
        return out

    def intersections(self) -> np.ndarray:
        """Pairwise intersection areas of the full-resolution masks, in pixels.

        Computed from region-area overlaps (the overlay of two label maps), never pixel by
        pixel per candidate pair.

        Returns:
            float64 (M, M), symmetric, diagonal = the areas.
        """
        g = self._grid
        out = np.zeros((len(self), len(self)))
        ind = self._indicators()
        weight = g.weight.reshape(-1)
        for a, (sel_a, ind_a) in ind.items():
            for b, (sel_b, ind_b) in ind.items():
                if b < a:
                    continue
                if a == b:
                    region_area = np.bincount(self._maps[a].reshape(-1), weights=weight,
                                              minlength=self._n_regions[a])
                    inter = (ind_a * region_area) @ ind_a.T
                else:
                    ra, rb = self._n_regions[a], self._n_regions[b]
                    joint = self._maps[a].reshape(-1).astype(np.int64) * rb + self._maps[b].ravel()
                    overlay = np.bincount(joint, weights=weight, minlength=ra * rb)
                    inter = ind_a @ overlay.reshape(ra, rb) @ ind_b.T
                out[np.ix_(sel_a, sel_b)] = inter
                out[np.ix_(sel_b, sel_a)] = inter.T
        if self._explicit is not None and np.any(self._sources == -1):
            sel_e = np.flatnonzero(self._sources == -1)
            k_of = np.array([self._ids[i][0] for i in sel_e])
            n_pix = weight.size
            pix, pstarts = self._explicit_pixels()
            counts = np.diff(np.append(pstarts, pix.size))
            member = sparse.csr_matrix(
                (np.ones(pix.size), (np.repeat(np.arange(len(self._explicit)), counts), pix)),
                shape=(len(self._explicit), n_pix))
            weighted = member.multiply(weight[None, :]).tocsr()
            ee = (weighted @ member.T).toarray()
            out[np.ix_(sel_e, sel_e)] = ee[np.ix_(k_of, k_of)]
            for b, (sel_b, ind_b) in ind.items():
                onehot = sparse.csr_matrix(
                    (np.ones(n_pix), (np.arange(n_pix), self._maps[b].reshape(-1))),
                    shape=(n_pix, self._n_regions[b]))
                per_region = (weighted @ onehot).toarray()[k_of]
                inter = per_region @ ind_b.T
                out[np.ix_(sel_e, sel_b)] = inter
                out[np.ix_(sel_b, sel_e)] = inter.T
        return out

    def mask_ious(self, masks: np.ndarray) -> np.ndarray:
        """IoU of every candidate with each of some full-resolution masks (e.g. ground truth),
        from per-region sums: no candidate mask is made.

        Args:
            masks: bool (N, H, W) at the image shape.

        Returns:
            float64 (M, N); 0 where a candidate and an empty mask meet nothing.

        Raises:
            ValueError: the masks are not (N, H, W) at the image shape.
        """
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[1:] != self._image_shape:
            raise ValueError(f"Proposals.mask_ious: masks of shape {masks.shape}, expected "
                             f"(N, {self._image_shape[0]}, {self._image_shape[1]})")
        area = self._pixel_areas()
        out = np.zeros((len(self), len(masks)), dtype=np.float64)
        for j, m in enumerate(masks):
            inter = self._sum(self._grid.block_sum(m.astype(np.float64)))
            union = area + float(m.sum()) - inter
            out[:, j] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        return out

    def ious(self) -> np.ndarray:
        """Pairwise IoU of the full-resolution masks, float64 (M, M), diagonal 1."""
        inter = self.intersections()
        area = self._pixel_areas()
        return inter / (area[:, None] + area[None, :] - inter)


def generate_proposals(
    image: np.ndarray,
    *,
    max_side: int = 512,
    min_area: float = 0.01,
    max_span: float = 0.95,
    max_candidates: int = 300,
    methods: Sequence[str] = ("felzenszwalb", "slic"),
    sam: MaskProposer | None = None,
) -> Proposals:
    """Class-agnostic object candidates of an image, by selective search over base segmentations.

    Deterministic: the same image and options give the same candidates in the same order.

    Args:
        image: uint8 (or float in [0, 1]) (H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA;
            each side at least :data:`MIN_IMAGE_SIDE`.
        max_side: longer side of the working resolution; smaller images are used as they are.
        min_area: candidates under this fraction of the image area are dropped.
        max_span: candidates whose box spans at least this fraction of the image width or of
            its height are dropped (background and whole-image regions); above 1 disables it.
        max_candidates: at most this many candidates are returned; the cap interleaves the
            hierarchies round-robin, each from its most stable node down.
        methods: any of :data:`METHODS`. ``"felzenszwalb"`` adds Felzenszwalb segmentations at
            scales 100, 300 and 50 (four groupings), ``"slic"`` SLIC with 200 segments (one
            grouping); ``"sam"`` adds the masks of ``sam``, interleaved with the others.
        sam: the model to use when ``methods`` has ``"sam"`` (a
            :class:`weakpaste.mine.sam.SamProposer`).

    Returns:
        The candidates, in priority order (earlier ones won over their near-duplicates).

    Raises:
        ValueError: an unknown method, a bad option, or an image too small or of a bad shape.
    """
    methods = _checked_methods(methods, sam)
    check_options(max_side, min_area, max_span, max_candidates, "generate_proposals")
    rgb = as_rgb(image, "generate_proposals")
    work = working_image(rgb, int(max_side))
    parts: list[Proposals] = []
    specs = [s for m in methods if m != "sam" for s in BASE_SPECS[m]]
    if specs:
        props, groups = _grouped_regions(work, rgb.shape[:2], specs, min_area=min_area,
                                         max_span=max_span)
        parts.append(dedup_cap(props, groups, max_candidates))
    if "sam" in methods:
        parts.append(sam.propose(rgb, max_side=max_side))  # type: ignore[union-attr]
    if len(parts) == 1:
        return parts[0]
    merged = Proposals.concatenate(parts)
    # One more pass so that SAM masks duplicating a grouped region are dropped, and the cap
    # splits between the two kinds.
    n_first = len(parts[0])
    return filter_candidates(merged, [np.arange(n_first), np.arange(n_first, len(merged))],
                   min_area=min_area, max_span=max_span, max_candidates=max_candidates)


def _checked_methods(methods: Sequence[str] | str, sam: MaskProposer | None) -> tuple[str, ...]:
    """The proposal methods, de-duplicated in order; a ValueError for an unknown or empty set."""
    methods = tuple(dict.fromkeys((methods,) if isinstance(methods, str) else methods))
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown proposal method {m!r}; choose from: {', '.join(METHODS)}")
    if not methods:
        raise ValueError(f"generate_proposals: methods is empty; choose from: "
                         f"{', '.join(METHODS)}")
    if "sam" in methods and sam is None:
        raise ValueError("generate_proposals: method 'sam' needs a model: pass "
                         "sam=SamProposer(checkpoint)")
    return methods


def _grouped_regions(work: np.ndarray, image_shape: tuple[int, int], specs: Sequence,
                     *, min_area: float, max_span: float
                     ) -> tuple[Proposals, list[np.ndarray]]:
    """Every size-passing node of every selective-search hierarchy of the base segmentations.

    Args:
        work: uint8 (h, w, 3) RGB at working resolution.
        image_shape: (H, W) of the full-resolution image.
        specs: the base segmentations (``grouping.BASE_SPECS`` entries) to group.
        min_area: nodes under this fraction of the image area are dropped.
        max_span: nodes whose box spans at least this fraction of a side are dropped.

    Returns:
        The candidates and, per hierarchy, its candidates' indices, most stable first.
    """
    grid = Grid(image_shape, work.shape[:2])
    # SLIC wants Lab in its usual ranges (L 0-100, a/b about +-100): float input gives those.
    lab = cv2.cvtColor(work.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    codes = colour_codes(cv2.cvtColor(work, cv2.COLOR_RGB2Lab))
    maps, names, sources, ids, groups = [], [], [], [], []
    for spec in specs:
        labels = base_segmentation(spec, work, lab)
        region_area = np.bincount(labels.reshape(-1), weights=grid.weight.reshape(-1))
        for tree in hierarchies(labels, codes, spec.strategies):
            # Size filters before any per-candidate object exists: most nodes fail them.
            areas = tree.member @ region_area / float(image_shape[0] * image_shape[1])
            ok = np.flatnonzero(size_ok(areas, extents_to_boxes(tree.extent, grid),
                                         image_shape, min_area=min_area, max_span=max_span))
            # Most stable first: on coco_mini this beat largest-first (the selective-search
            # order) by 1-10 points of recall at 300 candidates, more with more hierarchies.
            nodes = ok[np.argsort(-tree.stability[ok], kind="stable")]
            groups.append(np.arange(len(ids), len(ids) + nodes.size))
            ids.extend(np.flatnonzero(tree.member[k]).astype(np.int32) for k in nodes)
            sources.extend([len(maps)] * nodes.size)
        maps.append(labels)
        names.append(f"{spec.method}-{spec.param:g}")
    props = Proposals._from_parts(image_shape, work.shape[:2], tuple(maps),
                                  np.asarray(sources, dtype=np.int64), ids, None,
                                  tuple(names), grid)
    return props, groups
