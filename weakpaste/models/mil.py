"""Multiple-instance learning over region proposals: WSDDN with OICR refinement (numpy in/out).

Which proposal of an image shows class k, from image-level labels only (weakly supervised
detection): every proposal r of an image has a feature x_r (``weakpaste.models.regions``).

* WSDDN (Bilen & Vedaldi, CVPR 2016): a classification stream softmax_k(W_c x_r) and a
  detection stream softmax_r(W_d x_r) (over the image's proposals); their product summed over
  the proposals is the image's score of k in (0, 1), trained with binary cross-entropy on the
  image-level labels. The detection stream learns which proposal explains a label.
* OICR (Tang et al., CVPR 2017), ``refine`` times: a (K + 1)-way proposal classifier (the last
  class is background) trained on pseudo-labels from the previous stream: for each labelled
  class its top-scored proposal and the proposals overlapping it (IoU >= ``REFINE_IOU``) take
  the class, the others background, weighted by the top score. It spreads WSDDN's pick, which
  prefers the most discriminative part, over the whole object.

The features are frozen, so the streams are trained one after the other (WSDDN, then each
refinement on the previous one's scores), each a small full-batch problem on the standardised
features projected on their first ``dims`` principal components (scikit-learn's PCA): 390
images x 300 proposals x 1280 MobileNetV2 channels take seconds instead of minutes.
Deterministic: the same inputs and seed give the same head (torch's generator is forked).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from weakpaste.models.backbones import one_thread, seeded

REFINE_IOU = 0.5
"""OICR: proposals overlapping a class's top proposal this much take its class."""

_EPS = 1e-6
_PCA_SAMPLE = 20000


@dataclass
class MilHead:
    """A trained MIL head: the projection and the streams' weights (numpy, picklable).

    Attributes:
        mean: float32 (D,) feature mean; scale: float32 (D,) feature standard deviation.
        basis: float32 (D, P) PCA projection of the standardised features.
        wsddn: ((P, K), (K,), (P, K), (K,)) weights and biases of the classification and
            detection streams.
        refined: per OICR step, ((P, K + 1), (K + 1,)).
        info: training losses and sizes for the manifest.
    """

    mean: np.ndarray
    scale: np.ndarray
    basis: np.ndarray
    wsddn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    refined: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.wsddn[1].shape[0])

    def project(self, features: np.ndarray) -> torch.Tensor:
        """float32 (M, P) projected features of float (M, D) region features."""
        # Folded: (x - mean) / scale @ basis = x @ (basis / scale) - (mean / scale) @ basis.
        return torch.from_numpy(np.asarray(features, np.float32) @ self._folded[0]
                                - self._folded[1])

    @property
    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        folded = self.__dict__.get("_fold")
        if folded is None:
            folded = ((self.basis / self.scale[:, None]).astype(np.float32),
                      ((self.mean / self.scale) @ self.basis).astype(np.float32))
            self.__dict__["_fold"] = folded
        return folded

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Per proposal and class, how much the proposal is the class's object.

        Args:
            features: float (M, D) region features of one image's proposals (M >= 1).

        Returns:
            float32 (M, K): the mean of the refined streams' class probabilities, or with no
            refinement WSDDN's per-proposal product (the detection stream's share of the
            image's score); comparable within and across images.
        """
        return self.scores_projected(self.project(features))

    def scores_projected(self, z: torch.Tensor) -> np.ndarray:
        """:meth:`scores` of features already projected (float32 (M, P))."""
        with torch.inference_mode():
            if self.refined:
                probs = [F.softmax(z @ torch.from_numpy(w) + torch.from_numpy(b), 1)[:, :-1]
                         for w, b in self.refined]
                return torch.stack(probs).mean(0).numpy()
            return _wsddn(z, *(torch.from_numpy(a) for a in self.wsddn)).numpy()


def _wsddn(z: torch.Tensor, wc, bc, wd, bd) -> torch.Tensor:
    """float (M, K) per-proposal scores of one image: softmax over classes x over proposals."""
    return F.softmax(z @ wc + bc, 1) * F.softmax(z @ wd + bd, 0)


def _padded(projected: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 (N, Mmax, P) zero-padded features, bool (N, Mmax) valid proposals)."""
    m = max(len(z) for z in projected)
    x = torch.zeros(len(projected), m, projected[0].shape[1])
    valid = torch.zeros(len(projected), m, dtype=torch.bool)
    for i, z in enumerate(projected):
        x[i, :len(z)] = z
        valid[i, :len(z)] = True
    return x, valid


