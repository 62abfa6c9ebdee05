import hashlib
import json

import numpy as np
import pytest

from weakpaste.bank.store import SegmentBank
from weakpaste.cli import main
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.demo.run import write_synthetic_dataset
from weakpaste.io.coco import load_coco
from weakpaste.io.images import write_image
from weakpaste.mine.config import ClassifierSpec, FemConfig, FemParams
from weakpaste.mine.fem import (
    cam_anchor,
    cam_gain,
    cam_iou,
    run_mine_fem,
    step1_choice,
)
from weakpaste.mine.pipeline import MineInputs
from weakpaste.mine.proposals import Proposals

MODEL = ClassifierSpec(backbone="resnet18", weights="none", epochs=3, input_size=64,
                       crop_size=48)
TINY = dict(model=MODEL, min_samples=3, score_threshold=0.0)


def test_cam_anchor_values():
    cam = np.zeros((10, 20), np.float32)
    cam[2:4, 10:14] = 1.0
    cam[8, 0] = 0.4
    (x, y), g = cam_anchor(cam, 0.5)
    assert (x, y) == (11.5, 2.5) and g.sum() == 8 and g.dtype == bool
    assert cam_anchor(np.zeros((4, 4), np.float32), 0.5) is None


def test_cam_gain_values_and_preference():
    cam = np.zeros((20, 20), np.float32)
    cam[0:10, 0:10] = 1.0          # a coarse activated blob
    cam[4:6, 4:6] = 1.0
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 2:8, 2:8] = True      # the object inside the blob: 36 px at 1.0
    masks[1, 0:20, 0:12] = True    # a big region covering the blob and background
    masks[2, 15:20, 15:20] = True  # background only
    props = Proposals.from_masks(masks)
    gain = cam_gain(props, cam, 0.5)
    assert gain.shape == (3,)
    np.testing.assert_allclose(gain, [36 * 0.5, 100 * 0.5 - 140 * 0.5, -25 * 0.5])
    assert int(np.argmax(gain)) == 0
    assert int(np.argmax(cam_iou(props, cam >= 0.5))) == 1  # IoU prefers the big region


def test_step1_choice_takes_best_of_first_n():
    assert step1_choice(np.array([0.1, 0.7, 0.3, 0.9]), 3) == 1
    assert step1_choice(np.array([0.1, 0.7, 0.3, 0.9]), 4) == 3


def test_cam_iou_matches_pixel_iou():
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 0:10, 0:10] = True
    masks[1, 5:15, 5:15] = True
    masks[2, 0:20, 0:4] = True
    g = np.zeros((20, 20), bool)
    g[0:10, 0:10] = True
    props = Proposals.from_masks(masks)
    expected = [(m & g).sum() / (m | g).sum() for m in masks]
    np.testing.assert_allclose(cam_iou(props, g), expected)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    gt = write_synthetic_dataset(root, num_scenes=8, seed=3, height=96, width=128)
    return root, gt


def test_run_mine_fem_end_to_end(scenes, tmp_path):
    root, gt = scenes
    out = tmp_path / "bank"
    config = FemConfig(**TINY, params=FemParams(candidates=4, max_side=128))
    m = run_mine_fem(config, MineInputs(images=str(root / "images"), labels=str(gt)),
                     RunOptions(out=str(out), quiet=True), save_baselines=True)
    c = m["counts"]
    assert c["labelled_images"] == 8 and c["mined_this_run"] == 8
    assert c["segments"] == sum(c["per_class"].values()) > 0
    assert set(m["timings_s"]) >= {"classifier", "proposals", "gradcam", "segments", "em"}
    # Classes with fewer than min_samples images fall back to step 1, and the manifest says so.
    assert any(v["fallback"] for v in m["em"].values()) or all(
        v["items"] >= 3 for v in m["em"].values())
    bank = SegmentBank(out)
    entries = list(bank.iter_index())
    assert len(entries) == c["segments"]
    assert {"classifier", "mahalanobis", "step1"} <= set(entries[0]["scores"])
    assert entries[0]["miner"] == "fem"
    pseudo = load_coco(out / "pseudo_labels.json", root / "images")
    assert sum(len(r.instances) for r in pseudo.records) == c["segments"]
    for name in ("cam.json", "step1.json"):
        assert (out / "baselines" / name).is_file()
    # The metric runs on both outputs.
    assert main(["evaluate-masks", str(out), "--gt", str(gt)]) == 0
    # Resume: nothing is recomputed; reusing the classifier keeps the result identical.
    m2 = run_mine_fem(config, MineInputs(images=str(root / "images"), labels=str(gt)),
                      RunOptions(out=str(out), resume=True, quiet=True))
    assert m2["counts"]["mined_this_run"] == 0
    assert m2["counts"]["segments"] == c["segments"]


