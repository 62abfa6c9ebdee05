"""Rendering a paste plan: a deterministic, pure function of pixels and plan.

Occlusion follows paste order: each pasted object hides whatever is under its mask, the
background's own instances included (FreeSeg §3.3 removes occluded pixel annotations). Every
instance's visible mask is kept; boxes and areas are later computed from it. An instance is
dropped when its visible area falls under ``min_area`` pixels or under ``min_visible`` of the
area it had when it entered the image (a background instance's full mask; a pasted object's
part inside the image).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import Config, flag_of, option
from weakpaste.ops import blending, geometry
from weakpaste.ops import masks as mask_ops
from weakpaste.paste.plan import ImagePlan, placement_matrix

MAX_BLUR_SIGMA = 100.0
"""Widest alpha blur, in pixels (``--blur-sigma``)."""


@dataclass(frozen=True)
class RenderParams(Config):
    """Parameters of rendering; the paste stage's ``PasteConfig`` inherits them."""

    blur_sigma: float = option(2.0, range=(0, None),
                               help="sigma of the gaussian alpha blur (pixels)")
    min_visible: float = option(0.25, range=(0, 1),
                                help="drop instances with a smaller visible fraction")
    min_area: int = option(16, range=(0, None), help="drop smaller instances (pixels)")

    def check(self) -> None:
        super().check()
        # The blur's kernel spans 6 sigma: 0 gives none and inf none that fits in memory.
        if not 0 < self.blur_sigma <= MAX_BLUR_SIGMA:
            flag = flag_of(type(self), "blur_sigma")
            raise WeakpasteError(f"blur_sigma ({flag}) must be in (0, {MAX_BLUR_SIGMA:g}] "
                                 f"pixels, got {self.blur_sigma}")


@dataclass
class Rendered:
    """Result of ``render``.

    Attributes:
        image: uint8 (H, W, 3) composed image.
        classes: class name per kept instance (background ones first).
        pasted: bool (K,) True for pasted objects, False for the background's instances.
        dropped: class -> instances dropped for too little visibility.
        outside: pasted objects that ended up with no pixel inside the image.
        buffer: bool (H, W, K) column-major visible masks; a column whose ``reused`` entry
            is set was never decoded (see ``masks``).
        reused: per kept instance, the background's own RLE when no pasted object touched
            it (its visible mask is the original one), else None.
    """

    image: np.ndarray
    classes: tuple[str, ...]
    pasted: np.ndarray
    dropped: Counter = field(default_factory=Counter)
    outside: int = 0
    buffer: np.ndarray | None = None
    reused: tuple[mask_ops.Rle | None, ...] = ()

    @property
    def masks(self) -> np.ndarray:
        """bool (K, H, W) visible masks of the kept instances (decodes reused ones once)."""
        for k, rle in enumerate(self.reused):
            if rle is not None:
                self.buffer[:, :, k] = mask_ops.decode(rle)
        self.reused = (None,) * len(self.reused)
        return self.buffer.transpose(2, 0, 1)

    def rles(self) -> list[mask_ops.Rle]:
        """Compressed visible masks, in ``classes`` order: untouched background instances keep
        their RLE, the others are encoded in one call."""
        todo = [k for k, rle in enumerate(self.reused) if rle is None] \
            if self.reused else list(range(len(self.classes)))
        stack = self.buffer if len(todo) == len(self.classes) else self.buffer[:, :, todo]
        encoded = iter(mask_ops.encode_many(stack.transpose(2, 0, 1)))
        reused = self.reused or (None,) * len(self.classes)
        return [rle if rle is not None else next(encoded) for rle in reused]


def render(background: np.ndarray, bg_masks: np.ndarray, bg_classes: tuple[str, ...],
           segments: list[tuple[np.ndarray, np.ndarray, str]], plan: ImagePlan,
           params: RenderParams = RenderParams()) -> Rendered:
    """Compose one output image.

    Args:
        background: uint8 (H, W, 3) background image (not modified).
        bg_masks: masks of the background's own instances: bool (M, H, W), or an
            ``RleStack`` whose masks are decoded only where a pasted object meets them.
        bg_classes: class name per background instance.
        segments: (rgb uint8 (h, w, 3), mask bool (h, w), class) for each of
            ``plan.segment_ids``, in the same order.
        plan: the placements.
        params: rendering parameters.

    Returns:
        The composed image with its visible instance masks.
    """
    H, W = background.shape[:2]
    if bg_masks.shape[1:] != (H, W) and len(bg_masks):
        raise ValueError(f"render: background is {H}x{W} but its masks are "
                         f"{bg_masks.shape[2]}x{bg_masks.shape[1]}")
    if len(segments) != len(plan.segment_ids):
        raise ValueError(f"render: plan has {len(plan.segment_ids)} segments, got "
                         f"{len(segments)}")
    image = background.copy()
    layers = _Layers(bg_masks, bg_classes, (H, W), len(plan.placements))
    outside = 0
    # Blending reaches a little beyond the mask (blurred alpha, Poisson's boundary).
    margin = int(math.ceil(3 * params.blur_sigma)) + 2
    for p in plan.placements:
        rgb, mask, name = segments[p.slot]
        warped = geometry.warp_segment(rgb, mask, placement_matrix(p, mask.shape), (H, W))
        if warped is None:
            outside += 1
            continue
        win_rgb, win_mask, box = warped
        _paste_window(image, win_rgb, win_mask, box, p.blend, margin, params.blur_sigma)
        layers.occlude(win_mask, box)
        layers.add(win_mask, box, name)
    return layers.rendered(image, outside, params)


