import json
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_shared, square_masks
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from weakpaste.core.errors import WeakpasteError
from weakpaste.io.coco import (
    annotations_from_rles,
    assign_category_ids,
    check_present,
    load_coco,
    mask_stats,
    write_coco,
)
from weakpaste.ops import masks as mask_ops
from weakpaste.structures import ImageRecord, Instances


def _record(masks, classes, image_id=1, name="x.png"):
    h, w = masks.shape[1:]
    return ImageRecord(image_id=image_id, file_name=name, width=w, height=h,
                       instances=Instances.from_masks(masks, classes))


def test_writer_rules(tmp_path):
    masks = square_masks(20, 30, [(2, 3, 10, 12), (15, 0, 30, 20)])
    masks[1, 5:8, 20:25] = False  # a hole
    masks[1, 0:2, 15:17] = False
    masks[0, 15:18, 2:4] = True  # a second part
    path = tmp_path / "out.json"
    counts = write_coco(path, [_record(masks, ["cat", "dog"], image_id=7)], ["cat", "dog"])
    assert counts == {"images": 1, "annotations": 2}
    doc = json.loads(path.read_text())
    anns = doc["annotations"]
    assert [a["id"] for a in anns] == [1, 2]
    assert all(a["iscrowd"] == 0 for a in anns)
    assert all(isinstance(a["segmentation"]["counts"], str) for a in anns)
    assert [a["area"] for a in anns] == [int(masks[0].sum()), int(masks[1].sum())]
    assert anns[0]["bbox"] == [2.0, 3.0, 8.0, 15.0]
    assert [c["id"] for c in doc["categories"]] == [1, 2]
    coco = COCO(str(path))
    for k, ann in enumerate(anns):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), masks[k])


def test_write_rejects_bad_ids_and_empty_masks(tmp_path):
    masks = square_masks(8, 8, [(0, 0, 4, 4)])
    with pytest.raises(ValueError, match=r"image id 0 of 'x.png' must be an integer >= 1"):
        write_coco(tmp_path / "a.json", [_record(masks, ["a"], image_id=0)], ["a"])
    empty = np.zeros((1, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match=r"instance 0 \('a'\) of image 'x.png' has an empty mask"):
        write_coco(tmp_path / "a.json", [_record(empty, ["a"])], ["a"])
    with pytest.raises(ValueError, match=r"class 'zzz' of image 'x.png' is not in the category"):
        write_coco(tmp_path / "a.json", [_record(masks, ["zzz"])], ["a"])
    assert not (tmp_path / "a.json").exists()


def test_round_trip_and_self_eval(tiny_coco):
    path, images = tiny_coco
    data = load_coco(path, images)
    assert [r.labels for r in data.records] == [("a", "b"), ("a", "b"), ("a",)]
    assert data.class_names == ("a", "b")
    rec = data.records[2]
    m = rec.instances.masks()
    assert m.shape == (1, 48, 64) and m.dtype == bool
    assert not m[0, 25, 25] and m[0, 15, 15]
    np.testing.assert_array_equal(rec.instances.boxes, [[10.0, 10.0, 50.0, 40.0]])
    # COCOeval of the data set against itself: AP = 1.0 for masks and boxes.
    gt = COCO(str(path))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"],
             "segmentation": a["segmentation"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.dataset["annotations"]]
    for iou_type in ("segm", "bbox"):
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)


def test_reads_polygons_and_uncompressed_rle(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}],
           "categories": [{"id": 5, "name": "thing"}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0,
                "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]], "bbox": [2, 2, 6, 4]},
               {"id": 2, "image_id": 1, "category_id": 5, "iscrowd": 0,
                "segmentation": {"size": [10, 20], "counts": [25, 5, 170]}},
               {"id": 3, "image_id": 1, "category_id": 5, "iscrowd": 1,
                "segmentation": {"size": [10, 20], "counts": [0, 200]}}]}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    data = load_coco(path)
    inst = data.records[0].instances
    assert len(inst) == 2 and data.crowd_skipped == 1
    masks = inst.masks()
    assert masks[0, 3, 4] and not masks[0, 8, 4]
    assert masks[1].sum() == 5 and masks[1].T.ravel()[25:30].all()
    assert data.categories == {"thing": {"id": 5, "supercategory": ""}}


def _bad(tmp_path, doc) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


