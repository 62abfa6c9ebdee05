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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from weakpaste.mine.config import MIN_IMAGE_SIDE, FemConfig, FemParams
from weakpaste.mine.mil import RegionMining
from weakpaste.mine.pipeline import ImagePicks, Item, Miner, Pick, Plan, Selection, run_mine
from weakpaste.ops import masks as mask_ops

if TYPE_CHECKING:
    from weakpaste.runners import ExecutorConfig

__all__ = ["FemConfig", "FemMiner", "FemParams", "mine_image", "run_mine_fem"]


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
        found = cam_anchor(cam, params.cam_threshold)
        if found is None:
            result.skipped[label] = "empty Grad-CAM"
            continue
        anchor, g = found
        dist = props.mean_distance(anchor)
        eligible = np.flatnonzero((owner == -1) | (owner == k))
        if not eligible.size:  # every proposal came from another class's Grad-CAM crops
            result.skipped[label] = NO_CANDIDATE
            continue
        ranked = eligible[np.argsort(_rank(props, cam, g, anchor, params)[eligible],
                                     kind="stable")]
        order = ranked[: max(params.candidates, params.top_n)]
        peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
        plans.append((label, anchor, g, cam, order, dist[order], ranked, (peak[1], peak[0])))
    if not plans:
        return result
    # One batch for every candidate of every label: step 1's scores and EM's features.
    union = sorted({int(i) for p in plans for i in p[4]})
    where = {c: k for k, c in enumerate(union)}
    masks = props.masks(union)
    probs, feats = classifier.score_segments(image, masks, erode=params.erode)
    rles = mask_ops.encode_many(np.asarray(masks))
    every = _encode_all(props) if params.record_proposals else None
    t4 = time.perf_counter()
    result.seconds["segments"] = t4 - t3
    for label, anchor, g, cam, order, dist, ranked, peak in plans:
        rows = [where[int(i)] for i in order]
        scores = probs[rows, class_index[label]].astype(np.float32)
        inside = np.einsum("khw,hw->k", masks[rows], cam, dtype=np.float64)
        result.classes.append(ClassMining(
            label=label, anchor=anchor, rles=[rles[r] for r in rows],
            distances=np.asarray(dist, dtype=np.float64), scores=scores,
            features=feats[rows].astype(np.float32), step1=step1_choice(scores, params.top_n),
            cam_rle=mask_ops.encode(g),
            cam_means=(inside / np.maximum(masks[rows].sum((1, 2)), 1)).astype(np.float32),
            cam_peak=(int(peak[0]), int(peak[1])),
            proposal_rles=None if every is None else [every[int(i)] for i in ranked]))
    return result


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


