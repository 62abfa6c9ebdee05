"""The CLIP selection rule on hand-made scores (no model needed)."""

from __future__ import annotations

import numpy as np

from weakpaste.backgrounds.select import select_images


def test_top_k_among_the_not_rejected():
    cap = np.array([0.30, 0.10, 0.25, 0.28, 0.20])
    cls = np.array([[0.1, 0.2], [0.1, 0.1], [0.1, 0.1], [0.31, 0.1], [0.1, 0.1]])
    kept, rejected = select_images(cap, cls, keep=2, reject_threshold=0.3)
    assert rejected.tolist() == [False, False, False, True, False]
    assert kept.tolist() == [True, False, True, False, False]


def test_ties_no_classes_and_everything_rejected():
    kept, rejected = select_images(np.array([0.2, 0.2, 0.2]), np.zeros((3, 0)), 2, 0.0)
    assert kept.tolist() == [True, True, False] and not rejected.any()
    kept, rejected = select_images(np.array([0.2, 0.3]), np.ones((2, 1)), 2, 0.5)
    assert not kept.any() and rejected.all()


def test_blocked_images_are_never_kept():
    kept, rejected = select_images(np.array([0.9, 0.5, 0.4]), np.zeros((3, 0)), 2, 0.3,
                                   blocked=np.array([True, False, False]))
    assert kept.tolist() == [False, True, True] and not rejected.any()
