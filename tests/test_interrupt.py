"""Ctrl-C in a real terminal: SIGINT to the whole process group, workers included."""

import json
import os
import signal
import sys

import pytest
from bad_input_helpers import interrupt

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.core.run import RunOptions


@pytest.mark.skipif(os.name != "posix", reason="process groups and SIGINT are POSIX")
def test_ctrl_c_with_workers_prints_one_line(tiny_coco, tmp_path):
    path, images = tiny_coco
    bank = tmp_path / "bank"
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=path, images=images),
                       RunOptions(out=bank, quiet=True))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "weakpaste.cli", "paste", "--bank", str(bank), "--out",
            str(out), "--backgrounds", str(path), "--images", str(images), "--num-images",
            "3000", "--workers", "2", "--quiet"]
    # A new session: the command and its workers form a process group, as in a terminal.
    code, stdout, stderr = interrupt(
        argv, lambda: (out / "images").is_dir() and len(list((out / "images").iterdir())) >= 8,
        signal.SIGINT)
    assert code == 130
    assert stderr.splitlines() == ["weakpaste: interrupted; everything written so far is kept "
                                   "(rerun the same command with --resume where offered)"]
    assert stdout == ""
    # Nothing half-written: the run is marked unfinished (--resume continues it, see
    # test_paste_run) and the annotations are only assembled at the end.
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert not (out / "annotations.json").exists()