class FemMiner(Miner):
    """F-EM for the mining pipeline (``weakpaste.mine.pipeline``)."""

    name = "fem"
    title = "F-EM"
    config: FemConfig
    result_types = (ImageMining, ClassMining, RegionMining)
    head = None  # the MIL head (``--anchor mil``), trained by ``fit``

    def __init__(self, config: FemConfig, *, baselines: bool = True):
        """``baselines``: also select the baseline variants and the funnel (their masks)."""
        super().__init__(config)
        self.baselines = baselines

    @property
    def maps_extra(self) -> bool:
        """The MIL head trains on the ``--train-images``' region features too."""
        return self.config.params.anchor == "mil"

    def plan(self, records: list, classes: list[str], source: str) -> Plan:
        """Every labelled image (all classes; the classifier trains on every image, on the
        ``negatives`` and on the ``train_images``)."""
        from weakpaste.io.images import list_images

        plan = super().plan(records, classes, source)
        plan.counts = {"labelled_images": len(plan.records),
                       "labelled_pairs": sum(len(r.labels) for r in plan.records)}
        if self.config.negatives:
            plan.negatives = list_images(self.config.negatives)
            plan.counts["negative_images"] = len(plan.negatives)
        if self.config.train_images:
            plan.extra = training_items(self.config.train_images, self.config.train_labels,
                                        plan.classes)
            plan.counts["train_images"] = len(plan.extra)
        return plan

    def inputs(self) -> dict[str, str]:
        p, cfg, files = self.config.params, self.config, {}
        if p.sam_checkpoint:
            files["sam_checkpoint"] = p.sam_checkpoint
        if p.saliency:
            files["saliency_model"] = p.saliency
        if cfg.negatives:
            files["negatives"] = cfg.negatives
        if cfg.train_images:
            files.update(train_images=cfg.train_images, train_labels=cfg.train_labels)
        return files

    def open(self, out, threads: int | None) -> dict:
        p, models = self.config.params, {}
        if p.sam_checkpoint:
            from weakpaste.mine.sam import SamProposer

            models["sam"] = SamProposer(p.sam_checkpoint, p.sam_model,
                                        device=self.config.model.device, min_area=p.min_area,
                                        max_span=p.max_span, max_candidates=p.max_proposals)
        if p.saliency:
            from weakpaste.mine.saliency import SaliencyCache, make_saliency
            from weakpaste.mine.saliency_proposals import SaliencyProposer

            backend = make_saliency(p.saliency, size=p.saliency_size, threads=threads,
                                    rescale=True)
            root = self.config.saliency_cache or Path(out) / ".cache" / "saliency"
            models["saliency"] = SaliencyProposer(
                backend, SaliencyCache(root, backend.key), threshold=p.saliency_threshold,
                min_area=p.saliency_min_area, expand=p.crop_expand,
                cam_threshold=p.cam_threshold)
        return models

    def describe(self, models: dict) -> dict[str, str]:
        sal = models.get("saliency")
        return {"saliency_key": sal.backend.key} if sal is not None else {}

    def mine_image(self, models: dict, image: np.ndarray, item: Item):
        mine = mine_image
        if self.config.params.anchor == "mil":
            from weakpaste.mine.mil import region_image as mine
        return mine(models["classifier"], image, list(item.labels), item.file_name,
                    self.config.params, sam=models.get("sam"),
                    saliency=models.get("saliency"), digest=item.sha256)

    def fit(self, results: Sequence, plan: Plan) -> dict:
        """``--anchor mil``: the MIL head on the mined and the training images' results."""
        if self.config.params.anchor != "mil":
            return {}
        from weakpaste.mine.mil import fit

        labels = [it.labels for it in [*plan.items, *plan.extra]]
        self.head, info = fit(results, plan.classes, labels, self.config)
        self.classes = list(plan.classes)
        return {"mil": info}

    def select(self, results: Sequence[ImageMining], plan: Plan) -> Selection:
        """EM per class; the pick (EM's or the most evidence) per (image, class); the kept
        segments (``final``): score >= ``score_threshold``, evidence >= ``min_evidence``,
        among the ``keep_top`` of most evidence. Variants: step 1's choices (``step1``), the
        thresholded Grad-CAMs (``cam``) and the funnel (``funnel_picks``)."""
        t = time.perf_counter()
        if self.config.params.anchor == "mil":
            from weakpaste.mine.mil import class_minings

            results = [class_minings(r, self.head, self.classes, self.config) for r in results]
        seconds = {"anchor": time.perf_counter() - t} if self.head is not None else {}
        results = list(results)
        t = time.perf_counter()
        final, em_info = em_choices(results, self.config)
        seconds["em"] = time.perf_counter() - t
        cfg = self.config
        chosen = []  # (image, ClassMining, pick, Mahalanobis distance, evidence)
        for i, res in enumerate(results):
            for cm in res.classes:
                c, d = final[(i, cm.label)]
                ev = evidence(cm.scores, cm.cam_means) if cm.cam_means is not None else \
                    np.zeros(len(cm.scores))
                if cfg.pick == "evidence":
                    c = int(np.argmax(ev))
                chosen.append((i, cm, c, d, float(ev[c])))
        kept, dropped = _keep(chosen, cfg)
        images = [ImagePicks(res.height, res.width, {"final": [], "step1": [], "cam": []})
                  for res in results]
        for n, (i, cm, c, d, ev) in enumerate(chosen):
            picks = images[i].variants
            if n in kept:
                picks["final"].append(Pick(cm.label, cm.rles[c], float(cm.scores[c]), {
                    "classifier": float(cm.scores[c]), "mahalanobis": float(d),
                    "step1": float(c == cm.step1), "evidence": ev,
                    "anchor_distance": float(cm.distances[c])}))
            if self.baselines:
                _baseline_picks(picks, cm, final[(i, cm.label)][0], cfg)
        skipped = Counter(reason for res in results for reason in res.skipped.values())
        stages = tuple(s for s in FUNNEL if any(s in im.variants for im in images))
        return Selection(images, variants=("step1", "cam", *stages),
                         counts={"below_score_threshold": dict(sorted(dropped.items()))},
                         skipped=skipped, extra={"em": em_info}, seconds=seconds)


FUNNEL = ("proposals", "candidates", "top_n", "step1_pick", "em_pick", "evidence_pick",
          "cam_peak")
