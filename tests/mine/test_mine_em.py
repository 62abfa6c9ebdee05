import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from weakpaste.mine.em import em_refine, fit_gaussian, m_step


def test_woodbury_mahalanobis_matches_sklearn():
    rng = np.random.default_rng(0)
    for n, d in [(8, 30), (40, 10), (5, 200)]:
        x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d)
        y = rng.normal(size=(7, d))
        lw = LedoitWolf().fit(x)
        g = fit_gaussian(x)
        assert g.shrinkage == pytest.approx(lw.shrinkage_, rel=1e-6)
        np.testing.assert_allclose(g.mahalanobis(y), np.sqrt(lw.mahalanobis(y)), rtol=1e-6)


def test_fit_gaussian_edge_cases():
    with pytest.raises(ValueError, match=r"fit_gaussian needs at least 2 samples, got 1"):
        fit_gaussian(np.zeros((1, 4)))
    same = fit_gaussian(np.ones((3, 4)))
    assert np.isfinite(same.mahalanobis(np.ones((1, 4)))).all()
    assert same.mahalanobis(np.ones((1, 4)))[0] == pytest.approx(0.0)


def test_m_step_drops_outliers():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(size=(18, 6)), rng.normal(size=(2, 6)) + 25])
    gaussian, inliers = m_step(x, keep=0.9)
    assert inliers.shape == (20,) and inliers.dtype == bool
    assert inliers.sum() == 18 and not inliers[18:].any()
    assert np.abs(gaussian.mean).max() < 1.5
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\], got 0"):
        m_step(x, keep=0)


def test_em_refine_moves_wrong_step1_choices_to_the_class_cluster():
    rng = np.random.default_rng(2)
    d = 16
    centre = rng.normal(size=d) * 4
    candidates, initial = [], []
    for i in range(30):
        good = centre + rng.normal(size=d) * 0.3
        clutter = rng.normal(size=(4, d)) * 4
        feats = np.vstack([clutter[:2], good, clutter[2:]])  # the right one is index 2
        candidates.append(feats)
        initial.append(2 if i % 3 else 0)  # step 1 wrong on a third of the items
    res = em_refine(candidates, initial, iterations=2, keep=0.6)
    assert res.iterations == 2 and res.fallback == ""
    assert res.choices == [2] * 30
    assert res.changed[0] == 10
    assert all(np.isfinite(res.distances))


def test_em_refine_fallbacks():
    feats = [np.zeros((3, 4))] * 3
    res = em_refine(feats, [0, 1, 2], iterations=2, min_samples=5)
    assert res.choices == [0, 1, 2] and res.iterations == 0
    assert res.fallback == "3 segments < 5 needed for a covariance; kept step 1"
    res = em_refine(feats, [0, 1, 2], iterations=0)
    assert res.choices == [0, 1, 2] and res.fallback == ""
    with pytest.raises(ValueError, match=r"2 candidate sets but 3 initial choices"):
        em_refine(feats[:2], [0, 1, 2])
