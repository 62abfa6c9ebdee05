"""The on-disk segment bank: append-only, with a streamed index.

Layout of a bank folder::

    BANK/
      bank.json                 format marker and version
      index.jsonl               one JSON line per segment (metadata only, streamed)
      segments/shard-00000.bin  concatenated segment blobs (the crop and its mask)
      manifest.json             how it was made (stage "bank" or "mine")

A segment's pixels live only in its shard; the index line says where (shard, offset, length).
Appending writes the blob first and its index line second, so a crash leaves at worst an
unindexed tail in a shard and a torn last index line, both of which the next writer cuts off:
everything indexed before the crash stays readable.

Blobs come in two codecs, told apart by their first bytes:

- version 1 banks: PNG (``\\x89PNG\\r\\n\\x1a\\n``), RGBA with alpha = mask, level-1 deflate with
  the "up" filter.
- version 2 banks: ``WPZ1``, a 12-byte header (``b"WPZ1"``, uint32 LE height, uint32 LE
  width) and one zstd frame (level 1, with its checksum) of the RGB rows with a vertical
  delta (row i minus row i-1, uint8 wrap-around; row 0 as is) followed by the mask as
  ``np.packbits``. On coco_mini's 1683 ground-truth segments: 62.1 MB against PNG's
  72.4 MB, and 0.15 s against 0.74 s to decode them all (``read_pixels``), same pixels.

Readers decode both, so every bank keeps working. Writers follow the bank's ``bank.json``:
a new bank (or one that holds no segment yet) is marked version 2 and gets ``WPZ1`` blobs; a
version-1 bank that already holds segments keeps getting PNG blobs, so that it stays
readable by the weakpaste that made it (``mine --resume`` rewrites its bank whole, so it
gets version 2). An older weakpaste refuses a version-2 bank with one line ("unsupported
bank format ... v2; upgrade weakpaste or rebuild the bank") rather than failing on its
blobs.

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
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import zstandard

from weakpaste.errors import WeakpasteError
from weakpaste.io.images import (
    atomic_write_bytes,
    codec_output_dropped,
    max_image_pixels,
    write_error,
)
from weakpaste.io.jsonfile import JsonError, parse_json
from weakpaste.manifest import read_manifest
from weakpaste.options import Config, option
from weakpaste.structures import Segment

FORMAT = "weakpaste-segment-bank"
# 2: segment blobs in the WPZ1 codec (version 1 banks hold PNG blobs; both are read).
FORMAT_VERSION = 2
INDEX = "index.jsonl"
MARKER = "bank.json"
SHARD_BYTES = 512 << 20
# Fields every index line must carry, with their JSON type.
_INDEX_FIELDS = {"id": int, "class": str, "shard": int, "offset": int, "length": int,
                 "height": int, "width": int}


def _shard_name(shard: int) -> str:
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


def _index_entry(root: Path, number: int, line: str | bytes) -> dict:
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
            return (f"complete it with 'weakpaste mine ... --out {root} --resume' (the "
                    "interrupted run's options)")
        return f"mine it again with 'weakpaste mine ... --out {root} --overwrite'"
    if manifest.get("stage") == "bank" and config.get("coco_json"):
        return (f"rebuild it with 'weakpaste bank from-coco {config['coco_json']} --images "
                f"{config.get('images_dir')} --out {root} --overwrite'")
    return ("rebuild it with 'weakpaste bank from-coco ... --overwrite' or 'weakpaste mine ... "
            "--overwrite'")


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_WPZ_MAGIC = b"WPZ1"
_WPZ_HEADER = struct.Struct("<4sII")  # magic, height, width
# zstd contexts are reusable but not thread-safe (zstandard's docs): one per thread. A forked
# child inherits only its forking thread's contexts, which nothing else in it uses.
_zstd = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_zstd, "compressor"):
        # Level 1: the delta filter does most of the work; higher levels gain little and the
        # miners and ``bank from-coco`` encode every segment. The checksum (4 bytes) makes a
        # damaged blob an error rather than wrong pixels, as PNG's CRCs did.
        _zstd.compressor = zstandard.ZstdCompressor(level=1, write_checksum=True)
    return _zstd.compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_zstd, "decompressor"):
        _zstd.decompressor = zstandard.ZstdDecompressor()
    return _zstd.decompressor


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


def _encode_png(rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """A version-1 blob: PNG, RGBA with alpha = mask (see the module docstring)."""
    bgra = np.dstack([rgb[..., ::-1], mask.astype(np.uint8) * 255])
    # Fast level-1 deflate with the "up" filter: about as small as the default filter choice
    # and ~30% faster to decode, which the paste stage does for every object it pastes.
    ok, buf = cv2.imencode(".png", bgra, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                          cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    if not ok:
        raise ValueError("cv2 could not encode the segment as PNG")
    return buf.tobytes()


def _encode_wpz(rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """A version-2 blob: ``WPZ1`` header + zstd(RGB row deltas, packed mask)."""
    h, w = mask.shape
    delta = np.array(rgb, dtype=np.uint8, order="C")
    # uint8 arithmetic wraps around, so the decoder's uint8 cumsum restores every row exactly.
    np.subtract(rgb[1:], rgb[:-1], out=delta[1:])
    payload = np.concatenate([delta.reshape(-1), np.packbits(mask, axis=None)])
    return _WPZ_HEADER.pack(_WPZ_MAGIC, h, w) + _compressor().compress(payload)


def _encode_pixels(rgb: np.ndarray, mask: np.ndarray, version: int) -> bytes:
    """One segment's blob in the codec of a bank of ``version``.

    Args:
        rgb: uint8 (h, w, 3) crop.
        mask: bool (h, w) object mask.
        version: the bank's format version (1: PNG, 2 and later: WPZ1).
    """
    return _encode_png(rgb, mask) if version < 2 else _encode_wpz(rgb, mask)


def _encode_segment(seg: Segment, version: int = FORMAT_VERSION) -> bytes:
    """A segment's blob for a bank of ``version`` (``BankWriter.version``).

    Raises:
        WeakpasteError: the segment cannot be encoded.
    """
    try:
        return _encode_pixels(seg.rgb, seg.mask, version)
    except ValueError:
        raise WeakpasteError(f"could not encode segment of class {seg.category!r}") from None


def segment_meta(seg: Segment) -> dict:
    """A segment's index fields, besides where its blob is (JSON-able)."""
    return {"class": seg.category, "height": int(seg.mask.shape[0]),
            "width": int(seg.mask.shape[1]), "area": int(seg.mask.sum()),
            "source_image": seg.source_image,
            "source_box": [round(float(v), 2) for v in seg.source_box],
            "scores": {k: float(v) for k, v in seg.scores.items()}, "miner": seg.miner}


