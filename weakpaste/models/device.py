"""The torch device of ``--device``: one check for every stage that runs a model."""

from __future__ import annotations

import torch

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import check_device


def resolve_device(device: str) -> torch.device:
    """The torch device of ``--device`` (cpu, cuda or cuda:N).

    Raises:
        WeakpasteError: another name, or CUDA asked for where torch has none.
    """
    check_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WeakpasteError(f"--device {device}: no CUDA device is available to torch here; "
                             "use --device cpu")
    return torch.device(device)
