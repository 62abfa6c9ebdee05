"""weakpaste.train.loop: the schedule, the training loop, its log, checkpoints and resume."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from train_helpers import LAYOUTS, one_torch_thread, tiny_train_config, write_tiny_coco

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.train import loop as E
from weakpaste.train.model import load_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def test_lr_factor_warms_up_then_steps_down():
    kw = dict(warmup_iters=10, warmup_factor=0.001, steps=(0.5, 0.75), gamma=0.1)
    assert E.lr_factor(0, 100, **kw) == pytest.approx(0.001)
    assert E.lr_factor(5, 100, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert E.lr_factor(10, 100, **kw) == 1.0
    assert E.lr_factor(49, 100, **kw) == 1.0
    assert E.lr_factor(50, 100, **kw) == pytest.approx(0.1)
    assert E.lr_factor(99, 100, **kw) == pytest.approx(0.01)


def test_tiny_overfit_loss_falls(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    losses = []
    manifest = E.run_train(tiny_train_config(iterations=6, checkpoint_every=100),
                           E.TrainInputs(train=[f"{path}:{images}"]),
                           RunOptions(out=tmp_path / "run", quiet=True),
                           on_iteration=lambda it, log: losses.append(log["loss"]))
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < 0.6 * losses[0], losses
    assert manifest["status"] == "complete" and manifest["counts"]["iterations"] == 6
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
           .splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "loss_mask", "loss_classifier", "lr", "it_per_s"} <= set(log[0])
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["iter_000006.pt", "last.pt"]


def test_resume_continues_from_the_saved_iteration(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    config = tiny_train_config(iterations=4, checkpoint_every=2, jitter=(0.5, 1.5),
                               flip_prob=0.5, color_prob=0.5)
    E.run_train(config, E.TrainInputs(train=[f"{path}:{images}"]),
                RunOptions(out=tmp_path / "a", quiet=True))
    # Interrupted after the checkpoint of iteration 2: later files never got written.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ckpt = tmp_path / "b" / "checkpoints"
    (ckpt / "iter_000004.pt").unlink()
    os.replace(ckpt / "iter_000002.pt", ckpt / "last.pt")
    seen = []
    E.run_train(config, E.TrainInputs(train=[f"{path}:{images}"]),
                RunOptions(out=tmp_path / "b", resume=True, quiet=True),
                on_iteration=lambda it, log: seen.append(it))
    assert seen == [3, 4]
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(ckpt / "last.pt")
    assert b["iteration"] == 4 and b["sampler"] == a["sampler"]
    for key, value in a["model"].items():  # the same samples, seeds and optimizer state
        assert torch.equal(value, b["model"][key]), key
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3, 4]
    with pytest.raises(WeakpasteError, match="checkpoint has image_size=64 but this run asks 96"):
        E.run_train(tiny_train_config(image_size=96), E.TrainInputs(train=[f"{path}:{images}"]),
                    RunOptions(out=tmp_path / "b", resume=True, quiet=True))


def test_training_data_without_instances_is_refused(tmp_path):
    path, images = write_tiny_coco(tmp_path, layouts=((), ()))
    with pytest.raises(WeakpasteError) as err:
        E.run_train(tiny_train_config(), E.TrainInputs(train=[f"{path}:{images}"]),
                    RunOptions(out=tmp_path / "run", quiet=True))
    assert str(err.value) == (f"{path}: no instance to learn from in the stage 1 data; check "
                              "that its annotations carry segmentations")
    assert not (tmp_path / "run").exists()


def test_an_output_inside_an_input_is_refused(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    weights = tmp_path / "weights" / "w.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"x")
    for out, given in ((images / "run", images), (weights.parent, weights)):
        with pytest.raises(WeakpasteError) as err:
            E.run_train(tiny_train_config(weights=str(weights)),
                        E.TrainInputs(train=[f"{path}:{images}"]), RunOptions(out=out, quiet=True))
        assert str(err.value) == (f"{out}: the output folder overlaps the input {given}; "
                                  "choose an --out outside every input")
    assert sorted(p.name for p in weights.parent.iterdir()) == ["w.pt"]
    assert not (images / "run").exists()


def test_notes_are_passed_on_and_kept(tmp_path):
    layouts = ((), *LAYOUTS)
    path, images = write_tiny_coco(tmp_path, layouts=layouts, categories=("a", "b", "c"))
    seen = []
    manifest = E.run_train(tiny_train_config(iterations=1),
                           E.TrainInputs(train=[f"{path}:{images}"]),
                           RunOptions(out=tmp_path / "run", quiet=True), on_note=seen.append)
    assert seen == manifest["notes"] == [
        "stage 1: 1 image(s) without annotations left out (pass --keep-empty to train on them "
        "as background)",
        "1 class(es) have no instance in the training data; the model keeps an output for them "
        "but cannot learn them: 'c'"]
