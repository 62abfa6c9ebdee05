"""Quality of mined pseudo-labels against hidden ground-truth masks.

The miner only sees image-level labels; this module scores the masks it produced (a segment
bank or its COCO export) against the instance masks of a COCO ground truth (GT).

Matching rules:
    * an image of the predictions is matched to a GT image by ``file_name``: exactly first,
      then by base name when exactly one GT image has that base name (a bank's
      ``source_image`` may be a path relative to the images folder, with sub-folders);
    * a prediction is compared only with the GT instances of its own class in its own image;
      its *best IoU* is the largest mask IoU with one of them (pycocotools, ``iscrowd`` 0),
      or 0 when there is none (wrong class, class absent from GT, image absent from GT);
    * GT ``iscrowd`` regions are not instances (``load_coco`` leaves them out): a prediction
      on one counts as wrong;
    * IoU thresholds are inclusive: a best IoU of exactly 0.5 is correct at 0.5.

Metrics, overall and per class (``t`` for each IoU threshold):
    * ``num_predictions``;
    * ``precision@t``: share of predictions whose best IoU >= t;
    * ``mean_best_iou``: mean best IoU over the predictions;
    * ``gt_instances``: GT instances (non-crowd masks);
    * ``instance_yield@t``: share of GT instances matched with IoU >= t by at least one
      prediction of their class (two predictions on one instance count it once);
    * ``labelled_pairs``: distinct (image, class) pairs with at least one GT instance, i.e. the
      image-level labels the miner worked from;
    * ``pair_yield@t``: share of those pairs with at least one correct prediction;
    * ``images_without_gt``: predictions on images absent from GT (they count as wrong).

A share whose denominator is 0 (no predictions, no GT instances, no labelled pairs) is 0.0,
never NaN, so an empty prediction set scores 0 everywhere.

Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from weakpaste.bank.store import SegmentBank
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.jsonfile import JsonError, parse_json
from weakpaste.io.coco import CocoDataset, load_coco
from weakpaste.io.rle import bytes_rle

Prediction = tuple[str, dict, float | None]  # (class name, full-image RLE, score or None)
Predictions = dict[str, list[Prediction]]

DEFAULT_IOU_THRESHOLDS = (0.5, 0.75)
# Bank index scores are named by the miner; the first of these present is the prediction's
# score ("classifier": the FEM miner's class probability of the chosen proposal).
BANK_SCORE_KEYS = ("score", "classifier")
_EXAMPLES = 5


def _not_predictions(pred: Path) -> WeakpasteError:
    return WeakpasteError(f"{pred}: not a segment bank folder nor a COCO JSON; pass the output "
                          "of 'weakpaste mine' (BANK or BANK/pseudo_labels.json)")


def _base_name(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


class _NameResolver:
    """Maps a prediction's image name to a GT ``file_name`` (exact, then unique base name)."""

    def __init__(self, names: Sequence[str]):
        self.exact = set(names)
        by_base: dict[str, list[str]] = defaultdict(list)
        for name in names:
            by_base[_base_name(name)].append(name)
        self.by_base = {b: v[0] for b, v in by_base.items() if len(v) == 1}

    def __call__(self, name: str) -> str | None:
        if name in self.exact:
            return name
        return self.by_base.get(_base_name(name))


def _read_coco_doc(path: Path) -> dict | None:
    """The parsed JSON when ``path`` looks like a COCO instances file, else None."""
    try:
        doc = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, JsonError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("categories"), list):
        return None
    return doc


