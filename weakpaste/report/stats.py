"""Summary statistics of a COCO or LVIS instance set: class balance and object sizes.

Areas come from the compressed masks (pycocotools counts the RLE runs), so a whole data set is
summarised without decoding a single mask or reading a single image. No torch import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from weakpaste.core.options import Config, flag_of, option
from weakpaste.core.run import RunOptions, StageInputs, StageRun
from weakpaste.io.coco import CocoDataset, load_coco

# COCO's evaluation thresholds on object area (pixels): small < 32², medium < 96², large.
SMALL_AREA = 32 ** 2
LARGE_AREA = 96 ** 2
_BAR_WIDTH = 40


def _size_bin(area: int) -> int:
    """Index i of the bin 2**i <= sqrt(area) < 2**(i+1); areas below 1 go to bin 0.

    Integer arithmetic: sqrt(area) >= 2**i exactly when area >= 4**i, and for area >= 1 the
    largest such i is (bit_length - 1) // 2, so perfect squares never land in the wrong bin
    through rounding.
    """
    return (max(int(area), 1).bit_length() - 1) // 2


def dataset_stats(data: CocoDataset) -> dict:
    """Counts per class, object-size buckets and a size histogram of a data set.

    Images whose instances are unknown (``instances`` is None) count as images without
    instances.

    Args:
        data: a loaded data set (``weakpaste.io.coco.load_coco``).

    Returns:
        A JSON-able dict:
            * "images", "instances", "images_without_instances": ints;
            * "per_class": class -> number of instances, for every category (zeros included)
              and any other class met, sorted by count (descending) then name;
            * "images_per_class": class -> number of images with at least one instance of it,
              same keys and order;
            * "size_buckets": {"small", "medium", "large"} instance counts by mask area, with
              COCO's thresholds (area < 32², < 96², the rest);
            * "area_histogram": {"edges": ints [1, 2, 4, ..., 2**k], "counts": ints, one per
              bin}: instances by sqrt(mask area) in pixels, bins [edges[i], edges[i+1]),
              the last edge above the largest object (empty lists when there are no
              instances; an empty mask counts in the first bin);
            * "instances_per_image": {"mean": float, "median": float, "max": int};
            * "lvis", for an LVIS file only: {"format": "lvis", "classes_per_frequency":
              {"r", "c", "f"} numbers of categories (from the file's ``frequency``; empty
              without one), "negative_labels" and "not_exhaustive_labels": the totals of the
              images' federated lists}.
    """
    per_class = dict.fromkeys(data.categories, 0)
    images_per_class = dict.fromkeys(data.categories, 0)
    per_image: list[int] = []
    areas: list[np.ndarray] = []
    for rec in data.records:
        inst = rec.instances
        if inst is None or len(inst) == 0:
            per_image.append(0)
            continue
        per_image.append(len(inst))
        for name in inst.classes:
            per_class[name] = per_class.get(name, 0) + 1
        for name in set(inst.classes):
            images_per_class[name] = images_per_class.get(name, 0) + 1
        areas.append(inst.areas())

    area = np.concatenate(areas) if areas else np.zeros(0, dtype=np.int64)
    buckets = {"small": int(np.count_nonzero(area < SMALL_AREA)),
               "medium": int(np.count_nonzero((area >= SMALL_AREA) & (area < LARGE_AREA))),
               "large": int(np.count_nonzero(area >= LARGE_AREA))}
    if area.size:
        bins = np.array([_size_bin(a) for a in area.tolist()], dtype=np.int64)
        counts = np.bincount(bins, minlength=int(bins.max()) + 1)
        histogram = {"edges": [1 << i for i in range(len(counts) + 1)],
                     "counts": [int(c) for c in counts]}
    else:
        histogram = {"edges": [], "counts": []}

    order = sorted(per_class, key=lambda name: (-per_class[name], name))
    n_per_image = np.array(per_image, dtype=np.int64)
    lvis = {} if data.federated is None else {"lvis": _lvis_stats(data)}
    return {
        "images": len(data.records),
        "instances": int(area.size),
        "images_without_instances": int(np.count_nonzero(n_per_image == 0)),
        "per_class": {name: per_class[name] for name in order},
        "images_per_class": {name: images_per_class.get(name, 0) for name in order},
        "size_buckets": buckets,
        "area_histogram": histogram,
        "instances_per_image": {
            "mean": round(float(n_per_image.mean()), 3) if n_per_image.size else 0.0,
            "median": float(np.median(n_per_image)) if n_per_image.size else 0.0,
            "max": int(n_per_image.max()) if n_per_image.size else 0,
        },
        **lvis,
    }


def _lvis_stats(data: CocoDataset) -> dict:
    freq = data.frequency or {}
    return {"format": "lvis",
            "classes_per_frequency": {b: sum(v == b for v in freq.values()) for b in "rcf"}
            if freq else {},
            "negative_labels": sum(len(f.negative) for f in data.federated.values()),
            "not_exhaustive_labels": sum(len(f.not_exhaustive) for f in data.federated.values())}


def _bar(n: int, top: int) -> str:
    """'#' bar of ``n`` scaled so that ``top`` fills the width; any n > 0 shows at least one."""
    if n <= 0 or top <= 0:
        return ""
    return "#" * max(1, round(_BAR_WIDTH * n / top))


def format_stats(stats: dict) -> str:
    """Render ``dataset_stats`` output as aligned text tables for the terminal.

    Args:
        stats: the dict returned by ``dataset_stats``.

    Returns:
        Lines (no trailing newline): totals, per-class instance and image counts with a bar,
        the COCO size buckets, and a histogram of object sizes (sqrt of mask area in pixels).
    """
    ipi = stats["instances_per_image"]
    lines = [
        f"images     {stats['images']:>8}   ({stats['images_without_instances']} without "
        "instances)",
        f"instances  {stats['instances']:>8}   (per image: mean {ipi['mean']:.2f}, median "
        f"{ipi['median']:g}, max {ipi['max']})",
        "",
    ]
    if "lvis" in stats:
        lv = stats["lvis"]
        freq = ", ".join(f"{n} {b}" for b, n in lv["classes_per_frequency"].items()) or "none"
        lines[-1:-1] = [f"LVIS       classes by frequency: {freq}; labels verified absent "
                        f"{lv['negative_labels']}, not exhaustive {lv['not_exhaustive_labels']}"]

    per_class, per_image = stats["per_class"], stats["images_per_class"]
    name_w = max([len("class"), *map(len, per_class)])
    num_w = max([len("instances"), *(len(str(v)) for v in per_class.values())])
    img_w = max([len("images"), *(len(str(v)) for v in per_image.values())])
    top = max(per_class.values(), default=0)
    lines.append(f"{'class':<{name_w}}  {'instances':>{num_w}}  {'images':>{img_w}}")
    for name, n in per_class.items():
        lines.append(f"{name:<{name_w}}  {n:>{num_w}}  {per_image.get(name, 0):>{img_w}}  "
                     f"{_bar(n, top)}".rstrip())
    if not per_class:
        lines.append("(no classes)")
    lines.append("")

    buckets = stats["size_buckets"]
    total = sum(buckets.values())
    bucket_rows = [("small", "area < 32^2"), ("medium", "32^2 <= area < 96^2"),
                   ("large", "area >= 96^2")]
    rule_w = max(len(r) for _, r in bucket_rows)
    cnt_w = max([len("instances"), *(len(str(v)) for v in buckets.values())])
    lines.append(f"{'size':<6}  {'mask area (px)':<{rule_w}}  {'instances':>{cnt_w}}")
    for key, rule in bucket_rows:
        share = f"{100 * buckets[key] / total:5.1f}%" if total else ""
        lines.append(f"{key:<6}  {rule:<{rule_w}}  {buckets[key]:>{cnt_w}}  {share}".rstrip())
    lines.append("")

    edges, counts = stats["area_histogram"]["edges"], stats["area_histogram"]["counts"]
    lines.append("object size: sqrt(mask area) in px")
    if not counts:
        lines.append("(no instances)")
        return "\n".join(lines)
    lo_w, hi_w = len(str(edges[-2])), len(str(edges[-1]))
    labels = [f"{lo:>{lo_w}} - {hi:<{hi_w}}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    lab_w = lo_w + hi_w + 3
    cnt_w = max(len(str(c)) for c in counts)
    top = max(counts)
    for lab, c in zip(labels, counts, strict=True):
        lines.append(f"{lab:>{lab_w}} px  {c:>{cnt_w}}  {_bar(c, top)}".rstrip())
    return "\n".join(lines)


@dataclass(frozen=True)
class StatsConfig(Config):
    """Settings of ``stats``: none, it only reads (declared so that every stage is called the
    same way)."""


@dataclass(frozen=True)
class StatsInputs(StageInputs):
    """The inputs of ``stats``.

    Attributes:
        coco_json: COCO or LVIS instances JSON (masks required).
        images: when given, also check that every image file exists there.
    """

    coco_json: str | os.PathLike = option(
        positional=True, help="COCO or LVIS instances JSON with masks (polygons or RLE)")
    images: str | os.PathLike | None = option(None, help="also check that the image files exist")


def run_stats(config: StatsConfig | None, inputs: StatsInputs,
              run: RunOptions | None = None) -> dict:
    """Load and validate a COCO or LVIS instances JSON and summarise it (``weakpaste stats``).

    Args:
        config: ``StatsConfig()`` or None (no settings).
        inputs: the file and, optionally, its images.
        run: ``RunOptions()`` or None (stats writes nothing).

    Returns:
        The ``dataset_stats`` dict (``format_stats`` makes the text tables).

    Raises:
        WeakpasteError: the file (or an image file) is missing or invalid.
    """
    with StageRun("stats", run or RunOptions(), inputs=inputs.paths(), resumable=False,
                  output=None):
        data = load_coco(inputs.coco_json, inputs.images, check_files=inputs.images is not None,
                         images_flag=flag_of(StatsInputs, "images"))
        return dataset_stats(data)


__all__ = ["StatsConfig", "StatsInputs", "dataset_stats", "format_stats", "run_stats"]
