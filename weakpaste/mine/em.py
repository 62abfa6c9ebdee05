"""The statistics of F-EM (EM-Paste §3.1, Algorithm 1): pure numpy, no torch.

Per class a, the features φ of foreground segments are modelled as one Gaussian N(μ, Σ).
The M-step fits it to the currently selected segments, keeps the k% closest by Mahalanobis
distance and refits; the E-step picks, in every image, the candidate closest to the refitted
Gaussian.

The feature dimension (1280 for MobileNetV2, 2048 for ResNet-50) usually exceeds the number
of segments of a class, so the sample covariance is singular. Σ is the Ledoit-Wolf estimate
(shrinkage towards a scaled identity, scikit-learn's ``ledoit_wolf_shrinkage``), and its
inverse is applied through the Woodbury identity on the n x n Gram matrix: O(n² d) instead of
inverting a d x d matrix, so hundreds of classes stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Gaussian:
    """A Ledoit-Wolf Gaussian kept in low-rank form.

    Σ = (1 - s) S + s m I with S = Xcᵀ Xc / n and m = tr(S) / d.

    Attributes:
        mean: float64 (d,).
        centered: float64 (n, d) the centred samples Xc.
        shrinkage: s in [0, 1].
        scale: m, the mean eigenvalue of S.
        inner: float64 (n, n) inverse of (c I + Xc Xcᵀ), c = s m n / (1 - s).
    """

    mean: np.ndarray
    centered: np.ndarray
    shrinkage: float
    scale: float
    inner: np.ndarray | None

    def mahalanobis(self, x: np.ndarray) -> np.ndarray:
        """Mahalanobis distances of rows of x (float (N, d)) -> float64 (N,)."""
        y = np.asarray(x, dtype=np.float64) - self.mean
        sq = np.einsum("ij,ij->i", y, y)
        ridge = self.shrinkage * self.scale
        if ridge <= 0:  # s == 0 (well-conditioned, n > d): the dense inverse
            cov = self.centered.T @ self.centered / len(self.centered)
            prec = np.linalg.pinv(cov)
            return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", y, prec, y), 0.0))
        if self.inner is None:  # s == 1: Σ = m I
            return np.sqrt(np.maximum(sq / ridge, 0.0))
        proj = y @ self.centered.T  # (N, n)
        # Σ⁻¹ = (1 / r) (I - Xcᵀ (c I + Xc Xcᵀ)⁻¹ Xc), r = s m.
        quad = sq - np.einsum("ij,jk,ik->i", proj, self.inner, proj)
        return np.sqrt(np.maximum(quad / ridge, 0.0))


def fit_gaussian(x: np.ndarray) -> Gaussian:
    """Ledoit-Wolf Gaussian of the rows of x (float (n, d), n >= 2).

    Raises:
        ValueError: fewer than 2 samples.
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"fit_gaussian needs at least 2 samples, got {n}")
    mean = x.mean(axis=0)
    xc = x - mean
    scale = float(np.einsum("ij,ij->", xc, xc) / (n * d))
    if scale <= 0:  # all samples identical: any spherical Gaussian will do
        return Gaussian(mean, xc, 1.0, 1e-12, None)
    s = float(ledoit_wolf_shrinkage(xc, assume_centered=True))
    if s >= 1.0:
        return Gaussian(mean, xc, 1.0, scale, None)
    c = s * scale * n / (1.0 - s)
    # pinv: duplicated samples make the Gram matrix singular when the shrinkage is tiny.
    inner = np.linalg.pinv(c * np.eye(n) + xc @ xc.T, hermitian=True) if s > 0 else None
    return Gaussian(mean, xc, s, scale, inner)


def m_step(features: np.ndarray, keep: float) -> tuple[Gaussian, np.ndarray]:
    """Fit, keep the ``keep`` fraction closest by Mahalanobis distance, refit.

    Args:
        features: float (n, d) features of the selected segments.
        keep: fraction in (0, 1] (EM-Paste's k%).

    Returns:
        (the refitted Gaussian, bool (n,) inliers).
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    first = fit_gaussian(features)
    d = first.mahalanobis(features)
    n_keep = max(2, int(np.ceil(keep * len(features))))
    order = np.argsort(d, kind="stable")
    inliers = np.zeros(len(features), dtype=bool)
    inliers[order[:n_keep]] = True
    return fit_gaussian(features[inliers]), inliers


@dataclass
class EmResult:
    """Outcome of ``em_refine`` for one class.

    Attributes:
        choices: chosen candidate index per item.
        distances: Mahalanobis distance of each choice to the final Gaussian (NaN when EM
            did not run).
        iterations: EM iterations run (0 on fallback).
        fallback: why EM did not run, or "".
        changed: per iteration, how many items changed their choice.
    """

    choices: list[int]
    distances: list[float]
    iterations: int
    fallback: str = ""
    changed: list[int] | None = None


def em_refine(candidates: list[np.ndarray], initial: list[int], *, iterations: int = 2,
              keep: float = 0.8, min_samples: int = 5) -> EmResult:
    """F-EM steps 2-3 for one class.

    Args:
        candidates: per item (an image labelled with the class), float (K_i, d) features of
            its eligible candidate segments (computed once; never recomputed here).
        initial: per item, the step-1 choice (index into its candidates).
        iterations: j, EM iterations (0: keep step 1).
        keep: k, fraction of inliers kept in the M-step.
        min_samples: below this many items the covariance is not estimated and step 1 is
            kept (reported as ``fallback``).

    Returns:
        The choices and their distances.
    """
    if len(candidates) != len(initial):
        raise ValueError(f"{len(candidates)} candidate sets but {len(initial)} initial choices")
    choices = list(initial)
    nan = [float("nan")] * len(choices)
    if iterations <= 0:
        return EmResult(choices, nan, 0)
    if len(choices) < min_samples:
        return EmResult(choices, nan, 0,
                        fallback=f"{len(choices)} segments < {min_samples} needed for a "
                                 "covariance; kept step 1")
    changed = []
    distances = nan
    for _ in range(iterations):
        selected = np.stack([candidates[i][c] for i, c in enumerate(choices)])
        gaussian, _ = m_step(selected, keep)
        new, distances = [], []
        for feats in candidates:
            d = gaussian.mahalanobis(feats)
            j = int(np.argmin(d))
            new.append(j)
            distances.append(float(d[j]))
        changed.append(sum(a != b for a, b in zip(new, choices, strict=True)))
        choices = new
    return EmResult(choices, distances, iterations, changed=changed)
