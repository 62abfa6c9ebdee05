"""weakpaste demo: the shortened demo end to end, its options, and what it prints."""

from __future__ import annotations

import json
import shlex

import pytest

from weakpaste.bank.from_coco import BankInputs
from weakpaste.cli import build_parser, main
from weakpaste.core.run import RunOptions
from weakpaste.demo.run import demo_mine_config, mine_command
from weakpaste.mine.pipeline import MineInputs


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to download weights fails the test."""
    import torch
    import torchvision

    real = torchvision.models.get_model

    def no_download(name, weights=None, **kwargs):
        assert weights is None, f"the demo asked torchvision for {weights} weights"
        return real(name, weights=None, **kwargs)

    def no_hub(*args, **kwargs):
        raise AssertionError("the demo tried to download from the hub")

    monkeypatch.setattr(torchvision.models, "get_model", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_hub)


def test_short_demo_mines_masks_well_above_chance(tmp_path, capsys, offline):
    """60 scenes instead of 300 (measured: 77% precision@0.5, ~35 s of CPU)."""
    from weakpaste.evaluate.masks import evaluate_masks

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-scenes", "60", "--num-images", "2",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "classifier: small_cnn trained from scratch" in text
    for stage in ("all proposals", "ranked candidates", "step 1's top-n", "step 1's pick",
                  "EM pick", "kept"):
        assert f"  {stage} " in text
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    precision = counts["precision@0.5"]
    # Chance: a candidate drawn at random among those the Grad-CAM ranking made eligible
    # (already far better than a random proposal; measured 39%).
    gt = out / "scenes" / "instances.json"
    chance = evaluate_masks(str(out / "bank" / "baselines" / "candidates.json"),
                            str(gt))["overall"]["precision@0.5"]
    assert precision > 0.6 and precision > chance + 0.2, (precision, chance)
    assert counts["pair_yield@0.5"] > 0.6
    funnel = counts["funnel_recall@0.5"]
    assert funnel["proposals"] >= funnel["candidates"] >= funnel["top_n"]
    assert funnel["kept"] == counts["pair_yield@0.5"]
    assert (out / "viz_mined" / "contact_sheet.png").is_file()
    assert (out / "viz" / "contact_sheet.png").is_file()
    # One mask per (scene, class): the sheet of mined masks says so; the pasted one has no
    # such limit.
    viz_config = json.loads((out / "viz_mined" / "manifest.json").read_text())["config"]
    assert viz_config["title"] == (
        "F-EM mines one mask per (scene, class) label: a second object of a class in the same "
        "scene is not mined and shows unlabelled.")
    assert "title" not in json.loads((out / "viz" / "manifest.json").read_text())["config"]
    # One numbering of the six classes in every file the demo writes (demo --train noted
    # 'mapped by name' when the pasted set numbered them in name order).
    tables = {name: _category_ids(out / name) for name in (
        "scenes/instances.json", "bank/pseudo_labels.json", "pasted/annotations.json")}
    assert len(set(map(tuple, tables.values()))) == 1, tables


def _category_ids(path) -> list[tuple[int, str]]:
    return [(c["id"], c["name"]) for c in json.loads(path.read_text())["categories"]]


def test_demo_train_files_share_one_category_numbering(tmp_path):
    """The files demo --train trains and evaluates on (the scenes, the held-out scenes, a
    set pasted from a ground-truth bank onto the demo's backgrounds) number the six classes
    alike, so that training notes no class 'mapped by name'. Built with the functions that
    write them (mining and training left out: minutes)."""
    from weakpaste.bank.from_coco import run_bank_from_coco
    from weakpaste.demo import synthetic
    from weakpaste.demo.run import _paste, write_synthetic_dataset
    from weakpaste.io.coco import load_coco
    from weakpaste.train.data import map_eval_categories, merge_categories

    out = tmp_path
    scenes = out / "scenes"
    gt = write_synthetic_dataset(scenes, num_scenes=6, seed=0)
    val = write_synthetic_dataset(out / "val_scenes", num_scenes=2, seed=1)
    run_bank_from_coco(None, BankInputs(coco_json=gt, images=scenes / "images"),
                       RunOptions(out=out / "bank_gt", quiet=True))
    pasted = _paste(out, scenes, gt, True, num_images=4, seed=0, progress=False,
                    bank=out / "bank_gt", name="pasted_gt")["annotations_json"]
    expected = [(k + 1, name) for k, name in enumerate(synthetic.CLASSES)]
    for path in (gt, val, pasted, out / "backgrounds" / "instances.json"):
        assert _category_ids(path) == expected, path
    data = [load_coco(p, p.parent / "images") for p in (pasted, gt)]
    names, notes = merge_categories(data)
    assert notes == [] and names == synthetic.CLASSES
    assert map_eval_categories(names, load_coco(val, val.parent / "images"))[1] == []


def test_printed_mine_command_is_the_demo_config():
    """The command the demo prints reproduces its FemConfig through ``weakpaste mine fem``."""
    from weakpaste.cli import mine as mine_cli

    config = demo_mine_config(seed=3)
    captured = {}

    def fake_run(cfg, inputs, run, **kwargs):
        captured.update(config=cfg, inputs=inputs, out=run.out)
        raise SystemExit(0)

    argv = shlex.split(mine_command(config, "IMG", "L.json", "BANK"))[1:]
    args = build_parser(argv).parse_args(argv)
    import weakpaste.mine.fem as fem

    original = fem.run_mine_fem
    fem.run_mine_fem = fake_run
    try:
        with pytest.raises(SystemExit):
            mine_cli._cmd_mine_fem(args)
    finally:
        fem.run_mine_fem = original
    assert captured["config"] == config
    assert captured["inputs"] == MineInputs(images="IMG", labels="L.json")
    assert captured["out"] == "BANK"


def test_demo_config_defaults_and_pretrained():
    scratch = demo_mine_config()
    m = scratch.model
    assert (m.backbone, m.weights, m.train_mode, m.input_size, m.lr, m.batch_size) == (
        "small_cnn", None, "finetune", 128, 0.05, 16)
    assert scratch.params.methods == ("felzenszwalb",) and scratch.params.max_side == 128
    pretrained = demo_mine_config(weights="/w.pth", backbone="mobilenet_v2", epochs=5).model
    assert (pretrained.backbone, pretrained.weights, pretrained.train_mode,
            pretrained.epochs) == ("mobilenet_v2", "/w.pth", "linear", 5)
    assert demo_mine_config(weights="DEFAULT").model.backbone == "resnet18"


def test_demo_says_which_pretrained_weights_it_used(tmp_path, capsys, offline):
    import torch
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-scenes", "6", "--num-images", "2",
                 "--epochs", "1", "--backbone", "resnet18", "--weights", str(path),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"classifier: resnet18 with {path} weights (linear probe)" in text


def test_demo_train_needs_mining(tmp_path, capsys):
    assert main(["demo", "--from-gt", "--train", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "demo --train compares mined with ground-truth masks; drop --from-gt")


def test_demo_train_schedule_is_the_measured_one():
    from weakpaste.demo.run import DEMO_TRAIN_ITERATIONS, demo_train_config

    c = demo_train_config(DEMO_TRAIN_ITERATIONS, seed=3)
    assert (c.model.backbone, c.weights, c.model.image_size, c.batch_size) == (
        "resnet18", None, 128, 4)
    assert (c.iterations, c.stage2_iterations, c.lr, c.warmup_iters, c.clip_grad) == (
        360, 240, 0.02, 100, 10.0)
    assert (c.jitter, c.steps, c.model.roi_batch, c.model.rpn_proposals) == (
        (0.5, 1.5), (0.667, 0.889), 64, 300)
    short = demo_train_config(10, seed=3)
    assert (short.iterations, short.stage2_iterations, short.warmup_iters) == (6, 4, 2)
