"""The bank folder's format: its file names, version marker and index lines.

Layout of a bank folder::

    BANK/
      bank.json                 format marker and version
      index.jsonl               one JSON line per segment (metadata only, streamed)
      segments/shard-00000.bin  concatenated segment blobs (the crop and its mask)
      manifest.json             how it was made (stage "bank" or "mine")

A segment's pixels live only in its shard; the index line says where (shard, offset, length).
An older weakpaste refuses a newer bank with one line ("unsupported bank format ... v2;
upgrade weakpaste or rebuild the bank") rather than failing on its blobs.
"""

from __future__ import annotations

import os
from pathlib import Path

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.jsonfile import JsonError, parse_json
from weakpaste.core.manifest import read_manifest
from weakpaste.core.run_options import OUT, OVERWRITE, RESUME

IMAGES_FLAG = "--images"
"""The flag of ``bank from-coco``'s images folder (``BankInputs`` declares it with ``flag=``),
here for the rebuild command this module prints."""

FORMAT = "weakpaste-segment-bank"
# 2: segment blobs in the WPZ1 codec (version 1 banks hold PNG blobs; both are read).
FORMAT_VERSION = 2
INDEX = "index.jsonl"
MARKER = "bank.json"
SHARD_BYTES = 512 << 20
# Fields every index line must carry, with their JSON type.
_INDEX_FIELDS = {"id": int, "class": str, "shard": int, "offset": int, "length": int,
                 "height": int, "width": int}


def shard_name(shard: int) -> str:
    return f"segments/shard-{shard:05d}.bin"


def _bad_entry(entry: object) -> str | None:
    """What is wrong with a parsed index line, or None when it is usable."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    for key, kind in _INDEX_FIELDS.items():
        value = entry.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"field {key!r} is {value!r}"
        if kind is int and value < 0:
            return f"field {key!r} is negative"
    return None


def index_entry(root: Path, number: int, line: str | bytes) -> dict:
    """The parsed index line ``number`` of the bank ``root``.

    Raises:
        WeakpasteError: the line is not a valid index entry.
    """
    try:
        entry = parse_json(line)
    except JsonError as err:
        problem = "not UTF-8" if err.what == "not UTF-8" else f"not JSON: {err.what}"
    else:
        problem = _bad_entry(entry)
    if problem is not None:
        raise WeakpasteError(f"{root}: {INDEX} line {number} is corrupt ({problem}); "
                             f"{bank_fix(root)}")
    return entry


def bank_fix(root: str | os.PathLike, *, incomplete: bool = False) -> str:
    """The command that repairs a bank, from the manifest of the run that made it.

    Args:
        root: the bank folder.
        incomplete: the run stopped half-way (a mined bank can then be resumed); otherwise
            the bank is damaged and must be made again.
    """
    manifest = read_manifest(root) or {}
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    if manifest.get("stage") == "mine":
        if incomplete:
            return (f"complete it with 'weakpaste mine ... {OUT} {root} {RESUME}' (the "
                    "interrupted run's options)")
        return f"mine it again with 'weakpaste mine ... {OUT} {root} {OVERWRITE}'"
    if manifest.get("stage") == "bank" and config.get("coco_json"):
        return (f"rebuild it with 'weakpaste bank from-coco {config['coco_json']} {IMAGES_FLAG} "
                f"{config.get('images_dir')} {OUT} {root} {OVERWRITE}'")
    return (f"rebuild it with 'weakpaste bank from-coco ... {OVERWRITE}' or 'weakpaste mine ... "
            f"{OVERWRITE}'")


def bank_version(root: str | os.PathLike) -> int:
    """The format version in a bank's ``bank.json`` (1 when it names none; blobs are PNG
    below 2).

    Raises:
        WeakpasteError: the marker is unreadable or corrupt, or names another format or a
            version newer than ``FORMAT_VERSION``.
    """
    marker = Path(root) / MARKER
    try:
        meta = parse_json(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, JsonError):
        meta = None
    if not isinstance(meta, dict):
        raise WeakpasteError(f"{marker}: corrupt bank marker; {bank_fix(root)}")
    version = meta.get("version", 1)
    if meta.get("format") != FORMAT or type(version) is not int or version > FORMAT_VERSION:
        raise WeakpasteError(f"{marker}: unsupported bank format {meta.get('format')!r} "
                             f"v{meta.get('version')}; upgrade weakpaste or rebuild the bank")
    return version
