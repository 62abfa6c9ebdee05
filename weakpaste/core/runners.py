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
import functools
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from weakpaste.core.errors import WeakpasteError, reason
from weakpaste.core.memory import keep_freed_memory
from weakpaste.core.run_options import (  # ExecutorConfig is declared there with RunOptions
    EXECUTOR_FLAG,
    OUT,
    RAY_ADDRESS_FLAG,
    ExecutorConfig,
)
from weakpaste.core.threads import thread_count


def host_tag() -> str:
    """``<host>-<pid>``: names a worker's own files uniquely across the nodes of a cluster."""
    return f"{socket.gethostname()}-{os.getpid()}"


def map_items(fn: Callable[[Any], Any], items: Sequence, *, workers: int = 1,
              init: Callable[..., None] | None = None, initargs: tuple = (),
              executor: ExecutorConfig | None = None,
              check: Sequence[str | os.PathLike] = ()) -> Iterator[Any]:
    """Yield ``fn(item)`` for every item, in order (``Workers`` started for these items only).

    Args:
        fn: a module-level function of one item (picklable by reference).
        items: the items (picklable).
        workers, init, initargs, executor, check: see ``Workers``.

    Raises:
        WeakpasteError: Ray is not installed, cannot be reached, or a worker cannot see a path.
    """
    with Workers(workers, init=init, initargs=initargs, executor=executor,
                 check=check) as pool:
        yield from pool.map(fn, items)


class Workers:
    """Worker processes (a local pool or Ray actors) that run a stage's ``init`` once and
    then any number of ``map`` calls. Use as a context manager: leaving it ends the workers
    (and disconnects from Ray if it connected).

    Args:
        workers: processes or Ray actors; <= 1 runs in this process (local executor).
        init: called once in every worker (and here for ``workers <= 1``) with ``initargs``,
            e.g. to load a model into a module global.
        initargs: its arguments.
        executor: where to run (local process pool by default).
        check: paths every Ray worker must be able to read (inputs, the output folder),
            checked when ``map`` is first called (the output folder may not exist before).
    """

    def __init__(self, workers: int = 1, *, init: Callable[..., None] | None = None,
                 initargs: tuple = (), executor: ExecutorConfig | None = None,
                 check: Sequence[str | os.PathLike] = ()) -> None:
        self.executor = executor or ExecutorConfig()
        self.ray = self.executor.executor == "ray"
        self.workers = max(workers, 1) if self.ray else workers
        self.init, self.initargs, self.check = init, initargs, list(check)
        self._pool = self._ray_module = None
        self._actors: list = []
        self._connected = self._checked = False

    def __enter__(self) -> Workers:
        if self.ray:
            self._ray_module = import_ray()
            self._connected = _connect(self._ray_module, self.executor.ray_address)
            self._actors = start_actors(self.workers, self.init, self.initargs, self.executor)
        elif self.workers <= 1:
            if self.init is not None:
                self.init(*self.initargs)
        else:
            import multiprocessing as mp

            context = mp.get_context("fork" if os.name == "posix" else "spawn")
            # Ctrl-C reaches every process of the terminal's group: only the parent handles
            # it (and terminates the pool), so workers print no traceback of their own.
            # Ignoring it while the pool forks makes the workers ignore it from their first
            # instruction on.
            with _sigint_ignored(), _opencv_threads_stopped(context):
                self._pool = _pool_class()(self.workers, initializer=_pool_init,
                                           initargs=(self.init, self.initargs),
                                           context=context)
        return self

    def map(self, fn: Callable[[Any], Any], items: Sequence) -> Iterator[Any]:
        """Yield ``fn(item)`` for every item, in order."""
        if self.ray:
            yield from self._ray_map(fn, items)
        elif self._pool is not None:
            yield from self._pool.imap(fn, items, chunksize=self.executor.chunk)
        else:
            for item in items:
                yield fn(item)

    def _ray_map(self, fn, items) -> Iterator[Any]:
        ray = self._ray_module
        try:
            if not self._checked:
                self._check_paths()
            yield from _ray_schedule(ray, self._actors, fn, items, self.executor.chunk)
        except ray.exceptions.RayTaskError as err:
            # A worker's one-line error (a corrupt image, ...) reaches the user as it would
            # from a local worker, not wrapped in Ray's remote traceback.
            if isinstance(getattr(err, "cause", None), WeakpasteError):
                raise WeakpasteError(str(err.cause)) from None
            raise

    def _check_paths(self) -> None:
        paths = [os.path.abspath(p) for p in self.check]
        got = self._ray_module.get([a.unreadable.remote(paths) for a in self._actors])
        missing = sorted({m for unreadable in got for m in unreadable})
        if missing:
            raise WeakpasteError(f"a Ray worker cannot read {missing[0]}: put the inputs and "
                                 f"{OUT} on a file system that every node mounts at the same "
                                 "path")
        self._checked = True

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()  # as multiprocessing.Pool's own __exit__ does
            self._pool = None
        ray = self._ray_module
        for a in self._actors:
            ray.kill(a)
        self._actors = []
        if self._connected:
            # Now, not in Ray's slower exit hook (benchmarks/README.md, "Ray and the worker pool").
            ray.shutdown()
            self._connected = False


