"""``weakpaste demo``: the main job end to end on the embedded synthetic scenes, offline.

Synthetic scenes (image-level labels, hidden ground-truth masks) -> F-EM mines a segment bank
from the labels alone -> pasted COCO data set -> contact sheets, statistics, and the mined
masks' quality against the hidden ground truth with the F-EM funnel.

The mining is ``weakpaste mine fem`` with options chosen for the scenes
(:func:`demo_mine_config`, printed as the equivalent command): 300 scenes of 128 x 128 pixels,
the ``small_cnn`` classifier trained from scratch at 128 pixels (no download; its stride-8
feature map gives Grad-CAMs that place objects of 10-45 pixels, where a random ResNet-18
neither learns from a few hundred images on a CPU nor has more than a 4 x 4 map), 48-pixel
segment crops (the objects' own scale in training), and Felzenszwalb proposals at the scenes'
resolution keeping regions down to 0.3% of the image (the smallest objects). With
``weights`` (a local state_dict, or "DEFAULT" to download torchvision's) a pretrained
backbone is linear-probed instead. ``from_gt`` cuts the bank from the ground truth (the
Simple Copy-Paste case, seconds).
"""

from __future__ import annotations

import os
import time

# Module-level imports stay light: the CLI reads this module's defaults to build --help.
from dataclasses import dataclass
from pathlib import Path

from weakpaste.core.options import Config, flag_of, option, reuse_option, seed_option
from weakpaste.core.run import RunOptions, StageInputs, StageRun
from weakpaste.mine.config import ClassifierSpec

DEMO_SIDE = 128
"""Height and width of the demo's synthetic scenes and backgrounds, in pixels."""
DEMO_SCENES = 300
# Mask R-CNN iterations of ``demo --train`` (stage 1 + stage 2), per run, with
# demo_train_config's schedule; why 600: benchmarks/README.md, "The demo".
DEMO_TRAIN_ITERATIONS = 600


MINED_SHEET_TITLE = ("F-EM mines one mask per (scene, class) label: a second object of a "
                     "class in the same scene is not mined and shows unlabelled.")
"""The title of the mined masks' contact sheet (``OUT/viz_mined``)."""


def write_synthetic_dataset(out_dir: str | os.PathLike, *, num_scenes: int, seed: int,
                            height: int = DEMO_SIDE, width: int = DEMO_SIDE) -> Path:
    """Write synthetic scenes as ``images/*.png`` + ``instances.json`` (ground truth).

    Returns:
        The path of ``instances.json``.
    """
    from weakpaste.demo import synthetic
    from weakpaste.io.coco import write_coco
    from weakpaste.io.images import write_image
    from weakpaste.structures import ImageRecord, Instances

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, scene in enumerate(synthetic.iter_scenes(seed, num_scenes, height=height,
                                                    width=width)):
        name = f"scene_{i:05d}.png"
        write_image(out / "images" / name, scene.image)
        records.append(ImageRecord(image_id=i + 1, file_name=name, width=width, height=height,
                                   labels=scene.labels,
                                   instances=Instances.from_masks(scene.masks, scene.classes)))
    path = out / "instances.json"
    write_coco(path, records, list(synthetic.CLASSES),
               info={"description": "weakpaste synthetic scenes (ground truth)", "seed": seed})
    return path


def write_backgrounds(out_dir: str | os.PathLike, *, num: int, seed: int,
                      height: int = DEMO_SIDE, width: int = DEMO_SIDE) -> Path:
    """Write ``num`` object-free synthetic backgrounds as ``OUT/*.png`` and
    ``OUT/instances.json``, a COCO file of them without instances.

    The COCO file carries the scenes' category table (``write_synthetic_dataset``'s), so that
    a set pasted onto these backgrounds keeps the scenes' category ids (a paste numbers the
    classes its backgrounds file does not know in name order: ``demo --train`` then noted
    that its own files number the six classes differently).

    Returns:
        The path of ``instances.json``.
    """
    import numpy as np

    from weakpaste.demo import synthetic
    from weakpaste.io.coco import write_coco
    from weakpaste.io.images import write_image
    from weakpaste.structures import ImageRecord, Instances

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence([seed, 0xBAC6]).spawn(num)
    records = []
    for i, child in enumerate(children):
        name = f"background_{i:05d}.png"
        write_image(out / name, synthetic.make_background(np.random.default_rng(child),
                                                          height=height, width=width))
        records.append(ImageRecord(image_id=i + 1, file_name=name, width=width, height=height,
                                   instances=Instances.empty(height, width)))
    path = out / "instances.json"
    write_coco(path, records, list(synthetic.CLASSES),
               info={"description": "weakpaste synthetic backgrounds (no objects)",
                     "seed": seed})
    return path


