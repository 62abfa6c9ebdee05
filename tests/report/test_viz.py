"""Tests of weakpaste.report.viz: colours, drawing, contact sheets and the viz stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.io.coco import write_coco
from weakpaste.io.images import read_image, write_image
from weakpaste.report.viz import (
    VizConfig,
    VizInputs,
    class_color,
    contact_sheet,
    draw_instances,
    run_viz,
)
from weakpaste.structures import ImageRecord, Instances

BACKGROUND = (24, 24, 24)  # contact sheet background


def rect_masks(h: int, w: int, rects: list[tuple[int, int, int, int]]) -> np.ndarray:
    """bool (N, h, w) masks filled on x0, y0, x1, y1 rectangles (x1, y1 exclusive)."""
    masks = np.zeros((len(rects), h, w), dtype=bool)
    for m, (x0, y0, x1, y1) in zip(masks, rects, strict=True):
        m[y0:y1, x0:x1] = True
    return masks


def make_coco(tmp_path: Path, n_images: int = 3) -> tuple[Path, Path]:
    """A tiny COCO set of 48x64 random images with rectangle instances of 'a' and 'b'."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    layouts = [[("a", (4, 4, 20, 20)), ("b", (30, 10, 60, 40))],
               [("b", (2, 2, 12, 30))],
               []]
    records = []
    for i in range(n_images):
        layout = layouts[i % len(layouts)]
        write_image(images / f"img{i}.png",
                    rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8))
        inst = (Instances.from_masks(rect_masks(48, 64, [r for _, r in layout]),
                                     [c for c, _ in layout]) if layout
                else Instances.empty(48, 64))
        records.append(ImageRecord(image_id=i + 1, file_name=f"img{i}.png", width=64,
                                   height=48, instances=inst))
    path = tmp_path / "instances.json"
    write_coco(path, records, ["a", "b"])
    return path, images


# --- class_color -------------------------------------------------------------------------------

def test_class_color_matches_literals() -> None:
    # Literals pin the colours: they must not change between runs, processes or versions.
    assert class_color("person") == (199, 155, 255)
    assert class_color("a") == (61, 139, 255)
    assert class_color("b") == (255, 157, 31)
    assert class_color("person") == class_color("person")


def test_class_color_is_bright_ints() -> None:
    for name in ["a", "b", "person", "dining table", "ünïcode"]:
        color = class_color(name)
        assert len(color) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in color)
        assert max(color) >= 200


def test_class_color_stable_across_processes() -> None:
    code = "from weakpaste.report.viz import class_color; print(list(class_color('person')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert json.loads(out) == [199, 155, 255]


# --- draw_instances ----------------------------------------------------------------------------

def test_draw_instances_blends_inside_and_keeps_far_pixels() -> None:
    image = np.full((50, 80, 3), 100, dtype=np.uint8)
    masks = rect_masks(50, 80, [(5, 20, 20, 40)])
    boxes = np.array([[5.0, 20.0, 20.0, 40.0]])  # room above it for the label
    before = image.copy()
    out = draw_instances(image, masks, boxes, ["a"], alpha=0.5)

    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(image, before)  # input untouched
    color = np.array(class_color("a"))
    inside = out[32, 12].astype(int)  # inside the mask, away from outline and label
    assert np.array_equal(inside, np.rint(100 * 0.5 + color * 0.5).astype(int))
    lo, hi = np.minimum(100, color), np.maximum(100, color)
    assert np.all((inside >= lo) & (inside <= hi))
    # Far from the mask, box and label nothing changes.
    assert np.array_equal(out[:, 40:], image[:, 40:])
    assert np.array_equal(out[45:], image[45:])
    # The outline and box are drawn in the class colour, the label tag above the box.
    assert np.array_equal(out[39, 12], color)
    assert np.all(out[:20, 5:10] == color, axis=2).any()


def test_draw_instances_no_instances_returns_copy() -> None:
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    out = draw_instances(image, np.zeros((0, 5, 7), dtype=bool), np.zeros((0, 4)), [])
    assert np.array_equal(out, image) and out is not image


