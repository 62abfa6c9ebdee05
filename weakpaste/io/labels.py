"""Image-level labels: which classes each image shows, without masks.

Accepted forms (``weakpaste mine --labels``):
    * a COCO instances JSON: an image's labels are the categories annotated in it; masks and
      boxes are ignored (this is how a fully annotated set is turned into a weakly labelled
      one for benchmarks);
    * a CSV with a header ``image,labels`` (or ``file_name,labels``): labels separated by
      ``;`` or ``|``, e.g. ``street/001.jpg,person;dog``;
    * a JSON object mapping image file name -> list of class names, e.g.
      ``{"001.jpg": ["person", "dog"]}``;
    * no file, for a folder with one sub-folder per class (object-centric images): the
      sub-folder's name is the label.

Files are UTF-8; a byte-order mark (Excel's "CSV UTF-8") is accepted. Other encodings are
refused with one line rather than guessed: a file name decoded wrongly would not be found.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.jsonfile import read_json, read_text
from weakpaste.io.images import IMAGE_EXTENSIONS
from weakpaste.structures import ImageRecord


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _records_from_mapping(mapping: dict[str, list[str]], source: Path) -> list[ImageRecord]:
    records = []
    for i, (name, labels) in enumerate(mapping.items()):
        if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip()
                                                   for x in labels):
            raise WeakpasteError(f"{source}: labels of {name!r} must be a list of class names")
        records.append(ImageRecord(image_id=i + 1, file_name=name, width=0, height=0,
                                   labels=tuple(sorted(set(labels)))))
    return records


def _read_csv(path: Path) -> dict[str, list[str]]:
    text = read_text(path, what="labels file", fix="save it as UTF-8 (Excel: 'CSV UTF-8')")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = reader.fieldnames or []
        key = "image" if "image" in fields else "file_name" if "file_name" in fields else None
        if key is None or "labels" not in fields:
            raise WeakpasteError(f"{path}: a labels CSV needs the header 'image,labels' "
                                 f"(found {','.join(fields) or 'nothing'})")
        mapping: dict[str, list[str]] = {}
        for row in reader:
            text = (row.get("labels") or "").replace("|", ";")
            mapping.setdefault(row[key], []).extend(
                t.strip() for t in text.split(";") if t.strip())
    except csv.Error as err:
        raise WeakpasteError(f"{path}: not a readable CSV (line {reader.line_num + 1}: {err}); "
                             "repair the labels file") from None
    return mapping


def load_labels(labels: str | os.PathLike | None, images_dir: str | os.PathLike, *,
                flags: tuple[str, str] | None = None) -> tuple[list[ImageRecord], list[str]]:
    """Read image-level labels.

    Args:
        labels: a COCO JSON, a CSV or JSON mapping, or None for one sub-folder per class.
        images_dir: the folder the image names are relative to.
        flags: how the command names ``images_dir`` and ``labels`` (their flags, e.g.
            ``flags_of(MineInputs)``), for the messages; None: not named.

    Returns:
        (records with ``labels`` set and ``instances`` None, class names in a stable order:
        the COCO category order, else sorted).

    Raises:
        WeakpasteError: unreadable or malformed labels, images that do not exist, no image
            with a label.
    """
    images_dir = Path(images_dir)
    images_flag, labels_flag = flags or ("", "")
    with_images = f" with {images_flag}" if images_flag else ""
    if not images_dir.is_dir():
        raise WeakpasteError(f"{images_dir}: images folder not found; pass it{with_images}")
    if labels is None:
        records, classes = [], []
        # Hidden folders and files (.git, macOS's ._photo.jpg resource forks) are not
        # classes or images, as for --extra-backgrounds (list_images).
        for sub in sorted(p for p in images_dir.iterdir()
                          if p.is_dir() and not p.name.startswith(".")):
            files = sorted(f for f in sub.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                           and f.is_file() and not _hidden(f.relative_to(sub)))
            if files:
                classes.append(sub.name)
            for f in files:
                records.append(ImageRecord(image_id=len(records) + 1,
                                           file_name=str(f.relative_to(images_dir)),
                                           width=0, height=0, labels=(sub.name,)))
        if not records:
            raise WeakpasteError(f"{images_dir}: no labels given and no class sub-folders with "
                                 f"images; pass {labels_flag or 'a labels'} FILE or use one "
                                 "folder per class")
        return records, classes
    path = Path(labels)
    if not path.is_file():
        raise WeakpasteError(f"{path}: labels file not found; pass a COCO JSON, a CSV "
                             "(image,labels) or a JSON mapping image -> classes")
    if path.suffix.lower() == ".csv":
        mapping = _read_csv(path)
        records = _records_from_mapping(mapping, path)
        classes = sorted({c for r in records for c in r.labels})
    else:
        data = read_json(path, what="labels file", example='{"001.jpg": ["person", "dog"]}')
        if isinstance(data, dict) and "images" in data and "categories" in data:
            from weakpaste.io.coco import load_coco

            coco = load_coco(path, require_masks=False, check_files=False)
            records = [r for r in coco.records]
            classes = list(coco.categories)
        elif isinstance(data, dict):
            records = _records_from_mapping(data, path)
            classes = sorted({c for r in records for c in r.labels})
        else:
            raise WeakpasteError(f"{path}: expected a COCO JSON or an object mapping image "
                                 "file name -> list of class names")
    missing = [r.file_name for r in records if not (images_dir / r.file_name).is_file()]
    if missing:
        raise WeakpasteError(f"{path}: {len(missing)} of {len(records)} labelled images are "
                             f"missing under {images_dir} (first: {missing[0]!r}); pass the "
                             f"folder that holds them{with_images}")
    if not any(r.labels for r in records):
        raise WeakpasteError(f"{path}: no image carries a label; nothing to mine")
    return records, classes
