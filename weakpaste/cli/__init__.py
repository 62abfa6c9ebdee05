"""The ``weakpaste`` command line: parses arguments, then calls a stage's ``run_*`` function.

One module per group of commands (``data``: bank, paste, viz, stats; ``mine``; ``train``;
``demo``; ``backgrounds``), each with its handlers and a ``register`` that adds its
sub-parsers. Heavy modules (OpenCV, pycocotools, torch) are imported inside the handlers so
that ``weakpaste --help`` answers at once and the paste/bank/viz/stats stages never load torch.

May import: anything; nothing else imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from weakpaste import __version__
from weakpaste.cli import backgrounds, data, demo, mine, train
from weakpaste.cli.common import build_commands
from weakpaste.core.errors import Terminated, WeakpasteError
from weakpaste.core.memory import keep_freed_memory
from weakpaste.core.options import ArgumentParser


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
    """Entry point. Returns the exit code (0 ok, 2 bad input, 130 interrupted by Ctrl-C, 143
    by SIGTERM).

    Every failure the user can fix is one line on stderr: a ``WeakpasteError``, and a write
    that fails because the disk is full or read-only wherever it was not already named
    (``weakpaste.core.files.write_error``).
    """
    argv = mine.rewrite_alias(sys.argv[1:] if argv is None else list(argv))
    keep_freed_memory()  # before the stage allocates; its forked workers inherit it
    args = None
    try:
        with _sigterm_interrupts():
            args = build_parser(argv).parse_args(argv)
            return int(args.func(args) or 0)
    except WeakpasteError as err:
        return _fail(str(err))
    except OSError as err:
        from weakpaste.core.files import WRITE_ERRNOS, write_error

        if err.errno not in WRITE_ERRNOS:
            raise
        where = Path(err.filename or getattr(args, "out", None) or ".")
        return _fail(str(write_error(where if where.is_dir() else where.parent, err)))
    except KeyboardInterrupt as err:
        how = " by SIGTERM" if isinstance(err, Terminated) else ""
        print(f"weakpaste: interrupted{how}; everything written so far is kept (rerun the same "
              "command with --resume where offered)", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM raise ``Terminated`` meanwhile (Python's default ends the process at once,
    without a word and with files half-made; only the main thread may set handlers).

    Pool workers ignore it, as they ignore Ctrl-C, and the driver ends them
    (``weakpaste.core.runners``); torch's data-loader workers take it as the Ctrl-C they already
    handle (the exception derives from KeyboardInterrupt).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        # A second SIGTERM must not interrupt the cleanup that the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str) -> int:
    print(f"weakpaste: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
