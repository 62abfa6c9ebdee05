"""Candidate masks as unions of base regions: the storage behind F-EM's proposals.

Candidates are never stored as a mask stack: a :class:`RegionUnions` keeps the base label maps at
working resolution and, for each candidate, the label map it comes from and the ids of the base
regions it unions. Per-candidate statistics (area, box, mean distance to a point, mean of a
weight map) are computed per base region with ``np.bincount`` and summed over each candidate's
regions. Masks that are not unions of base regions (SAM's, see
:class:`weakpaste.mine.sam.SamProposer`) are stored explicitly at working resolution behind the
same interface.

:class:`RegionUnions` holds the candidates and the per-region sums every statistic is built
from; :class:`weakpaste.mine.proposals.Proposals` adds the statistics themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from weakpaste.ops.grid import Grid


class RegionUnions:
    """Candidate masks of one image, stored as unions of base regions or as explicit masks.

    Candidate ``i`` is ``candidate(i) == (source, ids)``: with ``source >= 0`` it is the union
    of the regions ``ids`` of ``label_maps[source]``; with ``source == -1`` it is the explicit
    mask ``explicit_masks[ids[0]]``. Both live at the working resolution (h, w); full-resolution
    (H, W) masks are their nearest-neighbour upsampling, and all statistics (areas, boxes,
    distances, overlaps) are exact for those full-resolution masks, up to the distance of a
    working pixel being taken at its block's centre.

    Args:
        image_shape: (H, W) of the full-resolution image.
        label_maps: int (h, w) base segmentations, region ids 0..R-1 (stored as int32).
        candidates: (source, ids) per candidate, as described above.
        explicit_masks: bool (K, h, w) masks referenced by ``source == -1`` candidates, or None.
        map_names: a name per label map (e.g. ``"slic-200"``), for reports.

    Raises:
        ValueError: inconsistent shapes, out-of-range ids, empty candidates or masks.
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        label_maps: Sequence[np.ndarray],
        candidates: Sequence[tuple[int, np.ndarray | Sequence[int]]],
        *,
        explicit_masks: np.ndarray | None = None,
        map_names: Sequence[str] | None = None,
    ):
        maps = tuple(np.ascontiguousarray(m, dtype=np.int32) for m in label_maps)
        shapes = {m.shape for m in maps}
        if explicit_masks is not None:
            explicit_masks = np.ascontiguousarray(explicit_masks, dtype=bool)
            if explicit_masks.ndim != 3:
                raise ValueError(f"Proposals: explicit masks must be (K, h, w), got "
                                 f"{explicit_masks.shape}")
            shapes.add(explicit_masks.shape[1:])
        if len(shapes) != 1:
            raise ValueError(f"Proposals: label maps and masks must share one (h, w) shape, got "
                             f"{sorted(shapes)}")
        working_shape = shapes.pop()
        if len(maps) == 0 and explicit_masks is None:
            raise ValueError("Proposals: need at least one label map or explicit masks")
        self._grid = Grid((int(image_shape[0]), int(image_shape[1])),
                           (int(working_shape[0]), int(working_shape[1])))
        self._image_shape = (int(image_shape[0]), int(image_shape[1]))
        self._working_shape = (int(working_shape[0]), int(working_shape[1]))
        self._maps = maps
        self._n_regions = tuple(int(m.max()) + 1 if m.size else 0 for m in maps)
        if any(int(m.min()) < 0 for m in maps):
            raise ValueError("Proposals: label maps must hold region ids >= 0")
        self._explicit = explicit_masks
        n_explicit = 0 if explicit_masks is None else len(explicit_masks)
        if explicit_masks is not None and not explicit_masks.any(axis=(1, 2)).all():
            raise ValueError("Proposals: explicit masks must not be empty")
        self.map_names = tuple(map_names) if map_names is not None else tuple(
            f"map{i}" for i in range(len(maps)))
        if len(self.map_names) != len(maps):
            raise ValueError(f"Proposals: {len(maps)} label maps but {len(self.map_names)} names")

        sources = np.empty(len(candidates), dtype=np.int64)
        ids_list: list[np.ndarray] = []
        for i, (source, ids) in enumerate(candidates):
            arr = np.unique(np.asarray(ids, dtype=np.int64)).astype(np.int32)
            limit = n_explicit if source == -1 else (
                self._n_regions[source] if 0 <= source < len(maps) else -1)
            if limit < 0:
                raise ValueError(f"Proposals: candidate {i} has source {source}; expected -1 or "
                                 f"a label map index < {len(maps)}")
            if arr.size == 0 or arr[0] < 0 or arr[-1] >= limit or (source == -1 and arr.size > 1):
                what = "one mask index" if source == -1 else "region ids"
                raise ValueError(f"Proposals: candidate {i} (source {source}) has invalid ids "
                                 f"{arr[:8].tolist()}; expected {what} below {limit}")
            sources[i] = source
            ids_list.append(arr)
        self._sources = sources
        self._ids = ids_list
        self._cache: dict[str, object] = {}

    @classmethod
    def _from_parts(cls, image_shape: tuple[int, int], working_shape: tuple[int, int],
                    label_maps: tuple[np.ndarray, ...], sources: np.ndarray,
                    ids: list[np.ndarray], explicit_masks: np.ndarray | None,
                    map_names: tuple[str, ...], grid: Grid | None = None) -> Self:
        """Build without validation from parts this module made (sorted unique int32 ids)."""
        self = cls.__new__(cls)
        self._image_shape = image_shape
        self._working_shape = working_shape
        self._grid = grid if grid is not None else Grid(image_shape, working_shape)
        self._maps = label_maps
        self._n_regions = tuple(int(m.max()) + 1 for m in label_maps)
        self._explicit = explicit_masks
        self.map_names = map_names
        self._sources = sources
        self._ids = ids
        self._cache = {}
        return self

    # -- construction helpers ----------------------------------------------------------------

    @classmethod
    def from_masks(cls, masks: np.ndarray, image_shape: tuple[int, int] | None = None
                   ) -> Self:
        """Candidates that are explicit masks candidates are explicit masks, in the given order.

        Args:
            masks: bool (K, h, w) masks at working resolution, none empty.
            image_shape: (H, W) of the full-resolution image, at least (h, w); defaults to
                (h, w).

        Returns:
            K candidates, candidate ``i`` being ``masks[i]``.
        """
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"Proposals.from_masks: expected (K, h, w) masks, got {masks.shape}")
        shape = masks.shape[1:] if image_shape is None else image_shape
        return cls(shape, [], [(-1, [k]) for k in range(len(masks))], explicit_masks=masks)

    def select(self, indices: Sequence[int] | np.ndarray) -> Self:
        """The candidates ``indices``, in that order, sharing this object's label maps.

        Explicit masks no candidate refers to any more are dropped.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        sources = self._sources[idx]
        ids = [self._ids[i] for i in idx]
        masks = self._explicit
        if masks is not None:
            is_explicit = sources == -1
            used = np.unique([int(ids[k][0]) for k in np.flatnonzero(is_explicit)]).astype(int)
            remap = np.full(len(masks), -1, dtype=np.int32)
            remap[used] = np.arange(used.size, dtype=np.int32)
            masks = masks[used]
            ids = [remap[v] if e else v for v, e in zip(ids, is_explicit.tolist(), strict=True)]
            if self._maps and used.size == 0:
                masks = None
        return type(self)._from_parts(self._image_shape, self._working_shape, self._maps,
                                      sources, ids, masks, self.map_names, self._grid)

    @classmethod
    def concatenate(cls, parts: Sequence[RegionUnions]) -> Self:
        """Candidates of several objects of the same image, in order, as one object."""
        if not parts:
            raise ValueError("Proposals.concatenate: nothing to concatenate")
        image_shape, working_shape = parts[0].image_shape, parts[0].working_shape
        maps: list[np.ndarray] = []
        names: list[str] = []
        masks: list[np.ndarray] = []
        cands: list[tuple[int, np.ndarray | list[int]]] = []
        n_masks = 0
        for p in parts:
            if p.image_shape != image_shape or p.working_shape != working_shape:
                raise ValueError("Proposals.concatenate: parts differ in image or working shape")
            for s, ids in zip(p._sources, p._ids, strict=True):
                cands.append((int(s) + len(maps), ids) if s >= 0 else (-1, [int(ids[0]) + n_masks]))
            if p._explicit is not None:
                masks.append(p._explicit)
                n_masks += len(p._explicit)
            maps.extend(p._maps)
            names.extend(p.map_names)
        stack = np.concatenate(masks) if masks else (
            None if maps else np.zeros((0, *working_shape), dtype=bool))
        return cls(image_shape, maps, cands, explicit_masks=stack, map_names=names)

    # -- basic accessors ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"Proposals({len(self)} candidates, image {self._image_shape}, working "
                f"{self._working_shape}, maps {list(self.map_names)}, explicit "
                f"{0 if self._explicit is None else len(self._explicit)})")

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the full-resolution image."""
        return self._image_shape

    @property
    def working_shape(self) -> tuple[int, int]:
        """(h, w) of the label maps and explicit masks."""
        return self._working_shape

    @property
    def label_maps(self) -> tuple[np.ndarray, ...]:
        """The base segmentations, int32 (h, w) each."""
        return self._maps

    @property
    def explicit_masks(self) -> np.ndarray | None:
        """bool (K, h, w) explicit masks, or None."""
        return self._explicit

    def candidate(self, i: int) -> tuple[int, np.ndarray]:
        """``(source, ids)`` of candidate ``i``: label map index and int32 sorted region ids,
        or ``(-1, [k])`` for explicit mask ``k``."""
        return int(self._sources[i]), self._ids[i]

    # -- per-region sums (what every per-candidate statistic is built from) ------------------

    def _groups(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per source: (candidate indices, flat ids, reduceat starts), explicit source last."""
        groups = self._cache.get("groups")
        if groups is None:
            groups = []
            for source in [*range(len(self._maps)), -1]:
                sel = np.flatnonzero(self._sources == source)
                if sel.size == 0:
                    continue
                lengths = np.array([self._ids[i].size for i in sel])
                flat = np.concatenate([self._ids[i] for i in sel]).astype(np.int64)
                starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
                groups.append((sel, flat, starts))
            self._cache["groups"] = groups
        return groups  # type: ignore[return-value]

    def _source_of(self, sel: np.ndarray) -> int:
        return int(self._sources[sel[0]])

    def _explicit_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat pixel indices of all explicit masks concatenated, and each mask's start."""
        cached = self._cache.get("explicit_pixels")
        if cached is None:
            flat = self._explicit.reshape(len(self._explicit), -1)
            pix = [np.flatnonzero(m) for m in flat]
            starts = np.concatenate(([0], np.cumsum([p.size for p in pix])[:-1]))
            cached = (np.concatenate(pix), starts.astype(np.int64))
            self._cache["explicit_pixels"] = cached
        return cached  # type: ignore[return-value]

    def _sum(self, values: np.ndarray) -> np.ndarray:
        """Sum of a float64 (h, w) per-working-pixel map over each candidate, float64 (M,)."""
        out = np.zeros(len(self), dtype=np.float64)
        flat_values = values.reshape(-1)
        for sel, flat, starts in self._groups():
            source = self._source_of(sel)
            if source >= 0:
                per_region = np.bincount(self._maps[source].reshape(-1), weights=flat_values,
                                         minlength=self._n_regions[source])
            else:
                pix, pstarts = self._explicit_pixels()
                per_region = np.add.reduceat(flat_values[pix], pstarts)
            out[sel] = np.add.reduceat(per_region[flat], starts)
        return out

    def _pixel_areas(self) -> np.ndarray:
        areas = self._cache.get("areas")
        if areas is None:
            areas = self._sum(self._grid.weight)
            self._cache["areas"] = areas
        return areas  # type: ignore[return-value]


    # -- masks -------------------------------------------------------------------------------

    def _full_labels(self, source: int) -> np.ndarray:
        key = f"full{source}"
        full = self._cache.get(key)
        if full is None:
            full = self._grid.upsample(self._maps[source])
            self._cache[key] = full
        return full  # type: ignore[return-value]

    def mask(self, i: int) -> np.ndarray:
        """Candidate ``i`` at full resolution, bool (H, W)."""
        source, ids = self.candidate(int(i))
        if source == -1:
            return self._grid.upsample(self._explicit[ids[0]])
        lut = np.zeros(self._n_regions[source], dtype=bool)
        lut[ids] = True
        return lut[self._full_labels(source)]

    def masks(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Candidates ``indices`` (all when None) at full resolution, bool (K, H, W)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        out = np.empty((idx.size, *self._image_shape), dtype=bool)
        for k, i in enumerate(idx.reshape(-1)):
            out[k] = self.mask(int(i))
        return out

