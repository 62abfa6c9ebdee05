"""``weakpaste demo``: the main job end to end on the embedded synthetic scenes.

Synthetic scenes (image-level labels, hidden ground-truth masks) -> a segment bank -> pasted
COCO data set -> contact sheets + statistics.

F-EM mines the bank from the image-level labels alone and the demo prints its pseudo-label
quality against the hidden ground truth. The classifier is a ResNet-18 with torchvision's
ImageNet weights (downloaded once by torchvision); without internet the demo says so and
trains it from scratch, whose Grad-CAMs localise poorly on 48 scenes (a local ``--weights
PATH`` is the offline remedy). ``--from-gt`` cuts the bank from the ground truth instead
(the Simple Copy-Paste case, seconds).
"""

from __future__ import annotations

import os
from pathlib import Path

from weakpaste.io.coco import write_coco
from weakpaste.io.images import write_image
from weakpaste.manifest import prepare_output_dir, write_manifest
from weakpaste.structures import ImageRecord, Instances

# Mask R-CNN iterations of ``demo --train`` (stage 1 + stage 2): minutes on 2 CPU cores.
DEMO_TRAIN_ITERATIONS = 250


def write_synthetic_dataset(out_dir: str | os.PathLike, *, num_scenes: int, seed: int,
                            height: int = 192, width: int = 256) -> Path:
    """Write synthetic scenes as ``images/*.png`` + ``instances.json`` (ground truth).

    Returns:
        The path of ``instances.json``.
    """
    from weakpaste import synthetic

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
                      height: int = 192, width: int = 256) -> Path:
    """Write ``num`` object-free synthetic backgrounds as ``OUT/*.png``; returns the folder."""
    import numpy as np

    from weakpaste import synthetic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence([seed, 0xBAC6]).spawn(num)
    for i, child in enumerate(children):
        write_image(out / f"background_{i:05d}.png",
                    synthetic.make_background(np.random.default_rng(child), height=height,
                                              width=width))
    return out


def resolve_demo_weights(backbone: str, weights: str | None) -> str | None:
    """``weights``, or None (train from scratch) when DEFAULT cannot be had (offline).

    torchvision caches the download, so the classifier built later reuses it.
    """
    if weights is None or str(weights).upper() != "DEFAULT":
        return weights
    from weakpaste.errors import WeakpasteError
    from weakpaste.models.classifier import Classifier

    try:
        Classifier.build(backbone, "DEFAULT", ("probe",), input_size=64, crop_size=64)
    except WeakpasteError as err:
        print(f"weakpaste demo: {err}\nweakpaste demo: training the classifier from scratch "
              "instead; expect poor masks (pass --weights PATH to a local state_dict)")
        return None
    return weights


