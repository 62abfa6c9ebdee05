"""Caption rewriting (EM-Paste appendix §7, Table 6): vocabulary, distractors, determinism."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import needs_shared

from weakpaste.backgrounds import vocabulary
from weakpaste.backgrounds.rewrite import (
    _MODIFIERS,
    CaptionRewriter,
    load_distractors,
    pluralize,
    rewrite_captions,
    vocabulary_terms,
)
from weakpaste.core.errors import WeakpasteError
from weakpaste.io.coco_captions import load_coco_captions


def _one_word_rewriter(**kw) -> CaptionRewriter:
    """A rewriter whose every supercategory has one distractor, for exact expected text."""
    rw = CaptionRewriter(**kw)
    rw.distractors = {"animal": ["lion"], "food": ["olive"], "furniture": ["piano"],
                      "person": ["monkey"], "kitchen": ["kettle"], "vehicle": ["UFO"],
                      "electronic": ["battery"], "indoor": ["pencil case"],
                      "sports": ["tent"], "accessory": ["scarf"], "outdoor": ["tree"],
                      "appliance": ["lamp"]}
    return rw


def _residual_pattern(rw: CaptionRewriter) -> re.Pattern:
    """An independent check: any vocabulary term as a whole word, hyphen or space between
    (person words kept as modifiers, "baby elephant" -> "baby lion", are checked apart)."""
    alts = [r"[\s-]+".join(map(re.escape, t.text.split())) for t in rw.terms
            if t.text not in _MODIFIERS]
    return re.compile(r"\b(?:" + "|".join(alts) + r")\b", re.IGNORECASE)


def test_smoke_text_without_targets_is_unchanged():
    rw = CaptionRewriter()
    text, reps = rw.rewrite("A view of a mountain lake at sunset.", np.random.default_rng(0))
    assert text == "A view of a mountain lake at sunset." and reps == []


def test_exact_rewrite_case_number_multiword_and_articles():
    rw = _one_word_rewriter()
    caption = ("Two Dogs and a hot-dog near the Dining Table; PEOPLE with knives, an elephant "
               "and a bus.")
    text, reps = rw.rewrite(caption, np.random.default_rng(0))
    assert text == ("Two Lions and an olive near the Piano; MONKEYS with kettles, a lion "
                    "and a UFO.")
    assert [(r.original, r.target_class, r.supercategory, r.replacement) for r in reps] == [
        ("Dogs", "dog", "animal", "Lions"), ("hot-dog", "hot dog", "food", "olive"),
        ("Dining Table", "dining table", "furniture", "Piano"),
        ("PEOPLE", "person", "person", "MONKEYS"), ("knives", "knife", "kitchen", "kettles"),
        ("elephant", "elephant", "animal", "lion"), ("bus", "bus", "vehicle", "UFO")]
    assert all(caption[r.start:r.end] == r.original for r in reps)


@pytest.mark.parametrize("word, cls", [
    ("people", "person"), ("men", "person"), ("women", "person"), ("children", "person"),
    ("knives", "knife"), ("mice", "mouse"), ("buses", "bus"), ("sheep", "sheep"),
    ("skis", "skis"), ("hot dog", "hot dog"), ("dining table", "dining table"),
    ("cell phones", "cell phone"), ("teddy bears", "teddy bear"), ("tvmonitor", "tv"),
    ("aeroplanes", "airplane"), ("motorbike", "motorcycle"), ("sofas", "couch"),
    ("pottedplant", "potted plant"), ("Wine Glasses", "wine glass")])
def test_plural_synonym_and_multiword_forms_are_found(word, cls):
    found = CaptionRewriter().find(f"there is {word} here")
    assert [(s, e, t.target_class) for s, e, t in found] == [(9, 9 + len(word), cls)]


def test_person_words_as_modifiers_are_not_mentions():
    rw = _one_word_rewriter()
    text, reps = rw.rewrite("A baby elephant and a baby; an adult giraffe.",
                            np.random.default_rng(0))
    assert text == "A baby lion and a monkey; an adult lion."
    assert [r.original for r in reps] == ["elephant", "baby", "giraffe"]


def test_word_boundaries():
    rw = CaptionRewriter()
    for text in ("a catalog of scattered carpets", "a doghouse by the cartoon bushes",
                 "bearded tableware", "an orangery"):
        assert rw.find(text) == [], text


def test_distractors_naming_a_target_class_are_dropped():
    rw = CaptionRewriter()
    assert "horse" not in rw.distractors["animal"] and "sink" not in rw.distractors["kitchen"]
    assert rw.dropped_distractors["animal"] == ["horse"]
    assert rw.distractors["person"] == ["gorilla", "monkey"]
    assert set(vocabulary.TABLE6_DISTRACTORS) == set(vocabulary.SUPERCATEGORIES)


def test_distractor_file_extends_table6(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"person": ["robot"], "animal": ["deer", "dog"]}))
    rw = CaptionRewriter(load_distractors(path))
    assert rw.distractors["person"] == ["gorilla", "monkey", "robot"]
    assert "deer" in rw.distractors["animal"] and "dog" not in rw.distractors["animal"]


def test_distractor_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(WeakpasteError) as err:
        load_distractors(bad)
    assert str(err.value) == (f"{bad}: not valid JSON (Expecting property name enclosed in "
                              'double quotes at line 1); write an object like {"animal": ["camel", '
                              '"deer"]}')
    bad.write_text(json.dumps({"pets": ["x"]}))
    with pytest.raises(WeakpasteError, match=r"unknown supercategory 'pets'; use one of: "
                                             r"person, vehicle"):
        load_distractors(bad)
    with pytest.raises(WeakpasteError, match="distractors file not found"):
        load_distractors(tmp_path / "none.json")


def test_unknown_target_class():
    with pytest.raises(WeakpasteError) as err:
        CaptionRewriter(classes=["unicorn"])
    assert str(err.value) == ("unknown target class 'unicorn'; use COCO or VOC class names, "
                              "e.g. person, dog, dining table, tvmonitor")


def test_restricted_classes_only_rewrite_those():
    rw = CaptionRewriter(classes=["dog", "tvmonitor"])
    text, reps = rw.rewrite("a man and his dog watch tv", np.random.default_rng(0))
    assert [r.target_class for r in reps] == ["dog", "tv"] and text.startswith("a man and his ")


def test_pluralize():
    assert [pluralize(w) for w in ("berry", "washing machine", "T-shirt", "UFO", "scarf",
                                   "bus", "gloves", "monkey")] == [
        "berries", "washing machines", "T-shirts", "UFOs", "scarves", "buses", "gloves",
        "monkeys"]


def test_determinism_seed_and_position_only():
    caps = ["a dog and a cat on a bed", "a man rides a horse", "two people eat pizza"] * 3
    rw = CaptionRewriter()
    a = rewrite_captions(caps, rw, seed=7)
    assert a == rewrite_captions(caps, rw, seed=7)
    assert a != rewrite_captions(caps, rw, seed=8)
    # A caption's rewrite does not depend on how many captions follow it (batching, resume).
    assert rewrite_captions(caps[:4], rw, seed=7) == a[:4]


def test_every_term_maps_to_a_known_supercategory():
    terms = vocabulary_terms()
    assert {t.supercategory for t in terms} == set(vocabulary.SUPERCATEGORIES)
    assert len({t.target_class for t in terms}) == 80


def test_real_coco_captions_keep_no_target_word():
    path = needs_shared("coco_mini", "captions.json")
    caps = load_coco_captions(path)
    rw = CaptionRewriter()
    out = rewrite_captions([c.caption for c in caps], rw, seed=0)
    residual = _residual_pattern(rw)
    left = [(c.caption, new) for c, (new, _) in zip(caps, out, strict=True)
            if residual.search(new)]
    assert left == []
    for new, reps in out:  # a kept modifier is always followed by a replaced mention
        for m in re.finditer(r"\b(" + "|".join(_MODIFIERS) + r")\s+", new, re.IGNORECASE):
            assert any(new[m.end():].startswith(r["replacement"]) for r in reps), new
    assert sum(1 for _, reps in out if reps) > 0.8 * len(caps)
    # Spot checks of words that must go.
    joined = " ".join(new for new, _ in out).lower()
    for word in ("people", "man", "woman", "dog", "giraffe", "pizza", "table", "bus"):
        assert not re.search(rf"\b{word}\b", joined), word
