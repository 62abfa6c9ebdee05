"""Grad-CAM (Selvaraju et al.) of a ``PooledNet``, resized to the image by receptive field.

For class c the weights are the spatial means of d logit_c / d A over the trunk's last feature
map A (C, h, w); the map is ReLU(sum_k w_k A_k), bilinearly resized to the image and divided
by its maximum (an all-zero map stays zero). With a global-average-pool + linear head the
gradient is W[c] / (h w) everywhere, so Grad-CAM here equals CAM (Zhou et al.) up to the
normalisation.

The resize puts every feature cell at the centre of its receptive field, traced from the
trunk's convolutions and pools (``traced_forward``), rather than at the centre of an equal
tile: the padded stride-2 layers of ResNets and MobileNets centre cell i on input pixel 32 i,
half a cell (16 input pixels) above and left of where a plain resize would put it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from weakpaste.models.backbones import PooledNet, to_tensor
from weakpaste.models.regions import cell_weights

_PAD_LAYERS = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
_GRID_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, *_PAD_LAYERS)


def _at(value: int | tuple[int, ...], axis: int) -> int:
    return value[axis] if isinstance(value, tuple) else value


def _layer_geometry(module: nn.Module, axis: int) -> tuple[float, float]:
    """(stride, shift): output cell i of ``module`` is centred on its input cell stride*i+shift."""
    if isinstance(module, _PAD_LAYERS):
        left, _right, top, _bottom = module.padding
        return 1.0, -float(top if axis == 0 else left)
    kernel = _at(module.kernel_size, axis)
    stride = _at(module.stride if module.stride is not None else module.kernel_size, axis)
    dilation = _at(getattr(module, "dilation", 1), axis)
    padding = module.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        padding = dilation * (kernel - 1) // 2  # torch puts the odd extra pixel on the right
    return float(stride), -float(_at(padding, axis)) + dilation * (kernel - 1) / 2


class _GridTracer:
    """Follows a trunk's forward pass to find the input pixel each feature cell is centred on.

    Each convolution, pooling or padding layer that takes the current main-path resolution is
    composed in; a layer that sees an older resolution is a parallel branch (e.g. a residual
    shortcut that runs after the strided convolution it parallels) and is skipped.
    """

    def __init__(self, height: int, width: int) -> None:
        self.res = (height, width)
        self.axes = [(1.0, 0.0), (1.0, 0.0)]  # per axis: cell i sits at a*i + b

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...],
                 output: torch.Tensor) -> None:
        if tuple(inputs[0].shape[-2:]) != self.res:
            return
        for axis in (0, 1):
            stride, shift = _layer_geometry(module, axis)
            a, b = self.axes[axis]
            self.axes[axis] = (a * stride, a * shift + b)
        self.res = tuple(output.shape[-2:])


def traced_forward(trunk: nn.Module, x: torch.Tensor
                    ) -> tuple[torch.Tensor, tuple[tuple[float, float], tuple[float, float]]]:
    """Feature map float32 (B, C, h, w) of ``x`` and, per axis, (a, b) such that cell i is
    centred on input pixel a*i + b (pixel centres at integers)."""
    tracer = _GridTracer(x.shape[-2], x.shape[-1])
    handles = [m.register_forward_hook(tracer) for m in trunk.modules()
               if isinstance(m, _GRID_LAYERS)]
    try:
        fmap = trunk(x)
    finally:
        for handle in handles:
            handle.remove()
    if tracer.res == tuple(fmap.shape[-2:]):
        return fmap, (tracer.axes[0], tracer.axes[1])
    # Unknown layers changed the resolution: assume each cell covers an equal tile.
    grid = []
    for axis in (0, 1):
        a = x.shape[2 + axis] / fmap.shape[2 + axis]
        grid.append((a, (a - 1) / 2))
    return fmap, (grid[0], grid[1])


def upsample_matrix(n_out: int, side: int, cells: int, a: float, b: float,
                     device: torch.device) -> torch.Tensor:
    """Bilinear weights float32 (n_out, cells) from cells centred at a*i + b on a ``side``-pixel
    input axis to ``n_out`` pixels spanning the same extent (clamped at the outer cells)."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (side / n_out) - 0.5
    return torch.from_numpy(cell_weights(pos, cells, a, b)).float().to(device)


def grad_cam(net: PooledNet, squashed: np.ndarray, class_indices: Sequence[int], height: int,
             width: int, device: torch.device) -> np.ndarray:
    """Grad-CAM maps of some classes on one squashed image.

    Args:
        net: the classifier's network (put in eval mode by the caller).
        squashed: uint8 (S, S, 3) RGB, the image squashed to the net's input size.
        class_indices: valid head indices, repeats allowed (none: no maps).
        height, width: the original image's size, the maps' size.
        device: the net's device.

    Returns:
        float32 (len(class_indices), height, width) maps in [0, 1].
    """
    return grad_cam_outputs(net, squashed, class_indices, height, width, device)[0]


def grad_cam_outputs(net: PooledNet, squashed: np.ndarray, class_indices: Sequence[int],
                     height: int, width: int, device: torch.device
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM maps and the network's outputs on the image, from the same forward pass.

    Args:
        net, squashed, class_indices, height, width, device: as for :func:`grad_cam`.

    Returns:
        (float32 (len(class_indices), height, width) maps in [0, 1], float32 (K,) logits,
        float32 (C,) pooled features): the logits and features are those of a plain forward
        pass of the same input.
    """
    idx = [int(i) for i in class_indices]
    side = squashed.shape[0]
    # inference_mode(False): Grad-CAM needs autograd even inside a caller's inference_mode.
    with torch.inference_mode(False):
        x = to_tensor(squashed[None], device)
        with torch.no_grad():
            fmap, ((ay, by), (ax, bx)) = traced_forward(net.trunk, x)
            fmap = fmap.float()
            pooled = net.pool(fmap)
            logits = net.head(pooled)
        if not idx:
            return (np.zeros((0, height, width), np.float32), logits[0].cpu().numpy(),
                    pooled[0].cpu().numpy())
        with torch.enable_grad():
            # One copy of A per class so that one backward pass gives every class's gradient.
            acts = fmap.expand(len(idx), -1, -1, -1).clone().requires_grad_(True)
            chosen = net.head(net.pool(acts))[torch.arange(len(idx)),
                                              torch.tensor(idx, device=fmap.device)]
            (grads,) = torch.autograd.grad(chosen.sum(), acts)
        with torch.no_grad():
            weights = grads.mean((2, 3))
            cam = F.relu(torch.einsum("nc,nchw->nhw", weights, acts.detach()))
            h, w = cam.shape[1:]
            rows = upsample_matrix(height, side, h, ay, by, cam.device)
            cols = upsample_matrix(width, side, w, ax, bx, cam.device)
            cam = rows @ cam @ cols.T
            peak = cam.amax((1, 2), keepdim=True)
            cam = torch.where(peak > 0, cam / peak.clamp_min(1e-30), torch.zeros_like(cam))
    maps = cam.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32, copy=False)
    return maps, logits[0].cpu().numpy(), pooled[0].cpu().numpy()


__all__ = ["grad_cam", "grad_cam_outputs", "traced_forward", "upsample_matrix"]
