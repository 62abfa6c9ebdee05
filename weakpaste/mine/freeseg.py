"""FreeSeg: segments from object-centric images by co-segmentation and ranking.

FreeSeg (Zhang et al., ECCV 2022) §3.1-3.2 and appendix A.2-A.3. Input: object-centric images
(one salient object of a known class per image), e.g. one folder per class. Pipeline:

1. **Raw segments** (§3.1). The paper runs the SSM co-segmentation network, which is not
   available here; we co-segment with the similarity among a class's images instead:
   * a per-image saliency map (``weakpaste.mine.saliency``: an ONNX salient-object model, or
     spectral residual without weights), cached on disk by image and model;
   * dense features of the classifier's trunk (the last feature map, D x h x w) of every image
     of the class, L2-normalised per cell and centred on the class mean;
   * a common-foreground model fitted across the class (``weakpaste.mine.coseg``): one
     foreground prototype (each image's cells weighted by their foreground belief, images
     weighted equally) against ``bg_clusters`` background prototypes (spherical k-means of
     the cells believed background, weighted by 1 - belief); a cell's belief becomes
     sigmoid((cos(fg) - max(cos(bg), floor)) / T): foreground must resemble the common
     foreground more than any background and at least ``floor`` (a salient thing unlike
     anything else the class shows is not the class's object). The first beliefs are the
     saliency times a centre prior (object-centric photos); ``coseg_iters`` rounds. The
     result is high where a cell looks like what the class's images have in common in their
     salient centre, and low on salient clutter the class does not share;
   * the raw gray-scale map = coseg^a * saliency^(1-a) (``coseg_weight`` a; 0 = saliency only,
     1 = co-segmentation only), normalised to a maximum of 1: the saliency gives sharp
     boundaries, the co-segmentation which salient thing is the class's object.
   A class with a single image (nothing to be common with) falls back to its saliency map; the
   manifest lists such classes and the command line says so.
2. **Refinement** (§3.1, A.3, ``weakpaste.mine.refine``): Gaussian filter, Li threshold
   (``skimage.filters.threshold_li``), erosion then dilation, the largest connected component.
3. **Ranking** (§3.2, ``weakpaste.mine.lore``): a classifier trained on the object-centric
   images; LORE (remove the most discriminative region, found by Grad-CAM, until the classifier
   stops predicting the class; the box of all that was removed is the pseudo box); the
   FreeSeg score = mean(IoB, IoM) of segment vs LORE box; the drop rate
   (p_before - p_after) / p_before of removing the LORE box. A segment is kept when both are
   larger than their thresholds (``min_score``, ``min_drop``; 0.5 each by default).

Per-image work (saliency, dense features, LORE) is a pure function (``mine_image``); the
per-class co-segmentation, refinement and ranking are a pure selection over the cached results
(``FreeSegMiner.select``), cheap, one class in memory at a time. The mining pipeline
(``weakpaste.mine.pipeline``) trains the classifier, maps the per-image function over a process
pool with an on-disk cache under ``OUT/.cache/<key>/`` (an interrupted run resumes) and writes
the bank.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.mine.config import FreeSegConfig, FreeSegParams
from weakpaste.mine.coseg import coseg_maps, fuse_maps, grid_prior
from weakpaste.mine.lore import LoreResult, drop_rate, freeseg_score, keep_segment, lore_box
from weakpaste.mine.pipeline import ImagePicks, Item, Miner, Pick, Plan, Selection, run_mine
from weakpaste.mine.refine import refine_steps
from weakpaste.ops import masks as mask_ops

if TYPE_CHECKING:
    from weakpaste.core.run import RunOptions
    from weakpaste.mine.pipeline import MineInputs

MINER = "freeseg"


# --------------------------------------------------------------------------------------------
# Per-image work (pure, cached), the per-class selection and the miner


@dataclass
class ImageFreeSeg:
    """Per-image result of the pooled stage (cached on disk)."""

    file_name: str
    label: str
    height: int
    width: int
    saliency: np.ndarray | None = None   # uint8 (H, W), 255 = foreground
    features: np.ndarray | None = None   # float16 (D, h, w), L2-normalised per cell
    lore: LoreResult | None = None
    skipped: str | None = None
    saliency_cached: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


def mine_image(classifier, saliency_backend, image: np.ndarray, label: str, file_name: str,
               params: FreeSegParams, *, digest: str = "", cache=None) -> ImageFreeSeg:
    """Saliency, dense features and LORE of one object-centric image (pure but for the cache).

    Args:
        classifier: a trained ``Classifier`` (or an object with ``feature_maps``,
            ``predict_proba`` and ``gradcam``).
        saliency_backend: callable uint8 (H, W, 3) -> float32 (H, W) in [0, 1].
        image: uint8 (H, W, 3) RGB.
        label: the image's class (known to the classifier).
        file_name: recorded in the result.
        params: per-image settings.
        digest: the image file's SHA-256 (saliency cache key).
        cache: a ``SaliencyCache`` or None.

    Returns:
        The per-image result (``skipped`` set for images too small to use).
    """
    from weakpaste.mine.saliency import cached_saliency

    H, W = image.shape[:2]
    res = ImageFreeSeg(file_name=file_name, label=label, height=H, width=W)
    if min(H, W) < params.min_side:
        res.skipped = f"smaller than {params.min_side} px"
        return res
    # Wall and CPU seconds per step: on a shared machine the wall time measures the load,
    # the CPU time (this process's, one thread per worker) what the step costs.
    marks = [(time.perf_counter(), time.process_time())]
    sal, res.saliency_cached = cached_saliency(saliency_backend, image, digest,
                                               cache if digest else None)
    res.saliency = np.clip(np.rint(sal * 255.0), 0, 255).astype(np.uint8)
    marks.append((time.perf_counter(), time.process_time()))
    fmap = classifier.feature_maps([image])[0]
    d, h, w = fmap.shape
    flat = fmap.reshape(d, -1)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=0, keepdims=True), 1e-8)
    res.features = flat.reshape(d, h, w).astype(np.float16)
    marks.append((time.perf_counter(), time.process_time()))
    k = list(classifier.classes).index(label)
    res.lore = lore_box(classifier, image, k, cam_threshold=params.cam_threshold,
                        max_steps=params.lore_steps, stop=params.lore_stop)
    marks.append((time.perf_counter(), time.process_time()))
    for step, (a, b) in zip(("saliency", "features", "lore"), pairwise(marks), strict=True):
        res.seconds[step] = b[0] - a[0]
        res.seconds[f"{step}_cpu"] = b[1] - a[1]
    return res


@dataclass
class _Outcome:
    """What the per-class stage decided for one image (small: kept in memory)."""

    index: int
    raw_rle: dict | None = None
    refined_rle: dict | None = None
    scores: dict[str, float] = field(default_factory=dict)
    kept: bool = False
    fallback: bool = False
    lore_box: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)


def _class_stage(results: list[ImageFreeSeg], indices: list[int], config: FreeSegConfig
                 ) -> tuple[list[_Outcome], bool, dict[str, float]]:
    """Co-segment, refine and rank the usable images of one class."""
    secs: dict[str, float] = defaultdict(float)
    t = time.perf_counter()
    sal = [r.saliency.astype(np.float32) / 255.0 for r in results]
    fallback = len(results) < max(2, config.min_coseg_images) or config.coseg_weight <= 0
    if fallback:
        cos = [None] * len(results)
    else:
        priors = [grid_prior(s, r.features.shape[1:], config.centre_sigma)
                  for s, r in zip(sal, results, strict=True)]
        cos = coseg_maps([r.features.astype(np.float32) for r in results], priors,
                         iters=config.coseg_iters, bg_clusters=config.bg_clusters,
                         temperature=config.temperature, floor=config.floor,
                         seed=config.seed)
    raws = [fuse_maps(c, s, config.coseg_weight) for c, s in zip(cos, sal, strict=True)]
    secs["coseg"] += time.perf_counter() - t
    outcomes = [_refine_and_measure(r, i, raw, s, fallback and config.coseg_weight > 0,
                                    config, secs)
                for r, i, raw, s in zip(results, indices, raws, sal, strict=True)]
    return outcomes, fallback, secs


def _refine_and_measure(res: ImageFreeSeg, index: int, raw: np.ndarray, saliency: np.ndarray,
                        fallback: bool, config: FreeSegConfig, secs: dict[str, float]
                        ) -> _Outcome:
    """One image's raw and refined segments and every score of the refined one: the paper's
    (FreeSeg score, drop rate) and the label-free cues (``weakpaste.mine.ranking``)."""
    from weakpaste.mine.ranking import segment_cues

    t = time.perf_counter()
    out = _Outcome(index=index, fallback=fallback)
    raw_mask = raw >= config.raw_threshold
    if raw_mask.any():
        out.raw_rle = mask_ops.encode(raw_mask)
    refined = refine_steps(raw, sigma=config.smooth, morph=config.morph)
    t2 = time.perf_counter()
    secs["refine"] += t2 - t
    if refined.mask.any():
        mask, lore = refined.mask, res.lore
        out.refined_rle = mask_ops.encode(mask)
        out.lore_box = tuple(float(v) for v in lore.box)
        score, iob, iom = freeseg_score(mask, lore.box)
        out.scores = {"freeseg": score, "iob": iob, "iom": iom, "drop_rate": lore.drop_rate,
                      "p_before": lore.p_before, "p_after": lore.p_after,
                      "lore_steps": float(lore.steps), "li_threshold": refined.threshold,
                      "coseg_fallback": float(out.fallback),
                      **segment_cues(saliency, refined.smooth, refined.threshold,
                                     refined.binary, mask, delta=config.stability_delta)}
    secs["rank"] += time.perf_counter() - t2
    return out


class FreeSegMiner(Miner):
    """FreeSeg for the mining pipeline (``weakpaste.mine.pipeline``)."""

    name = MINER
    title = "FreeSeg"
    config: FreeSegConfig
    result_types = (ImageFreeSeg, LoreResult)

    def plan(self, records: list, classes: list[str], source: str) -> Plan:
        """The object-centric images (exactly one class each) and their classes."""
        skipped: Counter = Counter()
        todo = []
        for r in records:
            if len(r.labels) == 1:
                todo.append(r)
            else:
                skipped["no label" if not r.labels else "more than one label"] += 1
        if not todo:
            raise WeakpasteError(f"{source}: no image has exactly one class; FreeSeg mines "
                                 "object-centric images (one class each): use one folder per "
                                 "class or map each image to one class")
        used = [c for c in classes if any(r.labels[0] == c for r in todo)]
        return Plan(todo, used, todo, counts={"object_centric_images": len(todo)},
                    skipped=skipped)

    def inputs(self) -> dict[str, str]:
        p = self.config.params
        return {} if p.saliency == "spectral" else {"saliency_model": p.saliency}

    def open(self, saliency_cache: Path, threads: int | None) -> dict:
        from weakpaste.mine.saliency import SaliencyCache, make_saliency

        p = self.config.params
        backend = make_saliency(p.saliency, convention=p.saliency_convention,
                                size=p.saliency_size, threads=threads, rescale=True)
        return {"saliency": backend, "cache": SaliencyCache(saliency_cache, backend.key)}

    def describe(self, models: dict) -> dict[str, str]:
        return {"saliency_key": models["saliency"].key}

    def mine_image(self, models: dict, image: np.ndarray, item: Item) -> ImageFreeSeg:
        return mine_image(models["classifier"], models["saliency"], image, item.labels[0],
                          item.file_name, self.config.params, digest=item.sha256,
                          cache=models["cache"])

    def _outcomes(self, results: Sequence[ImageFreeSeg], plan: Plan) -> dict:
        """Per class (one in memory at a time): co-segment, refine and rank its images."""
        by_class: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(plan.items):
            by_class[item.labels[0]].append(i)
        st = {"outcomes": {}, "dims": {}, "fallback": [], "skipped": Counter(), "features": {},
              "seconds": defaultdict(float), "from_cache": 0,
              "per_class": {c: len(v) for c, v in sorted(by_class.items())}}
        for label in plan.classes:
            usable, idx = [], []
            for i in by_class[label]:
                res: ImageFreeSeg = results[i]
                st["dims"][i] = (res.height, res.width)
                st["from_cache"] += int(res.saliency_cached)
                if res.skipped:
                    st["skipped"][res.skipped] += 1
                    continue
                usable.append(res)
                idx.append(i)
                if self.config.crossfit_folds and res.lore is not None \
                        and res.lore.features_before is not None:
                    st["features"][i] = (res.lore.features_before, res.lore.features_after)
            if not usable:
                continue
            outs, fallback, secs = _class_stage(usable, idx, self.config)
            if fallback and self.config.coseg_weight > 0:
                st["fallback"].append(label)
            for k, v in secs.items():
                st["seconds"][k] += v
            for o in outs:
                st["outcomes"][o.index] = o
                if o.refined_rle is None:
                    st["skipped"]["empty after refinement"] += 1
            del usable
        return st

    def select(self, results: Sequence[ImageFreeSeg], plan: Plan) -> Selection:
        """Per image the refined segment when the ranking keeps it (``final``), and the
        ``raw``, ``refined`` and ``random`` baselines; ``freeseg_scores.json``."""
        config = self.config
        st = self._outcomes(results, plan)
        outcomes: dict[int, _Outcome] = st["outcomes"]
        refined_ids = [i for i in sorted(outcomes) if outcomes[i].refined_rle is not None]
        t = time.perf_counter()
        self._rank(outcomes, refined_ids, plan, st["features"])
        st["seconds"]["rank"] += time.perf_counter() - t
        kept_ids = [i for i in refined_ids if outcomes[i].kept]
        rng = np.random.default_rng(config.seed)
        random_ids = set(rng.choice(np.asarray(refined_ids, dtype=np.int64),
                                    size=len(kept_ids), replace=False).tolist()) \
            if refined_ids else set()
        images, rows = [], []
        for i, item in enumerate(plan.items):
            o = outcomes.get(i)
            images.append(ImagePicks(*st["dims"][i], _picks(o, item.labels[0], i in random_ids)))
            if o is not None and o.refined_rle is not None:
                rows.append({"file_name": item.file_name, "class": item.labels[0],
                             "kept": o.kept, "lore_box": list(o.lore_box),
                             **{k: (None if not np.isfinite(v) else round(float(v), 6))
                                for k, v in o.scores.items()}})
        scores = json.dumps({"rank_by": list(config.rank_cues), "keep_top": config.keep_top,
                             "min_rank": config.min_rank, "min_score": config.min_score,
                             "min_drop": config.min_drop, "segments": rows}, indent=1).encode()
        counts = {"saliency_from_cache": st["from_cache"],
                  "raw_segments": sum(o.raw_rle is not None for o in outcomes.values()),
                  "refined_segments": len(refined_ids),
                  "below_thresholds": len(refined_ids) - len(kept_ids)}
        coseg = {"fallback_classes": st["fallback"],
                 "fallback_reason": "fewer than min_coseg_images images: saliency alone",
                 "images_per_class": st["per_class"]}
        return Selection(images, variants=("raw", "refined", "random"), counts=counts,
                         skipped=st["skipped"], extra={"coseg": coseg},
                         files={"freeseg_scores.json": scores}, seconds=dict(st["seconds"]))

    def _rank(self, outcomes: dict[int, _Outcome], ids: list[int], plan: Plan,
              features: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        """Score every refined segment (``rank``: the mean percentile rank of the
        ``rank_cues``) and decide which are kept: the cut-off (``keep_top``, ``min_rank``,
        per class or global) and the paper's thresholds (FreeSeg score, drop rate)."""
        from weakpaste.mine.ranking import CUES, keep_mask, rank_average

        config = self.config
        labels = [plan.items[i].labels[0] for i in ids]
        if config.crossfit_folds and ids:
            _crossfit(outcomes, ids, labels, plan.classes, features, config)
        values = {c: [outcomes[i].scores.get(c, np.nan) for i in ids] for c in config.rank_cues}
        rank = rank_average(values, {c: CUES[c] for c in config.rank_cues})
        kept = keep_mask(rank, keep_top=config.keep_top, min_score=config.min_rank,
                         groups=labels if config.keep_per_class else None)
        for i, r, k in zip(ids, rank, kept, strict=True):
            o = outcomes[i]
            o.scores["rank"] = float(r)
            o.kept = bool(k) and keep_segment(o.scores["freeseg"], o.scores["drop_rate"],
                                              config.min_score, config.min_drop)


