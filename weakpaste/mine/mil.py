"""F-EM's MIL anchor (``--anchor mil``): proposals ranked by a multiple-instance head.

Grad-CAM of a classifier trained on a few hundred scene photos sits on context (a third of
the pairs on coco_mini point into a right box). The MIL anchor instead scores every proposal
of an image with a head trained on the image-level labels over region features
(``weakpaste.models.mil``: WSDDN, then OICR refinement), as weakly supervised detection does:

1. per image, a pure function (``region_image``, cached like F-EM's per-image stage): the
   proposals (kept compressed, masks are made only for the chosen ones), their region features
   (``weakpaste.models.regions``: the trunk's map pooled inside each mask) and pairwise IoUs;
2. between the per-image map and the choice (``fit``): the head, trained on every mined image
   and on the ``--train-images`` (a user has more labelled images than they mine);
3. the choice (``class_minings``): per (image, class) the head's scores make the anchor map
   (per pixel, the mean score of the proposals covering it, divided by its maximum), which
   ranks the proposals exactly as a Grad-CAM does (``--rank``); the ``--candidates`` first
   become F-EM's candidates with the head's scores as their scores, so that step 1, the
   evidence pick, EM on the region features and the thresholds run as with Grad-CAM.
"""

from __future__ import annotations

import functools
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from weakpaste.mine.config import MIN_IMAGE_SIDE, FemConfig, FemParams
from weakpaste.ops import masks as mask_ops


@dataclass
class RegionMining:
    """The per-image result of the MIL anchor (cached on disk).

    Attributes:
        file_name, height, width: the image.
        labels: its labelled classes.
        proposals: its ``Proposals`` as zstd-compressed arrays (``pack``), None when
            skipped.
        owner: int64 (M,) -1 for a proposal of every label, else the index in ``labels`` of
            the one whose Grad-CAM crop found it (saliency proposals).
        features: float16 (M, D) region features.
        ious: float16 (M, M) pairwise IoU of the proposals (OICR's pseudo-labels).
        skipped: label -> reason.
        seconds: per-stage CPU-bound wall times.
    """

    file_name: str
    height: int
    width: int
    labels: tuple[str, ...]
    proposals: bytes | None = None
    owner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))
    ious: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# A packed Proposals decompresses to at most this many bytes (its label maps at the working
# resolution, a few MB): a cache entry claiming more is refused before allocation.
_MAX_PACKED = 1 << 30


def pack(props) -> bytes:
    """A ``Proposals`` as zstd-compressed arrays (its label maps compress ~70x).

    Stored as data, never pickled (``mine --resume`` reads it back from ``OUT/.cache``, which
    others may have written): an ``.npz`` of the label maps, the candidates' sources and ids
    and the explicit masks, with the map names as JSON.
    """
    import zstandard

    arrays = {"image_shape": np.asarray(props.image_shape, dtype=np.int64),
              "sources": np.asarray(props._sources, dtype=np.int64),
              "id_counts": np.array([len(i) for i in props._ids], dtype=np.int64),
              "ids": (np.concatenate(props._ids) if props._ids else np.zeros(0)).astype(np.int32),
              "names": np.frombuffer(json.dumps(list(props.map_names)).encode(), np.uint8)}
    for k, m in enumerate(props._maps):
        arrays[f"map{k}"] = m
    if props._explicit is not None:
        arrays["explicit"] = props._explicit
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(buf.getvalue())


