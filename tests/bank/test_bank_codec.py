"""The bank's segment codecs: WPZ1 (zstd, version-2 banks) and PNG (version-1 banks)."""

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zstandard

from weakpaste.bank import store as bank_mod
from weakpaste.bank.codec import _encode_pixels, decode_segment
from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.bank.store import BankWriter, SegmentBank
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.paste.run import PasteInputs
from weakpaste.structures import Segment

# 2 x 3 crop and mask, and the blob weakpaste 0.1.0 (bank format 1) wrote for them.
RGB = np.array([[[255, 0, 7], [1, 2, 3], [40, 50, 60]],
                [[9, 8, 7], [0, 0, 0], [200, 100, 250]]], dtype=np.uint8)
MASK = np.array([[True, False, True], [False, True, True]])
OLD_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000030000000208060000009d74661a0000002349444154081d63"
    "facfc0fe9f91899941c3c8e63f13170703e3ff7f7fff2f30dac7000066cc0941912b42840000000049454e44"
    "ae426082")
NO_MANIFEST_FIX = ("rebuild it with 'weakpaste bank from-coco ... --overwrite' or 'weakpaste "
                   "mine ... --overwrite'")


def _pixels(h, w, mask_kind, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = {"random": rng.random((h, w)) < 0.5, "none": np.zeros((h, w), bool),
            "all": np.ones((h, w), bool)}[mask_kind]
    return rgb, mask


@pytest.mark.parametrize("h, w", [(1, 1), (1, 7), (7, 1), (5, 3), (9, 17)])
@pytest.mark.parametrize("mask_kind", ["random", "none", "all"])
def test_wpz_round_trip_is_exact(h, w, mask_kind):
    rgb, mask = _pixels(h, w, mask_kind)
    blob = _encode_pixels(rgb, mask, 2)
    assert blob[:4] == b"WPZ1" and struct.unpack("<II", blob[4:12]) == (h, w)
    assert _encode_pixels(rgb, mask, 2) == blob  # deterministic
    out_rgb, out_mask = decode_segment(blob)
    assert out_rgb.dtype == np.uint8 and out_rgb.shape == (h, w, 3)
    assert out_mask.dtype == bool and out_mask.shape == (h, w)
    np.testing.assert_array_equal(out_rgb, rgb)
    np.testing.assert_array_equal(out_mask, mask)
    # Callers may draw on what they read.
    assert out_rgb.flags.writeable and out_mask.flags.writeable


def test_wpz_payload_is_row_deltas_then_packed_mask():
    blob = _encode_pixels(RGB, MASK, 2)
    assert blob[:12] == b"WPZ1" + bytes([2, 0, 0, 0, 3, 0, 0, 0])
    payload = zstandard.ZstdDecompressor().decompress(blob[12:])
    # Row 1 minus row 0, wrapping around: 9 - 255 = 10, 0 - 1 = 255, 100 - 50 = 50, ...
    assert list(payload) == [255, 0, 7, 1, 2, 3, 40, 50, 60,
                             10, 8, 0, 255, 254, 253, 160, 50, 190,
                             0b10101100]


def test_encoding_on_threads_gives_the_same_bytes():
    pixels = [_pixels(8 + i % 5, 3 + i % 7, "random", seed=i) for i in range(40)]
    serial = [_encode_pixels(rgb, mask, 2) for rgb, mask in pixels]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(lambda p: _encode_pixels(*p, 2), pixels))
        decoded = list(pool.map(decode_segment, serial))
    assert threaded == serial
    assert all(np.array_equal(d[0], p[0]) and np.array_equal(d[1], p[1])
               for d, p in zip(decoded, pixels, strict=True))


def test_an_old_png_blob_still_decodes():
    rgb, mask = decode_segment(OLD_PNG)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3) and mask.dtype == bool
    np.testing.assert_array_equal(rgb, RGB)
    np.testing.assert_array_equal(mask, MASK)
    # The version-1 path still writes PNG.
    blob = _encode_pixels(RGB, MASK, 1)
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_segment(blob)[0], RGB)


def _bank_holding(root, blob):
    """A bank whose only segment (id 1, class 'a', 2 x 3) is ``blob``, whatever it holds."""
    root.mkdir()
    (root / "segments").mkdir()
    (root / "bank.json").write_text(json.dumps({"format": "weakpaste-segment-bank",
                                                "version": 1 if blob[:1] == b"\x89" else 2}))
    (root / "segments" / "shard-00000.bin").write_bytes(blob)
    entry = {"id": 1, "class": "a", "shard": 0, "offset": 0, "length": len(blob),
             "height": 2, "width": 3, "area": 4, "source_image": "x.jpg",
             "source_box": [0.0, 0.0, 3.0, 2.0], "scores": {}, "miner": "gt"}
    (root / "index.jsonl").write_text(json.dumps(entry) + "\n")
    return root


def _header(h, w):
    return b"WPZ1" + struct.pack("<II", h, w)


GOOD = _encode_pixels(RGB, MASK, 2)


@pytest.mark.parametrize("blob", [
    GOOD[:-5],  # truncated frame
    GOOD[:12],  # header only
    GOOD[:7],  # truncated header
    GOOD + b"\0\0",  # bytes past the frame: a wrong index length
    _header(3, 3) + GOOD[12:],  # header h * w does not match the payload
    _header(60000, 60000) + GOOD[12:],  # nor this: refused before any allocation
    _header(0, 3) + zstandard.ZstdCompressor().compress(b""),  # an empty crop
    GOOD[:20] + bytes([GOOD[20] ^ 0x10]) + GOOD[21:],  # a flipped bit: checksum
    _header(2, 3) + b"not a zstd frame at all",
    b"JUNK" + GOOD[4:],  # no known codec
    OLD_PNG[:50],  # a truncated PNG
], ids=["truncated", "header-only", "short-header", "extra-bytes", "wrong-size", "huge-size",
        "empty", "bit-flip", "not-zstd", "unknown-magic", "png-truncated"])
