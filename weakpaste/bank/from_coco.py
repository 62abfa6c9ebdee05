"""The ``bank from-coco`` stage: cut every instance of a COCO file into a segment bank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from weakpaste.bank.codec import encode_segment, segment_meta
from weakpaste.bank.format import IMAGES_FLAG
from weakpaste.bank.store import CLASSES_FLAG, BankWriter
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import Config, flag_of, option
from weakpaste.core.run import RunOptions, StageInputs, StageRun
from weakpaste.structures import Segment


def segments_from_image(rgb: np.ndarray, masks: np.ndarray, classes: tuple[str, ...], *,
                        source_image: str, min_area: int = 64,
                        miner: str = "gt") -> tuple[list[Segment], int]:
    """Cut the instances of one image into segments (tight crops of their masks).

    Args:
        rgb: uint8 (H, W, 3) image.
        masks: bool (N, H, W) instance masks.
        classes: class name per mask.
        source_image: recorded as the segments' source.
        min_area: masks with fewer pixels are skipped.
        miner: recorded as the segments' origin.

    Returns:
        (segments, number skipped as too small).
    """
    out, skipped = [], 0
    for mask, name in zip(masks, classes, strict=True):
        area = int(mask.sum())
        if area < max(min_area, 1):
            skipped += 1
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append(Segment(rgb=np.ascontiguousarray(rgb[y0:y1, x0:x1]),
                           mask=np.ascontiguousarray(mask[y0:y1, x0:x1]), category=name,
                           source_image=source_image,
                           source_box=np.array([x0, y0, x1, y1], dtype=np.float64),
                           scores={"area": float(area)}, miner=miner))
    return out, skipped


@dataclass(frozen=True)
class BankConfig(Config):
    """Settings of ``bank from-coco``."""

    min_area: int = option(64, range=(1, None), help="skip smaller masks (pixels)")
    classes: tuple[str, ...] | None = option(None, flag=CLASSES_FLAG,
                                             help="keep only these classes")


_CLASSES = flag_of(BankConfig, "classes")


def _cut_item(item: tuple) -> tuple[list[tuple[bytes, dict]], int]:
    """``bank from-coco``'s per-image work: read the image, cut and encode its segments.

    Args:
        item: (image path, width, height, RLEs, classes, file name, COCO file, min area,
            the bank's format version).

    Returns:
        ([(blob, index fields), ...], masks skipped as too small).
    """
    from weakpaste.io.images import read_image_of_size
    from weakpaste.ops import masks as mask_ops

    path, width, height, rles, classes, file_name, coco_json, min_area, version = item
    rgb = read_image_of_size(path, width, height, coco_json)
    masks = mask_ops.decode_many(list(rles), height, width)
    segs, skipped = segments_from_image(rgb, masks, classes, source_image=file_name,
                                        min_area=min_area)
    return [(encode_segment(s, version), segment_meta(s)) for s in segs], skipped


def _cut_items(data, coco_json, classes, min_area, version) -> list[tuple]:
    items = []
    for rec in data.records:
        inst = rec.instances
        keep = [] if inst is None else [i for i, c in enumerate(inst.classes)
                                        if not classes or c in classes]
        if keep:
            items.append((str(data.images_dir / rec.file_name), rec.width, rec.height,
                          tuple(inst.rles[i] for i in keep),
                          tuple(inst.classes[i] for i in keep), rec.file_name, str(coco_json),
                          min_area, version))
    return items


@dataclass(frozen=True)
class BankInputs(StageInputs):
    """The inputs of ``bank from-coco``.

    Attributes:
        coco_json: COCO (or LVIS) instances file (polygons or RLE).
        images: folder of its images.
    """

    coco_json: str | os.PathLike = option(
        positional=True, help="COCO or LVIS instances JSON (polygons or RLE)")
    images: str | os.PathLike = option(flag=IMAGES_FLAG, help="folder of its images")


def run_bank_from_coco(config: BankConfig | None, inputs: BankInputs,
                       run: RunOptions) -> dict:
    """Build a bank from the instance masks of any COCO data set, in ``run.out``.

    Images are cut and their segments encoded by ``run.workers`` processes (or Ray actors,
    ``run.executor``); the segments are appended in image order, so the bank is the same
    bytes for any number of workers.

    Args:
        config: minimum mask area and classes to keep (``BankConfig()`` when None).
        inputs: the COCO file and its images.
        run: the bank folder to create (``out``), ``overwrite``, ``workers``, the executor
            and ``quiet`` (no ``resume``: a bank is cut in one go).

    Returns:
        The manifest written to ``OUT/manifest.json``; its counts: ``segments``,
        ``per_class``, ``skipped_small`` (masks under ``min_area`` pixels) and
        ``crowd_skipped`` (the file's ``iscrowd=1`` regions, never cut).
    """
    from weakpaste.core.manifest import file_sha256
    from weakpaste.io.coco import load_coco

    config = config or BankConfig()
    coco_json, images_dir = inputs.coco_json, inputs.images
    min_area, classes = config.min_area, config.classes
    # Executor and output are checked before the COCO file is read (a minute for
    # train2017's); the workers start (Ray is joined) before the output folder is made, so
    # a cluster that cannot be reached leaves nothing to remove.
    with StageRun("bank", run, inputs=inputs.paths(), resumable=False) as stage:
        data = load_coco(coco_json, images_dir, images_flag=flag_of(BankInputs, "images"))
        if classes:
            unknown = [c for c in classes if c not in data.categories]
            if unknown:
                raise WeakpasteError(f"{coco_json}: class {unknown[0]!r} is not among its "
                                     f"categories; check {_CLASSES}")
        stage.workers(check=[coco_json, images_dir, run.out])
        out = stage.start({"coco_json": str(coco_json), "images_dir": str(images_dir),
                           "min_area": min_area, "classes": classes},
                          inputs={"coco_json": file_sha256(coco_json)})
        skipped = 0
        with BankWriter(out) as writer:
            items = _cut_items(data, coco_json, classes, min_area, writer.version)
            for encoded, n_small in stage.map(_cut_item, items, desc="bank from-coco"):
                skipped += n_small
                for blob, meta in encoded:
                    writer.add_encoded(blob, meta)
            counts = dict(sorted(writer.counts.items()))
        return stage.finish({"segments": sum(counts.values()), "per_class": counts,
                             "skipped_small": skipped, "crowd_skipped": data.crowd_skipped})
