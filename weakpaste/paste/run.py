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
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from weakpaste.bank.store import BankTable, SegmentBank
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import WRITE_ERRNOS, atomic_write_bytes, write_error
from weakpaste.core.jsonfile import JsonError, parse_json, read_json
from weakpaste.core.manifest import (
    check_output_dir,
    check_resume,
    file_fingerprints,
    file_sha256,
    fingerprints_sha256,
    first_change,
    prepare_output_dir,
    read_weakpaste_manifest,
    record_listing,
    recorded_listing,
    write_manifest,
)
from weakpaste.core.options import Config, flags_of, option
from weakpaste.core.runners import ExecutorConfig, Workers, host_tag
from weakpaste.io import coco
from weakpaste.io import rle as rle_check
from weakpaste.io.images import encode_image, list_images, read_image_sha256
from weakpaste.ops import masks as mask_ops
from weakpaste.paste import plan as plan_mod
from weakpaste.paste.render import RenderParams, render
from weakpaste.structures import ImageRecord, Instances

PARTS_GLOB = ".parts-*.jsonl"
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
    seed: int = option(0, range=(0, None), help="the run's seed")
    objects: tuple[int, int] = option((4, 4), parse=plan_mod.parse_count_range,
                                      show=plan_mod.format_count_range,
                                      metavar="N|LO-HI", range=(1, MAX_OBJECTS),
                                      help="objects pasted per image, fixed or a range")
    selection: str = option("uniform", choices=plan_mod.SELECTIONS,
                            help="uniform over segments, class-balanced, or per-class weights")
    class_weights: dict[str, float] | None = option(
        None, parse=read_class_weights, metavar="JSON",
        help='class -> weight for --selection weights, a JSON file {"class": weight, ...}')
    classes: tuple[str, ...] | None = option(None, help="paste only these classes")
    image_format: str = option("jpg", choices=("jpg", "png"), help="output image format")
    annotation_format: str | None = option(
        None, flag="--format", choices=("coco", "lvis"),
        help="annotation file format; lvis keeps LVIS's federated labels and category fields "
             "(default: the --backgrounds file's, coco without one)")
    jpeg_quality: int = option(95, range=(1, 100), help="JPEG quality")
    extra_ratio: float | None = option(
        None, range=(0, 1), metavar="R",
        help="fraction of output images on --extra-backgrounds (e.g. generated) backgrounds, "
             "the rest on --backgrounds, each pool cycled in its own seeded order, the "
             "smaller one repeated (EM-Paste §4.1); default: all backgrounds in one pool")

    def check(self) -> None:
        super().check()
        if self.selection == "weights" and not self.class_weights:
            raise WeakpasteError("selection 'weights' (--selection weights) needs class_weights "
                                 "(--class-weights FILE)")


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
                             "being resumed pasted onto it; restore it, or pass --overwrite "
                             "instead of --resume")
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
            raise WeakpasteError("--backgrounds needs --images DIR, the folder of its images")
        data = coco.load_coco(coco_json, images_dir)
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
        raise WeakpasteError("no backgrounds: pass --backgrounds COCO_JSON --images DIR and/or "
                             "--extra-backgrounds DIR")
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
        raise WeakpasteError(f"--extra-ratio {extra_ratio} needs --extra-backgrounds images")
    if n_extra < num_images and not len(orig_idx):
        raise WeakpasteError(f"--extra-ratio {extra_ratio} needs --backgrounds COCO_JSON "
                             "images too (or use --extra-ratio 1)")
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


