"""Region features: a backbone's feature map pooled inside candidate masks (numpy, no torch).

The MIL anchor (``weakpaste.mine.mil``) scores every proposal of an image from one forward
pass: the trunk's last feature map (C, h, w) of the image squashed to ``side`` pixels, pooled
inside each proposal's mask. A proposal's weight on a feature cell is the sum, over its
full-resolution pixels, of the bilinear weights that place the cell at the centre of its
receptive field (``weakpaste.models.gradcam.traced_forward`` gives that geometry): the mean
of the bilinearly upsampled map inside the mask, computed per base region of the proposals
(``Proposals.separable_sums``) without upsampling the map or building any mask.

Mask pooling rather than a box's RoIAlign: two proposals with the same box (a person, the
person with the bench) get different features, and F-EM chooses masks, not boxes.
"""

from __future__ import annotations

import numpy as np

Geometry = tuple[tuple[float, float], tuple[float, float]]
"""Per axis (rows, columns): (a, b) such that feature cell i is centred on squashed-input
pixel a * i + b (pixel centres at integers)."""


def cell_weights(pos: np.ndarray, cells: int, a: float, b: float) -> np.ndarray:
    """Bilinear weights of positions on cells centred at a * i + b (clamped at the outer cells).

    Args:
        pos: float (n,) positions in input pixels (pixel centres at integers).
        cells: number of cells on the axis.
        a, b: the cells' stride and offset.

    Returns:
        float64 (n, cells), each row summing to 1.
    """
    u = np.clip((np.asarray(pos, np.float64) - b) / a, 0, cells - 1)
    lo = np.minimum(np.floor(u).astype(np.int64), cells - 1)
    hi = np.minimum(lo + 1, cells - 1)
    frac = u - lo
    out = np.zeros((len(u), cells))
    rows = np.arange(len(u))
    np.add.at(out, (rows, lo), 1 - frac)
    np.add.at(out, (rows, hi), frac)
    return out


def region_features(fmap: np.ndarray, geometry: Geometry, side: int, props) -> np.ndarray:
    """Mean of a feature map inside each proposal's mask.

    Args:
        fmap: float32 (C, h, w) trunk output for the image squashed to ``side`` x ``side``.
        geometry: where its cells sit on the squashed input (``Geometry``).
        side: the squashed input's side.
        props: the image's ``weakpaste.mine.proposals.Proposals`` (M candidates).

    Returns:
        float32 (M, C).
    """
    from weakpaste.ops.grid import Grid

    (ay, by), (ax, bx) = geometry
    c, h, w = fmap.shape
    big_h, big_w = props.image_shape
    grid = Grid(props.image_shape, props.working_shape)
    # Working pixel centres (full-resolution coordinates) on the squashed input's pixels.
    ry = cell_weights((grid.centre_y + 0.5) * side / big_h - 0.5, h, ay, by)
    rx = cell_weights((grid.centre_x + 0.5) * side / big_w - 0.5, w, ax, bx)
    weights = props.separable_sums(ry, rx)
    weights /= np.maximum(weights.sum(1, keepdims=True), 1e-12)
    return (weights @ fmap.reshape(c, h * w).T.astype(np.float64)).astype(np.float32)


__all__ = ["Geometry", "cell_weights", "region_features"]
