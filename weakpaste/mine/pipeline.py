"""One mining pipeline for every miner: classifier, per-image map, selection, bank, manifest.

``run_mine(miner, images_dir, labels, out_dir, ...)`` does what F-EM, FreeSeg and any other
miner need:

1. reads the image-level labels and asks the miner which images to mine (``Miner.plan``);
2. hashes the inputs (every listed image, the labels file, a reused classifier, the miner's
   model files) for the manifest; a ``--resume`` whose method, options or inputs differ from
   the run in ``--out`` is refused before anything is written (``check_resumable``);
3. gets the classifier (``ClassifierSpec``): the one given with ``--classifier``, the one an
   interrupted run saved in ``OUT/classifier.pt``, or a new one trained on the labels;
4. maps the miner's pure per-image function over the images, here or in a process pool whose
   workers load their models once, caching each result in ``OUT/.cache/<key>/`` (the key names
   the classifier file, the per-image parameters and the miner's models), so that ``--resume``
   skips the images already done;
5. hands every per-image result to the miner's pure selection;
6. writes the bank, ALWAYS rebuilt whole from the selection (a resumed run never appends to
   what an earlier one wrote), ``pseudo_labels.json``, the baselines, the miner's own files and
   the manifest.

The Miner protocol. A miner is a ``Miner`` subclass holding its config (a ``Config`` with the
fields ``model: ClassifierSpec``, ``seed: int`` and ``params``, the per-image settings, which
are part of the cache key) that writes two pure functions::

    class MyMiner(Miner):
        name = "my"     # manifest method, the bank segments' miner, the progress bar
        title = "My"    # "weakpaste My pseudo-labels"

        def mine_image(self, models, image, item):
            # models["classifier"]: a Classifier; image: uint8 (H, W, 3); item: an Item.
            # Returns a dataclass listed in result_types with ``seconds: dict[str, float]``,
            # cached on disk as data (weakpaste.mine.cache: plain values, tuples, dicts,
            # NumPy arrays and the dataclasses of result_types).
        result_types = (MyResult,)  # the dataclasses a cached result may hold

        def select(self, results, plan):
            # results: a lazy Sequence of the per-image results in ``plan.items`` order.
            # Returns a Selection: per image the picked segments of every variant.

Optional hooks, with defaults here: ``plan`` (which images to mine and the classes; default:
every labelled image, all classes, the classifier trains on every image), ``inputs`` (model
files: hashed into the manifest and the cache key, never overlapped by ``--out``), ``open``
(per-process models besides the classifier, also opened once up front to check them) and
``describe`` (settings of those models for the manifest config).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.manifest import jsonable
from weakpaste.core.options import Config, flags_of
from weakpaste.io.images import read_image
from weakpaste.mine import cache as result_cache
from weakpaste.mine.config import ClassifierSpec

if TYPE_CHECKING:
    from weakpaste.core.runners import ExecutorConfig

# --------------------------------------------------------------------------------------------
# What a miner sees and returns


@dataclass(frozen=True)
class Item:
    """One image to mine.

    Attributes:
        file_name: relative to the images folder (the outputs' file_name).
        path: the image file.
        labels: its classes.
        sha256: hex SHA-256 of the file's bytes.
    """

    file_name: str
    path: str
    labels: tuple[str, ...]
    sha256: str


@dataclass
class Plan:
    """Which images a miner mines (``Miner.plan``).

    Attributes:
        records: the images to mine, in output order (image id = position + 1).
        classes: the output categories, and the classes of a newly trained classifier.
        train: the classifier's training images (targets: their labels, multi-hot).
        counts: counts for the manifest (e.g. ``labelled_images``).
        skipped: images left out, by reason.
        items: ``records`` as ``Item``s (set by the pipeline).
        negatives: more training images showing none of the classes (all-zero targets).
        extra: more labelled training images, not mined (their labels among ``classes``; an
            image left without one is a negative): the classifier trains on them, and the
            per-image function runs on them too when the miner's ``maps_extra`` is set (a
            head trained on per-image results, ``Miner.fit``).
    """

    records: list
    classes: list[str]
    train: list
    counts: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    items: list[Item] = field(default_factory=list)
    negatives: list[Path] = field(default_factory=list)
    extra: list[Item] = field(default_factory=list)


@dataclass
class Pick:
    """One picked segment: its class, RLE mask, COCO score and (in the bank) its scores."""

    label: str
    rle: dict
    score: float
    bank_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class ImagePicks:
    """Per image: its size and the picks of each variant (missing variants: none)."""

    height: int
    width: int
    variants: dict[str, list[Pick]]


@dataclass
class Selection:
    """What a miner's selection decided over all images (``Miner.select``).

    Attributes:
        images: per ``plan.items`` entry, the picks; variant ``final`` fills the bank and
            ``pseudo_labels.json``, each other variant ``baselines/<variant>.json``.
        variants: the baseline variants.
        counts: miner-specific manifest counts.
        skipped: images or labels left out, by reason.
        extra: miner-specific manifest sections.
        files: more output files (name -> bytes).
        seconds: timings of the selection's stages.
    """

    images: list[ImagePicks]
    variants: tuple[str, ...] = ()
    counts: dict[str, Any] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class Miner:
    """Base of the miners: the hooks' defaults (see the module docstring)."""

    name = "miner"
    title = "miner"
    # The dataclasses a per-image result is made of: the only classes its cache file may
    # rebuild (weakpaste.mine.cache).
    result_types: tuple[type, ...] = ()
    maps_extra = False  # run the per-image function on ``plan.extra`` too (for ``fit``)

    def __init__(self, config: Config):
        self.config = config

    def plan(self, records: list, classes: list[str], source: str) -> Plan:
        """Every labelled image, all classes; the classifier trains on every image.

        Args:
            records: ``load_labels``' records.
            classes: its classes.
            source: the labels file or images folder, for messages.
        """
        todo = [r for r in records if r.labels]
        return Plan(todo, list(classes), list(records))

    def inputs(self) -> dict[str, str]:
        """Model files the per-image results depend on: name -> path."""
        return {}

    def open(self, out: Path, threads: int | None) -> dict:
        """Per-process models besides the classifier (``threads``: torch/ONNX threads)."""
        return {}

    def describe(self, models: dict) -> dict[str, str]:
        """Settings of the opened models for the manifest config and the cache key."""
        return {}

    def mine_image(self, models: dict, image: np.ndarray, item: Item):
        """The pure per-image function (uint8 (H, W, 3) ``image``): a result made of
        ``result_types`` (see ``weakpaste.mine.cache``)."""
        raise NotImplementedError

    def fit(self, results: Sequence, plan: Plan) -> dict:
        """Train what the selection needs on every per-image result (``plan.items`` then,
        with ``maps_extra``, ``plan.extra``), between the per-image map and ``select``.

        Returns:
            Training information for the manifest (default: nothing to train).
        """
        return {}

    def select(self, results: Sequence, plan: Plan) -> Selection:
        """The pure selection over every image's result (in ``plan.items`` order)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Shared helpers


def _read_result(path: Path, types: tuple[type, ...]):
    """A cached per-image result; ``mine_images`` checked it before, so a failure here means
    the file changed meanwhile."""
    try:
        return result_cache.read(path, types)
    except (OSError, result_cache.CacheError) as err:
        raise WeakpasteError(f"{path}: the cached mining result cannot be read ({err}); run "
                             "the command again with --resume to mine that image again") from None


class LazyFiles(Sequence):
    """A sequence of files' contents, each loaded on access and never kept.

    Used for the classifier's training images (``read_image``: training never holds them all)
    and for the per-image results (``LazyFiles.results``: a selection holds what it needs).
    Indexing with a slice, list or array gives a ``LazyFiles`` of those files.
    """

    def __init__(self, paths: list[Path], load: Callable = read_image):
        self.paths, self.load = paths, load

    @classmethod
    def results(cls, files: list[Path], types: tuple[type, ...]) -> LazyFiles:
        """The per-image results, read from their cache files (``weakpaste.mine.cache``)."""
        return cls(files, functools.partial(_read_result, types=types))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazyFiles(self.paths[i], self.load)
        if isinstance(i, list | tuple | np.ndarray):
            return LazyFiles([self.paths[j] for j in i], self.load)
        return self.load(self.paths[i])

    def __iter__(self):
        return (self.load(p) for p in self.paths)


def cache_key(classifier_path: Path, params, extra: Iterable[str] = ()) -> str:
    """16 hex digits naming a per-image cache: classifier file bytes, parameters, extras.

    Args:
        classifier_path: the classifier file.
        params: a dataclass of the per-image parameters.
        extra: further strings that decide the per-image results (e.g. a saliency model key).
    """
    from weakpaste.core.manifest import file_sha256

    h = hashlib.sha256(bytes.fromhex(file_sha256(classifier_path)))
    h.update(json.dumps(asdict(params), sort_keys=True).encode())
    for item in extra:
        h.update(item.encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Inputs and resuming


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


# Locations, not settings: the inputs' contents are compared by hash instead.
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


def input_paths(miner: Miner, images_dir: Path, labels: str | None) -> list[str | Path]:
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
    cache = getattr(miner.config, "saliency_cache", None)
    inputs = miner.inputs()
    if cache:
        for folder in (images_dir, inputs.get("negatives")):
            if folder and Path(folder).resolve() in (Path(cache).resolve(),
                                                     *Path(cache).resolve().parents):
                raise WeakpasteError(f"{cache}: the saliency cache lies inside the images "
                                     f"folder {folder}, where its maps would be read as images; "
                                     "choose a --saliency-cache outside it")
    return [images_dir, labels, spec.classifier, weights, *inputs.values(), cache]


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


# --------------------------------------------------------------------------------------------
# The classifier


def get_classifier(spec: ClassifierSpec, plan: Plan, images_dir: Path, out: Path, *,
                   seed: int, resume: bool, progress: bool, source: str) -> tuple[Path, dict]:
    """The classifier file to mine with: reused, resumed, or trained and saved now.

    Args:
        spec: the classifier settings.
        plan: the miner's plan (its training images and classes).
        images_dir: the images folder.
        out: the output folder (a new classifier goes to ``out/classifier.pt``).
        seed: seeds training.
        resume: reuse ``out/classifier.pt`` when an interrupted run saved it.
        progress: progress bars.
        source: the labels file or images folder, for messages.

    Returns:
        (the classifier file, its training information for the manifest).

    Raises:
        WeakpasteError: a reused classifier does not know one of the labels' classes.
    """
    from weakpaste.models.classifier import Classifier

    if spec.classifier:
        clf = Classifier.load(spec.classifier, device=spec.device)
        unknown = sorted({c for r in plan.train for c in r.labels} - set(clf.classes))
        if unknown:
            raise WeakpasteError(f"{source}: class {unknown[0]!r} is not among the classes of "
                                 f"the classifier {spec.classifier}; retrain it without "
                                 "--classifier or drop the class")
        return Path(spec.classifier), {"reused": spec.classifier}
    path = out / "classifier.pt"
    if resume and path.is_file():
        return path, {"reused": str(path)}
    clf = Classifier.build(spec.backbone, spec.weights, plan.classes, device=spec.device,
                           input_size=spec.input_size, crop_size=spec.crop_size)
    paths, y = training_set(plan, images_dir)
    info = clf.train(LazyFiles(paths), y, mode=spec.train_mode, epochs=spec.epochs,
                     lr=spec.lr, batch_size=spec.batch_size, seed=seed,
                     progress=progress)
    clf.save(path)
    return path, info


def training_set(plan: Plan, images_dir: Path) -> tuple[list[Path], np.ndarray]:
    """The classifier's training images and multi-hot targets: ``plan.train`` with its
    labels, then ``plan.negatives`` with all-zero targets.

    A set labelled with one class only (PennFudan: every image shows a person) gives the
    classifier no negative: its head, hence its Grad-CAM and crop scores, is noise (PennFudan,
    50 pairs: CAM peak in a person's box 28%, below the image centre's). Images showing none
    of the classes give it the contrast (with 100 coco_mini images without a person: 72%).

    ``plan.extra`` (more labelled images, not mined) comes last, with its labels.

    Returns:
        (N paths, float32 (N, K) targets).
    """
    index = {c: i for i, c in enumerate(plan.classes)}
    n_first = len(plan.train) + len(plan.negatives)
    y = np.zeros((n_first + len(plan.extra), len(plan.classes)), dtype=np.float32)
    for i, labels in enumerate([r.labels for r in plan.train] + [()] * len(plan.negatives)
                               + [it.labels for it in plan.extra]):
        for c in labels:
            y[i, index[c]] = 1.0
    paths = [images_dir / r.file_name for r in plan.train] + list(plan.negatives)
    return paths + [Path(it.path) for it in plan.extra], y


# --------------------------------------------------------------------------------------------
# The per-image map

_WORKER: dict = {}


def _worker_init(miner: Miner, classifier_path: str, out: str, threads: int | None,
                 models: dict | None = None) -> None:
    """Load a worker's models once: the classifier and the miner's (or reuse ``models``)."""
    import torch

    from weakpaste.models.classifier import Classifier

    if threads:
        torch.set_num_threads(threads)
    models = dict(models) if models is not None else miner.open(Path(out), threads)
    models["classifier"] = Classifier.load(classifier_path, device=miner.config.model.device)
    _WORKER.update(miner=miner, models=models)


def _mine_task(task: tuple[Item, str]) -> dict[str, float]:
    item, cache_file = task
    result = _WORKER["miner"].mine_image(_WORKER["models"], read_image(item.path), item)
    atomic_write_bytes(cache_file, result_cache.dumps(result))
    return result.seconds


def mine_images(miner: Miner, plan: Plan, cache: Path, clf_path: Path, out: Path,
                models: dict, *, workers: int, progress: bool, timings: dict[str, float],
                executor: ExecutorConfig | None = None, check: Sequence = ()
                ) -> tuple[LazyFiles, int]:
    """Run the miner's per-image function on every image not cached yet.

    In this process the models opened up front are reused (``threads=None``: torch keeps its
    thread count); in a process pool or on Ray actors every worker opens its own, with one
    thread each (the workers are the parallelism).

    Args:
        check: the paths every Ray worker must read (the inputs; the cache is in ``out``).

    Returns:
        (the results of every image, lazily read from ``cache``: ``plan.items``, then
        ``plan.extra`` when the miner maps it; images mined now).
    """
    from tqdm import tqdm

    from weakpaste.core.runners import ExecutorConfig, map_items

    executor = executor or ExecutorConfig()
    cache.mkdir(parents=True, exist_ok=True)
    # Training-only images may share a file name with a mined one: their own cache names.
    extra = plan.extra if miner.maps_extra else []
    items = [*plan.items, *extra]
    files = [cache / (hashlib.sha1(name.encode()).hexdigest() + result_cache.SUFFIX) for name in
             [it.file_name for it in plan.items] + ["extra/" + it.file_name for it in extra]]
    # A missing, truncated, damaged or forged entry is mined again (the pickle files that
    # earlier versions left have another suffix and are never read).
    tasks = [(it, str(f)) for it, f in zip(items, files, strict=True)
             if not result_cache.is_valid(f, miner.result_types)]
    here = workers <= 1 and executor.executor == "local"
    initargs = (miner, str(clf_path), str(out), *((None, models) if here else (1, None)))
    if not here:
        models.clear()  # each worker opens its own (an ONNX session does not survive a fork)
    t = time.perf_counter()
    it = map_items(_mine_task, tasks, workers=workers, init=_worker_init, initargs=initargs,
                   executor=executor, check=[str(p) for p in (*check, clf_path, out)])
    for secs in tqdm(it, total=len(tasks), desc=miner.name, unit="img", disable=not progress):
        for k, v in secs.items():
            timings[k] += v
    timings["per_image_wall"] = time.perf_counter() - t
    return LazyFiles.results(files, miner.result_types), len(tasks)


# --------------------------------------------------------------------------------------------
# Outputs


def _record(rid: int, file_name: str, picks: ImagePicks, variant: str):
    from weakpaste.structures import ImageRecord, Instances

    chosen = picks.variants.get(variant, [])
    return ImageRecord(rid, file_name, picks.width, picks.height, instances=Instances.from_rles(
        picks.height, picks.width, [p.label for p in chosen], [p.rle for p in chosen],
        scores=[p.score for p in chosen]))


def write_bank(out: Path, miner: Miner, plan: Plan, sel: Selection) -> Counter:
    """Rewrite the bank from the selection's ``final`` picks; returns segments per class."""
    from weakpaste.bank.format import INDEX
    from weakpaste.bank.from_coco import segments_from_image
    from weakpaste.bank.store import BankWriter
    from weakpaste.ops import masks as mask_ops

    # Rebuilt whole: a resumed run must not append to what an earlier one wrote.
    (out / INDEX).unlink(missing_ok=True)
    shutil.rmtree(out / "segments", ignore_errors=True)
    kept: Counter = Counter()
    with BankWriter(out) as writer:
        for item, picks in zip(plan.items, sel.images, strict=True):
            chosen = picks.variants.get("final", [])
            if not chosen:
                continue
            masks = mask_ops.decode_many([p.rle for p in chosen], picks.height, picks.width)
            segs, _ = segments_from_image(read_image(item.path), masks,
                                          tuple(p.label for p in chosen),
                                          source_image=item.file_name, min_area=1,
                                          miner=miner.name)
            for seg, pick in zip(segs, chosen, strict=True):
                seg.scores.update(pick.bank_scores)
                writer.add(seg)
                kept[pick.label] += 1
    return kept


