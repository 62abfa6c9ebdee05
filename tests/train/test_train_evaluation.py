"""The eval stage (weakpaste.train.evaluation) and its metrics (weakpaste.evaluate.detection)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_helpers import write_tiny_coco

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.evaluate import detection as D
from weakpaste.io.coco import frequency_bucket, load_coco
from weakpaste.ops.masks import encode
from weakpaste.train import evaluation as V
from weakpaste.train.config import EvalConfig


def _gt_as_results(path) -> list[dict]:
    doc = json.loads(path.read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "segmentation": a["segmentation"], "score": 1.0} for a in doc["annotations"]]


def _rect(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> dict:
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return encode(mask)


@pytest.mark.parametrize("count, bucket", [(0, None), (1, "r"), (10, "r"), (11, "c"),
                                           (100, "c"), (101, "f")])
def test_frequency_buckets_follow_lvis(count, bucket):
    assert frequency_bucket(count) == bucket


def test_ground_truth_against_itself_scores_one(tmp_path):
    path, _ = write_tiny_coco(tmp_path)
    freq = {"a": "r", "b": "c"}
    metrics = D.evaluate_results(path, _gt_as_results(path), frequency=freq,
                                 train_images={"a": 4, "b": 40})
    for iou in ("segm", "bbox"):
        m = metrics[iou]
        assert (m["AP"], m["AP50"], m["AP75"], m["APs"]) == (1.0, 1.0, 1.0, 1.0)
        assert (m["APm"], m["APl"]) == (None, None)  # every object is small (< 32² px)
        assert (m["APr"], m["APc"], m["APf"]) == (1.0, 1.0, None)
        assert m["per_class"] == {
            "a": {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "train_images": 4, "frequency": "r"},
            "b": {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "train_images": 40, "frequency": "c"}}


def test_a_shifted_detection_scores_the_iou_thresholds_it_passes(tmp_path):
    path, _ = write_tiny_coco(tmp_path, layouts=((("a", (10, 10, 30, 30)),),))
    # Shifted by 4 px: IoU = 16*20 / (2*400 - 320) = 0.667, correct at 0.50, 0.55, 0.60, 0.65.
    results = [{"image_id": 1, "category_id": 1, "bbox": [14, 10, 20, 20], "score": 0.9,
                "segmentation": _rect(64, 64, 14, 10, 34, 30)}]
    metrics = D.evaluate_results(path, results)
    for iou in ("segm", "bbox"):
        assert metrics[iou]["AP"] == pytest.approx(0.4)
        assert (metrics[iou]["AP50"], metrics[iou]["AP75"]) == pytest.approx((1.0, 0.0))
        assert (metrics[iou]["APr"], metrics[iou]["APc"], metrics[iou]["APf"]) == (None,) * 3
        assert metrics[iou]["per_class"]["b"]["AP"] is None  # no ground truth for 'b'


def test_no_detections_score_zero_not_undefined(tmp_path):
    path, _ = write_tiny_coco(tmp_path)
    metrics = D.evaluate_results(path, [])
    assert metrics["segm"]["AP"] == 0.0 and metrics["bbox"]["AP50"] == 0.0
    assert metrics["segm"]["per_class"]["a"]["AP"] == 0.0


def test_read_predictions_checks_ids(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    gt = load_coco(path, images)
    pred = tmp_path / "pred.json"
    results = _gt_as_results(path)
    pred.write_text(json.dumps(results + [dict(results[0], category_id=99)]))
    kept, notes = V.read_predictions(pred, gt)
    assert len(kept) == len(results)
    assert notes == [f"{pred}: 1 prediction(s) with category ids not in {path} were ignored: [99]"]
    pred.write_text(json.dumps([dict(results[0], image_id=42)]))
    with pytest.raises(WeakpasteError) as err:
        V.read_predictions(pred, gt)
    assert str(err.value) == (f"{pred}: entry 0 is for image id 42, which is not in {path}; "
                              "evaluate against the data set the predictions were made on")
    pred.write_text("{")
    with pytest.raises(WeakpasteError, match=r"pred.json: not a readable JSON file"):
        V.read_predictions(pred, gt)


def test_run_eval_on_a_results_file_writes_metrics_json(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(_gt_as_results(path)))
    metrics = V.run_eval(EvalConfig(),
                         V.EvalInputs(data=f"{path}", predictions=pred, train=str(path)),
                         RunOptions(out=tmp_path / "out", quiet=True))
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(written) == {"segm", "bbox", "info"}
    assert set(written["segm"]) == set(D.METRIC_KEYS) | {"per_class"}
    assert written["segm"]["AP"] == 1.0 == metrics["bbox"]["AP"]
    # Two training images hold 'a' and two hold 'b': both rare.
    assert (written["segm"]["APr"], written["segm"]["APc"]) == (1.0, None)
    assert written["info"]["frequency_source"] == "training data"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["stage"] == "eval"
    table = D.format_metrics(written)
    assert table.splitlines()[1] == "segm   100.0 100.0 100.0 100.0     -     - 100.0     -     -"


def test_run_eval_needs_one_source(tmp_path):
    with pytest.raises(WeakpasteError, match="pass either --checkpoint CKPT or --predictions"):
        V.run_eval(EvalConfig(), V.EvalInputs(data="x.json"), RunOptions(out=tmp_path / "o"))


def test_lvis_frequencies_are_read_from_categories(tmp_path):
    path, _ = write_tiny_coco(tmp_path)
    doc = json.loads(path.read_text())
    doc["categories"][0]["frequency"] = "r"
    doc["categories"][1]["frequency"] = "f"
    path.write_text(json.dumps(doc))
    assert D.lvis_frequencies(path) == {"a": "r", "b": "f"}
    metrics = D.evaluate_results(path, _gt_as_results(path), frequency=D.lvis_frequencies(path))
    assert (metrics["segm"]["APr"], metrics["segm"]["APc"], metrics["segm"]["APf"]) == \
        (1.0, None, 1.0)


def test_run_eval_refuses_an_output_around_an_input(tmp_path):
    path, _ = write_tiny_coco(tmp_path / "data")
    pred = tmp_path / "preds" / "pred.json"
    pred.parent.mkdir()
    pred.write_text(json.dumps(_gt_as_results(path)))
    for out, given in ((tmp_path / "data", path), (tmp_path / "preds", pred)):
        with pytest.raises(WeakpasteError) as err:
            V.run_eval(EvalConfig(), V.EvalInputs(data=str(path), predictions=pred),
                       RunOptions(out=out, overwrite=True))
        assert str(err.value) == (f"{out}: the output folder overlaps the input {given}; "
                                  "choose an --out outside every input")
    assert path.is_file() and pred.is_file()