def _load_coco_predictions(path: Path, doc: dict) -> Predictions:
    data = load_coco(path, require_masks=True, check_files=False)
    # load_coco keeps each image's non-crowd annotations in file order and drops "score";
    # walk the same annotations to pick the scores up in the same order.
    scores: dict[int, list[float | None]] = defaultdict(list)
    for i, ann in enumerate(doc.get("annotations", [])):
        if ann.get("iscrowd", 0):
            continue
        score = ann.get("score")
        if score is not None:
            if isinstance(score, bool) or not isinstance(score, int | float) \
                    or not np.isfinite(score):
                raise WeakpasteError(f"{path}: annotations[{i}] (id {ann.get('id')}) has score "
                                     f"{score!r}; scores must be finite numbers")
            score = float(score)
        scores[ann["image_id"]].append(score)
    out: Predictions = {}
    for rec in data.records:
        inst = rec.instances
        if inst is None or len(inst) == 0:
            continue
        image_scores = scores[rec.image_id]
        out.setdefault(rec.file_name, []).extend(
            zip(inst.classes, inst.rles, image_scores, strict=True))
    return out


def _load_bank_predictions(bank: SegmentBank,
                           image_sizes: Mapping[str, tuple[int, int]] | None) -> Predictions:
    resolve = _NameResolver(list(image_sizes)) if image_sizes else None
    out: Predictions = {}
    try:
        for entry in bank.iter_index():
            source = str(entry.get("source_image", ""))
            _, mask = bank.read_pixels(entry["id"])
            h, w = mask.shape
            x0, y0 = (int(round(float(v))) for v in entry.get("source_box", [0, 0, 0, 0])[:2])
            name = resolve(source) if resolve is not None else None
            if name is not None:
                height, width = image_sizes[name]
            else:  # no GT size known: a canvas just large enough for the crop
                name, height, width = source, max(y0 + h, 1), max(x0 + w, 1)
            if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
                raise WeakpasteError(
                    f"{bank.root}: segment {entry['id']} spans x {x0}..{x0 + w}, y {y0}..{y0 + h} "
                    f"of {source!r}, outside the {width}x{height} image of that name in GT; "
                    "pass the GT of the images the bank was mined from")
            canvas = np.zeros((height, width), dtype=np.uint8, order="F")
            canvas[y0:y0 + h, x0:x0 + w] = mask
            rle = mask_utils.encode(canvas)
            named = entry.get("scores", {})
            score = next((named[k] for k in BANK_SCORE_KEYS if k in named), None)
            out.setdefault(name, []).append(
                (str(entry["class"]), {"size": [height, width], "counts": rle["counts"].decode()},
                 None if score is None else float(score)))
    finally:
        bank.close()
    return out


def load_predictions(pred: str | os.PathLike,
                     image_sizes: Mapping[str, tuple[int, int]] | None = None) -> Predictions:
    """Read mined masks as full-image predictions.

    Args:
        pred: a segment bank folder (``weakpaste mine`` output) or a COCO instances JSON (images
            with ``file_name``; annotations with RLE or polygon masks and an optional
            ``score``; ``iscrowd`` annotations are left out).
        image_sizes: GT ``file_name`` -> (H, W). A bank stores crops only, so each crop mask is
            placed at its ``source_box`` in a canvas of its source image's size, looked up here
            by exact ``file_name``, then by unique base name; the prediction is then keyed by
            the GT ``file_name``. A segment whose image is not found is keyed by its own
            ``source_image`` in a canvas just large enough for the crop. Unused for COCO.

    Returns:
        Image name -> [(class name, full-image RLE with str ``counts``, score or None)], in
        file (bank: append) order. A bank segment's score is the first of its named
        scores ``BANK_SCORE_KEYS`` that the miner recorded, else None. Images without
        predictions are left out.

    Raises:
        WeakpasteError: ``pred`` is neither a bank nor a COCO JSON, a COCO file is invalid (the
            message from ``load_coco``), a score is not a number, or a crop lies outside its
            GT image.
    """
    path = Path(pred)
    if path.is_dir():
        if not (path / "bank.json").is_file():
            raise _not_predictions(path)
        return _load_bank_predictions(SegmentBank(path), image_sizes)
    doc = _read_coco_doc(path) if path.is_file() else None
    if doc is None:
        raise _not_predictions(path)
    return _load_coco_predictions(path, doc)


