"""The paste stage runner: backgrounds x segment bank -> a COCO (or LVIS) data set on disk.

The runner maps a pure per-item function (``paste_item``) over output indices. Item i gets
its own Generator from ``SeedSequence(seed)``'s i-th child and its background from a seeded
order fixed before any work starts, so the same seed gives byte-identical images and
annotations for any number of workers.

Each finished item leaves ``images/<i>.jpg`` (written atomically) and one line in its worker
process's journal ``.parts-<pid>.jsonl`` (its annotations with their areas and boxes,
appended and flushed), and the same record goes back to the main process, which only has to
number and write them: ``annotations.json`` is assembled at the end from what came back (and
from the journals, for a resumed run's earlier items). An interrupted run therefore loses
nothing and ``--resume`` continues it; a torn last line (a process killed mid-write) is
ignored and that item is simply made again.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from weakpaste.bank.store import CLASSES_FLAG, BankTable, SegmentBank
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import WRITE_ERRNOS, atomic_write_bytes, write_error
from weakpaste.core.jsonfile import read_json
from weakpaste.core.manifest import (
    check_resume,
    file_sha256,
    first_change,
    jsonable,
    record_listing,
    recorded_listing,
)
from weakpaste.core.options import Config, flags_of, option, seed_option
from weakpaste.core.run import OVERWRITE, RESUME, RunOptions, StageInputs, StageRun
from weakpaste.core.runners import host_tag
from weakpaste.io import coco
from weakpaste.io.images import encode_image, list_images, read_image_sha256
from weakpaste.ops import masks as mask_ops
from weakpaste.paste import backgrounds as bg
from weakpaste.paste import plan as plan_mod
from weakpaste.paste.backgrounds import (  # noqa: F401 - also the stage's API
    Background,
    BackgroundSet,
    background_order,
    load_backgrounds,
    mixed_background_order,
)
from weakpaste.paste.finalize import write_annotations
from weakpaste.paste.journal import PARTS_GLOB, read_journals, remove_stale_temporaries
from weakpaste.paste.render import RenderParams, render

# Objects pasted per image at most: each one is a full-image composite, so a typo's extra
# zeros would run for hours instead of being refused.
MAX_OBJECTS = 1000


class ClassWeights(dict):
    """Class name -> weight, remembering the file it was read from (``path``), so that a run
    never writes into (or, with --overwrite, deletes) the folder of that file."""

    path: str | None = None


def read_class_weights(path: str) -> dict[str, float]:
    """``--class-weights FILE``: a JSON object of class name -> weight."""
    data = read_json(path, what="class weights file", example='{"dog": 2.0, "cat": 1.0}')
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise WeakpasteError(f"{path}: class weights must be a JSON object of class name -> "
                             'number, e.g. {"dog": 2.0, "cat": 1.0}')
    weights = ClassWeights((str(k), float(v)) for k, v in data.items())
    weights.path = str(path)
    return weights


@dataclass(frozen=True, kw_only=True)
class PasteConfig(Config):
    """Everything that decides the paste stage's output (recorded in the manifest).

    The planning and rendering parameters are nested ``PlanParams`` and ``RenderParams``
    (declared once there; ``plan`` goes to ``plan_image``, ``render`` to ``render``), recorded
    inline: the manifest lists their fields beside the others.
    """

    plan: plan_mod.PlanParams = option(factory=plan_mod.PlanParams, inline=True,
                                       help="placement")
    render: RenderParams = option(factory=RenderParams, inline=True, help="rendering")
    num_images: int = option(help="output images", range=(1, None))
    seed: int = seed_option()
    objects: tuple[int, int] = option((4, 4), parse=plan_mod.parse_count_range,
                                      show=plan_mod.format_count_range,
                                      metavar="N|LO-HI", range=(1, MAX_OBJECTS),
                                      help="objects pasted per image, fixed or a range")
    selection: str = option("uniform", choices=plan_mod.SELECTIONS,
                            help="uniform over segments, class-balanced, or per-class weights")
    class_weights: dict[str, float] | None = option(
        None, parse=read_class_weights, metavar="JSON",
        help='class -> weight for --selection weights, a JSON file {"class": weight, ...}')
    classes: tuple[str, ...] | None = option(None, flag=CLASSES_FLAG,
                                             help="paste only these classes")
    image_format: str = option("jpg", choices=("jpg", "png"), help="output image format")
    annotation_format: str | None = option(
        None, flag="--format", choices=("coco", "lvis"),
        help="annotation file format; lvis keeps LVIS's federated labels and category fields "
             "(default: the --backgrounds file's, coco without one)")
    jpeg_quality: int = option(95, range=(1, 100), help="JPEG quality")
    extra_ratio: float | None = option(
        None, flag=bg.EXTRA_RATIO_FLAG, range=(0, 1), metavar="R",
        help="fraction of output images on --extra-backgrounds (e.g. generated) backgrounds, "
             "the rest on --backgrounds, each pool cycled in its own seeded order, the "
             "smaller one repeated (EM-Paste §4.1); default: all backgrounds in one pool")

    def check(self) -> None:
        super().check()
        if self.selection == "weights" and not self.class_weights:
            flags = flags_of(type(self))
            raise WeakpasteError(f"selection 'weights' ({flags['selection']} weights) needs "
                                 f"class_weights ({flags['class_weights']} FILE)")


@dataclass(frozen=True)
class PasteContext:
    """What every item shares; sent once to each worker process."""

    bank_root: str
    table: BankTable
    probabilities: np.ndarray
    config: PasteConfig
    out_dir: str


@dataclass
class ItemResult:
    """Per-item outcome, also stored as the item's part file."""

    index: int
    file_name: str
    width: int
    height: int
    annotations: list[dict] = field(default_factory=list)  # class, rle, pasted, area, bbox
    dropped: dict[str, int] = field(default_factory=dict)
    outside: int = 0
    skipped: int = 0
    background: str = ""
    background_sha256: str = ""  # of the bytes decoded: a resumed run checks it


