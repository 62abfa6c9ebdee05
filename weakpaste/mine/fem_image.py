"""F-EM's per-image function and the per-class pieces its selection is made of.

Split from ``weakpaste.mine.fem`` (the miner and its stage) so that the MIL anchor
(``weakpaste.mine.mil``) builds on these pieces while the miner uses the anchor, without an
import cycle. ``weakpaste.mine.fem`` re-exports every name.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from weakpaste.mine.config import MIN_IMAGE_SIDE, FemConfig, FemParams
from weakpaste.ops import masks as mask_ops

NO_CANDIDATE = "no candidate for the class"
"""Skip reason of an (image, class) left without an eligible proposal: with ``saliency``
proposals alone, when the whole image's map has no region and the class's Grad-CAM crops
found none while another class's did."""


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
    cam_means: np.ndarray | None = None  # float32 (K,) mean Grad-CAM inside each candidate
    cam_peak: tuple[int, int] | None = None  # (x, y) of the Grad-CAM's maximum
    proposal_rles: list[dict] | None = None  # every proposal, ranked (record_proposals)


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
    """Index of the best-scored of the first ``top_n`` candidates (sorted nearest first).

    Raises:
        ValueError: no candidate (``mine_image`` skips such a class before asking).
    """
    if not len(scores):
        raise ValueError("step1_choice: no candidate to choose from")
    return int(np.argmax(scores[:top_n]))


def _proposals(image: np.ndarray, labels: Sequence[str], cams: np.ndarray | None,
               params: FemParams, digest: str, sam, saliency):
    """Every proposal of the image and, per proposal, the label whose CAM crop found it.

    Returns:
        (``Proposals`` or None when there is none, int64 (M,) owner: -1 for a proposal of
        every label, else the index in ``labels`` of the one it belongs to).
    """
    from weakpaste.mine.grouping import working_image
    from weakpaste.mine.proposals import Proposals, generate_proposals
    from weakpaste.mine.saliency_proposals import to_working

    methods = tuple(m for m in params.methods if m != "saliency")
    props = generate_proposals(image, max_side=params.max_side, min_area=params.min_area,
                               max_span=params.max_span, max_candidates=params.max_proposals,
                               methods=methods, sam=sam) if methods else None
    owner = np.full(len(props) if props is not None else 0, -1, dtype=np.int64)
    if saliency is None or cams is None:
        return (props if props is not None and len(props) else None), owner
    shape = props.working_shape if props is not None else \
        working_image(image, params.max_side).shape[:2]
    parts = [to_working(saliency.whole(image, digest), shape)]
    owners = [np.full(len(parts[0]), -1, dtype=np.int64)]
    for k, cam in enumerate(cams):
        parts.append(to_working(saliency.in_cam(image, digest, cam), shape))
        owners.append(np.full(len(parts[-1]), k, dtype=np.int64))
    found = np.concatenate(parts)
    if len(found):
        sal = Proposals.from_masks(found, image.shape[:2])
        props = sal if props is None or not len(props) else Proposals.concatenate([props, sal])
        owner = np.concatenate([owner, *owners])
    return (props if props is not None and len(props) else None), owner


def _rank(props, cam: np.ndarray, g: np.ndarray, anchor, params: FemParams) -> np.ndarray:
    """The ranking key of every proposal against a class's Grad-CAM (lower is better)."""
    if params.rank == "distance":
        return props.mean_distance(anchor)
    if params.rank == "cam-gain":
        return -cam_gain(props, cam, params.cam_threshold)
    return -cam_iou(props, g)


def _encode_all(props, chunk: int = 32) -> list[dict]:
    """RLEs of every proposal, a few full-resolution masks at a time (memory)."""
    out: list[dict] = []
    for i in range(0, len(props), chunk):
        out += mask_ops.encode_many(props.masks(np.arange(i, min(i + chunk, len(props)))))
    return out


