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
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.manifest import jsonable
from weakpaste.core.options import flag_of, option
from weakpaste.core.run import RESUME, RunOptions, StageInputs, StageRun
from weakpaste.io.images import read_image
from weakpaste.mine import cache as result_cache
from weakpaste.mine.config import ClassifierSpec
from weakpaste.mine.miner import (  # noqa: F401 - the miners' interface, imported from here
    ImagePicks,
    Item,
    Miner,
    Pick,
    Plan,
    Selection,
)
from weakpaste.mine.outputs import write_outputs
from weakpaste.mine.resume import (  # noqa: F401 - also this module's API
    _input_hashes,
    check_resumable,
    folder_sha256,
    image_hashes,
    input_paths,
    option_flags,
    run_config,
)

# --------------------------------------------------------------------------------------------
# Shared helpers


def _read_result(path: Path, types: tuple[type, ...]):
    """A cached per-image result; ``mine_images`` checked it before, so a failure here means
    the file changed meanwhile."""
    try:
        return result_cache.read(path, types)
    except (OSError, result_cache.CacheError) as err:
        raise WeakpasteError(f"{path}: the cached mining result cannot be read ({err}); run "
                             f"the command again with {RESUME} to mine that image again") from None


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
                                 f"{flag_of(ClassifierSpec, 'classifier')} or drop the class")
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


def _worker_init(miner: Miner, classifier_path: str, saliency_cache: str, threads: int | None,
                 models: dict | None = None) -> None:
    """Load a worker's models once: the classifier and the miner's (or reuse ``models``)."""
    import torch

    from weakpaste.models.classifier import Classifier

    if threads:
        torch.set_num_threads(threads)
    models = dict(models) if models is not None else miner.open(Path(saliency_cache), threads)
    models["classifier"] = Classifier.load(classifier_path, device=miner.config.model.device)
    _WORKER.update(miner=miner, models=models)


def saliency_cache(stage: StageRun) -> Path:
    """The folder of the run's saliency maps: ``--saliency-cache``, else in the output."""
    given = stage.run.saliency_cache
    return Path(given) if given else stage.out / ".cache" / "saliency"


def _mine_task(task: tuple[Item, str]) -> dict[str, float]:
    item, cache_file = task
    result = _WORKER["miner"].mine_image(_WORKER["models"], read_image(item.path), item)
    atomic_write_bytes(cache_file, result_cache.dumps(result))
    return result.seconds


def mine_images(miner: Miner, plan: Plan, cache: Path, clf_path: Path, out: Path,
                models: dict, *, stage: StageRun, timings: dict[str, float],
                check: Sequence = ()) -> tuple[LazyFiles, int]:
    """Run the miner's per-image function on every image not cached yet.

    In this process the models opened up front are reused (``threads=None``: torch keeps its
    thread count); in a process pool or on Ray actors every worker opens its own, with one
    thread each (the workers are the parallelism).

    Args:
        stage: the run (its workers and executor, ``StageRun.map``).
        check: the paths every Ray worker must read (the inputs; the cache is in ``out``).

    Returns:
        (the results of every image, lazily read from ``cache``: ``plan.items``, then
        ``plan.extra`` when the miner maps it; images mined now).
    """
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
    here = stage.run.workers <= 1 and stage.run.executor == "local"
    initargs = (miner, str(clf_path), str(saliency_cache(stage)),
                *((None, models) if here else (1, None)))
    if not here:
        models.clear()  # each worker opens its own (an ONNX session does not survive a fork)
    t = time.perf_counter()
    for secs in stage.map(_mine_task, tasks, desc=miner.name, init=_worker_init,
                          initargs=initargs, check=[*check, clf_path, out]):
        for k, v in secs.items():
            timings[k] += v
    stage.close()  # the workers (and their models) go before the selection
    timings["per_image_wall"] = time.perf_counter() - t
    return LazyFiles.results(files, miner.result_types), len(tasks)


# --------------------------------------------------------------------------------------------
# The run


SAVE_BASELINES_FLAG = "--save-baselines"
"""The command line's switch for ``run_mine(save_baselines=True)`` (an output choice, not a
setting of the method: it is no config field), added by ``cli.mine`` and spelt by the demo."""


@dataclass(frozen=True)
class MineInputs(StageInputs):
    """The inputs of ``mine fem`` and ``mine freeseg``.

    Attributes:
        images: folder of the images.
        labels: image-level labels (see ``weakpaste.io.labels``); None: one sub-folder per
            class.
    """

    images: str | os.PathLike = option(help="folder of the images")
    labels: str | os.PathLike | None = option(
        None, help="COCO JSON (annotated categories = labels), CSV (image,labels with ';') or "
                   "JSON {image: [classes]} (freeseg: one class per image); omit for one "
                   "sub-folder per class")


@dataclass
class _Prepared:
    out: Path
    plan: Plan
    models: dict        # the miner's opened models
    config: dict        # the manifest's config
    inputs: dict        # input name -> SHA-256
    cache_extra: tuple  # what else names the per-image cache: the models' settings and files


