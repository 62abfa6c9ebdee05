"""COCO caption files (``captions_*.json``): images with one or more text captions each."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.jsonfile import JsonError, is_id, parse_json


@dataclass(frozen=True)
class Caption:
    """One caption of one image.

    Attributes:
        image: the image's ``file_name`` (relative to the images folder).
        caption: the text, stripped.
        caption_id: the annotation ``id`` (None when the file has none).
    """

    image: str
    caption: str
    caption_id: int | None = None


def load_coco_captions(path: str | os.PathLike,
                       per_image: int | None = None) -> list[Caption]:
    """Read a COCO captions file.

    Args:
        path: JSON with ``images`` (``id``, ``file_name``) and ``annotations``
            (``image_id``, ``caption``).
        per_image: keep at most this many captions per image, in file order (None: all).

    Returns:
        Captions ordered by image (file order of ``images``), then file order.

    Raises:
        WeakpasteError: missing or unreadable file, wrong structure, an annotation naming an
            unknown image.
    """
    path = Path(path)
    try:
        doc = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeakpasteError(f"{path}: captions file not found") from None
    except (JsonError, UnicodeDecodeError) as err:
        raise WeakpasteError(f"{path}: not valid JSON ({err}); pass a COCO captions file "
                             "(captions_train2017.json)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("annotations"), list):
        raise WeakpasteError(f"{path}: not a COCO captions file (needs 'images' and "
                             "'annotations' lists)")
    files: dict[int, str] = {}
    for img in doc["images"]:
        if not isinstance(img, dict) or not is_id(img.get("id")) or "file_name" not in img:
            raise WeakpasteError(f"{path}: every image needs an integer 'id' and a 'file_name'")
        files[img["id"]] = str(img["file_name"])
    by_image: dict[int, list[Caption]] = {i: [] for i in files}
    for ann in doc["annotations"]:
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            raise WeakpasteError(f"{path}: every annotation needs a 'caption' string")
        image_id = ann.get("image_id")
        if not is_id(image_id) or image_id not in files:
            raise WeakpasteError(f"{path}: caption {ann.get('id')} names image_id {image_id}, "
                                 "which is not in 'images'")
        text = " ".join(ann["caption"].split())
        if text:
            by_image[image_id].append(Caption(files[image_id], text, ann.get("id")))
    out: list[Caption] = []
    for caps in by_image.values():
        out.extend(caps if per_image is None else caps[:per_image])
    return out


