"""Long-tailed subsets of COCO data sets whose class sizes follow a Pareto rule.

EM-Paste appendix §11 builds its long-tailed PASCAL VOC with the method of Wu et al. (ECCV
2020, "Distribution-balanced loss"):

1. A reference count per class comes from the Pareto pdf f(x, b) = b / x^(b+1) (SciPy's
   ``pareto``) sampled at K evenly spaced points from its 0 quantile (x = 1) to its 0.99
   quantile, rescaled to ``pdf * (max - min) / b + min`` and truncated to integers: the first
   class gets exactly ``max`` and the curve decays towards ``min``; since the sample points
   always span the same quantiles, a smaller b drops faster after the head (10 classes, max
   800: b = 1 gives 800, 6, 2, 1, …; b = 6 gives 800, 344, 162, …, 4; b = 10 gives 800, 400,
   209, …, 6). With b = 6, max = 800, min = 1 and PASCAL VOC's 20 classes the last class gets
   4, the "minimum of 4 masks" of the paper's data set.
2. Classes are sorted in descending order of their available instances (masks).
3. Going down that order, images are added (or removed) at random until the class's instance
   count in the subset roughly fits its reference count.

Images are the unit (removing single annotations would leave unlabelled objects in the
images), so a class's count moves when images are added for other classes that it shares
images with; the final counts therefore only roughly follow the reference, as in the paper
(its largest class has 836 masks for max = 800). Here an image is added or removed only when
that brings the class's count closer to its reference, and a class whose reference exceeds
its available instances takes all of them.

Kept out of the ranking: classes without any instance (they cannot be sampled; they stay in
``categories``) and images without annotations (they contain no class to count). Crowd regions
are not instances. Nothing here imports torch.

An LVIS input gives an LVIS subset: images keep their federated lists, categories their
``frequency`` (the original training set's, which the report shows per class), while
``image_count`` and ``instance_count`` are the subset's.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weakpaste import __version__
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.manifest import file_sha256
from weakpaste.core.options import option
from weakpaste.core.run import RunOptions, StageInputs, StageRun
from weakpaste.io.coco import load_coco, write_coco_subset
from weakpaste.train.config import LongtailConfig

PARETO_TAIL = 0.99


def pareto_reference(num_classes: int, shape: float, max_count: int, min_count: int,
                     tail: float = PARETO_TAIL) -> np.ndarray:
    """Reference instance counts of classes ranked 0..K-1 (EM-Paste appendix §11).

    Args:
        num_classes: K >= 1.
        shape: the Pareto shape b > 0 (smaller drops faster after the first class).
        max_count: the first class's count.
        min_count: the count the curve decays towards.
        tail: quantile of the last sample point.

    Returns:
        int64 (K,), non-increasing, first element ``max_count``.
    """
    from scipy.stats import pareto

    if num_classes < 1:
        return np.zeros(0, dtype=np.int64)
    x = np.linspace(pareto.ppf(0.0, shape), pareto.ppf(tail, shape), num_classes)
    ref = pareto.pdf(x, shape) * (max_count - min_count) / shape + min_count
    # Truncation (not rounding) as in the reference implementation.
    return ref.astype(np.int64)


def select_longtail(image_classes: Mapping[int, Sequence[str]], config: LongtailConfig
                    ) -> tuple[list[int], dict]:
    """Choose the images of a long-tailed subset.

    Args:
        image_classes: image id -> class name of each of its instances.
        config: the Pareto reference (``shape``, ``max_count``, ``min_count``; see
            ``pareto_reference``) and ``seed``, the only source of randomness
            (``np.random.default_rng(seed)``).

    Returns:
        (sorted selected image ids, report with ``order`` (classes by available instances),
        ``reference``, ``available`` and ``selected`` instance counts per class).
    """
    rng = np.random.default_rng(config.seed)
    per_image = {i: Counter(c) for i, c in image_classes.items() if c}
    available = Counter()
    for cnt in per_image.values():
        available.update(cnt)
    # Descending available instances; ties broken by name so the order is reproducible.
    order = sorted(available, key=lambda c: (-available[c], c))
    reference = pareto_reference(len(order), config.shape, config.max_count, config.min_count)
    with_class = {c: [] for c in order}
    for img in sorted(per_image):
        for c in per_image[img]:
            with_class[c].append(img)
    selected: set[int] = set()
    current = Counter()
    for c, target in zip(order, reference.tolist(), strict=True):
        target = min(target, available[c])
        if current[c] < target:
            pool = [i for i in with_class[c] if i not in selected]
            for img in rng.permutation(np.array(pool, dtype=np.int64)).tolist():
                if current[c] >= target:
                    break
                k = per_image[img][c]
                if abs(current[c] + k - target) < abs(current[c] - target):
                    selected.add(img)
                    current.update(per_image[img])
        elif current[c] > target:
            pool = sorted(i for i in with_class[c] if i in selected)
            for img in rng.permutation(np.array(pool, dtype=np.int64)).tolist():
                if current[c] <= target:
                    break
                k = per_image[img][c]
                if abs(current[c] - k - target) < abs(current[c] - target):
                    selected.remove(img)
                    current.subtract(per_image[img])
    report = {"order": order, "reference": dict(zip(order, reference.tolist(), strict=True)),
              "available": {c: available[c] for c in order},
              "selected": {c: int(current[c]) for c in order}}
    return sorted(selected), report


@dataclass(frozen=True)
class LongtailInputs(StageInputs):
    """The input of ``longtail``: the COCO file (``coco_json``) to take the subset from."""

    coco_json: str | os.PathLike = option(positional=True,
                                          help="COCO instances JSON to take the subset from")


def run_longtail(config: LongtailConfig, inputs: LongtailInputs, run: RunOptions) -> dict:
    """``weakpaste longtail``: write a long-tailed subset of a COCO file.

    The output keeps the input's entries unchanged (ids, polygons or RLE, extra fields) for the
    chosen images and all of its categories; its ``info.weakpaste`` block records the stage,
    configuration, seed, version, input SHA-256 and counts (the output is one file, so the
    provenance that other stages keep in ``manifest.json`` travels inside it).

    Args:
        config: the Pareto reference (shape, max and min counts) and the seed.
        inputs: the input COCO file.
        run: ``out``, the subset (a COCO JSON file) to write; ``overwrite`` replaces it.

    Returns:
        The provenance block, with ``counts`` (images, annotations, per-class reference,
        available and selected instances) and ``notes``.

    Raises:
        WeakpasteError: unreadable input, no instances, or an existing output without
            ``overwrite``.
    """
    src = Path(inputs.coco_json)
    with StageRun("longtail", run, inputs=inputs.paths(), resumable=False,
                  output="file") as stage:
        data = load_coco(src, require_masks=False, check_files=False)
        provenance = _subset(config, data, src)
        written = write_coco_subset(src, stage.out, provenance.pop("ids"),
                                    info={"weakpaste": provenance})
    provenance["counts"]["annotations"] = written["annotations"]
    return provenance


def _subset(config: LongtailConfig, data, src: Path) -> dict:
    """The images of the subset (``ids``) and the provenance block to write with them."""
    image_classes = {r.image_id: (r.instances.classes if r.instances is not None else ())
                     for r in data.records}
    ids, report = select_longtail(image_classes, config)
    if not report["order"]:
        raise WeakpasteError(f"{src}: no annotated instance to sample from; a long-tailed subset "
                             "needs a COCO file with annotations")
    notes = []
    absent = [n for n in data.categories if n not in report["available"]]
    if absent:
        notes.append(f"{len(absent)} class(es) have no instance in {src} and stay empty: "
                     + ", ".join(repr(n) for n in absent[:8]) + (" …" if len(absent) > 8 else ""))
    unannotated = sum(1 for c in image_classes.values() if not c)
    if unannotated:
        notes.append(f"{unannotated} image(s) without annotations are never selected")
    short = [c for c in report["order"] if report["reference"][c] > report["available"][c]]
    if short:
        notes.append(f"{len(short)} class(es) have fewer instances than their reference count "
                     "and are taken whole: " + ", ".join(repr(n) for n in short[:8])
                     + (" …" if len(short) > 8 else ""))
    settings = {"shape": config.shape, "max": config.max_count, "min": config.min_count,
                "tail": PARETO_TAIL,
                "rule": "EM-Paste appendix 11 (Pareto reference, classes by available instances)"}
    provenance = {"stage": "longtail", "weakpaste_version": __version__, "seed": config.seed,
                  "config": settings, "inputs": {str(src): file_sha256(src)},
                  "counts": {"images": len(ids), "classes": len(report["order"]),
                             "per_class": {c: {"reference": report["reference"][c],
                                               "available": report["available"][c],
                                               "selected": report["selected"][c],
                                               **_frequency_of(data.frequency, c)}
                                           for c in report["order"]}},
                  "notes": notes}
    return {**provenance, "ids": ids}


def _frequency_of(frequency: Mapping[str, str] | None, name: str) -> dict:
    """{"frequency": the file's LVIS bucket of ``name``}, or {} for a file without one."""
    return {} if frequency is None else {"frequency": frequency[name]}


def format_report(provenance: Mapping) -> str:
    """Per-class reference / available / selected instances (and an LVIS file's frequency) as
    a text table."""
    rows = provenance["counts"]["per_class"]
    width = max([len(n) for n in rows] + [5])
    lvis = any("frequency" in row for row in rows.values())
    lines = [f"{'class':<{width}}  reference  available  selected" + ("  frequency" * lvis)]
    for name, row in rows.items():
        lines.append(f"{name:<{width}}  {row['reference']:>9}  {row['available']:>9}  "
                     f"{row['selected']:>8}" + (f"  {row.get('frequency', '-'):>9}" * lvis))
    return "\n".join(lines)


__all__ = ["pareto_reference", "select_longtail", "LongtailInputs", "run_longtail",
           "format_report"]