def test_draw_instances_label_stays_inside_image() -> None:
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    masks = rect_masks(100, 200, [(190, 50, 200, 90)])
    out = draw_instances(image, masks, np.array([[190.0, 50.0, 200.0, 90.0]]), ["person"],
                         scores=np.array([0.9]))
    color = np.array(class_color("person"))
    ys, xs = np.nonzero(np.all(out[:50] == color, axis=2))
    # The tag sits above the box and was moved left so that the whole text fits.
    assert ys.size > 0 and xs.min() < 170 and xs.max() <= 199


def test_draw_instances_scores_widen_label() -> None:
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    masks = rect_masks(60, 80, [(10, 30, 20, 50)])
    boxes = np.array([[10.0, 30.0, 20.0, 50.0]])
    plain = draw_instances(image, masks, boxes, ["a"])
    scored = draw_instances(image, masks, boxes, ["a"], scores=[0.75])
    assert not np.array_equal(plain, scored)


def test_draw_instances_any_size() -> None:
    for h, w in [(1, 1), (3, 500), (300, 2)]:
        image = np.zeros((h, w, 3), dtype=np.uint8)
        masks = np.ones((1, h, w), dtype=bool)
        out = draw_instances(image, masks, np.array([[0.0, 0.0, w, h]]), ["a long class name"])
        assert out.shape == (h, w, 3) and out.dtype == np.uint8


def test_draw_instances_shape_errors() -> None:
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    boxes = np.zeros((1, 4))
    with pytest.raises(ValueError) as err:
        draw_instances(image, np.zeros((1, 10, 11), dtype=bool), boxes, ["a"])
    assert str(err.value) == ("draw_instances: masks must be (N, H, W) = (1, 10, 12) for 1 "
                              "classes and a (10, 12, 3) image, got (1, 10, 11)")
    with pytest.raises(ValueError) as err:
        draw_instances(image, np.zeros((1, 10, 12), dtype=bool), np.zeros((1, 5)), ["a"])
    assert str(err.value) == ("draw_instances: boxes must be (N, 4) = (1, 4) for 1 classes, "
                              "got (1, 5)")
    with pytest.raises(ValueError) as err:
        draw_instances(image, np.zeros((1, 10, 12), dtype=bool), boxes, ["a"], scores=[1, 2])
    assert str(err.value) == ("draw_instances: scores must be (N,) = (1,) for 1 classes, "
                              "got (2,)")
    with pytest.raises(ValueError) as err:
        draw_instances(image.astype(np.float32), np.zeros((1, 10, 12)), boxes, ["a"])
    assert str(err.value) == ("draw_instances: image must be uint8 (H, W, 3) RGB, got float32 "
                              "(10, 12, 3)")
    with pytest.raises(ValueError) as err:
        draw_instances(image, np.zeros((1, 10, 12), dtype=bool), boxes, ["a"], alpha=1.5)
    assert str(err.value) == "draw_instances: alpha must be in [0, 1], got 1.5"


# --- contact_sheet -----------------------------------------------------------------------------

def test_contact_sheet_grid_size() -> None:
    images = [np.zeros((h, w, 3), dtype=np.uint8) for h, w in
              [(10, 10), (40, 10), (10, 40), (5, 7), (64, 64)]]
    sheet = contact_sheet(images, columns=2, thumb=32)
    assert sheet.dtype == np.uint8 and sheet.shape == (3 * 32, 2 * 32, 3)
    assert contact_sheet(images[:1], columns=4, thumb=32).shape == (32, 32, 3)


def test_contact_sheet_letterboxes_on_dark_background() -> None:
    wide = np.full((10, 40, 3), 255, dtype=np.uint8)
    sheet = contact_sheet([wide], thumb=32)
    assert tuple(sheet[0, 0]) == BACKGROUND and tuple(sheet[31, 31]) == BACKGROUND
    assert tuple(sheet[16, 16]) == (255, 255, 255)
    # Aspect ratio kept: the 4:1 image fills the width (less a margin), a quarter of the height.
    rows = np.flatnonzero(np.all(sheet == 255, axis=2).any(axis=1))
    assert 6 <= rows.size <= 9


