"""The backgrounds stage runner: images -> captions -> rewritten captions -> generated,
CLIP-selected context backgrounds (EM-Paste §3.2, §4.1, appendix §7).

Output folder::

    OUT/captions.jsonl    one line per caption: index, image, caption_id, caption, rewritten,
                          replacements (original word, class, supercategory, replacement)
    OUT/images/*.jpg      kept backgrounds, ``<caption index>_<image index>.jpg``
    OUT/generated.jsonl   one line per finished caption: CLIP scores and decisions
    OUT/manifest.json     config, counts and ``images`` (the kept files, relative to OUT),
                          which ``weakpaste paste --extra-backgrounds OUT`` reads

Seeds: ``SeedSequence(seed)`` spawns one child for rewriting, one for captioning and one for
generation; each of those spawns one child per caption (per image for captioning), so a
caption's rewrite and its images depend only on the seed and its position. Resumable: model
captions are journaled per image (``.captions-raw.jsonl``), generated images per caption.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from weakpaste.backgrounds import (
    CAPTIONER_FLAG,
    CAPTIONS_FLAG,
    CLIP_FLAG,
    DEFAULT_CAPTIONER,
    DEFAULT_CLIP,
    DEFAULT_GENERATOR,
    DISTRACTORS_FLAG,
    GENERATOR_FLAG,
)
from weakpaste.backgrounds.rewrite import CaptionRewriter, load_distractors, rewrite_captions
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.jsonfile import JsonError, parse_json
from weakpaste.core.manifest import (
    check_resume,
    file_fingerprints,
    file_sha256,
    fingerprints_sha256,
    first_change,
    jsonable,
    record_listing,
    recorded_listing,
)
from weakpaste.core.options import (
    DEVICE_FLAG,
    Config,
    device_option,
    flag_of,
    flags_of,
    option,
    seed_option,
)
from weakpaste.core.run import WORKERS, RunOptions, StageInputs, StageRun
from weakpaste.core.runners import ExecutorConfig
from weakpaste.io.coco_captions import Caption, load_coco_captions
from weakpaste.io.images import list_images

STAGE = "backgrounds"
CAPTIONS_JSONL = "captions.jsonl"
GENERATED_JSONL = "generated.jsonl"
RAW_CAPTIONS = ".captions-raw.jsonl"


@dataclass(frozen=True)
class BackgroundsConfig(Config):
    """Everything that decides the backgrounds stage's output (recorded in the manifest)."""

    seed: int = seed_option()
    captions_per_image: int | None = option(
        None, range=(1, None),
        help="at most this many file captions per image (default: all), or this many model "
             "captions (default: 1)")
    max_images: int | None = option(
        None, range=(1, None), metavar="N",
        help="use a seeded random subset of N source images (EM-Paste §4.1 augments a random "
             "10% of COCO; default: all), kept in their file order")
    captioner: str = option(DEFAULT_CAPTIONER, flag=CAPTIONER_FLAG, metavar="MODEL",
                            help="transformers image-to-text model id or folder (used without "
                                 "a captions file)")
    caption_batch_size: int = option(8, range=(1, None), help="images per captioning batch")
    max_caption_tokens: int = option(30, range=(1, None),
                                     help="caption length cap of the captioning model")
    classes: tuple[str, ...] | None = option(
        None, help="target classes to rewrite and reject (default: all COCO + VOC)")
    distractors: str | None = option(
        None, flag=DISTRACTORS_FLAG, metavar="JSON",
        help='more distractor words, {"supercategory": ["word", ...]}')
    rewrite_only: bool = option(False, help="stop after writing OUT/captions.jsonl")
    generator: str = option(DEFAULT_GENERATOR, flag=GENERATOR_FLAG, metavar="MODEL",
                            help="diffusers text-to-image model id or folder")
    images_per_caption: int = option(10, range=(1, None),
                                     help="images generated per caption (paper: 10)")
    keep: int = option(5, range=(1, None),
                       help="best images kept per caption by CLIP caption similarity "
                            "(paper: 5)")
    batch_size: int = option(4, range=(1, None), help="images per generator call")
    steps: int = option(30, range=(1, None), help="denoising steps")
    guidance_scale: float = option(7.5, range=(0, None), help="classifier-free guidance")
    height: int | None = option(None, range=(8, None),
                                help="generated height (default: the model's)")
    width: int | None = option(None, range=(8, None),
                               help="generated width (default: the model's)")
    clip: str = option(DEFAULT_CLIP, flag=CLIP_FLAG, metavar="MODEL",
                       help="transformers CLIP model id or folder")
    reject_threshold: float = option(
        0.28, range=(-1, 1),
        help='reject images whose CLIP cosine similarity to any "a photo of a {class}" is '
             "above this")
    device: str = device_option("auto", auto=True, note="fp16 on cuda")
    jpeg_quality: int = option(95, range=(1, 100), help="JPEG quality of the backgrounds")

    def check(self) -> None:
        super().check()
        if self.keep > self.images_per_caption:
            flags = flags_of(type(self))
            raise WeakpasteError(f"keep ({flags['keep']}) {self.keep} is more than "
                                 f"images_per_caption ({flags['images_per_caption']}) "
                                 f"{self.images_per_caption}")


