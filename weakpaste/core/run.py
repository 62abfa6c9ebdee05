"""How a stage runs: the run options declared once, and one run skeleton for every stage.

Every stage is called as ``run_<stage>(config, inputs, run)``: ``config`` its settings (what
decides the output), ``inputs`` its input paths, ``run`` a ``RunOptions`` (where the output
goes and how the work is run, which never changes the output). ``StageRun`` then does, in
this order for every stage:

1. ``check``: refuse missing inputs (the stage's cheap ``present`` check), an unusable
   output (one that overlaps an input, a non-empty folder without ``--overwrite`` or
   ``--resume``) and an unusable executor (Ray missing or unreachable), changing nothing;
2. ``start``: refuse to resume with other options or inputs, make (or empty, or keep) the
   folder and write the "running" manifest;
3. ``map``: run the per-item function over the items (``core.runners``: this process, a
   process pool or Ray actors), in item order, with a progress bar;
4. ``finish``: write the final manifest.

A stage may do its own work between the steps (read its inputs after ``check``, write its
files after ``map``), never change their order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.manifest import (
    check_output_dir,
    check_output_file,
    check_resume,
    jsonable,
    prepare_output_dir,
    read_weakpaste_manifest,
    write_manifest,
)
from weakpaste.core.run_options import (
    OUT,
    OVERWRITE,
    RESUME,
    RUN_FIELDS,
    WORKERS,
    RunOptions,
    StageInputs,
)
from weakpaste.core.runners import ExecutorConfig, Workers, preflight


class StageRun:
    """One run of a stage in its output (see the module docstring for the order).

    Use as a context manager: entering checks (``check``), leaving ends the workers.

    Args:
        stage: the stage's name, recorded in the manifest ("paste", "mine", ...).
        run: the run options.
        inputs: the run's input files and folders; the output may not be, contain or lie
            inside any of them.
        resumable: whether the stage offers ``--resume``.
        output: "folder" (a folder with ``manifest.json``), "file" (one file, e.g. a
            subset or a report, its provenance inside it) or None (no output).
        out: the output when it is not ``run.out`` (a default the stage computed).
        present: the stage's cheap check that its inputs exist (no reading), run first: a
            typo is refused before Ray is even imported.
    """

    def __init__(self, stage: str, run: RunOptions, *, inputs: Iterable = (),
                 resumable: bool = True, output: str | None = "folder",
                 out: str | os.PathLike | None = None,
                 present: Callable[[], None] | None = None) -> None:
        self.stage, self.run, self.resumable, self.output = stage, run, resumable, output
        self.present = present
        self.inputs = [p for p in inputs if p is not None and str(p) != ""]
        where = out if out is not None else run.out
        if output == "folder" and where is None:
            raise WeakpasteError(f"{stage}: out ({OUT}) is required: the output folder")
        self.out = Path(where) if where is not None else None
        self._pool: Workers | None = None
        self._manifest: dict[str, Any] = {}

    # 1. check --------------------------------------------------------------------------

    def __enter__(self) -> StageRun:
        self.check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> None:
        """Refuse missing inputs (``present``), an unusable executor or output, changing
        nothing.

        Raises:
            WeakpasteError: one line naming the problem and its fix.
        """
        if self.present is not None:
            self.present()
        if self.run.resume and not self.resumable:
            raise WeakpasteError(f"{self.stage} has no {RESUME} (its runs are not resumable); "
                                 f"pass {OVERWRITE} to start again or choose another {OUT}")
        if self.output == "folder":
            check_output_dir(self.out, overwrite=self.run.overwrite, resume=self.run.resume,
                             stage=self.stage, inputs=self.inputs, resumable=self.resumable)
        elif self.output == "file" and self.out is not None:
            check_output_file(self.out, overwrite=self.run.overwrite, inputs=self.inputs)
        # Last: Ray is imported only for a run whose inputs and output are usable.
        preflight(self.executor)

    @property
    def executor(self) -> ExecutorConfig:
        """The executor of the per-item work."""
        return self.run.executor_config()

    # 2. start --------------------------------------------------------------------------

    def start(self, config: dict, *, seed: int | None = None,
              inputs: dict[str, str] | None = None,
              resume_check: Callable[[Path, dict], None] | None = None,
              flags: dict[str, str] | None = None,
              describe: Callable[[str], tuple[str, str]] | None = None,
              fingerprints: Sequence[str] = (), extra: dict | None = None) -> Path:
        """Check a resume, make the output folder and write the "running" manifest.

        Args:
            config: the manifest's config (JSON-able).
            seed: the run's seed.
            inputs: input name -> hash.
            resume_check: ``(out, old manifest) -> None`` raising when a resume must be
                refused; default ``manifest.check_resume`` with ``flags``, ``describe`` and
                ``fingerprints``.
            flags, describe, fingerprints: see ``manifest.check_resume``.
            extra: more fields of the running (and final) manifest.

        Returns:
            The output folder (the file for ``output="file"``).
        """
        inputs = inputs or {}
        config = jsonable(config)  # paths given from Python as Path objects, tuples
        self._manifest = {"stage": self.stage, "config": config, "seed": seed,
                          "inputs": inputs, "extra": extra}
        if self.output != "folder":
            return self.out
        if self.run.resume:
            old = read_weakpaste_manifest(self.out)
            if old is not None:  # else prepare_output_dir says there is nothing to resume
                if resume_check is None:
                    check_resume(self.out, old, config, inputs,
                                 flags=flags, describe=describe, fingerprints=fingerprints)
                else:
                    resume_check(self.out, old)
        self.out = prepare_output_dir(self.out, overwrite=self.run.overwrite,
                                      resume=self.run.resume, stage=self.stage,
                                      inputs=self.inputs, resumable=self.resumable)
        write_manifest(self.out, **self._manifest, status="running")
        return self.out

    # 3. map ----------------------------------------------------------------------------

    def workers(self, init: Callable[..., None] | None = None, initargs: tuple = (),
                check: Sequence[str | os.PathLike | None] = ()) -> Workers:
        """Start the workers now (before ``start``: e.g. Ray boots while inputs are read);
        ``map`` uses them. Ended when the run is left.

        Args:
            init, initargs: run once in every worker (``core.runners.Workers``).
            check: paths every Ray worker must be able to read.
        """
        if self._pool is None:
            paths = [str(p) for p in check if p]
            self._pool = Workers(self.run.workers, init=init, initargs=initargs,
                                 executor=self.executor, check=paths).__enter__()
        return self._pool

    def map(self, fn: Callable[[Any], Any], items: Sequence, *, desc: str, unit: str = "img",
            init: Callable[..., None] | None = None, initargs: tuple = (),
            check: Sequence[str | os.PathLike | None] = ()) -> Iterator[Any]:
        """Yield ``fn(item)`` for every item, in item order, with a progress bar.

        Args:
            fn: a module-level function of one item.
            items: the items.
            desc, unit: the progress bar's label and unit.
            init, initargs, check: as for ``workers`` (used when none are started yet).
        """
        from tqdm import tqdm

        pool = self.workers(init, initargs, check)
        yield from tqdm(pool.map(fn, items), total=len(items), desc=desc, unit=unit,
                        disable=not self.run.progress)

    def close(self) -> None:
        """End the workers (if any)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.__exit__(None, None, None)

    # 4. finish -------------------------------------------------------------------------

    def finish(self, counts: dict[str, Any] | None = None, *,
               extra: dict[str, Any] | None = None) -> dict:
        """Write the final manifest (``status="complete"``) and return it.

        Args:
            counts: what was produced.
            extra: more stage-specific fields (replacing ``start``'s).
        """
        self.close()
        doc = {**self._manifest, "counts": counts or {}}
        if extra is not None:
            doc["extra"] = extra
        if self.output != "folder":  # nothing to write it into: the caller keeps it
            return doc
        return write_manifest(self.out, **doc)


__all__ = ["OUT", "OVERWRITE", "RESUME", "RUN_FIELDS", "WORKERS", "RunOptions", "StageInputs",
           "StageRun"]