def mine_image(classifier, image: np.ndarray, labels: Sequence[str], file_name: str,
               params: FemParams, *, sam=None, saliency=None, digest: str = ""
               ) -> ImageMining:
    """Steps 2-4 and the features of step 5 for one image (a pure function of its inputs).

    Args:
        classifier: a trained ``weakpaste.models.classifier.Classifier``.
        image: uint8 (H, W, 3) RGB.
        labels: the image's labelled classes (all known to the classifier).
        file_name: recorded in the result.
        params: per-image parameters.
        sam: a ``SamProposer`` when ``params.methods`` has ``sam``.
        saliency: a ``SaliencyProposer`` when ``params.methods`` has ``saliency``.
        digest: the image file's SHA-256 (names its cached saliency maps).

    Returns:
        The per-class candidates, scores, mean Grad-CAM inside and features; an image smaller
        than ``MIN_IMAGE_SIDE`` on a side is skipped (no proposal fits in it).
    """
    H, W = image.shape[:2]
    result = ImageMining(file_name=file_name, height=H, width=W)
    if min(H, W) < MIN_IMAGE_SIDE:
        result.skipped = {label: f"smaller than {MIN_IMAGE_SIDE} px" for label in labels}
        return result
    class_index = {c: i for i, c in enumerate(classifier.classes)}
    t0 = time.perf_counter()
    cams = None
    if saliency is not None:  # the crops need the CAMs before the proposals
        cams = classifier.gradcam(image, [class_index[label] for label in labels])
    t1 = time.perf_counter()
    props, owner = _proposals(image, labels, cams, params, digest, sam, saliency)
    t2 = time.perf_counter()
    result.seconds["proposals"] = t2 - t1
    if props is None:
        result.skipped = {label: "no proposal survived the filters" for label in labels}
        return result
    if cams is None:
        cams = classifier.gradcam(image, [class_index[label] for label in labels])
    t3 = time.perf_counter()
    result.seconds["gradcam"] = (t1 - t0) + (t3 - t2)
    plans = []
    for k, (label, cam) in enumerate(zip(labels, cams, strict=True)):
        plan = _plan_label(props, owner, k, label, cam, params)
        if isinstance(plan, str):
            result.skipped[label] = plan
        else:
            plans.append(plan)
    if not plans:
        return result
    # One batch for every candidate of every label: step 1's scores and EM's features.
    union = sorted({int(i) for p in plans for i in p.order})
    where = {c: k for k, c in enumerate(union)}
    masks = props.masks(union)
    probs, feats = classifier.score_segments(image, masks, erode=params.erode)
    rles = mask_ops.encode_many(np.asarray(masks))
    every = _encode_all(props) if params.record_proposals else None
    t4 = time.perf_counter()
    result.seconds["segments"] = t4 - t3
    for plan in plans:
        rows = [where[int(i)] for i in plan.order]
        every_rle = None if every is None else [every[int(i)] for i in plan.ranked]
        result.classes.append(_class_mining(
            plan, masks[rows], probs[rows, class_index[plan.label]], feats[rows],
            [rles[r] for r in rows], every_rle, params))
    return result


class _LabelPlan(NamedTuple):
    """One label's ranked candidates (indices into the image's proposals) and its anchor."""

    label: str
    anchor: tuple[float, float]
    g: np.ndarray          # bool (H, W) the Grad-CAM region around the anchor
    cam: np.ndarray        # float (H, W) the label's Grad-CAM
    order: np.ndarray      # the candidates kept, best first
    dist: np.ndarray       # their mean distances to the anchor
    ranked: np.ndarray     # every eligible candidate, best first
    peak: tuple[int, int]  # (x, y) of the Grad-CAM's maximum


