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
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakpaste.errors import WeakpasteError
from weakpaste.io.coco import (
    CocoDataset,
    evaluation_detections,
    evaluation_document,
    evaluation_ground_truth,
    frequency_bucket,
    is_federated,
    lvis_detections,
    lvis_ground_truth,
)
from weakpaste.io.images import atomic_write_bytes, read_image
from weakpaste.io.results import read_predictions
from weakpaste.manifest import (
    check_not_an_input,
    file_sha256,
    prepare_output_dir,
    write_manifest,
)
from weakpaste.ops.masks import encode_many
from weakpaste.structures import ImageRecord
from weakpaste.train import data as tdata
from weakpaste.train.config import EvalConfig
from weakpaste.train.model import load_checkpoint, model_from_checkpoint, resolve_device

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
        explicit: given with ``--train``: wins over the ground truth's own frequencies.
    """

    image_counts: Mapping[str, int] | None = None
    frequency: Mapping[str, str] | None = None
    explicit: bool = False


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
    counts = tdata.class_image_counts([r for ds in datasets for r in ds.records], names)
    out: dict[str, str] = {}
    for ds in datasets:
        for name, bucket in ds.frequency.items():
            out.setdefault(name, bucket)
    return {n: out.get(n) or frequency_bucket(counts[n]) for n in names}


# --------------------------------------------------------------------------------------------
# Predicting


def predict(model: torch.nn.Module, items: Sequence[tuple[Path | None, ImageRecord]],
            categories: Mapping[int, int], *, device: torch.device | str = "cpu",
            mask_threshold: float = 0.5, progress: bool = True) -> list[dict]:
    """Run a Mask R-CNN over images and return COCO results.

    Args:
        model: torchvision Mask R-CNN.
        items: (images folder, record) pairs; results carry the records' image ids.
        categories: model label (1..K) -> the evaluation file's category id; detections of
            other labels are dropped.
        device: where the model runs.
        mask_threshold: mask probability above which a pixel belongs to the instance.
        progress: tqdm progress bar.

    Returns:
        One dict per detection: ``image_id``, ``category_id``, ``bbox`` (xywh), ``score``,
        ``segmentation`` (compressed RLE, ``counts`` a str).
    """
    from tqdm import tqdm

    model.eval()
    device = torch.device(device)
    results = []
    with torch.inference_mode():
        for folder, rec in tqdm(items, desc="eval", unit="img", disable=not progress):
            rgb = read_image(Path(folder or ".") / rec.file_name)
            image = torch.from_numpy(rgb).permute(2, 0, 1).to(device, torch.float32) / 255.0
            pred = model([image])[0]
            labels = pred["labels"].cpu().numpy()
            scores = pred["scores"].cpu().numpy()
            boxes = pred["boxes"].cpu().numpy().astype(np.float64)
            masks = (pred["masks"][:, 0] > mask_threshold).cpu().numpy()
            rles = encode_many(masks)
            for k, label in enumerate(labels):
                cat = categories.get(int(label))
                if cat is None:
                    continue
                x0, y0, x1, y1 = boxes[k]
                results.append({"image_id": rec.image_id, "category_id": cat,
                                "bbox": [round(float(x0), 2), round(float(y0), 2),
                                         round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                                "score": round(float(scores[k]), 5),
                                "segmentation": rles[k]})
    return results


# --------------------------------------------------------------------------------------------
# Running


def _write_eval(out: Path, metrics: dict, results: list[dict] | None, *, config: dict,
                inputs: dict, counts: dict, notes: list[str]) -> None:
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    if results is not None:
        atomic_write_bytes(out / "predictions.json",
                           json.dumps(results, separators=(",", ":")).encode())
    write_manifest(out, stage="eval", config=config, inputs=inputs, counts=counts,
                   extra={"notes": notes})


def evaluate_model(model: torch.nn.Module, data: str | tdata.DataSpec, out_dir: str | os.PathLike,
                   *, class_names: Sequence[str], training: TrainingClasses | None = None,
                   config: EvalConfig | None = None, source: str = "",
                   inputs: Sequence[str | os.PathLike] = (), overwrite: bool = True,
                   progress: bool = True) -> dict:
    """Predict on ``data`` with ``model`` and write ``OUT/metrics.json`` + ``predictions.json``.

    On an LVIS ground truth the model keeps up to 300 detections per image with scores down to
    1e-4 (LVIS's test settings), noted in ``info.notes``.

    Args:
        model: Mask R-CNN whose label k is ``class_names[k - 1]``.
        data: ``COCO_JSON:IMAGES_DIR`` of the evaluation set.
        out_dir: output folder (replaced when it holds an earlier weakpaste output and
            ``overwrite``).
        class_names: the model's classes.
        training: the training data's class counts and LVIS frequencies (frequency buckets);
            default: unknown.
        config: device and mask threshold (default ``EvalConfig()``).
        source: what the model is (for the manifest).
        inputs: the model's files besides ``data`` (``out_dir`` may not overlap them).
        overwrite: replace an existing output.
        progress: tqdm progress bar.

    Returns:
        The metrics (see the module docstring), plus an ``info`` block.
    """
    config = config or EvalConfig()
    device = resolve_device(config.device)
    spec = tdata.parse_data_spec(data, option="--data")
    gt = tdata.load_spec(spec)
    mapping, notes = tdata.map_eval_categories(class_names, gt)
    categories = {i + 1: mapping[n] for i, n in enumerate(class_names) if n in mapping}
    out = _prepare_eval_dir(out_dir, overwrite, [spec.json, spec.images, *inputs])
    if gt.format == "lvis":
        notes.append(_lvis_test_settings(model))
    items = [(gt.images_dir, rec) for rec in gt.records]
    results = predict(model.to(device), items, categories, device=device,
                      mask_threshold=config.mask_threshold, progress=progress)
    metrics = _metrics(spec.json, gt, results, training or TrainingClasses(), source, notes)
    _write_eval(out, metrics, results, config={"data": str(spec), "source": source},
                inputs={str(spec.json): file_sha256(spec.json)},
                counts={"images": len(items), "detections": len(results),
                        **{f"{iou}_{k}": metrics[iou][k] for iou in IOU_TYPES
                           for k in ("AP", "AP50", "AP75")}},
                notes=notes)
    return metrics


def _lvis_test_settings(model: torch.nn.Module) -> str:
    """Set a torchvision Mask R-CNN to LVIS's test settings; returns the note saying so."""
    heads = model.roi_heads
    before = (heads.detections_per_img, heads.score_thresh)
    heads.detections_per_img = max(heads.detections_per_img, LVIS_DETECTIONS)
    heads.score_thresh = min(heads.score_thresh, LVIS_SCORE_THRESHOLD)
    return (f"LVIS ground truth: up to {heads.detections_per_img} detections per image with "
            f"scores from {heads.score_thresh:g} (model: {before[0]}, {before[1]:g}), LVIS's "
            "test settings")


def _frequency(gt: CocoDataset, training: TrainingClasses
               ) -> tuple[Mapping[str, str | None] | None, str | None]:
    """The frequency buckets and where they come from (see the module docstring)."""
    counted = frequencies(training.image_counts)
    if training.explicit:
        if training.frequency:
            return training.frequency, "LVIS categories of --train"
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


def _prepare_eval_dir(out_dir: str | os.PathLike, overwrite: bool,
                      inputs: Sequence[str | os.PathLike | None]) -> Path:
    out = Path(out_dir)
    check_not_an_input(out, inputs)
    # An evaluation has nothing to resume: say so rather than the generic --resume hint.
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise WeakpasteError(f"{out}: output folder is not empty; pass --overwrite to replace "
                             "it or choose another --out")
    return prepare_output_dir(out, overwrite=overwrite, stage="eval", inputs=inputs)


def _default_out(anchor: Path, data_json: Path) -> Path:
    parent = anchor.parent
    if parent.name == "checkpoints":
        parent = parent.parent
    return parent / f"eval-{data_json.stem}"


def _training(tspec: tdata.DataSpec | None) -> TrainingClasses | None:
    """Image counts and LVIS frequencies of the ``--train`` file, or None."""
    if tspec is None:
        return None
    tset = tdata.load_spec(tspec, check_files=False)
    return TrainingClasses(tdata.class_image_counts(tset.records, list(tset.categories)),
                           tset.frequency, explicit=True)


def _checkpoint_training(ckpt: Mapping) -> TrainingClasses:
    counts, freq = ckpt.get("train_image_counts"), ckpt.get("train_frequency")
    return TrainingClasses(
        None if counts is None else {str(k): int(v) for k, v in counts.items()},
        None if freq is None else {str(k): str(v) for k, v in freq.items()})


def run_eval(config: EvalConfig, data: str | tdata.DataSpec,
             out_dir: str | os.PathLike | None = None, *,
             checkpoint: str | os.PathLike | None = None,
             predictions: str | os.PathLike | None = None,
             train: str | tdata.DataSpec | None = None, overwrite: bool = False,
             progress: bool = True) -> dict:
    """``weakpaste eval``: evaluate a checkpoint, or a COCO results file, on a COCO or LVIS set.

    Args:
        config: device and mask threshold.
        data: ``COCO_JSON:IMAGES_DIR`` (the images are needed with ``checkpoint`` only); an
            LVIS file is evaluated with LVIS's protocol.
        out_dir: output folder; default ``eval-<data stem>`` beside the checkpoint's run
            folder (or the predictions file).
        checkpoint: a ``weakpaste train`` checkpoint.
        predictions: a COCO results JSON (exclusive with ``checkpoint``).
        train: a COCO or LVIS JSON whose LVIS ``frequency`` (else per-class image counts)
            define rare/common/frequent; default: see the module docstring.
        overwrite: replace an existing output.
        progress: tqdm progress bar.

    Returns:
        The metrics written to ``OUT/metrics.json``; ``info.notes`` holds remarks about the
        input.

    Raises:
        WeakpasteError: bad input (see the messages).
    """
    if (checkpoint is None) == (predictions is None):
        raise WeakpasteError("pass either --checkpoint CKPT or --predictions PRED_JSON")
    spec = tdata.parse_data_spec(data, option="--data", images_required=checkpoint is not None)
    tspec = (tdata.parse_data_spec(train, option="--train", images_required=False)
             if train is not None else None)
    training = _training(tspec)
    anchor = Path(checkpoint if checkpoint is not None else predictions)
    out_dir = Path(out_dir) if out_dir is not None else _default_out(anchor, spec.json)
    extra_inputs = [anchor, tspec.json if tspec is not None else None]
    if checkpoint is not None:
        resolve_device(config.device)  # before reading a large checkpoint
        ckpt = load_checkpoint(checkpoint)
        model, mconfig = model_from_checkpoint(ckpt, checkpoint)
        return evaluate_model(model, spec, out_dir, class_names=mconfig.class_names,
                              training=training or _checkpoint_training(ckpt), config=config,
                              source=str(checkpoint), inputs=extra_inputs, overwrite=overwrite,
                              progress=progress)
    gt = tdata.load_spec(spec, check_files=False)
    results, notes = read_predictions(predictions, gt)
    out = _prepare_eval_dir(out_dir, overwrite, [spec.json, spec.images, *extra_inputs])
    metrics = _metrics(spec.json, gt, results, training or TrainingClasses(), str(predictions),
                       notes)
    _write_eval(out, metrics, None, config={"data": str(spec), "source": str(predictions)},
                inputs={str(spec.json): file_sha256(spec.json),
                        str(predictions): file_sha256(predictions)},
                counts={"images": len(gt.records), "detections": len(results)}, notes=notes)
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


__all__ = ["IOU_TYPES", "METRIC_KEYS", "TrainingClasses", "frequency_bucket", "summarize",
           "evaluate_results", "frequencies", "lvis_frequencies", "training_frequency", "predict",
           "read_predictions", "evaluate_model", "run_eval", "format_metrics"]
