"""The outputs of a mining run: the bank, ``pseudo_labels.json``, the miner's own files and the
baselines."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from weakpaste.core.files import atomic_write_bytes
from weakpaste.io.images import read_image
from weakpaste.mine.miner import ImagePicks, Miner, Plan, Selection


def _record(rid: int, file_name: str, picks: ImagePicks, variant: str):
    from weakpaste.structures import ImageRecord, Instances

    chosen = picks.variants.get(variant, [])
    return ImageRecord(rid, file_name, picks.width, picks.height, instances=Instances.from_rles(
        picks.height, picks.width, [p.label for p in chosen], [p.rle for p in chosen],
        scores=[p.score for p in chosen]))


def write_bank(out: Path, miner: Miner, plan: Plan, sel: Selection) -> Counter:
    """Rewrite the bank from the selection's ``final`` picks; returns segments per class."""
    from weakpaste.bank.format import INDEX
    from weakpaste.bank.from_coco import segments_from_image
    from weakpaste.bank.store import BankWriter
    from weakpaste.ops import masks as mask_ops

    # Rebuilt whole: a resumed run must not append to what an earlier one wrote.
    (out / INDEX).unlink(missing_ok=True)
    shutil.rmtree(out / "segments", ignore_errors=True)
    kept: Counter = Counter()
    with BankWriter(out) as writer:
        for item, picks in zip(plan.items, sel.images, strict=True):
            chosen = picks.variants.get("final", [])
            if not chosen:
                continue
            masks = mask_ops.decode_many([p.rle for p in chosen], picks.height, picks.width)
            segs, _ = segments_from_image(read_image(item.path), masks,
                                          tuple(p.label for p in chosen),
                                          source_image=item.file_name, min_area=1,
                                          miner=miner.name)
            for seg, pick in zip(segs, chosen, strict=True):
                seg.scores.update(pick.bank_scores)
                writer.add(seg)
                kept[pick.label] += 1
    return kept


def write_outputs(out: Path, miner: Miner, plan: Plan, sel: Selection, *,
                  save_baselines: bool) -> Counter:
    """The bank, ``pseudo_labels.json``, the miner's files and (optionally) the baselines."""
    from weakpaste.io.coco import write_coco

    kept = write_bank(out, miner, plan, sel)
    categories = {c: {"id": k + 1, "supercategory": ""} for k, c in enumerate(plan.classes)}

    def records(variant: str) -> list:
        return [_record(i + 1, item.file_name, picks, variant)
                for i, (item, picks) in enumerate(zip(plan.items, sel.images, strict=True))]

    write_coco(out / "pseudo_labels.json", records("final"), categories,
               info={"description": f"weakpaste {miner.title} pseudo-labels"})
    for name, data in sel.files.items():
        atomic_write_bytes(out / name, data)
    if save_baselines:
        (out / "baselines").mkdir(exist_ok=True)
        for variant in sel.variants:
            write_coco(out / "baselines" / f"{variant}.json", records(variant), categories)
    return kept
