"""COCO and LVIS instance files: the only module that knows COCO's and LVIS's quirks.

Quirks handled here and nowhere else: ``bbox`` is xywh, masks are polygons or RLE (compressed
``counts`` string or uncompressed list), ``counts`` may be bytes, ``iscrowd`` regions are not
instances, category ids are arbitrary integers (classes are names inside weakpaste). LVIS v1
files (federated labels, ``coco_url`` instead of ``file_name``, category frequencies) are read
and written here too, with the helpers of ``weakpaste.io.lvis``, which nothing else imports.

Nothing from a file reaches pycocotools unchecked: it trusts its input and a corrupt RLE
makes it crash, read garbage or loop for minutes (``weakpaste.io.rle``).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from weakpaste.core.errors import WeakpasteError, reason
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.jsonfile import JsonError, parse_json
from weakpaste.io import lvis
from weakpaste.io import rle as rle_check
from weakpaste.io.lvis import Federated, frequency_bucket
from weakpaste.io.lvis import complete_categories as complete_lvis_categories
from weakpaste.structures import ImageRecord, Instances

# A pixel of slack: COCO boxes from polygons can reach the far image edge plus rounding.
_BOX_TOLERANCE = 1.5


@dataclass
class CocoDataset:
    """A COCO (or LVIS) instance data set read into core types.

    Attributes:
        records: one per image, in file order.
        categories: class name -> {"id": int, "supercategory": str}, in file order, plus the
            LVIS fields the file gives (``frequency``, ``image_count``, ``instance_count``,
            ``synset``, ``synonyms``, ``def``).
        path: the JSON file it was read from (None when built in memory).
        images_dir: folder the records' ``file_name`` are relative to.
        crowd_skipped: number of ``iscrowd=1`` regions left out of the instances.
        federated: for an LVIS file, image id -> its negative and not-exhaustive classes;
            None for a COCO file (every class exhaustively annotated).
    """

    records: list[ImageRecord]
    categories: dict[str, dict] = field(default_factory=dict)
    path: Path | None = None
    images_dir: Path | None = None
    crowd_skipped: int = 0
    federated: dict[int, Federated] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.categories)

    @property
    def format(self) -> str:
        """"lvis" for a file with federated labels, else "coco"."""
        return "coco" if self.federated is None else "lvis"

    @property
    def frequency(self) -> dict[str, str] | None:
        """Class name -> the file's LVIS ``frequency`` ("r"/"c"/"f"), or None without one."""
        if not self.categories or any("frequency" not in c for c in self.categories.values()):
            return None
        return {n: c["frequency"] for n, c in self.categories.items()}


def _fail(path: Path, msg: str) -> WeakpasteError:
    return WeakpasteError(f"{path}: {msg}")


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_NUMBER_TYPES = {int, float}


def _check_polygons(seg: list, height: int, width: int) -> list[list[float]]:
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


def _segmentation_to_rle(seg: object, height: int, width: int) -> dict | None:
    """A COCO ``segmentation`` as one compressed RLE, or None when it holds no usable shape.

    Polygons and uncompressed RLE are checked here; a compressed ``counts`` string is only
    type-checked: ``_check_rles`` decodes all of a file's strings at once before any of them
    reaches pycocotools.

    Raises:
        ValueError: a malformed polygon or RLE (the reason, for the caller's message).
    """
    if isinstance(seg, list):
        polys = _check_polygons(seg, height, width)
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
        raise _fail(path, f"{where} has a corrupt RLE segmentation ({why}); fix or remove the "
                          "annotation")


_NO_FILE = "no such file; pass the path of a COCO instances JSON"


def _read_json(path: Path) -> dict:
    """The parsed COCO document, checked to hold 'images' and 'categories' lists."""
    try:
        # utf-8-sig: a byte-order mark (files saved by Windows tools) is accepted.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise _fail(path, _NO_FILE) from None
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(path, f"cannot read the file ({reason(err)}); pass a readable UTF-8 COCO "
                          "JSON") from None
    try:
        data = parse_json(text)
    except JsonError as err:
        raise _fail(path, f"not valid JSON ({err}); repair or regenerate the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise _fail(path, "not a COCO instances file; it needs 'images' and 'categories' lists "
                          "(and 'annotations')")
    if not isinstance(data.get("annotations", []), list):
        raise _fail(path, "'annotations' is not a list")
    return data