def test_contact_sheet_captions() -> None:
    images = [np.full((20, 20, 3), 80, dtype=np.uint8) for _ in range(3)]
    sheet = contact_sheet(images, columns=2, thumb=64, captions=["one", "two", "three"])
    assert sheet.shape[1] == 2 * 64 and sheet.shape[0] % 2 == 0
    cell_h = sheet.shape[0] // 2
    assert cell_h > 64
    strip = sheet[64:cell_h, :64]
    assert np.any(strip > 100)  # caption text is light on the dark strip


def test_contact_sheet_title_is_a_wrapped_strip_above_the_grid() -> None:
    images = [np.full((20, 20, 3), 80, dtype=np.uint8) for _ in range(3)]
    plain = contact_sheet(images, columns=2, thumb=64, captions=["one", "two", "three"])
    titled = contact_sheet(images, columns=2, thumb=64, captions=["one", "two", "three"],
                           title="a note for the reader " * 4)
    strip_h = titled.shape[0] - plain.shape[0]
    assert titled.shape[1] == plain.shape[1] and strip_h > 0
    assert np.array_equal(titled[strip_h:], plain)  # the grid is untouched
    strip = titled[:strip_h]
    assert np.any(strip > 100)  # light text on the dark strip
    text_rows = np.flatnonzero((strip > 100).any(axis=(1, 2)))
    gaps = np.flatnonzero(np.diff(text_rows) > 1)
    assert len(gaps) >= 1  # 88 characters do not fit 128 pixels: wrapped onto several lines
    assert np.array_equal(contact_sheet(images, columns=2, thumb=64, title=None),
                          contact_sheet(images, columns=2, thumb=64))


def test_contact_sheet_errors() -> None:
    with pytest.raises(ValueError) as err:
        contact_sheet([])
    assert str(err.value) == "contact_sheet: no images"
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError) as err:
        contact_sheet([img, img], captions=["x"])
    assert str(err.value) == "contact_sheet: 1 captions for 2 images"
    with pytest.raises(ValueError) as err:
        contact_sheet([img], columns=0)
    assert str(err.value) == "contact_sheet: columns must be >= 1, got 0"
    with pytest.raises(ValueError) as err:
        contact_sheet([np.zeros((4, 4), dtype=np.uint8)])
    assert str(err.value) == "contact_sheet: images[0]: image must be uint8 (H, W, 3) RGB, got " \
                             "uint8 (4, 4)"


# --- run_viz -----------------------------------------------------------------------------------

def test_run_viz_writes_sheet_images_and_manifest(tmp_path: Path) -> None:
    coco, images = make_coco(tmp_path)
    out = tmp_path / "viz"
    # The legacy global RNG is exactly what must stay untouched.
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    manifest = run_viz(VizConfig(num_images=2, seed=0, columns=4),
                       VizInputs(coco_json=coco, images=images), RunOptions(out=out, quiet=True))
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002

    assert manifest["stage"] == "viz" and manifest["status"] == "complete"
    assert manifest["counts"]["images"] == 2
    assert json.loads((out / "manifest.json").read_text())["counts"] == manifest["counts"]
    pngs = sorted(p.name for p in (out / "images").iterdir())
    assert len(pngs) == 2
    sheet = read_image(out / "contact_sheet.png")
    assert sheet.shape[1] == 2 * 320 and sheet.shape[0] > 320


def test_run_viz_first_images_and_exact_drawing(tmp_path: Path) -> None:
    coco, images = make_coco(tmp_path)
    out = tmp_path / "viz"
    manifest = run_viz(VizConfig(num_images=2, seed=None), VizInputs(coco_json=coco, images=images),
                       RunOptions(out=out, quiet=True))
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img0.png", "img1.png"]
    assert manifest["counts"] == {"images": 2, "instances": 3}
    rgb = read_image(images / "img0.png")
    masks = rect_masks(48, 64, [(4, 4, 20, 20), (30, 10, 60, 40)])
    expected = draw_instances(rgb, masks, np.array([[4.0, 4, 20, 20], [30, 10, 60, 40]]),
                              ["a", "b"])
    assert np.array_equal(read_image(out / "images" / "img0.png"), expected)


