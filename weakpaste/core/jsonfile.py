"""Small user-written files (class weights, distractor words, labels): one-line errors.

``parse_json`` is the one JSON parser of every reader (COCO files, labels, predictions, class
weights, captions, bank indexes, journals, caches): besides malformed text it turns the inputs
that make ``json.loads`` raise other errors (nesting deeper than the interpreter's recursion
limit, an integer of more than 4300 digits) into a ``JsonError`` whose text fits in a
one-line message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from weakpaste.core.errors import WeakpasteError


class JsonError(ValueError):
    """Text that is not JSON a reader can use.

    Attributes:
        what: why, e.g. ``Expecting value`` or ``nested too deeply``.
        line, column: where, for malformed text (else None).
    """

    def __init__(self, what: str, line: int | None = None, column: int | None = None):
        super().__init__(what)
        self.what, self.line, self.column = what, line, column

    def describe(self, column: bool = True) -> str:
        """``what`` and where: ``Expecting value at line 1, column 5``."""
        if self.line is None:
            return self.what
        return f"{self.what} at line {self.line}" + (f", column {self.column}" if column
                                                     else "")

    def __str__(self) -> str:
        return self.describe()


def is_id(value: object) -> bool:
    """Whether ``value`` is a JSON integer (not a bool, which Python counts as an int): what
    COCO and LVIS ids must be."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` whose every failure on bad text is a ``JsonError``.

    Raises:
        JsonError: malformed JSON, bytes that are not UTF-8, nesting too deep for the
            parser, or an integer too long to convert.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise JsonError(err.msg, err.lineno, err.colno) from None
    except RecursionError:
        raise JsonError("nested too deeply") from None
    except UnicodeDecodeError:
        raise JsonError("not UTF-8") from None
    except ValueError:
        # CPython refuses to convert integers of more than 4300 digits (a denial-of-service
        # guard); json.loads passes that on as a bare ValueError.
        raise JsonError("an integer with thousands of digits") from None


def read_text(path: str | os.PathLike, *, what: str, fix: str) -> str:
    """The text of a file a user wrote: UTF-8, with or without a byte-order mark (Excel and
    Notepad write one).

    Args:
        path: the file.
        what: what the file is, for the messages ("labels file").
        fix: what to do when the file is not UTF-8 ("save it as UTF-8").

    Raises:
        WeakpasteError: missing, unreadable or not UTF-8 (e.g. Latin-1): other encodings are
            refused rather than guessed.
    """
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise WeakpasteError(f"{path}: {what} not found") from None
    except UnicodeDecodeError:
        raise WeakpasteError(f"{path}: {what} is not UTF-8 text; {fix}") from None
    except OSError as err:
        raise WeakpasteError(f"{path}: cannot read the {what} ({err.strerror})") from None


def read_json(path: str | os.PathLike, *, what: str, example: str) -> Any:
    """Parse a JSON file a user wrote by hand.

    Args:
        path: the file.
        what: what the file is, for the messages ("class weights file").
        example: a valid document, shown in the fix ('{"dog": 2.0}').

    Returns:
        The parsed document.

    Raises:
        WeakpasteError: missing, unreadable, not UTF-8 or not JSON; the message names the file
            and shows ``example``.
    """
    text = read_text(path, what=what, fix=f"save it as UTF-8 JSON like {example}")
    try:
        return parse_json(text)
    except JsonError as err:
        raise WeakpasteError(f"{path}: not valid JSON ({err.describe(column=False)}); write an "
                             f"object like {example}") from None
