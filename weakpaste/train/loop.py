"""Mask R-CNN training: the SGD schedule and the two-stage loop (``run_train``).

Iteration-based SGD with linear warm-up and step decay, repeat-factor sampling, large-scale
jittering; stage 1 on the ``train_sets`` (e.g. pasted data) and an optional stage 2 on the
``stage2`` sets (the original pseudo-labelled data) with a fresh optimizer and schedule
(FreeSeg §4.1, appendix A.5); checkpoints ``OUT/checkpoints/iter_XXXXXX.pt`` and ``last.pt``
written atomically; ``resume``; ``OUT/metrics.jsonl``; evaluation on ``val`` at the end.

A resumed run is bit-identical to an uninterrupted one: the sampler's state is checkpointed,
each stage samples from its own seeded stream, and every iteration seeds Mask R-CNN's own
sampling (anchors, RoIs) from (seed, iteration).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from weakpaste import __version__
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.errors import reason as _reason
from weakpaste.core.jsonfile import JsonError, parse_json
from weakpaste.core.manifest import (
    check_output_dir,
    check_resume,
    file_fingerprints,
    file_sha256,
    fingerprints_sha256,
    first_change,
    jsonable,
    prepare_output_dir,
    read_weakpaste_manifest,
    record_listing,
    recorded_listing,
    write_manifest,
)
from weakpaste.evaluate.detection import TrainingClasses, training_frequency
from weakpaste.models.backbones import torch_write_errors
from weakpaste.models.weights import is_default, is_none
from weakpaste.train import data as tdata
from weakpaste.train.config import EvalConfig, ModelConfig, TrainConfig
from weakpaste.train.evaluation import evaluate_model
from weakpaste.train.model import (
    FORMAT,
    FORMAT_VERSION,
    build_model,
    link_or_copy,
    load_checkpoint,
    model_config_for,
    resolve_device,
    save_checkpoint,
)

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
             "loss_rpn_box_reg")
Spec = str | tdata.DataSpec
Notify = Callable[[str], None] | None


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
    """SGD over the trainable parameters and its schedule for a stage of ``total`` iterations."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)

    def factor(i: int) -> float:
        return lr_factor(i, total, warmup_iters=config.warmup_iters,
                         warmup_factor=config.warmup_factor, steps=config.steps,
                         gamma=config.gamma)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --------------------------------------------------------------------------------------------
# What the data decide


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


@dataclass
class _Plan:
    """The stages, classes and counts that the input data decide, and notes about them."""

    specs1: list[tdata.DataSpec]
    specs2: list[tdata.DataSpec]
    val: tdata.DataSpec | None
    stages: list[_Stage]
    names: tuple[str, ...]
    instances: dict[str, int]
    train_image_counts: dict[str, int]
    train_frequency: dict[str, str] | None
    notes: list[str]

    @property
    def total(self) -> int:
        return self.stages[-1].end

    def input_paths(self) -> list[Path | None]:
        specs = self.specs1 + self.specs2 + ([self.val] if self.val is not None else [])
        return [p for s in specs for p in (s.json, s.images)]

    def image_fingerprints(self) -> dict[str, dict[str, list[int]]]:
        """Each stage's images read: path -> [size, modification time] (a stat each)."""
        return {st.name: file_fingerprints(Path(folder) / rec.file_name
                                           for folder, rec in st.items) for st in self.stages}

    def input_hashes(self, fingerprints: dict[str, dict[str, list[int]]]) -> dict[str, str]:
        inputs = {f"train:{s.json}": file_sha256(s.json) for s in self.specs1}
        inputs.update({f"stage2:{s.json}": file_sha256(s.json) for s in self.specs2})
        if self.val is not None:
            inputs[f"val:{self.val.json}"] = file_sha256(self.val.json)
        for name, listing in fingerprints.items():
            inputs[f"images:{name}"] = fingerprints_sha256(listing)
        return inputs


def _stages(config: TrainConfig, specs1: list, sets1: list, specs2: list, sets2: list,
            notes: list[str]) -> list[_Stage]:
    stages: list[_Stage] = []
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
    return stages


