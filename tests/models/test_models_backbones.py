"""weakpaste.models.backbones: torchvision names, weight files, trunks and the pooled net."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from bad_input_helpers import error_message
from models_helpers import small
from torch import nn

from weakpaste.core.errors import WeakpasteError
from weakpaste.models.backbones import (
    PooledNet,
    backbone_family,
    pooled_net,
    read_state_dict,
    to_tensor,
    torchvision_model,
)
from weakpaste.models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier

EXAMPLES = "resnet50, mobilenet_v2, efficientnet_b0, convnext_tiny"


@pytest.mark.parametrize("backbone", ["vit_b_16", "swin_t"])
def test_backbone_without_feature_map(backbone):
    with pytest.raises(WeakpasteError) as err:
        backbone_family(backbone)
    assert str(err.value) == (f"backbone {backbone!r} has no convolutional feature map; choose "
                              f"one of e.g. {EXAMPLES}")


def test_unknown_backbone():
    with pytest.raises(WeakpasteError) as err:
        Classifier.build("resnet5", weights=None, classes=["a"])  # before any weights
    assert str(err.value) == (
        "unknown backbone 'resnet5'; list torchvision's classification models with: "
        "python -c \"import torchvision; "
        "print(torchvision.models.list_models(module=torchvision.models))\"")


def test_default_weights_offline(monkeypatch):
    real = torchvision.models.get_model

    def offline(name, **kwargs):
        if kwargs.get("weights") is not None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return real(name, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(WeakpasteError) as err:
        torchvision_model("resnet50", "DEFAULT")
    assert str(err.value) == (
        "could not load torchvision's DEFAULT weights for resnet50 (<urlopen error [Errno -3] "
        "Temporary failure in name resolution>); on a machine without internet pass --weights "
        "PATH to a local state_dict or --weights none")


def test_weights_that_are_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeakpasteError) as err:
        torchvision_model("resnet18", path)
    assert str(err.value) == (f"{path}: not a state_dict (found a list); save the model's "
                              f"weights with torch.save(model.state_dict(), PATH)")

    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeakpasteError, match=r"garbage\.pth: not a readable weights file \("):
        torchvision_model("resnet18", path)


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeakpasteError) as err:
        torchvision_model("resnet34", path)
    assert str(err.value).startswith(f"{path}: not a state_dict of torchvision's resnet34 (")
    assert "missing keys, e.g. 'layer1.2.conv1.weight'" in str(err.value)

    path = tmp_path / "ten_classes.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(WeakpasteError) as err:
        torchvision_model("resnet18", path)
    assert str(err.value) == (f"{path}: 'fc.weight' has shape (10, 512) but torchvision's "
                              f"resnet18 expects (1000, 512); pass weights of "
                              f"torchvision.models.resnet18() with its 1000 ImageNet classes")


def test_loads_a_full_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    model = torchvision.models.resnet18().eval()
    with torch.no_grad():  # non-trivial statistics, so that a skipped buffer would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "mine.pth"
    torch.save(model.state_dict(), path)

    clf = Classifier.build("resnet18", weights=str(path), classes=["a", "b"], input_size=64,
                           crop_size=64)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        expected = nn.Sequential(*list(model.children())[:-1])(x[None]).flatten(1).numpy()
    np.testing.assert_allclose(clf.features([img]), expected, rtol=1e-4, atol=1e-5)
    assert clf.feature_dim == 512


def test_read_state_dict_unpacks_accepted_weakpaste_files_only(tmp_path):
    state = {"module.conv.weight": torch.ones(2, 3), "module.conv.bias": torch.zeros(2)}
    path = tmp_path / "ckpt.pt"
    torch.save({"format": "weakpaste-maskrcnn", "model": state, "iteration": 3}, path)
    got = read_state_dict(path, unpack={"weakpaste-maskrcnn": "model"})
    assert sorted(got) == ["conv.bias", "conv.weight"]  # DataParallel prefix removed
    assert torch.equal(got["conv.weight"], torch.ones(2, 3))
    assert error_message(read_state_dict, path) == (
        f"{path}: this is a weakpaste Mask R-CNN checkpoint, not backbone weights; evaluate it "
        "with 'weakpaste eval --checkpoint' instead of passing --weights")


def test_a_trained_classifier_is_not_weights(tmp_path):
    path = tmp_path / "clf.pt"
    small("mobilenet_v3_small", classes=["a"]).save(path)
    with pytest.raises(WeakpasteError) as err:
        Classifier.build("mobilenet_v3_small", weights=path, classes=["a"])
    assert str(err.value) == (f"{path}: this is a trained weakpaste classifier, not backbone "
                              "weights; load it as a classifier instead of passing --weights")


def test_pooled_net_shapes_and_seeded_head():
    model = torchvision_model("resnet18", None)
    net = pooled_net("resnet18", model, 3, 32, "cpu")
    assert isinstance(net, PooledNet) and net.head.out_features == 3
    logits, pooled = net(torch.zeros(2, 3, 40, 48))
    assert logits.shape == (2, 3) and pooled.shape == (2, 512)
    again = pooled_net("resnet18", torchvision_model("resnet18", "none"), 3, 32, "cpu")
    assert torch.equal(net.head.weight, again.head.weight)
    with pytest.raises(WeakpasteError) as err:
        pooled_net("squeezenet1_1", torchvision_model("squeezenet1_1", None), 3, 8, "cpu")
    assert str(err.value).startswith("backbone 'squeezenet1_1' cannot take 8x8 inputs (")
    assert str(err.value).endswith("); raise --input-size / --crop-size")


def test_to_tensor_normalises_with_the_imagenet_statistics():
    batch = np.zeros((1, 2, 2, 3), np.uint8)
    batch[0, 0, 1] = (255, 0, 124)
    x = to_tensor(batch, torch.device("cpu"), channels_last=False)
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    pixel = np.array([255, 0, 124]) / 255
    expected = (pixel - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 0, 1].numpy(), expected, rtol=1e-5)
    assert to_tensor(batch, torch.device("cpu")).is_contiguous(memory_format=torch.channels_last)


def test_small_cnn_shapes_and_stride():
    clf = Classifier.build("small_cnn", weights=None, classes=["a", "b"], input_size=128,
                           crop_size=48)
    image = np.full((100, 160, 3), 90, np.uint8)
    assert backbone_family("small_cnn") == "features"
    assert clf.feature_dim == 128
    assert clf.feature_maps([image]).shape == (1, 128, 16, 16)  # stride 8
    assert clf.predict_proba([image]).shape == (1, 2)
    assert clf.gradcam(image, [1]).shape == (1, 100, 160)
    assert not clf._net.freeze_bn  # a random trunk's BatchNorm statistics train


def test_small_cnn_is_seeded_and_has_no_pretrained_weights(tmp_path):
    a, b = torchvision_model("small_cnn", None), torchvision_model("small_cnn", "none")
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(WeakpasteError) as err:
        Classifier.build("small_cnn", classes=["a"])
    assert str(err.value) == ("backbone 'small_cnn' has no pretrained weights; pass --weights "
                              "none (train it from scratch) or --weights PATH")
    path = tmp_path / "small.pth"
    torch.save(a.state_dict(), path)
    loaded = torchvision_model("small_cnn", str(path))
    torch.testing.assert_close(loaded.state_dict(), a.state_dict(), rtol=0, atol=0)


def test_small_cnn_learns_the_synthetic_classes_and_round_trips(tmp_path):
    from models_helpers import labels_of

    from weakpaste.demo.synthetic import CLASSES, iter_scenes

    train = list(iter_scenes(0, 96, height=64, width=64))
    held_out = list(iter_scenes(1, 24, height=64, width=64))
    clf = Classifier.build("small_cnn", weights=None, classes=CLASSES, input_size=64,
                           crop_size=32)
    info = clf.train([s.image for s in train], labels_of(train), mode="finetune", epochs=15,
                     lr=0.05, batch_size=16, progress=False)
    assert info["loss"][-1] < 0.8 * info["loss"][0]
    probs = clf.predict_proba([s.image for s in held_out])
    present = labels_of(held_out)
    # Ranking on held-out scenes: a present class scores above an absent one more often than
    # chance (0.5); measured 0.70 (0.94 on training scenes).
    pairs = probs[present][:, None] > probs[~present][None, :]
    assert pairs.mean() > 0.6
    clf.save(tmp_path / "clf.pt")
    back = Classifier.load(tmp_path / "clf.pt")
    assert back.backbone == "small_cnn" and not back._net.freeze_bn
    np.testing.assert_array_equal(back.predict_proba([held_out[0].image]),
                                  clf.predict_proba([held_out[0].image]))
