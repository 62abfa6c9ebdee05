"""COCO evaluation of Mask R-CNN predictions, with per-class and long-tail AP.

Metrics (pycocotools ``COCOeval``, for ``bbox`` and ``segm``), as fractions in [0, 1]:

* ``AP`` (mean over IoU 0.50:0.95), ``AP50``, ``AP75``, ``APs``/``APm``/``APl`` (areas below
  32², between 32² and 96², above 96² pixels), all at 100 detections per image;
* ``per_class``: each class's AP, AP50 and AP75 from ``COCOeval.eval["precision"]``, with the
  number of training images that contain it and its frequency bucket;
* ``APr``/``APc``/``APf``: AP over the classes that are *rare* (1–10 training images),
  *common* (11–100) or *frequent* (more than 100), the LVIS rule. The counts come from the
  training data (stored in a weakpaste checkpoint, or ``--train COCO_JSON``) or, for LVIS files,
  from the categories' own ``frequency`` field. Like LVIS, a bucket's AP averages the
  precision entries of all its classes.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakpaste.errors import WeakpasteError
from weakpaste.io.coco import (
    CocoDataset,
    evaluation_detections,
    evaluation_ground_truth,
)
from weakpaste.io.images import atomic_write_bytes, read_image
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
RARE_MAX = 10
COMMON_MAX = 100
BUCKETS: tuple[str, ...] = ("r", "c", "f")


def frequency_bucket(train_images: int) -> str | None:
    """LVIS frequency group of a class seen in ``train_images`` training images.

    Returns:
        "r" (1–10), "c" (11–100), "f" (> 100), or None for a class never seen.
    """
    if train_images <= 0:
        return None
    if train_images <= RARE_MAX:
        return "r"
    return "c" if train_images <= COMMON_MAX else "f"


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


def evaluate_results(gt_path: str | os.PathLike, results: Sequence[dict], *,
                     frequency: Mapping[str, str | None] | None = None,
                     train_images: Mapping[str, int] | None = None) -> dict:
    """COCOeval of COCO-format results against a ground-truth file, for bbox and segm.

    Args:
        gt_path: COCO instances JSON already validated by ``load_coco``.
        results: COCO results (``image_id``, ``category_id``, ``score``, ``bbox`` and/or
            ``segmentation``); ids must be the file's.
        frequency: class name -> LVIS bucket, for APr/APc/APf.
        train_images: class name -> training images (reported per class).

    Returns:
        {"segm": {...}, "bbox": {...}}; an IoU type without any result of its kind (e.g.
        box-only results) still evaluates, scoring 0.
    """
    from pycocotools.cocoeval import COCOeval

    gt = evaluation_ground_truth(gt_path)
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    out = {}
    for iou_type in IOU_TYPES:
        try:
            dt = evaluation_detections(gt, results, iou_type)
        except ValueError as err:
            raise WeakpasteError(f"predictions: {err}; write RLE or polygon masks of the "
                                 "image's size") from None
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
        out[iou_type] = summarize(ev, [names[c] for c in ev.params.catIds], frequency,
                                  train_images)
    return out


def frequencies(counts: Mapping[str, int] | None) -> dict[str, str | None] | None:
    """Class name -> LVIS bucket from training image counts (None stays None)."""
    return None if counts is None else {n: frequency_bucket(int(k)) for n, k in counts.items()}


def lvis_frequencies(gt_path: str | os.PathLike) -> dict[str, str | None] | None:
    """The ``frequency`` field ("r"/"c"/"f") of an LVIS file's categories, or None."""
    doc = json.loads(Path(gt_path).read_text(encoding="utf-8"))
    cats = doc.get("categories", [])
    if cats and all(c.get("frequency") in BUCKETS for c in cats):
        return {c["name"]: c["frequency"] for c in cats}
    return None


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
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeakpasteError(f"{path}: no such file; pass a COCO results JSON "
                             "(e.g. OUT/predictions.json of 'weakpaste eval')") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
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
        if r.get("image_id") not in image_ids:
            raise WeakpasteError(f"{path}: entry {i} is for image id {r.get('image_id')!r}, which "
                                 f"is not in {gt.path}; evaluate against the data set the "
                                 "predictions were made on")
        score = r.get("score", default_score)
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise WeakpasteError(f"{path}: entry {i} has no numeric 'score'")
        bbox = r.get("bbox")
        if bbox is not None and not (isinstance(bbox, list) and len(bbox) == 4 and
                                     all(isinstance(v, int | float) for v in bbox)):
            raise WeakpasteError(f"{path}: entry {i} has a malformed bbox {bbox!r}; expected "
                                 "[x, y, width, height]")
        if not bbox and not r.get("segmentation"):
            raise WeakpasteError(f"{path}: entry {i} has neither 'bbox' nor 'segmentation'")
        cat = r.get("category_id")
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
                   *, class_names: Sequence[str], train_image_counts: Mapping[str, int] | None,
                   config: EvalConfig | None = None, source: str = "",
                   inputs: Sequence[str | os.PathLike] = (), overwrite: bool = True,
                   progress: bool = True) -> dict:
    """Predict on ``data`` with ``model`` and write ``OUT/metrics.json`` + ``predictions.json``.

    Args:
        model: Mask R-CNN whose label k is ``class_names[k - 1]``.
        data: ``COCO_JSON:IMAGES_DIR`` of the evaluation set.
        out_dir: output folder (replaced when it holds an earlier weakpaste output and
            ``overwrite``).
        class_names: the model's classes.
        train_image_counts: training images per class (frequency buckets); None: unknown.
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
    items = [(gt.images_dir, rec) for rec in gt.records]
    results = predict(model.to(device), items, categories, device=device,
                      mask_threshold=config.mask_threshold, progress=progress)
    metrics = _metrics(spec.json, results, train_image_counts, source, len(items), notes)
    _write_eval(out, metrics, results, config={"data": str(spec), "source": source},
                inputs={str(spec.json): file_sha256(spec.json)},
                counts={"images": len(items), "detections": len(results),
                        **{f"{iou}_{k}": metrics[iou][k] for iou in IOU_TYPES
                           for k in ("AP", "AP50", "AP75")}},
                notes=notes)
    return metrics


def _metrics(gt_json: Path, results: list[dict], counts: Mapping[str, int] | None, source: str,
             images: int, notes: list[str]) -> dict:
    """``evaluate_results`` with the frequency buckets of ``counts`` (else an LVIS file's) and
    the ``info`` block."""
    freq = frequencies(counts)
    if freq is None:
        freq = lvis_frequencies(gt_json)
    metrics = evaluate_results(gt_json, results, frequency=freq, train_images=counts)
    metrics["info"] = {"images": images, "detections": len(results), "source": source,
                       "frequency_source": ("training data" if counts is not None
                                            else "LVIS categories" if freq else None),
                       "notes": notes}
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


def _train_counts(tspec: tdata.DataSpec | None) -> dict[str, int] | None:
    """Training images per class of the ``--train`` file, or None."""
    if tspec is None:
        return None
    tset = tdata.load_spec(tspec, check_files=False)
    return tdata.class_image_counts(tset.records, list(tset.categories))


def run_eval(config: EvalConfig, data: str | tdata.DataSpec,
             out_dir: str | os.PathLike | None = None, *,
             checkpoint: str | os.PathLike | None = None,
             predictions: str | os.PathLike | None = None,
             train: str | tdata.DataSpec | None = None, overwrite: bool = False,
             progress: bool = True) -> dict:
    """``weakpaste eval``: evaluate a checkpoint, or a COCO results file, on a COCO set.

    Args:
        config: device and mask threshold.
        data: ``COCO_JSON:IMAGES_DIR`` (the images are needed with ``checkpoint`` only).
        out_dir: output folder; default ``eval-<data stem>`` beside the checkpoint's run
            folder (or the predictions file).
        checkpoint: a ``weakpaste train`` checkpoint.
        predictions: a COCO results JSON (exclusive with ``checkpoint``).
        train: a COCO JSON whose per-class image counts define rare/common/frequent; default:
            the counts stored in the checkpoint, else an LVIS file's category frequencies.
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
    counts = _train_counts(tspec)
    anchor = Path(checkpoint if checkpoint is not None else predictions)
    out_dir = Path(out_dir) if out_dir is not None else _default_out(anchor, spec.json)
    extra_inputs = [anchor, tspec.json if tspec is not None else None]
    if checkpoint is not None:
        resolve_device(config.device)  # before reading a large checkpoint
        ckpt = load_checkpoint(checkpoint)
        model, mconfig = model_from_checkpoint(ckpt, checkpoint)
        if counts is None and ckpt.get("train_image_counts") is not None:
            counts = {str(k): int(v) for k, v in ckpt["train_image_counts"].items()}
        return evaluate_model(model, spec, out_dir, class_names=mconfig.class_names,
                              train_image_counts=counts, config=config, source=str(checkpoint),
                              inputs=extra_inputs, overwrite=overwrite, progress=progress)
    gt = tdata.load_spec(spec, check_files=False)
    results, notes = read_predictions(predictions, gt)
    out = _prepare_eval_dir(out_dir, overwrite, [spec.json, spec.images, *extra_inputs])
    metrics = _metrics(spec.json, results, counts, str(predictions), len(gt.records), notes)
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


__all__ = ["IOU_TYPES", "METRIC_KEYS", "frequency_bucket", "summarize", "evaluate_results",
           "frequencies", "lvis_frequencies", "predict", "read_predictions", "evaluate_model",
           "run_eval", "format_metrics"]