def test_a_corrupt_blob_is_one_line(tmp_path, blob):
    root = _bank_holding(tmp_path / "b", blob)
    with pytest.raises(WeakpasteError) as err:
        SegmentBank(root).read_pixels(1)
    assert str(err.value) == (f"{root}: segment 1 cannot be read (corrupt; shard 0, offset 0); "
                              f"{NO_MANIFEST_FIX}")


def test_a_version_1_bank_stays_readable_and_appendable(tmp_path):
    root = _bank_holding(tmp_path / "b", OLD_PNG)
    seg = SegmentBank(root).read(next(SegmentBank(root).iter_index()))
    np.testing.assert_array_equal(seg.rgb, RGB)
    np.testing.assert_array_equal(seg.mask, MASK)
    with BankWriter(root) as writer:
        assert writer.version == 1
        assert writer.add(Segment(rgb=RGB[::-1].copy(), mask=MASK[::-1].copy(), category="b")) == 2
        # A WPZ1 blob would make the bank unreadable for the weakpaste that made it.
        with pytest.raises(WeakpasteError) as err:
            writer.add_encoded(GOOD, {"class": "c"})
        assert str(err.value) == (f"{root}: a segment blob of class 'c' is not in this "
                                  "version-1 bank's codec; encode it with "
                                  "encode_segment(seg, 1)")
    assert json.loads((root / "bank.json").read_text())["version"] == 1
    shard = (root / "segments" / "shard-00000.bin").read_bytes()
    assert shard[:len(OLD_PNG)] == OLD_PNG and shard[len(OLD_PNG):][:8] == b"\x89PNG\r\n\x1a\n"
    bank = SegmentBank(root)
    assert bank.class_counts() == {"a": 1, "b": 1}
    np.testing.assert_array_equal(bank.read_pixels(1)[0], RGB)
    np.testing.assert_array_equal(bank.read_pixels(2)[0], RGB[::-1])
    np.testing.assert_array_equal(bank.read_pixels(2)[1], MASK[::-1])


def test_an_emptied_version_1_bank_is_written_as_version_2(tmp_path):
    # mine --resume deletes the index and the shards, then writes the bank again.
    root = _bank_holding(tmp_path / "b", OLD_PNG)
    (root / "index.jsonl").unlink()
    with BankWriter(root) as writer:
        assert writer.version == 2
        writer.add(Segment(rgb=RGB, mask=MASK, category="a"))
    assert json.loads((root / "bank.json").read_text())["version"] == 2
    assert (root / "segments" / "shard-00000.bin").read_bytes()[:4] == b"WPZ1"
    np.testing.assert_array_equal(SegmentBank(root).read_pixels(1)[1], MASK)


def test_a_newer_bank_is_refused_by_readers_and_writers(tmp_path):
    root = _bank_holding(tmp_path / "b", GOOD)
    (root / "bank.json").write_text('{"format": "weakpaste-segment-bank", "version": 3}')
    message = (f"{root / 'bank.json'}: unsupported bank format 'weakpaste-segment-bank' v3; "
               "upgrade weakpaste or rebuild the bank")
    for open_bank in (SegmentBank, BankWriter):
        with pytest.raises(WeakpasteError) as err:
            open_bank(root)
        assert str(err.value) == message


def _blob_heads(root):
    shard = (root / "segments" / "shard-00000.bin").read_bytes()
    return {shard[e["offset"]:e["offset"] + 4] for e in SegmentBank(root).iter_index()}


def test_bank_from_coco_writes_version_2(tiny_coco, tmp_path):
    path, images = tiny_coco
    run_bank_from_coco(None, BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "bank", quiet=True))
    root = tmp_path / "bank"
    assert json.loads((root / "bank.json").read_text()) == {
        "format": "weakpaste-segment-bank", "version": 2}
    assert _blob_heads(root) == {b"WPZ1"}
    assert SegmentBank(root).class_counts() == {"a": 3, "b": 2}


def test_paste_outputs_are_identical_from_a_png_and_a_wpz_bank(tiny_coco, tmp_path,
                                                                monkeypatch):
    from weakpaste.paste.run import PasteConfig, run_paste

    path, images = tiny_coco
    with monkeypatch.context() as patch:  # the bank as weakpaste 0.1.0 wrote it
        patch.setattr(bank_mod, "FORMAT_VERSION", 1)
        run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=path, images=images),
                           RunOptions(out=tmp_path / "png", quiet=True))
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "wpz", quiet=True))
    assert _blob_heads(tmp_path / "png") == {b"\x89PNG"}
    assert _blob_heads(tmp_path / "wpz") == {b"WPZ1"}
    outputs = {}
    for name in ("png", "wpz"):
        out = tmp_path / f"out-{name}"
        run_paste(PasteConfig(num_images=4, seed=3, objects=(2, 3)),
                  PasteInputs(bank=str(tmp_path / name), backgrounds=str(path), images=str(images)),
                  RunOptions(out=str(out), quiet=True))
        outputs[name] = {p.name: p.read_bytes() for p in sorted((out / "images").iterdir())}
        outputs[name]["annotations.json"] = (out / "annotations.json").read_bytes()
    assert len(outputs["png"]) == 5 and outputs["png"] == outputs["wpz"]
