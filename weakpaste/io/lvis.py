"""LVIS v1 files: COCO plus federated labels. Used by ``weakpaste.io.coco`` only.

LVIS (Gupta et al. 2019) is a *federated* data set: an image is exhaustively annotated only for
some classes. Quirks kept here, which ``weakpaste.io.coco`` applies when it reads and writes:

* images list ``neg_category_ids`` (classes verified absent) and
  ``not_exhaustive_category_ids`` (classes present but not every instance annotated); the
  image's positive classes are those annotated in it. A detection of a class that is in
  neither the positive nor the negative set is not evaluated;
* the official files give ``coco_url`` and no ``file_name``: the image file is the URL's
  basename;
* categories carry ``frequency`` ("r"/"c"/"f": 1-10, 11-100, more than 100 training images),
  ``image_count``, ``instance_count``, ``synset``, ``synonyms`` and ``def``;
* annotations carry no ``iscrowd`` (read as 0).

A file is LVIS when any image carries one of the two federated lists; then every image must
carry both. ``frequency`` may also appear in a plain COCO file: when any category has it, all
must.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.jsonfile import is_id

FREQUENCIES: tuple[str, ...] = ("r", "c", "f")
RARE_MAX = 10
COMMON_MAX = 100
NEGATIVE = "neg_category_ids"
NOT_EXHAUSTIVE = "not_exhaustive_category_ids"
# Category fields of LVIS v1 kept in a data set's category table and written back.
CATEGORY_FIELDS: tuple[str, ...] = ("synset", "synonyms", "def", "frequency", "image_count",
                                    "instance_count")
# LVIS's cap on detections per image (LVISResults' max_dets).
MAX_DETECTIONS = 300


@dataclass(frozen=True)
class Federated:
    """The federated labels of one image, as class names (sorted, distinct).

    Attributes:
        negative: classes verified absent from the image.
        not_exhaustive: classes whose instances are not all annotated.
    """

    negative: tuple[str, ...] = ()
    not_exhaustive: tuple[str, ...] = ()


def frequency_bucket(images: int) -> str | None:
    """LVIS frequency group of a class seen in ``images`` training images.

    Returns:
        "r" (1-10), "c" (11-100), "f" (more than 100), or None for a class never seen.
    """
    if images <= 0:
        return None
    if images <= RARE_MAX:
        return "r"
    return "c" if images <= COMMON_MAX else "f"


def _fail(path, msg: str) -> WeakpasteError:
    return WeakpasteError(f"{path}: {msg}")



def is_lvis(doc: Mapping) -> bool:
    """Whether a parsed instances file is LVIS: an image carries a federated list."""
    return any(isinstance(img, dict) and (NEGATIVE in img or NOT_EXHAUSTIVE in img)
               for img in doc.get("images") or ())


def image_file_name(img: Mapping) -> str | None:
    """``file_name``, else the basename of ``coco_url`` (LVIS v1), else None."""
    name = img.get("file_name")
    if isinstance(name, str) and name:
        return name
    url = img.get("coco_url")
    if isinstance(url, str) and url:
        return posixpath.basename(urlparse(url).path) or None
    return None


def category_fields(path, i: int, cat: Mapping) -> dict:
    """The LVIS fields of ``categories[i]``, checked.

    Raises:
        WeakpasteError: ``frequency`` not "r"/"c"/"f", or a count that is not an integer >= 0.
    """
    out = {k: cat[k] for k in CATEGORY_FIELDS if k in cat}
    where = f"categories[{i}] ({cat.get('name')!r})"
    if "frequency" in out and out["frequency"] not in FREQUENCIES:
        raise _fail(path, f"{where} has frequency {out['frequency']!r}; LVIS frequencies are "
                          "'r', 'c' or 'f' (1-10, 11-100, more than 100 training images)")
    for key in ("image_count", "instance_count"):
        if key in out and not (is_id(out[key]) and out[key] >= 0):
            raise _fail(path, f"{where} has {key} {out[key]!r}; expected an integer >= 0")
    return out


def check_frequencies(path, categories: Mapping[str, dict]) -> None:
    """All categories carry ``frequency`` or none does."""
    missing = [n for n, c in categories.items() if "frequency" not in c]
    if missing and len(missing) < len(categories):
        raise _fail(path, f"category {missing[0]!r} has no 'frequency' but others do; give "
                          "every category 'r', 'c' or 'f', or none")


def _class_list(path, where: str, key: str, value: object,
                cat_by_id: Mapping[int, str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(is_id(v) for v in value):
        raise _fail(path, f"{where} has {key} {value!r}"[:160] + "; expected a list of "
                          "category ids (LVIS)")
    unknown = [v for v in value if v not in cat_by_id]
    if unknown:
        raise _fail(path, f"{where} lists category id {unknown[0]} in {key!r}, which is not "
                          "in 'categories'")
    return tuple(sorted({cat_by_id[v] for v in value}))


def parse_federated(path, entries: Sequence[dict], cat_by_id: Mapping[int, str],
                    labels: Mapping[int, set[str]]) -> dict[int, Federated]:
    """Image id -> federated labels of an LVIS file, checked.

    Args:
        path: the file, for messages.
        entries: the file's ``images`` (already checked to be objects with integer ids).
        cat_by_id: category id -> class name.
        labels: image id -> classes annotated in it (its positive set).

    Raises:
        WeakpasteError: a list is missing, is not a list of known category ids, or a
            negative class is annotated in the same image.
    """
    out: dict[int, Federated] = {}
    for i, img in enumerate(entries):
        where = f"images[{i}] (id {img['id']})"
        for key in (NEGATIVE, NOT_EXHAUSTIVE):
            if key not in img:
                raise _fail(path, f"{where} has no {key!r}; every image of an LVIS file lists "
                                  "it (use [] for none)")
        negative = _class_list(path, where, NEGATIVE, img[NEGATIVE], cat_by_id)
        both = sorted(set(negative) & labels[img["id"]])
        if both:
            raise _fail(path, f"{where} has annotations of {both[0]!r} but lists it in "
                              f"{NEGATIVE!r} (verified absent); remove one of them")
        out[img["id"]] = Federated(
            negative, _class_list(path, where, NOT_EXHAUSTIVE, img[NOT_EXHAUSTIVE], cat_by_id))
    return out


def image_fields(federated: Federated, categories: Mapping[str, dict]) -> dict:
    """The two federated lists of an ``images`` entry, as sorted category ids."""
    return {NEGATIVE: sorted(categories[n]["id"] for n in federated.negative),
            NOT_EXHAUSTIVE: sorted(categories[n]["id"] for n in federated.not_exhaustive)}


def complete_categories(categories: Mapping[str, dict], image_counts: Mapping[str, int],
                        instance_counts: Mapping[str, int]) -> dict[str, dict]:
    """A category table with every LVIS count and frequency: missing ones from the counts.

    A category that already has ``frequency``, ``image_count`` or ``instance_count`` keeps it
    (an LVIS file's values describe its original training set); a class the counts never saw
    is rare ("r"): LVIS has no frequency for classes without images.

    Returns:
        name -> category dict (copies).
    """
    out = {}
    for name, cat in categories.items():
        cat = dict(cat)
        cat.setdefault("image_count", int(image_counts.get(name, 0)))
        cat.setdefault("instance_count", int(instance_counts.get(name, 0)))
        cat.setdefault("frequency", frequency_bucket(cat["image_count"]) or "r")
        out[name] = cat
    return out


def category_entries(categories: Mapping[str, dict]) -> list[dict]:
    """``categories`` of an LVIS file: id, name, supercategory and the LVIS fields present."""
    return [{"id": c["id"], "name": n, "supercategory": c.get("supercategory", ""),
             **{k: c[k] for k in CATEGORY_FIELDS if k in c}} for n, c in categories.items()]


def count_categories(doc: Mapping) -> tuple[dict[int, int], dict[int, int]]:
    """(category id -> images with an annotation of it, -> its annotations) of a document."""
    images: dict[int, set[int]] = {}
    instances: dict[int, int] = {}
    for ann in doc.get("annotations", ()):
        images.setdefault(ann["category_id"], set()).add(ann["image_id"])
        instances[ann["category_id"]] = instances.get(ann["category_id"], 0) + 1
    return {k: len(v) for k, v in images.items()}, instances


def recount(doc: dict) -> None:
    """Set the ``image_count`` / ``instance_count`` of a document's categories that have them
    to what its annotations hold (after images were left out)."""
    images, instances = count_categories(doc)
    cats = []
    for cat in doc["categories"]:
        cat = dict(cat)
        if "image_count" in cat:
            cat["image_count"] = images.get(cat["id"], 0)
        if "instance_count" in cat:
            cat["instance_count"] = instances.get(cat["id"], 0)
        cats.append(cat)
    doc["categories"] = cats


def evaluation_document(doc: Mapping, frequency: Mapping[str, str] | None = None) -> dict:
    """A completed LVIS document for an LVIS evaluator, which indexes every category's
    ``frequency``: missing ones come from ``frequency`` (class name -> bucket), else "f".

    Only the evaluator's own rare/common/frequent groups read them; weakpaste summarises the
    precision array itself with its own groups.
    """
    frequency = frequency or {}
    cats = [{**c, "frequency": c.get("frequency") or frequency.get(c["name"]) or "f"}
            for c in doc["categories"]]
    images = [{**img, NEGATIVE: img.get(NEGATIVE, []), NOT_EXHAUSTIVE: img.get(NOT_EXHAUSTIVE, [])}
              for img in doc["images"]]
    return {**doc, "images": images, "categories": cats}


def limit_detections(results: Iterable[dict], max_dets: int = MAX_DETECTIONS) -> list[dict]:
    """The ``max_dets`` best-scoring results of each image (LVISResults' cap), order kept
    otherwise; ties keep their input order."""
    results = list(results)
    per_image: dict[int, list[int]] = {}
    for k, r in enumerate(results):
        per_image.setdefault(r["image_id"], []).append(k)
    keep = set()
    for idx in per_image.values():
        idx.sort(key=lambda k: -results[k]["score"])
        keep.update(idx[:max_dets])
    return [r for k, r in enumerate(results) if k in keep]


__all__ = ["FREQUENCIES", "CATEGORY_FIELDS", "MAX_DETECTIONS", "Federated", "frequency_bucket",
           "is_lvis", "image_file_name", "category_fields", "check_frequencies",
           "parse_federated", "image_fields", "complete_categories", "category_entries",
           "count_categories", "recount", "evaluation_document", "limit_detections"]
