"""``weakpaste train``, ``eval`` and ``longtail`` through ``weakpaste.cli.main``."""

from __future__ import annotations

import json

import pytest
from conftest import lvis_from_coco
from train_helpers import one_torch_thread, write_tiny_coco

from weakpaste.cli import main

TINY = ["--backbone", "mobilenet_v3", "--weights", "none", "--image-size", "64",
        "--batch-size", "2", "--warmup", "0", "--steps", "none", "--roi-batch", "32",
        "--rpn-proposals", "64", "--jitter", "1,1", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def test_train_then_eval_a_checkpoint_and_its_predictions(tmp_path, capsys):
    swapped = {"b": {"id": 1, "supercategory": ""}, "a": {"id": 2, "supercategory": ""}}
    pasted, pasted_images = write_tiny_coco(tmp_path / "pasted", categories=("a", "b", "c"))
    pseudo, pseudo_images = write_tiny_coco(tmp_path / "pseudo", categories=swapped, seed=1)
    val, val_images = write_tiny_coco(
        tmp_path / "val", seed=2, categories={**swapped, "z": {"id": 5, "supercategory": ""}})
    out = tmp_path / "run"
    argv = ["train", "--train", f"{pasted}:{pasted_images}", "--stage2",
            f"{pseudo}:{pseudo_images}", "--val", f"{val}:{val_images}", "--out", str(out),
            "--iterations", "2", "--stage2-iterations", "1", *TINY]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert (f"2 classes have other category ids in {pseudo} than in {pasted}; mapped by name: "
            "'b' (1 vs 2), 'a' (2 vs 1)") in captured.err
    assert ("1 class(es) have no instance in the training data; the model keeps an output for "
            "them but cannot learn them: 'c'") in captured.err
    assert f"1 class(es) of {val} are not among the model's classes" in captured.err
    assert captured.out.startswith("trained 3 iterations (stage 1: 2 images, stage 2: 2 images) "
                                   f"on 3 classes; model: {out / 'checkpoints' / 'last.pt'}")
    assert "segm" in captured.out and "APr" in captured.out
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # --log-every 20: a stage's end flushes its window, so each stage logs its own line.
    assert [(r["iteration"], r["stage"]) for r in log] == [(2, 1), (3, 2)]
    trained = json.loads((out / "eval" / "metrics.json").read_text())
    assert trained["segm"]["per_class"]["a"]["train_images"] == 2  # stage-2 (original) data

    # The same model again through eval --checkpoint, then its predictions file.
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--data",
                 f"{val}:{val_images}", "--out", str(tmp_path / "ev"), "--threads", "1",
                 "--quiet", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics["segm"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc",
                                    "APf", "per_class"}
    assert metrics["segm"]["AP"] == trained["segm"]["AP"]
    assert set(metrics["segm"]["per_class"]) == {"b", "a", "z"}
    assert metrics["segm"]["per_class"]["z"]["AP"] is None  # no ground truth
    # Without --out the evaluation goes beside the run.
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--data",
                 f"{val}:{val_images}", "--threads", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert (out / "eval-instances" / "metrics.json").is_file()
    assert main(["eval", "--predictions", str(tmp_path / "ev" / "predictions.json"), "--data",
                 str(val), "--out", str(tmp_path / "ev2"), "--train", str(pseudo)]) == 0
    again = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    for iou in ("segm", "bbox"):
        assert again[iou]["AP"] == metrics[iou]["AP"]
        assert again[iou]["APr"] == metrics[iou]["APr"]


def test_train_on_lvis_and_evaluate_with_the_lvis_protocol(tmp_path):
    coco, images = write_tiny_coco(tmp_path)
    path = lvis_from_coco(coco, tmp_path / "lvis.json", extra_classes=())
    doc = json.loads(path.read_text())
    doc["categories"][1]["frequency"] = "f"  # LVIS's word, not this file's counts
    path.write_text(json.dumps(doc))
    spec = f"{path}:{images}"
    assert main(["train", "--train", spec, "--val", spec, "--out", str(tmp_path / "run"),
                 "--iterations", "1", *TINY]) == 0
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["info"]["protocol"] == "lvis"
    assert any(n.startswith("LVIS ground truth: up to 300 detections per image with scores "
                            "from 0.0001") for n in metrics["info"]["notes"])
    assert metrics["segm"]["per_class"]["b"]["frequency"] == "f"
    import torch

    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["train_frequency"] == {"a": "r", "b": "f"}


def test_eval_of_ground_truth_predictions_is_one(tmp_path, capsys):
    path, _ = write_tiny_coco(tmp_path)
    doc = json.loads(path.read_text())
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([dict(a, score=1.0) for a in doc["annotations"]]))
    assert main(["eval", "--predictions", str(pred), "--data", str(path), "--out",
                 str(tmp_path / "ev")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:4] == ["segm", "100.0", "100.0", "100.0"]
    assert table[2].split()[:4] == ["bbox", "100.0", "100.0", "100.0"]
    assert main(["eval", "--predictions", str(pred), "--data", str(path), "--out",
                 str(tmp_path / "ev")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"weakpaste: error: {tmp_path / 'ev'}: output folder is not empty; pass --overwrite to "
        "replace it or choose another --out")


def test_unreadable_checkpoint_is_one_line(tmp_path, capsys):
    path, images = write_tiny_coco(tmp_path)
    bad = tmp_path / "last.pt"
    bad.write_text("not a checkpoint")
    assert main(["eval", "--checkpoint", str(bad), "--data", f"{path}:{images}", "--out",
                 str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"weakpaste: error: {bad}: not a readable checkpoint (")
    assert err.endswith("pass a checkpoint written by 'weakpaste train' "
                        "(e.g. OUT/checkpoints/last.pt)")
    assert "\n" not in err


def test_train_needs_the_images_folder(tmp_path, capsys):
    path, _ = write_tiny_coco(tmp_path)
    assert main(["train", "--train", str(path), "--out", str(tmp_path / "run"), *TINY]) == 2
    assert capsys.readouterr().err.strip() == (
        f"weakpaste: error: {path}: --train needs COCO_JSON:IMAGES_DIR, the annotation file and "
        "its images folder (e.g. --train train.json:images/)")


def test_longtail_command(tmp_path, capsys):
    layouts = [(("a", (2, 2, 20, 20)),)] * 6 + [(("b", (30, 30, 50, 50)),)] * 3
    path, _ = write_tiny_coco(tmp_path, layouts=layouts)
    out = tmp_path / "lt.json"
    argv = ["longtail", str(path), "--out", str(out), "--shape", "6", "--max", "4", "--min", "1",
            "--seed", "2"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["class", "reference", "available", "selected"]
    assert lines[1].split() == ["a", "4", "6", "4"]
    assert lines[2].split() == ["b", "1", "3", "1"]
    assert lines[3] == f"wrote 5 images, 5 annotations of 2 classes to {out}"
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


_REQUIRED = {"train": ["--train", "x.json:images", "--out", "o"],
             "eval": ["--checkpoint", "c.pt", "--data", "d.json"],
             "longtail": ["in.json", "--out", "o.json"]}


@pytest.mark.parametrize(("command", "cls"), [("train", "TrainConfig"), ("eval", "EvalConfig"),
                                              ("longtail", "LongtailConfig")])
def test_cli_defaults_are_the_dataclass_defaults(command, cls):
    from weakpaste.cli import build_parser
    from weakpaste.core.options import cli_fields, from_args
    from weakpaste.train import config

    cls = getattr(config, cls)
    args = build_parser().parse_args([command, *_REQUIRED[command]])
    fields = cli_fields(cls)
    assert len(fields) >= 2
    for f, default in fields:
        assert getattr(args, f.name) == default, f.name
    assert from_args(cls, args) == cls()


def test_weights_none_is_parsed_once():
    from weakpaste.cli import build_parser
    from weakpaste.core.options import from_args
    from weakpaste.train.config import TrainConfig

    for text, value in (("none", None), ("None", None), ("DEFAULT", "DEFAULT"), ("w.pt", "w.pt")):
        args = build_parser().parse_args(["train", *_REQUIRED["train"], "--weights", text])
        assert from_args(TrainConfig, args).weights == value


@pytest.mark.parametrize(("command", "extra", "message"), [
    ("train", ["--lr", "-1"], "argument --lr: must be > 0, got -1"),
    ("train", ["--lr", "0"], "argument --lr: must be > 0, got 0"),
    ("train", ["--iterations", "0"], "argument --iterations: must be >= 1, got 0"),
    ("train", ["--momentum", "1"], "argument --momentum: must be < 1, got 1"),
    ("train", ["--color-prob", "2"], "argument --color-prob: must be in [0, 1], got 2"),
    ("train", ["--steps", "0.5,2"], "argument --steps: fractions must be in (0, 1), got 0.5,2"),
    ("train", ["--jitter", "2,1"], "argument --jitter: expected 0 < LO <= HI, got '2,1'"),
    ("train", ["--trainable-layers", "7"], "argument --trainable-layers: must be in [0, 6], got 7"),
    ("train", ["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ("eval", ["--mask-threshold", "1.5"], "argument --mask-threshold: must be in [0, 1], got 1.5"),
    ("longtail", ["--shape", "0"], "argument --shape: must be > 0, got 0"),
    ("longtail", ["--max", "0"], "argument --max: must be >= 1, got 0"),
])
def test_out_of_range_numbers_are_refused_at_parse_time(command, extra, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, *_REQUIRED[command], *extra])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (f"weakpaste {command}: error: {message} (see "
                                               f"'weakpaste {command} --help')")


@pytest.mark.parametrize(("command", "extra", "message"), [
    ("longtail", ["--min", "5", "--max", "2"],
     "min_count (--min) must be <= max_count (--max), got --min 5 --max 2"),
    ("train", ["--backbone", "resnet50", "--trainable-layers", "6"],
     "trainable_layers (--trainable-layers) must be <= 5 for resnet50, got 6"),
])
def test_rules_across_options_are_one_line(command, extra, message, capsys):
    assert main([command, *_REQUIRED[command], *extra]) == 2
    assert capsys.readouterr().err.strip() == f"weakpaste: error: {message}"


def test_train_mobilenet_v2_from_a_weights_file_then_eval(tmp_path, capsys):
    """``--backbone mobilenet_v2 --weights PATH``: a torchvision MobileNetV2 state_dict (the
    shared ImageNet file has this layout) initialises the FPN's trunk; a few iterations on a
    tiny set, then the held-out evaluation."""
    import torch
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        weights = tmp_path / "mobilenet_v2.pth"
        torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), weights)
    train, train_images = write_tiny_coco(tmp_path / "train")
    val, val_images = write_tiny_coco(tmp_path / "val", seed=2)
    out = tmp_path / "run"
    argv = ["train", "--train", f"{train}:{train_images}", "--val", f"{val}:{val_images}",
            "--out", str(out), "--iterations", "3", *TINY]
    argv[argv.index("mobilenet_v3")] = "mobilenet_v2"
    argv[argv.index("none")] = str(weights)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"weakpaste: note: backbone initialised from {weights} (260 tensors)" in captured.err
    assert captured.out.startswith("trained 3 iterations (stage 1: 2 images) on 2 classes")
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["segm"]) >= {"AP", "AP50", "AP75"} and "AP50" in metrics["bbox"]
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["model_config"]["backbone"] == "mobilenet_v2"
    assert ckpt["model_config"]["frozen_bn"] is True
    # a file of the wrong backbone is one line, exit 2, and nothing is trained
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    argv[argv.index(str(weights))] = str(wrong)
    argv[argv.index(str(out))] = str(tmp_path / "run2")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"weakpaste: error: {wrong}: neither a Mask R-CNN state_dict nor one of torchvision's "
        "mobilenet_v2 (")
    assert not (tmp_path / "run2").exists()  # refused before the output folder is made