def test_em_iters_zero_equals_step1(scenes, tmp_path):
    root, gt = scenes
    out = tmp_path / "b"
    config = FemConfig(**{**TINY, "em_iters": 0}, params=FemParams(candidates=4, max_side=128))
    run_mine_fem(config, MineInputs(images=str(root / "images"), labels=str(gt)),
                 RunOptions(out=str(out), quiet=True), save_baselines=True)
    final = json.loads((out / "pseudo_labels.json").read_text())["annotations"]
    step1 = json.loads((out / "baselines" / "step1.json").read_text())["annotations"]
    assert [a["segmentation"] for a in final] == [a["segmentation"] for a in step1]


def test_unknown_class_for_a_reused_classifier(scenes, tmp_path):
    root, gt = scenes
    out = tmp_path / "b"
    config = FemConfig(**TINY, params=FemParams(candidates=4, max_side=128))
    run_mine_fem(config, MineInputs(images=str(root / "images"), labels=str(gt)),
                 RunOptions(out=str(out), quiet=True))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"scene_00000.png": ["unicorn"]}))
    reuse = FemConfig(**{**TINY, "model": MODEL.replace(classifier=str(out / "classifier.pt"))})
    with pytest.raises(WeakpasteError, match=r"class 'unicorn' is not among the classes of the "
                                             r"classifier .*classifier.pt; retrain it"):
        run_mine_fem(reuse, MineInputs(images=str(root / "images"), labels=str(labels)),
                     RunOptions(out=str(tmp_path / "c"), quiet=True))


def test_cli_mine(scenes, tmp_path, capsys):
    root, gt = scenes
    out = tmp_path / "bank"
    argv = ["mine", "--method", "fem", "--images", str(root / "images"), "--labels", str(gt),
            "--out", str(out), "--backbone", "resnet18", "--weights", "none", "--epochs", "2",
            "--input-size", "64", "--crop-size", "48", "--candidates", "4", "--max-side",
            "128", "--quiet"]
    assert main(argv) == 0
    assert "pseudo-labels" in capsys.readouterr().out
    assert main(argv) == 2
    assert "output folder is not empty" in capsys.readouterr().err
    assert main(["mine", "--method", "freeseg", "--images", str(root), "--out",
                 str(tmp_path / "x"), "--saliency", str(tmp_path / "missing.onnx")]) == 2
    assert "saliency model not found" in capsys.readouterr().err


# ------------------------------------------------------------------ the CLI on a finished run


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


CLI_TINY = ["--backbone", "resnet18", "--weights", "none", "--epochs", "2", "--input-size", "64",
            "--crop-size", "48", "--candidates", "4", "--max-side", "128", "--quiet"]


@pytest.fixture(scope="module")
def cli_run(scenes, tmp_path_factory):
    """``mine fem`` over the scenes plus a 1x1 image, with a JSON labels file:
    (images, labels, out, stderr)."""
    import contextlib
    import io
    import shutil

    root, gt = scenes
    work = tmp_path_factory.mktemp("cli_run")
    images = work / "images"
    shutil.copytree(root / "images", images)
    write_image(images / "tiny.png", np.full((1, 1, 3), 200, np.uint8))
    doc = load_coco(gt, images)
    labels = {r.file_name: sorted({c for c in r.instances.classes}) for r in doc.records}
    labels["tiny.png"] = ["disc"]
    (work / "labels.json").write_text(json.dumps(labels))
    out = work / "bank"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["mine", "fem", "--images", str(images), "--labels",
                     str(work / "labels.json"), "--out", str(out), *CLI_TINY])
    assert code == 0, stderr.getvalue()
    return images, work / "labels.json", out, stderr.getvalue()


def test_cli_mine_fem_skips_a_1x1_image(cli_run):
    images, labels, out, stderr = cli_run
    c = json.loads((out / "manifest.json").read_text())["counts"]
    assert c["labelled_images"] == 9 and c["skipped"]["smaller than 16 px"] == 1
    assert "smaller than 16 px" in stderr
    sources = {e["source_image"] for e in SegmentBank(out).iter_index()}
    assert sources and "tiny.png" not in sources
    assert len(SegmentBank(out)) == c["segments"]


def _drop_half_the_cache(out):
    """Make a finished run look interrupted half-way (as Ctrl-C after some images)."""
    cached = sorted((out / ".cache").glob("*/*.wpc"))
    for f in cached[::2]:
        f.unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    return len(cached[::2])


def test_resume_rebuilds_the_bank(cli_run, tmp_path, capsys):
    """Resuming a finished or partly finished run rewrites the bank: no segment twice."""
    import shutil

    images, labels, done, _ = cli_run
    out = tmp_path / "bank"
    shutil.copytree(done, out)
    n = json.loads((out / "manifest.json").read_text())["counts"]["segments"]
    index = (out / "index.jsonl").read_bytes()
    assert n > 0 and len(SegmentBank(out)) == n
    argv = ["mine", "fem", "--images", str(images), "--labels", str(labels), "--out", str(out),
            "--resume", *CLI_TINY]
    assert main(argv) == 0
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["mined_this_run"] == 0 and counts["segments"] == n
    assert len(SegmentBank(out)) == n and (out / "index.jsonl").read_bytes() == index
    dropped = _drop_half_the_cache(out)
    assert main(argv) == 0
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["mined_this_run"] == dropped == 5
    assert len(SegmentBank(out)) == n and (out / "index.jsonl").read_bytes() == index
    assert len(json.loads((out / "pseudo_labels.json").read_text())["annotations"]) == n


