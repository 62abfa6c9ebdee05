"""Caption rewriting: target-class words -> random distractors (EM-Paste appendix §7).

A generated background must not show a target object, since it would come without a label
and teach the model that the object is background. So every word of a caption that names a
target class (COCO and VOC names, synonyms, plurals; see ``vocabulary``) is replaced by a
random distractor word of the class's supercategory (Table 6, extendable by a file).

Matching is case-insensitive on word boundaries, longest name first ("teddy bear" before
"bear", "hot dog" before "dog"), with spaces or hyphens between the words of a multiword name.
The replacement keeps the original's case pattern and number ("dogs" -> "lions"), and a
preceding "a"/"an" is fixed to agree with it. Randomness comes only from the Generator passed
in; ``rewrite_captions`` gives caption i the i-th child of ``SeedSequence(seed)``, so a
caption's rewrite depends on the seed and its position, not on batching or workers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from weakpaste.backgrounds import DISTRACTORS_FLAG, vocabulary
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.jsonfile import read_json

_IRREGULAR_PLURALS = {"scarf": "scarves", "mango": "mangoes", "gloves": "gloves",
                      "trousers": "trousers", "coffee": "coffee", "detergent": "detergent",
                      "sheep": "sheep"}
_SIBILANT = ("s", "x", "z", "ch", "sh")


def pluralize(word: str) -> str:
    """English plural of a noun or noun phrase (its last word), by rule and a few exceptions.

    Args:
        word: e.g. "berry", "washing machine", "T-shirt".

    Returns:
        e.g. "berries", "washing machines", "T-shirts".
    """
    head, sep, last = word.rpartition(" ")
    low = last.lower()
    if low in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[low]
        plural = last[0] + plural[1:] if last[:1].isupper() else plural
    elif last.isupper() and len(last) > 1:
        plural = last + "s"  # acronyms: UFOs
    elif low.endswith(_SIBILANT):
        plural = last + "es"
    elif len(low) > 1 and low.endswith("y") and low[-2] not in "aeiou":
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return head + sep + plural


def _plural_variants(word: str) -> set[str]:
    """Plural spellings a caption may use for ``word`` (extra non-words are harmless)."""
    head, sep, last = word.rpartition(" ")
    forms = {last + "s", pluralize(last)}
    if last.endswith("f"):
        forms.add(last[:-1] + "ves")
    if last.endswith("fe"):
        forms.add(last[:-2] + "ves")
    return {head + sep + f for f in forms}


@dataclass(frozen=True)
class Term:
    """One surface form of a target class."""

    text: str
    target_class: str
    supercategory: str
    plural: bool


@dataclass(frozen=True)
class Replacement:
    """One replaced word of a caption; ``start``/``end`` index the original caption."""

    start: int
    end: int
    original: str
    target_class: str
    supercategory: str
    replacement: str


def vocabulary_terms(classes: Sequence[str] | None = None) -> list[Term]:
    """Every surface form of the target classes.

    Args:
        classes: COCO or VOC class names to treat as targets (None: all COCO + VOC classes).

    Raises:
        WeakpasteError: a class name is neither a COCO nor a VOC class.
    """
    voc_to_coco = {"aeroplane": "airplane", "diningtable": "dining table",
                   "motorbike": "motorcycle", "pottedplant": "potted plant", "sofa": "couch",
                   "tvmonitor": "tv"}
    wanted = None
    if classes is not None:
        wanted = set()
        for name in classes:
            key = voc_to_coco.get(name.lower(), name.lower())
            if key not in vocabulary.CLASSES:
                raise WeakpasteError(f"unknown target class {name!r}; use COCO or VOC class "
                                     "names, e.g. person, dog, dining table, tvmonitor")
            wanted.add(key)
    terms: dict[str, Term] = {}
    for cls, (supercat, words) in vocabulary.CLASSES.items():
        if wanted is not None and cls not in wanted:
            continue
        for word in words:
            if word.endswith("*"):
                forms = [(word[:-1], True)]
            elif word.endswith("="):
                forms = [(word[:-1], False)]
            else:
                forms = [(word, False)] + [(p, True) for p in sorted(_plural_variants(word))]
            for text, plural in forms:
                # An explicitly listed form wins over a derived one of another class.
                terms.setdefault(_normalize(text), Term(text.lower(), cls, supercat, plural))
    return sorted(terms.values(), key=lambda t: (-len(t.text), t.text))


def _normalize(text: str) -> str:
    """Lookup key of a mention: lower case, hyphens and runs of spaces as one space."""
    return re.sub(r"[\s-]+", " ", text.lower())


def _compile(terms: Sequence[Term]) -> re.Pattern:
    alternatives = [r"[\s-]+".join(re.escape(w) for w in re.split(r"[\s-]+", t.text))
                    for t in terms]
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)


def load_distractors(path: str | os.PathLike) -> dict[str, list[str]]:
    """Extra distractor words from a JSON file ``{"supercategory": ["word", ...], ...}``.

    Raises:
        WeakpasteError: missing file, bad JSON or an unknown supercategory.
    """
    data = read_json(path, what="distractors file", example='{"animal": ["camel", "deer"]}')
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(w, str) and w.strip() for w in v)
            for v in data.values()):
        raise WeakpasteError(f"{path}: distractors must be a JSON object of supercategory -> "
                             'list of words, e.g. {"animal": ["camel", "deer"]}')
    unknown = sorted(set(data) - set(vocabulary.SUPERCATEGORIES))
    if unknown:
        raise WeakpasteError(f"{path}: unknown supercategory {unknown[0]!r}; use one of: "
                             f"{', '.join(vocabulary.SUPERCATEGORIES)}")
    return {k: [w.strip() for w in v] for k, v in data.items()}


def _match_case(original: str, word: str) -> str:
    if original.isupper() and len(original) > 1:
        return word.upper()
    if original[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


# Person words that captions also use as modifiers of an animal or object ("baby elephant").
_MODIFIERS = frozenset({"baby", "babies", "adult", "adults", "mother", "mothers", "father",
                        "fathers", "mom", "dad"})

_ARTICLE = re.compile(r"\b(a|an)(\s+)$", re.IGNORECASE)


def _fix_article(before: str, word: str) -> str:
    """``before`` with a trailing "a"/"an" made to agree with ``word``."""
    m = _ARTICLE.search(before)
    if not m:
        return before
    # Acronyms are spelled out: "a UFO"; otherwise a vowel letter means a vowel sound.
    vowel = word[:1].lower() in "aeiou" and not word.split("-")[0].isupper()
    article = "an" if vowel else "a"
    if m.group(1)[0].isupper():
        article = article.capitalize()
    return before[:m.start()] + article + m.group(2)


class CaptionRewriter:
    """Replaces target-class words by distractors of their supercategory.

    Args:
        extra_distractors: supercategory -> more distractor words (added to Table 6).
        classes: the target classes (None: all COCO + VOC classes).

    Attributes:
        distractors: supercategory -> usable distractor words, sorted.
        dropped_distractors: distractor words left out because they name a target class.
    """

    def __init__(self, extra_distractors: Mapping[str, Sequence[str]] | None = None,
                 classes: Sequence[str] | None = None):
        self.terms = vocabulary_terms(classes)
        self._by_text = {_normalize(t.text): t for t in self.terms}
        self._pattern = _compile(self.terms)
        # Distractors are screened against the whole vocabulary, whatever the targets.
        screen = _compile(vocabulary_terms())
        merged: dict[str, set[str]] = {k: set(v) for k, v in
                                       vocabulary.TABLE6_DISTRACTORS.items()}
        for k, words in (extra_distractors or {}).items():
            merged.setdefault(k, set()).update(words)
        self.distractors: dict[str, list[str]] = {}
        self.dropped_distractors: dict[str, list[str]] = {}
        for k, words in merged.items():
            keep = sorted(w for w in words if not screen.search(w))
            dropped = sorted(set(words) - set(keep))
            if dropped:
                self.dropped_distractors[k] = dropped
            self.distractors[k] = keep
        needed = {t.supercategory for t in self.terms}
        empty = sorted(k for k in needed if not self.distractors.get(k))
        if empty:
            raise WeakpasteError(f"no usable distractor word for supercategory {empty[0]!r} "
                                 f"(all name a target class); add some with {DISTRACTORS_FLAG} "
                                 "FILE")

    def find(self, text: str) -> list[tuple[int, int, Term]]:
        """Target-class mentions in ``text`` as (start, end, term), left to right.

        A person word used as a modifier of the next mention ("baby elephant", "adult
        giraffe", "mother bear") is not a mention: the next word is, and replacing both would
        make "monkey lion".
        """
        found = [(m.start(), m.end(), self._by_text[_normalize(m.group(0))])
                 for m in self._pattern.finditer(text)]
        return [f for k, f in enumerate(found)
                if not (f[2].text in _MODIFIERS and k + 1 < len(found)
                        and not text[f[1]:found[k + 1][0]].strip())]

    def rewrite(self, text: str, rng: np.random.Generator) -> tuple[str, list[Replacement]]:
        """Replace every target-class mention by a random distractor.

        Args:
            text: the caption.
            rng: the caption's Generator (one draw per mention, left to right).

        Returns:
            (rewritten caption, replacements in caption order).
        """
        pieces: list[str] = []
        replacements: list[Replacement] = []
        pos = 0
        for start, end, term in self.find(text):
            words = self.distractors[term.supercategory]
            word = words[int(rng.integers(len(words)))]
            if term.plural:
                word = pluralize(word)
            original = text[start:end]
            word = _match_case(original, word)
            before = "".join(pieces) + text[pos:start]
            pieces = [_fix_article(before, word), word]
            pos = end
            replacements.append(Replacement(start, end, original, term.target_class,
                                            term.supercategory, word))
        pieces.append(text[pos:])
        return "".join(pieces), replacements

    def config(self) -> dict:
        """The rewriter's effective vocabulary sources (for the manifest)."""
        return {"distractors": self.distractors, "dropped_distractors": self.dropped_distractors,
                "terms": len(self.terms)}


def rewrite_captions(captions: Sequence[str], rewriter: CaptionRewriter,
                     seed: int | np.random.SeedSequence) -> list[tuple[str, list[dict]]]:
    """Rewrite captions, caption i with ``default_rng(SeedSequence(seed).spawn(n)[i])``.

    Args:
        captions: the captions.
        rewriter: the rewriter.
        seed: an int or a SeedSequence (the stage passes its rewriting child).

    Returns:
        Per caption: (rewritten text, replacements as dicts).
    """
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    seeds = root.spawn(len(captions))
    out = []
    for text, s in zip(captions, seeds, strict=True):
        new, reps = rewriter.rewrite(text, np.random.default_rng(s))
        out.append((new, [asdict(r) for r in reps]))
    return out
