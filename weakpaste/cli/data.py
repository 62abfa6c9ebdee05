"""``bank``, ``paste``, ``viz`` and ``stats``: the commands that never import torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from weakpaste.cli.common import (
    common,
    count_range,
    float_pair,
    read_weights,
)


def _cmd_paste(args: argparse.Namespace) -> int:
    from weakpaste.paste.run import PasteConfig, run_paste

    config = PasteConfig(
        num_images=args.num_images, seed=args.seed, objects=args.objects,
        selection=args.selection,
        class_weights=read_weights(args.class_weights) if args.class_weights else None,
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
                         progress=not args.quiet, class_weights_file=args.class_weights)
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



def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the top-level parser."""
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
    p.add_argument("--objects", type=count_range, default=(4, 4), metavar="N|LO-HI",
                   help="objects pasted per image, fixed or a range (default: 4)")
    p.add_argument("--selection", choices=["uniform", "balanced", "weights"], default="uniform",
                   help="uniform over segments, class-balanced, or per-class weights")
    p.add_argument("--class-weights", metavar="JSON", help='{"class": weight, ...}')
    p.add_argument("--classes", nargs="+", help="paste only these classes")
    p.add_argument("--placement", choices=["random", "space-max", "jitter"], default="random")
    p.add_argument("--rotation", type=float, default=15.0, help="max |rotation| in degrees")
    p.add_argument("--flip-prob", type=float, default=0.5)
    p.add_argument("--random-scale", type=float_pair, default=(0.3, 1.0), metavar="LO,HI",
                   help="random placement: scale range of the size that fits")
    p.add_argument("--jitter-scale", type=float_pair, default=(0.1, 2.0), metavar="LO,HI",
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
