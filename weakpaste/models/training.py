"""Training the mining classifier's ``PooledNet`` on image-level labels.

Multi-label binary cross-entropy, in one of two modes:

* "linear" (linear probe): the trunk stays frozen; pooled features of every image and of its
  horizontal flip are computed once, standardised, and a linear head is fitted with Adam (lr
  default 1e-2) from zero; the standardisation is then folded into the head.
* "finetune": trunk and head are trained from their current weights with SGD (momentum 0.9,
  lr default 1e-2, cosine decay), random resized crops (60-100% of the area) and horizontal
  flips; only one batch of images is resized and held as tensors at a time.

BatchNorm statistics stay frozen in both modes for a pretrained trunk and train for a randomly
initialised one (see ``PooledNet``). The same seed gives the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from weakpaste.models.backbones import PooledNet, seeded, to_tensor
from weakpaste.models.inputs import check_batch_size, image_batches, random_resized_crop

TRAIN_MODES: tuple[str, ...] = ("linear", "finetune")

_LINEAR_LR = 1e-2
_LINEAR_WEIGHT_DECAY = 1e-4
_FINETUNE_LR = 1e-2
_FINETUNE_WEIGHT_DECAY = 1e-4


@dataclass(frozen=True)
class _Fit:
    """The settings of one training call."""

    epochs: int
    lr: float
    batch_size: int
    seed: int
    progress: bool
    input_size: int
    device: torch.device


def check_labels(labels: np.ndarray, n: int, k: int) -> np.ndarray:
    """float32 (n, k) targets from bool or float labels in [0, 1] (raises ValueError)."""
    y = np.asarray(labels)
    if y.shape != (n, k):
        raise ValueError(f"labels must have shape (N, K) = ({n}, {k}), got {y.shape}")
    y = y.astype(np.float32)
    if not np.all((y >= 0) & (y <= 1)):
        raise ValueError("labels must be 0/1 (or probabilities in [0, 1])")
    return y


def train_net(net: PooledNet, images: Sequence[np.ndarray], labels: np.ndarray, *,
              input_size: int, device: torch.device, mode: str = "linear", epochs: int = 30,
              lr: float | None = None, batch_size: int = 32, seed: int = 0,
              progress: bool = True) -> dict:
    """Train ``net`` on image-level labels (see the module docstring); leaves it in eval mode.

    Args:
        net: the network (its head has K outputs).
        images: N uint8 (H, W, 3) RGB images of any sizes (any sequence with integer indexing).
        labels: bool or float (N, K), 1 where the class is present.
        input_size: side of the squashed input.
        device: the net's device.
        mode: "linear" or "finetune".
        epochs: passes over the data, at least 1.
        lr: learning rate, or None for the mode's default.
        batch_size: images per optimisation step (and per feature pass).
        seed: seed of the shuffling, the augmentation and any dropout.
        progress: show tqdm progress bars.

    Returns:
        {"mode": str, "loss": per-epoch mean training loss (list of float), "epochs": int,
        "lr": float, "seconds": float}.

    Raises:
        ValueError: unknown mode, labels of the wrong shape, invalid numbers.
    """
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {mode!r}; choose 'linear' or 'finetune'")
    if len(images) == 0:
        raise ValueError("no images to train on")
    targets = check_labels(labels, len(images), net.head.out_features)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    batch_size = check_batch_size(batch_size)
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    lr = float(lr) if lr is not None else (_LINEAR_LR if mode == "linear" else _FINETUNE_LR)
    fit = _Fit(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress,
               input_size=input_size, device=device)
    start = time.perf_counter()
    with torch.inference_mode(False), seeded(seed):
        if mode == "linear":
            losses = _train_linear(net, images, targets, fit)
        else:
            losses = _train_finetune(net, images, targets, fit)
    net.eval()
    return {"mode": mode, "loss": losses, "epochs": epochs, "lr": lr,
            "seconds": time.perf_counter() - start}


def _pooled_features(net: PooledNet, images: Sequence[np.ndarray], targets: np.ndarray,
                     fit: _Fit) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (2N, C) pooled features of the images and their flips, and their targets."""
    from tqdm import tqdm

    feats, ys = [], []
    net.eval()
    bar = tqdm(total=len(images), desc="features", unit="img", disable=not fit.progress)
    with torch.inference_mode():
        for i, batch in enumerate(image_batches(images, fit.batch_size, fit.input_size)):
            x = to_tensor(batch, fit.device)
            fmap = net.trunk(torch.cat([x, x.flip(3)]))
            feats.append(net.pool(fmap).float())
            y = targets[i * fit.batch_size:i * fit.batch_size + len(batch)]
            ys += [y, y]
            bar.update(len(batch))
    bar.close()
    # clone(): inference tensors cannot be saved for backward.
    feats_t = torch.cat(feats).clone()
    return feats_t, torch.from_numpy(np.concatenate(ys)).to(feats_t.device)


