"""Executors: map a pure per-item function over items, on this machine or on a Ray cluster.

Every stage's per-item work (paste an image, mine an image, cut a data set's image into
segments) is a module-level function of one item whose outputs are written by the worker
itself, atomically, into the output folder. ``map_items`` runs it

- in this process (``workers <= 1``), or in a local process pool (``executor="local"``);
- on Ray actors (``executor="ray"``): one actor per worker, each running the stage's
  ``init`` once (so models are loaded once per actor, not per task) and then items in chunks.
  Actors are restarted and their unfinished tasks retried by Ray when a worker process dies,
  which is safe because items are pure and their files are written atomically. Inputs and
  the output folder must be on a file system every node sees; ``check_paths`` verifies it
  from every actor before any work starts.

Results come back in item order whatever the executor, so the driver's bookkeeping (progress,
journals) and the outputs are the same bytes for any executor and any number of workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from weakpaste.errors import WeakpasteError
from weakpaste.options import Config, option

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorConfig(Config):
    """Where a stage's per-item work runs (never changes its output)."""

    executor: str = option("local", choices=EXECUTORS,
                           help="local: a process pool on this machine; ray: Ray actors on a "
                                "cluster (pip install 'weakpaste[ray]')")
    ray_address: str | None = option(
        None, metavar="ADDR",
        help="Ray cluster to join, e.g. 10.0.0.1:6379 (default: RAY_ADDRESS, else the Ray "
             "started last on this machine with 'ray start', else a new local Ray)")
    gpus_per_worker: float = option(0.0, range=(0, None),
                                    help="GPUs each Ray worker reserves (model stages)")
    chunk: int = option(4, range=(1, None), cli=False,
                        help="items per task: fewer round trips, coarser load balance")


def host_tag() -> str:
    """``<host>-<pid>``: names a worker's own files uniquely across the nodes of a cluster."""
    return f"{socket.gethostname()}-{os.getpid()}"


def map_items(fn: Callable[[Any], Any], items: Sequence, *, workers: int = 1,
              init: Callable[..., None] | None = None, initargs: tuple = (),
              executor: ExecutorConfig | None = None,
              check: Sequence[str | os.PathLike] = ()) -> Iterator[Any]:
    """Yield ``fn(item)`` for every item, in order.

    Args:
        fn: a module-level function of one item (picklable by reference).
        items: the items (picklable).
        workers: processes or Ray actors; <= 1 runs in this process (local executor).
        init: called once in every worker (and here for ``workers <= 1``) with ``initargs``,
            e.g. to load a model into a module global.
        initargs: its arguments.
        executor: where to run (local process pool by default).
        check: paths every Ray worker must be able to read (inputs, the output folder).

    Raises:
        WeakpasteError: Ray is not installed, cannot be reached, or a worker cannot see a path.
    """
    executor = executor or ExecutorConfig()
    if executor.executor == "ray":
        yield from _ray_map(fn, items, max(workers, 1), init, initargs, executor, check)
        return
    if workers <= 1:
        if init is not None:
            init(*initargs)
        for item in items:
            yield fn(item)
        return
    import multiprocessing as mp

    context = mp.get_context("fork" if os.name == "posix" else "spawn")
    # Ctrl-C reaches every process of the terminal's group: only the parent handles it (and
    # terminates the pool), so workers print no traceback of their own. Ignoring it while
    # the pool forks makes the workers ignore it from their first instruction on.
    with _sigint_ignored():
        pool = context.Pool(workers, initializer=_pool_init, initargs=(init, initargs))
    with pool:
        yield from pool.imap(fn, items, chunksize=executor.chunk)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C meanwhile (only the main thread may change signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _pool_init(init: Callable[..., None] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # spawn-started workers did not inherit it
    if init is not None:
        init(*initargs)


def import_ray():
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise WeakpasteError("--executor ray needs Ray: pip install 'weakpaste[ray]' (or pip "
                             "install ray)") from None
    return ray


def _connect(ray, address: str | None) -> None:
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, ignore_reinit_error=True)
    except (ConnectionError, ValueError, RuntimeError) as err:
        from weakpaste.errors import reason

        raise WeakpasteError(f"cannot reach the Ray cluster at {address or 'auto'} "
                             f"({reason(err)}); check --ray-address, start one with 'ray start "
                             "--head', and for a cluster with token authentication (Ray >= "
                             "2.59) set RAY_AUTH_MODE=token here") from None


class _Worker:
    """A Ray actor: runs the stage's ``init`` once, then chunks of items."""

    def __init__(self, init: Callable[..., None] | None, initargs: tuple) -> None:
        if init is not None:
            init(*initargs)

    def unreadable(self, paths: Sequence[str]) -> list[str]:
        return [f"{socket.gethostname()}:{p}" for p in paths if not os.access(p, os.R_OK)]

    def run(self, fn: Callable[[Any], Any], chunk: Sequence) -> list:
        return [fn(item) for item in chunk]

    def pid(self) -> int:
        return os.getpid()


def start_actors(workers: int, init: Callable[..., None] | None, initargs: tuple,
                 executor: ExecutorConfig) -> list:
    """Start ``workers`` Ray actors (restarted, with their tasks retried, when they die)."""
    ray = import_ray()
    _connect(ray, executor.ray_address)
    actor = ray.remote(num_cpus=1, num_gpus=executor.gpus_per_worker, max_restarts=-1,
                       max_task_retries=-1)(_Worker)
    return [actor.remote(init, initargs) for _ in range(workers)]


def _ray_map(fn, items, workers, init, initargs, executor, check) -> Iterator[Any]:
    ray = import_ray()
    actors = start_actors(workers, init, initargs, executor)
    try:
        paths = [os.path.abspath(p) for p in check]
        missing = sorted({m for got in ray.get([a.unreadable.remote(paths) for a in actors])
                          for m in got})
        if missing:
            raise WeakpasteError(f"a Ray worker cannot read {missing[0]}: put the inputs and "
                                 "--out on a file system that every node mounts at the same "
                                 "path")
        from ray.util import ActorPool

        # A Ray task costs about a millisecond of scheduling and a round trip: give each
        # actor a few large chunks (still several, so a restarted actor loses little).
        size = max(executor.chunk, -(-len(items) // (len(actors) * 4)))
        chunks = [list(items[i:i + size]) for i in range(0, len(items), size)]
        pool = ActorPool(actors)
        for results in pool.map(lambda a, c: a.run.remote(fn, c), chunks):
            yield from results
    except ray.exceptions.RayTaskError as err:
        # A worker's one-line error (a corrupt image, ...) reaches the user as it would
        # from a local worker, not wrapped in Ray's remote traceback.
        if isinstance(getattr(err, "cause", None), WeakpasteError):
            raise WeakpasteError(str(err.cause)) from None
        raise
    finally:
        for a in actors:
            ray.kill(a)
