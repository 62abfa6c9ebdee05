"""``backgrounds``: generated context backgrounds."""

from __future__ import annotations

import argparse
from pathlib import Path

from weakpaste.cli.common import add_run_options, command, run_options
from weakpaste.core.options import add_options, from_args


def _cmd_backgrounds(args: argparse.Namespace) -> int:
    from weakpaste.backgrounds.run import BackgroundsConfig, BackgroundsInputs, run_backgrounds

    manifest = run_backgrounds(from_args(BackgroundsConfig, args),
                               from_args(BackgroundsInputs, args), run_options(args))
    c = manifest["counts"]
    print(f"rewrote {c['captions_rewritten']} of {c['captions']} captions "
          f"({c['replacements']} replacements) into {Path(args.out) / 'captions.jsonl'}")
    if not args.rewrite_only:
        print(f"kept {c['backgrounds']} of {c['generated']} generated images "
              f"({c['rejected_by_class']} rejected as showing a target class) in "
              f"{Path(args.out) / 'images'}; use: weakpaste paste --extra-backgrounds {args.out}")
    return 0


def _build(p: argparse.ArgumentParser) -> None:
    from weakpaste.backgrounds.run import BackgroundsConfig, BackgroundsInputs
    add_options(p, BackgroundsInputs)
    add_options(p, BackgroundsConfig)
    add_run_options(p, "out", "overwrite", "resume", "workers", "executor", "ray_address",
                    "gpus_per_worker", "quiet", helps={"resume": "continue an interrupted run"})
    p.set_defaults(func=_cmd_backgrounds)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``backgrounds`` to the top-level parser."""
    command(sub, "backgrounds", "context backgrounds: caption, rewrite target-class words, "
                                "generate, select with CLIP (EM-Paste)", _build)