def _batches(n: int, batch_size: int, epochs: int, gen: torch.Generator):
    """Image index batches: ``epochs`` seeded permutations of range(n), cut in batches."""
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        yield from order.split(batch_size)


def _fit_wsddn(x: torch.Tensor, valid: torch.Tensor, y: torch.Tensor, fit: _Fit
               ) -> tuple[list[torch.Tensor], list[float]]:
    """WSDDN's two streams on padded features x (N, M, P) and labels y (N, K)."""
    p, k = x.shape[2], y.shape[1]
    gen = torch.Generator().manual_seed(fit.seed)
    params = [torch.zeros(p, k), torch.zeros(k),
              0.01 * torch.randn(p, k, generator=gen), torch.zeros(k)]
    for t in params:
        t.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=fit.lr, weight_decay=fit.weight_decay)
    losses = []
    for sel in _batches(len(x), fit.batch_size, fit.epochs, gen):
        wc, bc, wd, bd = params
        xb = x[sel]
        cls = F.softmax(xb @ wc + bc, 2)
        det = (xb @ wd + bd).masked_fill(~valid[sel, :, None], float("-inf")).softmax(1)
        image = (cls * det).sum(1).clamp(_EPS, 1 - _EPS)
        loss = F.binary_cross_entropy(image, y[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return [t.detach() for t in params], losses


def oicr_targets(scores: np.ndarray, labels: np.ndarray, ious: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """OICR's pseudo-labels of one image's proposals from the previous stream's scores.

    Each proposal takes the class of the labelled class's top proposal it overlaps most, if
    that overlap is at least ``REFINE_IOU``, else background; its weight is that top
    proposal's score.

    Args:
        scores: float (M, K) the previous stream's per-proposal class scores.
        labels: bool (K,) the image's labels.
        ious: float (M, M) the proposals' pairwise IoU.

    Returns:
        (int64 (M,) class per proposal, K = background; float32 (M,) loss weights, 0 where
        the image has no label).
    """
    m, k = scores.shape
    target = np.full(m, k, np.int64)
    weight = np.zeros(m, np.float32)
    best_iou = np.full(m, -1.0)
    for c in np.flatnonzero(labels):
        top = int(np.argmax(scores[:, c]))
        overlap = np.asarray(ious[top], np.float64)
        closer = overlap > best_iou
        best_iou[closer] = overlap[closer]
        target[closer] = np.where(overlap[closer] >= REFINE_IOU, c, k)
        weight[closer] = scores[top, c]
    return target, weight


def _fit_refined(x: torch.Tensor, valid: torch.Tensor, target: torch.Tensor,
                 weight: torch.Tensor, k: int, fit: _Fit
                 ) -> tuple[list[torch.Tensor], list[float]]:
    """One OICR stream: weighted (K + 1)-way cross-entropy over the valid proposals."""
    gen = torch.Generator().manual_seed(fit.seed + 1)
    params = [torch.zeros(x.shape[2], k + 1, requires_grad=True),
              torch.zeros(k + 1, requires_grad=True)]
    opt = torch.optim.Adam(params, lr=fit.lr, weight_decay=fit.weight_decay)
    losses = []
    for sel in _batches(len(x), fit.batch_size, fit.epochs, gen):
        ok = valid[sel]
        xs, ts, ws = x[sel][ok], target[sel][ok], weight[sel][ok]
        ce = F.cross_entropy(xs @ params[0] + params[1], ts, reduction="none")
        loss = (ce * ws).sum() / ws.sum().clamp_min(_EPS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return [t.detach() for t in params], losses


@dataclass(frozen=True)
class _Fit:
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int


def _projection(features: Sequence[np.ndarray], dims: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale, basis): standardisation and the first ``dims`` principal axes, fitted on
    at most ``_PCA_SAMPLE`` proposals drawn with ``seed`` (never all of them at once)."""
    from sklearn.decomposition import PCA

    sizes = np.array([len(f) for f in features])
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(sizes.sum(), min(int(sizes.sum()), _PCA_SAMPLE), replace=False))
    image = np.searchsorted(np.cumsum(sizes), picked, side="right")
    row = picked - np.concatenate(([0], np.cumsum(sizes)[:-1]))[image]
    sample = np.stack([np.asarray(features[i][r], np.float32)
                       for i, r in zip(image.tolist(), row.tolist(), strict=True)])
    mean = sample.mean(0)
    scale = sample.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    z = (sample - mean) / scale
    n = max(1, min(dims, z.shape[1], len(z) - 1))
    pca = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(z)
    # PCA centres on z's mean (about 0): the basis alone is the projection up to a shift.
    return mean.astype(np.float32), scale, pca.components_.T.astype(np.float32)


def fit_mil(features: Sequence[np.ndarray], labels: np.ndarray, *,
            ious: Sequence[np.ndarray] | None = None, refine: int = 0, dims: int = 256,
            epochs: int = 20, lr: float = 0.01, weight_decay: float = 1e-3,
            batch_size: int = 16, seed: int = 0) -> MilHead:
    """Train WSDDN, then ``refine`` OICR streams, on images' region features and labels.

    Args:
        features: per image, float (M_i, D) features of its proposals (M_i >= 1).
        labels: bool or float (N, K) image-level labels (an all-zero row: a negative image).
        ious: per image, float (M_i, M_i) the proposals' pairwise IoU (needed to refine).
        refine: OICR refinement streams.
        dims: principal components kept.
        epochs: passes over the images, per stream.
        lr: Adam's learning rate; weight_decay: its L2 weight decay.
        batch_size: images per step.
        seed: seeds the projection's sample, the initialisation and the batches.

    Returns:
        The head.

    Raises:
        ValueError: no image, mismatched lengths, an image without proposals, ``refine``
            without ``ious``.
    """
    y = np.asarray(labels, np.float32)
    if not len(features) or y.ndim != 2 or len(y) != len(features):
        raise ValueError(f"fit_mil: {len(features)} feature sets but labels of shape {y.shape}")
    if any(len(f) == 0 for f in features):
        raise ValueError("fit_mil: every image needs at least one proposal")
    if refine and (ious is None or len(ious) != len(features)):
        raise ValueError("fit_mil: refinement needs every image's proposal IoUs")
    fit = _Fit(epochs, lr, weight_decay, batch_size, seed)
    mean, scale, basis = _projection(features, dims, seed)
    head = MilHead(mean, scale, basis, wsddn=(basis[:, :0],) * 4)
    projected = [head.project(f) for f in features]
    x, valid = _padded(projected)
    yt = torch.from_numpy(y)
    # One thread: small matrices (a thread pool costs more than it gives, most of all on a
    # shared machine) and the same bytes whatever the caller's thread count.
    with torch.inference_mode(False), seeded(seed), one_thread():
        params, losses = _fit_wsddn(x, valid, yt, fit)
        head.wsddn = tuple(t.numpy() for t in params)
        head.info = {"proposals": int(valid.sum()), "dims": int(basis.shape[1]),
                     "wsddn_loss": [losses[0], losses[-1]]}
        for step in range(refine):
            previous = [_stream(head, z) for z in projected]
            found = [oicr_targets(s, row > 0, iou)
                     for s, row, iou in zip(previous, y, ious, strict=True)]
            target = torch.full(valid.shape, y.shape[1], dtype=torch.int64)
            weight = torch.zeros(valid.shape)
            for i, (t, w) in enumerate(found):
                target[i, :len(t)], weight[i, :len(w)] = torch.from_numpy(t), torch.from_numpy(w)
            params, losses = _fit_refined(x, valid, target, weight, y.shape[1], fit)
            head.refined.append(tuple(t.numpy() for t in params))
            head.info[f"refine{step + 1}_loss"] = [losses[0], losses[-1]]
    return head


def _stream(head: MilHead, z: torch.Tensor) -> np.ndarray:
    """float32 (M, K) scores of the latest stream alone on projected features (OICR's
    teacher for the next)."""
    with torch.no_grad():
        if not head.refined:
            return _wsddn(z, *(torch.from_numpy(a) for a in head.wsddn)).numpy()
        w, b = head.refined[-1]
        return F.softmax(z @ torch.from_numpy(w) + torch.from_numpy(b), 1)[:, :-1].numpy()


__all__ = ["REFINE_IOU", "MilHead", "fit_mil", "oicr_targets"]
