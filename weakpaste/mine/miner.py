"""What a miner sees and returns: the items, the plan, the picks and the ``Miner`` interface
that ``weakpaste.mine.pipeline`` runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weakpaste.core.options import Config


@dataclass(frozen=True)
class Item:
    """One image to mine.

    Attributes:
        file_name: relative to the images folder (the outputs' file_name).
        path: the image file.
        labels: its classes.
        sha256: hex SHA-256 of the file's bytes.
    """

    file_name: str
    path: str
    labels: tuple[str, ...]
    sha256: str


@dataclass
class Plan:
    """Which images a miner mines (``Miner.plan``).

    Attributes:
        records: the images to mine, in output order (image id = position + 1).
        classes: the output categories, and the classes of a newly trained classifier.
        train: the classifier's training images (targets: their labels, multi-hot).
        counts: counts for the manifest (e.g. ``labelled_images``).
        skipped: images left out, by reason.
        items: ``records`` as ``Item``s (set by the pipeline).
        negatives: more training images showing none of the classes (all-zero targets).
        extra: more labelled training images, not mined (their labels among ``classes``; an
            image left without one is a negative): the classifier trains on them, and the
            per-image function runs on them too when the miner's ``maps_extra`` is set (a
            head trained on per-image results, ``Miner.fit``).
    """

    records: list
    classes: list[str]
    train: list
    counts: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    items: list[Item] = field(default_factory=list)
    negatives: list[Path] = field(default_factory=list)
    extra: list[Item] = field(default_factory=list)


@dataclass
class Pick:
    """One picked segment: its class, RLE mask, COCO score and (in the bank) its scores."""

    label: str
    rle: dict
    score: float
    bank_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class ImagePicks:
    """Per image: its size and the picks of each variant (missing variants: none)."""

    height: int
    width: int
    variants: dict[str, list[Pick]]


@dataclass
class Selection:
    """What a miner's selection decided over all images (``Miner.select``).

    Attributes:
        images: per ``plan.items`` entry, the picks; variant ``final`` fills the bank and
            ``pseudo_labels.json``, each other variant ``baselines/<variant>.json``.
        variants: the baseline variants.
        counts: miner-specific manifest counts.
        skipped: images or labels left out, by reason.
        extra: miner-specific manifest sections.
        files: more output files (name -> bytes).
        seconds: timings of the selection's stages.
    """

    images: list[ImagePicks]
    variants: tuple[str, ...] = ()
    counts: dict[str, Any] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class Miner:
    """Base of the miners: the hooks' defaults (see the module docstring)."""

    name = "miner"
    title = "miner"
    # The dataclasses a per-image result is made of: the only classes its cache file may
    # rebuild (weakpaste.mine.cache).
    result_types: tuple[type, ...] = ()
    maps_extra = False  # run the per-image function on ``plan.extra`` too (for ``fit``)

    def __init__(self, config: Config):
        self.config = config

    def plan(self, records: list, classes: list[str], source: str) -> Plan:
        """Every labelled image, all classes; the classifier trains on every image.

        Args:
            records: ``load_labels``' records.
            classes: its classes.
            source: the labels file or images folder, for messages.
        """
        todo = [r for r in records if r.labels]
        return Plan(todo, list(classes), list(records))

    def inputs(self) -> dict[str, str]:
        """Model files the per-image results depend on: name -> path."""
        return {}

    def open(self, saliency_cache: Path, threads: int | None) -> dict:
        """Per-process models besides the classifier (``threads``: torch/ONNX threads;
        ``saliency_cache``: the folder of the saliency maps, ``RunOptions.saliency_cache`` or
        ``OUT/.cache/saliency``)."""
        return {}

    def describe(self, models: dict) -> dict[str, str]:
        """Settings of the opened models for the manifest config and the cache key."""
        return {}

    def mine_image(self, models: dict, image: np.ndarray, item: Item):
        """The pure per-image function (uint8 (H, W, 3) ``image``): a result made of
        ``result_types`` (see ``weakpaste.mine.cache``)."""
        raise NotImplementedError

    def fit(self, results: Sequence, plan: Plan) -> dict:
        """Train what the selection needs on every per-image result (``plan.items`` then,
        with ``maps_extra``, ``plan.extra``), between the per-image map and ``select``.

        Returns:
            Training information for the manifest (default: nothing to train).
        """
        return {}

    def select(self, results: Sequence, plan: Plan) -> Selection:
        """The pure selection over every image's result (in ``plan.items`` order)."""
        raise NotImplementedError
