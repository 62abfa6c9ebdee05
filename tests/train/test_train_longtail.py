"""weakpaste.train.longtail: the Pareto reference of EM-Paste appendix §11 and the subset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.io.coco import load_coco, write_coco
from weakpaste.structures import ImageRecord, Instances
from weakpaste.train import longtail as L
from weakpaste.train.config import LongtailConfig


def test_pareto_reference_values():
    assert L.pareto_reference(3, 6, 800, 1).tolist() == [800, 33, 4]
    ref = L.pareto_reference(20, 6, 800, 1)
    # PASCAL VOC's 20 classes: from 800 down to the paper's minimum of 4 masks.
    assert ref.dtype == np.int64 and ref.shape == (20,)
    assert (ref[0], ref[-1]) == (800, 4)
    assert np.all(np.diff(ref) <= 0)
    # The curve spans the same quantiles whatever b: a smaller b drops faster after the head.
    assert L.pareto_reference(10, 1, 800, 1).tolist() == [800, 6, 2, 1, 1, 1, 1, 1, 1, 1]
    assert L.pareto_reference(10, 10, 800, 1)[1] == 400
    assert L.pareto_reference(1, 6, 50, 2).tolist() == [50]


def test_select_longtail_fits_the_reference_when_classes_do_not_share_images():
    table = {i: ["a"] for i in range(1, 51)}
    table.update({i: ["b"] for i in range(51, 81)})
    table.update({i: ["c"] for i in range(81, 91)})
    table[91] = []
    config = LongtailConfig(shape=6, max_count=30, min_count=1, seed=0)
    ids, report = L.select_longtail(table, config)
    ref = L.pareto_reference(3, 6, 30, 1).tolist()
    assert report["order"] == ["a", "b", "c"]
    assert report["reference"] == dict(zip("abc", ref, strict=True))
    assert report["selected"] == dict(zip("abc", ref, strict=True))
    assert report["available"] == {"a": 50, "b": 30, "c": 10}
    assert len(ids) == sum(ref) and 91 not in ids
    again, _ = L.select_longtail(table, LongtailConfig(shape=6, max_count=30, min_count=1, seed=0))
    other, _ = L.select_longtail(table, LongtailConfig(shape=6, max_count=30, min_count=1, seed=1))
    assert again == ids and other != ids


def test_select_longtail_takes_a_short_class_whole_and_sorts_by_instances():
    # 'b' has the most instances (3 per image) though it is in fewer images than 'a'.
    table = {1: ["a"], 2: ["a"], 3: ["a"], 4: ["b", "b", "b"], 5: ["b", "b", "b"]}
    config = LongtailConfig(shape=6, max_count=10, min_count=1, seed=0)
    ids, report = L.select_longtail(table, config)
    assert report["order"] == ["b", "a"]
    assert report["selected"] == {"b": 6, "a": 1}  # b's reference 10 > 6 available
    assert {4, 5} <= set(ids) and len(ids) == 3


def _write(tmp_path, layouts, cats=("a", "b", "c")):
    records = []
    for i, classes in enumerate(layouts):
        masks = np.zeros((len(classes), 16, 16), dtype=bool)
        for k in range(len(classes)):
            masks[k, k:k + 2, 2:6] = True
        inst = Instances.from_masks(masks, classes) if classes else Instances.empty(16, 16)
        records.append(ImageRecord(image_id=10 + i, file_name=f"{i}.png", width=16, height=16,
                                   instances=inst))
    path = tmp_path / "in.json"
    write_coco(path, records, list(cats))
    return path


def test_run_longtail_writes_a_subset_with_provenance(tmp_path):
    layouts = [["a"]] * 12 + [["b"]] * 5 + [[]]
    src = _write(tmp_path, layouts)
    out = tmp_path / "lt.json"
    report = L.run_longtail(LongtailConfig(shape=6, max_count=8, min_count=1, seed=3),
                            L.LongtailInputs(coco_json=src), RunOptions(out=out))
    doc = json.loads(out.read_text())
    assert report["counts"]["per_class"] == {"a": {"reference": 8, "available": 12, "selected": 8},
                                             "b": {"reference": 1, "available": 5,
                                                   "selected": 1}}
    assert (report["counts"]["images"], report["counts"]["annotations"]) == (9, 9)
    assert report["notes"] == ["1 class(es) have no instance in " + str(src) + " and stay "
                               "empty: 'c'", "1 image(s) without annotations are never selected"]
    assert [c["name"] for c in doc["categories"]] == ["a", "b", "c"]
    assert {img["id"] for img in doc["images"]} <= set(range(10, 27))
    assert doc["info"]["weakpaste"]["stage"] == "longtail"
    assert doc["info"]["weakpaste"]["config"]["shape"] == 6
    assert len(load_coco(out, require_masks=True, check_files=False).records) == 9
    again = tmp_path / "again.json"
    L.run_longtail(LongtailConfig(shape=6, max_count=8, min_count=1, seed=3),
                   L.LongtailInputs(coco_json=src), RunOptions(out=again))
    assert again.read_bytes() == out.read_bytes()


def test_run_longtail_bad_input(tmp_path):
    src = _write(tmp_path, [["a"]])
    (tmp_path / "taken.json").write_text("{}")
    with pytest.raises(WeakpasteError) as err:
        L.run_longtail(LongtailConfig(), L.LongtailInputs(coco_json=src),
                       RunOptions(out=tmp_path / "taken.json"))
    assert str(err.value) == (f"{tmp_path / 'taken.json'}: already exists; pass --overwrite to "
                              "replace it or choose another --out")
    with pytest.raises(WeakpasteError) as err:
        LongtailConfig(max_count=2, min_count=5)
    assert str(err.value) == ("min_count (--min) must be <= max_count (--max), got --min 5 "
                              "--max 2")
    empty = _write(tmp_path, [[], []])
    with pytest.raises(WeakpasteError, match="no annotated instance to sample from"):
        L.run_longtail(LongtailConfig(), L.LongtailInputs(coco_json=empty),
                       RunOptions(out=tmp_path / "y.json"))
