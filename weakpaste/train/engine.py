"""Mask R-CNN training: model, weights, SGD schedule, checkpoints, the two-stage loop.

* ``build_model``: torchvision's Mask R-CNN on a ResNet-50 FPN (``resnet50``, the papers'
  R-50) or a MobileNetV3-Large FPN (``mobilenet_v3``, light) backbone. Weights: ``DEFAULT``
  (torchvision's ImageNet backbone weights: the weakly-supervised setting of EM-Paste §4.1; a
  detector pre-trained on COCO masks would leak mask supervision), a local file (a weakpaste
  checkpoint, a Mask R-CNN state_dict, or a torchvision classification state_dict of the
  backbone), or none (random initialisation under the run's seed).
* ``run_train``: iteration-based SGD with linear warm-up and step decay, repeat-factor
  sampling, large-scale jittering; stage 1 on the ``--train`` sets (e.g. pasted data) and an
  optional stage 2 on the ``--stage2`` sets (the original pseudo-labelled data) with a fresh
  optimizer and schedule (FreeSeg §4.1, appendix A.5); checkpoints
  ``OUT/checkpoints/iter_XXXXXX.pt`` and ``last.pt`` written atomically; ``--resume``;
  ``OUT/metrics.jsonl``; evaluation on ``--val`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from weakpaste import __version__
from weakpaste.errors import WeakpasteError
from weakpaste.errors import reason as _reason
from weakpaste.manifest import file_sha256, prepare_output_dir, write_manifest
from weakpaste.train import data as tdata

BACKBONES: tuple[str, ...] = ("resnet50", "mobilenet_v3")
FORMAT = "weakpaste-maskrcnn"
FORMAT_VERSION = 1
# torchvision's anchor sizes for 800-pixel inputs; scaled with --image-size.
_BASE_ANCHORS = (32, 64, 128, 256, 512)
_TORCHVISION_NAMES = {"resnet50": "resnet50", "mobilenet_v3": "mobilenet_v3_large"}
_LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
              "loss_rpn_box_reg")


def note(message: str) -> None:
    """A one-line remark about the input, on stderr (stdout stays for results)."""
    print(f"weakpaste: note: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a trained model (stored in each checkpoint).

    Attributes:
        backbone: "resnet50" or "mobilenet_v3".
        class_names: the K classes; label k (1..K) is ``class_names[k - 1]``, 0 is background.
        image_size: training crops are size x size; test images are resized to fit in it.
        frozen_bn: FrozenBatchNorm2d in the backbone (pre-trained weights) instead of
            BatchNorm2d (random initialisation).
        trainable_layers: backbone stages that are trained (the others stay frozen).
        roi_batch: sampled RoIs per image for the box head.
        rpn_proposals: RPN proposals kept per image in training (half of it at test time).
        detections_per_image: most detections per image at test time.
    """

    backbone: str
    class_names: tuple[str, ...]
    image_size: int = 800
    frozen_bn: bool = True
    trainable_layers: int = 3
    roi_batch: int = 512
    rpn_proposals: int = 2000
    detections_per_image: int = 100

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["class_names"] = tuple(kw["class_names"])
        return cls(**kw)