def run_paste(config: PasteConfig, *, bank: str, out_dir: str,
              backgrounds_json: str | None = None, images_dir: str | None = None,
              extra_backgrounds: list[str] | None = None, workers: int = 1,
              overwrite: bool = False, resume: bool = False, progress: bool = True,
              executor: ExecutorConfig | None = None) -> dict:
    """Run the paste stage.

    Args:
        config: the stage configuration.
        bank: segment bank folder.
        out_dir: output folder (``images/``, ``annotations.json``, ``manifest.json``).
        backgrounds_json: COCO or LVIS data set whose images (and instances) are backgrounds;
            an LVIS one gives an LVIS output unless ``config.annotation_format`` says coco.
        images_dir: its images.
        extra_backgrounds: folders of extra background images (no instances).
        workers: processes (or Ray actors).
        overwrite: replace an existing output.
        resume: continue an interrupted run with the same config and the same inputs (the
            bank's index, the backgrounds file and folders are compared by hash).
        progress: show a progress bar.
        executor: where the items run (``ExecutorConfig``: local pool or Ray; never changes
            the output).

    Returns:
        The final manifest.

    Raises:
        WeakpasteError: bad input or options, an output folder that overlaps an input, a
            resume whose options or inputs changed, a full or read-only disk (what was
            written is kept and ``resume`` continues it).
    """
    from tqdm import tqdm

    clear_segment_cache()  # workers fork from here: they start empty too
    seg_bank = SegmentBank(bank)
    table = seg_bank.table(list(config.classes) if config.classes else None)
    probs = _class_probabilities(config, table, bank)
    ctx = PasteContext(bank_root=str(bank), table=table, probabilities=probs, config=config,
                       out_dir=str(Path(out_dir)))
    inputs_paths = [bank, backgrounds_json, images_dir, *(extra_backgrounds or []),
                    getattr(config.class_weights, "path", None)]
    _check_present(backgrounds_json, images_dir, extra_backgrounds or [], out_dir,
                   overwrite=overwrite, resume=resume, inputs_paths=inputs_paths)
    readable = [bank, out_dir, images_dir, *(extra_backgrounds or [])]
    # The workers start before the backgrounds are read: Ray's actors take ~0.4 s to boot,
    # which then overlaps the reading. A missing input or an unusable --out was refused above,
    # so a typo costs no Ray start-up.
    with Workers(workers, init=_init_worker, initargs=(ctx,), executor=executor,
                 check=[p for p in readable if p]) as pool:
        bg_set = load_backgrounds(backgrounds_json, images_dir, extra_backgrounds or [])
        inputs = bg_set.inputs
        inputs["bank_index"] = file_sha256(Path(bank) / "index.jsonl")
        run_config = {**config.to_dict(), "bank": str(bank), "backgrounds": backgrounds_json,
                      "images": images_dir, "extra_backgrounds": extra_backgrounds or []}
        out = Path(out_dir)
        if resume:
            _check_resume(out, run_config, inputs, bg_set.fingerprints)
        out = _prepare(out, config, run_config, inputs, overwrite=overwrite, resume=resume,
                       inputs_paths=inputs_paths)
        record_listing(out, "backgrounds", bg_set.fingerprints)
        tasks = _tasks(config, out, bg_set.backgrounds)
        made: dict[int, dict] = {}
        with _write_errors(out):
            try:
                for part in tqdm(pool.map(_run_task, tasks), total=len(tasks), desc="paste",
                                 unit="img", disable=not progress):
                    made[part["index"]] = part
            finally:
                _close_journal()
    with _write_errors(out):
        return _finalize(out, config, run_config, inputs, table, bg_set, made)


def _check_present(backgrounds_json: str | None, images_dir: str | None, extra_dirs: list[str],
                   out_dir: str, *, overwrite: bool, resume: bool,
                   inputs_paths: list) -> None:
    """Refuse missing inputs and an unusable --out without reading anything (the reading
    refuses the same, later: this is only so that a typo is refused before workers start)."""
    if backgrounds_json:
        coco.check_present(backgrounds_json, images_dir)
    for folder in extra_dirs:
        if not Path(folder).is_dir():
            list_images(folder)  # its one-line error for a missing folder
    check_output_dir(out_dir, overwrite=overwrite, resume=resume, stage="paste",
                     inputs=inputs_paths)


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


def _prepare(out: Path, config: PasteConfig, run_config: dict, inputs: dict, *,
             overwrite: bool, resume: bool, inputs_paths: list) -> Path:
    """The output folder made ready (``prepare_output_dir``), its running manifest written."""
    out = prepare_output_dir(out, overwrite=overwrite, resume=resume, stage="paste",
                             inputs=inputs_paths)
    try:
        (out / "images").mkdir(exist_ok=True)
        _remove_stale_temporaries(out / "images")
    except OSError as err:
        raise write_error(out, err) from None
    write_manifest(out, stage="paste", config=run_config, seed=config.seed, inputs=inputs,
                   status="running")
    return out


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
    done = _read_journals(out)
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


