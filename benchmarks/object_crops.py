"""Object-centric crops of a COCO data set, built as ``../shared/data/coco_mini_objects`` was.

Each non-crowd instance's box, enlarged 1.4 times about its centre and clipped to the image,
becomes one crop ``images/<class>/<image id>_<annotation id>.jpg`` (class names with spaces
written with underscores) when the crop's shorter side is at least 96 px; at most 60 crops per
class (the first in annotation order). ``instances.json`` holds one GT instance per crop: the
centred object (other objects in the crop are not annotated). Used to make a development set
(e.g. from coco128, whose images are not coco_mini's) on which FreeSeg's ranking defaults can
be checked apart from the set the README reports.

Usage:
    python benchmarks/object_crops.py --coco ../shared/data/coco128 --out /tmp/coco128_objects
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from weakpaste.io.coco import load_coco
from weakpaste.io.images import read_image, write_image


def crop_box(box_xywh, width: int, height: int, enlarge: float) -> tuple[int, int, int, int]:
    """The enlarged box about the instance box's centre, clipped: int (x0, y0, x1, y1)."""
    x, y, w, h = box_xywh
    cx, cy, hw, hh = x + w / 2, y + h / 2, enlarge * w / 2, enlarge * h / 2
    return (max(0, int(round(cx - hw))), max(0, int(round(cy - hh))),
            min(width, int(round(cx + hw))), min(height, int(round(cy + hh))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco", type=Path, required=True,
                        help="folder with images/ and instances.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--enlarge", type=float, default=1.4)
    parser.add_argument("--min-side", type=int, default=96)
    parser.add_argument("--max-per-class", type=int, default=60)
    args = parser.parse_args()
    data = load_coco(args.coco / "instances.json", require_masks=True, check_files=False)
    per_class: Counter = Counter()
    images, anns, cats = [], [], {}
    for rec in data.records:
        if rec.instances is None or not len(rec.instances):
            continue
        rgb = None
        for k, (cls, rle) in enumerate(zip(rec.instances.classes, rec.instances.rles,
                                           strict=True)):
            if per_class[cls] >= args.max_per_class:
                continue
            m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()
                                   if isinstance(rle["counts"], str) else rle["counts"]})
            box = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m)))
            x0, y0, x1, y1 = crop_box(box, rec.width, rec.height, args.enlarge)
            if min(x1 - x0, y1 - y0) < args.min_side or not m.any():
                continue
            rgb = read_image(args.coco / "images" / rec.file_name) if rgb is None else rgb
            name = f"images/{cls.replace(' ', '_')}/{rec.image_id}_{k}.jpg"
            (args.out / name).parent.mkdir(parents=True, exist_ok=True)
            write_image(args.out / name, rgb[y0:y1, x0:x1])
            cats.setdefault(cls, len(cats) + 1)
            crop = np.asfortranarray(m[y0:y1, x0:x1])
            seg = mask_utils.encode(crop)
            images.append({"id": len(images) + 1, "file_name": name, "height": y1 - y0,
                           "width": x1 - x0})
            anns.append({"id": len(anns) + 1, "image_id": len(images),
                         "category_id": cats[cls], "iscrowd": 0, "area": int(crop.sum()),
                         "bbox": [float(v) for v in mask_utils.toBbox(seg)],
                         "segmentation": {"size": list(seg["size"]),
                                          "counts": seg["counts"].decode()}})
            per_class[cls] += 1
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": i, "name": c} for c, i in cats.items()]}
    (args.out / "instances.json").write_text(json.dumps(doc))
    print(f"{len(images)} crops of {len(cats)} classes into {args.out}")


if __name__ == "__main__":
    main()