@functools.cache
def _pool_class() -> type:
    """``multiprocessing.Pool`` whose worker-handler thread does not spin while results wait.

    CPython's handler thread (read in CPython 3.11) also waits on the result pipe, so from a
    result's arrival until the result thread has read it, it keeps waking up and checking
    the workers, taking CPU from them (measured: benchmarks/README.md, "Two workers"). Like
    ``multiprocessing.pool.ThreadPool`` it waits on the change notifier only (the handler adds
    the worker processes' sentinels itself), which is signalled when the pool is closed,
    terminated or drained. Built on first use, so that single-process commands do not import
    multiprocessing.pool.
    """
    import multiprocessing.pool

    class Pool(multiprocessing.pool.Pool):
        def _get_sentinels(self) -> list:
            notifier = getattr(self, "_change_notifier", None)
            if notifier is None:  # another Python's Pool: keep its own behaviour
                return super()._get_sentinels()
            return [notifier._reader]

        @staticmethod
        def Process(ctx, *args, **kwds):  # noqa: N802 - multiprocessing's name
            # Workers ignore SIGTERM (_pool_init): the pool ends them with SIGKILL instead,
            # which it sends only once it no longer needs the locks its queues share.
            process = ctx.Process(*args, **kwds)
            process.terminate = process.kill
            return process

    return Pool


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C and hold SIGTERM back meanwhile (only the main thread may change signal
    handlers).

    A worker forked meanwhile starts with both so: it ignores SIGTERM (``_pool_init``) before
    it lets one in, so the driver's handler (``weakpaste.cli``'s, which raises an interrupt)
    never runs in a worker, whose traceback it would print.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    _sigterm_mask(signal.SIG_BLOCK)
    try:
        yield
    finally:
        _sigterm_mask(signal.SIG_UNBLOCK)
        signal.signal(signal.SIGINT, previous)


def _opencv_threads_stopped(context) -> contextlib.AbstractContextManager:
    """Stop OpenCV's thread pool while the workers fork, then let it restart.

    OpenCV's own (pthreads) thread pool does not survive ``fork``: once this process has run
    a parallel OpenCV call, a forked worker's first ``cv2.setNumThreads`` or parallel call
    waits for ever on pool threads that only the parent has (opencv/opencv#5150; seen here
    as ``run_paste`` hanging after a miner ran in the same Python process). One thread while
    forking leaves the children nothing to wait for; the parent gets its threads back after.
    """
    cv2 = sys.modules.get("cv2")  # not imported: nothing to stop (and no import to pay)
    if cv2 is None or context.get_start_method() != "fork":
        return contextlib.nullcontext()
    return thread_count(cv2.getNumThreads, cv2.setNumThreads, 1)


def _sigterm_mask(how: int) -> None:
    if hasattr(signal, "pthread_sigmask"):  # POSIX
        signal.pthread_sigmask(how, {signal.SIGTERM})


