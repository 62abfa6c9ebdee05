"""``backgrounds``: generated context backgrounds."""

from __future__ import annotations

import argparse
from pathlib import Path

from weakpaste.cli.common import (
    common,
)


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



def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the top-level parser."""
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