def _train_linear(net: PooledNet, images: Sequence[np.ndarray], targets: np.ndarray,
                  fit: _Fit) -> list[float]:
    feats_t, ys_t = _pooled_features(net, images, targets, fit)
    weight, bias, losses = _fit_head(feats_t, ys_t, fit)
    with torch.no_grad():
        head = net.head
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.copy_(bias.to(head.bias.dtype))
    return losses


def _fit_head(feats_t: torch.Tensor, ys_t: torch.Tensor, fit: _Fit
              ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """A linear probe on standardised features, folded back to raw-feature space:
    (weight (K, C), bias (K,), per-epoch mean losses)."""
    from tqdm import tqdm

    mean = feats_t.mean(0)
    std = feats_t.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    z = (feats_t - mean) / std

    n, k = ys_t.shape
    weight = torch.zeros(k, z.shape[1], device=z.device, requires_grad=True)
    # Starting from the class priors makes the first epoch's loss meaningful.
    prior = ys_t.mean(0).clamp(0.01, 0.99)
    bias = torch.log(prior / (1 - prior)).detach().requires_grad_(True)
    opt = torch.optim.Adam([weight, bias], lr=fit.lr, weight_decay=_LINEAR_WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(fit.seed)
    losses: list[float] = []
    for _ in tqdm(range(fit.epochs), desc="linear probe", unit="epoch",
                  disable=not fit.progress):
        order = torch.randperm(n, generator=gen).to(z.device)
        total = 0.0
        for s in range(0, n, fit.batch_size):
            sel = order[s:s + fit.batch_size]
            loss = F.binary_cross_entropy_with_logits(z[sel] @ weight.T + bias, ys_t[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(sel)
        losses.append(total / n)
    with torch.no_grad():
        folded = weight / std
        return folded.detach(), (bias - folded @ mean).detach(), losses


def linear_probe(features: np.ndarray, targets: np.ndarray, *, epochs: int = 30,
                 lr: float | None = None, batch_size: int = 32, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The "linear" mode's head fitted on given pooled features (no network involved).

    The same probe as ``train_net(mode="linear")`` (standardised features, Adam from zero
    weights and the class priors as biases, multi-label BCE), e.g. to fit heads on subsets
    of one set of features (cross-fitting) without running the trunk again.

    Args:
        features: float (N, C) pooled features.
        targets: bool or float (N, K) multi-hot targets in [0, 1].
        epochs, lr, batch_size, seed: as for ``train_net``.

    Returns:
        (float32 (K, C) weight, float32 (K,) bias) in raw-feature space: the logits of
        features x are ``x @ weight.T + bias``.

    Raises:
        ValueError: no rows, targets of the wrong shape or outside [0, 1], epochs < 1.
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty (N, C) array, got shape {x.shape}")
    if np.ndim(targets) != 2:
        raise ValueError(f"targets must be an (N, K) array, got shape {np.shape(targets)}")
    y = check_labels(targets, len(x), np.shape(targets)[1])
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    fit = _Fit(epochs=epochs, lr=float(lr) if lr is not None else _LINEAR_LR,
               batch_size=check_batch_size(batch_size), seed=seed, progress=False,
               input_size=0, device=torch.device("cpu"))
    with torch.inference_mode(False), seeded(seed):
        weight, bias, _ = _fit_head(torch.from_numpy(x), torch.from_numpy(y), fit)
    return weight.numpy().astype(np.float32), bias.numpy().astype(np.float32)


def _train_finetune(net: PooledNet, images: Sequence[np.ndarray], targets: np.ndarray,
                    fit: _Fit) -> list[float]:
    from tqdm import tqdm

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=fit.lr, momentum=0.9, weight_decay=_FINETUNE_WEIGHT_DECAY)
    n = len(images)
    steps = fit.epochs * math.ceil(n / fit.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps)))
    rng = np.random.default_rng(fit.seed)
    ys_t = torch.from_numpy(targets).to(fit.device)
    losses: list[float] = []
    net.train()
    try:
        for _ in tqdm(range(fit.epochs), desc="finetune", unit="epoch", disable=not fit.progress):
            order = rng.permutation(n)
            total = 0.0
            # Near-equal batches: a trailing batch of one image would give training
            # BatchNorm (random-init trunks) a single value per channel.
            for sel in np.array_split(order, math.ceil(n / fit.batch_size)):
                batch = np.stack([random_resized_crop(images[int(i)], fit.input_size, rng)
                                  for i in sel])
                net.train(len(sel) > 1 or net.freeze_bn)
                logits, _ = net(to_tensor(batch, fit.device, channels_last=False))
                loss = F.binary_cross_entropy_with_logits(logits, ys_t[sel])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(sel)
            losses.append(total / n)
    finally:
        net.eval()
    return losses


__all__ = ["TRAIN_MODES", "check_labels", "linear_probe", "train_net"]