def demo_mine_config(*, backbone: str | None = None, weights: str | None = None,
                     epochs: int | None = None, seed: int = 0):
    """The demo's ``weakpaste mine fem`` options.

    Args:
        backbone: classifier backbone; default ``small_cnn`` from scratch, ``resnet18`` with
            ``weights``.
        weights: None: train from scratch (no download); a state_dict path or "DEFAULT":
            a pretrained backbone, linear-probed on 256-pixel inputs.
        epochs: classifier epochs (default 30).
        seed: the run's seed.

    Returns:
        A ``FemConfig``.
    """
    from weakpaste.mine.config import ClassifierSpec, FemConfig, FemParams

    params = FemParams(max_side=DEMO_SIDE, min_area=0.003, methods=("felzenszwalb",),
                       record_proposals=True)
    epochs = 30 if epochs is None else epochs
    if weights is None:
        model = ClassifierSpec(backbone=backbone or "small_cnn", weights=None,
                               train_mode="finetune", epochs=epochs, lr=0.05, batch_size=16,
                               input_size=DEMO_SIDE, crop_size=48)
    else:
        model = ClassifierSpec(backbone=backbone or "resnet18", weights=weights,
                               train_mode="linear", epochs=epochs, input_size=2 * DEMO_SIDE,
                               crop_size=96)
    return FemConfig(model=model, params=params, seed=seed)


def mine_command(config, images: str, labels: str, out: str) -> str:
    """The ``weakpaste mine fem`` command line equivalent to ``config`` (for the user to copy):
    its inputs, the options that differ from the defaults (``to_argv``), the seed (so that the
    command reproduces the run whatever the defaults become) and the baselines the demo
    saves."""
    import shlex

    from weakpaste.core.argv import to_argv
    from weakpaste.mine.pipeline import SAVE_BASELINES_FLAG, MineInputs

    argv = ["mine", "fem", *to_argv(MineInputs(images, labels)), *to_argv(RunOptions(out=out)),
            *to_argv(config, always=("seed",)), SAVE_BASELINES_FLAG]
    return "weakpaste " + shlex.join(argv)


@dataclass(frozen=True)
class DemoConfig(Config):
    """The demo's settings (``weakpaste demo``)."""

    num_scenes: int = option(DEMO_SCENES, range=(1, None), help="synthetic source scenes")
    num_images: int = option(32, range=(1, None), help="pasted output images")
    seed: int = seed_option()
    from_gt: bool = option(False, help="cut the bank from the scenes' ground truth instead of "
                                       "mining it with F-EM from their image-level labels")
    # The F-EM classifier's own options (mine fem's), whose demo defaults choose a preset
    # (demo_mine_config): small_cnn trained from scratch, or resnet18 linear-probed on
    # --weights.
    backbone: str | None = reuse_option(
        ClassifierSpec, "backbone", default=None,
        help="F-EM classifier backbone (default: small_cnn from scratch; resnet18 with "
             "--weights)")
    weights: str | None = reuse_option(
        ClassifierSpec, "weights", default=None,
        help="none (train the classifier from scratch; no download), PATH to a local "
             "torchvision state_dict of --backbone, or DEFAULT (download torchvision's "
             "ImageNet weights)")
    epochs: int | None = reuse_option(ClassifierSpec, "epochs", default=None,
                                      help="classifier training epochs (default: 30)")
    train: bool = option(False, help="then train Mask R-CNN on the mined data and, with the "
                                     "same schedule, on the ground-truth masks, and print both "
                                     "APs on held-out scenes")
    train_iterations: int = option(DEMO_TRAIN_ITERATIONS, range=(1, None),
                                   help="Mask R-CNN iterations of --train per run, both "
                                        "stages together")