def _parse_categories(path: Path, cats: list) -> tuple[dict[str, dict], dict[int, str]]:
    """(name -> {"id", "supercategory", LVIS fields}, id -> name), checked for unique ids and
    names and valid LVIS fields."""
    categories: dict[str, dict] = {}
    cat_by_id: dict[int, str] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or \
                not isinstance(cat.get("name"), str):
            raise _fail(path, f"categories[{i}] needs an integer 'id' and a string 'name'")
        if not cat["name"].strip():
            raise _fail(path, f"categories[{i}] (id {cat['id']}) has an empty 'name'; weakpaste "
                              "identifies classes by name: give it one")
        if cat["id"] in cat_by_id:
            raise _fail(path, f"duplicate category id {cat['id']} (categories[{i}]); "
                              "ids must be unique")
        if cat["name"] in categories:
            raise _fail(path, f"duplicate category name {cat['name']!r} (categories[{i}]); "
                              "weakpaste identifies classes by name")
        cat_by_id[cat["id"]] = cat["name"]
        categories[cat["name"]] = {"id": cat["id"],
                                   "supercategory": str(cat.get("supercategory", "")),
                                   **lvis.category_fields(path, i, cat)}
    lvis.check_frequencies(path, categories)
    return categories, cat_by_id


def _parse_images(path: Path, entries: list) -> dict[int, dict]:
    """id -> image entry, checked for ids, sizes and file names (``file_name``, else LVIS's
    ``coco_url`` basename, set as ``file_name`` in a copy of the entry)."""
    images: dict[int, dict] = {}
    for i, img in enumerate(entries):
        if not isinstance(img, dict):
            raise _fail(path, f"images[{i}] is not an object")
        img_id = img.get("id")
        if not _is_id(img_id):
            raise _fail(path, f"images[{i}] has id {img_id!r}; image ids must be integers")
        if img_id in images:
            raise _fail(path, f"duplicate image id {img_id} (images[{i}]); ids must be unique")
        w, h = img.get("width"), img.get("height")
        if not (_is_id(w) and _is_id(h) and w > 0 and h > 0):
            raise _fail(path, f"images[{i}] (id {img_id}) needs positive integer 'width' and "
                              f"'height', got {w!r} x {h!r}")
        name = lvis.image_file_name(img)
        if name is None:
            raise _fail(path, f"images[{i}] (id {img_id}) has no 'file_name' (nor an LVIS "
                              "'coco_url'); give each image the path of its file")
        images[img_id] = img if name == img.get("file_name") else {**img, "file_name": name}
    return images


def _check_bbox(path: Path, where: str, bbox: object, img: dict) -> None:
    if bbox is None:
        return
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)):
        raise _fail(path, f"{where} has a malformed bbox {bbox!r}; expected [x, y, w, h]")
    if not all(math.isfinite(v) for v in bbox):
        raise _fail(path, f"{where} has bbox {bbox} with a NaN or infinite value; fix or "
                          "remove the annotation")
    x, y, bw, bh = bbox
    w, h = img["width"], img["height"]
    if bw < 0 or bh < 0 or x < -_BOX_TOLERANCE or y < -_BOX_TOLERANCE or \
            x + bw > w + _BOX_TOLERANCE or y + bh > h + _BOX_TOLERANCE:
        raise _fail(path, f"{where} has bbox {bbox} outside its {w}x{h} image "
                          f"{img['file_name']!r}; fix the annotation or the image size")


def _annotation_target(path: Path, i: int, ann: object, images: dict[int, dict],
                       cat_by_id: dict[int, str], seen: set[int]) -> tuple[str, dict, str]:
    """(where, image entry, class name) of annotation ``i``, its id, image, class and box
    checked."""
    if not isinstance(ann, dict):
        raise _fail(path, f"annotations[{i}] is not an object")
    ann_id = ann.get("id")
    where = f"annotations[{i}] (id {ann_id})"
    if not _is_id(ann_id):
        raise _fail(path, f"annotations[{i}] has id {ann_id!r}; annotation ids must be "
                          "integers")
    if ann_id in seen:
        raise _fail(path, f"duplicate annotation id {ann_id} (annotations[{i}]); ids must "
                          "be unique")
    seen.add(ann_id)
    img = images.get(ann.get("image_id")) if _is_id(ann.get("image_id")) else None
    if img is None:
        raise _fail(path, f"{where} refers to image id {ann.get('image_id')!r}, which is "
                          "not in 'images'")
    name = cat_by_id.get(ann.get("category_id")) if _is_id(ann.get("category_id")) else None
    if name is None:
        raise _fail(path, f"{where} has category id {ann.get('category_id')!r}, which is "
                          "not in 'categories'")
    _check_bbox(path, where, ann.get("bbox"), img)
    return where, img, name