def _plan(config: TrainConfig, train_sets: Sequence[Spec], stage2: Sequence[Spec],
          val: Spec | None) -> _Plan:
    specs1 = [tdata.parse_data_spec(t, option="--train") for t in train_sets]
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
    stages = _stages(config, specs1, sets1, specs2, sets2, notes)
    instances = tdata.class_instance_counts([rec for st in stages for _, rec in st.items], names)
    empty = [n for n, k in instances.items() if k == 0]
    if empty:
        notes.append(f"{len(empty)} class(es) have no instance in the training data; the model "
                     f"keeps an output for them but cannot learn them: {tdata.name_list(empty)}")
    # Rare/common/frequent are defined on the original data: stage 2's when given, by its LVIS
    # frequencies when it is LVIS (a pasted LVIS set keeps its backgrounds').
    freq_records = [rec for ds in (sets2 or sets1) for rec in ds.records]
    if val_set is not None:
        notes += tdata.map_eval_categories(names, val_set)[1]
    return _Plan(specs1, specs2, val_spec, stages, names, instances,
                 tdata.class_image_counts(freq_records, names),
                 training_frequency(sets2 or sets1, names), notes)


# --------------------------------------------------------------------------------------------
# Resuming


def _check_resumable(path: Path, ckpt: Mapping, model_config: ModelConfig,
                     config: TrainConfig) -> None:
    saved = ModelConfig.from_dict(ckpt["model_config"])
    if saved.class_names != model_config.class_names:
        raise WeakpasteError(f"{path}: trained on other classes than the given data; resume "
                             "with the same --train/--stage2 data or choose another --out")
    was, now = saved.to_dict(), model_config.to_dict()
    for key in ("backbone", "image_size", "frozen_bn", "trainable_layers", "roi_batch",
                "rpn_proposals", "detections_per_image"):
        if was[key] != now[key]:
            raise WeakpasteError(f"{path}: checkpoint has {key}={was[key]!r} but this "
                                 f"run asks {now[key]!r}; resume with the "
                                 "original options or choose another --out")
    old = ckpt.get("config", {})
    for key in ("batch_size", "seed", "repeat_threshold"):
        if key in old and old[key] != getattr(config, key):
            raise WeakpasteError(f"{path}: checkpoint was trained with {key}={old[key]!r} but "
                                 f"this run asks {getattr(config, key)!r}; resume with the "
                                 "original options or choose another --out")


def _resume_point(ckpt_dir: Path, model_config: ModelConfig, config: TrainConfig,
                  notes: list[str]) -> dict | None:
    """The checkpoint ``last.pt`` to resume from, checked against this run; None if none."""
    last = ckpt_dir / "last.pt"
    if not last.is_file():
        notes.append(f"{last}: no checkpoint yet; training starts from the beginning")
        return None
    ckpt = load_checkpoint(last)
    _check_resumable(last, ckpt, model_config, config)
    return ckpt


def _check_inputs(out: Path, old: dict, inputs: dict[str, str],
                  fingerprints: dict[str, dict[str, list[int]]]) -> None:
    """Refuse to resume with other data than the run's (``_Plan.input_hashes``), naming the
    image that changed from the listing kept in ``OUT/.cache/images.json``; the options are
    checked against the checkpoint (``_check_resumable``)."""
    recorded = recorded_listing(out, "images") or {}

    def describe(key: str) -> tuple[str, str]:
        kind, _, name = key.partition(":")
        if kind == "images":
            return f"the {name} images", first_change(recorded.get(name),
                                                      fingerprints.get(name, {}))
        return f"the --{kind} file {name}", ""

    check_resume(out, {**old, "config": {}}, {}, inputs, describe=describe,
                 fingerprints=[k for k in inputs if k.startswith("images:")])


