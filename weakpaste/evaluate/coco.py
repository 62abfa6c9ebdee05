"""pycocotools and lvis-api as the evaluation wants them: ground truth and detections.

The evaluators read documents (not files) and print their own tables; these adapters load a
COCO or LVIS ground truth once, quietly, check the detections against its images and
classes, and hand each evaluator the objects it expects.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pycocotools import mask as mask_utils

from weakpaste.io import lvis
from weakpaste.io.coco import _read_document
from weakpaste.io.coco_parse import segmentation_to_rle
from weakpaste.io.results import checked_detections
from weakpaste.io.rle import bytes_rle


def _quiet_coco(doc: dict):
    """A ``pycocotools.coco.COCO`` indexing ``doc``, without pycocotools' prints."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = doc
        api.createIndex()
    return api


def evaluation_document(path: str | os.PathLike) -> dict:
    """The document of a validated instances file, completed for COCOeval and LVISEval.

    Both read ``area``, ``iscrowd`` and ``bbox`` of every annotation, which files made by other
    tools may leave out (LVIS files have no ``iscrowd``): missing ones are filled from the
    segmentation (``iscrowd`` 0). Crowd regions stay in, so that COCOeval ignores detections on
    them as COCO intends. Other fields (LVIS's federated lists and category fields) are kept.

    Args:
        path: an instances JSON that ``load_coco(path, require_masks=True)`` accepted.

    Returns:
        {"info", "images", "annotations", "categories"}.
    """
    doc = _read_document(Path(path))
    images = {img["id"]: img for img in doc["images"]}
    anns = []
    for ann in doc.get("annotations", []):
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann or "bbox" not in ann:
            img = images[ann["image_id"]]
            rle = segmentation_to_rle(ann.get("segmentation"), img["height"], img["width"])
            if rle is not None:
                ann.setdefault("area", float(mask_utils.area(bytes_rle(rle))))
                ann.setdefault("bbox", [float(v) for v in mask_utils.toBbox(bytes_rle(rle))])
            else:
                ann.setdefault("bbox", [0.0, 0.0, 0.0, 0.0])
                ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        anns.append(ann)
    return {"info": doc.get("info") or {}, "images": doc["images"], "annotations": anns,
            "categories": doc["categories"]}


def is_federated(doc: Mapping) -> bool:
    """Whether a document is LVIS (federated labels): it is evaluated with LVIS's protocol."""
    return lvis.is_lvis(doc)


def evaluation_ground_truth(path: str | os.PathLike | Mapping):
    """A ``pycocotools.coco.COCO`` of a validated instances file, ready for ``COCOeval``.

    Args:
        path: a file that ``load_coco(path, require_masks=True)`` accepted, or its
            ``evaluation_document``.

    Returns:
        The pycocotools ``COCO`` object (its ``dataset`` holds the completed document).
    """
    doc = path if isinstance(path, Mapping) else evaluation_document(path)
    return _quiet_coco(dict(doc))


def lvis_ground_truth(doc: Mapping, frequency: Mapping[str, str] | None = None):
    """A ``faster_coco_eval`` ``COCO`` of an LVIS ``evaluation_document``, for its LVIS mode.

    Args:
        doc: the completed document of an LVIS file.
        frequency: class name -> "r"/"c"/"f" for categories without ``frequency`` (the
            evaluator indexes it; weakpaste's own groups come from elsewhere).
    """
    from faster_coco_eval import COCO

    return COCO(lvis.evaluation_document(doc, frequency))



def evaluation_detections(gt, results: Sequence[dict], iou_type: str):
    """Detections in COCO results format as a ``COCO`` object to pair with ``gt`` in COCOeval.

    Two pycocotools quirks handled here: ``loadRes`` fails on an empty list, and when a result
    carries a ``bbox`` it replaces its ``segmentation`` by the box polygon, so for ``segm`` the
    boxes are dropped first (area and box then come from the mask).

    Args:
        gt: the ground truth from ``evaluation_ground_truth``.
        results: dicts with ``image_id``, ``category_id``, ``score`` and ``bbox`` (xywh) and/or
            ``segmentation`` (RLE or polygons); every ``image_id`` must be one of ``gt``'s.
        iou_type: "bbox" or "segm"; entries without the matching field are left out.

    Returns:
        A pycocotools ``COCO`` of the detections.

    Raises:
        ValueError: a box is not finite, a segmentation is unusable or corrupt (see
            ``load_coco``), or its RLE size differs from its image's.
    """
    picked = checked_detections(gt.imgs, results, iou_type)
    if not picked:
        return _quiet_coco({"images": copy.deepcopy(gt.dataset["images"]), "annotations": [],
                            "categories": copy.deepcopy(gt.dataset["categories"])})
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes(picked)


def lvis_detections(gt, results: Sequence[dict], iou_type: str):
    """Detections as a ``faster_coco_eval`` ``COCO`` to pair with ``lvis_ground_truth``.

    Like ``evaluation_detections``, and each image keeps only its 300 best-scoring results of
    either kind (LVIS's cap, applied before the federated filter as in ``LVISResults``).
    """
    picked = checked_detections(gt.imgs, lvis.limit_detections(results), iou_type)
    return gt.loadRes(picked)