def _parse_annotations(path: Path, anns: list, images: dict[int, dict],
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
            rle = _segmentation_to_rle(ann.get("segmentation"), img["height"], img["width"])
        except (ValueError, TypeError) as err:
            raise _fail(path, f"{where} has a malformed segmentation ({err}); fix or remove "
                              "the annotation") from None
        if rle is not None and _is_compressed(ann.get("segmentation")):
            found.append((where, rle))  # pycocotools made the others: valid by construction
        if ann.get("iscrowd", 0):
            crowd += 1
        elif rle is not None:
            per_image[img["id"]].append((name, rle))
        elif require_masks:
            raise _fail(path, f"{where} has no usable 'segmentation'; weakpaste needs "
                              "instance masks as polygons or RLE")
    _check_rles(path, found)
    return per_image, labels, crowd


def check_present(path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> None:
    """Refuse a COCO file or images folder that does not exist, without reading either.

    ``load_coco`` raises the same errors; a stage calls this first to refuse a typo before
    a costly start-up (a Ray cluster).
    """
    if not Path(path).exists():
        raise _fail(Path(path), _NO_FILE)
    if images_dir is not None:
        _check_images_folder(Path(path), Path(images_dir))


def _check_images_folder(path: Path, images_path: Path) -> None:
    if not images_path.is_dir():
        raise WeakpasteError(f"{images_path}: images folder not found; pass the folder "
                             f"that holds the images of {path.name} with --images")


def _check_image_files(path: Path, images_path: Path, records: list[ImageRecord]) -> None:
    _check_images_folder(path, images_path)
    missing = [r.file_name for r in records if not (images_path / r.file_name).is_file()]
    if missing:
        raise _fail(path, f"{len(missing)} of {len(records)} image files are missing under "
                          f"{images_path} (first: {missing[0]!r}); pass the folder that "
                          "holds them with --images")


def load_coco(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
              require_masks: bool = True, check_files: bool = True) -> CocoDataset:
    """Read and validate a COCO or LVIS v1 instances JSON.

    Every mask is checked before pycocotools sees it: polygons (even length, finite, near the
    image), RLE sizes and counts (decoding to exactly H*W pixels), boxes (finite, inside the
    image). An LVIS file's federated lists must name known categories, and no class may be
    both annotated in an image and listed as verified absent from it (``weakpaste.io.lvis``).

    Args:
        path: the JSON file (UTF-8, a byte-order mark is accepted).
        images_dir: folder holding the images; when given with ``check_files``, every image
            file must exist.
        require_masks: annotations must carry a polygon or RLE ``segmentation``. When False
            (image-level labels only) annotations without one still give labels.
        check_files: check that image files exist under ``images_dir``.

    Returns:
        The data set. An image's ``labels`` are the classes annotated in it; its
        ``instances`` are None when the file has no ``annotations`` list at all; ``federated``
        holds an LVIS file's per-image negative and not-exhaustive classes.

    Raises:
        WeakpasteError: a one-line message naming the file, the offending entry and the fix.
    """
    path = Path(path)
    data = _read_json(path)
    categories, cat_by_id = _parse_categories(path, data["categories"])
    images = _parse_images(path, data["images"])
    per_image, labels, crowd = _parse_annotations(path, data.get("annotations", []), images,
                                                  cat_by_id, require_masks)
    federated = (lvis.parse_federated(path, data["images"], cat_by_id, labels)
                 if lvis.is_lvis(data) else None)
    records = []
    for img_id, img in images.items():
        inst = None
        if "annotations" in data:
            items = per_image[img_id]
            inst = Instances.from_rles(img["height"], img["width"], [n for n, _ in items],
                                       [r for _, r in items])
        records.append(ImageRecord(image_id=img_id, file_name=img["file_name"],
                                   width=img["width"], height=img["height"],
                                   labels=tuple(sorted(labels[img_id])), instances=inst))
    images_path = Path(images_dir) if images_dir is not None else None
    if images_path is not None and check_files:
        _check_image_files(path, images_path, records)
    return CocoDataset(records=records, categories=categories, path=path,
                       images_dir=images_path, crowd_skipped=crowd, federated=federated)


def _bytes_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def assign_category_ids(names: Iterable[str],
                        keep: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """Category table for writing: names in ``keep`` keep their id; new names get new ids.

    Args:
        names: all class names to write, in order.
        keep: an existing table (name -> {"id", "supercategory"}), e.g. a background set's.

    Returns:
        name -> {"id": int >= 1, "supercategory": str}, ordered by id.
    """
    keep = dict(keep or {})
    table = {n: dict(keep[n]) for n in keep}
    next_id = max([c["id"] for c in table.values()] + [0]) + 1
    for name in names:
        if name not in table:
            table[name] = {"id": next_id, "supercategory": ""}
            next_id += 1
    return dict(sorted(table.items(), key=lambda kv: kv[1]["id"]))


def image_entry(record: ImageRecord) -> dict:
    """The COCO ``images`` entry of a record."""
    if not _is_id(record.image_id) or record.image_id < 1:
        raise ValueError(f"image id {record.image_id!r} of {record.file_name!r} must be an "
                         "integer >= 1")
    return {"id": record.image_id, "file_name": record.file_name,
            "width": record.width, "height": record.height}


MaskStats = tuple[list[int], list[list[float]]]


def annotation_entries(record: ImageRecord, categories: Mapping[str, dict],
                       first_id: int, stats: MaskStats | None = None) -> list[dict]:
    """COCO ``annotations`` of a record's instances, with ids from ``first_id`` on.

    ``area`` and ``bbox`` come from the (visible) mask, ``iscrowd`` is 0 even for masks with
    holes or several parts, and ``counts`` is a str. ``stats``: the masks' ``mask_stats``
    when already known (computed here otherwise).

    Raises:
        ValueError: an instance has an empty mask or a class missing from ``categories``.
    """
    inst = record.instances
    if inst is None:
        return []
    return annotations_from_rles(record, inst.classes, inst.rles, categories, first_id,
                                 scores=inst.scores, stats=stats)


def mask_stats(rles: Sequence[dict]) -> MaskStats:
    """(pixel areas, COCO ``[x, y, w, h]`` boxes) of compressed RLE masks, as written in an
    annotation; one pycocotools call each for all the masks (half the time of one per mask)."""
    if not rles:
        return [], []
    brles = [_bytes_rle(r) for r in rles]
    # pycocotools 2.0.11's area() fails on 256 or more masks in one call (it sizes its output
    # with a uint8 array): at most 255 at a time.
    areas = [int(a) for i in range(0, len(brles), 255) for a in mask_utils.area(brles[i:i + 255])]
    return areas, [[float(v) for v in box] for box in mask_utils.toBbox(brles)]


def annotations_from_rles(record: ImageRecord, classes: Sequence[str], rles: Sequence[dict],
                          categories: Mapping[str, dict], first_id: int, *,
                          scores: np.ndarray | None = None,
                          stats: MaskStats | None = None) -> list[dict]:
    """COCO ``annotations`` for masks of ``record``'s image given as RLEs; see
    ``annotation_entries``."""
    if first_id < 1:
        raise ValueError(f"annotation ids start at 1, got {first_id}")
    areas, boxes = mask_stats(rles) if stats is None else stats
    if len(areas) != len(rles) or len(boxes) != len(rles):
        raise ValueError(f"{len(rles)} masks of image {record.file_name!r} but stats for "
                         f"{len(areas)}")
    out = []
    for k, (name, rle) in enumerate(zip(classes, rles, strict=True)):
        if name not in categories:
            raise ValueError(f"class {name!r} of image {record.file_name!r} is not in the "
                             "category table")
        if areas[k] == 0:
            raise ValueError(f"instance {k} ({name!r}) of image {record.file_name!r} has an "
                             "empty mask")
        entry = {"id": first_id + k, "image_id": record.image_id,
                 "category_id": categories[name]["id"],
                 "segmentation": {"size": [record.height, record.width],
                                  "counts": rle["counts"] if isinstance(rle["counts"], str)
                                  else rle["counts"].decode()},
                 "area": areas[k], "bbox": boxes[k], "iscrowd": 0}
        if scores is not None:
            entry["score"] = float(scores[k])
        out.append(entry)
    return out


def coco_categories(categories: Mapping[str, dict]) -> list[dict]:
    return [{"id": c["id"], "name": n, "supercategory": c.get("supercategory", "")}
            for n, c in categories.items()]


def write_coco(path: str | os.PathLike, records: Iterable[ImageRecord],
               categories: Mapping[str, dict] | Iterable[str], *,
               info: dict | None = None,
               federated: Mapping[int, Federated] | None = None,
               stats: Mapping[int, MaskStats] | None = None) -> dict:
    """Atomically write records as a COCO instances JSON, or an LVIS one.

    Args:
        path: output file (replaced atomically: never left half-written).
        records: images with their instances (image ids >= 1).
        categories: a table from ``assign_category_ids`` or just class names (ids 1..K).
        info: optional COCO ``info`` block.
        federated: image id -> federated labels: writes an LVIS file (every image gets
            ``neg_category_ids`` and ``not_exhaustive_category_ids``, empty when the image is
            not in the mapping; categories keep their LVIS fields, which
            ``weakpaste.io.lvis.complete_categories`` can fill in). ``file_name`` is written,
            which LVIS readers accept in place of ``coco_url``.
        stats: image id -> the ``mask_stats`` of its instances, where already known (the
            paste workers compute them, so that the writer's serial work stays small).

    Returns:
        Counts: {"images": int, "annotations": int}.
    """
    if not isinstance(categories, Mapping):
        categories = assign_category_ids(categories)
    images, annotations = [], []
    for rec in records:
        images.append(image_entry(rec))
        if federated is not None:
            images[-1].update(lvis.image_fields(federated.get(rec.image_id, Federated()),
                                                categories))
        annotations.extend(annotation_entries(rec, categories, len(annotations) + 1,
                                              (stats or {}).get(rec.image_id)))
    doc = {"info": info or {}, "images": images, "annotations": annotations,
           "categories": (coco_categories(categories) if federated is None
                          else lvis.category_entries(categories))}
    atomic_write_bytes(path, json.dumps(doc, separators=(",", ":")).encode())
    return {"images": len(images), "annotations": len(annotations)}

def _read_document(path: Path) -> dict:
    """The raw JSON of a COCO file that ``load_coco`` has already validated."""
    return json.loads(Path(path).read_text(encoding="utf-8-sig"))



def write_coco_subset(src: str | os.PathLike, dst: str | os.PathLike, image_ids: Iterable[int],
                      *, info: Mapping | None = None) -> dict:
    """Atomically write the images ``image_ids`` of a COCO file with their annotations.

    Every entry is copied as it is (ids, polygons, extra fields, LVIS's federated lists), so
    the subset is interchangeable with the original; all categories are kept, even those left
    without annotations, so that category ids stay valid. Categories that carry LVIS's
    ``image_count`` / ``instance_count`` get the subset's; ``frequency`` stays the original's.

    Args:
        src: the COCO JSON (already validated by ``load_coco``).
        dst: the output file.
        image_ids: ids of the images to keep.
        info: keys merged into the file's ``info`` block.

    Returns:
        Counts: {"images": int, "annotations": int}.
    """
    doc = _read_document(Path(src))
    keep = set(image_ids)
    out = dict(doc)
    out["images"] = [img for img in doc["images"] if img["id"] in keep]
    out["annotations"] = [a for a in doc.get("annotations", []) if a["image_id"] in keep]
    out["info"] = {**(doc.get("info") or {}), **dict(info or {})}
    lvis.recount(out)
    atomic_write_bytes(dst, json.dumps(out, separators=(",", ":")).encode())
    return {"images": len(out["images"]), "annotations": len(out["annotations"])}


def class_image_counts(records: Iterable[ImageRecord], class_names: Sequence[str]) -> dict[str,
                                                                                           int]:
    """Images containing at least one (non-crowd) instance of each class."""
    counts = Counter()
    for rec in records:
        if rec.instances is not None:
            counts.update(set(rec.instances.classes))
    return {n: int(counts.get(n, 0)) for n in class_names}


def class_instance_counts(records: Iterable[ImageRecord], class_names: Sequence[str]) -> dict[
        str, int]:
    """(Non-crowd) instances of each class."""
    counts = Counter()
    for rec in records:
        if rec.instances is not None:
            counts.update(rec.instances.classes)
    return {n: int(counts.get(n, 0)) for n in class_names}


__all__ = ["CocoDataset", "Federated", "frequency_bucket", "complete_lvis_categories",
           "load_coco", "write_coco", "mask_stats",
           "assign_category_ids", "image_entry", "annotation_entries", "annotations_from_rles",
           "coco_categories", "write_coco_subset"]
