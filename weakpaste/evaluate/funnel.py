"""Where F-EM loses the right segment: recall@0.5 at every stage of the choice.

``weakpaste mine fem --save-baselines`` writes, per (image, class) before any threshold, the
segments of each stage of its funnel (``weakpaste.mine.fem.FUNNEL``) as COCO files under
``BANK/baselines/``. With ground truth, ``funnel`` reports for each stage present the share of
labelled (image, class) pairs with a segment of IoU >= 0.5 with a GT instance of the class
(``pair_yield@0.5`` of ``evaluate_masks``: the stage's recall), then the kept segments
(``pseudo_labels.json``: precision and pair yield), the Grad-CAM's IoU with the ground truth
(``cam.json``: the thresholded map of each pair) and its pointing game (``cam_peak.json``: the
map's maximum inside a GT mask / a GT box of the class). ``precision_yield`` gives the curve
of a one-pick-per-pair file ranked by its scores (e.g. ``evidence_pick.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.options import Config, option
from weakpaste.core.run import OUT, RunOptions, StageInputs, StageRun

STAGES = (("proposals", "all proposals"), ("candidates", "ranked candidates"),
          ("top_n", "step 1's top-n"), ("step1_pick", "step 1's pick"),
          ("em_pick", "EM pick"), ("evidence_pick", "evidence pick"))


def _gt_by_pair(gt) -> dict[tuple[str, str], list[dict]]:
    """(file_name, class) -> the GT instances' RLEs (bytes counts)."""
    from weakpaste.io.rle import bytes_rle

    out: dict[tuple[str, str], list[dict]] = {}
    for rec in gt.records:
        if rec.instances is None:
            continue
        for name, rle in zip(rec.instances.classes, rec.instances.rles, strict=True):
            out.setdefault((rec.file_name, name), []).append(bytes_rle(rle))
    return out