def _pool_init(init: Callable[..., None] | None, initargs: tuple) -> None:
    keep_freed_memory()  # a spawn-started worker did not inherit the driver's setting
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # spawn-started workers did not inherit it
    # SIGTERM sent to the whole process group (timeout, SLURM) is the driver's to handle, as
    # Ctrl-C is: a worker killed by it while holding a lock of the pool's queues (sending a
    # result, taking a task) would leave the driver's pool shutdown waiting for ever.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _sigterm_mask(signal.SIG_UNBLOCK)
    if init is not None:
        init(*initargs)


def import_ray():
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise WeakpasteError(f"{EXECUTOR_FLAG} ray needs Ray: pip install 'weakpaste[ray]' (or pip "
                             "install ray)") from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """Connect to Ray unless this process already is; True if this call connected."""
    if ray.is_initialized():
        return False
    _probe(address)
    held = _Held()
    try:
        with _task_events_off(), _stderr_held(held, address not in (None, "local")):
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, ignore_reinit_error=True)
    except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as err:
        raise WeakpasteError(_connect_error(err, address, held.text)) from None
    held.release()
    return True


def preflight(executor: ExecutorConfig | None) -> None:
    """Refuse an unusable executor before a stage computes or writes anything.

    For Ray: Ray not installed, or a ``--ray-address`` where nothing listens (checked even
    when this process is already connected: the user named that address). Stages that work
    before their workers start (mining trains its classifier, ``backgrounds`` captions,
    ``bank from-coco`` reads the COCO file) call it first, so that a typo costs neither that
    work nor an output folder to remove.
    """
    if executor is not None and executor.executor == "ray":
        import_ray()
        _probe(executor.ray_address)


def _probe(address: str | None, timeout: float = 5.0) -> None:
    """Refuse at once an address ``host:port`` where nothing listens.

    Ray itself retries such an address for about 12 minutes (20 attempts of 35 s, Ray 2.60).
    Other forms (``auto``, ``ray://``) are left to Ray; an IPv6 host is written ``[::1]:6379``.
    """
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or "://" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise WeakpasteError(f"cannot reach the Ray cluster at {address} (nothing answers "
                             f"there: {reason(err)}); check {RAY_ADDRESS_FLAG}, or start one with "
                             "'ray start --head'") from None


def _connect_error(err: BaseException, address: str | None, logged: str) -> str:
    """The one line for a failed ``ray.init``: what Ray said and the fix.

    Ray wraps a refused token in a ConnectionError; its AuthenticationError (newer Rays only)
    is the cause, and its C++ client logs "InvalidAuthToken" once a second meanwhile.
    """
    chain, cause = [], err
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    said = " ".join([logged] + [str(e) for e in chain])
    why, fix = reason(err), (f"check {RAY_ADDRESS_FLAG}, start one with 'ray start --head', "
                             "and for a cluster with token authentication (Ray >= 2.59) set "
                             "RAY_AUTH_MODE=token here")
    if "InvalidAuthToken" in said:
        why = "the cluster refused this driver's authentication token"
        fix = ("set RAY_AUTH_MODE=token here, with the cluster's token in ~/.ray/auth_token or "
               "RAY_AUTH_TOKEN ('ray get-auth-token' on the head node prints it)")
    elif any(type(e).__name__ == "AuthenticationError" for e in chain):
        fix = ("copy the cluster's token to ~/.ray/auth_token (or set RAY_AUTH_TOKEN), or unset "
               "RAY_AUTH_MODE for a cluster started without token authentication")
    return f"cannot reach the Ray cluster at {address or 'auto'} ({why}); {fix}"


class _Held:
    """Text ``_stderr_held`` held back; ``release`` writes it to standard error."""

    def __init__(self) -> None:
        self.text = ""

    def release(self) -> None:
        if self.text:
            os.write(2, self.text.encode())


