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
dog segment (the one F-EM finds most typical). Stages 2-5's per-image work is a pure function
(``mine_image``) mapped over images by a process pool and cached on disk per image, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from weakpaste.errors import WeakpasteError
from weakpaste.io.images import atomic_write_bytes, read_image
from weakpaste.mine.runner import LazyImages, cache_key, jsonable, map_tasks
from weakpaste.ops import masks as mask_ops


@dataclass(frozen=True)
class FemParams:
    """Per-image parameters of F-EM (plain values; recorded in the manifest).

    Attributes:
        rank: how proposals are ranked against the Grad-CAM: ``distance`` (the paper's mean
            pixel distance to the anchor) or ``cam-iou`` (IoU with the thresholded Grad-CAM,
            the paper's own "large overlap with G" assumption; with superpixel-hierarchy
            proposals the distance rank prefers tiny regions at the anchor, see README).
        cam_threshold: Grad-CAM binarisation threshold, relative to the map's maximum.
        top_n: step 1 scores this many nearest proposals (EM-Paste: n <= 3).
        candidates: eligible candidates per (image, class) for the E-step.
        erode: erosion iterations (3x3) before a segment is scored (appendix §6).
        max_side: proposals are computed at this longer side (pixels).
        min_area: drop proposals under this fraction of the image (appendix §6: 1%).
        max_span: drop proposals whose box spans at least this fraction of the image's
            width or height (appendix §6: "almost the whole image").
        max_proposals: cap on proposals per image.
        methods: proposal methods.
    """

    rank: str = "cam-iou"
    cam_threshold: float = 0.5
    top_n: int = 3
    candidates: int = 16
    erode: int = 2
    max_side: int = 512
    min_area: float = 0.01
    max_span: float = 0.95
    max_proposals: int = 300
    methods: tuple[str, ...] = ("felzenszwalb", "slic")


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


def mine_image(classifier, image: np.ndarray, labels: list[str], file_name: str,
               params: FemParams) -> ImageMining:
    """Steps 2-4 and the features of step 5 for one image (a pure function of its inputs).

    Args:
        classifier: a trained ``weakpaste.models.classifier.Classifier``.
        image: uint8 (H, W, 3) RGB.
        labels: the image's labelled classes (all known to the classifier).
        file_name: recorded in the result.
        params: per-image parameters.

    Returns:
        The per-class candidates, scores and features.
    """
    from weakpaste.mine.proposals import generate_proposals

    H, W = image.shape[:2]
    result = ImageMining(file_name=file_name, height=H, width=W)
    t0 = time.perf_counter()
    props = generate_proposals(image, max_side=params.max_side, min_area=params.min_area,
                               max_span=params.max_span, max_candidates=params.max_proposals,
                               methods=params.methods)
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


@dataclass(frozen=True)
class MineConfig:
    """Everything that decides ``weakpaste mine --method fem`` (recorded in the manifest)."""

    backbone: str = "resnet50"
    weights: str | None = "DEFAULT"
    classifier: str | None = None
    train_mode: str = "linear"
    epochs: int = 30
    input_size: int = 384
    crop_size: int = 224
    device: str = "cpu"
    em_iters: int = 2
    keep: float = 0.8
    min_samples: int = 5
    score_threshold: float = 0.1
    seed: int = 0
    params: FemParams = FemParams()


_WORKER: dict = {}


def _worker_init(classifier_path: str, device: str, threads: int | None) -> None:
    import torch

    from weakpaste.models.classifier import Classifier

    if threads:
        torch.set_num_threads(threads)
    _WORKER["classifier"] = Classifier.load(classifier_path, device=device)


def _mine_task(task: tuple[str, str, list[str], str, FemParams]) -> tuple[str, dict]:
    path, file_name, labels, cache_file, params = task
    image = read_image(path)
    result = mine_image(_WORKER["classifier"], image, labels, file_name, params)
    atomic_write_bytes(cache_file, pickle.dumps(result, protocol=5))
    return file_name, result.seconds


