"""The ``weakpaste`` command line: parses arguments, then calls a stage's ``run_*`` function.

Heavy modules (OpenCV, pycocotools, torch) are imported inside the handlers so that
``weakpaste --help`` answers at once and the paste/bank/viz/stats stages never load torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from weakpaste import __version__
from weakpaste.errors import WeakpasteError


def _float_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.3,1.0), got {text!r}") from None
    if hi < lo or lo <= 0:
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI, got {text!r}")
    return lo, hi


def _count_range(text: str) -> tuple[int, int]:
    from weakpaste.paste.plan import parse_count_range

    try:
        return parse_count_range(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _read_weights(path: str) -> dict[str, float]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WeakpasteError(f"{path}: class weights file not found") from None
    except json.JSONDecodeError as err:
        raise WeakpasteError(f"{path}: not valid JSON ({err.msg}); write an object like "
                             '{"dog": 2.0, "cat": 1.0}') from None
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise WeakpasteError(f"{path}: class weights must be a JSON object of class name -> "
                             'number, e.g. {"dog": 2.0, "cat": 1.0}')
    return {str(k): float(v) for k, v in data.items()}


def _cmd_paste(args: argparse.Namespace) -> int:
    from weakpaste.paste.run import PasteConfig, run_paste

    config = PasteConfig(
        num_images=args.num_images, seed=args.seed, objects=args.objects,
        selection=args.selection,
        class_weights=_read_weights(args.class_weights) if args.class_weights else None,
        classes=tuple(args.classes) if args.classes else None, placement=args.placement,
        rotation=args.rotation, flip_prob=args.flip_prob, random_scale=args.random_scale,
        jitter_scale=args.jitter_scale, max_upscale=args.max_upscale,
        space_max_upscale=args.space_max_upscale, blend=tuple(args.blend),
        blur_sigma=args.blur_sigma, min_visible=args.min_visible, min_area=args.min_area,
        image_format=args.format, jpeg_quality=args.jpeg_quality,
        extra_ratio=args.extra_ratio)
    manifest = run_paste(config, bank=args.bank, out_dir=args.out,
                         backgrounds_json=args.backgrounds, images_dir=args.images,
                         extra_backgrounds=args.extra_backgrounds, workers=args.workers,
                         overwrite=args.overwrite, resume=args.resume,
                         progress=not args.quiet)
    c = manifest["counts"]
    print(f"wrote {c['images']} images, {c['annotations']} instances "
          f"({c['dropped_total']} dropped by occlusion) to {args.out}")
    return 0


def _cmd_bank_from_coco(args: argparse.Namespace) -> int:
    from weakpaste.bank import run_bank_from_coco

    manifest = run_bank_from_coco(args.coco_json, args.images, args.out,
                                  min_area=args.min_area, classes=args.classes,
                                  overwrite=args.overwrite, progress=not args.quiet)
    c = manifest["counts"]
    print(f"wrote {c['segments']} segments of {len(c['per_class'])} classes to {args.out} "
          f"({c['skipped_small']} smaller than {args.min_area} px skipped)")
    return 0


def _cmd_bank_info(args: argparse.Namespace) -> int:
    from weakpaste.bank import SegmentBank

    counts = SegmentBank(args.bank).class_counts()
    width = max((len(k) for k in counts), default=5)
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{name:<{width}}  {n:>7}")
    print(f"{'total':<{width}}  {sum(counts.values()):>7}")
    return 0


def _cmd_viz(args: argparse.Namespace) -> int:
    from weakpaste.viz import run_viz

    run_viz(args.coco_json, args.images, args.out, num_images=args.num_images, seed=args.seed,
            columns=args.columns, overwrite=args.overwrite, progress=not args.quiet)
    print(f"contact sheet: {Path(args.out) / 'contact_sheet.png'}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from weakpaste.stats import run_stats

    print(run_stats(args.coco_json, images_dir=args.images, as_json=args.json))
    return 0


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

    print(run_evaluate_masks(args.pred, args.gt, out=args.out, as_json=args.json))
    return 0


def _fractions(text: str) -> tuple[float, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions like 0.667,0.889 (or none), got "
                                         f"{text!r}") from None


def _torch_threads(threads: int | None) -> None:
    """Set up torch for a training or evaluation command (call before importing torch).

    Idle OpenMP threads sleep instead of spinning: spinning threads fight the data loader and
    any other process for the cores, and on a busy 2-core machine made a Mask R-CNN step ten
    times slower. An explicit OMP_WAIT_POLICY in the environment wins.
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _cmd_train(args: argparse.Namespace) -> int:
    _torch_threads(args.threads)
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
    _torch_threads(args.threads)
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


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.train:
        _torch_threads(None)
    from weakpaste.demo import run_demo

    weights = None if args.weights in (None, "none", "None") else args.weights
    run_demo(args.out, num_scenes=args.num_scenes, num_images=args.num_images, seed=args.seed,
             workers=args.workers, mine=not args.from_gt, backbone=args.backbone,
             weights=weights, epochs=args.epochs,
             overwrite=args.overwrite, progress=not args.quiet, train=args.train,
             train_iterations=args.train_iterations)
    return 0


