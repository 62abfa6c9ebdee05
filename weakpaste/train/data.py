"""COCO data sets as torch data for Mask R-CNN: specs, class tables, augmentation, sampling.

* ``parse_data_spec`` reads the ``COCO_JSON:IMAGES_DIR`` arguments of ``train`` and ``eval``.
* ``merge_categories`` / ``map_eval_categories``: classes are identified by name, so two files
  that number the same classes differently are mapped by name (and the difference reported).
* ``InstanceDataset`` turns ``ImageRecord``s into the (image, target) pairs torchvision's
  Mask R-CNN expects; ``train_transform`` is the training augmentation: horizontal flip,
  large-scale jittering (Ghiasi et al. 2021: resize by a random factor in [0.1, 2.0] of the
  fit-to-``size`` scale, then pad/crop to a fixed ``size`` x ``size``) and random brightness and
  contrast applied with probability 0.5 (EM-Paste §4.1).
* ``repeat_factors`` / ``epoch_indices`` / ``IndexStream``: repeat-factor sampling (Gupta et
  al., LVIS 2019) as an endless, seeded, resumable stream of image indices.

Randomness: each epoch's order comes from its own ``np.random.default_rng([seed, epoch])`` and
each sample's augmentation from a torch seed derived from (seed, epoch, position), so a run is
reproducible and a resumed run sees exactly the samples the interrupted one would have seen.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from weakpaste.core.errors import WeakpasteError
from weakpaste.io.coco import CocoDataset, class_image_counts, class_instance_counts, load_coco
from weakpaste.io.images import read_image_of_size
from weakpaste.structures import ImageRecord

# LSJ pads with the ImageNet mean colour: after the model's normalisation it is zero input.
PAD_RGB = (124, 116, 104)
# Instances that augmentation crops to fewer visible pixels are dropped from the target.
DEFAULT_MIN_AREA = 4


TRAIN_FLAG, STAGE2_FLAG, VAL_FLAG = "--train", "--stage2", "--val"
"""The flags of ``train``'s data (``loop.TrainInputs`` declares them with ``flag=``), named here,
below ``loop``, so that the modules it imports can name them."""


@dataclass(frozen=True)
class DataSpec:
    """A ``COCO_JSON:IMAGES_DIR`` argument.

    Attributes:
        json: the COCO instances file.
        images: the folder its ``file_name``s are relative to (None when not given).
        option: the flag it was given with, for messages (not compared).
    """

    json: Path
    images: Path | None
    option: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.json}:{self.images}" if self.images is not None else str(self.json)


def parse_data_spec(text: str | DataSpec, *, option: str = TRAIN_FLAG,
                    images_required: bool = True) -> DataSpec:
    """Split ``COCO_JSON:IMAGES_DIR``.

    The split is at ``.json:`` when present (so folders may contain colons), otherwise at the
    last colon.

    Raises:
        WeakpasteError: the images folder is missing although required.
    """
    if isinstance(text, DataSpec):
        spec = text
    else:
        cut = text.rfind(".json:")
        if cut >= 0:
            spec = DataSpec(Path(text[:cut + 5]), Path(text[cut + 6:]) if text[cut + 6:] else None)
        elif ":" in text:
            head, _, tail = text.rpartition(":")
            spec = DataSpec(Path(head), Path(tail) if tail else None)
        else:
            spec = DataSpec(Path(text), None)
    spec = dataclasses.replace(spec, option=option)
    if spec.images is None and images_required:
        raise WeakpasteError(f"{spec.json}: {option} needs COCO_JSON:IMAGES_DIR, the annotation "
                             f"file and its images folder (e.g. {option} train.json:images/)")
    return spec


def load_spec(spec: DataSpec, *, check_files: bool = True) -> CocoDataset:
    """Load a COCO set with instance masks (see ``weakpaste.io.coco.load_coco``)."""
    images_flag = f"{spec.option} COCO_JSON:IMAGES_DIR" if spec.option else None
    return load_coco(spec.json, spec.images, require_masks=True,
                     check_files=check_files and spec.images is not None,
                     images_flag=images_flag)


def merge_categories(datasets: Sequence[CocoDataset]) -> tuple[tuple[str, ...], list[str]]:
    """The training classes: the union of the data sets' category names.

    Args:
        datasets: the training sets, in command-line order.

    Returns:
        (class names in order of first appearance, notes about classes whose category id
        differs between files; they are mapped by name).
    """
    names: list[str] = []
    first: dict[str, tuple[int, Path | None]] = {}
    notes = []
    for ds in datasets:
        moved: dict[Path | None, list[tuple[str, int, int]]] = {}
        for name, cat in ds.categories.items():
            if name not in first:
                first[name] = (cat["id"], ds.path)
                names.append(name)
            elif cat["id"] != first[name][0]:
                moved.setdefault(first[name][1], []).append((name, cat["id"], first[name][0]))
        for ref, items in moved.items():
            if len(items) == 1:
                name, cid, rid = items[0]
                notes.append(f"class {name!r} has category id {cid} in {ds.path} but {rid} in "
                             f"{ref}; mapped by name")
            else:
                shown = ", ".join(f"{n!r} ({c} vs {r})" for n, c, r in items[:8])
                more = f", … ({len(items) - 8} more)" if len(items) > 8 else ""
                notes.append(f"{len(items)} classes have other category ids in {ds.path} than "
                             f"in {ref}; mapped by name: {shown}{more}")
    return tuple(names), notes


def map_eval_categories(class_names: Sequence[str], gt: CocoDataset) -> tuple[dict[str, int],
                                                                              list[str]]:
    """Map the model's classes to the category ids of an evaluation set, by name.

    Returns:
        (class name -> the evaluation file's category id for the classes both know, notes:
        classes only one side knows and classes whose ids differ).
    """
    mapping = {n: gt.categories[n]["id"] for n in class_names if n in gt.categories}
    notes = []
    missing = [n for n in gt.categories if n not in set(class_names)]
    if missing:
        notes.append(f"{len(missing)} class(es) of {gt.path} are not among the model's classes "
                     f"and cannot be detected (AP 0): {name_list(missing)}")
    unused = [n for n in class_names if n not in gt.categories]
    if unused:
        notes.append(f"{len(unused)} model class(es) are not in {gt.path}; their detections are "
                     f"not evaluated: {name_list(unused)}")
    moved = [n for i, n in enumerate(class_names) if n in mapping and mapping[n] != i + 1]
    if moved:
        notes.append(f"{len(moved)} class(es) have other category ids in {gt.path} than in "
                     f"training; mapped by name: {name_list(moved)}")
    return mapping, notes


def name_list(names: Sequence[str], limit: int = 8) -> str:
    """``'a', 'b', … (n more)``: class names for a one-line message."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def training_items(datasets: Sequence[CocoDataset], *, keep_empty: bool = False
                   ) -> tuple[list[tuple[Path, ImageRecord]], int]:
    """The images to train on, each with its images folder.

    Images without instances are left out unless ``keep_empty`` (then they are negatives:
    pseudo-labelled sets leave objects unlabelled, so treating their images as background is
    usually wrong, the reason detectron2 also filters them by default).

    Returns:
        ((images folder, record) pairs, number of images left out).
    """
    items, skipped = [], 0
    for ds in datasets:
        for rec in ds.records:
            if (rec.instances is None or len(rec.instances) == 0) and not keep_empty:
                skipped += 1
                continue
            items.append((ds.images_dir, rec))
    return items, skipped