def _trim_metrics(path: Path, iteration: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = parse_json(line)
        except JsonError:
            continue  # a damaged line: the log is a record, not an input
        step = record.get("iteration", 0) if isinstance(record, dict) else None
        if isinstance(step, int | float) and step <= iteration:
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Run:
    """The state that one run's stages share."""

    config: TrainConfig
    model: nn.Module
    device: torch.device
    labels: dict[str, int]
    transform: Callable
    checkpoint_base: dict
    ckpt_dir: Path
    log_path: Path
    bar: Any
    resume_from: Mapping | None = None
    on_iteration: Callable[[int, dict], None] | None = None
    iteration: int = 0


@dataclass
class _LogWindow:
    """Losses averaged over the iterations since the last ``metrics.jsonl`` line."""

    sums: dict[str, float] = field(default_factory=dict)
    n: int = 0
    start: float = field(default_factory=time.perf_counter)
    data_time: float = 0.0

    def add(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def record(self, iteration: int, stage: int, lr: float) -> dict:
        elapsed = time.perf_counter() - self.start
        return {"iteration": iteration, "stage": stage, "lr": lr,
                **{k: self.sums[k] / self.n for k in ("loss", *LOSS_KEYS) if k in self.sums},
                "it_per_s": self.n / elapsed if elapsed > 0 else None,
                "data_time": self.data_time / self.n, "time": time.time()}


def _step_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, 7919, iteration]).generate_state(1)[0])


def _checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:06d}.pt"


def _stage_state(run: _Run, stage: _Stage, index: int):
    """(sampler stream, optimizer, scheduler) of a stage, restored when resuming inside it."""
    classes = [() if rec.instances is None else rec.instances.classes for _, rec in stage.items]
    factors = tdata.repeat_factors(classes, run.config.repeat_threshold)
    # Each stage samples from its own stream (seed * 2 + stage: distinct for every seed and
    # stage) so that stage 2 does not depend on stage 1's length.
    stream = tdata.IndexStream(factors, seed=run.config.seed * 2 + index)
    optimizer, scheduler = make_optimizer(run.model, run.config, stage.iterations)
    ckpt = run.resume_from
    if (ckpt is not None and ckpt.get("stage") == index
            and stage.begin <= int(ckpt["iteration"]) < stage.end):
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            stream.load_state_dict(ckpt["sampler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise WeakpasteError(f"{run.ckpt_dir / 'last.pt'}: cannot restore the optimizer or "
                                 f"the sampler ({_reason(err)}); resume with the original data "
                                 "and options or choose another --out") from None
    return stream, optimizer, scheduler


def _step(run: _Run, images: list, targets: list, optimizer, scheduler,
          params: list) -> tuple[dict[str, float], float]:
    """One SGD step; returns (the losses as floats, the learning rate it used)."""
    config, device = run.config, run.device
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]
    # Mask R-CNN samples anchors and RoIs with torch's global generator: a per-iteration seed
    # inside a forked generator makes a resumed run repeat the interrupted one.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(_step_seed(config.seed, run.iteration))
        losses = run.model(images, targets)
    loss = sum(losses.values())
    if not torch.isfinite(loss.detach()):
        raise WeakpasteError(
            f"training diverged at iteration {run.iteration + 1} (loss {loss.detach().item()}); "
            f"lower --lr (now {config.lr}) or lengthen --warmup; rerun with --overwrite, or "
            f"--resume from the last checkpoint in {run.ckpt_dir}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    values = {k: v.detach().item() for k, v in losses.items()}
    values["loss"] = loss.detach().item()
    return values, lr


def _train_stage(run: _Run, stage: _Stage, index: int) -> None:
    """Train one stage from ``run.iteration`` to ``stage.end``."""
    config = run.config
    stream, optimizer, scheduler = _stage_state(run, stage, index)
    loader = torch.utils.data.DataLoader(
        tdata.InstanceDataset(stage.items, run.labels, run.transform),
        batch_sampler=tdata.BatchKeys(stream, config.batch_size, stage.end - run.iteration),
        collate_fn=tdata.collate, num_workers=config.workers)
    window = _LogWindow()
    params = [p for p in run.model.parameters() if p.requires_grad]
    fetch_start = time.perf_counter()
    for images, targets in loader:
        window.data_time += time.perf_counter() - fetch_start
        stream.take(config.batch_size)
        values, lr = _step(run, images, targets, optimizer, scheduler, params)
        run.iteration += 1
        window.add(values)
        run.bar.update(1)
        run.bar.set_postfix(stage=index + 1, loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}",
                            refresh=False)
        if run.on_iteration is not None:
            run.on_iteration(run.iteration, {**values, "lr": lr})
        if window.n and (run.iteration % config.log_every == 0 or run.iteration == stage.end):
            with open(run.log_path, "a") as fh:
                fh.write(json.dumps(window.record(run.iteration, index + 1, lr)) + "\n")
            window = _LogWindow()
        if run.iteration % config.checkpoint_every == 0 or run.iteration == stage.end:
            path = run.ckpt_dir / _checkpoint_name(run.iteration)
            payload = {**run.checkpoint_base, "iteration": run.iteration, "stage": index,
                       "model": run.model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "sampler": stream.state_dict()}
            with torch_write_errors(run.ckpt_dir, payload):
                save_checkpoint(path, payload)
            link_or_copy(path, run.ckpt_dir / "last.pt")
        fetch_start = time.perf_counter()


