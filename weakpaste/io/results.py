"""Detections in COCO results format: reading them and turning them into ``Instances``.

A results file is a JSON list of ``{"image_id", "category_id", "score", "bbox" (xywh) and/or
"segmentation"}`` (``weakpaste eval``'s ``predictions.json``), or a COCO instances file whose
annotations are the predictions. Read here and nowhere else, so that ``eval`` (which needs
torch) and ``viz`` (which never imports it) check a file the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.jsonfile import JsonError, parse_json
from weakpaste.io import rle as rle_check
from weakpaste.io.coco import CocoDataset
from weakpaste.io.coco_parse import segmentation_to_rle
from weakpaste.io.rle import bytes_rle
from weakpaste.structures import Instances


def checked_detections(images: Mapping[int, dict], results: Sequence[dict],
                        iou_type: str) -> list[dict]:
    """Copies of the ``iou_type`` results, checked, with masks as compressed RLE (bytes).

    For ``segm`` the boxes are dropped: the evaluators' ``loadRes`` replaces the segmentation
    of a result that has a ``bbox`` by the box polygon, and area and box then come from the
    mask.

    Raises:
        ValueError: see ``evaluation_detections``.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if iou_type == "segm":
        picked = [{k: v for k, v in r.items() if k != "bbox"} for r in results
                  if r.get("segmentation")]
    else:
        picked = [dict(r) for r in results if r.get("bbox")]
    if iou_type == "segm":
        # Polygons and uncompressed RLE become compressed RLE: loadRes only reads the latter.
        for r in picked:
            img = images[r["image_id"]]
            rle = segmentation_to_rle(r["segmentation"], img["height"], img["width"])
            if rle is None:
                raise ValueError(f"result for image {r['image_id']} has an unusable "
                                 "segmentation")
            r["segmentation"] = bytes_rle(rle)
        bad = rle_check.first_bad_compressed([r["segmentation"]["counts"] for r in picked],
                                             [tuple(r["segmentation"]["size"]) for r in picked])
        if bad is not None:
            raise ValueError(f"result for image {picked[bad[0]]['image_id']} has a corrupt "
                             f"RLE segmentation ({bad[1]})")
    else:
        for r in picked:
            if not all(math.isfinite(float(v)) for v in r["bbox"]):
                raise ValueError(f"result for image {r['image_id']} has bbox {r['bbox']} "
                                 "with a NaN or infinite value")
    return picked


def read_predictions(path: str | os.PathLike, gt: CocoDataset) -> tuple[list[dict], list[str]]:
    """Read and check a COCO results file against its ground truth.

    Accepted: a JSON list of results (``image_id``, ``category_id``, ``score``, ``bbox`` and/or
    ``segmentation``), or a COCO instances file whose annotations are the predictions (a
    missing ``score`` counts as 1.0).

    Returns:
        (results whose category is in ``gt``, notes).

    Raises:
        WeakpasteError: unreadable file, malformed entry, or an image id missing from ``gt``.
    """
    path = Path(path)
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeakpasteError(f"{path}: no such file; pass a COCO results JSON "
                             "(e.g. OUT/predictions.json of 'weakpaste eval')") from None
    except (OSError, UnicodeDecodeError, JsonError) as err:
        raise WeakpasteError(f"{path}: not a readable JSON file ({err}); pass a COCO results "
                             "JSON") from None
    default_score = None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data, default_score = data["annotations"], 1.0
    if not isinstance(data, list):
        raise WeakpasteError(f"{path}: not a COCO results file; expected a JSON list of "
                             '{"image_id", "category_id", "score", "bbox"/"segmentation"}')
    image_ids = {r.image_id for r in gt.records}
    cat_ids = {c["id"] for c in gt.categories.values()}
    results, unknown = [], {}
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise WeakpasteError(f"{path}: entry {i} is not an object")
        if not _is_int(r.get("image_id")) or r["image_id"] not in image_ids:
            raise WeakpasteError(f"{path}: entry {i} is for image id {r.get('image_id')!r}, which "
                                 f"is not in {gt.path}; evaluate against the data set the "
                                 "predictions were made on")
        score = r.get("score", default_score)
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise WeakpasteError(f"{path}: entry {i} has no numeric 'score'")
        if not math.isfinite(score):
            raise WeakpasteError(f"{path}: entry {i} has score {score}; scores must be finite "
                                 "numbers: fix the predictions file")
        bbox = r.get("bbox")
        if bbox is not None and not (isinstance(bbox, list) and len(bbox) == 4 and
                                     all(_is_number(v) and math.isfinite(v) for v in bbox)):
            raise WeakpasteError(f"{path}: entry {i} has a malformed bbox {bbox!r}; expected "
                                 "[x, y, width, height]")
        if not bbox and not r.get("segmentation"):
            raise WeakpasteError(f"{path}: entry {i} has neither 'bbox' nor 'segmentation'")
        cat = r.get("category_id")
        if not _is_int(cat):
            raise WeakpasteError(f"{path}: entry {i} has category id {cat!r}; category ids must "
                                 "be integers")
        if cat not in cat_ids:
            unknown[cat] = unknown.get(cat, 0) + 1
            continue
        entry = {"image_id": r["image_id"], "category_id": cat, "score": float(score)}
        if bbox:
            entry["bbox"] = [float(v) for v in bbox]
        if r.get("segmentation"):
            entry["segmentation"] = r["segmentation"]
        results.append(entry)
    notes = []
    if unknown:
        notes.append(f"{path}: {sum(unknown.values())} prediction(s) with category ids not in "
                     f"{gt.path} were ignored: {sorted(unknown, key=str)[:8]}")
    if results and not any("segmentation" in r for r in results):
        notes.append(f"{path}: no prediction has a mask; segm AP is 0")
    return results, notes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def results_instances(results: Sequence[dict], gt: CocoDataset, *, min_score: float = 0.0,
                      source: str | os.PathLike = "predictions") -> dict[int, Instances]:
    """The masked results of each image as ``Instances``, best score first.

    Args:
        results: checked results (``read_predictions``); those without a ``segmentation``
            or scoring below ``min_score`` are left out.
        gt: the data set the results were made on (image sizes, class names).
        min_score: the lowest score kept.
        source: the results file, for messages.

    Returns:
        image id -> its instances (classes by name, boxes ``xyxy`` from the masks, scores);
        images without a kept result are absent.

    Raises:
        WeakpasteError: a segmentation that is unusable, corrupt or of another size than its
            image (checked before pycocotools decodes anything).
    """
    images = {r.image_id: {"height": r.height, "width": r.width} for r in gt.records}
    names = {c["id"]: name for name, c in gt.categories.items()}
    kept = [r for r in results if r.get("segmentation") and r["score"] >= min_score]
    try:
        checked = checked_detections(images, kept, "segm")
    except ValueError as err:
        raise WeakpasteError(f"{source}: {err}; fix the predictions file") from None
    by_image: dict[int, list[dict]] = {}
    for r in sorted(checked, key=lambda r: -r["score"]):
        by_image.setdefault(r["image_id"], []).append(r)
    out = {}
    for image_id, rs in by_image.items():
        img = images[image_id]
        rles = [{"size": r["segmentation"]["size"],
                 "counts": r["segmentation"]["counts"].decode()} for r in rs]
        out[image_id] = Instances.from_rles(img["height"], img["width"],
                                            [names[r["category_id"]] for r in rs], rles,
                                            scores=np.array([r["score"] for r in rs]))
    return out


__all__ = ["read_predictions", "results_instances"]
