"""Label-free ranking cues, their combination and the cut-off, on tiny hand-made maps."""

import numpy as np
import pytest

from weakpaste.mine.ranking import (
    border_contact,
    centre_offset,
    crossfit_folds,
    crossfit_probabilities,
    fragment_share,
    keep_mask,
    rank_average,
    saliency_contrast,
    threshold_stability,
    top_count,
)

# ------------------------------------------------------------------ cues


def test_threshold_stability_steep_edge_vs_plateau():
    steep = np.zeros((4, 4))
    steep[1:3, 1:3] = 1.0  # nothing within 0.1 of t = 0.5: both masks are the 4 pixels
    assert threshold_stability(steep, 0.5, 0.1) == 1.0
    ramp = np.array([[0.0, 0.45, 0.55, 0.7]])  # > 0.4: 3 pixels, > 0.6: 1 pixel
    assert threshold_stability(ramp, 0.5, 0.1) == pytest.approx(1 / 3)
    assert threshold_stability(ramp, 0.5, 0.2) == 0.0  # > 0.3: 3 pixels, > 0.7: none
    assert threshold_stability(np.zeros((3, 3)), 0.5) == 0.0


def test_saliency_contrast_values():
    sal = np.array([[1.0, 0.8], [0.2, 0.0]])
    mask = np.array([[True, True], [False, False]])
    assert saliency_contrast(sal, mask) == pytest.approx(0.9 - 0.1)
    assert saliency_contrast(sal, ~mask) == pytest.approx(-0.8)
    assert saliency_contrast(sal, np.ones((2, 2), bool)) == pytest.approx(0.5)
    assert saliency_contrast(sal, np.zeros((2, 2), bool)) == pytest.approx(-0.5)


def test_border_contact_counts_each_border_pixel_once():
    mask = np.zeros((5, 6), bool)
    assert border_contact(mask) == 0.0
    mask[1:4, 1:5] = True  # inside the frame
    assert border_contact(mask) == 0.0
    mask[0, :] = True  # the top row: 6 of the 2 * 6 + 2 * 3 = 18 border pixels
    assert border_contact(mask) == pytest.approx(6 / 18)
    mask[:, 0] = True  # + the left column below the corner: 4 more
    assert border_contact(mask) == pytest.approx(10 / 18)
    assert border_contact(np.ones((5, 6), bool)) == 1.0
    assert border_contact(np.array([[True, False]])) == 0.5  # too thin to have an inside


def test_centre_offset_values():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    assert centre_offset(mask) == 0.0
    corner = np.zeros((4, 4), bool)
    corner[0, 0] = True  # centroid at (0.125, 0.125): 0.375 * sqrt(2) / (0.5 * sqrt(2))
    assert centre_offset(corner) == pytest.approx(0.75)
    right = np.zeros((2, 4), bool)
    right[:, 3] = True  # dx = 0.375, dy = 0
    assert centre_offset(right) == pytest.approx(0.375 / np.hypot(0.5, 0.5))
    assert centre_offset(np.zeros((3, 3), bool)) == 1.0


