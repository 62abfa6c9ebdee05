"""Executors: local pool and Ray give the same results and the same paste bytes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.options import build
from weakpaste.core.run import RunOptions
from weakpaste.core.runners import ExecutorConfig, map_items
from weakpaste.paste.run import PasteConfig, PasteInputs, run_paste

_STATE: dict = {}


def _init(offset: int) -> None:
    _STATE["offset"] = offset


def _add(x: int) -> tuple[int, int]:
    return x + _STATE["offset"], os.getpid()


def test_local_map_keeps_order_and_runs_init_in_every_worker():
    one = list(map_items(_add, list(range(20)), workers=1, init=_init, initargs=(100,)))
    two = list(map_items(_add, list(range(20)), workers=2, init=_init, initargs=(100,)))
    assert [v for v, _ in one] == [v for v, _ in two] == list(range(100, 120))
    assert {pid for _, pid in one} == {os.getpid()}
    assert os.getpid() not in {pid for _, pid in two}


_AFTER_OPENCV = """
import cv2, numpy as np
from weakpaste.core.runners import map_items

def init():
    cv2.setNumThreads(1)  # what paste's workers do first

def blur(i):
    return float(cv2.GaussianBlur(np.full((600, 600), i, np.float32), (0, 0), 5).mean())

if __name__ == "__main__":
    cv2.setNumThreads(2)
    image = np.random.default_rng(0).random((1500, 1500), np.float32)
    for _ in range(3):  # the parent's OpenCV thread pool is running
        cv2.GaussianBlur(image, (0, 0), 5)
    print([round(v) for v in map_items(blur, range(4), workers=2, init=init)])
    print(cv2.getNumThreads())
"""


def test_workers_forked_after_opencv_ran_here_do_not_hang(tmp_path):
    """A process that ran a parallel OpenCV call (a miner, in a notebook) then forks workers:
    without stopping OpenCV's thread pool around the fork, the workers' first OpenCV call
    waits for ever (opencv/opencv#5150). The parent keeps its own thread setting."""
    script = tmp_path / "after_opencv.py"
    script.write_text(_AFTER_OPENCV)
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": root})
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the hung workers too
        proc.communicate()
        pytest.fail("the workers hung in their first OpenCV call")
    assert proc.returncode == 0, stderr
    assert stdout.split("\n")[:2] == ["[0, 1, 2, 3]", "2"]


def _slow_add(x: int) -> tuple[int, int]:
    time.sleep(0.002)  # results arrive one by one, as real items' do
    return _add(x)


def test_the_local_pool_waits_for_its_workers_instead_of_spinning(monkeypatch):
    """CPython's Pool wakes its worker-handler thread on every waiting result, which then
    checks the workers again (0.12-0.17 CPU-s of a 600-image paste's driver); weakpaste's pool
    wakes it only when the pool changes. Counted: the handler's checks during 100 results."""
    import multiprocessing.pool

    checks = []
    real = multiprocessing.pool.Pool._maintain_pool

    def counted(cls, *args):
        checks.append(1)
        return real(*args)

    monkeypatch.setattr(multiprocessing.pool.Pool, "_maintain_pool", classmethod(counted))
    got = list(map_items(_slow_add, list(range(400)), workers=2, init=_init, initargs=(0,)))
    assert [v for v, _ in got] == list(range(400))
    assert len(checks) < 10, f"the handler checked the workers {len(checks)} times"


def test_ray_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(WeakpasteError) as err:
        list(map_items(_add, [1], executor=ExecutorConfig(executor="ray")))
    assert str(err.value) == ("--executor ray needs Ray: pip install 'weakpaste[ray]' (or pip "
                              "install ray)")


@pytest.mark.parametrize("bad, message", [
    ("backgrounds", r"missing.json: no such file"),
    ("images", r"nope: images folder not found"),
    ("extra", r"nope: not a folder; pass a folder of images"),
    ("out", r"output folder is not empty; pass --overwrite"),
])
def test_a_typo_fails_before_ray_is_started_or_joined(monkeypatch, tiny_coco, tmp_path, bad,
                                                      message):
    """A typo costs no Ray start-up (seconds for a local Ray): missing inputs and an unusable
    --out are refused before the workers start (which then boot while the inputs are read)."""
    import weakpaste.core.runners as runners

    def no_ray():
        raise AssertionError("Ray was started before the inputs were checked")

    monkeypatch.setattr(runners, "import_ray", no_ray)
    path, images = tiny_coco
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "bank", quiet=True))
    args = {"backgrounds": str(path), "images": str(images), "extra_backgrounds": []}
    out = tmp_path / "out"
    if bad == "backgrounds":
        args["backgrounds"] = str(tmp_path / "missing.json")
    elif bad == "images":
        args["images"] = str(tmp_path / "nope")
    elif bad == "extra":
        args["extra_backgrounds"] = [str(tmp_path / "nope")]
    else:
        out.mkdir()
        (out / "mine.txt").write_text("x")
    with pytest.raises(WeakpasteError, match=message):
        run_paste(PasteConfig(num_images=2), PasteInputs(bank=str(tmp_path / "bank"), **args),
                  RunOptions(out=str(out), workers=2, quiet=True, executor="ray"))
    assert (out / "mine.txt").exists() if bad == "out" else not out.exists()


