import numpy as np
import pytest
from pycocotools import mask as mask_utils

from weakpaste.io.rle import bad_uncompressed, first_bad_compressed


def _to_string(runs: list[int]) -> str:
    """pycocotools' rleToString, transcribed: runs -> compressed counts (any runs, even
    negative ones, so that corrupt strings can be made on purpose)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_pycocotools_strings_of_every_shape_pass():
    rng = np.random.default_rng(0)
    counts, sizes = [], []
    for h, w in [(1, 1), (3, 7), (40, 30), (64, 64), (5, 300)]:
        for mask in (rng.random((h, w)) < 0.5, np.ones((h, w), bool), np.zeros((h, w), bool)):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            counts.append(rle["counts"].decode())
            sizes.append((h, w))
    assert first_bad_compressed(counts, sizes) is None
    assert first_bad_compressed([c.encode() for c in counts], sizes) is None  # bytes too
    assert first_bad_compressed([], []) is None


def test_reference_encoder_matches_pycocotools():
    mask = np.zeros((6, 5), np.uint8, order="F")
    mask[1:4, 2:4] = 1
    runs = [13, 3, 3, 3, 8]  # column-major: two empty columns and a row, ...
    assert sum(runs) == 30
    assert _to_string(runs) == mask_utils.encode(mask)["counts"].decode()


@pytest.mark.parametrize("runs, size, problem", [
    ([0, 5, 3, 2, 10], (5, 4), None),  # deltas from the fourth run on, one negative
    ([0, 1000, 199000], (400, 500), None),  # numbers of several characters
    ([100, 50], (10, 20), "RLE runs add up to 150 pixels, not 10x20 = 200"),
    ([5, 10, 2, -3, 6], (4, 5), "compressed RLE counts decode to a negative run length"),
    ([0, 2**40], (1, 1), "compressed RLE counts hold a run length too large for any image"),
])
def test_runs_are_decoded_exactly(runs, size, problem):
    good = mask_utils.encode(np.asfortranarray(np.eye(3, dtype=np.uint8)))["counts"].decode()
    bad = first_bad_compressed([good, _to_string(runs)], [(3, 3), size])
    assert bad == (None if problem is None else (1, problem))


def test_first_bad_string_is_named():
    good = mask_utils.encode(np.asfortranarray(np.eye(4, dtype=np.uint8)))["counts"].decode()
    assert first_bad_compressed([good, good, "x!"], [(4, 4)] * 3)[0] == 2
    assert first_bad_compressed([good, "é", good], [(4, 4)] * 3) == (
        1, "compressed RLE counts hold non-ASCII characters")
    assert first_bad_compressed(["", good], [(4, 4)] * 2) == (
        0, "RLE runs add up to 0 pixels, not 4x4 = 16")
    assert first_bad_compressed([""], [(4, 4)]) == (0, "RLE runs add up to 0 pixels, not 4x4 = 16")
    assert first_bad_compressed([good], [(4, 5)]) == (
        0, "RLE runs add up to 16 pixels, not 4x5 = 20")


def test_uncompressed_counts():
    assert bad_uncompressed([3, 2, 1], 2, 3) is None
    assert bad_uncompressed([3, 2, 2], 2, 3) == "RLE runs add up to 7 pixels, not 2x3 = 6"
    assert bad_uncompressed([3, -1, 4], 2, 3) == \
        "uncompressed RLE counts hold a negative run length"
    assert bad_uncompressed([3, 2.5, 0.5], 2, 3) == "uncompressed RLE counts must be integers"
    assert bad_uncompressed([True, 5], 2, 3) == "uncompressed RLE counts must be integers"


def test_bytes_rle_gives_pycocotools_its_types_without_changing_the_input():
    from pycocotools import mask as mask_utils

    from weakpaste.io.rle import bytes_rle

    mask = np.zeros((4, 5), dtype=np.uint8, order="F")
    mask[1:3, 2:4] = 1
    encoded = mask_utils.encode(mask)
    as_json = {"size": (4, 5), "counts": encoded["counts"].decode()}
    got = bytes_rle(as_json)
    assert got == {"size": [4, 5], "counts": encoded["counts"]}
    assert isinstance(as_json["counts"], str)  # the input is not changed
    assert mask_utils.area(got) == 4
    assert bytes_rle(got) == got  # bytes stay bytes
