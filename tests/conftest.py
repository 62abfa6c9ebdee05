"""Shared fixtures: tiny hand-made data sets and the optional real data in ../shared."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from weakpaste.io.coco import write_coco
from weakpaste.io.images import write_image
from weakpaste.structures import ImageRecord, Instances

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"


def needs_shared(*parts: str) -> Path:
    """Path below ../shared/data, or skip the test when it is absent (a fresh clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG file whose header claims ``width`` x ``height`` RGB pixels but holds almost no
    data: what a hostile or broken file looks like to a decoder (made here, not stored)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def square_masks(h: int, w: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """bool (N, h, w) masks filled on the given x0, y0, x1, y1 rectangles."""
    masks = np.zeros((len(boxes), h, w), dtype=bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        m[y0:y1, x0:x1] = True
    return masks


@pytest.fixture
def tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    """A 3-image COCO set with rectangle instances of classes 'a' and 'b' (one with a hole).

    Returns:
        (instances.json, images folder)
    """
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    records = []
    layouts = [
        [("a", (4, 4, 20, 20)), ("b", (30, 10, 60, 40))],
        [("b", (2, 2, 12, 30)), ("a", (40, 5, 63, 47))],
        [("a", (10, 10, 50, 40))],
    ]
    for i, layout in enumerate(layouts):
        img = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        name = f"img{i}.png"
        write_image(images / name, img)
        masks = square_masks(48, 64, [b for _, b in layout])
        if i == 2:
            masks[0, 20:30, 20:30] = False  # a hole: still one iscrowd=0 instance
        records.append(ImageRecord(image_id=i + 1, file_name=name, width=64, height=48,
                                   instances=Instances.from_masks(masks, [c for c, _ in layout])))
    path = tmp_path / "instances.json"
    write_coco(path, records, ["a", "b"])
    return path, images