def write_outputs(out: Path, miner: Miner, plan: Plan, sel: Selection, *,
                  save_baselines: bool) -> Counter:
    """The bank, ``pseudo_labels.json``, the miner's files and (optionally) the baselines."""
    from weakpaste.io.coco import write_coco

    kept = write_bank(out, miner, plan, sel)
    categories = {c: {"id": k + 1, "supercategory": ""} for k, c in enumerate(plan.classes)}

    def records(variant: str) -> list:
        return [_record(i + 1, item.file_name, picks, variant)
                for i, (item, picks) in enumerate(zip(plan.items, sel.images, strict=True))]

    write_coco(out / "pseudo_labels.json", records("final"), categories,
               info={"description": f"weakpaste {miner.title} pseudo-labels"})
    for name, data in sel.files.items():
        atomic_write_bytes(out / name, data)
    if save_baselines:
        (out / "baselines").mkdir(exist_ok=True)
        for variant in sel.variants:
            write_coco(out / "baselines" / f"{variant}.json", records(variant), categories)
    return kept


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class _Prepared:
    out: Path
    plan: Plan
    models: dict        # the miner's opened models
    config: dict        # the manifest's config
    inputs: dict        # input name -> SHA-256
    cache_extra: tuple  # what else names the per-image cache: the models' settings and files


