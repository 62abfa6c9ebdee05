"""Run manifests and output folders.

Every stage writes ``OUT/manifest.json``: stage, resolved config, seed, version, input hashes,
counts and a status. It is written first with ``status="running"`` and rewritten with
``status="complete"`` at the end, so an interrupted run is recognisable and resumable, and
``--overwrite`` only ever deletes folders that weakpaste made.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from weakpaste import __version__
from weakpaste.errors import WeakpasteError
from weakpaste.io.images import atomic_write_bytes

MANIFEST = "manifest.json"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(config: dict) -> str:
    """Stable hash of a JSON-able config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def check_not_an_input(out_dir: str | os.PathLike,
                       inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output folder that is, contains, or lies inside one of the inputs.

    ``--overwrite`` deletes the output folder and a run writes into it, so either would
    destroy an input (``paste --bank B --out B --overwrite`` deleted the bank).

    Raises:
        WeakpasteError: naming the output, the input and the fix.
    """
    out = Path(out_dir).resolve()
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(item).resolve()
        if out == path or out in path.parents or path in out.parents:
            raise WeakpasteError(f"{out_dir}: the output folder overlaps the input {item}; "
                                 "choose an --out outside every input")


def prepare_output_dir(out_dir: str | os.PathLike, *, overwrite: bool = False,
                       resume: bool = False, stage: str,
                       inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Create ``out_dir`` or check that it may be used.

    Args:
        out_dir: the output folder.
        overwrite: delete an existing weakpaste output of any stage first.
        resume: keep an existing output of the same ``stage`` to continue it.
        stage: the stage about to write.
        inputs: the run's input files and folders; ``out_dir`` may not be, contain or lie
            inside any of them (``check_not_an_input``).

    Raises:
        WeakpasteError: the folder is not empty and neither flag allows it, or ``overwrite``
            was asked for a folder weakpaste did not make.
    """
    out = Path(out_dir)
    check_not_an_input(out, inputs)
    if out.exists() and not out.is_dir():
        raise WeakpasteError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        manifest = read_manifest(out)
        if resume:
            if manifest is None or manifest.get("stage") != stage:
                raise WeakpasteError(f"{out}: nothing to resume (no {stage} manifest.json); "
                                     "drop --resume or choose another --out")
            return out
        if not overwrite:
            raise WeakpasteError(f"{out}: output folder is not empty; pass --overwrite to "
                                 "replace it, --resume to continue it, or choose another --out")
        if manifest is None:
            raise WeakpasteError(f"{out}: not a weakpaste output (no manifest.json), so "
                                 "--overwrite will not delete it; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_manifest(out_dir: str | os.PathLike, *, stage: str, config: dict,
                   seed: int | None = None, inputs: dict[str, str] | None = None,
                   counts: dict[str, Any] | None = None, status: str = "complete",
                   extra: dict[str, Any] | None = None) -> dict:
    """Atomically write ``out_dir/manifest.json`` and return its content.

    Args:
        out_dir: the output folder.
        stage: stage name ("paste", "bank", ...).
        config: the resolved configuration (JSON-able).
        seed: the run's seed.
        inputs: input name -> SHA-256 (``file_sha256``).
        counts: what was produced.
        status: "running" while the run goes on, "complete" at the end.
        extra: more stage-specific fields.
    """
    doc = {"stage": stage, "status": status, "weakpaste_version": __version__,
           "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "seed": seed, "config": config, "config_hash": config_hash(config),
           "inputs": inputs or {}, "counts": counts or {}}
    doc.update(extra or {})
    atomic_write_bytes(Path(out_dir) / MANIFEST, json.dumps(doc, indent=2).encode())
    return doc
