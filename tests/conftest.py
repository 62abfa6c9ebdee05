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


def lvis_from_coco(src: Path, dst: Path, *, seed: int = 0,
                   extra_classes: tuple[str, ...] = ("c", "d", "e")) -> Path:
    """Write an LVIS v1 version of a COCO file, as the official release looks.

    ``extra_classes`` become categories without annotations (as LVIS has classes absent from
    a split), so that images have absent classes to verify. Images get ``coco_url`` instead
    of ``file_name`` and federated lists drawn with ``seed``: each absent category is
    verified absent (``neg_category_ids``) with probability 1/2, each present one is not
    exhaustively annotated with probability 1/3. Categories get
    ``frequency`` from their image counts, ``image_count``, ``instance_count``, ``synset``,
    ``synonyms`` and ``def``. Annotations become outer polygons (from the masks' contours)
    with ``bbox`` and ``area`` and no ``iscrowd``.
    """
    import json

    import cv2
    from pycocotools import mask as mask_utils

    from weakpaste.io.coco import frequency_bucket

    doc = json.loads(src.read_text())
    top = max(c["id"] for c in doc["categories"])
    doc["categories"] += [{"id": top + 1 + k, "name": n} for k, n in enumerate(extra_classes)]
    rng = np.random.default_rng(seed)
    present: dict[int, set[int]] = {img["id"]: set() for img in doc["images"]}
    anns = []
    for ann in doc["annotations"]:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        mask = mask_utils.decode(rle)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polys = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        poly_rle = mask_utils.merge(mask_utils.frPyObjects(polys, *rle["size"]))
        anns.append({"id": ann["id"], "image_id": ann["image_id"],
                     "category_id": ann["category_id"], "segmentation": polys,
                     "area": float(mask_utils.area(poly_rle)),
                     "bbox": [float(v) for v in mask_utils.toBbox(poly_rle)]})
        present[ann["image_id"]].add(ann["category_id"])
    cat_ids = [c["id"] for c in doc["categories"]]
    images = []
    for img in doc["images"]:
        pos = present[img["id"]]
        images.append({"id": img["id"], "width": img["width"], "height": img["height"],
                       "coco_url": f"http://images.cocodataset.org/train2017/{img['file_name']}",
                       "license": 1, "date_captured": "2013-11-14 16:28:13",
                       "neg_category_ids": [c for c in cat_ids
                                            if c not in pos and rng.random() < 0.5],
                       "not_exhaustive_category_ids": [c for c in sorted(pos)
                                                       if rng.random() < 1 / 3]})
    cats = []
    for cat in doc["categories"]:
        mine = [a for a in anns if a["category_id"] == cat["id"]]
        n_images = len({a["image_id"] for a in mine})
        cats.append({"id": cat["id"], "name": cat["name"], "synset": f"{cat['name']}.n.01",
                     "synonyms": [cat["name"]], "def": f"a thing called {cat['name']}",
                     "frequency": frequency_bucket(n_images) or "r", "image_count": n_images,
                     "instance_count": len(mine)})
    dst.write_text(json.dumps({"info": {"description": "LVIS-format test set"}, "images": images,
                               "annotations": anns, "categories": cats}))
    return dst


@pytest.fixture
def tiny_lvis(tiny_coco, tmp_path: Path) -> tuple[Path, Path]:
    """``tiny_coco`` as an LVIS v1 file (see ``lvis_from_coco``); (lvis.json, images folder)."""
    path, images = tiny_coco
    return lvis_from_coco(path, tmp_path / "lvis.json"), images


def resize_onnx_model(path, side=16):
    """input [1,3,S,S] -> channel mean -> 2x2 max-pool -> Resize to constant [1,1,S,S]
    (IS-Net's pattern: Resize nodes whose output sizes are constants of the fixed input)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, side, side])
    sizes = numpy_helper.from_array(np.array([1, 1, side, side], np.int64), "sizes")
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=1),
             helper.make_node("MaxPool", ["m"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["p", "", "", "sizes"], ["output"], mode="nearest")]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[sizes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
