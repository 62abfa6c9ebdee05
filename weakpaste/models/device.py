"""The torch device of the ``device`` option: one check for every stage that runs a model."""

from __future__ import annotations

import torch

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import DEVICE_FLAG, check_device


def resolve_device(device: str, *, auto: bool = False) -> torch.device:
    """The torch device of the ``device`` option: cpu, cuda, cuda:N, and where ``auto``
    (a stage whose option accepts it, ``device_option(auto=True)``) auto: cuda when torch
    has one, else cpu.

    Raises:
        WeakpasteError: another name, or CUDA asked for where torch has none.
    """
    check_device(device, auto=auto)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WeakpasteError(f"{DEVICE_FLAG} {device}: no CUDA device is available to torch "
                             f"here; use {DEVICE_FLAG} cpu")
    return torch.device(device)
