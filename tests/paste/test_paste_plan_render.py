import math

import numpy as np
import pytest

from weakpaste.core.errors import WeakpasteError
from weakpaste.ops import geometry
from weakpaste.ops import masks as mask_ops
from weakpaste.paste.plan import (
    ImagePlan,
    Placement,
    PlanParams,
    class_probabilities,
    parse_count_range,
    placement_matrix,
    plan_image,
    select_segments,
)
from weakpaste.paste.render import RenderParams, render


def test_parse_count_range():
    assert parse_count_range("4") == (4, 4)
    assert parse_count_range("1-6") == (1, 6)
    assert parse_count_range(3) == (3, 3)
    with pytest.raises(ValueError, match=r"object count 'x' must be N or LO-HI, e.g. 4 or 1-6"):
        parse_count_range("x")
    with pytest.raises(ValueError, match=r"object count '5-2' must be N or LO-HI with 1 <= LO"):
        parse_count_range("5-2")


def test_class_probabilities_values():
    cls = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(class_probabilities(cls, 2, "uniform"), [0.25] * 4)
    np.testing.assert_allclose(class_probabilities(cls, 2, "balanced"), [1 / 6] * 3 + [0.5])
    np.testing.assert_allclose(class_probabilities(cls, 2, "weights", np.array([1.0, 3.0])),
                               [1 / 12] * 3 + [0.75])
    with pytest.raises(ValueError, match=r"unknown selection 'x'; choose one of: uniform, "):
        class_probabilities(cls, 2, "x")
    with pytest.raises(ValueError, match=r"class weights select no segment"):
        class_probabilities(cls, 2, "weights", np.zeros(2))


def test_balanced_selection_evens_out_a_long_tail():
    cls = np.array([0] * 90 + [1] * 9 + [2])
    rng = np.random.default_rng(0)
    picks = np.concatenate([select_segments(rng, class_probabilities(cls, 3, "balanced"),
                                            (4, 4)) for _ in range(1500)])
    freq = np.bincount(cls[picks], minlength=3) / len(picks)
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.02)
    picks = select_segments(rng, class_probabilities(cls, 3, "uniform"), (2, 5))
    assert 2 <= len(picks) <= 5


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[: 2 * r + 1, : 2 * r + 1]
    return (xx - r) ** 2 + (yy - r) ** 2 <= r * r


def test_random_placement_stays_inside():
    rng = np.random.default_rng(1)
    mask = np.ones((30, 80), dtype=bool)
    for _ in range(50):
        plan = plan_image(rng, image_hw=(100, 120), segment_ids=np.array([7]), masks=[mask],
                          occupied=None, params=PlanParams(placement="random", rotation=30))
        p = plan.placements[0]
        warped = geometry.warp_mask(mask, placement_matrix(p, mask.shape), (100, 120))
        full = np.zeros((100, 120), dtype=bool)
        win, (x0, y0, x1, y1) = warped
        full[y0:y1, x0:x1] = win
        # The whole rotated, scaled segment landed inside the image (area preserved).
        assert full.sum() == pytest.approx(mask.sum() * p.scale**2, rel=0.12)
        assert 0.3 * 1.0 - 1e-9 <= p.scale <= 1.0
        assert plan.segment_ids == (7,)


def test_space_max_fills_free_space_in_decreasing_order():
    rng = np.random.default_rng(0)
    occupied = np.zeros((60, 120), dtype=bool)
    occupied[:, :60] = True  # left half taken by the background's instances
    masks = [_disk(5), _disk(5), _disk(5)]
    plan = plan_image(rng, image_hw=(60, 120), segment_ids=np.array([1, 2, 3]), masks=masks,
                      occupied=occupied, params=PlanParams(placement="space-max", rotation=0))
    p0 = plan.placements[0]
    # The largest free circle is centred in the right half with radius ~ 29.5.
    assert p0.center[0] == pytest.approx(90, abs=1) and p0.center[1] == pytest.approx(30, abs=1)
    assert p0.scale == pytest.approx(min(29.5 / 5.0, 3.0), rel=0.02)
    radii = [p.scale for p in plan.placements]
    assert radii == sorted(radii, reverse=True)
    # No room at all: everything is skipped and counted.
    full = np.ones((60, 120), dtype=bool)
    plan = plan_image(rng, image_hw=(60, 120), segment_ids=np.array([1, 2]), masks=masks[:2],
                      occupied=full, params=PlanParams(placement="space-max"))
    assert plan.placements == () and plan.skipped == 2


