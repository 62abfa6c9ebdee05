"""The backgrounds of a paste run: read from a COCO or LVIS file and folders, and the seeded
order in which the output images use them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.manifest import file_fingerprints, file_sha256, fingerprints_sha256
from weakpaste.io import coco
from weakpaste.io.images import list_images
from weakpaste.structures import Instances

BACKGROUNDS_FLAG, IMAGES_FLAG = "--backgrounds", "--images"
EXTRA_FLAG, EXTRA_RATIO_FLAG = "--extra-backgrounds", "--extra-ratio"
# The flags of paste's background inputs and --extra-ratio, declared with them in ``paste.run``
# (``flag=``) and named here so that this module, which ``paste.run`` imports, can name them.


@dataclass(frozen=True)
class Background:
    """A background image: its file and its known instances (None for extra images).

    Attributes:
        path: the image file.
        instances: its instances (None for extra images).
        source: "coco" (from the --backgrounds file) or "extra".
        labels: the classes annotated in it (crowd regions too).
        federated: an LVIS background's negative and not-exhaustive classes.
        sha256: the hash its bytes had when the run being resumed pasted onto it (None:
            not yet used); ``paste_item`` refuses other bytes.
    """

    path: str
    instances: Instances | None = None
    source: str = "extra"
    labels: tuple[str, ...] = ()
    federated: coco.Federated | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class BackgroundSet:
    """The backgrounds of a run and what their file says.

    Attributes:
        backgrounds: every background, the file's first.
        categories: the file's category table (with its LVIS fields), empty without one.
        inputs: input name -> hash, for the manifest.
        format: "coco" or "lvis", the file's; None without a file.
        fingerprints: every background image's path -> [size, mtime in ns]
            (``manifest.file_fingerprints``), kept in ``OUT/.cache/backgrounds.json`` to
            name the image that changed when a resume is refused.
    """

    backgrounds: list[Background]
    categories: dict[str, dict]
    inputs: dict[str, str]
    format: str | None
    fingerprints: dict[str, list[int]] = field(default_factory=dict)


def load_backgrounds(coco_json: str | None, images_dir: str | None,
                     extra_dirs: list[str]) -> BackgroundSet:
    """Backgrounds from a COCO or LVIS data set (instances and federated labels kept) and/or
    folders of plain images."""
    backgrounds: list[Background] = []
    categories: dict[str, dict] = {}
    inputs: dict[str, str] = {}
    fmt = None
    if coco_json:
        if not images_dir:
            raise WeakpasteError(f"{BACKGROUNDS_FLAG} needs {IMAGES_FLAG} DIR, the "
                                 "folder of its images")
        data = coco.load_coco(coco_json, images_dir, images_flag=IMAGES_FLAG)
        categories, fmt = data.categories, data.format
        inputs["backgrounds"] = file_sha256(coco_json)
        for rec in data.records:
            backgrounds.append(Background(
                path=str(Path(images_dir) / rec.file_name), instances=rec.instances,
                source="coco", labels=rec.labels,
                federated=None if data.federated is None else data.federated[rec.image_id]))
    for folder in extra_dirs:
        # A 'weakpaste backgrounds' output: its manifest lists the kept images.
        from weakpaste.io.images import background_files

        listed = background_files(folder)
        for p in listed if listed is not None else list_images(folder):
            backgrounds.append(Background(path=str(p), instances=None, source="extra"))
    if not backgrounds:
        raise WeakpasteError(f"no backgrounds: pass {BACKGROUNDS_FLAG} COCO_JSON "
                             f"{IMAGES_FLAG} DIR and/or {EXTRA_FLAG} DIR")
    # Every image read is fingerprinted (size, mtime: a stat each), so that --resume refuses
    # an image edited in between; the workers also hash the bytes they decode (paste_item).
    # "extra_backgrounds" was always so; "background_images" is newer than "backgrounds".
    fingerprints = {}
    for source, name, given in (("coco", "background_images", coco_json),
                                ("extra", "extra_backgrounds", extra_dirs)):
        found = file_fingerprints(b.path for b in backgrounds if b.source == source)
        if given:
            inputs[name] = fingerprints_sha256(found)
            fingerprints.update(found)
    return BackgroundSet(backgrounds, categories, inputs, fmt, fingerprints)


def background_order(seed: np.random.SeedSequence, num_backgrounds: int,
                     num_images: int) -> np.ndarray:
    """Which background each output uses: seeded shuffles of all backgrounds, repeated."""
    rng = np.random.default_rng(seed)
    epochs = -(-num_images // num_backgrounds)
    return np.concatenate([rng.permutation(num_backgrounds) for _ in range(epochs)])[:num_images]


def mixed_background_order(seed: np.random.SeedSequence, is_extra: np.ndarray,
                           num_images: int, extra_ratio: float) -> np.ndarray:
    """Background of each output when a fixed fraction must come from the extra pool.

    Args:
        seed: the background-order seed.
        is_extra: bool (B,) whether each background is from the extra folders.
        num_images: outputs N.
        extra_ratio: round(ratio * N) outputs get an extra background, at seeded positions;
            each pool is visited in its own seeded shuffles, repeated as needed.

    Returns:
        int (N,) background index per output.

    Raises:
        WeakpasteError: the ratio asks for a pool that is empty.
    """
    extra_idx = np.flatnonzero(is_extra)
    orig_idx = np.flatnonzero(~is_extra)
    n_extra = int(round(extra_ratio * num_images))
    if n_extra and not len(extra_idx):
        raise WeakpasteError(f"{EXTRA_RATIO_FLAG} {extra_ratio} needs "
                             f"{EXTRA_FLAG} images")
    if n_extra < num_images and not len(orig_idx):
        raise WeakpasteError(f"{EXTRA_RATIO_FLAG} {extra_ratio} needs "
                             f"{BACKGROUNDS_FLAG} COCO_JSON images too (or use "
                             f"{EXTRA_RATIO_FLAG} 1)")
    where_seed, orig_seed, extra_seed = seed.spawn(3)
    positions = np.random.default_rng(where_seed).permutation(num_images)[:n_extra]
    take_extra = np.zeros(num_images, dtype=bool)
    take_extra[positions] = True
    order = np.empty(num_images, dtype=np.int64)
    if n_extra:
        order[take_extra] = extra_idx[background_order(extra_seed, len(extra_idx), n_extra)]
    if n_extra < num_images:
        order[~take_extra] = orig_idx[background_order(orig_seed, len(orig_idx),
                                                       num_images - n_extra)]
    return order
