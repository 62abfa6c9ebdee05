"""Tests of the torch classifier: trunks, weights, training, Grad-CAM, segment crops, files."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from weakpaste.errors import WeakpasteError
from weakpaste.models.classifier import (
    GREY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Classifier,
    _traced_forward,
    segment_crops,
)
from weakpaste.synthetic import CLASSES, iter_scenes

SHARED_MOBILENET = (Path(__file__).resolve().parents[2] / "shared" / "weights"
                    / "mobilenet_v2_imagenet.pth")
EXAMPLES = "resnet50, mobilenet_v2, efficientnet_b0, convnext_tiny"


def small(backbone: str = "resnet18", classes=CLASSES, **kwargs) -> Classifier:
    """A randomly initialised classifier on 64 px inputs: fast enough for unit tests."""
    return Classifier.build(backbone, weights=None, classes=classes, input_size=64, crop_size=64,
                            **kwargs)


def labels_of(scenes) -> np.ndarray:
    """bool (N, K) image-level labels of synthetic scenes, columns in CLASSES order."""
    return np.array([[c in s.labels for c in CLASSES] for s in scenes])


@pytest.fixture(scope="module")
def scenes():
    return list(iter_scenes(0, 12, height=64, width=96))


# --------------------------------------------------------------------------------------------
# Building


@pytest.mark.parametrize(("backbone", "dim"), [
    ("resnet18", 512),
    ("mobilenet_v2", 1280),
    ("mobilenet_v3_small", 576),
    ("efficientnet_b0", 1280),
    ("regnet_x_400mf", 400),
    ("convnext_tiny", 768),
    ("densenet121", 1024),
    ("shufflenet_v2_x0_5", 1024),
    ("squeezenet1_1", 512),
    ("mnasnet0_5", 1280),
])
def test_build_families(backbone, dim):
    clf = small(backbone, classes=["a", "b", "c"])
    images = [np.full((40, 70, 3), 90, np.uint8), np.zeros((80, 50, 3), np.uint8)]
    feats = clf.features(images)
    probs = clf.predict_proba(images)
    assert clf.feature_dim == dim
    assert feats.shape == (2, dim) and feats.dtype == np.float32
    assert probs.shape == (2, 3) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    assert clf.classes == ("a", "b", "c") and clf.device == "cpu" and clf.mode == "untrained"


def test_random_init_is_reproducible():
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(small().predict_proba([img]), small().predict_proba([img]))


@pytest.mark.parametrize("backbone", ["vit_b_16", "swin_t"])
def test_backbone_without_feature_map(backbone):
    with pytest.raises(WeakpasteError) as err:
        Classifier.build(backbone, weights=None, classes=["a"])
    assert str(err.value) == (f"backbone {backbone!r} has no convolutional feature map; choose "
                              f"one of e.g. {EXAMPLES}")


def test_unknown_backbone():
    with pytest.raises(WeakpasteError) as err:
        Classifier.build("resnet5", weights=None, classes=["a"])
    assert str(err.value) == (
        "unknown backbone 'resnet5'; list torchvision's classification models with: "
        "python -c \"import torchvision; "
        "print(torchvision.models.list_models(module=torchvision.models))\"")


def test_bad_arguments():
    with pytest.raises(ValueError, match="classes must not be empty"):
        Classifier.build("resnet18", weights=None, classes=[])
    with pytest.raises(ValueError, match="listed twice"):
        Classifier.build("resnet18", weights=None, classes=["a", "a"])
    with pytest.raises(ValueError, match="input_size must be an integer >= 32"):
        Classifier.build("resnet18", weights=None, classes=["a"], input_size=16)


# --------------------------------------------------------------------------------------------
# Weights


def test_default_weights_offline(monkeypatch):
    real = torchvision.models.get_model

    def offline(name, **kwargs):
        if kwargs.get("weights") is not None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return real(name, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(WeakpasteError) as err:
        Classifier.build("resnet50", classes=["a"])
    assert str(err.value) == (
        "could not load torchvision's DEFAULT weights for resnet50 (<urlopen error [Errno -3] "
        "Temporary failure in name resolution>); on a machine without internet pass --weights "
        "PATH to a local state_dict or --weights none")


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeakpasteError) as err:
        Classifier.build("resnet18", weights=str(path), classes=["a"])
    assert str(err.value) == (f"{path}: weights file not found; pass --weights PATH to a "
                              f"torchvision state_dict, --weights DEFAULT or --weights none")


def test_weights_that_are_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeakpasteError) as err:
        Classifier.build("resnet18", weights=path, classes=["a"])
    assert str(err.value) == (f"{path}: not a state_dict (found a list); save the model's "
                              f"weights with torch.save(model.state_dict(), PATH)")

    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeakpasteError, match=r"garbage\.pth: cannot read weights \("):
        Classifier.build("resnet18", weights=path, classes=["a"])


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeakpasteError) as err:
        Classifier.build("resnet34", weights=path, classes=["a"])
    assert str(err.value).startswith(f"{path}: not a state_dict of torchvision's resnet34 (")
    assert "missing keys, e.g. 'layer1.2.conv1.weight'" in str(err.value)

    path = tmp_path / "ten_classes.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(WeakpasteError) as err:
        Classifier.build("resnet18", weights=path, classes=["a"])
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


# --------------------------------------------------------------------------------------------
# Training


def test_bad_training_arguments(scenes):
    clf = small()
    images, labels = [s.image for s in scenes], labels_of(scenes)
    with pytest.raises(ValueError) as err:
        clf.train(images, labels, mode="full")
    assert str(err.value) == "unknown training mode 'full'; choose 'linear' or 'finetune'"
    with pytest.raises(ValueError, match=r"labels must have shape \(N, K\) = \(12, 6\)"):
        clf.train(images, labels[:, :3])
    assert clf.mode == "untrained"


def test_linear_probe_learns(scenes):
    clf = small()
    images, labels = [s.image for s in scenes], labels_of(scenes)
    result = clf.train(images, labels, epochs=20, batch_size=8, progress=False)
    assert result["mode"] == "linear" and clf.mode == "linear"
    assert len(result["loss"]) == 20 and result["seconds"] > 0
    assert result["loss"][-1] < 0.5 * result["loss"][0]
    probs = clf.predict_proba(images)
    assert probs[labels].mean() > probs[~labels].mean() + 0.3


@pytest.mark.parametrize("pretrained", [True, False])
def test_finetune_batchnorm_frozen_only_for_pretrained_trunks(scenes, tmp_path, pretrained):
    weights = None
    if pretrained:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            model = torchvision.models.resnet18()
        weights = tmp_path / "resnet18.pth"
        torch.save(model.state_dict(), weights)
    clf = Classifier.build("resnet18", weights=weights, classes=CLASSES, input_size=32,
                           crop_size=32)
    stats = {k: v.clone() for k, v in clf._net.state_dict().items() if "running" in k}
    conv = clf._net.trunk.conv1.weight.detach().clone()
    images, labels = [s.image for s in scenes[:8]], labels_of(scenes[:8])
    result = clf.train(images, labels, mode="finetune", epochs=6, batch_size=4, progress=False)
    assert result["mode"] == "finetune" and len(result["loss"]) == 6
    assert result["loss"][-1] < result["loss"][0]
    after = clf._net.state_dict()
    unchanged = [torch.equal(after[key], value) for key, value in stats.items()]
    # Pretrained: ImageNet statistics kept; random init: statistics learned from the data.
    assert all(unchanged) if pretrained else not any(unchanged)
    assert not torch.equal(clf._net.trunk.conv1.weight, conv)
    assert not any(m.training for m in clf._net.modules())
    clf.save(tmp_path / "clf.pt")
    assert Classifier.load(tmp_path / "clf.pt")._net.freeze_bn is pretrained


class _IntIndexOnly:
    """A lazy-loading-like sequence: only len() and integer indexing."""

    def __init__(self, items: list[np.ndarray]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        assert type(i) is int
        return self.items[i]


def test_any_sequence_of_images(scenes):
    clf = Classifier.build("resnet18", weights=None, classes=CLASSES, input_size=32,
                           crop_size=32)
    images, labels = _IntIndexOnly([s.image for s in scenes[:5]]), labels_of(scenes[:5])
    for mode in ("linear", "finetune"):
        clf.train(images, labels, mode=mode, epochs=1, batch_size=2, progress=False)
    assert clf.predict_proba(images, batch_size=2).shape == (5, 6)


def test_training_is_deterministic(scenes):
    images, labels = [s.image for s in scenes], labels_of(scenes)
    for mode, kwargs in [("linear", {"epochs": 5}), ("finetune", {"epochs": 2, "batch_size": 3})]:
        runs = []
        for seed in (3, 3, 4):
            clf = Classifier.build("resnet18", weights=None, classes=CLASSES, input_size=32,
                                   crop_size=32)
            result = clf.train(images[:6], labels[:6], mode=mode, seed=seed, progress=False,
                               **kwargs)
            runs.append((result["loss"], clf.predict_proba(images)))
        assert runs[0][0] == runs[1][0], mode
        np.testing.assert_array_equal(runs[0][1], runs[1][1])
        assert runs[0][0] != runs[2][0], mode


# --------------------------------------------------------------------------------------------
# Segments


def _image(h: int = 80, w: int = 100) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_segment_crops_grey_outside_and_centred():
    img = _image()
    mask = np.zeros((80, 100), bool)
    mask[8:72, 20:52] = True  # 64 x 32: the square crop needs no resize
    mask[8:20, 20:30] = False  # a notch inside the box
    crop = segment_crops(img, mask[None], 64, erode=0)[0]
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert np.all(crop[:, :16] == GREY) and np.all(crop[:, 48:] == GREY)
    inner, box_mask = crop[:, 16:48], mask[8:72, 20:52]
    np.testing.assert_array_equal(inner[box_mask], img[8:72, 20:52][box_mask])
    assert np.all(inner[~box_mask] == GREY)


def test_segment_crops_erosion():
    img = _image()
    mask = np.zeros((80, 100), bool)
    mask[7:73, 0:33] = True  # touches the left image edge, which erosion leaves alone
    crop = segment_crops(img, [mask], 64, erode=1)[0]
    np.testing.assert_array_equal(crop[:, 16:48], img[8:72, 0:32])
    assert np.all(crop[:, :16] == GREY) and np.all(crop[:, 48:] == GREY)

    line = np.zeros((80, 100), bool)
    line[30, 10:42] = True  # erosion would empty it: the un-eroded mask is used
    crop = segment_crops(img, [line], 64, erode=2)[0]
    expected = cv2.resize(img[30:31, 10:42], (64, 2), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(crop[31:33], expected)
    assert np.all(crop[:31] == GREY) and np.all(crop[33:] == GREY)

    empty = segment_crops(img, [np.zeros((80, 100), bool)], 64)
    assert np.all(empty == GREY)
    assert segment_crops(img, np.zeros((0, 80, 100), bool), 64).shape == (0, 64, 64, 3)
    with pytest.raises(ValueError, match=r"each mask must be \(80, 100\)"):
        segment_crops(img, [np.zeros((10, 10), bool)], 64)


def test_score_segments_matches_crops():
    clf = small(classes=["a", "b"])
    img = _image()
    masks = np.zeros((3, 80, 100), bool)
    masks[0, 10:40, 10:60] = True
    masks[1, 30:75, 50:95] = True
    masks[2, 5:20, 70:90] = True
    probs, feats = clf.score_segments(img, masks, batch_size=2)
    crops = clf.segment_batch(img, masks)
    assert probs.shape == (3, 2) and feats.shape == (3, 512)
    assert probs.dtype == np.float32 and feats.dtype == np.float32
    np.testing.assert_allclose(probs, clf.predict_proba(list(crops)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats, clf.features(list(crops)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masks", [np.zeros((0, 80, 100), bool), []])
def test_score_segments_without_segments(masks):
    clf = small(classes=["a", "b"])
    probs, feats = clf.score_segments(_image(), masks)
    assert probs.shape == (0, 2) and feats.shape == (0, 512)
    assert probs.dtype == np.float32 and feats.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Grad-CAM


def test_gradcam_shape_and_range():
    clf = small(classes=["a", "b", "c"])
    cams = clf.gradcam(_image(50, 70), [0, 2, 2])
    assert cams.shape == (3, 50, 70) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1
    assert clf.gradcam(_image(50, 70), []).shape == (0, 50, 70)
    with pytest.raises(ValueError, match="class index 3 out of range"):
        clf.gradcam(_image(50, 70), [3])


class _RedGreen(nn.Module):
    """Channel 0 = how red, channel 1 = how green; the pooling makes an 8x8 map of 64 px."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(x[:, :2]))


