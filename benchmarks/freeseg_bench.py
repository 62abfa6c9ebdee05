"""FreeSeg segment quality, ranking and speed on coco_mini_objects (object-centric crops, GT
masks hidden).

For each saliency backend, runs ``weakpaste mine freeseg`` (``--save-baselines``) on the
folder-per-class images and scores, with the metrics of ``weakpaste evaluate-masks``:
    raw      the raw co-segmentation map >= 0.5 (one mask per image);
    refined  after FreeSeg's refinement (Gaussian, Li threshold, opening, largest component);
    ranked   the refined segments the ranking keeps (the run's cut-off);
    random   as many refined segments as ranking kept, chosen at random (seeded).
Then the ranking itself, from ``freeseg_scores.json`` (every refined segment's scores) and
each refined segment's IoU with its GT instance:
    * the precision-yield curve of the ranking score: precision@0.5 of the top q of the
      segments (q = 0.1 ... 1.0) beside a random draw (its expected precision is that of all
      refined segments; the seeded draw of the run's size is the ``random`` row);
    * per signal (every score in the file): ROC AUC of "right at IoU 0.5" and its curve; the
      same for a few cue sets (mean percentile rank, as the miner combines them) and for a
      logistic model cross-fitted across classes (fitted on other classes' GT: what weights
      could add); the global and the per-class cut-off;
    * speed: per stage wall and CPU seconds per image (CPU: of the worker processes, which
      the load of other jobs does not skew), the whole run, and with ``--cli`` the same job as
      a user runs it (``python -m weakpaste.cli mine freeseg``, wall and CPU of the process
      and its workers).
The GT masks only score; nothing here feeds back into the miner's settings.

Saliency maps are cached under ``--cache`` keyed by image and model, so IS-Net's seconds per
image are paid once across runs; ``--classifier`` reuses a trained classifier.

Usage:
    python benchmarks/freeseg_bench.py --weights ../shared/weights/mobilenet_v2_imagenet.pth \
        [--saliency spectral ../shared/weights/isnet_dis_small.onnx] [--saliency-size 512] \
        [--cache DIR] [--classifier PATH] [--workers 2] [--cli]
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_common import SHARED, model_parser

from weakpaste.core.argv import to_argv
from weakpaste.core.run import RunOptions
from weakpaste.evaluate.funnel import CURVE_FRACTIONS, curve_of
from weakpaste.evaluate.masks import _load_gt, evaluate_masks, load_predictions
from weakpaste.io.rle import bytes_rle
from weakpaste.mine.config import RANK_CUES, ClassifierSpec, FreeSegConfig, FreeSegParams
from weakpaste.mine.freeseg import run_mine_freeseg
from weakpaste.mine.pipeline import MineInputs
from weakpaste.mine.ranking import keep_mask, rank_average, top_count

PER_IMAGE = ("saliency", "features", "lore")
SELECTION = ("coseg", "refine", "rank")
# Cue sets measured beside the default (analysis only: the miner's default is chosen by the
# rule in docs/mining.md, not by these numbers).
CUE_SETS = {
    "paper (freeseg, drop_rate)": ("freeseg", "drop_rate"),
    "paper, cross-fitted (freeseg, drop_rate_cf)": ("freeseg", "drop_rate_cf"),
    "label-free (stability, contrast, border, centre)": ("stability", "contrast", "border",
                                                         "centre"),
    "label-free + fragments": ("stability", "contrast", "border", "centre", "fragments"),
    "label-free + freeseg": ("stability", "contrast", "border", "centre", "freeseg"),
    "label-free + freeseg + p_before_cf": ("stability", "contrast", "border", "centre",
                                           "freeseg", "p_before_cf"),
}
# Supervised combinations, cross-fitted across classes (cv_logistic): what weights fitted on
# other classes' GT would add over the equal-weight rank average.
LOGISTIC_SETS = {
    "label-free": ("stability", "contrast", "border", "centre", "fragments"),
    "all scores": ("stability", "contrast", "border", "centre", "fragments", "freeseg", "iob",
                   "iom", "drop_rate", "p_before", "p_after", "p_before_cf", "p_after_cf",
                   "drop_rate_cf"),
}


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def segment_ious(pred: Path, gt) -> dict[str, float]:
    """file_name -> IoU of its one predicted segment with the GT instance of its class."""
    sizes = {r.file_name: (r.height, r.width) for r in gt.records}
    by_base = {Path(n).parts[-2] + "/" + Path(n).name: n for n in sizes}
    gts = {}
    for rec in gt.records:
        for cls, rle in zip(rec.instances.classes, rec.instances.rles, strict=True):
            gts.setdefault((rec.file_name, cls), []).append(bytes_rle(rle))
    from pycocotools import mask as mask_utils

    out = {}
    for image, items in load_predictions(pred, sizes).items():
        name = image if image in sizes else by_base.get(image, image)
        for cls, rle, _ in items:
            g = gts.get((name, cls), [])
            out[image] = float(np.max(mask_utils.iou([bytes_rle(rle)], g, [0] * len(g)))) \
                if g else 0.0
    return out


def _auc(score: np.ndarray, right: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(score)
    if ok.sum() < 2 or len(set(right[ok].tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(right[ok], score[ok]))


def _precision_at(score: np.ndarray, right: np.ndarray, q: float) -> float:
    s = np.where(np.isfinite(score), score, -np.inf)
    order = np.argsort(-s, kind="stable")
    return float(right[order[:top_count(q, len(s))]].mean())


def _column(rows: list[dict], cue: str) -> np.ndarray:
    return np.array([np.nan if r.get(cue) is None else r[cue] for r in rows], float)


def cv_logistic(rows: list[dict], right: np.ndarray, cues: tuple[str, ...], classes: list[str],
                folds: int = 5) -> np.ndarray:
    """Score of a logistic model of right@0.5 on ``cues`` (standardised), cross-fitted across
    classes: every segment is scored by a model fitted on the GT of the other folds' classes
    only (GroupKFold), so no segment's score saw its own label or its class's labels. Analysis
    only: it says what a supervised combination could buy, not what the miner uses."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.stack([_column(rows, c) for c in cues], axis=1)
    x = np.where(np.isfinite(x), x, np.nanmedian(x, axis=0))
    out = np.zeros(len(rows))
    for train, test in GroupKFold(folds).split(x, right, classes):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0))
        model.fit(x[train], right[train])
        out[test] = model.predict_proba(x[test])[:, 1]
    return out