GOOD = {"images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4],
                         "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}]}


def _with(**changes):
    doc = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        section, field = key.split("__")
        doc[section][0][field] = value
    return doc


@pytest.mark.parametrize("doc, message", [
    ("{not json", r"bad.json: not valid JSON \(Expecting property name enclosed in double "
                  r"quotes at line 1, column 2\); repair or regenerate the file"),
    ({"images": []}, r"not a COCO instances file; it needs 'images' and 'categories' lists"),
    (_with(images__id="1"), r"images\[0\] has id '1'; image ids must be integers"),
    ({**GOOD, "images": GOOD["images"] * 2},
     r"duplicate image id 1 \(images\[1\]\); ids must be unique"),
    (_with(annotations__category_id=9),
     r"annotations\[0\] \(id 1\) has category id 9, which is not in 'categories'"),
    (_with(annotations__image_id=3),
     r"annotations\[0\] \(id 1\) refers to image id 3, which is not in 'images'"),
    (_with(annotations__bbox=[15, 0, 10, 4]),
     r"annotations\[0\] \(id 1\) has bbox \[15, 0, 10, 4\] outside its 20x10 image 'a.jpg'; "
     r"fix the annotation or the image size"),
    (_with(annotations__segmentation=None),
     r"annotations\[0\] \(id 1\) has no usable 'segmentation'; weakpaste needs instance masks"),
    (_with(annotations__id=1.5), r"annotations\[0\] has id 1.5; annotation ids must be integers"),
    (_with(annotations__segmentation={"size": [5, 5], "counts": "abc"}),
     r"annotations\[0\] \(id 1\) has a malformed segmentation \(RLE size \[5, 5\] differs"),
    # Corrupt RLE and boxes: each one line, before pycocotools sees them (issue 11, item 7).
    (_with(annotations__segmentation={"size": [10, 20], "counts": 12}),
     r"/bad.json: annotations\[0\] \(id 1\) has a malformed segmentation \(RLE counts must "
     r"be a string or a list of run lengths, got int 12\); fix or remove the annotation$"),
    (_with(annotations__segmentation={"size": [10, 20], "counts": "garbage!!"}),
     r"/bad.json: annotations\[0\] \(id 1\) has a corrupt RLE segmentation \(compressed RLE "
     r"counts hold characters outside pycocotools' alphabet '0'..'o'\); fix or remove the "
     r"annotation$"),
    (_with(annotations__segmentation={"size": [10, 20], "counts": "0P"}),
     r"corrupt RLE segmentation \(compressed RLE counts end in the middle of a number\)"),
    (_with(annotations__segmentation={"size": [10, 20], "counts": "52"}),
     r"corrupt RLE segmentation \(RLE runs add up to 7 pixels, not 10x20 = 200\)"),
    (_with(annotations__segmentation={"size": [10, 20], "counts": [100, 5000]}),
     r"malformed segmentation \(RLE runs add up to 5100 pixels, not 10x20 = 200\)"),
    (_with(annotations__segmentation={"size": [10, 20], "counts": [100, -5, 105]}),
     r"malformed segmentation \(uncompressed RLE counts hold a negative run length\)"),
    (_with(annotations__segmentation={"size": 200, "counts": [200]}),
     r"malformed segmentation \(RLE size 200 is not \[height, width\]\)"),
    (_with(annotations__segmentation=[[0, 0, 4, 0, 4, 4, 0]]),
     r"malformed segmentation \(polygon 0 has an odd number of coordinates \(7\)\)"),
    (_with(annotations__segmentation=[[0, 0, 4, 0, 4, 1e9]]),
     r"malformed segmentation \(polygon 0 reaches far outside the 20x10 image\)"),
    (_with(annotations__segmentation=[[0, 0, 4, 0, "4", 4]]),
     r"malformed segmentation \(polygon 0 is not a list of numbers\)"),
    (json.dumps(_with(annotations__bbox=[0, 0, float("nan"), 4])),
     r"annotations\[0\] \(id 1\) has bbox \[0, 0, nan, 4\] with a NaN or infinite value"),
    (json.dumps(_with(annotations__segmentation=[[0, 0, 4, 0, 4, float("inf")]])),
     r"malformed segmentation \(polygon 0 holds a NaN or infinite coordinate\)"),
    # A crowd region is not an instance, but COCOeval reads it: it is checked too.
    (_with(annotations__iscrowd=1,
           annotations__segmentation={"size": [10, 20], "counts": [100, 5000]}),
     r"malformed segmentation \(RLE runs add up to 5100 pixels"),
])
def test_reader_validation_messages(tmp_path, doc, message):
    with pytest.raises(WeakpasteError, match=message):
        load_coco(_bad(tmp_path, doc))


def test_reader_missing_file_and_images(tmp_path):
    with pytest.raises(WeakpasteError, match=r"nope.json: no such file; pass the path of a COCO"):
        load_coco(tmp_path / "nope.json")
    path = _bad(tmp_path, GOOD)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(WeakpasteError, match=r"1 of 1 image files are missing under .*imgs "
                                             r"\(first: 'a.jpg'\); pass the folder that holds"):
        load_coco(path, tmp_path / "imgs")
    # Labels only: masks not required.
    data = load_coco(_bad(tmp_path, _with(annotations__segmentation=None)), require_masks=False)
    assert data.records[0].labels == ("a",) and len(data.records[0].instances) == 0


def test_check_present_raises_the_readers_messages_without_reading(tmp_path):
    for call in (check_present, load_coco):
        with pytest.raises(WeakpasteError, match=r"nope.json: no such file; pass the path of "
                                                 r"a COCO instances JSON$"):
            call(tmp_path / "nope.json")
    path = tmp_path / "garbage.json"
    path.write_text("{not json")
    check_present(path)  # it exists: reading it is load_coco's job
    with pytest.raises(WeakpasteError, match=r"imgs: images folder not found; pass the folder "
                                             r"that holds the images of garbage.json with "
                                             r"--images$"):
        check_present(path, tmp_path / "imgs", images_flag="--images")
    # Without a flag (train's COCO_JSON:IMAGES_DIR has none) the message names none.
    with pytest.raises(WeakpasteError, match=r"imgs: images folder not found; pass the folder "
                                             r"that holds the images of garbage.json$"):
        check_present(path, tmp_path / "imgs")


def test_polygons_of_float_subclasses_are_numbers_and_bools_are_not():
    from weakpaste.io.coco_parse import check_polygons

    poly = [np.float64(0), np.float64(0), 4, 0.0, 4, 4]  # np.float64 subclasses float
    assert check_polygons([poly], 10, 20) == [poly]
    with pytest.raises(ValueError, match="polygon 0 is not a list of numbers"):
        check_polygons([[0, 0, 4, 0, True, 4]], 10, 20)


def test_mask_stats_are_the_areas_and_boxes_written():
    masks = np.zeros((2, 4, 5), dtype=bool)
    masks[0, 1:3, 2:5] = True  # 2 x 3 at x=2, y=1
    masks[1, 3, 0] = True
    rles = mask_ops.encode_many(masks)
    areas, boxes = mask_stats(rles)
    assert areas == [6, 1] and all(type(a) is int for a in areas)
    assert boxes == [[2.0, 1.0, 3.0, 2.0], [0.0, 3.0, 1.0, 1.0]]
    assert mask_stats([]) == ([], [])
    many = mask_stats(rles * 150)  # pycocotools' area() alone fails on 256 masks or more
    assert many == ([6, 1] * 150, boxes * 150)
    rec = ImageRecord(image_id=7, file_name="x.jpg", width=5, height=4,
                      instances=Instances.from_rles(4, 5, ["a", "b"], rles))
    cats = assign_category_ids(["a", "b"])
    computed = annotations_from_rles(rec, ["a", "b"], rles, cats, 1)
    given = annotations_from_rles(rec, ["a", "b"], rles, cats, 1, stats=(areas, boxes))
    assert computed == given and [e["area"] for e in given] == [6, 1]
    assert Instances.from_rles(4, 5, ["a", "b"], rles, xywh=boxes).boxes.tolist() == \
        rec.instances.boxes.tolist() == [[2, 1, 5, 3], [0, 3, 1, 4]]
    with pytest.raises(ValueError, match=r"^2 masks of image 'x.jpg' but stats for 1$"):
        annotations_from_rles(rec, ["a", "b"], rles, cats, 1, stats=([6], [boxes[0]]))


def test_reader_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert load_coco(path).records[0].labels == ("a",)


def test_valid_rle_counts_still_load(tmp_path):
    """Compressed strings made by pycocotools, of every shape, pass the check unchanged."""
    rng = np.random.default_rng(0)
    masks = rng.random((3, 10, 20)) < 0.5
    masks[1] = True
    masks[2] = False
    masks[2, 9, 19] = True
    rles = mask_ops.encode_many(masks)
    doc = json.loads(json.dumps(GOOD))
    doc["annotations"] = [{"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": r}
                          for k, r in enumerate(rles)]
    path = _bad(tmp_path, doc)
    np.testing.assert_array_equal(load_coco(path).records[0].instances.masks(), masks)


def test_only_the_file_s_compressed_strings_are_decoded_to_be_checked(tmp_path, monkeypatch):
    """RLEs that pycocotools made from polygons or run lists are valid by construction: the
    check (0.05 s for coco_mini's 1768 polygons, minutes for train2017's) skips them."""
    import weakpaste.io.coco_parse as coco_mod

    seen = []
    real = coco_mod.rle_check.first_bad_compressed

    def spy(counts, sizes):
        seen.append(list(counts))
        return real(counts, sizes)

    monkeypatch.setattr(coco_mod.rle_check, "first_bad_compressed", spy)
    square = np.zeros((1, 10, 20), dtype=bool)
    square[0, 2:5, 3:9] = True
    compressed = mask_ops.encode_many(square)[0]
    doc = json.loads(json.dumps(GOOD))
    doc["annotations"] += [
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": compressed},
        {"id": 3, "image_id": 1, "category_id": 1,
         "segmentation": {"size": [10, 20], "counts": [150, 10, 40]}}]
    records = load_coco(_bad(tmp_path, doc)).records
    assert len(records[0].instances) == 3
    assert seen == [[compressed["counts"]]]


def test_corrupt_detections_are_refused_before_pycocotools(tmp_path):
    from weakpaste.evaluate.coco import evaluation_detections, evaluation_ground_truth

    gt = evaluation_ground_truth(_bad(tmp_path, GOOD))
    over = {"image_id": 1, "category_id": 1, "score": 1.0,
            "segmentation": {"size": [10, 20], "counts": "0P"}}
    with pytest.raises(ValueError, match=r"result for image 1 has a corrupt RLE segmentation "
                                         r"\(compressed RLE counts end in the middle"):
        evaluation_detections(gt, [over], "segm")
    with pytest.raises(ValueError, match=r"result for image 1 has bbox \[0.0, nan, 2.0, 2.0\] "
                                         r"with a NaN or infinite value"):
        evaluation_detections(gt, [{"image_id": 1, "category_id": 1, "score": 1.0,
                                    "bbox": [0.0, float("nan"), 2.0, 2.0]}], "bbox")


def test_assign_category_ids_keeps_existing():
    table = assign_category_ids(["dog", "zebra"], keep={"dog": {"id": 18, "supercategory": "x"},
                                                        "cat": {"id": 17, "supercategory": "x"}})
    assert table == {"cat": {"id": 17, "supercategory": "x"},
                     "dog": {"id": 18, "supercategory": "x"},
                     "zebra": {"id": 19, "supercategory": ""}}


def test_rle_helpers_value():
    m = np.zeros((5, 6), dtype=bool)
    m[1:3, 2:5] = True
    rle = mask_ops.encode(m)
    assert rle["size"] == [5, 6] and isinstance(rle["counts"], str)
    assert mask_ops.rle_area(rle) == 6
    np.testing.assert_array_equal(mask_ops.decode(rle), m)
    np.testing.assert_array_equal(mask_ops.rle_boxes([rle]), [[2, 1, 5, 3]])
    np.testing.assert_array_equal(mask_ops.mask_box(m), [2, 1, 5, 3])
    assert mask_ops.decode_many([], 5, 6).shape == (0, 5, 6)
    with pytest.raises(ValueError, match=r"encode: expected a 2-D mask, got shape \(5,\)"):
        mask_ops.encode(np.zeros(5, dtype=bool))


def test_real_coco_mini_loads():
    root = needs_shared("coco_mini")
    data = load_coco(root / "instances.json", root / "images")
    assert len(data.records) == 196
    inst = data.records[0].instances
    assert inst.masks().shape == (len(inst), data.records[0].height, data.records[0].width)