def test_fragment_share_values():
    binary = np.zeros((3, 6), bool)
    binary[:, :2] = True  # 6 pixels, kept
    binary[:, 4:] = True  # 6 pixels, a second piece
    kept = np.zeros_like(binary)
    kept[:, :2] = True
    assert fragment_share(binary, kept) == 0.5
    assert fragment_share(kept, kept) == 1.0
    assert fragment_share(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0


# ------------------------------------------------------------------ combination


def test_rank_average_directions_ties_and_nan():
    values = {"up": [3.0, 1.0, 2.0], "down": [0.1, 0.3, 0.2]}
    # up ranks 1, 1/3, 2/3; down (smaller is better) ranks 1, 1/3, 2/3 -> same order
    np.testing.assert_allclose(rank_average(values, {"up": 1, "down": -1}), [1, 1 / 3, 2 / 3])
    # with down taken as larger-is-better the two cancel out to 2/3 each
    np.testing.assert_allclose(rank_average(values, {"up": 1, "down": 1}), [2 / 3] * 3)
    ties = rank_average({"a": [1.0, 1.0, 5.0]}, {"a": 1})
    np.testing.assert_allclose(ties, [0.5, 0.5, 1.0])  # mean rank 1.5 of 3
    nan = rank_average({"a": [1.0, np.nan, 2.0]}, {"a": 1})
    np.testing.assert_allclose(nan, [0.5, 0.5, 1.0])  # ranks among the 2 defined; NaN: 0.5
    assert rank_average({"a": []}, {"a": 1}).shape == (0,)


def test_rank_average_errors():
    with pytest.raises(ValueError, match="at least one cue"):
        rank_average({"a": [1.0]}, {})
    with pytest.raises(ValueError, match="cue 'b' has no values"):
        rank_average({"a": [1.0]}, {"b": 1})
    with pytest.raises(ValueError, match="one value per segment"):
        rank_average({"a": [1.0], "b": [1.0, 2.0]}, {"a": 1, "b": 1})


# ------------------------------------------------------------------ cut-off


def test_top_count_has_no_float_error():
    assert top_count(0.55, 20) == 11 and top_count(0.5, 3) == 2 and top_count(1.0, 7) == 7
    assert top_count(0.1, 0) == 0 and top_count(0.01, 5) == 1


def test_keep_mask_global_per_group_and_min_score():
    scores = [0.9, 0.2, 0.5, 0.5, 0.7, 0.1]
    np.testing.assert_array_equal(keep_mask(scores), [True] * 6)
    np.testing.assert_array_equal(keep_mask(scores, min_score=0.5),
                                  [True, False, True, True, True, False])
    # top half of 6: 0.9, 0.7 and the earlier of the tied 0.5s
    np.testing.assert_array_equal(keep_mask(scores, keep_top=0.5),
                                  [True, False, True, False, True, False])
    # keep_top applies to the 4 that pass min_score: ceil(0.5 x 4) = 2
    np.testing.assert_array_equal(keep_mask(scores, keep_top=0.5, min_score=0.5),
                                  [True, False, False, False, True, False])
    # per class: a keeps 2 of its 3 (0.9, 0.5), b keeps 2 of its 3 (0.5, 0.7)
    groups = ["a", "a", "a", "b", "b", "b"]
    np.testing.assert_array_equal(keep_mask(scores, keep_top=0.5, groups=groups),
                                  [True, False, True, True, True, False])
    assert keep_mask([], keep_top=0.5).shape == (0,)


# ------------------------------------------------------------------ cross-fitting


def test_crossfit_folds_deal_every_class_evenly():
    labels = ["a"] * 4 + ["b"] * 3 + ["c"]
    folds = crossfit_folds(labels, 2, seed=1)
    assert folds.shape == (8,) and set(folds.tolist()) == {0, 1}
    assert sorted(folds[:4].tolist()) == [0, 0, 1, 1]  # a: 2 and 2
    assert sorted(folds[4:7].tolist()) in ([0, 0, 1], [0, 1, 1])
    assert np.bincount(folds).tolist() == [4, 4]  # b continues where a stopped, c after b
    np.testing.assert_array_equal(folds, crossfit_folds(labels, 2, seed=1))
    with pytest.raises(ValueError, match="at least 2 folds, got 1"):
        crossfit_folds(labels, 1)


def test_crossfit_probabilities_grade_an_image_without_having_seen_it():
    """Class a looks like e0, b like e1; image 0 is labelled a but looks like b, plus a trait
    of its own (e3). A head trained on it learns to call it a from that trait; the head that
    never saw it does not."""
    from weakpaste.models.training import linear_probe

    rng = np.random.default_rng(0)
    labels = ["a"] * 8 + ["b"] * 8
    feats = np.zeros((16, 4), np.float32)
    feats[:8, 0] = 1.0
    feats[8:, 1] = 1.0
    feats[0] = [0.0, 1.0, 0.0, 1.0]
    feats += rng.normal(0, 0.05, feats.shape).astype(np.float32)
    targets = np.repeat(np.eye(2, dtype=np.float32), 8, axis=0)
    weight, bias = linear_probe(feats, targets, epochs=300)
    assert 1 / (1 + np.exp(-(feats[0] @ weight[0] + bias[0]))) > 0.9  # in-sample: sure
    folds = crossfit_folds(labels, 4, seed=0)
    p = crossfit_probabilities({"before": feats, "swapped": feats[:, [1, 0, 2, 3]]}, labels,
                               ["a", "b"], folds, epochs=300, seed=0)
    assert p["before"].shape == (16,) and p["before"].dtype == np.float64
    assert p["before"][0] < 0.6 and p["before"][1:].min() > 0.7
    assert p["swapped"][1:].max() < 0.3  # the same heads on other features
    again = crossfit_probabilities({"before": feats}, labels, ["a", "b"], folds, epochs=300)
    np.testing.assert_array_equal(again["before"], p["before"])
    one = crossfit_probabilities({"before": feats[:1]}, ["a"], ["a", "b"], np.zeros(1, int))
    assert np.isnan(one["before"]).all()
