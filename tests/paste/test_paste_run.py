import json
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_shared
from pycocotools.coco import COCO

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import build
from weakpaste.core.run import RunOptions
from weakpaste.io.coco import load_coco
from weakpaste.io.images import write_image
from weakpaste.paste import run as paste_run
from weakpaste.paste.run import PasteConfig, PasteInputs, run_paste


@pytest.fixture
def bank_and_bg(tiny_coco, tmp_path):
    path, images = tiny_coco
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "bank", quiet=True))
    return str(tmp_path / "bank"), str(path), str(images)


def _paste(bank, coco, images, out, **kw):
    workers = kw.pop("workers", 1)
    extra = kw.pop("extra", None)
    resume = kw.pop("resume", False)
    cfg = build(PasteConfig, **{"num_images": 6, "seed": 3, "objects": (1, 3), **kw})
    return run_paste(cfg,
                     PasteInputs(bank=bank, backgrounds=coco, images=images,
                                 extra_backgrounds=extra),
                     RunOptions(out=str(out), resume=resume, workers=workers, quiet=True))


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").iterdir())} | {
        "annotations.json": (out / "annotations.json").read_bytes()}


@pytest.mark.parametrize("placement", ["random", "space-max", "jitter"])
def test_same_seed_same_bytes_for_any_worker_count(bank_and_bg, tmp_path, placement):
    bank, coco, images = bank_and_bg
    _paste(bank, coco, images, tmp_path / "w1", placement=placement,
           blend=("none", "gaussian", "poisson"))
    _paste(bank, coco, images, tmp_path / "w2", placement=placement,
           blend=("none", "gaussian", "poisson"), workers=2)
    assert _snapshot(tmp_path / "w1") == _snapshot(tmp_path / "w2")
    _paste(bank, coco, images, tmp_path / "other", placement=placement, seed=4)
    assert _snapshot(tmp_path / "w1") != _snapshot(tmp_path / "other")


def test_output_is_a_valid_coco_set(bank_and_bg, tmp_path):
    bank, coco, images = bank_and_bg
    manifest = _paste(bank, coco, images, tmp_path / "out", image_format="png")
    out = tmp_path / "out"
    data = load_coco(out / "annotations.json", out / "images")
    assert len(data.records) == 6
    assert set(data.class_names) == {"a", "b"}
    assert not list(out.glob(".parts-*.jsonl"))
    doc = json.loads((out / "annotations.json").read_text())
    assert [a["id"] for a in doc["annotations"]] == list(range(1, len(doc["annotations"]) + 1))
    assert all(a["iscrowd"] == 0 for a in doc["annotations"])
    coco_api = COCO(str(out / "annotations.json"))
    for ann in doc["annotations"][:10]:
        m = coco_api.annToMask(ann)
        assert m.sum() == ann["area"]
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                               ys.max() - ys.min() + 1]
    c = manifest["counts"]
    assert c["images"] == 6 and c["annotations"] == len(doc["annotations"])
    assert sum(c["per_class"].values()) == c["annotations"]
    assert manifest["status"] == "complete" and manifest["seed"] == 3
    assert set(manifest["inputs"]) == {"backgrounds", "background_images", "bank_index"}
    # Background instances are kept as labels: every output has at least one instance.
    assert all(len(r.instances) > 0 for r in data.records)


def test_extra_backgrounds_and_any_size(bank_and_bg, tmp_path):
    bank, _, _ = bank_and_bg
    extra = tmp_path / "extra"
    extra.mkdir()
    write_image(extra / "wide.png", np.full((30, 170, 3), 90, np.uint8))
    write_image(extra / "tall.jpg", np.full((150, 41, 3), 160, np.uint8))
    _paste(bank, None, None, tmp_path / "out", extra=[str(extra)], num_images=4)
    data = load_coco(tmp_path / "out" / "annotations.json", tmp_path / "out" / "images")
    assert {(r.width, r.height) for r in data.records} == {(170, 30), (41, 150)}


