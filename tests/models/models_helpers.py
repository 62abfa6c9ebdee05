"""Small classifiers and labelled scenes shared by the tests of weakpaste.models.

(A helper module rather than a conftest.py: the top-level tests import ``conftest`` by name.)
"""

from __future__ import annotations

import numpy as np

from weakpaste.demo.synthetic import CLASSES, iter_scenes
from weakpaste.models.classifier import Classifier


def small(backbone: str = "resnet18", classes=CLASSES, **kwargs) -> Classifier:
    """A randomly initialised classifier on 64 px inputs: fast enough for unit tests."""
    return Classifier.build(backbone, weights=None, classes=classes, input_size=64, crop_size=64,
                            **kwargs)


def labels_of(scenes) -> np.ndarray:
    """bool (N, K) image-level labels of synthetic scenes, columns in CLASSES order."""
    return np.array([[c in s.labels for c in CLASSES] for s in scenes])


def tiny_scenes() -> list:
    """12 synthetic 64 x 96 scenes."""
    return list(iter_scenes(0, 12, height=64, width=96))


def random_image(h: int = 80, w: int = 100) -> np.ndarray:
    """A fixed uint8 (h, w, 3) noise image."""
    return np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)