def _cmd_backgrounds(args: argparse.Namespace) -> int:
    from weakpaste.backgrounds.run import BackgroundsConfig, run_backgrounds

    config = BackgroundsConfig(
        seed=args.seed, captions_per_image=args.captions_per_image, max_images=args.max_images,
        captioner=args.captioner,
        caption_batch_size=args.caption_batch_size, max_caption_tokens=args.max_caption_tokens,
        classes=tuple(args.classes) if args.classes else None, distractors=args.distractors,
        rewrite_only=args.rewrite_only, generator=args.generator,
        images_per_caption=args.images_per_caption, keep=args.keep, batch_size=args.batch_size,
        steps=args.steps, guidance_scale=args.guidance_scale, height=args.height,
        width=args.width, clip=args.clip, reject_threshold=args.reject_threshold,
        device=args.device, jpeg_quality=args.jpeg_quality)
    manifest = run_backgrounds(config, args.images, args.out, captions=args.captions,
                               overwrite=args.overwrite, resume=args.resume,
                               progress=not args.quiet)
    c = manifest["counts"]
    print(f"rewrote {c['captions_rewritten']} of {c['captions']} captions "
          f"({c['replacements']} replacements) into {Path(args.out) / 'captions.jsonl'}")
    if not args.rewrite_only:
        print(f"kept {c['backgrounds']} of {c['generated']} generated images "
              f"({c['rejected_by_class']} rejected as showing a target class) in "
              f"{Path(args.out) / 'images'}; use: weakpaste paste --extra-backgrounds {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weakpaste",
        description="Instance-segmentation training data without mask annotations: mine masks "
                    "from image-level labels, paste them onto backgrounds, export COCO.")
    parser.add_argument("--version", action="version", version=f"weakpaste {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, out: bool = True) -> None:
        if out:
            p.add_argument("--overwrite", action="store_true",
                           help="replace an existing weakpaste output in --out")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("demo", help="run the pipeline end to end on embedded synthetic scenes")
    p.add_argument("--out", default="weakpaste-demo", help="output folder (default: %(default)s)")
    p.add_argument("--num-scenes", type=int, default=48, help="synthetic source scenes")
    p.add_argument("--num-images", type=int, default=32, help="pasted output images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--from-gt", action="store_true",
                   help="cut the bank from the scenes' ground truth instead of mining it with "
                        "F-EM from their image-level labels")
    p.add_argument("--backbone", default="resnet18", help="F-EM classifier backbone")
    p.add_argument("--weights", default="DEFAULT",
                   help="DEFAULT (torchvision ImageNet; from scratch when offline), PATH to a "
                        "local state_dict, or none")
    p.add_argument("--epochs", type=int, default=25, help="classifier training epochs")
    p.add_argument("--train", action="store_true",
                   help="then train Mask R-CNN on the pasted set and the mined pseudo-labels "
                        "(no ground-truth mask) and print its AP on held-out scenes")
    p.add_argument("--train-iterations", type=int, default=250,
                   help="Mask R-CNN iterations for --train, both stages together")
    common(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bank", help="build or inspect a segment bank")
    bank_sub = p.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    q = bank_sub.add_parser("from-coco", help="cut the instances of a COCO data set into a bank")
    q.add_argument("coco_json", help="COCO instances JSON (polygons or RLE)")
    q.add_argument("--images", required=True, help="folder of its images")
    q.add_argument("--out", required=True, help="bank folder to create")
    q.add_argument("--min-area", type=int, default=64, help="skip smaller masks (pixels)")
    q.add_argument("--classes", nargs="+", help="keep only these classes")
    common(q)
    q.set_defaults(func=_cmd_bank_from_coco)
    q = bank_sub.add_parser("info", help="segments per class of a bank")
    q.add_argument("bank")
    q.set_defaults(func=_cmd_bank_info)

    p = sub.add_parser("paste", help="paste bank segments onto backgrounds into a COCO data set")
    p.add_argument("--bank", required=True, help="segment bank folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backgrounds", metavar="COCO_JSON",
                   help="COCO data set whose images are backgrounds (its instances are kept)")
    p.add_argument("--images", help="folder of the --backgrounds images")
    p.add_argument("--extra-backgrounds", nargs="+", default=[], metavar="DIR",
                   help="folders of extra background images without annotations")
    p.add_argument("--extra-ratio", type=float, metavar="R",
                   help="fraction of output images on --extra-backgrounds (e.g. generated) "
                        "backgrounds, the rest on --backgrounds; the smaller pool is repeated "
                        "(default: all backgrounds in one pool)")
    p.add_argument("--num-images", type=int, required=True, help="output images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes (output is the same)")
    p.add_argument("--objects", type=_count_range, default=(4, 4), metavar="N|LO-HI",
                   help="objects pasted per image, fixed or a range (default: 4)")
    p.add_argument("--selection", choices=["uniform", "balanced", "weights"], default="uniform",
                   help="uniform over segments, class-balanced, or per-class weights")
    p.add_argument("--class-weights", metavar="JSON", help='{"class": weight, ...}')
    p.add_argument("--classes", nargs="+", help="paste only these classes")
    p.add_argument("--placement", choices=["random", "space-max", "jitter"], default="random")
    p.add_argument("--rotation", type=float, default=15.0, help="max |rotation| in degrees")
    p.add_argument("--flip-prob", type=float, default=0.5)
    p.add_argument("--random-scale", type=_float_pair, default=(0.3, 1.0), metavar="LO,HI",
                   help="random placement: scale range of the size that fits")
    p.add_argument("--jitter-scale", type=_float_pair, default=(0.1, 2.0), metavar="LO,HI",
                   help="jitter placement: scale range of the segment's size")
    p.add_argument("--max-upscale", type=float, default=1.0,
                   help="random placement: cap of the fit-to-image scale")
    p.add_argument("--space-max-upscale", type=float, default=3.0,
                   help="space-max: cap of r_circle / r_enclosing")
    p.add_argument("--blend", nargs="+", choices=["none", "gaussian", "poisson"],
                   default=["gaussian"], help="blending; several = random choice per object")
    p.add_argument("--blur-sigma", type=float, default=2.0)
    p.add_argument("--min-visible", type=float, default=0.25,
                   help="drop instances with a smaller visible fraction")
    p.add_argument("--min-area", type=int, default=16, help="drop smaller instances (pixels)")
    p.add_argument("--format", choices=["jpg", "png"], default="jpg")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    common(p)
    p.set_defaults(func=_cmd_paste)

    from weakpaste.backgrounds import DEFAULT_CAPTIONER, DEFAULT_CLIP, DEFAULT_GENERATOR

    p = sub.add_parser("backgrounds", help="context backgrounds: caption, rewrite target-class "
                                           "words, generate, select with CLIP (EM-Paste)")
    p.add_argument("--images", required=True, help="folder of the source images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--captions", metavar="COCO_JSON",
                   help="COCO captions file to use instead of the captioning model")
    p.add_argument("--captions-per-image", type=int,
                   help="at most this many file captions per image (default: all), or this "
                        "many model captions (default: 1)")
    p.add_argument("--max-images", type=int, metavar="N",
                   help="use a seeded random subset of N source images (default: all)")
    p.add_argument("--captioner", default=DEFAULT_CAPTIONER, metavar="MODEL",
                   help="transformers image-to-text model id or folder (default: %(default)s)")
    p.add_argument("--caption-batch-size", type=int, default=8)
    p.add_argument("--max-caption-tokens", type=int, default=30)
    p.add_argument("--classes", nargs="+",
                   help="target classes to rewrite and reject (default: all COCO + VOC)")
    p.add_argument("--distractors", metavar="JSON",
                   help='more distractor words, {"supercategory": ["word", ...]}')
    p.add_argument("--rewrite-only", action="store_true",
                   help="stop after writing OUT/captions.jsonl")
    p.add_argument("--generator", default=DEFAULT_GENERATOR, metavar="MODEL",
                   help="diffusers text-to-image model id or folder (default: %(default)s)")
    p.add_argument("--images-per-caption", type=int, default=10, help="generated per caption")
    p.add_argument("--keep", type=int, default=5,
                   help="best images kept per caption by CLIP caption similarity")
    p.add_argument("--batch-size", type=int, default=4, help="images per generator call")
    p.add_argument("--steps", type=int, default=30, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--height", type=int, help="generated height (default: the model's)")
    p.add_argument("--width", type=int, help="generated width (default: the model's)")
    p.add_argument("--clip", default=DEFAULT_CLIP, metavar="MODEL",
                   help="transformers CLIP model id or folder (default: %(default)s)")
    p.add_argument("--reject-threshold", type=float, default=0.28,
                   help='reject images whose CLIP cosine similarity to any "a photo of a '
                        '{class}" is above this')
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (fp16 on cuda)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    common(p)
    p.set_defaults(func=_cmd_backgrounds)

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
    p.set_defaults(func=_cmd_evaluate_masks)

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
    p.add_argument("--jitter", type=_float_pair, default=(0.1, 2.0), metavar="LO,HI",
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
    p.add_argument("--steps", type=_fractions, default=(0.667, 0.889), metavar="F,F",
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

    p = sub.add_parser("viz", help="draw masks, boxes and classes; write a contact sheet")
    p.add_argument("coco_json")
    p.add_argument("--images", required=True, help="folder of the images")
    p.add_argument("--out", required=True)
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    common(p)
    p.set_defaults(func=_cmd_viz)

    p = sub.add_parser("stats", help="instances per class and an object-size histogram")
    p.add_argument("coco_json")
    p.add_argument("--images", help="also check that the image files exist")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WeakpasteError as err:
        print(f"weakpaste: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weakpaste: interrupted; everything written so far is kept (rerun the same "
              "command with --resume where offered)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
