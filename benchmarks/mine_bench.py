"""F-EM pseudo-label quality and speed on coco_mini (labels from its annotations, masks hidden).

Compares, with the item-6 metrics of ``weakpaste evaluate-masks``:
    (a) Grad-CAM baseline: the thresholded Grad-CAM of each labelled class as its mask;
    (b) step 1 only (``--em-iters 0``): nearest-proposal choice scored by the classifier;
    (c) full F-EM (step 1 + EM iterations).
and reports images/s of the per-image stage (after the classifier is trained), a per-stage
time breakdown and the whole run's rate (classifier training included). ``--cli`` also times
the same job as a user runs it: ``python -m weakpaste.cli mine fem ...`` as a whole process.

Usage:
    python benchmarks/mine_bench.py --weights ../shared/weights/mobilenet_v2_imagenet.pth \
        [--backbone mobilenet_v2] [--workers 2] [--out /tmp/mine_bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench_common import model_parser

from weakpaste.mine.config import ClassifierSpec, FemConfig, FemParams
from weakpaste.mine.fem import run_mine_fem
from weakpaste.mine.quality import evaluate_masks, format_table


def main() -> None:
    parser = model_parser(__doc__.splitlines()[0], "coco_mini")
    parser.add_argument("--em-iters", type=int, default=2)
    parser.add_argument("--keep", type=float, default=0.8)
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--rank", default="cam-iou", choices=["cam-iou", "cam-gain", "distance"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/weakpaste_mine_bench"))
    parser.add_argument("--cli", action="store_true",
                        help="also time the same job as a whole 'weakpaste mine fem' process")
    args = parser.parse_args()

    gt = args.data / "instances.json"
    if args.out.exists():
        shutil.rmtree(args.out)
    config = FemConfig(model=ClassifierSpec(backbone=args.backbone, weights=args.weights,
                                            epochs=args.epochs),
                       em_iters=args.em_iters, keep=args.keep,
                       params=FemParams(candidates=args.candidates, rank=args.rank))
    start = time.perf_counter()
    manifest = run_mine_fem(config, str(args.data / "images"), str(gt), str(args.out),
                            workers=args.workers, progress=False, save_baselines=True)
    total = time.perf_counter() - start
    t = manifest["timings_s"]
    n = manifest["counts"]["labelled_images"]
    results = {}
    for name, pred in (("(a) Grad-CAM > t", args.out / "baselines" / "cam.json"),
                       ("(b) step 1 only", args.out / "baselines" / "step1.json"),
                       ("(c) F-EM", args.out / "pseudo_labels.json")):
        res = evaluate_masks(str(pred), str(gt))
        results[name] = res["overall"]
        print(f"\n{name}\n" + format_table(res).splitlines()[0])
        print(format_table(res).splitlines()[-1])
    summary = {
        "images": n, "labelled_pairs": manifest["counts"]["labelled_pairs"],
        "segments": manifest["counts"]["segments"], "backbone": args.backbone,
        "rank": args.rank,
        "workers": args.workers,
        "per_image_stage_img_s": round(n / t["per_image_wall"], 2),
        "whole_run_img_s": round(n / total, 3),
        "timings_s": t, "total_s": round(total, 1),
        "em": {k: v for k, v in manifest["em"].items() if v["items"] >= 20},
        "metrics": {k: {m: round(v, 4) if isinstance(v, float) else v for m, v in r.items()}
                    for k, r in results.items()}}
    if args.cli:
        summary["cli_whole_process_img_s"] = round(n / _cli_seconds(args, gt), 3)
    print(json.dumps(summary, indent=2))
    a, b, c = (results[k]["precision@0.5"] for k in results)
    print(f"F-EM precision@0.5 {c:.3f} vs Grad-CAM {a:.3f} and step 1 {b:.3f}: "
          f"{'PASS' if c > a and c > b else 'FAIL'}")


def _cli_seconds(args: argparse.Namespace, gt: Path) -> float:
    """Wall time of the same job run as ``weakpaste mine fem`` in a fresh process."""
    import subprocess
    import sys

    out = args.out.with_name(args.out.name + "_cli")
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "weakpaste.cli", "mine", "fem", "--images",
           str(args.data / "images"), "--labels", str(gt), "--out", str(out), "--backbone",
           args.backbone, "--weights", str(args.weights), "--epochs", str(args.epochs),
           "--em-iters", str(args.em_iters), "--keep", str(args.keep), "--candidates",
           str(args.candidates), "--rank", args.rank, "--workers", str(args.workers), "--quiet"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
