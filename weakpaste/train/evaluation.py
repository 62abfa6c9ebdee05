"""The ``eval`` stage: a checkpoint's predictions on a COCO or LVIS set, and their AP.

``predict`` runs the model image by image; ``evaluate_model`` scores the predictions with
``weakpaste.evaluate.detection`` (whose docstring defines every metric and the frequency
buckets) and writes ``metrics.json`` and ``predictions.json``; ``run_eval`` is the command
(a checkpoint, or a results file with ``--predictions``). LVIS's test-time settings apply
under the LVIS protocol: 300 detections per image, score threshold 1e-4.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.manifest import file_sha256
from weakpaste.core.options import flag_of, flags_of, option
from weakpaste.core.run import RunOptions, StageInputs, StageRun
from weakpaste.evaluate.detection import (
    IOU_TYPES,
    LVIS_DETECTIONS,
    LVIS_SCORE_THRESHOLD,
    TrainingClasses,
    _metrics,
)
from weakpaste.io.images import read_image
from weakpaste.io.results import read_predictions
from weakpaste.models.weights import CHECKPOINT_FLAG
from weakpaste.ops.masks import encode_many
from weakpaste.structures import ImageRecord
from weakpaste.train import data as tdata
from weakpaste.train.config import EvalConfig
from weakpaste.train.model import load_checkpoint, model_from_checkpoint, resolve_device

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


def _eval_stage(out_dir: str | os.PathLike, run: RunOptions,
                inputs: Sequence[str | os.PathLike | None]) -> StageRun:
    """The evaluation's run in ``out_dir``: nothing to resume, so a taken folder gets the
    shared no-``--resume`` refusal."""
    return StageRun("eval", run, inputs=inputs, resumable=False, out=out_dir)


def _write_eval(stage: StageRun, metrics: dict, results: list[dict] | None, *, counts: dict,
                notes: list[str]) -> None:
    atomic_write_bytes(stage.out / "metrics.json", json.dumps(metrics, indent=2).encode())
    if results is not None:
        atomic_write_bytes(stage.out / "predictions.json",
                           json.dumps(results, separators=(",", ":")).encode())
    stage.finish(counts, extra={"notes": notes})


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
    spec = tdata.parse_data_spec(data, option=flag_of(EvalInputs, "data"))
    gt = tdata.load_spec(spec)
    mapping, notes = tdata.map_eval_categories(class_names, gt)
    categories = {i + 1: mapping[n] for i, n in enumerate(class_names) if n in mapping}
    run = RunOptions(out=str(out_dir), overwrite=overwrite, quiet=not progress)
    with _eval_stage(out_dir, run, [spec.json, spec.images, *inputs]) as stage:
        stage.start({"data": str(spec), "source": source},
                    inputs={str(spec.json): file_sha256(spec.json)})
        if gt.format == "lvis":
            notes.append(_lvis_test_settings(model))
        items = [(gt.images_dir, rec) for rec in gt.records]
        results = predict(model.to(device), items, categories, device=device,
                          mask_threshold=config.mask_threshold, progress=progress)
        metrics = _metrics(spec.json, gt, results, training or TrainingClasses(), source,
                           notes)
        _write_eval(stage, metrics, results,
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
                           tset.frequency, given_as=tspec.option)


def _checkpoint_training(ckpt: Mapping) -> TrainingClasses:
    counts, freq = ckpt.get("train_image_counts"), ckpt.get("train_frequency")
    return TrainingClasses(
        None if counts is None else {str(k): int(v) for k, v in counts.items()},
        None if freq is None else {str(k): str(v) for k, v in freq.items()})


@dataclass(frozen=True)
class EvalInputs(StageInputs):
    """The inputs of ``eval``.

    Attributes:
        data: ``COCO_JSON:IMAGES_DIR`` (the images are needed with ``checkpoint`` only); an
            LVIS file is evaluated with LVIS's protocol.
        checkpoint: a ``weakpaste train`` checkpoint.
        predictions: a COCO results JSON (exclusive with ``checkpoint``).
        train: a COCO or LVIS JSON whose LVIS ``frequency`` (else per-class image counts)
            define rare/common/frequent; default: see the module docstring.
    """

    data: str | tdata.DataSpec = option(
        metavar="COCO_JSON:IMAGES_DIR",
        help="ground truth (the images are needed with --checkpoint only); an LVIS file is "
             "evaluated with LVIS's federated protocol")
    checkpoint: str | os.PathLike | None = option(None, flag=CHECKPOINT_FLAG, metavar="CKPT",
                                                  help="a 'weakpaste train' checkpoint")
    predictions: str | os.PathLike | None = option(None, metavar="PRED_JSON",
                                                   help="a COCO results JSON")
    train: str | tdata.DataSpec | None = option(
        None, metavar="COCO_JSON",
        help="training set whose LVIS frequencies, else images per class, define rare "
             "(1-10), common (11-100) and frequent (>100) classes (default: an LVIS ground "
             "truth's frequencies, else the checkpoint's)")


def run_eval(config: EvalConfig, inputs: EvalInputs, run: RunOptions) -> dict:
    """``weakpaste eval``: evaluate a checkpoint, or a COCO results file, on a COCO or LVIS set.

    Args:
        config: device and mask threshold.
        inputs: the ground truth and the checkpoint or the predictions (see ``EvalInputs``).
        run: ``out`` (default ``eval-<data stem>`` beside the checkpoint's run folder, or the
            predictions file), ``overwrite`` and ``quiet``; an evaluation is not resumable.

    Returns:
        The metrics written to ``OUT/metrics.json``; ``info.notes`` holds remarks about the
        input.

    Raises:
        WeakpasteError: bad input (see the messages).
    """
    checkpoint, predictions = inputs.checkpoint, inputs.predictions
    if (checkpoint is None) == (predictions is None):
        flags = flags_of(EvalInputs)
        raise WeakpasteError(f"pass either {flags['checkpoint']} CKPT or "
                             f"{flags['predictions']} PRED_JSON")
    spec = tdata.parse_data_spec(inputs.data, option=flag_of(EvalInputs, "data"),
                                 images_required=checkpoint is not None)
    tspec = (tdata.parse_data_spec(inputs.train, option=flag_of(EvalInputs, "train"),
                                      images_required=False)
             if inputs.train is not None else None)
    training = _training(tspec)
    anchor = Path(checkpoint if checkpoint is not None else predictions)
    out_dir = Path(run.out) if run.out is not None else _default_out(anchor, spec.json)
    extra_inputs = [anchor, tspec.json if tspec is not None else None]
    if checkpoint is not None:
        resolve_device(config.device)  # before reading a large checkpoint
        ckpt = load_checkpoint(checkpoint)
        model, mconfig = model_from_checkpoint(ckpt, checkpoint)
        return evaluate_model(model, spec, out_dir, class_names=mconfig.class_names,
                              training=training or _checkpoint_training(ckpt), config=config,
                              source=str(checkpoint), inputs=extra_inputs,
                              overwrite=run.overwrite, progress=run.progress)
    gt = tdata.load_spec(spec, check_files=False)
    results, notes = read_predictions(predictions, gt)
    with _eval_stage(out_dir, run, [spec.json, spec.images, *extra_inputs]) as stage:
        stage.start({"data": str(spec), "source": str(predictions)},
                    inputs={str(spec.json): file_sha256(spec.json),
                            str(predictions): file_sha256(predictions)})
        metrics = _metrics(spec.json, gt, results, training or TrainingClasses(),
                           str(predictions), notes)
        _write_eval(stage, metrics, None, notes=notes,
                    counts={"images": len(gt.records), "detections": len(results)})
    return metrics


__all__ = ["LVIS_DETECTIONS", "LVIS_SCORE_THRESHOLD", "predict", "evaluate_model", "EvalInputs",
           "run_eval"]