def _load_gt(gt_coco: str | os.PathLike | CocoDataset) -> CocoDataset:
    if isinstance(gt_coco, CocoDataset):
        data = gt_coco
    else:
        data = load_coco(gt_coco, require_masks=True, check_files=False)
    where = data.path if data.path is not None else "GT"
    if sum(len(r.instances) for r in data.records if r.instances is not None) == 0:
        raise WeakpasteError(f"{where}: holds no instance masks; evaluating pseudo-labels needs "
                             "ground truth with polygon or RLE 'segmentation' (the data set's "
                             "instances JSON)")
    seen: set[str] = set()
    for rec in data.records:
        if rec.file_name in seen:
            raise WeakpasteError(f"{where}: file_name {rec.file_name!r} appears twice in "
                                 "'images'; predictions are matched by file_name")
        seen.add(rec.file_name)
    return data


class _Tally:
    """Running counts of one class (or of all classes)."""

    def __init__(self, n_thresholds: int):
        self.best: list[np.ndarray] = []
        self.gt_instances = 0
        self.instances_hit = np.zeros(n_thresholds, dtype=np.int64)
        self.pairs = 0
        self.pairs_hit = np.zeros(n_thresholds, dtype=np.int64)
        self.images_without_gt = 0

    def add(self, other: _Tally) -> None:
        self.best.extend(other.best)
        self.gt_instances += other.gt_instances
        self.instances_hit += other.instances_hit
        self.pairs += other.pairs
        self.pairs_hit += other.pairs_hit
        self.images_without_gt += other.images_without_gt

    def add_pair(self, g: list[dict], d: list[dict], thresholds: Sequence[float]) -> None:
        """Count one (image, class) pair: its GT masks ``g`` and predicted masks ``d``."""
        if g:
            self.gt_instances += len(g)
            self.pairs += 1
        if not d:
            return
        if not g:
            self.best.append(np.zeros(len(d)))
            return
        iou = np.asarray(mask_utils.iou(d, g, [0] * len(g)), dtype=np.float64)
        iou = iou.reshape(len(d), len(g))
        self.best.append(iou.max(axis=1))
        for k, t in enumerate(thresholds):
            hit = (iou >= t).any(axis=0)
            self.instances_hit[k] += int(np.count_nonzero(hit))
            self.pairs_hit[k] += int(hit.any())

    def metrics(self, thresholds: Sequence[float]) -> dict:
        best = np.concatenate(self.best) if self.best else np.zeros(0)
        n = int(best.size)
        out: dict = {"num_predictions": n}
        for t in thresholds:
            out[f"precision@{t:g}"] = float(np.count_nonzero(best >= t) / n) if n else 0.0
        out["mean_best_iou"] = float(best.mean()) if n else 0.0
        out["gt_instances"] = self.gt_instances
        for k, t in enumerate(thresholds):
            out[f"instance_yield@{t:g}"] = (float(self.instances_hit[k] / self.gt_instances)
                                            if self.gt_instances else 0.0)
        out["labelled_pairs"] = self.pairs
        for k, t in enumerate(thresholds):
            out[f"pair_yield@{t:g}"] = (float(self.pairs_hit[k] / self.pairs)
                                        if self.pairs else 0.0)
        out["images_without_gt"] = self.images_without_gt
        return out


