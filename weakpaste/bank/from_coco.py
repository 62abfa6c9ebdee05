"""The ``bank from-coco`` stage: cut every instance of a COCO file into a segment bank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from weakpaste.bank.codec import encode_segment, segment_meta
from weakpaste.bank.store import BankWriter
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import Config, option
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
    classes: tuple[str, ...] | None = option(None, help="keep only these classes")


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


def run_bank_from_coco(coco_json: str | os.PathLike, images_dir: str | os.PathLike,
                       out_dir: str | os.PathLike, config: BankConfig | None = None, *,
                       workers: int = 1, overwrite: bool = False, progress: bool = True,
                       executor=None) -> dict:
    """Build a bank from the instance masks of any COCO data set.

    Images are cut and their segments encoded by ``workers`` processes (or Ray actors,
    ``executor``); the segments are appended in image order, so the bank is the same bytes
    for any number of workers.

    Args:
        coco_json: COCO instances file (polygons or RLE).
        images_dir: folder of its images.
        out_dir: the bank folder to create.
        config: minimum mask area and classes to keep (``BankConfig()`` when None).
        workers: processes (or Ray actors) cutting and encoding images.
        overwrite: replace an existing weakpaste output in ``out_dir``.
        progress: show a progress bar.
        executor: a ``weakpaste.core.runners.ExecutorConfig`` (local pool by default).

    Returns:
        The manifest written to ``out_dir/manifest.json``; its counts: ``segments``,
        ``per_class``, ``skipped_small`` (masks under ``min_area`` pixels) and
        ``crowd_skipped`` (the file's ``iscrowd=1`` regions, never cut).
    """
    from tqdm import tqdm

    from weakpaste.core.manifest import (
        check_output_dir,
        file_sha256,
        prepare_output_dir,
        write_manifest,
    )
    from weakpaste.core.runners import Workers, preflight
    from weakpaste.io.coco import load_coco

    preflight(executor)  # before reading the COCO file (a minute for train2017's)
    config = config or BankConfig()
    min_area, classes = config.min_area, config.classes
    data = load_coco(coco_json, images_dir)
    if classes:
        unknown = [c for c in classes if c not in data.categories]
        if unknown:
            raise WeakpasteError(f"{coco_json}: class {unknown[0]!r} is not among its categories; "
                                 "check --classes")
    check_output_dir(out_dir, overwrite=overwrite, stage="bank", inputs=[coco_json, images_dir],
                     resumable=False)
    # The workers start (Ray is joined) before the output folder is made: a cluster that
    # cannot be reached leaves nothing to remove.
    with Workers(workers, executor=executor, check=[coco_json, images_dir, out_dir]) as pool:
        out = prepare_output_dir(out_dir, overwrite=overwrite, stage="bank",
                                 inputs=[coco_json, images_dir], resumable=False)
        config = {"coco_json": str(coco_json), "images_dir": str(images_dir),
                  "min_area": min_area, "classes": classes}
        inputs = {"coco_json": file_sha256(coco_json)}
        write_manifest(out, stage="bank", config=config, inputs=inputs, status="running")
        skipped = 0
        with BankWriter(out) as writer:
            items = _cut_items(data, coco_json, classes, min_area, writer.version)
            for encoded, n_small in tqdm(pool.map(_cut_item, items), total=len(items),
                                         desc="bank from-coco", unit="img",
                                         disable=not progress):
                skipped += n_small
                for blob, meta in encoded:
                    writer.add_encoded(blob, meta)
            counts = dict(sorted(writer.counts.items()))
    return write_manifest(out, stage="bank", config=config, inputs=inputs,
                          counts={"segments": sum(counts.values()), "per_class": counts,
                                  "skipped_small": skipped, "crowd_skipped": data.crowd_skipped})
