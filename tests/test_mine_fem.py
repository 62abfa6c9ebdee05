import json

import numpy as np
import pytest

from weakpaste.bank import SegmentBank
from weakpaste.cli import main
from weakpaste.demo import write_synthetic_dataset
from weakpaste.errors import WeakpasteError
from weakpaste.io.coco import load_coco
from weakpaste.mine.fem import (
    FemParams,
    MineConfig,
    cam_anchor,
    cam_gain,
    cam_iou,
    run_mine_fem,
    step1_choice,
)
from weakpaste.mine.proposals import Proposals

TINY = dict(backbone="resnet18", weights="none", epochs=3, input_size=64, crop_size=48,
            min_samples=3, score_threshold=0.0)


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
    config = MineConfig(**TINY, params=FemParams(candidates=4, max_side=128))
    m = run_mine_fem(str(root / "images"), str(gt), str(out), config, progress=False,
                     save_baselines=True)
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
    m2 = run_mine_fem(str(root / "images"), str(gt), str(out), config, progress=False,
                      resume=True)
    assert m2["counts"]["mined_this_run"] == 0
    assert m2["counts"]["segments"] == c["segments"]


def test_em_iters_zero_equals_step1(scenes, tmp_path):
    root, gt = scenes
    out = tmp_path / "b"
    config = MineConfig(**{**TINY, "em_iters": 0}, params=FemParams(candidates=4, max_side=128))
    run_mine_fem(str(root / "images"), str(gt), str(out), config, progress=False,
                 save_baselines=True)
    final = json.loads((out / "pseudo_labels.json").read_text())["annotations"]
    step1 = json.loads((out / "baselines" / "step1.json").read_text())["annotations"]
    assert [a["segmentation"] for a in final] == [a["segmentation"] for a in step1]


def test_unknown_class_for_a_reused_classifier(scenes, tmp_path):
    root, gt = scenes
    out = tmp_path / "b"
    config = MineConfig(**TINY, params=FemParams(candidates=4, max_side=128))
    run_mine_fem(str(root / "images"), str(gt), str(out), config, progress=False)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"scene_00000.png": ["unicorn"]}))
    reuse = MineConfig(**{**TINY, "classifier": str(out / "classifier.pt")})
    with pytest.raises(WeakpasteError, match=r"class 'unicorn' is not among the classes of the "
                                             r"classifier .*classifier.pt; retrain it"):
        run_mine_fem(str(root / "images"), str(labels), str(tmp_path / "c"), reuse,
                     progress=False)


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