# The fields (and JSON types) a journal line must have: the captions journal's and the
# generation journal's. A line without them is damaged and its item is made again.
_CAPTION_FIELDS = {"image": str, "captions": list}
_GENERATED_FIELDS = {"index": int, "caption_scores": list, "rejected": list,
                     "kept_files": list}


def _read_jsonl(path: Path, fields: dict[str, type]) -> list[dict]:
    """Complete, valid lines of a journal: a torn last line of a killed run, or a damaged
    line anywhere, is ignored (its item is made again)."""
    if not path.is_file():
        return []
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            try:
                doc = parse_json(line) if line.endswith(b"\n") else None
            except JsonError:
                continue
            if isinstance(doc, dict) and all(isinstance(doc.get(k), t) and not
                                             isinstance(doc.get(k), bool)
                                             for k, t in fields.items()):
                out.append(doc)
    return out


def _local_models(config: BackgroundsConfig) -> list[str]:
    """The captioner, generator and CLIP given as local folders (not hub names): inputs that
    ``--out`` may not overlap."""
    return [m for m in (config.captioner, config.generator, config.clip) if Path(m).exists()]


def _append(path: Path, doc: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        fh.flush()


class _Models:
    """The stage's models, each loaded on first use and kept until dropped.

    A fresh run loads every model it will need before it creates the output folder, so a
    missing model fails fast and leaves nothing behind; a resumed run loads only what the
    unfinished part needs.
    """

    def __init__(self, config: BackgroundsConfig):
        self.config = config
        self._captioner = self._t2i = self._clip = None

    def captioner(self):
        if self._captioner is None:
            from weakpaste.backgrounds.captions import Captioner

            c = self.config
            self._captioner = Captioner(c.captioner, device=c.device,
                                        max_new_tokens=c.max_caption_tokens,
                                        num_captions=c.captions_per_image or 1)
        return self._captioner

    def check(self, caption: bool) -> None:
        """Load every model a fresh run needs (the captioner when ``caption``)."""
        if caption:
            self.captioner()
        if not self.config.rewrite_only:
            self.t2i()
            self.clip()

    def drop_captioner(self) -> None:
        self._captioner = None  # frees its memory before the generator runs

    def drop_generation(self) -> None:
        self._t2i = self._clip = None  # the workers load their own

    def t2i(self):
        if self._t2i is None:
            from weakpaste.backgrounds.generate import TextToImage

            c = self.config
            self._t2i = TextToImage(c.generator, device=c.device, steps=c.steps,
                                    guidance_scale=c.guidance_scale, height=c.height,
                                    width=c.width)
        return self._t2i

    def clip(self):
        if self._clip is None:
            from weakpaste.backgrounds import vocabulary
            from weakpaste.backgrounds.select import ClipSelector

            c = self.config
            self._clip = ClipSelector(c.clip, classes=c.classes or vocabulary.COCO_CLASSES,
                                      device=c.device)
        return self._clip


def sample_images(names: list[str], n: int | None,
                  seed: np.random.SeedSequence) -> list[str]:
    """A seeded random subset of ``n`` distinct names in their original order (None: all)."""
    unique = list(dict.fromkeys(names))
    if n is None or n >= len(unique):
        return unique
    pick = np.sort(np.random.default_rng(seed).choice(len(unique), size=n, replace=False))
    return [unique[i] for i in pick]


def _model_captions(config: BackgroundsConfig, images_dir: str, out: Path,
                    seed: np.random.SeedSequence, subset_seed: np.random.SeedSequence,
                    progress: bool, models: _Models) -> list[Caption]:
    """Caption every image of ``images_dir`` with the model, journaled per image."""
    from tqdm import tqdm

    paths = list_images(images_dir)
    rel = [p.relative_to(images_dir).as_posix() for p in paths]
    keep = set(sample_images(rel, config.max_images, subset_seed))
    paths = [p for p, r in zip(paths, rel, strict=True) if r in keep]
    rel = [r for r in rel if r in keep]
    journal = out / RAW_CAPTIONS
    done = {d["image"]: d["captions"] for d in _read_jsonl(journal, _CAPTION_FIELDS)}
    todo = [i for i, r in enumerate(rel) if r not in done]
    if todo:
        from weakpaste.backgrounds.captions import caption_folder
        from weakpaste.backgrounds.generate import image_seeds

        seeds = image_seeds(seed, len(paths))  # by position in the folder, not in the batch
        captioner = models.captioner()
        bar = tqdm(total=len(todo), desc="caption", unit="img", disable=not progress)
        for k, caps in caption_folder(captioner, [paths[i] for i in todo],
                                      [seeds[i] for i in todo], config.caption_batch_size):
            done[rel[todo[k]]] = caps
            _append(journal, {"image": rel[todo[k]], "captions": caps})
            bar.update()
        bar.close()
    return [Caption(r, c) for r in rel for c in done[r] if c]


@dataclass(frozen=True)
class BackgroundsInputs(StageInputs):
    """The inputs of ``backgrounds``.

    Attributes:
        images: the source images (captioned by the model when ``captions`` is None).
        captions: COCO captions file to use instead of the captioning model.
    """

    images: str | os.PathLike | None = option(
        None, help="folder of the source images (captioned by the model unless --captions)")
    captions: str | os.PathLike | None = option(
        None, flag=CAPTIONS_FLAG, metavar="COCO_JSON",
        help="COCO captions file to use instead of the captioning model")


_IMAGES, _CAPTIONS = (flag_of(BackgroundsInputs, n) for n in ("images", "captions"))
_EXECUTOR, _GPUS = (flag_of(RunOptions, n) for n in ("executor", "gpus_per_worker"))


def run_backgrounds(config: BackgroundsConfig, inputs: BackgroundsInputs,
                    run: RunOptions) -> dict:
    """Run the backgrounds stage.

    Args:
        config: the stage configuration.
        inputs: the source images and/or a captions file.
        run: output folder, ``overwrite``, ``resume`` (continue an interrupted run with the
            same config), ``workers`` (processes or Ray actors generating images; each loads
            the generator and CLIP once; captioning and rewriting run here), the executor
            (local pool or Ray, with ``gpus_per_worker``; never changes the output) and
            ``quiet``.

    Returns:
        The final manifest.
    """
    images_dir, captions = inputs.images, inputs.captions
    stage = StageRun(STAGE, run, inputs=[images_dir, captions, config.distractors,
                                         *_local_models(config)],
                     present=lambda: _check_present(images_dir, captions))
    with stage:  # before the captioning and the output folder
        rewriter = CaptionRewriter(load_distractors(config.distractors)
                                   if config.distractors else None, config.classes)
        hashes, fingerprints, file_captions = _read_inputs(config, images_dir, captions)
        run_config = {**asdict(config), "images": images_dir, "captions": captions}
        models = _Models(config)
        if not run.resume:  # fail on a missing model before making the output folder
            models.check(captions is None)
        out = stage.start(run_config, seed=config.seed, inputs=hashes,
                          resume_check=lambda out, old: _check_resume(
                              out, old, run_config, hashes, fingerprints))
        (out / "images").mkdir(exist_ok=True)
        if fingerprints:
            record_listing(out, "images", fingerprints)
        rewrite_seed, caption_seed, generate_seed, subset_seed = \
            np.random.SeedSequence(config.seed).spawn(4)
        if captions is not None:
            keep = set(sample_images([c.image for c in file_captions], config.max_images,
                                     subset_seed))
            caps = [c for c in file_captions if c.image in keep]
        else:
            caps = _model_captions(config, images_dir, out, caption_seed, subset_seed,
                                   run.progress, models)
            models.drop_captioner()
        lines, counts = _rewrite(caps, rewriter, rewrite_seed, out)
        kept = []
        if not config.rewrite_only:
            _generate(config, lines, out, generate_seed, models, stage=stage)
            kept = _generation_counts(out, counts)
        counts.setdefault("backgrounds", 0)
        vocab = {"dropped_distractors": rewriter.dropped_distractors,
                 "distractors": rewriter.distractors}
        return stage.finish(counts, extra={"vocabulary": vocab, "images": kept})


def _check_present(images_dir: str | None, captions: str | None) -> None:
    if captions is None and not images_dir:
        raise WeakpasteError(f"pass {_IMAGES} DIR (captioned by the model) or {_CAPTIONS} FILE")
    if images_dir and not Path(images_dir).is_dir():
        raise WeakpasteError(f"{images_dir}: not a folder; pass {_IMAGES}, the folder of the "
                             "source images")


def _read_inputs(config: BackgroundsConfig, images_dir: str | None,
                 captions: str | None) -> tuple[dict[str, str], dict, list | None]:
    """The input hashes, the source images' fingerprints and the file's captions."""
    hashes: dict[str, str] = {}
    file_captions = None
    if captions is not None:
        file_captions = load_coco_captions(captions, config.captions_per_image)
        hashes["captions"] = file_sha256(captions)
    if config.distractors:
        hashes["distractors"] = file_sha256(config.distractors)
    # Captioned: an image edited before --resume would mix two captionings. Each is
    # fingerprinted (size, mtime), the listing kept in OUT/.cache/images.json to name it.
    fingerprints = file_fingerprints(list_images(images_dir)) if captions is None else {}
    if captions is None:
        hashes["images"] = fingerprints_sha256(fingerprints)
    return hashes, fingerprints, file_captions


def _check_resume(out: Path, old: dict, run_config: dict, hashes: dict[str, str],
                  fingerprints: dict) -> None:
    def describe(key: str) -> tuple[str, str]:
        if key == "images":
            return "the images", first_change(recorded_listing(out, "images"), fingerprints)
        return f"the {key}", ""

    # --rewrite-only may differ: a rewrite-only output can be resumed into generation.
    check_resume(out, {**old, "config": {**old.get("config", {}), "rewrite_only": None}},
                 jsonable({**run_config, "rewrite_only": None}), hashes,
                 flags=flags_of(BackgroundsConfig), describe=describe,
                 fingerprints=["images"])


def _rewrite(caps: list[Caption], rewriter: CaptionRewriter, seed: np.random.SeedSequence,
             out: Path) -> tuple[list[dict], dict]:
    """Rewrite the captions into ``OUT/captions.jsonl``; returns its lines and the counts."""
    rewritten = rewrite_captions([c.caption for c in caps], rewriter, seed)
    lines = [{"index": i, "image": c.image, "caption_id": c.caption_id, "caption": c.caption,
              "rewritten": new, "replacements": reps}
             for i, (c, (new, reps)) in enumerate(zip(caps, rewritten, strict=True))]
    atomic_write_bytes(out / CAPTIONS_JSONL, "".join(
        json.dumps(d, ensure_ascii=False) + "\n" for d in lines).encode("utf-8"))
    per_super = Counter(r["supercategory"] for d in lines for r in d["replacements"])
    return lines, {"captions": len(lines),
                   "captions_rewritten": sum(1 for d in lines if d["replacements"]),
                   "replacements": sum(per_super.values()),
                   "replacements_per_supercategory": dict(sorted(per_super.items()))}


def _generation_counts(out: Path, counts: dict) -> list[str]:
    """Add the generation's counts to ``counts``; returns the kept files."""
    results = {d["index"]: d for d in _read_jsonl(out / GENERATED_JSONL, _GENERATED_FIELDS)}
    results = [results[i] for i in sorted(results)]
    kept = [f for d in results for f in d["kept_files"]]
    counts.update(generated=sum(len(d["caption_scores"]) for d in results),
                  rejected_by_class=sum(sum(d["rejected"]) for d in results),
                  unsafe=sum(sum(d.get("unsafe", [])) for d in results),
                  backgrounds=len(kept))
    return kept


def _generate(config: BackgroundsConfig, lines: list[dict], out: Path,
              seed: np.random.SeedSequence, models: _Models, *, stage: StageRun) -> None:
    """Generate, score and select the images of every caption not yet journaled.

    Each caption is one item (``_generate_item``), run here, in a local process pool, or on
    Ray actors (``--executor ray --gpus-per-worker G``) that load the generator and CLIP once
    each. Workers write the images; the journal is appended here, in caption order.
    """

    executor = stage.executor
    journal = out / GENERATED_JSONL
    done = {d["index"] for d in _read_jsonl(journal, _GENERATED_FIELDS)}
    if journal.is_file():  # cut a torn last line off before appending
        raw = journal.read_bytes()
        with open(journal, "r+b") as fh:
            fh.truncate(raw.rfind(b"\n") + 1)
    todo = [d for d in lines if d["index"] not in done]
    if not todo:
        return
    seeds = seed.spawn(len(lines))
    tasks = [(d, seeds[d["index"]], str(out)) for d in todo]
    here = stage.run.workers <= 1 and executor.executor == "local"
    if not here:
        _check_pool_device(config, executor)
        models.drop_generation()  # every worker loads its own
    initargs = (config, models, None) if here else (config, None, 1)
    for doc in stage.map(_generate_item, tasks, desc="generate", unit="caption",
                         init=_generation_init, initargs=initargs, check=[out]):
        _append(journal, doc)


def _check_pool_device(config: BackgroundsConfig, executor: ExecutorConfig) -> None:
    """A forked pool cannot use CUDA once this process has: say what works instead."""
    if executor.executor != "local":
        return
    import torch

    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        raise WeakpasteError(f"{WORKERS} > 1 with the local executor runs on the CPU only (a "
                             f"forked process cannot use the GPU); pass {DEVICE_FLAG} cpu, or "
                             f"{_EXECUTOR} ray {_GPUS} 1 for one GPU per worker")


# This worker's config and models (``_generation_init``).
_GENERATION: dict = {}


def _generation_init(config: BackgroundsConfig, models: _Models | None,
                     threads: int | None) -> None:
    """Load a worker's generator and CLIP once (or reuse this process's ``models``); a
    worker uses ``threads`` torch threads (the workers are the parallelism)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    models = models or _Models(config)
    models.t2i(), models.clip()
    _GENERATION.update(config=config, models=models)


def _generate_item(task: tuple[dict, np.random.SeedSequence, str]) -> dict:
    """Generate one caption's images, select them with CLIP, write the kept ones.

    Returns:
        The caption's journal line (``generated.jsonl``).
    """
    from weakpaste.backgrounds.generate import image_seeds
    from weakpaste.io.images import encode_image

    d, caption_seed, out = task
    config, models = _GENERATION["config"], _GENERATION["models"]
    i = d["index"]
    images, flagged = models.t2i().generate(
        d["rewritten"], image_seeds(caption_seed, config.images_per_caption), config.batch_size)
    sel = models.clip().select(images, d["rewritten"], config.keep, config.reject_threshold,
                               blocked=flagged)
    files = []
    for j in np.flatnonzero(sel.kept):
        name = f"images/{i:06d}_{j:02d}.jpg"
        atomic_write_bytes(Path(out) / name,
                           encode_image(images[j], "jpg", config.jpeg_quality))
        files.append(name)
    return {"index": i, "image": d["image"], "rewritten": d["rewritten"],
            "caption_scores": [round(float(s), 5) for s in sel.caption_scores],
            "class_scores": [round(float(s), 5) for s in sel.class_scores],
            "classes": list(sel.classes), "kept": sel.kept.tolist(),
            "rejected": sel.rejected.tolist(), "unsafe": flagged, "kept_files": files}
