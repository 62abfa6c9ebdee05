"""Bad input, round two (issue 22): one test per class of input a hostile or careless user
gives, each checking the one line a user now sees.

1. nothing a run reads back is unpickled (the mining cache is data, checked);
2. no output path of any command is, or lies inside, an input;
3. ``--resume`` proves its inputs are the same (images, journal lines, one run at a time);
4. decompression bombs and size lies are refused before allocation;
5. corrupt images and extreme JSON are one line from every reader;
6. SIGTERM is Ctrl-C, and a full disk under ``torch.save`` is the disk error;
7. options are checked before any work.

The files are made here from tiny generated data; nothing binary is stored in the repo.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zstandard
from conftest import square_masks

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.bank.store import SegmentBank
from weakpaste.cli import main
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.io.coco import write_coco
from weakpaste.io.images import read_image, write_image
from weakpaste.structures import ImageRecord, Instances

ROOT = Path(__file__).resolve().parents[1]
H, W = 48, 64
FIX = "rerun with that run's options and inputs, or pass --overwrite instead of --resume"
MINE_TINY = ["--backbone", "resnet18", "--weights", "none", "--epochs", "1", "--input-size",
             "64", "--crop-size", "48", "--quiet"]
FEM_TINY = [*MINE_TINY, "--candidates", "4", "--max-side", "128"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Three tiny images with instances of 'a' and 'b', their COCO file, a bank, labels."""
    root = tmp_path_factory.mktemp("world2")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i, layout in enumerate([[("a", (4, 4, 20, 20)), ("b", (30, 10, 60, 40))],
                                [("b", (2, 2, 12, 30))], [("a", (10, 10, 50, 40))]]):
        write_image(images / f"img{i}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        masks = square_masks(H, W, [box for _, box in layout])
        records.append(ImageRecord(image_id=i + 1, file_name=f"img{i}.png", width=W, height=H,
                                   instances=Instances.from_masks(masks,
                                                                  [c for c, _ in layout])))
    coco = root / "instances.json"
    write_coco(coco, records, ["a", "b"])
    bank = root / "bank"
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=coco, images=images),
                       RunOptions(out=bank, quiet=True))
    labels = root / "labels.csv"
    labels.write_text("image,labels\nimg0.png,a;b\nimg1.png,b\nimg2.png,a\n")
    return {"root": root, "images": images, "coco": coco, "bank": bank, "labels": labels}


def _one_line(capfd) -> str:
    """The single stderr line of a refused command (and nothing on stdout)."""
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _refused(argv: list[str], capfd) -> str:
    capfd.readouterr()
    assert main(argv) == 2
    return _one_line(capfd)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# ---------------------------------------------------------------------------------------------
# 1. The mining cache is data: never unpickled, a damaged entry mined again


