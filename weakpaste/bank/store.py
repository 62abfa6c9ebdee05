"""Reading and writing a segment bank folder (its layout: ``weakpaste.bank.format``).

Appending writes the blob first and its index line second, so a crash leaves at worst an
unindexed tail in a shard and a torn last index line, both of which the next writer cuts off:
everything indexed before the crash stays readable.

Writers follow the bank's ``bank.json``: a new bank (or one that holds no segment yet) is
marked version 2 and gets ``WPZ1`` blobs (``weakpaste.bank.codec``); a version-1 bank that
already holds segments keeps getting PNG blobs, so that it stays readable by the weakpaste
that made it (``mine --resume`` rewrites its bank whole, so it gets version 2).

Nothing reads all segments into memory: ``iter_index`` streams the metadata and ``table``
keeps only a few integers per segment for sampling; ``read`` decodes one segment on demand.

A bank is refused, with one line naming the command that completes or rebuilds it, when its
manifest says the run that made it stopped half-way, when an index line is corrupt, or when a
shard is missing or shorter than its index says.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weakpaste.bank.codec import PNG_MAGIC, WPZ_MAGIC, decode_segment, encode_segment, segment_meta
from weakpaste.bank.format import (
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    MARKER,
    SHARD_BYTES,
    bank_fix,
    bank_version,
    index_entry,
    shard_name,
)
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes, write_error
from weakpaste.core.manifest import read_manifest
from weakpaste.structures import Segment

CLASSES_FLAG = "--classes"
"""The flag of the ``classes`` option of the commands that read a bank (``paste``, and
``bank from-coco``, which writes one), declared with ``flag=CLASSES_FLAG``."""


@dataclass(frozen=True)
class BankTable:
    """Compact columns of a bank's index for sampling (no pixels, no scores).

    Attributes:
        classes: class names; ``class_idx`` indexes into it.
        segment_id: int64 (N,).
        class_idx: int32 (N,).
        height: int32 (N,) crop height.
        width: int32 (N,) crop width.
        shard, offset, length: int64 (N,) where each segment's blob is
            (``SegmentBank.read_pixels_at``): a worker given the table reads pixels without
            parsing the index again, which for a million-segment bank takes tens of seconds.
    """

    classes: tuple[str, ...]
    segment_id: np.ndarray
    class_idx: np.ndarray
    height: np.ndarray
    width: np.ndarray
    shard: np.ndarray
    offset: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.segment_id)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.class_idx, minlength=len(self.classes))
        return {name: int(c[i]) for i, name in enumerate(self.classes)}


class SegmentBank:
    """Read access to a bank folder. Picklable (it holds only the path and a lazy location map).

    Args:
        root: the bank folder.
        allow_incomplete: open a bank whose run is still going or stopped half-way (its
            manifest's status is "running"); such a bank is refused by default.

    Raises:
        WeakpasteError: the folder is not a segment bank, or it is incomplete.
    """

    def __init__(self, root: str | os.PathLike, *, allow_incomplete: bool = False):
        self.root = Path(root)
        if not (self.root / MARKER).is_file():
            raise WeakpasteError(f"{self.root}: not a segment bank (no bank.json); build one with "
                                 "'weakpaste bank from-coco' or 'weakpaste mine'")
        bank_version(self.root)  # refuses a corrupt marker or a newer format
        if not allow_incomplete:
            self._check_complete()
        self._locations: dict[int, tuple[int, int, int, int, int]] | None = None
        self._handles: dict[tuple[int, int], int] = {}

    def __getstate__(self) -> dict:
        # File handles do not cross process boundaries; each worker opens its own.
        return {"root": self.root, "_locations": self._locations, "_handles": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _check_complete(self) -> None:
        manifest = read_manifest(self.root)
        if manifest is not None and manifest.get("status") == "running":
            raise WeakpasteError(
                f"{self.root}: the bank is incomplete (its {manifest.get('stage', 'build')} "
                f"run stopped half-way); {bank_fix(self.root, incomplete=True)}")

    def iter_index(self) -> Iterator[dict]:
        """Stream the index: one metadata dict per segment, in append order.

        A torn last line (an interrupted writer) is skipped.

        Raises:
            WeakpasteError: a complete line is not a valid index entry.
        """
        path = self.root / INDEX
        if not path.is_file():
            return
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break
                yield index_entry(self.root, number, line)

    def _scan(self, keep: Callable[[dict], bool] | None = None) -> list[dict]:
        """Index entries (only those ``keep`` accepts), after checking every shard.

        Also fills the segment location map. A shard the index refers to must exist and be
        at least as long as its last indexed segment's end.

        Raises:
            WeakpasteError: a corrupt index line, a missing or truncated shard.
        """
        locations, ends, kept = {}, {}, []
        for e in self.iter_index():
            locations[e["id"]] = (e["shard"], e["offset"], e["length"], e["height"],
                                  e["width"])
            ends[e["shard"]] = max(ends.get(e["shard"], 0), e["offset"] + e["length"])
            if keep is None or keep(e):
                kept.append(e)
        for shard, end in sorted(ends.items()):
            path = self.root / shard_name(shard)
            if not path.is_file():
                raise WeakpasteError(f"{self.root}: {shard_name(shard)} is missing; "
                                     f"{bank_fix(self.root)}")
            size = path.stat().st_size
            if size < end:
                raise WeakpasteError(f"{self.root}: {shard_name(shard)} is truncated ({size} "
                                     f"bytes, the index needs {end}); {bank_fix(self.root)}")
        self._locations = locations
        return kept

    def table(self, classes: list[str] | None = None) -> BankTable:
        """Compact sampling columns, optionally only for some classes.

        Raises:
            WeakpasteError: the bank is empty, lacks a requested class, or is damaged (see
                ``_scan``).
        """
        names: dict[str, int] = {}
        rows = []  # (id, class index, height, width, shard, offset, length)
        for e in self._scan(None if classes is None else lambda e: e["class"] in classes):
            rows.append((e["id"], names.setdefault(e["class"], len(names)), e["height"],
                         e["width"], e["shard"], e["offset"], e["length"]))
        if classes is not None:
            absent = [c for c in classes if c not in names]
            if absent:
                has = ", ".join(sorted(self.class_counts())) or "none"
                raise WeakpasteError(f"{self.root}: class {absent[0]!r} is not in the bank "
                                     f"(it has: {has}); drop it from "
                                     f"{CLASSES_FLAG} or mine it first")
        if not rows:
            raise WeakpasteError(f"{self.root}: the bank holds no segments; build or mine one "
                                 "first")
        cols = np.array(rows, dtype=np.int64).T.copy()  # (7, N), each column contiguous
        return BankTable(classes=tuple(names), segment_id=cols[0],
                         class_idx=cols[1].astype(np.int32), height=cols[2].astype(np.int32),
                         width=cols[3].astype(np.int32), shard=cols[4], offset=cols[5],
                         length=cols[6])

    def class_counts(self) -> dict[str, int]:
        """Segments per class, after checking the index and the shards (see ``_scan``)."""
        return dict(Counter(e["class"] for e in self._scan()))

    def __len__(self) -> int:
        return sum(1 for _ in self.iter_index())

    def _location(self, segment_id: int) -> tuple[int, int, int, int, int]:
        if self._locations is None:
            self._scan()  # also checks the shards once, before the first read
        try:
            return self._locations[segment_id]
        except KeyError:
            raise WeakpasteError(f"{self.root}: no segment with id {segment_id}") from None

    def read_pixels(self, segment_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of one segment: (rgb uint8 (h, w, 3), mask bool (h, w))."""
        shard, offset, length, height, width = self._location(segment_id)
        return self.read_pixels_at(segment_id, shard, offset, length, (height, width))

    def read_pixels_at(self, segment_id: int, shard: int, offset: int, length: int,
                       size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``read_pixels`` given where the blob is (a ``BankTable`` row of this bank as it is
        now): nothing is scanned. ``segment_id`` only names the segment in errors; ``size``
        is the (height, width) its index entry gives, which the blob must have."""
        shard, offset, length = int(shard), int(offset), int(length)
        # Descriptors are per process (a forked worker must not share its parent's) and read
        # with pread, which has no shared file position to race on.
        key = (os.getpid(), shard)
        fd = self._handles.get(key)
        try:
            if fd is None:
                fd = self._handles[key] = os.open(self.root / shard_name(shard), os.O_RDONLY)
            data = os.pread(fd, length, offset)
            return decode_segment(data, None if size is None else (int(size[0]),
                                                                    int(size[1])))
        except (OSError, ValueError) as err:
            why = err.strerror if isinstance(err, OSError) and err.strerror else "corrupt"
            raise WeakpasteError(f"{self.root}: segment {segment_id} cannot be read ({why}; "
                                 f"shard {shard}, offset {offset}); "
                                 f"{bank_fix(self.root)}") from None

    def read(self, entry: dict) -> Segment:
        """A full segment from its index entry (as yielded by ``iter_index``)."""
        rgb, mask = self.read_pixels(entry["id"])
        return Segment(rgb=rgb, mask=mask, category=entry["class"],
                       source_image=entry.get("source_image", ""),
                       source_box=np.array(entry.get("source_box", [0, 0, 0, 0]), dtype=float),
                       scores=dict(entry.get("scores", {})), miner=entry.get("miner", ""),
                       segment_id=entry["id"])

    def close(self) -> None:
        for (pid, _), fd in self._handles.items():
            if pid == os.getpid():
                os.close(fd)
        self._handles = {}


class BankWriter:
    """Appends segments to a bank folder (created if needed). Use as a context manager.

    The blobs follow the bank's format (see the module docstring): a bank that holds no
    segment yet is marked ``FORMAT_VERSION``; one that does keeps its version and codec.

    Args:
        root: the bank folder.
        shard_bytes: start a new shard file past this size.

    Attributes:
        version: the bank's format version; encode blobs for ``add_encoded`` with
            ``encode_segment(seg, writer.version)``.

    Raises:
        WeakpasteError: the folder cannot be written, or it holds a bank with a corrupt index
            line or ``bank.json``, or of a newer format.
    """

    def __init__(self, root: str | os.PathLike, *, shard_bytes: int = SHARD_BYTES):
        self.root = Path(root)
        self.shard_bytes = shard_bytes
        try:
            (self.root / "segments").mkdir(parents=True, exist_ok=True)
            self._next_id, self._shard, self._end = self._recover()
            marker = self.root / MARKER
            if self._next_id == 1 and self._end == 0:
                # No segment yet (new, or emptied to be rewritten): no reader depends on the
                # old codec, so the bank takes the current one.
                atomic_write_bytes(marker, json.dumps({"format": FORMAT,
                                                       "version": FORMAT_VERSION}).encode())
            self.version = bank_version(self.root)
            self._index = open(self.root / INDEX, "a", encoding="utf-8")
            self._blob = open(self._shard_path(self._shard), "ab")
        except OSError as err:
            raise write_error(self.root, err) from None
        self.counts: Counter[str] = Counter()

    def _shard_path(self, shard: int) -> Path:
        return self.root / shard_name(shard)

    def _recover(self) -> tuple[int, int, int]:
        """Cut a torn index line and any unindexed shard tail; return where to go on."""
        index = self.root / INDEX
        next_id, shard, end = 1, 0, 0
        if index.is_file():
            raw = index.read_bytes()
            keep = raw[: raw.rfind(b"\n") + 1]
            if len(keep) != len(raw):
                index.write_bytes(keep)
            for number, line in enumerate(keep.splitlines(), 1):
                e = index_entry(self.root, number, line)
                next_id = max(next_id, e["id"] + 1)
                if (e["shard"], e["offset"] + e["length"]) > (shard, end):
                    shard, end = e["shard"], e["offset"] + e["length"]
        path = self._shard_path(shard)
        if path.exists() and path.stat().st_size > end:
            with open(path, "r+b") as fh:
                fh.truncate(end)
        return next_id, shard, end

    def add(self, seg: Segment) -> int:
        """Append one segment; returns its id (see ``add_encoded``)."""
        return self.add_encoded(encode_segment(seg, self.version), segment_meta(seg))

    def add_encoded(self, blob: bytes, meta: dict) -> int:
        """Append one segment already encoded by a worker.

        Args:
            blob: its blob, ``encode_segment(seg, self.version)``.
            meta: its index fields without id/shard/offset/length (``segment_meta``).

        Returns:
            The segment's id.

        Raises:
            WeakpasteError: the blob is in another codec than this bank's version (it would
                make the bank unreadable for the weakpaste that wrote it); the disk is full or
                read-only (``write_error``): the segments added before stay readable and an
                unfinished one is cut off by the next writer.
        """
        if blob[:4] != (WPZ_MAGIC if self.version >= 2 else PNG_MAGIC[:4]):
            raise WeakpasteError(f"{self.root}: a segment blob of class {meta['class']!r} is not "
                                 f"in this version-{self.version} bank's codec; encode it with "
                                 f"encode_segment(seg, {self.version})")
        if self._end > 0 and self._end + len(blob) > self.shard_bytes:
            self._blob.close()
            self._shard, self._end = self._shard + 1, 0
            try:
                self._blob = open(self._shard_path(self._shard), "ab")
            except OSError as err:
                raise write_error(self.root, err) from None
        seg_id = self._next_id
        entry = {"id": seg_id, "class": meta["class"], "shard": self._shard,
                 "offset": self._end, "length": len(blob),
                 **{k: v for k, v in meta.items() if k != "class"}}
        try:
            self._blob.write(blob)
            self._blob.flush()
            self._index.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._index.flush()
        except OSError as err:
            raise write_error(self.root, err) from None
        self._end += len(blob)
        self._next_id += 1
        self.counts[meta["class"]] += 1
        return seg_id

    def close(self) -> None:
        try:
            for fh in (self._blob, self._index):
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
        except OSError as err:
            raise write_error(self.root, err) from None

    def __enter__(self) -> BankWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing (a full disk, Ctrl-C): close without hiding that first error.
        for fh in (self._blob, self._index):
            with contextlib.suppress(OSError):
                fh.close()
