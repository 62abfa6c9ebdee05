"""weakpaste.models.training: linear probe and fine-tuning through Classifier.train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from models_helpers import labels_of, small, tiny_scenes

from weakpaste.demo.synthetic import CLASSES
from weakpaste.models.classifier import Classifier
from weakpaste.models.training import check_labels, linear_probe


@pytest.fixture(scope="module")
def scenes():
    return tiny_scenes()


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


def test_linear_probe_on_features_is_the_linear_mode(scenes):
    """linear_probe on the pooled features of the images and their flips (what the linear mode
    computes) gives the head train() gives."""
    clf = small()
    images, labels = [s.image for s in scenes], labels_of(scenes)
    feats = np.concatenate([clf.features(images), clf.features([im[:, ::-1] for im in images])])
    weight, bias = linear_probe(feats, np.concatenate([labels, labels]), epochs=4,
                                batch_size=32, seed=3)
    clf.train(images, labels, epochs=4, batch_size=32, seed=3, progress=False)
    assert weight.shape == (6, 512) and bias.shape == (6,) and weight.dtype == np.float32
    np.testing.assert_allclose(weight, clf._net.head.weight.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(bias, clf._net.head.bias.detach().numpy(), atol=1e-3)
    again = linear_probe(feats, np.concatenate([labels, labels]), epochs=4, seed=3)
    assert np.array_equal(again[0], weight)  # same seed, same bytes


def test_linear_probe_errors():
    with pytest.raises(ValueError, match=r"features must be a non-empty \(N, C\) array"):
        linear_probe(np.zeros((0, 4)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"targets must be an \(N, K\) array"):
        linear_probe(np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"labels must have shape \(N, K\) = \(3, 2\)"):
        linear_probe(np.zeros((3, 4)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        linear_probe(np.zeros((3, 4)), np.zeros((3, 2)), epochs=0)


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


def test_check_labels_values_and_shape():
    y = check_labels(np.array([[True, False], [False, True]]), 2, 2)
    assert y.dtype == np.float32 and y.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError) as err:
        check_labels(np.array([[2.0, 0.0]]), 1, 2)
    assert str(err.value) == "labels must be 0/1 (or probabilities in [0, 1])"