def test_gradcam_follows_the_evidence():
    clf = small(classes=["red", "green", "neither"])
    clf._net.trunk = _RedGreen()
    clf._net.head = nn.Linear(2, 3)
    with torch.no_grad():
        clf._net.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        clf._net.head.bias.zero_()
    img = np.zeros((64, 96, 3), np.uint8)
    img[8:24, 12:36] = (255, 0, 0)  # squashed to rows 8:24, cols 8:24: feature cells 1-2
    img[40:56, 60:84] = (0, 255, 0)
    cams = clf.gradcam(img, [0, 1, 2])
    for cam, (y0, y1, x0, x1) in zip(cams[:2], [(8, 24, 12, 36), (40, 56, 60, 84)], strict=True):
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert y0 <= peak[0] < y1 and x0 <= peak[1] < x1
        assert cam[(y0 + y1) // 2, (x0 + x1) // 2] == pytest.approx(1.0)
    assert cams[0][48, 72] == 0 and cams[1][16, 24] == 0
    assert not cams[2].any()  # only negative evidence: the all-zero map stays zero


def test_feature_cells_sit_at_their_receptive_field_centres():
    with torch.inference_mode():
        _, grid = _traced_forward(small("resnet18")._net.trunk, torch.zeros(1, 3, 64, 64))
        assert grid == ((32.0, 0.0), (32.0, 0.0))  # padded stride-2 layers: cell i at 32 i
        stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.MaxPool2d(2))
        _, grid = _traced_forward(stem, torch.zeros(1, 3, 16, 16))
        assert grid == ((4.0, 1.0), (4.0, 1.0))


