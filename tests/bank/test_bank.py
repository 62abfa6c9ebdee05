import json
import pickle

import numpy as np
import pytest

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco, segments_from_image
from weakpaste.bank.store import BankWriter, SegmentBank
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
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


def test_the_table_says_where_each_blob_is_and_reading_there_scans_nothing(tmp_path,
                                                                          monkeypatch):
    with BankWriter(tmp_path / "b") as w:
        for v, cls in ((10, "a"), (20, "b"), (30, "a")):
            w.add(_segment(cls, value=v))
    bank = SegmentBank(tmp_path / "b")
    table = bank.table(["a"])
    entries = [e for e in bank.iter_index() if e["class"] == "a"]
    assert table.segment_id.tolist() == [1, 3]
    assert table.shard.tolist() == [e["shard"] for e in entries]
    assert table.offset.tolist() == [e["offset"] for e in entries]
    assert table.length.tolist() == [e["length"] for e in entries]
    assert all(c.dtype == np.int64 for c in (table.shard, table.offset, table.length))

    def no_scan(*args, **kwargs):
        raise AssertionError("the index was scanned")

    fresh = SegmentBank(tmp_path / "b")
    monkeypatch.setattr(SegmentBank, "_scan", no_scan)
    rgb, mask = fresh.read_pixels_at(3, table.shard[1], table.offset[1], table.length[1])
    assert rgb[1, 1, 0] == 30 and mask.sum() == 20
    with pytest.raises(AssertionError, match="scanned"):
        fresh.read_pixels(3)


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
    manifest = run_bank_from_coco(None, BankInputs(coco_json=path, images=images),
                                  RunOptions(out=tmp_path / "bank", quiet=True))
    assert manifest["counts"]["per_class"] == {"a": 3, "b": 2}
    assert manifest["stage"] == "bank" and manifest["status"] == "complete"
    stored = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert stored["inputs"]["coco_json"] == manifest["inputs"]["coco_json"]
    with pytest.raises(WeakpasteError, match=r"output folder is not empty; pass --overwrite"):
        run_bank_from_coco(None, BankInputs(coco_json=path, images=images),
                           RunOptions(out=tmp_path / "bank", quiet=True))
    run_bank_from_coco(BankConfig(classes=("b",)), BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "bank", overwrite=True, quiet=True))
    assert SegmentBank(tmp_path / "bank").class_counts() == {"b": 2}


def _gt_bank(tiny_coco, tmp_path):
    path, images = tiny_coco
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "bank", quiet=True))
    return tmp_path / "bank", path, images


def test_an_incomplete_bank_is_refused_naming_the_fix(tiny_coco, tmp_path):
    bank, path, images = _gt_bank(tiny_coco, tmp_path)
    manifest = json.loads((bank / "manifest.json").read_text())
    (bank / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    with pytest.raises(WeakpasteError) as err:
        SegmentBank(bank)
    assert str(err.value) == (f"{bank}: the bank is incomplete (its bank run stopped half-way); "
                              f"rebuild it with 'weakpaste bank from-coco {path} --images "
                              f"{images} --out {bank} --overwrite'")
    assert len(SegmentBank(bank, allow_incomplete=True)) == 5
    # A mined bank can be completed rather than rebuilt.
    (bank / "manifest.json").write_text(json.dumps({**manifest, "stage": "mine",
                                                    "status": "running"}))
    with pytest.raises(WeakpasteError, match=r"the bank is incomplete \(its mine run stopped "
                                             r"half-way\); complete it with 'weakpaste mine \.\.\. "
                                             r"--out .*bank --resume'"):
        SegmentBank(bank)


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "segments" / "shard-00000.bin").unlink(),
     "segments/shard-00000.bin is missing"),
    (lambda b: (b / "segments" / "shard-00000.bin").write_bytes(b"\x89PNG"),
     "segments/shard-00000.bin is truncated (4 bytes, the index needs"),
    (lambda b: (b / "index.jsonl").write_text(
        (b / "index.jsonl").read_text().replace('"class"', '"cla', 1)),
     "index.jsonl line 1 is corrupt (not JSON: Expecting ':' delimiter)"),
    (lambda b: (b / "index.jsonl").write_text(
        (b / "index.jsonl").read_text().replace('"shard":0', '"shard":"0"', 1)),
     "index.jsonl line 1 is corrupt (field 'shard' is '0')"),
])
def test_a_damaged_bank_is_one_line_for_paste_and_info(tiny_coco, tmp_path, capsys, damage,
                                                       message):
    from weakpaste.cli import main

    bank, path, images = _gt_bank(tiny_coco, tmp_path)
    damage(bank)
    fix = (f"; rebuild it with 'weakpaste bank from-coco {path} --images {images} --out {bank} "
           "--overwrite'")
    with pytest.raises(WeakpasteError) as err:
        SegmentBank(bank).table()
    assert str(err.value).startswith(f"{bank}: {message}") and str(err.value).endswith(fix)
    assert main(["bank", "info", str(bank)]) == 2
    assert capsys.readouterr().err.strip() == f"weakpaste: error: {err.value}"
    # A writer appending to it says the same for a corrupt index (not a traceback).
    if "index.jsonl" in message:
        with pytest.raises(WeakpasteError, match=message.replace("(", r"\(").replace(")", r"\)")):
            BankWriter(bank)


def test_a_full_disk_while_building_keeps_the_bank_readable(tmp_path, monkeypatch):
    import errno

    with BankWriter(tmp_path / "b") as w:
        w.add(_segment("a"))
        real = w._index.write

        def full(text):
            real(text[:7])  # a torn line, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(w._index, "write", full, raising=False)
        with pytest.raises(WeakpasteError, match=rf"^{tmp_path / 'b'}: cannot write \(No space "
                                                 r"left on device\); free some space"):
            w.add(_segment("b"))
    monkeypatch.undo()
    assert SegmentBank(tmp_path / "b").class_counts() == {"a": 1}
    with BankWriter(tmp_path / "b") as w:  # the next writer cuts the torn line and blob off
        assert w.add(_segment("c")) == 2
    assert SegmentBank(tmp_path / "b").class_counts() == {"a": 1, "c": 1}


def test_bank_from_coco_never_writes_into_its_inputs(tiny_coco, tmp_path):
    path, images = tiny_coco
    with pytest.raises(WeakpasteError, match=r"the output folder overlaps the input"):
        run_bank_from_coco(None, BankInputs(coco_json=path, images=images),
                           RunOptions(out=images, overwrite=True, quiet=True))
    assert len(list(images.iterdir())) == 3
