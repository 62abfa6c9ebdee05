"""F-EM pseudo-label quality, funnel and speed on coco_mini or PennFudan (labels from the
annotations, masks hidden).

Compares, with the metrics of ``weakpaste evaluate-masks``:
    (a) Grad-CAM baseline: the thresholded Grad-CAM of each labelled class as its mask;
    (b) step 1 only: nearest-proposal choice scored by the classifier;
    (c) the kept F-EM segments (``--pick em``: step 1 + EM, the paper's; ``--pick evidence``:
        the candidate of most crop probability x mean Grad-CAM inside);
then the funnel (recall@0.5 at every stage of the choice, the Grad-CAM's IoU and pointing
game) and the precision-yield curve of the evidence pick ranked by its evidence, and
images/s of the per-image stage (after the classifier is trained), a per-stage time
breakdown and the whole run's rate. ``--cli`` also times the same job as a user runs it.

``--data pennfudan`` mines PennFudanPed (one class: person); ``--negatives auto`` then gives
the classifier the coco_mini images without a person (copied next to ``--out``), which a
one-class set needs. ``--sample N`` mines a seeded sample of N images (GT restricted to them).

Usage:
    python benchmarks/mine_bench.py --weights ../shared/weights/mobilenet_v2_imagenet.pth \
        [--data coco|pennfudan|PATH] [--sample N] [--proposals saliency] \
        [--saliency ../shared/weights/isnet_dis_small.onnx --saliency-size 512] \
        [--negatives auto|none|DIR] [--pick em|evidence] [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from bench_common import SHARED, model_parser

from weakpaste.mine.config import ClassifierSpec, FemConfig, FemParams
from weakpaste.mine.fem import run_mine_fem
from weakpaste.mine.funnel import format_funnel, funnel, precision_yield
from weakpaste.mine.quality import evaluate_masks, format_table

DATA = {"coco": SHARED / "data" / "coco_mini",
        "pennfudan": SHARED / "data" / "pennfudan" / "PennFudanPed"}


def _parser() -> argparse.ArgumentParser:
    parser = model_parser(__doc__.splitlines()[0], "coco_mini")
    parser.set_defaults(data="coco")
    parser.add_argument("--sample", type=int, default=0, help="mine N seeded images (0: all)")
    parser.add_argument("--em-iters", type=int, default=2)
    parser.add_argument("--keep", type=float, default=0.8)
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--rank", default="cam-iou", choices=["cam-iou", "cam-gain", "distance"])
    parser.add_argument("--proposals", nargs="+", default=["felzenszwalb", "slic"])
    parser.add_argument("--saliency", help="ONNX salient-object model for --proposals saliency")
    parser.add_argument("--saliency-size", type=int)
    parser.add_argument("--saliency-cache", type=Path,
                        default=Path("/tmp/weakpaste_saliency_cache"))
    parser.add_argument("--negatives", default="auto",
                        help="auto (PennFudan: coco_mini images without a person), none, DIR")
    parser.add_argument("--pick", default="em", choices=["em", "evidence", "evidence-em"])
    parser.add_argument("--classifier", help="reuse a classifier saved by an earlier run")
    parser.add_argument("--keep-top", type=float, default=1.0)
    parser.add_argument("--record-proposals", action="store_true",
                        help="the funnel's first stage too (every proposal's mask; slow)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/weakpaste_mine_bench"))
    parser.add_argument("--cli", action="store_true",
                        help="also time the same job as a whole 'weakpaste mine fem' process")
    return parser


def _inputs(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    """(images folder, GT file, negatives folder) of the benchmark, sampled and prepared."""
    data = DATA.get(str(args.data), Path(args.data))
    images = data / "images" if (data / "images").is_dir() else data
    gt = data / "instances.json"
    if args.sample:
        doc = json.loads(gt.read_text())
        rng = np.random.default_rng(0)
        ids = {doc["images"][k]["id"] for k in
               rng.choice(len(doc["images"]), min(args.sample, len(doc["images"])), False)}
        doc["images"] = [im for im in doc["images"] if im["id"] in ids]
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
        gt = args.out.with_name(args.out.name + "_gt.json")
        gt.write_text(json.dumps(doc))
    negatives = None if args.negatives == "none" else (
        _no_person_images(args) if args.negatives == "auto" and str(args.data) == "pennfudan"
        else (Path(args.negatives) if args.negatives != "auto" else None))
    return images, gt, negatives


def _no_person_images(args: argparse.Namespace) -> Path:
    """The coco_mini images without a person, copied next to ``--out``."""
    coco = DATA["coco"]
    doc = json.loads((coco / "instances.json").read_text())
    person = {c["id"] for c in doc["categories"] if c["name"] == "person"}
    has = {a["image_id"] for a in doc["annotations"] if a["category_id"] in person}
    folder = args.out.with_name(args.out.name + "_negatives")
    folder.mkdir(parents=True, exist_ok=True)
    for im in doc["images"]:
        if im["id"] not in has and not (folder / Path(im["file_name"]).name).exists():
            shutil.copy(coco / "images" / im["file_name"], folder)
    return folder


def _config(args: argparse.Namespace, negatives: Path | None) -> FemConfig:
    return FemConfig(
        model=ClassifierSpec(backbone=args.backbone, weights=args.weights, epochs=args.epochs,
                             classifier=args.classifier),
        em_iters=args.em_iters, keep=args.keep, pick=args.pick, keep_top=args.keep_top,
        negatives=str(negatives) if negatives else None,
        saliency_cache=str(args.saliency_cache) if "saliency" in args.proposals else None,
        params=FemParams(candidates=args.candidates, rank=args.rank,
                         methods=tuple(args.proposals), saliency=args.saliency,
                         saliency_size=args.saliency_size,
                         record_proposals=args.record_proposals))


def main() -> None:
    args = _parser().parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    images, gt, negatives = _inputs(args)
    config = _config(args, negatives)
    start = time.perf_counter()
    manifest = run_mine_fem(config, str(images), str(gt), str(args.out),
                            workers=args.workers, progress=False, save_baselines=True)
    total = time.perf_counter() - start
    t = manifest["timings_s"]
    n = manifest["counts"]["labelled_images"]
    results = {}
    for name, pred in (("(a) Grad-CAM > t", args.out / "baselines" / "cam.json"),
                       ("(b) step 1 only", args.out / "baselines" / "step1.json"),
                       (f"(c) F-EM, pick {args.pick}", args.out / "pseudo_labels.json")):
        res = evaluate_masks(str(pred), str(gt))
        results[name] = res["overall"]
        table = format_table(res).splitlines()
        print(f"\n{name}\n{table[0]}\n" + next(x for x in table if x.startswith("overall")))
    found = funnel(args.out, str(gt))
    print("\n" + format_funnel(found))
    curve = precision_yield(args.out / "baselines" / "evidence_pick.json", str(gt))
    print("\nprecision-yield of the evidence pick (keep the q of most evidence):")
    for row in curve:
        print(f"  keep {row['keep']:.0%}: {row['kept']} segments, precision@0.5 "
              f"{row['precision@0.5']:.1%}, pair yield {row['pair_yield@0.5']:.1%}")
    summary = {
        "data": str(args.data), "images": n,
        "labelled_pairs": manifest["counts"]["labelled_pairs"],
        "segments": manifest["counts"]["segments"], "backbone": args.backbone,
        "proposals": args.proposals, "pick": args.pick, "rank": args.rank,
        "negatives": manifest["counts"].get("negative_images", 0), "workers": args.workers,
        "per_image_stage_img_s": round(n / t["per_image_wall"], 2),
        "whole_run_img_s": round(n / total, 3),
        "timings_s": t, "total_s": round(total, 1),
        "metrics": {k: {m: round(v, 4) if isinstance(v, float) else v for m, v in r.items()}
                    for k, r in results.items()},
        "funnel": found, "curve": curve}
    if args.cli:
        summary["cli_whole_process_img_s"] = round(n / _cli_seconds(args, images, gt, negatives), 3)
    (args.out.with_name(args.out.name + "_summary.json")).write_text(
        json.dumps(summary, indent=2, default=float))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("funnel", "curve")},
                     indent=2))


def _cli_seconds(args: argparse.Namespace, images: Path, gt: Path,
                 negatives: Path | None) -> float:
    """Wall time of the same job run as ``weakpaste mine fem`` in a fresh process."""
    import subprocess
    import sys

    out = args.out.with_name(args.out.name + "_cli")
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "weakpaste.cli", "mine", "fem", "--images", str(images),
           "--labels", str(gt), "--out", str(out), "--backbone", args.backbone, "--weights",
           str(args.weights), "--epochs", str(args.epochs), "--em-iters", str(args.em_iters),
           "--keep", str(args.keep), "--candidates", str(args.candidates), "--rank", args.rank,
           "--proposals", *args.proposals, "--pick", args.pick, "--keep-top",
           str(args.keep_top), "--workers", str(args.workers), "--quiet"]
    if args.saliency:
        cmd += ["--saliency", args.saliency, "--saliency-cache", str(args.saliency_cache)]
        cmd += ["--saliency-size", str(args.saliency_size)] if args.saliency_size else []
    if negatives:
        cmd += ["--negatives", str(negatives)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
