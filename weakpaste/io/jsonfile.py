"""Small user-written files (class weights, distractor words, labels): one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from weakpaste.errors import WeakpasteError


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
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise WeakpasteError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); write "
                             f"an object like {example}") from None
