"""F-EM's MIL anchor (``--anchor mil``) and the training-only images (``--train-images``)."""

import csv
import json

import numpy as np
import pytest

from weakpaste.cli import main
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.demo.run import write_synthetic_dataset
from weakpaste.mine.config import ClassifierSpec, FemConfig, FemParams
from weakpaste.mine.fem import run_mine_fem, training_items
from weakpaste.mine.mil import anchor_map, pack, unpack
from weakpaste.mine.pipeline import Item, MineInputs, Plan, training_set
from weakpaste.mine.proposals import Proposals

MODEL = ClassifierSpec(backbone="resnet18", weights="none", epochs=2, input_size=64,
                       crop_size=48)
MIL = dict(model=MODEL, min_samples=3, score_threshold=0.0, mil_epochs=3, mil_dims=8)
PARAMS = FemParams(candidates=4, max_side=128, anchor="mil", mil_side=64)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """8 synthetic scenes to mine and 6 more (another seed) to train on only."""
    root = tmp_path_factory.mktemp("mil")
    gt = write_synthetic_dataset(root / "mine", num_scenes=8, seed=3, height=96, width=128)
    extra_gt = write_synthetic_dataset(root / "train", num_scenes=6, seed=4, height=96,
                                       width=128)
    return root, gt, extra_gt


@pytest.fixture(scope="module")
def mil_run(scenes):
    root, gt, extra_gt = scenes
    out = root / "bank"
    config = FemConfig(**MIL, train_images=str(root / "train" / "images"),
                       train_labels=str(extra_gt), params=PARAMS)
    manifest = run_mine_fem(config,
                            MineInputs(images=str(root / "mine" / "images"), labels=str(gt)),
                            RunOptions(out=str(out), quiet=True), save_baselines=True)
    return config, out, manifest


def test_mil_run_outputs_and_funnel(scenes, mil_run, capsys):
    root, gt, _ = scenes
    config, out, m = mil_run
    c = m["counts"]
    assert c["labelled_images"] == 8 and c["train_images"] == 6 and c["mined_this_run"] == 14
    assert c["segments"] == sum(c["per_class"].values()) > 0
    assert m["fit"]["mil"]["images"] == 14 and len(m["fit"]["mil"]["refine2_loss"]) == 2
    assert {"regions", "ious", "fit", "anchor", "em"} <= set(m["timings_s"])
    assert {"train_images", "train_labels"} <= set(m["inputs"])
    # 8 mined + 6 training-only results, under distinct cache names.
    assert len(list((out / ".cache").glob("*/*.wpc"))) == 14
    base = out / "baselines"
    docs = {p.stem: json.loads(p.read_text()) for p in base.glob("*.json")}
    assert {"candidates", "step1_pick", "em_pick", "evidence_pick", "cam", "cam_peak"} <= \
        set(docs)
    segs = {k: {(a["image_id"], a["segmentation"]["counts"]) for a in d["annotations"]}
            for k, d in docs.items()}
    assert segs["step1_pick"] <= segs["candidates"] and segs["em_pick"] <= segs["candidates"]
    assert main(["evaluate-masks", str(out), "--gt", str(gt)]) == 0
    assert "pointing game" in capsys.readouterr().out


def test_mil_run_resumes_and_is_deterministic(scenes, mil_run, tmp_path):
    root, gt, _ = scenes
    config, out, m = mil_run
    again = run_mine_fem(config, MineInputs(images=str(root / "mine" / "images"), labels=str(gt)),
                         RunOptions(out=str(out), resume=True, quiet=True), save_baselines=True)
    assert again["counts"]["mined_this_run"] == 0
    fresh = tmp_path / "b"
    run_mine_fem(config, MineInputs(images=str(root / "mine" / "images"), labels=str(gt)),
                 RunOptions(out=str(fresh), workers=2, quiet=True))
    assert (fresh / "pseudo_labels.json").read_bytes() == \
        (out / "pseudo_labels.json").read_bytes()


def test_training_items_and_targets(scenes, tmp_path):
    root, _, extra_gt = scenes
    items = training_items(str(root / "train" / "images"), str(extra_gt), ["disc", "star"])
    assert len(items) == 6 and all(set(it.labels) <= {"disc", "star"} for it in items)
    assert all(len(it.sha256) == 64 for it in items)
    plan = Plan([], ["disc", "star"], [], negatives=[tmp_path / "n.png"],
                extra=[Item("x.png", str(tmp_path / "x.png"), ("star",), ""),
                       Item("y.png", str(tmp_path / "y.png"), (), "")])
    paths, y = training_set(plan, tmp_path)
    assert paths == [tmp_path / "n.png", tmp_path / "x.png", tmp_path / "y.png"]
    np.testing.assert_array_equal(y, [[0, 0], [0, 1], [0, 0]])
    with pytest.raises(WeakpasteError) as err:
        training_items(str(tmp_path / "nowhere"), str(extra_gt), ["disc"])
    assert str(err.value) == (f"{tmp_path / 'nowhere'}: training images folder not found; "
                              "pass it with --train-images")


