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
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from weakpaste.mine.config import FemConfig, FemParams
from weakpaste.mine.fem_image import (  # noqa: F401  (re-exported)
    NO_CANDIDATE,
    ClassMining,
    ImageMining,
    _encode_all,
    _first,
    _proposals,
    _rank,
    cam_anchor,
    cam_gain,
    cam_iou,
    em_choices,
    evidence,
    mine_image,
    step1_choice,
)
from weakpaste.mine.mil import RegionMining
from weakpaste.mine.pipeline import (
    ImagePicks,
    Item,
    MineInputs,
    Miner,
    Pick,
    Plan,
    Selection,
    run_mine,
)
from weakpaste.ops import masks as mask_ops

if TYPE_CHECKING:
    from weakpaste.core.run import RunOptions

__all__ = ["FemConfig", "FemMiner", "FemParams", "MineInputs", "mine_image", "run_mine_fem"]


class FemMiner(Miner):
    """F-EM for the mining pipeline (``weakpaste.mine.pipeline``)."""

    name = "fem"
    title = "F-EM"
    config: FemConfig
    result_types = (ImageMining, ClassMining, RegionMining)  # RegionMining: --anchor mil
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

    def open(self, saliency_cache: Path, threads: int | None) -> dict:
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
            models["saliency"] = SaliencyProposer(
                backend, SaliencyCache(saliency_cache, backend.key), threshold=p.saliency_threshold,
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
``weakpaste evaluate-masks BANK --gt GT`` reports them (``weakpaste.evaluate.funnel.funnel``)."""


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
    from weakpaste.core.errors import WeakpasteError
    from weakpaste.core.options import flag_of
    from weakpaste.io.labels import load_labels
    from weakpaste.mine.pipeline import image_hashes

    folder = Path(images)
    flags = (flag_of(FemConfig, "train_images"), flag_of(FemConfig, "train_labels"))
    if not folder.is_dir():
        raise WeakpasteError(f"{folder}: training images folder not found; pass it with "
                             f"{flags[0]}")
    records, _ = load_labels(labels, folder, flags=flags)
    known = set(classes)
    hashes = image_hashes(folder, records)
    return [Item(r.file_name, str(folder / r.file_name),
                 tuple(c for c in r.labels if c in known), hashes[r.file_name])
            for r in records]


def run_mine_fem(config: FemConfig, inputs: MineInputs, run: RunOptions, *,
                 save_baselines: bool = False) -> dict:
    """``weakpaste mine fem``: a segment bank + ``pseudo_labels.json``.

    Args:
        config: classifier and F-EM settings.
        inputs: the images and their image-level labels (``MineInputs``).
        run: output folder and how to run (as for ``weakpaste.mine.pipeline.run_mine``).
        save_baselines: also write ``baselines/cam.json`` (Grad-CAM > t as the mask) and
            ``baselines/step1.json`` (step 1 only) for benchmarks.

    Returns:
        The manifest.
    """
    return run_mine(FemMiner(config, baselines=save_baselines), inputs, run,
                    save_baselines=save_baselines)
