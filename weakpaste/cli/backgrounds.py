"""``backgrounds``: generated context backgrounds."""

from __future__ import annotations

import argparse
from pathlib import Path

from weakpaste.cli.common import command, common, workers
from weakpaste.core.options import add_options, from_args


def _cmd_backgrounds(args: argparse.Namespace) -> int:
    from weakpaste.backgrounds.run import BackgroundsConfig, run_backgrounds
    from weakpaste.core.runners import ExecutorConfig

    manifest = run_backgrounds(from_args(BackgroundsConfig, args), args.images, args.out,
                               captions=args.captions, overwrite=args.overwrite,
                               resume=args.resume, progress=not args.quiet,
                               workers=args.workers, executor=from_args(ExecutorConfig, args))
    c = manifest["counts"]
    print(f"rewrote {c['captions_rewritten']} of {c['captions']} captions "
          f"({c['replacements']} replacements) into {Path(args.out) / 'captions.jsonl'}")
    if not args.rewrite_only:
        print(f"kept {c['backgrounds']} of {c['generated']} generated images "
              f"({c['rejected_by_class']} rejected as showing a target class) in "
              f"{Path(args.out) / 'images'}; use: weakpaste paste --extra-backgrounds {args.out}")
    return 0


def _build(p: argparse.ArgumentParser) -> None:
    from weakpaste.backgrounds.run import BackgroundsConfig
    from weakpaste.core.runners import ExecutorConfig

    p.add_argument("--images", required=True, help="folder of the source images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--captions", metavar="COCO_JSON",
                   help="COCO captions file to use instead of the captioning model")
    add_options(p, BackgroundsConfig)
    workers(p)
    add_options(p, ExecutorConfig)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    common(p)
    p.set_defaults(func=_cmd_backgrounds)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``backgrounds`` to the top-level parser."""
    command(sub, "backgrounds", "context backgrounds: caption, rewrite target-class words, "
                                "generate, select with CLIP (EM-Paste)", _build)
