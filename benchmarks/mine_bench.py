"""F-EM pseudo-label quality, funnel and speed on coco_mini or PennFudan (labels from the
annotations, masks hidden).

Compares, with the metrics of ``weakpaste evaluate-masks``:
    (a) Grad-CAM baseline: the thresholded Grad-CAM of each labelled class as its mask;
    (b) step 1 only: nearest-proposal choice scored by the classifier;
    (c) the kept F-EM segments (``--pick em``: step 1 + EM, the paper's; ``--pick evidence``:
        the candidate of most crop probability x mean Grad-CAM inside);
then the funnel (recall@0.5 at every stage of the choice, the Grad-CAM's IoU and pointing
game), the precision-yield curves of the evidence pick ranked by its evidence and of EM's
pick ranked by its score, and images/s of the per-image stage (after the classifier is
trained), a per-stage time breakdown and the whole run's rate. ``--cli`` also times the same
job as a user runs it.

``--data pennfudan`` mines PennFudanPed (one class: person); ``--negatives auto`` then gives
the classifier the coco_mini images without a person (copied next to ``--out``), which a
one-class set needs. ``--sample N`` mines a seeded sample of N images (GT restricted to them).

``--anchor mil`` ranks the proposals with the MIL head instead of Grad-CAM; ``--train-data
coco128`` (or ``coco``, a folder with ``images/`` and ``instances.json``) trains the
classifier and the MIL head on that set too (``--train-images/--train-labels``), without
mining it. ``--curve`` prints precision@0.5 per class against the number of labelled images of
the class (mined + training set). ``--class-subsample person:N`` is the learning curve of one
class: it mines N seeded images showing the class, drawn from ``--data`` and ``--train-data``
together, and trains on them and on every image of both without the class.

Usage:
    python benchmarks/mine_bench.py --weights ../shared/weights/mobilenet_v2_imagenet.pth \
        [--data coco|coco128|pennfudan|PATH] [--sample N] [--proposals saliency] \
        [--saliency ../shared/weights/isnet_dis_small.onnx --saliency-size 512] \
        [--negatives auto|none|DIR] [--pick em|evidence] [--workers 2] [--out DIR] \
        [--anchor gradcam|mil] [--train-data coco128|coco|none|PATH] [--curve] \
        [--class-subsample person:N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_common import SHARED, model_parser

from weakpaste.core.argv import to_argv
from weakpaste.core.options import Config, add_options, from_args, option
from weakpaste.core.run import RunOptions
from weakpaste.evaluate.funnel import format_funnel, funnel, precision_yield
from weakpaste.evaluate.masks import evaluate_masks, format_table
from weakpaste.mine.config import FemConfig
from weakpaste.mine.fem import run_mine_fem
from weakpaste.mine.pipeline import MineInputs

DATA = {"coco": SHARED / "data" / "coco_mini", "coco128": SHARED / "data" / "coco128",
        "pennfudan": SHARED / "data" / "pennfudan" / "PennFudanPed"}


@dataclass(frozen=True)
class BenchOptions(Config):
    """The benchmark's own options (what and how it measures), beside ``mine fem``'s."""

    saliency_cache: str = option("/tmp/weakpaste_saliency_cache", metavar="DIR",
                                 help="saliency maps kept between runs")
    negatives: str = option("auto", help="auto (PennFudan: coco_mini images without a "
                                         "person), none, DIR")
    train_data: str = option("none", help="coco128, coco, none or a folder with images/ and "
                                          "instances.json: trained on, not mined")
    curve: bool = option(False, help="precision@0.5 per class against its number of labelled "
                                     "images (of the kept segments and of the EM picks before "
                                     "any threshold)")
    class_subsample: str | None = option(
        None, metavar="CLASS:N", help="mine N seeded images of CLASS from --data and "
                                      "--train-data, train on them and on every image of both "
                                      "without CLASS")
    oracle: bool = option(False, help="--anchor mil: also rank each pair's proposals by IoU "
                                      "with its GT mask (the anchor map a perfect localiser "
                                      "would give)")
    out: str = option("/tmp/weakpaste_mine_bench", metavar="DIR", help="scratch folder")
    cli: bool = option(False, help="also time the same job as a whole 'weakpaste mine fem' "
                                   "process")


def _parser() -> argparse.ArgumentParser:
    parser = model_parser(__doc__.splitlines()[0], "coco_mini")
    parser.set_defaults(data="coco")
    parser.add_argument("--sample", type=int, default=0, help="mine N seeded images (0: all)")
    # The F-EM options are weakpaste mine fem's, with its defaults; the benchmark's own
    # inputs (--negatives auto, --saliency-cache, --train-data) are set by _config.
    add_options(parser.add_argument_group("F-EM"), FemConfig,
                exclude=("backbone", "weights", "epochs", "negatives", "saliency_cache",
                         "train_images", "train_labels", "seed", "device"))
    # The one default this benchmark changes: the README's mine_bench figures were measured
    # with 12 eligible candidates per (image, class), the CLI's default is 16.
    parser.set_defaults(candidates=12)
    add_options(parser.add_argument_group("benchmark"), BenchOptions)
    return parser


def _dataset(name: str) -> tuple[Path, Path]:
    """(images folder, instances.json) of a data set name or folder."""
    data = DATA.get(str(name), Path(name))
    return (data / "images" if (data / "images").is_dir() else data), data / "instances.json"


def _inputs(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    """(images folder, GT file, negatives folder) of the benchmark, sampled and prepared."""
    images, gt = _dataset(args.data)
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


def _config(args: argparse.Namespace, negatives: Path | None,
            train: tuple[Path, Path] | None) -> FemConfig:
    return from_args(FemConfig, args, negatives=str(negatives) if negatives else None,
                     train_images=str(train[0]) if train else None,
                     train_labels=str(train[1]) if train else None)


def _run_options(args: argparse.Namespace, out: Path) -> RunOptions:
    """How the benchmark runs the miner: ``args.workers`` processes, and its saliency cache
    (shared between runs) when saliency proposals are used."""
    saliency = "saliency" in args.methods
    return RunOptions(out=str(out), workers=args.workers, quiet=True,
                      saliency_cache=str(args.saliency_cache) if saliency else None)


def _subsample(args: argparse.Namespace) -> tuple[Path, Path, tuple[Path, Path]]:
    """``--class-subsample CLASS:N``: (images, GT) of N seeded images showing CLASS drawn from
    --data and --train-data, and (images, labels) of every image of both without it; the
    images are linked into folders next to ``--out`` (names prefixed by their set)."""
    cls, n = args.class_subsample.rsplit(":", 1)
    docs = []
    for tag, name in (("a", args.data), ("b", args.train_data)):
        images, gt = _dataset(name)
        doc = json.loads(gt.read_text())
        names = {c["id"]: c["name"] for c in doc["categories"]}
        shown = {a["image_id"] for a in doc["annotations"] if names[a["category_id"]] == cls}
        docs.append((tag, images, doc, shown))
    pool = [(k, im["id"]) for k, (_, _, doc, shown) in enumerate(docs) for im in doc["images"]
            if im["id"] in shown]
    rng = np.random.default_rng(0)
    chosen = {pool[i] for i in rng.choice(len(pool), min(int(n), len(pool)), replace=False)}
    mined = _merged(args.out.with_name(args.out.name + "_mined"), docs,
                    lambda k, i, shown: (k, i) in chosen)
    train = _merged(args.out.with_name(args.out.name + "_train"), docs,
                    lambda k, i, shown: i not in shown)
    return mined[0], mined[1], train


def _merged(folder: Path, docs: list, keep) -> tuple[Path, Path]:
    """(images folder of links, COCO file) of the images ``keep(set index, id, shown)``
    selects from the sets ``docs`` (COCO ids renumbered, categories by name)."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    cats = sorted({c["name"] for _, _, doc, _ in docs for c in doc["categories"]})
    out = {"images": [], "annotations": [],
           "categories": [{"id": i + 1, "name": c} for i, c in enumerate(cats)]}
    for k, (tag, images, doc, shown) in enumerate(docs):
        names = {c["id"]: c["name"] for c in doc["categories"]}
        ids = {}
        for im in doc["images"]:
            if keep(k, im["id"], shown):
                ids[im["id"]] = len(out["images"]) + 1
                name = f"{tag}_{Path(im['file_name']).name}"
                (folder / "images" / name).symlink_to(images / im["file_name"])
                out["images"].append({**im, "id": ids[im["id"]], "file_name": name})
        for a in doc["annotations"]:
            if a["image_id"] in ids:
                out["annotations"].append({**a, "id": len(out["annotations"]) + 1,
                                           "image_id": ids[a["image_id"]],
                                           "category_id": cats.index(names[a["category_id"]])
                                           + 1})
    (folder / "instances.json").write_text(json.dumps(out))
    return folder / "images", folder / "instances.json"


