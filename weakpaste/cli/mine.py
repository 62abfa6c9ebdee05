"""``mine fem``, ``mine freeseg`` and ``evaluate-masks``.

Each mining method is a sub-command listing only its own options, built from its config
dataclass (``weakpaste.core.options``). The older ``mine --method fem|freeseg ...`` still works:
``rewrite_alias`` turns it into ``mine fem|freeseg ...`` before parsing, and ``mine`` given
options but no method means ``mine fem``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from weakpaste.cli.common import add_run_options, command, run_options
from weakpaste.core.options import add_options, from_args

METHODS = ("fem", "freeseg")


def rewrite_alias(argv: list[str]) -> list[str]:
    """``mine --method X ...`` -> ``mine X ...``; ``mine --opt ...`` -> ``mine fem --opt ...``.

    Other command lines come back unchanged (``mine`` alone or with only ``--help`` lists the
    methods).
    """
    at = next((k for k, a in enumerate(argv) if not a.startswith("-")), None)
    if at is None or argv[at] != "mine":
        return list(argv)
    rest = argv[at + 1:]
    if not rest or not rest[0].startswith("-"):
        return list(argv)  # a method (or an unknown word argparse will name)
    method, kept, k = None, [], 0
    while k < len(rest):
        if rest[k] == "--method" and k + 1 < len(rest):
            method, k = rest[k + 1], k + 2
            continue
        if rest[k].startswith("--method="):
            method = rest[k].split("=", 1)[1]
        else:
            kept.append(rest[k])
        k += 1
    if method is None:
        if all(a in ("-h", "--help") for a in kept):
            return list(argv)
        method = "fem"
    return [*argv[:at + 1], method, *kept]


def _run(args: argparse.Namespace) -> tuple:
    """The inputs and run options of a ``mine`` command."""
    from weakpaste.mine.pipeline import MineInputs

    return from_args(MineInputs, args), run_options(args)


def _print_skipped(skipped: dict, what: str) -> None:
    if skipped:
        print(f"skipped{what}: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())),
              file=sys.stderr)


def _cmd_mine_fem(args: argparse.Namespace) -> int:
    from weakpaste.mine.config import FemConfig
    from weakpaste.mine.fem import run_mine_fem

    config = from_args(FemConfig, args)
    manifest = run_mine_fem(config, *_run(args), save_baselines=args.save_baselines)
    c = manifest["counts"]
    _print_skipped(c["skipped"], " (image, class) pairs")
    print(f"mined {c['segments']} segments of {len(c['per_class'])} classes from "
          f"{c['labelled_images']} images into {args.out} "
          f"(pseudo-labels: {Path(args.out) / 'pseudo_labels.json'})")
    return 0


def _cmd_mine_freeseg(args: argparse.Namespace) -> int:
    from weakpaste.mine.config import FreeSegConfig
    from weakpaste.mine.freeseg import run_mine_freeseg

    config = from_args(FreeSegConfig, args)
    manifest = run_mine_freeseg(config, *_run(args), save_baselines=args.save_baselines)
    c = manifest["counts"]
    fallback = manifest["coseg"]["fallback_classes"]
    if fallback:
        print(f"note: {len(fallback)} class(es) with a single image cannot be co-segmented; "
              f"their saliency map was used alone: {', '.join(fallback)}", file=sys.stderr)
    _print_skipped(c["skipped"], "")
    where = " per class" if config.keep_per_class else ""
    print(f"kept {c['segments']} of {c['refined_segments']} segments (top "
          f"{config.keep_top:.0%}{where} by {' + '.join(config.rank_cues)}, ranking score >= "
          f"{config.min_rank}; FreeSeg score > {config.min_score}, drop rate > "
          f"{config.min_drop}) of {len(c['per_class'])} "
          f"classes from {c['object_centric_images']} images into {args.out} "
          f"(pseudo-labels: {Path(args.out) / 'pseudo_labels.json'})")
    return 0


def _cmd_evaluate_masks(args: argparse.Namespace) -> int:
    from weakpaste.evaluate.funnel import (
        EvaluateMasksConfig,
        EvaluateMasksInputs,
        run_evaluate_masks,
    )

    print(run_evaluate_masks(from_args(EvaluateMasksConfig, args),
                             from_args(EvaluateMasksInputs, args), run_options(args)))
    return 0


def _add_run_options(p: argparse.ArgumentParser, baselines: str) -> None:
    """Inputs, output and how to run: what is not a setting of the method."""
    from weakpaste.core.run import RUN_FIELDS
    from weakpaste.mine.pipeline import SAVE_BASELINES_FLAG, MineInputs

    add_options(p, MineInputs)
    add_run_options(p, *RUN_FIELDS, helps={"out": "bank folder to create"})
    p.add_argument(SAVE_BASELINES_FLAG, action="store_true", help=baselines)


def _build_method(config_name: str, func, baselines: str):
    """The builder of one method's arguments: run options, the classifier, the method's own."""

    def build(p: argparse.ArgumentParser) -> None:
        from weakpaste.mine import config

        _add_run_options(p, baselines)
        add_options(p.add_argument_group("classifier"), config.ClassifierSpec)
        add_options(p.add_argument_group(p.prog.split()[-1]), getattr(config, config_name),
                    exclude=("model",))
        p.set_defaults(func=func)

    return build


def _build_mine(p: argparse.ArgumentParser) -> None:
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    command(methods, "fem", "EM-Paste's F-EM on scene images with class tags",
            _build_method("FemConfig", _cmd_mine_fem,
                          baselines="also write baselines/cam.json, step1.json and the funnel "
                                    "(candidates, top_n, step1_pick, em_pick, evidence_pick, "
                                    "cam_peak; evaluate-masks reports it)"))
    command(methods, "freeseg", "FreeSeg co-segmentation + ranking on object-centric images "
                                "(one class each)",
            _build_method("FreeSegConfig", _cmd_mine_freeseg,
                          baselines="also write baselines/raw.json, refined.json and "
                                    "random.json"))


def _build_evaluate_masks(p: argparse.ArgumentParser) -> None:
    from weakpaste.evaluate.funnel import EvaluateMasksConfig, EvaluateMasksInputs

    add_options(p, EvaluateMasksInputs)
    add_run_options(p, "out", "overwrite", out_required=False, out_metavar="JSON",
                    helps={"out": "also write the metrics to this JSON file",
                           "overwrite": "replace an existing --out file"})
    add_options(p, EvaluateMasksConfig)
    p.set_defaults(func=_cmd_evaluate_masks)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the top-level parser."""
    # 'mine --method X' (the older spelling of 'mine X') is rewritten by rewrite_alias.
    command(sub, "mine", "mine object masks from image-level labels into a segment bank",
            _build_mine)
    command(sub, "evaluate-masks",
            "pseudo-label quality of a bank or COCO file against ground truth",
            _build_evaluate_masks)