def test_run_viz_seeded_choice_is_reproducible(tmp_path: Path) -> None:
    coco, images = make_coco(tmp_path, n_images=6)
    run_viz(VizConfig(num_images=3, seed=7), VizInputs(coco_json=coco, images=images),
            RunOptions(out=tmp_path / "v1", quiet=True))
    run_viz(VizConfig(num_images=3, seed=7), VizInputs(coco_json=coco, images=images),
            RunOptions(out=tmp_path / "v2", quiet=True))
    names = sorted(p.name for p in (tmp_path / "v1" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "v2" / "images").iterdir())
    assert len(names) == 3


def test_run_viz_refuses_non_empty_out_without_overwrite(tmp_path: Path) -> None:
    coco, images = make_coco(tmp_path)
    out = tmp_path / "viz"
    run_viz(VizConfig(num_images=1), VizInputs(coco_json=coco, images=images),
            RunOptions(out=out, quiet=True))
    with pytest.raises(WeakpasteError) as err:
        run_viz(VizConfig(num_images=1), VizInputs(coco_json=coco, images=images),
                RunOptions(out=out, quiet=True))
    assert str(err.value) == (f"{out}: output folder is not empty; pass --overwrite to "
                              "replace it or choose another --out")
    run_viz(VizConfig(num_images=3), VizInputs(coco_json=coco, images=images),
            RunOptions(out=out, overwrite=True, quiet=True))
    assert len(list((out / "images").iterdir())) == 3


def test_run_viz_image_size_mismatch(tmp_path: Path) -> None:
    coco, images = make_coco(tmp_path)
    write_image(images / "img0.png", np.zeros((20, 30, 3), dtype=np.uint8))
    with pytest.raises(WeakpasteError) as err:
        run_viz(VizConfig(num_images=1, seed=None), VizInputs(coco_json=coco, images=images),
                RunOptions(out=tmp_path / "viz", quiet=True))
    assert str(err.value) == (f"{images / 'img0.png'}: image is 30x20 but {coco} says 64x48; "
                              "fix 'width'/'height' or the image")


def test_run_viz_bad_num_images(tmp_path: Path) -> None:
    coco, images = make_coco(tmp_path)
    with pytest.raises(WeakpasteError) as err:
        run_viz(VizConfig(num_images=0), VizInputs(coco_json=coco, images=images),
                RunOptions(out=tmp_path / "viz", quiet=True))
    assert str(err.value) == "num_images (--num-images) must be >= 1, got 0"
    assert not (tmp_path / "viz").exists()