def _class_curve(per_class: dict, counts: dict) -> list[dict]:
    """precision@0.5 of the segments of the classes with n labelled images, binned by n."""
    bins = ((1, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 10 ** 6))
    rows = []
    for lo, hi in bins:
        names = [c for c, n in counts.items() if lo <= n <= hi and c in per_class]
        preds = sum(per_class[c]["num_predictions"] for c in names)
        right = sum(per_class[c]["precision@0.5"] * per_class[c]["num_predictions"]
                    for c in names)
        pairs = sum(per_class[c]["labelled_pairs"] for c in names)
        found = sum(per_class[c]["pair_yield@0.5"] * per_class[c]["labelled_pairs"]
                    for c in names)
        rows.append({"images": f"{lo}-{hi}" if hi < 10 ** 6 else f">{lo - 1}",
                     "classes": len(names), "segments": preds,
                     "precision@0.5": right / max(preds, 1),
                     "pair_yield@0.5": found / max(pairs, 1)})
    return rows


def _oracle(out: Path, gt: Path, top: int) -> dict[str, float]:
    """Recall@0.5 of the proposals ranked by IoU with the GT union mask of each labelled pair
    (``--anchor mil`` runs: their cached per-image results hold the proposals): the first
    candidate, the first ``top``, all proposals (``Proposals.mask_ious``: no proposal mask is
    made)."""
    from pycocotools import mask as mask_utils

    from weakpaste.evaluate.funnel import _gt_by_pair
    from weakpaste.evaluate.masks import _load_gt
    from weakpaste.mine import cache as result_cache
    from weakpaste.mine.fem import cam_iou
    from weakpaste.mine.mil import RegionMining, unpack

    pairs = _gt_by_pair(_load_gt(str(gt)))
    hits = np.zeros(3)
    # The per-image results are cached as data (weakpaste.mine.cache), no longer pickled.
    for path in sorted((out / ".cache").glob(f"*/*{result_cache.SUFFIX}")):
        res = result_cache.read(path, (RegionMining,))
        if res.proposals is None:
            continue
        props = unpack(res.proposals)
        for label in res.labels:
            g = pairs.get((res.file_name, label))
            if not g:
                continue
            inst = mask_utils.decode(g).astype(bool).transpose(2, 0, 1)  # (n, H, W)
            iou = props.mask_ious(inst)
            right = iou.max(1) >= 0.5
            order = np.argsort(-cam_iou(props, inst.any(0)), kind="stable")
            hits += [right[order[0]], right[order[:top]].any(), right.any()]
    n = max(len(pairs), 1)
    return {"oracle_first": hits[0] / n, f"oracle_top{top}": hits[1] / n,
            "all_proposals": hits[2] / n}


