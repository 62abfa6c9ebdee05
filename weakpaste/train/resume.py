"""Resuming a training run: the checkpoint to resume from, checked against this run, and the
refusal of changed data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.jsonfile import JsonError, parse_json
from weakpaste.core.manifest import check_resume, first_change, recorded_listing
from weakpaste.core.run import OUT
from weakpaste.train.config import ModelConfig, TrainConfig
from weakpaste.train.data import STAGE2_FLAG, TRAIN_FLAG
from weakpaste.train.model import load_checkpoint


def _check_resumable(path: Path, ckpt: Mapping, model_config: ModelConfig,
                     config: TrainConfig) -> None:
    saved = ModelConfig.from_dict(ckpt["model_config"])
    if saved.class_names != model_config.class_names:
        data = f"{TRAIN_FLAG}/{STAGE2_FLAG}"
        raise WeakpasteError(f"{path}: trained on other classes than the given data; resume "
                             f"with the same {data} data or choose another {OUT}")
    was, now = saved.to_dict(), model_config.to_dict()
    for key in ("backbone", "image_size", "frozen_bn", "trainable_layers", "roi_batch",
                "rpn_proposals", "detections_per_image"):
        if was[key] != now[key]:
            raise WeakpasteError(f"{path}: checkpoint has {key}={was[key]!r} but this "
                                 f"run asks {now[key]!r}; resume with the "
                                 f"original options or choose another {OUT}")
    old = ckpt.get("config", {})
    for key in ("batch_size", "seed", "repeat_threshold"):
        if key in old and old[key] != getattr(config, key):
            raise WeakpasteError(f"{path}: checkpoint was trained with {key}={old[key]!r} but "
                                 f"this run asks {getattr(config, key)!r}; resume with the "
                                 f"original options or choose another {OUT}")


def resume_point(ckpt_dir: Path, model_config: ModelConfig, config: TrainConfig,
                  notes: list[str]) -> dict | None:
    """The checkpoint ``last.pt`` to resume from, checked against this run; None if none."""
    last = ckpt_dir / "last.pt"
    if not last.is_file():
        notes.append(f"{last}: no checkpoint yet; training starts from the beginning")
        return None
    ckpt = load_checkpoint(last)
    _check_resumable(last, ckpt, model_config, config)
    return ckpt


def check_inputs(out: Path, old: dict, inputs: dict[str, str],
                  fingerprints: dict[str, dict[str, list[int]]]) -> None:
    """Refuse to resume with other data than the run's (``TrainPlan.input_hashes``), naming the
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


def trim_metrics(path: Path, iteration: int) -> None:
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
