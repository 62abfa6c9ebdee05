"""weakpaste.train.data: specs, class tables, repeat-factor sampling, the torch dataset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import one_torch_thread, write_tiny_coco

from weakpaste.core.errors import WeakpasteError
from weakpaste.train import data as D


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


# --- specs ------------------------------------------------------------------------------------

def test_parse_data_spec_splits_at_json_colon():
    spec = D.parse_data_spec("/d/a:b/train.json:/imgs:2024/x")
    assert spec == D.DataSpec(Path("/d/a:b/train.json"), Path("/imgs:2024/x"))
    assert D.parse_data_spec("ann.txt:imgs") == D.DataSpec(Path("ann.txt"), Path("imgs"))
    assert D.parse_data_spec("val.json", images_required=False).images is None


def test_parse_data_spec_without_images_is_refused():
    with pytest.raises(WeakpasteError) as err:
        D.parse_data_spec("train.json", option="--train")
    assert str(err.value) == ("train.json: --train needs COCO_JSON:IMAGES_DIR, the annotation "
                              "file and its images folder (e.g. --train train.json:images/)")


# --- categories -------------------------------------------------------------------------------

def test_categories_with_other_ids_are_mapped_by_name(tmp_path):
    p1, i1 = write_tiny_coco(tmp_path / "one")
    p2, i2 = write_tiny_coco(tmp_path / "two", categories={"b": {"id": 1, "supercategory": ""},
                                                           "a": {"id": 7, "supercategory": ""},
                                                           "z": {"id": 9, "supercategory": ""}})
    sets = [D.load_spec(D.DataSpec(p1, i1)), D.load_spec(D.DataSpec(p2, i2))]
    names, notes = D.merge_categories(sets)
    assert names == ("a", "b", "z")
    assert notes == [f"2 classes have other category ids in {p2} than in {p1}; mapped by "
                     "name: 'b' (1 vs 2), 'a' (7 vs 1)"]
    p3, i3 = write_tiny_coco(tmp_path / "three", layouts=((("a", (2, 2, 20, 20)),),),
                             categories={"a": {"id": 3, "supercategory": ""}})
    assert D.merge_categories(sets[:1] + [D.load_spec(D.DataSpec(p3, i3))])[1] == [
        f"class 'a' has category id 3 in {p3} but 1 in {p1}; mapped by name"]
    mapping, eval_notes = D.map_eval_categories(("a", "b", "q"), sets[1])
    assert mapping == {"a": 7, "b": 1}
    assert eval_notes[0] == (f"1 class(es) of {p2} are not among the model's classes and cannot "
                             "be detected (AP 0): 'z'")
    assert eval_notes[1].startswith("1 model class(es) are not in")
    assert "mapped by name: 'a', 'b'" in eval_notes[2]


def test_training_items_leave_out_images_without_annotations(tmp_path):
    layouts = ((("a", (2, 2, 20, 20)),), (), (("b", (30, 30, 50, 60)),))
    path, images = write_tiny_coco(tmp_path, layouts=layouts)
    ds = D.load_spec(D.DataSpec(path, images))
    items, skipped = D.training_items([ds])
    assert ([r.image_id for _, r in items], skipped) == ([1, 3], 1)
    items, skipped = D.training_items([ds], keep_empty=True)
    assert (len(items), skipped) == (3, 0)
    assert D.class_image_counts(ds.records, ("a", "b", "c")) == {"a": 1, "b": 1, "c": 0}


# --- repeat-factor sampling -------------------------------------------------------------------

def test_repeat_factors_on_a_hand_made_count_table():
    # 10 images: 'a' in all of them, 'b' in one, 'c' in four.
    classes = [["a", "b"], ["a", "c", "c"], ["a", "c"], ["a", "c"], ["a", "c"]] + [["a"]] * 5
    r = D.repeat_factors(classes, threshold=0.5)
    r_b, r_c = math.sqrt(0.5 / 0.1), math.sqrt(0.5 / 0.4)
    np.testing.assert_allclose(r, [r_b, r_c, r_c, r_c, r_c] + [1.0] * 5)
    assert r.dtype == np.float64 and r.shape == (10,)
    np.testing.assert_array_equal(D.repeat_factors(classes, threshold=0.0), np.ones(10))
    # An image without classes keeps 1 but still counts in f_c's denominator.
    np.testing.assert_allclose(D.repeat_factors([[], ["a"]], threshold=0.9),
                               [1.0, math.sqrt(0.9 / 0.5)])


def test_epoch_indices_round_stochastically_and_are_seeded():
    factors = np.array([1.0, 2.5, 1.2])
    epochs = [D.epoch_indices(factors, seed=3, epoch=e) for e in range(400)]
    for order in epochs[:20]:
        counts = np.bincount(order, minlength=3)
        assert counts[0] == 1 and counts[1] in (2, 3) and counts[2] in (1, 2)
    mean = np.mean([np.bincount(o, minlength=3) for o in epochs], axis=0)
    np.testing.assert_allclose(mean, factors, atol=0.08)
    np.testing.assert_array_equal(D.epoch_indices(factors, 3, 7), epochs[7])
    assert not np.array_equal(D.epoch_indices(factors, 4, 7), epochs[7])


def test_index_stream_state_round_trip():
    stream = D.IndexStream(np.array([1.0, 1.0, 3.0]), seed=5)
    stream.take(7)  # crosses an epoch boundary (epochs hold 5 samples)
    state = stream.state_dict()
    assert state["epoch"] == 1 and state["num_images"] == 3
    expected = stream.take(6)
    again = D.IndexStream(np.array([1.0, 1.0, 3.0]), seed=5)
    again.load_state_dict(state)
    assert again.take(6) == expected
    with pytest.raises(ValueError, match="sampler state is for 3 images"):
        D.IndexStream(np.ones(4), seed=5).load_state_dict(state)


# --- dataset ----------------------------------------------------------------------------------

def test_masks_to_boxes_is_exclusive_at_the_far_edge():
    masks = torch.zeros((2, 8, 10), dtype=torch.uint8)
    masks[0, 2:5, 3:4] = 1
    boxes = D.masks_to_boxes(masks)
    assert boxes.dtype == torch.float32 and boxes.shape == (2, 4)
    assert boxes.tolist() == [[3.0, 2.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0]]


def test_dataset_items_have_mask_rcnn_shapes_and_seeded_augmentation(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    ds = D.load_spec(D.DataSpec(path, images))
    items, _ = D.training_items([ds])
    dataset = D.InstanceDataset(items, {"a": 1, "b": 2}, D.train_transform(48))
    image, target = dataset[(0, 11)]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    n = len(target["labels"])
    assert target["labels"].dtype == torch.int64 and set(target["labels"].tolist()) <= {1, 2}
    assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
    assert target["masks"].shape == (n, 48, 48) and target["masks"].dtype == torch.uint8
    torch.testing.assert_close(target["boxes"], D.masks_to_boxes(target["masks"]))
    same_image, same = dataset[(0, 11)]
    assert torch.equal(image, same_image) and torch.equal(target["masks"], same["masks"])
    assert any(not torch.equal(dataset[(0, s)][0], image) for s in (12, 13, 14))


def test_dataset_without_transform_keeps_the_file_boxes(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    ds = D.load_spec(D.DataSpec(path, images))
    image, target = D.InstanceDataset(D.training_items([ds])[0], {"a": 1, "b": 2})[0]
    assert image.shape == (3, 64, 64)
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[6, 8, 30, 34], [36, 30, 60, 58]]
    assert int(target["masks"][0].sum()) == 24 * 26


def test_dataset_refuses_an_image_of_another_size(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    ds = D.load_spec(D.DataSpec(path, images))
    from weakpaste.io.images import write_image

    write_image(images / "img0.png", np.zeros((10, 12, 3), dtype=np.uint8))
    with pytest.raises(WeakpasteError) as err:
        D.InstanceDataset(D.training_items([ds])[0], {"a": 1, "b": 2})[0]
    assert str(err.value) == (f"{images / 'img0.png'}: image is 12x10 but its COCO entry says "
                              "64x64; fix 'width'/'height' or the image")


def test_worker_error_line_recovers_the_one_line_message():
    wrapped = WeakpasteError("Caught WeakpasteError in DataLoader worker process 0.\n"
                             "Original Traceback (most recent call last):\n  File ...\n"
                             "weakpaste.core.errors.WeakpasteError: x.png: image file not found")
    assert D.worker_error_line(wrapped) == "x.png: image file not found"