def run_demo(out_dir: str | os.PathLike, *, num_scenes: int = 48, num_images: int = 32,
             seed: int = 0, workers: int = 1, mine: bool = True, backbone: str = "resnet18",
             weights: str | None = "DEFAULT", epochs: int = 25, overwrite: bool = False,
             progress: bool = True, train: bool = False,
             train_iterations: int = DEMO_TRAIN_ITERATIONS) -> dict:
    """Run the demo and print where everything is.

    Args:
        mine: mine the bank with F-EM (else cut it from the ground truth).
        backbone, weights, epochs: the F-EM classifier (weights: "DEFAULT", a path or None).
        train: then train Mask R-CNN on the pasted set and the mined pseudo-labels and print its
            AP on held-out scenes (see ``train_demo_model``); needs ``mine``.
        train_iterations: Mask R-CNN iterations of both stages together.

    Returns:
        The demo's manifest.
    """
    from weakpaste.bank import run_bank_from_coco
    from weakpaste.mine.config import ClassifierSpec, FemConfig, FemParams
    from weakpaste.mine.fem import run_mine_fem
    from weakpaste.mine.quality import evaluate_masks, format_table
    from weakpaste.paste.run import PasteConfig, run_paste
    from weakpaste.stats import format_stats, run_stats
    from weakpaste.viz import VizConfig, run_viz

    if train and not mine:
        from weakpaste.errors import WeakpasteError

        raise WeakpasteError("demo --train learns from the mined pseudo-labels only; drop "
                             "--from-gt")
    out = prepare_output_dir(out_dir, overwrite=overwrite, stage="demo")
    config = {"num_scenes": num_scenes, "num_images": num_images, "seed": seed, "mine": mine,
              "backbone": backbone, "weights": weights, "epochs": epochs}
    if train:
        config.update({"train": True, "train_iterations": train_iterations})
    write_manifest(out, stage="demo", config=config, seed=seed, status="running")
    scenes = out / "scenes"
    gt = write_synthetic_dataset(scenes, num_scenes=num_scenes, seed=seed)
    if mine:
        weights = resolve_demo_weights(backbone, weights)
        config["weights_used"] = weights
        pretrained = weights not in (None, "none")
        model = ClassifierSpec(backbone=backbone, weights=weights,
                               train_mode="linear" if pretrained else "finetune",
                               epochs=epochs, input_size=256 if pretrained else 128,
                               crop_size=160 if pretrained else 96)
        mine_config = FemConfig(model=model, seed=seed, params=FemParams(max_side=256))
        made = run_mine_fem(mine_config, str(scenes / "images"), str(gt), str(out / "bank"),
                            workers=workers, progress=progress)
        segments = made["counts"]["segments"]
        quality = evaluate_masks(str(out / "bank"), str(gt))
        run_viz(out / "bank" / "pseudo_labels.json", scenes / "images", out / "viz_mined",
                VizConfig(num_images=min(12, num_scenes), seed=seed), progress=progress)
    else:
        made = run_bank_from_coco(gt, scenes / "images", out / "bank", progress=progress)
        segments = made["counts"]["segments"]
        quality = None
    if mine:
        # The scenes' own objects are unlabelled under weak labels: pasting onto them would
        # teach a detector that objects are background. Object-free backgrounds play the
        # part of EM-Paste's generated context backgrounds.
        background = {"extra_backgrounds": [str(write_backgrounds(
            out / "backgrounds", num=max(1, num_images // 2), seed=seed))]}
    else:
        background = {"backgrounds_json": str(gt), "images_dir": str(scenes / "images")}
    pasted = run_paste(PasteConfig(num_images=num_images, seed=seed, objects=(2, 4)),
                       bank=str(out / "bank"), out_dir=str(out / "pasted"), workers=workers,
                       progress=progress, **background)
    run_viz(out / "pasted" / "annotations.json", out / "pasted" / "images", out / "viz",
            VizConfig(num_images=min(12, num_images), seed=seed), progress=progress)
    if quality is not None:
        print("\npseudo-label quality of the mined bank against the hidden ground truth:")
        print(format_table(quality))
    print()
    print(format_stats(run_stats(out / "pasted" / "annotations.json")))
    source = ("F-EM from image-level labels; mined masks: "
              f"{out / 'viz_mined' / 'contact_sheet.png'}" if mine else "ground truth")
    print(f"\nsynthetic scenes : {scenes}\n"
          f"segment bank     : {out / 'bank'} ({segments} segments, {source})\n"
          f"pasted COCO set  : {out / 'pasted' / 'annotations.json'} "
          f"({pasted['counts']['images']} images, {pasted['counts']['annotations']} instances)\n"
          f"contact sheet    : {out / 'viz' / 'contact_sheet.png'}")
    counts = {"segments": segments, "images": pasted["counts"]["images"],
              "annotations": pasted["counts"]["annotations"]}
    if quality is not None:
        counts.update({k: quality["overall"][k] for k in ("precision@0.5", "mean_best_iou")})
    if train:
        metrics = train_demo_model(out, seed=seed, iterations=train_iterations,
                                   progress=progress)
        counts.update({f"{iou}_{k}": metrics[iou][k] for iou in ("segm", "bbox")
                       for k in ("AP", "AP50", "AP75")})
    return write_manifest(out, stage="demo", config=config, seed=seed, counts=counts)


def train_demo_model(out: Path, *, seed: int, iterations: int = DEMO_TRAIN_ITERATIONS,
                     progress: bool = True) -> dict:
    """Train Mask R-CNN from the demo's mined data and evaluate it on held-out scenes.

    Stage 1 trains on the pasted set (``OUT/pasted``), stage 2 on the mined pseudo-labels of
    the scenes (``OUT/bank/pseudo_labels.json``): no ground-truth mask is used for training.
    The model is the light MobileNetV3 FPN from scratch (no download) at 192 pixels, sized to
    take a few minutes on 2 CPU cores; it is evaluated on ``OUT/val_scenes``, synthetic scenes
    of another seed that training never saw. The run is in ``OUT/train``.

    Returns:
        The evaluation metrics (``OUT/train/eval/metrics.json``).
    """
    import json
    import sys

    from weakpaste.train.config import TrainConfig
    from weakpaste.train.evaluation import format_metrics
    from weakpaste.train.loop import run_train

    val = write_synthetic_dataset(out / "val_scenes", num_scenes=24, seed=seed + 1)
    stage1 = max(1, iterations * 3 // 5)
    config = TrainConfig(backbone="mobilenet_v3", weights=None, image_size=192, batch_size=4,
                         iterations=stage1, stage2_iterations=iterations - stage1, lr=0.02,
                         warmup_iters=min(50, stage1 // 3), roi_batch=64, rpn_proposals=300,
                         checkpoint_every=max(1, iterations), log_every=10, seed=seed)
    run_train(config, [f"{out / 'pasted' / 'annotations.json'}:{out / 'pasted' / 'images'}"],
              out / "train", val=f"{val}:{val.parent / 'images'}",
              stage2=[f"{out / 'bank' / 'pseudo_labels.json'}:{out / 'scenes' / 'images'}"],
              progress=progress,
              on_note=lambda message: print(f"weakpaste: note: {message}", file=sys.stderr))
    metrics = json.loads((out / "train" / "eval" / "metrics.json").read_text())
    print(f"\nMask R-CNN trained on the pasted set, then on the mined pseudo-labels "
          f"({iterations} iterations; {out / 'train'}), on {val.parent} (held-out scenes):")
    print(format_metrics(metrics))
    return metrics
