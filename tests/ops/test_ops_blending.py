"""Tests for weakpaste.ops.blending on tiny hand-made images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from weakpaste.ops import blending
from weakpaste.ops.blending import BLEND_MODES, blend


def _scene(h: int = 48, w: int = 56) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured background, a flat src with a bright square, and a rectangular mask."""
    yy, xx = np.mgrid[:h, :w]
    dst = np.stack([40 + xx, 60 + yy, 90 + (xx + yy) // 2], axis=-1).astype(np.uint8)
    src = np.full((h, w, 3), (100, 110, 120), dtype=np.uint8)
    src[20:30, 22:34] = (230, 220, 210)
    mask = np.zeros((h, w), dtype=bool)
    mask[12:37, 13:43] = True
    return dst, src, mask


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def test_blend_modes_constant():
    assert BLEND_MODES == ("none", "gaussian", "poisson")


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_blend_smoke_shape_dtype_and_inputs_untouched(mode):
    dst, src, mask = _scene()
    copies = (dst.copy(), src.copy(), mask.copy())
    out = blend(dst, src, mask, mode)
    assert out.shape == dst.shape and out.dtype == np.uint8
    assert out is not dst and not np.shares_memory(out, dst)
    for before, after in zip(copies, (dst, src, mask), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_blend_empty_mask_returns_dst_copy(mode):
    dst, src, _ = _scene()
    out = blend(dst, src, np.zeros(dst.shape[:2], bool), mode)
    np.testing.assert_array_equal(out, dst)


def test_blend_unknown_mode():
    dst, src, mask = _scene()
    with pytest.raises(ValueError) as err:
        blend(dst, src, mask, "xyz")
    assert str(err.value) == "unknown blending mode 'xyz'; choose one of: none, gaussian, poisson"


@pytest.mark.parametrize(
    ("dst_shape", "src_shape", "mask_shape", "message"),
    [
        ((8, 9, 3), (8, 8, 3), (8, 9),
         "blend: src shape (8, 8, 3) does not match dst shape (8, 9, 3)"),
        ((8, 9, 3), (8, 9, 3), (9, 8),
         "blend: mask shape (9, 8) does not match dst shape (8, 9, 3)"),
        ((8, 9), (8, 9), (8, 9),
         "blend: dst must be uint8 (h, w, 3), got uint8 (8, 9)"),
    ],
)
def test_blend_shape_mismatch(dst_shape, src_shape, mask_shape, message):
    with pytest.raises(ValueError) as err:
        blend(np.zeros(dst_shape, np.uint8), np.zeros(src_shape, np.uint8),
              np.zeros(mask_shape, bool), "none")
    assert str(err.value) == message


def test_blend_bad_sigma_and_mask_dtype():
    dst, src, mask = _scene()
    with pytest.raises(ValueError) as err:
        blend(dst, src, mask, "gaussian", sigma=0.0)
    assert str(err.value) == "blend: sigma must be a positive finite number, got 0.0"
    with pytest.raises(ValueError) as err:
        blend(dst, src, mask.astype(np.uint8), "none")
    assert str(err.value) == "blend: mask must be bool, got uint8"


def test_blend_none_copies_inside_and_keeps_outside():
    dst, src, mask = _scene()
    out = blend(dst, src, mask, "none")
    np.testing.assert_array_equal(out[mask], src[mask])
    np.testing.assert_array_equal(out[~mask], dst[~mask])


def test_blend_gaussian_feathers_the_edge():
    dst = np.zeros((20, 20, 3), np.uint8)
    src = np.full((20, 20, 3), 200, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[:, 10:] = True
    out = blend(dst, src, mask, "gaussian", sigma=1.5)
    row = out[10, :, 0].astype(int)
    # Just inside and just outside the edge are strictly between dst and src.
    assert 0 < row[9] < row[10] < 200
    assert 100 <= row[10] and row[9] <= 100
    # Far from the edge (beyond the kernel radius of ceil(3 sigma)) nothing is mixed.
    assert np.all(row[:4] == 0) and np.all(row[16:] == 200)
    assert np.all(np.diff(row) >= 0)


def test_blend_gaussian_mask_on_image_edge_stays_opaque():
    dst = np.zeros((12, 12, 3), np.uint8)
    src = np.full((12, 12, 3), 250, np.uint8)
    out = blend(dst, src, np.ones((12, 12), bool), "gaussian", sigma=3.0)
    np.testing.assert_array_equal(out, src)


def test_blend_poisson_changes_only_near_the_mask():
    dst, src, mask = _scene()
    out = blend(dst, src, mask, "poisson")
    changed = np.any(out != dst, axis=-1)
    assert changed.any()
    assert not np.any(changed & ~_dilate(mask, 3))


def test_blend_poisson_keeps_src_structure_aligned():
    dst, src, mask = _scene()
    out = blend(dst, src, mask, "poisson").astype(int)
    square = np.zeros(mask.shape, bool)
    square[20:30, 22:34] = True
    ring = _dilate(square, 3) & ~square & mask
    # The bright square stays well above its surroundings...
    assert out[square].mean() - out[ring].mean() > 60
    # ...and exactly where src has it: the clone is placed pixel-exactly.
    grey = out.mean(axis=-1)
    inner, outer = grey[21:29, 23:33], grey[ring & ~_dilate(square, 1)]
    assert inner.min() > outer.max()
    edge_in = np.concatenate([grey[20, 22:34], grey[29, 22:34], grey[20:30, 22], grey[20:30, 33]])
    edge_out = np.concatenate([grey[19, 22:34], grey[30, 22:34], grey[20:30, 21], grey[20:30, 34]])
    assert edge_in.min() > edge_out.max()


@pytest.mark.parametrize(("x", "y", "w", "h"), [(9, 7, 20, 21), (10, 8, 21, 20), (8, 9, 19, 19)])
def test_blend_poisson_alignment_odd_and_even_boxes(x, y, w, h):
    dst = np.full((48, 48, 3), 50, np.uint8)
    src = np.full((48, 48, 3), 50, np.uint8)
    src[y + 6 : y + h - 6, x + 6 : x + w - 6] = 200
    mask = np.zeros((48, 48), bool)
    mask[y : y + h, x : x + w] = True
    out = blend(dst, src, mask, "poisson")
    bright = out[..., 0] > 125
    np.testing.assert_array_equal(bright, src[..., 0] > 125)


def test_blend_poisson_mask_touching_the_border():
    dst, src, _ = _scene()
    src[0:8, 0:8] = 250
    mask = np.zeros(dst.shape[:2], bool)
    mask[:24, :20] = True
    out = blend(dst, src, mask, "poisson").astype(int)
    assert out.shape == dst.shape
    np.testing.assert_array_equal(out[~_dilate(mask, 3)], dst[~_dilate(mask, 3)])
    corner, around = out[:6, :6].mean(), out[10:20, 10:16].mean()
    assert corner - around > 60


def test_blend_poisson_tiny_mask_falls_back_to_gaussian():
    dst, src, _ = _scene()
    mask = np.zeros(dst.shape[:2], bool)
    mask[20:23, 20:23] = True
    np.testing.assert_array_equal(blend(dst, src, mask, "poisson", sigma=1.0),
                                  blend(dst, src, mask, "gaussian", sigma=1.0))


def test_blend_poisson_is_deterministic():
    # cv2.seamlessClone (OpenCV 5.0) alternates between different outputs on repeated calls.
    dst, src, mask = _scene()
    first = blend(dst, src, mask, "poisson")
    for _ in range(3):
        np.testing.assert_array_equal(blend(dst, src, mask, "poisson"), first)


def test_poisson_solve_values():
    # A source whose Laplacian vanishes inside the mask, with a flat destination: the solution
    # is the harmonic function fixed by the boundary, i.e. the destination's constant.
    dst = np.full((12, 12, 3), 100, np.uint8)
    src = np.full((12, 12, 3), 30, np.uint8)
    mask = np.zeros((12, 12), bool)
    mask[3:9, 3:9] = True
    out = blending.poisson_solve(src, dst, mask)
    assert out.dtype == np.uint8 and out.shape == (12, 12, 3)
    np.testing.assert_array_equal(out, dst)
    # A bright spot in the source keeps its contrast over the source's flat part.
    src[5:7, 5:7] = 90
    out = blending.poisson_solve(src, dst, mask).astype(int)
    assert out[5, 5, 0] - out[3, 3, 0] > 40
    assert (out[~mask] == 100).all()
