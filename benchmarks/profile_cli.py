"""CPU seconds per stage of a ``weakpaste`` command, run in this process on one thread.

cProfile with the process CPU clock (``time.process_time``), torch on one thread, so the
numbers do not depend on the machine's load (a wall clock does). Run ``mine fem`` with
``--workers 1`` (the per-image stage then runs in this process and is profiled too). Prints
the cumulative CPU seconds of the functions that make up F-EM's stages; ``--per N`` also
divides them by N (the number of images).

Usage:
    python benchmarks/profile_cli.py [--per N] [--top K] -- mine fem --images ... --workers 1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

# (stage, (file suffix, function name)) of the default F-EM path; a function called inside
# another one listed is counted in both (cumulative times).
STAGES = (
    ("whole command", ("weakpaste/cli/__init__.py", "main")),
    ("classifier (train or load)", ("weakpaste/mine/pipeline.py", "get_classifier")),
    ("per-image stage, all", ("weakpaste/mine/pipeline.py", "mine_images")),
    ("  read + decode image", ("weakpaste/io/images.py", "read_image")),
    ("  proposals", ("weakpaste/mine/fem_image.py", "_proposals")),
    ("  Grad-CAM", ("weakpaste/models/classifier.py", "gradcam")),
    ("  candidates' crops: scores + features", ("weakpaste/models/classifier.py",
                                                 "score_segments")),
    ("  candidates' RLEs", ("weakpaste/ops/masks.py", "encode_many")),
    ("  cache write", ("weakpaste/mine/cache.py", "dumps")),
    ("selection (EM and the picks)", ("weakpaste/mine/fem.py", "select")),
    ("  EM", ("weakpaste/mine/fem_image.py", "em_choices")),
    ("writing bank + pseudo_labels", ("weakpaste/mine/outputs.py", "write_outputs")),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per", type=int, default=0, help="also print seconds / N")
    parser.add_argument("--top", type=int, default=0, help="also print the K most costly")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- weakpaste arguments")
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv

    import torch

    torch.set_num_threads(1)
    from weakpaste.cli import main as weakpaste_main

    prof = cProfile.Profile(time.process_time)
    code = prof.runcall(weakpaste_main, argv)
    stats = pstats.Stats(prof)
    cum = {}
    for (file, _, name), (_, _, _, ct, _) in stats.stats.items():
        cum[(file, name)] = cum.get((file, name), 0.0) + ct
    print(f"exit code {code}; CPU seconds (process_time, one torch thread)"
          + (f"; per image over {args.per}" if args.per else ""))
    for stage, (suffix, name) in STAGES:
        secs = sum(v for (f, n), v in cum.items() if f.endswith(suffix) and n == name)
        per = f"  {secs / args.per:8.3f}" if args.per else ""
        print(f"{stage:<42}{secs:9.2f}{per}")
    if args.top:
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