def test_resume_after_interruption(bank_and_bg, tmp_path, monkeypatch):
    bank, coco, images = bank_and_bg
    _paste(bank, coco, images, tmp_path / "ref")
    real = paste_run.paste_item
    calls = {"n": 0}

    def flaky(ctx, index, seed, background):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(ctx, index, seed, background)

    monkeypatch.setattr(paste_run, "paste_item", flaky)
    with pytest.raises(KeyboardInterrupt):
        _paste(bank, coco, images, tmp_path / "out")
    out = tmp_path / "out"
    assert not (out / "annotations.json").exists()  # never half-written
    (journal,) = out.glob(".parts-*.jsonl")
    assert len(journal.read_text().splitlines()) == 3
    with open(journal, "a") as fh:  # a torn last line, as a kill mid-write would leave
        fh.write('{"index": 3, "file_na')
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    monkeypatch.setattr(paste_run, "paste_item", real)
    with pytest.raises(WeakpasteError, match=r"output folder is not empty; pass --overwrite"):
        _paste(bank, coco, images, out)
    with pytest.raises(WeakpasteError) as err:
        _paste(bank, coco, images, out, resume=True, seed=99)
    assert str(err.value) == (f"{out}: cannot resume: seed (--seed) was 3, now 99; rerun with "
                              "that run's options and inputs, or pass --overwrite instead of "
                              "--resume")
    stale = out / "images" / ".000004.jpg.4242.tmp"  # a worker killed mid-write
    stale.write_bytes(b"half an image")
    # Journal lines of a weakpaste that stored no areas and boxes: computed when resuming.
    lines = journal.read_text().splitlines(keepends=True)
    old = [json.loads(line) for line in lines[:-1]]
    assert all("area" in a and "bbox" in a for part in old for a in part["annotations"])
    for part in old:
        for a in part["annotations"]:
            del a["area"], a["bbox"]
    journal.write_text("".join(json.dumps(part) + "\n" for part in old) + lines[-1])
    _paste(bank, coco, images, out, resume=True)
    assert not stale.exists()
    assert _snapshot(out) == _snapshot(tmp_path / "ref")


def test_bad_inputs(bank_and_bg, tmp_path):
    bank, coco, images = bank_and_bg
    with pytest.raises(WeakpasteError, match=r"class 'zebra' is not in the bank"):
        _paste(bank, coco, images, tmp_path / "o1", classes=("zebra",))
    with pytest.raises(WeakpasteError, match=r"^blend \(--blend\) must be one of none, "
                                             r"gaussian, poisson; got 'blur'$"):
        _paste(bank, coco, images, tmp_path / "o2", blend=("blur",))
    with pytest.raises(WeakpasteError, match=r"^selection 'weights' \(--selection weights\) "
                                             r"needs class_weights \(--class-weights FILE\)$"):
        _paste(bank, coco, images, tmp_path / "o3", selection="weights")
    with pytest.raises(WeakpasteError, match=r"class weights name 'zebra', which is not in the"):
        _paste(bank, coco, images, tmp_path / "o4", selection="weights",
               class_weights={"zebra": 1.0})
    with pytest.raises(WeakpasteError, match=r"no backgrounds: pass --backgrounds COCO_JSON"):
        _paste(bank, None, None, tmp_path / "o5")
    with pytest.raises(WeakpasteError, match=r"--backgrounds needs --images DIR"):
        _paste(bank, coco, None, tmp_path / "o6")
    # A corrupt background image is named, and what was written before stays.
    Path(images, "img1.png").write_bytes(b"not a png")
    with pytest.raises(WeakpasteError, match=r"img1.png: cannot decode image"):
        _paste(bank, coco, images, tmp_path / "o7", num_images=12)
    assert not (tmp_path / "o7" / "annotations.json").exists()


def test_weighted_selection_only_pastes_weighted_classes(bank_and_bg, tmp_path):
    bank, _, _ = bank_and_bg
    extra = tmp_path / "extra"
    extra.mkdir()
    write_image(extra / "bg.png", np.full((80, 80, 3), 90, np.uint8))
    manifest = _paste(bank, None, None, tmp_path / "out", extra=[str(extra)],
                      selection="weights", class_weights={"a": 0.0, "b": 1.0}, num_images=5)
    assert set(manifest["counts"]["pasted_per_class"]) == {"b"}


def test_real_coco_mini_paste(tmp_path):
    root = needs_shared("coco_mini")
    run_bank_from_coco(BankConfig(classes=("dog", "cat", "bus")),
                       BankInputs(coco_json=root / "instances.json", images=root / "images"),
                       RunOptions(out=tmp_path / "bank", quiet=True))
    cfg = build(PasteConfig, num_images=3, seed=0, objects=(4, 4), placement="space-max")
    m = run_paste(cfg,
                  PasteInputs(bank=str(tmp_path / "bank"), backgrounds=str(root / "instances.json"),
                              images=str(root / "images")),
                  RunOptions(out=str(tmp_path / "out"), quiet=True))
    assert m["counts"]["images"] == 3
    assert sum(m["counts"]["pasted_per_class"].values()) > 0


