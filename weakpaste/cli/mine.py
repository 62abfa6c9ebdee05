"""``mine`` (F-EM, FreeSeg) and ``evaluate-masks``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from weakpaste.cli.common import (
    common,
)
from weakpaste.errors import WeakpasteError


def _cmd_mine_freeseg(args: argparse.Namespace) -> int:
    from weakpaste.mine.freeseg import FreeSegConfig, FreeSegParams, run_mine_freeseg

    weights = None if args.weights in ("none", "None") else args.weights
    params = FreeSegParams(saliency=args.saliency,
                           saliency_convention=args.saliency_convention,
                           saliency_size=args.saliency_size, cam_threshold=args.cam_threshold,
                           lore_steps=args.lore_steps, lore_stop=args.lore_stop)
    config = FreeSegConfig(backbone=args.backbone, weights=weights, classifier=args.classifier,
                           train_mode=args.train_mode, epochs=args.epochs,
                           input_size=args.input_size, crop_size=args.crop_size,
                           device=args.device, coseg_weight=args.coseg_weight,
                           min_score=args.min_freeseg_score, min_drop=args.min_drop_rate,
                           saliency_cache=args.saliency_cache, seed=args.seed, params=params)
    manifest = run_mine_freeseg(args.images, args.labels, args.out, config,
                                workers=args.workers, overwrite=args.overwrite,
                                resume=args.resume, progress=not args.quiet,
                                save_baselines=args.save_baselines)
    c = manifest["counts"]
    fallback = manifest["coseg"]["fallback_classes"]
    if fallback:
        print(f"note: {len(fallback)} class(es) with a single image cannot be co-segmented; "
              f"their saliency map was used alone: {', '.join(fallback)}", file=sys.stderr)
    if c["skipped"]:
        print("skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(c["skipped"].items())),
              file=sys.stderr)
    print(f"kept {c['segments']} of {c['refined_segments']} segments (FreeSeg score > "
          f"{config.min_score}, drop rate > {config.min_drop}) of {len(c['per_class'])} "
          f"classes from {c['object_centric_images']} images into {args.out} "
          f"(pseudo-labels: {Path(args.out) / 'pseudo_labels.json'})")
    return 0


def _cmd_mine(args: argparse.Namespace) -> int:
    if args.method == "freeseg":
        return _cmd_mine_freeseg(args)
    if args.method != "fem":
        raise WeakpasteError(f"--method {args.method} is not available yet; use --method fem")
    from weakpaste.mine.fem import FemParams, MineConfig, run_mine_fem

    weights = None if args.weights in ("none", "None") else args.weights
    params = FemParams(rank=args.rank, cam_threshold=args.cam_threshold, top_n=args.top_n,
                       candidates=args.candidates, erode=args.erode, max_side=args.max_side,
                       methods=tuple(args.proposals))
    config = MineConfig(backbone=args.backbone, weights=weights, classifier=args.classifier,
                        train_mode=args.train_mode, epochs=args.epochs,
                        input_size=args.input_size, crop_size=args.crop_size,
                        device=args.device, em_iters=args.em_iters, keep=args.keep,
                        min_samples=args.min_samples, score_threshold=args.score_threshold,
                        seed=args.seed, params=params)
    manifest = run_mine_fem(args.images, args.labels, args.out, config, workers=args.workers,
                            overwrite=args.overwrite, resume=args.resume,
                            progress=not args.quiet, save_baselines=args.save_baselines)
    c = manifest["counts"]
    print(f"mined {c['segments']} segments of {len(c['per_class'])} classes from "
          f"{c['labelled_images']} images into {args.out} "
          f"(pseudo-labels: {Path(args.out) / 'pseudo_labels.json'})")
    return 0


def _cmd_evaluate_masks(args: argparse.Namespace) -> int:
    from weakpaste.evaluate import run_evaluate_masks

    print(run_evaluate_masks(args.pred, args.gt, out=args.out, as_json=args.json,
                             overwrite=args.overwrite))
    return 0



def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the top-level parser."""
    p = sub.add_parser("mine", help="mine object masks from image-level labels into a bank")
    p.add_argument("--method", choices=["fem", "freeseg"], default="fem",
                   help="fem: EM-Paste's F-EM on scene images with class tags; freeseg: "
                        "FreeSeg co-segmentation + ranking on object-centric images")
    p.add_argument("--images", required=True, help="folder of the images")
    p.add_argument("--labels", help="COCO JSON (annotated categories = labels), CSV "
                   "(image,labels with ';') or JSON {image: [classes]}; omit for one "
                   "sub-folder per class")
    p.add_argument("--out", required=True, help="bank folder to create")
    p.add_argument("--backbone", default="resnet50",
                   help="any torchvision classification model (default: %(default)s)")
    p.add_argument("--weights", default="DEFAULT",
                   help="DEFAULT (torchvision ImageNet download), PATH to a state_dict, or none")
    p.add_argument("--classifier", help="reuse a classifier saved by an earlier run")
    p.add_argument("--train-mode", choices=["linear", "finetune"], default="linear",
                   help="linear probe on a frozen backbone (fast on CPU) or full fine-tune")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--input-size", type=int, default=384, help="classifier input (pixels)")
    p.add_argument("--crop-size", type=int, default=224, help="segment crop input (pixels)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--em-iters", type=int, default=2, help="EM iterations j (0: step 1 only)")
    p.add_argument("--keep", type=float, default=0.8, help="M-step inlier fraction k")
    p.add_argument("--min-samples", type=int, default=5,
                   help="fewer segments of a class: no covariance, keep step 1")
    p.add_argument("--score-threshold", type=float, default=0.1,
                   help="keep segments the classifier scores at least this high")
    p.add_argument("--cam-threshold", type=float, default=0.5,
                   help="Grad-CAM binarisation, relative to its maximum")
    p.add_argument("--rank", choices=["cam-iou", "cam-gain", "distance"], default="cam-iou",
                   help="rank proposals by IoU with the thresholded Grad-CAM, by their total "
                        "Grad-CAM excess over the threshold, or by mean distance to its "
                        "centre (the paper's)")
    p.add_argument("--top-n", type=int, default=3, help="step 1: first proposals scored")
    p.add_argument("--candidates", type=int, default=16,
                   help="eligible proposals per (image, class) for the E-step")
    p.add_argument("--erode", type=int, default=2, help="erosion before scoring a segment")
    p.add_argument("--max-side", type=int, default=512, help="proposal resolution")
    p.add_argument("--proposals", nargs="+", default=["felzenszwalb", "slic"],
                   choices=["felzenszwalb", "slic"], help="proposal methods")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--save-baselines", action="store_true",
                   help="also write baselines/cam.json and baselines/step1.json (fem); "
                        "baselines/raw.json, refined.json and random.json (freeseg)")
    g = p.add_argument_group("freeseg (object-centric images, one class each)")
    g.add_argument("--saliency", default="spectral", metavar="PATH|spectral",
                   help="ONNX salient-object model (IS-Net/U2-Net) or the weight-free "
                        "spectral residual (default: %(default)s)")
    g.add_argument("--saliency-convention", choices=["isnet", "u2net"], default="isnet",
                   help="input normalisation of the ONNX model")
    g.add_argument("--saliency-size", type=int,
                   help="input side of an ONNX model with dynamic height/width")
    g.add_argument("--saliency-cache", metavar="DIR",
                   help="keep saliency maps here, keyed by image and model, to share them "
                        "between runs (default: OUT/.cache/saliency)")
    g.add_argument("--coseg-weight", type=float, default=0.5,
                   help="raw map = coseg^w * saliency^(1-w); 0 = saliency only")
    g.add_argument("--min-freeseg-score", type=float, default=0.5,
                   help="keep segments whose mean(IoB, IoM) with the LORE box is larger")
    g.add_argument("--min-drop-rate", type=float, default=0.5,
                   help="... and whose relative confidence drop without the LORE box is larger")
    g.add_argument("--lore-steps", type=int, default=5, help="LORE: most regions removed")
    g.add_argument("--lore-stop", type=float, default=0.5,
                   help="LORE: stop once the class probability is below this")
    common(p)
    p.set_defaults(func=_cmd_mine)

    p = sub.add_parser("evaluate-masks",
                       help="pseudo-label quality of a bank or COCO file against ground truth")
    p.add_argument("pred", help="a segment bank folder or a COCO JSON of predicted masks")
    p.add_argument("--gt", required=True, help="ground-truth COCO JSON with instance masks")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_evaluate_masks)

