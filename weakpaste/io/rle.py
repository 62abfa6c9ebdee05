"""Validation of run-length encoded masks read from files, before pycocotools touches them.

pycocotools trusts its input: a compressed ``counts`` string with characters outside its
alphabet or ending in the middle of a number makes it read past the string, and counts that
sum past H*W make ``decode`` write past its buffer and ``merge``/``iou`` loop for minutes.
So every RLE that comes from a file is decoded here first, in numpy, for all the masks of a
file at once, and must give non-negative runs that add up to exactly H*W.

The compressed form (pycocotools' ``rleToString``): each run length is written in 5-bit
groups, least significant first, as characters ``chr(48 + group)`` with bit 0x20 set on all
but a number's last character and bit 0x10 of the last one holding the sign; from the fourth
run on, a run is stored as its difference to the run two before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A run length fits in 7 characters (35 bits); longer numbers are garbage, and would
# overflow the int64 arithmetic below.
_MAX_DIGITS = 7


def _as_codes(counts: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The counts strings as one uint8 array of codes (character - 48: valid ones are 0..63,
    anything else wraps above), their lengths, and the index of the first string that is
    not ASCII (None when all are)."""
    raw = []
    for j, s in enumerate(counts):
        b = s if isinstance(s, bytes) else s.encode("utf-8")
        if not b.isascii():
            return np.zeros(0, np.uint8), np.zeros(0, np.int64), j
        raw.append(b)
    lengths = np.fromiter((len(b) for b in raw), dtype=np.int64, count=len(raw))
    codes = np.frombuffer(b"".join(raw), dtype=np.uint8) - np.uint8(48)
    return codes, lengths, None


def _runs(codes: np.ndarray, ends: np.ndarray, string_of_number: np.ndarray,
          first_number: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode well-formed codes into run lengths.

    Args:
        codes: uint8 (C,) codes 0..63 of all strings, concatenated.
        ends: int64 (R,) index of each number's last code.
        string_of_number: int64 (R,) which string each number belongs to.
        first_number: int64 (S,) index of each string's first number.

    Returns:
        (runs int64 (R,), digits per number int64 (R,)).
    """
    if not ends.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.r_[0, ends[:-1] + 1]
    digits = ends - starts + 1
    # Digit by digit: most numbers have one or two, so this touches few codes. Numbers
    # longer than _MAX_DIGITS are rejected by the caller.
    runs = (codes[starts] & 0x1F).astype(np.int64)
    longer = np.arange(runs.size)
    for d in range(1, _MAX_DIGITS):
        longer = longer[digits[longer] > d]
        if not longer.size:
            break
        runs[longer] |= (codes[starts[longer] + d] & 0x1F).astype(np.int64) << (5 * d)
    negative = np.flatnonzero(codes[ends] & 0x10)
    runs[negative] -= np.int64(1) << (5 * np.minimum(digits[negative], _MAX_DIGITS))
    # Runs from the fourth on are deltas to the run two before: cumulative sums over each
    # string's odd positions (from 1) and even positions (from 2).
    position = np.arange(runs.size) - first_number[string_of_number]
    for parity in (1, 0):
        chained = np.flatnonzero((position >= 1) & ((position & 1) == parity))
        if chained.size:
            # A cumulative sum restarted at each string (strings are contiguous).
            strings = string_of_number[chained]
            values = runs[chained]
            total = np.cumsum(values)
            first = np.flatnonzero(np.r_[True, strings[1:] != strings[:-1]])
            before = total[first] - values[first]
            runs[chained] = total - np.repeat(before, np.diff(np.r_[first, chained.size]))
    return runs, digits


def first_bad_compressed(counts: Sequence[str | bytes],
                         sizes: Sequence[tuple[int, int]]) -> tuple[int, str] | None:
    """Check compressed RLE ``counts`` strings against their mask sizes.

    Args:
        counts: S compressed counts (str or bytes).
        sizes: S (H, W), the size of each mask.

    Returns:
        None when every string decodes into non-negative runs adding up to H*W, else
        (index of the first bad string, what is wrong).
    """
    if not counts:
        return None
    codes, lengths, not_ascii = _as_codes(counts)
    if not_ascii is not None:
        return not_ascii, "compressed RLE counts hold non-ASCII characters"
    string_end = np.cumsum(lengths)
    outside = codes > 63
    if outside.any():
        j = int(np.searchsorted(string_end, np.argmax(outside), side="right"))
        return j, "compressed RLE counts hold characters outside pycocotools' alphabet '0'..'o'"
    terminal = (codes & 0x20) == 0
    nonempty = np.flatnonzero(lengths)
    unfinished = nonempty[~terminal[string_end[nonempty] - 1]]
    if unfinished.size:
        return int(unfinished[0]), "compressed RLE counts end in the middle of a number"
    ends = np.flatnonzero(terminal)
    string_of_number = np.searchsorted(string_end, ends, side="right")
    numbers = np.bincount(string_of_number, minlength=len(lengths))
    runs, digits = _runs(codes, ends, string_of_number, np.cumsum(numbers) - numbers)
    too_long = np.flatnonzero(digits > _MAX_DIGITS)
    if too_long.size:
        return int(string_of_number[too_long[0]]), "compressed RLE counts hold a run length " \
                                                   "too large for any image"
    negative = np.flatnonzero(runs < 0)
    if negative.size:
        return int(string_of_number[negative[0]]), "compressed RLE counts decode to a " \
                                                   "negative run length"
    totals = np.bincount(string_of_number, weights=runs, minlength=len(lengths))
    area = np.array([h * w for h, w in sizes], dtype=np.float64)
    wrong = np.flatnonzero(totals != area)
    if wrong.size:
        j = int(wrong[0])
        return j, (f"RLE runs add up to {int(totals[j])} pixels, not {sizes[j][0]}x"
                   f"{sizes[j][1]} = {int(area[j])}")
    return None


def bad_uncompressed(counts: list, height: int, width: int) -> str | None:
    """What is wrong with uncompressed RLE ``counts`` (a list of run lengths), or None."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        return "uncompressed RLE counts must be integers"
    if any(v < 0 for v in counts):
        return "uncompressed RLE counts hold a negative run length"
    total = sum(counts)
    if total != height * width:
        return f"RLE runs add up to {total} pixels, not {height}x{width} = {height * width}"
    return None


__all__ = ["first_bad_compressed", "bad_uncompressed"]


def bytes_rle(rle: dict) -> dict:
    """A compressed RLE as pycocotools' C functions take it: ``counts`` as bytes (JSON gives
    str) and ``size`` a [height, width] list.

    Args:
        rle: {"size": [h, w], "counts": str | bytes}.

    Returns:
        A new dict; ``rle`` is not changed.
    """
    counts = rle["counts"]
    return {"size": list(rle["size"]),
            "counts": counts.encode() if isinstance(counts, str) else counts}
