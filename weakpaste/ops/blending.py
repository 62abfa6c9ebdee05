"""Blending kernels: composite a pasted segment onto a background.

All modes take and return uint8 RGB images of the same shape and never modify their inputs.
``"none"`` is a hard copy, ``"gaussian"`` feathers the mask edge, ``"poisson"`` is seamless
cloning (Pérez et al. 2003, gradient domain), which matches the background's colour at the
boundary.

Poisson cloning is solved here with a discrete sine transform rather than with
``cv2.seamlessClone``: OpenCV 5.0's seamlessClone returns different pixels on repeated calls
with the same input (seen here: two alternating results differing by up to 254), which would
break the paste stage's same-seed-same-bytes guarantee.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

BLEND_MODES = ("none", "gaussian", "poisson")

# The solve uses the border of the mask's bounding box as a fixed boundary, so it is given a
# region padded by this much.
_POISSON_PAD = 16
# Zero frame kept around the mask inside the padded region when the mask is mirrored into it.
_POISSON_MARGIN = 4
# Below this many pixels a Poisson solve has nothing meaningful to preserve.
_POISSON_MIN_PIXELS = 16
# A mask with no pixel left after a 7x7 erosion is a sliver: its colours come almost only
# from the boundary, so such masks are feathered instead.
_POISSON_ERODE = np.ones((7, 7), np.uint8)


def _check_inputs(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    if dst.ndim != 3 or dst.shape[2] != 3 or dst.dtype != np.uint8:
        raise ValueError(f"blend: dst must be uint8 (h, w, 3), got {dst.dtype} {dst.shape}")
    if src.shape != dst.shape:
        raise ValueError(f"blend: src shape {src.shape} does not match dst shape {dst.shape}")
    if src.dtype != np.uint8:
        raise ValueError(f"blend: src must be uint8, got {src.dtype}")
    if mask.shape != dst.shape[:2]:
        raise ValueError(
            f"blend: mask shape {mask.shape} does not match dst shape {dst.shape}"
        )
    if mask.dtype != np.bool_:
        raise ValueError(f"blend: mask must be bool, got {mask.dtype}")


def _blend_none(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = dst.copy()
    out[mask] = src[mask]
    return out


def _blend_gaussian(
    dst: np.ndarray, src: np.ndarray, mask: np.ndarray, sigma: float
) -> np.ndarray:
    # 3 sigma on each side covers 99.7% of the kernel's weight.
    ksize = 2 * math.ceil(3.0 * sigma) + 1
    # Replicate so a mask that reaches the image edge stays opaque there.
    alpha = cv2.GaussianBlur(
        mask.astype(np.float32),
        (ksize, ksize),
        sigmaX=sigma,
        sigmaY=sigma,
        borderType=cv2.BORDER_REPLICATE,
    )
    # alpha * src + (1 - alpha) * dst, rounded and saturated, in one pass in C.
    return cv2.blendLinear(src, dst, alpha, 1.0 - alpha)


def _blend_poisson(
    dst: np.ndarray, src: np.ndarray, mask: np.ndarray, sigma: float
) -> np.ndarray:
    mask_u8 = mask.astype(np.uint8) * 255
    if (
        int(np.count_nonzero(mask)) < _POISSON_MIN_PIXELS
        or not cv2.erode(mask_u8, _POISSON_ERODE).any()
    ):
        return _blend_gaussian(dst, src, mask, sigma)

    # Only the mask's bounding box is changed by seamlessClone, so work on that box plus a
    # frame of _POISSON_PAD pixels rather than on the whole image.
    x, y, bw, bh = cv2.boundingRect(mask_u8)
    h, w = mask.shape
    p = _POISSON_PAD
    rx0, ry0 = max(x - p, 0), max(y - p, 0)
    rx1, ry1 = min(x + bw + p, w), min(y + bh + p, h)
    # Make up the part of the frame that falls outside the image by mirroring.
    top, left = p - (y - ry0), p - (x - rx0)
    bottom, right = p - (ry1 - y - bh), p - (rx1 - x - bw)
    widths = ((top, bottom), (left, right))
    dst_r = np.pad(dst[ry0:ry1, rx0:rx1], (*widths, (0, 0)), mode="symmetric")
    src_r = np.pad(src[ry0:ry1, rx0:rx1], (*widths, (0, 0)), mode="symmetric")
    # Where the mask reaches the image edge, mirror it too: with a zero frame the solver would
    # pin the segment's colours at the image edge to the background's, washing the segment
    # out there. The outer _POISSON_MARGIN pixels stay zero so the mask never touches the edge
    # of the solved region (whose border is the fixed boundary).
    mask_r = np.pad(mask_u8[ry0:ry1, rx0:rx1], widths, mode="symmetric")
    m = _POISSON_MARGIN
    mask_r[: max(m, 0 if y == 0 else top)] = 0
    mask_r[mask_r.shape[0] - max(m, 0 if y + bh == h else bottom) :] = 0
    mask_r[:, : max(m, 0 if x == 0 else left)] = 0
    mask_r[:, mask_r.shape[1] - max(m, 0 if x + bw == w else right) :] = 0

    cloned = poisson_solve(src_r, dst_r, mask_r > 0)

    out = dst.copy()
    out[ry0:ry1, rx0:rx1] = cloned[top : top + (ry1 - ry0), left : left + (rx1 - rx0)]
    return out


def blend(
    dst: np.ndarray, src: np.ndarray, mask: np.ndarray, mode: str, *, sigma: float = 2.0
) -> np.ndarray:
    """Composite ``src`` onto ``dst`` where ``mask`` is set.

    Modes:
        ``"none"``: copy ``src`` pixels inside the mask; everything else is ``dst``.
        ``"gaussian"``: alpha is the mask blurred with a Gaussian of ``sigma`` pixels, result
        ``alpha * src + (1 - alpha) * dst`` rounded; pixels up to ``3 * sigma`` outside the
        mask are touched.
        ``"poisson"``: ``cv2.seamlessClone`` with ``NORMAL_CLONE``: keeps ``src``'s gradients
        inside the mask and shifts its colours to meet ``dst`` at the boundary; only pixels
        inside the mask's bounding box change. Masks too small for the solver (under 16
        pixels, or nothing left after OpenCV's internal 3-pixel erosion) and solver failures
        fall back to ``"gaussian"``.

    Args:
        dst: uint8 (h, w, 3) background.
        src: uint8 (h, w, 3) pasted content, aligned with ``dst``.
        mask: bool (h, w) where ``src`` belongs.
        mode: One of :data:`BLEND_MODES`.
        sigma: Gaussian standard deviation in pixels (``"gaussian"``, and ``"poisson"``'s
            fallback), > 0.

    Returns:
        A new uint8 (h, w, 3) array.

    Raises:
        ValueError: unknown ``mode``, non-positive ``sigma``, or mismatched shapes/dtypes.
    """
    if mode not in BLEND_MODES:
        raise ValueError(f"unknown blending mode {mode!r}; choose one of: {', '.join(BLEND_MODES)}")
    _check_inputs(dst, src, mask)
    if mode != "none" and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"blend: sigma must be a positive finite number, got {sigma}")
    if not mask.any():
        return dst.copy()
    if mode == "none":
        return _blend_none(dst, src, mask)
    if mode == "gaussian":
        return _blend_gaussian(dst, src, mask, sigma)
    return _blend_poisson(dst, src, mask, sigma)


def poisson_solve(src: np.ndarray, dst: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Seamless cloning of ``src`` into ``dst`` over ``mask`` on a rectangular region.

    The guidance field is ``src``'s gradient on every pixel edge touching the mask and
    ``dst``'s elsewhere (as OpenCV's NORMAL_CLONE); the region's outer border is the fixed
    (Dirichlet) boundary, taken from ``dst``. The Poisson equation is solved exactly with a
    type-I discrete sine transform, so the result is deterministic.

    Args:
        src: uint8 (h, w, 3) source, aligned with ``dst``.
        dst: uint8 (h, w, 3) destination.
        mask: bool (h, w) pixels to clone; should not touch the region's border.

    Returns:
        uint8 (h, w, 3): ``dst`` with the solved pixels inside ``mask``.
    """
    from scipy.fft import dstn, idstn

    h, w = mask.shape
    if h < 3 or w < 3:
        return dst.copy()
    s = src.astype(np.float64)
    d = dst.astype(np.float64)
    # Guidance on horizontal and vertical pixel edges.
    use_x = (mask[:, 1:] | mask[:, :-1])[..., None]
    use_y = (mask[1:, :] | mask[:-1, :])[..., None]
    gx = np.where(use_x, s[:, 1:] - s[:, :-1], d[:, 1:] - d[:, :-1])
    gy = np.where(use_y, s[1:, :] - s[:-1, :], d[1:, :] - d[:-1, :])
    # Divergence at interior pixels: (g(p, p+1) - g(p-1, p)) summed over both axes.
    div = (gx[1:-1, 1:] - gx[1:-1, :-1]) + (gy[1:, 1:-1] - gy[:-1, 1:-1])
    # Move the fixed boundary's contribution to the right-hand side.
    rhs = div.copy()
    rhs[0] -= d[0, 1:-1]
    rhs[-1] -= d[-1, 1:-1]
    rhs[:, 0] -= d[1:-1, 0]
    rhs[:, -1] -= d[1:-1, -1]
    ih, iw = h - 2, w - 2
    ky = 2.0 * np.cos(np.pi * np.arange(1, ih + 1) / (ih + 1)) - 2.0
    kx = 2.0 * np.cos(np.pi * np.arange(1, iw + 1) / (iw + 1)) - 2.0
    eig = (ky[:, None] + kx[None, :])[..., None]
    solved = idstn(dstn(rhs, type=1, axes=(0, 1), workers=1) / eig, type=1, axes=(0, 1),
                   workers=1)
    out = d.copy()
    inner = mask[1:-1, 1:-1]
    out[1:-1, 1:-1][inner] = solved[inner]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
