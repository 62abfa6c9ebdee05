"""The mining settings: the shared classifier spec and each miner's config.

Frozen ``weakpaste.core.options.Config`` dataclasses, so the command line (``weakpaste mine fem``,
``weakpaste mine freeseg``) builds its options from them; this module imports nothing heavy,
so that ``weakpaste --help`` stays fast. The miners (``weakpaste.mine.fem``,
``weakpaste.mine.freeseg``) and the pipeline (``weakpaste.mine.pipeline``) re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import Config, device_option, flag_of, option, seed_option
from weakpaste.models.weights import parse_weights

METHODS: tuple[str, ...] = ("felzenszwalb", "slic", "sam")
"""Proposal methods :func:`weakpaste.mine.proposals.generate_proposals` accepts."""

FEM_METHODS: tuple[str, ...] = (*METHODS, "saliency")
"""Proposal methods of F-EM: :data:`METHODS` and the salient-object regions
(:mod:`weakpaste.mine.saliency_proposals`)."""

MIN_IMAGE_SIDE = 16
"""Smallest image height or width proposals accept, in pixels."""

MIN_CLASSIFIER_SIDE = 32
"""Smallest classifier input and crop side (``Classifier.build`` refuses less)."""

RANK_CUES: dict[str, int] = {
    # label-free cues of the maps (weakpaste.mine.ranking)
    "stability": +1, "contrast": +1, "border": -1, "centre": -1, "fragments": +1,
    # the paper's (FreeSeg §3.2): agreement with the LORE box, the classifier's drop rate
    "freeseg": +1, "iob": +1, "iom": +1, "drop_rate": +1, "p_before": +1, "p_after": -1,
    # the same classifier scores cross-fitted (--crossfit-folds): from heads that never
    # trained on the image
    "p_before_cf": +1, "p_after_cf": -1, "drop_rate_cf": +1,
}
"""The scores FreeSeg's ranking may combine and their direction (+1: larger is better, -1:
smaller is better). Here, not in ``weakpaste.mine.ranking``, so that the command line lists
them without importing NumPy."""


@dataclass(frozen=True)
class ClassifierSpec(Config):
    """The miners' classifier: trained on the image-level labels, or reused.

    Attributes:
        backbone: torchvision classification model name.
        weights: "DEFAULT" (torchvision's ImageNet weights), the path of a state_dict, or
            None / "none" (random initialisation).
        classifier: the path of a classifier saved by an earlier run, used instead of training.
        train_mode: ``linear`` (probe on a frozen trunk) or ``finetune``.
        epochs: training epochs.
        lr: learning rate (None: 1e-2 for both train modes).
        batch_size: training batch.
        input_size: classifier input side (pixels).
        crop_size: segment crop side (pixels).
        device: torch device.
    """

    backbone: str = option("resnet50", help="any torchvision classification model")
    weights: str | None = option(
        "DEFAULT", parse=parse_weights, metavar="DEFAULT|PATH|none",
        help="DEFAULT (torchvision ImageNet download), PATH to a state_dict, or none")
    classifier: str | None = option(None, metavar="PATH",
                                    help="reuse a classifier saved by an earlier run")
    train_mode: str = option("linear", choices=("linear", "finetune"),
                             help="linear probe on a frozen backbone (fast on CPU) or full "
                                  "fine-tune")
    epochs: int = option(30, range=(1, None), help="classifier training epochs")
    lr: float | None = option(None, range=(0, None), open_low=True,
                              help="classifier learning rate (default: 1e-2 for both modes; "
                                   "a small classifier trained from scratch wants more)")
    batch_size: int = option(32, range=(1, None), help="classifier training batch")
    # The classifiers' trunks downsample 32 times: a smaller input leaves no feature map.
    input_size: int = option(384, range=(MIN_CLASSIFIER_SIDE, None),
                             help="classifier input (pixels)")
    crop_size: int = option(224, range=(MIN_CLASSIFIER_SIDE, None),
                            help="segment crop input (pixels)")
    device: str = device_option("cpu")


@dataclass(frozen=True)
class FemParams(Config):
    """Per-image parameters of F-EM (recorded in the manifest; part of the cache key).

    Attributes:
        rank: how proposals are ranked against the Grad-CAM: ``cam-iou`` (IoU with the
            thresholded Grad-CAM, the paper's own "large overlap with G" assumption; the
            default), ``cam-gain`` (the proposal's total Grad-CAM excess over the threshold,
            sum(cam - t) over its pixels) or ``distance`` (the paper's mean pixel distance to
            the anchor; with superpixel-hierarchy proposals it prefers tiny regions at the
            anchor, see docs/mining.md).
        cam_threshold: Grad-CAM binarisation threshold, relative to the map's maximum.
        top_n: step 1 scores this many nearest proposals (EM-Paste: n <= 3).
        candidates: eligible candidates per (image, class) for the E-step.
        erode: erosion iterations (3x3) before a segment is scored (appendix §6).
        max_side: proposals are computed at this longer side (pixels).
        min_area: drop proposals under this fraction of the image (appendix §6: 1%).
        max_span: drop proposals whose box spans at least this fraction of the image's
            width or height (appendix §6: "almost the whole image").
        max_proposals: cap on proposals per image.
        methods: proposal methods (``sam`` needs ``sam_checkpoint``, ``saliency`` needs
            ``saliency``).
        sam_checkpoint: SAM weights for the ``sam`` proposals.
        sam_model: the SAM model type of the checkpoint.
        saliency: ONNX salient-object model (IS-Net) for the ``saliency`` proposals.
        saliency_size: its input side; a model with a fixed input is rewritten to run at it.
        saliency_threshold: foreground threshold of the saliency maps.
        saliency_min_area: smallest saliency region (fraction of the image).
        crop_expand: scale of the boxes around Grad-CAM regions cropped for saliency.
        record_proposals: keep every proposal's mask per (image, class) for the funnel's
            first stage (``baselines/proposals.json``; slow, for benchmarks).
        anchor: the class map that ranks the proposals: ``gradcam`` (the classifier's
            Grad-CAM, EM-Paste's) or ``mil`` (every proposal scored by a multiple-instance
            head on region features, ``weakpaste.mine.mil``; the map is the mean score of
            the proposals covering a pixel).
        mil_side: with ``anchor mil``, the image is squashed to this side for the region
            features (one trunk pass; larger resolves smaller objects).
    """

    rank: str = option("cam-iou", choices=("cam-iou", "cam-gain", "distance"),
                       help="rank proposals by IoU with the thresholded Grad-CAM, by their "
                            "total Grad-CAM excess over the threshold, or by mean distance to "
                            "its centre (the paper's)")
    cam_threshold: float = option(0.5, range=(0, 1),
                                  help="Grad-CAM binarisation, relative to its maximum")
    top_n: int = option(3, range=(1, None), help="step 1: first proposals scored")
    candidates: int = option(16, range=(1, None),
                             help="eligible proposals per (image, class) for the E-step")
    erode: int = option(2, range=(0, None), help="erosion before scoring a segment")
    max_side: int = option(512, range=(MIN_IMAGE_SIDE, None), help="proposal resolution")
    min_area: float = option(0.01, range=(0, 1),
                             help="drop proposals under this fraction of the image (EM-Paste "
                                  "appendix §6: 1%)")
    max_span: float = option(0.95, cli=False, help="widest proposal box (fraction)")
    max_proposals: int = option(300, cli=False, help="most proposals per image")
    methods: tuple[str, ...] = option(("felzenszwalb", "slic"), flag="--proposals",
                                      choices=FEM_METHODS,
                                      help="proposal methods (sam needs --sam-checkpoint, "
                                           "saliency needs --saliency)")
    sam_checkpoint: str | None = option(None, metavar="PATH",
                                        help="SAM weights for --proposals sam (needs the "
                                             "segment-anything package)")
    sam_model: str = option("vit_b", choices=("vit_b", "vit_l", "vit_h"),
                            help="SAM model type of --sam-checkpoint")
    saliency: str | None = option(None, metavar="PATH",
                                  help="ONNX salient-object model (IS-Net) for --proposals "
                                       "saliency: its foreground regions on the image and on "
                                       "crops around the Grad-CAM regions")
    saliency_size: int | None = option(None, range=(8, None),
                                       help="run the saliency model at this input side "
                                            "(a fixed-size model is rewritten; IS-Net: 512 is "
                                            "~4x faster than its 1024)")
    saliency_threshold: float = option(0.5, range=(0, 1), cli=False,
                                       help="saliency foreground threshold")
    saliency_min_area: float = option(0.002, range=(0, 1), cli=False,
                                      help="smallest saliency region (fraction of the image)")
    crop_expand: float = option(1.5, range=(1, None), cli=False,
                                help="scale of the Grad-CAM region boxes cropped for saliency")
    record_proposals: bool = option(False,
                                    help="with --save-baselines, also keep every proposal "
                                         "(baselines/proposals.json: the funnel's first stage)")
    anchor: str = option("gradcam", choices=("gradcam", "mil"),
                         help="the class map that ranks the proposals: the classifier's "
                              "Grad-CAM (the paper's) or a multiple-instance head over the "
                              "proposals' region features, trained on the labels (WSDDN + "
                              "OICR; see --mil-refine)")
    mil_side: int = option(512, range=(32, None),
                           help="--anchor mil: region features from the image squashed to "
                                "this side")

    def check(self) -> None:
        super().check()
        methods = flag_of(FemParams, "methods")
        for method, name, needs in (("saliency", "saliency", "a salient-object model"),
                                    ("sam", "sam_checkpoint", "the SAM weights")):
            flag = flag_of(FemParams, name)
            if method in self.methods and not getattr(self, name):
                raise WeakpasteError(f"methods ({methods}) has {method}, which needs {needs}: "
                                     f"pass {name} ({flag} PATH)")
            if getattr(self, name) and method not in self.methods:
                raise WeakpasteError(f"{name} ({flag}) is set but methods ({methods}) has no "
                                     f"{method}; add {method} to {methods} or drop {flag}")


@dataclass(frozen=True)
class FemConfig(Config):
    """Everything that decides ``weakpaste mine fem`` (recorded in the manifest)."""

    model: ClassifierSpec = option(factory=ClassifierSpec, help="the classifier")
    em_iters: int = option(2, range=(0, None), help="EM iterations j (0: step 1 only)")
    keep: float = option(0.8, range=(0, 1), open_low=True, help="M-step inlier fraction k")
    min_samples: int = option(5, range=(1, None),
                              help="fewer segments of a class: no covariance, keep step 1")
    score_threshold: float = option(0.1, range=(0, 1),
                                    help="keep segments the classifier scores at least this "
                                         "high")
    pick: str = option("em", choices=("em", "evidence", "evidence-em"),
                       help="the segment per (image, class): EM's from step 1 (the "
                            "paper's), the candidate of most evidence = crop probability x "
                            "mean Grad-CAM inside, or EM's from the evidence picks")
    min_evidence: float = option(0.0, range=(0, 1),
                                 help="keep segments whose evidence is at least this")
    keep_top: float = option(1.0, range=(0, 1), open_low=True,
                             help="keep this fraction of the segments, those of most "
                                  "evidence (precision over yield)")
    negatives: str | None = option(None, metavar="DIR",
                                   help="images showing none of the classes: all-zero "
                                        "classifier targets (a one-class set needs them)")
    train_images: str | None = option(None, metavar="DIR",
                                      help="more labelled images, not mined: the classifier "
                                           "(and the MIL head) train on them too (needs "
                                           "--train-labels)")
    train_labels: str | None = option(None, metavar="PATH",
                                      help="the image-level labels of --train-images (as "
                                           "--labels; classes not mined are ignored)")
    mil_refine: int = option(2, range=(0, None),
                             help="--anchor mil: OICR refinement streams after WSDDN (0: "
                                  "WSDDN's scores)")
    mil_epochs: int = option(10, range=(1, None),
                             help="--anchor mil: training passes over the images, per stream")
    mil_dims: int = option(64, range=(1, None),
                           help="--anchor mil: principal components of the region features "
                                "the head sees (few images per class: keep it small)")
    seed: int = seed_option("seeds the classifier's and the MIL head's training")
    params: FemParams = option(factory=FemParams, help="per-image settings")

    def check(self) -> None:
        super().check()
        if bool(self.train_images) != bool(self.train_labels):
            given, missing = (("train_images", "train_labels") if self.train_images else
                              ("train_labels", "train_images"))
            raise WeakpasteError(f"{given} ({flag_of(FemConfig, given)}) needs {missing} "
                                 f"({flag_of(FemConfig, missing)}): pass both or neither")


@dataclass(frozen=True)
class FreeSegParams(Config):
    """Per-image settings (recorded in the manifest; part of the cache key).

    Attributes:
        saliency: ``spectral`` or the path of an ONNX salient-object model.
        saliency_convention: ``isnet`` or ``u2net`` preprocessing of an ONNX model.
        saliency_size: input side of the ONNX model (None: a fixed model's own, else the
            convention's); a model with a fixed input is rewritten to run at it.
        cam_threshold: LORE's Grad-CAM binarisation, relative to its maximum.
        lore_steps: LORE's most removals.
        lore_stop: LORE stops when the class's probability falls below this.
        min_side: images with a shorter side below this (pixels) are skipped.
    """

    saliency: str = option("spectral", metavar="PATH|spectral",
                           help="ONNX salient-object model (IS-Net/U2-Net) or the weight-free "
                                "spectral residual")
    saliency_convention: str = option("isnet", choices=("isnet", "u2net"),
                                      help="input normalisation of the ONNX model")
    saliency_size: int | None = option(None, range=(8, None),
                                       help="run the ONNX model at this input side (a "
                                            "fixed-size model is rewritten; IS-Net: 512 is "
                                            "~4x faster than its 1024)")
    cam_threshold: float = option(0.5, range=(0, 1),
                                  help="LORE: Grad-CAM binarisation, relative to its maximum")
    lore_steps: int = option(5, range=(1, None), help="LORE: most regions removed")
    lore_stop: float = option(0.5, range=(0, 1),
                              help="LORE: stop once the class probability is below this")
    min_side: int = option(8, range=(1, None), cli=False,
                           help="skip images with a shorter side (pixels)")


@dataclass(frozen=True)
class FreeSegConfig(Config):
    """Everything that decides ``weakpaste mine freeseg`` (recorded in the manifest).

    Attributes:
        model: the classifier; it ranks and its trunk gives the dense features.
        coseg_weight: exponent a of the co-segmentation in the raw map (0: saliency only).
        coseg_iters: rounds of the common-foreground model.
        bg_clusters: background prototypes.
        temperature: sigmoid temperature of the similarity difference.
        floor: least cosine similarity to the common foreground that counts as foreground.
        centre_sigma: centre prior of the first beliefs (fraction of the image; 0: none).
        min_coseg_images: classes with fewer images use their saliency alone.
        smooth: Gaussian sigma of the refinement (fraction of the shorter side).
        morph: erosion/dilation radius (fraction of the shorter side).
        raw_threshold: binarises the raw map for the ``raw`` baseline only.
        stability_delta: the stability cue's threshold shift (map units; SAM's stability
            score of the refined map).
        min_score: keep segments whose FreeSeg score is larger than this.
        min_drop: ... and whose image's drop rate is larger than this.
        rank_cues: the scores (``RANK_CUES``) whose mean percentile rank is the ranking score.
        keep_top: the share of the segments kept, those of highest ranking score.
        min_rank: the least ranking score kept.
        keep_per_class: ``keep_top`` within each class instead of over all segments.
        crossfit_folds: folds of the cross-fitted classifier scores (0: none).
        seed: k-means initialisation, the folds and the random baseline.
        params: per-image settings.
    """

    model: ClassifierSpec = option(factory=ClassifierSpec, help="the classifier")
    coseg_weight: float = option(0.5, range=(0, 1),
                                 help="raw map = coseg^w * saliency^(1-w); 0 = saliency only")
    coseg_iters: int = option(3, range=(1, None), cli=False, help="co-segmentation rounds")
    bg_clusters: int = option(3, range=(1, None), cli=False, help="background prototypes")
    temperature: float = option(0.1, cli=False, help="sigmoid temperature")
    floor: float = option(0.2, cli=False, help="least similarity to the foreground")
    centre_sigma: float = option(0.35, cli=False, help="centre prior sigma")
    min_coseg_images: int = option(2, cli=False, help="fewer images: saliency alone")
    smooth: float = option(0.01, cli=False, help="refinement Gaussian sigma")
    morph: float = option(0.02, cli=False, help="refinement opening radius")
    raw_threshold: float = option(0.5, cli=False, help="the raw baseline's threshold")
    stability_delta: float = option(0.1, range=(0, 1), open_low=True, cli=False,
                                    help="threshold shift of the stability cue")
    min_score: float = option(0.5, flag="--min-freeseg-score", range=(0, 1),
                              help="keep segments whose mean(IoB, IoM) with the LORE box is "
                                   "larger")
    min_drop: float = option(0.5, flag="--min-drop-rate", range=(0, 1),
                             help="... and whose relative confidence drop without the LORE "
                                  "box is larger")
    rank_cues: tuple[str, ...] = option(
        ("stability", "contrast", "border", "centre", "freeseg"), flag="--rank-by",
        choices=tuple(RANK_CUES), metavar="SCORE",
        help="the scores whose mean percentile rank orders the segments (the ranking score): "
             "label-free cues (stability, contrast, border, centre, fragments), the paper's "
             "(freeseg, iob, iom, drop_rate, p_before, p_after) or cross-fitted ones "
             "(p_before_cf, p_after_cf, drop_rate_cf; need --crossfit-folds)")
    keep_top: float = option(0.7, range=(0, 1), open_low=True,
                             help="keep this fraction of the segments, those of highest "
                                  "ranking score (smaller: precision over yield; 1: all)")
    min_rank: float = option(0.0, flag="--min-score", range=(0, 1), metavar="X",
                             help="keep segments whose ranking score is at least this")
    keep_per_class: bool = option(False,
                                  help="apply --keep-top within each class instead of over "
                                       "all segments")
    crossfit_folds: int = option(0, range=(0, None),
                                 help="also score each image with linear heads on the "
                                      "classifier's features fitted on the other folds "
                                      "(p_before_cf, p_after_cf, drop_rate_cf; 0: off)")
    seed: int = seed_option("k-means initialisation and the random baseline")
    params: FreeSegParams = option(factory=FreeSegParams, help="per-image settings")

    def check(self) -> None:
        super().check()
        folds = flag_of(FreeSegConfig, "crossfit_folds")
        if self.crossfit_folds == 1:
            raise WeakpasteError(f"crossfit_folds ({folds}) must be 0 (off) or at least 2, "
                                 "got 1")
        cf = [c for c in self.rank_cues if c.endswith("_cf")]
        if cf and not self.crossfit_folds:
            raise WeakpasteError(f"rank_cues ({flag_of(FreeSegConfig, 'rank_cues')}) {cf[0]} "
                                 f"needs cross-fitted scores: pass {folds} 5 (or another K >= 2)")
