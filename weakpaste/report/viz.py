"""Drawing instances for a human to check: masks, outlines, boxes, labels and contact sheets.

Everything here works on RGB uint8 arrays and never imports torch, so ``weakpaste viz`` starts
at once and runs on machines without a deep-learning stack.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import Config, flag_of, option, parse_int_or_none
from weakpaste.core.run import RunOptions, StageInputs, StageRun

# Bright, mutually distinct colours: every one carries a dark label text well and stands out on
# typical photos. A fixed table (rather than a hue from the hash) keeps two classes from getting
# near-identical shades.
_PALETTE: tuple[tuple[int, int, int], ...] = tuple(tuple(bytes.fromhex(rgb)) for rgb in (
    # red, orange, yellow, lime, green, mint, cyan, blue, violet, magenta,
    "ff3838 ff9d1f ffe119 bfef45 3cd64b 2ee6a8 42d4f4 3d8bff 8c5cff f032e6 "
    # pink, peach, sky, pale lime, lavender, teal, rose, gold, light green, light blue
    "ff6fb5 ffb38a a0e8ff d9ff8c c79bff 00c2a0 ff5e7a ffd166 7ee081 59a5ff").split())

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SHEET_BACKGROUND = (24, 24, 24)
_CAPTION_COLOR = (225, 225, 225)


def class_color(name: str) -> tuple[int, int, int]:
    """Stable colour of a class.

    The colour depends only on the name (CRC-32 into a fixed palette), so it is the same across
    calls, processes and machines, unlike Python's salted ``hash()``.

    Args:
        name: class name.

    Returns:
        (r, g, b) ints in 0..255.
    """
    return _PALETTE[zlib.crc32(name.encode("utf-8")) % len(_PALETTE)]


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``rgb``."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b >= 140 else (255, 255, 255)


def _check_image(image: np.ndarray, where: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) \
            else type(image).__name__
        raise ValueError(f"{where}: image must be uint8 (H, W, 3) RGB, got {got}")


def draw_instances(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray,
                   classes: Sequence[str], *, scores: np.ndarray | Sequence[float] | None = None,
                   alpha: float = 0.45) -> np.ndarray:
    """Draw instances over an image.

    Each mask is filled with its class colour at opacity ``alpha`` and outlined; each box is
    drawn and labelled with the class name (and score) on a filled tag at its top-left corner,
    moved inside the image when the corner is near an edge. Line widths and text size follow
    the image size so that the drawing stays readable from thumbnails to large photos.

    Args:
        image: uint8 (H, W, 3) RGB; not modified.
        masks: (N, H, W) bool (any dtype: non-zero is foreground).
        boxes: (N, 4) ``xyxy`` absolute pixels, x1/y1 exclusive.
        classes: N class names.
        scores: optional (N,) confidences shown next to the names.
        alpha: fill opacity in [0, 1].

    Returns:
        A new uint8 (H, W, 3) RGB image; a copy of ``image`` when there are no instances.

    Raises:
        ValueError: the shapes do not agree (the message names them) or ``alpha`` is outside
            [0, 1].
    """
    _check_image(image, "draw_instances")
    h, w = image.shape[:2]
    masks = np.asarray(masks)
    boxes = np.asarray(boxes, dtype=np.float64)
    n = len(classes)
    if n == 0 and masks.size == 0 and boxes.size == 0 and (scores is None or len(scores) == 0):
        return image.copy()
    if masks.shape != (n, h, w):
        raise ValueError(f"draw_instances: masks must be (N, H, W) = ({n}, {h}, {w}) for "
                         f"{n} classes and a {image.shape} image, got {masks.shape}")
    if boxes.shape != (n, 4):
        raise ValueError(f"draw_instances: boxes must be (N, 4) = ({n}, 4) for {n} classes, "
                         f"got {boxes.shape}")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (n,):
            raise ValueError(f"draw_instances: scores must be (N,) = ({n},) for {n} classes, "
                             f"got {scores.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"draw_instances: alpha must be in [0, 1], got {alpha}")

    colors = [class_color(c) for c in classes]
    # Blend in float so that overlapping masks mix instead of saturating.
    out = image.astype(np.float32)
    for m, color in zip(masks, colors, strict=True):
        sel = m != 0
        out[sel] = out[sel] * (1.0 - alpha) + np.array(color, dtype=np.float32) * alpha
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)

    size = max(h, w)
    thickness = max(1, round(size / 400))
    font_scale = float(np.clip(size / 800, 0.35, 2.5))
    font_thick = max(1, round(font_scale * 1.6))
    # Outlines and boxes first, labels last: a tag must never be hidden under another object.
    for m, color in zip(masks, colors, strict=True):
        contours, _ = cv2.findContours((m != 0).astype(np.uint8), cv2.RETR_CCOMP,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, color, thickness, lineType=cv2.LINE_8)
    boxes_px = _box_pixels(boxes, h, w)
    for (x0, y0, x1, y1), color in zip(boxes_px, colors, strict=True):
        if x1 >= x0 and y1 >= y0:
            cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness, lineType=cv2.LINE_8)
    for i, ((x0, y0, _, y1), color) in enumerate(zip(boxes_px, colors, strict=True)):
        text = classes[i] if scores is None else f"{classes[i]} {scores[i]:.2f}"
        _draw_tag(out, text, x0, y0, y1, color, font_scale, font_thick)
    return out


def _box_pixels(boxes: np.ndarray, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """Inclusive pixel corners of exclusive-end ``xyxy`` boxes, clipped to the image."""
    out = []
    for x0, y0, x1, y1 in boxes:
        px0 = int(np.clip(np.floor(x0), 0, w - 1))
        py0 = int(np.clip(np.floor(y0), 0, h - 1))
        px1 = int(np.clip(np.ceil(x1) - 1, 0, w - 1))
        py1 = int(np.clip(np.ceil(y1) - 1, 0, h - 1))
        out.append((px0, py0, px1, py1))
    return out


def _draw_tag(out: np.ndarray, text: str, x: int, y_top: int, y_bottom: int,
              color: tuple[int, int, int], scale: float, thick: int) -> None:
    """A filled label tag above the box corner (x, y_top), or inside the box when no room."""
    h, w = out.shape[:2]
    text = text.encode("ascii", "replace").decode()  # Hershey fonts have ASCII glyphs only
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    pad = max(1, round(th * 0.25))
    tag_w, tag_h = tw + 2 * pad, th + base + 2 * pad
    ty = y_top - tag_h if y_top - tag_h >= 0 else y_top
    tx = min(max(0, x), max(0, w - tag_w))
    ty = min(max(0, ty), max(0, h - tag_h))
    cv2.rectangle(out, (tx, ty), (tx + tag_w - 1, ty + tag_h - 1), color, cv2.FILLED)
    cv2.putText(out, text, (tx + pad, ty + pad + th), _FONT, scale, _text_color(color), thick,
                lineType=cv2.LINE_AA)


def _inner(thumb: int) -> int:
    """Side of the area a thumbnail may fill inside its cell: a margin separates neighbours."""
    return max(1, thumb - 2 * max(1, thumb // 64))


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """Scale ``image`` (h, w, 3) to fit a side x side square, preserving the aspect ratio."""
    h, w = image.shape[:2]
    s = min(side / w, side / h)
    nw, nh = max(1, min(side, round(w * s))), max(1, min(side, round(h * s)))
    if (nh, nw) == (h, w):
        return image
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (nw, nh), interpolation=interp)


def _fit_text(text: str, max_w: int, scale: float, thick: int) -> str:
    """``text`` shortened with a middle ellipsis until it fits ``max_w`` pixels."""
    text = text.encode("ascii", "replace").decode()
    if cv2.getTextSize(text, _FONT, scale, thick)[0][0] <= max_w:
        return text
    # Keep both ends: file names differ at the end (numbers) and are recognised by the start.
    for keep in range(len(text) - 1, 0, -1):
        short = text[: (keep + 1) // 2] + "..." + text[len(text) - keep // 2:]
        if cv2.getTextSize(short, _FONT, scale, thick)[0][0] <= max_w:
            return short
    return ""


def _wrap_text(text: str, max_w: int, scale: float, thick: int) -> list[str]:
    """``text`` broken at spaces into lines of at most ``max_w`` pixels (a word wider than
    that is shortened by ``_fit_text``)."""
    lines: list[str] = []
    for word in text.encode("ascii", "replace").decode().split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(joined, _FONT, scale, thick)[0][0] <= max_w:
            lines[-1] = joined
        else:
            lines.append(_fit_text(word, max_w, scale, thick))
    return lines


def _title_strip(title: str, width: int, scale: float, thick: int) -> np.ndarray:
    """A dark strip ``width`` pixels wide holding ``title``, wrapped, left-aligned."""
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
    pad = max(4, round(th * 0.6))
    line_h = th + base + pad // 2
    lines = _wrap_text(title, width - 2 * pad, scale, thick)
    strip = np.empty((len(lines) * line_h + 2 * pad - pad // 2, width, 3), dtype=np.uint8)
    strip[:] = _SHEET_BACKGROUND
    for k, line in enumerate(lines):
        cv2.putText(strip, line, (pad, pad + k * line_h + th), _FONT, scale, _CAPTION_COLOR,
                    thick, lineType=cv2.LINE_AA)
    return strip


def contact_sheet(images: Sequence[np.ndarray], *, columns: int = 4, thumb: int = 320,
                  captions: Sequence[str] | None = None,
                  title: str | None = None) -> np.ndarray:
    """Lay images out on a grid of thumbnails.

    Each image is scaled to fit its ``thumb`` x ``thumb`` cell (aspect ratio kept, a small
    margin left) on a dark background, centred, or bottom-aligned on a text strip added under
    every cell when ``captions`` are given. There are ``min(columns, len(images))`` columns
    and as many rows as needed; unused cells of the last row stay dark. A ``title`` is
    written above the grid, wrapped to its width.

    Args:
        images: uint8 (h, w, 3) RGB images of any sizes.
        columns: maximum number of columns (>= 1).
        thumb: cell side in pixels (>= 8).
        captions: one text per image, or None.
        title: a text for the whole sheet (what to know when reading it), or None.

    Returns:
        uint8 (title_h + rows * (thumb + caption_h), cols * thumb, 3) RGB, where
        ``caption_h`` is 0 without captions and ``title_h`` 0 without a title.

    Raises:
        ValueError: no images, a malformed image, captions of the wrong length, or a bad
            ``columns`` / ``thumb``.
    """
    if len(images) == 0:
        raise ValueError("contact_sheet: no images")
    if columns < 1:
        raise ValueError(f"contact_sheet: columns must be >= 1, got {columns}")
    if thumb < 8:
        raise ValueError(f"contact_sheet: thumb must be >= 8 pixels, got {thumb}")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"contact_sheet: {len(captions)} captions for {len(images)} images")
    for i, img in enumerate(images):
        _check_image(img, f"contact_sheet: images[{i}]")

    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    scale = float(np.clip(thumb / 640, 0.3, 1.5))
    thick = max(1, round(scale * 1.6))
    if captions is not None:
        (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
        cap_h = th + base + 2 * max(2, round(th * 0.4))
    else:
        cap_h = 0
    cell_h = thumb + cap_h
    sheet = np.empty((rows * cell_h, cols * thumb, 3), dtype=np.uint8)
    sheet[:] = _SHEET_BACKGROUND
    side = _inner(thumb)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        t = _fit(img, side)
        # With captions the thumbnail sits on its caption so that the two read as one.
        if captions is not None:
            y = r * cell_h + thumb - (thumb - side) // 2 - t.shape[0]
        else:
            y = r * cell_h + (thumb - t.shape[0]) // 2
        x = c * thumb + (thumb - t.shape[1]) // 2
        sheet[y:y + t.shape[0], x:x + t.shape[1]] = t
        if captions is not None:
            margin = thumb - side
            text = _fit_text(str(captions[i]), thumb - 2 * margin, scale, thick)
            (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
            tx = c * thumb + (thumb - tw) // 2
            ty = r * cell_h + thumb + (cap_h + th - base) // 2
            cv2.putText(sheet, text, (tx, ty), _FONT, scale, _CAPTION_COLOR, thick,
                        lineType=cv2.LINE_AA)
    if title:
        sheet = np.concatenate([_title_strip(title, sheet.shape[1], scale, thick), sheet])
    return sheet


def _predicted(data, predictions: str | os.PathLike | None,
               min_score: float) -> dict | None:
    """Image id -> the predicted ``Instances`` to draw, or None to draw the annotations."""
    if predictions is None:
        return None
    from weakpaste.io.results import read_predictions, results_instances

    results, notes = read_predictions(predictions, data)
    for note in notes:
        print(f"weakpaste: note: {note}", file=sys.stderr)
    return results_instances(results, data, min_score=min_score, source=predictions)


def _pick(n_records: int, num_images: int, seed: int | None) -> list[int]:
    """Indices of the records to draw, in file order."""
    k = min(num_images, n_records)
    if seed is None:
        return list(range(k))
    rng = np.random.default_rng(seed)  # own generator: never touch the global RNG
    return sorted(int(i) for i in rng.choice(n_records, size=k, replace=False))


@dataclass(frozen=True)
class VizConfig(Config):
    """Settings of ``viz``."""

    num_images: int = option(16, range=(1, None), help="images to draw")
    columns: int = option(4, range=(1, None), help="columns of the contact sheet")
    seed: int | None = option(0, range=(0, None), parse=parse_int_or_none, metavar="N|none",
                              help="seed of the random choice of images; none: the first ones")
    title: str | None = option(None, metavar="TEXT",
                               help="a line written above the contact sheet (what a reader "
                                    "should know about the masks)")
    min_score: float = option(0.5, range=(0.0, 1.0),
                              help="with --predictions: the lowest score drawn")


@dataclass(frozen=True)
class VizInputs(StageInputs):
    """The inputs of ``viz``.

    Attributes:
        coco_json: COCO instances JSON (validated, masks required).
        images: folder the JSON's ``file_name`` entries are relative to.
        predictions: a COCO results file of detections on ``coco_json``'s images (e.g.
            ``weakpaste eval``'s ``predictions.json``): its masks scoring at least
            ``VizConfig.min_score`` are drawn, with their scores, instead of the annotations.
    """

    coco_json: str | os.PathLike = option(
        positional=True, help="COCO or LVIS instances JSON with masks (polygons or RLE)")
    images: str | os.PathLike = option(help="folder of the images")
    predictions: str | os.PathLike | None = option(
        None, metavar="RESULTS_JSON",
        help="draw these detections on the images of coco_json instead of its annotations "
             "(COCO results format, e.g. 'weakpaste eval' OUT/predictions.json)")


def run_viz(config: VizConfig | None, inputs: VizInputs, run: RunOptions) -> dict:
    """Draw a sample of a COCO set, or of a detector's predictions on it, and a contact sheet.

    Writes ``OUT/images/<stem>.png`` per drawn image (``<stem>_<image id>`` when two files
    share a stem), ``OUT/contact_sheet.png`` and ``OUT/manifest.json``.

    Args:
        config: how many images to draw (fewer when the set is smaller), the seed of their
            random choice (None takes the first ones), the contact sheet's columns and
            its title (``VizConfig()`` when None).
        inputs: the COCO file, its images and optionally predictions on them.
        run: the output folder (must be empty or absent unless ``overwrite``) and ``quiet``.

    Returns:
        The manifest written to ``OUT/manifest.json`` (stage "viz").

    Raises:
        WeakpasteError: invalid input file or options, a non-empty output folder without
            ``overwrite``, or an image whose size differs from the JSON's width/height.
    """
    from weakpaste.core.manifest import file_sha256
    from weakpaste.io.coco import load_coco
    from weakpaste.io.images import write_image

    cfg = config or VizConfig()
    coco_json, predictions = inputs.coco_json, inputs.predictions
    with StageRun("viz", run, inputs=inputs.paths(), resumable=False) as stage:
        data = load_coco(coco_json, inputs.images, images_flag=flag_of(VizInputs, "images"))
        if not data.records:
            raise WeakpasteError(f"{coco_json}: no images to draw; its 'images' list is empty")
        picked = _pick(len(data.records), cfg.num_images, cfg.seed)
        drawn_sets = _predicted(data, predictions, cfg.min_score)
        manifest = {"coco_json": str(coco_json), "images_dir": str(inputs.images),
                    "num_images": cfg.num_images, "seed": cfg.seed, "columns": cfg.columns}
        if cfg.title:
            manifest["title"] = cfg.title
        hashes = {"coco_json": file_sha256(coco_json)}
        if predictions is not None:
            manifest.update(predictions=str(predictions), min_score=cfg.min_score)
            hashes["predictions"] = file_sha256(predictions)
        out = stage.start(manifest, seed=cfg.seed, inputs=hashes)
        (out / "images").mkdir(exist_ok=True)
        thumbs, captions, n_instances = _draw(data, picked, drawn_sets, inputs, cfg, out,
                                              progress=run.progress)
        write_image(out / "contact_sheet.png",
                    contact_sheet(thumbs, columns=cfg.columns, thumb=THUMB, captions=captions,
                                  title=cfg.title))
        return stage.finish({"images": len(picked), "instances": n_instances})


THUMB = 320  # contact-sheet cell, pixels


def _draw(data, picked: list[int], drawn_sets: dict | None, inputs: VizInputs, cfg: VizConfig,
          out: Path, *, progress: bool) -> tuple[list[np.ndarray], list[str], int]:
    """Draw the picked images into ``out/images``; returns their thumbnails, captions and
    the number of instances drawn."""
    from tqdm import tqdm

    from weakpaste.io.images import read_image_of_size, write_image

    thumbs, captions, used = [], [], set()
    n_instances = 0
    for idx in tqdm(picked, desc="viz", unit="img", disable=not progress):
        rec = data.records[idx]
        path = Path(inputs.images) / rec.file_name
        rgb = read_image_of_size(path, rec.width, rec.height, str(inputs.coco_json))
        inst = rec.instances if drawn_sets is None else drawn_sets.get(rec.image_id)
        if inst is None or len(inst) == 0:
            drawn, k = rgb, 0
        else:
            drawn = draw_instances(rgb, inst.masks(), inst.boxes, inst.classes,
                                   scores=inst.scores)
            k = len(inst)
        n_instances += k
        stem = Path(rec.file_name).stem
        if stem in used:
            stem = f"{stem}_{rec.image_id}"
        used.add(stem)
        write_image(out / "images" / f"{stem}.png", drawn)
        # Keep only thumbnails: a large sample of big photos would not fit in memory.
        thumbs.append(_fit(drawn, _inner(THUMB)))
        captions.append(f"{rec.file_name}, {k} inst." if drawn_sets is None else
                        f"{rec.file_name}, {k} pred. >= {cfg.min_score:g}")
    return thumbs, captions, n_instances


__all__ = ["class_color", "draw_instances", "contact_sheet", "VizInputs", "run_viz"]
