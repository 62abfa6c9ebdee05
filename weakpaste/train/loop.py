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
from weakpaste.core.manifest import (
    record_listing,
)
from weakpaste.core.options import flag_of, option
from weakpaste.core.run import OUT, OVERWRITE, RESUME, RunOptions, StageInputs, StageRun
from weakpaste.evaluate.detection import TrainingClasses
from weakpaste.models.backbones import torch_write_errors
from weakpaste.models.weights import is_default, is_none
from weakpaste.train import data as tdata
from weakpaste.train.config import EvalConfig, ModelConfig, TrainConfig
from weakpaste.train.data import STAGE2_FLAG, TRAIN_FLAG, VAL_FLAG
from weakpaste.train.evaluation import evaluate_model
from weakpaste.train.model import (
    FORMAT,
    FORMAT_VERSION,
    build_model,
    link_or_copy,
    model_config_for,
    resolve_device,
    save_checkpoint,
)
from weakpaste.train.plan import Spec, TrainPlan, TrainStage, make_plan
from weakpaste.train.resume import check_inputs, resume_point, trim_metrics

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
             "loss_rpn_box_reg")
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


def _stage_state(run: _Run, stage: TrainStage, index: int):
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
                                 f"and options or choose another {OUT}") from None
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
            f"lower {flag_of(TrainConfig, 'lr')} (now {config.lr}) or lengthen "
            f"{flag_of(TrainConfig, 'warmup_iters')}; rerun with {OVERWRITE}, or {RESUME} from "
            f"the last checkpoint in {run.ckpt_dir}")
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


def _train_stage(run: _Run, stage: TrainStage, index: int) -> None:
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
    trim_metrics(out / "metrics.jsonl", start)
    notes.append(f"resuming from {out / 'checkpoints' / 'last.pt'} at iteration {start} of "
                 f"{total}")
    _tell(notes[-1:], on_note)
    return model, start


def _weights_path(weights: str | os.PathLike | None) -> str | os.PathLike | None:
    return None if is_none(weights) or is_default(weights) else weights


@dataclass(frozen=True)
class TrainInputs(StageInputs):
    """The inputs of ``train``, each ``COCO_JSON:IMAGES_DIR``.

    Attributes:
        train: stage-1 sets (several are concatenated; classes are matched by name).
        stage2: stage-2 sets (the original pseudo-labelled data); trained for
            ``TrainConfig.stage2_iterations`` (default: ``iterations``) after stage 1.
        val: the evaluation set (optional): ``OUT/eval/metrics.json``.
    """

    train: Sequence[Spec] = option(
        repeat=True, flag=TRAIN_FLAG, metavar="COCO_JSON:IMAGES_DIR",
        help="training set (stage 1, e.g. pasted data); repeat to concatenate")
    stage2: Sequence[Spec] = option(
        (), repeat=True, flag=STAGE2_FLAG, metavar="COCO_JSON:IMAGES_DIR",
        help="stage-2 set (the original pseudo-labelled data), trained after stage 1 with a "
             "fresh schedule (FreeSeg §4.1); repeatable")
    val: Spec | None = option(None, flag=VAL_FLAG, metavar="COCO_JSON:IMAGES_DIR",
                              help="evaluate the final model on this set (OUT/eval/metrics.json)")


