"""What a ``--weights`` value means: torchvision's DEFAULT ImageNet weights, a file, or none.

One parser for the command line (``parse_weights``, the ``parse=`` of every ``weights``
option) and one resolver (``resolve_weights``) for the mining classifier and Mask R-CNN, so
that "DEFAULT", "none" and a path mean the same everywhere and a missing file reads the same.

Nothing here imports torch: the command line parses options with it before any model exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from weakpaste.core.errors import WeakpasteError

WEIGHTS_FLAG, BACKBONE_FLAG = "--weights", "--backbone"
INPUT_SIZE_FLAG, CROP_SIZE_FLAG = "--input-size", "--crop-size"
CHECKPOINT_FLAG = "--checkpoint"
"""The flags of the options that build a model, named once here for the messages of the model
code, which lies below the stages that declare the options (``mine.config.ClassifierSpec``,
``train.config.TrainConfig``, ``demo.run.DemoConfig``, ``eval``'s ``EvalInputs``);
``tests/test_flags.py`` checks that those declarations spell them so."""

WEIGHTS_FIX = (f"pass {WEIGHTS_FLAG} PATH to a torchvision state_dict, {WEIGHTS_FLAG} DEFAULT "
               f"or {WEIGHTS_FLAG} none")
"""The fix named by every error about a ``--weights`` value."""

WeightsArg = str | os.PathLike | None
"""A weights value: "DEFAULT", "none" / None, or a path."""


def is_none(weights: WeightsArg) -> bool:
    """True for None or "none" (any case): a random initialisation."""
    return weights is None or (isinstance(weights, str) and weights.lower() == "none")


def is_default(weights: WeightsArg) -> bool:
    """True for "DEFAULT" (any case): torchvision's ImageNet weights."""
    return isinstance(weights, str) and weights.upper() == "DEFAULT"


def parse_weights(text: str) -> str | None:
    """The command line's ``--weights`` value: "none" (any case) becomes None.

    Args:
        text: "DEFAULT", "none" or a path.

    Returns:
        None for a random initialisation, else ``text`` unchanged.
    """
    return None if is_none(text) else text


@dataclass(frozen=True)
class WeightsSource:
    """A resolved weights value.

    Attributes:
        kind: "none" (random initialisation), "default" (torchvision's ImageNet weights,
            downloaded by torchvision) or "file".
        path: the file, for "file".
    """

    kind: str
    path: Path | None = None

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"


def resolve_weights(weights: WeightsArg) -> WeightsSource:
    """Say what ``weights`` is; a file must exist.

    Raises:
        WeakpasteError: a path that is not a file.
    """
    if is_none(weights):
        return WeightsSource("none")
    if is_default(weights):
        return WeightsSource("default")
    path = Path(weights)
    if not path.is_file():
        raise WeakpasteError(f"{path}: weights file not found; {WEIGHTS_FIX}")
    return WeightsSource("file", path)


__all__ = ["WEIGHTS_FIX", "WeightsSource", "is_default", "is_none", "parse_weights",
           "resolve_weights"]
