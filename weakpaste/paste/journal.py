"""The journals of a paste run: one line per finished image, read back to resume and to
assemble ``annotations.json``; damaged lines are ignored (their images are made again)."""

from __future__ import annotations

from pathlib import Path

from weakpaste.core.jsonfile import JsonError, parse_json
from weakpaste.io import rle as rle_check

PARTS_GLOB = ".parts-*.jsonl"


def read_journals(out: Path) -> dict[int, dict]:
    """Finished items by index, from every journal.

    A torn last line (a killed worker) and any line that is not a valid record (a damaged
    or edited journal) are ignored: their items are simply made again.
    """
    parts: dict[int, dict] = {}
    for path in sorted(out.glob(PARTS_GLOB)):
        with open(path, "rb") as fh:
            for line in fh:
                part = _journal_record(line) if line.endswith(b"\n") else None
                if part is not None:
                    parts[part["index"]] = part
    return parts


_RECORD_FIELDS = {"index": int, "file_name": str, "width": int, "height": int,
                  "annotations": list, "dropped": dict, "outside": int, "skipped": int,
                  "background": str}


_ANNOTATION_FIELDS = {"class": str, "rle": dict, "pasted": bool}


def _journal_record(line: bytes) -> dict | None:
    """The item record of a journal line (``ItemResult`` as a dict), or None when the line
    is not one."""
    try:
        part = parse_json(line)
    except JsonError:
        return None
    if not _typed(part, _RECORD_FIELDS) or part["index"] < 0 or part["width"] < 1 \
            or part["height"] < 1:
        return None
    for ann in part["annotations"]:
        if not _typed(ann, _ANNOTATION_FIELDS) or \
                ann["rle"].get("size") != [part["height"], part["width"]] or \
                not isinstance(ann["rle"].get("counts"), str) or \
                not _optional_stats(ann.get("area"), ann.get("bbox")):
            return None
    if not all(isinstance(k, str) and _typed_value(v, int) for k, v in part["dropped"].items()):
        return None
    rles = [a["rle"]["counts"] for a in part["annotations"]]
    size = (part["height"], part["width"])
    return part if rle_check.first_bad_compressed(rles, [size] * len(rles)) is None else None


def _optional_stats(area: object, bbox: object) -> bool:
    """An annotation's stored area and box, when present (older journals have none), are
    numbers."""
    def number(v: object) -> bool:
        return _typed_value(v, int) or _typed_value(v, float)

    return (area is None or number(area)) and (bbox is None or (
        isinstance(bbox, list) and len(bbox) == 4 and all(number(v) for v in bbox)))


def _typed(doc: object, fields: dict[str, type]) -> bool:
    return isinstance(doc, dict) and all(_typed_value(doc.get(k), t) for k, t in fields.items())


def _typed_value(value: object, kind: type) -> bool:
    # JSON's true/false are Python ints too: a bool field must be a bool and vice versa.
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def remove_stale_temporaries(images: Path) -> None:
    """Delete the temporary files of workers killed mid-write (``atomic_write_bytes``'
    ``.<name>.<pid>.tmp``); their images are made again by ``--resume``."""
    for tmp in images.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
