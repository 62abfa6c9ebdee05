"""COCO and LVIS evaluation of Mask R-CNN predictions, with per-class and long-tail AP.

Metrics (for ``bbox`` and ``segm``), as fractions in [0, 1]:

* ``AP`` (mean over IoU 0.50:0.95), ``AP50``, ``AP75``, ``APs``/``APm``/``APl`` (areas below
  32², between 32² and 96², above 96² pixels);
* ``per_class``: each class's AP, AP50 and AP75 from the evaluator's precision array, with the
  number of training images that contain it and its frequency bucket;
* ``APr``/``APc``/``APf``: AP over the classes that are *rare* (1–10 training images),
  *common* (11–100) or *frequent* (more than 100), the LVIS rule. Like LVIS, a bucket's AP
  averages the precision entries of all its classes.

Two protocols, chosen by the ground truth (``info.protocol``):

* ``coco``: pycocotools' ``COCOeval``, 100 detections per image;
* ``lvis`` for an LVIS file (federated labels): LVIS's evaluation, run by faster-coco-eval's
  LVIS mode — each image keeps its 300 best detections, a detection of a class that is neither
  annotated in its image nor listed in its ``neg_category_ids`` is not evaluated, and unmatched
  detections of its ``not_exhaustive_category_ids`` are not false positives. Buckets come from
  the file's category ``frequency``.

Buckets come from, first: ``--train`` (its LVIS ``frequency``, else its image counts); then the
ground truth's ``frequency`` under the LVIS protocol; then the training data stored in a
weakpaste checkpoint (its LVIS ``frequency``, else its counts); then a COCO file's own
``frequency`` field.

A value is None (``null`` in JSON) when it is undefined: no ground truth for it (e.g. no small
objects), an empty bucket, or unknown training counts. A class of the evaluation set that the
model cannot predict keeps its ground truth, so it scores 0.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.evaluate.coco import (
    evaluation_detections,
    evaluation_document,
    evaluation_ground_truth,
    is_federated,
    lvis_detections,
    lvis_ground_truth,
)
from weakpaste.io.coco import CocoDataset, class_image_counts, frequency_bucket

IOU_TYPES: tuple[str, ...] = ("segm", "bbox")
METRIC_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
BUCKETS: tuple[str, ...] = ("r", "c", "f")
# LVIS's test-time settings (LVIS v1 and FreeSeg §4.1): 300 detections per image, and a score
# threshold low enough to let the rare classes' low scores through.
LVIS_DETECTIONS = 300
LVIS_SCORE_THRESHOLD = 1e-4


@dataclass(frozen=True)
class TrainingClasses:
    """What is known of the training data's classes, for the frequency buckets.

    Attributes:
        image_counts: class -> training images containing it (None: unknown).
        frequency: class -> the training files' LVIS ``frequency`` (None: not LVIS).
        given_as: the flag the training file was given with (``eval --train``), which makes
            it win over the ground truth's own frequencies; None: not given by the user.
    """

    image_counts: Mapping[str, int] | None = None
    frequency: Mapping[str, str] | None = None
    given_as: str | None = None


def _mean_valid(p: np.ndarray) -> float | None:
    """COCO's average of precision entries, skipping -1 (no ground truth); None if none left."""
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else None