def evaluate_masks(pred: str | os.PathLike | Mapping[str, Sequence[Prediction]],
                   gt_coco: str | os.PathLike | CocoDataset, *,
                   iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> dict:
    """Score predicted masks against GT instance masks of the same class in the same image.

    See the module docstring for the matching rules and the metrics.

    Args:
        pred: a segment bank folder, a COCO instances JSON, or the output of
            ``load_predictions``.
        gt_coco: the GT COCO instances JSON (masks required; image files are not needed) or a
            loaded data set.
        iou_thresholds: IoU thresholds in (0, 1]; ``precision@t``, ``instance_yield@t`` and
            ``pair_yield@t`` are reported for each.

    Returns:
        {"overall": metrics (plus ``unknown_class_predictions``: predictions of classes that
        are not GT categories), "per_class": class name -> metrics (every GT category and every
        predicted class, sorted by name), "unknown_classes": class name -> predictions, for
        predicted classes that are not GT categories, "images_not_in_gt": {"count": distinct
        prediction images without a GT match, "examples": the first few names, sorted},
        "config": {"pred", "gt", "iou_thresholds"}}.

    Raises:
        WeakpasteError: GT missing, malformed or without masks; predictions unreadable; a
            prediction mask whose size differs from its GT image's.
        ValueError: ``iou_thresholds`` is empty or has a value outside (0, 1].
    """
    thresholds = _checked_thresholds(iou_thresholds)
    gt = _load_gt(gt_coco)
    sizes = {r.file_name: (r.height, r.width) for r in gt.records}
    if isinstance(pred, Mapping):
        predictions, pred_desc = pred, "<predictions>"
    else:
        predictions, pred_desc = load_predictions(pred, sizes), str(pred)
    tallies: dict[str, _Tally] = {name: _Tally(len(thresholds)) for name in gt.categories}
    pred_by_image, unmatched = _predictions_by_image(predictions, sizes, pred_desc, tallies,
                                                     len(thresholds))
    _match(_gt_by_image(gt), pred_by_image, tallies, thresholds)

    total = _Tally(len(thresholds))
    for name in sorted(tallies):
        total.add(tallies[name])
    unknown = {name: len(np.concatenate(t.best)) if t.best else 0
               for name, t in sorted(tallies.items()) if name not in gt.categories}
    overall = total.metrics(thresholds)
    overall["unknown_class_predictions"] = sum(unknown.values())
    return {
        "overall": overall,
        "per_class": {name: tallies[name].metrics(thresholds) for name in sorted(tallies)},
        "unknown_classes": unknown,
        "images_not_in_gt": {"count": len(unmatched),
                             "examples": sorted(unmatched)[:_EXAMPLES]},
        "config": {"pred": pred_desc,
                   "gt": str(gt.path) if gt.path is not None else "<dataset>",
                   "iou_thresholds": list(thresholds)},
    }


def _checked_thresholds(iou_thresholds: Sequence[float]) -> tuple[float, ...]:
    """The IoU thresholds as floats; a ValueError when empty or outside (0, 1]."""
    thresholds = tuple(float(t) for t in iou_thresholds)
    if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"iou_thresholds must be a non-empty sequence of values in (0, 1], "
                         f"got {tuple(iou_thresholds)!r}")
    return thresholds


def _gt_by_image(gt: CocoDataset) -> dict[str, dict[str, list[dict]]]:
    """GT per image file name: class -> bytes RLEs."""
    gt_by_image: dict[str, dict[str, list[dict]]] = {}
    for rec in gt.records:
        per_class: dict[str, list[dict]] = defaultdict(list)
        if rec.instances is not None:
            for name, rle in zip(rec.instances.classes, rec.instances.rles, strict=True):
                per_class[name].append(bytes_rle(rle))
        gt_by_image[rec.file_name] = per_class
    return gt_by_image


def _predictions_by_image(predictions: Mapping[str, Sequence[Prediction]],
                          sizes: Mapping[str, tuple[int, int]], pred_desc: str,
                          tallies: dict[str, _Tally], n_t: int
                          ) -> tuple[dict[str, dict[str, list[dict]]], set[str]]:
    """Predictions per resolved GT image (class -> bytes RLEs), and the unresolved images.

    A prediction of an image without GT counts in its class's tally as a miss (best IoU 0),
    right away (a new class gets a tally of ``n_t`` thresholds).

    Raises:
        WeakpasteError: a prediction mask whose size differs from its GT image's.
    """
    resolve = _NameResolver(list(sizes))
    pred_by_image: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    unmatched: set[str] = set()
    for image in sorted(predictions):
        items = predictions[image]
        if not items:
            continue
        name = resolve(image)
        if name is None:
            unmatched.add(image)
        for cls, rle, _ in items:
            tally = tallies.setdefault(cls, _Tally(n_t))
            if name is None:
                tally.best.append(np.zeros(1))
                tally.images_without_gt += 1
                continue
            if tuple(rle["size"]) != sizes[name]:
                raise WeakpasteError(
                    f"{pred_desc}: a {cls!r} mask of image {image!r} is "
                    f"{rle['size'][1]}x{rle['size'][0]} but GT image {name!r} is "
                    f"{sizes[name][1]}x{sizes[name][0]}; predictions and GT must describe the "
                    "same images")
            pred_by_image[name][cls].append(bytes_rle(rle))
    return pred_by_image, unmatched