@pytest.fixture(scope="module")
def mined(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mined") / "out"
    argv = ["mine", "fem", "--images", str(world["images"]), "--labels", str(world["labels"]),
            "--out", str(out), *FEM_TINY]
    assert main(argv) == 0
    return out


class _Planted:
    """A pickle that, when loaded, creates the file ``path`` (an attacker's code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _resume(world, out: Path) -> int:
    return main(["mine", "fem", "--images", str(world["images"]), "--labels",
                 str(world["labels"]), "--out", str(out), "--resume", *FEM_TINY])


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes()
            for name in ("index.jsonl", "segments/shard-00000.bin", "pseudo_labels.json")}


def test_mine_resume_never_runs_code_planted_in_its_cache(world, mined, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(mined, out)
    marker = tmp_path / "code-ran"
    entries = [p for p in (out / ".cache").glob("*/*") if p.is_file()]
    assert entries
    payload = pickle.dumps(_Planted(marker))
    for entry in entries:  # every cached result replaced, and a pickle beside each
        entry.write_bytes(payload)
        entry.with_suffix(".pkl").write_bytes(payload)
    assert _resume(world, out) == 0
    assert not marker.exists()
    assert _outputs(out) == _outputs(mined)  # the planted entries were mined again


@pytest.mark.parametrize("damage", ["truncated", "bit-flip", "empty"])
def test_a_damaged_cache_entry_is_mined_again(world, mined, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(mined, out)
    for entry in (p for p in (out / ".cache").glob("*/*") if p.is_file()):
        data = entry.read_bytes()
        entry.write_bytes({"truncated": data[:len(data) // 2],
                           "bit-flip": data[:100] + bytes([data[100] ^ 1]) + data[101:],
                           "empty": b""}[damage])
    assert _resume(world, out) == 0
    assert _outputs(out) == _outputs(mined)


def test_the_cache_format_rebuilds_only_data():
    from weakpaste.mine import cache
    from weakpaste.mine.fem import ClassMining, ImageMining

    result = ImageMining("a.png", 4, 5, [ClassMining(
        "a", (1.5, 2.0), [{"size": [4, 5], "counts": "04"}], np.arange(3.0),
        np.ones(3, np.float32), np.zeros((3, 2), np.float16), 1, cam_peak=(np.int64(2), 3))],
        skipped={"b": "empty"}, seconds={"gradcam": 0.5})
    back = cache.loads(cache.dumps(result), (ImageMining, ClassMining))
    assert back.classes[0].anchor == (1.5, 2.0) and back.classes[0].cam_peak == (2, 3)
    assert type(back.classes[0].cam_peak[0]) is np.int64
    np.testing.assert_array_equal(back.classes[0].features, result.classes[0].features)
    with pytest.raises(cache.CacheError, match="unexpected 'dataclass' node"):
        cache.loads(cache.dumps(result), (ImageMining,))  # ClassMining not allowed here
    data = cache.dumps({"x": np.zeros(4)})
    with pytest.raises(cache.CacheError, match="checksum mismatch"):
        cache.loads(data[:-1], ())
    with pytest.raises(cache.CacheError, match="not a weakpaste cache file"):
        cache.loads(pickle.dumps(result), (ImageMining, ClassMining))


def _forged(members: dict[str, bytes], compress: bool = False) -> bytes:
    """A cache file whose archive holds ``members`` as given, with a valid checksum."""
    import hashlib
    import io
    import zipfile

    from weakpaste.mine import cache

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
                         ) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    payload = buf.getvalue()
    return cache.MAGIC + hashlib.sha256(payload).digest() + payload


def _npy(shape: tuple, dtype: str, data: bytes) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


@pytest.mark.parametrize("members, compress, message", [
    ({"tree.npy": _npy((2,), "|u1", b"{}"), "a0.npy": _npy((1 << 40,), "<f8", b"\0" * 8)},
     False, "array data does not match its declared size"),
    ({"tree.npy": _npy((2,), "|O", b"{}")}, False, "unexpected array type object"),
    ({"tree.npy": _npy((2,), "|u1", b"{}")}, True, "unexpected member 'tree.npy'"),
    ({"tree.npy": _npy((len(b'{"os.system": "a0"}'),), "|u1", b'{"os.system": "a0"}')},
     False, "unexpected node"),
], ids=["huge-shape", "object-array", "compressed", "unknown-tag"])
def test_a_forged_cache_file_allocates_and_runs_nothing(members, compress, message):
    from weakpaste.mine import cache

    with pytest.raises(cache.CacheError, match=message):
        cache.loads(_forged(members, compress), ())


# ---------------------------------------------------------------------------------------------
# 2. Every output path is checked against every input path


@pytest.mark.parametrize("target", ["index.jsonl", "manifest.json", "report.json"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_evaluate_masks_never_writes_inside_the_bank(world, tmp_path, capfd, target, overwrite):
    bank = tmp_path / "bank"
    shutil.copytree(world["bank"], bank)
    before = _tree(bank)
    out = bank / target
    line = _refused(["evaluate-masks", str(bank), "--gt", str(world["coco"]), "--out", str(out),
                     *(["--overwrite"] if overwrite else [])], capfd)
    assert line == (f"weakpaste: error: {out}: --out lies inside the input {bank}, which the "
                    "command must not change; choose a file outside every input")
    assert _tree(bank) == before


def test_longtail_never_writes_inside_its_input(world, tmp_path, capfd):
    src = tmp_path / "data" / "instances.json"
    src.parent.mkdir()
    shutil.copy(world["coco"], src)
    line = _refused(["longtail", str(src), "--out", str(src), "--overwrite"], capfd)
    assert line == f"weakpaste: error: {src}: --out would overwrite an input; choose another file"


def _weakpaste_output(out: Path) -> None:
    """``out`` as an earlier weakpaste output: what --overwrite may delete."""
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"tool": "weakpaste", "stage": "mine",
                                                   "weakpaste_version": "0"}))


# (--classifier, --negatives, --sam-checkpoint and --saliency were checked already.)
@pytest.mark.parametrize("method, flag, name", [
    ("fem", "--weights", "my_weights.pth"),
    ("freeseg", "--saliency-cache", "saliency"),
])
def test_mine_overwrite_never_deletes_an_input_inside_out(world, tmp_path, capfd, method, flag,
                                                          name):
    out = tmp_path / "out"
    _weakpaste_output(out)
    given = out / name
    if name == "negatives":
        shutil.copytree(world["images"], given)
    else:
        given.write_bytes(b"the user's file")
    before = _tree(out)
    tiny = MINE_TINY[:2] + MINE_TINY[4:] if flag == "--weights" else MINE_TINY
    line = _refused(["mine", method, "--images", str(world["images"]), "--labels",
                     str(world["labels"]), "--out", str(out), "--overwrite", *tiny, flag,
                     str(given)], capfd)
    assert line == (f"weakpaste: error: {out}: the output folder overlaps the input {given}; "
                    "choose an --out outside every input")
    assert _tree(out) == before


def test_a_saliency_cache_inside_the_images_is_refused(tmp_path, capfd):
    images = tmp_path / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(2):
            write_image(images / label / f"{i}.png", np.full((40, 40, 3), 60 * i, np.uint8))
    inside = images / "a" / "sal"
    line = _refused(["mine", "freeseg", "--images", str(images), "--out", str(tmp_path / "out"),
                     "--saliency-cache", str(inside), *MINE_TINY], capfd)
    assert line == (f"weakpaste: error: {inside}: the saliency cache lies inside the images "
                    f"folder {images}, where its maps would be read as images; choose a "
                    "--saliency-cache outside it")
    assert not (tmp_path / "out").exists() and not inside.exists()


# ---------------------------------------------------------------------------------------------
# 3. --resume proves its inputs: images, journal lines, one run at a time


def _paste_argv(world, out: Path, n: int = 40, *extra: str) -> list[str]:
    return ["paste", "--bank", str(world["bank"]), "--out", str(out), "--backgrounds",
            str(world["coco"]), "--images", str(world["images"]), "--num-images", str(n),
            "--objects", "1-3", "--quiet", *extra]


def _paste_with_journal(world, tmp_path, monkeypatch) -> Path:
    """A paste stopped by Ctrl-C after 10 items: its journal and images kept."""
    from weakpaste.paste import run as paste_run

    real, calls = paste_run.paste_item, {"n": 0}

    def stop(*args):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(*args)

    out = tmp_path / "out"
    monkeypatch.setattr(paste_run, "paste_item", stop)
    assert main(_paste_argv(world, out)) == 130
    monkeypatch.setattr(paste_run, "paste_item", real)
    return out


@pytest.fixture
def own_world(world, tmp_path) -> dict[str, Path]:
    """A copy of the world whose images a test may edit."""
    root = tmp_path / "own"
    shutil.copytree(world["root"], root)
    return {**world, "root": root, "images": root / "images", "coco": root / "instances.json",
            "bank": root / "bank"}


def _edit(path: Path, keep_stat: bool) -> None:
    """Other pixels, same size; with ``keep_stat`` also the old modification time."""
    st = path.stat()
    rgb = read_image(path)
    rgb[0, 0] = 255 - rgb[0, 0]
    write_image(path, rgb)
    assert path.stat().st_size == st.st_size
    if keep_stat:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_paste_resume_refuses_an_edited_background(own_world, tmp_path, capfd, monkeypatch):
    out = _paste_with_journal(own_world, tmp_path, monkeypatch)
    capfd.readouterr()
    edited = own_world["images"] / "img1.png"
    _edit(edited, keep_stat=False)
    line = _refused(_paste_argv(own_world, out, 40, "--resume"), capfd)
    assert line == (f"weakpaste: error: {out}: cannot resume: the background images changed "
                    f"since that run ({edited} differs); {FIX}")


def test_paste_resume_refuses_other_bytes_behind_the_same_size_and_time(own_world, tmp_path,
                                                                        capfd, monkeypatch):
    out = _paste_with_journal(own_world, tmp_path, monkeypatch)
    capfd.readouterr()
    edited = own_world["images"] / "img1.png"
    _edit(edited, keep_stat=True)
    line = _refused(_paste_argv(own_world, out, 40, "--resume"), capfd)
    assert line == (f"weakpaste: error: {edited}: the background image changed since the run "
                    "being resumed pasted onto it; restore it, or pass --overwrite instead of "
                    "--resume")


TRAIN_TINY = ["--backbone", "mobilenet_v3", "--weights", "none", "--image-size", "64",
              "--batch-size", "2", "--warmup", "0", "--steps", "none", "--roi-batch", "32",
              "--rpn-proposals", "64", "--jitter", "1,1", "--threads", "1", "--quiet"]


def _train_argv(world, out: Path, iterations: int = 1, *extra: str) -> list[str]:
    return ["train", "--train", f"{world['coco']}:{world['images']}", "--out", str(out),
            "--iterations", str(iterations), *TRAIN_TINY, *extra]


@pytest.fixture
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared machine: more threads only spin
    yield
    torch.set_num_threads(before)


def test_train_resume_refuses_an_edited_training_image(own_world, tmp_path, capfd,
                                                       one_torch_thread):
    out = tmp_path / "run"
    assert main(_train_argv(own_world, out)) == 0
    edited = own_world["images"] / "img1.png"
    _edit(edited, keep_stat=False)
    line = _refused(_train_argv(own_world, out, 1, "--resume"), capfd)
    assert line == (f"weakpaste: error: {out}: cannot resume: the stage 1 images changed since "
                    f"that run ({edited} differs); {FIX}")


OLDER = ("cannot resume: that run was made by an older weakpaste, which did not record its "
         "images' fingerprints, so whether they changed since cannot be checked; pass "
         "--overwrite instead of --resume to start again")


def _as_older(out: Path, key: str, listing: str) -> None:
    """``out`` as a weakpaste from before issue 22 left it: no fingerprint of its images in
    the manifest's inputs, and no listing of them in ``OUT/.cache``."""
    doc = json.loads((out / "manifest.json").read_text())
    del doc["inputs"][key]
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))
    (out / ".cache" / f"{listing}.json").unlink()