def _refused(argv, out, capsys) -> str:
    before = _snapshot(out)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert _snapshot(out) == before  # untouched
    return err[0]


def test_resume_refuses_changed_options(cli_run, capsys):
    images, labels, out, _ = cli_run
    base = ["mine", "fem", "--images", str(images), "--labels", str(labels), "--out", str(out),
            "--resume", *CLI_TINY]
    fix = "; rerun with that run's options and inputs, or pass --overwrite instead of --resume"
    assert _refused([*base, "--epochs", "3"], out, capsys) == (
        f"weakpaste: error: {out}: cannot resume: epochs (--epochs) was 2, now 3{fix}")
    assert _refused([*base, "--cam-threshold", "0.3"], out, capsys) == (
        f"weakpaste: error: {out}: cannot resume: cam_threshold (--cam-threshold) was 0.5, "
        f"now 0.3{fix}")


def test_resume_refuses_another_method(cli_run, capsys):
    images, labels, out, _ = cli_run
    err = _refused(["mine", "--method", "freeseg", "--images", str(images), "--labels",
                    str(labels), "--out", str(out), "--resume", "--quiet"], out, capsys)
    assert err.startswith(f"weakpaste: error: {out}: cannot resume: it was mined with "
                          "'mine fem', this is 'mine freeseg'; rerun")


def test_resume_refuses_changed_inputs(cli_run, tmp_path, capsys):
    import shutil

    images, labels, out, _ = cli_run
    moved = tmp_path / "images"
    shutil.copytree(images, moved)
    argv = ["mine", "fem", "--labels", str(labels), "--out", str(out), "--resume", *CLI_TINY]
    # Compared by content: a copy with one image changed.
    write_image(moved / "scene_00002.png", np.zeros((96, 128, 3), np.uint8))
    assert _refused([*argv, "--images", str(moved)], out, capsys) == (
        f"weakpaste: error: {out}: cannot resume: the images changed since that run "
        "(scene_00002.png differs); rerun with that run's options and inputs, or pass "
        "--overwrite instead of --resume")
    edited = tmp_path / "labels.json"
    doc = json.loads(labels.read_text())
    edited.write_text(json.dumps({**doc, "tiny.png": ["ring"]}))
    err = _refused(["mine", "fem", "--images", str(images), "--labels", str(edited), "--out",
                    str(out), "--resume", *CLI_TINY], out, capsys)
    assert "cannot resume: the labels file changed since that run" in err


def test_out_overlapping_an_input_is_refused(cli_run, capsys):
    images, labels, out, _ = cli_run
    err = _refused(["mine", "fem", "--images", str(images), "--labels", str(labels), "--out",
                    str(images / "bank"), *CLI_TINY], images, capsys)
    assert err == (f"weakpaste: error: {images / 'bank'}: the output folder overlaps the input "
                   f"{images}; choose an --out outside every input")
    err = _refused(["mine", "fem", "--images", str(images), "--labels", str(labels),
                    "--classifier", str(out / "classifier.pt"), "--out", str(out),
                    "--overwrite", *CLI_TINY], out, capsys)
    assert "the output folder overlaps the input" in err


def test_cli_mine_fem_with_sam_proposals(scenes, tmp_path, monkeypatch):
    """``--proposals sam`` reaches SamProposer (a stand-in model: the real package and its
    checkpoints are not installed here), alone or with slic."""
    from test_mine_proposals import fake_segment_anything

    root, gt = scenes
    calls = []

    def records(image):
        calls.append(image.shape)
        box = np.zeros(image.shape[:2], bool)
        box[20:60, 30:90] = True
        return [{"segmentation": box, "predicted_iou": 0.9}]

    fake_segment_anything(monkeypatch, records)
    checkpoint = tmp_path / "sam_vit_b.pth"
    checkpoint.write_bytes(b"weights")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"scene_00000.png": ["disc"], "scene_00001.png": ["ring"]}))
    base = ["mine", "fem", "--images", str(root / "images"), "--labels", str(labels),
            "--sam-checkpoint", str(checkpoint), *CLI_TINY]
    assert main([*base, "--out", str(tmp_path / "a"), "--proposals", "sam"]) == 0
    assert calls == [(96, 128, 3)] * 2
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["inputs"]["sam_checkpoint"] == hashlib.sha256(b"weights").hexdigest()
    doc = load_coco(tmp_path / "a" / "pseudo_labels.json", root / "images")
    masks = [m for r in doc.records for m in r.instances.masks()]
    # Every mined mask is the stand-in's (a random classifier may leave a Grad-CAM empty).
    assert masks and all(m.sum() == 40 * 60 and m[20:60, 30:90].all() for m in masks)
    assert main([*base, "--out", str(tmp_path / "b"), "--proposals", "slic", "sam",
                 "--classifier", str(tmp_path / "a" / "classifier.pt")]) == 0
    assert len(calls) == 4
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["config"]["params"][
        "methods"] == ["slic", "sam"]
