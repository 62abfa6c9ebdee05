"""weakpaste.core.run: the run options declared once, and the one run skeleton (StageRun)."""

from __future__ import annotations

import json

import pytest

from weakpaste.cli import build_parser
from weakpaste.cli.common import run_options
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions, StageRun


def _flags(command: list[str]) -> set[str]:
    parser = build_parser(command)
    for word in command:
        parser = next(a for a in parser._actions if hasattr(a, "choices") and a.choices
                      and word in a.choices).choices[word]
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("command, absent", [
    (["stats"], {"--resume", "--out", "--workers", "--executor"}),
    (["bank", "from-coco"], {"--resume", "--gpus-per-worker"}),
    (["paste"], {"--gpus-per-worker"}),
    (["viz"], {"--resume", "--workers", "--executor"}),
    (["longtail"], {"--resume", "--quiet", "--workers"}),
])
def test_a_command_has_only_the_run_options_its_stage_supports(command, absent):
    assert not _flags(command) & absent
    assert "--overwrite" in _flags(command) or command == ["stats"]


def test_mine_has_every_run_option():
    assert {"--out", "--overwrite", "--resume", "--workers", "--executor", "--ray-address",
            "--gpus-per-worker", "--quiet"} <= _flags(["mine", "fem"])


def test_train_loader_workers_are_its_data_loader_not_a_run_option():
    args = build_parser(["train"]).parse_args(["train", "--train", "a:b", "--out", "o",
                                               "--loader-workers", "3", "--resume"])
    assert args.workers == 3
    assert run_options(args) == RunOptions(out="o", resume=True)
    assert "--workers" not in _flags(["train"])


def test_run_options_are_validated_with_their_flag():
    with pytest.raises(WeakpasteError, match=r"workers \(--workers\) must be >= 1, got 0"):
        RunOptions(out="o", workers=0)
    with pytest.raises(WeakpasteError, match=r"executor \(--executor\) must be one of"):
        RunOptions(out="o", executor="dask")


def test_a_stage_without_resume_refuses_it_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(WeakpasteError, match="viz has no --resume"):
        with StageRun("viz", RunOptions(out=str(out), resume=True), resumable=False):
            pass
    assert not out.exists()


def test_the_skeleton_checks_then_starts_maps_and_finishes(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("x")
    with pytest.raises(WeakpasteError, match="overlaps the input"):
        with StageRun("s", RunOptions(out=str(tmp_path)), inputs=[src]):
            pass
    out = tmp_path / "out"
    with StageRun("s", RunOptions(out=str(out), quiet=True), inputs=[src]) as stage:
        assert not out.exists()  # checked, nothing made yet
        stage.start({"k": 1, "path": src}, seed=3, inputs={"in": "h"})
        running = json.loads((out / "manifest.json").read_text())
        assert running["status"] == "running" and running["config"]["path"] == str(src)
        assert list(stage.map(abs, [-1, 2, -3], desc="t")) == [1, 2, 3]
        done = stage.finish({"n": 3}, extra={"notes": []})
    assert done["status"] == "complete" and done["counts"] == {"n": 3}
    assert json.loads((out / "manifest.json").read_text())["notes"] == []
    # resume with another option is refused, naming it
    with pytest.raises(WeakpasteError, match='cannot resume: k was 1, now 2'):
        with StageRun("s", RunOptions(out=str(out), resume=True)) as stage:
            stage.start({"k": 2, "path": str(src)}, seed=3, inputs={"in": "h"})