def test_the_driver_reports_no_task_events_unless_the_user_asked(monkeypatch):
    """Ray's disconnect waits ~0.25 s for a last task-event flush: weakpaste's driver turns
    the reports off while it connects (and restores the environment); a user's value wins."""
    import os

    import weakpaste.core.runners as runners

    seen = []

    def init(**kwargs):
        seen.append(os.environ.get("RAY_task_events_report_interval_ms"))

    name = "RAY_task_events_report_interval_ms"
    monkeypatch.delenv(name, raising=False)
    assert runners._connect(_fake_ray(init), None) is True
    assert seen == ["0"] and name not in os.environ
    monkeypatch.setenv(name, "1000")
    runners._connect(_fake_ray(init), None)
    assert seen == ["0", "1000"] and os.environ[name] == "1000"


def test_executor_options_are_validated():
    with pytest.raises(WeakpasteError, match=r"^executor \(--executor\) must be one of local, "
                                             r"ray; got 'dask'$"):
        ExecutorConfig(executor="dask")


class _FakeRay:
    """Just enough of ``ray`` for ``_ray_schedule``: tasks finish at set times."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.clock, self.finish, self.values = seconds, {}, {}, {}

    def wait(self, refs, num_returns):
        first = min(refs, key=lambda r: self.finish[r])
        return [first], [r for r in refs if r is not first]

    def get(self, ref):
        return self.values[ref]


class _FakeActor:
    def __init__(self, name: str, fake: _FakeRay) -> None:
        self.name, self.fake, self.chunks = name, fake, []
        self.run = self  # actor.run.remote(fn, chunk)

    def remote(self, fn, chunk):
        # An actor runs its tasks one after another: this one ends after the queued ones.
        start = self.fake.clock.get(self.name, 0.0)
        end = start + self.fake.seconds[self.name] * len(chunk)
        self.fake.clock[self.name] = end
        ref = object()
        self.fake.finish[ref], self.fake.values[ref] = end, [fn(x) for x in chunk]
        self.chunks.append(list(chunk))
        return ref


def test_ray_schedule_feeds_the_actor_that_is_free_and_keeps_the_order():
    from weakpaste.core.runners import _ray_schedule

    fake = _FakeRay({"fast": 1.0, "slow": 3.0})
    fast, slow = _FakeActor("fast", fake), _FakeActor("slow", fake)
    got = list(_ray_schedule(fake, [fast, slow], lambda x: x * 10, list(range(64)), 2))
    assert got == [x * 10 for x in range(64)]
    # 64 items in 32 chunks of 2: an in-order pool would alternate (16 / 16); the fast actor,
    # three times as quick, is handed about three chunks for each of the slow one's.
    assert len(fast.chunks) + len(slow.chunks) == 32
    assert len(fast.chunks) >= 23


# --- Ray: a local cluster of 2 CPUs started once for this module -------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is a test dependency: pip install -e '.[test]'")
    # Ray's workers import the tests' own item functions from tests/, like a user's module.
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    # address='local': a Ray of the test's own, even when one already runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


RAY = ExecutorConfig(executor="ray")


@pytest.fixture
def paste_inputs(tiny_coco, tmp_path):
    path, images = tiny_coco
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "bank", quiet=True))
    return {"bank": str(tmp_path / "bank"), "backgrounds": str(path), "images": str(images)}


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").iterdir())} | {
        "annotations.json": (out / "annotations.json").read_bytes()}


def test_ray_map_keeps_order(ray_cluster):
    got = list(map_items(_add, list(range(11)), workers=2, init=_init, initargs=(5,),
                         executor=RAY))
    assert [v for v, _ in got] == list(range(5, 16))
    assert os.getpid() not in {pid for _, pid in got}


def test_ray_paste_is_byte_identical_to_the_local_pool(ray_cluster, paste_inputs, tmp_path):
    cfg = build(PasteConfig, num_images=10, seed=5, objects=(1, 3), placement="space-max",
                blend=("gaussian", "poisson"))
    run_paste(cfg, PasteInputs(**paste_inputs),
              RunOptions(out=str(tmp_path / "local"), workers=2, quiet=True))
    for n in (1, 2):
        run_paste(cfg, PasteInputs(**paste_inputs),
                  RunOptions(out=str(tmp_path / f"ray{n}"), workers=n, quiet=True,
                             executor="ray"))
        assert _snapshot(tmp_path / f"ray{n}") == _snapshot(tmp_path / "local")


def test_ray_worker_that_cannot_see_an_input_is_one_line(ray_cluster, paste_inputs, tmp_path):
    import ray

    from weakpaste.core.runners import start_actors

    actors = start_actors(1, None, (), RAY)
    missing = str(tmp_path / "not-mounted")
    assert ray.get(actors[0].unreadable.remote([missing]))[0].endswith(":" + missing)
    for a in actors:
        ray.kill(a)
    with pytest.raises(WeakpasteError, match=r"a Ray worker cannot read .*: put the inputs and "
                                             r"--out on a file system that every node mounts"):
        list(map_items(_add, [1], init=_init, initargs=(0,), executor=RAY, check=[missing]))


def test_ray_workers_share_the_drivers_working_directory(ray_cluster, paste_inputs, tmp_path,
                                                        monkeypatch):
    """Relative paths, as a user types them, mean the same files in Ray's workers."""
    cfg = PasteConfig(num_images=4, seed=2, objects=(1, 2))
    run_paste(cfg, PasteInputs(**paste_inputs),
              RunOptions(out=str(tmp_path / "local"), workers=2, quiet=True))
    monkeypatch.chdir(tmp_path)
    relative = {k: os.path.relpath(v, tmp_path) for k, v in paste_inputs.items()}
    run_paste(cfg, PasteInputs(**relative),
              RunOptions(out="rel", workers=2, quiet=True, executor="ray"))
    assert _snapshot(tmp_path / "rel") == _snapshot(tmp_path / "local")


