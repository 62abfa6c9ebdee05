"""Ctrl-C in a real terminal: SIGINT to the whole process group, workers included."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.core.run import RunOptions

ROOT = Path(__file__).resolve().parents[1]


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
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "images").is_dir() and len(list((out / "images").iterdir())) >= 8:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert stderr.splitlines() == ["weakpaste: interrupted; everything written so far is kept "
                                   "(rerun the same command with --resume where offered)"]
    assert stdout == ""
    # Nothing half-written: the run is marked unfinished (--resume continues it, see
    # test_paste_run) and the annotations are only assembled at the end.
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert not (out / "annotations.json").exists()
