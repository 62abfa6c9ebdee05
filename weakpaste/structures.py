"""Core types shared by every stage.

Conventions (one inside, converted only in ``weakpaste.io``):
    * boxes are ``xyxy`` absolute float64 pixels, x1/y1 exclusive;
    * masks are bool (H, W) in memory, compressed RLE at rest (``weakpaste.ops.masks``);
    * classes are identified by name; numeric category ids exist only in files.

May import: core, ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from weakpaste.ops import masks as mask_ops


@dataclass(frozen=True)
class Instances:
    """The instances of one image.

    Masks are kept compressed so that a whole data set's records fit in memory; ``masks()``
    decodes them into the in-memory form on demand.

    Attributes:
        height: image height H.
        width: image width W.
        classes: class name of each instance, length N.
        boxes: float64 (N, 4) ``xyxy``.
        rles: compressed masks, length N.
        scores: float64 (N,) confidence, or None for ground truth.
    """

    height: int
    width: int
    classes: tuple[str, ...]
    boxes: np.ndarray
    rles: tuple[dict, ...] = field(repr=False)
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.classes)
        if self.boxes.shape != (n, 4) or len(self.rles) != n:
            raise ValueError(
                f"Instances: {n} classes but boxes {self.boxes.shape} and {len(self.rles)} masks")
        if self.scores is not None and self.scores.shape != (n,):
            raise ValueError(f"Instances: {n} classes but scores {self.scores.shape}")

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def from_masks(cls, masks: np.ndarray, classes: tuple[str, ...] | list[str],
                   scores: np.ndarray | None = None) -> Instances:
        """Build from bool masks (N, H, W); boxes are the masks' tight boxes."""
        if masks.ndim != 3:
            raise ValueError(f"Instances.from_masks: expected (N, H, W) masks, got {masks.shape}")
        return cls(height=int(masks.shape[1]), width=int(masks.shape[2]),
                   classes=tuple(classes), boxes=mask_ops.masks_boxes(masks),
                   rles=tuple(mask_ops.encode_many(masks)),
                   scores=None if scores is None else np.asarray(scores, dtype=np.float64))

    @classmethod
    def from_rles(cls, height: int, width: int, classes: tuple[str, ...] | list[str],
                  rles: list[dict], scores: np.ndarray | None = None,
                  xywh: list | None = None) -> Instances:
        """Build from compressed masks; boxes are computed from the RLEs, or converted from
        ``xywh``, their tight ``[x, y, w, h]`` boxes when already known."""
        if xywh is None:
            boxes = mask_ops.rle_boxes(list(rles))
        else:
            boxes = np.array(xywh, dtype=np.float64).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
        return cls(height=height, width=width, classes=tuple(classes), boxes=boxes,
                   rles=tuple(rles),
                   scores=None if scores is None else np.asarray(scores, dtype=np.float64))

    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        return cls(height, width, (), np.zeros((0, 4)), ())

    def masks(self) -> np.ndarray:
        """Decoded masks, bool (N, H, W)."""
        return mask_ops.decode_many(list(self.rles), self.height, self.width)

    def areas(self) -> np.ndarray:
        """Mask areas in pixels, int64 (N,)."""
        return np.array([mask_ops.rle_area(r) for r in self.rles], dtype=np.int64)


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set, without pixels.

    Attributes:
        image_id: positive integer id.
        file_name: path of the image relative to the data set's image folder.
        width: W in pixels.
        height: H in pixels.
        labels: image-level class labels (sorted, distinct).
        instances: known instances, or None when they are unknown (weak labels only).
    """

    image_id: int
    file_name: str
    width: int
    height: int
    labels: tuple[str, ...] = ()
    instances: Instances | None = None


@dataclass(frozen=True)
class Segment:
    """An object cut out of a source image: the unit stored in a segment bank.

    Attributes:
        rgb: uint8 (h, w, 3) crop of the source image around the object.
        mask: bool (h, w) object mask inside the crop (non-empty).
        category: class name.
        source_image: file name (or id) of the image it was cut from.
        source_box: float64 (4,) ``xyxy`` of the crop in the source image.
        scores: named scores from the miner (e.g. classifier score, FreeSeg score).
        miner: which miner made it ("gt", "fem", "freeseg", ...).
        segment_id: id assigned by the bank (-1 before it is stored).
    """

    rgb: np.ndarray
    mask: np.ndarray
    category: str
    source_image: str = ""
    source_box: np.ndarray = field(default_factory=lambda: np.zeros(4))
    scores: dict[str, float] = field(default_factory=dict)
    miner: str = "gt"
    segment_id: int = -1

    def __post_init__(self) -> None:
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"Segment: rgb must be uint8 (h, w, 3), got {self.rgb.dtype} "
                             f"{self.rgb.shape}")
        if self.mask.shape != self.rgb.shape[:2] or self.mask.dtype != bool:
            raise ValueError(f"Segment: mask must be bool {self.rgb.shape[:2]}, got "
                             f"{self.mask.dtype} {self.mask.shape}")
        if not self.mask.any():
            raise ValueError(f"Segment: empty mask (class {self.category!r}, "
                             f"source {self.source_image!r})")