def test_paste_resume_of_a_run_without_image_fingerprints_says_so(world, tmp_path, capfd):
    out = tmp_path / "out"
    assert main(_paste_argv(world, out, 10)) == 0
    _as_older(out, "background_images", "backgrounds")
    before = _tree(out)
    assert _refused(_paste_argv(world, out, 10, "--resume"), capfd) == \
        f"weakpaste: error: {out}: {OLDER}"
    assert _tree(out) == before


def test_train_resume_of_a_run_without_image_fingerprints_says_so(world, tmp_path, capfd,
                                                                  one_torch_thread):
    out = tmp_path / "run"
    assert main(_train_argv(world, out)) == 0
    _as_older(out, "images:stage 1", "images")
    before = _tree(out)
    assert _refused(_train_argv(world, out, 1, "--resume"), capfd) == \
        f"weakpaste: error: {out}: {OLDER}"
    assert _tree(out) == before


def test_a_damaged_journal_line_is_made_again(world, tmp_path, capfd, monkeypatch):
    ref = tmp_path / "ref"
    assert main(_paste_argv(world, ref)) == 0
    out = _paste_with_journal(world, tmp_path, monkeypatch)
    (journal,) = out.glob(".parts-*.jsonl")
    lines = journal.read_text().splitlines(keepends=True)
    lines[3] = lines[3][:25] + "\n"  # a complete line, cut: not JSON
    lines[5] = json.dumps({**json.loads(lines[5]), "annotations": "garbage"}) + "\n"
    journal.write_text("".join(lines))
    capfd.readouterr()
    assert main(_paste_argv(world, out, 40, "--resume")) == 0
    assert (out / "annotations.json").read_bytes() == (ref / "annotations.json").read_bytes()
    assert _tree(out / "images") == _tree(ref / "images")


