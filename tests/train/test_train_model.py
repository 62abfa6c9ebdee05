"""weakpaste.train.model: construction, initial weights, checkpoints and the device."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from train_helpers import one_torch_thread, tiny_train_config

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import build
from weakpaste.train import model as E
from weakpaste.train.config import ModelConfig


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _config(backbone: str = "mobilenet_v3", frozen: bool = False) -> ModelConfig:
    return build(ModelConfig, backbone=backbone, class_names=("a", "b"), image_size=64,
                 frozen_bn=frozen, trainable_layers=3, roi_batch=32, rpn_proposals=64)


@pytest.mark.parametrize("backbone", ["mobilenet_v3", "mobilenet_v2", "resnet50", "resnet18"])
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


def test_resnet18_trains_one_step_on_feature_maps_of_strides_4_to_32():
    config = _config("resnet18").replace(trainable_layers=5)  # from scratch
    model, _ = E.build_model(config, weights=None, seed=1)
    features = model.backbone(torch.rand(1, 3, 64, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in features.items()} == {
        "0": (16, 16), "1": (8, 8), "2": (4, 4), "3": (2, 2), "pool": (1, 1)}
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:40, 20:50] = 1
    target = {"boxes": torch.tensor([[20.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([2]),
              "masks": masks}
    losses = model([torch.rand(3, 64, 64)], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                           "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    grad = model.backbone.body.conv1.weight.grad  # the stem trains too (trainable_layers 5)
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(("backbone", "name"), [("mobilenet_v3", "mobilenet_v3_large"),
                                                ("mobilenet_v2", "mobilenet_v2"),
                                                ("resnet18", "resnet18")])
def test_default_weights_offline_is_one_clear_line(monkeypatch, backbone, name):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeakpasteError) as err:
        E.build_model(_config(backbone, frozen=True), weights="DEFAULT")
    assert str(err.value) == (
        f"could not load torchvision's DEFAULT weights for {name} (<urlopen error "
        "[Errno -3] Temporary failure in name resolution>); on a machine without internet pass "
        "--weights PATH to a local state_dict or --weights none")


def _one_step(model, size: int = 64) -> dict:
    """One training forward/backward on a 64-pixel image with one instance; the losses."""
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, 10:40, 20:50] = 1
    target = {"boxes": torch.tensor([[20.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([2]),
              "masks": masks}
    losses = model([torch.rand(3, size, size)], [target])
    sum(losses.values()).backward()
    return {k: float(v.detach()) for k, v in losses.items()}


def test_mobilenet_v2_fpn_levels_and_frozen_stages():
    # FPN over the stride-8/16/32 stages (+ the max-pooled stride 64), 256 channels each.
    model, _ = E.build_model(_config("mobilenet_v2", frozen=True), weights=None, seed=1)
    features = model.backbone(torch.rand(1, 3, 64, 64))
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == {
        "0": (256, 8, 8), "1": (256, 4, 4), "2": (256, 2, 2), "pool": (256, 1, 1)}
    # two anchor sizes per level (torchvision's five sizes, scaled to 64 px: 4 and 5 ... 41)
    assert model.rpn.anchor_generator.sizes == ((4, 5), (5, 10), (10, 20), (20, 41))
    body = model.backbone.body
    # trainable_layers 3 of 5 stages: the stride-2 and stride-4 stages (blocks 0-3) are frozen
    assert [any(p.requires_grad for p in body[str(i)].parameters()) for i in range(19)] == (
        [False] * 4 + [True] * 15)
    # frozen BatchNorm everywhere in the body (pre-trained weights)
    from torchvision.ops.misc import FrozenBatchNorm2d
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    losses = _one_step(model)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert body["3"].conv[0][0].weight.grad is None  # frozen
    grad = body["4"].conv[0][0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_mobilenet_v2_from_scratch_trains_every_stage():
    config = _config("mobilenet_v2").replace(trainable_layers=5)
    model, _ = E.build_model(config, weights=None, seed=1)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.body.modules())
    _one_step(model)
    grad = model.backbone.body["0"][0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with pytest.raises(WeakpasteError) as err:
        config.replace(trainable_layers=6)
    assert str(err.value) == ("trainable_layers (--trainable-layers) must be <= 5 for "
                              "mobilenet_v2, got 6")


def _saved_classifier(tmp_path, name: str):
    """A seeded torchvision classifier ``name`` and the path of its saved state_dict."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        classifier = getattr(torchvision.models, name)(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(classifier.state_dict(), path)
    return classifier, path


def _initialises_the_backbone(tmp_path, name: str, backbone: str, tensors: int,
                              body_key: str, classifier_key: str) -> Path:
    """Build ``backbone`` from the saved torchvision classifier ``name``: the note counts
    ``tensors`` and ``body_key`` of the backbone is the classifier's ``classifier_key``.

    Returns:
        The path of the classifier's state_dict.
    """
    classifier, path = _saved_classifier(tmp_path, name)
    model, notes = E.build_model(_config(backbone, frozen=True), weights=str(path))
    assert notes == [f"backbone initialised from {path} ({tensors} tensors)"]
    torch.testing.assert_close(model.backbone.body.state_dict()[body_key],
                               classifier.state_dict()[classifier_key])
    return path


