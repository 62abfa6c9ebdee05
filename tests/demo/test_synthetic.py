"""Tests of the embedded synthetic data set (weakpaste.demo.synthetic)."""

from __future__ import annotations

import dataclasses
import random
import re
import time

import cv2
import numpy as np
import pytest

from weakpaste.demo import synthetic
from weakpaste.demo.synthetic import (
    CLASSES,
    Scene,
    iter_scenes,
    make_object_centric,
    make_scene,
    min_visible_area,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_same(a: Scene, b: Scene) -> None:
    assert a.image.tobytes() == b.image.tobytes()
    assert a.masks.shape == b.masks.shape
    assert a.masks.tobytes() == b.masks.tobytes()
    assert a.classes == b.classes


def test_smoke() -> None:
    scene = make_scene(_rng())
    assert isinstance(scene, Scene)
    assert 1 <= len(scene.classes) <= 4


def test_classes_are_distinct_names() -> None:
    assert 5 <= len(CLASSES) <= 6
    assert len(set(CLASSES)) == len(CLASSES)


@pytest.mark.parametrize(("height", "width"), [(192, 256), (32, 32), (64, 100), (101, 47)])
def test_shapes_and_dtypes(height: int, width: int) -> None:
    for seed in range(5):
        scene = make_scene(_rng(seed), height=height, width=width)
        n = len(scene.classes)
        assert scene.image.shape == (height, width, 3)
        assert scene.image.dtype == np.uint8
        assert scene.masks.shape == (n, height, width)
        assert scene.masks.dtype == bool
        assert isinstance(scene.classes, tuple)
        assert all(isinstance(c, str) and c in CLASSES for c in scene.classes)


def test_scene_is_frozen() -> None:
    scene = make_scene(_rng())
    with pytest.raises(dataclasses.FrozenInstanceError):
        scene.classes = ()  # type: ignore[misc]


def test_object_count_respects_bounds() -> None:
    counts = {len(make_scene(_rng(s), min_objects=2, max_objects=5).classes) for s in range(80)}
    assert counts == {2, 3, 4, 5}
    for s in range(10):
        assert len(make_scene(_rng(s), min_objects=3, max_objects=3).classes) == 3


def test_same_seed_same_scene() -> None:
    _assert_same(make_scene(_rng(42)), make_scene(_rng(42)))
    a = make_object_centric(_rng(3), "star")
    b = make_object_centric(_rng(3), "star")
    _assert_same(a, b)


def test_different_seeds_differ() -> None:
    assert make_scene(_rng(1)).image.tobytes() != make_scene(_rng(2)).image.tobytes()


def test_iter_scenes_is_deterministic() -> None:
    first = list(iter_scenes(7, 6, height=96, width=128))
    second = list(iter_scenes(7, 6, height=96, width=128))
    assert len(first) == 6
    for a, b in zip(first, second, strict=True):
        _assert_same(a, b)


def test_iter_scenes_scene_i_does_not_depend_on_earlier_scenes() -> None:
    all_scenes = list(iter_scenes(11, 5))
    # Scene 4 made on its own, without generating scenes 0-3 first.
    child = np.random.SeedSequence(11).spawn(5)[4]
    _assert_same(all_scenes[4], make_scene(np.random.default_rng(child)))
    # Prefixes agree whatever num_images is.
    for a, b in zip(iter_scenes(11, 3), all_scenes, strict=False):
        _assert_same(a, b)


def test_iter_scenes_passes_kwargs() -> None:
    for scene in iter_scenes(0, 4, height=48, width=64, classes=("ring",)):
        assert scene.image.shape == (48, 64, 3)
        assert set(scene.classes) == {"ring"}
    assert list(iter_scenes(0, 0)) == []


def test_no_global_randomness() -> None:
    # Touching the legacy global generator is the point here: it must not be used or consumed.
    saved_np, saved_py = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        np.random.seed(123)  # noqa: NPY002
        random.seed(123)
        np_state = np.random.get_state()[1].copy()  # noqa: NPY002
        py_state = random.getstate()
        a = make_scene(_rng(5))
        list(iter_scenes(5, 2))
        make_object_centric(_rng(5), "disc")
        assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
        assert random.getstate() == py_state
        np.random.seed(999)  # noqa: NPY002
        random.seed(999)
        _assert_same(a, make_scene(_rng(5)))
    finally:
        np.random.set_state(saved_np)  # noqa: NPY002
        random.setstate(saved_py)


def test_masks_are_disjoint_visible_parts_above_minimum_area() -> None:
    for height, width, max_objects in [(192, 256, 4), (192, 256, 8), (64, 64, 4), (32, 48, 3)]:
        min_area = min_visible_area(height, width)
        for seed in range(40):
            scene = make_scene(_rng(seed), height=height, width=width, max_objects=max_objects)
            assert scene.masks.sum(axis=0).max() <= 1, "visible masks must not overlap"
            areas = scene.masks.reshape(len(scene.classes), -1).sum(axis=1)
            assert areas.min() >= min_area


def test_masks_cover_pixels_of_their_own_class() -> None:
    """The visible mask of an instance shows that instance's hue, not an occluder's."""
    for seed in range(60):
        scene = make_scene(_rng(seed), max_objects=6)
        hue = cv2.cvtColor(scene.image, cv2.COLOR_RGB2HSV_FULL)[..., 0].astype(np.float64) * (
            360 / 256)
        for mask, cls in zip(scene.masks, scene.classes, strict=True):
            diff = np.abs((hue[mask] - synthetic._STYLES[cls].hue + 180) % 360 - 180)
            assert np.mean(diff < 30) > 0.95, (seed, cls)


def test_labels_are_the_sorted_distinct_classes() -> None:
    for seed in range(30):
        scene = make_scene(_rng(seed), max_objects=6)
        assert scene.labels == tuple(sorted(set(scene.classes)))
    assert Scene(np.zeros((2, 2, 3), np.uint8), np.ones((3, 2, 2), bool),
                 ("star", "disc", "star")).labels == ("disc", "star")


def test_classes_argument_restricts_classes() -> None:
    for seed in range(10):
        scene = make_scene(_rng(seed), classes=("triangle", "cross"))
        assert set(scene.classes) <= {"triangle", "cross"}


def test_min_objects_that_cannot_fit_raise_instead_of_looping() -> None:
    message = ("could not fit 60 objects in a 32x32 scene; "
               "lower min_objects or enlarge the image")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_scene(_rng(), height=32, width=32, min_objects=60, max_objects=60)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 31}, "height must be >= 32, got 31"),
        ({"width": 8}, "width must be >= 32, got 8"),
        ({"min_objects": 0}, "min_objects must be >= 1, got 0"),
        ({"min_objects": 5, "max_objects": 4}, "min_objects (5) must be <= max_objects (4)"),
        ({"classes": ()}, "classes must not be empty"),
        ({"classes": ("disc", "blob")},
         "unknown synthetic class 'blob'; choose one of: " + ", ".join(CLASSES)),
    ],
)
def test_make_scene_rejects_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_scene(_rng(), **kwargs)
    # iter_scenes checks eagerly, before the first scene is requested.
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        iter_scenes(0, 3, **kwargs)


