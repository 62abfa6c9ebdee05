"""Label-free ranking cues, their combination and the cut-off, on tiny hand-made maps."""

import numpy as np
import pytest

from weakpaste.mine.ranking import (
    border_contact,
    centre_offset,
    fragment_share,
    rank_average,
    saliency_contrast,
    threshold_stability,
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
