"""A library's thread count for the length of a block (torch's, OpenCV's)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def thread_count(get: Callable[[], int], set_: Callable[[int], None],
                 count: int) -> Iterator[None]:
    """Set a library's thread count to ``count`` inside the block; restore it after.

    Args:
        get: the library's getter, e.g. ``torch.get_num_threads``.
        set_: its setter, e.g. ``torch.set_num_threads``.
        count: the threads inside the block.
    """
    before = get()
    set_(count)
    try:
        yield
    finally:
        set_(before)


__all__ = ["thread_count"]
