"""weakpaste.models.inputs: squashing, batches and EM-Paste's segment crops (numpy only)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from models_helpers import random_image

from weakpaste.models.inputs import GREY, check_batch_size, image_batches, segment_crops


def test_segment_crops_grey_outside_and_centred():
    img = random_image()
    mask = np.zeros((80, 100), bool)
    mask[8:72, 20:52] = True  # 64 x 32: the square crop needs no resize
    mask[8:20, 20:30] = False  # a notch inside the box
    crop = segment_crops(img, mask[None], 64, erode=0)[0]
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert np.all(crop[:, :16] == GREY) and np.all(crop[:, 48:] == GREY)
    inner, box_mask = crop[:, 16:48], mask[8:72, 20:52]
    np.testing.assert_array_equal(inner[box_mask], img[8:72, 20:52][box_mask])
    assert np.all(inner[~box_mask] == GREY)


def test_segment_crops_erosion():
    img = random_image()
    mask = np.zeros((80, 100), bool)
    mask[7:73, 0:33] = True  # touches the left image edge, which erosion leaves alone
    crop = segment_crops(img, [mask], 64, erode=1)[0]
    np.testing.assert_array_equal(crop[:, 16:48], img[8:72, 0:32])
    assert np.all(crop[:, :16] == GREY) and np.all(crop[:, 48:] == GREY)

    line = np.zeros((80, 100), bool)
    line[30, 10:42] = True  # erosion would empty it: the un-eroded mask is used
    crop = segment_crops(img, [line], 64, erode=2)[0]
    expected = cv2.resize(img[30:31, 10:42], (64, 2), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(crop[31:33], expected)
    assert np.all(crop[:31] == GREY) and np.all(crop[33:] == GREY)

    empty = segment_crops(img, [np.zeros((80, 100), bool)], 64)
    assert np.all(empty == GREY)
    assert segment_crops(img, np.zeros((0, 80, 100), bool), 64).shape == (0, 64, 64, 3)
    with pytest.raises(ValueError, match=r"each mask must be \(80, 100\)"):
        segment_crops(img, [np.zeros((10, 10), bool)], 64)


def test_image_batches_squash_in_order():
    images = [np.full((10, 20, 3), v, np.uint8) for v in (1, 2, 3)]
    batches = list(image_batches(images, 2, 8))
    assert [b.shape for b in batches] == [(2, 8, 8, 3), (1, 8, 8, 3)]
    assert [int(b[i, 0, 0, 0]) for b in batches for i in range(len(b))] == [1, 2, 3]
    with pytest.raises(ValueError) as err:
        list(image_batches([np.zeros((4, 4), np.uint8)], 1, 8))
    assert str(err.value) == "images must be uint8 (H, W, 3) RGB arrays, got uint8 (4, 4)"
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        check_batch_size(0)
