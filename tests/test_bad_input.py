"""Bad input to every command: exit code 2, one stderr line, no traceback, nothing changed.

One parametrized test runs each command on each broken input it reads (issue 11). The broken
inputs are made here from a tiny generated data set: no binary file is stored in the repo.
Every input, and a decoy user folder, is hashed before and after the command: nothing
outside the command's output folder may change.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import png_header, square_masks

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.cli import main
from weakpaste.core.run import RunOptions
from weakpaste.io.coco import write_coco
from weakpaste.io.images import write_image
from weakpaste.structures import ImageRecord, Instances

H, W = 48, 64


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Valid inputs every case starts from: images, a COCO file, a bank, labels, a decoy.

    Cases never modify these: they copy what they break into their own folder.
    """
    root = tmp_path_factory.mktemp("world")
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
    labels.write_text("image,labels\nimg0.png,a\nimg1.png,b\nimg2.png,a\n")
    decoy = root / "decoy"
    (decoy / "src").mkdir(parents=True)
    (decoy / "manifest.json").write_text(json.dumps({"name": "My App", "version": "1.0"}))
    (decoy / "src" / "index.html").write_text("<html></html>")
    return {"root": root, "images": images, "coco": coco, "bank": bank, "labels": labels,
            "decoy": decoy}


# ---------------------------------------------------------------------------------------------
# Broken inputs. Each builder gets the clean world and a folder of its own, and returns the
# paths to use instead ("coco", "images", "bank", "labels", "out") and "culprit": the path
# the error line must name.

Case = Callable[[dict[str, Path], Path], dict[str, Path]]


def _coco_with(change: Callable[[dict], None], name: str = "bad.json") -> Case:
    def build(world: dict[str, Path], where: Path) -> dict[str, Path]:
        doc = json.loads(world["coco"].read_text())
        change(doc)
        path = where / name
        path.write_text(json.dumps(doc))  # NaN is written as JSON's common NaN extension
        return {"coco": path, "culprit": path}
    return build


def _segmentation(value: object) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc["annotations"][0]["segmentation"] = value
    return change


def _bbox(value: list) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc["annotations"][0]["bbox"] = value
    return change


def _lvis_negative(category_id: int) -> Callable[[dict], None]:
    """An LVIS file (federated lists on every image) whose first image lists ``category_id``
    as verified absent."""
    def change(doc: dict) -> None:
        for img in doc["images"]:
            img.update(neg_category_ids=[], not_exhaustive_category_ids=[])
        doc["images"][0]["neg_category_ids"] = [category_id]
    return change


def _frequency(value: str) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        for cat in doc["categories"]:
            cat["frequency"] = "r"
        doc["categories"][0]["frequency"] = value
    return change


def _huge_integer(world, where):
    """An id of 5001 digits: more than CPython converts (a ValueError, not a JSON error)."""
    path = where / "bad.json"
    doc = json.loads(world["coco"].read_text())
    doc["images"][0]["id"] = 0  # a placeholder, replaced by the long number below
    path.write_text(json.dumps(doc).replace('"id": 0', '"id": 1' + "0" * 5000, 1))
    return {"coco": path, "culprit": path}


def _annotation_image_id(value: object) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc["annotations"][0]["image_id"] = value
    return change


def _category_name(value: str) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc["categories"][0]["name"] = value
    return change


def _missing_coco(world, where):
    return {"coco": where / "nowhere.json", "culprit": where / "nowhere.json"}


def _not_json(world, where):
    path = where / "bad.json"
    path.write_text('{"images": [')
    return {"coco": path, "culprit": path}


def _compressed_past_hw(doc: dict) -> None:
    # A real compressed string of a taller image: its runs add up to more than H*W.
    from weakpaste.ops.masks import encode

    doc["annotations"][0]["segmentation"]["counts"] = encode(np.ones((H * 4, W), bool))["counts"]


def _images_with(change: Callable[[Path], None]) -> Case:
    def build(world: dict[str, Path], where: Path) -> dict[str, Path]:
        images = where / "images"
        shutil.copytree(world["images"], images)
        change(images / "img1.png")
        return {"images": images, "culprit": images / "img1.png"}
    return build


def _no_images_dir(world, where):
    return {"images": where / "no_images", "culprit": where / "no_images"}


def _bank_with(change: Callable[[Path], None]) -> Case:
    def build(world: dict[str, Path], where: Path) -> dict[str, Path]:
        bank = where / "bank"
        shutil.copytree(world["bank"], bank)
        change(bank)
        return {"bank": bank, "culprit": bank}
    return build


def _set_running(bank: Path) -> None:
    manifest = json.loads((bank / "manifest.json").read_text())
    (bank / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))


def _truncate_shard(bank: Path) -> None:
    shard = bank / "segments" / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:100])


def _corrupt_index_line(bank: Path) -> None:
    index = bank / "index.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"  # complete (newline-terminated) but cut
    index.write_text("".join(lines))