@dataclass(frozen=True)
class DemoInputs(StageInputs):
    """The demo's inputs: none (it draws its own scenes); declared so that every stage is
    called the same way."""


def run_demo(config: DemoConfig, inputs: DemoInputs | None, run: RunOptions) -> dict:
    """Run the demo; the CLI prints its result.

    Args:
        config: scenes, pasted images, seed, mining (``from_gt`` cuts the bank from the
            ground truth instead), the F-EM classifier (``backbone``, ``weights``,
            ``epochs``; see :func:`demo_mine_config`) and ``train`` (Mask R-CNN on the mined
            data and, the same schedule, on the ground truth; see
            :func:`train_demo_models`).
        inputs: ``DemoInputs()`` or None.
        run: the demo's folder (``out``), ``overwrite``, ``workers`` (processes for the
            per-image stages) and ``quiet``.

    Returns:
        {"out", "scenes", "bank", "segments", "pasted", "viz", "viz_mined", "quality",
        "funnel", "mine_config", "mine_command", "classifier", "train", "seconds",
        "manifest"}: paths, counts, the quality metrics (None from the ground truth) and the
        funnel as (stage, recall@0.5) pairs.
    """
    from weakpaste.bank.from_coco import BankInputs, run_bank_from_coco

    seed, mine, train, progress = config.seed, not config.from_gt, config.train, run.progress
    start = time.perf_counter()
    if train and not mine:
        from weakpaste.core.errors import WeakpasteError

        _TRAIN, _FROM_GT = (flag_of(DemoConfig, n) for n in ("train", "from_gt"))
        raise WeakpasteError(f"demo {_TRAIN} compares mined with ground-truth masks; drop "
                             f"{_FROM_GT}")
    with StageRun("demo", run, resumable=False) as stage:
        mine_config = demo_mine_config(backbone=config.backbone, weights=config.weights,
                                       epochs=config.epochs, seed=seed) if mine else None
        out = stage.start(_manifest_config(config, mine_config), seed=seed)
        scenes = out / "scenes"
        gt = write_synthetic_dataset(scenes, num_scenes=config.num_scenes, seed=seed)
        result = {"out": out, "scenes": scenes, "bank": out / "bank", "quality": None,
                  "funnel": None, "mine_config": mine_config, "train": None}
        if mine:
            result.update(_mine(out, scenes, gt, mine_config, workers=run.workers,
                                progress=progress))
        else:
            made = run_bank_from_coco(None, BankInputs(coco_json=gt, images=scenes / "images"),
                                      RunOptions(out=out / "bank", quiet=not progress))
            result["segments"] = made["counts"]["segments"]
        result["pasted"] = _paste(out, scenes, gt, mine, num_images=config.num_images,
                                  seed=seed, progress=progress)
        counts = _counts(result)
        result["seconds_mining"] = time.perf_counter() - start
        if train:
            result["train"] = train_demo_models(out, seed=seed,
                                                iterations=config.train_iterations,
                                                progress=progress)
            counts.update({f"{name}_segm_AP50": m["segm"]["AP50"]
                           for name, m in result["train"]["metrics"].items()})
        result["seconds"] = time.perf_counter() - start
        counts["seconds"] = round(result["seconds"], 1)
        result["manifest"] = stage.finish(counts)
    return result


def _manifest_config(config: DemoConfig, mine_config) -> dict:
    mine = mine_config is not None
    doc = {"num_scenes": config.num_scenes, "num_images": config.num_images,
           "seed": config.seed, "mine": mine,
           "backbone": mine_config.model.backbone if mine else None, "weights": config.weights,
           "epochs": mine_config.model.epochs if mine else None}
    if config.train:
        doc.update({"train": True, "train_iterations": config.train_iterations})
    return doc


def _counts(result: dict) -> dict:
    counts = {"segments": result["segments"], "images": result["pasted"]["images"],
              "annotations": result["pasted"]["annotations"]}
    if result["quality"] is not None:
        counts.update({k: result["quality"]["overall"][k]
                       for k in ("precision@0.5", "pair_yield@0.5", "mean_best_iou")})
        counts["funnel_recall@0.5"] = {s["stage"]: s["recall@0.5"]
                                       for s in result["funnel"]["stages"]}
    return counts