def _prepare(miner: Miner, stage: StageRun, images_dir: Path, labels: str | None) -> _Prepared:
    """Everything before the first write: labels, plan, models check, hashes; then the
    output folder (``StageRun.start``: resume check, running manifest)."""
    from weakpaste.core.manifest import record_listing
    from weakpaste.io.labels import load_labels

    flags = (flag_of(MineInputs, "images"), flag_of(MineInputs, "labels"))
    records, classes = load_labels(labels, images_dir, flags=flags)
    plan = miner.plan(records, classes, str(labels or images_dir))
    plan.counts = {"images": len(records), **plan.counts}
    models = miner.open(saliency_cache(stage), None)  # checks them before anything is written
    hashes = image_hashes(images_dir, records)
    plan.items = [Item(r.file_name, str(images_dir / r.file_name), tuple(r.labels),
                       hashes[r.file_name]) for r in plan.records]
    described = miner.describe(models)
    config = run_config(miner, images_dir, labels, described)
    inputs = _input_hashes(miner, labels, hashes)
    flags = option_flags(miner.config)
    out = stage.start(config, seed=miner.config.seed, inputs=inputs,
                      resume_check=lambda out, old: check_resumable(out, old, config, inputs,
                                                                    flags, hashes))
    record_listing(out, "images", hashes)
    extra = (*described.values(), *(inputs[k] for k in miner.inputs() if k in inputs))
    return _Prepared(out, plan, models, config, inputs, extra)


def run_mine(miner: Miner, inputs: MineInputs, run: RunOptions, *,
             save_baselines: bool = False) -> dict:
    """Mine a segment bank + ``pseudo_labels.json`` with ``miner`` (see the module docstring).

    Args:
        miner: the miner, holding its config.
        inputs: the images and their labels.
        run: the bank folder to create (``out``), ``overwrite``, ``resume`` (continue a run
            made with the same method, options and inputs: per-image results are cached, the
            bank is rewritten), ``workers`` and the executor of the per-image stage (a local
            process pool or Ray actors, ``gpus_per_worker`` each; never changes the outputs)
            and ``quiet``.
        save_baselines: also write ``baselines/<variant>.json`` for the miner's baselines.

    Returns:
        The manifest.
    """
    from weakpaste.models.device import resolve_device

    images_dir, labels = Path(inputs.images), inputs.labels
    labels = None if labels is None else str(labels)
    stage = StageRun("mine", run, inputs=input_paths(miner, images_dir, labels,
                                                     run.saliency_cache))
    with stage:  # before the classifier's training
        resolve_device(miner.config.model.device)  # --device cuda where torch has no GPU
        prep = _prepare(miner, stage, images_dir, labels)
        timings: dict[str, float] = defaultdict(float)
        t = time.perf_counter()
        clf_path, train_info = get_classifier(
            miner.config.model, prep.plan, images_dir, prep.out, seed=miner.config.seed,
            resume=run.resume, progress=run.progress, source=str(labels or images_dir))
        timings["classifier"] = time.perf_counter() - t
        cache = prep.out / ".cache" / cache_key(clf_path, miner.config.params, prep.cache_extra)
        results, mined = mine_images(miner, prep.plan, cache, clf_path, prep.out, prep.models,
                                     stage=stage, timings=timings,
                                     check=[images_dir, *miner.inputs().values()])
        counts, (sel_extra, fit_extra) = _select_and_write(miner, prep, results, timings,
                                                           save_baselines=save_baselines)
        return stage.finish({**prep.plan.counts, "mined_this_run": mined, **counts},
                            extra={**sel_extra, "classifier_training": jsonable(train_info),
                                   **fit_extra,
                                   "timings_s": {k: round(v, 3) for k, v in timings.items()}})


def _select_and_write(miner: Miner, prep: _Prepared, results: LazyFiles,
                      timings: dict[str, float], *,
                      save_baselines: bool) -> tuple[dict, tuple[dict, dict]]:
    """Fit, select and write the outputs; returns the manifest's counts and extra fields
    (the selection's, the fit's)."""
    plan = prep.plan
    t = time.perf_counter()
    fit_info = miner.fit(results, plan)
    if fit_info:
        timings["fit"] = time.perf_counter() - t
    sel = miner.select(results[:len(plan.items)], plan)
    timings.update(sel.seconds)
    t = time.perf_counter()
    kept = write_outputs(prep.out, miner, plan, sel, save_baselines=save_baselines)
    timings["write"] = time.perf_counter() - t
    skipped = Counter(plan.skipped)
    skipped.update(sel.skipped)
    counts = {**sel.counts, "segments": sum(kept.values()),
              "per_class": dict(sorted(kept.items())), "skipped": dict(skipped)}
    return counts, (sel.extra, {"fit": jsonable(fit_info)} if fit_info else {})