def _prepare(miner: Miner, images_dir: Path, labels: str | None, out_dir: str, *,
             overwrite: bool, resume: bool) -> _Prepared:
    """Everything before the first write: labels, plan, models check, hashes, output folder,
    resume check."""
    from weakpaste.core.manifest import prepare_output_dir, read_weakpaste_manifest, record_listing
    from weakpaste.io.labels import load_labels

    records, classes = load_labels(labels, images_dir)
    plan = miner.plan(records, classes, str(labels or images_dir))
    plan.counts = {"images": len(records), **plan.counts}
    models = miner.open(Path(out_dir), None)  # checks the models before anything is written
    hashes = image_hashes(images_dir, records)
    plan.items = [Item(r.file_name, str(images_dir / r.file_name), tuple(r.labels),
                       hashes[r.file_name]) for r in plan.records]
    described = miner.describe(models)
    config = run_config(miner, images_dir, labels, described)
    inputs = _input_hashes(miner, labels, hashes)
    out = prepare_output_dir(out_dir, overwrite=overwrite, resume=resume, stage="mine",
                             inputs=input_paths(miner, images_dir, labels))
    old = read_weakpaste_manifest(out) if resume else None
    if old is not None:
        check_resumable(out, old, config, inputs, option_flags(miner.config), hashes)
    record_listing(out, "images", hashes)
    extra = (*described.values(), *(inputs[k] for k in miner.inputs() if k in inputs))
    return _Prepared(out, plan, models, config, inputs, extra)


