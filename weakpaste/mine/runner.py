"""What the miners' runners share: lazy image sequences, the per-image process pool, cache keys.

F-EM and FreeSeg both train a classifier on images read on demand, map a pure per-image
function over the images (here or in a pool whose workers load their models once), and key
their per-image caches by the classifier file and the parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from weakpaste.io.images import read_image


class LazyImages:
    """A sequence of RGB images read on access (training never holds them all)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazyImages(self.paths[i])
        if isinstance(i, list | tuple | np.ndarray):
            return LazyImages([self.paths[j] for j in i])
        return read_image(self.paths[i])

    def __iter__(self):
        return (read_image(p) for p in self.paths)


def map_tasks(task: Callable, tasks: list, workers: int, init: Callable,
              init_args: tuple) -> Iterator:
    """Run ``task`` over ``tasks`` in this process or in a pool of ``workers`` processes.

    ``init(*init_args, threads)`` loads a worker's models: once here with ``threads=None``
    (torch keeps its thread count), or in every pool worker with ``threads=1`` (the workers
    are the parallelism). Results of a pool come in completion order.
    """
    if workers <= 1:
        init(*init_args, None)
        for item in tasks:
            yield task(item)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(workers, initializer=init, initargs=(*init_args, 1)) as pool:
        yield from pool.imap_unordered(task, tasks)


def cache_key(classifier_path: Path, params, extra: Iterable[str] = ()) -> str:
    """16 hex digits naming a per-image cache: classifier file bytes, parameters, extras.

    Args:
        classifier_path: the classifier file.
        params: a dataclass of the per-image parameters.
        extra: further strings that decide the per-image results (e.g. a saliency model key).
    """
    h = hashlib.sha256()
    with open(classifier_path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    h.update(json.dumps(asdict(params), sort_keys=True).encode())
    for item in extra:
        h.update(item.encode())
    return h.hexdigest()[:16]


def jsonable(obj):
    """``obj`` with arrays as lists and anything else unknown as strings (for manifests)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))
