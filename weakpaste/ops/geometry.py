"""Geometry kernels for pasting: free-space circles, segment circles and segment warps.

Conventions: coordinates are ``(x, y)`` in pixels with the origin at the centre of the top-left
pixel, so pixel ``(row, col)`` has centre ``(col, row)``. Affine matrices are 2x3 ``float64``
and map source coordinates to destination coordinates, as ``cv2.warpAffine`` expects. Nothing
here uses randomness; equal inputs give equal outputs.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# OpenCV resamples with 1/32-pixel fixed-point coordinates; a dest pixel centre this close
# outside the warped crop's outline may still be sampled, so it is kept in the window.
_WINDOW_EPS = 1.0 / 32.0


def _check_mask(name: str, mask: np.ndarray) -> None:
    if mask.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D mask, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        raise ValueError(f"{name}: expected a bool mask, got dtype {mask.dtype}")


def max_inscribed_circle(free: np.ndarray) -> tuple[float, float, float]:
    """Find the largest circle that fits in the free space of an image.

    The image border counts as occupied, so the circle never leaves the image. Every pixel
    whose centre lies closer than ``r + 0.5`` to ``(cx, cy)`` is free, so a segment whose
    :func:`min_enclosing_circle` radius is at most ``r`` fits when centred at ``(cx, cy)``.

    Args:
        free: bool (H, W); True where nothing has been placed yet.

    Returns:
        ``(cx, cy, r)`` as Python floats: the centre in pixel coordinates of ``free`` and the
        radius in pixels. ``(0.0, 0.0, 0.0)`` when no pixel is free. Ties between equally large
        circles go to the first centre in row-major order.

    Raises:
        ValueError: ``free`` is not a 2-D bool array.
    """
    _check_mask("max_inscribed_circle", free)
    if free.size == 0 or not free.any():
        return 0.0, 0.0, 0.0
    # The 1-pixel False frame makes the image edge an obstacle like any occupied pixel.
    padded = np.pad(free, 1).astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # The exact distance between pixel centres is the root of an integer. OpenCV's float32
    # result carries last-bit noise that depends on the input's memory address (so on the
    # heap layout of the process: a Ray worker and a forked one disagreed); snapping to the
    # integer squared distance makes the argmax and the radius exact and reproducible.
    squared = np.rint(np.square(dist, dtype=np.float64)).astype(np.int64)
    idx = int(np.argmax(squared))
    row, col = divmod(idx, dist.shape[1])
    # dist is measured between pixel centres; the nearest occupied pixel's edge is half a
    # pixel closer than its centre.
    r = max(math.sqrt(float(squared[row, col])) - 0.5, 0.0)
    return float(col - 1), float(row - 1), r


def min_enclosing_circle(mask: np.ndarray) -> tuple[float, float, float]:
    """Find the smallest circle containing the centres of a mask's pixels.

    Only the outer contour points of each connected part are used: they have the same convex
    hull as all pixels, so the circle is the same and far fewer points are passed to OpenCV.

    Args:
        mask: bool (h, w); the segment.

    Returns:
        ``(cx, cy, r)`` as Python floats in pixel coordinates of ``mask``; ``r >= 0.5`` so a
        single pixel still has a usable size.

    Raises:
        ValueError: ``mask`` is not a 2-D bool array, or has no True pixel.
    """
    _check_mask("min_enclosing_circle", mask)
    if not mask.any():
        raise ValueError("min_enclosing_circle: mask is empty")
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    points = np.concatenate(contours, axis=0)
    (cx, cy), r = cv2.minEnclosingCircle(points)
    return float(cx), float(cy), max(float(r), 0.5)


# Tiny matrix products are written out: numpy hands ``@`` to BLAS, whose kernels (and so the
# last bit of a sum) depend on OPENBLAS_NUM_THREADS and the CPU type, which made the same paste
# plan render differently in a Ray worker (OpenBLAS pinned to 1 thread) than in a local one.
def _affine_apply(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """float64 (N, 2): points ``xy`` (N, 2) mapped by a (2, 3) or (3, 3) affine matrix."""
    m = matrix.astype(np.float64)
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    return np.stack([m[0, 0] * x + m[0, 1] * y + m[0, 2],
                     m[1, 0] * x + m[1, 1] * y + m[1, 2]], axis=1)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 (3, 3) product ``a @ b`` of two 3x3 matrices, without BLAS."""
    return (a[:, :, None] * b[None, :, :]).sum(axis=1)