def test_ray_worker_without_the_working_directory_says_so(ray_cluster, tmp_path):
    import socket

    import ray

    from weakpaste.core.runners import _Worker

    gone = str(tmp_path / "gone")
    actor = ray.remote(num_cpus=1)(_Worker).remote(None, (), gone)
    try:
        assert ray.get(actor.unreadable.remote([])) == [
            f"{socket.gethostname()}:{gone} (the working directory)"]
    finally:
        ray.kill(actor)


def _ray_worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::_Worker" in cmdline:
                pids.append(int(entry.name))
    return pids


def test_killed_ray_worker_is_retried_and_the_output_is_identical(ray_cluster, paste_inputs,
                                                                   tmp_path):
    cfg = PasteConfig(num_images=150, seed=2, objects=(2, 4))
    run_paste(cfg, PasteInputs(**paste_inputs), RunOptions(out=str(tmp_path / "local"),
                                                           quiet=True))
    out = tmp_path / "ray"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_paste(cfg, PasteInputs(**paste_inputs),
                      RunOptions(out=str(out), workers=2, quiet=True, executor="ray", chunk=1))
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    killed = None
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        images = out / "images"
        pids = _ray_worker_pids()
        if images.is_dir() and len(list(images.iterdir())) >= 3 and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=300)
    assert not errors, errors
    assert killed is not None, "the run ended before a worker could be killed"
    assert _snapshot(out) == _snapshot(tmp_path / "local")


def test_resume_after_the_driver_is_killed(ray_cluster, paste_inputs, tmp_path):
    args = ["paste", "--bank", paste_inputs["bank"], "--backgrounds",
            paste_inputs["backgrounds"], "--images", paste_inputs["images"],
            "--num-images", "60", "--objects", "1-3", "--seed", "9", "--quiet"]
    from weakpaste.cli import main

    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    out = tmp_path / "ray"
    ray_args = [*args, "--out", str(out), "--executor", "ray", "--ray-address", ray_cluster,
                "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "weakpaste.cli", *ray_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "images").is_dir() and len(list((out / "images").iterdir())) >= 5:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / "annotations.json").exists()
    deadline = time.monotonic() + 60  # Ray ends the dead driver's actors in the background
    while _ray_worker_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert main([*ray_args, "--resume"]) == 0
    assert _snapshot(out) == _snapshot(tmp_path / "local")


def test_bank_from_coco_is_the_same_bytes_for_any_executor(ray_cluster, tiny_coco, tmp_path):
    path, images = tiny_coco
    cfg = BankConfig(min_area=1)
    run_bank_from_coco(cfg, BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "one", quiet=True))
    run_bank_from_coco(cfg, BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "pool", workers=2, quiet=True))
    run_bank_from_coco(cfg, BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "ray", workers=2, quiet=True, executor="ray"))

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != "manifest.json"}

    assert files(tmp_path / "one") == files(tmp_path / "pool") == files(tmp_path / "ray")
    assert len((tmp_path / "one" / "index.jsonl").read_text().splitlines()) == 5


