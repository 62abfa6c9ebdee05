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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from weakpaste import __version__
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.jsonfile import JsonError, parse_json
from weakpaste.core.run_options import OUT, OVERWRITE, RESUME

MANIFEST = "manifest.json"
# The marker that makes a folder weakpaste's: only such a folder may be deleted by --overwrite
# (a web app's or npm package's manifest.json must never qualify).
TOOL = "weakpaste"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprints(paths: Iterable[str | os.PathLike]) -> dict[str, list[int]]:
    """path -> [size, modification time in ns] of each file: cheap for thousands of images,
    and changed by any edit, copy or regeneration (``stat`` only, nothing read)."""
    out = {}
    for path in paths:
        st = os.stat(path)
        out[str(path)] = [st.st_size, st.st_mtime_ns]
    return out


def fingerprints_sha256(fingerprints: dict[str, list[int]]) -> str:
    """SHA-256 naming a ``file_fingerprints`` listing (for the manifest's inputs)."""
    h = hashlib.sha256()
    for path, (size, mtime) in fingerprints.items():
        h.update(f"{path}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


def first_change(old: dict | None, new: dict) -> str:
    """`` (a.png differs)``, `` (b.png is new)`` or `` (c.png is gone)``: the first entry
    two listings (name -> hash or fingerprint) disagree on, for a resume refusal; "" when
    ``old`` is unknown or they agree."""
    if not isinstance(old, dict) or not old:
        return ""
    gone = [f for f in old if f not in new]
    added = [f for f in new if f not in old]
    edited = [f for f in new if f in old and old[f] != new[f]]
    for files, what in ((edited, "differs"), (added, "is new"), (gone, "is gone")):
        if files:
            return f" ({files[0]} {what})"
    return ""


def record_listing(out_dir: str | os.PathLike, name: str, listing: dict) -> None:
    """Keep a listing of a run's inputs (file -> hash or fingerprint) in
    ``OUT/.cache/<name>.json``, so that a refused ``--resume`` can name the file that changed
    (the manifest holds only the listing's hash)."""
    folder = Path(out_dir) / ".cache"
    folder.mkdir(exist_ok=True)
    atomic_write_bytes(folder / f"{name}.json", json.dumps(listing).encode())


def recorded_listing(out_dir: str | os.PathLike, name: str) -> dict | None:
    """The listing ``record_listing`` kept, or None (absent or damaged: it only names
    files)."""
    try:
        found = parse_json((Path(out_dir) / ".cache" / f"{name}.json").read_bytes())
    except (OSError, JsonError):
        return None
    return found if isinstance(found, dict) else None


def jsonable(obj: Any) -> Any:
    """``obj`` with arrays as lists and anything else unknown as strings (for manifests)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


def config_hash(config: dict) -> str:
    """Stable hash of a JSON-able config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    """The parsed ``manifest.json`` of a folder, or None when absent or unreadable.

    It may have been written by anything: check ``is_weakpaste_manifest`` before trusting it.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, JsonError):
        return None
    return doc if isinstance(doc, dict) else None


def is_weakpaste_manifest(doc: object) -> bool:
    """Whether ``doc`` is a manifest that weakpaste wrote (tool, stage and version present)."""
    return (isinstance(doc, dict) and doc.get("tool") == TOOL
            and isinstance(doc.get("stage"), str) and bool(doc["stage"])
            and isinstance(doc.get("weakpaste_version"), str))


def read_weakpaste_manifest(out_dir: str | os.PathLike) -> dict | None:
    """``read_manifest`` restricted to manifests weakpaste wrote; anything else gives None."""
    doc = read_manifest(out_dir)
    return doc if is_weakpaste_manifest(doc) else None


def _overlapping(out: Path, inputs: Iterable[str | os.PathLike | None]) -> str | None:
    """The first input that ``out`` is, contains or lies inside (symbolic links resolved)."""
    target = out.resolve()
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(item).resolve()
        if target == path or target in path.parents or path in target.parents:
            return str(item)
    return None


def check_not_an_input(out_dir: str | os.PathLike,
                       inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output folder that is, contains, or lies inside one of the inputs.

    ``--overwrite`` deletes the output folder and a run writes into it, so either would
    destroy an input (``paste --bank B --out B --overwrite`` deleted the bank).

    Raises:
        WeakpasteError: naming the output, the input and the fix.
    """
    item = _overlapping(Path(out_dir), inputs)
    if item is not None:
        raise WeakpasteError(f"{out_dir}: the output folder overlaps the input {item}; "
                             f"choose an {OUT} outside every input")


def check_output_file(out_file: str | os.PathLike, *, overwrite: bool,
                      inputs: Iterable[str | os.PathLike | None]) -> Path:
    """Refuse an output file (a report, a subset) that would change an input or a file the
    user did not give up.

    Args:
        out_file: the file the command will write (atomically).
        overwrite: an existing file may be replaced.
        inputs: the command's input files and folders: the output may not be one of them,
            nor lie inside one (``evaluate-masks BANK --out BANK/index.jsonl`` replaced the
            bank's index), nor contain one.

    Raises:
        WeakpasteError: one line naming the file and the fix.
    """
    out = Path(out_file)
    item = _overlapping(out, inputs)
    if item is not None and out.resolve() == Path(item).resolve():
        raise WeakpasteError(f"{out}: {OUT} would overwrite an input; choose another file")
    if out.is_dir():  # also one that holds an input
        raise WeakpasteError(f"{out}: is a folder; {OUT} names the file to write")
    if item is not None:
        raise WeakpasteError(f"{out}: {OUT} lies inside the input {item}, which the command "
                             "must not change; choose a file outside every input")
    if out.exists() and not overwrite:
        raise WeakpasteError(f"{out}: already exists; pass {OVERWRITE} to replace it or choose "
                             f"another {OUT}")
    return out


def check_output_dir(out_dir: str | os.PathLike, *, overwrite: bool = False,
                     resume: bool = False, stage: str,
                     inputs: Iterable[str | os.PathLike | None] = (),
                     resumable: bool = True) -> Path:
    """Check that ``prepare_output_dir`` may use ``out_dir``, changing nothing.

    A stage calls it before costly start-up (a Ray cluster), so that a wrong ``--out`` is
    refused at once; the arguments and errors are ``prepare_output_dir``'s.
    """
    out = Path(out_dir)
    check_not_an_input(out, inputs)
    if out.exists() and not out.is_dir():
        raise WeakpasteError(f"{out}: exists and is not a folder; choose another {OUT}")
    if out.is_dir() and any(out.iterdir()):
        manifest = read_weakpaste_manifest(out)
        if resume:
            if manifest is None or manifest.get("stage") != stage:
                raise WeakpasteError(f"{out}: nothing to resume (no {stage} manifest.json "
                                     f"written by weakpaste); drop {RESUME} or choose another "
                                     f"{OUT}")
        elif not overwrite:
            # Name only the choices the stage's command has (demo, viz and bank have no
            # --resume: suggesting it sent a new user to a flag that does not exist).
            choices = (f"pass {OVERWRITE} to replace it, {RESUME} to continue it, or choose "
                       f"another {OUT}" if resumable else
                       f"pass {OVERWRITE} to replace it or choose another {OUT}")
            raise WeakpasteError(f"{out}: output folder is not empty; {choices}")
        elif manifest is None:
            raise WeakpasteError(f"{out}: not a weakpaste output (no manifest.json written by "
                                 f"weakpaste), so {OVERWRITE} will not delete it; choose "
                                 f"another {OUT}")
    return out


def prepare_output_dir(out_dir: str | os.PathLike, *, overwrite: bool = False,
                       resume: bool = False, stage: str,
                       inputs: Iterable[str | os.PathLike | None] = (),
                       resumable: bool = True) -> Path:
    """Create ``out_dir`` or check that it may be used.

    Args:
        out_dir: the output folder.
        overwrite: delete an existing weakpaste output of any stage first: a folder whose
            manifest.json weakpaste wrote (``is_weakpaste_manifest``); any other non-empty
            folder is refused.
        resume: keep an existing output of the same ``stage`` to continue it.
        stage: the stage about to write.
        inputs: the run's input files and folders; ``out_dir`` may not be, contain or lie
            inside any of them (``check_not_an_input``).
        resumable: whether the stage's command offers ``--resume`` (the refusal of a
            non-empty folder suggests it only then).

    Raises:
        WeakpasteError: the folder is not empty and neither flag allows it, ``overwrite``
            was asked for a folder weakpaste did not make, or the folder cannot be deleted or
            created (read-only file system, permissions).
    """
    out = check_output_dir(out_dir, overwrite=overwrite, resume=resume, stage=stage,
                           inputs=inputs, resumable=resumable)
    if out.is_dir() and any(out.iterdir()):
        lock_output_dir(out)  # before anything in it is deleted or continued
        if resume:
            _check_no_links(out)
            return out
        _remove_tree(out)  # check_output_dir allowed it: --overwrite of a weakpaste output
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WeakpasteError(f"{out}: cannot create the output folder ({_why(err)}); choose a "
                             f"writable {OUT}") from None
    lock_output_dir(out)
    return out


# Output folders this process holds locked: resolved path -> (descriptor, the folder's inode).
_LOCKS: dict[str, tuple[int, int]] = {}


def lock_output_dir(out: Path) -> None:
    """Hold an exclusive lock on the output folder until its run completes (``write_manifest``
    with ``status="complete"``) or this process ends.

    Two runs resuming (or overwriting) one ``--out`` at once would write the same files and
    journals. The lock is ``flock`` on the folder itself, so it leaves no file behind and the
    kernel drops it with the process, however that ends. Taking it again in this process is a
    no-op; a file system without ``flock`` on folders goes unlocked.

    Raises:
        WeakpasteError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        return
    key = str(out.resolve())
    try:
        inode = os.stat(out).st_ino
    except OSError:
        return
    held = _LOCKS.get(key)
    if held is not None:
        if held[1] == inode:
            return
        release_output_dir(out)  # the folder was deleted and made again (--overwrite)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WeakpasteError(f"{out}: another weakpaste run is using this output folder; wait "
                             f"for it to finish, or choose another {OUT}") from None
    except OSError:
        os.close(fd)
        return
    _LOCKS[key] = (fd, inode)


def release_output_dir(out: str | os.PathLike | None = None) -> None:
    """Release the lock of ``lock_output_dir`` on ``out`` (on every folder when None)."""
    keys = list(_LOCKS) if out is None else [str(Path(out).resolve())]
    for key in keys:
        held = _LOCKS.pop(key, None)
        if held is not None:
            os.close(held[0])


def _check_no_links(out: Path) -> None:
    """Refuse to resume into a folder that holds a symbolic link anywhere: the run would write
    through it, outside ``--out`` (``OUT/images`` linked to the user's photos), or take the file
    it points to for one it made (``OUT/images/000012.jpg``). Every entry at every depth is
    looked at (a ``scandir`` of each folder, no file read): weakpaste makes only real files
    and folders.
    """
    folders = [out]
    while folders:
        with os.scandir(folders.pop()) as found:
            entries = sorted(found, key=lambda e: e.name)
        for entry in entries:
            if entry.is_symlink():
                what = "folder" if entry.is_dir() else "file"
                raise WeakpasteError(f"{entry.path}: is a symbolic link, and a resumed run "
                                     f"writes only inside {OUT}; replace it with the {what} it "
                                     f"points to, or pass {OVERWRITE} instead of {RESUME}")
        # Name order, a folder's own entries before its subfolders': the same link is
        # named on every run.
        folders.extend(e.path for e in reversed(entries) if e.is_dir(follow_symlinks=False))


def _why(err: OSError) -> str:
    return err.strerror or os.strerror(err.errno or 0) or type(err).__name__


def _remove_tree(out: Path) -> None:
    try:
        shutil.rmtree(out)
    except OSError as err:
        where = err.filename or out
        raise WeakpasteError(f"{out}: {OVERWRITE} could not delete {where} ({_why(err)}); "
                             f"fix its permissions or choose another {OUT}") from None


def write_manifest(out_dir: str | os.PathLike, *, stage: str, config: dict,
                   seed: int | None = None, inputs: dict[str, str] | None = None,
                   counts: dict[str, Any] | None = None, status: str = "complete",
                   extra: dict[str, Any] | None = None) -> dict:
    """Atomically write ``out_dir/manifest.json`` and return its content.

    The document carries ``"tool": "weakpaste"``, the stage and the version: the marker that
    lets a later ``--overwrite`` delete the folder (``is_weakpaste_manifest``).

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
    doc = {"tool": TOOL, "stage": stage, "status": status, "weakpaste_version": __version__,
           "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "seed": seed, "config": config, "config_hash": config_hash(config),
           "inputs": inputs or {}, "counts": counts or {}}
    doc.update(extra or {})
    atomic_write_bytes(Path(out_dir) / MANIFEST, json.dumps(doc, indent=2).encode())
    if status == "complete":
        release_output_dir(out_dir)
    return doc


RESUME_FIX = f"; rerun with that run's options and inputs, or pass {OVERWRITE} instead of {RESUME}"


def check_resume(out: Path, old: dict, config: dict, inputs: dict[str, str], *,
                 flags: dict[str, str] | None = None,
                 describe: Callable[[str], tuple[str, str]] | None = None,
                 fingerprints: Iterable[str] = ()) -> None:
    """Refuse to resume a run made with other options or other inputs (one line saying which).

    Resuming with anything changed would mix two settings or two data sets in one output.

    Args:
        out: the output folder.
        old: its manifest.
        config: this run's flat manifest config (option name -> value).
        inputs: this run's input hashes (name -> SHA-256).
        flags: option name -> command-line flag, to name an option both ways.
        describe: input name -> (how to name it, a detail after "since that run"), e.g.
            ("the images", " (a.png differs)"); default ("the <name>", "").
        fingerprints: the names among ``inputs`` that fingerprint image files, which
            earlier weakpaste versions did not record: a manifest without them was written
            by such a version, and nothing tells whether its images changed since.

    Raises:
        WeakpasteError: ``OUT: cannot resume: blur_sigma (--blur-sigma) was 2.0, now 1.0; ...``,
            ``OUT: cannot resume: the bank B changed since that run; ...`` or, options and
            files being the same, ``OUT: cannot resume: that run was made by an older
            weakpaste ...``.
    """
    flags = flags or {}
    before = old.get("config", {})
    for key in [*config, *(k for k in before if k not in config)]:
        a, b = before.get(key), config.get(key)
        if a != b:
            name = f"{key} ({flags[key]})" if key in flags else key
            raise WeakpasteError(f"{out}: cannot resume: {name} was {json.dumps(a)}, now "
                                 f"{json.dumps(b)}{RESUME_FIX}")
    old_inputs = old.get("inputs", {})
    unrecorded = {k for k in fingerprints if k in inputs and k not in old_inputs}
    for key in [*inputs, *(k for k in old_inputs if k not in inputs)]:
        if key not in unrecorded and old_inputs.get(key) != inputs.get(key):
            what, detail = describe(key) if describe else (f"the {key.replace('_', ' ')}", "")
            raise WeakpasteError(f"{out}: cannot resume: {what} changed since that run"
                                 f"{detail}{RESUME_FIX}")
    if unrecorded:
        raise WeakpasteError(f"{out}: cannot resume: that run was made by an older weakpaste, "
                             "which did not record its images' fingerprints, so whether they "
                             f"changed since cannot be checked; pass {OVERWRITE} instead of "
                             f"{RESUME} to start again")