def _mine(out: Path, scenes: Path, gt: Path, mine_config, *, workers: int,
          progress: bool) -> dict:
    """F-EM on the scenes, its quality and funnel, and a contact sheet of the mined masks."""
    from weakpaste.evaluate.funnel import funnel
    from weakpaste.evaluate.masks import evaluate_masks
    from weakpaste.mine.fem import run_mine_fem
    from weakpaste.mine.pipeline import MineInputs
    from weakpaste.report.viz import VizConfig, VizInputs, run_viz

    bank = out / "bank"
    made = run_mine_fem(mine_config, MineInputs(images=str(scenes / "images"), labels=str(gt)),
                        RunOptions(out=str(bank), workers=workers, quiet=not progress),
                        save_baselines=True)
    run_viz(VizConfig(num_images=16, seed=mine_config.seed, title=MINED_SHEET_TITLE),
            VizInputs(coco_json=bank / "pseudo_labels.json", images=scenes / "images"),
            RunOptions(out=out / "viz_mined", quiet=not progress))
    weights, backbone = mine_config.model.weights, mine_config.model.backbone
    how = (f"{backbone} trained from scratch" if weights is None else
           f"{backbone} with {'torchvision ImageNet' if weights == 'DEFAULT' else ''}"
           f"{'' if weights == 'DEFAULT' else weights} weights (linear probe)")
    return {"segments": made["counts"]["segments"],
            "quality": evaluate_masks(str(bank), str(gt)),
            "funnel": funnel(bank, gt),
            "classifier": how,
            "mine_command": mine_command(mine_config, str(scenes / "images"), str(gt),
                                         str(bank)),
            "viz_mined": out / "viz_mined" / "contact_sheet.png"}


