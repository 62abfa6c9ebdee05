import json
import pickle

import numpy as np
import pytest

from weakpaste.bank import (
    BankConfig,
    BankWriter,
    SegmentBank,
    run_bank_from_coco,
    segments_from_image,
)
from weakpaste.errors import WeakpasteError
from weakpaste.structures import Segment


def _segment(cls="a", h=6, w=5, value=10):
    rgb = np.full((h, w, 3), value, dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    mask = np.zeros((h, w), dtype=bool)
    mask[1:, 1:] = True
    return Segment(rgb=rgb, mask=mask, category=cls, source_image="src.jpg",
                   source_box=np.array([1.0, 2.0, 6.0, 8.0]), scores={"cam": 0.5}, miner="fem")


def test_append_and_read_back(tmp_path):
    with BankWriter(tmp_path / "b") as w:
        ids = [w.add(_segment("a", value=v)) for v in (10, 20)] + [w.add(_segment("b", 3, 4))]
    assert ids == [1, 2, 3]
    bank = SegmentBank(tmp_path / "b")
    entries = list(bank.iter_index())
    assert [e["class"] for e in entries] == ["a", "a", "b"]
    seg = bank.read(entries[1])
    assert seg.rgb.shape == (6, 5, 3) and seg.rgb.dtype == np.uint8
    assert seg.rgb[1, 1, 0] == 20 and tuple(seg.rgb[0, 0]) == (1, 2, 3)
    assert seg.mask.dtype == bool and seg.mask.sum() == 20 and not seg.mask[0, 0]
    assert seg.scores == {"cam": 0.5} and seg.miner == "fem" and seg.segment_id == 2
    table = bank.table()
    assert table.counts() == {"a": 2, "b": 1}
    assert table.height.tolist() == [6, 6, 3]
    # A second writer appends after the existing segments.
    with BankWriter(tmp_path / "b") as w:
        assert w.add(_segment("c")) == 4
    assert SegmentBank(tmp_path / "b").class_counts() == {"a": 2, "b": 1, "c": 1}
    # Picklable for worker processes.
    clone = pickle.loads(pickle.dumps(bank))
    assert clone.read_pixels(3)[1].shape == (3, 4)


def test_interrupted_writer_recovers(tmp_path):
    with BankWriter(tmp_path / "b") as w:
        w.add(_segment("a"))
        w.add(_segment("b"))
    # Simulate a crash: an unindexed blob tail and a torn index line.
    with open(tmp_path / "b" / "segments" / "shard-00000.bin", "ab") as fh:
        fh.write(b"garbage")
    with open(tmp_path / "b" / "index.jsonl", "a") as fh:
        fh.write('{"id": 3, "cla')
    bank = SegmentBank(tmp_path / "b")
    assert len(bank) == 2
    with BankWriter(tmp_path / "b") as w:
        assert w.add(_segment("c", value=77)) == 3
    bank = SegmentBank(tmp_path / "b")
    assert [e["class"] for e in bank.iter_index()] == ["a", "b", "c"]
    assert bank.read_pixels(3)[0][2, 2, 0] == 77
    assert bank.read_pixels(1)[0][2, 2, 0] == 10


def test_shards_roll_over(tmp_path):
    with BankWriter(tmp_path / "b", shard_bytes=10) as w:
        for _ in range(3):
            w.add(_segment())
    assert len(list((tmp_path / "b" / "segments").glob("*.bin"))) == 3
    bank = SegmentBank(tmp_path / "b")
    assert all(bank.read_pixels(i)[1].sum() == 20 for i in (1, 2, 3))


def test_errors(tmp_path):
    with pytest.raises(WeakpasteError, match=r"not a segment bank \(no bank.json\); build one"):
        SegmentBank(tmp_path)
    with BankWriter(tmp_path / "b") as w:
        w.add(_segment("a"))
    bank = SegmentBank(tmp_path / "b")
    with pytest.raises(WeakpasteError, match=r"class 'zebra' is not in the bank \(it has: a\); "
                                             r"drop it from --classes or mine it first"):
        bank.table(["zebra"])
    with pytest.raises(WeakpasteError, match=r"no segment with id 99"):
        bank.read_pixels(99)
    with BankWriter(tmp_path / "empty"):
        pass
    with pytest.raises(WeakpasteError, match=r"the bank holds no segments"):
        SegmentBank(tmp_path / "empty").table()
    with pytest.raises(ValueError, match=r"Segment: empty mask \(class 'a'"):
        Segment(rgb=np.zeros((2, 2, 3), np.uint8), mask=np.zeros((2, 2), bool), category="a")


def test_segments_from_image_crops_tight():
    rgb = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    masks = np.zeros((2, 10, 12), dtype=bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 0, 0] = True
    segs, skipped = segments_from_image(rgb, masks, ("a", "b"), source_image="x", min_area=2)
    assert skipped == 1 and len(segs) == 1
    assert segs[0].rgb.shape == (3, 6, 3) and segs[0].mask.all()
    np.testing.assert_array_equal(segs[0].rgb, rgb[2:5, 3:9])
    np.testing.assert_array_equal(segs[0].source_box, [3, 2, 9, 5])


def test_bank_from_coco(tiny_coco, tmp_path):
    path, images = tiny_coco
    manifest = run_bank_from_coco(path, images, tmp_path / "bank", progress=False)
    assert manifest["counts"]["per_class"] == {"a": 3, "b": 2}
    assert manifest["stage"] == "bank" and manifest["status"] == "complete"
    stored = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert stored["inputs"]["coco_json"] == manifest["inputs"]["coco_json"]
    with pytest.raises(WeakpasteError, match=r"output folder is not empty; pass --overwrite"):
        run_bank_from_coco(path, images, tmp_path / "bank", progress=False)
    run_bank_from_coco(path, images, tmp_path / "bank", BankConfig(classes=("b",)),
                       progress=False, overwrite=True)
    assert SegmentBank(tmp_path / "bank").class_counts() == {"b": 2}
