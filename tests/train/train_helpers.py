"""Tiny hand-made COCO sets and settings shared by the tests of weakpaste.train.

(A helper module rather than a conftest.py: the top-level tests import ``conftest`` by name.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from weakpaste.io.coco import write_coco
from weakpaste.io.images import write_image

# One torch thread: on a busy 2-core machine extra threads only spin (the library's own helper).
from weakpaste.models.backbones import one_thread as one_torch_thread  # noqa: F401
from weakpaste.structures import ImageRecord, Instances

# Two classes with their own colour; rectangles (x0, y0, x1, y1) on a grey 64 x 64 image.
COLORS = {"a": (220, 40, 40), "b": (40, 60, 220), "c": (40, 200, 60)}
LAYOUTS: tuple[tuple[tuple[str, tuple[int, int, int, int]], ...], ...] = (
    (("a", (6, 8, 30, 34)), ("b", (36, 30, 60, 58))),
    (("b", (4, 36, 26, 60)), ("a", (34, 4, 58, 28))),
)


def write_tiny_coco(root: Path, *, layouts: Sequence = LAYOUTS, size: int = 64,
                    categories: Mapping[str, dict] | Sequence[str] = ("a", "b"),
                    name: str = "instances.json", seed: int = 0) -> tuple[Path, Path]:
    """Write a COCO set of coloured rectangles; returns (json path, images folder)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i, layout in enumerate(layouts):
        img = np.full((size, size, 3), 128, dtype=np.uint8)
        img += rng.integers(0, 12, size=img.shape, dtype=np.uint8)
        masks = np.zeros((len(layout), size, size), dtype=bool)
        for k, (cls, (x0, y0, x1, y1)) in enumerate(layout):
            img[y0:y1, x0:x1] = COLORS[cls]
            masks[k, y0:y1, x0:x1] = True
        file_name = f"img{i}.png"
        write_image(images / file_name, img)
        inst = (Instances.from_masks(masks, [c for c, _ in layout]) if layout
                else Instances.empty(size, size))
        records.append(ImageRecord(image_id=i + 1, file_name=file_name, width=size,
                                   height=size, instances=inst))
    path = root / name
    write_coco(path, records, categories)
    return path, images


def tiny_train_config(**overrides):
    """A TrainConfig that trains the light model on 64-pixel images in well under a second
    per iteration, without augmentation unless asked."""
    from weakpaste.core.options import build
    from weakpaste.train.config import TrainConfig

    base = dict(backbone="mobilenet_v3", weights=None, image_size=64, jitter=(1.0, 1.0),
                color_prob=0.0, flip_prob=0.0, batch_size=2, iterations=2, lr=0.01,
                warmup_iters=0, steps=(), roi_batch=32, rpn_proposals=64, checkpoint_every=2,
                log_every=1, repeat_threshold=0.0, seed=0)
    base.update(overrides)
    return build(TrainConfig, **base)