def test_train_images_need_their_labels(scenes, capsys):
    root, gt, _ = scenes
    with pytest.raises(WeakpasteError) as err:
        FemConfig(train_images="t")
    assert str(err.value) == ("train_images (--train-images) needs train_labels "
                              "(--train-labels): pass both or neither")
    assert main(["mine", "fem", "--images", str(root / "mine" / "images"), "--labels",
                 str(gt), "--out", str(root / "x"), "--train-labels", str(gt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["weakpaste: error: train_labels (--train-labels) needs train_images "
                   "(--train-images): pass both or neither"]


def test_help_documents_the_mil_options(capsys):
    with pytest.raises(SystemExit):
        main(["mine", "fem", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--anchor {gradcam,mil}", "--mil-side", "--mil-refine", "--mil-epochs",
                 "--mil-dims", "--train-images DIR", "--train-labels PATH"):
        assert flag in text, flag


def test_cli_mine_fem_anchor_mil_with_csv_training_labels(scenes, tmp_path):
    root, gt, extra_gt = scenes
    doc = json.loads(extra_gt.read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    rows = {}
    for a in doc["annotations"]:
        rows.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    files = {im["id"]: im["file_name"] for im in doc["images"]}
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels"])
        for i, labels in rows.items():
            w.writerow([files[i], ";".join(sorted(labels) + ["zebra"])])  # zebra: not mined
    out = tmp_path / "bank"
    assert main(["mine", "fem", "--images", str(root / "mine" / "images"), "--labels",
                 str(gt), "--out", str(out), "--backbone", "resnet18", "--weights", "none",
                 "--epochs", "2", "--input-size", "64", "--crop-size", "48", "--max-side",
                 "128", "--candidates", "4", "--anchor", "mil", "--mil-side", "64",
                 "--mil-epochs", "2", "--mil-dims", "8", "--mil-refine", "1",
                 "--train-images", str(root / "train" / "images"), "--train-labels",
                 str(tmp_path / "train.csv"), "--min-samples", "3", "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["train_images"] == len(rows)
    assert m["config"]["params"]["anchor"] == "mil"
    categories = json.loads((out / "pseudo_labels.json").read_text())["categories"]
    assert "zebra" not in {c["name"] for c in categories}


def test_anchor_map_and_packing():
    masks = np.zeros((3, 8, 8), bool)
    masks[0, :4, :4] = True
    masks[1, :, :] = True
    masks[2, 4:, 4:] = True
    props = Proposals.from_masks(masks)
    same = unpack(pack(props))
    np.testing.assert_array_equal(same.masks(), props.masks())
    cam = anchor_map(props, np.array([1.0, 0.0, 0.5]), np.array([0, 1]))
    assert cam.shape == (8, 8) and cam.dtype == np.float32
    # Top-left: mean of 1 and 0 (the maximum: 1 after division); elsewhere only proposal 1.
    assert cam[0, 0] == 1.0 and cam[7, 7] == 0.0


def test_packed_proposals_are_data_never_pickle():
    """Label-map and explicit-mask proposals round-trip; a forged blob is refused, never run."""
    import zstandard

    label_map = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 2, 1]], dtype=np.int32)
    explicit = np.zeros((1, 3, 4), bool)
    explicit[0, 1:, :2] = True
    props = Proposals((6, 8), [label_map], [(0, [0, 2]), (0, [1]), (-1, [0])],
                      explicit_masks=explicit, map_names=["slic-4"])
    blob = pack(props)
    assert b"pickle" not in blob and not blob.startswith(b"\x80")
    same = unpack(blob)
    assert same.map_names == ("slic-4",) and same.image_shape == (6, 8) and len(same) == 3
    np.testing.assert_array_equal(same.masks(), props.masks())
    forged = zstandard.ZstdCompressor(write_content_size=True).compress(
        b"\x80\x04cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    with pytest.raises(ValueError, match=r"^not a packed Proposals \("):
        unpack(forged)
    with pytest.raises(ValueError, match=r"^not a packed Proposals \("):
        unpack(blob[:20])
