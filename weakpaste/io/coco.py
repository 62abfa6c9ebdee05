"""COCO and LVIS instance files: with ``coco_parse``, the only code that knows their quirks.

Quirks handled here and in ``weakpaste.io.coco_parse`` (the entry-by-entry checks of reading)
and nowhere else: ``bbox`` is xywh, masks are polygons or RLE (compressed ``counts`` string or
uncompressed list), ``counts`` may be bytes, ``iscrowd`` regions are not instances, category
ids are arbitrary integers (classes are names inside weakpaste). LVIS v1 files (federated
labels, ``coco_url`` instead of ``file_name``, category frequencies) are read and written here
too, with the helpers of ``weakpaste.io.lvis``.

Nothing from a file reaches pycocotools unchecked: it trusts its input and a corrupt RLE
makes it crash, read garbage or loop for minutes (``weakpaste.io.rle``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.jsonfile import is_id
from weakpaste.io import lvis
from weakpaste.io.coco_parse import (
    NO_FILE,
    fail,
    parse_annotations,
    parse_categories,
    parse_images,
    read_json,
)
from weakpaste.io.lvis import Federated, frequency_bucket
from weakpaste.io.lvis import complete_categories as complete_lvis_categories
from weakpaste.io.rle import bytes_rle
from weakpaste.structures import ImageRecord, Instances


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



def check_present(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                  images_flag: str | None = None) -> None:
    """Refuse a COCO file or images folder that does not exist, without reading either.

    ``load_coco`` raises the same errors; a stage calls this first to refuse a typo before
    a costly start-up (a Ray cluster).
    """
    if not Path(path).exists():
        raise fail(Path(path), NO_FILE)
    if images_dir is not None:
        _check_images_folder(Path(path), Path(images_dir), images_flag)


def _with(flag: str | None) -> str:
    return f" with {flag}" if flag else ""


def _check_images_folder(path: Path, images_path: Path, flag: str | None) -> None:
    if not images_path.is_dir():
        raise WeakpasteError(f"{images_path}: images folder not found; pass the folder "
                             f"that holds the images of {path.name}{_with(flag)}")


def _check_image_files(path: Path, images_path: Path, records: list[ImageRecord],
                       flag: str | None) -> None:
    _check_images_folder(path, images_path, flag)
    missing = [r.file_name for r in records if not (images_path / r.file_name).is_file()]
    if missing:
        raise fail(path, f"{len(missing)} of {len(records)} image files are missing under "
                          f"{images_path} (first: {missing[0]!r}); pass the folder that "
                          f"holds them{_with(flag)}")


def load_coco(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
              require_masks: bool = True, check_files: bool = True,
              images_flag: str | None = None) -> CocoDataset:
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
        images_flag: how the command names ``images_dir`` (its flag, e.g. from
            ``flag_of(BankInputs, "images")``), for the messages; None: not named.

    Returns:
        The data set. An image's ``labels`` are the classes annotated in it; its
        ``instances`` are None when the file has no ``annotations`` list at all; ``federated``
        holds an LVIS file's per-image negative and not-exhaustive classes.

    Raises:
        WeakpasteError: a one-line message naming the file, the offending entry and the fix.
    """
    path = Path(path)
    data = read_json(path)
    categories, cat_by_id = parse_categories(path, data["categories"])
    images = parse_images(path, data["images"])
    per_image, labels, crowd = parse_annotations(path, data.get("annotations", []), images,
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
        _check_image_files(path, images_path, records, images_flag)
    return CocoDataset(records=records, categories=categories, path=path,
                       images_dir=images_path, crowd_skipped=crowd, federated=federated)


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
    if not is_id(record.image_id) or record.image_id < 1:
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
    brles = [bytes_rle(r) for r in rles]
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
