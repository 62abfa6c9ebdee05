"""Writing files safely: atomic replacement, and one clear error when the disk refuses.

Writes that fail because the disk is full or read-only raise one ``WeakpasteError`` naming
the folder (``write_error``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run_options import OUT, RESUME

# errno values that mean the output cannot take the data (not that an input is bad).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES,
                          errno.EPERM})


def write_error(folder: str | os.PathLike, err: OSError) -> WeakpasteError:
    """The one-line error for a failed write into ``folder`` (disk full, read-only, ...).

    Every stage writes each file atomically and keeps what it finished, so the fix is the same
    everywhere: make room (or choose a writable folder) and run again, resuming where offered.
    """
    why = err.strerror or os.strerror(err.errno or 0)
    return WeakpasteError(f"{folder}: cannot write ({why}); free some space or choose a "
                          f"writable {OUT}, then run the command again (with {RESUME} where "
                          "offered: finished work is kept)")


def write_failure(folder: str | os.PathLike, size: int) -> OSError | None:
    """Why writing ``size`` bytes into ``folder`` fails, for writers that do not say
    (``torch.save`` reports a short write as ``RuntimeError: ... unexpected pos``), or None
    when the folder looks writable.

    Checked in order: a read-only file system, no write permission, less free space than
    ``size``, a file size limit (``ulimit -f``) below ``size``.
    """
    import resource

    try:
        fs = os.statvfs(folder)
    except OSError as err:
        return err
    checks = ((fs.f_flag & os.ST_RDONLY, errno.EROFS),
              (not os.access(folder, os.W_OK), errno.EACCES),
              (fs.f_bavail * fs.f_frsize < size, errno.ENOSPC),
              (0 <= resource.getrlimit(resource.RLIMIT_FSIZE)[0] < size, errno.EFBIG))
    for failed, code in checks:
        if failed:
            return OSError(code, os.strerror(code))
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    Raises:
        WeakpasteError: the folder cannot be written (``WRITE_ERRNOS``: disk full, quota,
            read-only file system, permissions); the old file, if any, is unchanged.
    """
    path = Path(path)
    # A per-process temporary name is enough: one process writes a given output at a time.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            raise write_error(path.parent, err) from None
        raise