def segment_affine(
    h: int,
    w: int,
    *,
    scale: float,
    angle_deg: float,
    flip: bool,
    center_src: tuple[float, float],
    center_dst: tuple[float, float],
) -> np.ndarray:
    """Build the matrix that places a segment crop in a destination image.

    The transform is, in order: an optional horizontal mirror of the crop (``x -> w - 1 - x``),
    a rotation by ``angle_deg`` with uniform ``scale`` about the (mirrored) ``center_src`` as
    ``cv2.getRotationMatrix2D`` defines it (positive = counter-clockwise on screen), and a
    translation that moves ``center_src`` onto ``center_dst``.

    Args:
        h: Crop height in pixels, >= 1.
        w: Crop width in pixels, >= 1.
        scale: Uniform scale factor, > 0.
        angle_deg: Rotation in degrees, counter-clockwise positive.
        flip: Mirror the crop horizontally first.
        center_src: ``(x, y)`` pivot in the un-mirrored crop's pixel coordinates.
        center_dst: ``(x, y)`` where the pivot lands in the destination.

    Returns:
        float64 (2, 3) affine matrix from crop coordinates to destination coordinates.

    Raises:
        ValueError: non-positive crop size, or a scale that is not a positive finite number.
    """
    if h < 1 or w < 1:
        raise ValueError(f"segment_affine: crop size must be positive, got h={h}, w={w}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"segment_affine: scale must be a positive finite number, got {scale}")
    mirror = np.eye(3)
    if flip:
        mirror[0, 0] = -1.0
        mirror[0, 2] = w - 1.0
    # The pivot is given on the un-mirrored crop; follow it through the mirror so the same
    # physical point of the segment lands on center_dst either way.
    px, py = _affine_apply(mirror, np.array([[center_src[0], center_src[1]]]))[0]
    rotate = np.eye(3)
    rotate[:2] = cv2.getRotationMatrix2D((float(px), float(py)), float(angle_deg), float(scale))
    rotate[0, 2] += center_dst[0] - px
    rotate[1, 2] += center_dst[1] - py
    return _compose(rotate, mirror)[:2]


def warp_segment(
    rgb: np.ndarray,
    mask: np.ndarray,
    matrix: np.ndarray,
    out_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]] | None:
    """Warp a segment crop into the window it covers in a destination image.

    Only the destination window is computed: the bounding box of the transformed crop
    outline (pixel edges, i.e. corners at ``(-0.5, -0.5)`` and ``(w - 0.5, h - 0.5)``),
    clipped to the image. Image and mask use the same bilinear sampling, the mask being
    thresholded at one half, so they stay aligned under rotation and scaling.

    Args:
        rgb: uint8 (h, w, 3) crop pixels.
        mask: bool (h, w) segment inside the crop.
        matrix: (2, 3) affine matrix from crop to destination coordinates, e.g. from
            :func:`segment_affine`.
        out_hw: ``(H, W)`` of the destination image.

    Returns:
        ``(rgb_window, mask_window, (x0, y0, x1, y1))`` with ``rgb_window`` uint8
        (y1 - y0, x1 - x0, 3), ``mask_window`` bool (y1 - y0, x1 - x0) and the window in
        destination pixels (``x1``, ``y1`` exclusive); or ``None`` when the window is empty or
        no warped mask pixel falls inside the image.

    Raises:
        ValueError: wrong shapes or dtypes, an empty crop, or a non-finite matrix.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"warp_segment: rgb must be uint8 (h, w, 3), got {rgb.dtype} {rgb.shape}"
        )
    _check_mask("warp_segment", mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(
            f"warp_segment: mask shape {mask.shape} does not match rgb shape {rgb.shape}"
        )
    if mask.size == 0:
        raise ValueError(f"warp_segment: crop is empty, shape {mask.shape}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise ValueError(
            f"warp_segment: matrix must be a finite (2, 3) array, got shape {matrix.shape}"
        )
    warped = _warp_mask(mask, matrix, out_hw)
    if warped is None:
        return None
    mask_window, shifted, (x0, y0, x1, y1) = warped
    size = (x1 - x0, y1 - y0)
    # Replicating the edge keeps black from bleeding into the segment's boundary pixels.
    rgb_window = cv2.warpAffine(
        np.ascontiguousarray(rgb),
        shifted,
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return rgb_window, mask_window, (x0, y0, x1, y1)


def _warp_mask(
    mask: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]] | None:
    """Warped mask window, the window-shifted matrix and the window (inputs validated)."""
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    h, w = mask.shape
    corners = np.array(
        [[-0.5, -0.5, 1.0], [w - 0.5, -0.5, 1.0], [-0.5, h - 0.5, 1.0], [w - 0.5, h - 0.5, 1.0]]
    )
    xy = _affine_apply(matrix, corners[:, :2])
    # Keep the dest pixels whose centres fall inside the outline.
    x0 = max(math.ceil(xy[:, 0].min() - _WINDOW_EPS), 0)
    y0 = max(math.ceil(xy[:, 1].min() - _WINDOW_EPS), 0)
    x1 = min(math.floor(xy[:, 0].max() + _WINDOW_EPS) + 1, out_w)
    y1 = min(math.floor(xy[:, 1].max() + _WINDOW_EPS) + 1, out_h)
    if x1 <= x0 or y1 <= y0:
        return None
    shifted = matrix.copy()
    shifted[0, 2] -= x0
    shifted[1, 2] -= y0
    warped_mask = cv2.warpAffine(
        mask.astype(np.uint8) * 255,
        shifted,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    mask_window = warped_mask >= 128
    if not mask_window.any():
        return None
    return mask_window, shifted, (x0, y0, x1, y1)


def warp_mask(
    mask: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The mask part of :func:`warp_segment` alone (same window, same pixels).

    Args:
        mask: bool (h, w) segment inside the crop.
        matrix: (2, 3) affine matrix from crop to destination coordinates.
        out_hw: ``(H, W)`` of the destination image.

    Returns:
        ``(mask_window, (x0, y0, x1, y1))`` or ``None``, as in :func:`warp_segment`.
    """
    _check_mask("warp_mask", mask)
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise ValueError(
            f"warp_mask: matrix must be a finite (2, 3) array, got shape {matrix.shape}"
        )
    if mask.size == 0:
        raise ValueError(f"warp_mask: crop is empty, shape {mask.shape}")
    warped = _warp_mask(mask, matrix, out_hw)
    return None if warped is None else (warped[0], warped[2])
