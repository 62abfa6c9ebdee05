"""FreeSeg's co-segmentation without SSM: the common foreground of a class's images.

FreeSeg §3.1 co-segments each class with the SSM network, which is not available; this module
co-segments with the similarity among the class's images instead (see ``weakpaste.mine.freeseg``
for the whole miner): a first foreground belief per feature cell from saliency and a centre
prior (``grid_prior``), a common-foreground model fitted across the class (``coseg_maps``:
one foreground prototype against ``bg_clusters`` background prototypes of weighted spherical
k-means, ``spherical_kmeans``), and the raw map fusing co-segmentation and saliency
(``fuse_maps``).
"""

from __future__ import annotations

import cv2
import numpy as np


def centre_prior(shape: tuple[int, int], sigma: float = 0.35) -> np.ndarray:
    """Isotropic Gaussian of the normalised distance to the image centre, float32 (h, w)."""
    h, w = shape
    y = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    x = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    d2 = y[:, None] ** 2 + x[None, :] ** 2
    return np.exp(-d2 / (2 * sigma * sigma)).astype(np.float32)


def grid_prior(saliency: np.ndarray, grid: tuple[int, int], centre_sigma: float) -> np.ndarray:
    """The first foreground belief of each feature cell: area-averaged saliency x centre prior.

    Args:
        saliency: float (H, W) in [0, 1].
        grid: (h, w) of the feature map.
        centre_sigma: the centre prior's sigma (fraction of the image; <= 0: no centre prior).

    Returns:
        float32 (h, w) in [0, 1].
    """
    h, w = grid
    s = cv2.resize(saliency.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    if centre_sigma > 0:
        s = s * centre_prior((h, w), centre_sigma)
    peak = float(s.max())
    return (s / peak).astype(np.float32) if peak > 0 else centre_prior((h, w))


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


_KMEANS_CELLS = 2048


def spherical_kmeans(x: np.ndarray, weights: np.ndarray, k: int, *, seed: int = 0,
                     iters: int = 30) -> np.ndarray:
    """Weighted spherical k-means (cosine similarity) with k-means++ seeding.

    Args:
        x: float (N, D) unit rows.
        weights: float (N,) >= 0 sample weights.
        k: clusters (clipped to N).
        seed: seeds the k-means++ draws (``np.random.default_rng``).
        iters: most Lloyd iterations.

    Returns:
        float (min(k, N), D) unit centroids.
    """
    rng = np.random.default_rng(seed)
    k = max(1, min(int(k), x.shape[0]))
    w = np.maximum(weights.astype(np.float64), 0) + 1e-12
    centres = [x[int(rng.choice(x.shape[0], p=w / w.sum()))]]
    for _ in range(1, k):
        dist = 1.0 - (x @ np.asarray(centres).T).max(1)  # cosine distance to the nearest
        p = w * np.maximum(dist, 0) ** 2
        p = p / p.sum() if p.sum() > 0 else w / w.sum()
        centres.append(x[int(rng.choice(x.shape[0], p=p))])
    x = x.astype(np.float32, copy=False)
    xw = x * w.astype(np.float32)[:, None]
    c = np.asarray(centres, dtype=np.float32)
    assign = None
    for _ in range(iters):
        new = (x @ c.T).argmax(1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        onehot = np.zeros((k, x.shape[0]), np.float32)
        onehot[assign, np.arange(x.shape[0])] = 1.0
        sums = onehot @ xw
        # An emptied cluster keeps its centre.
        c = np.where(onehot.any(1)[:, None], _normalise_rows(sums), c)
    return c


def coseg_maps(features: list[np.ndarray], priors: list[np.ndarray], *, iters: int = 3,
               bg_clusters: int = 3, temperature: float = 0.1, floor: float = 0.2,
               seed: int = 0) -> list[np.ndarray]:
    """Common-foreground beliefs of a class's images on their feature grids.

    Args:
        features: per image float (D, h_i, w_i) dense features (same D).
        priors: per image float (h_i, w_i) first foreground beliefs in [0, 1].
        iters: rounds of (fit prototypes, update beliefs); >= 1.
        bg_clusters: background prototypes (weighted spherical k-means clusters).
        temperature: T of the sigmoid of the similarity difference.
        floor: least cosine similarity to the foreground prototype that can count as
            foreground (cells that resemble nothing are background).
        seed: seeds the k-means initialisation.

    Returns:
        Per image float32 (h_i, w_i) beliefs in [0, 1].

    Raises:
        ValueError: fewer than 2 images (nothing to co-segment), mismatched shapes, iters < 1.
    """
    if len(features) < 2:
        raise ValueError("co-segmentation needs at least 2 images of a class")
    from threadpoolctl import threadpool_limits

    # The products here are thin (N x D times D x k): one BLAS thread is as fast, and a
    # multi-threaded BLAS on a busy machine spins (measured 20x slower on 2 shared cores).
    with threadpool_limits(limits=1, user_api="blas"):
        return _coseg_maps(features, priors, iters=iters, bg_clusters=bg_clusters,
                           temperature=temperature, floor=floor, seed=seed)


def _coseg_maps(features: list[np.ndarray], priors: list[np.ndarray], *, iters: int,
                bg_clusters: int, temperature: float, floor: float, seed: int
                ) -> list[np.ndarray]:
    if len(priors) != len(features) or iters < 1:
        raise ValueError("one prior per feature map and iters >= 1 are required")
    shapes, blocks = [], []
    for f, p in zip(features, priors, strict=True):
        if f.ndim != 3 or p.shape != f.shape[1:]:
            raise ValueError(f"features (D, h, w) {f.shape} and prior (h, w) {p.shape} differ")
        shapes.append(f.shape[1:])
        blocks.append(f.reshape(f.shape[0], -1).T.astype(np.float32))
    sizes = [b.shape[0] for b in blocks]
    owner = np.repeat(np.arange(len(blocks)), sizes)
    x = _normalise_rows(np.concatenate(blocks))
    # Centring on the class mean removes what every cell shares (post-ReLU features are all
    # positive, so raw cosines are uniformly high) and leaves what tells cells apart.
    x = _normalise_rows(x - x.mean(0, keepdims=True)).astype(np.float32)
    belief = np.concatenate([p.reshape(-1) for p in priors]).astype(np.float64)
    k = max(1, min(int(bg_clusters), x.shape[0]))
    for _ in range(iters):
        # Foreground: per-image weighted means averaged over images, so that images with large
        # objects do not outweigh the others.
        w_img = np.bincount(owner, weights=belief, minlength=len(blocks))
        spread = np.zeros((len(blocks), x.shape[0]), dtype=np.float32)
        spread[owner, np.arange(x.shape[0])] = belief
        per_image = spread @ x  # per-image belief-weighted sums (np.add.at is far slower)
        ok = w_img > 1e-8
        fg = per_image[ok] / w_img[ok, None] if ok.any() else x.mean(0, keepdims=True)
        mu_f = _normalise_rows(fg.mean(0, keepdims=True))[0].astype(np.float32)
        # Background: k-means of the cells currently believed background only; with every
        # cell (down-weighted or not) a cluster would settle on the foreground and explain it
        # as well as the foreground prototype does.
        bg = np.flatnonzero(belief < 0.5)
        if bg.size:
            # A few thousand cells describe 3 clusters as well as all of them, much faster.
            if bg.size > _KMEANS_CELLS:
                bg = np.sort(np.random.default_rng(seed).choice(bg, _KMEANS_CELLS,
                                                                replace=False))
            mu_b = spherical_kmeans(x[bg], 1.0 - belief[bg], k, seed=seed)
            s_b = (x @ mu_b.T).max(1)
        else:
            s_b = np.full(x.shape[0], -1.0)
        s_b = np.maximum(s_b, floor)
        s_f = x @ mu_f
        belief = 1.0 / (1.0 + np.exp(-np.clip((s_f - s_b) / temperature, -60, 60)))
    out, start = [], 0
    for (h, w), n in zip(shapes, sizes, strict=True):
        out.append(belief[start:start + n].reshape(h, w).astype(np.float32))
        start += n
    return out


def fuse_maps(coseg: np.ndarray | None, saliency: np.ndarray, weight: float) -> np.ndarray:
    """The raw gray-scale foreground map: coseg^weight * saliency^(1 - weight), max 1.

    Args:
        coseg: float (h, w) co-segmentation beliefs on the feature grid (bilinearly resized
            to the image), or None (single-image class: the saliency alone).
        saliency: float (H, W) in [0, 1].
        weight: exponent of the co-segmentation in [0, 1].

    Returns:
        float32 (H, W) in [0, 1].
    """
    H, W = saliency.shape
    sal = np.clip(saliency.astype(np.float32), 0, 1)
    if coseg is None or weight <= 0:
        raw = sal
    else:
        up = np.clip(cv2.resize(coseg.astype(np.float32), (W, H),
                                interpolation=cv2.INTER_LINEAR), 0, 1)
        raw = up ** float(weight) * sal ** (1.0 - float(weight))
    peak = float(raw.max())
    return (raw / peak).astype(np.float32) if peak > 0 else np.zeros((H, W), np.float32)