def test_overwrite_never_deletes_an_input(bank_and_bg, tmp_path, capsys):
    from weakpaste.cli import main

    bank, coco, images = bank_and_bg
    before = sorted(p.name for p in Path(bank).rglob("*"))
    weights = Path(bank) / "w.json"  # a weights file inside the bank: the bank is an input
    for out in (bank, str(Path(bank) / "segments"), images, str(Path(images) / "sub")):
        assert main(["paste", "--bank", bank, "--out", out, "--overwrite", "--num-images", "1",
                     "--backgrounds", coco, "--images", images, "--quiet"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"weakpaste: error: {out}: the output folder overlaps the input "
            f"{bank if out.startswith(bank) else images}; choose an --out outside every input")
    weights.write_text('{"a": 1}')
    assert main(["paste", "--bank", bank, "--out", str(tmp_path / "w"), "--overwrite",
                 "--num-images", "1", "--extra-backgrounds", images, "--selection", "weights",
                 "--class-weights", str(weights), "--quiet"]) == 0
    out = str(Path(bank).parent)  # contains the bank: refused before anything is deleted
    assert main(["paste", "--bank", bank, "--out", out, "--overwrite", "--num-images", "1",
                 "--extra-backgrounds", images, "--quiet"]) == 2
    weights.unlink()
    assert sorted(p.name for p in Path(bank).rglob("*")) == before


def test_resume_refuses_a_rebuilt_bank_or_backgrounds(bank_and_bg, tmp_path, monkeypatch):
    bank, coco, images = bank_and_bg
    real = paste_run.paste_item

    def interrupted(ctx, index, seed, background):
        if index == 2:
            raise KeyboardInterrupt
        return real(ctx, index, seed, background)

    monkeypatch.setattr(paste_run, "paste_item", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _paste(bank, coco, images, tmp_path / "out")
    monkeypatch.setattr(paste_run, "paste_item", real)
    # The bank is rebuilt at the same path with other segments (same ids, other pixels).
    run_bank_from_coco(BankConfig(min_area=1, classes=("a",)),
                       BankInputs(coco_json=coco, images=images),
                       RunOptions(out=bank, overwrite=True, quiet=True))
    with pytest.raises(WeakpasteError) as err:
        _paste(bank, coco, images, tmp_path / "out", resume=True)
    assert str(err.value) == (f"{tmp_path / 'out'}: cannot resume: the bank {bank} changed "
                              "since that run; rerun with that run's options and inputs, or "
                              "pass --overwrite instead of --resume")
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=coco, images=images),
                       RunOptions(out=bank, overwrite=True, quiet=True))
    doc = json.loads(Path(coco).read_text())
    Path(coco).write_text(json.dumps({**doc, "info": {"edited": True}}))
    with pytest.raises(WeakpasteError, match=r"cannot resume: the backgrounds file .*instances"
                                             r".json changed since that run"):
        _paste(bank, coco, images, tmp_path / "out", resume=True)
    Path(coco).write_text(json.dumps(doc, separators=(",", ":")))


def test_a_full_disk_mid_run_is_one_line_and_resume_completes(bank_and_bg, tmp_path,
                                                              monkeypatch, capsys):
    import errno

    from weakpaste.cli import main

    bank, coco, images = bank_and_bg
    _paste(bank, coco, images, tmp_path / "ref")
    real = paste_run.atomic_write_bytes
    calls = {"n": 0}

    def disk_fills_up(path, data):
        calls["n"] += 1
        if calls["n"] == 4:  # three images, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(paste_run, "atomic_write_bytes", disk_fills_up)
    out = tmp_path / "out"
    argv = ["paste", "--bank", bank, "--out", str(out), "--backgrounds", coco, "--images",
            images, "--num-images", "6", "--seed", "3", "--objects", "1-3", "--quiet"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"weakpaste: error: {out}: cannot write (No space left on device); free some space or "
        "choose a writable --out, then run the command again (with --resume where offered: "
        "finished work is kept)")
    assert not (out / "annotations.json").exists()
    assert len(list((out / "images").iterdir())) == 3
    monkeypatch.setattr(paste_run, "atomic_write_bytes", real)
    assert main(argv + ["--resume"]) == 0
    assert _snapshot(out) == _snapshot(tmp_path / "ref")


def test_workers_read_by_the_table_and_a_rebuilt_bank_is_read_afresh(bank_and_bg, tmp_path,
                                                                      monkeypatch):
    """The index is parsed once per run (by the main process), and a bank rebuilt at the
    same path between two runs of one process is read anew (no stale locations or files)."""
    import shutil

    from weakpaste.bank.store import SegmentBank

    bank, coco, images = bank_and_bg
    scans = []
    real_scan = SegmentBank._scan
    monkeypatch.setattr(SegmentBank, "_scan",
                        lambda self, *a, **k: scans.append(1) or real_scan(self, *a, **k))
    _paste(bank, coco, images, tmp_path / "first")
    assert len(scans) == 1
    # Rebuilt with other segments at the same path: its shard is a new file.
    run_bank_from_coco(BankConfig(min_area=1, classes=("a",)),
                       BankInputs(coco_json=coco, images=images),
                       RunOptions(out=bank, overwrite=True, quiet=True))
    _paste(bank, coco, images, tmp_path / "again")
    shutil.copytree(bank, tmp_path / "copy")
    _paste(str(tmp_path / "copy"), coco, images, tmp_path / "fresh")
    assert _snapshot(tmp_path / "again") == _snapshot(tmp_path / "fresh")
    assert _snapshot(tmp_path / "again") != _snapshot(tmp_path / "first")