def signal_rows(rows: list[dict], right: np.ndarray) -> list[tuple]:
    """Per signal, cue set and cross-fitted logistic combination: (name, ROC AUC of
    right@0.5, precision@0.5 of the top q for q in CURVE_FRACTIONS)."""
    scored = {}
    for cue, sign in RANK_CUES.items():
        if cue in rows[0]:
            scored[cue] = sign * _column(rows, cue)
    for name, cues in CUE_SETS.items():
        if all(c in rows[0] for c in cues):
            values = {c: _column(rows, c) for c in cues}
            scored[f"rank average: {name}"] = rank_average(values,
                                                           {c: RANK_CUES[c] for c in cues})
    classes = [r["class"] for r in rows]
    for name, cues in LOGISTIC_SETS.items():
        if all(c in rows[0] for c in cues) and len(set(classes)) >= 5:
            scored[f"logistic, class-CV: {name}"] = cv_logistic(rows, right, cues, classes)
    return [(name, _auc(s, right), *(_precision_at(s, right, q) for q in CURVE_FRACTIONS))
            for name, s in scored.items()]


def ranking_report(out: Path, gt, keep_top: float) -> dict:
    """The ranking's curve, per-signal table and per-class cut-off of one run."""
    doc = json.loads((out / "freeseg_scores.json").read_text())
    rows = doc["segments"]
    ious = segment_ious(out / "baselines" / "refined.json", gt)
    right = np.array([ious[r["file_name"]] >= 0.5 for r in rows])
    rank = np.array([r["rank"] for r in rows], float)
    pairs = sum(len(rec.instances) for rec in gt.records)
    picks = [(r["rank"], bool(ok), (r["file_name"], r["class"])) for r, ok in zip(rows, right,
                                                                                  strict=True)]
    curve = curve_of(picks, pairs, CURVE_FRACTIONS)
    classes = [r["class"] for r in rows]
    per_class = {}
    for q in sorted({0.5, 0.55, 0.6, 0.7, keep_top}):
        for name, groups in (("global", None), ("per class", classes)):
            kept = keep_mask(rank, keep_top=q, groups=groups)
            per_class[f"{name} keep {q:g}"] = {"kept": int(kept.sum()),
                                               "precision@0.5": float(right[kept].mean()),
                                               "yield@0.5": float(right[kept].sum() / pairs)}
    return {"curve": curve, "signals": signal_rows(rows, right), "cut_off": per_class,
            "refined_precision@0.5": float(right.mean())}