def _build_error(backbone: str, weights: Path) -> str:
    """The message of building ``backbone`` from ``weights``, which must fail."""
    with pytest.raises(WeakpasteError) as err:
        E.build_model(_config(backbone, frozen=True), weights=str(weights))
    return str(err.value)


def test_weights_from_a_torchvision_backbone_state_dict(tmp_path):
    _initialises_the_backbone(tmp_path, "mobilenet_v3_large", "mobilenet_v3", 262,
                              "1.block.0.0.weight", "features.1.block.0.0.weight")


def test_weights_from_a_torchvision_mobilenet_v2_state_dict(tmp_path):
    # 52 convolutions (1 tensor) + 52 FrozenBatchNorm2d (4 tensors); the classifier is ignored
    _initialises_the_backbone(tmp_path, "mobilenet_v2", "mobilenet_v2", 260,
                              "7.conv.1.0.weight", "features.7.conv.1.0.weight")
    # a MobileNetV3 file for a MobileNetV2 model: one line
    _, v3 = _saved_classifier(tmp_path, "mobilenet_v3_large")
    message = _build_error("mobilenet_v2", v3)
    assert message.startswith(
        f"{v3}: neither a Mask R-CNN state_dict nor one of torchvision's mobilenet_v2 (")
    assert message.endswith("pass a matching --backbone, a weakpaste checkpoint, "
                            "DEFAULT or none")


SHARED_MOBILENET = (Path(__file__).resolve().parents[3] / "shared" / "weights"
                    / "mobilenet_v2_imagenet.pth")


@pytest.mark.skipif(not SHARED_MOBILENET.is_file(), reason="../shared/weights is absent")
def test_mobilenet_v2_loads_the_shared_imagenet_file():
    model, notes = E.build_model(_config("mobilenet_v2", frozen=True),
                                 weights=str(SHARED_MOBILENET))
    assert notes == [f"backbone initialised from {SHARED_MOBILENET} (260 tensors)"]
    state = torch.load(SHARED_MOBILENET, weights_only=True)
    for key in ("0.0.weight", "18.0.weight", "18.1.bias"):
        assert torch.equal(model.backbone.body.state_dict()[key], state["features." + key])
    # The GroupNorm FPN hands the heads unit-scale features (MobileNetV2's linear bottlenecks
    # gave level standard deviations of several units and a mask loss near 20 without it).
    with torch.inference_mode():
        features = model.backbone(torch.rand(1, 3, 128, 128))
    assert [round(float(v.std()), 1) for v in features.values()] == [1.0] * 4
    losses = _one_step(model)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_missing_weights_file_is_one_line(tmp_path):
    assert _build_error("mobilenet_v2", tmp_path / "nope.pth") == (
        f"{tmp_path / 'nope.pth'}: weights file not found; pass --weights PATH to a "
        "torchvision state_dict, --weights DEFAULT or --weights none")


def test_weights_from_a_torchvision_resnet18_state_dict(tmp_path):
    # 20 convolutions + 20 BatchNorms (4 tensors each, FrozenBatchNorm2d keeps no counter).
    path = _initialises_the_backbone(tmp_path, "resnet18", "resnet18", 100,
                                     "layer2.0.conv1.weight", "layer2.0.conv1.weight")
    assert _build_error("resnet50", path).startswith(
        f"{path}: neither a Mask R-CNN state_dict nor one of torchvision's resnet50 (")


def test_weights_from_a_detector_with_other_classes(tmp_path):
    other = build(ModelConfig, backbone="mobilenet_v3", class_names=("x", "y", "z"),
                  image_size=64, frozen_bn=True, roi_batch=32, rpn_proposals=64)
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


def test_weights_from_a_weakpaste_checkpoint(tmp_path):
    source, _ = E.build_model(_config(), seed=5)
    path = tmp_path / "last.pt"
    E.save_checkpoint(path, {"format": E.FORMAT, "format_version": E.FORMAT_VERSION,
                             "model": source.state_dict(), "model_config": _config().to_dict(),
                             "iteration": 1})
    model, notes = E.build_model(_config(), weights=path)
    assert notes == [f"loaded 342 of 342 tensors from {path}"]
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


def test_model_config_for_a_run():
    pretrained = E.model_config_for(tiny_train_config(weights="DEFAULT"), ("a",))
    assert (pretrained.frozen_bn, pretrained.options.trainable_layers) == (True, 3)
    scratch = E.model_config_for(tiny_train_config(trainable_layers=None), ("a", "b"))
    assert (scratch.frozen_bn, scratch.options.trainable_layers, scratch.num_classes) == (
        False, 6, 3)
    light = E.model_config_for(tiny_train_config(backbone="resnet18", trainable_layers=None),
                               ("a",))
    assert (light.frozen_bn, light.options.trainable_layers) == (False, 5)
    assert E.model_config_for(tiny_train_config(trainable_layers=2),
                              ("a",)).options.trainable_layers == 2


def test_resolve_device():
    assert E.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(WeakpasteError) as err:
        E.resolve_device("tpu")
    assert str(err.value) == "device (--device) must be cpu, cuda or cuda:N, got 'tpu'"
    if not torch.cuda.is_available():
        with pytest.raises(WeakpasteError) as err:
            E.resolve_device("cuda")
        assert str(err.value) == ("--device cuda: no CUDA device is available to torch here; "
                                  "use --device cpu")