def _index_huge_integer(bank: Path) -> None:
    index = bank / "index.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    lines[1] = '{"id": 1' + "0" * 5000 + "}\n"
    index.write_text("".join(lines))


def _index_size_lie(bank: Path) -> None:
    """Every index entry claims other crop sizes than its blob holds."""
    index = bank / "index.jsonl"
    entries = [json.loads(line) for line in index.read_text().splitlines()]
    index.write_text("".join(json.dumps({**e, "height": e["height"] + 1}) + "\n"
                             for e in entries))


def _damaged_png(path: Path) -> None:
    """A PNG whose image data fails its CRC: libpng prints its own error on stderr."""
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))


def _radiance_hdr(path: Path) -> None:
    """An image OpenCV decodes but whose size no header check here reads (Radiance HDR)."""
    path.write_bytes(cv2.imencode(".hdr", np.zeros((H, W, 3), np.float32))[1].tobytes())


def _not_a_bank(world, where):
    (where / "empty").mkdir()
    return {"bank": where / "empty", "culprit": where / "empty"}


def _labels(text: str, encoding: str = "utf-8") -> Case:
    def build(world: dict[str, Path], where: Path) -> dict[str, Path]:
        path = where / "labels.csv"
        path.write_bytes(text.encode(encoding))
        return {"labels": path, "culprit": path}
    return build


def _out_decoy(world, where):
    return {"out": world["decoy"], "overwrite": True, "culprit": world["decoy"]}


def _out_images(world, where):
    return {"out": world["images"], "overwrite": True, "culprit": world["images"]}


def _out_inside_the_bank(world, where):
    bank = where / "bank"
    shutil.copytree(world["bank"], bank)
    return {"bank": bank, "out": bank, "culprit": bank}


def _out_file_exists(world, where):
    out = where / "out"
    out.mkdir()
    (out / "result.json").write_text("my earlier result")
    return {"out": out, "culprit": out / "result.json", "protect_out": True}


COCO_CASES: dict[str, Case] = {
    "coco-missing": _missing_coco,
    "coco-not-json": _not_json,
    "rle-counts-int": _coco_with(_segmentation({"size": [H, W], "counts": 12})),
    "rle-counts-garbage": _coco_with(_segmentation({"size": [H, W], "counts": "garbage!!"})),
    "rle-uncompressed-past-hw": _coco_with(_segmentation({"size": [H, W],
                                                          "counts": [10, H * W * 1000]})),
    "rle-compressed-past-hw": _coco_with(_compressed_past_hw),
    "bbox-nan": _coco_with(_bbox([1.0, 1.0, float("nan"), 4.0])),
    "polygon-odd": _coco_with(_segmentation([[1, 1, 9, 1, 9, 9, 1]])),
    "lvis-negative-unknown-id": _coco_with(_lvis_negative(99)),
    "lvis-negative-but-annotated": _coco_with(_lvis_negative(1)),
    "lvis-frequency-invalid": _coco_with(_frequency("rare")),
    "json-huge-integer": _huge_integer,
    "image-id-a-list": _coco_with(_annotation_image_id([1])),
    "category-name-empty": _coco_with(_category_name("")),
}
# eval reads the broken file as predictions, whose images and categories it does not read
# (LVIS ground truth with broken fields: tests/test_lvis.py).
LVIS_CASES = ("lvis-negative-unknown-id", "lvis-negative-but-annotated", "lvis-frequency-invalid")
IMAGE_CASES: dict[str, Case] = {
    "image-huge-header": _images_with(lambda p: p.write_bytes(png_header(60000, 60000))),
    "image-not-an-image": _images_with(lambda p: p.write_bytes(b"not an image")),
    "image-wrong-size": _images_with(lambda p: write_image(p, np.zeros((H, W + 1, 3),
                                                                       np.uint8))),
    "images-dir-missing": _no_images_dir,
    "image-damaged-png": _images_with(_damaged_png),
    "image-unchecked-format": _images_with(_radiance_hdr),
}
BANK_CASES: dict[str, Case] = {
    "bank-incomplete": _bank_with(_set_running),
    "bank-shard-truncated": _bank_with(_truncate_shard),
    "bank-shard-missing": _bank_with(lambda b: (b / "segments" / "shard-00000.bin").unlink()),
    "bank-index-line-corrupt": _bank_with(_corrupt_index_line),
    "bank-not-a-bank": _not_a_bank,
    "bank-index-huge-integer": _bank_with(_index_huge_integer),
    "bank-blob-size-lie": _bank_with(_index_size_lie),
}
LABEL_CASES: dict[str, Case] = {
    "labels-latin1-csv": _labels("image,labels\nimg0.png,caf\u00e9\n", "latin-1"),
    "labels-csv-header": _labels("file,tags\nimg0.png,a\n"),
}
OUT_CASES: dict[str, Case] = {
    "out-user-folder": _out_decoy,
    "out-overlaps-input": _out_images,
    "out-file-exists": _out_file_exists,
    "out-inside-an-input": _out_inside_the_bank,
}

# ---------------------------------------------------------------------------------------------
# Commands: argv from the case's paths, and which cases each one reads.