def test_import_does_not_load_torch() -> None:
    code = ("import weakpaste.report.viz, weakpaste.report.stats, sys; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_viz_never_writes_into_its_inputs(tiny_coco, tmp_path) -> None:
    path, images = tiny_coco
    before = sorted(p.name for p in images.iterdir())
    for out in (images, images / "sheet", tmp_path):
        with pytest.raises(WeakpasteError, match=r"the output folder overlaps the input"):
            run_viz(None, VizInputs(coco_json=path, images=images),
                    RunOptions(out=out, overwrite=True, quiet=True))
    assert sorted(p.name for p in images.iterdir()) == before


# --- run_viz --predictions -----------------------------------------------------------------------

def _results(masks: np.ndarray, image_id: int, scores: list[float], cat: int = 1) -> list[dict]:
    from weakpaste.ops.masks import encode_many
    return [{"image_id": image_id, "category_id": cat, "score": s, "bbox": [0, 0, 1, 1],
             "segmentation": rle} for s, rle in zip(scores, encode_many(masks), strict=True)]


def test_run_viz_draws_predictions_above_min_score(tmp_path: Path) -> None:
    coco, images = make_coco(tmp_path)
    masks = rect_masks(48, 64, [(10, 10, 30, 30), (40, 5, 60, 20), (0, 30, 8, 47)])
    pred = tmp_path / "predictions.json"
    pred.write_text(json.dumps(_results(masks, 1, [0.9, 0.3, 0.6])))
    out = tmp_path / "viz"
    manifest = run_viz(VizConfig(num_images=2, seed=None, min_score=0.5),
                       VizInputs(coco_json=coco, images=images, predictions=pred),
                       RunOptions(out=out, quiet=True))
    # the 0.3 detection is not drawn; image 2 has no prediction, so nothing is drawn there
    assert manifest["counts"] == {"images": 2, "instances": 2}
    assert manifest["config"]["predictions"] == str(pred)
    assert manifest["config"]["min_score"] == 0.5
    rgb = read_image(images / "img0.png")
    expected = draw_instances(rgb, masks[[0, 2]], np.array([[10.0, 10, 30, 30], [0, 30, 8, 47]]),
                              ["a", "a"], scores=np.array([0.9, 0.6]))
    assert np.array_equal(read_image(out / "images" / "img0.png"), expected)
    assert np.array_equal(read_image(out / "images" / "img1.png"),
                          read_image(images / "img1.png"))


def test_run_viz_predictions_errors(tmp_path: Path) -> None:
    coco, images = make_coco(tmp_path)
    pred = tmp_path / "predictions.json"
    pred.write_text(json.dumps(_results(rect_masks(48, 64, [(1, 1, 5, 5)]), 99, [0.9])))
    with pytest.raises(WeakpasteError) as err:
        run_viz(None, VizInputs(coco_json=coco, images=images, predictions=pred),
                RunOptions(out=tmp_path / "viz", quiet=True))
    assert str(err.value) == (f"{pred}: entry 0 is for image id 99, which is not in {coco}; "
                              "evaluate against the data set the predictions were made on")
    bad = _results(rect_masks(48, 64, [(1, 1, 5, 5)]), 1, [0.9])
    bad[0]["segmentation"]["counts"] = "zz"
    pred.write_text(json.dumps(bad))
    with pytest.raises(WeakpasteError) as err:
        run_viz(None, VizInputs(coco_json=coco, images=images, predictions=pred),
                RunOptions(out=tmp_path / "viz", quiet=True))
    assert str(err.value) == (f"{pred}: result for image 1 has a corrupt RLE "
                              "segmentation (compressed RLE counts hold characters outside "
                              "pycocotools' alphabet '0'..'o'); fix the predictions file")
    assert not (tmp_path / "viz").exists()
    pred.write_text(json.dumps(_results(rect_masks(48, 64, [(1, 1, 5, 5)]), 1, [0.9])))
    with pytest.raises(WeakpasteError, match=r"the output folder overlaps the input"):
        run_viz(None, VizInputs(coco_json=coco, images=images, predictions=pred),
                RunOptions(out=pred, overwrite=True, quiet=True))
    assert pred.is_file()


def test_viz_cli_predictions(tmp_path: Path, capsys) -> None:
    from weakpaste.cli import main

    coco, images = make_coco(tmp_path)
    pred = tmp_path / "predictions.json"
    pred.write_text(json.dumps(_results(rect_masks(48, 64, [(1, 1, 9, 9)]), 2, [0.7])))
    out = tmp_path / "viz"
    assert main(["viz", str(coco), "--images", str(images), "--out", str(out), "--predictions",
                 str(pred), "--min-score", "0.6", "--num-images", "3", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"images": 3, "instances": 1}
    with pytest.raises(SystemExit) as exit_:
        main(["viz", str(coco), "--images", str(images), "--out", str(out), "--predictions",
              str(pred), "--min-score", "1.5", "--overwrite"])
    assert exit_.value.code == 2
    assert "argument --min-score: must be in [0, 1], got 1.5" in capsys.readouterr().err


def test_run_viz_title_on_the_sheet_and_in_the_manifest(tmp_path: Path) -> None:
    coco, images = make_coco(tmp_path)
    plain = run_viz(VizConfig(num_images=2), VizInputs(coco_json=coco, images=images),
                    RunOptions(out=tmp_path / "v1", quiet=True))
    titled = run_viz(VizConfig(num_images=2, title="a note"),
                     VizInputs(coco_json=coco, images=images),
                     RunOptions(out=tmp_path / "v2", quiet=True))
    assert "title" not in plain["config"] and titled["config"]["title"] == "a note"
    a = read_image(tmp_path / "v1" / "contact_sheet.png")
    b = read_image(tmp_path / "v2" / "contact_sheet.png")
    assert b.shape[0] > a.shape[0] and np.array_equal(b[b.shape[0] - a.shape[0]:], a)