def print_report(name: str, rep: dict) -> None:
    base = rep["refined_precision@0.5"]
    print(f"\n{name}: precision-yield of the ranking score (random draw: {100 * base:.1f}%)")
    print("| q | kept | precision@0.5 | yield@0.5 | vs random |\n|---:|---:|---:|---:|---:|")
    for r in rep["curve"]:
        print(f"| {r['keep']:.1f} | {r['kept']} | {100 * r['precision@0.5']:.1f}% | "
              f"{100 * r['pair_yield@0.5']:.1f}% | {100 * (r['precision@0.5'] - base):+.1f} |")
    print(f"\n{name}: per signal (direction applied): ROC AUC of right@0.5 and precision@0.5 "
          "of the top q")
    print("| signal | AUC | " + " | ".join(f"q={q:g}" for q in CURVE_FRACTIONS) + " |\n|---|"
          + "---:|" * (1 + len(CURVE_FRACTIONS)))
    for sig, auc, *p in rep["signals"]:
        print(f"| {sig} | {auc:.3f} | " + " | ".join(f"{100 * v:.1f}%" for v in p) + " |")
    print(f"\n{name}: cut-offs of the ranking score")
    for k, v in rep["cut_off"].items():
        print(f"  {k}: {v['kept']} kept, precision@0.5 {100 * v['precision@0.5']:.1f}%, "
              f"yield@0.5 {100 * v['yield@0.5']:.1f}%")


def stage_table(name: str, out: Path, gt_path: Path) -> list[tuple]:
    rows = []
    for stage, pred in (("raw", out / "baselines" / "raw.json"),
                        ("refined", out / "baselines" / "refined.json"),
                        ("ranked", out / "pseudo_labels.json"),
                        ("random", out / "baselines" / "random.json")):
        m = evaluate_masks(str(pred), str(gt_path))["overall"]
        rows.append((name, stage, m["num_predictions"], m["precision@0.5"],
                     m["precision@0.75"], m["mean_best_iou"], m["instance_yield@0.5"]))
    return rows


def speed(manifest: dict, wall: float, cpu: float) -> dict:
    """Per-image wall/CPU seconds per stage (per-image stages: only the images mined now)."""
    c, t = manifest["counts"], manifest["timings_s"]
    n, mined = c["object_centric_images"], c["mined_this_run"]
    per = {}
    for s in PER_IMAGE:
        if mined:
            per[s] = {"wall_s": round(t.get(s, 0) / mined, 4),
                      "cpu_s": round(t.get(f"{s}_cpu", 0) / mined, 4)}
    for s in SELECTION:
        per[s] = {"wall_s": round(t.get(s, 0) / n, 4)}
    return {"images": n, "mined_this_run": mined, "per_image": per,
            "classifier_s": t.get("classifier"), "per_image_stage_wall_s": t["per_image_wall"],
            "whole_run_wall_s": round(wall, 1), "whole_run_cpu_s": round(cpu, 1),
            "whole_run_img_s": round(n / wall, 3), "cpu_s_per_image": round(cpu / n, 3)}


def _run_options(args, out: Path) -> RunOptions:
    """``args.workers`` processes, the saliency maps shared between runs in ``args.cache``."""
    return RunOptions(out=str(out), workers=args.workers, quiet=True,
                      saliency_cache=str(args.cache))