def test_a_second_run_on_the_same_out_is_refused(world, tmp_path, capfd):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "weakpaste.cli", *_paste_argv(world, out, 100000)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(out.glob("images/*.jpg")):
            time.sleep(0.05)
        assert proc.poll() is None
        line = _refused(_paste_argv(world, out, 100000, "--resume"), capfd)
        assert line == (f"weakpaste: error: {out}: another weakpaste run is using this output "
                        "folder; wait for it to finish, or choose another --out")
    finally:
        proc.kill()
        proc.wait()


def test_a_symlinked_entry_of_out_is_refused_on_resume(world, tmp_path, capfd, monkeypatch):
    out = _paste_with_journal(world, tmp_path, monkeypatch)
    elsewhere = tmp_path / "my_photos"
    (out / "images").rename(elsewhere)
    (out / "images").symlink_to(elsewhere)
    before = _tree(elsewhere)
    line = _refused(_paste_argv(world, out, 40, "--resume"), capfd)
    assert line == (f"weakpaste: error: {out / 'images'}: is a symbolic link, and a resumed run "
                    "writes only inside --out; replace it with the folder it points to, or pass "
                    "--overwrite instead of --resume")
    assert _tree(elsewhere) == before


def test_a_symlink_deeper_in_out_is_refused_on_resume(world, tmp_path, capfd, monkeypatch):
    """A made image swapped for a link to another picture: a resumed run would count that
    picture as the image it made, with the annotations of another."""
    out = _paste_with_journal(world, tmp_path, monkeypatch)
    photo = tmp_path / "my_photos" / "holiday.jpg"
    photo.parent.mkdir()
    shutil.copy(out / "images" / "000003.jpg", photo)
    link = out / "images" / "000003.jpg"
    link.unlink()
    link.symlink_to(photo)
    before = _tree(photo.parent)
    line = _refused(_paste_argv(world, out, 40, "--resume"), capfd)
    assert line == (f"weakpaste: error: {link}: is a symbolic link, and a resumed run writes only "
                    "inside --out; replace it with the file it points to, or pass --overwrite "
                    "instead of --resume")
    assert _tree(photo.parent) == before and link.is_symlink()