def _crossfit(outcomes: dict[int, _Outcome], ids: list[int], labels: list[str],
              classes: list[str], features: dict[int, tuple[np.ndarray, np.ndarray]],
              config: FreeSegConfig) -> None:
    """Add the cross-fitted classifier scores (``p_before_cf``, ``p_after_cf``,
    ``drop_rate_cf``) of the segments whose image's pooled features are known."""
    from weakpaste.mine.ranking import crossfit_folds, crossfit_probabilities

    have = [n for n, i in enumerate(ids) if i in features]
    if not have:
        return
    folds = crossfit_folds([labels[n] for n in have], config.crossfit_folds, config.seed)
    feats = {"before": np.stack([features[ids[n]][0] for n in have]),
             "after": np.stack([features[ids[n]][1] for n in have])}
    spec = config.model
    p = crossfit_probabilities(feats, [labels[n] for n in have], classes, folds,
                               epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size,
                               seed=config.seed)
    for k, n in enumerate(have):
        scores = outcomes[ids[n]].scores
        before, after = float(p["before"][k]), float(p["after"][k])
        scores.update(p_before_cf=before, p_after_cf=after,
                      drop_rate_cf=drop_rate(before, after) if np.isfinite(before) else np.nan)


def _picks(o: _Outcome | None, label: str, random: bool) -> dict[str, list[Pick]]:
    """One image's picks: its refined segment as ``final`` (when kept), ``refined`` and
    ``random`` (when drawn), its raw map as ``raw``; every COCO score is the ranking score
    (``rank``), so that a file of picks ranks itself (``evaluate-masks`` prints its curve)."""
    if o is None:
        return {}
    score = float(o.scores.get("rank", 0.0))
    picks = {}
    if o.raw_rle is not None:
        picks["raw"] = [Pick(label, o.raw_rle, score)]
    if o.refined_rle is not None:
        picks["refined"] = [Pick(label, o.refined_rle, score)]
        if random:
            picks["random"] = [Pick(label, o.refined_rle, score)]
        if o.kept:
            bank = {k: float(v) for k, v in o.scores.items() if np.isfinite(v)}
            picks["final"] = [Pick(label, o.refined_rle, score, {**bank, "score": score})]
    return picks


def run_mine_freeseg(config: FreeSegConfig, inputs: MineInputs, run: RunOptions, *,
                     save_baselines: bool = False) -> dict:
    """``weakpaste mine freeseg``: a segment bank + ``pseudo_labels.json``.

    Args:
        config: classifier, co-segmentation, refinement and ranking settings.
        inputs: the images and their image-level labels (``MineInputs``; one class per
            image for FreeSeg).
        run: output folder and how to run (as for ``weakpaste.mine.pipeline.run_mine``).
        save_baselines: also write ``baselines/raw.json`` (raw map >= ``raw_threshold``),
            ``baselines/refined.json`` (every refined segment) and ``baselines/random.json``
            (as many refined segments as were kept, chosen at random with ``seed``).

    Returns:
        The manifest (``counts``: images, segments, skipped reasons; ``coseg``: the classes
        that fell back to saliency; ``timings_s``: per stage).
    """
    return run_mine(FreeSegMiner(config), inputs, run, save_baselines=save_baselines)
