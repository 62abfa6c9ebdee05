"""Tests for weakpaste.ops.geometry on tiny hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weakpaste.ops.geometry import (
    max_inscribed_circle,
    min_enclosing_circle,
    segment_affine,
    warp_segment,
)


def _disk(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _asymmetric_crop() -> tuple[np.ndarray, np.ndarray]:
    """An L-shaped red segment on a blue crop, 12 x 17, with no symmetry."""
    mask = np.zeros((12, 17), dtype=bool)
    mask[1:11, 2:6] = True
    mask[7:11, 2:15] = True
    rgb = np.zeros((12, 17, 3), dtype=np.uint8)
    rgb[..., 2] = 255
    rgb[mask] = (255, 0, 0)
    return rgb, mask


def _pixel_centres_free(free: np.ndarray, cx: float, cy: float, r: float) -> bool:
    yy, xx = np.mgrid[: free.shape[0], : free.shape[1]]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return bool(free[inside].all())


# --- max_inscribed_circle ---------------------------------------------------------------------


def test_max_inscribed_circle_smoke():
    cx, cy, r = max_inscribed_circle(np.ones((9, 9), dtype=bool))
    assert (cx, cy) == (4.0, 4.0)
    assert r == pytest.approx(4.5)


def test_max_inscribed_circle_returns_python_floats():
    out = max_inscribed_circle(np.ones((5, 8), dtype=bool))
    assert isinstance(out, tuple) and len(out) == 3
    assert all(type(v) is float for v in out)


def test_max_inscribed_circle_square():
    free = np.zeros((41, 41), dtype=bool)
    free[10:31, 10:31] = True
    cx, cy, r = max_inscribed_circle(free)
    assert (cx, cy) == (20.0, 20.0)
    assert r == pytest.approx(10.5, abs=1.0)
    assert _pixel_centres_free(free, cx, cy, r)


def test_max_inscribed_circle_l_shape():
    # Two 10-pixel-thick arms; the widest spot is the corner where they meet, where a circle
    # touching both image edges and the inner corner has radius 10 / (1 + 1/sqrt(2)) ~ 5.86.
    free = np.zeros((40, 40), dtype=bool)
    free[:, :10] = True
    free[30:, :] = True
    cx, cy, r = max_inscribed_circle(free)
    assert cx < 10 and cy >= 30
    assert 5.0 <= r <= 10 / (1 + 1 / math.sqrt(2)) + 0.5
    assert _pixel_centres_free(free, cx, cy, r)


def test_max_inscribed_circle_all_occupied():
    assert max_inscribed_circle(np.zeros((6, 7), dtype=bool)) == (0.0, 0.0, 0.0)
    assert max_inscribed_circle(np.zeros((0, 7), dtype=bool)) == (0.0, 0.0, 0.0)


def test_max_inscribed_circle_image_border_is_occupied():
    free = np.ones((30, 5), dtype=bool)
    cx, cy, r = max_inscribed_circle(free)
    assert r == pytest.approx(2.5)
    assert cx == 2.0
    # Ties go to the first maximum in row-major order.
    assert cy == 2.0


def test_max_inscribed_circle_is_deterministic():
    free = np.zeros((50, 60), dtype=bool)
    free[5:45:3, :] = True
    free[20:40, 10:50] = True
    assert max_inscribed_circle(free) == max_inscribed_circle(free.copy())


# --- min_enclosing_circle ---------------------------------------------------------------------


def test_min_enclosing_circle_smoke():
    cx, cy, r = min_enclosing_circle(np.ones((3, 3), dtype=bool))
    assert (cx, cy) == pytest.approx((1.0, 1.0))
    assert r == pytest.approx(math.sqrt(2), abs=1e-3)


def test_min_enclosing_circle_returns_python_floats():
    out = min_enclosing_circle(_disk(11, 5, 5, 3))
    assert isinstance(out, tuple) and len(out) == 3
    assert all(type(v) is float for v in out)


@pytest.mark.parametrize(
    ("circle", "mask", "message"),
    [
        (max_inscribed_circle, np.ones((2, 2, 2), dtype=bool),
         "max_inscribed_circle: expected a 2-D mask, got shape (2, 2, 2)"),
        (max_inscribed_circle, np.ones((3, 3), dtype=np.uint8),
         "max_inscribed_circle: expected a bool mask, got dtype uint8"),
        (min_enclosing_circle, np.zeros((4, 4), dtype=bool),
         "min_enclosing_circle: mask is empty"),
        (min_enclosing_circle, np.ones((4,), dtype=bool),
         "min_enclosing_circle: expected a 2-D mask, got shape (4,)"),
        (min_enclosing_circle, np.ones((4, 4), dtype=np.float32),
         "min_enclosing_circle: expected a bool mask, got dtype float32"),
    ],
)
def test_circles_refuse_a_bad_mask(circle, mask, message):
    with pytest.raises(ValueError) as err:
        circle(mask)
    assert str(err.value) == message


def test_min_enclosing_circle_disk():
    cx, cy, r = min_enclosing_circle(_disk(21, 10, 10, 5))
    assert (cx, cy) == pytest.approx((10.0, 10.0), abs=1e-3)
    assert r == pytest.approx(5.0, abs=0.05)


def test_min_enclosing_circle_single_pixel():
    mask = np.zeros((5, 6), dtype=bool)
    mask[3, 4] = True
    cx, cy, r = min_enclosing_circle(mask)
    assert (cx, cy) == pytest.approx((4.0, 3.0), abs=1e-3)
    assert r == 0.5


def test_min_enclosing_circle_uses_every_part():
    mask = np.zeros((3, 11), dtype=bool)
    mask[0, 0] = True
    mask[0, 10] = True
    mask[2, 5] = True
    cx, cy, r = min_enclosing_circle(mask)
    yy, xx = np.nonzero(mask)
    assert np.all(np.hypot(xx - cx, yy - cy) <= r + 1e-6)
    assert r == pytest.approx(5.0, abs=0.2)


# --- segment_affine ---------------------------------------------------------------------------


def _apply(matrix: np.ndarray, x: float, y: float) -> np.ndarray:
    return matrix @ np.array([x, y, 1.0])


def test_segment_affine_identity():
    m = segment_affine(10, 20, scale=1.0, angle_deg=0.0, flip=False,
                       center_src=(4.0, 3.0), center_dst=(4.0, 3.0))
    assert m.shape == (2, 3) and m.dtype == np.float64
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-12)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("angle", [0.0, 37.0, -90.0])
def test_segment_affine_centre_lands_on_destination(flip, angle):
    m = segment_affine(10, 20, scale=1.7, angle_deg=angle, flip=flip,
                       center_src=(4.5, 3.0), center_dst=(100.25, 50.0))
    np.testing.assert_allclose(_apply(m, 4.5, 3.0), (100.25, 50.0), atol=1e-9)


def test_segment_affine_rotation_is_counter_clockwise_and_scales():
    m = segment_affine(10, 20, scale=2.0, angle_deg=90.0, flip=False,
                       center_src=(5.0, 5.0), center_dst=(30.0, 40.0))
    # One pixel right of the pivot ends up two pixels *up* (y grows downwards).
    np.testing.assert_allclose(_apply(m, 6.0, 5.0), (30.0, 38.0), atol=1e-9)


def test_segment_affine_flip_mirrors():
    w = 20
    centre = ((w - 1) / 2, 4.0)
    m = segment_affine(10, w, scale=1.0, angle_deg=0.0, flip=True,
                       center_src=centre, center_dst=centre)
    np.testing.assert_allclose(m, [[-1, 0, w - 1], [0, 1, 0]], atol=1e-12)
    # The pivot is given in un-mirrored coordinates and still lands on center_dst.
    m = segment_affine(10, w, scale=1.0, angle_deg=0.0, flip=True,
                       center_src=(0.0, 0.0), center_dst=(50.0, 50.0))
    np.testing.assert_allclose(_apply(m, 0.0, 0.0), (50.0, 50.0), atol=1e-12)
    np.testing.assert_allclose(_apply(m, 1.0, 0.0), (49.0, 50.0), atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"h": 0, "w": 5, "scale": 1.0},
         "segment_affine: crop size must be positive, got h=0, w=5"),
        ({"h": 5, "w": 5, "scale": 0.0},
         "segment_affine: scale must be a positive finite number, got 0.0"),
        ({"h": 5, "w": 5, "scale": math.inf},
         "segment_affine: scale must be a positive finite number, got inf"),
    ],
)
def test_segment_affine_bad_input(kwargs, message):
    with pytest.raises(ValueError) as err:
        segment_affine(angle_deg=0.0, flip=False, center_src=(0, 0), center_dst=(0, 0), **kwargs)
    assert str(err.value) == message


# --- warp_segment -----------------------------------------------------------------------------


def test_warp_segment_smoke_and_dtypes():
    rgb, mask = _asymmetric_crop()
    m = segment_affine(12, 17, scale=1.3, angle_deg=25.0, flip=False,
                       center_src=(8.0, 6.0), center_dst=(40.0, 30.0))
    out = warp_segment(rgb, mask, m, (64, 80))
    assert out is not None
    rgb_w, mask_w, (x0, y0, x1, y1) = out
    assert all(type(v) is int for v in (x0, y0, x1, y1))
    assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 64
    assert rgb_w.dtype == np.uint8 and rgb_w.shape == (y1 - y0, x1 - x0, 3)
    assert mask_w.dtype == np.bool_ and mask_w.shape == (y1 - y0, x1 - x0)
    assert mask_w.any()


@pytest.mark.parametrize(
    ("center_src", "center_dst", "shape", "box", "seen"),
    [((0.0, 0.0), (7.0, 5.0), (50, 50), (7, 5, 24, 17), np.s_[:, :]),
     ((8.0, 6.0), (0.0, 0.0), (30, 30), (0, 0, 9, 6), np.s_[6:, 8:])],
    ids=["integer-translation-is-exact", "window-partly-outside-is-cropped"])
def test_warp_segment_translation(center_src, center_dst, shape, box, seen):
    """An integer translation copies the pixels exactly; what falls outside is cropped."""
    rgb, mask = _asymmetric_crop()
    m = segment_affine(12, 17, scale=1.0, angle_deg=0.0, flip=False,
                       center_src=center_src, center_dst=center_dst)
    rgb_w, mask_w, got = warp_segment(rgb, mask, m, shape)
    assert got == box
    np.testing.assert_array_equal(mask_w, mask[seen])
    np.testing.assert_array_equal(rgb_w, rgb[seen])


def test_warp_segment_rotate_90_keeps_alignment():
    rgb, mask = _asymmetric_crop()
    m = segment_affine(12, 17, scale=1.0, angle_deg=90.0, flip=False,
                       center_src=(8.0, 6.0), center_dst=(30.0, 30.0))
    rgb_w, mask_w, _ = warp_segment(rgb, mask, m, (60, 60))
    # Counter-clockwise on screen is np.rot90's direction.
    np.testing.assert_array_equal(mask_w, np.rot90(mask))
    np.testing.assert_array_equal(rgb_w, np.rot90(rgb))


@pytest.mark.parametrize("angle", [17.0, 45.0, 133.0])
def test_warp_segment_rotation_keeps_mask_on_segment_colour(angle):
    rgb, mask = _asymmetric_crop()
    m = segment_affine(12, 17, scale=1.5, angle_deg=angle, flip=True,
                       center_src=(8.3, 6.1), center_dst=(30.6, 30.2))
    rgb_w, mask_w, _ = warp_segment(rgb, mask, m, (60, 60))
    red, blue = rgb_w[mask_w][:, 0].astype(int), rgb_w[mask_w][:, 2].astype(int)
    # Mask and image share the sampling, so a mask pixel is at least half segment colour.
    assert np.all(red >= 126)
    assert np.all(red + 2 >= blue)
    assert mask_w.sum() == pytest.approx(mask.sum() * 1.5**2, rel=0.1)


def test_warp_segment_flip_mirrors():
    rgb, mask = _asymmetric_crop()
    centre = (8.0, 5.5)
    m = segment_affine(12, 17, scale=1.0, angle_deg=0.0, flip=True,
                       center_src=centre, center_dst=(20.0, 20.5))
    rgb_w, mask_w, box = warp_segment(rgb, mask, m, (40, 40))
    assert box == (12, 15, 29, 27)
    np.testing.assert_array_equal(mask_w, mask[:, ::-1])
    np.testing.assert_array_equal(rgb_w, rgb[:, ::-1])


@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0])
def test_warp_segment_scale_area(scale):
    mask = _disk(21, 10, 10, 9)
    rgb = np.full((21, 21, 3), 200, dtype=np.uint8)
    m = segment_affine(21, 21, scale=scale, angle_deg=0.0, flip=False,
                       center_src=(10.0, 10.0), center_dst=(50.0, 50.0))
    _, mask_w, _ = warp_segment(rgb, mask, m, (100, 100))
    assert mask_w.sum() == pytest.approx(mask.sum() * scale**2, rel=0.1)


def test_warp_segment_tiny_scale():
    mask = np.ones((100, 100), dtype=bool)
    rgb = np.full((100, 100, 3), 9, dtype=np.uint8)
    m = segment_affine(100, 100, scale=0.05, angle_deg=30.0, flip=False,
                       center_src=(50.0, 50.0), center_dst=(10.0, 10.0))
    rgb_w, mask_w, _ = warp_segment(rgb, mask, m, (20, 20))
    assert 15 <= mask_w.sum() <= 35
    assert np.all(rgb_w == 9)
    # The right/bottom image edge crops too.
    m = segment_affine(12, 17, scale=1.0, angle_deg=0.0, flip=False,
                       center_src=(0.0, 0.0), center_dst=(25.0, 28.0))
    _, mask_w, box = warp_segment(rgb, mask, m, (30, 30))
    assert box == (25, 28, 30, 30)
    np.testing.assert_array_equal(mask_w, mask[:2, :5])


def test_warp_segment_none_when_nothing_lands_inside():
    rgb, mask = _asymmetric_crop()
    outside = segment_affine(12, 17, scale=1.0, angle_deg=0.0, flip=False,
                             center_src=(0.0, 0.0), center_dst=(-40.0, 5.0))
    assert warp_segment(rgb, mask, outside, (30, 30)) is None
    # The crop overlaps the image but its mask part does not (mask starts at column 2).
    edge = segment_affine(12, 17, scale=1.0, angle_deg=0.0, flip=False,
                          center_src=(0.0, 0.0), center_dst=(28.0, 0.0))
    assert warp_segment(rgb, mask, edge, (30, 30)) is None


@pytest.mark.parametrize(
    ("rgb", "mask", "matrix", "message"),
    [
        (np.zeros((4, 5, 3), np.uint8), np.ones((4, 4), bool), np.eye(2, 3),
         "warp_segment: mask shape (4, 4) does not match rgb shape (4, 5, 3)"),
        (np.zeros((4, 4, 3), np.float32), np.ones((4, 4), bool), np.eye(2, 3),
         "warp_segment: rgb must be uint8 (h, w, 3), got float32 (4, 4, 3)"),
        (np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.uint8), np.eye(2, 3),
         "warp_segment: expected a bool mask, got dtype uint8"),
        (np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), np.eye(3),
         "warp_segment: matrix must be a finite (2, 3) array, got shape (3, 3)"),
    ],
)
def test_warp_segment_bad_input(rgb, mask, matrix, message):
    with pytest.raises(ValueError) as err:
        warp_segment(rgb, mask, matrix, (10, 10))
    assert str(err.value) == message


def test_warp_mask_matches_warp_segment():
    from weakpaste.ops.geometry import segment_affine, warp_mask, warp_segment

    mask = np.zeros((9, 13), dtype=bool)
    mask[2:7, 1:10] = True
    mask[0, 12] = True
    rgb = np.full((9, 13, 3), 200, dtype=np.uint8)
    m = segment_affine(9, 13, scale=1.7, angle_deg=33.0, flip=True, center_src=(6.0, 4.0),
                       center_dst=(3.0, 20.0))
    full = warp_segment(rgb, mask, m, (30, 40))
    only = warp_mask(mask, m, (30, 40))
    assert only is not None and only[1] == full[2]
    np.testing.assert_array_equal(only[0], full[1])
    assert warp_mask(mask, m, (30, 40))[0].dtype == bool
    far = segment_affine(9, 13, scale=1.0, angle_deg=0.0, flip=False, center_src=(6.0, 4.0),
                         center_dst=(500.0, 500.0))
    assert warp_mask(mask, far, (30, 40)) is None
    with pytest.raises(ValueError, match=r"warp_mask: matrix must be a finite \(2, 3\) array"):
        warp_mask(mask, np.zeros((3, 3)), (30, 40))


def test_max_inscribed_circle_does_not_depend_on_the_memory_address():
    # OpenCV's precise distance transform varies in the last float bit with the input's
    # address; the result must not (same plan, same bytes in any worker process).
    rng = np.random.default_rng(0)
    for _ in range(5):
        free = rng.random((47, 63)) > 0.03
        results = set()
        for offset in range(16):
            buf = np.zeros(free.size + 64, dtype=bool)
            view = buf[offset:offset + free.size].reshape(free.shape)
            view[:] = free
            results.add(max_inscribed_circle(view))
        assert len(results) == 1
        cx, cy, r = results.pop()
        assert float(r + 0.5) ** 2 == pytest.approx(round((r + 0.5) ** 2), abs=1e-9)