# --------------------------------------------------------------------------------------------
# The stage


def _tell(messages: Sequence[str], on_note: Notify) -> None:
    """Pass remarks on as they happen (the caller keeps them for the manifest)."""
    for message in messages:
        if on_note is not None:
            on_note(message)


def _initial_model(run_config: TrainConfig, model_config: ModelConfig, resume_from,
                   out: Path, total: int, notes: list[str], on_note: Notify,
                   built: tuple[nn.Module, list[str]] | None = None) -> tuple[nn.Module, int]:
    """The model to start from (``built``, built here, or restored from ``resume_from``) and
    its iteration."""
    weights = None if resume_from is not None else run_config.weights
    model, build_notes = built or build_model(model_config, weights=weights,
                                              seed=run_config.seed)
    notes += build_notes
    _tell(build_notes, on_note)
    if resume_from is None:
        return model, 0
    model.load_state_dict(resume_from["model"])
    start = int(resume_from["iteration"])
    _trim_metrics(out / "metrics.jsonl", start)
    notes.append(f"resuming from {out / 'checkpoints' / 'last.pt'} at iteration {start} of "
                 f"{total}")
    _tell(notes[-1:], on_note)
    return model, start


def _weights_path(weights: str | os.PathLike | None) -> str | os.PathLike | None:
    return None if is_none(weights) or is_default(weights) else weights


