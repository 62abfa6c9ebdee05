"""``bank``, ``paste``, ``viz`` and ``stats``: the commands that never import torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from weakpaste.cli.common import add_run_options, command, run_options
from weakpaste.core.options import add_options, from_args


def _cmd_paste(args: argparse.Namespace) -> int:
    from weakpaste.paste.run import PasteConfig, PasteInputs, run_paste

    manifest = run_paste(from_args(PasteConfig, args), from_args(PasteInputs, args),
                         run_options(args))
    c = manifest["counts"]
    print(f"wrote {c['images']} images, {c['annotations']} instances "
          f"({c['dropped_total']} dropped by occlusion) to {args.out}")
    if "lvis" in c:
        new = c["lvis"]["classes_not_in_backgrounds"]
        print(f"LVIS format: {c['lvis']['negative_labels']} verified-absent labels kept"
              + (f"; {len(new)} bank class(es) not in the backgrounds' categories added as rare: "
                 + ", ".join(new[:8]) if new else ""))
    return 0


def _cmd_bank_from_coco(args: argparse.Namespace) -> int:
    from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco

    config = from_args(BankConfig, args)
    manifest = run_bank_from_coco(config, from_args(BankInputs, args), run_options(args))
    c = manifest["counts"]
    crowd = c["crowd_skipped"]
    print(f"wrote {c['segments']} segments of {len(c['per_class'])} classes to {args.out} "
          f"({c['skipped_small']} smaller than {config.min_area} px and {crowd} crowd "
          f"region{'' if crowd == 1 else 's'} (iscrowd=1) skipped)")
    return 0


def _cmd_bank_info(args: argparse.Namespace) -> int:
    from weakpaste.bank.store import SegmentBank

    counts = SegmentBank(args.bank).class_counts()
    width = max((len(k) for k in counts), default=5)
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{name:<{width}}  {n:>7}")
    print(f"{'total':<{width}}  {sum(counts.values()):>7}")
    return 0


def _cmd_viz(args: argparse.Namespace) -> int:
    from weakpaste.report.viz import VizConfig, VizInputs, run_viz

    run_viz(from_args(VizConfig, args), from_args(VizInputs, args), run_options(args))
    print(f"contact sheet: {Path(args.out) / 'contact_sheet.png'}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from weakpaste.report.stats import StatsInputs, format_stats, run_stats

    stats = run_stats(None, from_args(StatsInputs, args))
    print(json.dumps(stats, indent=2) if args.json else f"{args.coco_json}\n\n"
          f"{format_stats(stats)}")
    return 0



def _build_bank(p: argparse.ArgumentParser) -> None:
    from weakpaste.bank.from_coco import BankConfig, BankInputs

    bank_sub = p.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    q = bank_sub.add_parser("from-coco", help="cut the instances of a COCO (or LVIS) data set "
                                              "into a bank")
    add_options(q, BankInputs)
    add_options(q, BankConfig)
    # Cutting masks uses no GPU: a reservation per Ray worker would only hold GPUs idle; a
    # bank is cut in one go (no --resume).
    add_run_options(q, "out", "overwrite", "workers", "executor", "ray_address", "quiet",
                    helps={"out": "bank folder to create"})
    q.set_defaults(func=_cmd_bank_from_coco)
    q = bank_sub.add_parser("info", help="segments per class of a bank")
    q.add_argument("bank", help="segment bank folder (made by 'bank from-coco' or 'mine')")
    q.set_defaults(func=_cmd_bank_info)


def _build_paste(p: argparse.ArgumentParser) -> None:
    from weakpaste.paste.run import PasteConfig, PasteInputs

    add_options(p, PasteInputs)
    add_options(p, PasteConfig)
    # Pasting uses no GPU: a reservation per Ray worker would only hold GPUs idle.
    add_run_options(p, "out", "overwrite", "resume", "workers", "executor", "ray_address",
                    "quiet", helps={"resume": "continue an interrupted run"})
    p.set_defaults(func=_cmd_paste)


def _build_viz(p: argparse.ArgumentParser) -> None:
    from weakpaste.report.viz import VizConfig, VizInputs

    add_options(p, VizInputs)
    add_options(p, VizConfig)
    add_run_options(p, "out", "overwrite", "quiet",
                    helps={"out": "output folder: the drawn images and contact_sheet.png"})
    p.set_defaults(func=_cmd_viz)


def _build_stats(p: argparse.ArgumentParser) -> None:
    from weakpaste.report.stats import StatsInputs

    add_options(p, StatsInputs)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_stats)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the top-level parser."""
    command(sub, "bank", "build or inspect a segment bank", _build_bank)
    command(sub, "paste", "paste bank segments onto backgrounds into a COCO or LVIS data set",
            _build_paste)
    command(sub, "viz", "draw masks, boxes and classes; write a contact sheet", _build_viz)
    command(sub, "stats", "instances per class and an object-size histogram", _build_stats)
