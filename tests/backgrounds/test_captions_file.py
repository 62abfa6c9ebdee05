"""COCO captions files (weakpaste.io.coco_captions)."""

from __future__ import annotations

import json

import pytest
from conftest import needs_shared

from weakpaste.core.errors import WeakpasteError
from weakpaste.io.coco_captions import Caption, load_coco_captions


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def test_values_order_and_per_image(tmp_path):
    path = _write(tmp_path / "c.json", {
        "images": [{"id": 5, "file_name": "b.jpg"}, {"id": 2, "file_name": "a.jpg"}],
        "annotations": [{"id": 1, "image_id": 2, "caption": " A  dog.\n"},
                        {"id": 2, "image_id": 5, "caption": "A cat."},
                        {"id": 3, "image_id": 2, "caption": "Another dog."},
                        {"id": 4, "image_id": 5, "caption": "   "}]})
    assert load_coco_captions(path) == [Caption("b.jpg", "A cat.", 2),
                                        Caption("a.jpg", "A dog.", 1),
                                        Caption("a.jpg", "Another dog.", 3)]
    assert load_coco_captions(path, per_image=1) == [Caption("b.jpg", "A cat.", 2),
                                                     Caption("a.jpg", "A dog.", 1)]


def test_errors(tmp_path):
    with pytest.raises(WeakpasteError) as err:
        load_coco_captions(tmp_path / "none.json")
    assert str(err.value) == f"{tmp_path / 'none.json'}: captions file not found"
    path = _write(tmp_path / "c.json", {"images": []})
    with pytest.raises(WeakpasteError) as err:
        load_coco_captions(path)
    assert str(err.value) == (f"{path}: not a COCO captions file (needs 'images' and "
                              "'annotations' lists)")
    path = _write(tmp_path / "c.json", {"images": [{"id": 1, "file_name": "a.jpg"}],
                                        "annotations": [{"id": 9, "image_id": 3,
                                                         "caption": "x"}]})
    with pytest.raises(WeakpasteError) as err:
        load_coco_captions(path)
    assert str(err.value) == f"{path}: caption 9 names image_id 3, which is not in 'images'"


def test_real_file():
    caps = load_coco_captions(needs_shared("coco_mini", "captions.json"))
    assert len(caps) == 795 and all(c.caption and c.image.endswith(".jpg") for c in caps)
