"""The ``weakpaste`` command line: parses arguments, then calls a stage's ``run_*`` function.

One module per group of commands (``data``: bank, paste, viz, stats; ``mine``; ``train``;
``demo``; ``backgrounds``), each with its handlers and a ``register`` that adds its
sub-parsers. Heavy modules (OpenCV, pycocotools, torch) are imported inside the handlers so
that ``weakpaste --help`` answers at once and the paste/bank/viz/stats stages never load torch.
"""

from __future__ import annotations

import argparse
import sys

from weakpaste import __version__
from weakpaste.cli import backgrounds, data, demo, mine, train
from weakpaste.cli.common import build_commands
from weakpaste.errors import WeakpasteError
from weakpaste.options import ArgumentParser


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (given ``argv``) one whose only built command is argv's."""
    parser = ArgumentParser(
        prog="weakpaste",
        description="Instance-segmentation training data without mask annotations: mine masks "
                    "from image-level labels, paste them onto backgrounds, export COCO.")
    parser.add_argument("--version", action="version", version=f"weakpaste {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for module in (demo, data, backgrounds, mine, train):
        module.register(sub)
    build_commands(parser, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
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
