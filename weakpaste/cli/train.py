"""``train``, ``eval`` and ``longtail``.

The options come from ``weakpaste.train.config`` (``add_options`` / ``from_args``); this module
adds the inputs and outputs of each command and prints the results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from weakpaste.cli.common import (
    add_run_options,
    command,
    run_options,
    threads,
    torch_threads,
)
from weakpaste.core.options import add_options, from_args


def _note(message: str) -> None:
    """A one-line remark about the input, on stderr (stdout stays for results)."""
    print(f"weakpaste: note: {message}", file=sys.stderr)


def _cmd_train(args: argparse.Namespace) -> int:
    torch_threads(args.threads)
    from weakpaste.evaluate.detection import format_metrics
    from weakpaste.train.config import TrainConfig
    from weakpaste.train.loop import TrainInputs, run_train

    inputs = from_args(TrainInputs, args)
    manifest = run_train(from_args(TrainConfig, args), inputs, run_options(args), on_note=_note)
    c = manifest["counts"]
    images = ", ".join(f"{k}: {v} images" for k, v in c["images"].items())
    print(f"trained {c['iterations']} iterations ({images}) on {c['classes']} classes; "
          f"model: {Path(args.out) / 'checkpoints' / 'last.pt'}")
    if args.val:
        metrics_path = Path(args.out) / "eval" / "metrics.json"
        print(f"\nevaluation on {args.val} ({metrics_path}):")
        print(format_metrics(json.loads(metrics_path.read_text())))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    torch_threads(args.threads)
    from weakpaste.evaluate.detection import format_metrics
    from weakpaste.train.config import EvalConfig
    from weakpaste.train.evaluation import EvalInputs, run_eval

    inputs = from_args(EvalInputs, args)
    metrics = run_eval(from_args(EvalConfig, args), inputs, run_options(args))
    for message in metrics["info"]["notes"]:
        _note(message)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    return 0


def _cmd_longtail(args: argparse.Namespace) -> int:
    from weakpaste.train.config import LongtailConfig
    from weakpaste.train.longtail import LongtailInputs, format_report, run_longtail

    report = run_longtail(from_args(LongtailConfig, args), from_args(LongtailInputs, args),
                          run_options(args))
    for message in report["notes"]:
        _note(message)
    print(format_report(report))
    c = report["counts"]
    print(f"wrote {c['images']} images, {c['annotations']} annotations of {c['classes']} "
          f"classes to {args.out}")
    return 0


def _build_train(p: argparse.ArgumentParser) -> None:
    from weakpaste.train.config import TrainConfig
    from weakpaste.train.loop import TrainInputs

    data = p.add_argument_group("data")
    add_options(data, TrainInputs)
    add_options(p.add_argument_group("training"), TrainConfig)
    threads(p)
    # No --workers: the DataLoader's workers are a training setting.
    add_run_options(data, "out", "overwrite", "resume", "quiet",
                    helps={"resume": "continue from OUT/checkpoints/last.pt"})
    p.set_defaults(func=_cmd_train)


def _build_eval(p: argparse.ArgumentParser) -> None:
    from weakpaste.train.config import EvalConfig
    from weakpaste.train.evaluation import EvalInputs

    source = ("checkpoint", "predictions")
    add_options(p.add_mutually_exclusive_group(required=True), EvalInputs, only=source)
    add_options(p, EvalInputs, exclude=source)
    add_options(p, EvalConfig)
    threads(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_run_options(p, "out", "overwrite", "quiet", out_required=False,
                    helps={"out": "output folder (default: eval-<data name> beside the run)"})
    p.set_defaults(func=_cmd_eval)


def _build_longtail(p: argparse.ArgumentParser) -> None:
    from weakpaste.train.config import LongtailConfig
    from weakpaste.train.longtail import LongtailInputs

    add_options(p, LongtailInputs)
    add_run_options(p, "out", "overwrite", out_metavar="COCO_JSON",
                    helps={"out": "the subset to write",
                           "overwrite": "replace an existing --out file"})
    add_options(p, LongtailConfig)
    p.set_defaults(func=_cmd_longtail)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the top-level parser (arguments built when used)."""
    command(sub, "train", "train Mask R-CNN on COCO data sets and evaluate it", _build_train)
    command(sub, "eval", "COCO or LVIS AP (bbox, segm, per class, rare/common/frequent) of a "
                         "checkpoint or a results file", _build_eval)
    command(sub, "longtail", "long-tailed subset of a COCO file (Pareto class sizes, EM-Paste "
                             "appendix 11)", _build_longtail)
