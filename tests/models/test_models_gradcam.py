"""weakpaste.models.gradcam: Grad-CAM maps and the receptive-field grid they are resized on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models_helpers import random_image, small
from torch import nn

from weakpaste.models.gradcam import traced_forward


def test_gradcam_shape_and_range():
    clf = small(classes=["a", "b", "c"])
    cams = clf.gradcam(random_image(50, 70), [0, 2, 2])
    assert cams.shape == (3, 50, 70) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1
    assert clf.gradcam(random_image(50, 70), []).shape == (0, 50, 70)
    with pytest.raises(ValueError, match="class index 3 out of range"):
        clf.gradcam(random_image(50, 70), [3])


def test_gradcam_outputs_are_one_forward_pass_of_the_others():
    clf = small(classes=["a", "b", "c"])
    image = random_image(50, 70)
    maps, probs, pooled = clf.gradcam_outputs(image, [1, 0])
    np.testing.assert_array_equal(maps, clf.gradcam(image, [1, 0]))
    np.testing.assert_allclose(probs, clf.predict_proba([image])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled, clf.features([image])[0], rtol=1e-4, atol=1e-5)
    assert probs.shape == (3,) and pooled.dtype == np.float32
    none, probs_none, _ = clf.gradcam_outputs(image, [])
    assert none.shape == (0, 50, 70)
    np.testing.assert_array_equal(probs_none, probs)


class _RedGreen(nn.Module):
    """Channel 0 = how red, channel 1 = how green; the pooling makes an 8x8 map of 64 px."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(x[:, :2]))


def test_gradcam_follows_the_evidence():
    clf = small(classes=["red", "green", "neither"])
    clf._net.trunk = _RedGreen()
    clf._net.head = nn.Linear(2, 3)
    with torch.no_grad():
        clf._net.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        clf._net.head.bias.zero_()
    img = np.zeros((64, 96, 3), np.uint8)
    img[8:24, 12:36] = (255, 0, 0)  # squashed to rows 8:24, cols 8:24: feature cells 1-2
    img[40:56, 60:84] = (0, 255, 0)
    cams = clf.gradcam(img, [0, 1, 2])
    for cam, (y0, y1, x0, x1) in zip(cams[:2], [(8, 24, 12, 36), (40, 56, 60, 84)], strict=True):
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert y0 <= peak[0] < y1 and x0 <= peak[1] < x1
        assert cam[(y0 + y1) // 2, (x0 + x1) // 2] == pytest.approx(1.0)
    assert cams[0][48, 72] == 0 and cams[1][16, 24] == 0
    assert not cams[2].any()  # only negative evidence: the all-zero map stays zero


def test_feature_cells_sit_at_their_receptive_field_centres():
    with torch.inference_mode():
        _, grid = traced_forward(small("resnet18")._net.trunk, torch.zeros(1, 3, 64, 64))
        assert grid == ((32.0, 0.0), (32.0, 0.0))  # padded stride-2 layers: cell i at 32 i
        stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.MaxPool2d(2))
        _, grid = traced_forward(stem, torch.zeros(1, 3, 16, 16))
        assert grid == ((4.0, 1.0), (4.0, 1.0))