@dataclass
class TrainConfig:
    """Training options (the CLI flags of ``weakpaste train``)."""

    backbone: str = "resnet50"
    weights: str | None = "DEFAULT"
    image_size: int = 800
    jitter: tuple[float, float] = (0.1, 2.0)
    brightness: float = 0.4
    contrast: float = 0.4
    color_prob: float = 0.5
    flip_prob: float = 0.5
    batch_size: int = 8
    iterations: int = 90000
    stage2_iterations: int | None = None
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    steps: tuple[float, ...] = (0.667, 0.889)
    gamma: float = 0.1
    clip_grad: float = 0.0
    repeat_threshold: float = 0.001
    keep_empty: bool = False
    trainable_layers: int | None = None
    roi_batch: int = 512
    rpn_proposals: int = 2000
    detections_per_image: int = 100
    checkpoint_every: int = 5000
    log_every: int = 20
    device: str = "cpu"
    workers: int = 0
    seed: int = 0

    def validate(self) -> None:
        """Raise a WeakpasteError naming the first unusable option."""
        checks = [
            (self.backbone in BACKBONES,
             f"--backbone {self.backbone} is not supported; choose {' or '.join(BACKBONES)}"),
            (self.image_size >= 32, f"--image-size must be at least 32, got {self.image_size}"),
            (0 < self.jitter[0] <= self.jitter[1],
             f"--jitter needs 0 < LO <= HI, got {self.jitter}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.iterations >= 1, f"--iterations must be at least 1, got {self.iterations}"),
            (self.stage2_iterations is None or self.stage2_iterations >= 0,
             f"--stage2-iterations must be >= 0, got {self.stage2_iterations}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_iters >= 0, f"--warmup must be >= 0, got {self.warmup_iters}"),
            (0 < self.warmup_factor <= 1,
             f"--warmup-factor must be in (0, 1], got {self.warmup_factor}"),
            (all(0 < s < 1 for s in self.steps),
             f"--steps are fractions of a stage's iterations in (0, 1), got {self.steps}"),
            (0 < self.gamma <= 1, f"--gamma must be in (0, 1], got {self.gamma}"),
            (self.repeat_threshold >= 0,
             f"--repeat-threshold must be >= 0, got {self.repeat_threshold}"),
            (self.checkpoint_every >= 1,
             f"--checkpoint-every must be at least 1, got {self.checkpoint_every}"),
            (self.log_every >= 1, f"--log-every must be at least 1, got {self.log_every}"),
            (self.roi_batch >= 1 and self.rpn_proposals >= 2,
             "--roi-batch must be >= 1 and --rpn-proposals >= 2"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise WeakpasteError(message)


# --------------------------------------------------------------------------------------------
# Model


def _is_none(weights: str | os.PathLike | None) -> bool:
    return weights is None or (isinstance(weights, str) and weights.lower() == "none")


def _is_default(weights: str | os.PathLike | None) -> bool:
    return isinstance(weights, str) and weights.upper() == "DEFAULT"


def default_trainable_layers(backbone: str, pretrained: bool) -> int:
    """torchvision's choice: 3 stages with pre-trained weights, all of them without."""
    if pretrained:
        return 3
    return 5 if backbone == "resnet50" else 6


def _anchor_sizes(image_size: int) -> tuple[int, ...]:
    # Anchors follow the input size so that they cover the same fraction of the image as
    # torchvision's defaults do at 800 pixels.
    scale = image_size / 800.0
    return tuple(max(4, int(round(s * scale))) for s in _BASE_ANCHORS)


def _imagenet_weights(backbone: str):
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights

    if backbone == "resnet50":
        return ResNet50_Weights.DEFAULT
    return MobileNet_V3_Large_Weights.DEFAULT


def build_model(config: ModelConfig, *, weights: str | os.PathLike | None = None,
                seed: int = 0) -> tuple[nn.Module, list[str]]:
    """Build a Mask R-CNN.

    Args:
        config: architecture (see ``ModelConfig``).
        weights: "DEFAULT" (torchvision's ImageNet backbone weights, downloaded by
            torchvision into its cache), a path (see ``load_weights_file``) or None.
        seed: seeds the random initialisation (inside a forked torch RNG, so nothing else is
            affected).

    Returns:
        (the model on the CPU in train mode, notes about what was loaded).

    Raises:
        WeakpasteError: DEFAULT weights cannot be fetched, or the file does not fit.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.misc import FrozenBatchNorm2d

    if config.backbone not in BACKBONES:
        raise WeakpasteError(f"--backbone {config.backbone} is not supported; choose "
                             f"{' or '.join(BACKBONES)}")
    norm = FrozenBatchNorm2d if config.frozen_bn else nn.BatchNorm2d
    imagenet = _imagenet_weights(config.backbone) if _is_default(weights) else None
    sizes = _anchor_sizes(config.image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            if config.backbone == "resnet50":
                backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=imagenet,
                                               norm_layer=norm,
                                               trainable_layers=config.trainable_layers)
                anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * 5)
                levels = ["0", "1", "2", "3"]
            else:
                backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large",
                                              weights=imagenet, fpn=True, norm_layer=norm,
                                              trainable_layers=config.trainable_layers)
                anchors = AnchorGenerator((sizes,) * 3, ((0.5, 1.0, 2.0),) * 3)
                levels = ["0", "1"]
        except Exception as err:
            if imagenet is None:
                raise
            raise WeakpasteError(
                f"could not get torchvision's DEFAULT ImageNet weights for {config.backbone} "
                f"({_reason(err)}); on a machine without internet pass --weights none or "
                "--weights PATH to a local state_dict") from None
        half = max(1, config.rpn_proposals // 2)
        model = MaskRCNN(
            backbone, num_classes=config.num_classes, min_size=config.image_size,
            max_size=config.image_size, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
            mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
            rpn_pre_nms_top_n_train=config.rpn_proposals,
            rpn_post_nms_top_n_train=config.rpn_proposals,
            rpn_pre_nms_top_n_test=half, rpn_post_nms_top_n_test=half,
            box_batch_size_per_image=config.roi_batch,
            box_detections_per_img=config.detections_per_image)
    notes = []
    if imagenet is not None:
        notes.append(f"backbone initialised with torchvision's {imagenet} weights")
    elif not _is_none(weights) and not _is_default(weights):
        notes.append(load_weights_file(model, Path(weights), config.backbone))
    return model, notes


def _read_torch_file(path: Path, what: str, fix: str) -> Any:
    if not path.is_file():
        raise WeakpasteError(f"{path}: {what} not found; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeakpasteError(f"{path}: not a readable {what} ({_reason(err)}); {fix}") from None


def load_weights_file(model: nn.Module, path: Path, backbone: str) -> str:
    """Initialise ``model`` from a local file; returns a note saying what was loaded.

    Accepted: a weakpaste checkpoint, a Mask R-CNN state_dict (class-specific head tensors
    whose shape differs, e.g. another number of classes, keep their initial values), or a
    torchvision classification state_dict of the backbone (``torchvision.models.resnet50``
    or ``mobilenet_v3_large``; its classifier is ignored).

    Raises:
        WeakpasteError: missing or unreadable file, or neither kind of state_dict.
    """
    fix = "pass --weights PATH to a state_dict saved with torch.save, DEFAULT or none"
    obj = _read_torch_file(path, "weights file", fix)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        obj = obj["model"]
    if not (isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj)):
        raise WeakpasteError(f"{path}: not a state_dict (found a {type(obj).__name__}); {fix}")
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    own = model.state_dict()
    same = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if len(same) >= len(own) // 2:
        model.load_state_dict(same, strict=False)
        other = sum(1 for k, v in state.items()
                    if k in own and tuple(own[k].shape) != tuple(v.shape))
        return (f"loaded {len(same)} of {len(own)} tensors from {path}"
                + (f"; {other} with another shape (class-specific heads) keep their initial "
                   "values" if other else ""))
    body = model.backbone.body
    prefix = "features." if backbone == "mobilenet_v3" else ""
    mapped = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    want = body.state_dict()
    bad = [k for k, v in want.items()
           if k not in mapped or tuple(mapped[k].shape) != tuple(v.shape)]
    if bad:
        raise WeakpasteError(
            f"{path}: neither a Mask R-CNN state_dict nor one of torchvision's "
            f"{_TORCHVISION_NAMES[backbone]} ({len(bad)} of {len(want)} backbone tensors missing "
            f"or of another shape, e.g. {prefix + bad[0]!r}); pass a matching --backbone, a "
            "weakpaste checkpoint, DEFAULT or none")
    body.load_state_dict({k: mapped[k] for k in want}, strict=True)
    return f"backbone initialised from {path} ({len(want)} tensors)"


# --------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: Path, payload: Mapping) -> None:
    """``torch.save`` atomically: readers see the old file or the complete new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(dict(payload), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically (a hard link, else a copy)."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by ``weakpaste train``.

    Raises:
        WeakpasteError: missing, unreadable (truncated, corrupt) or foreign file.
    """
    path = Path(path)
    fix = "pass a checkpoint written by 'weakpaste train' (e.g. OUT/checkpoints/last.pt)"
    obj = _read_torch_file(path, "checkpoint", fix)
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise WeakpasteError(f"{path}: not a weakpaste Mask R-CNN checkpoint; {fix}")
    if obj.get("format_version") != FORMAT_VERSION:
        raise WeakpasteError(f"{path}: checkpoint format version {obj.get('format_version')} "
                             f"is not supported by weakpaste {__version__}; {fix}")
    for key in ("model", "model_config", "iteration"):
        if key not in obj:
            raise WeakpasteError(f"{path}: corrupt checkpoint (no {key!r}); {fix}")
    return dict(obj)


def model_from_checkpoint(ckpt: Mapping, path: str | os.PathLike = "checkpoint"
                          ) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the trained model of a checkpoint (CPU, eval mode)."""
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
        model, _ = build_model(config, weights=None)
        model.load_state_dict(ckpt["model"], strict=True)
    except WeakpasteError:
        raise
    except Exception as err:
        raise WeakpasteError(f"{path}: corrupt checkpoint ({_reason(err)}); pass a checkpoint "
                             "written by 'weakpaste train'") from None
    return model.eval(), config


# --------------------------------------------------------------------------------------------
# Schedule


def lr_factor(iteration: int, total: int, *, warmup_iters: int, warmup_factor: float,
              steps: Sequence[float], gamma: float) -> float:
    """Learning-rate multiplier at a stage's ``iteration`` (0-based).

    Linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` iterations, times
    ``gamma`` for every step ``s`` (a fraction of the stage's ``total`` iterations) passed.
    """
    factor = gamma ** sum(iteration >= int(round(s * total)) for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def make_optimizer(model: nn.Module, config: TrainConfig, total: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)

    def factor(i: int) -> float:
        return lr_factor(i, total, warmup_iters=config.warmup_iters,
                         warmup_factor=config.warmup_factor, steps=config.steps,
                         gamma=config.gamma)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class _Stage:
    name: str
    specs: list[tdata.DataSpec]
    items: list
    iterations: int
    begin: int = 0

    @property
    def end(self) -> int:
        return self.begin + self.iterations


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise WeakpasteError("--device cuda: no CUDA device is available to torch here; use "
                             "--device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise WeakpasteError(f"--device {device} is not supported; use cpu or cuda")
    return torch.device(device)


def _step_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, 7919, iteration]).generate_state(1)[0])


def _checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:06d}.pt"


def _trim_metrics(path: Path, iteration: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("iteration", 0) <= iteration:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(line + "\n" for line in keep))


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def run_train(train: Sequence[str | tdata.DataSpec], out_dir: str | os.PathLike,
              config: TrainConfig, *, val: str | tdata.DataSpec | None = None,
              stage2: Sequence[str | tdata.DataSpec] = (), overwrite: bool = False,
              resume: bool = False, progress: bool = True,
              on_iteration: Callable[[int, dict], None] | None = None) -> dict:
    """Train Mask R-CNN on COCO data sets and evaluate it on ``val``.

    Args:
        train: stage-1 sets as ``COCO_JSON:IMAGES_DIR`` (several are concatenated; classes are
            matched by name).
        out_dir: output folder: ``checkpoints/``, ``metrics.jsonl``, ``manifest.json`` and,
            with ``val``, ``eval/metrics.json``.
        config: options.
        val: the evaluation set (optional).
        stage2: stage-2 sets (the original pseudo-labelled data); trained for
            ``config.stage2_iterations`` (default: ``config.iterations``) after stage 1.
        overwrite: replace an existing output.
        resume: continue from ``OUT/checkpoints/last.pt``.
        progress: tqdm progress bar.
        on_iteration: called as ``on_iteration(iteration, log)`` after every iteration
            (iteration counts from 1; ``log`` holds the losses and the learning rate).

    Returns:
        The run's manifest (``counts`` holds iterations, images and, with ``val``, the
        evaluation summary).

    Raises:
        WeakpasteError: bad input or options, an unusable checkpoint, or a diverged loss.
    """
    from tqdm import tqdm

    config.validate()
    device = resolve_device(config.device)
    specs1 = [tdata.parse_data_spec(t, option="--train") for t in train]
    if not specs1:
        raise WeakpasteError("no training data; pass --train COCO_JSON:IMAGES_DIR")
    specs2 = [tdata.parse_data_spec(t, option="--stage2") for t in stage2]
    val_spec = tdata.parse_data_spec(val, option="--val") if val is not None else None
    sets1 = [tdata.load_spec(s) for s in specs1]
    sets2 = [tdata.load_spec(s) for s in specs2]
    val_set = tdata.load_spec(val_spec) if val_spec is not None else None

    names, notes = tdata.merge_categories(sets1 + sets2)
    if not names:
        raise WeakpasteError(f"{specs1[0].json}: no categories; the training data needs a "
                             "'categories' list with the classes to learn")
    stages = []
    it2 = config.iterations if config.stage2_iterations is None else config.stage2_iterations
    for name, specs, sets, iters in (("stage 1", specs1, sets1, config.iterations),
                                     ("stage 2", specs2, sets2, it2)):
        if not sets or iters == 0:
            continue
        items, skipped = tdata.training_items(sets, keep_empty=config.keep_empty)
        if skipped:
            notes.append(f"{name}: {skipped} image(s) without annotations left out (pass "
                         "--keep-empty to train on them as background)")
        if not any(rec.instances is not None and len(rec.instances) for _, rec in items):
            raise WeakpasteError(f"{specs[0].json}: no instance to learn from in the {name} "
                                 "data; check that its annotations carry segmentations")
        stages.append(_Stage(name, specs, items, iters,
                             begin=stages[-1].end if stages else 0))
    total = stages[-1].end
    all_records = [rec for st in stages for _, rec in st.items]
    instances = tdata.class_instance_counts(all_records, names)
    empty = [n for n, k in instances.items() if k == 0]
    if empty:
        notes.append(f"{len(empty)} class(es) have no instance in the training data; the model "
                     f"keeps an output for them but cannot learn them: {tdata.name_list(empty)}")
    # Rare/common/frequent are defined on the original data: stage 2's when given.
    freq_records = [rec for ds in (sets2 or sets1) for rec in ds.records]
    train_image_counts = tdata.class_image_counts(freq_records, names)
    if val_set is not None:
        notes += tdata.map_eval_categories(names, val_set)[1]

    pretrained = not _is_none(config.weights)
    model_config = ModelConfig(
        backbone=config.backbone, class_names=names, image_size=config.image_size,
        frozen_bn=pretrained,
        trainable_layers=(config.trainable_layers if config.trainable_layers is not None
                          else default_trainable_layers(config.backbone, pretrained)),
        roi_batch=config.roi_batch, rpn_proposals=config.rpn_proposals,
        detections_per_image=config.detections_per_image)

    out = prepare_output_dir(out_dir, overwrite=overwrite, resume=resume, stage="train")
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    resume_from = None
    if resume:
        last = ckpt_dir / "last.pt"
        if last.is_file():
            resume_from = load_checkpoint(last)
            _check_resumable(last, resume_from, model_config, config)
        else:
            notes.append(f"{last}: no checkpoint yet; training starts from the beginning")
    for message in notes:
        note(message)

    run_config = _json_safe({**asdict(config), "train": [str(s) for s in specs1],
                             "stage2": [str(s) for s in specs2],
                             "val": str(val_spec) if val_spec else None})
    inputs = {f"train:{s.json}": file_sha256(s.json) for s in specs1}
    inputs.update({f"stage2:{s.json}": file_sha256(s.json) for s in specs2})
    if val_spec is not None:
        inputs[f"val:{val_spec.json}"] = file_sha256(val_spec.json)
    counts: dict[str, Any] = {
        "classes": len(names), "iterations": total,
        "images": {st.name: len(st.items) for st in stages},
        "instances_per_class": instances, "train_images_per_class": train_image_counts}
    write_manifest(out, stage="train", config=run_config, seed=config.seed, inputs=inputs,
                   counts=counts, status="running", extra={"notes": notes})

    weights = None if resume_from is not None else config.weights
    model, build_notes = build_model(model_config, weights=weights, seed=config.seed)
    for message in build_notes:
        note(message)
    start = 0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        start = int(resume_from["iteration"])
        _trim_metrics(out / "metrics.jsonl", start)
        note(f"resuming from {ckpt_dir / 'last.pt'} at iteration {start} of {total}")
    model.to(device).train()
    labels = {n: i + 1 for i, n in enumerate(names)}
    transform = tdata.train_transform(config.image_size, jitter=config.jitter,
                                      brightness=config.brightness, contrast=config.contrast,
                                      color_prob=config.color_prob, flip_prob=config.flip_prob)
    base = {"format": FORMAT, "format_version": FORMAT_VERSION, "weakpaste_version": __version__,
            "model_config": model_config.to_dict(), "config": run_config,
            "class_names": list(names), "train_image_counts": train_image_counts}

    iteration = start
    bar = tqdm(total=total, initial=start, desc="train", unit="it", disable=not progress,
               dynamic_ncols=True)
    log_path = out / "metrics.jsonl"
    try:
        for index, stage in enumerate(stages):
            if iteration >= stage.end:
                continue
            iteration = _train_stage(
                model, stage, index, config, labels, transform, device, iteration,
                resume_from, base, ckpt_dir, log_path, bar, on_iteration)
    finally:
        bar.close()

    metrics = None
    if val_spec is not None:
        from weakpaste.train.evaluation import evaluate_model

        metrics = evaluate_model(model, val_spec, out / "eval", class_names=names,
                                 train_image_counts=train_image_counts, device=device,
                                 source=str(ckpt_dir / "last.pt"), progress=progress)
        counts["eval"] = {iou: {k: metrics[iou][k] for k in ("AP", "AP50", "AP75")}
                          for iou in ("segm", "bbox")}
    return write_manifest(out, stage="train", config=run_config, seed=config.seed,
                          inputs=inputs, counts=counts, extra={"notes": notes})


def _check_resumable(path: Path, ckpt: Mapping, model_config: ModelConfig,
                     config: TrainConfig) -> None:
    saved = ModelConfig.from_dict(ckpt["model_config"])
    if saved.class_names != model_config.class_names:
        raise WeakpasteError(f"{path}: trained on other classes than the given data; resume "
                             "with the same --train/--stage2 data or choose another --out")
    for key in ("backbone", "image_size", "frozen_bn", "trainable_layers", "roi_batch",
                "rpn_proposals", "detections_per_image"):
        if getattr(saved, key) != getattr(model_config, key):
            raise WeakpasteError(f"{path}: checkpoint has {key}={getattr(saved, key)!r} but this "
                                 f"run asks {getattr(model_config, key)!r}; resume with the "
                                 "original options or choose another --out")
    old = ckpt.get("config", {})
    for key in ("batch_size", "seed", "repeat_threshold"):
        if key in old and old[key] != getattr(config, key):
            raise WeakpasteError(f"{path}: checkpoint was trained with {key}={old[key]!r} but "
                                 f"this run asks {getattr(config, key)!r}; resume with the "
                                 "original options or choose another --out")


def _train_stage(model: nn.Module, stage: _Stage, index: int, config: TrainConfig,
                 labels: Mapping[str, int], transform, device: torch.device, iteration: int,
                 resume_from: Mapping | None, base: Mapping, ckpt_dir: Path, log_path: Path,
                 bar, on_iteration) -> int:
    """Train one stage from global ``iteration`` to ``stage.end``; returns ``stage.end``."""
    dataset = tdata.InstanceDataset(stage.items, labels, transform)
    classes = [() if rec.instances is None else rec.instances.classes for _, rec in stage.items]
    factors = tdata.repeat_factors(classes, config.repeat_threshold)
    # Each stage samples from its own stream (seed * 2 + stage: distinct for every seed and
    # stage) so that stage 2 does not depend on stage 1's length.
    stream = tdata.IndexStream(factors, seed=config.seed * 2 + index)
    optimizer, scheduler = make_optimizer(model, config, stage.iterations)
    if (resume_from is not None and resume_from.get("stage") == index
            and stage.begin <= int(resume_from["iteration"]) < stage.end):
        try:
            optimizer.load_state_dict(resume_from["optimizer"])
            scheduler.load_state_dict(resume_from["scheduler"])
            stream.load_state_dict(resume_from["sampler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise WeakpasteError(f"{ckpt_dir / 'last.pt'}: cannot restore the optimizer or the "
                                 f"sampler ({_reason(err)}); resume with the original data "
                                 "and options or choose another --out") from None
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=tdata.BatchKeys(stream, config.batch_size,
                                               stage.end - iteration),
        collate_fn=tdata.collate, num_workers=config.workers)
    window: dict[str, float] = {}
    window_n, window_start, data_time = 0, time.perf_counter(), 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    fetch_start = time.perf_counter()
    try:
        for images, targets in loader:
            data_time += time.perf_counter() - fetch_start
            stream.take(config.batch_size)
            images = [img.to(device, non_blocking=True) for img in images]
            targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                        for k, v in t.items()} for t in targets]
            # Mask R-CNN samples anchors and RoIs with torch's global generator: a per-iteration
            # seed inside a forked generator makes a resumed run repeat the interrupted one.
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(_step_seed(config.seed, iteration))
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss.detach()):
                raise WeakpasteError(
                    f"training diverged at iteration {iteration + 1} (loss "
                    f"{loss.detach().item()}); "
                    f"lower --lr (now {config.lr}) or lengthen --warmup; rerun with --overwrite, "
                    f"or --resume from the last checkpoint in {ckpt_dir}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            iteration += 1
            values = {k: v.detach().item() for k, v in losses.items()}
            values["loss"] = loss.detach().item()
            for k, v in values.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            bar.update(1)
            bar.set_postfix(stage=index + 1, loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}",
                            refresh=False)
            if on_iteration is not None:
                on_iteration(iteration, {**values, "lr": lr})
            if window_n and (iteration % config.log_every == 0 or iteration == stage.end):
                elapsed = time.perf_counter() - window_start
                record = {"iteration": iteration, "stage": index + 1, "lr": lr,
                          **{k: window[k] / window_n for k in ("loss", *_LOSS_KEYS)
                             if k in window},
                          "it_per_s": window_n / elapsed if elapsed > 0 else None,
                          "data_time": data_time / window_n, "time": time.time()}
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                window, window_n, window_start, data_time = {}, 0, time.perf_counter(), 0.0
            if iteration % config.checkpoint_every == 0 or iteration == stage.end:
                path = ckpt_dir / _checkpoint_name(iteration)
                save_checkpoint(path, {**base, "iteration": iteration, "stage": index,
                                       "model": model.state_dict(),
                                       "optimizer": optimizer.state_dict(),
                                       "scheduler": scheduler.state_dict(),
                                       "sampler": stream.state_dict()})
                _link_or_copy(path, ckpt_dir / "last.pt")
            fetch_start = time.perf_counter()
    except WeakpasteError as err:
        raise WeakpasteError(tdata.worker_error_line(err)) from None
    return iteration


__all__ = ["BACKBONES", "ModelConfig", "TrainConfig", "build_model", "load_weights_file",
           "load_checkpoint", "model_from_checkpoint", "save_checkpoint", "lr_factor",
           "make_optimizer", "run_train", "resolve_device", "note"]
