"""Per-image mining results on disk, in a data format that never runs code when read.

``mine --resume`` reads back what an earlier run left in ``OUT/.cache``, a folder anyone with
write access to the output (a shared drive, a downloaded run) may have changed; unpickling it
would run their code. A result is therefore stored as data only:

    b"WPCACHE1" | SHA-256 of the payload (32 bytes) | payload

The payload is an ``.npz`` archive (``numpy.savez``, uncompressed) holding ``tree``, the
result as UTF-8 JSON (uint8), and one member ``a<k>`` per NumPy array or scalar in it. The
JSON names the dataclasses it holds, and only those a miner lists (``Miner.result_types``)
are rebuilt: the reader calls their constructors with the stored field values, nothing else.
Arrays are read with ``allow_pickle`` off and after their declared size was compared with
the bytes present, so a hostile file can neither run code nor make the reader allocate more
than the file holds. A file that fails any check raises ``CacheError``: the pipeline mines
that image again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"WPCACHE1"  # the format version is its last byte
SUFFIX = ".wpc"
_DIGEST = 32
_TAGS = ("tuple", "dict", "array", "scalar", "bytes", "dataclass")


class CacheError(ValueError):
    """A cache file that is truncated, damaged, of another version, or not a result."""


def dumps(result: Any) -> bytes:
    """The bytes of a cache file holding ``result`` (see the module docstring).

    Raises:
        TypeError: ``result`` holds a type the format does not store (a miner's bug).
    """
    arrays: dict[str, np.ndarray] = {}
    tree = json.dumps(_encode(result, arrays), separators=(",", ":")).encode()
    buf = io.BytesIO()
    np.savez(buf, tree=np.frombuffer(tree, dtype=np.uint8), **arrays)
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def loads(data: bytes, types: Iterable[type]) -> Any:
    """The result stored by ``dumps``, its dataclasses restricted to ``types``.

    Raises:
        CacheError: the data is not a valid cache file of this version.
    """
    payload = _checked_payload(data)
    members = _read_members(payload)
    tree = members.pop("tree", None)
    if tree is None or tree.dtype != np.uint8 or tree.ndim != 1:
        raise CacheError("no result tree")
    from weakpaste.core.jsonfile import JsonError, parse_json

    try:
        doc = parse_json(tree.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, JsonError) as err:
        raise CacheError(f"result tree is not JSON ({err})") from None
    try:
        return _decode(doc, members, {t.__name__: t for t in types})
    except RecursionError:
        raise CacheError("result tree nested too deeply") from None


def read(path: str | Path, types: Iterable[type]) -> Any:
    """``loads`` of a file (``OSError`` when unreadable)."""
    return loads(Path(path).read_bytes(), types)


def is_valid(path: str | Path, types: Iterable[type]) -> bool:
    """Whether ``path`` holds a result ``read`` can give (absent, damaged, forged: False)."""
    try:
        read(path, types)
    except (OSError, CacheError):
        return False
    return True


def _checked_payload(data: bytes) -> bytes:
    if data[:len(MAGIC)] != MAGIC:
        raise CacheError("not a weakpaste cache file of this version")
    start = len(MAGIC) + _DIGEST
    payload = data[start:]
    if len(data) < start or hashlib.sha256(payload).digest() != data[len(MAGIC):start]:
        raise CacheError("checksum mismatch (truncated or damaged)")
    return payload


def _read_members(payload: bytes) -> dict[str, np.ndarray]:
    """The archive's arrays, each checked against the bytes it holds before it is built."""
    members = {}
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            for info in archive.infolist():
                # numpy.savez stores members uncompressed: nothing here inflates beyond the
                # file's own size.
                if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED:
                    raise CacheError(f"unexpected member {info.filename!r}")
                with archive.open(info) as fh:
                    members[info.filename[:-4]] = _read_npy(fh)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CacheError(f"damaged archive ({err})") from None
    return members


def _read_npy(fh) -> np.ndarray:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) \
            else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
    except (ValueError, SyntaxError, TypeError) as err:
        raise CacheError(f"damaged array header ({err})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or fortran:
        raise CacheError(f"unexpected array type {dtype}")
    size = math.prod(shape) * dtype.itemsize
    data = fh.read(size + 1)
    if len(data) != size:
        raise CacheError("array data does not match its declared size")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``obj`` as JSON: plain values as they are, others as ``{"<tag>": ...}`` objects."""
    if obj is None or isinstance(obj, bool | str) or type(obj) in (int, float):
        return obj
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, tuple):
        return {"tuple": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, dict):
        return {"dict": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, np.ndarray | np.generic | bytes):
        tag = ("array" if isinstance(obj, np.ndarray) else
               "bytes" if isinstance(obj, bytes) else "scalar")
        value = np.frombuffer(obj, dtype=np.uint8) if isinstance(obj, bytes) else obj
        name = f"a{len(arrays)}"
        arrays[name] = np.asarray(value, order="C")  # 0-d for a scalar
        return {tag: name}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: _encode(getattr(obj, f.name), arrays)
                  for f in dataclasses.fields(obj) if f.init}
        return {"dataclass": type(obj).__name__, "fields": fields}
    raise TypeError(f"a mining result cannot hold {type(obj).__name__}")


def _decode(node: Any, arrays: dict[str, np.ndarray], types: dict[str, type]) -> Any:
    if node is None or isinstance(node, bool | str | int | float):
        return node
    if isinstance(node, list):
        return [_decode(v, arrays, types) for v in node]
    if not isinstance(node, dict) or not node or next(iter(node)) not in _TAGS:
        raise CacheError(f"unexpected node {str(node)[:40]!r}")
    tag, value = next(iter(node.items()))
    if tag == "tuple" and isinstance(value, list):
        return tuple(_decode(v, arrays, types) for v in value)
    if tag == "dict" and isinstance(value, list) and all(
            isinstance(kv, list) and len(kv) == 2 for kv in value):
        items = [(_decode(k, arrays, types), _decode(v, arrays, types)) for k, v in value]
        if not all(isinstance(k, str | int | float | bool | tuple) or k is None
                   for k, _ in items):
            raise CacheError("unexpected dict key")
        return dict(items)
    if tag in ("array", "scalar", "bytes") and isinstance(value, str) and value in arrays:
        array = arrays[value]
        if tag == "array":
            return array.copy()  # writable, as the miner made it
        return array.tobytes() if tag == "bytes" else array[()]
    if tag == "dataclass" and value in types and isinstance(node.get("fields"), dict):
        cls = types[value]
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        fields = node["fields"]
        if set(fields) != names:
            raise CacheError(f"fields of {value} differ")
        return cls(**{k: _decode(v, arrays, types) for k, v in fields.items()})
    raise CacheError(f"unexpected {tag!r} node")
