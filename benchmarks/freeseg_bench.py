"""FreeSeg segment quality and speed on coco_mini_objects (object-centric crops, GT masks hidden).

For each saliency backend, runs ``weakpaste mine freeseg`` on the folder-per-class
images and scores, with the metrics of ``weakpaste evaluate-masks``:
    raw      the raw co-segmentation map >= 0.5 (one mask per image);
    refined  after FreeSeg's refinement (Gaussian, Li threshold, opening, largest component);
    ranked   the refined segments kept by the ranking (FreeSeg score and drop rate);
    random   as many refined segments as ranking kept, chosen at random (seeded).
Ranking should raise precision@0.5 over raw and random. Also reports images/s per stage, and
(``--ablate-coseg-weight``) the same stages with another co-segmentation weight, e.g. 0 =
the saliency map alone, from the cached per-image results.

Saliency maps are cached under ``--cache`` keyed by image and model, so the ~2-9 s/image of
IS-Net are paid once across runs. The classifier of the first run is reused by the others.

Usage:
    python benchmarks/freeseg_bench.py --weights ../shared/weights/mobilenet_v2_imagenet.pth \
        [--saliency spectral ../shared/weights/isnet_dis_small.onnx] [--cache DIR] [--workers 2]
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import time
from collections import defaultdict
from pathlib import Path

from bench_common import SHARED, model_parser

from weakpaste.mine.config import ClassifierSpec, FreeSegConfig, FreeSegParams
from weakpaste.mine.freeseg import _class_stage, run_mine_freeseg
from weakpaste.mine.quality import evaluate_masks

STAGES = ("saliency", "features", "lore", "coseg", "refine", "rank")
PER_IMAGE = ("saliency", "features", "lore")


def coseg_weight_variant(out: Path, config: FreeSegConfig, weight: float) -> dict:
    """Re-run the per-class stage of a finished run with another ``coseg_weight`` (the cached
    per-image saliency, features and LORE boxes are reused) -> stage -> predictions."""
    config = dataclasses.replace(config, coseg_weight=weight)
    pkl_dir = next(d for d in (out / ".cache").iterdir() if d.is_dir() and d.name != "saliency")
    by_class = defaultdict(list)
    for f in sorted(pkl_dir.glob("*.pkl")):
        res = pickle.loads(f.read_bytes())
        if not res.skipped:
            by_class[res.label].append(res)
    preds: dict[str, dict] = {"raw": {}, "refined": {}, "ranked": {}}
    for items in by_class.values():
        items.sort(key=lambda r: r.file_name)  # the run's order: images sorted by path
        outs, _, _ = _class_stage(items, list(range(len(items))), config)
        for res, o in zip(items, outs, strict=True):
            score = o.scores.get("freeseg", 1.0)
            if o.raw_rle is not None:
                preds["raw"][res.file_name] = [(res.label, o.raw_rle, 1.0)]
            if o.refined_rle is not None:
                preds["refined"][res.file_name] = [(res.label, o.refined_rle, score)]
                if o.kept:
                    preds["ranked"][res.file_name] = [(res.label, o.refined_rle, score)]
    return preds


def main() -> None:
    parser = model_parser(__doc__.splitlines()[0], "coco_mini_objects")
    parser.add_argument("--saliency", nargs="+",
                        default=[str(SHARED / "weights" / "isnet_dis_small.onnx")],
                        help="saliency backends to compare: spectral and/or ONNX model paths "
                             "(default: IS-Net)")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "weakpaste" / "saliency",
                        help="saliency map cache shared across runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablate-coseg-weight", type=float, nargs="*", default=[0.0],
                        help="also score these --coseg-weight values (0: saliency only) by "
                             "re-running the per-class stage on the cached per-image results")
    parser.add_argument("--out", type=Path, default=Path("/tmp/weakpaste_freeseg_bench"))
    parser.add_argument("--reuse", action="store_true",
                        help="resume earlier runs in --out (their classifier and per-image "
                             "results) instead of starting over; times then cover the rest")
    args = parser.parse_args()

    gt = args.data / "instances.json"
    args.out.mkdir(parents=True, exist_ok=True)
    classifier = None
    summary, verdicts = {}, []
    rows = []
    for spec in args.saliency:
        if spec != "spectral" and not Path(spec).is_file():
            print(f"skipping saliency {spec}: file not found")
            continue
        name = "spectral" if spec == "spectral" else Path(spec).stem
        out = args.out / name
        resume = args.reuse and (out / "manifest.json").is_file()
        if out.exists() and not resume:
            shutil.rmtree(out)
        model = ClassifierSpec(backbone=args.backbone, weights=args.weights,
                               classifier=classifier, epochs=args.epochs)
        config = FreeSegConfig(model=model, seed=args.seed, saliency_cache=str(args.cache),
                               params=FreeSegParams(saliency=spec))
        start = time.perf_counter()
        manifest = run_mine_freeseg(config, str(args.data / "images"), None, str(out),
                                    workers=args.workers, progress=False, save_baselines=True,
                                    resume=resume)
        total = time.perf_counter() - start
        classifier = classifier or str(out / "classifier.pt")
        c, t = manifest["counts"], manifest["timings_s"]
        n = c["object_centric_images"]
        metrics = {}
        for stage, pred in (("raw", out / "baselines" / "raw.json"),
                            ("refined", out / "baselines" / "refined.json"),
                            ("ranked", out / "pseudo_labels.json"),
                            ("random", out / "baselines" / "random.json")):
            metrics[stage] = evaluate_masks(str(pred), str(gt))["overall"]
            m = metrics[stage]
            rows.append((name, stage, m["num_predictions"], m["precision@0.5"],
                         m["precision@0.75"], m["mean_best_iou"], m["instance_yield@0.5"]))
        for weight in args.ablate_coseg_weight:
            variant = coseg_weight_variant(out, config, weight)
            for stage, pred in variant.items():
                m = evaluate_masks(pred, str(gt))["overall"]
                rows.append((f"{name}, coseg weight {weight:g}", stage, m["num_predictions"],
                             m["precision@0.5"], m["precision@0.75"], m["mean_best_iou"],
                             m["instance_yield@0.5"]))
        # Per-image stages ran only for the images not cached by an earlier (--reuse) run.
        done = {s: c["mined_this_run"] if s in PER_IMAGE else n for s in STAGES}
        speed = {s: (round(done[s] / t[s], 2) if t.get(s) else None) for s in STAGES}
        summary[name] = {
            "images": n, "counts": {k: c[k] for k in ("mined_this_run", "raw_segments",
                                                      "refined_segments",
                                                      "segments", "below_thresholds",
                                                      "skipped", "saliency_from_cache")},
            "coseg_fallback_classes": len(manifest["coseg"]["fallback_classes"]),
            "images_per_s": speed,
            "per_image_stage_wall_img_s": round(c["mined_this_run"] / t["per_image_wall"], 2)
            if c["mined_this_run"] else None,
            "workers": args.workers, "timings_s": t, "total_s": round(total, 1)}
        p = {k: metrics[k]["precision@0.5"] for k in metrics}
        ok = p["ranked"] > p["raw"] and p["ranked"] > p["random"]
        verdicts.append(f"{name}: ranked precision@0.5 {p['ranked']:.3f} vs raw {p['raw']:.3f}, "
                        f"refined {p['refined']:.3f}, random {p['random']:.3f}: "
                        f"{'PASS' if ok else 'FAIL'}")

    print("\n| saliency | stage | segments | precision@0.5 | precision@0.75 | mean best IoU "
          "| instance yield@0.5 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, stage, num, p5, p75, miou, y5 in rows:
        print(f"| {name} | {stage} | {num} | {p5:.3f} | {p75:.3f} | {miou:.3f} | {y5:.3f} |")
    print("\nimages/s per stage, per process (summed stage seconds; saliency from the cache "
          "when present, see counts); per_image_stage_wall_img_s: saliency + features + LORE "
          "with all workers:")
    print(json.dumps(summary, indent=2))
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