def _image_counts(*gts: Path) -> dict[str, int]:
    """Class -> number of images labelled with it, over the GT files."""
    counts: dict[str, int] = {}
    for gt in gts:
        doc = json.loads(gt.read_text())
        names = {c["id"]: c["name"] for c in doc["categories"]}
        for name in {(a["image_id"], names[a["category_id"]]) for a in doc["annotations"]}:
            counts[name[1]] = counts.get(name[1], 0) + 1
    return counts


def main() -> None:
    args = _parser().parse_args()
    args.out, args.saliency_cache = Path(args.out), Path(args.saliency_cache)
    if args.out.exists():
        shutil.rmtree(args.out)
    images, gt, negatives = _inputs(args)
    train = _dataset(args.train_data) if args.train_data != "none" else None
    if args.class_subsample:
        images, gt, train = _subsample(args)
    config = _config(args, negatives, train)
    start = time.perf_counter()
    manifest = run_mine_fem(config, MineInputs(images=str(images), labels=str(gt)),
                            _run_options(args, args.out), save_baselines=True)
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
    curve = {}
    for pick, key in (("evidence_pick", "evidence"), ("em_pick", "score (classifier or MIL)")):
        curve[pick] = precision_yield(args.out / "baselines" / f"{pick}.json", str(gt))
        print(f"\nprecision-yield of the {pick.replace('_', ' ')} (keep the q of highest {key}):")
        for row in curve[pick]:
            print(f"  keep {row['keep']:.0%}: {row['kept']} segments, precision@0.5 "
                  f"{row['precision@0.5']:.1%}, pair yield {row['pair_yield@0.5']:.1%}")
    final = evaluate_masks(str(args.out / "pseudo_labels.json"), str(gt))["per_class"]
    if args.class_subsample:
        cls = args.class_subsample.rsplit(":", 1)[0]
        row = final.get(cls, {})
        print(f"\n{cls}: {row.get('labelled_pairs')} pairs, {row.get('num_predictions')} "
              f"segments, precision@0.5 {row.get('precision@0.5', 0):.1%}, pair yield "
              f"{row.get('pair_yield@0.5', 0):.1%}")
    oracle = _oracle(args.out, gt, config.params.candidates) if args.oracle else None
    if oracle:
        print("\nranked by IoU with the GT mask (a perfect anchor map): "
              + ", ".join(f"{k} {v:.1%}" for k, v in oracle.items()))
    by_count = None
    if args.curve:
        counts = _image_counts(gt, *([train[1]] if train else []))
        em = evaluate_masks(str(args.out / "baselines" / "em_pick.json"), str(gt))["per_class"]
        by_count = {"kept": _class_curve(final, counts), "em_pick": _class_curve(em, counts)}
        for name, rows in by_count.items():
            what = "kept segments" if name == "kept" else "EM picks (one per pair, no threshold)"
            print(f"\nprecision@0.5 of the {what} by the number of labelled images of the "
                  "class (mined + train):")
            for row in rows:
                print(f"  {row['images']:>6} images: {row['classes']:>3} classes, "
                      f"{row['segments']:>4} segments, precision@0.5 "
                      f"{row['precision@0.5']:.1%}, pair yield {row['pair_yield@0.5']:.1%}")
    summary = {
        "data": str(args.data), "images": n,
        "labelled_pairs": manifest["counts"]["labelled_pairs"],
        "segments": manifest["counts"]["segments"], "backbone": args.backbone,
        "proposals": list(args.methods), "pick": args.pick, "rank": args.rank,
        "negatives": manifest["counts"].get("negative_images", 0), "workers": args.workers,
        "per_image_stage_img_s": round(n / t["per_image_wall"], 2),
        "whole_run_img_s": round(n / total, 3),
        "timings_s": t, "total_s": round(total, 1),
        "metrics": {k: {m: round(v, 4) if isinstance(v, float) else v for m, v in r.items()}
                    for k, r in results.items()},
        "anchor": args.anchor, "train_data": args.train_data,
        "class_subsample": args.class_subsample, "by_count": by_count, "oracle": oracle,
        "per_class": final, "funnel": found, "curve": curve}
    if args.cli:
        summary["cli_whole_process_img_s"] = round(n / _cli_seconds(args, config, images, gt), 3)
    (args.out.with_name(args.out.name + "_summary.json")).write_text(
        json.dumps(summary, indent=2, default=float))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("funnel", "curve")},
                     indent=2))


def _cli_seconds(args: argparse.Namespace, config: FemConfig, images: Path, gt: Path) -> float:
    """Wall time of the same job run as ``weakpaste mine fem`` in a fresh process."""
    import subprocess
    import sys

    out = args.out.with_name(args.out.name + "_cli")
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "weakpaste.cli", "mine", "fem",
           *to_argv(MineInputs(str(images), str(gt))), *to_argv(config),
           *to_argv(_run_options(args, out))]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
