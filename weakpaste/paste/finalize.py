"""The end of a paste run: ``annotations.json`` (COCO or LVIS) assembled from the items'
records, and the counts of the final manifest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from weakpaste.bank.store import BankTable
from weakpaste.io import coco
from weakpaste.paste.backgrounds import Background, BackgroundSet
from weakpaste.paste.journal import read_journals, remove_stale_temporaries
from weakpaste.structures import ImageRecord, Instances


def write_annotations(out: Path, config, table: BankTable, bg_set: BackgroundSet,
                      made: dict[int, dict]) -> dict:
    """Assemble ``annotations.json`` from the items' records (``made`` by this run, the
    journals for a resumed run's earlier items); returns the final manifest's counts.

    ``config`` is the run's ``PasteConfig`` (not imported: ``run`` imports this module).
    """
    remove_stale_temporaries(out / "images")
    parts = made if len(made) == config.num_images else {**read_journals(out), **made}
    stats: dict[int, coco.MaskStats] = {}
    categories = coco.assign_category_ids(sorted(table.classes), keep=bg_set.categories)
    lvis_out = (config.annotation_format or bg_set.format or "coco") == "lvis"
    federated: dict[int, coco.Federated] | None = {} if lvis_out else None
    by_path = {b.path: b for b in bg_set.backgrounds}
    per_class: Counter = Counter()
    pasted_per_class: Counter = Counter()
    dropped: Counter = Counter()
    outside = skipped = 0

    def records() -> Iterator[ImageRecord]:
        nonlocal outside, skipped
        for i in range(config.num_images):
            part = parts[i]
            anns = part["annotations"]
            for a in anns:
                per_class[a["class"]] += 1
                pasted_per_class[a["class"]] += a["pasted"]
            dropped.update(part["dropped"])
            outside += part["outside"]
            skipped += part["skipped"]
            if federated is not None:
                federated[i + 1] = _federated_labels(by_path.get(part["background"]), part,
                                                     bg_set.categories)
            stats[i + 1] = _part_stats(anns)  # write_coco reads it after this yield
            yield ImageRecord(image_id=i + 1, file_name=part["file_name"], width=part["width"],
                              height=part["height"],
                              instances=Instances.from_rles(
                                  part["height"], part["width"], [a["class"] for a in anns],
                                  [a["rle"] for a in anns], xywh=stats[i + 1][1]))

    lvis_counts = None
    if lvis_out:
        categories, lvis_counts = _lvis_categories(categories, parts, bg_set)
    written = coco.write_coco(out / "annotations.json", records(), categories,
                              info={"description": "weakpaste paste output",
                                    "seed": config.seed}, federated=federated,
                              stats=stats)
    if lvis_counts is not None:
        lvis_counts["negative_labels"] = sum(len(f.negative) for f in federated.values())
        lvis_counts["not_exhaustive_labels"] = sum(len(f.not_exhaustive)
                                                   for f in federated.values())
    return {**written,
            "per_class": dict(sorted(per_class.items())),
            "pasted_per_class": dict(sorted(pasted_per_class.items())),
            "dropped_by_occlusion": dict(sorted(dropped.items())),
            "dropped_total": sum(dropped.values()), "outside_image": outside,
            "no_room_space_max": skipped,
            **({"lvis": lvis_counts} if lvis_counts is not None else {})}


def _part_stats(anns: list[dict]) -> coco.MaskStats:
    """The areas and COCO boxes a worker stored with an item's annotations (computed here
    for a journal written by a weakpaste that did not store them)."""
    if all("area" in a and "bbox" in a for a in anns):
        return [a["area"] for a in anns], [a["bbox"] for a in anns]
    return coco.mask_stats([a["rle"] for a in anns])


def _federated_labels(background: Background | None, part: dict,
                      bg_categories: dict[str, dict]) -> coco.Federated:
    """The federated labels of an output image.

    Its positive set is what it holds. Every class pasted onto it (even one that a later
    paste hid) leaves the negative set; an LVIS background keeps its other negatives and its
    not-exhaustive classes; a COCO background is exhaustively annotated, so the file's
    classes absent from it are negatives; an extra background verified nothing.
    """
    if background is None or background.source == "extra":
        return coco.Federated()
    present = {a["class"] for a in part["annotations"]} | set(part["dropped"])
    if background.federated is not None:
        return coco.Federated(tuple(sorted(set(background.federated.negative) - present)),
                              background.federated.not_exhaustive)
    return coco.Federated(tuple(sorted(set(bg_categories) - set(background.labels) - present)))


def _lvis_categories(categories: dict[str, dict], parts: dict[int, dict],
                     bg_set: BackgroundSet) -> tuple[dict[str, dict], dict]:
    """The LVIS category table of the output and the counts to report.

    A category keeps the backgrounds file's ``frequency``, ``image_count`` and
    ``instance_count`` (they describe the original training set, which decides rare, common and
    frequent); missing ones come from the backgrounds file's annotations (the output's when
    there is none); a bank class that they never saw is rare.
    """
    images: Counter = Counter()
    instances: Counter = Counter()
    for part in parts.values():
        classes = [a["class"] for a in part["annotations"]]
        instances.update(classes)
        images.update(set(classes))
    src_images, src_instances = images, instances
    if bg_set.format is not None:
        src_images, src_instances = Counter(), Counter()
        for b in bg_set.backgrounds:
            if b.source != "extra" and b.instances is not None:
                src_instances.update(b.instances.classes)
                src_images.update(set(b.instances.classes))
    table = coco.complete_lvis_categories(categories, src_images, src_instances)
    report = {"image_count": {n: images[n] for n in table},
              "instance_count": {n: instances[n] for n in table},
              "classes_not_in_backgrounds": sorted(set(table) - set(bg_set.categories))}
    return table, report
