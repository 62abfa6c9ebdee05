"""The MIL head (WSDDN + OICR) on toy sets, and region features on tiny hand-made maps."""

import numpy as np
import pytest

from weakpaste.mine.proposals import Proposals
from weakpaste.models.mil import fit_mil, oicr_targets
from weakpaste.models.regions import cell_weights, region_features


def _toy(seed: int, n: int = 40, regions: int = 6, dims: int = 8, k: int = 2):
    """Images of ``regions`` noise features where each labelled class c has one region whose
    feature carries it (a bump on channel c); (features, labels, carrier index per (i, c))."""
    rng = np.random.default_rng(seed)
    feats, labels, carriers = [], np.zeros((n, k), np.float32), {}
    for i in range(n):
        x = rng.normal(0, 0.5, (regions, dims)).astype(np.float32)
        present = rng.random(k) < 0.5
        slots = rng.permutation(regions)
        for c in np.flatnonzero(present):
            x[slots[c], c] += 4.0
            carriers[(i, c)] = int(slots[c])
            labels[i, c] = 1
        feats.append(x)
    return feats, labels, carriers


@pytest.mark.parametrize("refine", [0, 2])
def test_the_region_that_carries_the_label_wins(refine):
    feats, labels, carriers = _toy(0)
    ious = [np.eye(len(f), dtype=np.float32) for f in feats]  # disjoint regions
    head = fit_mil(feats, labels, ious=ious, refine=refine, dims=8, epochs=60, lr=0.05,
                   batch_size=8, seed=0)
    test, test_labels, test_carriers = _toy(1, n=20)
    wins = [int(np.argmax(head.scores(test[i])[:, c])) == r
            for (i, c), r in test_carriers.items()]
    assert len(wins) >= 15 and all(wins)
    s = head.scores(test[0])
    assert s.shape == (6, 2) and s.dtype == np.float32 and np.all((s >= 0) & (s <= 1))
    assert len(head.refined) == refine and head.info["dims"] == 8


def test_fit_mil_is_deterministic_and_seeded():
    feats, labels, _ = _toy(2, n=12)
    a, b = (fit_mil(feats, labels, dims=4, epochs=3, seed=5) for _ in range(2))
    np.testing.assert_array_equal(a.scores(feats[0]), b.scores(feats[0]))
    c = fit_mil(feats, labels, dims=4, epochs=3, seed=6)
    assert not np.array_equal(a.scores(feats[0]), c.scores(feats[0]))


def test_fit_mil_errors():
    feats, labels, _ = _toy(3, n=4)
    with pytest.raises(ValueError, match=r"^fit_mil: 4 feature sets but labels of shape \(3, 2\)$"):
        fit_mil(feats, labels[:3])
    with pytest.raises(ValueError, match="^fit_mil: every image needs at least one proposal$"):
        fit_mil([*feats[:3], np.zeros((0, 8), np.float32)], labels)
    with pytest.raises(ValueError, match="^fit_mil: refinement needs every image's proposal IoUs$"):
        fit_mil(feats, labels, refine=1)


def test_oicr_targets_values():
    # Class 0's top proposal is 1 (overlapping 2 at 0.6, 0 at 0.1); class 1's top is 3.
    scores = np.array([[0.1, 0.0], [0.7, 0.1], [0.3, 0.2], [0.0, 0.9]], np.float32)
    ious = np.array([[1, .1, 0, 0], [.1, 1, .6, 0], [0, .6, 1, .2], [0, 0, .2, 1]], np.float32)
    target, weight = oicr_targets(scores, np.array([True, True]), ious)
    np.testing.assert_array_equal(target, [2, 0, 0, 1])  # 2 = background
    np.testing.assert_allclose(weight, [0.7, 0.7, 0.7, 0.9])
    target, weight = oicr_targets(scores, np.array([False, False]), ious)
    np.testing.assert_array_equal(target, [2, 2, 2, 2])
    assert not weight.any()


def test_cell_weights_values():
    # Cells centred at 32 i (MobileNet's padded stride-2 layers): pixel 16 is halfway.
    w = cell_weights(np.array([0.0, 16.0, 32.0, 100.0, -5.0]), 3, 32.0, 0.0)
    np.testing.assert_allclose(w, [[1, 0, 0], [.5, .5, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])


def test_region_features_mean_inside_masks():
    # A 2 x 2 map whose cells sit at the centres of the quadrants of an 8 x 8 image (a = 4,
    # b = 1.5): a mask over the left half averages the left cells (bilinear inside).
    fmap = np.array([[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [2.0, 2.0]]], np.float32)
    masks = np.zeros((3, 8, 8), bool)
    masks[0, :, :4] = True      # left half
    masks[1] = True             # everything
    masks[2, :2, :2] = True     # the top-left corner: clamped to cell (0, 0)
    props = Proposals.from_masks(masks)
    f = region_features(fmap, ((4.0, 1.5), (4.0, 1.5)), 8, props)
    assert f.shape == (3, 2) and f.dtype == np.float32
    # Columns 0-3 weigh the right cell 0, 0, 0.125, 0.375; rows are symmetric.
    right = (0.125 + 0.375) / 4
    np.testing.assert_allclose(f[0], [(1 + 5) / 2 * (1 - right) + (3 + 7) / 2 * right, 1.0],
                               rtol=1e-6)
    np.testing.assert_allclose(f[1], [4.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(f[2], [1.0, 0.0], rtol=1e-6)