def _match(gt_by_image: Mapping[str, Mapping[str, list[dict]]],
           pred_by_image: Mapping[str, Mapping[str, list[dict]]],
           tallies: dict[str, _Tally], thresholds: Sequence[float]) -> None:
    """Add every (image, class) pair's matches to its class's tally, in sorted order."""
    for image in sorted(set(gt_by_image) | set(pred_by_image)):
        gts, dts = gt_by_image.get(image, {}), pred_by_image.get(image, {})
        for cls in sorted(set(gts) | set(dts)):
            tally = tallies.setdefault(cls, _Tally(len(thresholds)))
            tally.add_pair(gts.get(cls, []), dts.get(cls, []), thresholds)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_table(result: dict) -> str:
    """Render ``evaluate_masks`` output as an aligned text table.

    One row per class (most GT instances first, then by name) and an ``overall`` row. Columns:
    class, preds, P@t for each IoU threshold, mIoU (mean best IoU), GT inst, inst yield and
    pair yield (at the first threshold); shares are percentages with one decimal. Notes on
    predictions without a GT image or of classes absent from GT follow the table.

    Args:
        result: the dict returned by ``evaluate_masks``.

    Returns:
        The lines, without a trailing newline.
    """
    thresholds = result["config"]["iou_thresholds"]
    t0 = f"{thresholds[0]:g}"
    header = ["class", "preds", *(f"P@{t:g}" for t in thresholds), "mIoU", "GT inst",
              "inst yield", "pair yield"]

    def row(name: str, m: dict) -> list[str]:
        return [name, str(m["num_predictions"]),
                *(_pct(m[f"precision@{t:g}"]) for t in thresholds),
                _pct(m["mean_best_iou"]), str(m["gt_instances"]),
                _pct(m[f"instance_yield@{t0}"]), _pct(m[f"pair_yield@{t0}"])]

    order = sorted(result["per_class"].items(), key=lambda kv: (-kv[1]["gt_instances"], kv[0]))
    rows = [row(name, m) for name, m in order]
    last = row("overall", result["overall"])
    # Share columns are at least as wide as "100.0%" so that tables line up across runs.
    floor = [0, 0, *(len(_pct(1.0)) for _ in thresholds), len(_pct(1.0)), 0, 0, 0]
    widths = [max(floor[i], *(len(r[i]) for r in [header, *rows, last]))
              for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0]),
                          *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "-" * len(line(header))
    lines = [line(header), rule, *(line(r) for r in rows), rule, line(last)]
    overall = result["overall"]
    lines.append(f"yields at IoU >= {t0}; {overall['labelled_pairs']} labelled (image, class) "
                 "pairs")
    missing = result.get("images_not_in_gt", {})
    if overall["images_without_gt"]:
        examples = ", ".join(repr(n) for n in missing.get("examples", []))
        lines.append(f"{_plural(overall['images_without_gt'], 'prediction')} on "
                     f"{_plural(missing.get('count', 0), 'image')} not in GT, counted wrong "
                     f"(e.g. {examples})")
    unknown = result.get("unknown_classes", {})
    if unknown:
        names = ", ".join(f"{n!r} ({c})" for n, c in unknown.items())
        lines.append(f"{_plural(overall['unknown_class_predictions'], 'prediction')} of "
                     f"classes not in GT, counted wrong: {names}")
    return "\n".join(lines)


__all__ = ["load_predictions", "evaluate_masks", "format_table"]
