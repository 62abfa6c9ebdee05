import json

import numpy as np
import pytest

from weakpaste.core.errors import WeakpasteError
from weakpaste.io.images import write_image
from weakpaste.io.labels import load_labels


@pytest.fixture
def folder(tmp_path):
    for name in ("a.png", "sub/b.png", "c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    return tmp_path


def test_csv_and_json_mappings(folder):
    csv = folder / "labels.csv"
    csv.write_text("image,labels\na.png,dog;cat\nsub/b.png,cat|cat\nc.png,\n")
    records, classes = load_labels(csv, folder)
    assert [r.labels for r in records] == [("cat", "dog"), ("cat",), ()]
    assert classes == ["cat", "dog"] and records[1].file_name == "sub/b.png"
    assert all(r.instances is None for r in records)
    js = folder / "labels.json"
    js.write_text(json.dumps({"a.png": ["zebra"], "c.png": ["ant", "zebra"]}))
    records, classes = load_labels(js, folder)
    assert classes == ["ant", "zebra"] and records[1].labels == ("ant", "zebra")


def test_class_folders(tmp_path):
    for cls, n in (("cat", 2), ("dog", 1)):
        for i in range(n):
            (tmp_path / cls).mkdir(exist_ok=True)
            write_image(tmp_path / cls / f"{i}.jpg", np.zeros((8, 8, 3), np.uint8))
    records, classes = load_labels(None, tmp_path)
    assert classes == ["cat", "dog"]
    assert [(r.file_name, r.labels) for r in records] == [
        ("cat/0.jpg", ("cat",)), ("cat/1.jpg", ("cat",)), ("dog/0.jpg", ("dog",))]


def test_coco_labels_ignore_masks(tiny_coco):
    path, images = tiny_coco
    records, classes = load_labels(path, images)
    assert classes == ["a", "b"] and records[0].labels == ("a", "b")


def test_errors(folder):
    with pytest.raises(WeakpasteError, match=r"nope.csv: labels file not found; pass a COCO JSON"):
        load_labels(folder / "nope.csv", folder)
    bad = folder / "bad.csv"
    bad.write_text("file,tags\na.png,dog\n")
    with pytest.raises(WeakpasteError, match=r"a labels CSV needs the header 'image,labels' "
                                             r"\(found file,tags\)"):
        load_labels(bad, folder)
    missing = folder / "m.json"
    missing.write_text(json.dumps({"zz.png": ["dog"]}))
    with pytest.raises(WeakpasteError, match=r"1 of 1 labelled images are missing under .* "
                                             r"\(first: 'zz.png'\)"):
        load_labels(missing, folder)
    empty = folder / "e.json"
    empty.write_text(json.dumps({"a.png": []}))
    with pytest.raises(WeakpasteError, match=r"no image carries a label; nothing to mine"):
        load_labels(empty, folder)
    with pytest.raises(WeakpasteError, match=r"no labels given and no class sub-folders"):
        load_labels(None, folder / "sub")


def test_excel_byte_order_mark_is_accepted(folder):
    csv = folder / "excel.csv"
    csv.write_bytes("\ufeffimage,labels\r\na.png,chien;caf\u00e9\r\n".encode("utf-8"))
    records, classes = load_labels(csv, folder)
    assert classes == ["caf\u00e9", "chien"] and records[0].file_name == "a.png"
    js = folder / "bom.json"
    js.write_bytes(b"\xef\xbb\xbf" + json.dumps({"c.png": ["ant"]}).encode())
    assert load_labels(js, folder)[1] == ["ant"]


def test_latin1_csv_is_one_clear_line(folder):
    csv = folder / "latin1.csv"
    csv.write_bytes("image,labels\na.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(WeakpasteError) as err:
        load_labels(csv, folder)
    assert str(err.value) == (f"{csv}: labels file is not UTF-8 text; save it as UTF-8 (Excel: "
                              "'CSV UTF-8')")
    huge = folder / "huge.csv"
    huge.write_text("image,labels\na.png," + "x" * 200_000 + "\n")
    with pytest.raises(WeakpasteError, match=r"huge.csv: not a readable CSV \(line 2: field "
                                             r"larger than field limit \(131072\)\); repair"):
        load_labels(huge, folder)
