"""Helpers shared by the tests of bad input and interruptions (test_bad_input*, test_interrupt).

``make_world``: the tiny valid data set the bad-input tests break copies of;
``interrupt``: a command in its own process group, signalled once it has made progress;
``error_message``: the one-line message of the ``WeakpasteError`` a call raises.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import square_masks

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.io.coco import write_coco
from weakpaste.io.images import write_image
from weakpaste.structures import ImageRecord, Instances

ROOT = Path(__file__).resolve().parents[1]
H, W = 48, 64
_LAYOUTS = [[("a", (4, 4, 20, 20)), ("b", (30, 10, 60, 40))], [("b", (2, 2, 12, 30))],
            [("a", (10, 10, 50, 40))]]


def make_world(root: Path, labels_csv: str) -> dict[str, Path]:
    """Three H x W images with instances of 'a' and 'b', their COCO file, a bank and labels.

    Args:
        root: an empty folder to make them in.
        labels_csv: the text of ``labels.csv``.

    Returns:
        {"root", "images", "coco", "bank", "labels"}: the paths.
    """
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i, layout in enumerate(_LAYOUTS):
        write_image(images / f"img{i}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        masks = square_masks(H, W, [box for _, box in layout])
        records.append(ImageRecord(image_id=i + 1, file_name=f"img{i}.png", width=W, height=H,
                                   instances=Instances.from_masks(masks,
                                                                  [c for c, _ in layout])))
    coco = root / "instances.json"
    write_coco(coco, records, ["a", "b"])
    bank = root / "bank"
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=coco, images=images),
                       RunOptions(out=bank, quiet=True))
    labels = root / "labels.csv"
    labels.write_text(labels_csv)
    return {"root": root, "images": images, "coco": coco, "bank": bank, "labels": labels}


def interrupt(argv: list[str], ready: Callable[[], bool], sig: signal.Signals
              ) -> tuple[int, str, str]:
    """Run ``argv`` in a new session and send ``sig`` to its whole process group once
    ``ready()`` holds, as a terminal (SIGINT) or timeout and SLURM (SIGTERM) do.

    The command must still be running when ``ready()`` first holds (within 60 s); it is
    killed if it outlives this call.

    Returns:
        (exit code, stdout, stderr).
    """
    # As in a terminal, the command starts with Ctrl-C's default action even when the tests
    # themselves run where it is ignored (a shell's background job: '.ci/run &'), which the
    # command would inherit and so run to its end.
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stdout, stderr


def error_message(call: Callable, *args, **kwargs) -> str:
    """The message of the ``WeakpasteError`` that ``call(*args, **kwargs)`` must raise."""
    with pytest.raises(WeakpasteError) as err:
        call(*args, **kwargs)
    return str(err.value)