# ---------------------------------------------------------------------------------------------
# 4. Decompression bombs and size lies, refused before anything is allocated


def _bank_holding(root: Path, blob: bytes, height: int, width: int) -> Path:
    """A bank whose one segment (index: ``height`` x ``width``) is ``blob``."""
    (root / "segments").mkdir(parents=True)
    (root / "bank.json").write_text(json.dumps({"format": "weakpaste-segment-bank",
                                                "version": 1 if blob[:1] == b"\x89" else 2}))
    (root / "segments" / "shard-00000.bin").write_bytes(blob)
    entry = {"id": 1, "class": "a", "shard": 0, "offset": 0, "length": len(blob),
             "height": height, "width": width, "area": 4, "source_image": "x.jpg",
             "source_box": [0.0, 0.0, 3.0, 2.0], "scores": {}, "miner": "gt"}
    (root / "index.jsonl").write_text(json.dumps(entry) + "\n")
    return root


def _wpz_bomb(h: int, w: int) -> bytes:
    """A WPZ1 blob that is what it says: an h x w crop, compressed to almost nothing."""
    n = h * w
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(3 * n + (n + 7) // 8))
    return b"WPZ1" + struct.pack("<II", h, w) + frame


def _png_bomb(h: int, w: int) -> bytes:
    return cv2.imencode(".png", np.zeros((h, w, 4), np.uint8))[1].tobytes()


@pytest.mark.parametrize("blob, size, limit", [
    (_wpz_bomb(3000, 3000), (2, 3), None),  # 27 MB behind a 2x3 index entry
    (_png_bomb(3000, 3000), (2, 3), None),
    (_wpz_bomb(20, 20), (20, 20), "100"),  # honest, but over the pixel limit
    (_png_bomb(20, 20), (20, 20), "100"),
], ids=["wpz-lie", "png-lie", "wpz-over-limit", "png-over-limit"])
def test_a_segment_that_lies_about_its_size_is_refused_undecoded(tmp_path, monkeypatch, blob,
                                                                 size, limit):
    from weakpaste.bank.format import bank_fix

    if limit is not None:
        monkeypatch.setenv("WEAKPASTE_MAX_IMAGE_PIXELS", limit)
    root = _bank_holding(tmp_path / "b", blob, *size)
    with pytest.raises(WeakpasteError) as err:
        SegmentBank(root).read_pixels(1)
    assert str(err.value) == (f"{root}: segment 1 cannot be read (corrupt; shard 0, offset 0); "
                              f"{bank_fix(root)}")


@pytest.mark.parametrize("ext", [".hdr", ".pfm", ".pam"])
def test_an_image_whose_size_cannot_be_checked_is_never_decoded(tmp_path, monkeypatch, ext):
    """OpenCV decodes formats whose header Pillow cannot read: the pixel limit could not
    apply to them, so they are refused unread."""
    path = tmp_path / f"img{ext}"
    data = np.zeros((20, 20, 3), np.float32 if ext != ".pam" else np.uint8)
    path.write_bytes(cv2.imencode(ext, data)[1].tobytes())
    monkeypatch.setenv("WEAKPASTE_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(WeakpasteError) as err:
        read_image(path)
    assert str(err.value) == (f"{path}: cannot decode image (not a JPEG, PNG, BMP, WebP, TIFF, "
                              "GIF, PNM or JPEG 2000 file); the file is corrupt or not an image: "
                              "re-export it as JPEG or PNG")


def test_opencv_itself_is_held_to_the_pixel_limit(tmp_path):
    """A file whose header Pillow and OpenCV would read differently still cannot make OpenCV
    decode more than weakpaste's limit."""
    path = tmp_path / "img.hdr"
    path.write_bytes(cv2.imencode(".hdr", np.zeros((20, 20, 3), np.float32))[1].tobytes())
    code = (f"import weakpaste, cv2, numpy as np; data = np.fromfile({str(path)!r}, np.uint8)\n"
            "try:\n    cv2.imdecode(data, cv2.IMREAD_COLOR)\nexcept cv2.error:\n"
            "    print('refused')")
    env = {**os.environ, "WEAKPASTE_MAX_IMAGE_PIXELS": "100", "PYTHONPATH": str(ROOT)}
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "refused", done.stderr


# ---------------------------------------------------------------------------------------------
# 5. Corrupt images and extreme JSON: one line from every reader

DEEP = "[" * 100000 + "]" * 100000
HUGE = "1" + "0" * 5000


def _reader_argv(reader: str, bad: Path, world, out: Path) -> list[str]:
    coco, images = str(world["coco"]), str(world["images"])
    return {
        "coco": ["stats", str(bad)],
        "labels": ["mine", "fem", "--images", images, "--labels", str(bad), "--out", str(out),
                   *FEM_TINY],
        "predictions": ["eval", "--predictions", str(bad), "--data", f"{coco}:{images}",
                        "--out", str(out), "--quiet"],
        "class-weights": ["paste", "--bank", str(world["bank"]), "--out", str(out),
                          "--backgrounds", coco, "--images", images, "--num-images", "2",
                          "--selection", "weights", "--class-weights", str(bad), "--quiet"],
        "captions": ["backgrounds", "--images", images, "--captions", str(bad), "--out",
                     str(out), "--rewrite-only"],
    }[reader]


READERS = ["coco", "labels", "predictions", "class-weights", "captions"]


# (A deeply nested COCO file was refused in one line already, before issue 22.)
@pytest.mark.parametrize("reader, text, why", [
    *((r, DEEP, "nested too deeply") for r in READERS if r != "coco"),
    *((r, '{"images": [{"id": ' + HUGE + "}]}", "an integer with thousands of digits")
      for r in READERS),
], ids=[*(f"deep-nesting-{r}" for r in READERS if r != "coco"),
        *(f"huge-integer-{r}" for r in READERS)])
def test_extreme_json_is_one_line_from_every_reader(world, tmp_path, capfd, reader, text, why):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    line = _refused(_reader_argv(reader, bad, world, tmp_path / "out"), capfd)
    assert line.startswith(f"weakpaste: error: {bad}: ") and f"({why})" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line_text", [DEEP, '{"id": ' + HUGE + "}"],
                         ids=["deep-nesting", "huge-integer"])
