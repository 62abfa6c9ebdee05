"""Reading a COCO or LVIS instances JSON entry by entry, each entry checked before use.

The checks behind :func:`weakpaste.io.coco.load_coco`: the document's shape, categories,
images, boxes, polygons and RLEs (every compressed RLE is decoded by ``weakpaste.io.rle``
before pycocotools sees it). Each failure is a one-line :class:`WeakpasteError` naming the
file, the entry and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from weakpaste.core.errors import WeakpasteError, reason
from weakpaste.core.jsonfile import JsonError, is_id, parse_json
from weakpaste.io import lvis
from weakpaste.io import rle as rle_check

# A pixel of slack: COCO boxes from polygons can reach the far image edge plus rounding.
_BOX_TOLERANCE = 1.5


def fail(path: Path, msg: str) -> WeakpasteError:
    """The error for ``msg`` about the file ``path``."""
    return WeakpasteError(f"{path}: {msg}")


_NUMBER_TYPES = {int, float}


def check_polygons(seg: list, height: int, width: int) -> list[list[float]]:
    """The usable polygons of a COCO polygon list (at least 3 points each).

    Raises:
        ValueError: a polygon is not a flat list of finite numbers, has an odd number of
            coordinates, or reaches far outside the image (pycocotools would allocate a
            raster the size of the distance).
    """
    polys = []
    for k, poly in enumerate(seg):
        # Exact types first (JSON gives int and float): a tenth of the time of the
        # per-coordinate loop, which then only judges other types (numpy floats, bool, str).
        if not isinstance(poly, list) or not (
                {*map(type, poly)} <= _NUMBER_TYPES
                or all(isinstance(v, int | float) and not isinstance(v, bool) for v in poly)):
            raise ValueError(f"polygon {k} is not a list of numbers")
        if len(poly) % 2:
            raise ValueError(f"polygon {k} has an odd number of coordinates ({len(poly)})")
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():
            raise ValueError(f"polygon {k} holds a NaN or infinite coordinate")
        if (np.abs(xy - [width / 2, height / 2]) > [width, height]).any():
            raise ValueError(f"polygon {k} reaches far outside the {width}x{height} image")
        if len(poly) >= 6:
            polys.append(poly)
    return polys


def segmentation_to_rle(seg: object, height: int, width: int) -> dict | None:
    """A COCO ``segmentation`` as one compressed RLE, or None when it holds no usable shape.

    Polygons and uncompressed RLE are checked here; a compressed ``counts`` string is only
    type-checked: ``_check_rles`` decodes all of a file's strings at once before any of them
    reaches pycocotools.

    Raises:
        ValueError: a malformed polygon or RLE (the reason, for the caller's message).
    """
    if isinstance(seg, list):
        polys = check_polygons(seg, height, width)
        if not polys:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size, counts = seg["size"], seg["counts"]
        if not (isinstance(size, list | tuple) and len(size) == 2):
            raise ValueError(f"RLE size {size!r} is not [height, width]")
        if list(size) != [height, width]:
            raise ValueError(f"RLE size {list(size)} differs from the image's "
                             f"[{height}, {width}]")
        if isinstance(counts, list):
            problem = rle_check.bad_uncompressed(counts, height, width)
            if problem:
                raise ValueError(problem)
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts},
                                         height, width)
        elif isinstance(counts, str | bytes):
            rle = {"size": [height, width], "counts": counts}
        else:
            raise ValueError(f"RLE counts must be a string or a list of run lengths, got "
                             f"{type(counts).__name__} {counts!r}"[:120])
    else:
        return None
    counts = rle["counts"]
    return {"size": [height, width],
            "counts": counts.decode() if isinstance(counts, bytes) else counts}


def _is_compressed(seg: object) -> bool:
    """Whether a ``segmentation`` is a compressed RLE (a ``counts`` string) as read."""
    return isinstance(seg, dict) and isinstance(seg.get("counts"), str | bytes)


def _check_rles(path: Path, found: list[tuple[str, dict]]) -> None:
    """Decode every compressed RLE of a file at once; fail on the first corrupt one.

    Args:
        path: the file, for the message.
        found: (where, RLE) pairs of the RLEs the file holds as compressed strings (those
            pycocotools made from polygons and run lists are valid by construction).

    Raises:
        WeakpasteError: naming the first annotation whose RLE does not decode into H*W pixels.
    """
    bad = rle_check.first_bad_compressed([r["counts"] for _, r in found],
                                         [tuple(r["size"]) for _, r in found])
    if bad is not None:
        where, why = found[bad[0]][0], bad[1]
        raise fail(path, f"{where} has a corrupt RLE segmentation ({why}); fix or remove the "
                          "annotation")


NO_FILE = "no such file; pass the path of a COCO instances JSON"


def read_json(path: Path) -> dict:
    """The parsed COCO document, checked to hold 'images' and 'categories' lists."""
    try:
        # utf-8-sig: a byte-order mark (files saved by Windows tools) is accepted.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise fail(path, NO_FILE) from None
    except (OSError, UnicodeDecodeError) as err:
        raise fail(path, f"cannot read the file ({reason(err)}); pass a readable UTF-8 COCO "
                          "JSON") from None
    try:
        data = parse_json(text)
    except JsonError as err:
        raise fail(path, f"not valid JSON ({err}); repair or regenerate the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise fail(path, "not a COCO instances file; it needs 'images' and 'categories' lists "
                          "(and 'annotations')")
    if not isinstance(data.get("annotations", []), list):
        raise fail(path, "'annotations' is not a list")
    return data


def parse_categories(path: Path, cats: list) -> tuple[dict[str, dict], dict[int, str]]:
    """(name -> {"id", "supercategory", LVIS fields}, id -> name), checked for unique ids and
    names and valid LVIS fields."""
    categories: dict[str, dict] = {}
    cat_by_id: dict[int, str] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not is_id(cat.get("id")) or \
                not isinstance(cat.get("name"), str):
            raise fail(path, f"categories[{i}] needs an integer 'id' and a string 'name'")
        if not cat["name"].strip():
            raise fail(path, f"categories[{i}] (id {cat['id']}) has an empty 'name'; weakpaste "
                              "identifies classes by name: give it one")
        if cat["id"] in cat_by_id:
            raise fail(path, f"duplicate category id {cat['id']} (categories[{i}]); "
                              "ids must be unique")
        if cat["name"] in categories:
            raise fail(path, f"duplicate category name {cat['name']!r} (categories[{i}]); "
                              "weakpaste identifies classes by name")
        cat_by_id[cat["id"]] = cat["name"]
        categories[cat["name"]] = {"id": cat["id"],
                                   "supercategory": str(cat.get("supercategory", "")),
                                   **lvis.category_fields(path, i, cat)}
    lvis.check_frequencies(path, categories)
    return categories, cat_by_id


def parse_images(path: Path, entries: list) -> dict[int, dict]:
    """id -> image entry, checked for ids, sizes and file names (``file_name``, else LVIS's
    ``coco_url`` basename, set as ``file_name`` in a copy of the entry)."""
    images: dict[int, dict] = {}
    for i, img in enumerate(entries):
        if not isinstance(img, dict):
            raise fail(path, f"images[{i}] is not an object")
        img_id = img.get("id")
        if not is_id(img_id):
            raise fail(path, f"images[{i}] has id {img_id!r}; image ids must be integers")
        if img_id in images:
            raise fail(path, f"duplicate image id {img_id} (images[{i}]); ids must be unique")
        w, h = img.get("width"), img.get("height")
        if not (is_id(w) and is_id(h) and w > 0 and h > 0):
            raise fail(path, f"images[{i}] (id {img_id}) needs positive integer 'width' and "
                              f"'height', got {w!r} x {h!r}")
        name = lvis.image_file_name(img)
        if name is None:
            raise fail(path, f"images[{i}] (id {img_id}) has no 'file_name' (nor an LVIS "
                              "'coco_url'); give each image the path of its file")
        images[img_id] = img if name == img.get("file_name") else {**img, "file_name": name}
    return images


def _check_bbox(path: Path, where: str, bbox: object, img: dict) -> None:
    if bbox is None:
        return
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)):
        raise fail(path, f"{where} has a malformed bbox {bbox!r}; expected [x, y, w, h]")
    if not all(math.isfinite(v) for v in bbox):
        raise fail(path, f"{where} has bbox {bbox} with a NaN or infinite value; fix or "
                          "remove the annotation")
    x, y, bw, bh = bbox
    w, h = img["width"], img["height"]
    if bw < 0 or bh < 0 or x < -_BOX_TOLERANCE or y < -_BOX_TOLERANCE or \
            x + bw > w + _BOX_TOLERANCE or y + bh > h + _BOX_TOLERANCE:
        raise fail(path, f"{where} has bbox {bbox} outside its {w}x{h} image "
                          f"{img['file_name']!r}; fix the annotation or the image size")


def _annotation_target(path: Path, i: int, ann: object, images: dict[int, dict],
                       cat_by_id: dict[int, str], seen: set[int]) -> tuple[str, dict, str]:
    """(where, image entry, class name) of annotation ``i``, its id, image, class and box
    checked."""
    if not isinstance(ann, dict):
        raise fail(path, f"annotations[{i}] is not an object")
    ann_id = ann.get("id")
    where = f"annotations[{i}] (id {ann_id})"
    if not is_id(ann_id):
        raise fail(path, f"annotations[{i}] has id {ann_id!r}; annotation ids must be "
                          "integers")
    if ann_id in seen:
        raise fail(path, f"duplicate annotation id {ann_id} (annotations[{i}]); ids must "
                          "be unique")
    seen.add(ann_id)
    img = images.get(ann.get("image_id")) if is_id(ann.get("image_id")) else None
    if img is None:
        raise fail(path, f"{where} refers to image id {ann.get('image_id')!r}, which is "
                          "not in 'images'")
    name = cat_by_id.get(ann.get("category_id")) if is_id(ann.get("category_id")) else None
    if name is None:
        raise fail(path, f"{where} has category id {ann.get('category_id')!r}, which is "
                          "not in 'categories'")
    _check_bbox(path, where, ann.get("bbox"), img)
    return where, img, name


def parse_annotations(path: Path, anns: list, images: dict[int, dict],
                       cat_by_id: dict[int, str], require_masks: bool
                       ) -> tuple[dict[int, list[tuple[str, dict]]], dict[int, set[str]], int]:
    """Checked annotations: (image id -> [(class, RLE)], image id -> labels, crowd count).

    Crowd regions are validated (COCOeval reads them) but are not instances.
    """
    per_image: dict[int, list[tuple[str, dict]]] = {k: [] for k in images}
    labels: dict[int, set[str]] = {k: set() for k in images}
    seen: set[int] = set()
    found: list[tuple[str, dict]] = []
    crowd = 0
    for i, ann in enumerate(anns):
        where, img, name = _annotation_target(path, i, ann, images, cat_by_id, seen)
        labels[img["id"]].add(name)
        try:
            rle = segmentation_to_rle(ann.get("segmentation"), img["height"], img["width"])
        except (ValueError, TypeError) as err:
            raise fail(path, f"{where} has a malformed segmentation ({err}); fix or remove "
                              "the annotation") from None
        if rle is not None and _is_compressed(ann.get("segmentation")):
            found.append((where, rle))  # pycocotools made the others: valid by construction
        if ann.get("iscrowd", 0):
            crowd += 1
        elif rle is not None:
            per_image[img["id"]].append((name, rle))
        elif require_masks:
            raise fail(path, f"{where} has no usable 'segmentation'; weakpaste needs "
                              "instance masks as polygons or RLE")
    _check_rles(path, found)
    return per_image, labels, crowd