# --------------------------------------------------------------------------------------------
# Files


def test_save_load_round_trip(tmp_path, scenes, monkeypatch):
    clf = small("mobilenet_v3_small")
    images, labels = [s.image for s in scenes], labels_of(scenes)
    clf.train(images, labels, epochs=3, progress=False)
    path = tmp_path / "sub" / "clf.pt"
    clf.save(path)

    real = torchvision.models.get_model

    def no_download(name, **kwargs):
        assert kwargs.get("weights") is None
        return real(name, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", no_download)
    back = Classifier.load(path)
    assert (back.backbone, back.classes, back.feature_dim, back.input_size, back.crop_size,
            back.mode) == ("mobilenet_v3_small", CLASSES, 576, 64, 64, "linear")
    np.testing.assert_array_equal(back.predict_proba(images), clf.predict_proba(images))
    scene = scenes[0]
    for a, b in zip(back.score_segments(scene.image, scene.masks),
                    clf.score_segments(scene.image, scene.masks), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_errors(tmp_path):
    path = tmp_path / "missing.pt"
    with pytest.raises(WeakpasteError) as err:
        Classifier.load(path)
    assert str(err.value) == (f"{path}: classifier file not found; check the path or train and "
                              f"save a classifier first")

    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(WeakpasteError, match=r"corrupt\.pt: not a readable classifier file \("):
        Classifier.load(path)

    path = tmp_path / "weights.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeakpasteError) as err:
        Classifier.load(path)
    assert str(err.value) == (f"{path}: not a weakpaste classifier file (plain weights go to "
                              f"--weights); train and save the classifier again")


# --------------------------------------------------------------------------------------------
# Opt-in: real ImageNet features (../shared/weights), skipped in a fresh clone


def test_pretrained_mobilenet_on_synthetic_scenes():
    from sklearn.metrics import average_precision_score

    if not SHARED_MOBILENET.exists():
        pytest.skip(f"{SHARED_MOBILENET} not available")
    train, held_out = list(iter_scenes(0, 60)), list(iter_scenes(1, 30))
    clf = Classifier.build("mobilenet_v2", SHARED_MOBILENET, CLASSES, input_size=384)
    clf.train([s.image for s in train], labels_of(train), progress=False)

    labels = labels_of(held_out)
    probs = clf.predict_proba([s.image for s in held_out])
    aps = [average_precision_score(labels[:, k], probs[:, k])
           for k in range(len(CLASSES)) if labels[:, k].any()]
    assert np.mean(aps) > 0.8

    peak_inside = near = near1 = best_object = total = 0
    for scene in held_out:
        present = [CLASSES.index(c) for c in scene.labels]
        for k, cam in zip(present, clf.gradcam(scene.image, present), strict=True):
            mask = np.any(scene.masks[[c == CLASSES[k] for c in scene.classes]], axis=0)
            y, x = np.unravel_index(np.argmax(cam), cam.shape)
            peak_inside += mask[y, x]
            near += _near(mask, cam.shape, 384)[y, x]
            near1 += _near(mask, cam.shape, 384, 32)[y, x]
            means = [cam[m].mean() for m in scene.masks]
            best_object += scene.classes[int(np.argmax(means))] == CLASSES[k]
            total += 1
    print(f"mAP {np.mean(aps):.3f} peak inside {peak_inside / total:.2f}, within half a cell "
          f"{near / total:.2f}, within a cell {near1 / total:.2f}, best object "
          f"{best_object / total:.2f}")
    # The peak itself lands inside the object only about a third of the time (0.32 here): the
    # map has 12 x 12 cells of 16-21 image pixels, small objects span one or two, and this
    # TF-converted file's features sit about a cell down-right of the objects. What mining
    # needs still holds: the peak is within a cell of an object of the class, and that object
    # outscores the scene's other objects.
    assert best_object / total > 0.8
    assert near1 / total > 0.75


def _near(mask: np.ndarray, shape: tuple[int, int], input_size: int,
          margin: int = 16) -> np.ndarray:
    """The mask grown by ``margin`` pixels of the squashed input on each side."""
    ry = max(1, round(margin * shape[0] / input_size))
    rx = max(1, round(margin * shape[1] / input_size))
    kernel = np.ones((2 * ry + 1, 2 * rx + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