def summarize(evaluator, class_names: Sequence[str], frequency: Mapping[str, str | None] | None,
              train_images: Mapping[str, int] | None = None) -> dict:
    """Metrics of an evaluated and accumulated ``COCOeval``.

    Args:
        evaluator: a ``COCOeval`` after ``evaluate()`` and ``accumulate()``.
        class_names: names of ``evaluator.params.catIds``, in that order.
        frequency: class name -> "r" / "c" / "f" / None; None when unknown.
        train_images: class name -> training images, reported per class.

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "per_class"}.
    """
    prec = evaluator.eval["precision"]  # (T IoUs, R recalls, K classes, A areas, M maxDets)
    thrs = evaluator.params.iouThrs
    i50 = int(np.argmin(np.abs(thrs - 0.5)))
    i75 = int(np.argmin(np.abs(thrs - 0.75)))
    out: dict[str, Any] = {
        "AP": _mean_valid(prec[:, :, :, 0, -1]), "AP50": _mean_valid(prec[i50, :, :, 0, -1]),
        "AP75": _mean_valid(prec[i75, :, :, 0, -1]), "APs": _mean_valid(prec[:, :, :, 1, -1]),
        "APm": _mean_valid(prec[:, :, :, 2, -1]), "APl": _mean_valid(prec[:, :, :, 3, -1])}
    for bucket in BUCKETS:
        ks = [k for k, n in enumerate(class_names)
              if frequency is not None and frequency.get(n) == bucket]
        out[f"AP{bucket}"] = _mean_valid(prec[:, :, ks, 0, -1]) if ks else None
    per_class = {}
    for k, name in enumerate(class_names):
        per_class[name] = {
            "AP": _mean_valid(prec[:, :, k, 0, -1]), "AP50": _mean_valid(prec[i50, :, k, 0, -1]),
            "AP75": _mean_valid(prec[i75, :, k, 0, -1]),
            "train_images": None if train_images is None else train_images.get(name),
            "frequency": None if frequency is None else frequency.get(name)}
    out["per_class"] = per_class
    return out


def _evaluator(iou_type: str, gt, dt, protocol: str):
    """An evaluated and accumulated ``COCOeval`` (pycocotools) or LVIS evaluator
    (faster-coco-eval's LVIS mode, 300 detections per image)."""
    if protocol == "lvis":
        from faster_coco_eval import COCOeval_faster

        ev = COCOeval_faster(gt, dt, iou_type, lvis_style=True, print_function=lambda *a: None)
        ev.params.maxDets = [LVIS_DETECTIONS]
        ev.evaluate()
        ev.accumulate()
        return ev
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
    return ev


def evaluate_results(gt_path: str | os.PathLike, results: Sequence[dict], *,
                     frequency: Mapping[str, str | None] | None = None,
                     train_images: Mapping[str, int] | None = None,
                     protocol: str | None = None) -> dict:
    """Evaluate COCO-format results against a ground-truth file, for bbox and segm.

    Args:
        gt_path: COCO or LVIS instances JSON already validated by ``load_coco``.
        results: COCO results (``image_id``, ``category_id``, ``score``, ``bbox`` and/or
            ``segmentation``); ids must be the file's.
        frequency: class name -> LVIS bucket, for APr/APc/APf.
        train_images: class name -> training images (reported per class).
        protocol: "coco" (COCOeval) or "lvis" (federated, 300 detections per image);
            default: "lvis" for a file with LVIS's federated labels.

    Returns:
        {"segm": {...}, "bbox": {...}}; an IoU type without any result of its kind (e.g.
        box-only results) still evaluates, scoring 0.
    """
    doc = evaluation_document(gt_path)
    protocol = protocol or ("lvis" if is_federated(doc) else "coco")
    if protocol not in ("coco", "lvis"):
        raise ValueError(f"protocol must be 'coco' or 'lvis', got {protocol!r}")
    gt = lvis_ground_truth(doc, frequency) if protocol == "lvis" else \
        evaluation_ground_truth(doc)
    names = {c["id"]: c["name"] for c in doc["categories"]}
    out = {}
    for iou_type in IOU_TYPES:
        try:
            dt = (lvis_detections if protocol == "lvis" else evaluation_detections)(
                gt, results, iou_type)
        except ValueError as err:
            raise WeakpasteError(f"predictions: {err}; write RLE or polygon masks of the "
                                 "image's size") from None
        ev = _evaluator(iou_type, gt, dt, protocol)
        out[iou_type] = summarize(ev, [names[c] for c in ev.params.catIds], frequency,
                                  train_images)
    return out