"""The funnel's baseline files (``--save-baselines``), per (image, class) before any
threshold: every proposal (``record_proposals`` only), the eligible candidates, step 1's
top_n, step 1's pick, EM's pick (scored by the classifier), the pick of most evidence (scored
by its evidence), and the Grad-CAM's maximum as a one-pixel mask (for the pointing game).
``weakpaste evaluate-masks BANK --gt GT`` reports them (``weakpaste.mine.quality.funnel``)."""


def _baseline_picks(picks: dict[str, list[Pick]], cm: ClassMining, em_pick: int,
                    config: FemConfig) -> None:
    """Add one (image, class)'s baseline variants (step 1, the thresholded anchor map) and
    funnel stages to ``picks``."""
    if cm.scores[cm.step1] >= config.score_threshold:
        picks["step1"].append(Pick(cm.label, cm.rles[cm.step1], float(cm.scores[cm.step1])))
    if cm.cam_rle is not None:
        picks["cam"].append(Pick(cm.label, cm.cam_rle, 1.0))
    for stage, items in funnel_picks(cm, em_pick, config).items():
        picks.setdefault(stage, []).extend(items)


def funnel_picks(cm: ClassMining, em_pick: int, config: FemConfig) -> dict[str, list[Pick]]:
    """One (image, class)'s segments at every stage of the funnel (``FUNNEL``)."""
    def picks(indices, rles=None) -> list[Pick]:
        rles = cm.rles if rles is None else rles
        return [Pick(cm.label, rles[k], float(cm.scores[k]) if rles is cm.rles else 1.0)
                for k in indices]

    out = {"candidates": picks(range(len(cm.rles))),
           "top_n": picks(range(min(config.params.top_n, len(cm.rles)))),
           "step1_pick": picks([cm.step1]), "em_pick": picks([em_pick])}
    if cm.proposal_rles is not None:
        out["proposals"] = picks(range(len(cm.proposal_rles)), cm.proposal_rles)
    if cm.cam_means is not None:  # scored by its evidence, for precision-yield curves
        ev = evidence(cm.scores, cm.cam_means)
        best = int(np.argmax(ev))
        out["evidence_pick"] = [Pick(cm.label, cm.rles[best], float(ev[best]))]
    if cm.cam_peak is not None and cm.cam_rle is not None:
        h, w = cm.cam_rle["size"]
        dot = np.zeros((h, w), dtype=bool)
        dot[cm.cam_peak[1], cm.cam_peak[0]] = True
        out["cam_peak"] = [Pick(cm.label, mask_ops.encode(dot), 1.0)]
    return out


def _keep(chosen: list, config: FemConfig) -> tuple[set[int], Counter]:
    """Which picks are kept: score >= ``score_threshold``, evidence >= ``min_evidence``, and
    among the ``keep_top`` fraction of most evidence (ties: the earlier pick).

    Returns:
        (indices into ``chosen`` kept, picks dropped per class).
    """
    ok = [n for n, (_, cm, c, _, ev) in enumerate(chosen)
          if cm.scores[c] >= config.score_threshold and ev >= config.min_evidence]
    if config.keep_top < 1:
        ok = sorted(ok, key=lambda n: -chosen[n][4])[:int(np.ceil(config.keep_top * len(ok)))]
    kept = set(ok)
    dropped = Counter(cm.label for n, (_, cm, *_) in enumerate(chosen) if n not in kept)
    return kept, dropped


def training_items(images: str, labels: str, classes: Sequence[str]) -> list[Item]:
    """The ``--train-images``: Items with their labels among ``classes`` (others dropped; an
    image left without a label trains as a negative).

    Raises:
        WeakpasteError: the folder is missing, or the labels are unreadable.
    """
    from weakpaste.errors import WeakpasteError
    from weakpaste.io.labels import load_labels
    from weakpaste.mine.pipeline import image_hashes

    folder = Path(images)
    if not folder.is_dir():
        raise WeakpasteError(f"{folder}: training images folder not found; pass it with "
                             "--train-images")
    records, _ = load_labels(labels, folder)
    known = set(classes)
    hashes = image_hashes(folder, records)
    return [Item(r.file_name, str(folder / r.file_name),
                 tuple(c for c in r.labels if c in known), hashes[r.file_name])
            for r in records]


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
    return run_mine(FemMiner(config, baselines=save_baselines), images_dir, labels, out_dir,
                    workers=workers,
                    overwrite=overwrite, resume=resume, progress=progress,
                    save_baselines=save_baselines, executor=executor)