def test_space_max_scale_matches_circle_without_cap():
    rng = np.random.default_rng(0)
    plan = plan_image(rng, image_hw=(41, 41), segment_ids=np.array([1]), masks=[_disk(4)],
                      occupied=None, params=PlanParams(placement="space-max", rotation=0,
                                                       space_max_upscale=math.inf))
    assert plan.placements[0].scale == pytest.approx(20.0 / 4.0, rel=0.03)


def test_jitter_scale_range_and_unknown_placement():
    rng = np.random.default_rng(3)
    mask = np.ones((10, 10), dtype=bool)
    scales = [plan_image(rng, image_hw=(50, 50), segment_ids=np.array([1]), masks=[mask],
                         occupied=None, params=PlanParams(placement="jitter"))
              .placements[0].scale for _ in range(200)]
    assert 0.1 <= min(scales) < 0.3 and 1.8 < max(scales) <= 2.0
    with pytest.raises(WeakpasteError, match=r"^placement \(--placement\) must be one of "
                                             r"random, space-max, jitter; got 'grid'$"):
        PlanParams(placement="grid")


def test_plan_is_deterministic():
    mask = _disk(6)

    def make(seed):
        return plan_image(np.random.default_rng(seed), image_hw=(80, 90),
                          segment_ids=np.array([4, 5]), masks=[mask, mask], occupied=None,
                          params=PlanParams(placement="random", blend=("none", "gaussian")))

    assert make(5) == make(5)
    assert make(5) != make(6)


def _place(slot, center, scale=1.0, blend="none", size=10):
    return Placement(slot=slot, scale=scale, angle=0.0, flip=False,
                     anchor=((size - 1) / 2, (size - 1) / 2), center=center, blend=blend)


def test_render_occlusion_arithmetic():
    bg = np.zeros((40, 40, 3), dtype=np.uint8)
    bg_masks = np.zeros((2, 40, 40), dtype=bool)
    bg_masks[0, 0:10, 0:20] = True  # 200 px; the paste covers 100 of them
    bg_masks[1, 30:34, 30:34] = True  # 16 px; fully covered -> dropped
    seg = (np.full((10, 10, 3), 255, np.uint8), np.ones((10, 10), bool), "new")
    plan = ImagePlan(segment_ids=(1, 2),
                     placements=(_place(0, (14.5, 4.5)), _place(1, (31.5, 31.5))))
    out = render(bg, bg_masks, ("old", "tiny"), [seg, seg], plan,
                 RenderParams(min_visible=0.25, min_area=1))
    assert out.classes == ("old", "new", "new")
    assert out.dropped == {"tiny": 1}
    assert out.masks.shape == (3, 40, 40) and out.masks.dtype == bool
    assert out.masks[0].sum() == 100 and out.masks[0][0:10, 0:10].all()
    assert not out.masks[0][0:10, 10:20].any()
    assert [int(m.sum()) for m in out.masks[1:]] == [100, 100]
    assert out.pasted.tolist() == [False, True, True]
    # "none" blending copies exactly inside the mask and leaves the rest untouched.
    assert (out.image[0:10, 10:20] == 255).all() and (out.image[20:28, 0:20] == 0).all()
    assert (bg == 0).all()  # inputs are not modified