def _check_resume(out: Path, run_config: dict, inputs: dict[str, str],
                  fingerprints: dict[str, list[int]]) -> None:
    """Refuse to resume with other options or other inputs than the interrupted run's.

    A bank or backgrounds file rebuilt at the same path, or a background image edited, would
    otherwise mix two data sets in one output (and reuse segment ids that now mean other
    segments). ``fingerprints`` (the background images' now) name the image that changed.
    """
    old = read_weakpaste_manifest(out)
    if old is None:
        return  # prepare_output_dir says there is nothing to resume
    names = {"bank_index": f"the bank {run_config['bank']}",
             "backgrounds": f"the backgrounds file {run_config['backgrounds']}",
             "background_images": "the background images",
             "extra_backgrounds": "the --extra-backgrounds images"}

    def describe(key: str) -> tuple[str, str]:
        if key not in ("background_images", "extra_backgrounds"):
            return names.get(key, key), ""
        # The file's images are compared first: a change left is among the extra images.
        return names[key], first_change(recorded_listing(out, "backgrounds"), fingerprints)

    check_resume(out, old, json.loads(json.dumps(run_config)), inputs,
                 flags=flags_of(PasteConfig), describe=describe,
                 fingerprints=["background_images"])


def _read_journals(out: Path) -> dict[int, dict]:
    """Finished items by index, from every journal.

    A torn last line (a killed worker) and any line that is not a valid record (a damaged
    or edited journal) are ignored: their items are simply made again.
    """
    parts: dict[int, dict] = {}
    for path in sorted(out.glob(PARTS_GLOB)):
        with open(path, "rb") as fh:
            for line in fh:
                part = _journal_record(line) if line.endswith(b"\n") else None
                if part is not None:
                    parts[part["index"]] = part
    return parts


_RECORD_FIELDS = {"index": int, "file_name": str, "width": int, "height": int,
                  "annotations": list, "dropped": dict, "outside": int, "skipped": int,
                  "background": str}
_ANNOTATION_FIELDS = {"class": str, "rle": dict, "pasted": bool}


def _journal_record(line: bytes) -> dict | None:
    """The item record of a journal line (``ItemResult`` as a dict), or None when the line
    is not one."""
    try:
        part = parse_json(line)
    except JsonError:
        return None
    if not _typed(part, _RECORD_FIELDS) or part["index"] < 0 or part["width"] < 1 \
            or part["height"] < 1:
        return None
    for ann in part["annotations"]:
        if not _typed(ann, _ANNOTATION_FIELDS) or \
                ann["rle"].get("size") != [part["height"], part["width"]] or \
                not isinstance(ann["rle"].get("counts"), str) or \
                not _optional_stats(ann.get("area"), ann.get("bbox")):
            return None
    if not all(isinstance(k, str) and _typed_value(v, int) for k, v in part["dropped"].items()):
        return None
    rles = [a["rle"]["counts"] for a in part["annotations"]]
    size = (part["height"], part["width"])
    return part if rle_check.first_bad_compressed(rles, [size] * len(rles)) is None else None


def _optional_stats(area: object, bbox: object) -> bool:
    """An annotation's stored area and box, when present (older journals have none), are
    numbers."""
    def number(v: object) -> bool:
        return _typed_value(v, int) or _typed_value(v, float)

    return (area is None or number(area)) and (bbox is None or (
        isinstance(bbox, list) and len(bbox) == 4 and all(number(v) for v in bbox)))


def _typed(doc: object, fields: dict[str, type]) -> bool:
    return isinstance(doc, dict) and all(_typed_value(doc.get(k), t) for k, t in fields.items())