def cli_run(args, config: FreeSegConfig, out: Path) -> dict:
    """The same job as ``python -m weakpaste.cli mine freeseg`` (its flags spelt from
    ``config`` by ``to_argv``): wall and CPU seconds of the process and its workers."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "weakpaste.cli", "mine", "freeseg",
           *to_argv(MineInputs(str(args.data), str(args.data / "instances.json"))),
           *to_argv(config), *to_argv(_run_options(args, out))]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    n = len(list((args.data / "images").rglob("*.jpg")))
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "img_s": round(n / wall, 3),
            "cpu_s_per_image": round(cpu / n, 3)}


def main() -> None:
    parser = model_parser(__doc__.splitlines()[0], "coco_mini_objects")
    parser.add_argument("--saliency", nargs="+",
                        default=[str(SHARED / "weights" / "isnet_dis_small.onnx")],
                        help="saliency backends: spectral and/or ONNX model paths")
    parser.add_argument("--saliency-size", type=int, default=None,
                        help="run ONNX models at this input side (IS-Net: 512)")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "weakpaste" / "saliency",
                        help="saliency map cache shared across runs")
    parser.add_argument("--classifier", help="reuse this trained classifier (all runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crossfit-folds", type=int, default=None,
                        help="cross-fitted classifier scores with this many folds (default: "
                             "the miner's default), so that the signal table has them")
    parser.add_argument("--cli", action="store_true",
                        help="also time the same job as a user runs it (a fresh process)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/weakpaste_freeseg_bench"))
    args = parser.parse_args()

    gt_path = args.data / "instances.json"
    gt = _load_gt(str(gt_path))
    args.out.mkdir(parents=True, exist_ok=True)
    classifier, stages, summary = args.classifier, [], {}
    for spec in args.saliency:
        if spec != "spectral" and not Path(spec).is_file():
            print(f"skipping saliency {spec}: file not found")
            continue
        name = "spectral" if spec == "spectral" else Path(spec).stem
        name += f"-{args.saliency_size}" if args.saliency_size and spec != "spectral" else ""
        out = args.out / name
        if out.exists():
            shutil.rmtree(out)
        model = ClassifierSpec(backbone=args.backbone, weights=args.weights,
                               classifier=classifier, epochs=args.epochs)
        extra = {} if args.crossfit_folds is None else {"crossfit_folds": args.crossfit_folds}
        config = FreeSegConfig(model=model, seed=args.seed, **extra,
                               params=FreeSegParams(saliency=spec, saliency_size=None
                                                    if spec == "spectral" else
                                                    args.saliency_size))
        start, cpu0 = time.perf_counter(), _cpu_seconds()
        # The GT file as the labels (its category names, e.g. "dining table", name the
        # classes): with the class folders' names ("dining_table") the predictions of 9 of
        # the 61 classes would match no GT category and count as wrong.
        manifest = run_mine_freeseg(config, MineInputs(images=str(args.data), labels=str(gt_path)),
                                    _run_options(args, out), save_baselines=True)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
        classifier = classifier or str(out / "classifier.pt")
        stages += stage_table(name, out, gt_path)
        rep = ranking_report(out, gt, config.keep_top)
        print_report(name, rep)
        counts = {k: v for k, v in manifest["counts"].items() if k != "per_class"}
        summary[name] = {"speed": speed(manifest, wall, cpu), "counts": counts,
                         "keep_top": config.keep_top, "rank_by": list(config.rank_cues)}
        if args.cli:
            # A fresh process trains its own classifier, as a user's first run does.
            fresh = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                          classifier=None))
            summary[name]["cli"] = cli_run(args, fresh, args.out / f"{name}_cli")
    print("\n| saliency | stage | segments | precision@0.5 | precision@0.75 | mean best IoU "
          "| yield@0.5 |\n|---|---|---:|---:|---:|---:|---:|")
    for name, stage, num, p5, p75, miou, y5 in stages:
        print(f"| {name} | {stage} | {num} | {100 * p5:.1f}% | {100 * p75:.1f}% | "
              f"{100 * miou:.1f}% | {100 * y5:.1f}% |")
    print(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