def test_iter_scenes_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match=r"^num_images must be >= 0, got -1$"):
        iter_scenes(0, -1)


def test_make_object_centric_rejects_invalid_arguments() -> None:
    message = "unknown synthetic class 'x'; choose one of: " + ", ".join(CLASSES)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_object_centric(_rng(), "x")
    with pytest.raises(ValueError, match=r"^size must be >= 32, got 16$"):
        make_object_centric(_rng(), "disc", size=16)


@pytest.mark.parametrize("cls", CLASSES)
def test_object_centric_object_is_centred_and_large(cls: str) -> None:
    for size in (128, 64, 200):
        for seed in range(25):
            scene = make_object_centric(_rng(seed), cls, size=size)
            assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
            assert scene.masks.shape == (1, size, size) and scene.masks.dtype == bool
            assert scene.classes == (cls,) and scene.labels == (cls,)
            ys, xs = np.nonzero(scene.masks[0])
            centre = (size - 1) / 2
            assert np.hypot(ys.mean() - centre, xs.mean() - centre) <= 0.15 * size
            assert 0.30 <= scene.masks[0].mean() <= 0.75
            # The object never touches the border, so it is whole.
            assert not scene.masks[0][[0, -1]].any() and not scene.masks[0][:, [0, -1]].any()


def test_objects_separable_from_background() -> None:
    colour_gaps, sat_gaps = [], []
    for scene in iter_scenes(3, 60):
        img = scene.image.astype(np.float64)
        fg = scene.masks.any(axis=0)
        colour_gaps.append(np.abs(img[fg].mean(axis=0) - img[~fg].mean(axis=0)).mean())
        sat = cv2.cvtColor(scene.image, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float64)
        sat_gaps.append(sat[fg].mean() - sat[~fg].mean())
    assert np.mean(colour_gaps) > 25
    assert np.min(colour_gaps) > 8
    assert np.min(sat_gaps) > 40  # saturated objects on greyish backgrounds
    # ...but the background is not flat.
    scene = make_scene(_rng(0))
    bg = scene.image[~scene.masks.any(axis=0)].astype(np.float64)
    assert bg.std(axis=0).mean() > 4


def test_classes_have_distinct_mean_colours() -> None:
    sums = {c: np.zeros(3) for c in CLASSES}
    counts = dict.fromkeys(CLASSES, 0)
    for scene in iter_scenes(9, 80):
        for mask, cls in zip(scene.masks, scene.classes, strict=True):
            sums[cls] += scene.image[mask].astype(np.float64).sum(axis=0)
            counts[cls] += int(mask.sum())
    means = {c: sums[c] / counts[c] for c in CLASSES}
    for i, a in enumerate(CLASSES):
        for b in CLASSES[i + 1:]:
            assert np.linalg.norm(means[a] - means[b]) > 40, (a, b)


def test_200_scenes_are_fast() -> None:
    start = time.perf_counter()
    scenes = list(iter_scenes(0, 200))
    elapsed = time.perf_counter() - start
    assert len(scenes) == 200
    assert elapsed < 5.0, f"200 scenes took {elapsed:.2f} s"


def test_make_background_is_object_free_and_seeded():
    from weakpaste.demo.synthetic import make_background

    a = make_background(np.random.default_rng(3), height=40, width=50)
    b = make_background(np.random.default_rng(3), height=40, width=50)
    assert a.shape == (40, 50, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # Backgrounds are greyish: no pixel reaches the saturation of a painted object.
    hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV)
    assert hsv[..., 1].max() < 120
    with pytest.raises(ValueError, match="height must be >= 32, got 8"):
        make_background(np.random.default_rng(0), height=8, width=50)