@contextlib.contextmanager
def _stderr_held(held: _Held, hold: bool) -> Iterator[None]:
    """Hold back what is written to file descriptor 2 into ``held`` while joining a cluster.

    Ray's C++ client logs every failed attempt to reach the cluster there (a line a second,
    for about 20 s: e.g. a refused authentication token) around weakpaste's one-line error.
    The text is kept: the error reads it, and a successful join writes it out afterwards.
    Only for joining: a new local Ray's processes would inherit the held descriptor.
    """
    if not hold:
        yield
        return
    import sys
    import tempfile

    with tempfile.TemporaryFile() as file:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            held.text = file.read().decode(errors="replace")


@contextlib.contextmanager
def _task_events_off() -> Iterator[None]:
    """This driver reports no task events to Ray (unless the user set how often it should).

    A driver that reports them waits for their last flush when it disconnects (measured:
    benchmarks/README.md, "Ray and the worker pool").
    They feed only the dashboard's task list; set RAY_task_events_report_interval_ms=1000
    (Ray's default) to see weakpaste's tasks there. The variable is read when Ray connects
    (and inherited by a local Ray that ``ray.init`` starts); it is restored afterwards.
    """
    name = "RAY_task_events_report_interval_ms"
    if name in os.environ:
        yield
        return
    os.environ[name] = "0"
    try:
        yield
    finally:
        os.environ.pop(name, None)


class _Worker:
    """A Ray actor: runs the stage's ``init`` once, then chunks of items.

    It works in the driver's working directory, so that the relative paths a user typed
    mean the same files on every node (the storage rule: the same paths everywhere).
    """

    def __init__(self, init: Callable[..., None] | None, initargs: tuple, cwd: str) -> None:
        keep_freed_memory()
        self.cwd, self.cwd_missing = cwd, not os.path.isdir(cwd)
        if not self.cwd_missing:
            os.chdir(cwd)
        if init is not None:
            init(*initargs)

    def unreadable(self, paths: Sequence[str]) -> list[str]:
        where = socket.gethostname()
        missing = [f"{where}:{p}" for p in paths if not os.access(p, os.R_OK)]
        if self.cwd_missing:
            missing.insert(0, f"{where}:{self.cwd} (the working directory)")
        return missing

    def run(self, fn: Callable[[Any], Any], chunk: Sequence) -> list:
        return [fn(item) for item in chunk]

    def pid(self) -> int:
        return os.getpid()


def start_actors(workers: int, init: Callable[..., None] | None, initargs: tuple,
                 executor: ExecutorConfig) -> list:
    """Start ``workers`` Ray actors (restarted, with their tasks retried, when they die).

    Returns at once: each actor imports the stage and runs ``init`` in the background.
    """
    ray = import_ray()
    _connect(ray, executor.ray_address)
    actor = ray.remote(num_cpus=1, num_gpus=executor.gpus_per_worker, max_restarts=-1,
                       max_task_retries=-1)(_Worker)
    return [actor.remote(init, initargs, os.getcwd()) for _ in range(workers)]


def _ray_schedule(ray, actors: list, fn, items: Sequence, chunk: int) -> Iterator[Any]:
    """Keep every actor busy with two chunks in flight; yield the results in item order.

    Not ``ray.util.ActorPool.map``: it hands an actor new work only once the *next result in
    order* is back, so an actor that finished early waits idle behind a slower one (measured:
    benchmarks/README.md, "Ray and the worker pool").
    """
    # A Ray task costs about a millisecond of scheduling and a round trip; ~16 chunks per
    # actor keep that small while the last chunks still balance the load.
    size = max(chunk, -(-len(items) // (len(actors) * 16)))
    chunks = [list(items[i:i + size]) for i in range(0, len(items), size)]
    pending: dict = {}  # ObjectRef -> (chunk number, actor)
    todo = iter(range(len(chunks)))

    def submit(actor) -> None:
        number = next(todo, None)
        if number is not None:
            pending[actor.run.remote(fn, chunks[number])] = (number, actor)

    for actor in actors * 2:
        submit(actor)
    done: dict[int, list] = {}
    emitted = 0
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        number, actor = pending.pop(ref)
        done[number] = ray.get(ref)
        submit(actor)
        while emitted in done:
            yield from done.pop(emitted)
            emitted += 1
