"""From class labels to a detector on real photos: Mask R-CNN trained on mined data vs masks.

PennFudan (170 street photos, 423 people, one class), 50 photos held out as in torchvision's
detection tutorial (``torch.manual_seed(1); torch.randperm(170)`` over the sorted file names,
the last 50 held out; the split is printed and saved as ``OUT/data/split.json``). Every row
trains the same Mask R-CNN (``--backbone mobilenet_v2`` from the ImageNet state_dict given by
``--weights``) with the same schedule and seed and is evaluated with COCO segm and bbox AP on
the 50 held-out photos against their ground-truth masks:

    (a)  ground-truth masks of the 120 training photos (the ceiling);
    (a1) ground truth, one mask per photo (the largest): what "one mask per image" costs;
    (b)  F-EM pseudo-labels mined from the image-level label "person" alone (``mine fem``
         with IS-Net saliency candidates, ``--pick evidence-em`` and negatives = the
         coco_mini photos without a person), one mask per photo as mined;
    (c)  the EM-Paste recipe: the mined bank pasted onto backgrounds (stage 1), then stage 2
         on the pseudo-labels; one row per background choice (``coco``: the person-free
         coco_mini photos, ``photos``: the training photos with their pseudo-labels,
         ``both``: half each);
    (d)  the same paste and stage 2 from the ground truth (``bank from-coco`` on the training
         split, the training photos with their GT masks): pasting without mask errors;
    ``-s1`` rows (e.g. ``c-coco-s1``): the paste alone, all iterations on stage 1 (what
         stage 2 on one-mask-per-photo labels adds or costs).

Every stage is the ``weakpaste`` command a user runs (printed, in a fresh process); its result
is cached under ``--out`` (``OUT/steps/<step>.json`` holds the command, its CPU and wall time):
a rerun skips what is done, continues an interrupted mining, paste or training run with
``--resume``, and redoes a step whose command changed. Training CPU time is the training
process's user + system time (its 50-photo evaluation included).

Usage:
    python benchmarks/downstream_bench.py --weights ../shared/weights/mobilenet_v2_imagenet.pth \
        --saliency ../shared/weights/isnet_dis_small.onnx [--preset cpu|gpu] [--device cuda] \
        [--rows a,a1,b,c-coco,c-photos,c-both,d-coco] [--out DIR]
    # a quick check of any preset's code path: --iterations 4 --pasted 8 --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bench_common import SHARED

PENNFUDAN = SHARED / "data" / "pennfudan" / "PennFudanPed"
COCO_MINI = SHARED / "data" / "coco_mini"
HELD_OUT = 50

# The training schedule of each preset (every row uses it; two-stage rows split the iterations
# between their stages by --stage1-share). Why these values: see docs/training.md, "From
# class labels to a detector, on real photos".
PRESETS: dict[str, dict] = {
    # 2 CPU cores: 384-px crops (PennFudan's photos are 250-1000 px wide, median 479),
    # batch 4, 500 iterations = 17 epochs of the 120 training photos.
    "cpu": dict(device="cpu", image_size=384, batch_size=4, iterations=500, warmup=100,
                lr=0.02, pasted=480, threads=2, loader_workers=0, mine_workers=2),
    # one GPU: larger crops, batch 8, 800 iterations = 53 epochs, data loading on 8
    # processes; sized (not yet measured: no GPU was lent) for rows a, b, c-coco and d-coco
    # in about 10 minutes at a guessed 6-8 iterations/s of an H100.
    "gpu": dict(device="cuda", image_size=512, batch_size=8, iterations=800, warmup=150,
                lr=0.02, pasted=960, threads=8, loader_workers=8, mine_workers=8),
}
ALL_ROWS = ("a", "a1", "b", "c-coco", "c-photos", "c-both", "c-coco-s1", "c-photos-s1",
            "c-both-s1", "d-coco", "d-photos", "d-both", "d-coco-s1", "d-photos-s1",
            "d-both-s1")
DEFAULT_ROWS = ("a", "a1", "b", "c-coco", "c-photos", "c-both", "d-photos")


# --------------------------------------------------------------------------------------------
# Steps: one weakpaste command each, cached by its command line


@dataclass
class Bench:
    out: Path
    python: str = sys.executable
    done: dict[str, dict] = field(default_factory=dict)

    def run(self, name: str, argv: list[str], out_dir: Path | None, *,
            resumable: bool = False, log: bool = True) -> dict:
        """Run ``weakpaste ARGV`` unless the same command already finished; its record."""
        record_path = self.out / "steps" / f"{name}.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        if record and record["argv"] == argv and record.get("status") == "done":
            self.done[name] = record
            return record
        extra = []
        if out_dir is not None and out_dir.exists():
            same = record is not None and record["argv"] == argv
            extra = ["--resume"] if same and resumable else ["--overwrite"]
        record = {"argv": argv, "status": "running"}
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=1))
        cmd = [self.python, "-m", "weakpaste.cli", *argv, *extra]
        if log:
            print(f"$ weakpaste {shlex.join(argv + extra)}", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        (self.out / "steps" / f"{name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            sys.exit(f"step {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        record.update(status="done", resumed=bool(extra == ["--resume"]), wall_s=round(wall, 1),
                      cpu_s=round(after.ru_utime - before.ru_utime
                                  + after.ru_stime - before.ru_stime, 1),
                      stdout=proc.stdout[-4000:])
        record_path.write_text(json.dumps(record, indent=1))
        self.done[name] = record
        return record


# --------------------------------------------------------------------------------------------
# Data: the split, the image-level labels, the negatives


def tutorial_split(doc: dict, held_out: int = HELD_OUT) -> tuple[list[dict], list[dict]]:
    """(training, held-out) image entries: torchvision's tutorial split of PennFudan.

    The tutorial lists ``PNGImages`` sorted, shuffles with ``torch.manual_seed(1);
    torch.randperm(n)`` and holds the last 50 out.
    """
    import torch

    images = sorted(doc["images"], key=lambda im: im["file_name"])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1)).tolist()
    return [images[i] for i in order[:-held_out]], [images[i] for i in order[-held_out:]]


def _largest_only(doc: dict) -> dict:
    """The same COCO document with the largest annotation of each image only."""
    from pycocotools import mask as mask_utils

    best: dict[int, tuple[float, dict]] = {}
    sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
    for ann in doc["annotations"]:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            h, w = sizes[ann["image_id"]]
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        area = float(mask_utils.area(seg))
        if area > best.get(ann["image_id"], (-1.0, None))[0]:
            best[ann["image_id"]] = (area, ann)
    return {**doc, "annotations": [a for _, a in sorted(best.values(), key=lambda x: x[1]["id"])]}


def prepare_data(out: Path) -> dict[str, Path]:
    """Write the split, the labels CSV, the one-mask GT and the negatives folder (once)."""
    from weakpaste.io.coco import write_coco_subset

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    src = PENNFUDAN / "instances.json"
    doc = json.loads(src.read_text())
    train, held = tutorial_split(doc)
    paths = {"train": data / "train.json", "val": data / "val.json",
             "train_one": data / "train_largest.json", "labels": data / "labels.csv",
             "negatives": data / "no_person", "split": data / "split.json"}
    write_coco_subset(src, paths["train"], [im["id"] for im in train],
                      info={"split": "torchvision tutorial: training (120)"})
    write_coco_subset(src, paths["val"], [im["id"] for im in held],
                      info={"split": "torchvision tutorial: held out (last 50)"})
    paths["train_one"].write_text(json.dumps(_largest_only(json.loads(
        paths["train"].read_text()))))
    # Image-level labels only: every training photo is tagged "person", nothing else.
    paths["labels"].write_text("image,labels\n" + "".join(
        f"{im['file_name']},person\n" for im in sorted(train, key=lambda im: im["file_name"])))
    paths["split"].write_text(json.dumps({
        "rule": "sorted PNGImages; torch.manual_seed(1); torch.randperm(170); last 50 held out",
        "train": sorted(im["file_name"] for im in train),
        "held_out": sorted(im["file_name"] for im in held)}, indent=1))
    _negatives(paths["negatives"])
    return paths


def _negatives(folder: Path) -> None:
    """coco_mini's photos without a person: the classifier's negatives, paste backgrounds."""
    doc = json.loads((COCO_MINI / "instances.json").read_text())
    person = {c["id"] for c in doc["categories"] if c["name"] == "person"}
    has = {a["image_id"] for a in doc["annotations"] if a["category_id"] in person}
    folder.mkdir(exist_ok=True)
    for im in doc["images"]:
        dst = folder / Path(im["file_name"]).name
        if im["id"] not in has and not dst.exists():
            shutil.copyfile(COCO_MINI / "images" / im["file_name"], dst)


# --------------------------------------------------------------------------------------------
# The pipeline


def mine(bench: Bench, args, paths: dict[str, Path]) -> Path:
    out = bench.out / "mine"
    argv = ["mine", "fem", "--images", str(PENNFUDAN), "--labels", str(paths["labels"]),
            "--out", str(out), "--backbone", "mobilenet_v2", "--weights", str(args.weights),
            "--proposals", "saliency", "--saliency", str(args.saliency), "--saliency-size",
            "512", "--saliency-cache", str(args.saliency_cache or bench.out / "saliency_cache"),
            "--candidates", "16",
            "--pick", "evidence-em", "--negatives", str(paths["negatives"]), "--device",
            args.device, "--workers", str(args.mine_workers), "--save-baselines", "--quiet"]
    bench.run("mine", argv, out, resumable=True)
    quality = bench.out / "mine_quality.json"
    bench.run("mine_quality", ["evaluate-masks", str(out), "--gt", str(paths["train"]),
                               "--out", str(quality), "--overwrite"], None)
    return out


def banks(bench: Bench, paths: dict[str, Path], mined: Path) -> dict[str, Path]:
    gt_bank = bench.out / "bank_gt"
    bench.run("bank_gt", ["bank", "from-coco", str(paths["train"]), "--images", str(PENNFUDAN),
                          "--out", str(gt_bank), "--workers", "2", "--quiet"], gt_bank)
    return {"mined": mined, "gt": gt_bank}


def paste(bench: Bench, args, paths: dict[str, Path], bank: str, bank_dir: Path,
          backgrounds: str) -> Path:
    """Paste ``bank`` (mined or gt) onto ``backgrounds`` (coco, photos or both)."""
    out = bench.out / f"pasted_{bank}_{backgrounds}"
    labelled = (bench.out / "mine" / "pseudo_labels.json" if bank == "mined"
                else paths["train"])
    argv = ["paste", "--bank", str(bank_dir), "--out", str(out), "--num-images",
            str(args.pasted), "--seed", "0", "--workers", "2", "--quiet"]
    if backgrounds in ("photos", "both"):
        argv += ["--backgrounds", str(labelled), "--images", str(PENNFUDAN)]
    if backgrounds in ("coco", "both"):
        argv += ["--extra-backgrounds", str(paths["negatives"])]
    if backgrounds == "both":
        argv += ["--extra-ratio", "0.5"]
    bench.run(f"paste_{bank}_{backgrounds}", argv, out, resumable=True)
    return out


def schedule_argv(args) -> list[str]:
    """The training options every row shares (a TrainConfig spelt by ``to_argv``)."""
    from weakpaste.core.argv import to_argv
    from weakpaste.train.config import ModelOptions, TrainConfig

    config = TrainConfig(
        model=ModelOptions(backbone="mobilenet_v2", image_size=args.image_size, roi_batch=128,
                           rpn_proposals=500),
        weights=str(args.weights), batch_size=args.batch_size, lr=args.lr,
        warmup_iters=args.warmup, steps=(0.667, 0.889), jitter=(0.5, 1.5), clip_grad=10.0,
        repeat_threshold=0.0, checkpoint_every=200, log_every=20, seed=0, device=args.device,
        workers=args.loader_workers)
    return [*to_argv(config), "--threads", str(args.threads), "--quiet"]


def train(bench: Bench, args, paths: dict[str, Path], row: str, stage1: list[str],
          stage2: list[str]) -> dict:
    out = bench.out / f"train_{row}"
    argv = ["train", "--out", str(out), "--val", f"{paths['val']}:{PENNFUDAN}"]
    for spec in stage1:
        argv += ["--train", spec]
    if stage2:
        first = max(1, round(args.iterations * args.stage1_share))
        argv += ["--iterations", str(first), "--stage2-iterations",
                 str(args.iterations - first)]
        for spec in stage2:
            argv += ["--stage2", spec]
    else:
        argv += ["--iterations", str(args.iterations)]
    record = bench.run(f"train_{row}", argv + schedule_argv(args), out, resumable=True)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {"record": record, "metrics": metrics, "out": out}


def run_row(bench: Bench, args, paths: dict[str, Path], row: str) -> dict:
    pf = str(PENNFUDAN)
    gt = f"{paths['train']}:{pf}"
    if row == "a":
        return train(bench, args, paths, row, [gt], [])
    if row == "a1":
        return train(bench, args, paths, row, [f"{paths['train_one']}:{pf}"], [])
    mined = mine(bench, args, paths)
    pseudo = f"{mined / 'pseudo_labels.json'}:{pf}"
    if row == "b":
        return train(bench, args, paths, row, [pseudo], [])
    kind, backgrounds, *stage1_only = row.split("-")
    bank_dirs = banks(bench, paths, mined)
    bank = "mined" if kind == "c" else "gt"
    pasted = paste(bench, args, paths, bank, bank_dirs[bank], backgrounds)
    spec = f"{pasted / 'annotations.json'}:{pasted / 'images'}"
    stage2 = [] if stage1_only else [pseudo if kind == "c" else gt]
    return train(bench, args, paths, row, [spec], stage2)


# --------------------------------------------------------------------------------------------
# Report

LABELS = {
    "a": "(a) ground-truth masks (the ceiling)",
    "a1": "(a1) ground truth, largest person only",
    "b": "(b) F-EM pseudo-labels (class labels only)",
    "c-coco": "(c) mined paste on coco, stage 2 (b)",
    "c-photos": "(c) mined paste on photos, stage 2 (b)",
    "c-both": "(c) mined paste on both, stage 2 (b)",
    "d-coco": "(d) GT paste on coco, stage 2 (a)",
    "d-photos": "(d) GT paste on photos, stage 2 (a)",
    "d-both": "(d) GT paste on both, stage 2 (a)",
    **{f"{k}-{bg}-s1": f"({k}) {'mined' if k == 'c' else 'GT'} paste on {bg}, no stage 2"
       for k in "cd" for bg in ("coco", "photos", "both")},
}


def _pct(v: float | None) -> str:
    return "   -" if v is None else f"{100 * v:5.1f}"


def table(results: dict[str, dict]) -> str:
    ceiling = results.get("a", {}).get("metrics", {}).get("segm", {}).get("AP50")
    lines = [f"{'row':<42} {'segm AP':>7} {'AP50':>5} {'AP75':>5} {'bbox AP50':>9} "
             f"{'train CPU':>10} {'÷ (a)':>6}"]
    for row, res in results.items():
        segm, bbox = res["metrics"]["segm"], res["metrics"]["bbox"]
        cpu = res["record"]["cpu_s"]
        ratio = f"{segm['AP50'] / ceiling:6.2f}" if ceiling else "     -"
        resumed = "*" if res["record"].get("resumed") else " "
        lines.append(f"{LABELS[row]:<42} {_pct(segm['AP']):>7} {_pct(segm['AP50']):>5} "
                     f"{_pct(segm['AP75']):>5} {_pct(bbox['AP50']):>9} "
                     f"{cpu / 60:7.1f} min{resumed}{ratio}")
    return "\n".join(lines)


def mining_summary(bench: Bench) -> str:
    path = bench.out / "mine_quality.json"
    if not path.is_file():
        return ""
    q = json.loads(path.read_text())["overall"]
    rec = bench.done.get("mine", {})
    return (f"mined on the 120 training photos: {q['num_predictions']} masks, precision@0.5 "
            f"{q['precision@0.5']:.1%}, pair yield@0.5 {q['pair_yield@0.5']:.1%}, instance "
            f"yield@0.5 {q['instance_yield@0.5']:.1%} of {q['gt_instances']} people; "
            f"mining {rec.get('cpu_s', 0) / 60:.1f} CPU-min, {rec.get('wall_s', 0) / 60:.1f} "
            "min wall")


def picture(bench: Bench, paths: dict[str, Path], rows: list[str], *, num: int = 6,
            min_score: float = 0.5) -> Path:
    """Held-out photos: ground truth, then each row's predictions scoring >= min_score."""
    from pycocotools import mask as mask_utils

    from weakpaste.io.images import read_image
    from weakpaste.report.viz import contact_sheet, draw_instances

    val = json.loads(paths["val"].read_text())
    images = sorted(val["images"], key=lambda im: im["file_name"])[:num]
    preds = {row: json.loads((bench.out / f"train_{row}" / "eval" / "predictions.json")
                             .read_text()) for row in rows}
    gt = {"ground truth": [dict(a, score=None) for a in val["annotations"]]}
    thumbs, captions = [], []
    for im in images:
        rgb = read_image(PENNFUDAN / im["file_name"])
        for name, anns in {**gt, **preds}.items():
            mine = [a for a in anns if a["image_id"] == im["id"]
                    and (a.get("score") is None or a["score"] >= min_score)]
            masks = np.zeros((len(mine), im["height"], im["width"]), dtype=bool)
            for k, a in enumerate(mine):
                seg = a["segmentation"]
                if isinstance(seg, list):
                    seg = mask_utils.merge(mask_utils.frPyObjects(seg, im["height"],
                                                                  im["width"]))
                masks[k] = mask_utils.decode(seg).astype(bool)
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in
                              (a["bbox"] for a in mine)], dtype=np.float64).reshape(-1, 4)
            scores = (None if name == "ground truth"
                      else np.array([a["score"] for a in mine], dtype=np.float64))
            thumbs.append(draw_instances(rgb, masks, boxes, ["person"] * len(mine),
                                         scores=scores))
            captions.append(f"{Path(im['file_name']).stem}: {name}")
    from weakpaste.io.images import write_image

    path = bench.out / "held_out_predictions.png"
    write_image(path, contact_sheet(thumbs, columns=1 + len(rows), thumb=320,
                                    captions=captions))
    return path


# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, type=lambda s: Path(s).resolve(),
                   help="MobileNetV2 ImageNet state_dict (../shared/weights/...)")
    p.add_argument("--saliency", required=True, type=lambda s: Path(s).resolve(),
                   help="IS-Net ONNX model")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                   help=f"comma-separated rows of {', '.join(ALL_ROWS)}")
    p.add_argument("--out", type=Path, default=Path("/tmp/weakpaste_downstream"))
    p.add_argument("--saliency-cache", type=lambda s: Path(s).resolve(),
                   help="IS-Net maps to share between runs (default: OUT/saliency_cache)")
    p.add_argument("--stage1-share", type=float, default=0.5,
                   help="two-stage rows: the fraction of the iterations spent on stage 1")
    for key in PRESETS["cpu"]:
        kind = str if key == "device" else int if key != "lr" else float
        p.add_argument("--" + key.replace("_", "-"), type=kind,
                       help=f"override the preset's {key}")
    return p


def main() -> None:
    args = _parser().parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {', '.join(ALL_ROWS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    bench = Bench(args.out)
    paths = prepare_data(args.out)
    split = json.loads(paths["split"].read_text())
    print(f"split ({split['rule']}): {len(split['train'])} training photos, "
          f"{len(split['held_out'])} held out: {' '.join(Path(f).stem for f in split['held_out'])}")
    print("schedule: " + " ".join(schedule_argv(args)) + f"; {args.iterations} iterations per "
          f"row (two-stage rows: {args.stage1_share:.0%} on stage 1)")
    results = {}
    for row in rows:
        results[row] = run_row(bench, args, paths, row)
        print(f"{LABELS[row]}: segm AP50 {_pct(results[row]['metrics']['segm']['AP50'])}",
              flush=True)
    print()
    summary = mining_summary(bench)
    if summary:
        print(summary)
    print(table(results))
    # the ceiling, the pseudo-labels and the best EM-Paste row, side by side
    c_rows = [r for r in rows if r.startswith("c")]
    best_c = max(c_rows, key=lambda r: results[r]["metrics"]["segm"]["AP50"], default=None)
    shown = [r for r in ("a", "b", best_c) if r in rows]
    if shown:
        print(f"held-out predictions (score >= 0.5): {picture(bench, paths, shown)}")
    (args.out / "summary.json").write_text(json.dumps({
        "preset": args.preset, "settings": {k: getattr(args, k) for k in PRESETS["cpu"]},
        "split": split, "mining": summary,
        "rows": {r: {"metrics": {iou: {k: v for k, v in res["metrics"][iou].items()
                                       if k != "per_class"} for iou in ("segm", "bbox")},
                     "cpu_s": res["record"]["cpu_s"], "wall_s": res["record"]["wall_s"]}
                 for r, res in results.items()}}, indent=1, default=str))


if __name__ == "__main__":
    main()