def test_extreme_json_in_a_bank_index_is_one_line(world, tmp_path, capfd, line_text):
    bank = tmp_path / "bank"
    shutil.copytree(world["bank"], bank)
    lines = (bank / "index.jsonl").read_text().splitlines(keepends=True)
    lines[1] = line_text + "\n"
    (bank / "index.jsonl").write_text("".join(lines))
    line = _refused(["bank", "info", str(bank)], capfd)
    assert line.startswith(f"weakpaste: error: {bank}: index.jsonl line 2 is corrupt (not JSON: ")


def test_libpng_messages_are_silenced(tmp_path, capfd):
    path = tmp_path / "crc.png"
    data = bytearray(cv2.imencode(".png", np.full((8, 8, 3), 7, np.uint8))[1].tobytes())
    data[-20] ^= 0xFF  # a damaged IDAT chunk: libpng reports its CRC error on stderr
    path.write_bytes(bytes(data))
    capfd.readouterr()
    with pytest.raises(WeakpasteError, match=r"crc.png: cannot decode image"):
        read_image(path)
    assert capfd.readouterr().err == ""
    jpeg = bytearray(cv2.imencode(".jpg", np.full((64, 64, 3), 7, np.uint8))[1].tobytes())
    path = tmp_path / "noisy.jpg"
    path.write_bytes(bytes(jpeg[:-2] + b"\0" * 16 + jpeg[-2:]))  # libjpeg warns, decodes
    assert read_image(path).shape == (64, 64, 3)
    assert capfd.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# 6. SIGTERM is Ctrl-C; a full disk under torch.save is the disk error