# This process's open bank: (pid, root, bank). Its file handles stay open across items; it
# never scans the index (the run's table says where each blob is), and a new run opens the
# bank again (``clear_segment_cache``), since its shards may have been rebuilt meanwhile.
_BANK: tuple[int, str, SegmentBank] | None = None


def _worker_bank(root: str) -> SegmentBank:
    global _BANK
    if _BANK is None or _BANK[0] != os.getpid() or _BANK[1] != root:
        _close_bank()
        _BANK = (os.getpid(), root, SegmentBank(root))
    return _BANK[2]


def _close_bank() -> None:
    global _BANK
    if _BANK is not None and _BANK[0] == os.getpid():
        _BANK[2].close()  # a forked child must not close its parent's descriptors
    _BANK = None


# This process's journal: (pid, output folder, open file). A forked worker must not reuse
# its parent's.
_JOURNAL: tuple[int, Path, object] | None = None


def _journal(out_dir: Path):
    global _JOURNAL
    if _JOURNAL is None or _JOURNAL[:2] != (os.getpid(), out_dir):
        _close_journal()
        path = out_dir / f".parts-{host_tag()}.jsonl"
        if path.is_file():  # a resumed run in the same process: cut a torn last line off
            raw = path.read_bytes()
            with open(path, "r+b") as fh:
                fh.truncate(raw.rfind(b"\n") + 1)
        _JOURNAL = (os.getpid(), out_dir, open(path, "a", encoding="utf-8"))
    return _JOURNAL[2]


def _close_journal() -> None:
    global _JOURNAL
    if _JOURNAL is not None and _JOURNAL[0] == os.getpid():
        # Closing flushes: on a full disk that fails again, and a torn line is harmless.
        with contextlib.suppress(OSError):
            _JOURNAL[2].close()
    _JOURNAL = None