def _paste_window(image: np.ndarray, win_rgb: np.ndarray, win_mask: np.ndarray,
                  box: tuple[int, int, int, int], blend: str, margin: int, sigma: float) -> None:
    """Blend a warped object into ``image`` (in place) at ``box`` (x0, y0, x1, y1)."""
    H, W = image.shape[:2]
    x0, y0, x1, y1 = box
    # Work in the object's window grown by the blending margin, clipped to the image.
    X0, Y0 = max(x0 - margin, 0), max(y0 - margin, 0)
    X1, Y1 = min(x1 + margin, W), min(y1 + margin, H)
    dst = image[Y0:Y1, X0:X1]
    src = dst.copy()
    src[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = win_rgb
    big_mask = np.zeros(dst.shape[:2], dtype=bool)
    big_mask[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = win_mask
    image[Y0:Y1, X0:X1] = blending.blend(dst, src, big_mask, blend, sigma=sigma)


class _Layers:
    """The instance masks of an image being composed: the background's, then each pasted one.

    Args:
        bg_masks: the background's instance masks, bool (M, H, W) or an ``RleStack``.
        bg_classes: class name per background instance.
        shape: (H, W) of the image.
        n_pasted: most objects that will be pasted.
    """

    def __init__(self, bg_masks: np.ndarray | mask_ops.RleStack, bg_classes: tuple[str, ...],
                 shape: tuple[int, int], n_pasted: int):
        H, W = shape
        M = len(bg_masks)
        self.bg_masks, self.n_background = bg_masks, M
        # All instance masks live in one column-major (H, W, M + P) buffer: the layout RLE
        # coding uses, so the kept masks are encoded without another copy. np.zeros is lazily
        # paged.
        self.buf = np.zeros((H, W, M + n_pasted), dtype=bool, order="F")
        self.lazy = isinstance(bg_masks, mask_ops.RleStack)
        self.classes = list(bg_classes)
        # Areas and boxes (x0, y0, x1, y1) of what each instance had when it entered:
        # occlusion only visits (and only decodes) the instances whose box meets the new
        # object's window.
        if self.lazy:
            self.entered, self.boxes = bg_masks.areas(), bg_masks.boxes()
        else:
            for k in range(M):
                self.buf[:, :, k] = bg_masks[k]
            self.entered = [int(np.count_nonzero(self.buf[:, :, k])) for k in range(M)]
            self.boxes = [tuple(int(v) for v in mask_ops.mask_box(self.buf[:, :, k]))
                          for k in range(M)]
        self.touched = [False] * M
        self.pasted = [False] * M

    def occlude(self, win_mask: np.ndarray, box: tuple[int, int, int, int]) -> None:
        """Hide, in every instance so far, what a new object covers in its window ``box``."""
        x0, y0, x1, y1 = box
        hidden = ~win_mask
        for k, (bx0, by0, bx1, by1) in enumerate(self.boxes):
            if bx0 < x1 and x0 < bx1 and by0 < y1 and y0 < by1:
                if self.lazy and k < self.n_background and not self.touched[k]:
                    self.buf[:, :, k] = self.bg_masks.decode(k)
                self.buf[y0:y1, x0:x1, k] &= hidden
                self.touched[k] = True

    def add(self, win_mask: np.ndarray, box: tuple[int, int, int, int], name: str) -> None:
        """Add a pasted object of class ``name`` whose mask in window ``box`` is ``win_mask``."""
        x0, y0, x1, y1 = box
        self.buf[y0:y1, x0:x1, len(self.classes)] = win_mask
        self.classes.append(name)
        self.entered.append(int(np.count_nonzero(win_mask)))
        self.boxes.append((x0, y0, x1, y1))
        self.touched.append(False)
        self.pasted.append(True)

    def rendered(self, image: np.ndarray, outside: int, params: RenderParams) -> Rendered:
        """The image with the instances still visible enough (``min_area``, ``min_visible``)."""
        classes, entered, touched, buf = self.classes, self.entered, self.touched, self.buf
        keep, dropped = [], Counter()
        for k in range(len(classes)):
            area = int(np.count_nonzero(buf[:, :, k])) if touched[k] else entered[k]
            if area < params.min_area or area < params.min_visible * entered[k]:
                dropped[classes[k]] += 1
            else:
                keep.append(k)
        kept = buf[:, :, :len(classes)] if len(keep) == len(classes) else buf[:, :, keep]
        reused = tuple(self.bg_masks.rles[k]
                       if self.lazy and k < self.n_background and not touched[k] else None
                       for k in keep)
        return Rendered(image=image, classes=tuple(classes[k] for k in keep),
                        pasted=np.array([self.pasted[k] for k in keep], dtype=bool),
                        dropped=dropped, outside=outside, buffer=np.asfortranarray(kept),
                        reused=reused)
