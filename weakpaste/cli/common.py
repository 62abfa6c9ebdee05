"""Parsers and helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from weakpaste.errors import WeakpasteError
from weakpaste.options import parse_float_pair


def common(p: argparse.ArgumentParser, out: bool = True) -> None:
    """``--overwrite`` (for commands with an output folder) and ``--quiet``."""
    if out:
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing weakpaste output in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def float_pair(text: str) -> tuple[float, float]:
    """argparse ``type`` of ``weakpaste.options.parse_float_pair``."""
    try:
        return parse_float_pair(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def count_range(text: str) -> tuple[int, int]:
    from weakpaste.paste.plan import parse_count_range

    try:
        return parse_count_range(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def read_weights(path: str) -> dict[str, float]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WeakpasteError(f"{path}: class weights file not found") from None
    except json.JSONDecodeError as err:
        raise WeakpasteError(f"{path}: not valid JSON ({err.msg}); write an object like "
                             '{"dog": 2.0, "cat": 1.0}') from None
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise WeakpasteError(f"{path}: class weights must be a JSON object of class name -> "
                             'number, e.g. {"dog": 2.0, "cat": 1.0}')
    return {str(k): float(v) for k, v in data.items()}



def torch_threads(threads: int | None) -> None:
    """Set up torch for a training or evaluation command (call before importing torch).

    Idle OpenMP threads sleep instead of spinning: spinning threads fight the data loader and
    any other process for the cores, and on a busy 2-core machine made a Mask R-CNN step ten
    times slower. An explicit OMP_WAIT_POLICY in the environment wins.
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads:
        import torch

        torch.set_num_threads(threads)

