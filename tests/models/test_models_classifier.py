"""weakpaste.models.classifier: building, probabilities, features, segment scores, files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from models_helpers import labels_of, random_image, small, tiny_scenes

from weakpaste.core.errors import WeakpasteError
from weakpaste.demo.synthetic import CLASSES, iter_scenes
from weakpaste.models.classifier import Classifier

SHARED_MOBILENET = (Path(__file__).resolve().parents[3] / "shared" / "weights"
                    / "mobilenet_v2_imagenet.pth")


@pytest.fixture(scope="module")
def scenes():
    return tiny_scenes()


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


def test_bad_arguments():
    with pytest.raises(ValueError, match="classes must not be empty"):
        Classifier.build("resnet18", weights=None, classes=[])
    with pytest.raises(ValueError, match="listed twice"):
        Classifier.build("resnet18", weights=None, classes=["a", "a"])
    with pytest.raises(ValueError, match="input_size must be an integer >= 32"):
        Classifier.build("resnet18", weights=None, classes=["a"], input_size=16)


def test_score_segments_matches_crops():
    clf = small(classes=["a", "b"])
    img = random_image()
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
    probs, feats = clf.score_segments(random_image(), masks)
    assert probs.shape == (0, 2) and feats.shape == (0, 512)
    assert probs.dtype == np.float32 and feats.dtype == np.float32


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