@pytest.mark.skipif(os.name != "posix", reason="process groups and SIGTERM are POSIX")
def test_sigterm_is_one_line_exit_143_and_resumable(world, tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main(_paste_argv(world, ref, 3000)) == 0
    argv = [sys.executable, "-m", "weakpaste.cli", *_paste_argv(world, out, 3000, "--workers",
                                                                "2")]
    # As timeout and SLURM do: SIGTERM to the whole process group, workers included.
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob("images/*.jpg"))) >= 8:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143
    assert stderr.splitlines() == ["weakpaste: interrupted by SIGTERM; everything written so far "
                                   "is kept (rerun the same command with --resume where offered)"]
    assert stdout == ""
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert main(_paste_argv(world, out, 3000, "--workers", "2", "--resume")) == 0
    assert (out / "annotations.json").read_bytes() == (ref / "annotations.json").read_bytes()


@pytest.mark.skipif(os.name != "posix", reason="file size limits are POSIX")
def test_a_full_disk_while_saving_the_classifier_is_one_line(world, tmp_path):
    import resource

    def small_files() -> None:  # as a nearly full disk: the classifier (MBs) cannot be written
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "weakpaste.cli", "mine", "fem", "--images",
            str(world["images"]), "--labels", str(world["labels"]), "--out", str(out),
            *FEM_TINY]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          preexec_fn=small_files)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"weakpaste: error: {out}: cannot write (File too large); free some space or choose a "
        "writable --out, then run the command again (with --resume where offered: finished "
        "work is kept)"]
    assert not list(out.glob("*.tmp")) and not (out / "classifier.pt").exists()


# What torch.save raises when the disk fills up under it (its zip writer, not an OSError).
TORCH_SHORT_WRITE = ("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                     "writing file data/3: file write failed")


@pytest.mark.parametrize("failure", ["oserror", "torch-zip-writer"])
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_one(world, tmp_path, capfd,
                                                                  monkeypatch, one_torch_thread,
                                                                  failure):
    import torch

    from weakpaste.train.model import load_checkpoint

    out = tmp_path / "run"
    ckpt = out / "checkpoints"
    real_save, saves = torch.save, []

    def no_room(path: str) -> os.statvfs_result:
        fields = list(real_statvfs(path))
        fields[3] = fields[4] = 0  # no free block
        return os.statvfs_result(fields)

    def save(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) < 2:
            return real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04")  # the second checkpoint fills the disk, half-made
        if failure == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "statvfs", no_room)
        raise RuntimeError(TORCH_SHORT_WRITE)

    real_statvfs = os.statvfs
    monkeypatch.setattr(torch, "save", save)
    argv = _train_argv(world, out, 2, "--checkpoint-every", "1")
    line = _refused(argv, capfd)
    assert line == (f"weakpaste: error: {ckpt}: cannot write (No space left on device); free "
                    "some space or choose a writable --out, then run the command again (with "
                    "--resume where offered: finished work is kept)")
    assert len(saves) == 2
    assert sorted(p.name for p in ckpt.iterdir()) == ["iter_000001.pt", "last.pt"]  # no .tmp
    assert (ckpt / "last.pt").read_bytes() == (ckpt / "iter_000001.pt").read_bytes()
    assert load_checkpoint(ckpt / "last.pt")["iteration"] == 1
    monkeypatch.undo()  # room again: the run resumes from that checkpoint
    assert main([*argv, "--resume"]) == 0
    assert load_checkpoint(ckpt / "last.pt")["iteration"] == 2