def run_train(config: TrainConfig, train_sets: Sequence[Spec], out_dir: str | os.PathLike, *,
              val: Spec | None = None, stage2: Sequence[Spec] = (), overwrite: bool = False,
              resume: bool = False, progress: bool = True,
              on_iteration: Callable[[int, dict], None] | None = None,
              on_note: Notify = None) -> dict:
    """Train Mask R-CNN on COCO data sets and evaluate it on ``val``.

    Args:
        config: options.
        train_sets: stage-1 sets as ``COCO_JSON:IMAGES_DIR`` (several are concatenated;
            classes are matched by name).
        out_dir: output folder: ``checkpoints/``, ``metrics.jsonl``, ``manifest.json`` and,
            with ``val``, ``eval/metrics.json``.
        val: the evaluation set (optional).
        stage2: stage-2 sets (the original pseudo-labelled data); trained for
            ``config.stage2_iterations`` (default: ``config.iterations``) after stage 1.
        overwrite: replace an existing output.
        resume: continue from ``OUT/checkpoints/last.pt``.
        progress: tqdm progress bar.
        on_iteration: called as ``on_iteration(iteration, log)`` after every iteration
            (iteration counts from 1; ``log`` holds the losses and the learning rate).
        on_note: called with each remark about the input or the run as it is made (they are
            also kept in the manifest's ``notes``).

    Returns:
        The run's manifest (``counts`` holds iterations, images and, with ``val``, the
        evaluation summary; ``notes`` the remarks).

    Raises:
        WeakpasteError: bad input or options, an unusable checkpoint, or a diverged loss.
    """
    from tqdm import tqdm

    device = resolve_device(config.device)
    plan = _plan(config, train_sets, stage2, val)
    model_config = model_config_for(config, plan.names)
    input_paths = [*plan.input_paths(), _weights_path(config.weights)]
    check_output_dir(out_dir, overwrite=overwrite, resume=resume, stage="train",
                     inputs=input_paths)
    # A new run builds its model before it makes its folder: an unusable --weights file is
    # refused with nothing written (it left a 'running' run behind).
    built = None if resume else build_model(model_config, weights=config.weights,
                                            seed=config.seed)
    out = prepare_output_dir(out_dir, overwrite=overwrite, resume=resume, stage="train",
                             inputs=input_paths)
    fingerprints = plan.image_fingerprints()
    inputs = plan.input_hashes(fingerprints)
    old = read_weakpaste_manifest(out) if resume else None
    if old is not None:
        _check_inputs(out, old, inputs, fingerprints)
    record_listing(out, "images", fingerprints)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    notes = list(plan.notes)
    resume_from = _resume_point(ckpt_dir, model_config, config, notes) if resume else None
    _tell(notes, on_note)
    run_config = jsonable({**config.to_dict(), "train": [str(s) for s in plan.specs1],
                             "stage2": [str(s) for s in plan.specs2],
                             "val": str(plan.val) if plan.val else None})
    counts: dict[str, Any] = {
        "classes": len(plan.names), "iterations": plan.total,
        "images": {st.name: len(st.items) for st in plan.stages},
        "instances_per_class": plan.instances, "train_images_per_class": plan.train_image_counts}
    manifest = dict(stage="train", config=run_config, seed=config.seed, inputs=inputs,
                    counts=counts)
    write_manifest(out, **manifest, status="running", extra={"notes": notes})

    model, start = _initial_model(config, model_config, resume_from, out, plan.total, notes,
                                  on_note, built)
    model.to(device).train()
    base = {"format": FORMAT, "format_version": FORMAT_VERSION, "weakpaste_version": __version__,
            "model_config": model_config.to_dict(), "config": run_config,
            "class_names": list(plan.names), "train_image_counts": plan.train_image_counts,
            "train_frequency": plan.train_frequency}
    bar = tqdm(total=plan.total, initial=start, desc="train", unit="it", disable=not progress,
               dynamic_ncols=True)
    run = _Run(config=config, model=model, device=device,
               labels={n: i + 1 for i, n in enumerate(plan.names)},
               transform=tdata.train_transform(
                   config.model.image_size, jitter=config.jitter, brightness=config.brightness,
                   contrast=config.contrast, color_prob=config.color_prob,
                   flip_prob=config.flip_prob),
               checkpoint_base=base, ckpt_dir=ckpt_dir, log_path=out / "metrics.jsonl", bar=bar,
               resume_from=resume_from, on_iteration=on_iteration, iteration=start)
    try:
        for index, stage in enumerate(plan.stages):
            if run.iteration < stage.end:
                _train_stage(run, stage, index)
    except WeakpasteError as err:
        raise WeakpasteError(tdata.worker_error_line(err)) from None
    finally:
        bar.close()

    if plan.val is not None:
        metrics = evaluate_model(model, plan.val, out / "eval", class_names=plan.names,
                                 training=TrainingClasses(plan.train_image_counts,
                                                          plan.train_frequency),
                                 config=EvalConfig(device=config.device),
                                 source=str(ckpt_dir / "last.pt"), progress=progress)
        counts["eval"] = {iou: {k: metrics[iou][k] for k in ("AP", "AP50", "AP75")}
                          for iou in ("segm", "bbox")}
    return write_manifest(out, **manifest, extra={"notes": notes})


__all__ = ["LOSS_KEYS", "lr_factor", "make_optimizer", "run_train"]
