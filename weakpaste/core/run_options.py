"""The run options, declared once: where a stage writes and how it runs.

``RunOptions`` is its own module (``core.run`` re-exports it) so that ``core.manifest``, whose
messages name ``--out``, ``--overwrite`` and ``--resume``, can derive those flags from it
without importing the run skeleton, which imports the manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from weakpaste.core.options import Config, flag_of, option, reuse_option

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


EXECUTOR_FLAG, RAY_ADDRESS_FLAG = (flag_of(ExecutorConfig, n) for n in ("executor", "ray_address"))


@dataclass(frozen=True)
class RunOptions(Config):
    """Where a stage writes and how it runs: nothing here changes what it writes.

    A command registers only the fields its stage supports (``cli.common.add_run_options``);
    from Python, a field a stage does not support must keep its default (``StageRun``
    refuses ``resume=True`` for a stage without ``--resume``).
    """

    out: str | None = option(None, metavar="DIR", help="output folder")
    overwrite: bool = option(False, help="replace an existing weakpaste output in --out")
    resume: bool = option(False, help="continue a run in --out made with the same options and "
                                      "inputs")
    workers: int = option(1, range=(1, None),
                          help="processes; the output is the same for any number")
    executor: str = reuse_option(ExecutorConfig, "executor")
    ray_address: str | None = reuse_option(ExecutorConfig, "ray_address")
    gpus_per_worker: float = reuse_option(ExecutorConfig, "gpus_per_worker")
    quiet: bool = option(False, help="no progress bar")
    # Where reusable intermediate results go never changes the output, so it is a run option
    # (the miners' saliency maps), not a setting of the method.
    saliency_cache: str | None = option(
        None, metavar="DIR", help="keep saliency maps here, keyed by image and model, to share "
                                  "them between runs (default: OUT/.cache/saliency)")
    chunk: int = reuse_option(ExecutorConfig, "chunk")

    @property
    def progress(self) -> bool:
        """Whether progress bars are shown."""
        return not self.quiet

    def executor_config(self) -> ExecutorConfig:
        """The ``ExecutorConfig`` that ``core.runners`` takes."""
        return ExecutorConfig(executor=self.executor, ray_address=self.ray_address,
                              gpus_per_worker=self.gpus_per_worker, chunk=self.chunk)


RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunOptions))

OUT, OVERWRITE, RESUME, WORKERS = (flag_of(RunOptions, n)
                                   for n in ("out", "overwrite", "resume", "workers"))
"""The run options' flags as messages name them, derived from the declarations above."""


class StageInputs:
    """Base of the stages' input dataclasses.

    Each field is declared with ``core.options.option`` (``positional=True`` for a command's
    positional argument), so that the CLI adds it with ``add_options``, builds the inputs
    with ``from_args`` and a message names its flag with ``flag_of(Inputs, "images")``.
    """

    def paths(self) -> list[str]:
        """Every input path given (lists flattened, None left out), for the overlap check."""
        found: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, list | tuple) else [value]
            found += [str(v) for v in values if v is not None and str(v) != ""]
        return found