def run_mine(miner: Miner, images_dir: str, labels: str | None, out_dir: str, *,
             workers: int = 1, overwrite: bool = False, resume: bool = False,
             progress: bool = True, save_baselines: bool = False,
             executor: ExecutorConfig | None = None) -> dict:
    """Mine a segment bank + ``pseudo_labels.json`` with ``miner`` (see the module docstring).

    Args:
        miner: the miner, holding its config.
        images_dir: folder of the images.
        labels: image-level labels (see ``weakpaste.io.labels``); None: one sub-folder per
            class.
        out_dir: the bank folder to create.
        workers: processes for the per-image stage.
        overwrite: replace an existing output.
        resume: continue a run in ``out_dir`` made with the same method, options and inputs
            (per-image results are cached; the bank is rewritten).
        progress: progress bars.
        save_baselines: also write ``baselines/<variant>.json`` for the miner's baselines.
        executor: where the per-image work runs (``weakpaste.core.runners``: a local process pool
            or Ray actors; never changes the outputs).

    Returns:
        The manifest.
    """
    from weakpaste.core.runners import preflight
    from weakpaste.models.device import resolve_device

    preflight(executor)  # before the output folder and the classifier's training
    resolve_device(miner.config.model.device)  # --device cuda where torch has no GPU
    timings: dict[str, float] = defaultdict(float)
    images_dir = Path(images_dir)
    cfg = miner.config
    run = _prepare(miner, images_dir, labels, out_dir, overwrite=overwrite, resume=resume)
    out, plan = run.out, run.plan
    from weakpaste.core.manifest import write_manifest

    write_manifest(out, stage="mine", config=run.config, seed=cfg.seed, inputs=run.inputs,
                   status="running")
    t = time.perf_counter()
    clf_path, train_info = get_classifier(cfg.model, plan, images_dir, out, seed=cfg.seed,
                                          resume=resume, progress=progress,
                                          source=str(labels or images_dir))
    timings["classifier"] = time.perf_counter() - t
    cache = out / ".cache" / cache_key(clf_path, cfg.params, run.cache_extra)
    results, mined = mine_images(miner, plan, cache, clf_path, out, run.models,
                                 workers=workers, progress=progress, timings=timings,
                                 executor=executor,
                                 check=[images_dir, *miner.inputs().values()])
    t = time.perf_counter()
    fit_info = miner.fit(results, plan)
    if fit_info:
        timings["fit"] = time.perf_counter() - t
    sel = miner.select(results[:len(plan.items)], plan)
    timings.update(sel.seconds)
    t = time.perf_counter()
    kept = write_outputs(out, miner, plan, sel, save_baselines=save_baselines)
    timings["write"] = time.perf_counter() - t
    skipped = Counter(plan.skipped)
    skipped.update(sel.skipped)
    counts = {**plan.counts, "mined_this_run": mined, **sel.counts, "segments": sum(kept.values()),
              "per_class": dict(sorted(kept.items())), "skipped": dict(skipped)}
    return write_manifest(out, stage="mine", config=run.config, seed=cfg.seed,
                          inputs=run.inputs, counts=counts,
                          extra={**sel.extra, "classifier_training": jsonable(train_info),
                                 **({"fit": jsonable(fit_info)} if fit_info else {}),
                                 "timings_s": {k: round(v, 3) for k, v in timings.items()}})