CURVE_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""The shares of the highest-scored predictions ``evaluate-masks`` reports the curve at."""


def scored_picks(pred: str | os.PathLike | Mapping, gt
                 ) -> list[tuple[float | None, bool, tuple[str, str]]]:
    """Per prediction: (score, best IoU >= 0.5 with a GT instance of its class, its pair).

    Args:
        pred: a COCO file of predictions or a bank folder (``load_predictions``), or what
            ``load_predictions`` returned.
        gt: a loaded GT ``CocoDataset``.
    """
    from weakpaste.evaluate.masks import _NameResolver, load_predictions
    from weakpaste.io.rle import bytes_rle

    sizes = {r.file_name: (r.height, r.width) for r in gt.records}
    resolve, pairs = _NameResolver(list(sizes)), _gt_by_pair(gt)
    predictions = pred if isinstance(pred, Mapping) else load_predictions(pred, sizes)
    out = []
    for image, items in sorted(predictions.items()):
        name = resolve(image)
        for cls, rle, score in items:
            g = pairs.get((name, cls), []) if name is not None else []
            iou = mask_utils.iou([bytes_rle(rle)], g, [0] * len(g)) if g else np.zeros(1)
            out.append((score, bool(np.max(iou) >= 0.5), (name or image, cls)))
    return out


def curve_of(picks: Sequence[tuple[float | None, bool, tuple[str, str]]], n_pairs: int,
             fractions: Sequence[float] = CURVE_FRACTIONS) -> list[dict]:
    """The precision-yield curve of scored predictions (``scored_picks``), most score first.

    Ties keep the predictions' order; a missing score counts as 0.

    Args:
        picks: (score, correct at IoU 0.5, (image, class) pair) per prediction.
        n_pairs: the GT's labelled (image, class) pairs (the yield's denominator).
        fractions: shares q of the predictions kept, those of highest score.

    Returns:
        Per fraction: {"keep": q, "kept": ceil(q N), "of": N, "precision@0.5",
        "pair_yield@0.5", "random_precision@0.5": the precision of all N, which a random draw
        of any size has in expectation}.
    """
    ranked = sorted(picks, key=lambda p: -(p[0] or 0.0))
    everything = sum(p[1] for p in ranked) / max(len(ranked), 1)
    rows = []
    for q in fractions:
        kept = ranked[:int(np.ceil(q * len(ranked) - 1e-9))]
        right = {p[2] for p in kept if p[1]}
        rows.append({"keep": q, "kept": len(kept), "of": len(ranked),
                     "precision@0.5": sum(p[1] for p in kept) / max(len(kept), 1),
                     "pair_yield@0.5": len(right) / max(n_pairs, 1),
                     "random_precision@0.5": everything})
    return rows


def precision_yield(pred: str | os.PathLike | Mapping, gt,
                    fractions: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
                    ) -> list[dict]:
    """The precision-yield curve of predictions ranked by score (most first).

    Args:
        pred: a COCO file of predictions, e.g. ``baselines/evidence_pick.json``, a bank
            folder, or ``load_predictions``' output.
        gt: the GT COCO file or a loaded data set.
        fractions: shares of the predictions kept, those of highest score.

    Returns:
        ``curve_of``'s rows (yield over the GT's labelled pairs).
    """
    from weakpaste.evaluate.masks import _load_gt

    gt = _load_gt(gt)
    return curve_of(scored_picks(pred, gt), len(_gt_by_pair(gt)), fractions)


def score_curve(pred: str | os.PathLike | Mapping, gt,
                fractions: Sequence[float] = CURVE_FRACTIONS) -> list[dict] | None:
    """``precision_yield`` at ``fractions`` when the predictions carry scores that rank them
    (None when no prediction has a score or all scores are equal: nothing to rank by)."""
    from weakpaste.evaluate.masks import _load_gt

    gt = _load_gt(gt)
    picks = scored_picks(pred, gt)
    scores = {p[0] for p in picks}
    if not picks or scores == {None} or len(scores) < 2:
        return None
    return curve_of(picks, len(_gt_by_pair(gt)), fractions)


def format_curve(rows: list[dict], what: str = "score") -> str:
    """The curve as text lines: q, kept, precision@0.5, pair yield@0.5, points over random."""
    if not rows:
        return ""
    base = rows[0]["random_precision@0.5"]
    lines = [f"precision-yield by {what}: the top q of the {rows[0]['of']} predictions "
             f"(a random draw of any size: precision@0.5 {100 * base:.1f}%)",
             "      q   kept  precision@0.5  pair yield@0.5  vs random"]
    for r in rows:
        lines.append(f"  {r['keep']:5.2f}  {r['kept']:5d}  {100 * r['precision@0.5']:12.1f}%  "
                     f"{100 * r['pair_yield@0.5']:13.1f}%  "
                     f"{100 * (r['precision@0.5'] - base):+8.1f}")
    return "\n".join(lines)


def _pointing(peaks: Path, gt) -> dict[str, float]:
    """Share of the labelled pairs whose Grad-CAM maximum lies in a GT mask / box of the class."""
    from weakpaste.evaluate.masks import load_predictions

    sizes = {r.file_name: (r.height, r.width) for r in gt.records}
    pairs = _gt_by_pair(gt)
    in_mask = in_box = 0
    for image, items in load_predictions(peaks, sizes).items():
        for cls, rle, _ in items:
            ys, xs = np.nonzero(mask_utils.decode({"size": rle["size"],
                                                   "counts": rle["counts"].encode()}))
            if not len(ys) or (image, cls) not in pairs:
                continue
            y, x = int(ys[0]), int(xs[0])
            masks = [mask_utils.decode(g) for g in pairs[(image, cls)]]
            in_mask += any(m[y, x] for m in masks)
            boxes = mask_utils.toBbox(pairs[(image, cls)])
            in_box += any(bx <= x < bx + bw and by <= y < by + bh for bx, by, bw, bh in boxes)
    n = max(len(pairs), 1)
    return {"pointing_mask": in_mask / n, "pointing_box": in_box / n}


def funnel(bank: str | os.PathLike, gt) -> dict | None:
    """The funnel of a mined bank folder (None when it has no ``baselines/candidates.json``).

    Returns:
        {"stages": [{"stage", "name", "predictions", "recall@0.5"}] in funnel order, the last
        one ``kept`` (the bank's ``pseudo_labels.json``, with its ``precision@0.5``),
        "cam": {"mean_iou", "median_iou", "pointing_mask", "pointing_box"} when the files
        exist, "labelled_pairs"}.
    """
    from weakpaste.evaluate.masks import _load_gt, evaluate_masks

    base = Path(bank) / "baselines"
    if not (base / "candidates.json").is_file():
        return None
    gt = _load_gt(gt)
    stages = []
    for stage, name in (*STAGES, ("kept", "kept")):
        path = Path(bank) / "pseudo_labels.json" if stage == "kept" else base / f"{stage}.json"
        if not path.is_file():
            continue
        m = evaluate_masks(str(path), gt, iou_thresholds=(0.5,))["overall"]
        stages.append({"stage": stage, "name": name, "predictions": m["num_predictions"],
                       "recall@0.5": m["pair_yield@0.5"],
                       **({"precision@0.5": m["precision@0.5"]} if stage == "kept" else {})})
    out: dict = {"stages": stages, "labelled_pairs": len(_gt_by_pair(gt))}
    if (base / "cam.json").is_file():
        ious = []
        from weakpaste.evaluate.masks import load_predictions

        sizes = {r.file_name: (r.height, r.width) for r in gt.records}
        pairs = _gt_by_pair(gt)
        for image, items in load_predictions(base / "cam.json", sizes).items():
            for cls, rle, _ in items:
                g = pairs.get((image, cls), [])
                r = {"size": rle["size"], "counts": rle["counts"].encode()}
                ious.append(float(np.max(mask_utils.iou([r], g, [0] * len(g)))) if g else 0.0)
        out["cam"] = {"mean_iou": float(np.mean(ious)) if ious else 0.0,
                      "median_iou": float(np.median(ious)) if ious else 0.0}
        if (base / "cam_peak.json").is_file():
            out["cam"].update(_pointing(base / "cam_peak.json", gt))
    return out


def format_funnel(result: dict) -> str:
    """The funnel as text lines: one per stage, then the Grad-CAM's quality."""
    lines = [f"funnel (recall@0.5 = share of the {result['labelled_pairs']} labelled pairs "
             "with a segment of IoU >= 0.5):"]
    for s in result["stages"]:
        extra = f", precision@0.5 {100 * s['precision@0.5']:.1f}%" if "precision@0.5" in s \
            else ""
        lines.append(f"  {s['name']:<18} {s['predictions']:>7} segments  recall "
                     f"{100 * s['recall@0.5']:5.1f}%{extra}")
    cam = result.get("cam")
    if cam:
        text = (f"  Grad-CAM >= t: IoU with the GT mean {cam['mean_iou']:.3f}, median "
                f"{cam['median_iou']:.3f}")
        if "pointing_box" in cam:
            text += (f"; pointing game {100 * cam['pointing_box']:.1f}% (box), "
                     f"{100 * cam['pointing_mask']:.1f}% (mask)")
        lines.append(text)
    return "\n".join(lines)


@dataclass(frozen=True)
class EvaluateMasksConfig(Config):
    """Settings of ``evaluate-masks``."""

    as_json: bool = option(False, flag="--json", help="print JSON instead of a table")


@dataclass(frozen=True)
class EvaluateMasksInputs(StageInputs):
    """The inputs of ``evaluate-masks``.

    Attributes:
        pred: segment bank folder or COCO JSON of predictions (``weakpaste mine`` output).
        gt: GT COCO instances JSON with masks.
    """

    pred: str | os.PathLike = option(
        positional=True, help="a segment bank folder or a COCO JSON of predicted masks")
    gt: str | os.PathLike = option(help="ground-truth COCO JSON with instance masks")


def run_evaluate_masks(config: EvaluateMasksConfig | None, inputs: EvaluateMasksInputs,
                       run: RunOptions | None = None) -> str:
    """Evaluate mined masks against GT and optionally save the result.

    Predictions with scores that rank them also get their precision-yield curve
    (:func:`score_curve`: the top 10%, 20%, ... of the predictions by score against a random
    draw). A bank mined with ``--save-baselines`` also gets its funnel (:func:`funnel`):
    recall@0.5 at each stage of the choice and the Grad-CAM's IoU and pointing game. (It
    lives here, not in ``weakpaste.evaluate.masks``, which the funnel builds on.)

    Args:
        config: ``as_json``: return the JSON text instead of the table.
        inputs: the predictions and the ground truth.
        run: ``out``: when given, the result is also written to that file as JSON (indent
            2, atomically; missing parent folders are created); ``overwrite`` replaces it.

    Returns:
        Printable text: the ``format_table`` table, or the result as JSON.

    Raises:
        WeakpasteError: bad input (see ``evaluate_masks``), ``out`` is one of the inputs,
            exists without ``overwrite``, or cannot be written.
    """
    config, run = config or EvaluateMasksConfig(), run or RunOptions()
    pred, gt = inputs.pred, inputs.gt
    with StageRun("evaluate-masks", run, inputs=inputs.paths(), resumable=False,
                  output="file") as stage:
        from weakpaste.evaluate.masks import evaluate_masks, format_table

        result = evaluate_masks(pred, gt)
        curve = score_curve(pred, gt)
        if curve is not None:  # scored predictions: what keeping only the best would buy
            result["curve"] = curve
        found = funnel(pred, gt) if Path(pred).is_dir() else None
        if found is not None:  # a bank mined with --save-baselines: where the right segment
            result["funnel"] = found  # is lost
        text = json.dumps(result, indent=2)
        if stage.out is not None:
            _write_result(stage.out, text)
    if config.as_json:
        return text
    tail = f"\n\n{format_curve(curve)}" if curve is not None else ""
    tail += f"\n\n{format_funnel(found)}" if found is not None else ""
    return f"{pred} vs {gt}\n\n{format_table(result)}{tail}"


def _write_result(out_path: Path, text: str) -> None:
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_path, (text + "\n").encode())
    except OSError as err:
        raise WeakpasteError(f"{out_path}: cannot write the result ({err.strerror or err}); "
                             f"choose another {OUT}") from None