# --------------------------------------------------------------------------------------------
# Repeat-factor sampling


def repeat_factors(image_classes: Sequence[Iterable[str]], threshold: float) -> np.ndarray:
    """LVIS repeat factors (Gupta et al. 2019, §"repeat factor sampling").

    f_c is the fraction of the images that contain class c, r_c = max(1, sqrt(t / f_c)), and an
    image's factor is the largest r_c of its classes (1 for an image without classes).

    Args:
        image_classes: the classes present in each image (repeats allowed).
        threshold: t; 0 or less switches sampling off (every factor 1).

    Returns:
        float64 (N,), every value >= 1.
    """
    classes = [set(c) for c in image_classes]
    n = len(classes)
    if threshold <= 0 or n == 0:
        return np.ones(n, dtype=np.float64)
    counts = Counter(c for cls in classes for c in cls)
    r = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in counts.items()}
    return np.array([max((r[c] for c in cls), default=1.0) for cls in classes],
                    dtype=np.float64)


def epoch_indices(factors: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """One epoch of repeat-factor sampling: stochastic rounding, then a shuffle.

    Image i appears floor(r_i) times plus once more with probability frac(r_i), so its
    expected count is r_i. Epoch ``epoch`` uses its own ``np.random.default_rng([seed, epoch])``,
    which makes any epoch reproducible without replaying the ones before it.

    Returns:
        int64 (M,) image indices, M >= N.
    """
    rng = np.random.default_rng([seed, epoch])
    whole = np.floor(factors)
    reps = whole.astype(np.int64) + (rng.random(len(factors)) < factors - whole)
    return rng.permutation(np.repeat(np.arange(len(factors), dtype=np.int64), reps))


class IndexStream:
    """An endless stream of (image index, augmentation seed) over epochs.

    Its whole state is (seed, epoch, position): ``state_dict`` / ``load_state_dict`` save and
    restore it in a checkpoint.

    Args:
        factors: repeat factors, float64 (N,) (all ones: plain shuffled epochs).
        seed: the run's seed for this stage.
    """

    def __init__(self, factors: np.ndarray, seed: int, epoch: int = 0, position: int = 0):
        if len(factors) == 0:
            raise ValueError("IndexStream: no images to sample")
        self.factors = np.asarray(factors, dtype=np.float64)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.position = int(position)
        self._order: np.ndarray | None = None

    def _current(self) -> np.ndarray:
        if self._order is None:
            self._order = epoch_indices(self.factors, self.seed, self.epoch)
        return self._order

    def take(self, n: int) -> list[tuple[int, int]]:
        """The next ``n`` samples as (image index, augmentation seed)."""
        out = []
        while len(out) < n:
            order = self._current()
            if self.position >= len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
                continue
            aug = int(np.random.SeedSequence([self.seed, self.epoch, self.position])
                      .generate_state(1)[0])
            out.append((int(order[self.position]), aug))
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_images": len(self.factors)}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("num_images") != len(self.factors):
            raise ValueError(f"sampler state is for {state.get('num_images')} images, this data "
                             f"has {len(self.factors)}")
        self.seed, self.epoch, self.position = (int(state["seed"]), int(state["epoch"]),
                                                int(state["position"]))
        self._order = None


class BatchKeys:
    """``num_batches`` batches of a copy of an ``IndexStream``: a DataLoader ``batch_sampler``.

    It runs ahead of training when the loader prefetches, so the training loop keeps its own
    copy of the stream to know the state to checkpoint.
    """

    def __init__(self, stream: IndexStream, batch_size: int, num_batches: int):
        self.stream = IndexStream(stream.factors, stream.seed, stream.epoch, stream.position)
        self.batch_size = batch_size
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for _ in range(self.num_batches):
            yield self.stream.take(self.batch_size)


# --------------------------------------------------------------------------------------------
# Dataset and augmentation


def train_transform(size: int, *, jitter: tuple[float, float] = (0.1, 2.0),
                    brightness: float = 0.4, contrast: float = 0.4, color_prob: float = 0.5,
                    flip_prob: float = 0.5) -> v2.Transform:
    """The training augmentation on uint8 tv_tensors.

    Horizontal flip (``flip_prob``), large-scale jittering (resize by a factor drawn from
    ``jitter`` times the scale that fits the image into ``size`` x ``size``, then a random
    ``size`` x ``size`` crop, padded with ``PAD_RGB`` where the image is smaller), and
    ``ColorJitter(brightness, contrast)`` applied with probability ``color_prob``.
    """
    fill = {tv_tensors.Image: PAD_RGB, tv_tensors.Mask: 0, "others": 0}
    steps: list[v2.Transform] = []
    if flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    steps += [v2.ScaleJitter((size, size), scale_range=tuple(jitter), antialias=True),
              v2.RandomCrop((size, size), pad_if_needed=True, fill=fill)]
    if color_prob > 0 and (brightness > 0 or contrast > 0):
        steps.append(v2.RandomApply([v2.ColorJitter(brightness=brightness, contrast=contrast)],
                                    p=color_prob))
    return v2.Compose(steps)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``xyxy`` boxes of (N, H, W) masks, x2/y2 exclusive (COCO's convention).

    Returns:
        float32 (N, 4); zeros for empty masks.
    """
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    m = masks.bool()
    rows, cols = m.any(dim=2), m.any(dim=1)
    h, w = masks.shape[1:]
    ar_h = torch.arange(h).expand(n, h)
    ar_w = torch.arange(w).expand(n, w)
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes[~rows.any(dim=1)] = 0
    return boxes


class InstanceDataset(torch.utils.data.Dataset):
    """Images and instance targets for torchvision's Mask R-CNN.

    An item is (image, target): image float32 (3, H, W) in [0, 1]; target ``boxes`` float32
    (N, 4) ``xyxy`` (recomputed from the masks after augmentation), ``labels`` int64 (N,) in
    1..K, ``masks`` uint8 (N, H, W), ``image_id`` int. Keys are an index, or (index, seed) from
    ``IndexStream`` to seed the augmentation of that sample.

    Args:
        items: (images folder, record) pairs.
        labels: class name -> label in 1..K; instances of other classes are left out.
        transform: a ``train_transform`` or None (images as they are, for evaluation).
        min_area: drop instances with fewer visible pixels after augmentation.
    """

    def __init__(self, items: Sequence[tuple[Path | None, ImageRecord]],
                 labels: Mapping[str, int], transform: v2.Transform | None = None,
                 min_area: int = DEFAULT_MIN_AREA):
        self.items = list(items)
        self.labels = dict(labels)
        self.transform = transform
        self.min_area = min_area

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[torch.Tensor, dict]:
        """The un-augmented uint8 image (3, H, W) and its target (boxes from the file)."""
        folder, rec = self.items[index]
        path = Path(folder or ".") / rec.file_name
        rgb = read_image_of_size(path, rec.width, rec.height, "its COCO entry")
        inst = rec.instances
        keep = [] if inst is None else [k for k, c in enumerate(inst.classes)
                                         if c in self.labels]
        if keep:
            masks = torch.from_numpy(np.ascontiguousarray(inst.masks()[keep])).to(torch.uint8)
            boxes = torch.as_tensor(inst.boxes[keep], dtype=torch.float32)
        else:
            masks = torch.zeros((0, rec.height, rec.width), dtype=torch.uint8)
            boxes = torch.zeros((0, 4), dtype=torch.float32)
        labels = torch.tensor([self.labels[inst.classes[k]] for k in keep], dtype=torch.int64)
        image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
        return image, {"boxes": boxes, "labels": labels, "masks": masks,
                       "image_id": rec.image_id}

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, target = self.load(index)
        if self.transform is not None:
            h, w = image.shape[1:]
            sample = (tv_tensors.Image(image),
                      {"boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                                         canvas_size=(h, w)),
                       "masks": tv_tensors.Mask(target["masks"]), "labels": target["labels"]})
            # torchvision's transforms draw from torch's global generator: fork it so that
            # the sample's own seed decides the augmentation and nothing else is disturbed.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed if seed is not None else index)
                img, tgt = self.transform(*sample)
            masks = tgt["masks"].as_subclass(torch.Tensor).to(torch.uint8)
            keep = masks.flatten(1).sum(dim=1) >= self.min_area
            masks = masks[keep]
            target = {"boxes": masks_to_boxes(masks), "labels": tgt["labels"][keep],
                      "masks": masks, "image_id": target["image_id"]}
            image = img.as_subclass(torch.Tensor)
        return image.to(torch.float32).div_(255.0), target


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep images and targets as lists: Mask R-CNN takes images of different sizes."""
    return [b[0] for b in batch], [b[1] for b in batch]


def worker_error_line(err: BaseException) -> str:
    """The one-line message of a WeakpasteError raised inside a DataLoader worker.

    DataLoader re-raises it in the main process with the worker's traceback as its message.
    """
    lines = [line for line in str(err).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("weakpaste.core.errors.WeakpasteError: "):
            return line.split(": ", 1)[1]
    return lines[-1] if lines else type(err).__name__



__all__ = ["DataSpec", "parse_data_spec", "load_spec", "merge_categories",
           "map_eval_categories", "class_image_counts", "class_instance_counts",
           "training_items", "repeat_factors", "epoch_indices", "IndexStream", "BatchKeys",
           "train_transform", "masks_to_boxes", "InstanceDataset", "collate",
           "worker_error_line", "name_list", "PAD_RGB",
           "DEFAULT_MIN_AREA"]
