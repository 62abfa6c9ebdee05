"""What the training data decide: the stages (stage 1, stage 2), the classes, their counts
and the notes about them (``make_plan``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.manifest import (
    file_fingerprints,
    file_sha256,
    fingerprints_sha256,
    jsonable,
)
from weakpaste.core.options import flag_of
from weakpaste.evaluate.detection import training_frequency
from weakpaste.train import data as tdata
from weakpaste.train.config import TrainConfig
from weakpaste.train.data import STAGE2_FLAG, TRAIN_FLAG, VAL_FLAG

Spec = str | tdata.DataSpec


@dataclass
class TrainStage:
    name: str
    specs: list[tdata.DataSpec]
    items: list
    iterations: int
    begin: int = 0

    @property
    def end(self) -> int:
        return self.begin + self.iterations


@dataclass
class TrainPlan:
    """The stages, classes and counts that the input data decide, and notes about them."""

    specs1: list[tdata.DataSpec]
    specs2: list[tdata.DataSpec]
    val: tdata.DataSpec | None
    stages: list[TrainStage]
    names: tuple[str, ...]
    instances: dict[str, int]
    train_image_counts: dict[str, int]
    train_frequency: dict[str, str] | None
    notes: list[str]

    @property
    def total(self) -> int:
        return self.stages[-1].end

    def input_paths(self) -> list[Path | None]:
        specs = self.specs1 + self.specs2 + ([self.val] if self.val is not None else [])
        return [p for s in specs for p in (s.json, s.images)]

    def image_fingerprints(self) -> dict[str, dict[str, list[int]]]:
        """Each stage's images read: path -> [size, modification time] (a stat each)."""
        return {st.name: file_fingerprints(Path(folder) / rec.file_name
                                           for folder, rec in st.items) for st in self.stages}

    def manifest_config(self, config: TrainConfig) -> dict:
        """The manifest's (and the checkpoints') config: the options and the data."""
        return jsonable({**config.to_dict(), "train": [str(s) for s in self.specs1],
                         "stage2": [str(s) for s in self.specs2],
                         "val": str(self.val) if self.val else None})

    def counts(self) -> dict[str, Any]:
        """The manifest's counts: classes, iterations, images and instances."""
        return {"classes": len(self.names), "iterations": self.total,
                "images": {st.name: len(st.items) for st in self.stages},
                "instances_per_class": self.instances,
                "train_images_per_class": self.train_image_counts}

    def input_hashes(self, fingerprints: dict[str, dict[str, list[int]]]) -> dict[str, str]:
        inputs = {f"train:{s.json}": file_sha256(s.json) for s in self.specs1}
        inputs.update({f"stage2:{s.json}": file_sha256(s.json) for s in self.specs2})
        if self.val is not None:
            inputs[f"val:{self.val.json}"] = file_sha256(self.val.json)
        for name, listing in fingerprints.items():
            inputs[f"images:{name}"] = fingerprints_sha256(listing)
        return inputs


def _stages(config: TrainConfig, specs1: list, sets1: list, specs2: list, sets2: list,
            notes: list[str]) -> list[TrainStage]:
    stages: list[TrainStage] = []
    it2 = config.iterations if config.stage2_iterations is None else config.stage2_iterations
    for name, specs, sets, iters in (("stage 1", specs1, sets1, config.iterations),
                                     ("stage 2", specs2, sets2, it2)):
        if not sets or iters == 0:
            continue
        items, skipped = tdata.training_items(sets, keep_empty=config.keep_empty)
        if skipped:
            notes.append(f"{name}: {skipped} image(s) without annotations left out (pass "
                         f"{flag_of(TrainConfig, 'keep_empty')} to train on them as "
                         "background)")
        if not any(rec.instances is not None and len(rec.instances) for _, rec in items):
            raise WeakpasteError(f"{specs[0].json}: no instance to learn from in the {name} "
                                 "data; check that its annotations carry segmentations")
        stages.append(TrainStage(name, specs, items, iters,
                             begin=stages[-1].end if stages else 0))
    return stages


def make_plan(config: TrainConfig, train_sets: Sequence[Spec], stage2: Sequence[Spec],
          val: Spec | None) -> TrainPlan:
    specs1 = [tdata.parse_data_spec(t, option=TRAIN_FLAG) for t in train_sets]
    if not specs1:
        raise WeakpasteError(f"no training data; pass {TRAIN_FLAG} COCO_JSON:IMAGES_DIR")
    specs2 = [tdata.parse_data_spec(t, option=STAGE2_FLAG) for t in stage2]
    val_spec = tdata.parse_data_spec(val, option=VAL_FLAG) if val is not None else None
    sets1 = [tdata.load_spec(s) for s in specs1]
    sets2 = [tdata.load_spec(s) for s in specs2]
    val_set = tdata.load_spec(val_spec) if val_spec is not None else None

    names, notes = tdata.merge_categories(sets1 + sets2)
    if not names:
        raise WeakpasteError(f"{specs1[0].json}: no categories; the training data needs a "
                             "'categories' list with the classes to learn")
    stages = _stages(config, specs1, sets1, specs2, sets2, notes)
    instances = tdata.class_instance_counts([rec for st in stages for _, rec in st.items], names)
    empty = [n for n, k in instances.items() if k == 0]
    if empty:
        notes.append(f"{len(empty)} class(es) have no instance in the training data; the model "
                     f"keeps an output for them but cannot learn them: {tdata.name_list(empty)}")
    # Rare/common/frequent are defined on the original data: stage 2's when given, by its LVIS
    # frequencies when it is LVIS (a pasted LVIS set keeps its backgrounds').
    freq_records = [rec for ds in (sets2 or sets1) for rec in ds.records]
    if val_set is not None:
        notes += tdata.map_eval_categories(names, val_set)[1]
    return TrainPlan(specs1, specs2, val_spec, stages, names, instances,
                 tdata.class_image_counts(freq_records, names),
                 training_frequency(sets2 or sets1, names), notes)
