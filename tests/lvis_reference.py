"""A seeded LVIS evaluation case, and its metrics by the ``lvis`` package (the reference).

``weakpaste eval`` runs LVIS's protocol with faster-coco-eval's LVIS mode. This module makes a
ground truth with every federated situation (verified-absent classes, not-exhaustive ones,
classes neither annotated nor verified, all three frequency groups, all three sizes) and
detections around it (jittered true positives, duplicates, false positives of every kind, an
image with more than 300 detections), and evaluates it with the official ``lvis`` package.

``lvis`` 0.5.3 depends on opencv-python (which clashes with weakpaste's
opencv-python-headless), matplotlib and Cython, its ``__init__`` imports its plotting module,
and it uses ``np.float``, which NumPy 1.24 removed (a shim sets it to ``float``). To run it,
install it without dependencies into a throwaway environment that sees this one's packages;
the plotting imports are stubbed here:

    python -m venv --system-site-packages /tmp/lvis-env
    /tmp/lvis-env/bin/pip install --no-deps lvis==0.5.3
    /tmp/lvis-env/bin/python tests/lvis_reference.py      # prints REFERENCE for test_lvis.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

SIZE = 128
FREQUENCIES = ("r", "r", "c", "c", "f", "f")
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _mask(kind: int, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    m = np.zeros((SIZE, SIZE), dtype=bool)
    if kind == 0:
        m[y0:y1, x0:x1] = True
    else:  # an ellipse in the box
        yy, xx = np.mgrid[:SIZE, :SIZE]
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, max((y1 - y0) / 2, 1), max((x1 - x0) / 2, 1)
        m = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1
    if not m.any():
        m[y0, x0] = True
    return m


def _box(rng: np.random.Generator, side: tuple[int, int] = (8, 126)) -> tuple[int, ...]:
    w, h = (int(v) for v in rng.integers(*side, size=2))
    x0, y0 = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
    return x0, y0, x0 + w, y0 + h


def _jitter(rng: np.random.Generator, box: tuple[int, ...]) -> tuple[int, ...]:
    x0, y0, x1, y1 = box
    dx, dy = (int(round(v)) for v in rng.normal(0, 0.12, 2) * (x1 - x0, y1 - y0))
    x0, x1 = np.clip([x0 + dx, x1 + dx], 0, SIZE)
    y0, y1 = np.clip([y0 + dy, y1 + dy], 0, SIZE)
    return int(x0), int(y0), max(int(x1), int(x0) + 1), max(int(y1), int(y0) + 1)


def _result(rng, image_id: int, cat: int, kind: int, box, score: float) -> dict:
    from weakpaste.ops.masks import encode

    m = _mask(kind, box)
    ys, xs = np.nonzero(m)
    return {"image_id": image_id, "category_id": cat, "score": round(float(score), 4),
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                     float(ys.max() - ys.min() + 1)], "segmentation": encode(m)}


def make_case(seed: int = 0, images: int = 12) -> tuple[dict, list[dict]]:
    """(an LVIS ground-truth document, COCO results with boxes and RLE masks)."""
    from weakpaste.ops.masks import encode

    rng = np.random.default_rng(seed)
    cats = [{"id": k + 1, "name": f"class{k}", "frequency": f, "synset": f"class{k}.n.01",
             "synonyms": [f"class{k}"], "def": "", "image_count": 0, "instance_count": 0}
            for k, f in enumerate(FREQUENCIES)]
    doc = {"info": {}, "images": [], "annotations": [], "categories": cats}
    results = []
    for i in range(1, images + 1):
        present: set[int] = set()
        for _ in range(int(rng.integers(1, 5))):
            cat, kind, box = int(rng.integers(1, len(cats) + 1)), int(rng.integers(0, 2)), _box(rng)
            m = _mask(kind, box)
            seg = ([[box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3]]]
                   if kind == 0 else encode(m))
            ys, xs = np.nonzero(m)
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1, "image_id": i, "category_id": cat,
                "segmentation": seg, "area": float(m.sum()),
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                         float(ys.max() - ys.min() + 1)]})
            present.add(cat)
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, duplicated
                results.append(_result(rng, i, cat, kind, _jitter(rng, box), rng.random()))
        absent = [c["id"] for c in cats if c["id"] not in present]
        doc["images"].append({
            "id": i, "width": SIZE, "height": SIZE, "coco_url": f"http://x/{i:012d}.jpg",
            "neg_category_ids": [c for c in absent if rng.random() < 0.5],
            "not_exhaustive_category_ids": [c for c in sorted(present) if rng.random() < 0.3]})
        for _ in range(3):  # false positives of any class: positive, negative or unverified
            results.append(_result(rng, i, int(rng.integers(1, len(cats) + 1)),
                                   int(rng.integers(0, 2)), _box(rng), 0.8 * rng.random()))
    # More than 300 detections in image 1: the cap keeps the best 300.
    for _ in range(320):
        results.append(_result(rng, 1, int(rng.integers(1, len(cats) + 1)), 0,
                               _box(rng, (4, 30)), 0.5 * rng.random()))
    return doc, results


def _for_iou(results: list[dict], iou_type: str) -> list[dict]:
    """What weakpaste hands the evaluator: masks without boxes for segm, boxes for bbox."""
    key = "bbox" if iou_type == "segm" else "segmentation"
    return [{k: v for k, v in r.items() if k != key} for r in results]


def lvis_installed() -> bool:
    """Whether the ``lvis`` package is installed (nothing is stubbed when it is not)."""
    return importlib.util.find_spec("lvis") is not None


def lvis_metrics(doc: dict, results: list[dict]) -> dict[str, dict[str, float]]:
    """{"segm", "bbox"} -> KEYS and "per_class" (class -> AP) by the ``lvis`` package's
    LVISEval (-1 or None: undefined)."""
    if not lvis_installed():
        raise ImportError("the lvis package is not installed")
    if importlib.util.find_spec("matplotlib") is None:
        for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.patches"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["matplotlib.patches"].Polygon = object
    if not hasattr(np, "float"):  # lvis 0.5.3 uses np.float, gone since NumPy 1.24
        setattr(np, "float", float)  # noqa: B010 (the attribute is gone: NPY001 misreads it)
    from lvis import LVIS, LVISEval, LVISResults

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gt.json"
        path.write_text(json.dumps(doc))
        gt = LVIS(str(path))
        out = {}
        for iou_type in ("segm", "bbox"):
            dt = LVISResults(gt, _for_iou(json.loads(json.dumps(results)), iou_type))
            ev = LVISEval(gt, dt, iou_type)
            ev.run()
            out[iou_type] = {k: round(float(ev.results[k]), 6) for k in KEYS}
            prec = ev.eval["precision"]  # (IoUs, recalls, classes, areas)
            names = {c["id"]: c["name"] for c in doc["categories"]}
            out[iou_type]["per_class"] = {
                names[c]: round(float(p[p > -1].mean()), 6) if (p > -1).any() else None
                for c, p in ((c, prec[:, :, k, 0]) for k, c in enumerate(ev.params.cat_ids))}
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(lvis_metrics(*make_case()), indent=1))
