"""LVIS v1 files end to end (issue 15): reading, pasting onto them, federated evaluation.

The LVIS files are made from the COCO fixture (``conftest.lvis_from_coco``): official-looking
entries (``coco_url``, no ``file_name``, polygons, no ``iscrowd``), frequencies from the counts
and federated lists drawn with a seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lvis_reference import make_case

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.cli import main
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import build
from weakpaste.core.run import RunOptions
from weakpaste.io import lvis as lvis_io
from weakpaste.io.coco import Federated, load_coco, write_coco
from weakpaste.io.images import write_image
from weakpaste.paste.run import PasteConfig, PasteInputs, run_paste
from weakpaste.report.stats import StatsInputs, run_stats

# The ``lvis`` package (0.5.3, LVISEval) on lvis_reference.make_case(0): see that module for
# how to run it. weakpaste's LVIS protocol (faster-coco-eval's LVIS mode) must give the same.
REFERENCE = {
    "segm": {"AP": 0.32674, "AP50": 0.632829, "AP75": 0.259147, "APs": 0.191813,
             "APm": 0.347987, "APl": 0.616667, "APr": 0.393111, "APc": 0.331289,
             "APf": 0.255821,
             "per_class": {"class0": 0.598696, "class1": 0.187527, "class2": 0.547209,
                           "class3": 0.115368, "class4": 0.247192, "class5": 0.264451}},
    "bbox": {"AP": 0.33133, "AP50": 0.632829, "AP75": 0.259147, "APs": 0.194183,
             "APm": 0.346852, "APl": 0.616667, "APr": 0.393111, "APc": 0.339551,
             "APf": 0.261328,
             "per_class": {"class0": 0.598696, "class1": 0.187527, "class2": 0.563735,
                           "class3": 0.115368, "class4": 0.267187, "class5": 0.255469}}}
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _edit(path: Path, change) -> Path:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


def _gt_as_results(path: Path) -> list[dict]:
    doc = json.loads(path.read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "segmentation": a["segmentation"], "score": 1.0} for a in doc["annotations"]]


# ---------------------------------------------------------------------------------------------
# Reading and writing


def test_an_lvis_file_reads_with_its_fields(tiny_lvis):
    path, images = tiny_lvis
    data = load_coco(path, images)
    assert data.format == "lvis"
    assert [r.file_name for r in data.records] == ["img0.png", "img1.png", "img2.png"]
    assert data.class_names == ("a", "b", "c", "d", "e")
    assert data.frequency == {"a": "r", "b": "r", "c": "r", "d": "r", "e": "r"}
    assert data.categories["a"] == {"id": 1, "supercategory": "", "synset": "a.n.01",
                                    "synonyms": ["a"], "def": "a thing called a",
                                    "frequency": "r", "image_count": 3, "instance_count": 3}
    # Drawn with seed 0 by lvis_from_coco (ids 3, 4, 5 are c, d, e).
    assert data.federated == {1: Federated(("d", "e"), ("a",)), 2: Federated(),
                              3: Federated(("c", "e"))}
    assert [len(r.instances) for r in data.records] == [2, 2, 1]
    assert data.crowd_skipped == 0


def test_a_coco_file_is_not_federated(tiny_coco):
    data = load_coco(*tiny_coco)
    assert (data.format, data.federated, data.frequency) == ("coco", None, None)


def test_lvis_round_trip_keeps_every_field(tiny_lvis, tmp_path):
    path, images = tiny_lvis
    data = load_coco(path, images)
    out = tmp_path / "again.json"
    write_coco(out, data.records, data.categories, federated=data.federated)
    again = load_coco(out, images)
    assert again.format == "lvis"
    assert again.categories == data.categories
    assert again.federated == data.federated
    for a, b in zip(again.records, data.records, strict=True):
        assert (a.file_name, a.labels, a.instances.classes) == (b.file_name, b.labels,
                                                                b.instances.classes)
        assert np.array_equal(a.instances.masks(), b.instances.masks())
    doc = json.loads(out.read_text())
    assert doc["images"][0]["neg_category_ids"] == [4, 5]
    assert doc["images"][0]["not_exhaustive_category_ids"] == [1]
    # Written as COCO, the same records lose only the federated labels.
    write_coco(tmp_path / "coco.json", data.records, data.categories)
    assert load_coco(tmp_path / "coco.json", images).format == "coco"


def _neg(value):
    def change(doc):
        doc["images"][0]["neg_category_ids"] = value
    return change


def _freq(index, value):
    def change(doc):
        doc["categories"][index]["frequency"] = value
    return change


def _drop(key):
    def change(doc):
        del doc["images"][1][key]
    return change


def _count(value):
    def change(doc):
        doc["categories"][1]["image_count"] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_neg([99]), "images[0] (id 1) lists category id 99 in 'neg_category_ids', which is not "
                 "in 'categories'"),
    (_neg("4,5"), "images[0] (id 1) has neg_category_ids '4,5'; expected a list of category "
                  "ids (LVIS)"),
    (_neg([2]), "images[0] (id 1) has annotations of 'b' but lists it in 'neg_category_ids' "
                "(verified absent); remove one of them"),
    (_drop("not_exhaustive_category_ids"), "images[1] (id 2) has no "
     "'not_exhaustive_category_ids'; every image of an LVIS file lists it (use [] for none)"),
    (_freq(0, "rare"), "categories[0] ('a') has frequency 'rare'; LVIS frequencies are 'r', "
                       "'c' or 'f' (1-10, 11-100, more than 100 training images)"),
    (lambda doc: doc["categories"][2].pop("frequency"),
     "category 'c' has no 'frequency' but others do; give every category 'r', 'c' or 'f', or "
     "none"),
    (_count(-1), "categories[1] ('b') has image_count -1; expected an integer >= 0"),
    (lambda doc: doc["images"][2].pop("coco_url"),
     "images[2] (id 3) has no 'file_name' (nor an LVIS 'coco_url'); give each image the path "
     "of its file"),
])
def test_malformed_lvis_fields_are_one_line(tiny_lvis, change, message):
    path = _edit(tiny_lvis[0], change)
    with pytest.raises(WeakpasteError) as err:
        load_coco(path)
    assert str(err.value) == f"{path}: {message}"


def test_file_name_wins_over_coco_url(tiny_lvis):
    path = _edit(tiny_lvis[0], lambda d: d["images"][0].update(file_name="sub/x.png"))
    assert load_coco(path).records[0].file_name == "sub/x.png"


def test_stats_of_an_lvis_file(tiny_lvis, tiny_coco):
    stats = run_stats(None, StatsInputs(tiny_lvis[0]))
    assert stats["lvis"] == {"format": "lvis",
                             "classes_per_frequency": {"r": 5, "c": 0, "f": 0},
                             "negative_labels": 4, "not_exhaustive_labels": 1}
    assert "lvis" not in run_stats(None, StatsInputs(tiny_coco[0]))


# ---------------------------------------------------------------------------------------------
# Pasting


@pytest.fixture
def lvis_paste(tiny_coco, tiny_lvis, tmp_path):
    """A bank of the COCO fixture's 'a' and 'b'; the LVIS backgrounds, each with its own
    not-exhaustive list (to tell them apart in the output), image 3 (which shows only 'a')
    listing 'b' as verified absent; a folder of one extra background of another size."""
    coco_path, images = tiny_coco
    bank = tmp_path / "bank"
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=coco_path, images=images),
                       RunOptions(out=bank, quiet=True))

    def change(doc):
        doc["images"][1]["not_exhaustive_category_ids"] = [1, 2]
        doc["images"][2]["neg_category_ids"] = [2, 3, 5]
    path = _edit(tiny_lvis[0], change)
    extra = tmp_path / "extra"
    extra.mkdir()
    write_image(extra / "plain.png", np.full((40, 56, 3), 90, np.uint8))
    return {"bank": str(bank), "lvis": str(path), "images": str(images), "extra": str(extra)}


def _paste(p: dict, out: Path, **kw) -> dict:
    extra = kw.pop("extra", [p["extra"]])
    config = build(PasteConfig, **{"num_images": 10, "seed": 8, "objects": (1, 3), **kw})
    return run_paste(config,
                     PasteInputs(bank=p["bank"], backgrounds=p["lvis"], images=p["images"],
                                 extra_backgrounds=extra), RunOptions(out=str(out), quiet=True))


def test_paste_onto_lvis_writes_lvis_with_updated_federated_labels(lvis_paste, tmp_path):
    manifest = _paste(lvis_paste, tmp_path / "out", extra_ratio=0.2)
    data = load_coco(tmp_path / "out" / "annotations.json", tmp_path / "out" / "images")
    src = load_coco(lvis_paste["lvis"])
    assert data.format == "lvis"
    assert data.categories == src.categories  # frequency, image_count and the rest kept
    backgrounds = {f.not_exhaustive: f for f in src.federated.values()}
    lost_b = kept_b = extras = 0
    for rec in data.records:
        fed, labels = data.federated[rec.image_id], set(rec.labels)
        if rec.width == 56:  # an extra background verified nothing
            assert fed == Federated()
            extras += 1
            continue
        bg = backgrounds[fed.not_exhaustive]  # kept as the background's
        # Pasted classes ('a', 'b') leave the negatives; the others stay.
        assert set(bg.negative) - {"a", "b"} <= set(fed.negative) <= set(bg.negative) - labels
        if "b" in bg.negative:
            lost_b += "b" not in fed.negative
            kept_b += "b" in fed.negative
            assert ("b" in fed.negative) == ("b" not in labels)
    assert extras == 2 and lost_b >= 1 and kept_b >= 1
    lv = manifest["counts"]["lvis"]
    assert lv["image_count"]["a"] == sum("a" in r.labels for r in data.records)
    assert lv["instance_count"] == {n: manifest["counts"]["per_class"].get(n, 0)
                                    for n in "abcde"}
    assert lv["classes_not_in_backgrounds"] == []
    assert lv["negative_labels"] == sum(len(f.negative) for f in data.federated.values())


def test_paste_format_coco_and_coco_backgrounds_as_lvis(lvis_paste, tiny_coco, tmp_path):
    _paste(lvis_paste, tmp_path / "coco", annotation_format="coco")
    plain = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert "neg_category_ids" not in plain["images"][0]
    assert set(plain["categories"][0]) == {"id", "name", "supercategory"}
    # COCO backgrounds are exhaustively annotated: as LVIS, their absent classes are negative.
    coco_path, images = tiny_coco
    config = PasteConfig(num_images=4, seed=2, objects=(1, 1), annotation_format="lvis")
    run_paste(config,
              PasteInputs(bank=lvis_paste["bank"], backgrounds=str(coco_path), images=str(images)),
              RunOptions(out=str(tmp_path / "lv"), quiet=True))
    data = load_coco(tmp_path / "lv" / "annotations.json")
    for rec in data.records:
        assert set(data.federated[rec.image_id].negative) == {"a", "b"} - set(rec.labels)
    assert data.categories["a"]["frequency"] == "r"
    assert data.categories["a"]["image_count"] == 3  # the backgrounds file's count


def test_paste_cli_format_option(lvis_paste, tmp_path, capsys):
    argv = ["paste", "--bank", lvis_paste["bank"], "--backgrounds", lvis_paste["lvis"],
            "--images", lvis_paste["images"], "--num-images", "2", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "LVIS format: " in capsys.readouterr().out
    assert load_coco(tmp_path / "a" / "annotations.json").format == "lvis"
    assert main([*argv, "--out", str(tmp_path / "b"), "--format", "coco",
                 "--image-format", "png"]) == 0
    assert load_coco(tmp_path / "b" / "annotations.json").format == "coco"
    assert (tmp_path / "b" / "images" / "000000.png").is_file()


# ---------------------------------------------------------------------------------------------
# Evaluation


def test_ground_truth_as_predictions_scores_one_under_both_protocols(tiny_lvis):
    from weakpaste.evaluate import detection as V

    path = tiny_lvis[0]
    for protocol in ("lvis", "coco"):
        metrics = V.evaluate_results(path, _gt_as_results(path), frequency={"a": "r", "b": "f"},
                                     protocol=protocol)
        for iou in ("segm", "bbox"):
            assert (metrics[iou]["AP"], metrics[iou]["AP50"], metrics[iou]["APr"],
                    metrics[iou]["APf"]) == (1.0, 1.0, 1.0, 1.0), (protocol, iou)


def test_lvis_ignores_a_class_neither_annotated_nor_verified_absent(tiny_lvis):
    """A 'b' detection on image 3 (which shows only 'a'): unverified, so LVIS ignores it
    while COCOeval counts a false positive; once image 3 lists 'b' as absent, LVIS counts it
    too. Ranked first, the false positive leaves 'b' (2 objects) precision 2/3 at every
    recall."""
    from weakpaste.evaluate import detection as V

    path = _edit(tiny_lvis[0], lambda d: d["images"][2].update(neg_category_ids=[3]))
    false_b = {"image_id": 3, "category_id": 2, "bbox": [1.0, 1.0, 10.0, 10.0], "score": 1.0,
               "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]}
    results = [dict(r, score=0.9) for r in _gt_as_results(path)] + [false_b]
    lvis = V.evaluate_results(path, results)
    coco = V.evaluate_results(path, results, protocol="coco")
    for iou in ("segm", "bbox"):
        assert lvis[iou]["per_class"]["b"]["AP"] == 1.0
        assert coco[iou]["per_class"]["b"]["AP"] == pytest.approx(2 / 3)
    _edit(path, lambda d: d["images"][2].update(neg_category_ids=[2, 3]))
    assert V.evaluate_results(path, results)["segm"]["per_class"]["b"]["AP"] == \
        pytest.approx(2 / 3)


def test_unmatched_detection_of_a_not_exhaustive_class_is_no_false_positive(tiny_lvis):
    from weakpaste.evaluate import detection as V

    path = tiny_lvis[0]  # image 1 lists 'a' as not exhaustively annotated
    extra_a = {"image_id": 1, "category_id": 1, "bbox": [40.0, 30.0, 10.0, 10.0], "score": 1.0,
               "segmentation": [[40, 30, 50, 30, 50, 40, 40, 40]]}
    results = [dict(r, score=0.9) for r in _gt_as_results(path)] + [extra_a]
    assert V.evaluate_results(path, results)["segm"]["per_class"]["a"]["AP"] == 1.0
    assert V.evaluate_results(path, results, protocol="coco")["segm"]["per_class"]["a"]["AP"] \
        < 1.0


def _case_metrics(tmp_path: Path) -> dict:
    from weakpaste.evaluate import detection as V

    doc, results = make_case(0)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    return V.evaluate_results(path, results, frequency=load_coco(path).frequency)


def test_lvis_protocol_matches_the_lvis_package(tmp_path):
    metrics = _case_metrics(tmp_path)
    for iou in ("segm", "bbox"):
        for key in KEYS:
            assert metrics[iou][key] == pytest.approx(REFERENCE[iou][key], abs=1e-6), (iou, key)
        assert {n: round(c["AP"], 6) for n, c in metrics[iou]["per_class"].items()} == \
            REFERENCE[iou]["per_class"]


def test_lvis_protocol_matches_the_installed_lvis_package(tmp_path):
    """Run live when the ``lvis`` package is importable (see tests/lvis_reference.py)."""
    from lvis_reference import lvis_installed, lvis_metrics

    if not lvis_installed():
        pytest.skip("the lvis package is not installed")

    live = lvis_metrics(*make_case(0))
    metrics = _case_metrics(tmp_path)
    for iou in ("segm", "bbox"):
        assert {k: round(metrics[iou][k], 6) for k in KEYS} == \
            {k: live[iou][k] for k in KEYS}


def test_the_cap_keeps_300_best_detections_per_image():
    results = [{"image_id": 1 + k % 2, "score": float(k)} for k in range(700)]
    kept = lvis_io.limit_detections(results)
    assert len(kept) == 600
    assert min(r["score"] for r in kept if r["image_id"] == 1) == 100.0
    assert kept == sorted(kept, key=lambda r: r["score"])  # input order kept


def test_eval_cli_on_lvis_ground_truth(tiny_lvis, tmp_path, capsys):
    path, _ = tiny_lvis
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(_gt_as_results(path)))
    assert main(["eval", "--predictions", str(pred), "--data", str(path), "--out",
                 str(tmp_path / "ev"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["info"]["protocol"] == "lvis"
    assert metrics["info"]["frequency_source"] == "LVIS categories"
    assert set(metrics["segm"]) == set(KEYS) | {"per_class"}
    assert metrics["segm"]["AP"] == 1.0 and metrics["segm"]["APr"] == 1.0
    broken = _edit(path, _neg([99]))
    assert main(["eval", "--predictions", str(pred), "--data", str(broken), "--out",
                 str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "lists category id 99 in 'neg_category_ids'" in err[0]


# ---------------------------------------------------------------------------------------------
# Long-tailed subsets and training data


def test_longtail_of_lvis_recounts_and_keeps_frequencies(tiny_lvis, tmp_path, capsys):
    path, _ = tiny_lvis
    _edit(path, _freq(1, "c"))
    out = tmp_path / "lt.json"
    assert main(["longtail", str(path), "--out", str(out), "--max", "2", "--min", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].endswith("selected  frequency")
    sub = load_coco(out)
    assert sub.format == "lvis"
    assert sub.frequency == {"a": "r", "b": "c", "c": "r", "d": "r", "e": "r"}
    doc = json.loads(out.read_text())
    for cat in doc["categories"]:
        mine = [a for a in doc["annotations"] if a["category_id"] == cat["id"]]
        assert cat["instance_count"] == len(mine)
        assert cat["image_count"] == len({a["image_id"] for a in mine})
    src = {img["id"]: img for img in json.loads(path.read_text())["images"]}
    assert all(img == src[img["id"]] for img in doc["images"])  # federated lists kept
    report = doc["info"]["weakpaste"]["counts"]["per_class"]
    assert report["b"]["frequency"] == "c"


def test_training_frequency_comes_from_lvis_files(tiny_lvis, tiny_coco):
    from weakpaste.evaluate.detection import training_frequency

    lvis = load_coco(tiny_lvis[0])
    coco = load_coco(tiny_coco[0])
    assert training_frequency([lvis], ("a", "b", "z")) == {"a": "r", "b": "r", "z": None}
    assert training_frequency([lvis, coco], ("a",)) is None
    assert training_frequency([], ("a",)) is None