def paste_item(ctx: PasteContext, index: int, seed: np.random.SeedSequence,
               background: Background) -> dict:
    """Make output image ``index``: select, plan, render, write the image and its journal line.

    Pure but for its own files; returns the journal record (``ItemResult`` as a dict).
    """
    cfg = ctx.config
    rng = np.random.default_rng(seed)
    image, sha256 = read_image_sha256(background.path)
    # A resumed run may not mix the pixels of two versions of one background.
    if background.sha256 is not None and sha256 != background.sha256:
        raise WeakpasteError(f"{background.path}: the background image changed since the run "
                             f"being resumed pasted onto it; restore it, or pass {OVERWRITE} "
                             f"instead of {RESUME}")
    H, W = image.shape[:2]
    inst = background.instances
    if inst is not None and (inst.height, inst.width) != (H, W):
        raise WeakpasteError(f"{background.path}: image is {W}x{H} but its annotations say "
                             f"{inst.width}x{inst.height}; fix 'width'/'height'")
    bg_masks = mask_ops.RleStack(inst.rles if inst is not None else (), H, W)
    bg_classes = inst.classes if inst is not None else ()
    bank = _worker_bank(ctx.bank_root)
    picks = plan_mod.select_segments(rng, ctx.probabilities, cfg.objects)
    ids = ctx.table.segment_id[picks]
    pixels = [_read_cached(bank, ctx.table, int(p)) for p in picks]
    occupied = None
    if cfg.plan.placement == "space-max" and len(bg_masks):
        occupied = bg_masks.any()
    plan = plan_mod.plan_image(rng, image_hw=(H, W), segment_ids=ids,
                               masks=[m for _, m in pixels], occupied=occupied,
                               params=cfg.plan)
    names = [ctx.table.classes[ctx.table.class_idx[p]] for p in picks]
    # space-max may stop early: the plan keeps a prefix of the selection.
    segments = [(pixels[j][0], pixels[j][1], names[j]) for j in range(len(plan.segment_ids))]
    out = render(image, bg_masks, bg_classes, segments, plan, cfg.render)
    file_name = f"{index:06d}.{cfg.image_format}"
    out_dir = Path(ctx.out_dir)
    atomic_write_bytes(out_dir / "images" / file_name,
                       encode_image(out.image, cfg.image_format, cfg.jpeg_quality))
    rles = out.rles()
    # The annotation's area and box are computed here, in parallel, not by the main process
    # when it writes annotations.json: its serial work per image bounds a cluster's speed.
    areas, boxes = coco.mask_stats(rles)
    result = ItemResult(index=index, file_name=file_name, width=W, height=H,
                        annotations=[{"class": c, "rle": r, "pasted": bool(p), "area": a,
                                      "bbox": b}
                                     for c, r, p, a, b in zip(out.classes, rles, out.pasted,
                                                              areas, boxes, strict=True)],
                        dropped=dict(out.dropped), outside=out.outside, skipped=plan.skipped,
                        background=background.path, background_sha256=sha256)
    journal = _journal(out_dir)
    journal.write(json.dumps(vars(result), separators=(",", ":")) + "\n")
    journal.flush()
    return vars(result)


# Decoded segments of this process, most recently used last: a bank is usually much smaller
# than the number of objects pasted from it, so segments repeat. Bounded in bytes.
_SEGMENT_CACHE: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
_SEGMENT_CACHE_BYTES = 256 << 20
_cache_bytes = 0


def clear_segment_cache() -> None:
    """Forget decoded segments and close the open bank (a bank rebuilt at the same path
    reuses segment ids and shard names)."""
    global _cache_bytes
    _SEGMENT_CACHE.clear()
    _cache_bytes = 0
    _close_bank()