def frequencies(counts: Mapping[str, int] | None) -> dict[str, str | None] | None:
    """Class name -> LVIS bucket from training image counts (None stays None)."""
    return None if counts is None else {n: frequency_bucket(int(k)) for n, k in counts.items()}


def lvis_frequencies(gt_path: str | os.PathLike) -> dict[str, str] | None:
    """The ``frequency`` field ("r"/"c"/"f") of a file's categories, or None."""
    from weakpaste.io.coco import load_coco

    return load_coco(gt_path, require_masks=False, check_files=False).frequency


def training_frequency(datasets: Sequence[CocoDataset],
                       names: Sequence[str]) -> dict[str, str] | None:
    """Class -> LVIS ``frequency`` of training files that all give one (first file wins), or
    None; a class none of them knows gets its bucket from ``class_image_counts``."""
    if not datasets or any(ds.frequency is None for ds in datasets):
        return None
    counts = class_image_counts([r for ds in datasets for r in ds.records], names)
    out: dict[str, str] = {}
    for ds in datasets:
        for name, bucket in ds.frequency.items():
            out.setdefault(name, bucket)
    return {n: out.get(n) or frequency_bucket(counts[n]) for n in names}


def _frequency(gt: CocoDataset, training: TrainingClasses
               ) -> tuple[Mapping[str, str | None] | None, str | None]:
    """The frequency buckets and where they come from (see the module docstring)."""
    counted = frequencies(training.image_counts)
    if training.given_as:
        if training.frequency:
            return training.frequency, f"LVIS categories of {training.given_as}"
        return counted, "training data"
    if gt.format == "lvis" and gt.frequency:
        return gt.frequency, "LVIS categories"
    if training.frequency:
        return training.frequency, "LVIS categories of the training data"
    if counted is not None:
        return counted, "training data"
    return (gt.frequency, "LVIS categories") if gt.frequency else (None, None)


def _metrics(gt_json: Path, gt: CocoDataset, results: list[dict], training: TrainingClasses,
             source: str, notes: list[str]) -> dict:
    """``evaluate_results`` with the protocol of ``gt``, the buckets of ``_frequency`` and the
    ``info`` block."""
    freq, freq_source = _frequency(gt, training)
    metrics = evaluate_results(gt_json, results, frequency=freq,
                               train_images=training.image_counts, protocol=gt.format)
    metrics["info"] = {"images": len(gt.records), "detections": len(results), "source": source,
                       "protocol": gt.format, "frequency_source": freq_source, "notes": notes}
    return metrics


def _pct(v: float | None) -> str:
    return "    -" if v is None else f"{100 * v:5.1f}"


def format_metrics(metrics: Mapping, *, per_class: bool = True, max_classes: int = 40) -> str:
    """The metrics as a text table, in percent ("-" where undefined)."""
    lines = ["       " + " ".join(f"{k:>5}" for k in METRIC_KEYS)]
    for iou in IOU_TYPES:
        lines.append(f"{iou:<6} " + " ".join(_pct(metrics[iou].get(k)) for k in METRIC_KEYS))
    if per_class:
        rows = metrics["segm"]["per_class"]
        width = max([len(n) for n in rows] + [5])
        lines += ["", f"{'class':<{width}}  segm AP  AP50  bbox AP  train images  frequency"]
        for name in list(rows)[:max_classes]:
            seg, box = rows[name], metrics["bbox"]["per_class"][name]
            n = seg.get("train_images")
            lines.append(f"{name:<{width}}    {_pct(seg['AP'])} {_pct(seg['AP50'])}    "
                         f"{_pct(box['AP'])}  {'-' if n is None else n:>12}  "
                         f"{seg.get('frequency') or '-':>9}")
        if len(rows) > max_classes:
            lines.append(f"… {len(rows) - max_classes} more classes in metrics.json")
    return "\n".join(lines)
