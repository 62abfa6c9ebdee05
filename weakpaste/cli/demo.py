"""``demo``: the whole pipeline on synthetic scenes."""

from __future__ import annotations

import argparse

from weakpaste.cli.common import add_run_options, command, run_options, torch_threads
from weakpaste.core.options import add_options, from_args


def _cmd_demo(args: argparse.Namespace) -> int:
    # Idle OpenMP threads sleep: the classifier trains while other work shares the cores.
    torch_threads(None)
    from weakpaste.demo.run import DemoConfig, DemoInputs, run_demo

    result = run_demo(from_args(DemoConfig, args), DemoInputs(), run_options(args))
    print(format_demo(result))
    return 0


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def format_demo(result: dict) -> str:
    """The demo's report: mined-mask quality, the F-EM funnel, statistics, where things are."""
    from weakpaste.evaluate.funnel import format_funnel
    from weakpaste.evaluate.masks import format_table
    from weakpaste.report.stats import StatsInputs, format_stats, run_stats

    lines = []
    if result["quality"] is not None:
        overall = result["quality"]["overall"]
        lines += ["", f"F-EM mined {result['segments']} masks from the image-level labels of "
                  f"{overall['labelled_pairs']} (scene, class) pairs; classifier: "
                  f"{result['classifier']}.", "(the same as: " + result["mine_command"] + ")",
                  "", "quality against the hidden ground truth:",
                  format_table(result["quality"]), "", "F-EM " + format_funnel(result["funnel"])]
        lines += ["", f"mined precision@0.5 {overall['precision@0.5']:.1%}, pair yield@0.5 "
                  f"{overall['pair_yield@0.5']:.1%}"]
    lines += ["", format_stats(run_stats(None, StatsInputs(result["pasted"]["annotations_json"])))]
    source = ("F-EM from image-level labels; mined masks: " + str(result["viz_mined"])
              if result["quality"] is not None else "ground truth")
    lines += ["", f"synthetic scenes : {result['scenes']}",
              f"segment bank     : {result['bank']} ({result['segments']} segments, {source})",
              f"pasted COCO set  : {result['pasted']['annotations_json']} "
              f"({result['pasted']['images']} images, {result['pasted']['annotations']} "
              "instances)",
              f"contact sheet    : {result['pasted']['contact_sheet']}",
              f"took {_minutes(result['seconds_mining'])}"]
    if result["train"] is not None:
        lines += ["", _format_train(result["train"]),
                  f"demo --train took {_minutes(result['seconds'])} in all"]
    return "\n".join(lines)


def _format_train(train: dict) -> str:
    lines = [f"Mask R-CNN, {train['iterations']} iterations per run (stage 1 on the pasted "
             f"set, stage 2 on the scenes), evaluated on {train['val']} (held-out scenes):",
             f"  {'trained on':<44} {'segm AP50':>9} {'bbox AP50':>9} {'time':>11}"]
    what = {"mined": "mined masks (image-level labels only)",
            "ground truth": "ground-truth masks (the ceiling)"}
    for run, m in train["metrics"].items():
        lines.append(f"  {what[run]:<44} {m['segm']['AP50']:9.1%} {m['bbox']['AP50']:9.1%} "
                     f"{_minutes(train['seconds'][run]):>11}")
    return "\n".join(lines)


def _build(p: argparse.ArgumentParser) -> None:
    from weakpaste.demo.run import DemoConfig

    add_options(p, DemoConfig)
    add_run_options(p, "out", "overwrite", "workers", "quiet",
                    defaults={"out": "weakpaste-demo", "workers": 2})
    p.set_defaults(func=_cmd_demo)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the top-level parser."""
    command(sub, "demo", "run the pipeline end to end on embedded synthetic scenes, offline",
            _build)