# ---------------------------------------------------------------------------------------------
# 7. Options checked before any work, against the kernels they feed


@pytest.mark.parametrize("command, extra, message", [
    ("mine", ["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    ("mine", ["--input-size", "7"], "argument --input-size: must be >= 32, got 7"),
    ("mine", ["--crop-size", "7"], "argument --crop-size: must be >= 32, got 7"),
    ("mine", ["--keep", "0"], "argument --keep: must be in (0, 1], got 0"),
    ("paste", ["--objects", "5000"], "argument --objects: must be in [1, 1000], got 5000"),
])
def test_an_option_out_of_its_kernel_range_is_refused_at_once(world, tmp_path, capfd, command,
                                                               extra, message):
    argv = (["mine", "fem", "--images", str(world["images"]), "--labels", str(world["labels"]),
             "--out", str(tmp_path / "out"), *FEM_TINY] if command == "mine"
            else _paste_argv(world, tmp_path / "out"))
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*argv, *extra])
    assert exc.value.code == 2
    line = _one_line(capfd)
    prog = "weakpaste mine fem" if command == "mine" else "weakpaste paste"
    assert line == f"{prog}: error: {message} (see '{prog} --help')"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, extra, message", [
    ("mine", ["--device", "foo"], "device (--device) must be cpu, cuda or cuda:N, got 'foo'"),
    ("paste", ["--blur-sigma", "0"], "blur_sigma (--blur-sigma) must be in (0, 100] pixels, "
                                     "got 0.0"),
    ("paste", ["--blur-sigma", "inf"], "blur_sigma (--blur-sigma) must be in (0, 100] pixels, "
                                       "got inf"),
])
def test_an_option_its_kernel_cannot_take_is_one_line(world, tmp_path, capfd, command, extra,
                                                      message):
    argv = (["mine", "fem", "--images", str(world["images"]), "--labels", str(world["labels"]),
             "--out", str(tmp_path / "out"), *FEM_TINY] if command == "mine"
            else _paste_argv(world, tmp_path / "out"))
    assert _refused([*argv, *extra], capfd) == f"weakpaste: error: {message}"
    assert not (tmp_path / "out").exists()


def test_device_cuda_without_a_gpu_is_refused_before_any_work(world, tmp_path, capfd):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = _refused(["mine", "fem", "--images", str(world["images"]), "--labels",
                     str(world["labels"]), "--out", str(tmp_path / "out"), *FEM_TINY,
                     "--device", "cuda"], capfd)
    assert line == ("weakpaste: error: --device cuda: no CUDA device is available to torch here; "
                    "use --device cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("score", ["NaN", "Infinity"])
def test_eval_refuses_a_score_that_is_not_a_number(world, tmp_path, capfd, score):
    pred = tmp_path / "pred.json"
    pred.write_text(f'[{{"image_id": 1, "category_id": 1, "score": {score}, '
                    '"bbox": [1, 1, 5, 5]}]')
    line = _refused(["eval", "--predictions", str(pred), "--data",
                     f"{world['coco']}:{world['images']}", "--out", str(tmp_path / "out"),
                     "--quiet"], capfd)
    value = "nan" if score == "NaN" else "inf"
    assert line == (f"weakpaste: error: {pred}: entry 0 has score {value}; scores must be finite "
                    "numbers: fix the predictions file")


def test_folder_per_class_labels_skip_hidden_files_and_folders(tmp_path):
    from weakpaste.io.labels import load_labels

    for rel in ("dog/1.jpg", "dog/._1.jpg", "dog/.thumbs/2.jpg", ".git/x.jpg", "cat/3.png"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    records, classes = load_labels(None, tmp_path)
    assert classes == ["cat", "dog"]
    assert [r.file_name for r in records] == ["cat/3.png", "dog/1.jpg"]