MINE_FAST = ["--weights", "none", "--backbone", "resnet18", "--epochs", "1", "--quiet"]


def _argv(command: str, p: dict[str, Path]) -> list[str]:
    out, coco, images = str(p["out"]), str(p["coco"]), str(p["images"])
    argv = {
        "bank-from-coco": ["bank", "from-coco", coco, "--images", images, "--out", out,
                           "--quiet"],
        "bank-info": ["bank", "info", str(p["bank"])],
        "paste": ["paste", "--bank", str(p["bank"]), "--out", out, "--backgrounds", coco,
                  "--images", images, "--num-images", "3", "--quiet"],
        "viz": ["viz", coco, "--images", images, "--out", out, "--quiet"],
        "stats": ["stats", coco],
        "longtail": ["longtail", coco, "--out", str(Path(out) / "result.json")],
        "evaluate-masks": ["evaluate-masks", str(p["pred"]), "--gt", str(p["gt"]), "--out",
                           str(Path(out) / "result.json")],
        "eval-predictions": ["eval", "--predictions", str(p["pred"]), "--data",
                             f"{p['gt']}:{images}", "--out", out, "--quiet"],
        "mine-fem": ["mine", "--method", "fem", "--images", images, "--labels",
                     str(p["labels"]), "--out", out, *MINE_FAST],
        "mine-freeseg": ["mine", "--method", "freeseg", "--images", images, "--labels",
                         str(p["labels"]), "--out", out, *MINE_FAST],
    }[command]
    return argv + (["--overwrite"] if p.get("overwrite") else [])


COMMANDS_READING = {
    "coco": ["bank-from-coco", "paste", "viz", "stats", "longtail", "evaluate-masks",
             "eval-predictions", "mine-fem"],
    "image": ["bank-from-coco", "paste", "viz", "mine-fem", "mine-freeseg"],
    "bank": ["bank-info", "paste", "evaluate-masks"],
    "labels": ["mine-fem", "mine-freeseg"],
}
# Image-level labels record no image size, so mining cannot find a size mismatch.
NOT_APPLICABLE = {("mine-fem", "image-wrong-size"), ("mine-freeseg", "image-wrong-size"),
                  *(("eval-predictions", case) for case in LVIS_CASES),
                  # predictions name no categories; bank info reads no pixels
                  ("eval-predictions", "category-name-empty"), ("bank-info", "bank-blob-size-lie")}
OUT_COMMANDS = {
    "out-user-folder": ["bank-from-coco", "paste", "viz", "eval-predictions", "mine-fem",
                        "mine-freeseg"],
    "out-overlaps-input": ["bank-from-coco", "paste", "viz"],
    "out-file-exists": ["evaluate-masks", "longtail"],
    "out-inside-an-input": ["evaluate-masks"],
}


def _matrix() -> list:
    params = []
    for kind, cases in (("coco", COCO_CASES), ("image", IMAGE_CASES), ("bank", BANK_CASES),
                        ("labels", LABEL_CASES)):
        for name in cases:
            params += [pytest.param(command, cases[name], id=f"{command}-{name}")
                       for command in COMMANDS_READING[kind]
                       if (command, name) not in NOT_APPLICABLE]
    for name, commands in OUT_COMMANDS.items():
        params += [pytest.param(command, OUT_CASES[name], id=f"{command}-{name}")
                   for command in commands]
    return params


def _tree_hashes(*roots: Path, skip: Path) -> dict[str, str]:
    hashes = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and skip not in path.parents:
                hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.mark.parametrize("command, case", _matrix())
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, tmp_path, capfd, command,
                                                          case):
    where = tmp_path / "case"
    where.mkdir()
    paths = {**world, "out": tmp_path / "out", **case(world, where)}
    # evaluate-masks and eval read predictions: the broken file (or bank) is the prediction,
    # judged against the clean ground truth.
    paths["pred"] = paths["bank"] if paths["bank"] != world["bank"] else paths["coco"]
    paths["gt"] = world["coco"]
    if command == "mine-fem" and paths["coco"] != world["coco"]:
        paths["labels"] = paths["coco"]  # a COCO file of image-level labels
    # Only a fresh output folder may change; an existing one (a user's folder, an input, an
    # earlier result) must not.
    fresh = not paths.get("protect_out") and paths["out"] == tmp_path / "out"
    keep = paths["out"] if fresh else tmp_path / "nothing"
    before = _tree_hashes(world["root"], tmp_path, skip=keep)
    capfd.readouterr()

    code = main(_argv(command, paths))

    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("weakpaste: error: "), err
    assert "Traceback" not in err and out == ""
    # eval's own messages (weakpaste/train/evaluation.py) call a predictions file
    # "predictions" once its entries were read.
    culprit = str(paths["culprit"])
    if command == "eval-predictions" and lines[0].startswith("weakpaste: error: predictions: "):
        culprit = "predictions"
    assert culprit in lines[0], lines[0]
    assert _tree_hashes(world["root"], tmp_path, skip=keep) == before
