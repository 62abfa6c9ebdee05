"""What the mining benchmarks share: where the shared data is and the model options."""

from __future__ import annotations

import argparse
from pathlib import Path

# ../shared next to the checkout (/work/main), or two levels up from a worktree (/work/wt/x).
SHARED = next((p / "shared" for p in Path(__file__).resolve().parents[1:4]
               if (p / "shared").is_dir()), Path(__file__).resolve().parents[2] / "shared")


def model_parser(description: str, data: str) -> argparse.ArgumentParser:
    """A parser with ``--data`` (default ``../shared/data/<data>``), ``--backbone``,
    ``--weights`` (required: benchmarks use local weights only), ``--workers``, ``--epochs``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / data)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", required=True,
                        help="a local torchvision state_dict, e.g. "
                             "../shared/weights/mobilenet_v2_imagenet.pth")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    return parser