def _read_cached(bank: SegmentBank, table: BankTable, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of the segment in ``table``'s ``row``, decoded once per process."""
    global _cache_bytes
    segment_id = int(table.segment_id[row])
    key = (str(bank.root), segment_id)
    hit = _SEGMENT_CACHE.get(key)
    if hit is not None:
        _SEGMENT_CACHE.move_to_end(key)
        return hit
    rgb, mask = bank.read_pixels_at(segment_id, table.shard[row], table.offset[row],
                                    table.length[row], (table.height[row], table.width[row]))
    rgb.flags.writeable = mask.flags.writeable = False  # shared between items
    _SEGMENT_CACHE[key] = (rgb, mask)
    _cache_bytes += rgb.nbytes + mask.nbytes
    while _cache_bytes > _SEGMENT_CACHE_BYTES and len(_SEGMENT_CACHE) > 1:
        _, (old_rgb, old_mask) = _SEGMENT_CACHE.popitem(last=False)
        _cache_bytes -= old_rgb.nbytes + old_mask.nbytes
    return rgb, mask


_CTX: PasteContext | None = None


def _init_worker(ctx: PasteContext) -> None:
    global _CTX
    import cv2

    cv2.setNumThreads(1)  # processes give the parallelism; nested threads only contend
    _CTX = ctx


def _run_task(task: tuple[int, np.random.SeedSequence, Background]) -> dict:
    if _CTX is None:  # pragma: no cover - the executor always runs _init_worker first
        raise RuntimeError("paste worker used before _init_worker")
    return paste_item(_CTX, *task)


@dataclass(frozen=True)
class PasteInputs(StageInputs):
    """The inputs of the paste stage.

    Attributes:
        bank: segment bank folder.
        backgrounds: COCO or LVIS data set whose images (and instances) are backgrounds; an
            LVIS one gives an LVIS output unless ``PasteConfig.annotation_format`` says coco.
        images: the folder of its images.
        extra_backgrounds: folders of extra background images (no instances).
    """

    bank: str | os.PathLike = option(help="segment bank folder")
    backgrounds: str | os.PathLike | None = option(
        None, flag=bg.BACKGROUNDS_FLAG, metavar="COCO_JSON",
        help="COCO or LVIS data set whose images are backgrounds (its instances and LVIS "
             "labels are kept)")
    images: str | os.PathLike | None = option(None, flag=bg.IMAGES_FLAG,
                                              help="folder of the --backgrounds images")
    extra_backgrounds: tuple[str | os.PathLike, ...] = option(
        (), flag=bg.EXTRA_FLAG, metavar="DIR",
        help="folders of extra background images without annotations")


def run_paste(config: PasteConfig, inputs: PasteInputs, run: RunOptions) -> dict:
    """Run the paste stage: ``images/``, ``annotations.json`` and ``manifest.json`` in
    ``run.out``.

    Args:
        config: the stage configuration.
        inputs: the bank and the backgrounds.
        run: output folder, ``overwrite``, ``resume`` (continue an interrupted run with the
            same config and the same inputs: the bank's index, the backgrounds file and
            folders are compared by hash), ``workers``, executor (local pool or Ray; never
            changes the output) and ``quiet``.

    Returns:
        The final manifest.

    Raises:
        WeakpasteError: bad input or options, an output folder that overlaps an input, a
            resume whose options or inputs changed, a full or read-only disk (what was
            written is kept and ``resume`` continues it).
    """
    bank, extra = str(inputs.bank), [str(p) for p in inputs.extra_backgrounds or ()]
    clear_segment_cache()  # workers fork from here: they start empty too
    table = SegmentBank(bank).table(list(config.classes) if config.classes else None)
    ctx = PasteContext(bank_root=bank, table=table,
                       probabilities=_class_probabilities(config, table, bank), config=config,
                       out_dir=str(Path(run.out)))
    stage = StageRun("paste", run, inputs=[*inputs.paths(),
                                           getattr(config.class_weights, "path", None)],
                     present=lambda: _check_present(inputs.backgrounds, inputs.images, extra))
    # The workers start before the backgrounds are read: Ray's actors take ~0.4 s to boot,
    # which then overlaps the reading. A missing input or an unusable --out was refused
    # first, so a typo costs no Ray start-up.
    with stage:
        stage.workers(_init_worker, (ctx,), check=[bank, run.out, inputs.images, *extra])
        bg_set = load_backgrounds(inputs.backgrounds, inputs.images, extra)
        hashes = {**bg_set.inputs, "bank_index": file_sha256(Path(bank) / "index.jsonl")}
        run_config = {**config.to_dict(), "bank": bank, "backgrounds": inputs.backgrounds,
                      "images": inputs.images, "extra_backgrounds": extra}
        out = stage.start(run_config, seed=config.seed, inputs=hashes,
                          resume_check=lambda out, old: _check_resume(
                              out, old, run_config, hashes, bg_set.fingerprints))
        with _write_errors(out):
            (out / "images").mkdir(exist_ok=True)
            remove_stale_temporaries(out / "images")
            record_listing(out, "backgrounds", bg_set.fingerprints)
            tasks = _tasks(config, out, bg_set.backgrounds)
            made: dict[int, dict] = {}
            try:
                for part in stage.map(_run_task, tasks, desc="paste"):
                    made[part["index"]] = part
            finally:
                _close_journal()
            manifest = stage.finish(write_annotations(out, config, table, bg_set, made))
    for path in out.glob(PARTS_GLOB):
        path.unlink()
    return manifest


def _check_present(backgrounds_json: str | None, images_dir: str | None,
                   extra_dirs: list[str]) -> None:
    """Refuse missing inputs without reading anything (the reading refuses the same, later:
    this is only so that a typo is refused before workers start)."""
    if backgrounds_json:
        coco.check_present(backgrounds_json, images_dir,
                           images_flag=bg.IMAGES_FLAG)
    for folder in extra_dirs:
        if not Path(folder).is_dir():
            list_images(folder)  # its one-line error for a missing folder


def _class_probabilities(config: PasteConfig, table: BankTable, bank: str) -> np.ndarray:
    """Selection probability of every bank segment (``plan.class_probabilities``)."""
    weights = None
    if config.selection == "weights":
        unknown = sorted(set(config.class_weights) - set(table.classes))
        if unknown:
            raise WeakpasteError(f"class weights name {unknown[0]!r}, which is not in the bank "
                                 f"{bank}; check the weights file")
        weights = np.array([float(config.class_weights.get(c, 0.0)) for c in table.classes])
    try:
        return plan_mod.class_probabilities(table.class_idx, len(table.classes),
                                            config.selection, weights)
    except ValueError as err:
        raise WeakpasteError(f"selection: {err}") from None


def _tasks(config: PasteConfig, out: Path, backgrounds: list[Background]) -> list[tuple]:
    """(index, seed, background) of every image still to make (all but a resumed run's);
    a background an earlier item used carries that item's hash of its bytes."""
    root = np.random.SeedSequence(config.seed)
    bg_seed, items_seed = root.spawn(2)
    if config.extra_ratio is None:
        order = background_order(bg_seed, len(backgrounds), config.num_images)
    else:
        order = mixed_background_order(
            bg_seed, np.array([b.source == "extra" for b in backgrounds], dtype=bool),
            config.num_images, config.extra_ratio)
    item_seeds = items_seed.spawn(config.num_images)
    done = read_journals(out)
    # The bytes each background had when earlier items were pasted onto it.
    seen = {p["background"]: p["background_sha256"] for p in done.values()
            if isinstance(p.get("background_sha256"), str)}
    if seen:
        backgrounds = [replace(b, sha256=seen.get(b.path)) for b in backgrounds]
    return [(i, item_seeds[i], backgrounds[order[i]]) for i in range(config.num_images)
            if i not in done or not (out / "images" / f"{i:06d}.{config.image_format}").exists()]


@contextlib.contextmanager
def _write_errors(out: Path) -> Iterator[None]:
    """A full or read-only disk as one ``write_error`` naming ``out``.

    Atomic files say so themselves; the journal's appends fail here. A torn last journal
    line is ignored by --resume, which makes that item again.
    """
    try:
        yield
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise write_error(out, err) from None
        raise


def _check_resume(out: Path, old: dict, run_config: dict, inputs: dict[str, str],
                  fingerprints: dict[str, list[int]]) -> None:
    """Refuse to resume with other options or other inputs than the interrupted run's.

    A bank or backgrounds file rebuilt at the same path, or a background image edited, would
    otherwise mix two data sets in one output (and reuse segment ids that now mean other
    segments). ``fingerprints`` (the background images' now) name the image that changed.
    """
    names = {"bank_index": f"the bank {run_config['bank']}",
             "backgrounds": f"the backgrounds file {run_config['backgrounds']}",
             "background_images": "the background images",
             "extra_backgrounds": f"the {bg.EXTRA_FLAG} images"}

    def describe(key: str) -> tuple[str, str]:
        if key not in ("background_images", "extra_backgrounds"):
            return names.get(key, key), ""
        # The file's images are compared first: a change left is among the extra images.
        return names[key], first_change(recorded_listing(out, "backgrounds"), fingerprints)

    check_resume(out, old, jsonable(run_config), inputs,
                 flags=flags_of(PasteConfig), describe=describe,
                 fingerprints=["background_images"])