@pytest.fixture
def listening():
    """An address where something listens (``_connect`` probes the address first)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


def _fake_ray(init):
    """Just enough of ``ray`` for ``_connect``, with ``init`` as ``ray.init``."""
    import types

    try:
        import ray.exceptions as exceptions
    except ImportError:  # only a failing init reads it
        exceptions = None
    return types.SimpleNamespace(exceptions=exceptions, is_initialized=lambda: False, init=init)


def _token_missing(**kwargs):
    """Token authentication on here, no token: Ray raises its AuthenticationError."""
    from ray.exceptions import AuthenticationError

    raise AuthenticationError("Token authentication is enabled but no authentication token was "
                              "found. Ensure that the token for the cluster is available in a "
                              "local file.")


def _token_refused(**kwargs):
    """The cluster refuses the token: Ray's C++ client logs a line a second, then Ray raises
    a ConnectionError (caused by an AuthenticationError in newer Rays)."""
    for _ in range(3):
        os.write(2, b"gcs_client.cc:210: Failed to get cluster ID from GCS server: "
                    b"Unauthenticated: RPC error: InvalidAuthToken\n")
    try:
        raise RuntimeError("Failed to connect to GCS.")
    except RuntimeError as err:
        raise ConnectionError("Failed to connect to Ray cluster") from err


@pytest.mark.parametrize("init, message", [
    (_token_missing, r"\(Token authentication is enabled but no authentication token was "
                     r"found\); copy the cluster's token to ~/\.ray/auth_token \(or set "
                     r"RAY_AUTH_TOKEN\), or unset RAY_AUTH_MODE for a cluster started without "
                     r"token authentication$"),
    (_token_refused, r"\(the cluster refused this driver's authentication token\); set "
                     r"RAY_AUTH_MODE=token here, with the cluster's token in ~/\.ray/auth_token "
                     r"or RAY_AUTH_TOKEN \('ray get-auth-token' on the head node prints it\)$"),
], ids=["missing", "refused"])
def test_a_token_problem_is_one_line_naming_the_fix(capfd, listening, init, message):
    """Neither reaches the user as a traceback (AuthenticationError is a RayError, not a
    ConnectionError), and Ray's log lines while it retries are held back."""
    ray = pytest.importorskip("ray")
    import weakpaste.core.runners as runners

    if not hasattr(ray.exceptions, "AuthenticationError"):
        pytest.skip("this Ray has no token authentication")
    with pytest.raises(WeakpasteError,
                       match=rf"^cannot reach the Ray cluster at {re.escape(listening)} "
                             + message):
        runners._connect(_fake_ray(init), listening)
    assert "gcs_client" not in capfd.readouterr().err


def test_what_ray_logs_while_joining_is_written_out_when_the_join_succeeds(capfd,
                                                                           listening):
    import weakpaste.core.runners as runners

    def init(**kwargs):
        os.write(2, b"ray says hello\n")

    assert runners._connect(_fake_ray(init), listening) is True
    assert capfd.readouterr().err == "ray says hello\n"


def test_an_address_where_nothing_listens_is_refused_at_once():
    """Ray retries a dead address for minutes; weakpaste probes it first."""
    import socket

    import weakpaste.core.runners as runners

    def init(**kwargs):
        raise AssertionError("Ray must not be asked to join a dead address")

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WeakpasteError, match=(
            rf"^cannot reach the Ray cluster at 127\.0\.0\.1:{port} \(nothing answers there: "
            r".*\); check --ray-address, or start one with 'ray start --head'$")):
        runners._connect(_fake_ray(init), f"127.0.0.1:{port}")


def test_an_ipv6_address_is_probed_without_its_brackets():
    import socket

    import weakpaste.core.runners as runners

    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with s:
        s.listen()
        runners._probe(f"[::1]:{s.getsockname()[1]}")  # raises if the brackets reach connect


@pytest.mark.parametrize("stage", ["bank", "mine", "backgrounds"])
def test_an_unreachable_cluster_is_refused_before_any_work_or_output(tiny_coco, tmp_path,
                                                                    capsys, stage):
    """Mining trains a classifier and ``backgrounds`` captions before their workers start, and
    ``bank from-coco`` made its output folder first: a dead --ray-address must cost none of it
    (no output folder to remove before the corrected command)."""
    import socket

    from weakpaste.cli import main

    coco_json, images = tiny_coco
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "out"
    argv = {"bank": ["bank", "from-coco", str(coco_json), "--images", str(images)],
            "mine": ["mine", "fem", "--images", str(images), "--labels", str(coco_json)],
            "backgrounds": ["backgrounds", "--images", str(images), "--captions",
                            str(tmp_path / "captions.json")]}[stage]
    assert main([*argv, "--out", str(out), "--executor", "ray", "--ray-address", address,
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"weakpaste: error: cannot reach the Ray cluster at {address} "
                          "(nothing answers there"), err
    assert not out.exists()
