"""F-EM's quality options: saliency proposals, negatives, the evidence pick, the funnel."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import resize_onnx_model

from weakpaste.cli import main
from weakpaste.core.errors import WeakpasteError
from weakpaste.demo.run import write_synthetic_dataset
from weakpaste.io.images import write_image
from weakpaste.mine.config import FemConfig, FemParams
from weakpaste.mine.fem import _keep, evidence
from weakpaste.mine.pipeline import Plan, training_set
from weakpaste.mine.saliency_proposals import cam_regions, saliency_segments, to_working


def test_cam_regions_values():
    cam = np.zeros((200, 300), np.float32)
    cam[10:30, 20:60] = 1.0      # 40 x 20 region -> x1.5 = 60 x 30, min side 64 -> 64 x 64
    cam[100:200, 200:300] = 0.8  # 100 x 100 at the corner -> 150 x 150, clipped
    boxes = cam_regions(cam, 0.5, 1.5, 64)
    assert boxes.dtype == np.int64 and boxes.shape == (2, 4)
    np.testing.assert_array_equal(boxes[0], [175, 75, 300, 200])  # largest first
    np.testing.assert_array_equal(boxes[1], [8, 0, 72, 52])
    assert cam_regions(np.zeros((50, 50), np.float32)).shape == (0, 4)
    with pytest.raises(ValueError, match="expand must be >= 1, got 0.5"):
        cam_regions(cam, expand=0.5)


def test_saliency_segments_components_union_and_crops():
    sal = np.zeros((40, 50), np.float32)
    sal[2:12, 2:12] = 0.9    # 100 px
    sal[20:30, 30:45] = 0.7  # 150 px
    sal[35, 0] = 1.0         # 1 px: under min_area
    masks = saliency_segments(sal, 0.5, min_area=0.01)
    assert masks.shape == (3, 40, 50) and masks.dtype == bool
    assert masks[0].sum() == 150 and masks[1].sum() == 100
    np.testing.assert_array_equal(masks[2], masks[0] | masks[1])
    assert saliency_segments(sal, 0.5, 0.01, union=False).shape == (2, 40, 50)
    crop = saliency_segments(sal[20:30, 30:45], 0.5, 0.01, box=(30, 20, 45, 30),
                             shape=(40, 50))
    assert crop.shape == (1, 40, 50)
    np.testing.assert_array_equal(crop[0], masks[0])
    with pytest.raises(ValueError, match="does not match the box"):
        saliency_segments(sal, box=(0, 0, 5, 5), shape=(40, 50))
    with pytest.raises(ValueError, match="pass the image shape with a crop box"):
        saliency_segments(sal, box=(0, 0, 50, 40))


def test_to_working_downsamples_and_drops_empty():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4, :4] = True
    masks[1, 7, 7] = True  # one pixel: gone at 4 x 4
    small = to_working(masks, (4, 4))
    assert small.shape == (1, 4, 4) and small[0].sum() == 4 and small[0, :2, :2].all()


def test_evidence_values_and_errors():
    np.testing.assert_allclose(evidence(np.array([0.5, 1.0]), np.array([0.8, 0.1])),
                               [0.4, 0.1])
    with pytest.raises(ValueError, match=r"evidence: \(2,\) scores but \(3,\) CAM means"):
        evidence(np.zeros(2), np.zeros(3))


class _Cm:
    def __init__(self, label, score):
        self.label, self.scores = label, np.array([score], np.float32)


def test_keep_threshold_min_evidence_and_top_fraction():
    chosen = [(0, _Cm("a", 0.9), 0, 0.0, 0.8), (1, _Cm("a", 0.05), 0, 0.0, 0.9),
              (2, _Cm("b", 0.5), 0, 0.0, 0.2), (3, _Cm("b", 0.6), 0, 0.0, 0.5)]
    kept, dropped = _keep(chosen, FemConfig(score_threshold=0.1))
    assert kept == {0, 2, 3} and dropped == {"a": 1}
    kept, _ = _keep(chosen, FemConfig(score_threshold=0.1, min_evidence=0.3))
    assert kept == {0, 3}
    kept, dropped = _keep(chosen, FemConfig(score_threshold=0.1, keep_top=0.5))
    assert kept == {0, 3} and dropped == {"a": 1, "b": 1}  # ceil(0.5 x 3) = 2 of most evidence


def test_training_set_negatives_have_zero_targets(tmp_path):
    class R:
        def __init__(self, f, labels):
            self.file_name, self.labels = f, labels

    plan = Plan([], ["cat", "dog"], [R("a.png", ["dog"]), R("b.png", ["cat", "dog"])],
                negatives=[tmp_path / "n1.png"])
    paths, y = training_set(plan, tmp_path)
    assert paths == [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "n1.png"]
    np.testing.assert_array_equal(y, [[0, 1], [1, 1], [0, 0]])
    assert y.dtype == np.float32


def test_config_errors_name_the_options():
    with pytest.raises(WeakpasteError) as err:
        FemParams(methods=("saliency",))
    assert str(err.value) == ("methods (--proposals) has saliency, which needs a salient-object "
                              "model: pass saliency (--saliency PATH)")
    with pytest.raises(WeakpasteError, match="saliency .--saliency. is set but methods"):
        FemParams(saliency="m.onnx")
    with pytest.raises(WeakpasteError,
                       match=r"keep_top \(--keep-top\) must be in \(0, 1\], got 0.0"):
        FemConfig(keep_top=0.0)


# ------------------------------------------------------------------ end to end on the CLI


@pytest.fixture(scope="module")
def salient_run(tmp_path_factory):
    """``mine fem --proposals saliency slic --negatives ... --pick evidence --save-baselines``
    on 8 synthetic scenes: (work folder, argv, out)."""
    work = tmp_path_factory.mktemp("salient")
    gt = write_synthetic_dataset(work / "scenes", num_scenes=8, seed=3, height=96, width=128)
    model = resize_onnx_model(work / "sal.onnx", side=32)
    neg = work / "neg"
    neg.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        write_image(neg / f"n{k}.png", rng.integers(0, 60, (96, 128, 3), dtype=np.uint8))
    argv = ["mine", "fem", "--images", str(work / "scenes" / "images"), "--labels", str(gt),
            "--backbone", "resnet18", "--weights", "none", "--epochs", "2", "--input-size",
            "64", "--crop-size", "48", "--candidates", "6", "--max-side", "128",
            "--proposals", "saliency", "slic", "--saliency", str(model), "--saliency-size",
            "16", "--negatives", str(neg), "--pick", "evidence", "--min-samples", "3",
            "--score-threshold", "0", "--quiet"]
    out = work / "bank"
    assert main([*argv, "--out", str(out), "--save-baselines"]) == 0
    return work, argv, out, gt


def test_salient_run_outputs_and_funnel(salient_run):
    work, argv, out, gt = salient_run
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["negative_images"] == 3
    assert {"negatives", "saliency_model"} <= set(m["inputs"])
    assert m["config"]["saliency_key"].endswith("isnet-16")  # rewritten to run at 16 px
    maps = list((out / ".cache" / "saliency").rglob("*.png"))
    assert len(maps) > 8  # the 8 whole images and the Grad-CAM crops
    # The funnel: candidates contain the picks; the final picks are the evidence picks.
    base = out / "baselines"
    docs = {p.stem: json.loads(p.read_text()) for p in base.glob("*.json")}
    assert {"candidates", "top_n", "step1_pick", "em_pick", "evidence_pick", "cam_peak"} <= \
        set(docs)
    segs = {k: {(a["image_id"], a["segmentation"]["counts"]) for a in d["annotations"]}
            for k, d in docs.items()}
    final = json.loads((out / "pseudo_labels.json").read_text())["annotations"]
    assert {(a["image_id"], a["segmentation"]["counts"]) for a in final} == \
        segs["evidence_pick"]
    assert segs["evidence_pick"] <= segs["candidates"] and segs["em_pick"] <= segs["candidates"]
    assert all(a["area"] == 1 for a in docs["cam_peak"]["annotations"])


def test_salient_run_is_deterministic_and_shares_the_saliency_cache(salient_run, tmp_path):
    work, argv, out, gt = salient_run
    shared = tmp_path / "maps"
    for name in ("a", "b"):
        assert main([*argv, "--out", str(tmp_path / name), "--saliency-cache",
                     str(shared)]) == 0
    a, b = (json.loads((tmp_path / n / "pseudo_labels.json").read_text()) for n in "ab")
    assert a == b == json.loads((out / "pseudo_labels.json").read_text())
    assert not (tmp_path / "b" / ".cache" / "saliency").exists() and any(shared.rglob("*.png"))


def test_salient_run_resume_refuses_changed_negatives(salient_run, capsys):
    work, argv, out, gt = salient_run
    write_image(work / "neg" / "n9.png", np.zeros((96, 128, 3), np.uint8))
    try:
        assert main([*argv, "--out", str(out), "--resume", "--save-baselines"]) == 2
    finally:
        Path(work / "neg" / "n9.png").unlink()
    err = capsys.readouterr().err
    assert "cannot resume: the negatives changed since that run" in err
    assert main([*argv, "--out", str(out), "--resume", "--save-baselines"]) == 0


# ------------------------------------------------------------------ the funnel


def test_funnel_on_the_salient_run(salient_run, capsys):
    work, argv, out, gt = salient_run
    assert main(["evaluate-masks", str(out), "--gt", str(gt), "--json"]) == 0
    f = json.loads(capsys.readouterr().out)["funnel"]
    names = [s["stage"] for s in f["stages"]]
    assert names == ["candidates", "top_n", "step1_pick", "em_pick", "evidence_pick", "kept"]
    r = {s["stage"]: s["recall@0.5"] for s in f["stages"]}
    assert r["candidates"] >= r["top_n"] >= r["step1_pick"]
    assert r["candidates"] >= max(r["em_pick"], r["evidence_pick"])
    assert 0 <= f["cam"]["pointing_mask"] <= f["cam"]["pointing_box"] <= 1
    assert main(["evaluate-masks", str(out), "--gt", str(gt)]) == 0
    text = capsys.readouterr().out
    assert "funnel (recall@0.5 = share of the" in text and "pointing game" in text


def test_precision_yield_and_pointing_values(tiny_coco, tmp_path, capsys):
    from weakpaste.evaluate.funnel import _pointing, precision_yield
    from weakpaste.evaluate.masks import _load_gt
    from weakpaste.io.coco import write_coco
    from weakpaste.structures import ImageRecord, Instances

    gt_path, _ = tiny_coco
    # GT: img0 a (4,4,20,20) b (30,10,60,40); img1 b (2,2,12,30) a (40,5,63,47); img2 a.
    preds = [("img0.png", "a", (4, 4, 20, 20), 0.9),   # right
             ("img0.png", "b", (0, 0, 5, 5), 0.8),     # wrong
             ("img1.png", "a", (40, 5, 63, 47), 0.3),  # right
             ("img2.png", "a", (0, 0, 3, 3), 0.1)]     # wrong
    records = []
    for k, name in enumerate(("img0.png", "img1.png", "img2.png")):
        mine = [p for p in preds if p[0] == name]
        masks = np.zeros((len(mine), 48, 64), bool)
        for m, (_, _, (x0, y0, x1, y1), _) in zip(masks, mine, strict=True):
            m[y0:y1, x0:x1] = True
        records.append(ImageRecord(k + 1, name, 64, 48, instances=Instances.from_masks(
            masks, [p[1] for p in mine], scores=[p[3] for p in mine])))
    path = tmp_path / "pred.json"
    write_coco(path, records, ["a", "b"])
    rows = precision_yield(path, gt_path, fractions=(1.0, 0.5, 0.25))
    assert [r["kept"] for r in rows] == [4, 2, 1]
    np.testing.assert_allclose([r["precision@0.5"] for r in rows], [0.5, 0.5, 1.0])
    np.testing.assert_allclose([r["pair_yield@0.5"] for r in rows], [2 / 5, 1 / 5, 1 / 5])
    assert {r["random_precision@0.5"] for r in rows} == {0.5} and rows[0]["of"] == 4
    # evaluate-masks prints the curve of scored predictions beside the random draw
    assert main(["evaluate-masks", str(path), "--gt", str(gt_path)]) == 0
    text = capsys.readouterr().out
    assert ("precision-yield by score: the top q of the 4 predictions (a random draw of any "
            "size: precision@0.5 50.0%)") in text
    assert "   0.30      2          50.0%           20.0%      +0.0" in text
    assert "   0.10      1         100.0%           20.0%     +50.0" in text
    assert "   0.60      3          66.7%           40.0%     +16.7" in text
    # Pointing: a one-pixel mask inside img0's a, inside img1's b's box, outside img2's a.
    dots = []
    for k, (name, cls, (x, y)) in enumerate((("img0.png", "a", (10, 10)),
                                             ("img1.png", "b", (5, 5)),
                                             ("img2.png", "a", (25, 25)))):
        m = np.zeros((1, 48, 64), bool)
        m[0, y, x] = True
        dots.append(ImageRecord(k + 1, name, 64, 48, instances=Instances.from_masks(m, [cls])))
    write_coco(tmp_path / "peaks.json", dots, ["a", "b"])
    p = _pointing(tmp_path / "peaks.json", _load_gt(gt_path))
    # img2's a has a hole at 20..30: (25, 25) is in its box, not in its mask.
    assert p == {"pointing_mask": 2 / 5, "pointing_box": 3 / 5}


def test_pick_evidence_em_starts_em_from_the_evidence_picks(salient_run, tmp_path):
    work, argv, out, gt = salient_run
    argv = [a if a != "evidence" else "evidence-em" for a in argv]
    assert main([*argv, "--em-iters", "0", "--out", str(tmp_path / "b")]) == 0
    final = json.loads((tmp_path / "b" / "pseudo_labels.json").read_text())["annotations"]
    picks = json.loads((out / "baselines" / "evidence_pick.json").read_text())["annotations"]
    assert [a["segmentation"] for a in final] == [a["segmentation"] for a in picks]


# ------------------------------------------------------------------ a class without candidates


class _StubClassifier:
    """Two classes; Grad-CAMs on the left / right half; every crop scores 0.5."""

    classes = ("a", "b")

    def gradcam(self, image, indices):
        cams = np.zeros((len(indices), *image.shape[:2]), np.float32)
        for k, i in enumerate(indices):
            cams[k, 8:24, 4:28] = 1.0 if i == 0 else 0.0
            cams[k, 8:24, 36:60] = 1.0 if i == 1 else 0.0
        return cams

    def score_segments(self, image, masks, erode=2):
        n = len(masks)
        return np.full((n, 2), 0.5, np.float32), np.ones((n, 4), np.float32)


class _StubSaliency:
    """No region on the whole image; a region only in the first Grad-CAM crop asked for."""

    def __init__(self):
        self.crops = 0

    def whole(self, image, digest):
        return np.zeros((0, *image.shape[:2]), bool)

    def in_cam(self, image, digest, cam):
        self.crops += 1
        masks = np.zeros((1 if self.crops == 1 else 0, *image.shape[:2]), bool)
        masks[:, 8:24, 4:28] = True
        return masks


def test_a_class_left_without_candidates_is_skipped_and_counted():
    # Found on COCO scenes with --proposals saliency --pick evidence: class b's crops held no
    # salient region while a's did; step 1 took argmax of an empty array (a traceback).
    from weakpaste.mine.fem import NO_CANDIDATE, mine_image, step1_choice

    image = np.full((32, 64, 3), 90, np.uint8)
    params = FemParams(methods=("saliency",), saliency="m.onnx", max_side=64, candidates=4)
    res = mine_image(_StubClassifier(), image, ["a", "b"], "x.png", params,
                     saliency=_StubSaliency(), digest="0" * 64)
    assert [cm.label for cm in res.classes] == ["a"] and len(res.classes[0].rles) == 1
    assert res.skipped == {"b": NO_CANDIDATE} == {"b": "no candidate for the class"}
    with pytest.raises(ValueError, match="^step1_choice: no candidate to choose from$"):
        step1_choice(np.zeros(0, np.float32), 3)
