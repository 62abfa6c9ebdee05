"""Pseudo-label quality metric: hand-made GT and predictions with known IoUs."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import square_masks

from weakpaste.bank.store import BankWriter
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.evaluate.funnel import EvaluateMasksConfig, EvaluateMasksInputs, run_evaluate_masks
from weakpaste.evaluate.masks import (
    evaluate_masks,
    format_table,
    load_predictions,
)
from weakpaste.io.coco import write_coco
from weakpaste.ops import masks as mask_ops
from weakpaste.structures import ImageRecord, Instances, Segment

NEITHER = ("not a segment bank folder nor a COCO JSON; pass the output of 'weakpaste mine' "
           "(BANK or BANK/pseudo_labels.json)")

# GT: img1 (20x20) cat A [0,0,10,10], dog B [10,10,20,20]; img2 (H 20, W 30) cat C [0,0,10,10],
# cat D [15,5,25,15]; img3 (10x10) dog E [0,0,4,4]; category "horse" has no instance.
GT_LAYOUT = [
    ("img1.png", 20, 20, [("cat", (0, 0, 10, 10)), ("dog", (10, 10, 20, 20))]),
    ("img2.png", 20, 30, [("cat", (0, 0, 10, 10)), ("cat", (15, 5, 25, 15))]),
    ("img3.png", 10, 10, [("dog", (0, 0, 4, 4))]),
]

# Predictions (image, H, W, class, xyxy, score) and their best IoU:
#   1 exactly A -> 1.0; 2 left half of A -> 0.5 (a second hit on A); 3 "dog" on A -> 0 (wrong
#   class); 4 top 8 rows of C -> 0.8; 5 "bird" (not a GT class) -> 0; 6 on an image not in GT.
PREDS = [
    ("img1.png", 20, 20, "cat", (0, 0, 10, 10), 0.9),
    ("img1.png", 20, 20, "cat", (0, 0, 5, 10), 0.8),
    ("img1.png", 20, 20, "dog", (0, 0, 10, 10), 0.7),
    ("img2.png", 20, 30, "cat", (0, 0, 10, 8), 0.6),
    ("img2.png", 20, 30, "bird", (20, 0, 30, 5), 0.5),
    ("other.png", 12, 12, "cat", (2, 2, 6, 6), 0.4),
]

CAT = {"num_predictions": 4, "precision@0.5": 0.75, "precision@0.75": 0.5,
       "mean_best_iou": pytest.approx(2.3 / 4), "gt_instances": 3,
       "instance_yield@0.5": pytest.approx(2 / 3), "instance_yield@0.75": pytest.approx(2 / 3),
       "labelled_pairs": 2, "pair_yield@0.5": 1.0, "pair_yield@0.75": 1.0,
       "images_without_gt": 1}
DOG = {"num_predictions": 1, "precision@0.5": 0.0, "precision@0.75": 0.0, "mean_best_iou": 0.0,
       "gt_instances": 2, "instance_yield@0.5": 0.0, "instance_yield@0.75": 0.0,
       "labelled_pairs": 2, "pair_yield@0.5": 0.0, "pair_yield@0.75": 0.0,
       "images_without_gt": 0}
BIRD = {**DOG, "gt_instances": 0, "labelled_pairs": 0}
HORSE = {**BIRD, "num_predictions": 0}
OVERALL = {"num_predictions": 6, "precision@0.5": 0.5, "precision@0.75": pytest.approx(1 / 3),
           "mean_best_iou": pytest.approx(2.3 / 6), "gt_instances": 5,
           "instance_yield@0.5": 0.4, "instance_yield@0.75": 0.4, "labelled_pairs": 4,
           "pair_yield@0.5": 0.5, "pair_yield@0.75": 0.5, "images_without_gt": 1,
           "unknown_class_predictions": 1}

TABLE = """\
class    preds   P@0.5  P@0.75    mIoU  GT inst  inst yield  pair yield
-----------------------------------------------------------------------
cat          4   75.0%   50.0%   57.5%        3       66.7%      100.0%
dog          1    0.0%    0.0%    0.0%        2        0.0%        0.0%
bird         1    0.0%    0.0%    0.0%        0        0.0%        0.0%
horse        0    0.0%    0.0%    0.0%        0        0.0%        0.0%
-----------------------------------------------------------------------
overall      6   50.0%   33.3%   38.3%        5       40.0%       50.0%
yields at IoU >= 0.5; 4 labelled (image, class) pairs
1 prediction on 1 image not in GT, counted wrong (e.g. 'other.png')
1 prediction of classes not in GT, counted wrong: 'bird' (1)"""


def _write_gt(path: Path, layout=GT_LAYOUT, categories=("cat", "dog", "horse")) -> Path:
    records = []
    for i, (name, h, w, items) in enumerate(layout):
        inst = (Instances.from_masks(square_masks(h, w, [b for _, b in items]),
                                     [c for c, _ in items]) if items else Instances.empty(h, w))
        records.append(ImageRecord(image_id=i + 1, file_name=name, width=w, height=h,
                                   instances=inst))
    write_coco(path, records, list(categories))
    return path


def _write_pred_coco(path: Path, preds=PREDS) -> Path:
    """Predictions as weakpaste writes them: one image entry per file_name, scores kept."""
    by_image: dict[str, list] = {}
    for p in preds:
        by_image.setdefault(p[0], []).append(p)
    records = []
    for i, (name, items) in enumerate(by_image.items()):
        h, w = items[0][1:3]
        masks = square_masks(h, w, [p[4] for p in items])
        records.append(ImageRecord(
            image_id=i + 1, file_name=name, width=w, height=h,
            instances=Instances.from_masks(masks, [p[3] for p in items],
                                           scores=np.array([p[5] for p in items]))))
    write_coco(path, records, ["cat", "dog", "bird"])
    return path


def _segment(source: str, category: str, crop: tuple, mask_box: tuple, score: float) -> Segment:
    """A segment cut at ``crop`` (xyxy in the source) whose mask fills ``mask_box`` in it."""
    x0, y0, x1, y1 = crop
    mask = square_masks(y1 - y0, x1 - x0, [tuple(np.subtract(mask_box, (x0, y0, x0, y0)))])[0]
    rgb = np.full((y1 - y0, x1 - x0, 3), 128, dtype=np.uint8)
    return Segment(rgb, mask, category, source_image=source,
                   source_box=np.array(crop, dtype=np.float64), scores={"score": score},
                   miner="test")


def _write_bank(root: Path, segments: list[Segment]) -> Path:
    with BankWriter(root) as writer:
        for seg in segments:
            writer.add(seg)
    return root


def _bank_of_preds(root: Path) -> Path:
    """PREDS as a bank: sub-folder source names, crops larger than some masks."""
    return _write_bank(root, [
        _segment("train/img1.png", "cat", (0, 0, 10, 10), (0, 0, 10, 10), 0.9),
        _segment("train/img1.png", "cat", (0, 0, 8, 12), (0, 0, 5, 10), 0.8),
        _segment("train/img1.png", "dog", (0, 0, 10, 10), (0, 0, 10, 10), 0.7),
        _segment("img2.png", "cat", (0, 0, 10, 8), (0, 0, 10, 8), 0.6),
        _segment("img2.png", "bird", (18, 0, 30, 6), (20, 0, 30, 5), 0.5),
        _segment("other.png", "cat", (2, 2, 6, 6), (2, 2, 6, 6), 0.4),
    ])


def _check_known_result(res: dict) -> None:
    assert res["overall"] == OVERALL
    assert list(res["per_class"]) == ["bird", "cat", "dog", "horse"]
    assert res["per_class"] == {"cat": CAT, "dog": DOG, "bird": BIRD, "horse": HORSE}
    assert res["unknown_classes"] == {"bird": 1}
    assert res["images_not_in_gt"] == {"count": 1, "examples": ["other.png"]}
    assert res["config"]["iou_thresholds"] == [0.5, 0.75]


def test_coco_predictions_exact_metrics(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    pred = _write_pred_coco(tmp_path / "pseudo_labels.json")
    res = evaluate_masks(pred, gt)
    _check_known_result(res)
    assert res["config"] == {"pred": str(pred), "gt": str(gt), "iou_thresholds": [0.5, 0.75]}
    assert format_table(res) == TABLE
    assert evaluate_masks(pred, gt) == res  # deterministic


def test_load_coco_predictions_scores_and_masks(tmp_path):
    pred = load_predictions(_write_pred_coco(tmp_path / "p.json"))
    assert list(pred) == ["img1.png", "img2.png", "other.png"]
    assert [(c, s) for c, _, s in pred["img1.png"]] == [("cat", 0.9), ("cat", 0.8), ("dog", 0.7)]
    rle = pred["img2.png"][1][1]
    assert rle["size"] == [20, 30] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(mask_ops.decode(rle), square_masks(20, 30, [(20, 0, 30, 5)])[0])


def test_coco_predictions_without_score_and_crowd(tmp_path):
    path = _write_pred_coco(tmp_path / "p.json", PREDS[:2])
    doc = json.loads(path.read_text())
    del doc["annotations"][0]["score"]
    doc["annotations"][1]["iscrowd"] = 1  # not a prediction
    path.write_text(json.dumps(doc))
    assert [(c, s) for c, _, s in load_predictions(path)["img1.png"]] == [("cat", None)]
    doc["annotations"][0]["score"] = "high"
    path.write_text(json.dumps(doc))
    with pytest.raises(WeakpasteError) as err:
        load_predictions(path)
    assert str(err.value) == (f"{path}: annotations[0] (id 1) has score 'high'; scores must be "
                              "finite numbers")


def test_polygon_predictions(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    path = _write_pred_coco(tmp_path / "p.json", PREDS[:1])
    doc = json.loads(path.read_text())
    doc["annotations"][0]["segmentation"] = [[0, 0, 10, 0, 10, 10, 0, 10]]
    path.write_text(json.dumps(doc))
    res = evaluate_masks(path, gt)
    assert res["overall"]["num_predictions"] == 1
    assert 0.75 <= res["overall"]["mean_best_iou"] <= 1.0
    assert res["per_class"]["cat"]["instance_yield@0.75"] == pytest.approx(1 / 3)


def test_bank_predictions_exact_metrics(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    bank = _bank_of_preds(tmp_path / "bank")
    res = evaluate_masks(bank, gt)
    _check_known_result(res)
    assert res["config"]["pred"] == str(bank)
    assert format_table(res) == TABLE


def test_load_bank_predictions_places_crops(tmp_path):
    bank = _bank_of_preds(tmp_path / "bank")
    sizes = {"img1.png": (20, 20), "img2.png": (20, 30), "img3.png": (10, 10)}
    pred = load_predictions(bank, sizes)
    assert list(pred) == ["img1.png", "img2.png", "other.png"]  # keyed by GT file_name
    assert [(c, s) for c, _, s in pred["img1.png"]] == [("cat", 0.9), ("cat", 0.8), ("dog", 0.7)]
    half = pred["img1.png"][1][1]
    assert half["size"] == [20, 20]
    np.testing.assert_array_equal(mask_ops.decode(half), square_masks(20, 20, [(0, 0, 5, 10)])[0])
    bird = pred["img2.png"][1][1]
    np.testing.assert_array_equal(mask_ops.decode(bird), square_masks(20, 30, [(20, 0, 30, 5)])[0])
    # Not in GT: a canvas just large enough for the crop.
    assert pred["other.png"][0][1]["size"] == [6, 6]
    # Without sizes every segment keeps its own source name.
    assert list(load_predictions(bank)) == ["train/img1.png", "img2.png", "other.png"]


def test_bank_with_no_source_in_gt(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    bank = _write_bank(tmp_path / "bank", [
        _segment("elsewhere/a.png", "cat", (0, 0, 10, 10), (0, 0, 10, 10), 0.9),
        _segment("b.png", "dog", (3, 3, 9, 9), (3, 3, 9, 9), 0.9),
    ])
    res = evaluate_masks(bank, gt)
    o = res["overall"]
    assert o["num_predictions"] == 2 and o["images_without_gt"] == 2
    assert o["precision@0.5"] == 0.0 and o["mean_best_iou"] == 0.0
    assert o["gt_instances"] == 5 and o["instance_yield@0.5"] == 0.0
    assert o["labelled_pairs"] == 4 and o["pair_yield@0.5"] == 0.0
    assert res["images_not_in_gt"] == {"count": 2, "examples": ["b.png", "elsewhere/a.png"]}
    assert "2 predictions on 2 images not in GT, counted wrong (e.g. 'b.png', 'elsewhere/a.png')" \
        in format_table(res)


def test_empty_predictions(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    empty_coco = tmp_path / "empty.json"
    write_coco(empty_coco, [ImageRecord(1, "img1.png", 20, 20, instances=Instances.empty(20, 20))],
               ["cat"])
    empty_bank = _write_bank(tmp_path / "bank", [])
    for pred in (empty_coco, empty_bank, {}):
        res = evaluate_masks(pred, gt)
        assert res["overall"] == {
            "num_predictions": 0, "precision@0.5": 0.0, "precision@0.75": 0.0,
            "mean_best_iou": 0.0, "gt_instances": 5, "instance_yield@0.5": 0.0,
            "instance_yield@0.75": 0.0, "labelled_pairs": 4, "pair_yield@0.5": 0.0,
            "pair_yield@0.75": 0.0, "images_without_gt": 0, "unknown_class_predictions": 0}
        assert res["per_class"]["cat"]["num_predictions"] == 0
        assert res["unknown_classes"] == {}
        assert res["images_not_in_gt"] == {"count": 0, "examples": []}
        lines = format_table(res).splitlines()
        assert lines[-2] == ("overall      0    0.0%    0.0%    0.0%        5        0.0%"
                             "        0.0%")
        assert lines[-1] == "yields at IoU >= 0.5; 4 labelled (image, class) pairs"


def test_image_name_matching(tmp_path):
    layout = [("x.png", 10, 10, [("cat", (0, 0, 4, 4))]),
              ("a/x.png", 10, 10, [("cat", (5, 5, 9, 9))]),
              ("a/y.png", 10, 10, [("cat", (0, 0, 4, 4))]),
              ("a/z.png", 10, 10, [("cat", (0, 0, 4, 4))]),
              ("b/z.png", 10, 10, [("cat", (0, 0, 4, 4))])]
    gt = _write_gt(tmp_path / "gt.json", layout, ["cat"])

    def pred(name):
        return {name: [("cat", mask_ops.encode(square_masks(10, 10, [(0, 0, 4, 4)])[0]), None)]}

    exact = evaluate_masks(pred("x.png"), gt)["overall"]  # not 'a/x.png', whose base is x.png
    assert exact["precision@0.5"] == 1.0 and exact["images_without_gt"] == 0
    by_base = evaluate_masks(pred("other/dir/y.png"), gt)["overall"]
    assert by_base["precision@0.5"] == 1.0 and by_base["images_without_gt"] == 0
    windows = evaluate_masks(pred("c:\\data\\y.png"), gt)["overall"]
    assert windows["precision@0.5"] == 1.0
    ambiguous = evaluate_masks(pred("z.png"), gt)
    assert ambiguous["overall"]["images_without_gt"] == 1
    assert ambiguous["overall"]["precision@0.5"] == 0.0
    assert ambiguous["images_not_in_gt"]["examples"] == ["z.png"]


def test_custom_thresholds(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    pred = _write_pred_coco(tmp_path / "p.json")
    res = evaluate_masks(pred, gt, iou_thresholds=(0.8, 0.5))
    o = res["overall"]
    assert o["precision@0.8"] == pytest.approx(2 / 6)  # 0.8 >= 0.8: inclusive
    assert o["instance_yield@0.8"] == 0.4 and o["pair_yield@0.8"] == 0.5
    lines = format_table(res).splitlines()
    assert lines[0] == "class    preds   P@0.8   P@0.5    mIoU  GT inst  inst yield  pair yield"
    assert lines[-3] == "yields at IoU >= 0.8; 4 labelled (image, class) pairs"
    for bad in ((), (0.0,), (1.5,)):
        with pytest.raises(ValueError, match="iou_thresholds must be a non-empty sequence"):
            evaluate_masks(pred, gt, iou_thresholds=bad)


def test_pred_neither_bank_nor_coco(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    folder = tmp_path / "folder"
    folder.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    for pred in (folder, text, listing, tmp_path / "missing.json"):
        with pytest.raises(WeakpasteError) as err:
            evaluate_masks(pred, gt)
        assert str(err.value) == f"{pred}: {NEITHER}"
        with pytest.raises(WeakpasteError) as err:
            load_predictions(pred)
        assert str(err.value) == f"{pred}: {NEITHER}"


def _error(pred, gt) -> str:
    """The one-line message ``evaluate_masks(pred, gt)`` refuses the input with."""
    with pytest.raises(WeakpasteError) as err:
        evaluate_masks(pred, gt)
    return str(err.value)


def test_pred_coco_invalid_propagates(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    path = _write_pred_coco(tmp_path / "p.json")
    doc = json.loads(path.read_text())
    doc["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(doc))
    assert _error(path, gt) == (f"{path}: annotations[0] (id 1) has category id 99, which is not "
                              "in 'categories'")


def test_bad_gt(tmp_path):
    pred = _write_pred_coco(tmp_path / "p.json")
    missing = tmp_path / "missing.json"
    assert _error(pred, missing) == (f"{missing}: no such file; pass the path of a COCO "
                                     "instances JSON")

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(WeakpasteError, match=r"broken.json: not valid JSON"):
        evaluate_masks(pred, broken)

    boxes_only = _write_gt(tmp_path / "boxes.json")
    doc = json.loads(boxes_only.read_text())
    for ann in doc["annotations"]:
        del ann["segmentation"]
    boxes_only.write_text(json.dumps(doc))
    assert _error(pred, boxes_only) == (f"{boxes_only}: annotations[0] (id 1) has no usable "
                              "'segmentation'; weakpaste needs instance masks as polygons or RLE")

    del doc["annotations"]
    boxes_only.write_text(json.dumps(doc))
    assert _error(pred, boxes_only) == (
        f"{boxes_only}: holds no instance masks; evaluating pseudo-labels needs ground truth "
        "with polygon or RLE 'segmentation' (the data set's instances JSON)")

    twice = _write_gt(tmp_path / "twice.json", [GT_LAYOUT[0], GT_LAYOUT[0]])
    assert _error(pred, twice) == (f"{twice}: file_name 'img1.png' appears twice in 'images'; "
                              "predictions are matched by file_name")


def test_size_mismatch(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    pred = _write_pred_coco(tmp_path / "p.json", [("img1.png", 20, 25, "cat", (0, 0, 5, 5), 1.0)])
    assert _error(pred, gt) == (f"{pred}: a 'cat' mask of image 'img1.png' is 25x20 but GT image "
                              "'img1.png' is 20x20; predictions and GT must describe the same "
                              "images")
    bank = _write_bank(tmp_path / "bank",
                       [_segment("img3.png", "dog", (4, 0, 12, 4), (4, 0, 12, 4), 1.0)])
    assert _error(bank, gt) == (f"{bank}: segment 1 spans x 4..12, y 0..4 of 'img3.png', outside "
                              "the 10x10 image of that name in GT; pass the GT of the images the "
                              "bank was mined from")


def test_run_evaluate_masks(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    pred = _write_pred_coco(tmp_path / "p.json")
    out = tmp_path / "reports" / "eval.json"
    text = run_evaluate_masks(None, EvaluateMasksInputs(pred, gt), RunOptions(out=str(out)))
    # the predictions carry scores that rank them: the table, then their curve
    assert text.startswith(f"{pred} vs {gt}\n\n{TABLE}\n\nprecision-yield by score: the top q "
                           "of the 6 predictions (a random draw of any size: precision@0.5 "
                           "50.0%)")
    saved = json.loads(out.read_text())
    curve = saved.pop("curve")
    assert saved == json.loads(json.dumps(evaluate_masks(pred, gt)))
    assert [r["kept"] for r in curve] == [1, 2, 2, 3, 3, 4, 5, 5, 6, 6]  # ceil(q x 6)
    assert curve[-1]["precision@0.5"] == 0.5 == curve[-1]["random_precision@0.5"]
    assert saved["overall"]["num_predictions"] == 6
    as_json = run_evaluate_masks(EvaluateMasksConfig(as_json=True), EvaluateMasksInputs(pred, gt))
    assert json.loads(as_json) == {**saved, "curve": curve}
    assert not list(out.parent.glob(".*.tmp"))
    with pytest.raises(WeakpasteError) as err:
        run_evaluate_masks(None, EvaluateMasksInputs(pred, gt), RunOptions(out=gt))
    assert str(err.value) == f"{gt}: --out would overwrite an input; choose another file"
    # An existing file is never silently replaced (issue 11, item 3).
    out.write_text("my notes")
    with pytest.raises(WeakpasteError) as err:
        run_evaluate_masks(None, EvaluateMasksInputs(pred, gt), RunOptions(out=str(out)))
    assert str(err.value) == (f"{out}: already exists; pass --overwrite to replace it or "
                              "choose another --out")
    assert out.read_text() == "my notes"
    run_evaluate_masks(None, EvaluateMasksInputs(pred, gt),
                       RunOptions(out=str(out), overwrite=True))
    assert json.loads(out.read_text()) == {**saved, "curve": curve}


def test_evaluate_masks_cli_out_needs_overwrite(tmp_path, capsys):
    from weakpaste.cli import main

    gt = _write_gt(tmp_path / "gt.json")
    pred = _write_pred_coco(tmp_path / "p.json")
    out = tmp_path / "eval.json"
    out.write_text("keep")
    argv = ["evaluate-masks", str(pred), "--gt", str(gt), "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (f"weakpaste: error: {out}: already exists; pass "
                                               "--overwrite to replace it or choose another "
                                               "--out")
    assert out.read_text() == "keep"
    assert main(argv + ["--overwrite"]) == 0
    assert json.loads(out.read_text())["overall"]["num_predictions"] == 6


def test_bank_score_names(tmp_path):
    segs = [_segment("img1.png", "cat", (0, 0, 4, 4), (0, 0, 4, 4), 0.0) for _ in range(3)]
    named = [{"score": 0.9, "classifier": 0.1}, {"classifier": 0.3, "area": 16.0}, {"area": 16.0}]
    for seg, scores in zip(segs, named, strict=True):
        seg.scores.clear()
        seg.scores.update(scores)
    pred = load_predictions(_write_bank(tmp_path / "bank", segs), {"img1.png": (20, 20)})
    assert [s for _, _, s in pred["img1.png"]] == [0.9, 0.3, None]