def unpack(blob: bytes):
    """The ``Proposals`` that ``pack`` stored, rebuilt through its validating constructor.

    Raises:
        ValueError: the bytes are not a packed ``Proposals`` (damaged or forged).
    """
    import zstandard

    from weakpaste.mine.proposals import Proposals

    try:
        size = zstandard.frame_content_size(blob)
        if size < 0 or size > _MAX_PACKED:
            raise ValueError(f"declared size {size}")
        with np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(blob)),
                     allow_pickle=False) as z:
            parts = {k: z[k] for k in z.files}
        names = json.loads(parts["names"].tobytes().decode())
        maps = [parts[f"map{k}"] for k in range(len(names))]
        counts = parts["id_counts"]
        ids = np.split(parts["ids"], np.cumsum(counts)[:-1]) if len(counts) else []
        return Proposals(tuple(int(v) for v in parts["image_shape"]), maps,
                         list(zip(parts["sources"].tolist(), ids, strict=True)),
                         explicit_masks=parts.get("explicit"), map_names=names)
    except (zstandard.ZstdError, OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a packed Proposals ({err})") from None


def region_image(classifier, image: np.ndarray, labels: Sequence[str], file_name: str,
                 params: FemParams, *, sam=None, saliency=None, digest: str = ""
                 ) -> RegionMining:
    """Proposals, region features and IoUs of one image (a pure function of its inputs).

    Args:
        classifier: the trained ``Classifier`` (its trunk gives the features; its Grad-CAM
            places the saliency crops when ``saliency`` is given).
        image: uint8 (H, W, 3) RGB.
        labels: the image's labelled classes.
        file_name: recorded in the result.
        params: per-image parameters (``mil_side``, the proposal settings).
        sam, saliency, digest: as for ``weakpaste.mine.fem.mine_image``.

    Returns:
        The result; an image smaller than ``MIN_IMAGE_SIDE`` or without proposals is
        skipped (every label, with the reason).
    """
    from weakpaste.mine.fem_image import _proposals
    from weakpaste.models.regions import region_features

    H, W = image.shape[:2]
    result = RegionMining(file_name, H, W, tuple(labels))
    if min(H, W) < MIN_IMAGE_SIDE:
        result.skipped = {label: f"smaller than {MIN_IMAGE_SIDE} px" for label in labels}
        return result
    t0 = time.perf_counter()
    cams = None
    if saliency is not None and labels:  # the saliency crops follow the Grad-CAM regions
        index = {c: i for i, c in enumerate(classifier.classes)}
        cams = classifier.gradcam(image, [index[label] for label in labels])
    t1 = time.perf_counter()
    props, owner = _proposals(image, labels, cams, params, digest, sam, saliency)
    t2 = time.perf_counter()
    result.seconds.update(gradcam=t1 - t0, proposals=t2 - t1)
    if props is None:
        result.skipped = {label: "no proposal survived the filters" for label in labels}
        return result
    fmap, geometry = classifier.dense_map(image, params.mil_side)
    result.features = region_features(fmap, geometry, params.mil_side, props).astype(np.float16)
    t3 = time.perf_counter()
    result.ious = props.ious().astype(np.float16)
    result.owner, result.proposals = owner, pack(props)
    result.seconds.update(regions=t3 - t2, ious=time.perf_counter() - t3)
    return result


def fit(results: Sequence[RegionMining], classes: Sequence[str], labels: Sequence,
        config: FemConfig):
    """The MIL head on every image with proposals.

    Args:
        results: per image, its ``RegionMining``.
        classes: the head's classes (the mined classes).
        labels: per image, its labels (those not in ``classes`` are ignored).
        config: ``mil_refine``, ``mil_epochs``, ``mil_dims``, ``seed``.

    Returns:
        (``weakpaste.models.mil.MilHead``, information for the manifest).
    """
    from weakpaste.models.mil import fit_mil

    index = {c: i for i, c in enumerate(classes)}
    feats, ious, rows = [], [], []
    for res, labs in zip(results, labels, strict=True):
        if res.proposals is None or not len(res.features):
            continue
        row = np.zeros(len(classes), np.float32)
        row[[index[c] for c in labs if c in index]] = 1.0
        feats.append(res.features)
        ious.append(res.ious)
        rows.append(row)
    head = fit_mil(feats, np.stack(rows), ious=ious, refine=config.mil_refine,
                   dims=config.mil_dims, epochs=config.mil_epochs, seed=config.seed)
    return head, {"images": len(feats), **head.info}


def anchor_map(props, scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """A class's anchor map: per pixel, the mean score of the eligible proposals covering it.

    Args:
        props: the image's ``Proposals``.
        scores: float (M,) the head's scores of the class.
        eligible: int (E,) the proposals that may show the class.

    Returns:
        float32 (H, W) at full resolution in [0, 1] (divided by its maximum; all zero when
        every score is 0).
    """
    from weakpaste.ops.grid import Grid

    sub = props.select(eligible)
    cover = sub.cover_mean(np.asarray(scores, np.float64)[eligible])
    peak = cover.max()
    cover = cover / peak if peak > 0 else cover
    return Grid(props.image_shape, props.working_shape).upsample(cover).astype(np.float32)


class LazyRles(Sequence):
    """The RLEs of some proposals of a packed ``Proposals``, each encoded when first read.

    The selection reads the masks of the picks only (and of every candidate for the
    funnel's baselines); the unpacked proposals of the last few images are kept.
    """

    def __init__(self, blob: bytes, indices: np.ndarray):
        self.blob, self.indices, self.done = blob, np.asarray(indices), {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if k not in self.done:
            self.done[k] = mask_ops.encode(_unpacked(self.blob).mask(int(self.indices[k])))
        return self.done[k]


@functools.lru_cache(maxsize=4)
def _unpacked(blob: bytes):
    return unpack(blob)


def class_minings(res: RegionMining, head, classes: Sequence[str], config: FemConfig):
    """F-EM's per-(image, class) candidates of one image, ranked by the MIL anchor.

    Args:
        res: the image's ``RegionMining``.
        head: the trained ``MilHead``.
        classes: the head's classes.
        config: the F-EM settings (``params.rank``, ``candidates``, ``top_n``,
            ``cam_threshold``, ``record_proposals``).

    Returns:
        ``weakpaste.mine.fem.ImageMining`` whose classes hold, per label, the candidates'
        masks, the head's scores (``scores``), the mean anchor map inside (``cam_means``),
        the region features projected as the head sees them (EM's φ), the thresholded
        anchor map (``cam_rle``) and its maximum (``cam_peak``).
    """
    from weakpaste.mine.fem_image import (
        NO_CANDIDATE,
        ClassMining,
        ImageMining,
        _encode_all,
        _rank,
        cam_anchor,
        step1_choice,
    )

    out = ImageMining(res.file_name, res.height, res.width, skipped=dict(res.skipped))
    if res.proposals is None:
        return out
    params = config.params
    props = unpack(res.proposals)
    projected = head.project(res.features)
    scores = head.scores_projected(projected)
    every = _encode_all(props) if params.record_proposals else None
    index = {c: i for i, c in enumerate(classes)}
    for k, label in enumerate(res.labels):
        eligible = np.flatnonzero((res.owner == -1) | (res.owner == k))
        if not eligible.size:
            out.skipped[label] = NO_CANDIDATE
            continue
        cam = anchor_map(props, scores[:, index[label]], eligible)
        found = cam_anchor(cam, params.cam_threshold)
        if found is None:
            out.skipped[label] = "empty MIL anchor map"
            continue
        anchor, g = found
        ranked = eligible[np.argsort(_rank(props, cam, g, anchor, params)[eligible],
                                     kind="stable")]
        order = ranked[: max(params.candidates, params.top_n)]
        class_scores = scores[order, index[label]].astype(np.float32)
        peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
        out.classes.append(ClassMining(
            label=label, anchor=anchor, rles=LazyRles(res.proposals, order),
            distances=props.mean_distance(anchor)[order], scores=class_scores,
            features=projected[order].numpy(),
            step1=step1_choice(class_scores, params.top_n), cam_rle=mask_ops.encode(g),
            cam_means=props.overlap(cam)[order].astype(np.float32),
            cam_peak=(int(peak[1]), int(peak[0])),
            proposal_rles=None if every is None else [every[int(i)] for i in ranked]))
    return out