def run_train(config: TrainConfig, inputs: TrainInputs, run: RunOptions, *,
              on_iteration: Callable[[int, dict], None] | None = None,
              on_note: Notify = None) -> dict:
    """Train Mask R-CNN on COCO data sets and evaluate it on ``inputs.val``.

    Args:
        config: options.
        inputs: the training sets and the evaluation set.
        run: output folder (``checkpoints/``, ``metrics.jsonl``, ``manifest.json`` and, with
            ``val``, ``eval/metrics.json``), ``overwrite``, ``resume`` (continue from
            ``OUT/checkpoints/last.pt``) and ``quiet`` (its DataLoader workers are a
            ``TrainConfig`` setting).
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
    device = resolve_device(config.device)
    plan = make_plan(config, inputs.train, inputs.stage2, inputs.val)
    model_config = model_config_for(config, plan.names)
    notes, resumed = list(plan.notes), {}
    with StageRun("train", run, inputs=[*plan.input_paths(),
                                        _weights_path(config.weights)]) as stage:
        # A new run builds its model before it makes its folder: an unusable --weights file
        # is refused with nothing written (it left a 'running' run behind).
        built = None if run.resume else build_model(model_config, weights=config.weights,
                                                    seed=config.seed)
        fingerprints = plan.image_fingerprints()
        hashes = plan.input_hashes(fingerprints)

        def resume_check(out: Path, old: dict) -> None:
            check_inputs(out, old, hashes, fingerprints)
            resumed["from"] = resume_point(out / "checkpoints", model_config, config, notes)

        run_config = plan.manifest_config(config)
        out = stage.start(run_config, seed=config.seed, inputs=hashes,
                          resume_check=resume_check, extra={"notes": notes})
        record_listing(out, "images", fingerprints)
        (out / "checkpoints").mkdir(exist_ok=True)
        _tell(notes, on_note)
        model, start = _initial_model(config, model_config, resumed.get("from"), out,
                                      plan.total, notes, on_note, built)
        base = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "weakpaste_version": __version__, "model_config": model_config.to_dict(),
                "config": run_config, "class_names": list(plan.names),
                "train_image_counts": plan.train_image_counts,
                "train_frequency": plan.train_frequency}
        _train_all(config, plan, model.to(device), device, out, base, start,
                   resumed.get("from"), progress=run.progress, on_iteration=on_iteration)
        counts = plan.counts()
        if plan.val is not None:
            counts["eval"] = _evaluate(config, plan, model, out, progress=run.progress)
        return stage.finish(counts, extra={"notes": notes})


def _train_all(config: TrainConfig, plan: TrainPlan, model: nn.Module, device, out: Path,
               base: dict, start: int, resume_from: dict | None, *, progress: bool,
               on_iteration: Callable[[int, dict], None] | None) -> None:
    """Train every stage from iteration ``start`` on."""
    from tqdm import tqdm

    model.train()
    bar = tqdm(total=plan.total, initial=start, desc="train", unit="it", disable=not progress,
               dynamic_ncols=True)
    state = _Run(config=config, model=model, device=device,
                 labels={n: i + 1 for i, n in enumerate(plan.names)},
                 transform=tdata.train_transform(
                     config.model.image_size, jitter=config.jitter, brightness=config.brightness,
                     contrast=config.contrast, color_prob=config.color_prob,
                     flip_prob=config.flip_prob),
                 checkpoint_base=base, ckpt_dir=out / "checkpoints",
                 log_path=out / "metrics.jsonl", bar=bar, resume_from=resume_from,
                 on_iteration=on_iteration, iteration=start)
    try:
        for index, stage in enumerate(plan.stages):
            if state.iteration < stage.end:
                _train_stage(state, stage, index)
    except WeakpasteError as err:
        raise WeakpasteError(tdata.worker_error_line(err)) from None
    finally:
        bar.close()


def _evaluate(config: TrainConfig, plan: TrainPlan, model: nn.Module, out: Path, *,
              progress: bool) -> dict:
    """Evaluate the final model on ``plan.val`` into ``OUT/eval``; returns the summary."""
    metrics = evaluate_model(model, plan.val, out / "eval", class_names=plan.names,
                             training=TrainingClasses(plan.train_image_counts,
                                                      plan.train_frequency),
                             config=EvalConfig(device=config.device),
                             source=str(out / "checkpoints" / "last.pt"), progress=progress)
    return {iou: {k: metrics[iou][k] for k in ("AP", "AP50", "AP75")}
            for iou in ("segm", "bbox")}


__all__ = ["LOSS_KEYS", "lr_factor", "make_optimizer", "TrainInputs", "run_train"]
