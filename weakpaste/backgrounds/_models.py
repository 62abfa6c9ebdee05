"""Shared helpers of the model stages: device choice and the one-line load error."""

from __future__ import annotations

import contextlib
import re
import warnings

from weakpaste.core.errors import WeakpasteError


def resolve_device(device: str) -> str:
    """The device a model stage uses, checked as every stage's ``device`` option is
    (``weakpaste.models.device.resolve_device``): ``auto`` becomes ``cuda`` when torch has
    one, else ``cpu``.

    Raises:
        WeakpasteError: not auto, cpu, cuda or cuda:N, or CUDA asked for where there is none.
    """
    from weakpaste.models.device import resolve_device as torch_device

    return str(torch_device(device, auto=True))


def load_error(kind: str, model_id: str, option: str, err: BaseException,
               alternative: str = "") -> WeakpasteError:
    """A one-line WeakpasteError for a model that could not be loaded.

    Args:
        kind: what the model is for ("captioning", "text-to-image", "CLIP").
        model_id: the hub id or path that failed.
        option: the command-line option that names this model.
        err: the loading exception (its first line is quoted, shortened).
        alternative: another way around, e.g. "or --captions FILE".
    """
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    reason = re.split(r"(?<=[.!?])\s", line)[0]  # its first sentence
    if len(reason) > 140:
        reason = reason[:139] + "…"
    more = f" {alternative}" if alternative else ""
    reason = reason.rstrip(".")
    return WeakpasteError(f"cannot load the {kind} model {model_id!r} ({type(err).__name__}: "
                          f"{reason}); pass {option} PATH to a local copy{more}, or run once "
                          "online to download it")


@contextlib.contextmanager
def quiet_loading():
    """Silence library warnings and weight-loading progress bars while a model loads.

    Their deprecation notes and bars would bury the stage's own progress bar and messages.
    """
    import transformers

    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