def _plan_label(props, owner: np.ndarray, k: int, label: str, cam: np.ndarray,
                params: FemParams) -> _LabelPlan | str:
    """Rank the proposals for label ``k`` of the image, or say why the label is skipped.

    Args:
        props: the image's ``Proposals``.
        owner: per proposal, the label whose Grad-CAM crops made it (-1: no label's).
        k: the label's index among the image's labels.
        label: its class.
        cam: its Grad-CAM, float (H, W).
        params: per-image parameters.

    Returns:
        The plan, or the reason for ``ImageMining.skipped``.
    """
    found = cam_anchor(cam, params.cam_threshold)
    if found is None:
        return "empty Grad-CAM"
    anchor, g = found
    dist = props.mean_distance(anchor)
    eligible = np.flatnonzero((owner == -1) | (owner == k))
    if not eligible.size:  # every proposal came from another class's Grad-CAM crops
        return NO_CANDIDATE
    ranked = eligible[np.argsort(_rank(props, cam, g, anchor, params)[eligible], kind="stable")]
    order = ranked[: max(params.candidates, params.top_n)]
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return _LabelPlan(label, anchor, g, cam, order, dist[order], ranked, (peak[1], peak[0]))


def _class_mining(plan: _LabelPlan, masks: np.ndarray, probs: np.ndarray, feats: np.ndarray,
                  rles: list[dict], proposal_rles: list[dict] | None,
                  params: FemParams) -> ClassMining:
    """One label's result from its candidates' masks, class probabilities and features."""
    scores = probs.astype(np.float32)
    inside = np.einsum("khw,hw->k", masks, plan.cam, dtype=np.float64)
    return ClassMining(
        label=plan.label, anchor=plan.anchor, rles=rles,
        distances=np.asarray(plan.dist, dtype=np.float64), scores=scores,
        features=feats.astype(np.float32), step1=step1_choice(scores, params.top_n),
        cam_rle=mask_ops.encode(plan.g),
        cam_means=(inside / np.maximum(masks.sum((1, 2)), 1)).astype(np.float32),
        cam_peak=(int(plan.peak[0]), int(plan.peak[1])), proposal_rles=proposal_rles)


def evidence(scores: np.ndarray, cam_means: np.ndarray) -> np.ndarray:
    """Per candidate: the classifier's probability of its crop x the mean Grad-CAM inside.

    Neither alone picks well: the crop probability favours any fragment that looks like the
    class, the CAM mean favours small regions on the map's peak. On PennFudan (50 pairs,
    IS-Net candidates, with negatives) the product picks a correct segment for 80% of the
    pairs, the probability alone 74%, the CAM mean 68%, EM-Paste's CAM IoU 58%.

    Args:
        scores: float (K,) crop probabilities of the class.
        cam_means: float (K,) mean Grad-CAM (in [0, 1]) inside each candidate.

    Returns:
        float64 (K,) in [0, 1].
    """
    scores, cam_means = np.asarray(scores, np.float64), np.asarray(cam_means, np.float64)
    if scores.shape != cam_means.shape:
        raise ValueError(f"evidence: {scores.shape} scores but {cam_means.shape} CAM means")
    return scores * cam_means


def _first(cm: ClassMining, config: FemConfig) -> int:
    """EM's initial choice: step 1's, or with ``pick evidence-em`` the most evidence."""
    if config.pick == "evidence-em" and cm.cam_means is not None:
        return int(np.argmax(evidence(cm.scores, cm.cam_means)))
    return cm.step1


def em_choices(results: list[ImageMining], config: FemConfig
               ) -> tuple[dict[tuple[int, str], tuple[int, float]], dict]:
    """Step 5, EM per class over every image's candidates, from step 1's choices (or the
    evidence picks with ``pick evidence-em``).

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
        em = em_refine([cm.features for _, cm in items], [_first(cm, config) for _, cm in items],
                       iterations=config.em_iters, keep=config.keep,
                       min_samples=config.min_samples)
        info[label] = {"items": len(items), "iterations": em.iterations,
                       "changed": em.changed or [], "fallback": em.fallback}
        for (i, _), c, d in zip(items, em.choices, em.distances, strict=True):
            final[(i, label)] = (c, d)
    return final, info
