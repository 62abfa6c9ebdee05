"""weakpaste.train.engine: models, weights, schedule, the training loop, checkpoints, resume."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error

import pytest
import torch
from train_helpers import one_torch_thread, tiny_train_config, write_tiny_coco

from weakpaste.errors import WeakpasteError
from weakpaste.train import engine as E


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _config(backbone: str = "mobilenet_v3", frozen: bool = False) -> E.ModelConfig:
    return E.ModelConfig(backbone=backbone, class_names=("a", "b"), image_size=64,
                         frozen_bn=frozen, trainable_layers=3, roi_batch=32, rpn_proposals=64)


def test_lr_factor_warms_up_then_steps_down():
    kw = dict(warmup_iters=10, warmup_factor=0.001, steps=(0.5, 0.75), gamma=0.1)
    assert E.lr_factor(0, 100, **kw) == pytest.approx(0.001)
    assert E.lr_factor(5, 100, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert E.lr_factor(10, 100, **kw) == 1.0
    assert E.lr_factor(49, 100, **kw) == 1.0
    assert E.lr_factor(50, 100, **kw) == pytest.approx(0.1)
    assert E.lr_factor(99, 100, **kw) == pytest.approx(0.01)


@pytest.mark.parametrize("backbone", ["mobilenet_v3", "resnet50"])
def test_build_model_predicts_masks_of_the_image_size(backbone):
    model, notes = E.build_model(_config(backbone), weights=None, seed=1)
    assert notes == []
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    model.eval()
    with torch.inference_mode():
        out = model([torch.rand(3, 48, 64)])[0]
    n = len(out["scores"])
    assert out["boxes"].shape == (n, 4) and out["labels"].shape == (n,)
    assert out["masks"].shape == (n, 1, 48, 64)
    again, _ = E.build_model(_config(backbone), weights=None, seed=1)
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(model.state_dict()[key], again.state_dict()[key])


def test_default_weights_offline_is_one_clear_line(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeakpasteError) as err:
        E.build_model(_config(frozen=True), weights="DEFAULT")
    assert str(err.value) == (
        "could not get torchvision's DEFAULT ImageNet weights for mobilenet_v3 (<urlopen error "
        "[Errno -3] Temporary failure in name resolution>); on a machine without internet pass "
        "--weights none or --weights PATH to a local state_dict")


def test_weights_from_a_torchvision_backbone_state_dict(tmp_path):
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        classifier = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mbv3.pth"
    torch.save(classifier.state_dict(), path)
    model, notes = E.build_model(_config(frozen=True), weights=str(path))
    assert notes == [f"backbone initialised from {path} (262 tensors)"]
    torch.testing.assert_close(model.backbone.body.state_dict()["1.block.0.0.weight"],
                               classifier.state_dict()["features.1.block.0.0.weight"])


def test_weights_from_a_detector_with_other_classes(tmp_path):
    other = E.ModelConfig(backbone="mobilenet_v3", class_names=("x", "y", "z"), image_size=64,
                          frozen_bn=True, roi_batch=32, rpn_proposals=64)
    source, _ = E.build_model(other, seed=4)
    path = tmp_path / "det.pth"
    torch.save(source.state_dict(), path)
    model, notes = E.build_model(_config(frozen=True), weights=str(path))
    # cls_score, bbox_pred and mask_fcn_logits (weight and bias) depend on the classes.
    assert notes == [f"loaded 290 of 296 tensors from {path}; 6 with another shape "
                     "(class-specific heads) keep their initial values"]
    key = "rpn.head.conv.0.0.weight"
    assert torch.equal(model.state_dict()[key], source.state_dict()[key])


def test_unusable_weights_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeakpasteError, match=r"garbage.pth: not a readable weights file \("):
        E.build_model(_config(), weights=str(garbage))
    import torchvision

    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(WeakpasteError) as err:
        E.build_model(_config(), weights=str(wrong))
    assert str(err.value).startswith(f"{wrong}: neither a Mask R-CNN state_dict nor one of "
                                     "torchvision's mobilenet_v3_large (")


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04truncated")
    fix = "pass a checkpoint written by 'weakpaste train' (e.g. OUT/checkpoints/last.pt)"
    with pytest.raises(WeakpasteError) as err:
        E.load_checkpoint(bad)
    assert str(err.value).startswith(f"{bad}: not a readable checkpoint (")
    assert str(err.value).endswith(fix)
    torch.save({"model": {}}, bad)
    with pytest.raises(WeakpasteError) as err:
        E.load_checkpoint(bad)
    assert str(err.value) == f"{bad}: not a weakpaste Mask R-CNN checkpoint; {fix}"
    with pytest.raises(WeakpasteError) as err:
        E.load_checkpoint(tmp_path / "none.pt")
    assert str(err.value) == f"{tmp_path / 'none.pt'}: checkpoint not found; {fix}"


def test_tiny_overfit_loss_falls(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    losses = []
    manifest = E.run_train([f"{path}:{images}"], tmp_path / "run",
                           tiny_train_config(iterations=6, checkpoint_every=100),
                           progress=False, on_iteration=lambda it, log: losses.append(log["loss"]))
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
    E.run_train([f"{path}:{images}"], tmp_path / "a", config, progress=False)
    # Interrupted after the checkpoint of iteration 2: later files never got written.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ckpt = tmp_path / "b" / "checkpoints"
    (ckpt / "iter_000004.pt").unlink()
    os.replace(ckpt / "iter_000002.pt", ckpt / "last.pt")
    seen = []
    E.run_train([f"{path}:{images}"], tmp_path / "b", config, resume=True, progress=False,
                on_iteration=lambda it, log: seen.append(it))
    assert seen == [3, 4]
    a = E.load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = E.load_checkpoint(ckpt / "last.pt")
    assert b["iteration"] == 4 and b["sampler"] == a["sampler"]
    for key, value in a["model"].items():  # the same samples, seeds and optimizer state
        assert torch.equal(value, b["model"][key]), key
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3, 4]
    with pytest.raises(WeakpasteError, match="checkpoint has image_size=64 but this run asks 96"):
        E.run_train([f"{path}:{images}"], tmp_path / "b", tiny_train_config(image_size=96),
                    resume=True, progress=False)


def test_training_data_without_instances_is_refused(tmp_path):
    path, images = write_tiny_coco(tmp_path, layouts=((), ()))
    with pytest.raises(WeakpasteError) as err:
        E.run_train([f"{path}:{images}"], tmp_path / "run", tiny_train_config(), progress=False)
    assert str(err.value) == (f"{path}: no instance to learn from in the stage 1 data; check "
                              "that its annotations carry segmentations")
    assert not (tmp_path / "run").exists()


def test_bad_options_are_named():
    with pytest.raises(WeakpasteError, match=r"--backbone vgg is not supported; choose resnet50 "
                                             r"or mobilenet_v3"):
        tiny_train_config(backbone="vgg").validate()
    with pytest.raises(WeakpasteError, match=r"--steps are fractions"):
        tiny_train_config(steps=(0.5, 2.0)).validate()
    with pytest.raises(WeakpasteError, match="--device cuda: no CUDA device"):
        if torch.cuda.is_available():
            raise WeakpasteError("--device cuda: no CUDA device (skipped: CUDA is here)")
        E.resolve_device("cuda")
