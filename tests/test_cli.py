import json
import subprocess
import sys
import time

import pytest

from weakpaste.cli import main


def test_help_is_fast_and_does_not_load_heavy_modules():
    code = ("import sys, time; t = time.perf_counter(); from weakpaste import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('torch', 'cv2', 'pycocotools', 'skimage') if m in sys.modules]\n"
            "assert not bad, bad\nprint(time.perf_counter() - t)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "COMMAND" in out.stdout
    assert time.perf_counter() - start < 3.0  # the interpreter itself included
    assert float(out.stdout.strip().splitlines()[-1]) < 1.0


def test_paste_stages_never_import_torch(tiny_coco, tmp_path):
    path, images = tiny_coco
    code = (
        "import sys\nfrom weakpaste.cli import main\n"
        f"assert main(['bank', 'from-coco', {str(path)!r}, '--images', {str(images)!r}, "
        f"'--out', {str(tmp_path / 'bank')!r}, '--quiet', '--min-area', '1']) == 0\n"
        f"assert main(['paste', '--bank', {str(tmp_path / 'bank')!r}, '--out', "
        f"{str(tmp_path / 'out')!r}, '--backgrounds', {str(path)!r}, '--images', "
        f"{str(images)!r}, '--num-images', '2', '--quiet']) == 0\n"
        f"assert main(['stats', {str(tmp_path / 'out' / 'annotations.json')!r}]) == 0\n"
        f"assert main(['viz', {str(tmp_path / 'out' / 'annotations.json')!r}, '--images', "
        f"{str(tmp_path / 'out' / 'images')!r}, '--out', {str(tmp_path / 'viz')!r}, "
        "'--quiet']) == 0\n"
        "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert (tmp_path / "viz" / "contact_sheet.png").is_file()


def test_cli_end_to_end(tiny_coco, tmp_path, capsys):
    path, images = tiny_coco
    bank = str(tmp_path / "bank")
    assert main(["bank", "from-coco", str(path), "--images", str(images), "--out", bank,
                 "--quiet", "--min-area", "1"]) == 0
    assert "wrote 5 segments of 2 classes" in capsys.readouterr().out
    assert main(["bank", "info", bank]) == 0
    assert "total        5" in capsys.readouterr().out
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"a": 1.0, "b": 3.0}))
    out = tmp_path / "out"
    argv = ["paste", "--bank", bank, "--out", str(out), "--backgrounds", str(path),
            "--images", str(images), "--num-images", "4", "--objects", "1-3", "--placement",
            "space-max", "--blend", "none", "poisson", "--selection", "weights",
            "--class-weights", str(weights), "--seed", "5", "--quiet"]
    assert main(argv) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["placement"] == "space-max"
    assert manifest["config"]["class_weights"] == {"a": 1.0, "b": 3.0}
    assert main(["stats", str(out / "annotations.json"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 4
    # Same command again: refused, exit 2, one line naming the folder and the fix.
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"weakpaste: error: {out}: output folder is not empty; pass --overwrite to "
                   "replace it, --resume to continue it, or choose another --out")
    assert main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["paste", "--bank", "nowhere", "--out", "o", "--num-images", "1"],
     "weakpaste: error: nowhere: not a segment bank (no bank.json); build one with "
     "'weakpaste bank from-coco' or 'weakpaste mine'"),
    (["stats", "missing.json"],
     "weakpaste: error: missing.json: no such file; pass the path of a COCO instances JSON"),
])
def test_cli_bad_input_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_cli_bad_arguments_exit_nonzero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["paste", "--bank", "b", "--out", "o", "--num-images", "1", "--objects", "6-2"])
    assert exc.value.code == 2
    assert "object count '6-2' must be N or LO-HI" in capsys.readouterr().err


def test_cli_class_absent_from_bank(tiny_coco, tmp_path, capsys):
    path, images = tiny_coco
    bank = str(tmp_path / "bank")
    main(["bank", "from-coco", str(path), "--images", str(images), "--out", bank, "--quiet"])
    capsys.readouterr()
    assert main(["paste", "--bank", bank, "--out", str(tmp_path / "o"), "--backgrounds",
                 str(path), "--images", str(images), "--num-images", "1", "--classes",
                 "zebra"]) == 2
    assert "class 'zebra' is not in the bank (it has: a, b)" in capsys.readouterr().err