def run_mine_fem(images_dir: str, labels: str | None, out_dir: str, config: MineConfig, *,
                 workers: int = 1, overwrite: bool = False, resume: bool = False,
                 progress: bool = True, save_baselines: bool = False) -> dict:
    """``weakpaste mine --method fem``: a segment bank + ``pseudo_labels.json``.

    Args:
        images_dir: folder of the images.
        labels: image-level labels (see ``weakpaste.io.labels``).
        out_dir: the bank folder to create.
        config: classifier and F-EM settings.
        workers: processes for the per-image stage.
        overwrite: replace an existing output.
        resume: continue an interrupted run (per-image results are cached).
        progress: progress bars.
        save_baselines: also write ``baselines/cam.json`` (Grad-CAM > t as the mask) and
            ``baselines/step1.json`` (step 1 only) for benchmarks.

    Returns:
        The manifest.
    """
    from tqdm import tqdm

    from weakpaste.bank import BankWriter, segments_from_image
    from weakpaste.io.coco import write_coco
    from weakpaste.io.labels import load_labels
    from weakpaste.manifest import file_sha256, prepare_output_dir, write_manifest
    from weakpaste.structures import ImageRecord, Instances

    timings: dict[str, float] = defaultdict(float)
    records, classes = load_labels(labels, images_dir)
    images_dir = Path(images_dir)
    out = prepare_output_dir(out_dir, overwrite=overwrite, resume=resume, stage="mine")
    run_config = {"method": "fem", "images": str(images_dir), "labels": labels,
                  **{k: v for k, v in asdict(config).items() if k != "params"},
                  "params": asdict(config.params)}
    inputs = {"labels": file_sha256(labels)} if labels else {}
    write_manifest(out, stage="mine", config=run_config, seed=config.seed, inputs=inputs,
                   status="running")

    # 1. the classifier
    t = time.perf_counter()
    from weakpaste.models.classifier import Classifier

    if config.classifier:
        clf = Classifier.load(config.classifier, device=config.device)
        unknown = sorted({c for r in records for c in r.labels} - set(clf.classes))
        if unknown:
            raise WeakpasteError(f"{labels}: class {unknown[0]!r} is not among the classes of "
                                 f"the classifier {config.classifier}; retrain it without "
                                 "--classifier or drop the label")
        clf_path = Path(config.classifier)
        train_info = {"reused": str(clf_path)}
    else:
        clf_path = out / "classifier.pt"
        if resume and clf_path.is_file():
            clf = Classifier.load(clf_path, device=config.device)
            train_info = {"reused": str(clf_path)}
        else:
            clf = Classifier.build(config.backbone, config.weights, classes,
                                   device=config.device, input_size=config.input_size,
                                   crop_size=config.crop_size)
            y = np.zeros((len(records), len(classes)), dtype=np.float32)
            index = {c: i for i, c in enumerate(classes)}
            for i, r in enumerate(records):
                for c in r.labels:
                    y[i, index[c]] = 1.0
            train_info = clf.train(LazyImages([images_dir / r.file_name for r in records]), y,
                                   mode=config.train_mode, epochs=config.epochs,
                                   seed=config.seed, progress=progress)
            clf.save(clf_path)
    timings["classifier"] = time.perf_counter() - t

    # 2-5. per-image work, cached
    cache = out / ".cache" / cache_key(clf_path, config.params)
    cache.mkdir(parents=True, exist_ok=True)
    todo = [r for r in records if r.labels]
    cache_file = {r.file_name: cache / (hashlib.sha1(r.file_name.encode()).hexdigest() + ".pkl")
                  for r in todo}
    tasks = [(str(images_dir / r.file_name), r.file_name, list(r.labels),
              str(cache_file[r.file_name]), config.params)
             for r in todo if not cache_file[r.file_name].is_file()]
    t = time.perf_counter()
    it = map_tasks(_mine_task, tasks, workers, _worker_init, (str(clf_path), config.device))
    for _, secs in tqdm(it, total=len(tasks), desc="mine", unit="img", disable=not progress):
        for k, v in secs.items():
            timings[k] += v
    timings["per_image_wall"] = time.perf_counter() - t
    mined_images = len(tasks)

    results: list[ImageMining] = [pickle.loads(cache_file[r.file_name].read_bytes())
                                  for r in todo]
    # 5. EM per class
    from weakpaste.mine.em import em_refine

    t = time.perf_counter()
    by_class: dict[str, list[tuple[int, ClassMining]]] = defaultdict(list)
    for i, res in enumerate(results):
        for cm in res.classes:
            by_class[cm.label].append((i, cm))
    final: dict[tuple[int, str], tuple[int, float]] = {}
    em_info = {}
    for label, items in sorted(by_class.items()):
        em = em_refine([cm.features for _, cm in items], [cm.step1 for _, cm in items],
                       iterations=config.em_iters, keep=config.keep,
                       min_samples=config.min_samples)
        em_info[label] = {"items": len(items), "iterations": em.iterations,
                          "changed": em.changed or [], "fallback": em.fallback}
        for (i, _), c, d in zip(items, em.choices, em.distances, strict=True):
            final[(i, label)] = (c, d)
    timings["em"] = time.perf_counter() - t

    # 6. threshold, write the bank and the pseudo-labels
    t = time.perf_counter()
    categories = {c: {"id": k + 1, "supercategory": ""} for k, c in enumerate(classes)}
    kept: Counter = Counter()
    below: Counter = Counter()
    variants: dict[str, list[ImageRecord]] = {"final": [], "step1": [], "cam": []}
    with BankWriter(out) as writer:
        for i, res in enumerate(results):
            chosen, step1_rles, cam_rles = [], [], []
            for cm in res.classes:
                c, d = final[(i, cm.label)]
                if cm.scores[c] >= config.score_threshold:
                    chosen.append((cm, c, d))
                else:
                    below[cm.label] += 1
                if cm.scores[cm.step1] >= config.score_threshold:
                    step1_rles.append((cm.label, cm.rles[cm.step1], float(cm.scores[cm.step1])))
                if cm.cam_rle is not None:
                    cam_rles.append((cm.label, cm.cam_rle, 1.0))
            rid = i + 1
            for key, items in (("step1", step1_rles), ("cam", cam_rles)):
                variants[key].append(ImageRecord(
                    rid, res.file_name, res.width, res.height,
                    instances=Instances.from_rles(res.height, res.width, [x[0] for x in items],
                                                  [x[1] for x in items],
                                                  scores=[x[2] for x in items])))
            variants["final"].append(ImageRecord(
                rid, res.file_name, res.width, res.height,
                instances=Instances.from_rles(res.height, res.width,
                                              [cm.label for cm, _, _ in chosen],
                                              [cm.rles[c] for cm, c, _ in chosen],
                                              scores=[float(cm.scores[c]) for cm, c, _ in chosen])))
            if not chosen:
                continue
            rgb = read_image(images_dir / res.file_name)
            masks = mask_ops.decode_many([cm.rles[c] for cm, c, _ in chosen], res.height,
                                         res.width)
            segs, _ = segments_from_image(rgb, masks, tuple(cm.label for cm, _, _ in chosen),
                                          source_image=res.file_name, min_area=1, miner="fem")
            for seg, (cm, c, d) in zip(segs, chosen, strict=True):
                seg.scores.update({"classifier": float(cm.scores[c]),
                                   "mahalanobis": float(d), "step1": float(c == cm.step1),
                                   "anchor_distance": float(cm.distances[c])})
                writer.add(seg)
                kept[cm.label] += 1
    write_coco(out / "pseudo_labels.json", variants["final"], categories,
               info={"description": "weakpaste F-EM pseudo-labels"})
    if save_baselines:
        (out / "baselines").mkdir(exist_ok=True)
        write_coco(out / "baselines" / "step1.json", variants["step1"], categories)
        write_coco(out / "baselines" / "cam.json", variants["cam"], categories)
    timings["write"] = time.perf_counter() - t

    skipped = Counter(reason for res in results for reason in res.skipped.values())
    counts = {"images": len(records), "labelled_images": len(todo),
              "mined_this_run": mined_images,
              "labelled_pairs": sum(len(r.labels) for r in todo),
              "segments": sum(kept.values()), "per_class": dict(sorted(kept.items())),
              "below_score_threshold": dict(sorted(below.items())),
              "skipped": dict(skipped)}
    return write_manifest(out, stage="mine", config=run_config, seed=config.seed,
                          inputs=inputs, counts=counts,
                          extra={"em": em_info, "classifier_training": jsonable(train_info),
                                 "timings_s": {k: round(v, 3) for k, v in timings.items()}})