def _typed_value(value: object, kind: type) -> bool:
    # JSON's true/false are Python ints too: a bool field must be a bool and vice versa.
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _remove_stale_temporaries(images: Path) -> None:
    """Delete the temporary files of workers killed mid-write (``atomic_write_bytes``'
    ``.<name>.<pid>.tmp``); their images are made again by ``--resume``."""
    for tmp in images.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _finalize(out: Path, config: PasteConfig, run_config: dict, inputs: dict,
              table: BankTable, bg_set: BackgroundSet, made: dict[int, dict]) -> dict:
    """Assemble ``annotations.json`` from the items' records (``made`` by this run, the
    journals for a resumed run's earlier items), write the manifest, drop the journals."""
    _remove_stale_temporaries(out / "images")
    parts = made if len(made) == config.num_images else {**_read_journals(out), **made}
    stats: dict[int, coco.MaskStats] = {}
    categories = coco.assign_category_ids(sorted(table.classes), keep=bg_set.categories)
    lvis_out = (config.annotation_format or bg_set.format or "coco") == "lvis"
    federated: dict[int, coco.Federated] | None = {} if lvis_out else None
    by_path = {b.path: b for b in bg_set.backgrounds}
    per_class: Counter = Counter()
    pasted_per_class: Counter = Counter()
    dropped: Counter = Counter()
    outside = skipped = 0

    def records() -> Iterator[ImageRecord]:
        nonlocal outside, skipped
        for i in range(config.num_images):
            part = parts[i]
            anns = part["annotations"]
            for a in anns:
                per_class[a["class"]] += 1
                pasted_per_class[a["class"]] += a["pasted"]
            dropped.update(part["dropped"])
            outside += part["outside"]
            skipped += part["skipped"]
            if federated is not None:
                federated[i + 1] = _federated_labels(by_path.get(part["background"]), part,
                                                     bg_set.categories)
            stats[i + 1] = _part_stats(anns)  # write_coco reads it after this yield
            yield ImageRecord(image_id=i + 1, file_name=part["file_name"], width=part["width"],
                              height=part["height"],
                              instances=Instances.from_rles(
                                  part["height"], part["width"], [a["class"] for a in anns],
                                  [a["rle"] for a in anns], xywh=stats[i + 1][1]))

    lvis_counts = None
    if lvis_out:
        categories, lvis_counts = _lvis_categories(categories, parts, bg_set)
    written = coco.write_coco(out / "annotations.json", records(), categories,
                              info={"description": "weakpaste paste output",
                                    "seed": config.seed}, federated=federated,
                              stats=stats)
    if lvis_counts is not None:
        lvis_counts["negative_labels"] = sum(len(f.negative) for f in federated.values())
        lvis_counts["not_exhaustive_labels"] = sum(len(f.not_exhaustive)
                                                   for f in federated.values())
    manifest = write_manifest(
        out, stage="paste", config=run_config, seed=config.seed, inputs=inputs,
        counts={**written,
                "per_class": dict(sorted(per_class.items())),
                "pasted_per_class": dict(sorted(pasted_per_class.items())),
                "dropped_by_occlusion": dict(sorted(dropped.items())),
                "dropped_total": sum(dropped.values()), "outside_image": outside,
                "no_room_space_max": skipped,
                **({"lvis": lvis_counts} if lvis_counts is not None else {})})
    for path in out.glob(PARTS_GLOB):
        path.unlink()
    return manifest


def _part_stats(anns: list[dict]) -> coco.MaskStats:
    """The areas and COCO boxes a worker stored with an item's annotations (computed here
    for a journal written by a weakpaste that did not store them)."""
    if all("area" in a and "bbox" in a for a in anns):
        return [a["area"] for a in anns], [a["bbox"] for a in anns]
    return coco.mask_stats([a["rle"] for a in anns])


def _federated_labels(background: Background | None, part: dict,
                      bg_categories: dict[str, dict]) -> coco.Federated:
    """The federated labels of an output image.

    Its positive set is what it holds. Every class pasted onto it (even one that a later
    paste hid) leaves the negative set; an LVIS background keeps its other negatives and its
    not-exhaustive classes; a COCO background is exhaustively annotated, so the file's
    classes absent from it are negatives; an extra background verified nothing.
    """
    if background is None or background.source == "extra":
        return coco.Federated()
    present = {a["class"] for a in part["annotations"]} | set(part["dropped"])
    if background.federated is not None:
        return coco.Federated(tuple(sorted(set(background.federated.negative) - present)),
                              background.federated.not_exhaustive)
    return coco.Federated(tuple(sorted(set(bg_categories) - set(background.labels) - present)))


def _lvis_categories(categories: dict[str, dict], parts: dict[int, dict],
                     bg_set: BackgroundSet) -> tuple[dict[str, dict], dict]:
    """The LVIS category table of the output and the counts to report.

    A category keeps the backgrounds file's ``frequency``, ``image_count`` and
    ``instance_count`` (they describe the original training set, which decides rare, common and
    frequent); missing ones come from the backgrounds file's annotations (the output's when
    there is none); a bank class that they never saw is rare.
    """
    images: Counter = Counter()
    instances: Counter = Counter()
    for part in parts.values():
        classes = [a["class"] for a in part["annotations"]]
        instances.update(classes)
        images.update(set(classes))
    src_images, src_instances = images, instances
    if bg_set.format is not None:
        src_images, src_instances = Counter(), Counter()
        for b in bg_set.backgrounds:
            if b.source != "extra" and b.instances is not None:
                src_instances.update(b.instances.classes)
                src_images.update(set(b.instances.classes))
    table = coco.complete_lvis_categories(categories, src_images, src_instances)
    report = {"image_count": {n: images[n] for n in table},
              "instance_count": {n: instances[n] for n in table},
              "classes_not_in_backgrounds": sorted(set(table) - set(bg_set.categories))}
    return table, report