def test_render_decodes_only_the_background_instances_a_paste_touches(monkeypatch):
    bg = np.zeros((40, 40, 3), dtype=np.uint8)
    bg_masks = np.zeros((3, 40, 40), dtype=bool)
    bg_masks[0, 0:10, 0:20] = True  # half covered by the paste
    bg_masks[1, 30:34, 30:40] = True  # far away: untouched
    bg_masks[2, 20:24, 0:4] = True  # far away: untouched
    seg = (np.full((10, 10, 3), 255, np.uint8), np.ones((10, 10), bool), "new")
    plan = ImagePlan(segment_ids=(1,), placements=(_place(0, (14.5, 4.5)),))
    params = RenderParams(min_visible=0.25, min_area=1)
    eager = render(bg, bg_masks, ("a", "b", "c"), [seg], plan, params)
    rles = mask_ops.encode_many(bg_masks)
    decoded = []
    real_decode = mask_ops.decode
    monkeypatch.setattr(mask_ops, "decode", lambda r: decoded.append(r) or real_decode(r))
    lazy = render(bg, mask_ops.RleStack(rles, 40, 40), ("a", "b", "c"), [seg], plan, params)
    assert decoded == [rles[0]]  # only the touched instance
    assert lazy.reused == (None, rles[1], rles[2], None)
    assert lazy.rles() == eager.rles() == mask_ops.encode_many(eager.masks)
    assert lazy.rles()[1] is rles[1]  # reused as is, not encoded again
    assert np.array_equal(lazy.masks, eager.masks) and lazy.reused == (None,) * 4
    assert np.array_equal(lazy.image, eager.image) and lazy.classes == eager.classes


def test_render_min_visible_threshold():
    bg = np.zeros((40, 40, 3), dtype=np.uint8)
    bg_masks = np.zeros((1, 40, 40), dtype=bool)
    bg_masks[0, 0:10, 0:10] = True
    seg = (np.full((10, 10, 3), 9, np.uint8), np.ones((10, 10), bool), "new")
    # Covers 80 of 100 pixels: 20% visible < 25% -> dropped; at 10% threshold it stays.
    plan = ImagePlan(segment_ids=(1,), placements=(_place(0, (4.5, 6.5)),))
    assert render(bg, bg_masks, ("old",), [seg], plan, RenderParams(min_visible=0.25,
                                                                    min_area=1)).dropped == {
        "old": 1}
    kept = render(bg, bg_masks, ("old",), [seg], plan, RenderParams(min_visible=0.1, min_area=1))
    assert kept.dropped == {} and kept.masks[0].sum() == 20


def test_render_outside_and_errors():
    bg = np.zeros((20, 20, 3), dtype=np.uint8)
    seg = (np.full((10, 10, 3), 9, np.uint8), np.ones((10, 10), bool), "new")
    plan = ImagePlan(segment_ids=(1,), placements=(_place(0, (500.0, 500.0)),))
    out = render(bg, np.zeros((0, 20, 20), bool), (), [seg], plan)
    assert out.outside == 1 and out.masks.shape == (0, 20, 20)
    with pytest.raises(ValueError, match=r"render: plan has 1 segments, got 0"):
        render(bg, np.zeros((0, 20, 20), bool), (), [], plan)
    with pytest.raises(ValueError, match=r"render: background is 20x20 but its masks are 5x5"):
        render(bg, np.zeros((1, 5, 5), bool), ("a",), [seg], plan)


def test_render_gaussian_and_poisson_keep_masks_hard():
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 100, (64, 64, 3), dtype=np.uint8)
    rgb = np.full((20, 20, 3), 220, np.uint8)
    rgb[6:14, 6:14] = 120  # Poisson keeps gradients, not colours: give it an edge to keep
    seg = (rgb, np.ones((20, 20), bool), "x")
    for mode in ("gaussian", "poisson"):
        plan = ImagePlan(segment_ids=(1,), placements=(_place(0, (31.5, 31.5), blend=mode,
                                                              size=20),))
        a = render(bg, np.zeros((0, 64, 64), bool), (), [seg], plan)
        b = render(bg, np.zeros((0, 64, 64), bool), (), [seg], plan)
        np.testing.assert_array_equal(a.image, b.image)  # deterministic
        assert a.image.dtype == np.uint8 and a.image.shape == bg.shape
        assert a.masks[0].sum() == 400
        inner, rim = a.image[29:35, 29:35].mean(), a.image[25:27, 26:38].mean()
        if mode == "gaussian":
            # Blurred alpha: solid inside, softened only within ~3 sigma of the edge.
            assert inner == pytest.approx(120, abs=2) and rim > 195
        else:
            assert rim - inner > 40  # the object's structure is there