def test_demo_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--from-gt", "--out", str(out), "--num-scenes", "8",
                 "--num-images", "4", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "contact sheet" in text and str(out) in text
    assert (out / "viz" / "contact_sheet.png").is_file()
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_demo_viz_and_bank_twice_name_their_own_choices(tiny_coco, tmp_path, capsys):
    """demo, viz and bank from-coco have no --resume: the refusal of a second run into the
    same folder must not send a new user to it."""
    path, images = tiny_coco
    out = tmp_path / "demo"
    argv = ["demo", "--from-gt", "--out", str(out), "--num-scenes", "4", "--num-images", "2",
            "--quiet"]
    bank = str(tmp_path / "bank")
    runs = [argv, ["bank", "from-coco", str(path), "--images", str(images), "--out", bank,
                   "--quiet"],
            ["viz", str(path), "--images", str(images), "--out", str(tmp_path / "viz"),
             "--quiet"]]
    for run in runs:
        assert main(run) == 0
        capsys.readouterr()
        assert main(run) == 2
        folder = run[run.index("--out") + 1]
        assert capsys.readouterr().err.strip() == (
            f"weakpaste: error: {folder}: output folder is not empty; pass --overwrite to "
            "replace it or choose another --out")
    assert main(argv + ["--overwrite"]) == 0


def test_a_write_failing_anywhere_is_one_line(tmp_path, monkeypatch, capsys):
    """The last net in main: a full or read-only disk met by code that did not name it."""
    import errno

    import weakpaste.report.stats

    def full(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out" / "x.json"))

    monkeypatch.setattr(weakpaste.report.stats, "run_stats", full)
    (tmp_path / "out").mkdir()
    assert main(["stats", "any.json"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"weakpaste: error: {tmp_path / 'out'}: cannot write (Read-only file system); free some "
        "space or choose a writable --out, then run the command again (with --resume where "
        "offered: finished work is kept)")
    monkeypatch.setattr(weakpaste.report.stats, "run_stats",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):  # not a disk-space problem: a traceback
        main(["stats", "any.json"])


@pytest.mark.parametrize("spelling", ["none", "None"])
def test_viz_seed_none_as_its_help_says(tiny_coco, tmp_path, capsys, spelling):
    """viz --help documents none (the first images); the parser must take it."""
    from weakpaste.cli import build_parser

    seed = next(a for a in build_parser(["viz"])._subparsers._group_actions[0]
                .choices["viz"]._actions if a.dest == "seed")
    assert seed.help == "seed of the random choice of images; none: the first ones (default: 0)"
    assert seed.metavar == "N|none"
    path, images = tiny_coco
    out = tmp_path / "viz"
    assert main(["viz", str(path), "--images", str(images), "--out", str(out), "--num-images",
                 "2", "--seed", spelling, "--quiet"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img0.png", "img1.png"]
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] is None
    with pytest.raises(SystemExit):
        main(["viz", str(path), "--images", str(images), "--out", str(out), "--seed", "first"])
    assert capsys.readouterr().err.strip() == (
        "weakpaste viz: error: argument --seed: expected an integer or none, got 'first' "
        "(see 'weakpaste viz --help')")


def test_bank_from_coco_has_no_gpus_per_worker(capsys):
    """Cutting masks uses no GPU: the flag did nothing there but reserve GPUs on Ray."""
    from weakpaste.cli import build_parser

    bank = build_parser(["bank"])._subparsers._group_actions[0].choices["bank"]
    from_coco = bank._subparsers._group_actions[0].choices["from-coco"]
    flags = {s for a in from_coco._actions for s in a.option_strings}
    assert "--gpus-per-worker" not in flags
    assert {"--executor", "--ray-address", "--workers"} <= flags
    with pytest.raises(SystemExit) as exc:
        main(["bank", "from-coco", "c.json", "--images", "i", "--out", "o",
              "--gpus-per-worker", "1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("weakpaste: error: unrecognized arguments: "
                                       "--gpus-per-worker 1 (see 'weakpaste --help')\n")


def test_bank_from_coco_reports_skipped_crowd_regions(tiny_coco, tmp_path, capsys):
    path, images = tiny_coco
    doc = json.loads(path.read_text())
    crowd = dict(doc["annotations"][0], id=1000, iscrowd=1)
    doc["annotations"].append(crowd)
    path.write_text(json.dumps(doc))
    out = tmp_path / "bank"
    assert main(["bank", "from-coco", str(path), "--images", str(images), "--out", str(out),
                 "--quiet", "--min-area", "300"]) == 0
    assert capsys.readouterr().out == (
        f"wrote 3 segments of 2 classes to {out} (2 smaller than 300 px and 1 crowd region "
        "(iscrowd=1) skipped)\n")
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["segments"], counts["skipped_small"], counts["crowd_skipped"]) == (3, 2, 1)