def _check_size(h: int, w: int, size: tuple[int, int] | None) -> None:
    """Refuse a blob's declared ``h`` x ``w`` before anything is allocated for it: it must be
    the index's ``size`` (when known) and within ``max_image_pixels()``.

    Raises:
        ValueError: "corrupt segment blob".
    """
    if (size is not None and (h, w) != tuple(size)) or h * w > max_image_pixels():
        raise ValueError("corrupt segment blob")


def _decode_png(data: bytes, size: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("corrupt segment blob")
    w, h = struct.unpack(">II", data[16:24])  # the first chunk, IHDR: width, height
    _check_size(h, w, size)
    with codec_output_dropped():
        bgra = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
        raise ValueError("corrupt segment blob")
    return np.ascontiguousarray(bgra[..., 2::-1]), bgra[..., 3] >= 128


def _decode_wpz(data: bytes, size: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    if len(data) <= _WPZ_HEADER.size:
        raise ValueError("corrupt segment blob")
    _, h, w = _WPZ_HEADER.unpack_from(data)
    _check_size(h, w, size)
    n = h * w
    size = 3 * n + (n + 7) // 8
    frame = memoryview(data)[_WPZ_HEADER.size:]
    try:
        # The frame's declared size is checked before anything is allocated for it, and the
        # frame must fill the blob exactly (extra bytes mean a wrong index length).
        if n == 0 or zstandard.frame_content_size(frame) != size:
            raise ValueError("corrupt segment blob")
        raw = _decompressor().decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError:
        raise ValueError("corrupt segment blob") from None
    if len(raw) != size:
        raise ValueError("corrupt segment blob")
    flat = np.frombuffer(raw, dtype=np.uint8)
    rgb = np.cumsum(flat[:3 * n].reshape(h, w, 3), axis=0, dtype=np.uint8)
    mask = np.unpackbits(flat[3 * n:], count=n).view(bool).reshape(h, w)
    return rgb, mask


def _decode_segment(data: bytes, size: tuple[int, int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A blob's pixels, in either codec: (rgb uint8 (h, w, 3), mask bool (h, w)).

    Args:
        data: the blob.
        size: (height, width) its index entry gives; the blob's own header must agree, and
            be within the pixel limit, before anything is decompressed.

    Raises:
        ValueError: "corrupt segment blob" (truncated, damaged, of no known codec, or of
            another size than ``size``).
    """
    if data[:4] == _WPZ_MAGIC:
        return _decode_wpz(data, size)
    if data[:8] == _PNG_MAGIC:
        return _decode_png(data, size)
    raise ValueError("corrupt segment blob")


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
                yield _index_entry(self.root, number, line)

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
            path = self.root / _shard_name(shard)
            if not path.is_file():
                raise WeakpasteError(f"{self.root}: {_shard_name(shard)} is missing; "
                                     f"{bank_fix(self.root)}")
            size = path.stat().st_size
            if size < end:
                raise WeakpasteError(f"{self.root}: {_shard_name(shard)} is truncated ({size} "
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
                raise WeakpasteError(f"{self.root}: class {absent[0]!r} is not in the bank "
                                     f"(it has: {', '.join(sorted(self.class_counts())) or 'none'})"
                                     "; drop it from --classes or mine it first")
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
                fd = self._handles[key] = os.open(self.root / _shard_name(shard), os.O_RDONLY)
            data = os.pread(fd, length, offset)
            return _decode_segment(data, None if size is None else (int(size[0]),
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
            ``_encode_segment(seg, writer.version)``.

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
        return self.root / _shard_name(shard)

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
                e = _index_entry(self.root, number, line)
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
        return self.add_encoded(_encode_segment(seg, self.version), segment_meta(seg))

    def add_encoded(self, blob: bytes, meta: dict) -> int:
        """Append one segment already encoded by a worker.

        Args:
            blob: its blob, ``_encode_segment(seg, self.version)``.
            meta: its index fields without id/shard/offset/length (``segment_meta``).

        Returns:
            The segment's id.

        Raises:
            WeakpasteError: the blob is in another codec than this bank's version (it would
                make the bank unreadable for the weakpaste that wrote it); the disk is full or
                read-only (``write_error``): the segments added before stay readable and an
                unfinished one is cut off by the next writer.
        """
        if blob[:4] != (_WPZ_MAGIC if self.version >= 2 else _PNG_MAGIC[:4]):
            raise WeakpasteError(f"{self.root}: a segment blob of class {meta['class']!r} is not "
                                 f"in this version-{self.version} bank's codec; encode it with "
                                 f"_encode_segment(seg, {self.version})")
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


def segments_from_image(rgb: np.ndarray, masks: np.ndarray, classes: tuple[str, ...], *,
                        source_image: str, min_area: int = 64,
                        miner: str = "gt") -> tuple[list[Segment], int]:
    """Cut the instances of one image into segments (tight crops of their masks).

    Args:
        rgb: uint8 (H, W, 3) image.
        masks: bool (N, H, W) instance masks.
        classes: class name per mask.
        source_image: recorded as the segments' source.
        min_area: masks with fewer pixels are skipped.
        miner: recorded as the segments' origin.

    Returns:
        (segments, number skipped as too small).
    """
    out, skipped = [], 0
    for mask, name in zip(masks, classes, strict=True):
        area = int(mask.sum())
        if area < max(min_area, 1):
            skipped += 1
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append(Segment(rgb=np.ascontiguousarray(rgb[y0:y1, x0:x1]),
                           mask=np.ascontiguousarray(mask[y0:y1, x0:x1]), category=name,
                           source_image=source_image,
                           source_box=np.array([x0, y0, x1, y1], dtype=np.float64),
                           scores={"area": float(area)}, miner=miner))
    return out, skipped


@dataclass(frozen=True)
class BankConfig(Config):
    """Settings of ``bank from-coco``."""

    min_area: int = option(64, range=(1, None), help="skip smaller masks (pixels)")
    classes: tuple[str, ...] | None = option(None, help="keep only these classes")


def _cut_item(item: tuple) -> tuple[list[tuple[bytes, dict]], int]:
    """``bank from-coco``'s per-image work: read the image, cut and encode its segments.

    Args:
        item: (image path, width, height, RLEs, classes, file name, COCO file, min area,
            the bank's format version).

    Returns:
        ([(blob, index fields), ...], masks skipped as too small).
    """
    from weakpaste.io.images import read_image_of_size
    from weakpaste.ops import masks as mask_ops

    path, width, height, rles, classes, file_name, coco_json, min_area, version = item
    rgb = read_image_of_size(path, width, height, coco_json)
    masks = mask_ops.decode_many(list(rles), height, width)
    segs, skipped = segments_from_image(rgb, masks, classes, source_image=file_name,
                                        min_area=min_area)
    return [(_encode_segment(s, version), segment_meta(s)) for s in segs], skipped


def _cut_items(data, coco_json, classes, min_area, version) -> list[tuple]:
    items = []
    for rec in data.records:
        inst = rec.instances
        keep = [] if inst is None else [i for i, c in enumerate(inst.classes)
                                        if not classes or c in classes]
        if keep:
            items.append((str(data.images_dir / rec.file_name), rec.width, rec.height,
                          tuple(inst.rles[i] for i in keep),
                          tuple(inst.classes[i] for i in keep), rec.file_name, str(coco_json),
                          min_area, version))
    return items


def run_bank_from_coco(coco_json: str | os.PathLike, images_dir: str | os.PathLike,
                       out_dir: str | os.PathLike, config: BankConfig | None = None, *,
                       workers: int = 1, overwrite: bool = False, progress: bool = True,
                       executor=None) -> dict:
    """Build a bank from the instance masks of any COCO data set.

    Images are cut and their segments encoded by ``workers`` processes (or Ray actors,
    ``executor``); the segments are appended in image order, so the bank is the same bytes
    for any number of workers.

    Args:
        coco_json: COCO instances file (polygons or RLE).
        images_dir: folder of its images.
        out_dir: the bank folder to create.
        config: minimum mask area and classes to keep (``BankConfig()`` when None).
        workers: processes (or Ray actors) cutting and encoding images.
        overwrite: replace an existing weakpaste output in ``out_dir``.
        progress: show a progress bar.
        executor: a ``weakpaste.runners.ExecutorConfig`` (local pool by default).

    Returns:
        The manifest written to ``out_dir/manifest.json``; its counts: ``segments``,
        ``per_class``, ``skipped_small`` (masks under ``min_area`` pixels) and
        ``crowd_skipped`` (the file's ``iscrowd=1`` regions, never cut).
    """
    from tqdm import tqdm

    from weakpaste.io.coco import load_coco
    from weakpaste.manifest import check_output_dir, file_sha256, prepare_output_dir, write_manifest
    from weakpaste.runners import Workers, preflight

    preflight(executor)  # before reading the COCO file (a minute for train2017's)
    config = config or BankConfig()
    min_area, classes = config.min_area, config.classes
    data = load_coco(coco_json, images_dir)
    if classes:
        unknown = [c for c in classes if c not in data.categories]
        if unknown:
            raise WeakpasteError(f"{coco_json}: class {unknown[0]!r} is not among its categories; "
                                 "check --classes")
    check_output_dir(out_dir, overwrite=overwrite, stage="bank", inputs=[coco_json, images_dir],
                     resumable=False)
    # The workers start (Ray is joined) before the output folder is made: a cluster that
    # cannot be reached leaves nothing to remove.
    with Workers(workers, executor=executor, check=[coco_json, images_dir, out_dir]) as pool:
        out = prepare_output_dir(out_dir, overwrite=overwrite, stage="bank",
                                 inputs=[coco_json, images_dir], resumable=False)
        config = {"coco_json": str(coco_json), "images_dir": str(images_dir),
                  "min_area": min_area, "classes": classes}
        inputs = {"coco_json": file_sha256(coco_json)}
        write_manifest(out, stage="bank", config=config, inputs=inputs, status="running")
        skipped = 0
        with BankWriter(out) as writer:
            items = _cut_items(data, coco_json, classes, min_area, writer.version)
            for encoded, n_small in tqdm(pool.map(_cut_item, items), total=len(items),
                                         desc="bank from-coco", unit="img",
                                         disable=not progress):
                skipped += n_small
                for blob, meta in encoded:
                    writer.add_encoded(blob, meta)
            counts = dict(sorted(writer.counts.items()))
    return write_manifest(out, stage="bank", config=config, inputs=inputs,
                          counts={"segments": sum(counts.values()), "per_class": counts,
                                  "skipped_small": skipped, "crowd_skipped": data.crowd_skipped})