def _paste(out: Path, scenes: Path, gt: Path, mined: bool, *, num_images: int, seed: int,
           progress: bool, bank: Path | None = None,
           name: str = "pasted") -> dict:
    """Paste the bank's segments into ``OUT/<name>`` and draw a contact sheet of it."""
    from weakpaste.paste.run import PasteConfig, PasteInputs, run_paste
    from weakpaste.report.viz import VizConfig, VizInputs, run_viz

    if mined:
        # The scenes' own objects are unlabelled under weak labels: pasting onto them would
        # teach a detector that objects are background. Object-free backgrounds play the
        # part of EM-Paste's generated context backgrounds; given as a COCO file with the
        # scenes' categories, so that the pasted set numbers the classes as the scenes do.
        folder = out / "backgrounds"
        listing = folder / "instances.json"
        if not listing.is_file():
            write_backgrounds(folder, num=max(1, num_images // 2), seed=seed)
        background = {"backgrounds": str(listing), "images": str(folder)}
    else:
        background = {"backgrounds": str(gt), "images": str(scenes / "images")}
    # One process: a few dozen small images take seconds, and a pool forked from this
    # process after torch has run hangs (its workers wait on a futex forever).
    pasted = run_paste(PasteConfig(num_images=num_images, seed=seed, objects=(2, 4)),
                       PasteInputs(bank=str(bank or out / "bank"), **background),
                       RunOptions(out=str(out / name), workers=1, quiet=not progress))
    viz = "viz" if name == "pasted" else f"viz_{name}"
    run_viz(VizConfig(num_images=min(16, num_images), seed=seed),
            VizInputs(coco_json=out / name / "annotations.json", images=out / name / "images"),
            RunOptions(out=out / viz, quiet=not progress))
    return {"images": pasted["counts"]["images"],
            "annotations": pasted["counts"]["annotations"],
            "annotations_json": out / name / "annotations.json",
            "contact_sheet": out / viz / "contact_sheet.png"}


def train_demo_models(out: Path, *, seed: int, iterations: int = DEMO_TRAIN_ITERATIONS,
                      progress: bool = True) -> dict:
    """Train Mask R-CNN on the mined data and, with the same schedule, on the ground truth.

    "mined": stage 1 on the pasted set (``OUT/pasted``), stage 2 on the mined pseudo-labels
    of the scenes (``OUT/bank/pseudo_labels.json``); no ground-truth mask is used. "ground
    truth" (the ceiling): the same with a bank cut from the scenes' ground-truth masks
    (``OUT/bank_gt``, pasted into ``OUT/pasted_gt``) and the scenes' ground truth in stage 2.
    Both are evaluated on ``OUT/val_scenes``, synthetic scenes of another seed that training
    never saw; the runs are in ``OUT/train`` and ``OUT/train_gt``.

    Returns:
        {"metrics": {"mined": ..., "ground truth": ...} (``eval/metrics.json`` of each run),
        "seconds": {run: seconds}, "iterations": int, "val": path}.
    """
    import json
    import sys

    from weakpaste.bank.from_coco import BankInputs, run_bank_from_coco
    from weakpaste.train.loop import TrainInputs, run_train

    val = write_synthetic_dataset(out / "val_scenes", num_scenes=50, seed=seed + 1)
    scenes = out / "scenes"
    gt = scenes / "instances.json"
    run_bank_from_coco(None, BankInputs(coco_json=gt, images=scenes / "images"),
                       RunOptions(out=out / "bank_gt", quiet=not progress))
    num_images = _count_images(out / "pasted" / "annotations.json")
    _paste(out, scenes, gt, True, num_images=num_images, seed=seed, progress=progress,
           bank=out / "bank_gt", name="pasted_gt")
    runs = {"mined": ("pasted", out / "bank" / "pseudo_labels.json", "train"),
            "ground truth": ("pasted_gt", gt, "train_gt")}
    config = demo_train_config(iterations, seed)
    metrics, seconds = {}, {}
    for run, (pasted, stage2, folder) in runs.items():
        t = time.perf_counter()
        run_train(config,
                  TrainInputs(train=[f"{out / pasted / 'annotations.json'}:"
                                     f"{out / pasted / 'images'}"],
                              stage2=[f"{stage2}:{scenes / 'images'}"],
                              val=f"{val}:{val.parent / 'images'}"),
                  RunOptions(out=out / folder, quiet=not progress),
                  on_note=lambda message: print(f"weakpaste: note: {message}",
                                                file=sys.stderr))
        seconds[run] = time.perf_counter() - t
        metrics[run] = json.loads((out / folder / "eval" / "metrics.json").read_text())
    return {"metrics": metrics, "seconds": seconds, "iterations": iterations,
            "val": val.parent}


def demo_train_config(iterations: int, seed: int):
    """The Mask R-CNN schedule of ``demo --train``: ResNet-18 FPN from scratch (no download)
    at the scenes' 128 pixels, batch 4, 3/5 of the iterations on the pasted set, then the
    scenes (see :data:`DEMO_TRAIN_ITERATIONS` for what it reaches).

    ResNet-18's FPN has levels of stride 4 to 32 (32 x 32 down to 4 x 4 at 128 pixels) for
    the 10-45 pixel objects. Each stage warms up for 100 iterations to lr 0.02 and decays it
    by 10 at 2/3 and 8/9 of the stage; the gradient is clipped at norm 10 (unclipped, with a
    50-iteration warm-up, 0.02 diverged at iteration 67). The scale jitter is mild (0.5-1.5:
    the default 0.1-2.0 can shrink a 10-pixel object to 1 pixel); 64 RoIs and 300 proposals
    per image keep the heads cheap on a CPU.
    """
    from weakpaste.train.config import ModelOptions, TrainConfig

    stage1 = max(1, iterations * 3 // 5)
    return TrainConfig(model=ModelOptions(backbone="resnet18", image_size=DEMO_SIDE,
                                          roi_batch=64, rpn_proposals=300),
                       weights=None, jitter=(0.5, 1.5), batch_size=4, iterations=stage1,
                       stage2_iterations=iterations - stage1, lr=0.02,
                       warmup_iters=min(100, stage1 // 3), clip_grad=10.0,
                       checkpoint_every=max(1, iterations), log_every=10, seed=seed)


def _count_images(coco_json: Path) -> int:
    import json

    return len(json.loads(coco_json.read_text())["images"])
