"""Working resolution against full resolution: the nearest-neighbour map between them.

The miners work on a downscaled copy of each image; ``Grid`` maps its pixels to blocks of the
full image exactly, so that sums over full-resolution masks are sums over working pixels.
"""

from __future__ import annotations

import numpy as np


def nearest_index(n_full: int, n_small: int) -> np.ndarray:
    """Index, int64 (n_full,), of the working row (or column) each full-resolution one copies."""
    idx = ((np.arange(n_full) + 0.5) * (n_small / n_full)).astype(np.int64)
    return np.minimum(idx, n_small - 1)


class Grid:
    """The nearest-neighbour map between working and full resolution.

    Each working pixel stands for a block of ``row_count[r] x col_count[c]`` full-resolution
    pixels (a contiguous block, at least one pixel since the working image is never larger), so
    sums over full-resolution masks are exact sums over working pixels weighted by block size.
    """

    def __init__(self, image_shape: tuple[int, int], working_shape: tuple[int, int]):
        (big_h, big_w), (h, w) = image_shape, working_shape
        if not (1 <= h <= big_h and 1 <= w <= big_w):
            raise ValueError(f"Proposals: working shape {working_shape} must be positive and "
                             f"no larger than the image shape {image_shape}")
        self.rows = nearest_index(big_h, h)
        self.cols = nearest_index(big_w, w)
        self.row_start = np.searchsorted(self.rows, np.arange(h))
        self.col_start = np.searchsorted(self.cols, np.arange(w))
        self.row_count = np.diff(np.append(self.row_start, big_h))
        self.col_count = np.diff(np.append(self.col_start, big_w))
        # Pixel centres are at integer coordinates; a block's mean centre is its midpoint.
        self.centre_y = self.row_start + (self.row_count - 1) / 2.0
        self.centre_x = self.col_start + (self.col_count - 1) / 2.0
        self.weight = np.outer(self.row_count, self.col_count).astype(np.float64)

    def upsample(self, small: np.ndarray) -> np.ndarray:
        """Nearest-neighbour upsampling of a (h, w) map to (H, W)."""
        return small[self.rows][:, self.cols]

    def block_sum(self, full: np.ndarray) -> np.ndarray:
        """Sum of a float (H, W) map over each working pixel's block, float64 (h, w)."""
        out = np.add.reduceat(np.asarray(full, dtype=np.float64), self.row_start, axis=0)
        return np.add.reduceat(out, self.col_start, axis=1)
