"""The inputs of a mining run and resuming it: image hashes, the manifest's config, the
resume check and the paths the output may not overlap."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.manifest import jsonable
from weakpaste.core.options import Config, flag_of, flags_of
from weakpaste.core.run import RunOptions
from weakpaste.mine.miner import Miner


def image_hashes(images_dir: Path, records: list) -> dict[str, str]:
    """file_name -> SHA-256 of every listed image."""
    from weakpaste.core.manifest import file_sha256

    return {r.file_name: file_sha256(images_dir / r.file_name) for r in records}


def run_config(miner: Miner, images_dir: Path, labels: str | None, described: dict) -> dict:
    """The manifest's config: method, inputs, the config with the classifier spec flattened
    in place (as the miners wrote it before the spec was shared), the models' settings."""
    flat: dict[str, Any] = {"method": miner.name, "images": str(images_dir), "labels": labels}
    for key, value in asdict(miner.config).items():
        flat.update(value if key == "model" else {key: value})
    return jsonable({**flat, **described})


# Locations, not settings: the inputs' contents are compared by hash instead (and the saliency
# cache, a run option now, was recorded by earlier versions).
_NOT_COMPARED = ("images", "labels", "saliency_cache", "negatives", "train_images",
                 "train_labels")


def _flat(config: dict) -> dict:
    out = {}
    for key, value in config.items():
        if key == "params" and isinstance(value, dict):
            out.update(value)
        elif key not in _NOT_COMPARED:
            out[key] = value
    return out


def check_resumable(out: Path, old: dict, config: dict, inputs: dict[str, str],
                    flags: dict[str, str], hashes: dict[str, str]) -> None:
    """Refuse to resume a run made with another method, other options or other inputs.

    Args:
        out: the output folder.
        old: its manifest.
        config: this run's manifest config; inputs: this run's input hashes.
        flags: field name -> command-line flag.
        hashes: this run's image hashes (``image_hashes``), to name a changed image.

    Raises:
        WeakpasteError: one line naming what changed (``manifest.check_resume``).
    """
    from weakpaste.core.manifest import RESUME_FIX, check_resume, first_change, recorded_listing

    before, now = _flat(old.get("config", {})), _flat(config)
    if before.get("method") != now.get("method"):
        raise WeakpasteError(f"{out}: cannot resume: it was mined with 'mine "
                             f"{before.get('method')}', this is 'mine {now.get('method')}'"
                             f"{RESUME_FIX}")

    def describe(key: str) -> tuple[str, str]:
        if key != "images":
            return "the " + key.replace("_", " ") + (" file" if key == "labels" else ""), ""
        return "the images", first_change(recorded_listing(out, "images"), hashes)

    check_resume(out, {**old, "config": before}, now, inputs, flags=flags, describe=describe)


def _input_hashes(miner: Miner, labels: str | None, hashes: dict[str, str]) -> dict[str, str]:
    from weakpaste.core.manifest import file_sha256

    digest = hashlib.sha256("".join(f"{k}\t{v}\n" for k, v in hashes.items()).encode())
    inputs = {"images": digest.hexdigest()}
    files = {"labels": labels, "classifier": miner.config.model.classifier, **miner.inputs()}
    for name, path in files.items():
        if path and Path(path).is_dir():
            inputs[name] = folder_sha256(path)
        elif path:
            inputs[name] = file_sha256(path)
    return inputs


def input_paths(miner: Miner, images_dir: Path, labels: str | None,
                saliency_cache: str | None = None) -> list[str | Path]:
    """Every file and folder the run reads, which ``--out`` may not overlap: the images, the
    labels, the classifier, its ``--weights`` file, the miner's model files and folders, and
    a ``--saliency-cache`` (read as well as written).

    Raises:
        WeakpasteError: the saliency cache lies inside a folder of images, where its maps
            would be listed as images (folder-per-class labels, ``--negatives``).
    """
    from weakpaste.models.weights import is_default, is_none

    spec = miner.config.model
    weights = None if is_none(spec.weights) or is_default(spec.weights) else spec.weights
    inputs = miner.inputs()
    if saliency_cache:
        cache = Path(saliency_cache).resolve()
        for folder in (images_dir, inputs.get("negatives")):
            if folder and Path(folder).resolve() in (cache, *cache.parents):
                flag = flag_of(RunOptions, "saliency_cache")
                raise WeakpasteError(f"{saliency_cache}: the saliency cache lies inside the "
                                     f"images folder {folder}, where its maps would be read as "
                                     f"images; choose a {flag} outside it")
    return [images_dir, labels, spec.classifier, weights, *inputs.values(),
            saliency_cache]


def folder_sha256(folder: str | Path) -> str:
    """SHA-256 naming a folder of images: every image's relative path and contents."""
    from weakpaste.core.manifest import file_sha256
    from weakpaste.io.images import list_images

    folder = Path(folder)
    h = hashlib.sha256()
    for p in list_images(folder):
        h.update(f"{p.relative_to(folder).as_posix()}\t{file_sha256(p)}\n".encode())
    return h.hexdigest()


def option_flags(config: Config) -> dict[str, str]:
    """Field name -> command-line flag of every option of ``config`` (nested too)."""
    return flags_of(type(config))
