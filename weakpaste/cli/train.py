"""``train``, ``eval`` and ``longtail``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from weakpaste.cli.common import (
    common,
    float_pair,
    fractions,
    torch_threads,
)


def _cmd_train(args: argparse.Namespace) -> int:
    torch_threads(args.threads)
    from weakpaste.train.engine import TrainConfig, run_train
    from weakpaste.train.evaluation import format_metrics

    weights = None if args.weights.lower() == "none" else args.weights
    config = TrainConfig(
        backbone=args.backbone, weights=weights, image_size=args.image_size, jitter=args.jitter,
        brightness=args.brightness, contrast=args.contrast, color_prob=args.color_prob,
        flip_prob=args.flip_prob, batch_size=args.batch_size, iterations=args.iterations,
        stage2_iterations=args.stage2_iterations, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, warmup_iters=args.warmup,
        warmup_factor=args.warmup_factor, steps=args.steps, gamma=args.gamma,
        clip_grad=args.clip_grad, repeat_threshold=args.repeat_threshold,
        keep_empty=args.keep_empty, trainable_layers=args.trainable_layers,
        roi_batch=args.roi_batch, rpn_proposals=args.rpn_proposals,
        detections_per_image=args.detections, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, device=args.device, workers=args.workers, seed=args.seed)
    manifest = run_train(args.train, args.out, config, val=args.val, stage2=args.stage2 or (),
                         overwrite=args.overwrite, resume=args.resume, progress=not args.quiet)
    c = manifest["counts"]
    images = ", ".join(f"{k}: {v} images" for k, v in c["images"].items())
    print(f"trained {c['iterations']} iterations ({images}) on {c['classes']} classes; "
          f"model: {Path(args.out) / 'checkpoints' / 'last.pt'}")
    if args.val:
        metrics = json.loads((Path(args.out) / "eval" / "metrics.json").read_text())
        print(f"\nevaluation on {args.val} ({Path(args.out) / 'eval' / 'metrics.json'}):")
        print(format_metrics(metrics))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    torch_threads(args.threads)
    from weakpaste.train.evaluation import format_metrics, run_eval

    metrics = run_eval(args.data, args.out, checkpoint=args.checkpoint,
                       predictions=args.predictions, train=args.train, device=args.device,
                       overwrite=args.overwrite, progress=not args.quiet)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics))
    return 0


def _cmd_longtail(args: argparse.Namespace) -> int:
    from weakpaste.train.longtail import format_report, run_longtail

    report = run_longtail(args.coco_json, args.out, shape=args.shape, max_count=args.max,
                          min_count=args.min, seed=args.seed, overwrite=args.overwrite)
    for message in report["notes"]:
        print(f"weakpaste: note: {message}", file=sys.stderr)
    print(format_report(report))
    c = report["counts"]
    print(f"wrote {c['images']} images, {c['annotations']} annotations of {c['classes']} "
          f"classes to {args.out}")
    return 0



def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the top-level parser."""
    p = sub.add_parser("train", help="train Mask R-CNN on COCO data sets and evaluate it")
    p.add_argument("--train", action="append", required=True, metavar="COCO_JSON:IMAGES_DIR",
                   help="training set (stage 1, e.g. pasted data); repeat to concatenate")
    p.add_argument("--stage2", action="append", metavar="COCO_JSON:IMAGES_DIR",
                   help="stage-2 set (the original pseudo-labelled data), trained after stage 1 "
                        "with a fresh schedule (FreeSeg §4.1); repeatable")
    p.add_argument("--val", metavar="COCO_JSON:IMAGES_DIR",
                   help="evaluate the final model on this set (OUT/eval/metrics.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backbone", choices=["resnet50", "mobilenet_v3"], default="resnet50",
                   help="ResNet-50 FPN or the light MobileNetV3-Large FPN (default: %(default)s)")
    p.add_argument("--weights", default="DEFAULT",
                   help="DEFAULT (torchvision ImageNet backbone, downloaded), PATH (weakpaste "
                        "checkpoint, Mask R-CNN or backbone state_dict) or none")
    p.add_argument("--image-size", type=int, default=800,
                   help="training crop side; test images are resized to fit in it")
    p.add_argument("--jitter", type=float_pair, default=(0.1, 2.0), metavar="LO,HI",
                   help="large-scale jittering scale range (1,1: resize and pad only)")
    p.add_argument("--brightness", type=float, default=0.4, help="ColorJitter brightness")
    p.add_argument("--contrast", type=float, default=0.4, help="ColorJitter contrast")
    p.add_argument("--color-prob", type=float, default=0.5,
                   help="probability of the brightness/contrast jitter")
    p.add_argument("--flip-prob", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iterations", type=int, default=90000, help="stage-1 iterations")
    p.add_argument("--stage2-iterations", type=int,
                   help="stage-2 iterations (default: --iterations)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD base learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=1000, help="linear warm-up iterations")
    p.add_argument("--warmup-factor", type=float, default=0.001,
                   help="learning-rate factor at the first iteration")
    p.add_argument("--steps", type=fractions, default=(0.667, 0.889), metavar="F,F",
                   help="decay the rate by --gamma at these fractions of a stage (or none)")
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=0.0,
                   help="clip the gradient norm to this (0: no clipping)")
    p.add_argument("--repeat-threshold", type=float, default=0.001,
                   help="repeat-factor sampling threshold t (LVIS: 0.001); 0 switches it off")
    p.add_argument("--keep-empty", action="store_true",
                   help="train on images without annotations as background")
    p.add_argument("--trainable-layers", type=int,
                   help="backbone stages to train (default: 3 with pre-trained weights, all "
                        "without)")
    p.add_argument("--roi-batch", type=int, default=512, help="sampled RoIs per image")
    p.add_argument("--rpn-proposals", type=int, default=2000,
                   help="RPN proposals per image in training (half at test time)")
    p.add_argument("--detections", type=int, default=100, help="detections per image")
    p.add_argument("--checkpoint-every", type=int, default=5000, metavar="N",
                   help="write OUT/checkpoints/iter_N.pt and last.pt every N iterations")
    p.add_argument("--log-every", type=int, default=20, metavar="N",
                   help="append averaged losses, lr and it/s to OUT/metrics.jsonl")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--workers", type=int, default=0, help="data loading processes")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/last.pt")
    common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="COCO AP (bbox, segm, per class, rare/common/frequent) of "
                                    "a checkpoint or a results file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="CKPT", help="a 'weakpaste train' checkpoint")
    src.add_argument("--predictions", metavar="PRED_JSON", help="a COCO results JSON")
    p.add_argument("--data", required=True, metavar="COCO_JSON:IMAGES_DIR",
                   help="ground truth (the images are needed with --checkpoint only)")
    p.add_argument("--out", help="output folder (default: eval-<data name> beside the run)")
    p.add_argument("--train", metavar="COCO_JSON",
                   help="training set whose images per class define rare (1-10), common "
                        "(11-100) and frequent (>100) classes (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("longtail", help="long-tailed subset of a COCO file (Pareto class sizes, "
                                        "EM-Paste appendix 11)")
    p.add_argument("coco_json")
    p.add_argument("--out", required=True, metavar="COCO_JSON", help="the subset to write")
    p.add_argument("--shape", type=float, default=6.0, help="Pareto shape b (decay rate)")
    p.add_argument("--max", type=int, default=800, help="instances of the largest class")
    p.add_argument("--min", type=int, default=1, help="count the tail decays towards")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_longtail)

