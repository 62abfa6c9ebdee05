"""F-EM: mine object masks from image-level labels (EM-Paste §3.1, Algorithm 1, appendix §6).

Pipeline:
    1. a multi-label classifier f on the image-level labels (``weakpaste.models.classifier``);
    2. per image and labelled class a: Grad-CAM of f, thresholded at ``cam_threshold`` of its
       maximum; its centre of mass is the anchor c;
    3. class-agnostic proposals (``weakpaste.mine.proposals``), filtered as in appendix §6;
    4. step 1: the proposals are ranked against the Grad-CAM (``rank``: the paper's mean pixel
       distance to c, or IoU with the thresholded map, the default); the ``top_n`` (<= 3) first
       are scored by f (eroded, on a grey square) and the best one is kept;
    5. EM (``weakpaste.mine.em``): features φ of the eligible candidates (the ``candidates``
       first proposals of the ranking, computed once in the same batch as step 1's scores and
       cached),
       M-step with a Ledoit-Wolf Gaussian and k% inliers, E-step = per image the candidate of
       smallest Mahalanobis distance; ``em_iters`` iterations;
    6. a segment is kept when f's score of it for its class is >= ``score_threshold`` (0.1).

One segment per (image, class) is mined, as in the paper: an image with three dogs yields one
dog segment (the one F-EM finds most typical). Stages 2-4 and step 5's features are a pure
per-image function (``mine_image``), steps 5-6 a pure selection over every image
(``FemMiner.select``); the mining pipeline (``weakpaste.mine.pipeline``) trains the classifier,
maps the per-image function over a process pool with an on-disk cache (an interrupted run
resumes where it stopped) and writes the bank.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from weakpaste.mine.config import MIN_IMAGE_SIDE, FemConfig, FemParams
from weakpaste.mine.pipeline import ImagePicks, Item, Miner, Pick, Plan, Selection, run_mine
from weakpaste.ops import masks as mask_ops

if TYPE_CHECKING:
    from weakpaste.runners import ExecutorConfig

__all__ = ["FemConfig", "FemMiner", "FemParams", "mine_image", "run_mine_fem"]


@dataclass
class ClassMining:
    """What ``mine_image`` found for one labelled class of one image."""

    label: str
    anchor: tuple[float, float]
    rles: list[dict]            # eligible candidates' masks (full resolution), nearest first
    distances: np.ndarray       # float64 (K,) mean pixel distance to the anchor
    scores: np.ndarray          # float32 (K,) f's probability of the class
    features: np.ndarray        # float32 (K, D) φ
    step1: int                  # index of step 1's choice
    cam_rle: dict | None = None  # the thresholded Grad-CAM (the baseline's mask)


@dataclass
class ImageMining:
    """Per-image result (cached on disk)."""

    file_name: str
    height: int
    width: int
    classes: list[ClassMining] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # label -> reason
    seconds: dict[str, float] = field(default_factory=dict)


def cam_anchor(cam: np.ndarray, threshold: float) -> tuple[tuple[float, float], np.ndarray] | None:
    """Binarise a Grad-CAM and return its centre of mass.

    Args:
        cam: float (H, W) in [0, 1] (normalised by its maximum).
        threshold: keep pixels >= threshold.

    Returns:
        ((x, y) centre of mass of the binary map, bool (H, W) binary map), or None when the
        map is empty.
    """
    g = cam >= threshold
    if not g.any() or cam.max() <= 0:
        return None
    ys, xs = np.nonzero(g)
    return (float(xs.mean()), float(ys.mean())), g


def cam_iou(props, g: np.ndarray) -> np.ndarray:
    """IoU of every proposal with a binary map, from per-region sums (no per-candidate masks).

    Args:
        props: ``Proposals`` of an (H, W) image.
        g: bool (H, W) map (the thresholded Grad-CAM).

    Returns:
        float64 (M,) IoUs.
    """
    h, w = g.shape
    area = props.areas() * (h * w)
    inter = props.overlap(g.astype(np.float32)) * area
    return inter / np.maximum(area + float(g.sum()) - inter, 1e-9)


def cam_gain(props, cam: np.ndarray, threshold: float) -> np.ndarray:
    """Total Grad-CAM excess over the threshold inside every proposal.

    sum over the proposal's pixels of (cam - threshold): a pixel above the binarisation
    threshold adds evidence, one below it costs. The proposal maximising it is the one that
    best covers the activated region without spilling out of it, whatever their sizes; IoU
    with the binarised map instead rewards proposals as large as a (coarse, usually
    oversized) Grad-CAM blob.

    Args:
        props: ``Proposals`` of an (H, W) image.
        cam: float (H, W) Grad-CAM in [0, 1].
        threshold: the binarisation threshold of ``cam_anchor``.

    Returns:
        float64 (M,) gains in pixels (higher is better).
    """
    h, w = cam.shape
    return (props.overlap(cam) - threshold) * props.areas() * (h * w)


def step1_choice(scores: np.ndarray, top_n: int) -> int:
    """Index of the best-scored of the first ``top_n`` candidates (sorted nearest first)."""
    return int(np.argmax(scores[:top_n]))


def mine_image(classifier, image: np.ndarray, labels: Sequence[str], file_name: str,
               params: FemParams, *, sam=None) -> ImageMining:
    """Steps 2-4 and the features of step 5 for one image (a pure function of its inputs).

    Args:
        classifier: a trained ``weakpaste.models.classifier.Classifier``.
        image: uint8 (H, W, 3) RGB.
        labels: the image's labelled classes (all known to the classifier).
        file_name: recorded in the result.
        params: per-image parameters.
        sam: a ``SamProposer`` when ``params.methods`` has ``sam``.

    Returns:
        The per-class candidates, scores and features; an image smaller than
        ``MIN_IMAGE_SIDE`` on a side is skipped (no proposal fits in it).
    """
    from weakpaste.mine.proposals import generate_proposals

    H, W = image.shape[:2]
    result = ImageMining(file_name=file_name, height=H, width=W)
    if min(H, W) < MIN_IMAGE_SIDE:
        result.skipped = {label: f"smaller than {MIN_IMAGE_SIDE} px" for label in labels}
        return result
    t0 = time.perf_counter()
    props = generate_proposals(image, max_side=params.max_side, min_area=params.min_area,
                               max_span=params.max_span, max_candidates=params.max_proposals,
                               methods=params.methods, sam=sam)
    t1 = time.perf_counter()
    result.seconds["proposals"] = t1 - t0
    if len(props) == 0:
        result.skipped = {label: "no proposal survived the filters" for label in labels}
        return result
    class_index = {c: i for i, c in enumerate(classifier.classes)}
    cams = classifier.gradcam(image, [class_index[label] for label in labels])
    t2 = time.perf_counter()
    result.seconds["gradcam"] = t2 - t1
    plans = []
    for label, cam in zip(labels, cams, strict=True):
        found = cam_anchor(cam, params.cam_threshold)
        if found is None:
            result.skipped[label] = "empty Grad-CAM"
            continue
        anchor, g = found
        dist = props.mean_distance(anchor)
        if params.rank == "distance":
            key = dist
        elif params.rank == "cam-gain":
            key = -cam_gain(props, cam, params.cam_threshold)
        else:
            key = -cam_iou(props, g)
        order = np.argsort(key, kind="stable")[: max(params.candidates, params.top_n)]
        plans.append((label, anchor, g, order, dist[order]))
    if not plans:
        return result
    # One batch for every candidate of every label: step 1's scores and EM's features.
    union = sorted({int(i) for *_, order, _ in plans for i in order})
    where = {c: k for k, c in enumerate(union)}
    masks = props.masks(union)
    probs, feats = classifier.score_segments(image, masks, erode=params.erode)
    rles = mask_ops.encode_many(np.asarray(masks))
    t3 = time.perf_counter()
    result.seconds["segments"] = t3 - t2
    for label, anchor, g, order, dist in plans:
        rows = [where[int(i)] for i in order]
        scores = probs[rows, class_index[label]].astype(np.float32)
        result.classes.append(ClassMining(
            label=label, anchor=anchor, rles=[rles[r] for r in rows],
            distances=np.asarray(dist, dtype=np.float64), scores=scores,
            features=feats[rows].astype(np.float32), step1=step1_choice(scores, params.top_n),
            cam_rle=mask_ops.encode(g)))
    return result




def em_choices(results: list[ImageMining], config: FemConfig
               ) -> tuple[dict[tuple[int, str], tuple[int, float]], dict]:
    """Step 5, EM per class over every image's candidates.

    Returns:
        ((image index, label) -> (chosen candidate, its Mahalanobis distance), per-class EM
        information for the manifest).
    """
    from weakpaste.mine.em import em_refine

    by_class: dict[str, list[tuple[int, ClassMining]]] = defaultdict(list)
    for i, res in enumerate(results):
        for cm in res.classes:
            by_class[cm.label].append((i, cm))
    final: dict[tuple[int, str], tuple[int, float]] = {}
    info = {}
    for label, items in sorted(by_class.items()):
        em = em_refine([cm.features for _, cm in items], [cm.step1 for _, cm in items],
                       iterations=config.em_iters, keep=config.keep,
                       min_samples=config.min_samples)
        info[label] = {"items": len(items), "iterations": em.iterations,
                       "changed": em.changed or [], "fallback": em.fallback}
        for (i, _), c, d in zip(items, em.choices, em.distances, strict=True):
            final[(i, label)] = (c, d)
    return final, info


class FemMiner(Miner):
    """F-EM for the mining pipeline (``weakpaste.mine.pipeline``)."""

    name = "fem"
    title = "F-EM"
    config: FemConfig

    def plan(self, records: list, classes: list[str], source: str) -> Plan:
        """Every labelled image (all classes; the classifier trains on every image)."""
        plan = super().plan(records, classes, source)
        plan.counts = {"labelled_images": len(plan.records),
                       "labelled_pairs": sum(len(r.labels) for r in plan.records)}
        return plan

    def inputs(self) -> dict[str, str]:
        p = self.config.params
        return {"sam_checkpoint": p.sam_checkpoint} if p.sam_checkpoint else {}

    def open(self, out, threads: int | None) -> dict:
        p = self.config.params
        if not p.sam_checkpoint:
            return {}
        from weakpaste.mine.sam import SamProposer

        return {"sam": SamProposer(p.sam_checkpoint, p.sam_model,
                                   device=self.config.model.device, min_area=p.min_area,
                                   max_span=p.max_span, max_candidates=p.max_proposals)}

    def mine_image(self, models: dict, image: np.ndarray, item: Item) -> ImageMining:
        return mine_image(models["classifier"], image, list(item.labels), item.file_name,
                          self.config.params, sam=models.get("sam"))

    def select(self, results: Sequence[ImageMining], plan: Plan) -> Selection:
        """EM per class, then per image the segments scoring at least ``score_threshold``
        (``final``), step 1's choices (``step1``) and the thresholded Grad-CAMs (``cam``)."""
        results = list(results)
        t = time.perf_counter()
        final, em_info = em_choices(results, self.config)
        seconds = {"em": time.perf_counter() - t}
        threshold = self.config.score_threshold
        below: Counter = Counter()
        images = []
        for i, res in enumerate(results):
            picks: dict[str, list[Pick]] = {"final": [], "step1": [], "cam": []}
            for cm in res.classes:
                c, d = final[(i, cm.label)]
                if cm.scores[c] >= threshold:
                    picks["final"].append(Pick(cm.label, cm.rles[c], float(cm.scores[c]), {
                        "classifier": float(cm.scores[c]), "mahalanobis": float(d),
                        "step1": float(c == cm.step1),
                        "anchor_distance": float(cm.distances[c])}))
                else:
                    below[cm.label] += 1
                if cm.scores[cm.step1] >= threshold:
                    picks["step1"].append(Pick(cm.label, cm.rles[cm.step1],
                                               float(cm.scores[cm.step1])))
                if cm.cam_rle is not None:
                    picks["cam"].append(Pick(cm.label, cm.cam_rle, 1.0))
            images.append(ImagePicks(res.height, res.width, picks))
        skipped = Counter(reason for res in results for reason in res.skipped.values())
        return Selection(images, variants=("step1", "cam"),
                         counts={"below_score_threshold": dict(sorted(below.items()))},
                         skipped=skipped, extra={"em": em_info}, seconds=seconds)


def run_mine_fem(config: FemConfig, images_dir: str, labels: str | None, out_dir: str, *,
                 workers: int = 1, overwrite: bool = False, resume: bool = False,
                 progress: bool = True, save_baselines: bool = False,
                 executor: ExecutorConfig | None = None) -> dict:
    """``weakpaste mine fem``: a segment bank + ``pseudo_labels.json``.

    Args:
        config: classifier and F-EM settings.
        images_dir: folder of the images.
        labels: image-level labels (see ``weakpaste.io.labels``).
        out_dir: the bank folder to create.
        save_baselines: also write ``baselines/cam.json`` (Grad-CAM > t as the mask) and
            ``baselines/step1.json`` (step 1 only) for benchmarks.
        workers, overwrite, resume, progress, executor: as for
            ``weakpaste.mine.pipeline.run_mine``.

    Returns:
        The manifest.
    """
    return run_mine(FemMiner(config), images_dir, labels, out_dir, workers=workers,
                    overwrite=overwrite, resume=resume, progress=progress,
                    save_baselines=save_baselines, executor=executor)
